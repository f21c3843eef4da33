//! Diagrams of a plan, coloured by the state of each step (for the dashboard, `_kb` run notes
//! and the CLI).
//!
//! Node ids are `s<index>`, never the step id: Mermaid breaks on ids such as `end` or ones
//! starting with `o`/`x` after an edge, and DOT on leading digits and `-`. Step ids and agent
//! names appear only in escaped labels.

use std::fmt::Write as _;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::validate::Plan;

/// Where a step is in its life; the executor owns transitions, diagrams only show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Waiting for its dependencies.
    Pending,
    /// Its task is running (including retries).
    Running,
    /// Finished with an output.
    Succeeded,
    /// Failed after all retries.
    Failed,
    /// Not run because a dependency failed without `continue_on_error`.
    Skipped,
    /// Not run or stopped because the run was cancelled.
    Cancelled,
}

impl std::str::FromStr for StepState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StepState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown step state `{s}`"))
    }
}

impl StepState {
    /// Every state, in display order (legend, class definitions).
    pub const ALL: [StepState; 6] = [
        StepState::Pending,
        StepState::Running,
        StepState::Succeeded,
        StepState::Failed,
        StepState::Skipped,
        StepState::Cancelled,
    ];

    /// The snake_case name, as serialised; also the diagram class name.
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Skipped => "skipped",
            StepState::Cancelled => "cancelled",
        }
    }

    /// Whether the step will not change state again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepState::Succeeded | StepState::Failed | StepState::Skipped | StepState::Cancelled
        )
    }

    /// (fill, stroke, text) colours; one palette for both diagram formats.
    fn colours(self) -> (&'static str, &'static str, &'static str) {
        match self {
            StepState::Pending => ("#e0e0e0", "#757575", "#212121"),
            StepState::Running => ("#bbdefb", "#1e88e5", "#0d47a1"),
            StepState::Succeeded => ("#c8e6c9", "#43a047", "#1b5e20"),
            StepState::Failed => ("#ffcdd2", "#e53935", "#b71c1c"),
            StepState::Skipped => ("#f5f5f5", "#bdbdbd", "#9e9e9e"),
            StepState::Cancelled => ("#ffe0b2", "#fb8c00", "#e65100"),
        }
    }
}

/// Mermaid `graph TD` with one node per step (label: id and agent), edges from deps, and
/// classDef colours by state (pending grey, running blue, succeeded green, failed red,
/// skipped light grey dashed, cancelled orange); node ids must be safe for Mermaid.
///
/// Every class is defined even when unused, so a dashboard can restyle nodes by swapping
/// `class` lines as states change.
pub fn mermaid(plan: &Plan, state: &dyn Fn(usize) -> StepState) -> String {
    let mut out = String::with_capacity(64 + plan.len() * 64);
    out.push_str("graph TD\n");
    for i in 0..plan.len() {
        let step = plan.step(i);
        let _ = writeln!(
            out,
            "  s{i}[\"{}<br/>{}\"]",
            mermaid_escape(&step.id),
            mermaid_escape(&step.agent)
        );
    }
    for i in 0..plan.len() {
        for &d in plan.deps(i) {
            let _ = writeln!(out, "  s{d} --> s{i}");
        }
    }
    for st in StepState::ALL {
        let (fill, stroke, text) = st.colours();
        let dash = if st == StepState::Skipped {
            ",stroke-dasharray:5 5"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  classDef {} fill:{fill},stroke:{stroke},color:{text}{dash}",
            st.as_str()
        );
    }
    let mut by_state: Vec<Vec<usize>> = vec![Vec::new(); StepState::ALL.len()];
    for i in 0..plan.len() {
        let st = state(i);
        // Discriminants are 0..6 in declaration order, the same order as `StepState::ALL`.
        by_state[st as usize].push(i);
    }
    for (st, nodes) in StepState::ALL.iter().zip(&by_state) {
        if nodes.is_empty() {
            continue;
        }
        out.push_str("  class ");
        for (k, i) in nodes.iter().enumerate() {
            if k > 0 {
                out.push(',');
            }
            let _ = write!(out, "s{i}");
        }
        let _ = writeln!(out, " {}", st.as_str());
    }
    out
}

/// Graphviz DOT with the same information (fillcolor by state).
///
/// Each node also carries `class` (used in SVG output) and a `tooltip` with its state.
pub fn dot(plan: &Plan, state: &dyn Fn(usize) -> StepState) -> String {
    let mut out = String::with_capacity(128 + plan.len() * 96);
    out.push_str("digraph workflow {\n  rankdir=TB;\n");
    if let Some(name) = &plan.def().name {
        let _ = writeln!(out, "  label=\"{}\";\n  labelloc=t;", dot_escape(name));
    }
    out.push_str("  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];\n");
    for i in 0..plan.len() {
        let step = plan.step(i);
        let st = state(i);
        let (fill, stroke, text) = st.colours();
        let style = if st == StepState::Skipped {
            ", style=\"rounded,filled,dashed\""
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  s{i} [label=\"{}\\n{}\", fillcolor=\"{fill}\", color=\"{stroke}\", \
             fontcolor=\"{text}\", class=\"{st}\", tooltip=\"{st}\"{style}];",
            dot_escape(&step.id),
            dot_escape(&step.agent),
            st = st.as_str(),
        );
    }
    for i in 0..plan.len() {
        for &d in plan.deps(i) {
            let _ = writeln!(out, "  s{d} -> s{i};");
        }
    }
    out.push_str("}\n");
    out
}

/// Escape text for a quoted Mermaid label, using Mermaid's `#code;` entities (a raw `"` ends
/// the label, `<`/`>` would be HTML, `#` starts an entity).
fn mermaid_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '#' => out.push_str("#35;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '&' => out.push_str("#amp;"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Escape text for a DOT double-quoted string (only `"` and `\` are special; newlines would
/// break the line-per-statement layout).
fn dot_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::def::{SPEC_EXAMPLE, WorkflowDef};
    use crate::workflow::validate::validate;
    use serde_json::json;

    fn diamond_with_states() -> (Plan, [StepState; 6]) {
        let v = json!({"name": "dia\"mond", "steps": [
            {"id": "a", "agent": "x"},
            {"id": "b", "agent": "y", "depends_on": ["a"]},
            {"id": "c", "agent": "weird \"<agent>\" #1 \\", "depends_on": ["a"]},
            {"id": "end", "agent": "z", "depends_on": ["b", "c"]},
            {"id": "o-x", "agent": "z", "depends_on": ["end"]},
            {"id": "lone", "agent": "z"}
        ]});
        let def = WorkflowDef::from_json(&v).expect("parses");
        let plan = validate(&def, &|_| true).expect("valid");
        (plan, StepState::ALL)
    }

    #[test]
    fn mermaid_has_every_node_edge_and_class() {
        let (plan, states) = diamond_with_states();
        let m = mermaid(&plan, &|i| states[i]);
        assert!(m.starts_with("graph TD\n"), "{m}");
        assert!(m.contains("  s0[\"a<br/>x\"]"), "{m}");
        assert!(m.contains("  s3[\"end<br/>z\"]"), "{m}");
        assert!(m.contains("  s4[\"o-x<br/>z\"]"), "{m}");
        assert!(
            m.contains("s2[\"c<br/>weird #quot;#lt;agent#gt;#quot; #35;1 \\\"]"),
            "{m}"
        );
        for edge in [
            "s0 --> s1",
            "s0 --> s2",
            "s1 --> s3",
            "s2 --> s3",
            "s3 --> s4",
        ] {
            assert!(m.contains(&format!("  {edge}\n")), "missing {edge}: {m}");
        }
        assert_eq!(m.matches("-->").count(), 5, "{m}");
        for st in StepState::ALL {
            assert!(
                m.contains(&format!("classDef {} fill:", st.as_str())),
                "{m}"
            );
        }
        assert!(m.contains(
            "classDef skipped fill:#f5f5f5,stroke:#bdbdbd,color:#9e9e9e,stroke-dasharray:5 5"
        ));
        assert!(m.contains("classDef running fill:#bbdefb"), "{m}");
        for (i, st) in states.iter().enumerate() {
            assert!(m.contains(&format!("class s{i} {}\n", st.as_str())), "{m}");
        }
    }

    #[test]
    fn mermaid_groups_nodes_by_state() {
        let v: serde_json::Value = serde_json::from_str(SPEC_EXAMPLE).expect("json");
        let def = WorkflowDef::from_json(&v).expect("parses");
        let plan = validate(&def, &|_| true).expect("valid");
        let m = mermaid(&plan, &|i| {
            if i < 2 {
                StepState::Succeeded
            } else {
                StepState::Running
            }
        });
        assert!(m.contains("  class s0,s1 succeeded\n"), "{m}");
        assert!(m.contains("  class s2 running\n"), "{m}");
        assert!(m.contains("s0[\"review<br/>code-review\"]"), "{m}");
        assert!(!m.contains("class  "), "{m}");
    }

    #[test]
    fn dot_has_every_node_edge_and_colour() {
        let (plan, states) = diamond_with_states();
        let d = dot(&plan, &|i| states[i]);
        assert!(d.starts_with("digraph workflow {\n"), "{d}");
        assert!(d.trim_end().ends_with('}'), "{d}");
        assert!(d.contains("label=\"dia\\\"mond\";"), "{d}");
        assert!(
            d.contains("s0 [label=\"a\\nx\", fillcolor=\"#e0e0e0\""),
            "{d}"
        );
        assert!(
            d.contains("s2 [label=\"c\\nweird \\\"<agent>\\\" #1 \\\\\""),
            "{d}"
        );
        for (i, st) in states.iter().enumerate() {
            let (fill, _, _) = st.colours();
            let line = d
                .lines()
                .find(|l| l.starts_with(&format!("  s{i} [")))
                .unwrap_or_default();
            assert!(line.contains(&format!("fillcolor=\"{fill}\"")), "{line}");
            assert!(
                line.contains(&format!("class=\"{}\"", st.as_str())),
                "{line}"
            );
        }
        assert!(
            d.contains("style=\"rounded,filled,dashed\""),
            "skipped is dashed: {d}"
        );
        for edge in [
            "s0 -> s1;",
            "s0 -> s2;",
            "s1 -> s3;",
            "s2 -> s3;",
            "s3 -> s4;",
        ] {
            assert!(d.contains(edge), "missing {edge}: {d}");
        }
        assert_eq!(d.matches(" -> ").count(), 5, "{d}");
    }

    #[test]
    fn state_serialises_snake_case() {
        for st in StepState::ALL {
            let text = serde_json::to_string(&st).expect("serialises");
            assert_eq!(text, format!("\"{}\"", st.as_str()));
            let back: StepState = serde_json::from_str(&text).expect("parses");
            assert_eq!(back, st);
        }
        assert!(!StepState::Running.is_terminal());
        assert!(StepState::Skipped.is_terminal());
    }
}
