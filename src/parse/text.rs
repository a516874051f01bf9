//! Parsers for lines that are not JSON: `logfmt` and `regex` (named captures), chosen per pipeline
//! (`[parser]`) or per source (`parser = { ... }` on a `[[sources]]` entry), with fallbacks.
//!
//! Why this shape: a text parser fills the very same `captured` slots as the JSON reader (one per
//! path of the [`PathTrie`]), so conditions, labels, values, `[event]` paths and `weir test` work
//! unchanged on nginx, Python-text, logrus or syslog lines. Only the paths the pipeline uses are
//! captured, borrowed from the line; a value is copied only when a logfmt quoted value holds an
//! escape. The whole set of fields (for documents and `weir test`) is decoded on demand by
//! [`TextFormat::fields`], off the hot path, as `Event::fields` does for JSON.
//!
//! Cost on the JSON path: none. A pipeline whose chain is plain JSON compiles to no chain at all
//! (`None`), and the line parser takes the JSON branch it always took; a per-source override is
//! looked up once per batch, not per line.
//!
//! Bounds: a pattern is at most [`MAX_PATTERN_BYTES`] long, has at most [`MAX_CAPTURES`] groups
//! and compiles within a fixed size limit; Rust's regex engine matches in time linear in the
//! line, which `max_line_bytes` caps. [`TextFormat::fields`] returns at most [`MAX_FIELDS`]
//! fields.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::logfmt;
use super::PathTrie;
use crate::event::{LineFields, ParseIssue, Value};
use crate::located::{closest, CompileError};

/// Longest accepted `pattern`, in bytes.
pub const MAX_PATTERN_BYTES: usize = 16 * 1024;
/// Most capture groups in a `pattern`.
pub const MAX_CAPTURES: usize = 128;
/// Most fields [`TextFormat::fields`] returns for one line; the rest are left out of documents.
pub const MAX_FIELDS: usize = 1024;
/// Size limit of a compiled pattern (the regex crate's `size_limit`).
const REGEX_SIZE_LIMIT: usize = 8 << 20;

/// A line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FormatName {
    /// One JSON object per line (the default).
    Json,
    /// `key=value` pairs (logrus text, go-kit, Heroku).
    Logfmt,
    /// `pattern`, a regular expression whose named captures become fields.
    Regex,
}

impl FormatName {
    fn as_str(self) -> &'static str {
        match self {
            FormatName::Json => "json",
            FormatName::Logfmt => "logfmt",
            FormatName::Regex => "regex",
        }
    }

    /// The reason a line is counted under when this format (as the first of its chain) and
    /// every fallback failed.
    pub fn no_match(self) -> ParseIssue {
        match self {
            FormatName::Json => ParseIssue::InvalidJson,
            FormatName::Logfmt => ParseIssue::InvalidLogfmt,
            FormatName::Regex => ParseIssue::RegexNoMatch,
        }
    }
}

/// A type a text field is converted to (`types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// A whole number (`200`, `-3`).
    Int,
    /// A finite decimal number (`0.012`, `1e3`).
    Float,
    /// `true` or `false`.
    Bool,
    /// Text, as written (the default for every field).
    String,
}

/// `[parser]`, or `parser = { ... }` on a source: how lines are read.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParserConfig {
    /// `json` (default), `logfmt` or `regex`.
    #[serde(default)]
    #[schemars(with = "Option<FormatName>")]
    pub format: Option<Spanned<FormatName>>,
    /// For `regex` (as the format or a fallback): a regular expression (Rust `regex` syntax)
    /// whose named captures `(?P<name>...)` become fields. Names may be dotted
    /// (`(?P<http.status>...)`) and may be the `[event]` paths (`timestamp`, `level`, `message`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub pattern: Option<Spanned<String>>,
    /// Conversions of logfmt/regex fields: `{ status = "int", request_time = "float" }`
    /// (`int`, `float`, `bool`, `string`). Fields not listed stay text (numeric text still works
    /// as a metric value or in a numeric comparison). A value that is not of its type is left
    /// out and counted (`reason="field_type_invalid"`); `-` and an empty value are left out
    /// silently (access logs write `-` for "none").
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, FieldType>")]
    pub types: BTreeMap<Spanned<String>, Spanned<FieldType>>,
    /// Formats tried in order when a line does not parse with `format`: `["json"]`. Default:
    /// none. A line no format reads is kept as a raw-message event and counted under the
    /// reason of `format` (`regex_no_match`, `invalid_logfmt`, `invalid_json`).
    #[serde(default)]
    #[schemars(with = "Option<Vec<FormatName>>")]
    pub fallback: Option<Spanned<Vec<Spanned<FormatName>>>>,
}

/// `parser = { ... }` on a `[[sources]]` entry: the keys of [`ParserConfig`]. Without spans:
/// the sources are an internally tagged enum, which serde reads through a buffer that loses
/// them, so errors point at the source's `[[sources]]` header.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceParserConfig {
    /// As `[parser]`'s `format`.
    #[serde(default)]
    pub format: Option<FormatName>,
    /// As `[parser]`'s `pattern`.
    #[serde(default)]
    pub pattern: Option<String>,
    /// As `[parser]`'s `types`.
    #[serde(default)]
    pub types: BTreeMap<String, FieldType>,
    /// As `[parser]`'s `fallback`.
    #[serde(default)]
    pub fallback: Option<Vec<FormatName>>,
}

impl SourceParserConfig {
    /// As a [`ParserConfig`] whose every part is placed at `at`.
    pub fn placed(&self, at: std::ops::Range<usize>) -> ParserConfig {
        let s = |v| Spanned::new(at.clone(), v);
        ParserConfig {
            format: self.format.map(s),
            pattern: self.pattern.clone().map(|p| Spanned::new(at.clone(), p)),
            types: self
                .types
                .iter()
                .map(|(k, v)| {
                    (
                        Spanned::new(at.clone(), k.clone()),
                        Spanned::new(at.clone(), *v),
                    )
                })
                .collect(),
            fallback: self.fallback.as_ref().map(|f| {
                Spanned::new(
                    at.clone(),
                    f.iter().map(|n| Spanned::new(at.clone(), *n)).collect(),
                )
            }),
        }
    }
}

/// One format of a chain.
#[derive(Debug, Clone)]
pub enum Format {
    Json,
    Text(Arc<TextFormat>),
}

/// The formats a line is tried with, in order; never plain `[json]` (that is no chain).
#[derive(Debug, Clone)]
pub struct Chain {
    pub formats: Vec<Format>,
    /// Counted when no format reads a line.
    pub no_match: ParseIssue,
}

/// A compiled logfmt or regex format.
#[derive(Debug)]
pub struct TextFormat {
    kind: Kind,
    /// `types`, sorted by name.
    types: Vec<(Box<str>, FieldType)>,
}

#[derive(Debug)]
enum Kind {
    Logfmt,
    Regex {
        regex: regex::Regex,
        /// Per capture group: its name, the path id it fills (if the pipeline uses it) and
        /// its type.
        groups: Vec<Option<Group>>,
    },
}

#[derive(Debug)]
struct Group {
    name: Box<str>,
    id: Option<usize>,
    ty: FieldType,
}

impl ParserConfig {
    /// Compiles the chain; `Ok(None)` for plain JSON. `trie` holds every path of the pipeline
    /// (a capture is looked up in it once, here). `header` is the span errors without a place
    /// of their own point at. Pure.
    pub fn compile(
        &self,
        trie: &PathTrie,
        header: std::ops::Range<usize>,
    ) -> Result<Option<Chain>, CompileError> {
        let primary = self
            .format
            .as_ref()
            .map_or(FormatName::Json, |f| *f.get_ref());
        let format_span = self.format.as_ref().map_or(header.clone(), |f| f.span());
        let mut names = vec![(primary, format_span.clone())];
        if let Some(fb) = &self.fallback {
            for f in fb.get_ref() {
                if names.iter().any(|(n, _)| n == f.get_ref()) {
                    return Err(CompileError::at(
                        f.span(),
                        format!(
                            "parser.fallback: {:?} is tried already (as `format` or earlier in `fallback`)",
                            f.get_ref().as_str()
                        ),
                    ));
                }
                names.push((*f.get_ref(), f.span()));
            }
        }
        let uses_regex = names.iter().find(|(n, _)| *n == FormatName::Regex);
        match (uses_regex, &self.pattern) {
            (Some((_, span)), None) => {
                return Err(CompileError::at(
                    span.clone(),
                    "parser: the regex format needs `pattern`, a regular expression whose named captures (?P<name>...) become fields",
                ))
            }
            (None, Some(p)) => {
                return Err(CompileError::at(
                    p.span(),
                    "parser.pattern is used only by the regex format: set format = \"regex\" or add \"regex\" to `fallback`",
                ))
            }
            _ => {}
        }
        if names.iter().all(|(n, _)| *n == FormatName::Json) {
            if let Some((k, _)) = self.types.iter().next() {
                return Err(CompileError::at(
                    k.span(),
                    "parser.types converts fields of the logfmt and regex formats; JSON values keep their own types",
                ));
            }
            return Ok(None);
        }
        let types: Vec<(Box<str>, FieldType)> = self
            .types
            .iter()
            .map(|(k, v)| (k.get_ref().as_str().into(), *v.get_ref()))
            .collect();
        let regex = match &self.pattern {
            Some(p) => Some(compile_regex(p, &self.types, trie)?),
            None => None,
        };
        let mut formats = Vec::with_capacity(names.len());
        for (name, _) in &names {
            formats.push(match name {
                FormatName::Json => Format::Json,
                FormatName::Logfmt => Format::Text(Arc::new(TextFormat {
                    kind: Kind::Logfmt,
                    types: types.clone(),
                })),
                FormatName::Regex => Format::Text(regex.clone().ok_or_else(|| {
                    CompileError::at(header.clone(), "parser: the regex format needs `pattern`")
                })?),
            });
        }
        Ok(Some(Chain {
            formats,
            no_match: primary.no_match(),
        }))
    }
}

impl ParserConfig {
    /// The chain in words, for `weir validate --explain`: `regex, then json; types status int;
    /// lines none reads: regex_no_match; pattern ^(?P<...`.
    pub fn describe(&self) -> String {
        let primary = self
            .format
            .as_ref()
            .map_or(FormatName::Json, |f| *f.get_ref());
        let mut names = vec![primary.as_str()];
        if let Some(fb) = &self.fallback {
            names.extend(fb.get_ref().iter().map(|f| f.get_ref().as_str()));
        }
        let mut out = names.join(", then ");
        if !self.types.is_empty() {
            let types: Vec<String> = self
                .types
                .iter()
                .map(|(k, v)| format!("{} {:?}", k.get_ref(), v.get_ref()).to_lowercase())
                .collect();
            out.push_str(&format!("; types {}", types.join(", ")));
        }
        out.push_str(&format!(
            "; lines none reads: {}",
            primary.no_match().reason()
        ));
        if let Some(p) = &self.pattern {
            let cut: String = p.get_ref().chars().take(100).collect();
            let more = if cut.len() < p.get_ref().len() {
                "..."
            } else {
                ""
            };
            out.push_str(&format!("; pattern {cut}{more}"));
        }
        out
    }
}

fn compile_regex(
    p: &Spanned<String>,
    types: &BTreeMap<Spanned<String>, Spanned<FieldType>>,
    trie: &PathTrie,
) -> Result<Arc<TextFormat>, CompileError> {
    let pattern = p.get_ref();
    let err = |m: String| CompileError::at(p.span(), format!("parser.pattern: {m}"));
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(err(format!(
            "the pattern is {} bytes long; at most {MAX_PATTERN_BYTES} are allowed",
            pattern.len()
        )));
    }
    let regex = regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            let text = e.to_string();
            // The regex crate's message is a diagram; keep its last line ("error: ...").
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .trim_start_matches("error: ");
            err(format!("invalid regular expression: {last}"))
        })?;
    if regex.captures_len() > MAX_CAPTURES + 1 {
        return Err(err(format!(
            "the pattern has {} capture groups; at most {MAX_CAPTURES} are allowed",
            regex.captures_len() - 1
        )));
    }
    let captures: Vec<&str> = regex.capture_names().flatten().collect();
    if captures.is_empty() {
        return Err(err(
            "the pattern has no named captures: name the parts to keep with (?P<name>...)".into(),
        ));
    }
    for k in types.keys() {
        if !captures.contains(&k.get_ref().as_str()) {
            let hint = closest(k.get_ref(), captures.iter().copied())
                .map(|c| format!("; did you mean `{c}`?"))
                .unwrap_or_default();
            return Err(CompileError::at(
                k.span(),
                format!(
                    "parser.types: `{}` is not a named capture of `pattern` (its captures: {}){hint}",
                    k.get_ref(),
                    captures.join(", ")
                ),
            ));
        }
    }
    let groups = regex
        .capture_names()
        .map(|n| {
            n.map(|name| Group {
                name: name.into(),
                id: trie.get(name),
                ty: types
                    .iter()
                    .find(|(k, _)| k.get_ref() == name)
                    .map_or(FieldType::String, |(_, t)| *t.get_ref()),
            })
        })
        .collect();
    Ok(Arc::new(TextFormat {
        kind: Kind::Regex { regex, groups },
        types: Vec::new(),
    }))
}

/// A field's text converted to its type. `Ok(None)`: left out without complaint (`-`, empty).
fn convert<'a>(text: Cow<'a, str>, ty: FieldType) -> Result<Option<Value<'a>>, ()> {
    if ty == FieldType::String {
        return Ok(Some(Value::Str(text)));
    }
    if text.is_empty() || text == "-" {
        return Ok(None);
    }
    let number = |n: f64| match &text {
        Cow::Borrowed(raw) => Value::Num(n, raw),
        // Only a quoted logfmt value with an escape is owned; it stays text (still numeric).
        Cow::Owned(s) => Value::Str(Cow::Owned(s.clone())),
    };
    match ty {
        FieldType::Int => match text.parse::<i64>() {
            Ok(n) => Ok(Some(number(n as f64))),
            Err(_) => Err(()),
        },
        FieldType::Float => match text.parse::<f64>() {
            Ok(n) if n.is_finite() => Ok(Some(number(n))),
            _ => Err(()),
        },
        FieldType::Bool => match text.as_ref() {
            "true" | "True" | "TRUE" => Ok(Some(Value::Bool(true))),
            "false" | "False" | "FALSE" => Ok(Some(Value::Bool(false))),
            _ => Err(()),
        },
        FieldType::String => Ok(Some(Value::Str(text))),
    }
}

impl TextFormat {
    fn type_of(&self, key: &str) -> FieldType {
        self.types
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .map_or(FieldType::String, |i| self.types[i].1)
    }

    /// Reads `line` into `out` (indexed by path id of `trie`). `false` when the line is not in
    /// this format; then nothing was written and nothing reported.
    pub fn capture<'a>(
        &self,
        trie: &PathTrie,
        line: &'a str,
        out: &mut [Option<Value<'a>>],
        issue: &mut impl FnMut(ParseIssue),
    ) -> bool {
        match &self.kind {
            Kind::Logfmt => logfmt::parse(line, |key, raw| {
                let Some(id) = trie.get(key) else { return };
                let value = match raw {
                    logfmt::Raw::Bare => Ok(Some(Value::Bool(true))),
                    logfmt::Raw::Text(t) => convert(t, self.type_of(key)),
                };
                match value {
                    // A repeated key: the last one wins, as in a JSON object.
                    Ok(v) => out[id] = v,
                    Err(()) => {
                        out[id] = None;
                        issue(ParseIssue::FieldTypeInvalid);
                    }
                }
            })
            .is_ok(),
            Kind::Regex { regex, groups } => {
                let Some(caps) = regex.captures(line) else {
                    return false;
                };
                for (i, g) in groups.iter().enumerate() {
                    let Some(Group {
                        id: Some(id), ty, ..
                    }) = g
                    else {
                        continue;
                    };
                    let Some(m) = caps.get(i) else { continue };
                    match convert(Cow::Borrowed(m.as_str()), *ty) {
                        Ok(v) => out[*id] = v,
                        Err(()) => issue(ParseIssue::FieldTypeInvalid),
                    }
                }
                true
            }
        }
    }
}

/// A value as JSON for documents: typed where the type holds, else the text as written.
fn json_of(text: Cow<'_, str>, ty: FieldType) -> serde_json::Value {
    match convert(Cow::Borrowed(text.as_ref()), ty) {
        Ok(Some(Value::Num(n, raw))) => match raw.parse::<i64>() {
            Ok(i) if ty == FieldType::Int => i.into(),
            _ => serde_json::Number::from_f64(n).map_or(text.as_ref().into(), Into::into),
        },
        Ok(Some(Value::Bool(b))) => b.into(),
        Ok(None) if ty != FieldType::String => serde_json::Value::Null,
        _ => text.into_owned().into(),
    }
}

impl LineFields for TextFormat {
    /// Every field of the line (not only those the pipeline uses), typed per `types`.
    fn fields(&self, line: &str) -> serde_json::Map<String, serde_json::Value> {
        let mut map = serde_json::Map::new();
        match &self.kind {
            Kind::Logfmt => {
                let _ = logfmt::parse(line, |key, raw| {
                    if map.len() >= MAX_FIELDS && !map.contains_key(key) {
                        return;
                    }
                    let v = match raw {
                        logfmt::Raw::Bare => serde_json::Value::Bool(true),
                        logfmt::Raw::Text(t) => json_of(t, self.type_of(key)),
                    };
                    map.insert(key.to_string(), v);
                });
            }
            Kind::Regex { regex, groups } => {
                if let Some(caps) = regex.captures(line) {
                    for (i, g) in groups.iter().enumerate() {
                        if let (Some(g), Some(m)) = (g, caps.get(i)) {
                            map.insert(
                                g.name.to_string(),
                                json_of(Cow::Borrowed(m.as_str()), g.ty),
                            );
                        }
                    }
                }
            }
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(toml_text: &str) -> ParserConfig {
        toml::from_str(toml_text).unwrap()
    }

    fn chain(toml_text: &str, trie: &PathTrie) -> Result<Option<Chain>, String> {
        config(toml_text).compile(trie, 0..0).map_err(|e| e.message)
    }

    const NGINX: &str = r#"^(?P<remote_addr>\S+) \S+ (?P<remote_user>\S+) \[(?P<timestamp>[^\]]+)\] "(?P<method>\S+) (?P<path>\S+) (?P<protocol>[^"]+)" (?P<status>\d{3}) (?P<bytes>\d+|-) "(?P<referer>[^"]*)" "(?P<user_agent>[^"]*)""#;

    fn trie(paths: &[&str]) -> PathTrie {
        let mut t = PathTrie::new();
        for p in paths {
            t.intern(p);
        }
        t
    }

    #[test]
    fn json_alone_is_no_chain() {
        let t = trie(&[]);
        assert!(chain("", &t).unwrap().is_none());
        assert!(chain("format = \"json\"", &t).unwrap().is_none());
        let c = chain("format = \"json\"\nfallback = [\"logfmt\"]", &t)
            .unwrap()
            .unwrap();
        assert_eq!(c.no_match, ParseIssue::InvalidJson);
        assert!(matches!(c.formats[..], [Format::Json, Format::Text(_)]));
    }

    #[test]
    fn regex_with_types_captures_typed_values_borrowed_from_the_line() {
        let t = trie(&["status", "bytes", "method", "timestamp", "unused"]);
        let text = format!("format = \"regex\"\npattern = '{NGINX}'\ntypes = {{ status = \"int\", bytes = \"int\" }}");
        let c = chain(&text, &t).unwrap().unwrap();
        assert_eq!(c.no_match, ParseIssue::RegexNoMatch);
        let Format::Text(f) = &c.formats[0] else {
            panic!("regex is text")
        };
        let line = r#"127.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 200 2326 "-" "curl/8""#;
        let mut out = vec![None; t.len()];
        let mut issues = Vec::new();
        assert!(f.capture(&t, line, &mut out, &mut |i| issues.push(i)));
        assert_eq!(out[0], Some(Value::Num(200.0, "200")));
        assert_eq!(out[1], Some(Value::Num(2326.0, "2326")));
        assert_eq!(out[2], Some(Value::Str(Cow::Borrowed("GET"))));
        assert_eq!(
            out[3],
            Some(Value::Str(Cow::Borrowed("10/Oct/2000:13:55:36 -0700")))
        );
        assert_eq!(out[4], None);
        assert!(issues.is_empty());
        // Apache writes `-` for no body: left out, not an error.
        let line = line.replace(" 2326 ", " - ");
        let mut out = vec![None; t.len()];
        assert!(f.capture(&t, &line, &mut out, &mut |i| issues.push(i)));
        assert_eq!((out[1].clone(), issues.len()), (None, 0));
        // No match: nothing written.
        let mut out = vec![None; t.len()];
        assert!(!f.capture(&t, "garbage", &mut out, &mut |i| issues.push(i)));
        assert!(out.iter().all(Option::is_none));
        // Every capture for documents, typed.
        let fields = f.fields(
            r#"::1 - bob [10/Oct/2000:13:55:36 -0700] "POST /x HTTP/1.1" 404 0 "-" "a \"b\"""#,
        );
        assert_eq!(fields["status"], 404);
        assert_eq!(fields["bytes"], 0);
        assert_eq!(fields["remote_user"], "bob");
        assert_eq!(fields.len(), 10);
    }

    #[test]
    fn logfmt_types_bare_keys_and_bad_values() {
        let t = trie(&["duration_ms", "ok", "status", "msg"]);
        let c = chain(
            "format = \"logfmt\"\ntypes = { duration_ms = \"float\", status = \"int\" }",
            &t,
        )
        .unwrap()
        .unwrap();
        let Format::Text(f) = &c.formats[0] else {
            panic!("logfmt is text")
        };
        let mut out = vec![None; t.len()];
        let mut issues = Vec::new();
        assert!(f.capture(
            &t,
            r#"msg="a \"q\"" duration_ms=12.5 ok status=abc"#,
            &mut out,
            &mut |i| issues.push(i)
        ));
        assert_eq!(out[0], Some(Value::Num(12.5, "12.5")));
        assert_eq!(out[1], Some(Value::Bool(true)));
        assert_eq!(out[2], None);
        assert_eq!(out[3], Some(Value::Str(Cow::Owned("a \"q\"".into()))));
        assert_eq!(issues, vec![ParseIssue::FieldTypeInvalid]);
        // A repeated key: the last wins.
        let mut out = vec![None; t.len()];
        assert!(f.capture(&t, "status=1 status=2", &mut out, &mut |_| {}));
        assert_eq!(out[2], Some(Value::Num(2.0, "2")));
        let fields = f.fields("status=1 x=y status=abc duration_ms=3");
        assert_eq!(
            serde_json::Value::Object(fields),
            serde_json::json!({"status": "abc", "x": "y", "duration_ms": 3.0})
        );
    }

    #[test]
    fn config_errors() {
        let t = trie(&[]);
        let e = |s: &str| {
            chain(s, &t)
                .err()
                .unwrap_or_else(|| panic!("no error: {s}"))
        };
        assert_eq!(
            e("format = \"regex\""),
            "parser: the regex format needs `pattern`, a regular expression whose named captures (?P<name>...) become fields"
        );
        assert_eq!(
            e("pattern = '(?P<a>x)'"),
            "parser.pattern is used only by the regex format: set format = \"regex\" or add \"regex\" to `fallback`"
        );
        assert_eq!(
            e("format = \"regex\"\npattern = '(?P<a>x'"),
            "parser.pattern: invalid regular expression: unclosed group"
        );
        assert_eq!(
            e("format = \"regex\"\npattern = '(x)'"),
            "parser.pattern: the pattern has no named captures: name the parts to keep with (?P<name>...)"
        );
        assert_eq!(
            e("format = \"regex\"\npattern = '(?P<status>\\d+) (?P<bytes>\\d+)'\ntypes = { stauts = \"int\" }"),
            "parser.types: `stauts` is not a named capture of `pattern` (its captures: status, bytes); did you mean `status`?"
        );
        assert_eq!(
            e("types = { a = \"int\" }"),
            "parser.types converts fields of the logfmt and regex formats; JSON values keep their own types"
        );
        assert_eq!(
            e("format = \"logfmt\"\nfallback = [\"json\", \"logfmt\"]"),
            "parser.fallback: \"logfmt\" is tried already (as `format` or earlier in `fallback`)"
        );
        let long = format!(
            "format = \"regex\"\npattern = '(?P<a>{})'",
            "x".repeat(MAX_PATTERN_BYTES)
        );
        assert_eq!(
            e(&long),
            "parser.pattern: the pattern is 16391 bytes long; at most 16384 are allowed"
        );
        let many: String = (0..130).map(|i| format!("(?P<g{i}>x)")).collect();
        assert_eq!(
            e(&format!("format = \"regex\"\npattern = '{many}'")),
            "parser.pattern: the pattern has 130 capture groups; at most 128 are allowed"
        );
        // A pattern too big to compile is an error, not an abort.
        let big = "format = \"regex\"\npattern = '(?P<a>\\w{1000}){1000}'";
        assert!(
            e(big).starts_with("parser.pattern: invalid regular expression"),
            "{}",
            e(big)
        );
        // Unknown formats and types are serde's errors (placed and hinted by the loader).
        let bad: Result<ParserConfig, _> = toml::from_str("types = { a = \"integer\" }");
        assert!(bad.unwrap_err().message().contains(
            "unknown variant `integer`, expected one of `int`, `float`, `bool`, `string`"
        ));
        let bad: Result<ParserConfig, _> = toml::from_str("formt = \"json\"");
        assert!(bad.unwrap_err().message().contains("unknown field `formt`"));
    }

    /// A pipeline's line parser, compiled from pipeline TOML as `weir run` does.
    fn pipeline(text: &str) -> crate::config::CompiledPipeline {
        let selfm = crate::telemetry::SelfMetrics::new();
        crate::config::PipelineConfig::parse("p.toml", text)
            .and_then(|c| c.compile("p.toml", text, &selfm))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn pipeline_err(text: &str) -> String {
        let selfm = crate::telemetry::SelfMetrics::new();
        match crate::config::PipelineConfig::parse("p.toml", text)
            .and_then(|c| c.compile("p.toml", text, &selfm))
        {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    fn parse_all<'a>(
        p: &super::super::LineParser,
        line: &'a str,
        scratch: &'a mut String,
    ) -> (crate::event::Event<'a>, Vec<ParseIssue>) {
        let mut issues = Vec::new();
        let ev = p.parse_line(line, scratch, &[], 7, &mut |i| issues.push(i));
        (ev, issues)
    }

    #[test]
    fn regex_chain_with_json_fallback() {
        let text = format!(
            "[parser]\nformat = \"regex\"\npattern = '{NGINX}'\ntypes = {{ status = \"int\", bytes = \"int\" }}\nfallback = [\"json\"]\n\n[[metrics]]\nname = \"req_total\"\nkind = \"counter\"\nwhen = 'status >= 400'\nlabels = {{ method = \"method\" }}\n"
        );
        let p = pipeline(&text).parser;
        let line = r#"203.0.113.9 - - [10/Oct/2000:13:55:36 -0700] "GET /missing HTTP/1.1" 404 153 "-" "Mozilla/5.0 (X11)""#;
        let (mut s1, mut s2, mut s3) = (String::new(), String::new(), String::new());
        let (ev, issues) = parse_all(&p, line, &mut s1);
        assert_eq!(issues, vec![]);
        assert!(ev.parsed && !ev.is_json);
        assert_eq!(
            crate::event::format_rfc3339(ev.timestamp),
            "2000-10-10T20:55:36Z"
        );
        assert_eq!(
            ev.message, line,
            "no message capture: the line is the message"
        );
        let doc = ev.to_json();
        assert_eq!(doc["status"], 404);
        assert_eq!(doc["user_agent"], "Mozilla/5.0 (X11)");
        // A JSON line: the fallback reads it.
        let (ev, issues) = parse_all(
            &p,
            r#"{"time":"2024-01-01T00:00:00Z","msg":"hi","status":500}"#,
            &mut s2,
        );
        assert_eq!((ev.is_json, &*ev.message, issues), (true, "hi", vec![]));
        // Neither: one issue, the regex's.
        let (ev, issues) = parse_all(&p, "upstream timed out", &mut s3);
        assert_eq!(issues, vec![ParseIssue::RegexNoMatch]);
        assert!(!ev.parsed && !ev.is_json);
        assert_eq!((&*ev.message, ev.timestamp), ("upstream timed out", 7));
        assert!(ev.fields().is_empty());
    }

    #[test]
    fn logfmt_pipeline_normalises_logrus_fields() {
        let p =
            pipeline("[parser]\nformat = \"logfmt\"\ntypes = { duration_ms = \"int\" }\n").parser;
        let line = r#"time="2024-01-01T00:00:00Z" level=warning msg="slow \"db\" call" component=db duration_ms=12"#;
        let mut s = String::new();
        let (ev, issues) = parse_all(&p, line, &mut s);
        assert_eq!(issues, vec![]);
        assert_eq!(ev.timestamp, 1_704_067_200_000_000_000);
        assert_eq!(ev.level, crate::event::Level::Warning);
        assert_eq!(ev.message, "slow \"db\" call");
        assert_eq!(ev.component.as_deref(), Some("db"));
        assert_eq!(ev.to_json()["duration_ms"], 12);
        let mut s = String::new();
        let (ev, issues) = parse_all(&p, r#"{"level":"info"}"#, &mut s);
        assert_eq!(
            (ev.parsed, issues),
            (false, vec![ParseIssue::InvalidLogfmt])
        );
        // A joined multi-line event: the first line is read, the rest is its exception.
        let joined = "level=error msg=boom\npanic: runtime error\ngoroutine 1 [running]:";
        let mut s = String::new();
        let (ev, _) = parse_all(&p, joined, &mut s);
        assert!(ev.parsed);
        assert_eq!((ev.line, &*ev.message), (joined, "boom"));
        assert_eq!(
            ev.to_json()["exception"],
            "panic: runtime error\ngoroutine 1 [running]:"
        );
    }

    #[test]
    fn json_first_keeps_its_repair_and_falls_back_to_logfmt() {
        let p = pipeline("[parser]\nfallback = [\"logfmt\"]\n").parser;
        let mut s = String::new();
        let (ev, issues) = parse_all(
            &p,
            r#"{"time":"2024-01-01T00:00:00Z","message":"said "hi""}"#,
            &mut s,
        );
        assert_eq!(
            (ev.is_json, issues),
            (true, vec![ParseIssue::MessageUnescaped])
        );
        assert_eq!(ev.message, r#"said "hi""#);
        let mut s = String::new();
        // The fallback's own issues are reported (JSON's failure is not).
        let (ev, issues) = parse_all(&p, "level=info msg=plain", &mut s);
        assert_eq!(
            (ev.parsed, ev.is_json, &*ev.message, issues),
            (true, false, "plain", vec![ParseIssue::TimestampMissing])
        );
        let mut s = String::new();
        let (_, issues) = parse_all(&p, "not anything", &mut s);
        assert_eq!(issues, vec![ParseIssue::InvalidJson]);
    }

    #[test]
    fn a_source_parser_applies_to_its_lines_only() {
        let p = pipeline(
            "[[sources]]\ntype = \"file\"\npaths = [\"/var/log/app/*.log\"]\nparser = { format = \"logfmt\" }\n\n[[sources]]\ntype = \"stdin\"\n",
        )
        .parser;
        let line = "level=error msg=x";
        let mut s = String::new();
        let (ev, _) = parse_all(p.for_source("/var/log/app/*.log"), line, &mut s);
        assert_eq!((ev.parsed, ev.level), (true, crate::event::Level::Error));
        let mut s = String::new();
        let (ev, issues) = parse_all(p.for_source("stdin"), line, &mut s);
        assert_eq!((ev.parsed, issues), (false, vec![ParseIssue::InvalidJson]));
    }

    #[test]
    fn config_errors_are_located() {
        assert_eq!(
            pipeline_err("[parser]\nformat = \"regex\"\npattern = '(?P<a>x'\n"),
            "p.toml:3:11: parser.pattern: invalid regular expression: unclosed group\n  |\n3 | pattern = '(?P<a>x'\n  |           ^"
        );
        assert_eq!(
            pipeline_err("[parser]\nformat = \"regex\"\n"),
            "p.toml:2:10: parser: the regex format needs `pattern`, a regular expression whose named captures (?P<name>...) become fields\n  |\n2 | format = \"regex\"\n  |          ^"
        );
        assert!(pipeline_err("[parser]\nformat = \"regexp\"\n").starts_with(
            "p.toml:2:10: unknown variant `regexp`, expected one of `json`, `logfmt`, `regex`; did you mean `regex`?"
        ));
        assert!(pipeline_err("[parser]\nformat = \"logfmt\"\ntypes = { a = \"integer\" }\n")
            .starts_with("p.toml:3:15: unknown variant `integer`, expected one of `int`, `float`, `bool`, `string`"));
        let e = pipeline_err("[parser]\nformat = \"regex\"\npattern = '(?P<status>\\d+)'\ntypes = { stat = \"int\" }\n");
        assert!(e.starts_with("p.toml:4:11: parser.types: `stat` is not a named capture of `pattern` (its captures: status); did you mean `status`?"), "{e}");
        let e = pipeline_err("[[sources]]\ntype = \"stdin\"\nparser = { format = \"regex\" }\n");
        assert!(
            e.starts_with("p.toml:1:1: sources[0]: parser: the regex format needs `pattern`"),
            "{e}"
        );
        let e = pipeline_err("[[sources]]\ntype = \"file\"\npaths = [\"a.log\"]\nparser = { format = \"logfmt\" }\n\n[[sources]]\ntype = \"file\"\npaths = [\"a.log\"]\nparser = { format = \"json\" }\n");
        assert!(
            e.starts_with(
                "p.toml:6:1: sources[1]: another source named \"a.log\" has a parser of its own"
            ),
            "{e}"
        );
    }

    #[test]
    fn fields_of_one_line_are_bounded() {
        let t = trie(&[]);
        let c = chain("format = \"logfmt\"", &t).unwrap().unwrap();
        let Format::Text(f) = &c.formats[0] else {
            panic!("logfmt is text")
        };
        let line: String = (0..MAX_FIELDS + 500).map(|i| format!("k{i}=v ")).collect();
        assert_eq!(f.fields(&line).len(), MAX_FIELDS);
        // A key seen again past the cap still updates its value.
        let line = format!("{line}k0=last");
        assert_eq!(f.fields(&line)["k0"], "last");
    }

    proptest! {
        #[test]
        fn chains_never_panic(line in "(\\PC|\n){0,120}") {
            let p = pipeline(&format!(
                "[parser]\nformat = \"regex\"\npattern = '{NGINX}'\ntypes = {{ status = \"int\" }}\nfallback = [\"logfmt\", \"json\"]\n\n[[metrics]]\nname = \"a_total\"\nkind = \"counter\"\nlabels = {{ s = \"status\", m = \"msg\" }}\n"
            ))
            .parser;
            let mut scratch = String::new();
            let ev = p.parse_line(&line, &mut scratch, &[], 0, &mut |_| {});
            let _ = ev.to_json();
        }

        #[test]
        fn text_formats_never_panic(line in "\\PC{0,120}") {
            let t = trie(&["status", "bytes", "msg", "level", "a.b"]);
            for cfg in [
                format!("format = \"regex\"\npattern = '{NGINX}'\ntypes = {{ status = \"int\", bytes = \"float\" }}"),
                "format = \"logfmt\"\ntypes = { status = \"int\", msg = \"bool\" }".to_string(),
            ] {
                let c = chain(&cfg, &t).unwrap().unwrap();
                for f in &c.formats {
                    if let Format::Text(f) = f {
                        let mut out = vec![None; t.len()];
                        let _ = f.capture(&t, &line, &mut out, &mut |_| {});
                        let _ = f.fields(&line);
                    }
                }
            }
        }
    }
}
