//! Printing keys and values: raw bytes where exact, escaped text for people, JSON for tools.

use base64::Engine;
use serde_json::{json, Value};

/// Printable form of arbitrary bytes: UTF-8 stays as is, control and invalid bytes are
/// escaped (`\n`, `\x00`), so one entry is always one line.
pub(crate) fn escape(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.escape_debug().to_string(),
        Err(_) => bytes.escape_ascii().to_string(),
    }
}

/// JSON string for bytes that are UTF-8, else `{"base64": "..."}`.
pub(crate) fn text(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }),
    }
}

/// One key/version/value as a JSON object.
pub(crate) fn entry_json(key: &[u8], version: u64, value: &[u8]) -> Value {
    json!({ "key": text(key), "version": version, "value": text(value) })
}

/// Print one JSON document on its own line.
pub(crate) fn json_line(value: &Value) {
    println!("{value}");
}
