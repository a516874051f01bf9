//! An OTLP/HTTP receiver for tests, written from the OpenTelemetry Protocol specification
//! (`docs/specification.md`, "OTLP/HTTP") — **not a real collector**. It decodes with the
//! official messages (`opentelemetry-proto`), the ones Tempo, Jaeger and the Collector are
//! generated from, so what it accepts they decode the same way.
//!
//! # What it does, as the spec says
//! - `POST /v1/traces` (`ExportTraceServiceRequest`) and `POST /v1/logs`
//!   (`ExportLogsServiceRequest`), binary protobuf only here (`Content-Type:
//!   application/x-protobuf`; anything else is `415`), optionally `Content-Encoding: gzip`.
//! - A body that does not decode, or that breaks the data model's rules (a trace id that is
//!   not 16 bytes or all zero, a span id that is not 8 bytes or all zero, a parent id that is
//!   neither empty nor 8 bytes, a log record's trace/span id of the wrong length, a span ending
//!   before it starts): `400` with a `google.rpc.Status` body, nothing of the request stored.
//! - Success: `200` with an `Export*ServiceResponse` (protobuf). With
//!   [`OtlpReceiver::reject_partially_next`], the response carries a `partial_success` that
//!   rejects that many items (the last ones of the request, which are then not stored).
//! - Faults of [`FaultyServer`]: `fail_next_with(n, 503)` (answered with a `Status`),
//!   `throttle_next` (429 + Retry-After), slow answers, refused connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

use super::server::{self, Fault, FaultyServer};

/// Largest body accepted (compressed, and decompressed), else 413.
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// `google.rpc.Status`, the body of OTLP/HTTP error responses.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// A stored span with its resource's attributes.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub resource: Vec<KeyValue>,
    pub scope: String,
    pub span: Span,
}

/// A stored log record with its resource's attributes.
#[derive(Debug, Clone)]
pub struct ReceivedLog {
    pub resource: Vec<KeyValue>,
    pub record: LogRecord,
}

/// One request, whatever its answer.
#[derive(Debug, Clone)]
pub struct ExportRecord {
    pub at: Instant,
    /// `traces` or `logs`.
    pub signal: &'static str,
    pub status: u16,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub authorization: Option<String>,
    /// Items in the request (0 when it could not be decoded).
    pub items: usize,
    /// Items stored from it.
    pub accepted: usize,
    /// The error's message (400) or the partial success' one.
    pub message: String,
}

/// What the receiver stored and recorded.
#[derive(Default)]
pub struct Inner {
    spans: Vec<ReceivedSpan>,
    logs: Vec<ReceivedLog>,
    exports: Vec<ExportRecord>,
    /// Partial rejections programmed for the next successful exports.
    partial: std::collections::VecDeque<usize>,
}

impl server::Store for Inner {
    fn clear_faults(&mut self) {
        self.partial.clear();
    }
}

type Shared = server::Shared<(), Inner>;

/// A running receiver; dropping it stops the server. `url` and the fault controls are
/// [`FaultyServer`]'s.
pub type OtlpReceiver = FaultyServer<(), Inner>;

impl OtlpReceiver {
    /// Starts a receiver on `127.0.0.1:0`; returns at once.
    pub fn start() -> OtlpReceiver {
        let routes = Router::new()
            .route("/v1/traces", post(traces))
            .route("/v1/logs", post(logs));
        FaultyServer::serve("otlp-receiver", (), routes)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.lock().spans.clone()
    }

    pub fn logs(&self) -> Vec<ReceivedLog> {
        self.lock().logs.clone()
    }

    pub fn exports(&self) -> Vec<ExportRecord> {
        self.lock().exports.clone()
    }

    /// The next `n` successful exports each reject their last `items` items, said in a
    /// `partial_success`.
    pub fn reject_partially_next(&self, n: usize, items: usize) {
        self.lock().partial.extend((0..n).map(|_| items));
    }

    /// Waits until at least `n` spans are stored (panics after `timeout`).
    pub fn wait_for_spans(&self, n: usize, timeout: Duration) -> Vec<ReceivedSpan> {
        server::wait_for(
            timeout,
            || Some(self.spans()).filter(|s| s.len() >= n),
            || {
                format!(
                    "{} of {n} spans within {timeout:?}; exports: {:?}",
                    self.spans().len(),
                    self.summary()
                )
            },
        )
    }

    /// Waits until at least `n` log records are stored (panics after `timeout`).
    pub fn wait_for_logs(&self, n: usize, timeout: Duration) -> Vec<ReceivedLog> {
        server::wait_for(
            timeout,
            || Some(self.logs()).filter(|l| l.len() >= n),
            || {
                format!(
                    "{} of {n} log records within {timeout:?}; exports: {:?}",
                    self.logs().len(),
                    self.summary()
                )
            },
        )
    }

    /// (signal, status, items, accepted) per export, for failure messages.
    pub fn summary(&self) -> Vec<(&'static str, u16, usize, usize)> {
        self.exports()
            .iter()
            .map(|e| (e.signal, e.status, e.items, e.accepted))
            .collect()
    }
}

/// An answer: status and protobuf body.
fn answer(
    status: StatusCode,
    body: Vec<u8>,
    extra: Option<(header::HeaderName, HeaderValue)>,
) -> Response {
    let mut res = (
        status,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        body,
    )
        .into_response();
    if let Some((k, v)) = extra {
        res.headers_mut().insert(k, v);
    }
    res
}

/// A refused request's answer and message (boxed: a `Response` is large).
type Refused = Box<(Response, String)>;

fn error(status: StatusCode, code: i32, message: &str) -> Refused {
    let body = RpcStatus {
        code,
        message: message.to_string(),
    }
    .encode_to_vec();
    Box::new((answer(status, body, None), message.to_string()))
}

/// The request body, decompressed; or the error answer.
fn body_of(headers: &HeaderMap, body: &[u8]) -> Result<Vec<u8>, Refused> {
    let ct = server::media_type(server::header_text(headers, header::CONTENT_TYPE).as_deref());
    if ct.as_deref() != Some("application/x-protobuf") {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            3,
            "this receiver takes application/x-protobuf",
        ));
    }
    if body.len() > MAX_BODY_BYTES {
        return Err(error(StatusCode::PAYLOAD_TOO_LARGE, 8, "body too large"));
    }
    match server::header_text(headers, header::CONTENT_ENCODING).as_deref() {
        None | Some("identity") => Ok(body.to_vec()),
        Some("gzip") => match server::gunzip(body, MAX_BODY_BYTES) {
            Ok(b) if b.len() <= MAX_BODY_BYTES => Ok(b),
            Ok(_) => Err(error(StatusCode::PAYLOAD_TOO_LARGE, 8, "body too large")),
            Err(e) => Err(error(StatusCode::BAD_REQUEST, 3, &format!("bad gzip: {e}"))),
        },
        Some(other) => Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            3,
            &format!("unsupported Content-Encoding {other}"),
        )),
    }
}

fn id_ok(id: &[u8], len: usize) -> bool {
    id.len() == len && id.iter().any(|b| *b != 0)
}

fn check_span(s: &Span) -> Result<(), String> {
    if !id_ok(&s.trace_id, 16) {
        return Err(format!("invalid trace id: {} bytes", s.trace_id.len()));
    }
    if !id_ok(&s.span_id, 8) {
        return Err(format!("invalid span id: {} bytes", s.span_id.len()));
    }
    if !(s.parent_span_id.is_empty() || id_ok(&s.parent_span_id, 8)) {
        return Err("invalid parent span id".into());
    }
    if s.end_time_unix_nano < s.start_time_unix_nano {
        return Err("span ends before it starts".into());
    }
    if s.name.is_empty() {
        return Err("span without a name".into());
    }
    Ok(())
}

fn check_log(r: &LogRecord) -> Result<(), String> {
    if !(r.trace_id.is_empty() || id_ok(&r.trace_id, 16)) {
        return Err(format!("invalid trace id: {} bytes", r.trace_id.len()));
    }
    if !(r.span_id.is_empty() || id_ok(&r.span_id, 8)) {
        return Err(format!("invalid span id: {} bytes", r.span_id.len()));
    }
    Ok(())
}

/// Whole-request faults: the answer, if one is programmed.
fn fault(shared: &Shared) -> Option<Refused> {
    match shared.next_fault()? {
        Fault::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Some(error(status, 14, "injected fault"))
        }
        Fault::Throttle { retry_after } => {
            let mut refused = error(StatusCode::TOO_MANY_REQUESTS, 8, "throttled");
            if let Ok(v) = HeaderValue::from_str(&retry_after) {
                refused.0.headers_mut().insert(header::RETRY_AFTER, v);
            }
            Some(refused)
        }
    }
}

fn record(headers: &HeaderMap, signal: &'static str) -> ExportRecord {
    let text = |n| server::header_text(headers, n);
    ExportRecord {
        at: Instant::now(),
        signal,
        status: 200,
        content_type: text(header::CONTENT_TYPE),
        content_encoding: text(header::CONTENT_ENCODING),
        authorization: text(header::AUTHORIZATION),
        items: 0,
        accepted: 0,
        message: String::new(),
    }
}

async fn finish(
    shared: &Shared,
    mut rec: ExportRecord,
    res: Response,
    message: String,
) -> Response {
    rec.status = res.status().as_u16();
    rec.message = message;
    shared.lock().exports.push(rec);
    let delay = shared.next_delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    res
}

/// `POST /v1/traces`
async fn traces(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut rec = record(&headers, "traces");
    let (res, msg) = (|| {
        if let Some(f) = fault(&shared) {
            return Err(f);
        }
        let raw = body_of(&headers, &body)?;
        let req = ExportTraceServiceRequest::decode(&raw[..])
            .map_err(|e| error(StatusCode::BAD_REQUEST, 3, &format!("cannot decode: {e}")))?;
        let mut got = Vec::new();
        for rs in &req.resource_spans {
            let resource = rs
                .resource
                .clone()
                .map(|r| r.attributes)
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                let scope = ss
                    .scope
                    .as_ref()
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                for s in &ss.spans {
                    check_span(s).map_err(|m| error(StatusCode::BAD_REQUEST, 3, &m))?;
                    got.push(ReceivedSpan {
                        resource: resource.clone(),
                        scope: scope.clone(),
                        span: s.clone(),
                    });
                }
            }
        }
        rec.items = got.len();
        let mut inner = shared.lock();
        let reject = inner.partial.pop_front().unwrap_or(0).min(got.len());
        got.truncate(got.len() - reject);
        rec.accepted = got.len();
        inner.spans.extend(got);
        let partial = (reject > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: reject as i64,
            error_message: format!("{reject} spans rejected"),
        });
        let body = ExportTraceServiceResponse {
            partial_success: partial,
        }
        .encode_to_vec();
        Ok::<_, Refused>((answer(StatusCode::OK, body, None), String::new()))
    })()
    .unwrap_or_else(|e| *e);
    finish(&shared, rec, res, msg).await
}

/// `POST /v1/logs`
async fn logs(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut rec = record(&headers, "logs");
    let (res, msg) = (|| {
        if let Some(f) = fault(&shared) {
            return Err(f);
        }
        let raw = body_of(&headers, &body)?;
        let req = ExportLogsServiceRequest::decode(&raw[..])
            .map_err(|e| error(StatusCode::BAD_REQUEST, 3, &format!("cannot decode: {e}")))?;
        let mut got = Vec::new();
        for rl in &req.resource_logs {
            let resource = rl
                .resource
                .clone()
                .map(|r| r.attributes)
                .unwrap_or_default();
            for sl in &rl.scope_logs {
                for r in &sl.log_records {
                    check_log(r).map_err(|m| error(StatusCode::BAD_REQUEST, 3, &m))?;
                    got.push(ReceivedLog {
                        resource: resource.clone(),
                        record: r.clone(),
                    });
                }
            }
        }
        rec.items = got.len();
        let mut inner = shared.lock();
        let reject = inner.partial.pop_front().unwrap_or(0).min(got.len());
        got.truncate(got.len() - reject);
        rec.accepted = got.len();
        inner.logs.extend(got);
        let partial = (reject > 0).then(|| ExportLogsPartialSuccess {
            rejected_log_records: reject as i64,
            error_message: format!("{reject} log records rejected"),
        });
        let body = ExportLogsServiceResponse {
            partial_success: partial,
        }
        .encode_to_vec();
        Ok::<_, Refused>((answer(StatusCode::OK, body, None), String::new()))
    })()
    .unwrap_or_else(|e| *e);
    finish(&shared, rec, res, msg).await
}

/// The string value of attribute `key`, if it is one.
pub fn str_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

/// The value of attribute `key`.
pub fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}
