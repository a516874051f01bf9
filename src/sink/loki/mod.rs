//! The Loki sink: every line to Grafana Loki's push API (`POST {endpoint}/loki/api/v1/push`).
//!
//! # What is sent
//! Events are grouped into streams by their label set. Labels are few and low-cardinality
//! (`job`, `component`, `level`, container fields): Loki indexes them, and every distinct set is
//! a stream with its own chunks, so `trace_id` and `message` are refused as labels at build
//! time. The trace id travels as Loki 3 *structured metadata* instead (stored beside the line,
//! not indexed, still filterable). Each entry's line is the original line, unchanged.
//!
//! Two encodings, both from Loki's public API:
//! - `protobuf` (default): `logproto.PushRequest` from Loki's `push.proto`, written out in
//!   [`proto`] as prost structs with the same tags (no build script, no protoc), compressed with snappy's *block* format (as Promtail
//!   does; Loki does not accept the framed format), `Content-Type: application/x-protobuf`,
//!   `Content-Encoding: snappy`.
//! - `json`: `{"streams":[{"stream":{..labels},"values":[["<ns>","<line>",{..metadata}]]}]}`.
//!
//! # Order
//! Within a request, the entries of a stream are sorted by timestamp (stable: equal timestamps
//! keep their arrival order). Loki before 2.4, or with `unordered_writes = false`, rejects an
//! entry older than the newest one it holds for the stream; across requests, order is the
//! driver's (one request at a time per sink keeps it).
//!
//! # Responses
//! 2xx is delivered. 429 and 5xx (and 408) are retried, honouring `Retry-After` (seconds or an
//! HTTP date). Any other status is final: every event of the request is dead-lettered with the
//! reason `http_<status>: <first line of the body>` (such as `http_400: entry with timestamp ...
//! ignored, reason: 'entry out of order' ...`); the part before `: ` is a bounded label value.
//!
//! Loki may store part of a push and still answer 400 (it drops only the invalid entries: too
//! old, out of order, line too long). The response does not say which entries were kept, so the
//! driver dead-letters the whole request: a dead-lettered event may also be in Loki.
//!
//! # Secrets
//! Passwords and tokens come from environment variables named in the config, read at build time,
//! and are never logged: [`LokiSink`]'s `Debug` shows them as `<redacted>`.
//!
//! # Config
//! ```toml
//! [[sinks]]
//! type = "loki"
//! endpoint = "http://loki:3100"
//! labels = { job = "weir", component = "{{ component }}", level = "{{ level }}", namespace = "{{ namespace }}" }
//! structured_metadata = ["trace_id", "pod"]
//! tenant_id = "team-a"
//! basic_auth_user = "weir"
//! basic_auth_password_env = "LOKI_PASSWORD"
//! dead_letter_path = "/var/lib/weir/loki.dead.jsonl"
//! ```
//!
//! # Layout
//! - `config.rs`: [`LokiConfig`] and its checks (labels, metadata, auth); builds the sink.
//! - `sink.rs`: [`LokiSink`]: grouping into streams, both encodings, reading responses.
//! - [`proto`]: the push.proto messages. `tests.rs`: unit tests.

mod config;
pub mod proto;
mod sink;

pub use config::{LokiConfig, LokiEncoding};
pub use sink::LokiSink;

#[cfg(test)]
mod tests;
