//! The Elasticsearch sink: every line to Elasticsearch's bulk API (`POST {endpoint}/_bulk`).
//!
//! # What is sent
//! One NDJSON bulk request per batch (`Content-Type: application/x-ndjson`, optionally gzip):
//! for each event an action line and the event as a document,
//!
//! ```text
//! {"create":{"_index":"logs-weir-2024.03.09","_id":"<event id>"}}
//! {...the line's own fields, nested objects kept..., "@timestamp":"...","level":"INFO","component":"...","message":"...","trace_id":"..."}
//! ```
//!
//! The document is [`SinkEvent::document`](crate::sink::SinkEvent::document): the line's JSON
//! object, the source's attributes, and the normalised fields, which replace same-named fields
//! of the line.
//!
//! # Where it goes
//! - `mode = "index"` (default): `index` is a name template whose strftime-style date parts
//!   (`%Y %y %m %d %H %j %G %V`) come from each event's *own* timestamp, in UTC, so a line
//!   read late still lands in its day's index. Checked at build time against Elasticsearch's
//!   index name rules (lowercase, no `\ / * ? " < > | , # :` or space, not starting with
//!   `-`, `_` or `+`, at most 255 bytes).
//! - `mode = "data_stream"`: `index` is the data stream's name, used verbatim (Elasticsearch
//!   rolls a data stream's backing indices itself, so date parts are refused). The data stream
//!   needs a matching index template with `data_stream` enabled; Elasticsearch 8's built-in
//!   `logs-*-*` template is one, and every document carries the `@timestamp` it requires.
//!
//! Note that the default index, `logs-weir-%Y.%m.%d`, also matches `logs-*-*`: on an
//! Elasticsearch with its built-in templates, each day becomes a data stream of its own. That
//! works (weir only ever writes with `create`), but a pipeline that wants plain daily indices
//! should name them outside `logs-*-*`.
//!
//! # Exactly once, despite resends
//! Every action is `create` with `_id` = the event's id, which is stable across resends. A
//! batch resent after a timeout (Elasticsearch may have indexed it and answered too late) gets
//! `409 version_conflict_engine_exception` for the documents already there; those count as
//! delivered, so a resend never makes a duplicate.
//!
//! # Responses
//! - The whole request: 408, 429 and 5xx are retried, honouring `Retry-After` (seconds or an
//!   HTTP date); any other non-2xx status dead-letters every event of the batch with
//!   `http_<status>: <error.type>: <error.reason>` from Elasticsearch's error JSON (else the
//!   first 200 characters of the body).
//! - A 2xx is *not* success for every document: the bulk response's `items` are read, always
//!   (whatever `errors` says), and match the events by position. Per item: 2xx is delivered,
//!   409 is already there (delivered; counted in [`ElasticsearchSink::conflicts`]), 429 and 5xx
//!   are sent again (only those documents), anything else (such as `400
//!   mapper_parsing_exception`) is dead-lettered with `<type>: <reason>`.
//! - A 2xx whose body is not a bulk response, or whose item count or ids do not match the
//!   request, is retried whole (`bad_bulk_response`): the ids make that safe.
//!
//! # Example
//! ```toml
//! [[sinks]]
//! type = "elasticsearch"
//! endpoint = "https://es.example.com:9200"
//! index = "weir-%Y.%m.%d"
//! compression = "gzip"
//! username = "weir"
//! password_env = "WEIR_ES_PASSWORD"
//! dead_letter_path = "/var/lib/weir/elasticsearch.dead.jsonl"
//!
//! [sinks.batch]
//! max_bytes = 5242880
//!
//! [sinks.request]
//! timeout_secs = 60
//! ```
//!
//! # Secrets
//! The password (`password_env`) or API key (`api_key_env`, sent as `Authorization: ApiKey
//! <value>`, the key's base64 "encoded" form) come from environment variables named in the
//! config, are read at build time and never logged: [`ElasticsearchSink`]'s `Debug` shows
//! `<redacted>`.

mod config;
mod sink;

pub use config::{ElasticsearchConfig, EsCompression, EsMode};
pub use sink::ElasticsearchSink;

#[cfg(test)]
mod tests;
