//! Spans from log events: `[[spans]]` of a pipeline file, for the OTLP sink's traces.
//!
//! An agent system logs "Task completed" with a `duration` and a `trace_id`, or a "Task
//! started" and a "Task completed" of the same trace: each is a span a tracing backend (Tempo,
//! Jaeger, the OpenTelemetry Collector) can show beside the metrics and the logs. A `[[spans]]`
//! entry turns one matching event into one [`Span`], in one of two ways:
//! - **from one event with a duration**: `when` matches it, `duration = "metadata.duration"`
//!   (seconds, times `scale`) gives its length; the span ends at the event's timestamp and
//!   starts `duration` before;
//! - **from a start/end pair**: `[spans.pair]` as in `[metrics.pair]` ([`super::pair`]): an event
//!   matching `pair.start` records its timestamp under `pair.key`; the end event (`when`) closes
//!   the span, which covers start → end. The table of open starts is bounded the same way
//!   (`timeout_secs`, `max_open`, counted in `weir_pair_evicted_total{metric="span:NAME"}`).
//!
//! # Identities
//! - `trace_id` (16 bytes) comes from the event's trace_id: a UUID (any of its spellings) is
//!   its 16 bytes; 32 hex digits (W3C, OpenTelemetry) are those bytes; anything else is the
//!   first 16 bytes of its xxh3-128 hash (big-endian), so one trace id always gives one trace,
//!   and the logs' records ([`trace_id_bytes`] is also what the OTLP logs use) carry the same.
//!   The all-zero id, invalid in OTLP, is hashed as well.
//! - `span_id` (8 bytes): from `span_id = "field"` when the logs carry one (16 hex digits are
//!   its bytes, anything else is hashed), else derived from (trace_id, name, start time) by
//!   xxh3-64: the same event always gives the same span, so a resend (at-least-once delivery,
//!   a disk buffer replayed) repeats a span instead of adding one.
//! - `parent_span_id` from `parent_span_id = "field"`, read as `span_id` is.
//!
//! # What is counted
//! An event that matches `when` but cannot make a span (no duration, not a number, negative or
//! not finite) is counted in `weir_derive_errors_total{metric="span:NAME",reason}` and still
//! shipped as a line. Unparsed lines make no span. An event ends at most one span: the first
//! `[[spans]]` entry whose `when` matches (all of them see it as a possible pair start).
//! Attribute values are cut at [`MAX_ATTRIBUTE_BYTES`]; a reload starts the pair tables anew.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use prometheus::IntCounter;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use toml::Spanned;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use super::compile_condition;
use super::condition::Condition;
use super::pair::{PairConfig, PairCounters, Pairing};
use crate::event::{Event, TimestampNs, Value};
use crate::located::CompileError;
use crate::parse::{FieldRef, PathTrie};
use crate::telemetry::SelfMetrics;

/// Longest attribute value (and span name) kept, in bytes; longer ones are cut at a UTF-8
/// boundary. Collectors cap attributes too (the SDKs' `attribute_value_length_limit`).
pub const MAX_ATTRIBUTE_BYTES: usize = 4096;

/// `[[spans]]`: one span derived from log events.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpanConfig {
    /// The span's name: a literal (`name = "agent.task"`) or a field
    /// (`name = { from = "metadata.task_type", default = "task" }`; without a default an event
    /// lacking the field names its span `unnamed`). Required.
    #[schemars(with = "SpanName")]
    pub name: Spanned<SpanName>,
    /// Condition matching the event that ends the span (with `duration`, the only event).
    /// Required.
    #[schemars(with = "String")]
    pub when: Spanned<String>,
    /// Field holding the span's length in seconds (times `scale`). Give this or `pair`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub duration: Option<Spanned<String>>,
    /// Multiplier of `duration`: `scale = 0.001` for milliseconds. Default: 1.
    #[serde(default)]
    #[schemars(with = "Option<f64>")]
    pub scale: Option<Spanned<f64>>,
    /// The span runs from a start event to this end event (`[spans.pair]`, as `[metrics.pair]`).
    #[serde(default)]
    pub pair: Option<PairConfig>,
    /// Span attribute name to field path (`"agent.id" = "metadata.agent_id"`). Numbers, booleans
    /// and strings keep their type; objects and arrays are sent as their JSON text; a field the
    /// event lacks is left out. Default: none.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Field holding the outcome: one of `error_values` makes the span's status ERROR (with the
    /// value as its message), any other value OK; an event without it leaves the status UNSET.
    /// Default: none (UNSET).
    #[serde(default)]
    pub status_from: Option<String>,
    /// Values of `status_from` that mean failure, compared ignoring ASCII case.
    /// Default: `["failure", "failed", "error"]`.
    #[serde(default = "default_error_values")]
    pub error_values: Vec<String>,
    /// internal (default), server, client, producer or consumer.
    #[serde(default)]
    pub kind: SpanKind,
    /// Field holding the span's id, when the logs carry one. Default: derived (see the module).
    #[serde(default)]
    pub span_id: Option<String>,
    /// Field holding the parent span's id, when the logs carry one. Default: none (a root).
    #[serde(default)]
    pub parent_span_id: Option<String>,
}

fn default_error_values() -> Vec<String> {
    ["failure", "failed", "error"].map(String::from).to_vec()
}

/// A span's name: literal, or from a field.
#[derive(Debug, Clone, PartialEq)]
pub enum SpanName {
    Literal(String),
    From {
        from: String,
        default: Option<String>,
    },
}

impl<'de> Deserialize<'de> for SpanName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            from: String,
            default: Option<String>,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SpanName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a span name, or a table { from = \"field.path\", default = \"name\" }")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<SpanName, E> {
                Ok(SpanName::Literal(s.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SpanName, A::Error> {
                let full = Full::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(SpanName::From {
                    from: full.from,
                    default: full.default,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// OTLP's `Span.SpanKind` (its numbers are the wire values).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SpanKind {
    #[default]
    Internal = 1,
    Server = 2,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

/// OTLP's `Status.StatusCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanStatus {
    Unset = 0,
    Ok = 1,
    Error = 2,
}

/// A typed attribute value (OTLP `AnyValue` of a scalar).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
}

/// One derived span, ready for the OTLP sink (and stored as is in a disk buffer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    #[serde(default)]
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub kind: SpanKind,
    /// Nanoseconds since the epoch.
    pub start_ns: TimestampNs,
    pub end_ns: TimestampNs,
    pub status: SpanStatus,
    /// With ERROR: the `status_from` value.
    #[serde(default)]
    pub status_message: String,
    #[serde(default)]
    pub attributes: Vec<(String, AttrValue)>,
}

impl Span {
    /// Approximate bytes the span adds to a request (batch and buffer sizes).
    pub fn size(&self) -> usize {
        64 + self.name.len()
            + self.status_message.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| {
                    k.len()
                        + match v {
                            AttrValue::Str(s) => s.len(),
                            _ => 8,
                        }
                })
                .sum::<usize>()
    }
}

/// A trace id's 16 bytes: a UUID's, 32 hex digits', else the first 16 bytes of its xxh3-128
/// hash (also for the all-zero id, which OTLP forbids). See the module docs.
pub fn trace_id_bytes(id: &str) -> [u8; 16] {
    let id = id.trim();
    // `Uuid::try_parse` takes the hyphenated, simple (32 hex), braced and URN forms.
    if let Ok(u) = uuid::Uuid::try_parse(id) {
        if !u.is_nil() {
            return *u.as_bytes();
        }
    }
    xxh3_128(id.as_bytes()).to_be_bytes()
}

/// A span id's 8 bytes: 16 hex digits are their bytes, anything else its xxh3-64 hash; never
/// all zero (invalid in OTLP).
pub fn span_id_bytes(id: &str) -> [u8; 8] {
    let id = id.trim();
    let parsed = (id.len() == 16)
        .then(|| u64::from_str_radix(id, 16).ok())
        .flatten();
    let v = match parsed {
        Some(v) if v != 0 && id.bytes().all(|b| b.is_ascii_hexdigit()) => v,
        _ => xxh3_64(id.as_bytes()),
    };
    v.max(1).to_be_bytes()
}

/// The derived span id: xxh3-64 of (trace id, name, start time), never zero.
fn derived_span_id(trace_id: &[u8; 16], name: &str, start_ns: TimestampNs) -> [u8; 8] {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(trace_id);
    h.update(name.as_bytes());
    h.update(&[0]);
    h.update(&start_ns.to_le_bytes());
    h.digest().max(1).to_be_bytes()
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: Cow<'_, str>, max: usize) -> String {
    if s.len() <= max {
        return s.into_owned();
    }
    let mut n = max;
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    s[..n].to_string()
}

/// An event's field as a typed attribute value; `None` when absent or null.
pub fn attr_value(field: &FieldRef, ev: &Event<'_>) -> Option<AttrValue> {
    let v = match field {
        FieldRef::Path(id) => match ev.captured(*id)? {
            Value::Null => return None,
            Value::Bool(b) => return Some(AttrValue::Bool(*b)),
            Value::Num(n, raw) => {
                let integral = !raw.contains(['.', 'e', 'E']);
                return Some(match raw.parse::<i64>() {
                    Ok(i) if integral => AttrValue::Int(i),
                    _ => AttrValue::Double(*n),
                });
            }
            Value::Str(s) => Cow::Borrowed(s.as_ref()),
            Value::Composite(raw) => Cow::Borrowed(*raw),
        },
        other => other.text(ev)?,
    };
    Some(AttrValue::Str(cut(v, MAX_ATTRIBUTE_BYTES)))
}

enum Timing {
    Duration { field: FieldRef, scale: f64 },
    Pair(Box<Pairing>),
}

enum NameFrom {
    Literal(String),
    Field(FieldRef, String),
}

struct Errors {
    value_missing: IntCounter,
    value_not_numeric: IntCounter,
    value_not_finite: IntCounter,
    negative_duration: IntCounter,
}

/// One compiled `[[spans]]` entry.
pub struct CompiledSpan {
    /// `span:NAME` (or `span:INDEX` for a name from a field), for the metric labels.
    pub label: String,
    when: Condition,
    name: NameFrom,
    timing: Timing,
    attributes: Vec<(String, FieldRef)>,
    status: Option<FieldRef>,
    error_values: Vec<String>,
    kind: SpanKind,
    span_id: Option<FieldRef>,
    parent: Option<FieldRef>,
    errors: Errors,
}

/// Every `[[spans]]` of a pipeline, applied to each event after the metrics.
#[derive(Default)]
pub struct Spans {
    spans: Vec<CompiledSpan>,
}

impl Spans {
    /// Compiles `configs`, interning their paths in `trie`. Pure: no I/O.
    pub fn compile(
        configs: &[SpanConfig],
        trie: &mut PathTrie,
        selfm: &SelfMetrics,
    ) -> Result<Spans, CompileError> {
        let mut spans = Vec::with_capacity(configs.len());
        for (i, c) in configs.iter().enumerate() {
            spans.push(c.compile(i, trie, selfm)?);
        }
        Ok(Spans { spans })
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// The span `ev` ends, if any: the first entry whose `when` matches and that can build
    /// one. Every other entry with a pair sees `ev` as a possible start.
    pub fn derive(&mut self, ev: &Event<'_>) -> Option<Span> {
        if self.spans.is_empty() || !ev.parsed {
            return None;
        }
        let mut out = None;
        for s in &mut self.spans {
            if !s.when.matches(ev) {
                if let Timing::Pair(p) = &mut s.timing {
                    p.observe_start(ev);
                }
                continue;
            }
            if out.is_none() {
                out = s.build(ev);
            }
        }
        out
    }
}

impl SpanConfig {
    fn compile(
        &self,
        index: usize,
        trie: &mut PathTrie,
        selfm: &SelfMetrics,
    ) -> Result<CompiledSpan, CompileError> {
        let span = self.name.span();
        let (name, label) = match self.name.get_ref() {
            SpanName::Literal(n) if n.trim().is_empty() => {
                return Err(CompileError::at(span, "spans: name must not be empty"))
            }
            SpanName::Literal(n) => (
                NameFrom::Literal(cut(Cow::Borrowed(n), MAX_ATTRIBUTE_BYTES)),
                format!("span:{n}"),
            ),
            SpanName::From { from, default } => (
                NameFrom::Field(
                    FieldRef::resolve(from, trie),
                    default.clone().unwrap_or_else(|| "unnamed".to_string()),
                ),
                format!("span:{index}"),
            ),
        };
        let when = compile_condition(&self.when, trie)?;
        let timing = match (&self.duration, &self.pair) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(CompileError::at(
                    span,
                    format!("{label}: give either `duration = \"field\"` (one event with a duration) or `[spans.pair]` (start and end events), exactly one"),
                ))
            }
            (Some(d), None) => {
                let scale = match &self.scale {
                    None => 1.0,
                    Some(s) if !s.get_ref().is_finite() || *s.get_ref() <= 0.0 => {
                        return Err(CompileError::at(
                            s.span(),
                            format!("{label}: scale must be a finite number above 0"),
                        ))
                    }
                    Some(s) => *s.get_ref(),
                };
                Timing::Duration {
                    field: FieldRef::resolve(d.get_ref(), trie),
                    scale,
                }
            }
            (None, Some(p)) => {
                if let Some(s) = &self.scale {
                    return Err(CompileError::at(
                        s.span(),
                        format!("{label}: scale applies to `duration`; a pair measures time itself"),
                    ));
                }
                let start = compile_condition(&p.start, trie)?;
                let key = FieldRef::resolve(&p.key, trie);
                let counters = PairCounters {
                    evicted_timeout: selfm.pair_evicted.with_label_values(&[&label, "timeout"]),
                    evicted_capacity: selfm.pair_evicted.with_label_values(&[&label, "capacity"]),
                    unmatched: selfm.pair_unmatched.with_label_values(&[&label]),
                };
                Timing::Pair(Box::new(Pairing::new(start, key, p, counters)))
            }
        };
        let mut attributes = Vec::with_capacity(self.attributes.len());
        for (k, path) in &self.attributes {
            if k.is_empty() {
                return Err(CompileError::at(
                    span,
                    format!("{label}: an attribute name is empty"),
                ));
            }
            attributes.push((k.clone(), FieldRef::resolve(path, trie)));
        }
        let err = |reason: &str| selfm.derive_errors.with_label_values(&[&label, reason]);
        Ok(CompiledSpan {
            when,
            name,
            timing,
            attributes,
            status: self
                .status_from
                .as_deref()
                .map(|p| FieldRef::resolve(p, trie)),
            error_values: self.error_values.clone(),
            kind: self.kind,
            span_id: self.span_id.as_deref().map(|p| FieldRef::resolve(p, trie)),
            parent: self
                .parent_span_id
                .as_deref()
                .map(|p| FieldRef::resolve(p, trie)),
            errors: Errors {
                value_missing: err("value_missing"),
                value_not_numeric: err("value_not_numeric"),
                value_not_finite: err("value_not_finite"),
                negative_duration: err("negative_duration"),
            },
            label,
        })
    }
}

/// Longest duration accepted, in nanoseconds (about 31 years): past it the value is counted
/// as not finite rather than overflowing the start time.
const MAX_DURATION_NS: f64 = 1e18;

impl CompiledSpan {
    /// The span `ev` (which matched `when`) ends; `None` (counted) when it cannot have one.
    fn build(&mut self, ev: &Event<'_>) -> Option<Span> {
        let end_ns = ev.timestamp;
        let start_ns = match &mut self.timing {
            Timing::Duration { field, scale } => {
                if !field.exists(ev) {
                    self.errors.value_missing.inc();
                    return None;
                }
                let Some(secs) = field.number(ev) else {
                    self.errors.value_not_numeric.inc();
                    return None;
                };
                let ns = secs * *scale * 1e9;
                if !ns.is_finite() || ns.abs() > MAX_DURATION_NS {
                    self.errors.value_not_finite.inc();
                    return None;
                }
                if ns < 0.0 {
                    self.errors.negative_duration.inc();
                    return None;
                }
                end_ns.saturating_sub(ns.round() as i64)
            }
            Timing::Pair(p) => p.take_start(ev)?.min(end_ns),
        };
        let name = match &self.name {
            NameFrom::Literal(n) => n.clone(),
            NameFrom::Field(f, default) => f
                .text(ev)
                .filter(|t| !t.is_empty())
                .map_or_else(|| default.clone(), |t| cut(t, MAX_ATTRIBUTE_BYTES)),
        };
        let trace_id = trace_id_bytes(&ev.trace_id);
        let span_id = match self.span_id.as_ref().and_then(|f| f.text(ev)) {
            Some(t) if !t.is_empty() => span_id_bytes(&t),
            _ => derived_span_id(&trace_id, &name, start_ns),
        };
        let parent_span_id = self
            .parent
            .as_ref()
            .and_then(|f| f.text(ev))
            .filter(|t| !t.is_empty())
            .map(|t| span_id_bytes(&t));
        let (status, status_message) = match self.status.as_ref().and_then(|f| f.text(ev)) {
            None => (SpanStatus::Unset, String::new()),
            Some(v) if self.error_values.iter().any(|e| e.eq_ignore_ascii_case(&v)) => {
                (SpanStatus::Error, cut(v, MAX_ATTRIBUTE_BYTES))
            }
            Some(_) => (SpanStatus::Ok, String::new()),
        };
        let attributes = self
            .attributes
            .iter()
            .filter_map(|(k, f)| attr_value(f, ev).map(|v| (k.clone(), v)))
            .collect();
        Some(Span {
            trace_id,
            span_id,
            parent_span_id,
            name,
            kind: self.kind,
            start_ns,
            end_ns,
            status,
            status_message,
            attributes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PipelineConfig;

    /// Compiles `toml` (a pipeline with `[[spans]]`) and derives the span of each line.
    fn spans_of(toml: &str, lines: &[&str]) -> Vec<Option<Span>> {
        let selfm = SelfMetrics::new();
        let cfg = PipelineConfig::parse("p.toml", toml).unwrap();
        let mut p = match cfg.compile("p.toml", toml, &selfm) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        lines
            .iter()
            .map(|l| {
                let ev = p.parser.parse(l, 0, &mut |_| {});
                p.deriver.spans.derive(&ev)
            })
            .collect()
    }

    fn compile_err(toml: &str) -> String {
        let selfm = SelfMetrics::new();
        let cfg = PipelineConfig::parse("p.toml", toml).unwrap();
        match cfg.compile("p.toml", toml, &selfm) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    const UUID: &str = "5f0c3e9a-1b2c-4d5e-8f90-a1b2c3d4e5f6";
    const UUID_BYTES: [u8; 16] = [
        0x5f, 0x0c, 0x3e, 0x9a, 0x1b, 0x2c, 0x4d, 0x5e, 0x8f, 0x90, 0xa1, 0xb2, 0xc3, 0xd4, 0xe5,
        0xf6,
    ];

    #[test]
    fn trace_ids_uuid_hex_and_hashed() {
        assert_eq!(trace_id_bytes(UUID), UUID_BYTES);
        assert_eq!(trace_id_bytes(&UUID.replace('-', "")), UUID_BYTES);
        assert_eq!(trace_id_bytes(&UUID.to_uppercase()), UUID_BYTES);
        let h = trace_id_bytes("trace-1");
        assert_eq!(h, xxh3_128(b"trace-1").to_be_bytes());
        assert_ne!(h, trace_id_bytes("trace-2"));
        assert_ne!(
            trace_id_bytes("00000000-0000-0000-0000-000000000000"),
            [0; 16]
        );
        assert_eq!(
            span_id_bytes("00f067aa0ba902b7"),
            [0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(span_id_bytes("span-a"), xxh3_64(b"span-a").to_be_bytes());
        assert_ne!(span_id_bytes("0000000000000000"), [0; 8]);
        // `from_str_radix` takes a leading `+`: not 16 hex digits, so hashed.
        assert_eq!(
            span_id_bytes("+00f067aa0ba902b"),
            xxh3_64(b"+00f067aa0ba902b").to_be_bytes()
        );
    }

    const DURATION: &str = r#"
[[spans]]
name = "agent.task"
when = 'message == "Task completed"'
duration = "metadata.duration"
attributes = { "agent.id" = "metadata.agent_id", "task.retries" = "metadata.retries", "task.ok" = "metadata.ok", "task.ratio" = "metadata.ratio" }
status_from = "metadata.status"
kind = "consumer"
"#;

    #[test]
    fn a_span_from_one_event_with_a_duration() {
        let line = format!(
            r#"{{"timestamp":"2024-01-01T00:00:10Z","message":"Task completed","trace_id":"{UUID}","metadata":{{"duration":1.5,"agent_id":"agent-07","status":"failure","retries":3,"ok":false,"ratio":0.5}}}}"#
        );
        let got = spans_of(DURATION, &[&line, r#"{"message":"other","trace_id":"x"}"#]);
        let s = got[0].clone().expect("a span");
        assert!(got[1].is_none());
        let end = 1_704_067_210_000_000_000;
        assert_eq!(s.trace_id, UUID_BYTES);
        assert_eq!((s.start_ns, s.end_ns), (end - 1_500_000_000, end));
        assert_eq!(s.name, "agent.task");
        assert_eq!(s.kind, SpanKind::Consumer);
        assert_eq!(
            (s.status, s.status_message.as_str()),
            (SpanStatus::Error, "failure")
        );
        assert_eq!(
            s.span_id,
            derived_span_id(&UUID_BYTES, "agent.task", end - 1_500_000_000)
        );
        assert_eq!(s.parent_span_id, None);
        assert_eq!(
            s.attributes,
            vec![
                ("agent.id".to_string(), AttrValue::Str("agent-07".into())),
                ("task.ok".to_string(), AttrValue::Bool(false)),
                ("task.ratio".to_string(), AttrValue::Double(0.5)),
                ("task.retries".to_string(), AttrValue::Int(3)),
            ]
        );
        // The same line again: the same span (a resend repeats it).
        assert_eq!(spans_of(DURATION, &[&line])[0].as_ref(), Some(&s));
    }

    #[test]
    fn status_ok_unset_and_bad_durations_make_no_span() {
        let l = |md: &str| {
            format!(
                r#"{{"timestamp":"2024-01-01T00:00:10Z","message":"Task completed","trace_id":"t","metadata":{{{md}}}}}"#
            )
        };
        let got = spans_of(
            DURATION,
            &[
                &l(r#""duration":1,"status":"success""#),
                &l(r#""duration":1"#),
                &l(r#""status":"success""#),
                &l(r#""duration":"soon""#),
                &l(r#""duration":-1"#),
                &l(r#""duration":1e300"#),
            ],
        );
        assert_eq!(got[0].as_ref().map(|s| s.status), Some(SpanStatus::Ok));
        assert_eq!(got[1].as_ref().map(|s| s.status), Some(SpanStatus::Unset));
        assert!(got[2..].iter().all(Option::is_none), "{got:?}");
    }

    #[test]
    fn a_span_from_a_start_and_end_pair_with_ids_from_fields() {
        let toml = r#"
[[spans]]
name = { from = "metadata.task_type", default = "task" }
when = 'message == "Task completed"'
span_id = "span_id"
parent_span_id = "parent_id"

[spans.pair]
start = 'message == "Task started"'
key = "trace_id"
max_open = 2
"#;
        let got = spans_of(
            toml,
            &[
                r#"{"timestamp":"2024-01-01T00:00:01Z","message":"Task started","trace_id":"a"}"#,
                r#"{"timestamp":"2024-01-01T00:00:04Z","message":"Task completed","trace_id":"a","span_id":"00f067aa0ba902b7","parent_id":"p-1","metadata":{"task_type":"search"}}"#,
                r#"{"timestamp":"2024-01-01T00:00:05Z","message":"Task completed","trace_id":"never-started"}"#,
            ],
        );
        assert!(got[0].is_none());
        let s = got[1].clone().expect("a span");
        assert_eq!(s.end_ns - s.start_ns, 3_000_000_000);
        assert_eq!(s.name, "search");
        assert_eq!(s.span_id, [0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(s.parent_span_id, Some(span_id_bytes("p-1")));
        assert_eq!(s.trace_id, trace_id_bytes("a"));
        assert!(got[2].is_none(), "an end without a start makes no span");
    }

    /// The shipped example: a task's span from its duration, or from its start line.
    #[test]
    fn the_traces_example_pipeline_makes_task_spans() {
        let toml = include_str!("../../pipelines/traces.toml");
        let got = spans_of(
            toml,
            &[
                &format!(
                    r#"{{"timestamp":"2024-01-01 00:00:10,000","level":"INFO","component":"MonitoringCollector","message":"Task completed: failure","metadata":{{"trace_id":"{UUID}","agent_id":"agent-07","duration":2.5,"status":"failure"}}}}"#
                ),
                r#"{"timestamp":"2024-01-01T00:00:00Z","message":"Task started","trace_id":"t-9"}"#,
                r#"{"timestamp":"2024-01-01T00:00:04Z","message":"Task completed","trace_id":"t-9","metadata":{"status":"success"}}"#,
            ],
        );
        let s = got[0].clone().expect("a span from the duration");
        assert_eq!((s.name.as_str(), s.trace_id), ("agent.task", UUID_BYTES));
        assert_eq!(s.end_ns - s.start_ns, 2_500_000_000);
        assert_eq!(s.status, SpanStatus::Error);
        let w = got[2].clone().expect("a span from the pair");
        assert_eq!(
            (w.name.as_str(), w.end_ns - w.start_ns),
            ("agent.task.wall", 4_000_000_000)
        );
        assert_eq!(w.status, SpanStatus::Ok);
    }

    #[test]
    fn config_errors_are_located() {
        let e = compile_err("[[spans]]\nname = \"x\"\nwhen = 'message == \"a\"'\n");
        assert!(e.contains("span:x: give either `duration"), "{e}");
        assert!(e.starts_with("p.toml:2:"), "{e}");
        let e = compile_err(
            "[[spans]]\nname = \"x\"\nwhen = 'message == \"a\"'\nduration = \"d\"\nscale = 0\n",
        );
        assert!(e.contains("scale must be a finite number above 0"), "{e}");
        let e = compile_err("[[spans]]\nname = \"\"\nwhen = 'true'\nduration = \"d\"\n");
        assert!(e.contains("name must not be empty"), "{e}");
        let e = compile_err("[[spans]]\nname = \"x\"\nwhen = 'message =='\nduration = \"d\"\n");
        assert!(e.contains("invalid condition"), "{e}");
    }
}
