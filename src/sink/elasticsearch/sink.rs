//! The runtime sink: events to an NDJSON bulk body, a bulk response to an [`Outcome`] per
//! document.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;

use super::config::{EsCompression, IndexName, Secret, NANOS_PER_HOUR};
use crate::sink::{HttpSink, Outcome, Request, SinkEvent};

/// Longest reason taken from a response body that is not Elasticsearch's error JSON, in
/// characters.
const MAX_BODY_REASON_CHARS: usize = 200;
/// Longest reason kept for one rejected document, in characters (Elasticsearch's reasons
/// quote a preview of the offending value).
const MAX_ITEM_REASON_CHARS: usize = 1000;

/// The built sink: encodes batches as bulk requests and reads Elasticsearch's answers. Its
/// `Debug` shows no secret: `auth` is a [`Secret`], the URL's userinfo is redacted.
pub struct ElasticsearchSink {
    pub(super) url: String,
    pub(super) index: IndexName,
    pub(super) compression: EsCompression,
    /// Content type and encoding.
    pub(super) headers: Vec<(String, String)>,
    /// The whole `Authorization` value.
    pub(super) auth: Option<Secret>,
    /// Documents answered 409 (already indexed: a resend), counted as delivered.
    conflicts: AtomicU64,
}

impl std::fmt::Debug for ElasticsearchSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElasticsearchSink")
            .field("url", &crate::redact::urls(&self.url))
            .field("index", &self.index)
            .field("compression", &self.compression)
            .field("headers", &self.headers)
            .field("auth", &self.auth)
            .field("conflicts", &self.conflicts)
            .finish()
    }
}

impl ElasticsearchSink {
    pub(super) fn new(
        url: String,
        index: IndexName,
        compression: EsCompression,
        headers: Vec<(String, String)>,
        auth: Option<Secret>,
    ) -> ElasticsearchSink {
        ElasticsearchSink {
            url,
            index,
            compression,
            headers,
            auth,
            conflicts: AtomicU64::new(0),
        }
    }

    /// Documents Elasticsearch already had when weir sent them (409 version conflicts on
    /// `create`, from batches resent after a timeout), since the sink was built. They count as
    /// delivered.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// The uncompressed NDJSON bulk body for `events`.
    pub(super) fn bulk_body(&self, events: &[SinkEvent]) -> Result<Vec<u8>, String> {
        let mut body = Vec::with_capacity(events.iter().map(|e| e.size() + 96).sum());
        // A rendered name depends only on the hour, and a batch mostly holds one hour.
        let mut cached: Option<(i64, String)> = None;
        for ev in events {
            let index = match self.index.fixed() {
                Some(name) => name,
                None => {
                    let hour = ev.timestamp.div_euclid(NANOS_PER_HOUR);
                    if cached.as_ref().is_none_or(|(h, _)| *h != hour) {
                        cached = Some((hour, self.index.render(ev.timestamp)));
                    }
                    cached.as_ref().map_or("", |(_, name)| name.as_str())
                }
            };
            body.extend_from_slice(br#"{"create":{"_index":"#);
            serde_json::to_writer(&mut body, index).map_err(|e| e.to_string())?;
            body.extend_from_slice(br#","_id":"#);
            serde_json::to_writer(&mut body, &ev.id).map_err(|e| e.to_string())?;
            body.extend_from_slice(b"}}\n");
            // serde_json escapes newlines inside strings: one document, one line.
            ev.write_document(&mut body)
                .map_err(|e| format!("JSON encoding failed: {e}"))?;
            body.push(b'\n');
        }
        Ok(body)
    }
}

impl HttpSink for ElasticsearchSink {
    fn kind(&self) -> &'static str {
        "elasticsearch"
    }

    fn encode(&self, events: &[SinkEvent]) -> Result<Request, String> {
        let raw = self.bulk_body(events)?;
        let body = match self.compression {
            EsCompression::None => raw,
            EsCompression::Gzip => crate::sink::gzip(&raw, flate2::Compression::default())?,
        };
        let mut headers = self.headers.clone();
        if let Some(auth) = &self.auth {
            headers.push(("Authorization".to_string(), auth.0.clone()));
        }
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
        events: &[SinkEvent],
    ) -> Outcome {
        let (outcome, conflicts) = classify(status, headers, body, events, jiff::Timestamp::now());
        if conflicts > 0 {
            self.conflicts.fetch_add(conflicts, Ordering::Relaxed);
            tracing::debug!(
                sink = "elasticsearch",
                conflicts,
                "documents already indexed (409, a resend); counted as delivered"
            );
        }
        outcome
    }
}

/// `{"took":..,"errors":..,"items":[{"create":{..}}, ..]}`. `errors` is deliberately not read:
/// every item is, whatever it says.
#[derive(Deserialize)]
struct BulkResponse {
    items: Vec<BulkAction>,
}

/// One item, keyed by its action (weir sends only `create`; any is read the same way).
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum BulkAction {
    Create(BulkItem),
    Index(BulkItem),
    Update(BulkItem),
    Delete(BulkItem),
}

impl BulkAction {
    fn item(&self) -> &BulkItem {
        match self {
            BulkAction::Create(i)
            | BulkAction::Index(i)
            | BulkAction::Update(i)
            | BulkAction::Delete(i) => i,
        }
    }
}

#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default, rename = "_id")]
    id: Option<String>,
    #[serde(default)]
    error: Option<EsError>,
}

/// Elasticsearch's error object (in a bulk item, and under `error` of an error response).
#[derive(Deserialize)]
struct EsError {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    caused_by: Option<Box<EsError>>,
}

impl EsError {
    /// `<type>: <reason>`, with ` (caused by <type>: <reason>)` when there is a cause.
    fn describe(&self) -> String {
        let head = |e: &EsError| match (&e.kind, &e.reason) {
            (Some(k), Some(r)) => format!("{k}: {r}"),
            (Some(k), None) => k.clone(),
            (None, Some(r)) => r.clone(),
            (None, None) => "unknown error".to_string(),
        };
        match &self.caused_by {
            Some(cause) => format!("{} (caused by {})", head(self), head(cause)),
            None => head(self),
        }
    }
}

/// A whole-request error body: `{"error":{..}|"text","status":N}`.
#[derive(Deserialize)]
struct ErrorResponse {
    error: ErrorBody,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorBody {
    Object(EsError),
    Text(String),
}

/// The response's meaning for `events`, and how many documents were already indexed (409).
/// `now` is for `Retry-After` dates.
pub(super) fn classify(
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
    events: &[SinkEvent],
    now: jiff::Timestamp,
) -> (Outcome, u64) {
    match status {
        200..=299 => read_bulk(body, events),
        408 | 429 | 500..=599 => (
            Outcome::Retry {
                reason: format!("http_{status}"),
                after: headers
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| crate::sink::parse_retry_after(v, now)),
            },
            0,
        ),
        _ => (
            Outcome::Reject {
                reason: reject_reason(status, body),
            },
            0,
        ),
    }
}

/// A 2xx bulk response, item by item. Never "all delivered" on the status alone: Elasticsearch
/// answers 200 when some or all documents failed.
fn read_bulk(body: &[u8], events: &[SinkEvent]) -> (Outcome, u64) {
    // Items answer the actions by position. A body that does not parse, or whose items do not
    // line up with the events (count or `_id`), cannot say which document fared how, so the
    // whole batch is sent again. That is safe: every action is a `create` with the event's
    // stable id, so documents already indexed come back as 409 (counted as delivered), never
    // as duplicates.
    let bad = || {
        (
            Outcome::Retry {
                reason: "bad_bulk_response".to_string(),
                after: None,
            },
            0,
        )
    };
    let Ok(resp) = serde_json::from_slice::<BulkResponse>(body) else {
        tracing::warn!(
            sink = "elasticsearch",
            "a 2xx answer to _bulk is not a bulk response"
        );
        return bad();
    };
    if resp.items.len() != events.len() {
        tracing::warn!(
            sink = "elasticsearch",
            items = resp.items.len(),
            events = events.len(),
            "the bulk response's item count differs from the request's"
        );
        return bad();
    }
    let mut retry = Vec::new();
    let mut dead = Vec::new();
    let mut conflicts = 0u64;
    for (i, (action, event)) in resp.items.iter().zip(events).enumerate() {
        let item = action.item();
        if item.id.as_deref().is_some_and(|id| id != event.id) {
            tracing::warn!(
                sink = "elasticsearch",
                position = i,
                "the bulk response's items do not match the request's ids"
            );
            return bad();
        }
        match item.status {
            200..=299 => {}
            // version_conflict_engine_exception: a `create` of an id already there.
            409 => conflicts += 1,
            429 | 500..=599 => retry.push(i),
            status => {
                let reason = item
                    .error
                    .as_ref()
                    .map_or_else(|| format!("http_{status}"), EsError::describe);
                dead.push((i, cut(&reason, MAX_ITEM_REASON_CHARS)));
            }
        }
    }
    let outcome = if retry.is_empty() && dead.is_empty() {
        Outcome::Delivered
    } else {
        Outcome::Partial { retry, dead }
    };
    (outcome, conflicts)
}

/// `http_<status>: <error.type>: <error.reason>` from Elasticsearch's error JSON, else
/// `http_<status>: <the first 200 characters of the body>`.
fn reject_reason(status: u16, body: &[u8]) -> String {
    if let Ok(e) = serde_json::from_slice::<ErrorResponse>(body) {
        let text = match e.error {
            ErrorBody::Object(err) => err.describe(),
            ErrorBody::Text(t) => t,
        };
        return format!("http_{status}: {}", cut(&text, MAX_ITEM_REASON_CHARS));
    }
    let text = String::from_utf8_lossy(body);
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.is_empty() {
        format!("http_{status}")
    } else {
        format!("http_{status}: {}", cut(&flat, MAX_BODY_REASON_CHARS))
    }
}

/// At most `max` characters of `s`.
fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => s[..at].to_string(),
        None => s.to_string(),
    }
}
