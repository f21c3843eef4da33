//! Turning a task's input (a string or a JSON object) into the user message.

use serde_json::Value;

use super::EngineError;

/// Largest input accepted, in bytes of its JSON form (models cannot take more anyway).
pub const MAX_INPUT_BYTES: usize = 4 * 1024 * 1024;

/// Inputs must be a non-empty string or an object; anything else is a mistake
/// worth reporting rather than sending to a paid model.
pub fn validate(input: &Value) -> Result<(), EngineError> {
    match input {
        Value::String(s) if s.trim().is_empty() => Err(EngineError::BadInput(
            "`input` is empty: give the agent the text or an object with the material it needs"
                .into(),
        )),
        Value::String(_) | Value::Object(_) => {
            let size = input.to_string().len();
            if size > MAX_INPUT_BYTES {
                return Err(EngineError::BadInput(format!(
                    "`input` is {size} bytes; the limit is {MAX_INPUT_BYTES}: put large material in the KB and pass its path"
                )));
            }
            Ok(())
        }
        Value::Null => Err(EngineError::BadInput(
            "`input` is missing: pass a string or an object".into(),
        )),
        other => Err(EngineError::BadInput(format!(
            "`input` must be a string or an object, not {}",
            match other {
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                _ => "a list",
            }
        ))),
    }
}

/// The user message for an input: a string as it is; an object as one
/// markdown section per field (strings verbatim, other values as JSON), which
/// models read more reliably than a JSON blob holding a diff.
pub fn render_input(input: &Value) -> String {
    match input {
        Value::String(s) => s.clone(),
        Value::Object(map) => {
            let mut out = String::new();
            for (k, v) in map {
                if !out.is_empty() {
                    out.push_str("\n\n");
                }
                out.push_str("## ");
                out.push_str(k);
                out.push_str("\n\n");
                match v {
                    Value::String(s) => out.push_str(s),
                    other => {
                        out.push_str("```json\n");
                        out.push_str(
                            &serde_json::to_string_pretty(other)
                                .unwrap_or_else(|_| other.to_string()),
                        );
                        out.push_str("\n```");
                    }
                }
            }
            out
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_become_sections() {
        let s = render_input(&json!({"diff": "- a\n+ b", "files": ["x.rs"]}));
        assert_eq!(
            s,
            "## diff\n\n- a\n+ b\n\n## files\n\n```json\n[\n  \"x.rs\"\n]\n```"
        );
        assert_eq!(render_input(&json!("plain")), "plain");
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert!(validate(&json!("  ")).is_err());
        assert!(validate(&json!(3)).is_err());
        assert!(validate(&json!(null)).is_err());
        assert!(validate(&json!({"a": 1})).is_ok());
    }
}
