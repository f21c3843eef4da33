//! Workflow definitions as clients and files send them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most steps one workflow may have; bounds the work validation and scheduling can be asked to do.
pub const MAX_STEPS: usize = 10_000;

/// Most extra attempts a step may ask for; more would hide a broken step behind long waits.
pub const MAX_RETRY: u32 = 5;

/// How many per-step parse errors [`WorkflowDef::from_json`] lists before it stops; a client
/// that sends 10,000 malformed steps needs the pattern, not 10,000 lines.
const MAX_PARSE_ERRORS: usize = 20;

/// The shape [`WorkflowDef::from_json`] accepts, quoted in its errors so a client can fix its
/// request without reading the docs.
const EXPECTED_SHAPE: &str = "expected a workflow object \
    `{\"name\": \"...\", \"steps\": [{\"id\": \"...\", \"agent\": \"...\", \"input\": ..., \
    \"depends_on\": [...]}, ...]}`, the same wrapped as `{\"dag\": {...}}`, or a bare array of steps";

/// The example from PRODUCT.md "Workflows (DAG)", verbatim; shared by the tests of all files.
#[cfg(test)]
pub(crate) const SPEC_EXAMPLE: &str = r#"{"name": "review-and-document", "steps": [
  {"id": "review", "agent": "code-review", "input": {"diff": "..."}},
  {"id": "docs",   "agent": "docs-sync",   "input": "{{review.output}}", "depends_on": ["review"]},
  {"id": "notify", "agent": "meeting-prep","input": "{{docs.output}}",  "depends_on": ["docs"]}]}"#;

/// A workflow: named steps, each run by one agent, ordered by their `depends_on` edges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowDef {
    /// Human-readable name, shown in diagrams and run listings.
    #[serde(default)]
    pub name: Option<String>,
    /// The steps, in definition order (which is also the index order of a [`super::Plan`]).
    pub steps: Vec<StepDef>,
}

/// One step of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepDef {
    /// Unique id, `[A-Za-z0-9_-]{1,64}`, not `input`; used in templates, file names and diagrams.
    pub id: String,
    /// Name of the agent that runs this step.
    pub agent: String,
    /// string or object, may contain templates; default when absent: "{{input}}"
    #[serde(default)]
    pub input: Option<Value>,
    /// Ids of the steps that must finish before this one starts.
    #[serde(default, alias = "dependsOn")]
    pub depends_on: Vec<String>,
    /// Run dependents even when this step fails (its `{{id.output}}` then renders as "").
    #[serde(default, alias = "continueOnError")]
    pub continue_on_error: bool,
    /// extra attempts of the whole step when its task fails (0..=5)
    #[serde(default)]
    pub retry: u32,
}

impl WorkflowDef {
    /// Parse a workflow from JSON, accepting `{"name", "steps"}`, the same wrapped as
    /// `{"dag": {...}}` (or `{"dag": [...]}`), or a bare array of steps.
    ///
    /// Steps are parsed one by one so that an error names the step's position and id instead of
    /// serde's bare "missing field"; all (up to 20) broken steps are listed together.
    pub fn from_json(v: &Value) -> Result<WorkflowDef, String> {
        match v {
            Value::Object(map) if !map.contains_key("steps") && map.contains_key("dag") => {
                // Unwrap exactly once: a nested `dag` inside `dag` is a client bug, not a shape.
                let inner = map.get("dag").unwrap_or(&Value::Null);
                let mut def = Self::from_unwrapped(inner, "`dag`: ")?;
                if def.name.is_none() {
                    def.name = parse_name(map.get("name"))?;
                }
                Ok(def)
            }
            other => Self::from_unwrapped(other, ""),
        }
    }

    /// Parse the object-or-array form, with `ctx` prefixed to errors (e.g. "`dag`: ").
    fn from_unwrapped(v: &Value, ctx: &str) -> Result<WorkflowDef, String> {
        match v {
            Value::Array(steps) => Ok(WorkflowDef {
                name: None,
                steps: parse_steps(steps, ctx)?,
            }),
            Value::Object(map) => {
                let steps = match map.get("steps") {
                    Some(Value::Array(steps)) => parse_steps(steps, ctx)?,
                    Some(other) => {
                        return Err(format!(
                            "{ctx}`steps` must be an array, got {}; {EXPECTED_SHAPE}",
                            kind(other)
                        ));
                    }
                    None => return Err(format!("{ctx}missing `steps`; {EXPECTED_SHAPE}")),
                };
                let name = parse_name(map.get("name")).map_err(|e| format!("{ctx}{e}"))?;
                Ok(WorkflowDef { name, steps })
            }
            other => Err(format!("{ctx}got {}; {EXPECTED_SHAPE}", kind(other))),
        }
    }
}

/// `name` is optional; `null` counts as absent because some clients serialise `None` that way.
fn parse_name(v: Option<&Value>) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("`name` must be a string, got {}", kind(other))),
    }
}

/// Deserialise each step on its own so errors can say which step is broken.
fn parse_steps(steps: &[Value], ctx: &str) -> Result<Vec<StepDef>, String> {
    let mut out = Vec::with_capacity(steps.len());
    let mut errors = Vec::new();
    let mut more = 0usize;
    for (i, raw) in steps.iter().enumerate() {
        // `&Value` is a Deserializer, so no per-step clone of (possibly large) inputs.
        match StepDef::deserialize(raw) {
            Ok(step) => out.push(step),
            Err(e) => {
                if errors.len() < MAX_PARSE_ERRORS {
                    let id = raw
                        .get("id")
                        .and_then(Value::as_str)
                        .map(|id| format!(" (`{}`)", super::validate::clip(id)))
                        .unwrap_or_default();
                    let what = if raw.is_object() {
                        e.to_string()
                    } else {
                        format!("expected an object, got {}", kind(raw))
                    };
                    errors.push(format!("step {}{id}: {what}", i + 1));
                } else {
                    more += 1;
                }
            }
        }
    }
    if errors.is_empty() {
        return Ok(out);
    }
    let mut msg = format!("{ctx}{}", errors.join("; "));
    if more > 0 {
        msg.push_str(&format!("; and {more} more broken steps"));
    }
    Err(msg)
}

/// JSON type name for error messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spec_example_parses() {
        let v: Value = serde_json::from_str(SPEC_EXAMPLE).expect("spec JSON");
        let def = WorkflowDef::from_json(&v).expect("parses");
        assert_eq!(def.name.as_deref(), Some("review-and-document"));
        assert_eq!(def.steps.len(), 3);
        assert_eq!(def.steps[1].depends_on, vec!["review".to_string()]);
        assert_eq!(def.steps[0].input, Some(json!({"diff": "..."})));
        assert_eq!(def.steps[2].retry, 0);
        assert!(!def.steps[2].continue_on_error);
        // The derived Deserialize agrees with from_json on the plain form.
        let derived: WorkflowDef = serde_json::from_value(v).expect("derive");
        assert_eq!(derived, def);
    }

    #[test]
    fn dag_wrapper_and_bare_array() {
        let step = json!({"id": "a", "agent": "x"});
        let wrapped = json!({"dag": {"name": "n", "steps": [step.clone()]}});
        let def = WorkflowDef::from_json(&wrapped).expect("wrapped");
        assert_eq!(def.name.as_deref(), Some("n"));
        assert_eq!(def.steps.len(), 1);

        let wrapped_array = json!({"name": "outer", "dag": [step.clone()]});
        let def = WorkflowDef::from_json(&wrapped_array).expect("wrapped array");
        assert_eq!(def.name.as_deref(), Some("outer"));

        let bare = json!([step]);
        let def = WorkflowDef::from_json(&bare).expect("bare");
        assert_eq!(def.name, None);
        assert_eq!(def.steps[0].id, "a");
    }

    #[test]
    fn camel_case_aliases() {
        let v = json!([{"id": "a", "agent": "x"},
            {"id": "b", "agent": "x", "dependsOn": ["a"], "continueOnError": true, "retry": 2}]);
        let def = WorkflowDef::from_json(&v).expect("parses");
        assert_eq!(def.steps[1].depends_on, vec!["a".to_string()]);
        assert!(def.steps[1].continue_on_error);
        assert_eq!(def.steps[1].retry, 2);
    }

    #[test]
    fn wrong_shapes_say_what_is_expected() {
        for bad in [
            json!(42),
            json!("steps"),
            json!({"name": "x"}),
            json!({"dag": 1}),
        ] {
            let err = WorkflowDef::from_json(&bad).expect_err("must fail");
            assert!(err.contains("expected a workflow object"), "{err}");
            assert!(err.contains("bare array of steps"), "{err}");
        }
        let err = WorkflowDef::from_json(&json!({"steps": {"a": 1}})).expect_err("must fail");
        assert!(
            err.contains("`steps` must be an array, got an object"),
            "{err}"
        );
        let err = WorkflowDef::from_json(&json!({"name": 3, "steps": []})).expect_err("name");
        assert!(err.contains("`name` must be a string"), "{err}");
    }

    #[test]
    fn broken_steps_are_named_by_position_and_id() {
        let v = json!([{"id": "a", "agent": "x"}, {"id": "b"}, 7, {"id": "d", "agent": "x", "retry": -1}]);
        let err = WorkflowDef::from_json(&v).expect_err("must fail");
        assert!(err.contains("step 2 (`b`): missing field `agent`"), "{err}");
        assert!(
            err.contains("step 3: expected an object, got a number"),
            "{err}"
        );
        assert!(err.contains("step 4 (`d`)"), "{err}");
    }

    #[test]
    fn schema_mentions_fields() {
        let schema = schemars::schema_for!(WorkflowDef);
        let text = serde_json::to_string(&schema).expect("schema serialises");
        for field in ["steps", "depends_on", "continue_on_error", "retry", "agent"] {
            assert!(text.contains(field), "{field} missing from schema");
        }
    }
}
