//! What text the database can hold. PostgreSQL's `text` cannot store U+0000 (the whole statement fails,
//! and with it the transaction it ran in); SQLite can, but both refuse it here so that the two behave
//! alike. Every way text comes in (JSON bodies, NDJSON import lines, form fields, the CLI) is checked by
//! the functions of this module, which also word the error.

use serde_json::Value;

use super::{Result, StoreError};

/// The message for a field that holds U+0000.
pub fn nul_message(field: &str) -> String {
    format!("\"{field}\" contains a NUL character (U+0000), which cannot be stored")
}

/// `Invalid` naming `field` when `value` holds U+0000.
pub fn check_storable(field: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(StoreError::Invalid(nul_message(field)));
    }
    Ok(())
}

/// Text the model wrote, made storable: a language model can emit the byte 0 as a token (a byte-level
/// tokenizer has one for it), and one such completion made PostgreSQL refuse the whole round of pairs.
/// The character is dropped; people are never shown it anyway.
pub fn without_nul(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains('\0') {
        value.replace('\0', "").into()
    } else {
        value.into()
    }
}

/// The path (`rationale`, `completions.stop[1]`) of the first string or key holding U+0000 in a JSON
/// document that parses, or `None`. JSON can only carry U+0000 as the escape `\u0000` (a raw NUL byte is
/// not valid JSON), so documents without that escape are answered without parsing them again.
pub fn find_nul_in_json(json: &[u8]) -> Option<String> {
    const ESCAPE: &[u8] = b"\\u0000";
    if !json.windows(ESCAPE.len()).any(|w| w == ESCAPE) {
        return None;
    }
    let value: Value = serde_json::from_slice(json).ok()?;
    nul_path(&value, String::new())
}

fn nul_path(value: &Value, path: String) -> Option<String> {
    let named = |path: &str| {
        if path.is_empty() {
            "body".to_string()
        } else {
            path.to_string()
        }
    };
    match value {
        Value::String(s) if s.contains('\0') => Some(named(&path)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_path(v, format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let inner = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if k.contains('\0') {
                return Some(named(&inner));
            }
            nul_path(v, inner)
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_field_holding_nul() {
        assert_eq!(find_nul_in_json(br#"{"name": "fine"}"#), None);
        assert_eq!(
            find_nul_in_json(br#"{"name": "ok", "rationale": "a\u0000b"}"#).as_deref(),
            Some("rationale")
        );
        assert_eq!(
            find_nul_in_json(br#"{"completions": {"stop": ["x", "\u0000"]}}"#).as_deref(),
            Some("completions.stop[1]")
        );
        assert_eq!(find_nul_in_json(br#""\u0000""#).as_deref(), Some("body"));
        // An escaped backslash followed by "u0000" is six ordinary characters.
        assert_eq!(find_nul_in_json(br#"{"name": "\\u0000"}"#), None);
    }
}
