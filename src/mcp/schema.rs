//! JSON Schemas as clients should get them: only JSON Schema 2020-12
//! vocabulary, and output schemas small enough to cost nothing.
//!
//! schemars describes Rust integers with `format: uint32` and friends, which
//! no JSON Schema draft defines (clients print a warning per field); they
//! become `minimum: 0` (unsigned) or nothing. Input schemas keep their
//! descriptions, which is what a model reads to call a tool well. Output
//! schemas are cut to the shape of the top level: each field's type, the
//! values of enums, the required fields. Clients such as the Python SDK
//! validate every result against the output schema, so a deep schema is
//! paid on every call; the shallow one still rejects a result of the wrong
//! shape, and the tool descriptions say what the nested parts mean.

use serde_json::{Map, Value, json};

/// A JSON object, as rmcp's tool definitions hold schemas.
pub type JsonObject = Map<String, Value>;

/// Formats that JSON Schema 2020-12 defines; any other `format` is dropped.
const STANDARD_FORMATS: &[&str] = &[
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// Replace the formats schemars invents with standard keywords, everywhere
/// in `schema`: `uint*` becomes `minimum: 0`, other unknown formats go.
pub fn standard_formats(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::String(f)) = map.get("format")
                && !STANDARD_FORMATS.contains(&f.as_str())
            {
                let unsigned = f.starts_with("uint");
                map.remove("format");
                if unsigned && !map.contains_key("minimum") {
                    map.insert("minimum".into(), json!(0));
                }
            }
            for v in map.values_mut() {
                standard_formats(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(standard_formats),
        _ => {}
    }
}

/// The top-level shape of a schemars output schema: an object whose fields
/// keep their type (and enum values), nothing nested beyond that.
pub fn shallow_output(schema: &JsonObject) -> JsonObject {
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut out = JsonObject::new();
    out.insert("type".into(), json!("object"));
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        let shallow: JsonObject = props
            .iter()
            .map(|(k, v)| (k.clone(), shallow_field(v, &defs)))
            .collect();
        out.insert("properties".into(), Value::Object(shallow));
    }
    if let Some(required) = schema.get("required") {
        out.insert("required".into(), required.clone());
    }
    out
}

/// What one output field can be, gathered from its schema.
#[derive(Default)]
struct Shape {
    types: Vec<Value>,
    values: Option<Vec<Value>>,
    unsigned: bool,
    items: Option<Value>,
}

/// One field: its JSON type(s), enum values, `minimum: 0` for unsigned
/// integers, and the item type of arrays of plain values.
fn shallow_field(field: &Value, defs: &JsonObject) -> Value {
    let mut shape = Shape::default();
    shape.collect(field, defs, 0);
    let mut out = JsonObject::new();
    if let Some(mut vals) = shape.values {
        if shape.types.iter().any(|t| t == "null") && !vals.contains(&Value::Null) {
            vals.push(Value::Null);
        }
        out.insert("enum".into(), Value::Array(vals));
        return Value::Object(out);
    }
    let mut types = shape.types;
    match types.len() {
        0 => return Value::Object(out),
        1 => {
            out.insert("type".into(), types.remove(0));
        }
        _ => {
            out.insert("type".into(), Value::Array(types));
        }
    }
    if shape.unsigned {
        out.insert("minimum".into(), json!(0));
    }
    if let Some(i) = shape.items {
        out.insert("items".into(), i);
    }
    Value::Object(out)
}

impl Shape {
    /// Walk `$ref`, `anyOf`/`oneOf` and `type` to find what a field can be
    /// (a bounded depth: schemars' refs do not loop, but a bug must not hang).
    fn collect(&mut self, v: &Value, defs: &JsonObject, depth: usize) {
        let Some(map) = v.as_object() else { return };
        if depth > 8 {
            return;
        }
        if let Some(target) = map
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/$defs/"))
            .and_then(|name| defs.get(name))
        {
            self.collect(target, defs, depth + 1);
        }
        for key in ["anyOf", "oneOf"] {
            for alt in map.get(key).and_then(Value::as_array).into_iter().flatten() {
                self.collect(alt, defs, depth + 1);
            }
        }
        if let Some(c) = map.get("const") {
            self.values.get_or_insert_with(Vec::new).push(c.clone());
        }
        if let Some(Value::Array(e)) = map.get("enum") {
            self.values
                .get_or_insert_with(Vec::new)
                .extend(e.iter().cloned());
        }
        match map.get("type") {
            Some(Value::Array(ts)) => ts.iter().for_each(|t| self.add_type(t)),
            Some(t) => self.add_type(t),
            None => {}
        }
        let uint_format = map
            .get("format")
            .and_then(Value::as_str)
            .is_some_and(|f| f.starts_with("uint"));
        if uint_format || map.get("minimum") == Some(&json!(0)) {
            self.unsigned = true;
        }
        if let Some(item) = map.get("items")
            && let Some(t) = plain_type(item, defs)
        {
            self.items = Some(json!({ "type": t }));
        }
    }

    fn add_type(&mut self, t: &Value) {
        if !self.types.contains(t) {
            self.types.push(t.clone());
        }
    }
}

/// The type of an array item that is a plain string, number or boolean.
fn plain_type(item: &Value, defs: &JsonObject) -> Option<&'static str> {
    let resolved = match item.get("$ref").and_then(Value::as_str) {
        Some(r) => defs.get(r.strip_prefix("#/$defs/")?)?,
        None => item,
    };
    match resolved.get("type")?.as_str()? {
        "string" => Some("string"),
        "number" => Some("number"),
        "integer" => Some("integer"),
        "boolean" => Some("boolean"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_formats_become_standard_keywords() {
        let mut s = json!({"properties": {
            "a": {"type": "integer", "format": "uint32"},
            "b": {"type": "integer", "format": "int64"},
            "c": {"type": "number", "format": "double"},
            "d": {"type": "string", "format": "date-time"},
            "e": {"type": ["integer", "null"], "format": "uint16", "minimum": 1}}});
        standard_formats(&mut s);
        assert_eq!(
            s,
            json!({"properties": {
                "a": {"type": "integer", "minimum": 0},
                "b": {"type": "integer"},
                "c": {"type": "number"},
                "d": {"type": "string", "format": "date-time"},
                "e": {"type": ["integer", "null"], "minimum": 1}}})
        );
    }

    #[test]
    fn output_schemas_keep_the_top_level_shape() {
        let s = json!({
            "$defs": {
                "State": {"oneOf": [{"const": "a", "type": "string"}, {"const": "b", "type": "string"}]},
                "Inner": {"type": "object", "properties": {"x": {"type": "string"}}}
            },
            "type": "object",
            "properties": {
                "state": {"$ref": "#/$defs/State", "description": "long words"},
                "maybe": {"anyOf": [{"$ref": "#/$defs/State"}, {"type": "null"}]},
                "n": {"type": "integer", "format": "uint64"},
                "inner": {"$ref": "#/$defs/Inner"},
                "list": {"type": "array", "items": {"$ref": "#/$defs/Inner"}},
                "names": {"type": ["array", "null"], "items": {"type": "string"}},
                "any": {}
            },
            "required": ["state", "n"]
        });
        let out = shallow_output(s.as_object().unwrap());
        assert_eq!(
            Value::Object(out),
            json!({
                "type": "object",
                "properties": {
                    "state": {"enum": ["a", "b"]},
                    "maybe": {"enum": ["a", "b", null]},
                    "n": {"type": "integer", "minimum": 0},
                    "inner": {"type": "object"},
                    "list": {"type": "array"},
                    "names": {"type": ["array", "null"], "items": {"type": "string"}},
                    "any": {}
                },
                "required": ["state", "n"]
            })
        );
    }
}
