//! The runtime sink: events to streams, streams to a push body (protobuf or JSON), a
//! response to an [`Outcome`].

use std::borrow::Cow;
use std::collections::BTreeMap;

use prost::Message as _;

use super::config::{LabelValue, LokiEncoding, Secret};
use super::proto;
use crate::sink::{HttpSink, Outcome, Request, SinkEvent};

/// Longest reason taken from a response body, in characters.
const MAX_REASON_CHARS: usize = 200;

/// The built sink: encodes batches as Loki push requests and reads Loki's answers. Its `Debug`
/// shows no secret: `auth` is a [`Secret`], the URL's userinfo is redacted.
#[derive(Clone)]
pub struct LokiSink {
    pub(super) url: String,
    pub(super) encoding: LokiEncoding,
    /// Sorted by name (from the config's `BTreeMap`), so rendered label sets are stable.
    pub(super) labels: Vec<(String, LabelValue)>,
    pub(super) metadata: Vec<String>,
    /// Content type and encoding, tenant.
    pub(super) headers: Vec<(String, String)>,
    /// The whole `Authorization` value.
    pub(super) auth: Option<Secret>,
}

impl std::fmt::Debug for LokiSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LokiSink")
            .field("url", &crate::redact::urls(&self.url))
            .field("encoding", &self.encoding)
            .field("labels", &self.labels)
            .field("metadata", &self.metadata)
            .field("headers", &self.headers)
            .field("auth", &self.auth)
            .finish()
    }
}

/// One stream of a request: its labels and its events, sorted by timestamp.
struct Stream<'a> {
    labels: Vec<(&'a str, Cow<'a, str>)>,
    events: Vec<&'a SinkEvent>,
}

impl LokiSink {
    /// The label pairs of an event, sorted by name, without those whose field it lacks.
    pub(super) fn labels_of<'a>(&'a self, event: &'a SinkEvent) -> Vec<(&'a str, Cow<'a, str>)> {
        let mut out = Vec::with_capacity(self.labels.len());
        for (name, value) in &self.labels {
            let v: Option<Cow<'a, str>> = match value {
                LabelValue::Static(s) => Some(Cow::Borrowed(s.as_str())),
                LabelValue::Component => event.component.as_deref().map(Cow::Borrowed),
                LabelValue::Level => Some(Cow::Borrowed(event.level.as_str())),
                LabelValue::Source => Some(Cow::Borrowed(&*event.source)),
                LabelValue::Attr(a) => attr(event, a).map(Cow::Borrowed),
            };
            // Loki drops empty labels; leaving them out keeps our stream key equal to Loki's.
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                out.push((name.as_str(), v));
            }
        }
        out
    }

    /// The structured metadata of an event (names as configured, empty values left out).
    fn metadata_of<'a>(&'a self, event: &'a SinkEvent) -> Vec<(&'a str, &'a str)> {
        self.metadata
            .iter()
            .filter_map(|name| {
                let v = if name == "trace_id" {
                    Some(event.trace_id.as_str())
                } else {
                    attr(event, name)
                };
                v.filter(|v| !v.is_empty()).map(|v| (name.as_str(), v))
            })
            .collect()
    }

    /// Groups events into streams keyed by their rendered label set (sorted, so the order of
    /// streams in a request is stable), each stream's events sorted by timestamp.
    fn streams<'a>(&'a self, events: &'a [SinkEvent]) -> BTreeMap<String, Stream<'a>> {
        let mut streams: BTreeMap<String, Stream<'a>> = BTreeMap::new();
        for event in events {
            let labels = self.labels_of(event);
            let key = render_labels(labels.iter().map(|(k, v)| (*k, v.as_ref())));
            streams
                .entry(key)
                .or_insert_with(|| Stream {
                    labels,
                    events: Vec::new(),
                })
                .events
                .push(event);
        }
        for s in streams.values_mut() {
            // Stable: equal timestamps keep their arrival order.
            s.events.sort_by_key(|e| e.timestamp);
        }
        streams
    }

    fn encode_protobuf(&self, events: &[SinkEvent]) -> Result<Vec<u8>, String> {
        let streams = self
            .streams(events)
            .into_iter()
            .map(|(labels, s)| proto::StreamAdapter {
                labels,
                entries: s
                    .events
                    .iter()
                    .map(|e| proto::EntryAdapter {
                        timestamp: Some(proto::Timestamp::from_nanos(e.timestamp)),
                        line: e.line.clone(),
                        structured_metadata: self
                            .metadata_of(e)
                            .into_iter()
                            .map(|(name, value)| proto::LabelPairAdapter {
                                name: name.to_string(),
                                value: value.to_string(),
                            })
                            .collect(),
                    })
                    .collect(),
                hash: 0,
            })
            .collect();
        let raw = proto::PushRequest { streams }.encode_to_vec();
        snap::raw::Encoder::new()
            .compress_vec(&raw)
            .map_err(|e| format!("snappy compression failed: {e}"))
    }

    fn encode_json(&self, events: &[SinkEvent]) -> Result<Vec<u8>, String> {
        use serde_json::{Map, Value};
        let streams: Vec<Value> = self
            .streams(events)
            .into_values()
            .map(|s| {
                let stream: Map<String, Value> = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                    .collect();
                let values: Vec<Value> = s
                    .events
                    .iter()
                    .map(|e| {
                        let mut entry = vec![
                            Value::String(e.timestamp.to_string()),
                            Value::String(e.line.clone()),
                        ];
                        let md = self.metadata_of(e);
                        if !md.is_empty() {
                            entry.push(Value::Object(
                                md.into_iter()
                                    .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                                    .collect(),
                            ));
                        }
                        Value::Array(entry)
                    })
                    .collect();
                serde_json::json!({ "stream": stream, "values": values })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({ "streams": streams }))
            .map_err(|e| format!("JSON encoding failed: {e}"))
    }
}

impl HttpSink for LokiSink {
    fn kind(&self) -> &'static str {
        "loki"
    }

    fn encode(&self, events: &[SinkEvent]) -> Result<Request, String> {
        let body = match self.encoding {
            LokiEncoding::Protobuf => self.encode_protobuf(events)?,
            LokiEncoding::Json => self.encode_json(events)?,
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
        _events: &[SinkEvent],
    ) -> Outcome {
        classify(status, headers, body, jiff::Timestamp::now())
    }
}

/// The response's meaning; `now` is for `Retry-After` dates.
pub(super) fn classify(
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
    now: jiff::Timestamp,
) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        408 | 429 | 500..=599 => Outcome::Retry {
            reason: format!("http_{status}"),
            after: headers
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| crate::sink::parse_retry_after(v, now)),
        },
        _ => Outcome::Reject {
            reason: reject_reason(status, body),
        },
    }
}

/// `http_<status>: <first non-empty line of the body>` (at most 200 characters of it).
fn reject_reason(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty());
    match line {
        None => format!("http_{status}"),
        Some(line) => {
            let cut: String = line.chars().take(MAX_REASON_CHARS).collect();
            format!("http_{status}: {}", cut.trim_end())
        }
    }
}

/// The value of a source attribute of an event.
fn attr<'a>(event: &'a SinkEvent, name: &str) -> Option<&'a str> {
    event
        .attrs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A label set as Loki writes it: `{a="b", c="d"}`, values quoted with `\`, `"` and newline
/// escaped (Loki parses the string as a PromQL/LogQL selector). Pairs must come sorted.
pub(super) fn render_labels<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::from("{");
    for (i, (name, value)) in pairs.enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}
