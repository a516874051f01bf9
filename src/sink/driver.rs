//! Runs a sink: takes events from its buffer, batches them, sends, retries, dead-letters.
//!
//! Invariants: an event leaves the driver only as delivered, dead-lettered (with the reason, in
//! the dead-letter file), or — when weir is told to stop and the shutdown deadline passes — as
//! counted `dropped{reason="shutdown"}` (memory buffer; a disk buffer keeps them). Retries have
//! no count limit: a backend that is down makes the buffer fill, and a full buffer blocks the
//! processor (backpressure reaches the sources) or drops new events, counted, as configured.
//! Retry delays grow exponentially from `initial_backoff_ms` to `max_backoff_ms` with jitter;
//! a `Retry-After` from the backend is honoured (capped at `max_backoff_ms`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{BatchConfig, HttpSink, Outcome, RequestConfig, SinkEvent};
use crate::telemetry::SelfMetrics;

/// The `weir_sink_*` handles of one sink.
#[derive(Clone)]
pub struct SinkMetrics {
    pub events: IntCounter,
    pub bytes: IntCounter,
    pub batches: IntCounter,
    pub retries: IntCounterVec,
    pub errors: IntCounterVec,
    pub dead_lettered: IntCounterVec,
    pub dropped: IntCounterVec,
    pub buffer_events: IntGauge,
    pub latency: Histogram,
    name: String,
}

impl SinkMetrics {
    pub fn new(selfm: &SelfMetrics, name: &str) -> Self {
        SinkMetrics {
            events: selfm.sink_events.with_label_values(&[name]),
            bytes: selfm.sink_bytes.with_label_values(&[name]),
            batches: selfm.sink_batches.with_label_values(&[name]),
            retries: selfm.sink_retries.clone(),
            errors: selfm.sink_errors.clone(),
            dead_lettered: selfm.sink_dead_lettered.clone(),
            dropped: selfm.sink_dropped.clone(),
            buffer_events: selfm.sink_buffer_events.with_label_values(&[name]),
            latency: selfm.sink_latency.with_label_values(&[name]),
            name: name.to_string(),
        }
    }

    pub fn retry(&self, reason: &str) {
        self.retries.with_label_values(&[&self.name, reason]).inc();
    }
    pub fn error(&self, reason: &str) {
        self.errors.with_label_values(&[&self.name, reason]).inc();
    }
    pub fn dead(&self, reason: &str, n: usize) {
        self.dead_lettered
            .with_label_values(&[&self.name, reason])
            .inc_by(n as u64);
    }
    pub fn drop_events(&self, reason: &str, n: usize) {
        self.dropped
            .with_label_values(&[&self.name, reason])
            .inc_by(n as u64);
    }
}

/// Lines shown per reason in the end-of-run "lost" warning.
const LOST_SAMPLES: usize = 3;
/// Characters of a sample line in that warning.
const LOST_SAMPLE_CHARS: usize = 200;

/// Events of one sink that were rejected for good and kept nowhere (no `dead_letter_path`, or
/// its file could not be written), by reason: reported once, loudly, when the sink ends, so a
/// run that exits 0 still says what it lost.
#[derive(Default)]
struct Lost {
    events: u64,
    /// The first few lines, cut at [`LOST_SAMPLE_CHARS`].
    samples: Vec<String>,
}

/// Where events that can never be delivered go: one JSON object per line with the sink, the
/// reason, the event id and the original line.
pub struct DeadLetter {
    path: Option<PathBuf>,
    file: Option<std::fs::File>,
    sink: String,
    /// Rate limit of the "cannot write the dead-letter file" line.
    errors: crate::telemetry::LogLimit,
    /// What was lost, by reason (bounded: reasons are a short fixed set of labels).
    lost: std::collections::BTreeMap<String, Lost>,
}

impl DeadLetter {
    pub fn new(path: Option<PathBuf>, sink: &str) -> Self {
        DeadLetter {
            path,
            file: None,
            sink: sink.to_string(),
            errors: crate::telemetry::LogLimit::default(),
            lost: std::collections::BTreeMap::new(),
        }
    }

    /// Remembers `events` as lost for `why` (reason, and how it came to be lost).
    fn lose(&mut self, events: &[SinkEvent], why: String) {
        let lost = self.lost.entry(why).or_default();
        lost.events += events.len() as u64;
        for ev in events {
            if lost.samples.len() >= LOST_SAMPLES {
                break;
            }
            lost.samples
                .push(ev.line.chars().take(LOST_SAMPLE_CHARS).collect());
        }
    }

    /// Logs, once, a WARN per reason for the events lost so far (count, sink, reason, the
    /// first lines), and forgets them. Called when the sink ends (see [`Drop`]).
    pub fn report_lost(&mut self) {
        for (why, lost) in std::mem::take(&mut self.lost) {
            tracing::warn!(
                sink = %self.sink,
                events = lost.events,
                reason = %why,
                first_lines = ?lost.samples,
                "{} events rejected by sink {} were lost ({why}); set dead_letter_path to keep them",
                lost.events,
                self.sink
            );
        }
    }

    /// Writes `events` with `reason` (short, for the metric label) and `detail` (the backend's
    /// words). Counted whether or not a file is configured.
    pub fn write(&mut self, events: &[SinkEvent], reason: &str, detail: &str, m: &SinkMetrics) {
        m.dead(reason, events.len());
        let Some(path) = &self.path else {
            tracing::error!(sink = %self.sink, events = events.len(), reason, detail, "events rejected for good (no dead_letter_path: not kept)");
            self.lose(events, format!("{reason}, no dead_letter_path"));
            return;
        };
        if self.file.is_none() {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    self.failed(path.clone(), &e, events.len());
                    self.lose(events, format!("{reason}, dead-letter file not writable"));
                    return;
                }
            }
        }
        let mut out = Vec::new();
        let now = crate::event::format_rfc3339(
            jiff::Timestamp::now()
                .as_nanosecond()
                .try_into()
                .unwrap_or(0),
        );
        for ev in events {
            let rec = serde_json::json!({
                "sink": self.sink, "reason": reason, "detail": detail, "dead_lettered_at": now,
                "event_id": ev.id, "source": &*ev.source, "line": ev.line,
            });
            if serde_json::to_writer(&mut out, &rec).is_ok() {
                out.push(b'\n');
            }
        }
        if let Some(f) = &mut self.file {
            // A write that fails halfway is cut back, so the next record starts on its own line.
            let len = f.metadata().map(|m| m.len());
            if let Err(e) = f.write_all(&out).and_then(|()| f.sync_data()) {
                if let Ok(len) = len {
                    let _ = f.set_len(len);
                }
                let path = path.clone();
                self.failed(path, &e, events.len());
                self.lose(events, format!("{reason}, dead-letter file not writable"));
            }
        }
        tracing::warn!(sink = %self.sink, events = events.len(), reason, detail, "events dead-lettered");
    }

    /// Counts a failed dead-letter write; logs it, at most once a minute.
    fn failed(&mut self, path: PathBuf, e: &std::io::Error, events: usize) {
        let kind = crate::telemetry::io_error_kind(e);
        crate::telemetry::state_metrics()
            .disk_errors
            .with_label_values(&["dead_letter", kind])
            .inc();
        if let Some(suppressed) = self.errors.hit() {
            tracing::error!(path = %path.display(), error = %e, kind, events, suppressed, "cannot write the dead-letter file: these events are only counted");
        }
    }
}

impl Drop for DeadLetter {
    /// Every way a sink ends drops its dead letter: the loss report cannot be skipped.
    fn drop(&mut self) {
        self.report_lost();
    }
}

/// The delay before retry `attempt` (0-based): exponential with jitter, or the server's
/// `Retry-After`, both capped.
pub fn backoff(req: &RequestConfig, attempt: u32, after: Option<Duration>) -> Duration {
    let max = Duration::from_millis(req.max_backoff_ms.max(1));
    if let Some(a) = after {
        return a.min(max);
    }
    let base = req
        .initial_backoff_ms
        .max(1)
        .saturating_mul(1u64 << attempt.min(20));
    let jittered = (base as f64 * rand::rng().random_range(0.5..1.0)) as u64;
    Duration::from_millis(jittered).min(max)
}

/// Receives chunks of events from the processor (or the disk buffer).
pub type EventRx = mpsc::Receiver<Vec<SinkEvent>>;

/// Runs an HTTP sink until its input closes (then delivers what it holds) or `abandon` fires.
pub async fn run_http(
    sink: Arc<dyn HttpSink>,
    mut rx: EventRx,
    batch: BatchConfig,
    req: RequestConfig,
    mut dead: DeadLetter,
    m: SinkMetrics,
    abandon: CancellationToken,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(req.timeout_secs.max(1)))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build an HTTP client");
            return;
        }
    };
    let max_age = Duration::from_millis(batch.max_age_ms);
    let mut pending: Vec<SinkEvent> = Vec::new();
    let mut bytes = 0usize;
    let mut oldest: Option<Instant> = None;
    let mut open = true;
    while open || !pending.is_empty() {
        let deadline = oldest.map(|t| t + max_age);
        let full = bytes >= batch.max_bytes;
        let due = deadline.is_some_and(|d| Instant::now() >= d);
        if !pending.is_empty() && (full || due || !open) {
            let take = std::mem::take(&mut pending);
            bytes = 0;
            oldest = None;
            m.buffer_events.sub(take.len() as i64);
            if !deliver(&*sink, &client, take, &req, &mut dead, &m, &abandon).await {
                drain_abandoned(&mut rx, &m);
                return;
            }
            continue;
        }
        tokio::select! {
            chunk = rx.recv(), if open => match chunk {
                Some(chunk) => {
                    oldest.get_or_insert_with(Instant::now);
                    bytes += chunk.iter().map(SinkEvent::size).sum::<usize>();
                    pending.extend(chunk);
                }
                None => open = false,
            },
            _ = sleep_until(deadline) => {}
            _ = abandon.cancelled() => {
                m.drop_events("shutdown", pending.len());
                m.buffer_events.sub(pending.len() as i64);
                drain_abandoned(&mut rx, &m);
                return;
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Drops what is still queued for an abandoned sink, and says how much it lost in all (what it
/// held, in flight and queued): the run must not end quietly with lines undelivered.
fn drain_abandoned(rx: &mut EventRx, m: &SinkMetrics) {
    rx.close();
    while let Ok(chunk) = rx.try_recv() {
        m.drop_events("shutdown", chunk.len());
        m.buffer_events.sub(chunk.len() as i64);
    }
    let lost = m.dropped.with_label_values(&[&m.name, "shutdown"]).get();
    if lost > 0 {
        tracing::warn!(
            sink = %m.name,
            events = lost,
            "sink abandoned (shutdown deadline passed): {lost} events not delivered \
             (weir_sink_dropped_total{{reason=\"shutdown\"}}; a disk buffer keeps them)"
        );
    }
}

/// Delivers one batch, retrying what may succeed later. `false` if abandoned on shutdown.
async fn deliver(
    sink: &dyn HttpSink,
    client: &reqwest::Client,
    mut events: Vec<SinkEvent>,
    req: &RequestConfig,
    dead: &mut DeadLetter,
    m: &SinkMetrics,
    abandon: &CancellationToken,
) -> bool {
    let mut attempt = 0u32;
    while !events.is_empty() {
        let request = match sink.encode(&events) {
            Ok(r) => r,
            Err(e) => {
                m.error("encode");
                dead.write(&events, "encode", &e, m);
                return true;
            }
        };
        let body_len = request.body.len();
        let mut builder = client.post(&request.url).body(request.body);
        for (k, v) in &request.headers {
            builder = builder.header(k, v);
        }
        let started = Instant::now();
        let sent = tokio::select! {
            r = builder.send() => r,
            _ = abandon.cancelled() => {
                m.drop_events("shutdown", events.len());
                return false;
            }
        };
        let outcome = match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                match resp.bytes().await {
                    Ok(body) => sink.outcome(status, &headers, &body, &events),
                    Err(e) => Outcome::Retry {
                        reason: if e.is_timeout() {
                            "timeout"
                        } else {
                            "connection"
                        }
                        .into(),
                        after: None,
                    },
                }
            }
            Err(e) => Outcome::Retry {
                reason: if e.is_timeout() {
                    "timeout"
                } else {
                    "connection"
                }
                .into(),
                after: None,
            },
        };
        m.latency.observe(started.elapsed().as_secs_f64());
        m.batches.inc();
        match outcome {
            Outcome::Delivered => {
                m.events.inc_by(events.len() as u64);
                m.bytes.inc_by(body_len as u64);
                return true;
            }
            Outcome::Reject { reason } => {
                m.error("rejected");
                dead.write(&events, "rejected", &reason, m);
                return true;
            }
            Outcome::Retry { reason, after } => {
                m.error(&reason);
                m.retry(&reason);
                tracing::warn!(
                    sink = sink.kind(),
                    reason,
                    attempt,
                    events = events.len(),
                    "send failed; retrying"
                );
                if !wait(backoff(req, attempt, after), abandon).await {
                    m.drop_events("shutdown", events.len());
                    return false;
                }
                attempt += 1;
            }
            Outcome::Partial {
                retry,
                dead: failed,
            } => {
                let mut keep = vec![0u8; events.len()]; // 0 delivered, 1 retry, 2 dead
                for i in &retry {
                    if let Some(k) = keep.get_mut(*i) {
                        *k = 1;
                    }
                }
                let mut dead_events: Vec<(SinkEvent, String)> = Vec::new();
                let mut reasons = std::collections::HashMap::new();
                for (i, r) in failed {
                    if let Some(k) = keep.get_mut(i) {
                        *k = 2;
                        reasons.insert(i, r);
                    }
                }
                let mut next = Vec::new();
                let mut delivered = 0u64;
                for (i, ev) in events.into_iter().enumerate() {
                    match keep[i] {
                        1 => next.push(ev),
                        2 => dead_events.push((ev, reasons.remove(&i).unwrap_or_default())),
                        _ => delivered += 1, // dropped here: its ack reference goes with it
                    }
                }
                m.events.inc_by(delivered);
                for (ev, reason) in dead_events {
                    m.error("rejected_item");
                    dead.write(std::slice::from_ref(&ev), "rejected_item", &reason, m);
                }
                events = next;
                if !events.is_empty() {
                    m.retry("partial");
                    if !wait(backoff(req, attempt, None), abandon).await {
                        m.drop_events("shutdown", events.len());
                        return false;
                    }
                    attempt += 1;
                }
            }
        }
    }
    true
}

async fn wait(d: Duration, abandon: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = abandon.cancelled() => false,
    }
}

/// A sink that writes lines to a stream: stdout (passthrough) or a file.
pub async fn run_writer(
    mut out: Box<dyn Write + Send>,
    mut rx: EventRx,
    m: SinkMetrics,
    flush_each_chunk: bool,
) {
    let mut buf = Vec::with_capacity(256 * 1024);
    while let Some(chunk) = rx.recv().await {
        buf.clear();
        for ev in &chunk {
            buf.extend_from_slice(ev.line.as_bytes());
            buf.push(b'\n');
        }
        let r = out.write_all(&buf).and_then(|()| {
            if flush_each_chunk {
                out.flush()
            } else {
                Ok(())
            }
        });
        m.buffer_events.sub(chunk.len() as i64);
        match r {
            Ok(()) => {
                m.events.inc_by(chunk.len() as u64);
                m.bytes.inc_by(buf.len() as u64);
                m.batches.inc();
            }
            Err(e) => {
                // A closed stdout (`| head`) ends passthrough; the events count as dropped.
                m.error("write");
                m.drop_events("write_error", chunk.len());
                tracing::warn!(error = %e, "sink output failed; its events are dropped from now on");
                while let Some(c) = rx.recv().await {
                    m.buffer_events.sub(c.len() as i64);
                    m.drop_events("write_error", c.len());
                }
                return;
            }
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let req = RequestConfig {
            timeout_secs: 1,
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
        };
        let d0 = backoff(&req, 0, None);
        assert!(
            d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100),
            "{d0:?}"
        );
        let d3 = backoff(&req, 3, None);
        assert!(
            d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800),
            "{d3:?}"
        );
        assert!(backoff(&req, 30, None) <= Duration::from_millis(1000));
        assert_eq!(
            backoff(&req, 0, Some(Duration::from_secs(2))),
            Duration::from_millis(1000)
        );
        assert_eq!(
            backoff(&req, 5, Some(Duration::from_millis(300))),
            Duration::from_millis(300)
        );
    }
}
