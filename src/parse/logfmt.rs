//! logfmt: `key=value` pairs separated by spaces, as logrus's text formatter, go-kit/log, Heroku's
//! router and many Go services write them (`time="2024-01-01T00:00:00Z" level=info msg="done"`).
//!
//! Written here rather than taken from crates.io: the one crate named `logfmt` (0.0.2) is
//! unmaintained and allocates a `String` per key and value, while weir's hot path borrows from
//! the line. This reader borrows everything except a quoted value that holds an escape.
//!
//! Grammar (go-logfmt's, with two leniencies noted):
//! - pairs are separated by runs of spaces or tabs;
//! - a key is a run of bytes above `' '` other than `=` and `"`;
//! - `key=value`, `key=` (empty value) and a bare `key` (no value; read as `true`, Heroku style);
//! - a value is unquoted (bytes above `' '` other than `"`; an `=` inside is kept, a leniency for
//!   hand-written `url=/a?b=c`) or quoted, `"..."` with Go's escapes (`\"`, `\\`, `\n`, `\t`,
//!   `\r`, `\uXXXX`, ...; an unknown escape is kept as written, the second leniency).
//!
//! A line is logfmt only if it holds at least one `key=value` (so a sentence of bare words is
//! not), and it is rejected whole at the first syntax error (an unterminated quote, a `"` in a
//! key or unquoted value, an empty key, a control character outside quotes): no pair of a broken
//! line reaches a metric, as with broken JSON.

use std::borrow::Cow;

/// A value as written in the line.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw<'a> {
    /// A key written alone, without `=`.
    Bare,
    /// Unquoted (possibly empty) or quoted text, unescaped.
    Text(Cow<'a, str>),
}

/// Why a line is not logfmt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// No `key=value` pair at all.
    NoPair,
    /// A syntax error at this byte offset.
    At(usize),
}

/// Splits `line` into its pairs, in order (a repeated key appears as often as it is written).
/// Calls `f` for each pair only once the whole line is known to be valid, so a caller never
/// sees part of a broken line.
pub fn parse<'a>(line: &'a str, mut f: impl FnMut(&'a str, Raw<'a>)) -> Result<(), Invalid> {
    // Validate first (cheap, no allocation), then emit: a broken line emits nothing.
    scan(line, &mut |_, _| {})?;
    scan(line, &mut f)
}

fn scan<'a>(line: &'a str, f: &mut impl FnMut(&'a str, Raw<'a>)) -> Result<(), Invalid> {
    let b = line.as_bytes();
    let mut i = 0;
    let mut pairs = 0usize;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' => {
                i += 1;
                continue;
            }
            b'=' | b'"' => return Err(Invalid::At(i)),
            c if c < b' ' || c == 0x7f => return Err(Invalid::At(i)),
            _ => {}
        }
        let key_start = i;
        while i < b.len() && b[i] > b' ' && b[i] != b'=' && b[i] != b'"' && b[i] != 0x7f {
            i += 1;
        }
        let key = &line[key_start..i];
        if i >= b.len() || b[i] == b' ' || b[i] == b'\t' {
            f(key, Raw::Bare);
            continue;
        }
        if b[i] != b'=' {
            return Err(Invalid::At(i));
        }
        i += 1;
        pairs += 1;
        if i < b.len() && b[i] == b'"' {
            let (value, end) = quoted(line, i).ok_or(Invalid::At(i))?;
            i = end;
            if i < b.len() && b[i] != b' ' && b[i] != b'\t' {
                return Err(Invalid::At(i));
            }
            f(key, Raw::Text(value));
            continue;
        }
        let v_start = i;
        while i < b.len() && b[i] > b' ' && b[i] != 0x7f {
            if b[i] == b'"' {
                return Err(Invalid::At(i));
            }
            i += 1;
        }
        if i < b.len() && b[i] != b' ' && b[i] != b'\t' {
            return Err(Invalid::At(i));
        }
        f(key, Raw::Text(Cow::Borrowed(&line[v_start..i])));
    }
    if pairs == 0 {
        return Err(Invalid::NoPair);
    }
    Ok(())
}

/// The quoted string starting at `open` (the `"`), unescaped, and the offset after its closing
/// quote. `None` when it is not closed.
fn quoted(line: &str, open: usize) -> Option<(Cow<'_, str>, usize)> {
    let b = line.as_bytes();
    let start = open + 1;
    let mut i = start;
    // Fast path: no backslash before the closing quote.
    while i < b.len() {
        match b[i] {
            b'"' => return Some((Cow::Borrowed(&line[start..i]), i + 1)),
            b'\\' => break,
            _ => i += 1,
        }
    }
    if i >= b.len() {
        return None;
    }
    let mut out = String::with_capacity(i - start + 16);
    out.push_str(&line[start..i]);
    let mut chars = line[i..].char_indices();
    while let Some((off, c)) = chars.next() {
        match c {
            '"' => return Some((Cow::Owned(out), i + off + 1)),
            '\\' => {
                let (_, e) = chars.next()?;
                match e {
                    '"' => out.push('"'),
                    '\\' => out.push('\\'),
                    '/' => out.push('/'),
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'a' => out.push('\u{7}'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'v' => out.push('\u{b}'),
                    'x' | 'u' | 'U' => {
                        let n = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let mut code = 0u32;
                        let mut ok = true;
                        let mut taken = String::new();
                        for _ in 0..n {
                            match chars.next() {
                                Some((_, h)) => {
                                    taken.push(h);
                                    match h.to_digit(16) {
                                        Some(d) => code = code * 16 + d,
                                        None => ok = false,
                                    }
                                }
                                None => return None,
                            }
                        }
                        match char::from_u32(code).filter(|_| ok) {
                            Some(ch) => out.push(ch),
                            None => {
                                out.push('\\');
                                out.push(e);
                                // A `"` among the taken characters closes the string: give up
                                // on the escape and let the caller see a syntax error.
                                if taken.contains('"') {
                                    return None;
                                }
                                out.push_str(&taken);
                            }
                        }
                    }
                    other => {
                        out.push('\\');
                        out.push(other);
                    }
                }
            }
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pairs(line: &str) -> Result<Vec<(String, Option<String>)>, Invalid> {
        let mut out = Vec::new();
        parse(line, |k, v| {
            out.push((
                k.to_string(),
                match v {
                    Raw::Bare => None,
                    Raw::Text(t) => Some(t.into_owned()),
                },
            ))
        })?;
        Ok(out)
    }

    fn kv(k: &str, v: &str) -> (String, Option<String>) {
        (k.to_string(), Some(v.to_string()))
    }

    #[test]
    fn logrus_text_formatter_line() {
        let line = r#"time="2024-01-01T00:00:00Z" level=info msg="request done" duration_ms=12 path=/api/v1"#;
        assert_eq!(
            pairs(line).unwrap(),
            vec![
                kv("time", "2024-01-01T00:00:00Z"),
                kv("level", "info"),
                kv("msg", "request done"),
                kv("duration_ms", "12"),
                kv("path", "/api/v1"),
            ]
        );
    }

    #[test]
    fn quoted_values_are_unescaped_and_borrowed_when_they_can_be() {
        let mut borrowed = Vec::new();
        parse(r#"a="plain" b="say \"hi\"\n\tok \\ \u00e9""#, |k, v| {
            if let Raw::Text(t) = v {
                borrowed.push((k, matches!(t, Cow::Borrowed(_)), t.into_owned()));
            }
        })
        .unwrap();
        assert_eq!(
            borrowed,
            vec![
                ("a", true, "plain".to_string()),
                ("b", false, "say \"hi\"\n\tok \\ é".to_string()),
            ]
        );
        // An unknown escape is kept as written.
        assert_eq!(pairs(r#"a="c:\q""#).unwrap(), vec![kv("a", r"c:\q")]);
        assert_eq!(pairs(r#"a="""#).unwrap(), vec![kv("a", "")]);
    }

    #[test]
    fn bare_keys_empty_values_and_duplicates() {
        assert_eq!(
            pairs("ok a= b=1 a=2   \tdone").unwrap(),
            vec![
                ("ok".to_string(), None),
                kv("a", ""),
                kv("b", "1"),
                kv("a", "2"),
                ("done".to_string(), None),
            ]
        );
        // `=` inside an unquoted value is kept.
        assert_eq!(pairs("url=/a?b=c").unwrap(), vec![kv("url", "/a?b=c")]);
        // Dotted keys are keys like any other.
        assert_eq!(
            pairs("http.status=200").unwrap(),
            vec![kv("http.status", "200")]
        );
    }

    #[test]
    fn garbage_is_rejected_whole() {
        for (line, want) in [
            ("just some words", Invalid::NoPair),
            ("", Invalid::NoPair),
            (r#"{"level":"info","msg":"json"}"#, Invalid::At(1)),
            (r#"a=1 msg="unterminated"#, Invalid::At(8)),
            ("a=1 =2", Invalid::At(4)),
            (r#"a=1 b=x"y"#, Invalid::At(7)),
            (r#"a="x"y"#, Invalid::At(5)),
            ("a=1 b\u{1}=2", Invalid::At(5)),
            (r#"a="\u00"#, Invalid::At(2)),
        ] {
            let mut seen = 0;
            assert_eq!(parse(line, |_, _| seen += 1), Err(want), "{line:?}");
            assert_eq!(seen, 0, "no pair of a broken line is emitted: {line:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = pairs(&s);
        }

        #[test]
        fn never_panics_on_logfmt_like_input(s in "[a-z =\"\\\\ux0-9]{0,60}") {
            let _ = pairs(&s);
        }

        #[test]
        fn quoted_values_round_trip(v in "\\PC{0,30}") {
            let escaped = v.replace('\\', "\\\\").replace('"', "\\\"");
            let line = format!("k=\"{escaped}\"");
            prop_assert_eq!(pairs(&line).unwrap(), vec![kv("k", &v)]);
        }
    }
}
