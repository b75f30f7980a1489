//! Serialization with sorted object keys, so rendered files do not depend on `serde_json`'s map feature flags
//! (another crate in the workspace enabling `preserve_order` must not change golden files).

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;

/// A JSON value that serializes its objects with keys in byte order.
#[derive(Debug, Clone, Copy)]
pub struct Sorted<'a>(pub &'a Value);

impl Serialize for Sorted<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                let mut out = serializer.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    out.serialize_entry(k, &Sorted(v))?;
                }
                out.end()
            }
            Value::Array(items) => {
                let mut out = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    out.serialize_element(&Sorted(item))?;
                }
                out.end()
            }
            other => other.serialize(serializer),
        }
    }
}

/// Pretty JSON with sorted keys and a final newline.
pub fn to_json_pretty(value: &Value) -> String {
    // INVARIANT: a serde_json::Value always serializes to JSON (string keys, finite numbers).
    let mut text = serde_json::to_string_pretty(&Sorted(value)).unwrap_or_default();
    text.push('\n');
    text
}

/// Compact JSON with sorted keys.
pub fn to_json_compact(value: &Value) -> String {
    // INVARIANT: as above.
    serde_json::to_string(&Sorted(value)).unwrap_or_default()
}

/// YAML with sorted keys.
pub fn to_yaml(value: &Value) -> String {
    // INVARIANT: a serde_json::Value always serializes to YAML.
    serde_norway::to_string(&Sorted(value)).unwrap_or_default()
}
