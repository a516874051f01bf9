//! Line to [`Event`]: JSON decoding of just the paths the pipeline uses (or, with `[parser]`,
//! logfmt/regex: see [`text`]), then normalisation of timestamp, level, component, message and
//! trace_id.
//!
//! Invariants: parsing never fails and never panics. A line that is not a JSON object becomes an
//! event whose message is the raw line; each irregularity is reported as a [`ParseIssue`], which
//! the caller counts in `weir_parse_errors_total{reason}`. Captures of a line that turns out to be
//! broken JSON are discarded, so no metric is ever derived from half a line.

pub mod container;
pub mod json;
pub mod level;
pub mod logfmt;
pub mod repair;
pub mod report;
pub mod text;
pub mod timestamp;

use std::borrow::Cow;

use serde::Deserialize;

use crate::event::{format_rfc3339, Event, Level, ParseIssue, TimestampNs, Value};
pub use json::PathTrie;

/// `[event]`: where the normalised fields come from. Each list is tried in order; the first path
/// present in a line wins. The defaults cover the agent system's logs and the common conventions
/// (Python logging JSON, Bunyan/Pino, Logrus/zap, ECS).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventConfig {
    /// Paths of the timestamp. Default: timestamp, @timestamp, time, ts, asctime.
    #[serde(default = "default_timestamp_paths")]
    pub timestamp: Vec<String>,
    /// Paths of the level. Default: level, levelname, severity, log.level, lvl.
    #[serde(default = "default_level_paths")]
    pub level: Vec<String>,
    /// Paths of the component. Default: component, logger, logger_name, log.logger, name.
    #[serde(default = "default_component_paths")]
    pub component: Vec<String>,
    /// Paths of the message. Default: message, msg, @message.
    #[serde(default = "default_message_paths")]
    pub message: Vec<String>,
    /// Paths of the trace id. Default: trace_id, traceId, trace.id, metadata.trace_id.
    #[serde(default = "default_trace_id_paths")]
    pub trace_id: Vec<String>,
    /// Give events without a trace id a random UUID v4. Default: true.
    #[serde(default = "default_true")]
    pub generate_trace_id: bool,
    /// Longer lines are cut to this many bytes and counted (`reason="line_truncated"`).
    /// Default: 1048576 (1 MiB).
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Repair lines that are invalid JSON only because the message was pasted in unescaped
    /// (Python's `logging` with a JSON-looking format string): the message is re-escaped and the
    /// line parsed again, counted as `reason="message_unescaped"`. See [`repair`]. Default: true.
    #[serde(default = "default_true")]
    pub repair_unescaped_message: bool,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}
fn default_timestamp_paths() -> Vec<String> {
    strings(&["timestamp", "@timestamp", "time", "ts", "asctime"])
}
fn default_level_paths() -> Vec<String> {
    strings(&["level", "levelname", "severity", "log.level", "lvl"])
}
fn default_component_paths() -> Vec<String> {
    strings(&["component", "logger", "logger_name", "log.logger", "name"])
}
fn default_message_paths() -> Vec<String> {
    strings(&["message", "msg", "@message"])
}
fn default_trace_id_paths() -> Vec<String> {
    strings(&["trace_id", "traceId", "trace.id", "metadata.trace_id"])
}
const fn default_true() -> bool {
    true
}
pub const fn default_max_line_bytes() -> usize {
    1 << 20
}

impl Default for EventConfig {
    fn default() -> Self {
        EventConfig {
            timestamp: default_timestamp_paths(),
            level: default_level_paths(),
            component: default_component_paths(),
            message: default_message_paths(),
            trace_id: default_trace_id_paths(),
            generate_trace_id: true,
            max_line_bytes: default_max_line_bytes(),
            repair_unescaped_message: true,
        }
    }
}

/// A reference to a field of an event: one of the normalised fields or a captured path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldRef {
    Timestamp,
    Level,
    Component,
    Message,
    TraceId,
    /// A path of the line's JSON, by id in the [`PathTrie`].
    Path(usize),
}

impl FieldRef {
    /// The normalised field a name refers to, if it is one.
    pub fn resolve_builtin(path: &str) -> Option<FieldRef> {
        Some(match path {
            "timestamp" => FieldRef::Timestamp,
            "level" => FieldRef::Level,
            "component" => FieldRef::Component,
            "message" => FieldRef::Message,
            "trace_id" => FieldRef::TraceId,
            _ => return None,
        })
    }

    /// A builtin, or `path` interned in `trie`.
    pub fn resolve(path: &str, trie: &mut PathTrie) -> FieldRef {
        FieldRef::resolve_builtin(path).unwrap_or_else(|| FieldRef::Path(trie.intern(path)))
    }

    pub fn exists(&self, ev: &Event<'_>) -> bool {
        match self {
            FieldRef::Component => ev.component.is_some(),
            FieldRef::Path(id) => ev.captured(*id).is_some_and(|v| *v != Value::Null),
            _ => true,
        }
    }

    /// The field as text (labels, string comparisons). `None` when absent or null.
    pub fn text<'e>(&self, ev: &'e Event<'_>) -> Option<Cow<'e, str>> {
        match self {
            FieldRef::Timestamp => Some(Cow::Owned(format_rfc3339(ev.timestamp))),
            FieldRef::Level => Some(Cow::Borrowed(ev.level.as_str())),
            FieldRef::Component => ev.component.as_deref().map(Cow::Borrowed),
            FieldRef::Message => Some(Cow::Borrowed(&ev.message)),
            FieldRef::TraceId => Some(Cow::Borrowed(&ev.trace_id)),
            FieldRef::Path(id) => ev.captured(*id).and_then(Value::as_text),
        }
    }

    /// The field as a number (metric values, numeric comparisons). The timestamp is in seconds.
    pub fn number(&self, ev: &Event<'_>) -> Option<f64> {
        match self {
            FieldRef::Timestamp => Some(ev.timestamp as f64 / 1e9),
            FieldRef::Level => None,
            FieldRef::Path(id) => ev.captured(*id).and_then(Value::as_f64),
            FieldRef::Component | FieldRef::Message | FieldRef::TraceId => {
                self.text(ev).and_then(|t| t.trim().parse().ok())
            }
        }
    }

    pub fn boolean(&self, ev: &Event<'_>) -> Option<bool> {
        match self {
            FieldRef::Path(id) => match ev.captured(*id) {
                Some(Value::Bool(b)) => Some(*b),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Turns lines into events. Built by the config compiler once the trie holds every path the
/// pipeline uses.
#[derive(Debug, Clone)]
pub struct LineParser {
    trie: PathTrie,
    timestamp: Vec<usize>,
    level: Vec<usize>,
    component: Vec<usize>,
    message: Vec<usize>,
    trace_id: Vec<usize>,
    generate_trace_id: bool,
    max_line_bytes: usize,
    /// Top-level message keys whose unescaped values [`repair`] may fix; empty: no repair.
    repair_keys: Vec<String>,
    /// `[parser]`'s formats; `None`: JSON only, the path taken without any extra work.
    chain: Option<text::Chain>,
    /// Parsers of the sources with a `parser` of their own, by source name (see
    /// [`LineParser::for_source`]).
    overrides: Vec<(Box<str>, LineParser)>,
}

/// The path ids of the event fields, interned before the pipeline's own paths.
#[derive(Debug, Clone)]
pub struct EventPaths {
    timestamp: Vec<usize>,
    level: Vec<usize>,
    component: Vec<usize>,
    message: Vec<usize>,
    trace_id: Vec<usize>,
    generate_trace_id: bool,
    max_line_bytes: usize,
    /// Top-level message keys whose unescaped values [`repair`] may fix; empty: no repair.
    repair_keys: Vec<String>,
}

impl EventConfig {
    /// Interns the event field paths into `trie`. Finish with [`EventPaths::into_parser`] once
    /// every other path is interned too.
    pub fn intern(&self, trie: &mut PathTrie) -> EventPaths {
        let mut ids = |v: &[String]| v.iter().map(|p| trie.intern(p)).collect::<Vec<_>>();
        EventPaths {
            timestamp: ids(&self.timestamp),
            level: ids(&self.level),
            component: ids(&self.component),
            message: ids(&self.message),
            trace_id: ids(&self.trace_id),
            generate_trace_id: self.generate_trace_id,
            max_line_bytes: self.max_line_bytes.max(1),
            repair_keys: if self.repair_unescaped_message {
                self.message
                    .iter()
                    .filter(|p| !p.contains('.'))
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            },
        }
    }
}

impl EventPaths {
    pub fn into_parser(self, trie: PathTrie) -> LineParser {
        LineParser {
            trie,
            timestamp: self.timestamp,
            level: self.level,
            component: self.component,
            message: self.message,
            trace_id: self.trace_id,
            generate_trace_id: self.generate_trace_id,
            max_line_bytes: self.max_line_bytes,
            repair_keys: self.repair_keys,
            chain: None,
            overrides: Vec::new(),
        }
    }
}

impl LineParser {
    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes
    }

    pub fn trie(&self) -> &PathTrie {
        &self.trie
    }

    /// Parses one line (without its newline). `received` is used when the line carries no
    /// usable timestamp. Irregularities are passed to `issue`.
    pub fn parse<'a>(
        &self,
        line: &'a str,
        received: TimestampNs,
        issue: &mut impl FnMut(ParseIssue),
    ) -> Event<'a> {
        match &self.chain {
            Some(chain) => self.parse_chain(chain, line, None::<&mut String>, &[], received, issue),
            None => self.parse_with_attrs(line, &[], received, issue),
        }
    }

    /// The parser for lines of the source named `source` (a `LineBatch`'s `source`): its own
    /// when its `[[sources]]` entry has a `parser`, else this one. Once per batch.
    pub fn for_source(&self, source: &str) -> &LineParser {
        self.overrides
            .iter()
            .find(|(name, _)| **name == *source)
            .map_or(self, |(_, p)| p)
    }

    /// Sets the formats (`[parser]`; `None`: JSON) and the per-source ones (by source name).
    pub fn with_formats(
        mut self,
        chain: Option<text::Chain>,
        sources: Vec<(Box<str>, Option<text::Chain>)>,
    ) -> Self {
        self.chain = chain;
        self.overrides = sources
            .into_iter()
            .map(|(name, chain)| {
                let mut p = self.clone();
                p.overrides = Vec::new();
                p.chain = chain;
                (name, p)
            })
            .collect();
        self
    }

    /// As [`parse_with_attrs`](Self::parse_with_attrs), and a line that is invalid JSON only
    /// because of an unescaped message is repaired into `scratch` and parsed from there (the
    /// event's `line` is then the repaired text). Issues of the failed first attempt are not
    /// reported when the repair succeeds; `message_unescaped` is.
    ///
    /// With a `[parser]` chain (logfmt, regex, fallbacks), the line is tried with each format
    /// in turn; see [`parse_chain`](Self::parse_chain).
    pub fn parse_line<'a>(
        &self,
        line: &'a str,
        scratch: impl Keep<'a>,
        attrs: &'a [(Box<str>, Box<str>)],
        received: TimestampNs,
        issue: &mut impl FnMut(ParseIssue),
    ) -> Event<'a> {
        match &self.chain {
            Some(chain) => self.parse_chain(chain, line, Some(scratch), attrs, received, issue),
            None => self.parse_json_line(line, scratch, attrs, received, issue),
        }
    }

    /// Tries each format of `chain` in order; the first that reads the line makes the event,
    /// and only its issues are reported. A line none reads is kept as a raw-message event and
    /// counted once, under the first format's reason (`regex_no_match`, `invalid_logfmt`,
    /// `invalid_json`). JSON in a chain is repaired (see [`repair`]) only with a `scratch`.
    /// A text format reads a joined multi-line event's first line; the rest becomes its
    /// `exception`, as for JSON.
    fn parse_chain<'a>(
        &self,
        chain: &text::Chain,
        line: &'a str,
        scratch: Option<impl Keep<'a>>,
        attrs: &'a [(Box<str>, Box<str>)],
        received: TimestampNs,
        issue: &mut impl FnMut(ParseIssue),
    ) -> Event<'a> {
        let mut scratch = scratch;
        let last = chain.formats.len().saturating_sub(1);
        for (i, format) in chain.formats.iter().enumerate() {
            match format {
                text::Format::Json => {
                    let mut found: smallvec::SmallVec<[ParseIssue; 4]> = smallvec::SmallVec::new();
                    let ev = match scratch.take() {
                        // The last chance for this line: JSON with repair.
                        Some(s) if i == last => {
                            self.parse_json_line(line, s, attrs, received, &mut |x| found.push(x))
                        }
                        s => {
                            scratch = s;
                            self.parse_with_attrs(line, attrs, received, &mut |x| found.push(x))
                        }
                    };
                    if ev.parsed {
                        found.into_iter().for_each(&mut *issue);
                        return ev;
                    }
                }
                text::Format::Text(f) => {
                    if let Some(ev) = self.parse_text(f, line, attrs, received, issue) {
                        return ev;
                    }
                }
            }
        }
        // JSON first and no format read the line: JSON's own verdict, with its repair.
        if let (Some(text::Format::Json), Some(s)) = (chain.formats.first(), scratch) {
            return self.parse_json_line(line, s, attrs, received, issue);
        }
        issue(chain.no_match);
        self.unparsed(line, attrs, received)
    }

    /// A line read with a text format; `None` when it is not in that format.
    fn parse_text<'a>(
        &self,
        format: &std::sync::Arc<text::TextFormat>,
        line: &'a str,
        attrs: &'a [(Box<str>, Box<str>)],
        received: TimestampNs,
        issue: &mut impl FnMut(ParseIssue),
    ) -> Option<Event<'a>> {
        let (head, rest) = crate::event::split_joined(line);
        let mut captured = vec![None; self.trie.len()];
        if !format.capture(&self.trie, head, &mut captured, issue) {
            return None;
        }
        if let (Some(rest), Some(id)) = (rest, self.trie.get("exception")) {
            if captured[id].is_none() {
                captured[id] = Some(Value::Str(Cow::Borrowed(rest)));
            }
        }
        let from_line = (!attrs.is_empty()).then(|| captured.clone());
        self.fill_attrs(attrs, &mut captured);
        let text: std::sync::Arc<dyn crate::event::LineFields> = format.clone();
        let mut ev = self.normalise(head, captured, from_line, received, issue, Some(text));
        ev.line = line;
        Some(ev)
    }

    /// Fills the paths a line lacks from the source's attributes.
    fn fill_attrs<'a>(
        &self,
        attrs: &'a [(Box<str>, Box<str>)],
        captured: &mut [Option<Value<'a>>],
    ) {
        for (k, v) in attrs {
            if let Some(id) = self.trie.get(k) {
                if captured[id].is_none() {
                    captured[id] = Some(Value::Str(Cow::Borrowed(v)));
                }
            }
        }
    }

    /// The raw-message event of a line no format read (as for broken JSON).
    fn unparsed<'a>(
        &self,
        line: &'a str,
        attrs: &'a [(Box<str>, Box<str>)],
        received: TimestampNs,
    ) -> Event<'a> {
        let mut captured = vec![None; self.trie.len()];
        self.fill_attrs(attrs, &mut captured);
        let timestamp = self
            .timestamp
            .iter()
            .find_map(|&id| captured[id].as_ref().and_then(timestamp::timestamp_of))
            .unwrap_or(received);
        Event {
            line,
            is_json: false,
            parsed: false,
            timestamp,
            level: Level::Unknown,
            component: None,
            message: Cow::Borrowed(line),
            trace_id: self.new_trace_id(),
            trace_generated: self.generate_trace_id,
            captured,
            text: None,
        }
    }

    /// [`parse_line`](Self::parse_line) for JSON: the line, repaired when only its message
    /// was pasted in unescaped.
    fn parse_json_line<'a>(
        &self,
        line: &'a str,
        scratch: impl Keep<'a>,
        attrs: &'a [(Box<str>, Box<str>)],
        received: TimestampNs,
        issue: &mut impl FnMut(ParseIssue),
    ) -> Event<'a> {
        if self.repair_keys.is_empty() {
            return self.parse_with_attrs(line, attrs, received, issue);
        }
        let mut first: smallvec::SmallVec<[ParseIssue; 4]> = smallvec::SmallVec::new();
        let ev = self.parse_with_attrs(line, attrs, received, &mut |i| first.push(i));
        if !ev.parsed && first.contains(&ParseIssue::InvalidJson) {
            // A joined multi-line event: the JSON head is repaired, its traceback kept as is.
            let (head, rest) = crate::event::split_joined(line);
            if let Some(fixed) = repair::unescaped_message(head, &self.repair_keys) {
                let mut fixed = fixed;
                if let Some(rest) = rest {
                    fixed.push('\n');
                    fixed.push_str(rest);
                }
                let fixed = scratch.keep(fixed);
                issue(ParseIssue::MessageUnescaped);
                return self.parse_with_attrs(fixed, attrs, received, issue);
            }
        }
        first.into_iter().for_each(&mut *issue);
        ev
    }

    /// As [`parse`](Self::parse), with attributes the source attached to the line (container
    /// envelope fields). An attribute fills a path the line itself does not have, so a Docker
    /// envelope's `time` serves as timestamp when the application's line has none.
    pub fn parse_with_attrs<'a>(
        &self,
        line: &'a str,
        attrs: &'a [(Box<str>, Box<str>)],
        received: TimestampNs,
        issue: &mut impl FnMut(ParseIssue),
    ) -> Event<'a> {
        // A joined multi-line event (only `source::multiline` makes lines with a `\n`): a JSON
        // object on its first line is the event, the continuation lines its `exception`; the
        // event's `line` stays the whole text (shipped whole). Otherwise it is parsed as one
        // line, so a text head gives a raw-message event of the whole text.
        if let (head, Some(rest)) = crate::event::split_joined(line) {
            if head.trim_start().starts_with('{') {
                let mut head_issues: smallvec::SmallVec<[ParseIssue; 4]> =
                    smallvec::SmallVec::new();
                let mut collect = |i| head_issues.push(i);
                // As a trait object, so the recursion instantiates one function, not a chain.
                let mut collect: &mut dyn FnMut(ParseIssue) = &mut collect;
                let mut ev = self.parse_with_attrs(head, attrs, received, &mut collect);
                if ev.is_json {
                    head_issues.into_iter().for_each(&mut *issue);
                    if let Some(id) = self.trie.get("exception") {
                        if ev.captured[id].is_none() {
                            ev.captured[id] = Some(Value::Str(Cow::Borrowed(rest)));
                        }
                    }
                    ev.line = line;
                    return ev;
                }
            }
        }
        let mut captured = vec![None; self.trie.len()];
        let shape = json::capture(&self.trie, line, &mut captured);
        if !matches!(shape, Ok(json::Shape::Object)) {
            issue(match shape {
                Ok(_) => ParseIssue::NotAnObject,
                Err(_) => ParseIssue::InvalidJson,
            });
            // Captures of a half-read line are dropped (a fresh vector in `unparsed`).
            return self.unparsed(line, attrs, received);
        }
        // The line's own fields rank before the source's attributes: a line with `ts` keeps its
        // time even though the Docker envelope's `time` comes earlier in the path list.
        let from_line = (!attrs.is_empty()).then(|| captured.clone());
        self.fill_attrs(attrs, &mut captured);
        self.normalise(line, captured, from_line, received, issue, None)
    }

    /// The event of a line its parser read, from its captures: `from_line` holds the captures
    /// before the source's attributes were added (`None` when it has none); `text` is the text
    /// parser that read it (`None`: JSON). A text line without a message field keeps the whole
    /// line as its message (a JSON line gets an empty one).
    fn normalise<'a>(
        &self,
        line: &'a str,
        captured: Vec<Option<Value<'a>>>,
        from_line: Option<Vec<Option<Value<'a>>>>,
        received: TimestampNs,
        issue: &mut impl FnMut(ParseIssue),
        text: Option<std::sync::Arc<dyn crate::event::LineFields>>,
    ) -> Event<'a> {
        let present = |c: &[Option<Value<'a>>], ids: &[usize]| {
            ids.iter()
                .find_map(|&id| c[id].as_ref().filter(|v| **v != Value::Null))
                .is_some()
        };
        let first = |ids: &[usize]| {
            let source = match &from_line {
                Some(line) if present(line, ids) => line,
                _ => &captured,
            };
            ids.iter()
                .find_map(|&id| source[id].as_ref().filter(|v| **v != Value::Null))
        };
        let timestamp = match first(&self.timestamp) {
            Some(v) => timestamp::timestamp_of(v).unwrap_or_else(|| {
                issue(ParseIssue::TimestampInvalid);
                received
            }),
            None => {
                issue(ParseIssue::TimestampMissing);
                received
            }
        };
        let level = first(&self.level).map_or(Level::Unknown, level::level_of);
        let component = first(&self.component).and_then(owned_text);
        let message = first(&self.message)
            .and_then(owned_text)
            .unwrap_or(Cow::Borrowed(if text.is_some() { line } else { "" }));
        let (trace_id, trace_generated) = match first(&self.trace_id).and_then(owned_text) {
            Some(t) if !t.is_empty() => (t, false),
            _ => (self.new_trace_id(), self.generate_trace_id),
        };
        Event {
            line,
            is_json: text.is_none(),
            parsed: true,
            timestamp,
            level,
            component,
            message,
            trace_id,
            trace_generated,
            captured,
            text,
        }
    }

    fn new_trace_id(&self) -> Cow<'static, str> {
        if self.generate_trace_id {
            Cow::Owned(uuid::Uuid::new_v4().to_string())
        } else {
            Cow::Borrowed("")
        }
    }
}

/// Text of a captured value with the line's lifetime (a borrowed string stays borrowed).
fn owned_text<'a>(v: &Value<'a>) -> Option<Cow<'a, str>> {
    match v {
        Value::Str(Cow::Borrowed(s)) => Some(Cow::Borrowed(s)),
        Value::Str(Cow::Owned(s)) => Some(Cow::Owned(s.clone())),
        Value::Num(_, raw) | Value::Composite(raw) => Some(Cow::Borrowed(raw)),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Value::Null => None,
    }
}

/// Where a repaired line is kept for as long as its event lives (the event borrows it): a
/// `String` of the caller's for one line at a time, or the arena of a batch whose events are
/// handed to another thread together with their lines (see `processor`).
pub trait Keep<'a> {
    fn keep(self, text: String) -> &'a str;
}

impl<'a> Keep<'a> for &'a mut String {
    fn keep(self, text: String) -> &'a str {
        *self = text;
        self.as_str()
    }
}

impl<'a> Keep<'a> for &'a bumpalo::Bump {
    fn keep(self, text: String) -> &'a str {
        self.alloc_str(&text)
    }
}

/// Makes a line of bytes into text: invalid UTF-8 is replaced (and reported); a line that was cut
/// at `max_line_bytes` loses the partial character the cut left at its end rather than counting
/// it as invalid UTF-8.
pub fn line_text<'a>(
    bytes: &'a [u8],
    truncated: bool,
    issue: &mut impl FnMut(ParseIssue),
) -> Cow<'a, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(e) if truncated && e.error_len().is_none() => {
            // Only an incomplete character at the very end: the cut made it.
            Cow::Borrowed(std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default())
        }
        Err(_) => {
            issue(ParseIssue::InvalidUtf8);
            String::from_utf8_lossy(bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser(cfg: &EventConfig) -> LineParser {
        let mut trie = PathTrie::new();
        cfg.intern(&mut trie).into_parser(trie)
    }

    fn parse<'a>(p: &LineParser, line: &'a str) -> (Event<'a>, Vec<ParseIssue>) {
        let mut issues = Vec::new();
        let ev = p.parse(line, 7, &mut |i| issues.push(i));
        (ev, issues)
    }

    #[test]
    fn agent_system_line() {
        let p = parser(&EventConfig::default());
        let line = r#"{"timestamp":"2024-01-01T00:00:00.123Z","level":"WARNING","component":"EventBus","message":"Retrying request","trace_id":"abc","metadata":{"attempt":2}}"#;
        let (ev, issues) = parse(&p, line);
        assert!(issues.is_empty());
        assert!(ev.is_json);
        assert_eq!(ev.timestamp, 1_704_067_200_123_000_000);
        assert_eq!(ev.level, Level::Warning);
        assert_eq!(ev.component.as_deref(), Some("EventBus"));
        assert_eq!(ev.message, "Retrying request");
        assert_eq!(ev.trace_id, "abc");
        assert_eq!(ev.fields()["metadata"]["attempt"], 2);
    }

    #[test]
    fn conventions_of_other_loggers() {
        let p = parser(&EventConfig::default());
        // Pino: numeric level and epoch ms; Bunyan's `name` as component.
        let (ev, _) = parse(
            &p,
            r#"{"level":30,"time":1704067200123,"name":"api","msg":"hello"}"#,
        );
        assert_eq!(
            (ev.level, ev.timestamp),
            (Level::Info, 1_704_067_200_123_000_000)
        );
        assert_eq!(
            (ev.component.as_deref(), &*ev.message),
            (Some("api"), "hello")
        );
        // zap: float epoch seconds in `ts`, `logger`.
        let (ev, _) = parse(
            &p,
            r#"{"level":"warn","ts":1704067200.5,"logger":"db","msg":"slow"}"#,
        );
        assert_eq!(
            (ev.level, ev.timestamp),
            (Level::Warning, 1_704_067_200_500_000_000)
        );
        assert_eq!(ev.component.as_deref(), Some("db"));
        // ECS: dotted keys.
        let (ev, _) = parse(
            &p,
            r#"{"@timestamp":"2024-01-01T00:00:00Z","log.level":"error","message":"m","trace.id":"t1"}"#,
        );
        assert_eq!((ev.level, &*ev.trace_id), (Level::Error, "t1"));
        // Python logging JSON.
        let (ev, _) = parse(
            &p,
            r#"{"asctime":"2024-01-01 00:00:00,250","levelname":"CRITICAL","name":"app.worker","message":"boom"}"#,
        );
        assert_eq!(
            (ev.level, ev.timestamp),
            (Level::Critical, 1_704_067_200_250_000_000)
        );
        // trace id nested in metadata.
        let (ev, _) = parse(&p, r#"{"message":"m","metadata":{"trace_id":"nested"}}"#);
        assert_eq!(ev.trace_id, "nested");
    }

    #[test]
    fn missing_and_bad_timestamps_fall_back_and_are_reported() {
        let p = parser(&EventConfig::default());
        let (ev, issues) = parse(&p, r#"{"message":"m"}"#);
        assert_eq!(
            (ev.timestamp, issues),
            (7, vec![ParseIssue::TimestampMissing])
        );
        let (ev, issues) = parse(&p, r#"{"timestamp":"soon","message":"m"}"#);
        assert_eq!(
            (ev.timestamp, issues),
            (7, vec![ParseIssue::TimestampInvalid])
        );
    }

    #[test]
    fn broken_lines_are_kept_with_the_raw_line_as_message() {
        let p = parser(&EventConfig::default());
        let (ev, issues) = parse(&p, r#"{"timestamp":"2024-01-01T00:00:00Z","message":"cut"#);
        assert_eq!(issues, vec![ParseIssue::InvalidJson]);
        assert!(!ev.is_json);
        assert_eq!(
            ev.message,
            r#"{"timestamp":"2024-01-01T00:00:00Z","message":"cut"#
        );
        assert!(ev.captured.iter().all(Option::is_none));
        assert_eq!(ev.timestamp, 7);
        assert_eq!(ev.trace_id.len(), 36, "a UUID is generated");
        let (_, issues) = parse(&p, "[1,2,3]");
        assert_eq!(issues, vec![ParseIssue::NotAnObject]);
    }

    #[test]
    fn attributes_fill_only_what_the_line_lacks() {
        let p = parser(&EventConfig::default());
        let attrs: Vec<(Box<str>, Box<str>)> = vec![
            ("time".into(), "2024-05-01T00:00:00Z".into()),
            ("stream".into(), "stderr".into()),
        ];
        let mut issues = Vec::new();
        // zap's `ts` comes after `time` in the default paths, yet the line's own time wins.
        let ev = p.parse_with_attrs(r#"{"ts":1704067200.5,"msg":"m"}"#, &attrs, 7, &mut |i| {
            issues.push(i)
        });
        assert_eq!(ev.timestamp, 1_704_067_200_500_000_000);
        // Without a time of its own, the envelope's serves; so it does for a plain-text line.
        let ev = p.parse_with_attrs(r#"{"msg":"m"}"#, &attrs, 7, &mut |i| issues.push(i));
        assert_eq!(ev.timestamp, 1_714_521_600_000_000_000);
        let ev = p.parse_with_attrs("plain text", &attrs, 7, &mut |i| issues.push(i));
        assert_eq!(ev.timestamp, 1_714_521_600_000_000_000);
        assert_eq!(issues, vec![ParseIssue::InvalidJson]);
    }

    #[test]
    fn trace_id_generation_can_be_switched_off() {
        let p = parser(&EventConfig {
            generate_trace_id: false,
            ..EventConfig::default()
        });
        let (ev, _) = parse(&p, r#"{"message":"m"}"#);
        assert_eq!(ev.trace_id, "");
        let p = parser(&EventConfig::default());
        let (a, _) = parse(&p, r#"{"message":"m"}"#);
        let (b, _) = parse(&p, r#"{"message":"m"}"#);
        assert!(uuid::Uuid::parse_str(&a.trace_id).is_ok());
        assert_ne!(a.trace_id, b.trace_id);
    }

    #[test]
    fn invalid_utf8_is_replaced_and_reported_but_a_cut_character_is_not() {
        let mut issues = Vec::new();
        let text = line_text(b"ab\xffcd", false, &mut |i| issues.push(i));
        assert_eq!(
            (text.as_ref(), issues.as_slice()),
            ("ab\u{fffd}cd", &[ParseIssue::InvalidUtf8][..])
        );
        let mut issues = Vec::new();
        let text = line_text("abé".as_bytes()[..3].as_ref(), true, &mut |i| {
            issues.push(i)
        });
        assert_eq!((text.as_ref(), issues.len()), ("ab", 0));
    }
}
