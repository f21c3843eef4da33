//! Placeholders in step inputs: `{{input}}`, `{{input.a.b}}`, `{{step.output}}`,
//! `{{step.output.a.0.b}}`.
//!
//! Rules shared by validation and rendering (one parser, so they cannot disagree):
//! - placeholders are recognised in JSON strings anywhere inside a step's `input` (recursively
//!   through objects and arrays); object *keys* are never templated;
//! - whitespace just inside the braces is allowed: `{{ review.output }}`;
//! - `\{{` is a literal `{{` (for inputs that must contain template-like text);
//! - substitution is single-pass: text coming *from* the run input or a step output is never
//!   scanned for placeholders, so model output cannot inject templates;
//! - path segments are separated by `.`; a key containing `.` cannot be addressed.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde_json::Value;

use super::def::StepDef;

/// What a step's input reads at run time, as found by [`references`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TemplateRef {
    /// `{{input}}` (empty path) or `{{input.a.b}}`: the workflow run's input.
    Input(Vec<String>),
    /// `{{step.output}}` or `{{step.output.a.b}}`: the output of another step.
    Output {
        /// Id of the step whose output is read.
        step: String,
        /// Path into that output parsed as JSON; empty means the output text itself.
        path: Vec<String>,
    },
}

impl fmt::Display for TemplateRef {
    /// The canonical placeholder text, e.g. `{{review.output.summary}}`; used in messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (root, path) = match self {
            TemplateRef::Input(path) => (Cow::Borrowed("input"), path),
            TemplateRef::Output { step, path } => (Cow::Owned(format!("{step}.output")), path),
        };
        write!(f, "{{{{{root}")?;
        for seg in path {
            write!(f, ".{seg}")?;
        }
        write!(f, "}}}}")
    }
}

/// A parsed JSON string: literal text interleaved with placeholders.
#[derive(Debug)]
enum Piece<'a> {
    Text(Cow<'a, str>),
    Ref(TemplateRef),
}

/// Longest excerpt of offending text quoted in an error; inputs can be megabytes.
const SNIPPET: usize = 40;

/// Split a string into text and placeholders, or say what is malformed.
fn parse(s: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut text_start = 0; // start of the literal text not yet pushed
    let mut at = 0; // where to look for the next `{{`
    while let Some(rel) = s[at..].find("{{") {
        let open = at + rel;
        if open > 0 && s.as_bytes()[open - 1] == b'\\' {
            // `\{{` → literal `{{`: drop the backslash, keep scanning after the braces.
            if open - 1 > text_start {
                pieces.push(Piece::Text(Cow::Borrowed(&s[text_start..open - 1])));
            }
            pieces.push(Piece::Text(Cow::Borrowed("{{")));
            at = open + 2;
            text_start = at;
            continue;
        }
        let body_start = open + 2;
        let Some(close_rel) = s[body_start..].find("}}") else {
            return Err(format!("unclosed `{{{{` in `{}`", snippet(&s[open..])));
        };
        let body = &s[body_start..body_start + close_rel];
        if body.contains("{{") {
            return Err(format!(
                "unclosed `{{{{` in `{}`",
                snippet(&s[open..body_start + close_rel + 2])
            ));
        }
        let r = parse_ref(body)?;
        if open > text_start {
            pieces.push(Piece::Text(Cow::Borrowed(&s[text_start..open])));
        }
        pieces.push(Piece::Ref(r));
        at = body_start + close_rel + 2;
        text_start = at;
    }
    if text_start < s.len() {
        pieces.push(Piece::Text(Cow::Borrowed(&s[text_start..])));
    }
    Ok(pieces)
}

/// Parse the inside of `{{ ... }}`.
fn parse_ref(body: &str) -> Result<TemplateRef, String> {
    let shown = || format!("{{{{{}}}}}", snippet(body));
    let trimmed = body.trim();
    if trimmed.is_empty() {
        return Err(format!(
            "empty placeholder `{}`; use `{{{{input}}}}` or `{{{{<step>.output}}}}`",
            shown()
        ));
    }
    let segs: Vec<&str> = trimmed.split('.').collect();
    if let Some(bad) = segs.iter().find(|seg| {
        seg.is_empty()
            || seg
                .chars()
                .any(|c| c.is_whitespace() || c == '{' || c == '}')
    }) {
        let what = if bad.is_empty() {
            "an empty path segment".to_string()
        } else {
            format!("the invalid segment `{}`", snippet(bad))
        };
        return Err(format!("placeholder `{}` has {what}", shown()));
    }
    let path = |from: usize| segs[from..].iter().map(|s| s.to_string()).collect();
    if segs[0] == "input" {
        return Ok(TemplateRef::Input(path(1)));
    }
    if segs.get(1) != Some(&"output") {
        return Err(format!(
            "placeholder `{}` must be `{{{{input...}}}}` or `{{{{{}.output...}}}}`",
            shown(),
            snippet(segs[0])
        ));
    }
    Ok(TemplateRef::Output {
        step: segs[0].to_string(),
        path: path(2),
    })
}

/// Shorten user text for an error message, on a char boundary.
fn snippet(s: &str) -> Cow<'_, str> {
    match s.char_indices().nth(SNIPPET) {
        Some((cut, _)) => Cow::Owned(format!("{}…", &s[..cut])),
        None => Cow::Borrowed(s),
    }
}

/// Every placeholder in a step input, in document order (duplicates kept), or the first
/// malformed one. Used by validation, which runs before anything else sees the input.
pub fn references(v: &Value) -> Result<Vec<TemplateRef>, String> {
    let mut out = Vec::new();
    collect(v, &mut out)?;
    Ok(out)
}

fn collect(v: &Value, out: &mut Vec<TemplateRef>) -> Result<(), String> {
    match v {
        Value::String(s) => {
            // Cheap pre-check: most strings (diffs, prose) hold no placeholder at all.
            if s.contains("{{") {
                for piece in parse(s)? {
                    if let Piece::Ref(r) = piece {
                        out.push(r);
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                collect(item, out)?;
            }
        }
        Value::Object(map) => {
            for item in map.values() {
                collect(item, out)?;
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// What a step's placeholders read: the run input and the outputs of finished steps.
pub struct RenderCtx<'a> {
    /// The workflow run's input (`{{input...}}`).
    pub input: &'a Value,
    /// Output text of a step by id; `None` when it has none (failed with `continue_on_error`).
    pub outputs: &'a dyn Fn(&str) -> Option<String>,
}

/// Why a step's input could not be rendered; each message names the step and the template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A malformed placeholder (normally caught earlier by validation).
    #[error("step `{step}`: bad template in `input`: {message}")]
    Syntax {
        /// Step whose input is being rendered.
        step: String,
        /// What is malformed.
        message: String,
    },
    /// A path into a step output was used, but that output is not JSON.
    #[error(
        "step `{step}`: `{template}` reads a field of the output of `{from}`, but that output is \
         not JSON (nor a single ```json fenced block)"
    )]
    NotJson {
        /// Step whose input is being rendered.
        step: String,
        /// The placeholder, e.g. `{{review.output.summary}}`.
        template: String,
        /// Step whose output was read.
        from: String,
    },
    /// The path names a field or index that the value does not have.
    #[error("step `{step}`: `{template}`: {missing}")]
    Missing {
        /// Step whose input is being rendered.
        step: String,
        /// The placeholder, e.g. `{{input.repo}}`.
        template: String,
        /// What is missing, e.g. "no field `title` in `review.output.summary`".
        missing: String,
    },
}

/// Render a step's input. Strings: each placeholder replaced by the value (strings verbatim,
/// other JSON compact). A string that is exactly one placeholder whose value is a JSON object
/// or array becomes that JSON value (so objects pass through). Objects/arrays: rendered
/// recursively. `{{step.output.a.b}}` parses the step's output as JSON (also when wrapped in a
/// single ```json fenced block) and follows the path (object keys; numeric segments index
/// arrays); not JSON / missing field → error naming step, template and what is missing.
/// `{{input.a}}` on a string run input → error. A failed-with-continue_on_error step has no
/// output: `outputs` returns None → its `{{x.output}}` renders as "" (document this).
///
/// The "" rule holds for every path into such an output (`{{x.output.a}}` is "" too), because
/// the dependent chose to run without it. An absent `input` means `"{{input}}"`.
pub fn render_input(step: &StepDef, ctx: &RenderCtx) -> Result<Value, RenderError> {
    let mut r = Renderer {
        step: &step.id,
        ctx,
        parsed: HashMap::new(),
    };
    match &step.input {
        Some(v) => r.value(v),
        None => r.string("{{input}}"),
    }
}

/// Per-call state: outputs parsed as JSON once, however many placeholders read them.
struct Renderer<'c, 'a> {
    step: &'c str,
    ctx: &'c RenderCtx<'a>,
    parsed: HashMap<String, Parsed>,
}

/// A step output as seen through a path placeholder, parsed once per render.
enum Parsed {
    /// The step has no output (failed with `continue_on_error`).
    NoOutput,
    /// The output is not JSON.
    NotJson,
    /// The output parsed as JSON.
    Json(Value),
}

/// A resolved placeholder: either text (an output verbatim) or a JSON value.
enum Resolved<'v> {
    Text(String),
    Json(Cow<'v, Value>),
}

impl Renderer<'_, '_> {
    fn value(&mut self, v: &Value) -> Result<Value, RenderError> {
        Ok(match v {
            Value::String(s) => self.string(s)?,
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| self.value(item))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => {
                let mut out = serde_json::Map::with_capacity(map.len());
                for (k, item) in map {
                    out.insert(k.clone(), self.value(item)?);
                }
                Value::Object(out)
            }
            other => other.clone(),
        })
    }

    fn string(&mut self, s: &str) -> Result<Value, RenderError> {
        if !s.contains("{{") {
            return Ok(Value::String(s.to_string()));
        }
        let pieces = parse(s).map_err(|message| RenderError::Syntax {
            step: self.step.to_string(),
            message,
        })?;
        if let [Piece::Ref(r)] = pieces.as_slice() {
            // The whole string is one placeholder: structured values pass through unchanged.
            return Ok(match self.resolve(r)? {
                Resolved::Text(t) => Value::String(t),
                Resolved::Json(v) => match v.into_owned() {
                    Value::String(t) => Value::String(t),
                    v @ (Value::Object(_) | Value::Array(_)) => v,
                    other => Value::String(other.to_string()),
                },
            });
        }
        let mut out = String::with_capacity(s.len());
        for piece in &pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Ref(r) => match self.resolve(r)? {
                    Resolved::Text(t) => out.push_str(&t),
                    Resolved::Json(v) => match v.as_ref() {
                        Value::String(t) => out.push_str(t),
                        other => out.push_str(&other.to_string()),
                    },
                },
            }
        }
        Ok(Value::String(out))
    }

    fn resolve<'s>(&'s mut self, r: &TemplateRef) -> Result<Resolved<'s>, RenderError> {
        let step = self.step;
        let ctx = self.ctx;
        match r {
            TemplateRef::Input(path) => {
                let v = follow(ctx.input, "input", path, |missing| RenderError::Missing {
                    step: step.to_string(),
                    template: r.to_string(),
                    missing,
                })?;
                Ok(Resolved::Json(Cow::Borrowed(v)))
            }
            TemplateRef::Output { step: from, path } => {
                if path.is_empty() {
                    return Ok(Resolved::Text((ctx.outputs)(from).unwrap_or_default()));
                }
                let parsed =
                    self.parsed
                        .entry(from.clone())
                        .or_insert_with(|| match (ctx.outputs)(from) {
                            None => Parsed::NoOutput,
                            Some(text) => {
                                parse_output_json(&text).map_or(Parsed::NotJson, Parsed::Json)
                            }
                        });
                let json = match parsed {
                    // No output at all: the documented "" for a continue_on_error failure.
                    Parsed::NoOutput => return Ok(Resolved::Text(String::new())),
                    Parsed::NotJson => {
                        return Err(RenderError::NotJson {
                            step: step.to_string(),
                            template: r.to_string(),
                            from: from.clone(),
                        });
                    }
                    Parsed::Json(json) => &*json,
                };
                let root = format!("{from}.output");
                let v = follow(json, &root, path, |missing| RenderError::Missing {
                    step: step.to_string(),
                    template: r.to_string(),
                    missing,
                })?;
                Ok(Resolved::Json(Cow::Borrowed(v)))
            }
        }
    }
}

/// Walk `path` from `root`: object keys by name, array elements by numeric index.
fn follow<'v>(
    root: &'v Value,
    root_name: &str,
    path: &[String],
    err: impl Fn(String) -> RenderError,
) -> Result<&'v Value, RenderError> {
    let mut cur = root;
    let mut here = root_name.to_string();
    for seg in path {
        cur = match cur {
            Value::Object(map) => match map.get(seg) {
                Some(v) => v,
                None => {
                    let mut keys: Vec<&str> = map.keys().map(String::as_str).take(20).collect();
                    keys.sort_unstable();
                    let more = if map.len() > keys.len() { ", …" } else { "" };
                    return Err(err(format!(
                        "no field `{seg}` in `{here}` (fields: {}{more})",
                        keys.join(", ")
                    )));
                }
            },
            Value::Array(items) => match seg.parse::<usize>().ok().and_then(|i| items.get(i)) {
                Some(v) => v,
                None => {
                    return Err(err(format!(
                        "`{here}` is an array of {} items; `{seg}` is not an index into it",
                        items.len()
                    )));
                }
            },
            scalar => {
                let kind = match scalar {
                    Value::String(_) => "a string",
                    Value::Number(_) => "a number",
                    Value::Bool(_) => "a boolean",
                    _ => "null",
                };
                return Err(err(format!(
                    "`{here}` is {kind}, not an object or array, so it has no `{seg}`"
                )));
            }
        };
        here.push('.');
        here.push_str(seg);
    }
    Ok(cur)
}

/// Parse a step output as JSON: the whole text, or else the content of its single fenced
/// block tagged `json` (or untagged), because models like to wrap JSON in Markdown.
fn parse_output_json(text: &str) -> Option<Value> {
    let trimmed = text.trim();
    if let Ok(v) = serde_json::from_str(trimmed) {
        return Some(v);
    }
    let mut blocks = fenced_json_blocks(trimmed);
    match (blocks.next(), blocks.next()) {
        (Some(body), None) => serde_json::from_str(body.trim()).ok(),
        _ => None,
    }
}

/// Bodies of the ```` ``` ```` fenced blocks whose info string is empty or `json`.
fn fenced_json_blocks(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        loop {
            let open = rest.find("```")?;
            let after = &rest[open + 3..];
            let line_end = after.find('\n')?;
            let info = after[..line_end].trim();
            let body_start = &after[line_end + 1..];
            let close = body_start.find("```")?;
            let body = &body_start[..close];
            rest = &body_start[close + 3..];
            if info.is_empty() || info.eq_ignore_ascii_case("json") {
                return Some(body);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn step(input: Option<Value>) -> StepDef {
        StepDef {
            id: "me".into(),
            agent: "a".into(),
            input,
            depends_on: vec![],
            continue_on_error: false,
            retry: 0,
        }
    }

    /// Render `input` with the given run input and outputs.
    fn render(
        input: Value,
        run: Value,
        outs: &[(&str, Option<&str>)],
    ) -> Result<Value, RenderError> {
        let outputs = |id: &str| {
            outs.iter()
                .find(|(k, _)| *k == id)
                .and_then(|(_, v)| v.map(str::to_string))
        };
        let ctx = RenderCtx {
            input: &run,
            outputs: &outputs,
        };
        render_input(&step(Some(input)), &ctx)
    }

    fn out(step: &str, path: &[&str]) -> TemplateRef {
        TemplateRef::Output {
            step: step.into(),
            path: path.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn references_finds_every_form_recursively() {
        let v = json!({
            "a": "{{input}} and {{ input.repo.name }}",
            "b": ["{{review.output}}", {"c": "x {{review.output.items.0.title}} y"}],
            "n": 3, "t": true, "z": null
        });
        let refs = references(&v).expect("parses");
        assert_eq!(
            refs,
            vec![
                TemplateRef::Input(vec![]),
                TemplateRef::Input(vec!["repo".into(), "name".into()]),
                out("review", &[]),
                out("review", &["items", "0", "title"]),
            ]
        );
        assert_eq!(refs[3].to_string(), "{{review.output.items.0.title}}");
        assert!(
            references(&json!("no templates } { here }}"))
                .expect("ok")
                .is_empty()
        );
    }

    #[test]
    fn malformed_templates_are_errors() {
        let cases = [
            ("{{review.output", "unclosed `{{`"),
            ("a {{review.output b {{c.output}}", "unclosed `{{`"),
            ("{{}}", "empty placeholder `{{}}`"),
            ("{{  }}", "empty placeholder"),
            (
                "{{review}}",
                "must be `{{input...}}` or `{{review.output...}}`",
            ),
            (
                "{{review.result}}",
                "must be `{{input...}}` or `{{review.output...}}`",
            ),
            ("{{review..output}}", "an empty path segment"),
            ("{{input.}}", "an empty path segment"),
            ("{{review.output.a b}}", "the invalid segment `a b`"),
        ];
        for (text, want) in cases {
            let err = references(&json!({"k": [text]})).expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn escaped_braces_are_literal() {
        assert!(
            references(&json!(r"\{{not.a.template}}"))
                .expect("ok")
                .is_empty()
        );
        let got = render(json!(r"x \{{y}} {{input}}"), json!("in"), &[]).expect("renders");
        assert_eq!(got, json!("x {{y}} in"));
    }

    #[test]
    fn absent_input_means_whole_run_input() {
        let run = json!({"diff": "d"});
        let outputs = |_: &str| None;
        let ctx = RenderCtx {
            input: &run,
            outputs: &outputs,
        };
        assert_eq!(render_input(&step(None), &ctx).expect("renders"), run);
        let run = json!("text");
        let ctx = RenderCtx {
            input: &run,
            outputs: &outputs,
        };
        assert_eq!(render_input(&step(None), &ctx).expect("renders"), run);
    }

    #[test]
    fn strings_are_interpolated() {
        let run = json!({"repo": "dispatch", "n": 3, "flags": [1, 2], "o": {"k": "v"}});
        let got = render(
            json!("{{input.repo}} has {{input.n}} {{input.flags}} {{input.o}}: {{r.output}}!"),
            run,
            &[("r", Some("LGTM"))],
        )
        .expect("renders");
        assert_eq!(got, json!(r#"dispatch has 3 [1,2] {"k":"v"}: LGTM!"#));
    }

    #[test]
    fn single_placeholder_passes_structures_through() {
        let run = json!({"o": {"k": [1, 2]}, "n": 3, "s": "str"});
        let got = render(
            json!({"whole": "{{input}}", "obj": "{{input.o}}", "arr": "{{input.o.k}}",
                   "num": "{{input.n}}", "s": "{{input.s}}", "padded": " {{input.o}}"}),
            run.clone(),
            &[],
        )
        .expect("renders");
        assert_eq!(got["whole"], run);
        assert_eq!(got["obj"], json!({"k": [1, 2]}));
        assert_eq!(got["arr"], json!([1, 2]));
        // Scalars stay strings: an input field typed as text must not turn into a number.
        assert_eq!(got["num"], json!("3"));
        assert_eq!(got["s"], json!("str"));
        assert_eq!(got["padded"], json!(r#" {"k":[1,2]}"#));
    }

    #[test]
    fn output_text_is_verbatim_even_if_json() {
        let got = render(
            json!("{{r.output}}"),
            json!(null),
            &[("r", Some("{\"a\": 1}"))],
        )
        .expect("renders");
        assert_eq!(got, json!("{\"a\": 1}"));
    }

    #[test]
    fn output_paths_nested_and_indexed() {
        let output = r#"{"summary": {"title": "T", "files": ["a.rs", "b.rs"]},
                         "items": [{"n": 1}, {"n": 2}], "0": "zero"}"#;
        let got = render(
            json!({"t": "{{r.output.summary.title}}", "f": "{{r.output.summary.files.1}}",
                   "obj": "{{r.output.items.1}}", "list": ["{{r.output.summary.files}}"],
                   "n": "n={{r.output.items.0.n}}", "key0": "{{r.output.0}}"}),
            json!(null),
            &[("r", Some(output))],
        )
        .expect("renders");
        assert_eq!(
            got,
            json!({"t": "T", "f": "b.rs", "obj": {"n": 2}, "list": [["a.rs", "b.rs"]],
                   "n": "n=1", "key0": "zero"})
        );
    }

    #[test]
    fn fenced_json_output() {
        let output =
            "Here is the result:\n\n```json\n{\"verdict\": \"ok\", \"issues\": []}\n```\n\nDone.";
        let got = render(
            json!("{{r.output.verdict}}"),
            json!(null),
            &[("r", Some(output))],
        )
        .expect("renders");
        assert_eq!(got, json!("ok"));
        let untagged = "```\n[10, 20]\n```";
        let got = render(
            json!("{{r.output.1}}"),
            json!(null),
            &[("r", Some(untagged))],
        )
        .expect("renders");
        assert_eq!(got, json!("20"));
        // Two JSON blocks are ambiguous; a non-JSON fence does not count.
        let two = "```json\n{\"a\":1}\n```\n```json\n{\"a\":2}\n```";
        let err = render(json!("{{r.output.a}}"), json!(null), &[("r", Some(two))]).expect_err("2");
        assert!(matches!(err, RenderError::NotJson { .. }), "{err}");
        let mixed = "```rust\nfn main() {}\n```\n```json\n{\"a\":3}\n```";
        let got =
            render(json!("{{r.output.a}}"), json!(null), &[("r", Some(mixed))]).expect("renders");
        assert_eq!(got, json!("3"));
    }

    #[test]
    fn missing_output_renders_empty() {
        let got = render(
            json!({"a": "{{r.output}}", "b": "x{{r.output.deep.path}}y"}),
            json!(null),
            &[("r", None)],
        )
        .expect("renders");
        assert_eq!(got, json!({"a": "", "b": "xy"}));
    }

    #[test]
    fn render_errors_name_step_template_and_what_is_missing() {
        let err = render(
            json!("{{r.output.a}}"),
            json!(null),
            &[("r", Some("plain text"))],
        )
        .expect_err("not json");
        let msg = err.to_string();
        assert!(msg.contains("step `me`"), "{msg}");
        assert!(msg.contains("`{{r.output.a}}`"), "{msg}");
        assert!(msg.contains("output of `r`"), "{msg}");
        assert!(msg.contains("not JSON"), "{msg}");

        let err = render(
            json!("{{r.output.summary.title}}"),
            json!(null),
            &[("r", Some(r#"{"summary": {"text": "x", "files": []}}"#))],
        )
        .expect_err("missing");
        let msg = err.to_string();
        assert!(
            msg.contains("step `me`: `{{r.output.summary.title}}`"),
            "{msg}"
        );
        assert!(
            msg.contains("no field `title` in `r.output.summary`"),
            "{msg}"
        );
        assert!(msg.contains("fields: files, text"), "{msg}");

        let err =
            render(json!("{{r.output.2}}"), json!(null), &[("r", Some("[1]"))]).expect_err("index");
        assert!(
            err.to_string()
                .contains("`r.output` is an array of 1 items; `2`"),
            "{err}"
        );
        let err =
            render(json!("{{r.output.x}}"), json!(null), &[("r", Some("[1]"))]).expect_err("index");
        assert!(err.to_string().contains("`x` is not an index"), "{err}");

        let err = render(json!("{{input.a}}"), json!("a string"), &[]).expect_err("input");
        let msg = err.to_string();
        assert!(msg.contains("step `me`: `{{input.a}}`"), "{msg}");
        assert!(
            msg.contains("`input` is a string, not an object or array"),
            "{msg}"
        );

        let err = render(json!("{{r.output"), json!(null), &[]).expect_err("syntax");
        assert!(matches!(err, RenderError::Syntax { .. }));
        assert!(err.to_string().contains("step `me`"), "{err}");
    }

    #[test]
    fn substituted_text_is_not_rescanned() {
        let got = render(
            json!("{{r.output}} {{input}}"),
            json!("{{input}}"),
            &[("r", Some("{{r.output}}"))],
        )
        .expect("renders");
        assert_eq!(got, json!("{{r.output}} {{input}}"));
    }

    #[test]
    fn long_garbage_is_clipped_in_errors() {
        let long = format!("{{{{{}", "x".repeat(10_000));
        let err = references(&json!(long)).expect_err("unclosed");
        assert!(err.len() < 200, "{}", err.len());
        let multibyte = format!("{{{{{}", "é".repeat(100));
        assert!(references(&json!(multibyte)).is_err());
    }
}
