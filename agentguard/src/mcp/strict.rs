//! Strict JSON: what agentguard decides on must be what the server reads.
//!
//! `serde_json::Value` keeps the last of two equal keys, Go's `encoding/json`
//! also matches keys case-insensitively, and parsers differ on which
//! duplicate wins. A body such as `{"name": "list_issues", "name":
//! "delete_repo"}` could then be allowed here as one tool and run upstream as
//! another. So a body with a repeated key, in any object at any depth, is
//! refused, and so is one nested deeper than [`MAX_DEPTH`].

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Deepest nesting of arrays and objects accepted. MCP messages are a few
/// levels deep; tool arguments rarely more than ten.
pub const MAX_DEPTH: usize = 64;

/// Parses `bytes` as one JSON value, refusing duplicate keys and nesting
/// deeper than [`MAX_DEPTH`]. The error is a short reason for the agent.
pub fn parse(bytes: &[u8]) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Seed { depth: 0 }
        .deserialize(&mut de)
        .map_err(|e| format!("invalid JSON: {e}"))?;
    de.end().map_err(|e| format!("invalid JSON: {e}"))?;
    Ok(value)
}

struct Seed {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Seed {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl Seed {
    fn deeper<E: de::Error>(&self) -> Result<Seed, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(Seed {
            depth: self.depth + 1,
        })
    }
}

impl<'de> Visitor<'de> for Seed {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity; serde_json never produces them.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self.deeper()?)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(self.deeper()?)?;
            if out.insert(key.clone(), value).is_some() {
                return Err(de::Error::custom(format!("key {key:?} appears twice")));
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_json_parses() {
        let v = parse(br#"{"a": [1, -2, 3.5, "x", null, true, {"b": {}}]}"#).unwrap();
        assert_eq!(v["a"][6]["b"], serde_json::json!({}));
        assert_eq!(v["a"][1], serde_json::json!(-2));
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        for body in [
            r#"{"name": "a", "name": "b"}"#,
            r#"{"params": {"name": "list_issues", "name": "delete_repo"}}"#,
            r#"[{"x": 1}, {"y": {"z": 1, "z": 2}}]"#,
            // An escape spells the same key.
            r#"{"name": "a", "n\u0061me": "b"}"#,
        ] {
            let err = parse(body.as_bytes()).unwrap_err();
            assert!(err.contains("appears twice"), "{body}: {err}");
        }
    }

    #[test]
    fn depth_trailing_bytes_and_bad_text_are_refused() {
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(parse(deep.as_bytes()).unwrap_err().contains("deeper"));
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(ok.as_bytes()).is_ok());
        for bad in [
            &b"{} {}"[..],
            b"{\"a\": 1,}",
            b"\xef\xbb\xbf{}",
            b"{\"a\": \"\\ud800\"}",
            b"{\"a\": \"\xff\"}",
            b"",
        ] {
            assert!(
                parse(bad).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
