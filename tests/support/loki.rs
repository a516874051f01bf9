//! A Loki push receiver for tests, written from Loki's public push API documentation
//! (`POST /loki/api/v1/push`, `pkg/push/push.proto`, the limits documented in Loki's
//! configuration reference) — **not a real Loki**. It shares no code with `src/`: the protobuf
//! messages below are its own copy, so a wrong tag in weir's sink fails the tests.
//!
//! # What it does, as Loki does
//! - Decodes `application/json` bodies (optionally gzip) and, for any other content type,
//!   snappy *block*-compressed `logproto.PushRequest` (Loki ignores `Content-Encoding` there).
//! - A body larger than [`LokiLimits::max_push_bytes`] (compressed or not): `413`.
//! - Per stream: labels parsed from the `{a="b"}` string (at least one, valid names, limits on
//!   count and length); per entry: too old, too new, longer than `max_line_size`. Invalid
//!   entries are dropped, the valid ones of the same push are still stored, and the answer is
//!   `400` with the errors, one per line — a partial accept, as Loki does.
//! - Ordering: with `unordered_writes = false` (Loki before 2.4; the default here) an entry
//!   older than the newest stored one of its stream is refused `entry out of order`; an entry
//!   with the newest one's timestamp and line is a duplicate, silently dropped (counted in
//!   [`LokiReceiver::duplicates`]). With `unordered_writes = true` (Loki 2.4+), entries older than
//!   the newest minus [`LokiLimits::unordered_window`] are refused `entry too far behind`, and
//!   exact duplicates anywhere in the stream are dropped.
//! - With `require_tenant` (Loki's `auth_enabled`), a push without `X-Scope-OrgID` is `401`.
//! - Success is `204 No Content`.
//!
//! # Fault injection, programmable while it runs
//! The receiver is a [`FaultyServer`]: [`FaultyServer::fail_next`] (next N
//! pushes answer a status, 500 by default, as `rpc error: code = Unavailable`),
//! [`FaultyServer::throttle_next`] (429 `Ingestion rate limit exceeded` with `Retry-After`),
//! [`FaultyServer::set_delay`] and [`FaultyServer::delay_next`] (answer late, after storing),
//! [`FaultyServer::refuse_connections_for`] (closes the listening socket and every open
//! connection, rebinds the same port later).
//!
//! # Use
//! [`LokiReceiver::start`] binds `127.0.0.1:0` and returns at once; the server runs on its own
//! thread with its own tokio runtime, so plain `#[test]` functions can use it. Dropping the
//! receiver stops it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use prost::Message as _;

use super::server::{self, Answer, Fault, FaultyServer};

/// Loki's `push.proto` (package `logproto`), written from the published file.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PushRequest {
        #[prost(message, repeated, tag = "1")]
        pub streams: Vec<StreamAdapter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StreamAdapter {
        #[prost(string, tag = "1")]
        pub labels: String,
        #[prost(message, repeated, tag = "2")]
        pub entries: Vec<EntryAdapter>,
        #[prost(uint64, tag = "3")]
        pub hash: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EntryAdapter {
        #[prost(message, optional, tag = "1")]
        pub timestamp: Option<Timestamp>,
        #[prost(string, tag = "2")]
        pub line: String,
        #[prost(message, repeated, tag = "3")]
        pub structured_metadata: Vec<LabelPairAdapter>,
        /// Only used by Loki's query path; a push that sets it is still accepted.
        #[prost(message, repeated, tag = "4")]
        pub parsed: Vec<LabelPairAdapter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPairAdapter {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `google.protobuf.Timestamp`
    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Timestamp {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }
}

/// The Loki limits the receiver enforces. Defaults are Loki's documented defaults, except
/// `unordered_writes` (false: the stricter pre-2.4 behaviour).
#[derive(Debug, Clone)]
pub struct LokiLimits {
    /// `false`: an entry older than its stream's newest is refused (`entry out of order`).
    pub unordered_writes: bool,
    /// With `unordered_writes`: how far behind the stream's newest entry an entry may be
    /// (Loki: `max_chunk_age / 2`, 1 h).
    pub unordered_window: Duration,
    /// `max_line_size` in bytes; 0 = no limit. Default: 256 KiB.
    pub max_line_size: usize,
    /// Largest push body (compressed, and decompressed), else 413. Default: 4 MiB
    /// (`grpc_server_max_recv_msg_size`).
    pub max_push_bytes: usize,
    /// `reject_old_samples_max_age`; `None` accepts any age. Default: 7 days.
    pub reject_old_samples_max_age: Option<Duration>,
    /// `creation_grace_period`: how far in the future an entry may be. Default: 10 min.
    pub creation_grace_period: Option<Duration>,
    /// `max_label_names_per_series`. Default: 15.
    pub max_label_names_per_series: usize,
    /// `max_label_name_length`. Default: 1024.
    pub max_label_name_length: usize,
    /// `max_label_value_length`. Default: 2048.
    pub max_label_value_length: usize,
    /// `auth_enabled`: a push without `X-Scope-OrgID` is refused 401.
    pub require_tenant: bool,
}

impl Default for LokiLimits {
    fn default() -> Self {
        LokiLimits {
            unordered_writes: false,
            unordered_window: Duration::from_secs(3600),
            max_line_size: 256 * 1024,
            max_push_bytes: 4 << 20,
            reject_old_samples_max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            creation_grace_period: Some(Duration::from_secs(600)),
            max_label_names_per_series: 15,
            max_label_name_length: 1024,
            max_label_value_length: 2048,
            require_tenant: false,
        }
    }
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedEntry {
    /// The stream's labels, as parsed.
    pub labels: BTreeMap<String, String>,
    /// Nanoseconds since the epoch.
    pub timestamp_ns: i64,
    pub line: String,
    /// Structured metadata, as sent.
    pub metadata: BTreeMap<String, String>,
    /// `X-Scope-OrgID`, or `fake` (Loki's tenant when auth is off) when absent.
    pub tenant: String,
}

/// One push request, whatever its answer.
#[derive(Debug, Clone)]
pub struct PushRecord {
    /// When it arrived.
    pub at: Instant,
    /// The status answered.
    pub status: u16,
    /// The body answered (Loki's error text; empty on success).
    pub response: String,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub tenant: Option<String>,
    pub authorization: Option<String>,
    /// Entries in the request (0 when it could not be decoded).
    pub entries: usize,
    /// Entries stored from it.
    pub accepted: usize,
}

#[derive(Default)]
struct StreamState {
    /// Newest stored entry: timestamp and line.
    newest: Option<(i64, String)>,
    /// Stored (timestamp, line) pairs, for duplicate detection with unordered writes.
    seen: HashSet<(i64, String)>,
}

/// What the receiver stored and recorded (its fields are private to this module).
#[derive(Default)]
pub struct Inner {
    entries: Vec<ReceivedEntry>,
    pushes: Vec<PushRecord>,
    streams: HashMap<(String, BTreeMap<String, String>), StreamState>,
    duplicates: usize,
}

impl server::Store for Inner {}

type Shared = server::Shared<LokiLimits, Inner>;

/// A running receiver; dropping it stops the server. `addr`, `url` and the fault controls are
/// [`FaultyServer`]'s.
pub type LokiReceiver = FaultyServer<LokiLimits, Inner>;

impl LokiReceiver {
    /// Starts a receiver with Loki's default limits on `127.0.0.1:0`.
    pub fn start() -> LokiReceiver {
        LokiReceiver::start_with(LokiLimits::default())
    }

    /// Starts a receiver with these limits on `127.0.0.1:0`; returns at once (the port is
    /// bound, so connections wait in the backlog until the server thread accepts them).
    pub fn start_with(limits: LokiLimits) -> LokiReceiver {
        let routes = Router::new()
            .route("/loki/api/v1/push", post(push))
            .route("/ready", get(|| async { "ready" }));
        FaultyServer::serve("loki-receiver", limits, routes)
    }

    /// Every stored entry, in the order stored.
    pub fn entries(&self) -> Vec<ReceivedEntry> {
        self.lock().entries.clone()
    }

    /// Every push received, in arrival order, with its answer.
    pub fn pushes(&self) -> Vec<PushRecord> {
        self.lock().pushes.clone()
    }

    /// Entries dropped as duplicates of stored ones (same stream, timestamp and line).
    pub fn duplicates(&self) -> usize {
        self.lock().duplicates
    }

    /// Waits until at least `n` entries are stored (panics after `timeout`) and returns them.
    pub fn wait_for_entries(&self, n: usize, timeout: Duration) -> Vec<ReceivedEntry> {
        server::wait_for(
            timeout,
            || Some(self.entries()).filter(|e| e.len() >= n),
            || {
                format!(
                    "the Loki receiver stored {} of {n} entries within {timeout:?}; pushes: {:?}",
                    self.entries().len(),
                    self.summary()
                )
            },
        )
    }

    /// Waits for a push matching `pred` (panics after `timeout`) and returns it.
    pub fn wait_for_push(
        &self,
        pred: impl Fn(&PushRecord) -> bool,
        timeout: Duration,
    ) -> PushRecord {
        server::wait_for(
            timeout,
            || self.pushes().into_iter().find(|p| pred(p)),
            || {
                format!(
                    "no matching push within {timeout:?}; pushes: {:?}",
                    self.summary()
                )
            },
        )
    }

    /// (status, entries, entries stored) per push, for failure messages.
    fn summary(&self) -> Vec<(u16, usize, usize)> {
        self.pushes()
            .iter()
            .map(|p| (p.status, p.entries, p.accepted))
            .collect()
    }
}

/// A decoded push: streams of (labels text or parsed map, entries).
struct Push {
    streams: Vec<PushStream>,
}

struct PushStream {
    /// As sent: the `{..}` string (protobuf) or the JSON object rendered the same way.
    labels_text: String,
    /// Parsed labels, or the parse error.
    labels: Result<BTreeMap<String, String>, String>,
    entries: Vec<PushEntry>,
}

struct PushEntry {
    timestamp_ns: i64,
    line: String,
    metadata: BTreeMap<String, String>,
}

/// `POST /loki/api/v1/push`
async fn push(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let text = |name| server::header_text(&headers, name);
    let mut record = PushRecord {
        at: Instant::now(),
        status: 204,
        response: String::new(),
        content_type: text(header::CONTENT_TYPE),
        content_encoding: text(header::CONTENT_ENCODING),
        tenant: text(header::HeaderName::from_static("x-scope-orgid")),
        authorization: text(header::AUTHORIZATION),
        entries: 0,
        accepted: 0,
    };
    let answer = handle(&shared, &mut record, &body);
    record.status = answer.0.as_u16();
    record.response = answer.2.clone();
    shared.lock().pushes.push(record);
    // A 204 has no body; every other answer has Loki's error text.
    server::respond(answer, "text/plain; charset=utf-8", shared.next_delay()).await
}

fn error(status: StatusCode, msg: impl Into<String>) -> Answer {
    // Go's http.Error ends the body with a newline.
    (status, Vec::new(), format!("{}\n", msg.into()))
}

fn handle(shared: &Shared, record: &mut PushRecord, body: &[u8]) -> Answer {
    let limits = &shared.options;
    if limits.require_tenant && record.tenant.is_none() {
        return error(StatusCode::UNAUTHORIZED, "no org id");
    }
    if body.len() > limits.max_push_bytes {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "message size too large than max ({} vs {})",
                body.len(),
                limits.max_push_bytes
            ),
        );
    }
    let media = server::media_type(record.content_type.as_deref());
    let decoded = if media.as_deref() == Some("application/json") {
        decode_json(
            body,
            record.content_encoding.as_deref(),
            limits.max_push_bytes,
        )
    } else {
        decode_protobuf(body, limits.max_push_bytes)
    };
    let push = match decoded {
        Ok(p) => p,
        Err(answer) => return answer,
    };
    record.entries = push.streams.iter().map(|s| s.entries.len()).sum();

    match shared.next_fault() {
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).expect("a valid injected status");
            return error(
                status,
                "rpc error: code = Unavailable desc = injected failure",
            );
        }
        Some(Fault::Throttle { retry_after }) => {
            let bytes: usize = push
                .streams
                .iter()
                .flat_map(|s| &s.entries)
                .map(|e| e.line.len())
                .sum();
            let answer = error(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "Ingestion rate limit exceeded for user {} (limit: 4194304 bytes/sec) while \
                     attempting to ingest '{}' lines totaling '{bytes}' bytes, reduce log volume \
                     or contact your Loki administrator to see if the limit can be increased",
                    record.tenant.as_deref().unwrap_or("fake"),
                    record.entries
                ),
            );
            return server::with_retry_after(answer, &retry_after);
        }
        None => {}
    }

    let tenant = record.tenant.clone().unwrap_or_else(|| "fake".to_string());
    let (accepted, errors) = ingest(shared, &tenant, push);
    record.accepted = accepted;
    if errors.is_empty() {
        (StatusCode::NO_CONTENT, Vec::new(), String::new())
    } else {
        error(StatusCode::BAD_REQUEST, errors.join("\n"))
    }
}

/// Validates (distributor) and stores (ingester) a push; returns the count stored and the
/// error texts.
fn ingest(shared: &Shared, tenant: &str, push: Push) -> (usize, Vec<String>) {
    let limits = &shared.options;
    let now = now_ns();
    let mut errors = Vec::new();
    let mut accepted = 0;
    let mut inner = shared.lock();
    for stream in push.streams {
        let labels = match stream
            .labels
            .and_then(|l| validate_labels(&l, &stream.labels_text, limits).map(|()| l))
        {
            Ok(l) => l,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let canonical = render_labels(&labels);
        let mut valid = Vec::new();
        for e in stream.entries {
            if let Some(max_age) = limits.reject_old_samples_max_age {
                let oldest = now - max_age.as_nanos() as i64;
                if e.timestamp_ns < oldest {
                    errors.push(format!(
                        "entry for stream '{canonical}' has timestamp too old: {}, oldest \
                         acceptable timestamp is: {}",
                        go_time(e.timestamp_ns),
                        go_time(oldest)
                    ));
                    continue;
                }
            }
            if let Some(grace) = limits.creation_grace_period {
                if e.timestamp_ns > now + grace.as_nanos() as i64 {
                    errors.push(format!(
                        "entry for stream '{canonical}' has timestamp too new: {}",
                        go_time(e.timestamp_ns)
                    ));
                    continue;
                }
            }
            if limits.max_line_size > 0 && e.line.len() > limits.max_line_size {
                errors.push(format!(
                    "Max entry size '{}' bytes exceeded for stream '{canonical}' while adding an \
                     entry with length '{}' bytes",
                    limits.max_line_size,
                    e.line.len()
                ));
                continue;
            }
            valid.push(e);
        }

        // The ingester: ordering and duplicates, per stream.
        let total = valid.len();
        let mut ignored = Vec::new();
        let inner = &mut *inner;
        let state = inner
            .streams
            .entry((tenant.to_string(), labels.clone()))
            .or_default();
        for e in valid {
            if let Some((newest_ts, newest_line)) = &state.newest {
                if limits.unordered_writes {
                    let oldest = newest_ts - limits.unordered_window.as_nanos() as i64;
                    if e.timestamp_ns < oldest {
                        ignored.push(format!(
                            "entry with timestamp {} ignored, reason: 'entry too far behind, entry \
                             timestamp is: {}, oldest acceptable timestamp is: {}',",
                            go_time(e.timestamp_ns),
                            go_time(e.timestamp_ns),
                            go_time(oldest)
                        ));
                        continue;
                    }
                    if state.seen.contains(&(e.timestamp_ns, e.line.clone())) {
                        inner.duplicates += 1;
                        continue;
                    }
                } else if e.timestamp_ns < *newest_ts {
                    ignored.push(format!(
                        "entry with timestamp {} ignored, reason: 'entry out of order',",
                        go_time(e.timestamp_ns)
                    ));
                    continue;
                } else if e.timestamp_ns == *newest_ts && e.line == *newest_line {
                    inner.duplicates += 1;
                    continue;
                }
            }
            if state
                .newest
                .as_ref()
                .is_none_or(|(ts, _)| e.timestamp_ns >= *ts)
            {
                state.newest = Some((e.timestamp_ns, e.line.clone()));
            }
            if limits.unordered_writes {
                state.seen.insert((e.timestamp_ns, e.line.clone()));
            }
            inner.entries.push(ReceivedEntry {
                labels: labels.clone(),
                timestamp_ns: e.timestamp_ns,
                line: e.line,
                metadata: e.metadata,
                tenant: tenant.to_string(),
            });
            accepted += 1;
        }
        if !ignored.is_empty() {
            // Loki returns at most 10 of them (`max_returned_stream_errors`).
            let n = ignored.len();
            ignored.truncate(10);
            ignored.push(format!(
                "user '{tenant}', total ignored: {n} out of {total} for stream: {canonical}"
            ));
            errors.push(ignored.join("\n"));
        }
    }
    (accepted, errors)
}

fn validate_labels(
    labels: &BTreeMap<String, String>,
    text: &str,
    limits: &LokiLimits,
) -> Result<(), String> {
    if labels.is_empty() {
        return Err("error at least one label pair is required per stream".to_string());
    }
    if labels.len() > limits.max_label_names_per_series {
        return Err(format!(
            "entry for stream '{text}' has {} label names; limit {}",
            labels.len(),
            limits.max_label_names_per_series
        ));
    }
    for (name, value) in labels {
        if !is_label_name(name) {
            return Err(format!(
                "error parsing labels '{text}': invalid label name {name:?}"
            ));
        }
        if name.len() > limits.max_label_name_length {
            return Err(format!("stream '{text}' has label name too long: '{name}'"));
        }
        if value.len() > limits.max_label_value_length {
            return Err(format!(
                "stream '{text}' has label value too long: '{value}'"
            ));
        }
    }
    Ok(())
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn decode_protobuf(body: &[u8], max: usize) -> Result<Push, Answer> {
    let len = snap::raw::decompress_len(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("snappy: corrupt input: {e}"),
        )
    })?;
    if len > max {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("message size too large than max ({len} vs {max})"),
        ));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                format!("snappy: corrupt input: {e}"),
            )
        })?;
    let req = proto::PushRequest::decode(raw.as_slice())
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("proto: {e}")))?;
    let streams = req
        .streams
        .into_iter()
        .map(|s| PushStream {
            labels: parse_labels(&s.labels),
            labels_text: s.labels,
            entries: s
                .entries
                .into_iter()
                .map(|e| {
                    let ts = e.timestamp.unwrap_or_default();
                    PushEntry {
                        timestamp_ns: ts.seconds * 1_000_000_000 + i64::from(ts.nanos),
                        line: e.line,
                        metadata: e
                            .structured_metadata
                            .into_iter()
                            .map(|p| (p.name, p.value))
                            .collect(),
                    }
                })
                .collect(),
        })
        .collect();
    Ok(Push { streams })
}

fn decode_json(body: &[u8], encoding: Option<&str>, max: usize) -> Result<Push, Answer> {
    let bad = |msg: String| error(StatusCode::BAD_REQUEST, msg);
    let body: Vec<u8> = match encoding.map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("identity") => body.to_vec(),
        Some("gzip") => {
            let out = server::gunzip(body, max).map_err(|e| bad(format!("gzip: {e}")))?;
            if out.len() > max {
                return Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("message size too large than max (>{max} vs {max})"),
                ));
            }
            out
        }
        Some(other) => {
            return Err(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding {other} not supported"),
            ))
        }
    };
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| bad(format!("loghttp.PushRequest: {e}")))?;
    let streams = v["streams"]
        .as_array()
        .ok_or_else(|| bad("loghttp.PushRequest: missing streams".to_string()))?;
    let mut out = Vec::new();
    for s in streams {
        let obj = s["stream"]
            .as_object()
            .ok_or_else(|| bad("stream: expected an object of labels".to_string()))?;
        let mut labels = BTreeMap::new();
        for (k, v) in obj {
            let v = v
                .as_str()
                .ok_or_else(|| bad(format!("label {k}: expected a string")))?;
            labels.insert(k.clone(), v.to_string());
        }
        let values = s["values"]
            .as_array()
            .ok_or_else(|| bad("values: expected an array".to_string()))?;
        let mut entries = Vec::new();
        for value in values {
            let arr = value
                .as_array()
                .filter(|a| a.len() == 2 || a.len() == 3)
                .ok_or_else(|| {
                    bad(
                        "values: each entry is [timestamp, line] or [timestamp, line, metadata]"
                            .into(),
                    )
                })?;
            let ts = arr[0]
                .as_str()
                .and_then(|t| t.parse::<i64>().ok())
                .ok_or_else(|| {
                    bad(format!(
                        "values: timestamp {} is not a string of nanoseconds",
                        arr[0]
                    ))
                })?;
            let line = arr[1]
                .as_str()
                .ok_or_else(|| bad("values: line is not a string".to_string()))?;
            let mut metadata = BTreeMap::new();
            if let Some(md) = arr.get(2) {
                let md = md
                    .as_object()
                    .ok_or_else(|| bad("values: structured metadata is not an object".into()))?;
                for (k, v) in md {
                    let v = v.as_str().ok_or_else(|| {
                        bad(format!("structured metadata {k}: expected a string"))
                    })?;
                    metadata.insert(k.clone(), v.to_string());
                }
            }
            entries.push(PushEntry {
                timestamp_ns: ts,
                line: line.to_string(),
                metadata,
            });
        }
        out.push(PushStream {
            labels_text: render_labels(&labels),
            labels: Ok(labels),
            entries,
        });
    }
    Ok(Push { streams: out })
}

/// Parses a label selector as Loki does for a push: `{name="value", ...}`, values in double
/// quotes with Go escapes, only `=`.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let fail = |why: &str| format!("error parsing labels '{text}': {why}");
    let mut chars = text.trim().chars().peekable();
    if chars.next() != Some('{') {
        return Err(fail("expected {"));
    }
    let mut out = BTreeMap::new();
    let skip_ws = |c: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while c.peek().is_some_and(|c| c.is_whitespace()) {
            c.next();
        }
    };
    skip_ws(&mut chars);
    if chars.peek() == Some(&'}') {
        chars.next();
        return if chars.next().is_none() {
            Ok(out)
        } else {
            Err(fail("trailing characters"))
        };
    }
    loop {
        skip_ws(&mut chars);
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                chars.next();
            } else {
                break;
            }
        }
        if !is_label_name(&name) {
            return Err(fail("expected a label name"));
        }
        skip_ws(&mut chars);
        if chars.next() != Some('=') {
            return Err(fail("expected ="));
        }
        if chars.peek() == Some(&'~') {
            return Err(fail("only = matchers are allowed in a push"));
        }
        skip_ws(&mut chars);
        if chars.next() != Some('"') {
            return Err(fail("expected a quoted value"));
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                None => return Err(fail("unterminated string")),
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some('t') => value.push('\t'),
                    Some('r') => value.push('\r'),
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    _ => return Err(fail("invalid escape")),
                },
                Some(c) => value.push(c),
            }
        }
        if out.insert(name.clone(), value).is_some() {
            return Err(fail(&format!("duplicate label name {name}")));
        }
        skip_ws(&mut chars);
        match chars.next() {
            Some(',') => continue,
            Some('}') => break,
            _ => return Err(fail("expected , or }")),
        }
    }
    if chars.next().is_some() {
        return Err(fail("trailing characters"));
    }
    Ok(out)
}

/// `{a="b", c="d"}`, sorted, Go-quoted (how Loki prints a stream).
pub fn render_labels(labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect();
    format!("{{{}}}", inner.join(", "))
}

fn now_ns() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    d.as_nanos() as i64
}

/// A timestamp as Go's `time.Time.String()` prints it in UTC (`2024-01-01 00:00:00.5 +0000 UTC`).
fn go_time(ns: i64) -> String {
    match jiff::Timestamp::from_nanosecond(i128::from(ns)) {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S%.f +0000 UTC").to_string(),
        Err(_) => ns.to_string(),
    }
}
