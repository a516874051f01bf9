//! The event: one input line after parsing.
//!
//! An [`Event`] borrows from the batch buffer its line came from, so the hot path (parse, then
//! derive) allocates only for strings that JSON escaping forces to be rebuilt. The normalised fields
//! (timestamp, level, component, message, trace_id) sit beside the captured values of the field
//! paths the pipeline refers to; the rest of the object stays in `line` and is decoded on demand by
//! [`Event::fields`], so nothing of the original is lost while nothing unused is decoded.

use std::borrow::Cow;
use std::fmt;

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
}

impl ParseIssue {
    pub const ALL: [ParseIssue; 7] = [
        ParseIssue::InvalidJson,
        ParseIssue::NotAnObject,
        ParseIssue::InvalidUtf8,
        ParseIssue::Truncated,
        ParseIssue::TimestampMissing,
        ParseIssue::TimestampInvalid,
        ParseIssue::InvalidEnvelope,
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
    pub timestamp: TimestampNs,
    pub level: Level,
    pub component: Option<Cow<'a, str>>,
    pub message: Cow<'a, str>,
    pub trace_id: Cow<'a, str>,
    /// Values captured at the pipeline's field paths, indexed by path id (see `parse::FieldPaths`).
    pub captured: Vec<Option<Value<'a>>>,
}

impl<'a> Event<'a> {
    /// The value at a path id captured from the line, if the line had it.
    pub fn captured(&self, id: usize) -> Option<&Value<'a>> {
        self.captured.get(id).and_then(Option::as_ref)
    }

    /// The whole JSON object of the line, decoded now (not on the hot path): every field,
    /// nested objects kept. Empty for a line that was not a JSON object.
    pub fn fields(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::from_str::<serde_json::Value>(self.line) {
            Ok(serde_json::Value::Object(map)) => map,
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

/// RFC 3339 with nanoseconds, UTC (`2024-01-01T00:00:00.123Z`).
pub fn format_rfc3339(ts: TimestampNs) -> String {
    match jiff::Timestamp::from_nanosecond(i128::from(ts)) {
        Ok(t) => t.to_string(),
        Err(_) => ts.to_string(),
    }
}
