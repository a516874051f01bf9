//! Environment variables in pipeline files: `${NAME}`, `${NAME:-default}`, and `$$` for a
//! literal `$`, substituted in the file's text before TOML parsing (as Vector does), so a
//! variable can stand for any value: `endpoint = "${LOKI_URL}"`, `port = ${PORT:-9598}`.
//!
//! Decisions, and why:
//! - The raw text, not string values only: a number or a boolean can come from the environment
//!   too. But the substitution knows TOML's lexical context, so a value cannot change the shape
//!   of the file: inside a basic string (`"..."`, `"""..."""`) the value is escaped (a `"` or a
//!   `\` in a password stays a character of the password); inside a literal string (`'...'`) a
//!   value that the string cannot hold (`'`, a line break) is an error; outside strings a value
//!   with a line break is an error (it could add keys). `#` comments are copied untouched, so a
//!   commented-out `${OLD_TOKEN}` needs no variable.
//! - Only the braced form. A bare `$` (a regex's end anchor: `"^GET .*$"`) is kept as written;
//!   `$$` is a literal `$`, for writing `$${` where a `${` must stay.
//! - `${NAME:-default}` uses the default when `NAME` is unset or empty, as POSIX shells do; the
//!   default is file text, copied as written, and cannot contain `}`.
//! - Lines stay lines: no substitution adds or removes a line break, so an error's line number
//!   is the file's. Offsets into the substituted text map back to the file ([`original_offset`]),
//!   and errors quote the line as written (with `${NAME}`), never the substituted text.
//! - Secrets: values of variables whose names suggest a secret (`TOKEN`, `PASSWORD`, `KEY`...)
//!   are masked back to `${NAME}` in error messages and in `weir validate --explain`
//!   ([`Interpolation::mask`]); `Debug` prints no value.
//! - A running weir's environment is the one it started with: a reload re-reads the file but not
//!   the environment.
//!
//! [`original_offset`]: Interpolation::original_offset

use std::ffi::OsString;
use std::fmt;
use std::ops::Range;

use crate::located::{self, CompileError, Located};

/// Where variables are looked up: the process environment, or a map in tests.
pub trait Env {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<OsString>;
    /// The names of the set variables, for "did you mean".
    fn names(&self) -> Vec<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name)
    }
    fn names(&self) -> Vec<String> {
        std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect()
    }
}

impl Env for [(&str, &str)] {
    fn var(&self, name: &str) -> Option<OsString> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| OsString::from(v))
    }
    fn names(&self) -> Vec<String> {
        self.iter().map(|(k, _)| k.to_string()).collect()
    }
}

/// One replacement: `orig` of the file became `new` of the substituted text.
#[derive(Clone)]
struct Edit {
    orig: Range<usize>,
    new: Range<usize>,
}

/// The file's text with its variables substituted, and the map back to the file.
#[derive(Clone, Default)]
pub struct Interpolation {
    /// The substituted text; `None` when the file has nothing to substitute.
    text: Option<String>,
    edits: Vec<Edit>,
    /// Values of secret-looking variables and how the file wrote them (`${NAME}`).
    secrets: Vec<(String, String)>,
}

impl fmt::Debug for Interpolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the text or a value: they may hold secrets.
        f.debug_struct("Interpolation")
            .field("substitutions", &self.edits.len())
            .finish()
    }
}

/// Where the scanner is in TOML's lexical structure.
#[derive(Clone, Copy, PartialEq)]
enum Ctx {
    Bare,
    Comment,
    Basic,
    MultiBasic,
    Literal,
    MultiLiteral,
}

/// Whether a variable's name suggests that its value is a secret.
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    [
        "SECRET",
        "TOKEN",
        "PASS",
        "KEY",
        "AUTH",
        "CREDENTIAL",
        "WEBHOOK",
        "PRIVATE",
        "COOKIE",
        "SESSION",
        "DSN",
    ]
    .iter()
    .any(|w| upper.contains(w))
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `value` as it must be written at `ctx`, or why it cannot be.
fn escape(name: &str, value: &str, ctx: Ctx) -> Result<String, String> {
    let breaks = value.contains(['\n', '\r']);
    match ctx {
        Ctx::Basic | Ctx::MultiBasic => {
            let mut out = String::with_capacity(value.len());
            for c in value.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
                    c => out.push(c),
                }
            }
            Ok(out)
        }
        Ctx::Literal | Ctx::MultiLiteral => {
            let quote = if ctx == Ctx::Literal {
                value.contains('\'')
            } else {
                value.contains("'''")
            };
            if quote || breaks || value.chars().any(|c| c.is_control() && c != '\t') {
                Err(format!(
                    "the value of environment variable `{name}` cannot be written in a literal \
                     string ('...'): it holds a quote, a line break or a control character; \
                     use a basic string (\"${{{name}}}\"), which escapes it"
                ))
            } else {
                Ok(value.to_string())
            }
        }
        Ctx::Bare | Ctx::Comment => {
            if breaks {
                Err(format!(
                    "the value of environment variable `{name}` holds a line break, which \
                     outside a string would change the file's structure; quote it \
                     (\"${{{name}}}\")"
                ))
            } else {
                Ok(value.to_string())
            }
        }
    }
}

/// Substitutes the variables of `text` from `env`. An error is placed in `text` (the file as
/// written), at the `$` of the reference.
pub fn interpolate(text: &str, env: &(impl Env + ?Sized)) -> Result<Interpolation, CompileError> {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut edits: Vec<Edit> = Vec::new();
    let mut secrets = Vec::new();
    // Bytes of `text` before `copied` are in `out` already.
    let mut copied = 0;
    let mut ctx = Ctx::Bare;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let rest = &bytes[i..];
        match ctx {
            Ctx::Comment => {
                if b == b'\n' {
                    ctx = Ctx::Bare;
                }
                i += 1;
                continue;
            }
            Ctx::Bare => match b {
                b'#' => {
                    ctx = Ctx::Comment;
                    i += 1;
                    continue;
                }
                b'"' if rest.starts_with(b"\"\"\"") => {
                    ctx = Ctx::MultiBasic;
                    i += 3;
                    continue;
                }
                b'"' => {
                    ctx = Ctx::Basic;
                    i += 1;
                    continue;
                }
                b'\'' if rest.starts_with(b"'''") => {
                    ctx = Ctx::MultiLiteral;
                    i += 3;
                    continue;
                }
                b'\'' => {
                    ctx = Ctx::Literal;
                    i += 1;
                    continue;
                }
                _ => {}
            },
            Ctx::Basic | Ctx::MultiBasic if b == b'\\' => {
                // An escape: the next character is never a delimiter (nor a `$` of ours).
                i += 2;
                continue;
            }
            Ctx::Basic if b == b'"' || b == b'\n' => {
                ctx = Ctx::Bare;
                i += 1;
                continue;
            }
            Ctx::MultiBasic if rest.starts_with(b"\"\"\"") => {
                ctx = Ctx::Bare;
                i += 3;
                continue;
            }
            Ctx::Literal if b == b'\'' || b == b'\n' => {
                ctx = Ctx::Bare;
                i += 1;
                continue;
            }
            Ctx::MultiLiteral if rest.starts_with(b"'''") => {
                ctx = Ctx::Bare;
                i += 3;
                continue;
            }
            _ => {}
        }
        if b != b'$' {
            i += 1;
            continue;
        }
        let (end, value) = if rest.starts_with(b"$$") {
            (i + 2, "$".to_string())
        } else if rest.starts_with(b"${") {
            let line_end = text[i..].find('\n').map_or(text.len(), |n| i + n);
            let Some(close) = text[i..line_end].find('}').map(|n| i + n) else {
                return Err(CompileError::at(
                    i..line_end,
                    "unclosed `${`: write `${NAME}` or `${NAME:-default}`, or `$${` for a \
                     literal `${`",
                ));
            };
            let inner = &text[i + 2..close];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if !valid_name(name) {
                return Err(CompileError::at(
                    i..close + 1,
                    format!(
                        "invalid environment variable name {name:?} in `{}`: a name is letters, \
                         digits and `_`, not starting with a digit",
                        &text[i..=close]
                    ),
                ));
            }
            let set = match env.var(name) {
                Some(v) => Some(v.into_string().map_err(|_| {
                    CompileError::at(
                        i..close + 1,
                        format!("environment variable `{name}` is not valid UTF-8"),
                    )
                })?),
                None => None,
            };
            let value = match (set, default) {
                (Some(v), Some(d)) if v.is_empty() => d.to_string(),
                (Some(v), _) => {
                    let escaped =
                        escape(name, &v, ctx).map_err(|m| CompileError::at(i..close + 1, m))?;
                    if is_secret_name(name) && !v.is_empty() {
                        secrets.push((v.clone(), text[i..=close].to_string()));
                        if escaped != v {
                            secrets.push((escaped.clone(), text[i..=close].to_string()));
                        }
                    }
                    escaped
                }
                (None, Some(d)) => d.to_string(),
                (None, None) => {
                    let names = env.names();
                    let hint = located::closest(name, names.iter().map(String::as_str))
                        .map(|c| format!("; did you mean `{c}` (set)?"))
                        .unwrap_or_default();
                    return Err(CompileError::at(
                        i..close + 1,
                        format!(
                            "environment variable `{name}` is not set{hint}; set it, or give a \
                             default: `${{{name}:-default}}`"
                        ),
                    ));
                }
            };
            (close + 1, value)
        } else {
            i += 1;
            continue;
        };
        out.push_str(&text[copied..i]);
        let start = out.len();
        out.push_str(&value);
        edits.push(Edit {
            orig: i..end,
            new: start..out.len(),
        });
        copied = end;
        i = end;
    }
    if edits.is_empty() {
        return Ok(Interpolation::default());
    }
    out.push_str(&text[copied..]);
    // Longest first, so a value that contains another is masked whole.
    secrets.sort_by_key(|(v, _): &(String, String)| std::cmp::Reverse(v.len()));
    Ok(Interpolation {
        text: Some(out),
        edits,
        secrets,
    })
}

impl Interpolation {
    /// The substituted text of `original` (the file this was made from).
    pub fn text<'a>(&'a self, original: &'a str) -> &'a str {
        self.text.as_deref().unwrap_or(original)
    }

    /// The offset in the file of offset `at` of the substituted text: inside a substituted
    /// value, the `$` of its reference.
    pub fn original_offset(&self, at: usize) -> usize {
        let i = self.edits.partition_point(|e| e.new.start <= at);
        match i.checked_sub(1).map(|i| &self.edits[i]) {
            None => at,
            Some(e) if at < e.new.end => e.orig.start,
            Some(e) => e.orig.end + (at - e.new.end),
        }
    }

    /// `s` with every value of a secret-looking variable written back as `${NAME}`.
    pub fn mask(&self, s: &str) -> String {
        let mut s = s.to_string();
        for (value, written) in &self.secrets {
            if s.contains(value.as_str()) {
                s = s.replace(value.as_str(), written);
            }
        }
        s
    }

    /// Places `message` at offset `at` of the substituted text, quoting the line of
    /// `original` as written.
    pub fn locate(&self, path: &str, original: &str, at: usize, message: &str) -> Located {
        located::locate(path, original, self.original_offset(at), self.mask(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(text: &str, env: &[(&str, &str)]) -> String {
        match interpolate(text, env) {
            Ok(i) => i.text(text).to_string(),
            Err(e) => located::locate("p.toml", text, e.span.start, e.message).to_string(),
        }
    }

    #[test]
    fn substitutes_values_and_defaults() {
        let env = [("HOST", "loki:3100"), ("EMPTY", "")];
        assert_eq!(
            sub(
                "a = \"http://${HOST}/x\"\nb = \"${NOPE:-d}\"\nc = \"${EMPTY:-e}\"\nd = \"${EMPTY}\"",
                &env
            ),
            "a = \"http://loki:3100/x\"\nb = \"d\"\nc = \"e\"\nd = \"\""
        );
        assert_eq!(sub("port = ${PORT:-9598}", &env), "port = 9598");
        assert_eq!(sub("x = \"${HOST:-}\"", &env), "x = \"loki:3100\"");
    }

    #[test]
    fn dollars_that_are_not_references_stay() {
        let env = [("A", "1")];
        assert_eq!(sub("r = \"^GET .*$\"", &env), "r = \"^GET .*$\"");
        assert_eq!(
            sub("r = \"$${A} costs $$5\"", &env),
            "r = \"${A} costs $5\""
        );
        assert_eq!(
            sub("# token = \"${UNSET}\" and $$\nx = 1", &env),
            "# token = \"${UNSET}\" and $$\nx = 1"
        );
        assert_eq!(sub("s = \"# ${A}\"", &env), "s = \"# 1\"");
    }

    #[test]
    fn values_are_escaped_for_basic_strings() {
        let env = [("P", "a\"b\\c\nd")];
        assert_eq!(sub("p = \"${P}\"", &env), "p = \"a\\\"b\\\\c\\nd\"");
        let t = "p = \"${P}\"";
        let parsed: toml::Table =
            toml::from_str(interpolate(t, &env[..]).unwrap().text(t)).unwrap();
        assert_eq!(parsed["p"].as_str(), Some("a\"b\\c\nd"));
        assert_eq!(
            sub("p = \"\"\"\n${P}\"\"\"", &env),
            "p = \"\"\"\na\\\"b\\\\c\\nd\"\"\""
        );
    }

    #[test]
    fn unset_variable_is_located_at_its_reference() {
        let env = [("LOKI_URL", "http://loki")];
        assert_eq!(
            sub(
                "[[sinks]]\ntype = \"loki\"\nendpoint = \"${LOKI_ULR}\"\n",
                &env
            ),
            "p.toml:3:13: environment variable `LOKI_ULR` is not set; did you mean `LOKI_URL` \
             (set)?; set it, or give a default: `${LOKI_ULR:-default}`\n  |\n3 | endpoint = \
             \"${LOKI_ULR}\"\n  |             ^"
        );
    }

    #[test]
    fn malformed_references_are_errors() {
        let env: [(&str, &str); 0] = [];
        assert_eq!(
            sub("a = \"${X\"\nb = 1}", &env),
            "p.toml:1:6: unclosed `${`: write `${NAME}` or `${NAME:-default}`, or `$${` for a \
             literal `${`\n  |\n1 | a = \"${X\"\n  |      ^"
        );
        assert_eq!(
            sub("a = \"${1X}\"", &env),
            "p.toml:1:6: invalid environment variable name \"1X\" in `${1X}`: a name is letters, \
             digits and `_`, not starting with a digit\n  |\n1 | a = \"${1X}\"\n  |      ^"
        );
    }

    #[test]
    fn values_that_would_change_the_structure_are_errors() {
        let env = [("V", "1\nadmin = true"), ("Q", "it's")];
        assert_eq!(
            sub("port = ${V}", &env),
            "p.toml:1:8: the value of environment variable `V` holds a line break, which outside \
             a string would change the file's structure; quote it (\"${V}\")\n  |\n1 | port = \
             ${V}\n  |        ^"
        );
        assert!(sub("s = '${Q}'", &env).starts_with(
            "p.toml:1:6: the value of environment variable `Q` cannot be written in a literal"
        ));
        assert_eq!(sub("s = '${V:-x}'", &[]), "s = 'x'");
    }

    #[test]
    fn offsets_map_back_to_the_file() {
        let env = [("LONG", "abcdefghij"), ("E", "")];
        let text = "a = \"${LONG}\" b ${E} c";
        let i = interpolate(text, &env[..]).unwrap();
        let new = i.text(text);
        assert_eq!(new, "a = \"abcdefghij\" b  c");
        // Inside the value: the reference's `$`.
        assert_eq!(
            i.original_offset(new.find("cde").unwrap()),
            text.find('$').unwrap()
        );
        // After it: shifted back.
        assert_eq!(
            i.original_offset(new.find(" b").unwrap()),
            text.find(" b").unwrap()
        );
        assert_eq!(
            i.original_offset(new.rfind('c').unwrap()),
            text.rfind('c').unwrap()
        );
        assert_eq!(i.original_offset(2), 2);
    }

    fn pipeline_err(text: &str, env: &[(&str, &str)]) -> String {
        use crate::config::PipelineConfig;
        let selfm = crate::telemetry::SelfMetrics::new();
        match PipelineConfig::parse_with_env("p.toml", text, env)
            .and_then(|c| c.compile("p.toml", text, &selfm))
        {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn pipeline_errors_after_a_substitution_quote_the_file_as_written() {
        let env = [
            ("LOKI_TOKEN", "ftp://user:hunter22@loki"),
            ("N", "a_very_long_metric_prefix"),
        ];
        // A check that fails on a substituted value: the line as written, the secret masked.
        let text = "[[sinks]]\ntype = \"loki\"\nendpoint = \"${LOKI_TOKEN}\"\n";
        let e = pipeline_err(text, &env);
        assert!(e.starts_with("p.toml:1:1: sinks[0]: loki endpoint"), "{e}");
        assert!(!e.contains("hunter22") && !e.contains("user:"), "{e}");
        // A syntax error after a substitution on the same line: the column is the file's.
        let text = "[[metrics]]\nname = \"${N}_total\" x\n";
        assert_eq!(
            pipeline_err(text, &env),
            concat!(
                "p.toml:2:21: unexpected key or value, expected newline, `#`\n",
                "  |\n",
                "2 | name = \"${N}_total\" x\n",
                "  |                     ^"
            )
        );
        // Wrong type from a variable: the message keeps no secret value.
        let env = [("BATCH_SECRET", "lots")];
        let text = "[event]\nmax_line_bytes = \"${BATCH_SECRET}\"\n";
        let e = pipeline_err(text, &env);
        assert!(
            e.contains("2 | max_line_bytes = \"${BATCH_SECRET}\""),
            "{e}"
        );
        assert!(!e.contains("lots"), "{e}");
    }

    #[test]
    fn unset_variable_in_a_pipeline_names_the_line() {
        let text = "[event]\nmax_line_bytes = ${MAX_LINE}\n";
        assert_eq!(
            pipeline_err(text, &[]),
            concat!(
                "p.toml:2:18: environment variable `MAX_LINE` is not set; set it, or give a ",
                "default: `${MAX_LINE:-default}`\n",
                "  |\n",
                "2 | max_line_bytes = ${MAX_LINE}\n",
                "  |                  ^"
            )
        );
        assert_eq!(pipeline_err(text, &[("MAX_LINE", "4096")]), "ok");
    }

    #[test]
    fn secrets_are_masked_and_never_debug_printed() {
        let env = [("SLACK_TOKEN", "xoxb-123456"), ("HOST", "loki")];
        let text = "a = \"${SLACK_TOKEN}\"\nb = \"${HOST}\"";
        let i = interpolate(text, &env[..]).unwrap();
        assert_eq!(
            i.mask("invalid value \"xoxb-123456\" at loki"),
            "invalid value \"${SLACK_TOKEN}\" at loki"
        );
        assert_eq!(format!("{i:?}"), "Interpolation { substitutions: 2 }");
        assert!(is_secret_name("db_password") && !is_secret_name("LOKI_URL"));
    }
}
