//! Sinks: where every line goes besides the metrics. Loki, Elasticsearch, stdout, a file.
//!
//! # Shape
//! The processor turns each line into a [`SinkEvent`] (owned) and hands it to every sink's
//! bounded buffer (fan-out). Each HTTP sink is an [`HttpSink`] (encode a batch; read the
//! response) driven by [`driver`], which owns what all of them share: batching by size and age,
//! retries with exponential backoff and jitter (honouring `Retry-After`), dead-lettering of what
//! can never be delivered, and the `weir_sink_*` metrics.
//!
//! # Delivery
//! An event holds a reference to its batch's [`AckToken`]; the token fires when the last
//! reference is dropped, i.e. once every sink has delivered or dead-lettered every event of the
//! batch (or, with a disk buffer, written it to disk). File sources checkpoint only fired
//! tokens, in order: at-least-once from file to backend.

pub mod disk;
pub mod driver;
pub mod elasticsearch;
pub mod loki;
pub mod otlp;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;

use crate::event::Level;

/// Fires its callback when dropped: the last reference to a batch's token going away means
/// every sink is done with every event of the batch.
pub struct AckToken {
    on_done: Option<Box<dyn FnOnce() + Send + Sync>>,
    /// Set when one sink could not keep an event of the batch (its disk buffer write failed at
    /// shutdown): the batch is then never acknowledged, so a file source re-reads it.
    withheld: std::sync::atomic::AtomicBool,
}

impl AckToken {
    pub fn new(on_done: impl FnOnce() + Send + Sync + 'static) -> Arc<AckToken> {
        Arc::new(AckToken {
            on_done: Some(Box::new(on_done)),
            withheld: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The batch must never be acknowledged: one of its events was not stored.
    pub fn withhold(&self) {
        self.withheld
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if let Some(f) = self.on_done.take() {
            if !self.withheld.load(std::sync::atomic::Ordering::Acquire) {
                f();
            }
        }
    }
}

impl std::fmt::Debug for AckToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AckToken")
    }
}

/// A line on its way to the sinks: the original line and its normalised fields.
#[derive(Debug, Clone)]
pub struct SinkEvent {
    /// Identity of the line, stable across a resend (and, for files, across a restart): a hex
    /// digest of source, file fingerprint and offset, or of the line and its arrival sequence.
    /// Elasticsearch uses it as `_id`, so a resent batch yields conflicts, not duplicates.
    pub id: String,
    /// The line as read (invalid UTF-8 replaced, cut at max_line_bytes), without newline.
    pub line: String,
    /// Nanoseconds since the epoch.
    pub timestamp: i64,
    pub level: Level,
    pub component: Option<String>,
    pub message: String,
    pub trace_id: String,
    /// Whether `line` is a JSON object.
    pub is_json: bool,
    /// Fields the source attached (container `stream`, `pod`, ...).
    pub attrs: Vec<(String, String)>,
    /// The source's name (`stdin`, a file pattern, `tcp:ADDR`).
    pub source: Arc<str>,
    /// Dropped when this sink is done with the event.
    pub ack: Option<Arc<AckToken>>,
    /// When weir read the line, nanoseconds since the epoch (OTLP's `observed_time_unix_nano`);
    /// 0 when unknown (events of a disk buffer written before weir kept it).
    pub received: i64,
    /// The span this event ends (`[[spans]]`), for the `otlp` sink: it rides on its end event,
    /// so it shares the event's acknowledgement (see [`otlp`]).
    pub span: Option<Arc<crate::derive::span::Span>>,
}

impl SinkEvent {
    /// Approximate bytes the event adds to a request (for batch and buffer sizes).
    pub fn size(&self) -> usize {
        self.line.len()
            + self.trace_id.len()
            + self.id.len()
            + 64
            + self.span.as_ref().map_or(0, |s| s.size())
    }

    /// The event as one JSON document: the line's own fields (nested objects kept), the
    /// source's attributes, and the normalised fields under `@timestamp`, `level`, `component`,
    /// `message`, `trace_id`.
    pub fn document(&self) -> serde_json::Map<String, serde_json::Value> {
        // A joined multi-line event: its first line's object, the rest as `exception`.
        let (head, exception) = crate::event::split_joined(&self.line);
        let mut doc = if self.is_json {
            match serde_json::from_str::<serde_json::Value>(head) {
                Ok(serde_json::Value::Object(mut m)) => {
                    if let Some(e) = exception {
                        m.entry("exception").or_insert_with(|| e.into());
                    }
                    m
                }
                _ => serde_json::Map::new(),
            }
        } else {
            serde_json::Map::new()
        };
        for (k, v) in &self.attrs {
            doc.entry(k.clone()).or_insert_with(|| v.clone().into());
        }
        doc.insert(
            "@timestamp".into(),
            crate::event::format_rfc3339(self.timestamp).into(),
        );
        doc.insert("level".into(), self.level.as_str().into());
        if let Some(c) = &self.component {
            doc.insert("component".into(), c.clone().into());
        }
        doc.insert("message".into(), self.message.clone().into());
        doc.insert("trace_id".into(), self.trace_id.clone().into());
        doc
    }
}

/// The top-level members of a JSON object, in order, values left as JSON text (nothing nested
/// is decoded). `None` if `text` is not an object.
fn object_members(
    text: &str,
) -> Option<Vec<(std::borrow::Cow<'_, str>, &serde_json::value::RawValue)>> {
    use serde::de::{Deserializer as _, MapAccess, Visitor};
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<(std::borrow::Cow<'de, str>, &'de serde_json::value::RawValue)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                out.push((k, map.next_value()?));
            }
            Ok(out)
        }
    }
    serde_json::Deserializer::from_str(text)
        .deserialize_map(Members)
        .ok()
}

/// Names [`SinkEvent::document`] sets from the normalised fields.
const DOCUMENT_FIELDS: [&str; 5] = ["@timestamp", "level", "component", "message", "trace_id"];

impl SinkEvent {
    /// Writes [`document`](Self::document) as compact JSON without decoding the line into a
    /// tree: its members are copied as they are (nested objects included), the normalised
    /// fields written first. The hot path of the Elasticsearch sink.
    pub fn write_document(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        out.push(b'{');
        out.extend_from_slice(b"\"@timestamp\":");
        serde_json::to_writer(&mut *out, &crate::event::format_rfc3339(self.timestamp))?;
        out.extend_from_slice(b",\"level\":");
        serde_json::to_writer(&mut *out, self.level.as_str())?;
        if let Some(c) = &self.component {
            out.extend_from_slice(b",\"component\":");
            serde_json::to_writer(&mut *out, c)?;
        }
        out.extend_from_slice(b",\"message\":");
        serde_json::to_writer(&mut *out, &self.message)?;
        out.extend_from_slice(b",\"trace_id\":");
        serde_json::to_writer(&mut *out, &self.trace_id)?;
        // A joined multi-line event: its first line's members, the rest as `exception`.
        let (head, exception) = crate::event::split_joined(&self.line);
        let members = if self.is_json {
            object_members(head).unwrap_or_default()
        } else {
            Vec::new()
        };
        if let Some(e) = exception.filter(|_| self.is_json) {
            if !members.iter().any(|(k, _)| k == "exception") {
                out.extend_from_slice(b",\"exception\":");
                serde_json::to_writer(&mut *out, e)?;
            }
        }
        for (k, v) in &members {
            if DOCUMENT_FIELDS.contains(&k.as_ref()) {
                continue;
            }
            out.push(b',');
            serde_json::to_writer(&mut *out, k)?;
            out.push(b':');
            out.extend_from_slice(v.get().as_bytes());
        }
        for (k, v) in &self.attrs {
            if DOCUMENT_FIELDS.contains(&k.as_str()) || members.iter().any(|(m, _)| m == k) {
                continue;
            }
            out.push(b',');
            serde_json::to_writer(&mut *out, k)?;
            out.push(b':');
            serde_json::to_writer(&mut *out, v)?;
        }
        out.push(b'}');
        Ok(())
    }
}

/// An HTTP request a sink wants sent. Its `Debug` leaves header values out (they hold secrets).
#[derive(Clone)]
pub struct Request {
    pub url: String,
    pub body: Vec<u8>,
    /// Extra headers (content type and encoding, auth, tenant).
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Request")
            .field("url", &crate::redact::urls(&self.url))
            .field("body_bytes", &self.body.len())
            .field("headers", &names)
            .finish()
    }
}

/// What a response means for the events of its request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every event is delivered (or was already there, such as Elasticsearch's 409).
    Delivered,
    /// Send the whole request again later (429, 5xx); `after` from `Retry-After`.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// It will never succeed (4xx): dead-letter every event with the reason.
    Reject { reason: String },
    /// Per item (Elasticsearch bulk): these indices are retried, these dead-lettered; the rest
    /// are delivered.
    Partial {
        retry: Vec<usize>,
        dead: Vec<(usize, String)>,
    },
}

/// An HTTP sink: how to encode a batch and read a response. The driver does the rest.
pub trait HttpSink: Send + Sync + 'static {
    /// Short name for metrics and logs (`loki`, `elasticsearch`).
    fn kind(&self) -> &'static str;
    /// One request for `events` (non-empty, in arrival order).
    fn encode(&self, events: &[SinkEvent]) -> Result<Request, String>;
    /// Reads the response to the request made of `events`.
    fn outcome(
        &self,
        status: u16,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
        events: &[SinkEvent],
    ) -> Outcome;
}

/// `[sinks.batch]`: when a batch is sent.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Send once a batch holds this many bytes. Default: 1048576 (1 MiB).
    #[serde(default = "default_batch_max_bytes")]
    pub max_bytes: usize,
    /// Send once the oldest event of a batch waited this long. Default: 1000.
    #[serde(default = "default_batch_max_age_ms")]
    pub max_age_ms: u64,
}

const fn default_batch_max_bytes() -> usize {
    1 << 20
}
const fn default_batch_max_age_ms() -> u64 {
    1000
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_bytes: default_batch_max_bytes(),
            max_age_ms: default_batch_max_age_ms(),
        }
    }
}

/// Where a sink's waiting events are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BufferKind {
    #[default]
    Memory,
    /// Appended to files under `data_dir` before they are acknowledged: an outage of the
    /// backend and a restart of weir during it lose nothing.
    Disk,
}

/// What a full buffer does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait: backpressure reaches the sources.
    #[default]
    Block,
    /// Drop the new event, counted in `weir_sink_dropped_total`.
    DropNewest,
}

/// `[sinks.buffer]`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// memory (default) or disk.
    #[serde(default, rename = "type")]
    pub kind: BufferKind,
    /// Most events waiting in memory. Default: 10000.
    #[serde(default = "default_buffer_max_events")]
    pub max_events: usize,
    /// Most bytes a disk buffer holds. Default: 268435456 (256 MiB).
    #[serde(default = "default_buffer_max_bytes")]
    pub max_bytes: u64,
    /// block (default) or drop_newest.
    #[serde(default)]
    pub when_full: WhenFull,
}

const fn default_buffer_max_events() -> usize {
    10_000
}
const fn default_buffer_max_bytes() -> u64 {
    256 << 20
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            kind: BufferKind::Memory,
            max_events: default_buffer_max_events(),
            max_bytes: default_buffer_max_bytes(),
            when_full: WhenFull::Block,
        }
    }
}

/// `[sinks.request]`: how requests are sent and retried.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestConfig {
    /// A request taking longer is abandoned and retried. Default: 30.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// First retry delay; doubles each attempt, with jitter. Default: 200.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Longest delay between retries (and cap on Retry-After). Default: 30000.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

const fn default_timeout_secs() -> u64 {
    30
}
const fn default_initial_backoff_ms() -> u64 {
    200
}
const fn default_max_backoff_ms() -> u64 {
    30_000
}

impl Default for RequestConfig {
    fn default() -> Self {
        RequestConfig {
            timeout_secs: default_timeout_secs(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
        }
    }
}

/// The delay a `Retry-After` header asks for: delay-seconds or an HTTP date (IMF-fixdate,
/// `Wed, 21 Oct 2015 07:28:00 GMT`); a date in the past is zero. `None` when absent or neither.
pub fn retry_after(headers: &reqwest::header::HeaderMap, now: jiff::Timestamp) -> Option<Duration> {
    parse_retry_after(
        headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?,
        now,
    )
}

/// A `Retry-After` value: delay-seconds or an HTTP date; see [`retry_after`].
pub fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let wait = at.as_nanosecond() - now.as_nanosecond();
    Some(Duration::from_nanos(
        u64::try_from(wait.max(0)).unwrap_or(u64::MAX),
    ))
}

/// Reads a secret from the environment variable named in the config (never from the file, and
/// never logged). `None` when no variable is named; an error when it is named but unset.
pub fn secret_from_env(var: Option<&str>) -> Result<Option<String>, String> {
    match var {
        None => Ok(None),
        Some(v) => std::env::var(v)
            .map(Some)
            .map_err(|_| format!("environment variable {v} is not set")),
    }
}

/// `[[sinks]]`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[allow(clippy::large_enum_variant)]
pub enum SinkConfig {
    /// Grafana Loki's push API.
    Loki(loki::LokiConfig),
    /// Elasticsearch's `_bulk` API.
    Elasticsearch(elasticsearch::ElasticsearchConfig),
    /// OpenTelemetry's OTLP/HTTP: spans (`[[spans]]`) to `/v1/traces`, lines to `/v1/logs`.
    Otlp(otlp::OtlpConfig),
    /// Every line to standard output, as read (`app | weir run --stdout | tee`).
    Stdout(StdoutConfig),
    /// Every line appended to a file, as read.
    File(FileSinkConfig),
}

/// `type = "stdout"`
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {
    /// The sink's name: in `weir_sink_*{sink}`, logs, its disk buffer's directory, and in
    /// reloads, which keep a sink whose name and settings are unchanged. Letters, digits, `_`
    /// and `-`. Default: its type, or `type_i` (i: its place among the sinks) when several
    /// sinks share a type — name them, so that adding one does not rename the others.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub buffer: BufferConfig,
}

/// `type = "file"`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The sink's name: in `weir_sink_*{sink}`, logs, its disk buffer's directory, and in
    /// reloads, which keep a sink whose name and settings are unchanged. Letters, digits, `_`
    /// and `-`. Default: its type, or `type_i` (i: its place among the sinks) when several
    /// sinks share a type — name them, so that adding one does not rename the others.
    #[serde(default)]
    pub name: Option<String>,
    /// File the lines are appended to (created if missing).
    pub path: std::path::PathBuf,
    #[serde(default)]
    pub buffer: BufferConfig,
}

impl SinkConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Loki(_) => "loki",
            SinkConfig::Elasticsearch(_) => "elasticsearch",
            SinkConfig::Otlp(_) => "otlp",
            SinkConfig::Stdout(_) => "stdout",
            SinkConfig::File(_) => "file",
        }
    }

    pub fn buffer(&self) -> &BufferConfig {
        match self {
            SinkConfig::Loki(c) => &c.buffer,
            SinkConfig::Elasticsearch(c) => &c.buffer,
            SinkConfig::Otlp(c) => &c.buffer,
            SinkConfig::Stdout(c) => &c.buffer,
            SinkConfig::File(c) => &c.buffer,
        }
    }

    pub fn buffer_mut(&mut self) -> &mut BufferConfig {
        match self {
            SinkConfig::Loki(c) => &mut c.buffer,
            SinkConfig::Elasticsearch(c) => &mut c.buffer,
            SinkConfig::Otlp(c) => &mut c.buffer,
            SinkConfig::Stdout(c) => &mut c.buffer,
            SinkConfig::File(c) => &mut c.buffer,
        }
    }

    /// What serde cannot check (endpoints, secrets, templates). Pure but for reading the
    /// environment variables that hold secrets.
    /// The name given in the config, if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            SinkConfig::Loki(c) => c.name.as_deref(),
            SinkConfig::Elasticsearch(c) => c.name.as_deref(),
            SinkConfig::Otlp(c) => c.name.as_deref(),
            SinkConfig::Stdout(c) => c.name.as_deref(),
            SinkConfig::File(c) => c.name.as_deref(),
        }
    }

    pub fn check(&self) -> Result<(), String> {
        if let Some(n) = self.name() {
            let ok = !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return Err(format!(
                    "name {n:?}: expected letters, digits, `_` and `-` only"
                ));
            }
        }
        if self.buffer().max_events == 0 {
            return Err("buffer.max_events must be at least 1".into());
        }
        match self {
            SinkConfig::Loki(c) => drop(c.build()?),
            SinkConfig::Elasticsearch(c) => drop(c.build()?),
            SinkConfig::Otlp(c) => drop(c.build()?),
            SinkConfig::Stdout(_) | SinkConfig::File(_) => {}
        }
        Ok(())
    }
}

/// The processor's end of a sink: where its events go, and what a full buffer does.
pub struct SinkInput {
    pub name: String,
    pub tx: mpsc::Sender<Vec<SinkEvent>>,
    pub when_full: WhenFull,
    pub metrics: driver::SinkMetrics,
    /// With a disk buffer, events are written here instead of sent on `tx`.
    disk: Option<disk::DiskWriter>,
    /// The sink is abandoned (shutdown deadline, reload): a disk write that keeps failing gives
    /// up then, acknowledging nothing.
    abandon: tokio_util::sync::CancellationToken,
    /// Rate limit of the "cannot write the disk buffer" log line.
    disk_errors: crate::telemetry::LogLimit,
    /// Tells the disk pump that no more events will be written once this input is dropped.
    _writer_gone: Option<tokio_util::sync::DropGuard>,
}

/// Events per chunk handed to a sink; chunk channels hold `max_events / CHUNK` chunks.
pub const CHUNK: usize = 512;

impl SinkInput {
    /// Hands `events` to the sink: waits while its buffer is full (block), or drops and counts
    /// them (drop_newest). `false` once the sink is gone.
    pub async fn send(&mut self, events: Vec<SinkEvent>) -> bool {
        let n = events.len();
        if let Some(d) = &mut self.disk {
            while d.is_full() {
                if self.when_full == WhenFull::DropNewest {
                    self.metrics.drop_events("buffer_full", n);
                    return true;
                }
                if self.abandon.is_cancelled() {
                    // Shutdown deadline with the buffer full: not stored, not acknowledged.
                    for ev in &events {
                        if let Some(a) = &ev.ack {
                            a.withhold();
                        }
                    }
                    self.metrics.drop_events("shutdown", n);
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // A failed write is backpressure, whatever `when_full` says: the events are kept
            // (unacknowledged, so a file source does not checkpoint past them) and written
            // again until the disk takes them (space freed, data_dir writable again).
            let mut delay = Duration::from_millis(50);
            let mut failures = 0u64;
            while let Err(e) = d.append(&events) {
                failures += 1;
                let kind = crate::telemetry::io_error_kind(&e);
                crate::telemetry::state_metrics()
                    .disk_errors
                    .with_label_values(&["disk_buffer", kind])
                    .inc();
                self.metrics.error("disk_write");
                if let Some(suppressed) = self.disk_errors.hit() {
                    tracing::error!(sink = %self.name, error = %e, kind, suppressed, "cannot write the disk buffer; holding the events (backpressure) and retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = self.abandon.cancelled() => {
                        // Never stored: withhold their acknowledgement, so they are read again.
                        for ev in &events {
                            if let Some(a) = &ev.ack {
                                a.withhold();
                            }
                        }
                        self.metrics.drop_events("disk_error", n);
                        tracing::error!(sink = %self.name, events = n, "shutdown while the disk buffer cannot be written: events not stored and not acknowledged (a file source reads them again)");
                        return true;
                    }
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            if failures > 0 {
                tracing::info!(sink = %self.name, failures, "disk buffer writable again");
            }
            // On disk (fsynced): the events' acknowledgements may fire now.
            return true;
        }
        self.metrics.buffer_events.add(n as i64);
        let r = match self.when_full {
            WhenFull::Block => self.tx.send(events).await.map_err(|_| ()),
            WhenFull::DropNewest => match self.tx.try_send(events) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.metrics.buffer_events.sub(n as i64);
                    self.metrics.drop_events("buffer_full", n);
                    return true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
            },
        };
        if r.is_err() {
            self.metrics.buffer_events.sub(n as i64);
        }
        r.is_ok()
    }
}

/// The dead-letter file: as configured, else `<data_dir>/dead-letter/<sink>.ndjson`, else none
/// (dead-lettered events are then only counted and logged).
fn dead_letter_path(
    configured: Option<&std::path::PathBuf>,
    data_dir: Option<&std::path::Path>,
    name: &str,
) -> Option<std::path::PathBuf> {
    configured
        .cloned()
        .or_else(|| data_dir.map(|d| d.join("dead-letter").join(format!("{name}.ndjson"))))
}

/// Starts a sink: returns the processor's end and the task running it.
pub fn start(
    name: &str,
    cfg: &SinkConfig,
    selfm: &crate::telemetry::SelfMetrics,
    abandon: tokio_util::sync::CancellationToken,
    data_dir: Option<&std::path::Path>,
) -> Result<(SinkInput, tokio::task::JoinHandle<()>), String> {
    cfg.check()?;
    let buffer = cfg.buffer();
    let metrics = driver::SinkMetrics::new(selfm, name);
    let (tx, rx) = mpsc::channel((buffer.max_events / CHUNK).max(2));
    let m = metrics.clone();
    let (disk, writer_gone) = match buffer.kind {
        BufferKind::Memory => (None, None),
        BufferKind::Disk => {
            let dir = data_dir.ok_or("a disk buffer needs a data_dir (or --data-dir)")?;
            let (writer, pump) = disk::open(dir, name, buffer.max_bytes)
                .map_err(|e| format!("cannot open the disk buffer under {}: {e}", dir.display()))?;
            let gone = tokio_util::sync::CancellationToken::new();
            tokio::spawn(pump.run(tx.clone(), gone.clone(), abandon.clone(), metrics.clone()));
            (Some(writer), Some(gone.drop_guard()))
        }
    };
    let task = match cfg {
        SinkConfig::Loki(c) => {
            let sink = c.build()?;
            tokio::spawn(driver::run_http(
                Arc::new(sink),
                rx,
                c.batch.clone(),
                c.request.clone(),
                driver::DeadLetter::new(
                    dead_letter_path(c.dead_letter_path.as_ref(), data_dir, name),
                    name,
                ),
                m,
                abandon.clone(),
            ))
        }
        SinkConfig::Elasticsearch(c) => {
            let sink = c.build()?;
            tokio::spawn(driver::run_http(
                Arc::new(sink),
                rx,
                c.batch.clone(),
                c.request.clone(),
                driver::DeadLetter::new(
                    dead_letter_path(c.dead_letter_path.as_ref(), data_dir, name),
                    name,
                ),
                m,
                abandon.clone(),
            ))
        }
        SinkConfig::Otlp(c) => {
            let sinks = c.build()?;
            otlp::spawn(
                sinks,
                rx,
                c,
                name,
                selfm,
                data_dir,
                metrics.clone(),
                abandon.clone(),
            )
        }
        SinkConfig::Stdout(_) => {
            tokio::spawn(driver::run_writer(Box::new(std::io::stdout()), rx, m, true))
        }
        SinkConfig::File(f) => {
            if let Some(dir) = f.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&f.path)
                .map_err(|e| format!("cannot open {}: {e}", f.path.display()))?;
            tokio::spawn(driver::run_writer(
                Box::new(std::io::BufWriter::with_capacity(256 * 1024, file)),
                rx,
                m,
                true,
            ))
        }
    };
    let _ = abandon;
    Ok((
        SinkInput {
            name: name.to_string(),
            tx,
            when_full: buffer.when_full,
            metrics,
            disk,
            abandon: abandon.clone(),
            disk_errors: crate::telemetry::LogLimit::default(),
            _writer_gone: writer_gone,
        },
        task,
    ))
}

/// A request body gzip-compressed (the Elasticsearch and OTLP sinks' `compression = "gzip"`).
pub fn gzip(raw: &[u8], level: flate2::Compression) -> Result<Vec<u8>, String> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(raw.len() / 4), level);
    enc.write_all(raw)
        .and_then(|()| enc.finish())
        .map_err(|e| format!("gzip compression failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(line: &str, is_json: bool) -> SinkEvent {
        SinkEvent {
            id: "i".into(),
            line: line.into(),
            timestamp: 1_704_067_200_123_000_000,
            level: Level::Warning,
            component: Some("bus".into()),
            message: "m".into(),
            trace_id: "t".into(),
            is_json,
            attrs: vec![
                ("stream".into(), "stderr".into()),
                ("a".into(), "from attrs".into()),
            ],
            source: Arc::from("s"),
            ack: None,
            received: 0,
            span: None,
        }
    }

    /// The streamed document holds exactly what `document()` builds.
    #[test]
    fn written_document_equals_the_decoded_one() {
        for (line, is_json) in [
            (
                r#"{"level":"warn","a":1,"metadata":{"x":[1,{"y":"z"}]},"esc\"aped":"v\n","message":"orig"}"#,
                true,
            ),
            ("plain text line", false),
            ("{broken", true),
        ] {
            let ev = event(line, is_json);
            let mut out = Vec::new();
            ev.write_document(&mut out).unwrap();
            let written: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(written, serde_json::Value::Object(ev.document()), "{line}");
        }
    }
}
