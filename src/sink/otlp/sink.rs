//! The runtime sink of one signal: events to an `ExportTraceServiceRequest` (their spans) or an
//! `ExportLogsServiceRequest` (one log record each), a response to an [`Outcome`].

use std::collections::BTreeMap;
use std::sync::Mutex;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{self as trace, ResourceSpans, ScopeSpans};
use prost::Message as _;
use serde::Deserialize;

use super::config::{OtlpCompression, Secret};
use crate::derive::span::{trace_id_bytes, AttrValue, Span, MAX_ATTRIBUTE_BYTES};
use crate::event::Level;
use crate::sink::driver::SinkMetrics;
use crate::sink::{HttpSink, Outcome, Request, SinkEvent};

/// Longest reason taken from a response, in characters.
const MAX_REASON_CHARS: usize = 200;
/// Most attributes of one log record; the rest are counted in `dropped_attributes_count`.
pub const MAX_LOG_ATTRIBUTES: usize = 128;
/// Nested objects of a line are flattened (`metadata.agent_id`) this deep; deeper values are
/// sent as their JSON text.
const MAX_FLATTEN_DEPTH: usize = 8;
/// Top-level members of a line that travel in a log record's own fields (time, severity,
/// body, trace id) or as `component`, so not again as attributes.
const RECORD_FIELDS: [&str; 6] = [
    "timestamp",
    "@timestamp",
    "level",
    "message",
    "trace_id",
    "component",
];

/// What an OTLP sink sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// The pipeline's spans (`[[spans]]`), to `/v1/traces`.
    Traces,
    /// Every line as a log record, to `/v1/logs`.
    Logs,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
        }
    }

    /// The OTLP/HTTP path of the signal.
    pub fn path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Logs => "/v1/logs",
        }
    }
}

/// The built sink of one signal. Its `Debug` shows no secret.
pub struct OtlpSink {
    pub(super) signal: Signal,
    pub(super) url: String,
    compression: OtlpCompression,
    /// Content type and encoding, the configured plain headers.
    headers: Vec<(String, String)>,
    secrets: Vec<(String, Secret)>,
    resource: Resource,
    scope: InstrumentationScope,
    /// The signal's metrics, for `partial_success` (set when the sink starts).
    metrics: Option<SinkMetrics>,
    /// Rate limit of the partial-success warning.
    partial_log: Mutex<crate::telemetry::LogLimit>,
}

impl Clone for OtlpSink {
    fn clone(&self) -> Self {
        OtlpSink {
            signal: self.signal,
            url: self.url.clone(),
            compression: self.compression,
            headers: self.headers.clone(),
            secrets: self.secrets.clone(),
            resource: self.resource.clone(),
            scope: self.scope.clone(),
            metrics: self.metrics.clone(),
            partial_log: Mutex::new(crate::telemetry::LogLimit::default()),
        }
    }
}

impl std::fmt::Debug for OtlpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret_names: Vec<&str> = self.secrets.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("OtlpSink")
            .field("signal", &self.signal)
            .field("url", &crate::redact::urls(&self.url))
            .field("compression", &self.compression)
            .field("headers", &self.headers)
            .field("secret_headers", &secret_names)
            .finish()
    }
}

fn kv(key: impl Into<String>, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

fn string(s: impl Into<String>) -> any_value::Value {
    any_value::Value::StringValue(s.into())
}

fn attr(k: &str, v: &AttrValue) -> KeyValue {
    kv(
        k,
        match v {
            AttrValue::Str(s) => string(s.clone()),
            AttrValue::Int(i) => any_value::Value::IntValue(*i),
            AttrValue::Double(d) => any_value::Value::DoubleValue(*d),
            AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
        },
    )
}

/// `s` cut to at most [`MAX_ATTRIBUTE_BYTES`] at a character boundary.
fn capped(s: &str) -> String {
    if s.len() <= MAX_ATTRIBUTE_BYTES {
        return s.to_string();
    }
    let mut n = MAX_ATTRIBUTE_BYTES;
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    s[..n].to_string()
}

/// A nanosecond timestamp as OTLP's fixed64 (negative ones, before 1970, as 0: unknown).
fn unix_nanos(ns: i64) -> u64 {
    u64::try_from(ns).unwrap_or(0)
}

/// OTLP's severity number and text for weir's level (the logs data model's mapping; NOTICE is
/// syslog's, INFO2). UNKNOWN is UNSPECIFIED with no text.
pub fn severity(level: Level) -> (i32, &'static str) {
    match level {
        Level::Unknown => (0, ""),
        Level::Trace => (1, "TRACE"),
        Level::Debug => (5, "DEBUG"),
        Level::Info => (9, "INFO"),
        Level::Notice => (10, "NOTICE"),
        Level::Warning => (13, "WARNING"),
        Level::Error => (17, "ERROR"),
        Level::Critical => (21, "CRITICAL"),
    }
}

/// A JSON value as an `AnyValue`: scalars typed, arrays of them as arrays, anything nested
/// deeper as its JSON text.
fn json_value(v: &serde_json::Value, depth: usize) -> Option<any_value::Value> {
    use serde_json::Value as J;
    Some(match v {
        J::Null => return None,
        J::Bool(b) => any_value::Value::BoolValue(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => any_value::Value::IntValue(i),
            None => any_value::Value::DoubleValue(n.as_f64().filter(|f| f.is_finite())?),
        },
        J::String(s) => string(capped(s)),
        J::Array(items) if depth < MAX_FLATTEN_DEPTH => any_value::Value::ArrayValue(ArrayValue {
            values: items
                .iter()
                .take(MAX_LOG_ATTRIBUTES)
                .filter_map(|i| json_value(i, depth + 1))
                .map(|v| AnyValue { value: Some(v) })
                .collect(),
        }),
        other => string(capped(&other.to_string())),
    })
}

/// Flattens `obj` into `out` as `prefix.key` attributes, at most [`MAX_LOG_ATTRIBUTES`]
/// (the rest counted in `dropped`).
fn flatten(
    obj: &serde_json::Map<String, serde_json::Value>,
    prefix: &str,
    depth: usize,
    out: &mut Vec<KeyValue>,
    dropped: &mut u32,
) {
    for (k, v) in obj {
        if depth == 0 && RECORD_FIELDS.contains(&k.as_str()) {
            continue;
        }
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            serde_json::Value::Object(inner) if depth + 1 < MAX_FLATTEN_DEPTH => {
                flatten(inner, &key, depth + 1, out, dropped)
            }
            v => {
                let Some(value) = json_value(v, depth + 1) else {
                    continue;
                };
                if out.len() >= MAX_LOG_ATTRIBUTES {
                    *dropped += 1;
                } else {
                    out.push(KeyValue {
                        key,
                        value: Some(AnyValue { value: Some(value) }),
                    });
                }
            }
        }
    }
}

impl OtlpSink {
    pub(super) fn new(
        signal: Signal,
        url: String,
        compression: OtlpCompression,
        plain: Vec<(String, String)>,
        secrets: Vec<(String, Secret)>,
        service_name: &str,
        resource: &BTreeMap<String, String>,
    ) -> OtlpSink {
        let mut headers = vec![(
            "Content-Type".to_string(),
            "application/x-protobuf".to_string(),
        )];
        if compression == OtlpCompression::Gzip {
            headers.push(("Content-Encoding".to_string(), "gzip".to_string()));
        }
        headers.extend(plain);
        let mut attributes = vec![kv("service.name", string(service_name))];
        attributes.extend(
            resource
                .iter()
                .map(|(k, v)| kv(k.clone(), string(v.clone()))),
        );
        OtlpSink {
            signal,
            url,
            compression,
            headers,
            secrets,
            resource: Resource {
                attributes,
                dropped_attributes_count: 0,
            },
            scope: InstrumentationScope {
                name: "weir".to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                attributes: Vec::new(),
                dropped_attributes_count: 0,
            },
            metrics: None,
            partial_log: Mutex::new(crate::telemetry::LogLimit::default()),
        }
    }

    /// Counts `partial_success` rejections under these metrics.
    pub(super) fn with_metrics(mut self, m: SinkMetrics) -> Self {
        self.metrics = Some(m);
        self
    }

    /// An OTLP span of a derived one.
    pub fn span_proto(s: &Span) -> trace::Span {
        trace::Span {
            trace_id: s.trace_id.to_vec(),
            span_id: s.span_id.to_vec(),
            trace_state: String::new(),
            parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
            flags: 0,
            name: s.name.clone(),
            kind: s.kind as i32,
            start_time_unix_nano: unix_nanos(s.start_ns),
            end_time_unix_nano: unix_nanos(s.end_ns),
            attributes: s.attributes.iter().map(|(k, v)| attr(k, v)).collect(),
            dropped_attributes_count: 0,
            events: Vec::new(),
            dropped_events_count: 0,
            links: Vec::new(),
            dropped_links_count: 0,
            status: Some(trace::Status {
                message: s.status_message.clone(),
                code: s.status as i32,
            }),
        }
    }

    /// The log record of an event: body = its message, severity from its level, its time and
    /// the time weir read it, its trace id (and the id of the span it ends), the line's other
    /// fields as attributes.
    pub fn log_record(e: &SinkEvent) -> LogRecord {
        let (severity_number, severity_text) = severity(e.level);
        let mut attributes = Vec::new();
        let mut dropped = 0u32;
        if let Some(c) = &e.component {
            attributes.push(kv("component", string(capped(c))));
        }
        let (head, exception) = crate::event::split_joined(&e.line);
        if e.is_json {
            if let Ok(serde_json::Value::Object(obj)) = serde_json::from_str(head) {
                flatten(&obj, "", 0, &mut attributes, &mut dropped);
            }
            if let Some(x) = exception {
                // The continuation lines of a joined event (a traceback): semconv's name.
                attributes.push(kv("exception.stacktrace", string(capped(x))));
            }
        }
        for (k, v) in &e.attrs {
            if attributes.iter().any(|a| &a.key == k) {
                continue;
            }
            if attributes.len() >= MAX_LOG_ATTRIBUTES {
                dropped += 1;
            } else {
                attributes.push(kv(k.clone(), string(capped(v))));
            }
        }
        LogRecord {
            time_unix_nano: unix_nanos(e.timestamp),
            observed_time_unix_nano: unix_nanos(e.received),
            severity_number,
            severity_text: severity_text.to_string(),
            body: Some(AnyValue {
                value: Some(string(e.message.clone())),
            }),
            attributes,
            dropped_attributes_count: dropped,
            flags: 0,
            trace_id: if e.trace_id.is_empty() {
                Vec::new()
            } else {
                trace_id_bytes(&e.trace_id).to_vec()
            },
            span_id: e
                .span
                .as_ref()
                .map(|s| s.span_id.to_vec())
                .unwrap_or_default(),
            event_name: String::new(),
        }
    }

    /// The protobuf body of a request for `events`, before compression.
    pub fn encode_raw(&self, events: &[SinkEvent]) -> Vec<u8> {
        match self.signal {
            Signal::Traces => ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(self.resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(self.scope.clone()),
                        spans: events
                            .iter()
                            .filter_map(|e| e.span.as_deref())
                            .map(Self::span_proto)
                            .collect(),
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            }
            .encode_to_vec(),
            Signal::Logs => ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    resource: Some(self.resource.clone()),
                    scope_logs: vec![ScopeLogs {
                        scope: Some(self.scope.clone()),
                        log_records: events.iter().map(Self::log_record).collect(),
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            }
            .encode_to_vec(),
        }
    }

    /// What a 2xx body says was rejected: (count, message).
    fn partial_success(&self, body: &[u8]) -> Option<(i64, String)> {
        if body.is_empty() {
            return None;
        }
        match self.signal {
            Signal::Traces => ExportTraceServiceResponse::decode(body)
                .ok()?
                .partial_success
                .map(|p| (p.rejected_spans, p.error_message)),
            Signal::Logs => ExportLogsServiceResponse::decode(body)
                .ok()?
                .partial_success
                .map(|p| (p.rejected_log_records, p.error_message)),
        }
    }
}

impl HttpSink for OtlpSink {
    fn kind(&self) -> &'static str {
        match self.signal {
            Signal::Traces => "otlp/traces",
            Signal::Logs => "otlp/logs",
        }
    }

    fn encode(&self, events: &[SinkEvent]) -> Result<Request, String> {
        let raw = self.encode_raw(events);
        let body = match self.compression {
            OtlpCompression::None => raw,
            OtlpCompression::Gzip => crate::sink::gzip(&raw, flate2::Compression::fast())?,
        };
        let mut headers = self.headers.clone();
        headers.extend(self.secrets.iter().map(|(k, v)| (k.clone(), v.0.clone())));
        Ok(Request {
            url: self.url.clone(),
            body,
            headers,
        })
    }

    fn outcome(
        &self,
        status: u16,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
        _events: &[SinkEvent],
    ) -> Outcome {
        let outcome = classify(status, headers, body, jiff::Timestamp::now());
        if outcome == Outcome::Delivered {
            if let Some((rejected, message)) = self.partial_success(body) {
                if rejected > 0 {
                    if let Some(m) = &self.metrics {
                        m.drop_events("partial_success", rejected as usize);
                    }
                }
                if rejected > 0 || !message.is_empty() {
                    let suppressed = self
                        .partial_log
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .hit();
                    if let Some(suppressed) = suppressed {
                        let message: String = message.chars().take(MAX_REASON_CHARS).collect();
                        tracing::warn!(sink = self.kind(), rejected, message, suppressed, "the OTLP receiver accepted the request in part (partial_success): the rejected items are not retried");
                    }
                }
            }
        }
        outcome
    }
}

/// `google.rpc.Status`, the body of an OTLP/HTTP error response (only what weir reads).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// The response's meaning, per the OTLP/HTTP specification: 2xx delivered; 429, 502, 503 and
/// 504 retried (honouring `Retry-After`); every other status final (the spec: "MUST NOT be
/// retried"), dead-lettered with `http_<status>: <the Status message, or the body's first
/// line>`. `now` is for `Retry-After` dates.
pub(super) fn classify(
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
    now: jiff::Timestamp,
) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        429 | 502 | 503 | 504 => Outcome::Retry {
            reason: format!("http_{status}"),
            after: headers
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| crate::sink::parse_retry_after(v, now)),
        },
        _ => Outcome::Reject {
            reason: reject_reason(status, headers, body),
        },
    }
}

fn reject_reason(status: u16, headers: &reqwest::header::HeaderMap, body: &[u8]) -> String {
    let is_protobuf = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/x-protobuf"));
    let text = if is_protobuf {
        RpcStatus::decode(body)
            .map(|s| s.message)
            .unwrap_or_default()
    } else {
        String::from_utf8_lossy(body).into_owned()
    };
    let line = text.lines().map(str::trim).find(|l| !l.is_empty());
    match line {
        None => format!("http_{status}"),
        Some(line) => {
            let cut: String = line.chars().take(MAX_REASON_CHARS).collect();
            format!("http_{status}: {}", cut.trim_end())
        }
    }
}
