//! The OTLP sink: spans and log records to an OpenTelemetry receiver over OTLP/HTTP
//! (protobuf), such as the OpenTelemetry Collector, Grafana Tempo (traces), Jaeger (traces) or
//! Loki 3 (logs).
//!
//! # What is sent
//! - **traces** (`POST {endpoint}/v1/traces`, an `ExportTraceServiceRequest`): the spans the
//!   pipeline's `[[spans]]` derive ([`crate::derive::span`]): trace id (16 bytes) from the
//!   event's trace_id, span id (8 bytes), parent, name, kind, start and end times, attributes,
//!   status.
//! - **logs** (`POST {endpoint}/v1/logs`, an `ExportLogsServiceRequest`): every line as a log
//!   record: body = the event's message (a string), `severity_number`/`severity_text` from the
//!   level (TRACE 1, DEBUG 5, INFO 9, NOTICE 10, WARNING 13, ERROR 17, CRITICAL 21, unknown 0),
//!   `time_unix_nano` = the event's time, `observed_time_unix_nano` = when weir read it,
//!   `trace_id` as for spans (and `span_id` of the span the event ends), attributes = the
//!   line's other fields flattened with typed values (`metadata.agent_id`, `metadata.duration`
//!   as a double), `component`, the continuation lines of a joined event as
//!   `exception.stacktrace`, and the source's attributes (`pod`, `stream`). Lines of a text
//!   parser (logfmt, regex) carry only `component` and the source's attributes.
//!
//! Both share one resource (`service.name` = `service_name`, default `weir`, plus `resource`)
//! and one scope (`weir`, its version). The messages are the official ones
//! (`opentelemetry-proto`, prost), so field numbers and types are the spec's: ids as bytes of
//! 16 and 8, times as fixed64 nanoseconds. `Content-Type: application/x-protobuf`, optionally
//! `Content-Encoding: gzip`.
//!
//! # How spans reach the sink
//! A span is derived in the processor, from the event that ends it, and rides on that event
//! ([`SinkEvent::span`](crate::sink::SinkEvent::span)): no second stream, no second
//! acknowledgement. The sink's buffer (memory or disk: the span is stored with its event)
//! feeds a small splitter that hands the events with a span to the traces driver and every
//! event to the logs driver; each is the shared [`driver`](crate::sink::driver) (batching,
//! retries with backoff, dead letters). An event's acknowledgement is shared by both, so a
//! file checkpoint advances only once the line's log record *and* its span are delivered (or
//! dead-lettered). The signals retry independently: a traces endpoint that is down does not
//! resend logs; but once its driver's channel is full the splitter waits, so the logs wait
//! too (backpressure, as for any sink; with a disk buffer the events wait on disk).
//!
//! Why not one driver: the HTTP driver sends one request per batch to one URL, and OTLP wants
//! traces and logs at two paths, each answered (and retried) on its own. Riding on the event
//! keeps the processor, the fan-out, the disk buffer and the acknowledgements as they are; the
//! cost is a clone of each event that ends a span (for the traces driver).
//!
//! # Responses (the OTLP/HTTP specification)
//! - 2xx is delivered. A body with `partial_success` (rejected spans or records, a message) is
//!   logged (at most once a minute) and its rejected count added to
//!   `weir_sink_dropped_total{sink="NAME/SIGNAL",reason="partial_success"}`: the spec says
//!   not to retry them, and the response does not say which ones.
//! - 429, 502, 503, 504 are retried, honouring `Retry-After`; so are connection errors and
//!   timeouts.
//! - Any other status is final ("MUST NOT be retried"): 400 (and 500, 401, 413...) dead-letter
//!   every event of the request, with the `google.rpc.Status` message as detail.
//!
//! # Metrics
//! The sink's buffer is `weir_sink_buffer_events{sink="NAME"}`; each signal's delivery is
//! counted under `sink="NAME/traces"` and `sink="NAME/logs"` (`weir_sink_events_total` counts
//! spans and log records delivered).
//!
//! # Secrets
//! Header values from `headers_env` and `bearer_token_env` are read at start from the
//! environment and never logged; [`OtlpSink`]'s `Debug` shows their names only.
//!
//! # Config
//! ```toml
//! [[sinks]]
//! type = "otlp"
//! endpoint = "http://collector:4318"
//! signals = ["traces", "logs"]
//! service_name = "agents"
//! resource = { "deployment.environment" = "prod" }
//! compression = "gzip"
//! headers_env = { "x-api-key" = "OTLP_API_KEY" }
//! ```
//!
//! # Layout
//! - `config.rs`: [`OtlpConfig`] and its checks; builds the sinks.
//! - `sink.rs`: [`OtlpSink`]: encoding of spans and log records, reading responses.
//! - `tests.rs`: unit tests (wire format decoded with the same proto types).

mod config;
mod sink;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use config::{OtlpCompression, OtlpConfig, OtlpSinks};
pub use sink::{severity, OtlpSink, Signal};

use super::driver::{self, EventRx, SinkMetrics};
use super::SinkEvent;

#[cfg(test)]
mod tests;

/// `path` with `-traces` before its extension: where rejected spans go beside the log records.
fn traces_path(path: &std::path::Path) -> std::path::PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-traces.{}", ext.to_string_lossy()),
        None => format!("{stem}-traces"),
    };
    path.with_file_name(name)
}

/// One signal's driver: its channel and metrics.
struct Lane {
    tx: mpsc::Sender<Vec<SinkEvent>>,
    metrics: SinkMetrics,
}

impl Lane {
    /// Hands `events` to the driver; `false` once it is gone (abandoned).
    async fn send(&self, events: Vec<SinkEvent>) -> bool {
        let n = events.len() as i64;
        self.metrics.buffer_events.add(n);
        if self.tx.send(events).await.is_err() {
            self.metrics.buffer_events.sub(n);
            return false;
        }
        true
    }
}

/// Starts the drivers of the signals `sinks` holds and the splitter that feeds them from `rx`;
/// the returned task ends when all of them have.
#[allow(clippy::too_many_arguments)]
pub(super) fn spawn(
    sinks: OtlpSinks,
    rx: EventRx,
    cfg: &OtlpConfig,
    name: &str,
    selfm: &crate::telemetry::SelfMetrics,
    data_dir: Option<&std::path::Path>,
    base: SinkMetrics,
    abandon: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let capacity = (cfg.buffer.max_events / super::CHUNK).max(2);
    let logs_dead = super::dead_letter_path(cfg.dead_letter_path.as_ref(), data_dir, name);
    let mut tasks = Vec::new();
    let mut lane = |sink: Option<OtlpSink>, dead: Option<std::path::PathBuf>| {
        let sink = sink?;
        let label = format!("{name}/{}", sink.signal.as_str());
        let metrics = SinkMetrics::new(selfm, &label);
        let (tx, rx) = mpsc::channel(capacity);
        tasks.push(tokio::spawn(driver::run_http(
            Arc::new(sink.with_metrics(metrics.clone())),
            rx,
            cfg.batch.clone(),
            cfg.request.clone(),
            driver::DeadLetter::new(dead, &label),
            metrics.clone(),
            abandon.clone(),
        )));
        Some(Lane { tx, metrics })
    };
    let traces = lane(sinks.traces, logs_dead.as_deref().map(traces_path));
    let logs = lane(sinks.logs, logs_dead);
    tokio::spawn(async move {
        split(rx, traces, logs, base, abandon).await;
        for t in tasks {
            let _ = t.await;
        }
    })
}

/// Feeds the events with a span to `traces` and every event to `logs`, until `rx` closes
/// (then the drivers' inputs close and they deliver what they hold) or the sink is abandoned.
async fn split(
    mut rx: EventRx,
    traces: Option<Lane>,
    logs: Option<Lane>,
    base: SinkMetrics,
    abandon: CancellationToken,
) {
    loop {
        let chunk = tokio::select! {
            c = rx.recv() => c,
            _ = abandon.cancelled() => None,
        };
        let Some(chunk) = chunk else { break };
        let n = chunk.len();
        base.buffer_events.sub(n as i64);
        if let Some(t) = &traces {
            let spans: Vec<SinkEvent> =
                chunk.iter().filter(|e| e.span.is_some()).cloned().collect();
            let k = spans.len();
            if k > 0 && !t.send(spans).await {
                base.drop_events("shutdown", k);
            }
        }
        if let Some(l) = &logs {
            if !l.send(chunk).await {
                base.drop_events("shutdown", n);
            }
        }
    }
    if abandon.is_cancelled() {
        // As the driver does when abandoned: what is still queued is counted, not sent.
        rx.close();
        while let Ok(chunk) = rx.try_recv() {
            base.drop_events("shutdown", chunk.len());
            base.buffer_events.sub(chunk.len() as i64);
        }
    }
}
