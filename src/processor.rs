//! The hot path: every batch parsed, then derived, in the order its source read it.
//!
//! ```text
//!                 dispatch              parse workers (N threads)          derive (one thread)
//! sources ──▶ batch k goes to ──▶ worker k % N: lines → events, ──▶ takes batch k from ──▶ metrics,
//!  (bounded)  worker k % N          the sinks' events, the tally     worker k % N        alerts, spans,
//!                                                                                        sinks
//! ```
//!
//! Parsing is most of the work and each line parses on its own, so it runs on every core;
//! deriving keeps state across lines (gauges' last value, paired durations, alert windows on
//! event time, span pairing) and stays on one thread, which sees the events in exactly the
//! order of a single-threaded run.
//!
//! How order is kept: the dispatcher hands out the batches (and reloads, in-band) round robin,
//! batch k to worker k mod N, and the derive thread takes them back round robin, from worker
//! k mod N, so it receives batch k+1 only after batch k whichever worker finishes first. A
//! reload travels the same way: batches read before it are parsed with the old parser and
//! derived with the old deriver, batches after it with the new ones. Acknowledgements (file
//! checkpoints) are made per batch and released by the sinks, which receive the batches in
//! that same order; `--stdout` is such a sink. Every channel holds one item, so memory is
//! bounded (N workers hold at most 3 batches each) and a slow sink pushes back on the
//! sources. No lock is shared: each worker owns its batch until it hands it on.
//!
//! A parsed batch carries its events together with the lines they borrow from
//! ([`ParsedBatch`], a `self_cell`) and with the arena that holds the few lines parsing rebuilt
//! (invalid UTF-8 replaced, unescaped messages repaired), so nothing is copied between the
//! stages.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bumpalo::Bump;
use prometheus::IntCounter;
use tokio::sync::mpsc;
use xxhash_rust::xxh3::xxh3_128;

use crate::alert::engine::{Clock, Engine};
use crate::derive::Deriver;
use crate::event::{Event, ParseIssue, TimestampNs};
use crate::parse::report::{self, BatchTally, LiveWarnings, ParseReport};
use crate::parse::{line_text, LineParser};
use crate::reload::{self, Reload};
use crate::sink::{self, AckToken, SinkEvent, SinkInput};
use crate::source::LineBatch;
use crate::tap::TapHub;
use crate::telemetry::SelfMetrics;

/// How often idle series are expired and the events/s gauge updated.
const TICK: Duration = Duration::from_secs(2);

/// A batch and the arena for the lines its parse rebuilt: what a [`ParsedBatch`] borrows from.
pub struct BatchOwner {
    pub batch: LineBatch,
    bump: Bump,
}

/// The parse of one batch.
pub struct Parsed<'a> {
    /// One per line of the batch, in order.
    pub events: Vec<Event<'a>>,
    /// The batch's parse problems.
    pub tally: BatchTally,
    /// When the batch arrived ([`Arrival`]): the timestamp of its lines without one.
    pub received: TimestampNs,
    /// The sinks' events (without their spans, which the derive stage adds), when the
    /// pipeline had sinks as the batch was parsed.
    pub sink_events: Option<Vec<SinkEvent>>,
}

self_cell::self_cell!(
    /// A batch with its parsed events, which borrow from its lines: sent from a parse worker
    /// to the derive thread as one value.
    pub struct ParsedBatch {
        owner: BatchOwner,
        #[covariant]
        dependent: Parsed,
    }
);

/// Where a batch stands in its run, given by the one thread that sees the batches in order
/// (the dispatcher, or [`Processor::process`]): never by a parse worker, whose clock readings
/// are not in batch order (two workers parse at once), so that arrival times, which become
/// the timestamps of lines without one, never go back from one batch to the next (Loki
/// refuses a stream's lines out of order).
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// When the batch arrived, nanoseconds since the epoch.
    pub received: TimestampNs,
    /// The number of the batch's first line in the run.
    pub seq: u64,
}

/// Nanoseconds since the epoch, now.
fn now_ns() -> TimestampNs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Parses every line of `batch` (with the parser of its source). `received` is the batch's
/// arrival time (the timestamp of its lines that have none); `seq` numbers the batch's first
/// line for the ids of lines without a file position; with `want_events` the sinks' events
/// are built too, here on the worker rather than on the derive thread.
pub fn parse_batch<'a>(
    parser: &LineParser,
    batch: &'a LineBatch,
    bump: &'a Bump,
    at: Arrival,
    want_events: bool,
) -> Parsed<'a> {
    let Arrival { received, seq } = at;
    let mut tally = BatchTally::default();
    // A source with a `parser` of its own: looked up once per batch, not per line.
    let parser = parser.for_source(&batch.source);
    let mut events = Vec::with_capacity(batch.lines.len());
    for (at, span) in (0u32..).zip(&batch.lines) {
        let (bytes, truncated) = (batch.line(span), span.truncated);
        let mut issue = |i: ParseIssue| tally.issue(i, at);
        if truncated {
            issue(ParseIssue::Truncated);
        }
        let text: &'a str = match line_text(bytes, truncated, &mut issue) {
            std::borrow::Cow::Borrowed(s) => s,
            std::borrow::Cow::Owned(s) => bump.alloc_str(&s),
        };
        let ev = parser.parse_line(text, bump, batch.attrs_of(span), received, &mut issue);
        tally.line(ev.parsed, at);
        events.push(ev);
    }
    let sink_events = want_events.then(|| build_sink_events(batch, &events, received, seq));
    // Lines read: several make one event where multi-line joining put them together.
    tally.lines = batch.lines.len() as u64 + batch.joined_lines;
    Parsed {
        events,
        tally,
        received,
        sink_events,
    }
}

/// The sinks' events of a parsed batch, each holding the batch's acknowledgement.
fn build_sink_events(
    batch: &LineBatch,
    events: &[Event<'_>],
    received: TimestampNs,
    seq: u64,
) -> Vec<SinkEvent> {
    let ack = batch
        .ack
        .clone()
        .map(|a| AckToken::new(move || a.acknowledge()));
    let mut out = Vec::with_capacity(events.len());
    for ((span, ev), n) in batch.lines.iter().zip(events).zip(seq..) {
        let id = match batch.origin {
            // A file line: its identity is its place in the file, stable across restarts.
            Some((stream, base)) if !span.truncated => {
                let mut key = [0u8; 16];
                key[..8].copy_from_slice(&stream.to_le_bytes());
                key[8..].copy_from_slice(&(base + u64::from(span.start)).to_le_bytes());
                xxh3_128(&key)
            }
            _ => {
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                h.update(batch.source.as_bytes());
                h.update(&n.to_le_bytes());
                h.update(batch.line(span));
                h.digest128()
            }
        };
        out.push(SinkEvent {
            id: format!("{id:032x}"),
            // The repaired text where an unescaped message was fixed.
            line: ev.line.to_string(),
            timestamp: ev.timestamp,
            level: ev.level,
            component: ev.component.as_deref().map(str::to_string),
            message: ev.message.to_string(),
            trace_id: ev.trace_id.to_string(),
            is_json: ev.is_json,
            attrs: batch
                .attrs_of(span)
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            source: batch.source.clone(),
            ack: ack.clone(),
            received,
            span: None,
        });
    }
    out
}

/// Derive, one batch at a time (and, for tests and `weir test`, parse too: [`Processor::process`]).
pub struct Processor {
    parser: Arc<LineParser>,
    deriver: Deriver,
    selfm: SelfMetrics,
    issues: Vec<IntCounter>,
    started: Instant,
    /// Where events go besides the metrics; empty: no event is built.
    sinks: Vec<SinkInput>,
    /// Arrival sequence, for the ids of lines that have no file position.
    seq: u64,
    /// Alert rules (possibly none); `None` only before `with_alerts`.
    alerts: Option<Engine>,
    /// The registry `/metrics` serves, where a reload swaps changed metrics.
    live: Option<crate::derive::live::Live>,
    /// `weir tap` subscriptions, offered every batch.
    tap: Option<Arc<TapHub>>,
    /// The run's parse problems, for the `--oneshot` summary (see [`crate::parse::report`]).
    report: Arc<ParseReport>,
    /// A live run's warnings: a reason's first appearance, then a summary per period.
    warnings: LiveWarnings,
    /// Whether the parse workers build the sinks' events (there are sinks).
    want_events: Arc<AtomicBool>,
}

impl Processor {
    pub fn new(parser: LineParser, deriver: Deriver, selfm: SelfMetrics) -> Self {
        Processor {
            issues: selfm.parse_issue_counters(),
            parser: Arc::new(parser),
            deriver,
            selfm,
            started: Instant::now(),
            sinks: Vec::new(),
            seq: 0,
            alerts: None,
            live: None,
            tap: None,
            report: Arc::default(),
            warnings: LiveWarnings::new(report::WARN_EVERY),
            want_events: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Adds every batch's parse problems to `report` (the run's totals).
    pub fn with_report(mut self, report: Arc<ParseReport>) -> Self {
        self.report = report;
        self
    }

    /// Offers every batch to these `weir tap` subscriptions.
    pub fn with_tap(mut self, tap: Arc<TapHub>) -> Self {
        self.tap = Some(tap);
        self
    }

    /// Evaluates these alert rules (their windows are in the deriver's feed).
    pub fn with_alerts(mut self, engine: Engine) -> Self {
        self.alerts = Some(engine);
        self
    }

    /// The registry the derived metrics are served from (for reloads).
    pub fn with_registry(mut self, live: crate::derive::live::Live) -> Self {
        self.live = Some(live);
        self
    }

    /// Sends every event to these sinks too (fan-out).
    pub fn with_sinks(mut self, sinks: Vec<SinkInput>) -> Self {
        self.sinks = sinks;
        self.want_events
            .store(!self.sinks.is_empty(), Ordering::Relaxed);
        self
    }

    /// Switches to a reloaded pipeline between two batches; see [`crate::reload`]. With a sink
    /// swap, it lets go of the closed sinks' inputs, then waits for the new ones (the reload
    /// starts a disk-buffered sink only once its predecessor has let go of the buffer); the
    /// sources wait meanwhile, as for a full buffer.
    pub async fn reload(&mut self, r: Reload) {
        let Reload {
            parser,
            mut deriver,
            mut engine,
            event,
            sinks,
            dispatch,
            done,
        } = r;
        if let Some(swap) = sinks {
            self.sinks.retain(|s| !swap.close.contains(&s.name));
            let _ = swap.closed.send(());
            if let Ok(started) = swap.start.await {
                self.sinks.extend(started);
            }
            self.want_events
                .store(!self.sinks.is_empty(), Ordering::Relaxed);
        }
        if let Some(t) = &self.tap {
            t.set_event(event);
        }
        if let Some(old) = self.alerts.take() {
            engine.take_over(old, &self.deriver.feed, &mut deriver.feed);
        }
        if let Some(d) = dispatch {
            engine.set_dispatch(d);
        }
        let rules = engine.rules().len();
        let old = std::mem::replace(&mut self.deriver, deriver);
        let live = self
            .live
            .clone()
            .unwrap_or_else(|| crate::derive::live::Live::new(prometheus::Registry::new()));
        let (kept, changed, removed) = self.deriver.take_over(old, &live);
        self.parser = parser;
        self.alerts = Some(engine);
        let _ = done.send(reload::Summary {
            kept,
            changed,
            removed,
            rules,
        });
    }

    /// The alert engine, once processing is over (for a backfill's report).
    pub fn into_alerts(self) -> Option<Engine> {
        self.alerts
    }

    /// Input ended: a backfill evaluates its last second; live state is saved.
    pub fn finish_alerts(&mut self) {
        if let Some(a) = &mut self.alerts {
            match a.clock() {
                Clock::Event => a.finish(&mut self.deriver.feed),
                Clock::Wall => a.save(&self.deriver.feed),
            }
        }
    }

    /// Wall clock: evaluates the rules if a second has passed.
    pub fn tick_alerts(&mut self) {
        if let Some(a) = &mut self.alerts {
            if a.clock() == Clock::Wall {
                a.tick_wall(&mut self.deriver.feed);
            }
        }
    }

    fn tick(&self) -> u32 {
        u32::try_from(self.started.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// Parses and derives every line of `batch` on this thread; returns the events for the
    /// sinks (none when there are no sinks). Each event holds the batch's acknowledgement,
    /// which fires once every sink is done with every event of the batch (at once when there
    /// are no sinks).
    pub fn process(&mut self, batch: &LineBatch) -> Vec<SinkEvent> {
        let bump = Bump::new();
        let at = Arrival {
            received: now_ns(),
            seq: self.seq,
        };
        self.seq += batch.lines.len() as u64;
        let mut parsed = parse_batch(&self.parser, batch, &bump, at, !self.sinks.is_empty());
        let sink_events = parsed.sink_events.take();
        self.derive(batch, &parsed, sink_events)
    }

    /// Derives the events of a batch a parse worker parsed; the batch goes back to that
    /// worker to be freed there (see [`parse_worker`]).
    fn derive_parsed(&mut self, parsed: &mut ParsedBatch) -> Vec<SinkEvent> {
        parsed.with_dependent_mut(|owner, p| {
            let sink_events = p.sink_events.take();
            self.derive(&owner.batch, p, sink_events)
        })
    }

    /// Derives the events of `batch`: metrics, alert windows, spans, weir's own counters.
    /// `sink_events`: those the parse worker built, if it did.
    fn derive(
        &mut self,
        batch: &LineBatch,
        parsed: &Parsed<'_>,
        sink_events: Option<Vec<SinkEvent>>,
    ) -> Vec<SinkEvent> {
        let Parsed {
            events,
            tally,
            received,
            ..
        } = parsed;
        let received = *received;
        let want_events = !self.sinks.is_empty();
        // A reload may have added the first sink after the batch was parsed.
        let mut out = match (want_events, sink_events) {
            (true, Some(out)) => out,
            (true, None) => {
                let seq = self.seq;
                self.seq += events.len() as u64;
                build_sink_events(batch, events, received, seq)
            }
            (false, _) => Vec::new(),
        };
        let tick = self.tick();
        let event_clock = match &self.alerts {
            Some(a) if a.clock() == Clock::Event => true,
            Some(_) => {
                self.deriver.feed.now = received.div_euclid(1_000_000_000);
                false
            }
            None => false,
        };
        let spans = !self.deriver.spans.is_empty();
        for (at, ev) in events.iter().enumerate() {
            if event_clock {
                // A backfill runs on the events' time; a line without a usable one (it got
                // the arrival time) stays at the clock's current second instead of jumping
                // the clock to today.
                if let Some(a) = &mut self.alerts {
                    if ev.timestamp != received {
                        let sec = ev.timestamp.div_euclid(1_000_000_000);
                        a.advance_to(&mut self.deriver.feed, sec);
                        self.deriver.feed.now = sec;
                    }
                }
            }
            self.deriver.apply(ev, tick);
            // `[[spans]]`: a span rides on the event that ends it (same acknowledgement).
            if spans {
                let ends = self.deriver.spans.derive(ev).map(Arc::new);
                if let Some(e) = out.get_mut(at) {
                    e.span = ends;
                }
            }
        }
        for (c, &n) in self.issues.iter().zip(&tally.counts) {
            if n > 0 {
                c.inc_by(n);
            }
        }
        let source = [&*batch.source];
        self.selfm
            .events_total
            .with_label_values(&source)
            .inc_by(batch.lines.len() as u64);
        self.selfm
            .lines_total
            .with_label_values(&source)
            .inc_by(tally.lines);
        self.selfm
            .bytes_total
            .with_label_values(&source)
            .inc_by(batch.bytes_read);
        if !event_clock {
            self.tick_alerts();
        }
        if let Some(t) = &self.tap {
            t.offer(batch);
        }
        // A sample line is copied only when a reason is first seen.
        let line_of = |i: u32| {
            batch.lines.get(i as usize).map_or_else(String::new, |s| {
                String::from_utf8_lossy(batch.line(s)).into_owned()
            })
        };
        self.report
            .add(&batch.source, batch.lines.len() as u64, tally, line_of);
        self.warnings.after_batch(&batch.source, tally, line_of);
        if tally.counts[ParseIssue::InvalidJson as usize] > 0 {
            tracing::debug!(
                source = %batch.source,
                lines = tally.counts[ParseIssue::InvalidJson as usize],
                "lines that are not JSON kept as raw-message events"
            );
        }
        if out.is_empty() {
            // No sink holds the batch (there is none, or it had no lines): the processor was
            // the last to need it, so its checkpoint may pass it now.
            if let Some(a) = &batch.ack {
                a.acknowledge();
            }
        }
        out
    }

    /// Hands the events of a batch to every sink (the last one gets the originals).
    async fn fan_out(&mut self, events: Vec<SinkEvent>) {
        if events.is_empty() {
            return;
        }
        let n = self.sinks.len();
        let mut events = Some(events);
        for (i, sink) in self.sinks.iter_mut().enumerate() {
            let mine = if i + 1 == n {
                events.take().unwrap_or_default()
            } else {
                events.clone().unwrap_or_default()
            };
            for chunk in chunks(mine) {
                if !sink.send(chunk).await {
                    tracing::error!(sink = %sink.name, "sink stopped; its events are lost");
                    break;
                }
            }
        }
    }

    /// Runs until every sender of `rx` is gone: `workers` parse threads, and this processor
    /// deriving on a thread of its own (a current-thread runtime only for the channels and
    /// the timers); the dispatcher is a task of the calling runtime. Each tick expires idle
    /// series. See the module documentation for how order is kept.
    pub fn spawn(
        mut self,
        rx: mpsc::Receiver<LineBatch>,
        reloads: mpsc::Receiver<Reload>,
        fill: prometheus::IntGauge,
        workers: usize,
    ) -> std::io::Result<std::thread::JoinHandle<Option<Engine>>> {
        let workers = workers.max(1);
        // The dispatcher numbers the batches from 0; events this thread has to build itself
        // (see `derive`) are numbered apart from them.
        self.seq = 1 << 63;
        let mut to_workers = Vec::with_capacity(workers);
        let mut from_workers = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers);
        let mut recycle = Vec::with_capacity(workers);
        for i in 0..workers {
            let (job_tx, job_rx) = mpsc::channel::<Job>(1);
            let (done_tx, done_rx) = mpsc::channel::<Stage>(1);
            let (back_tx, back_rx) = std::sync::mpsc::sync_channel::<ParsedBatch>(RECYCLE);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("weir-parse-{i}"))
                    .spawn(move || parse_worker(job_rx, done_tx, back_rx))?,
            );
            to_workers.push(job_tx);
            from_workers.push(done_rx);
            recycle.push(back_tx);
        }
        tokio::spawn(dispatch(
            rx,
            reloads,
            to_workers,
            Dispatch {
                parser: self.parser.clone(),
                fill,
                want_events: self.want_events.clone(),
                seq: 0,
                received: 0,
            },
        ));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        std::thread::Builder::new()
            .name("weir-processor".into())
            .spawn(move || {
                let engine = rt.block_on(async move {
                    let mut every = tokio::time::interval(TICK);
                    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut last = (Instant::now(), 0u64);
                    let mut events = 0u64;
                    let mut alert_every = tokio::time::interval(Duration::from_secs(1));
                    alert_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut next = 0usize;
                    loop {
                        tokio::select! {
                            biased;
                            item = from_workers[next].recv() => {
                                let worker = next;
                                next = (next + 1) % from_workers.len();
                                match item {
                                    // Round robin: worker `next` has nothing more, so no
                                    // later batch was ever dispatched.
                                    None => {
                                        self.finish_alerts();
                                        return self.into_alerts();
                                    }
                                    Some(Stage::Parsed(mut parsed)) => {
                                        events += parsed.borrow_owner().batch.lines.len() as u64;
                                        let out = self.derive_parsed(&mut parsed);
                                        // Freed by the worker that allocated it; here if
                                        // that worker is behind.
                                        let _ = recycle[worker].try_send(parsed);
                                        self.fan_out(out).await;
                                    }
                                    Some(Stage::Reload(r)) => self.reload(*r).await,
                                }
                            }
                            _ = alert_every.tick() => self.tick_alerts(),
                            _ = every.tick() => {
                                let expired = self.deriver.expire(self.tick());
                                if expired > 0 {
                                    tracing::info!(series = expired, "expired idle series");
                                }
                                let secs = last.0.elapsed().as_secs_f64();
                                if secs > 0.0 {
                                    self.selfm
                                        .events_per_second
                                        .set((events - last.1) as f64 / secs);
                                }
                                last = (Instant::now(), events);
                                // Parse problems: a summary per period at most (the first
                                // of each reason was logged as it came).
                                self.warnings.tick(Instant::now());
                            }
                        }
                    }
                });
                // A worker that panicked ended its channel early: that is no end of input.
                for t in threads {
                    if let Err(p) = t.join() {
                        std::panic::resume_unwind(p);
                    }
                }
                engine
            })
    }
}

/// What the dispatcher sends a parse worker.
enum Job {
    Batch {
        batch: LineBatch,
        parser: Arc<LineParser>,
        at: Arrival,
        want_events: bool,
    },
    /// Passed on as it is, in its place among the batches (boxed: reloads are rare).
    Reload(Box<Reload>),
}

/// What a parse worker hands the derive thread.
enum Stage {
    Parsed(ParsedBatch),
    Reload(Box<Reload>),
}

/// The dispatcher's state.
struct Dispatch {
    /// The parser for the batches from now on (a reload swaps it).
    parser: Arc<LineParser>,
    fill: prometheus::IntGauge,
    want_events: Arc<AtomicBool>,
    /// The next batch's first line, for ids of lines without a file position.
    seq: u64,
    /// The last batch's arrival time.
    received: TimestampNs,
}

/// Hands the batches and the reloads to the workers, round robin, until the sources are gone.
/// Each send waits for the worker to take its previous item: the sources' backpressure.
async fn dispatch(
    mut rx: mpsc::Receiver<LineBatch>,
    mut reloads: mpsc::Receiver<Reload>,
    to_workers: Vec<mpsc::Sender<Job>>,
    mut d: Dispatch,
) {
    let mut next = 0usize;
    loop {
        let job = tokio::select! {
            biased;
            batch = rx.recv() => {
                let Some(batch) = batch else { break };
                d.fill.set(rx.len() as i64);
                // Never back, even when the system clock is set back.
                d.received = d.received.max(now_ns());
                let at = Arrival { received: d.received, seq: d.seq };
                d.seq += batch.lines.len() as u64;
                Job::Batch {
                    batch,
                    parser: d.parser.clone(),
                    at,
                    want_events: d.want_events.load(Ordering::Relaxed),
                }
            }
            Some(r) = reloads.recv() => {
                d.parser = r.parser.clone();
                Job::Reload(Box::new(r))
            }
        };
        if to_workers[next].send(job).await.is_err() {
            // The worker is gone (it panicked): the derive thread reports it.
            break;
        }
        next = (next + 1) % to_workers.len();
    }
}

/// Derived batches a worker may be handed back to free, at most.
const RECYCLE: usize = 1;

/// One parse worker: parses the batches it is given and hands them on, until the dispatcher
/// is gone. The derive thread hands the batches back once derived (`recycled`): freeing the
/// events where they were allocated keeps that work off the derive thread and spares the
/// allocator a free across threads.
fn parse_worker(
    mut jobs: mpsc::Receiver<Job>,
    done: mpsc::Sender<Stage>,
    recycled: std::sync::mpsc::Receiver<ParsedBatch>,
) {
    while let Some(job) = jobs.blocking_recv() {
        while let Ok(old) = recycled.try_recv() {
            drop(old);
        }
        let stage = match job {
            Job::Batch {
                batch,
                parser,
                at,
                want_events,
            } => Stage::Parsed(ParsedBatch::new(
                BatchOwner {
                    batch,
                    bump: Bump::new(),
                },
                |o| parse_batch(&parser, &o.batch, &o.bump, at, want_events),
            )),
            Job::Reload(r) => Stage::Reload(r),
        };
        if done.blocking_send(stage).is_err() {
            return;
        }
    }
}

/// Splits events into chunks of at most [`sink::CHUNK`].
fn chunks(mut events: Vec<SinkEvent>) -> Vec<Vec<SinkEvent>> {
    let mut out = Vec::new();
    while events.len() > sink::CHUNK {
        let rest = events.split_off(sink::CHUNK);
        out.push(events);
        events = rest;
    }
    out.push(events);
    out
}

/// How many parse workers `--threads 0` (the default) means: one per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}
