//! The event: one input line after parsing.
//!
//! An [`Event`] borrows from the batch buffer its line came from, so the hot path (parse, then
//! derive) allocates only for strings that JSON escaping forces to be rebuilt. The normalised fields
//! (timestamp, level, component, message, trace_id) sit beside the captured values of the field
//! paths the pipeline refers to; the rest of the object stays in `line` and is decoded on demand by
//! [`Event::fields`], so nothing of the original is lost while nothing unused is decoded.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Nanoseconds since the Unix epoch, UTC.
pub type TimestampNs = i64;

/// A JSON value captured from a line at a configured path, borrowed where possible.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    /// The number and its JSON text (labels use the text, so `3` stays `3`, not `3.0`).
    Num(f64, &'a str),
    Str(Cow<'a, str>),
    /// An object or array, as its JSON text.
    Composite(&'a str),
}

impl Value<'_> {
    /// The value as text, for labels and string comparisons. `None` for null.
    pub fn as_text(&self) -> Option<Cow<'_, str>> {
        match self {
            Value::Null => None,
            Value::Bool(true) => Some(Cow::Borrowed("true")),
            Value::Bool(false) => Some(Cow::Borrowed("false")),
            Value::Num(_, raw) => Some(Cow::Borrowed(raw)),
            Value::Str(s) => Some(Cow::Borrowed(s.as_ref())),
            Value::Composite(raw) => Some(Cow::Borrowed(raw)),
        }
    }

    /// The value as a number: JSON numbers, and strings that hold one (`"1.5"`).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Num(n, _) => Some(*n),
            Value::Str(s) => s.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
            Value::Bool(_) | Value::Null | Value::Composite(_) => None,
        }
    }
}

/// Severity normalised from the many spellings found in the wild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// No level in the line, or one that could not be recognised.
    Unknown,
    Trace,
    Debug,
    Info,
    Notice,
    Warning,
    Error,
    Critical,
}

impl Level {
    pub const ALL: [Level; 8] = [
        Level::Unknown,
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Notice,
        Level::Warning,
        Level::Error,
        Level::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Unknown => "UNKNOWN",
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Notice => "NOTICE",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
            Level::Critical => "CRITICAL",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a line did not parse cleanly. Each is counted in `weir_parse_errors_total{reason}`; the
/// event is kept all the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParseIssue {
    /// Not JSON, or JSON cut short: the event's message is the raw line.
    InvalidJson,
    /// Valid JSON but not an object (`"text"`, `[1,2]`, `42`): kept as a raw-line event.
    NotAnObject,
    /// Bytes that are not UTF-8, replaced by U+FFFD.
    InvalidUtf8,
    /// The line was longer than `max_line_bytes` and was cut there.
    Truncated,
    /// No timestamp at the configured paths: the time of receipt is used.
    TimestampMissing,
    /// A timestamp that could not be read: the time of receipt is used.
    TimestampInvalid,
    /// A Docker or CRI log line whose envelope could not be read: kept as the raw line.
    InvalidEnvelope,
    /// Invalid JSON only because the message was pasted in unescaped (a quote, backslash or
    /// tab in it): repaired and parsed (see `parse::repair`); the event is whole.
    MessageUnescaped,
    /// A multi-line event (traceback, stack trace) past its `max_lines` or `max_bytes`: the
    /// lines past the limit were dropped; counted once per event by the source's joiner.
    MultilineTruncated,
    /// A line that the `regex` parser's pattern (and every fallback) did not match: kept as a
    /// raw-line event.
    RegexNoMatch,
    /// A line that is not logfmt (no `key=value`, an unterminated quote...) and that no
    /// fallback read: kept as a raw-line event.
    InvalidLogfmt,
    /// A field of a text parser's `types` whose text is not of its type (`status=abc` for an
    /// `int`): the field is left out, the event kept.
    FieldTypeInvalid,
}

impl ParseIssue {
    pub const ALL: &'static [ParseIssue] = &[
        ParseIssue::InvalidJson,
        ParseIssue::NotAnObject,
        ParseIssue::InvalidUtf8,
        ParseIssue::Truncated,
        ParseIssue::TimestampMissing,
        ParseIssue::TimestampInvalid,
        ParseIssue::InvalidEnvelope,
        ParseIssue::MessageUnescaped,
        ParseIssue::MultilineTruncated,
        ParseIssue::RegexNoMatch,
        ParseIssue::InvalidLogfmt,
        ParseIssue::FieldTypeInvalid,
    ];

    /// The `reason` label value.
    pub fn reason(self) -> &'static str {
        match self {
            ParseIssue::InvalidJson => "invalid_json",
            ParseIssue::NotAnObject => "not_an_object",
            ParseIssue::InvalidUtf8 => "invalid_utf8",
            ParseIssue::Truncated => "line_truncated",
            ParseIssue::TimestampMissing => "timestamp_missing",
            ParseIssue::TimestampInvalid => "timestamp_invalid",
            ParseIssue::InvalidEnvelope => "invalid_envelope",
            ParseIssue::MessageUnescaped => "message_unescaped",
            ParseIssue::MultilineTruncated => "multiline_truncated",
            ParseIssue::RegexNoMatch => "regex_no_match",
            ParseIssue::InvalidLogfmt => "invalid_logfmt",
            ParseIssue::FieldTypeInvalid => "field_type_invalid",
        }
    }

    /// Whether this problem means the line's parser could not read the line at all: the event
    /// is its raw line (`Event::parsed` false), shipped and counted, seen by no metric unless
    /// `include_unparsed`. A `--oneshot` in which every line was unusable exits 3. Exhaustive
    /// on purpose: a new variant must decide.
    pub fn unusable(self) -> bool {
        match self {
            ParseIssue::InvalidJson
            | ParseIssue::NotAnObject
            | ParseIssue::RegexNoMatch
            | ParseIssue::InvalidLogfmt => true,
            ParseIssue::InvalidUtf8
            | ParseIssue::Truncated
            | ParseIssue::TimestampMissing
            | ParseIssue::TimestampInvalid
            | ParseIssue::InvalidEnvelope
            | ParseIssue::MessageUnescaped
            | ParseIssue::MultilineTruncated
            | ParseIssue::FieldTypeInvalid => false,
        }
    }
}

/// One parsed line. Borrowed from the batch its line came from.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    /// The line as received (invalid UTF-8 replaced, cut at `max_line_bytes`), without newline.
    pub line: &'a str,
    /// Whether the line was a JSON object; otherwise every field below but `message` is a default.
    pub is_json: bool,
    /// Whether the line's parser could read it (a JSON object, or a line another parser of the
    /// pipeline matched). An unparsed line is kept as a raw-message event: counted, shipped,
    /// and seen by no metric unless the metric sets `include_unparsed`.
    pub parsed: bool,
    pub timestamp: TimestampNs,
    pub level: Level,
    pub component: Option<Cow<'a, str>>,
    pub message: Cow<'a, str>,
    pub trace_id: Cow<'a, str>,
    /// Whether weir made `trace_id` up (`generate_trace_id`: the line had none): it still
    /// correlates the shipped line, but no trace backend knows it, so it is no exemplar.
    pub trace_generated: bool,
    /// Values captured at the pipeline's field paths, indexed by path id (see `parse::FieldPaths`).
    pub captured: Vec<Option<Value<'a>>>,
    /// The text parser (logfmt, regex) that read the line, to decode all its fields on demand
    /// ([`Event::fields`]); `None` for JSON and unparsed lines.
    pub text: Option<Arc<dyn LineFields>>,
}

/// Decodes every field of a line that a text parser read (`parse::text`), for documents and
/// `weir test`. A trait so that this module imports nothing of the parsers.
pub trait LineFields: fmt::Debug + Send + Sync {
    fn fields(&self, line: &str) -> serde_json::Map<String, serde_json::Value>;
}

impl<'a> Event<'a> {
    /// The value at a path id captured from the line, if the line had it.
    pub fn captured(&self, id: usize) -> Option<&Value<'a>> {
        self.captured.get(id).and_then(Option::as_ref)
    }

    /// The whole JSON object of the line, decoded now (not on the hot path): every field,
    /// nested objects kept. Empty for a line that was not a JSON object.
    /// A joined multi-line event (see `source::multiline`) is its first line's object with the
    /// continuation lines under `exception` (unless the object has an `exception` of its own).
    pub fn fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let (head, exception) = split_joined(self.line);
        if let Some(text) = &self.text {
            let mut map = text.fields(head);
            if let Some(e) = exception {
                map.entry("exception").or_insert_with(|| e.into());
            }
            return map;
        }
        match serde_json::from_str::<serde_json::Value>(head) {
            Ok(serde_json::Value::Object(mut map)) => {
                if let Some(e) = exception {
                    map.entry("exception").or_insert_with(|| e.into());
                }
                map
            }
            _ => serde_json::Map::new(),
        }
    }

    /// The event as one JSON object: the normalised fields under their own names, the line's
    /// other fields beside them. Used by `weir test`, tap and the sinks that send documents.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = self.fields();
        map.insert(
            "timestamp".into(),
            serde_json::Value::String(format_rfc3339(self.timestamp)),
        );
        map.insert("level".into(), self.level.as_str().into());
        if let Some(c) = &self.component {
            map.insert("component".into(), c.as_ref().into());
        }
        map.insert("message".into(), self.message.as_ref().into());
        map.insert("trace_id".into(), self.trace_id.as_ref().into());
        serde_json::Value::Object(map)
    }
}

/// A joined multi-line event's first line and the rest (its continuation lines, joined with
/// `\n`); `(line, None)` for a single line. Only a source's multi-line joiner makes lines with a
/// `\n` in them.
pub fn split_joined(line: &str) -> (&str, Option<&str>) {
    match memchr::memchr(b'\n', line.as_bytes()) {
        Some(i) => (&line[..i], Some(&line[i + 1..])),
        None => (line, None),
    }
}

/// RFC 3339 with nanoseconds, UTC (`2024-01-01T00:00:00.123Z`).
pub fn format_rfc3339(ts: TimestampNs) -> String {
    match jiff::Timestamp::from_nanosecond(i128::from(ts)) {
        Ok(t) => t.to_string(),
        Err(_) => ts.to_string(),
    }
}
