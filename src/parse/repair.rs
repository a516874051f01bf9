//! Repair of JSON lines broken by an unescaped message.
//!
//! A JSON-looking format string is a common way to get "JSON logs" out of Python's `logging`:
//!
//! ```text
//! '{"timestamp":"%(asctime)s","level":"%(levelname)s","message":"%(message)s","metadata":%(metadata)s}'
//! ```
//!
//! `%(message)s` is pasted in as it is, so a message with a `"`, a backslash or a tab makes the
//! line invalid JSON, and with it every metric the line should feed. When a line fails to parse,
//! [`unescaped_message`] looks for the message key (`"message":"`), takes the text from there to a
//! closing quote that is followed by `,"key":` or by the object's end, escapes that text as JSON
//! would have, and keeps the result only if the whole line then parses as a JSON object. Closing
//! quotes are tried from the first to the last (at most [`MAX_TRIES`]), so the message is the
//! shortest text that makes the line whole: a quote inside the message that happens to be
//! followed by `,"` yields a line that still fails to parse, and the next candidate is tried.
//!
//! What it cannot repair, by design: damage outside the message (a line cut short stays
//! `invalid_json`); a message whose backslashes happen to form valid JSON escapes (`C:\new` is
//! valid JSON, read as a newline, and cannot be told from an intended escape); a message with a
//! newline, which splits the record over lines (multi-line joining sees those).
//!
//! Cost: nothing for lines that parse; a repaired line costs one extra parse per candidate tried.

use serde::de::IgnoredAny;

/// Most closing-quote candidates tried per line.
pub const MAX_TRIES: usize = 16;

/// The line with the value of the first of `keys` found re-escaped, if that makes it a valid
/// JSON object. `keys` are top-level keys (`message`, `msg`).
pub fn unescaped_message(line: &str, keys: &[String]) -> Option<String> {
    let trimmed = line.trim_start();
    if !trimmed.starts_with('{') {
        return None;
    }
    for key in keys {
        let Some(start) = value_start(line, key) else {
            continue;
        };
        let bytes = line.as_bytes();
        let mut tries = 0;
        let mut from = start;
        while let Some(off) = memchr::memchr(b'"', &bytes[from..]) {
            let q = from + off;
            from = q + 1;
            if !closes_value(&bytes[q + 1..]) {
                continue;
            }
            tries += 1;
            let mut fixed = String::with_capacity(line.len() + 16);
            fixed.push_str(&line[..start]);
            escape_into(&line[start..q], &mut fixed);
            fixed.push_str(&line[q..]);
            if is_object(&fixed) {
                return Some(fixed);
            }
            // Past a `","key":` that did not make the line whole, the damage is not in the
            // message (a line cut short before its last `}`): going on would swallow members.
            if tries == MAX_TRIES || is_member_boundary(&bytes[q + 1..]) {
                break;
            }
        }
    }
    None
}

/// Byte offset just after the opening quote of `"key":"` (spaces allowed around the colon).
fn value_start(line: &str, key: &str) -> Option<usize> {
    let pattern = format!("\"{key}\"");
    let mut from = 0;
    while let Some(off) = line[from..].find(&pattern) {
        let mut i = from + off + pattern.len();
        from = i;
        let b = line.as_bytes();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b.get(i) != Some(&b':') {
            continue;
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b.get(i) == Some(&b'"') {
            return Some(i + 1);
        }
    }
    None
}

/// Whether what follows a quote can be the rest of an object after a string value: `,"key"`
/// or the closing `}`.
fn closes_value(rest: &[u8]) -> bool {
    let mut i = 0;
    let skip = |i: &mut usize| {
        while *i < rest.len() && rest[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    skip(&mut i);
    match rest.get(i) {
        Some(b'}') => true,
        Some(b',') => {
            i += 1;
            skip(&mut i);
            rest.get(i) == Some(&b'"')
        }
        _ => false,
    }
}

/// Whether `rest` starts with `, "key":` (the next member of an object).
fn is_member_boundary(rest: &[u8]) -> bool {
    let text = match std::str::from_utf8(rest) {
        Ok(t) => t,
        Err(e) => std::str::from_utf8(&rest[..e.valid_up_to()]).unwrap_or_default(),
    };
    let Some(after) = text.trim_start().strip_prefix(',') else {
        return false;
    };
    let Some(key) = after.trim_start().strip_prefix('"') else {
        return false;
    };
    match key.find(['"', '\\']) {
        Some(end) if key.as_bytes()[end] == b'"' => key[end + 1..].trim_start().starts_with(':'),
        _ => false,
    }
}

/// Appends `raw` as the inside of a JSON string.
fn escape_into(raw: &str, out: &mut String) {
    for c in raw.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

fn is_object(text: &str) -> bool {
    text.trim_start().starts_with('{') && serde_json::from_str::<IgnoredAny>(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys() -> Vec<String> {
        vec!["message".into(), "msg".into()]
    }

    fn message_of(line: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["message"].as_str().unwrap().to_string()
    }

    #[test]
    fn a_quote_in_the_message_of_the_python_formatter_is_repaired() {
        let line = r#"{"timestamp":"2024-01-01 00:00:00,019","level":"ERROR","component":"EventBus","message":"Handler failed: KeyError "user_id"","metadata":{"trace_id":"5f0c","error_type":"KeyError","error_message":"'user_id'"}}"#;
        assert!(serde_json::from_str::<serde_json::Value>(line).is_err());
        let fixed = unescaped_message(line, &keys()).unwrap();
        assert_eq!(message_of(&fixed), r#"Handler failed: KeyError "user_id""#);
        let v: serde_json::Value = serde_json::from_str(&fixed).unwrap();
        assert_eq!(v["metadata"]["error_type"], "KeyError");
    }

    #[test]
    fn backslashes_tabs_and_quotes_followed_by_commas_are_repaired() {
        let line = "{\"level\":\"INFO\",\"message\":\"path C:\\temp\\x\tsaid \"a\", \"b\"\",\"metadata\":{}}";
        let fixed = unescaped_message(line, &keys()).unwrap();
        assert_eq!(message_of(&fixed), "path C:\\temp\\x\tsaid \"a\", \"b\"");
        // `"a",` followed by a space and a quote is a candidate; it fails and the next is taken.
        let line = r#"{"message":"x "a","b" y","n":1}"#;
        let fixed = unescaped_message(line, &keys()).unwrap();
        assert_eq!(message_of(&fixed), r#"x "a","b" y"#);
        let v: serde_json::Value = serde_json::from_str(&fixed).unwrap();
        assert_eq!(v["n"], 1);
    }

    #[test]
    fn the_message_may_be_last_and_keys_in_any_order() {
        let line = r#"{"metadata":{"a":1},"level":"INFO","message":"say "hi""}"#;
        let fixed = unescaped_message(line, &keys()).unwrap();
        assert_eq!(message_of(&fixed), r#"say "hi""#);
        let line = r#"{"msg" : "a\b"}"#;
        let fixed = unescaped_message(line, &keys()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&fixed).unwrap();
        assert_eq!(v["msg"], "a\\b");
    }

    #[test]
    fn damage_outside_the_message_is_not_repaired() {
        for line in [
            // Cut before the last `}`: a later quote would make it "whole" by swallowing the
            // trace_id and metadata into the message.
            r#"{"message": "Task retry scheduled", "trace_id": "7398", "metadata": {"error_type": "ConnectionError"}"#,
            r#"{"message":"said "x", "y": 1","z":2"#,
            r#"{"message":"ok","metadata":{"a":1"#,
            r#"{"message":"cut "here"#,
            "Traceback (most recent call last):",
            r#"{"level":"INFO","text":"no "message" key"}"#,
            r#"["message","x"]"#,
        ] {
            assert_eq!(unescaped_message(line, &keys()), None, "{line}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_only_returns_objects(s in "\\PC{0,200}") {
            let line = format!("{{\"message\":\"{s}\",\"x\":{{\"y\":1}}}}");
            if let Some(fixed) = unescaped_message(&line, &keys()) {
                prop_assert!(is_object(&fixed));
            }
            let _ = unescaped_message(&s, &keys());
        }

        #[test]
        fn any_message_pasted_unescaped_is_recovered_exactly(s in "[^\n\r]{0,80}") {
            // The formatter's shape with an arbitrary message: the repair gives it back, unless
            // the message's own backslashes form valid JSON (then the line parses as it is).
            let line = format!("{{\"level\":\"INFO\",\"message\":\"{s}\",\"metadata\":{{\"k\":\"v\"}}}}");
            if serde_json::from_str::<serde_json::Value>(&line).is_err() {
                let fixed = unescaped_message(&line, &keys());
                // A quote inside the message that looks like the value's end is ambiguous.
                let tail = format!("{s}\",\"metadata\"");
                let ambiguous = s
                    .char_indices()
                    .any(|(i, c)| c == '"' && closes_value(&tail.as_bytes()[i + 1..]));
                if !ambiguous {
                    prop_assert_eq!(fixed.map(|f| message_of(&f)), Some(s));
                }
            }
        }
    }
}
