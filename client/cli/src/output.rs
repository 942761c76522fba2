//! Printing keys and values: raw bytes where exact, escaped text for people, JSON for tools.

use base64::Engine;
use serde_json::{json, Value};

/// Printable form of arbitrary bytes, for `skv scan` and the demo's scan (one rule for both,
/// documented in `skv scan --help`): UTF-8 text stays as it is, quotes included; a backslash
/// becomes `\\`, tab, newline and carriage return become `\t`, `\n`, `\r`, any other ASCII
/// control byte and any byte that is not part of valid UTF-8 becomes `\xNN`, and other
/// control characters `\u{NNNN}`. So one entry is always one line, the tab between key and
/// value is never part of either, and different bytes never print the same.
pub(crate) fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c if c.is_control() => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escape_keeps_text_and_quotes_and_marks_everything_else() {
        assert_eq!(escape(br#"{"name":"Alice"}"#), r#"{"name":"Alice"}"#);
        assert_eq!(escape("it's é".as_bytes()), "it's é");
        assert_eq!(escape(b"a\tb\nc\rd\\e"), r"a\tb\nc\rd\\e");
        assert_eq!(escape(b"\x00\x1b\x7f"), r"\x00\x1b\x7f");
        assert_eq!(escape(b"ok\xff\xfe!"), r"ok\xff\xfe!");
        assert_eq!(escape("\u{85}".as_bytes()), r"\u{0085}");
        // A literal backslash-n and a newline print differently.
        assert_ne!(escape(b"\\n"), escape(b"\n"));
    }
}
