//! Wires a compiled pipeline into running parts, joined by bounded channels:
//!
//! ```text
//! sources (async tasks) --LineBatch, bounded--> processor (one thread: parse + derive) --> registry
//!                                                                                         ^
//!                                                                  server (/metrics) reads it
//! ```
//!
//! Invariants: the only queue is the bounded batch channel ([`CHANNEL_BATCHES`] batches of at
//! most one read each), so memory is bounded and a slow stage pushes back on the sources. Events
//! are processed in the order each source read them. The processor runs on its own thread, since
//! parse + derive are CPU work with no `.await`; the tokio workers stay free for I/O and scrapes.
//! Shutdown: cancelling the token stops the sources, which drop their senders; the processor
//! handles every batch already queued, then ends; then the server stops.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use prometheus::IntCounter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::alert::dispatch::{DispatchOptions, Dispatcher};
use crate::alert::engine::{Clock, Engine};
use crate::config::CompiledPipeline;
use crate::derive::Deriver;
use crate::event::ParseIssue;
use crate::parse::report::{self, BatchTally, LiveWarnings, ParseReport};
use crate::parse::{line_text, LineParser};
use crate::reload::{self, Reload};
use crate::server::{self, AppState};
use crate::sink::{self, AckToken, SinkConfig as SinkCfg, SinkEvent, SinkInput};
use crate::source::{self, LineBatch, SourceConfig};
use crate::tap::TapHub;
use crate::telemetry::SelfMetrics;
use xxhash_rust::xxh3::xxh3_128;

/// Capacity of the source → processor channel, in batches (each at most one 128 KiB read).
pub const CHANNEL_BATCHES: usize = 16;
/// How often idle series are expired and the events/s gauge updated.
const TICK: Duration = Duration::from_secs(2);

/// What to run, from the command line.
pub struct RunOptions {
    /// Files named on the command line; they replace the pipeline's sources.
    pub files: Vec<PathBuf>,
    /// Address for `/metrics`; `None` serves nothing (oneshot).
    pub listen: Option<std::net::SocketAddr>,
    /// The admin listener, TLS, auth and limits of the HTTP surface (with `listen`).
    pub http: server::HttpOptions,
    /// Show a progress bar over the files.
    pub progress: bool,
    /// TCP listen addresses from `--tcp`; each adds a TCP source.
    pub tcp: Vec<String>,
    /// Read inputs to their end and stop (files are read once instead of tailed).
    pub oneshot: bool,
    /// `--format` for the sources made from the command line.
    pub format: Option<source::Format>,
    /// `--multiline` for the sources made from the command line (else the pipeline's
    /// top-level `multiline`).
    pub multiline: Option<source::multiline::MultilineConfig>,
    /// `--data-dir`, else the pipeline's `data_dir`: where checkpoints are kept.
    pub data_dir: Option<PathBuf>,
    /// `--stdout`: pass every line through to stdout.
    pub stdout: bool,
    /// Sinks from the command line (`--loki`, `--elasticsearch`).
    pub sinks: Vec<SinkCfg>,
    /// `--buffer`: the buffer of every sink.
    pub buffer: Option<sink::BufferKind>,
    /// After a signal, how long sinks may take to deliver what they hold.
    pub shutdown_timeout_secs: u64,
    /// `--notify`: a backfill (`--oneshot`) sends its alerts' notifications too.
    pub notify: bool,
    /// The pipeline file, to reload (SIGHUP, `POST /-/reload`); `None`: the embedded default.
    pub config: Option<PathBuf>,
    /// `--watch-config`: reload when the file changes.
    pub watch_config: bool,
    /// Where the processor adds up the parse problems (the `--oneshot` summary reads it).
    pub parse_report: Arc<ParseReport>,
}

/// Parse + derive, one batch at a time.
pub struct Processor {
    parser: LineParser,
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
}

impl Processor {
    pub fn new(parser: LineParser, deriver: Deriver, selfm: SelfMetrics) -> Self {
        Processor {
            issues: selfm.parse_issue_counters(),
            parser,
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

    /// Sends every event to these sinks too (fan-out).
    pub fn with_sinks(mut self, sinks: Vec<SinkInput>) -> Self {
        self.sinks = sinks;
        self
    }

    fn tick(&self) -> u32 {
        u32::try_from(self.started.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// Parses and derives every line of `batch`; returns the events for the sinks (none when
    /// there are no sinks). Each event holds the batch's acknowledgement, which fires once every
    /// sink is done with every event of the batch (at once when there are no sinks).
    pub fn process(&mut self, batch: &LineBatch) -> Vec<SinkEvent> {
        let ack = batch
            .ack
            .clone()
            .map(|a| AckToken::new(move || a.acknowledge()));
        let want_events = !self.sinks.is_empty();
        let mut out = Vec::with_capacity(if want_events { batch.lines.len() } else { 0 });
        let received = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let tick = self.tick();
        let mut tally = BatchTally::default();
        let event_clock = match &self.alerts {
            Some(a) if a.clock() == Clock::Event => true,
            Some(_) => {
                self.deriver.feed.now = received.div_euclid(1_000_000_000);
                false
            }
            None => false,
        };
        // A source with a `parser` of its own: looked up once per batch, not per line.
        let parser = self.parser.for_source(&batch.source);
        for (at, span) in (0u32..).zip(&batch.lines) {
            let (bytes, truncated) = (batch.line(span), span.truncated);
            let mut issue = |i: ParseIssue| tally.issue(i, at);
            if truncated {
                issue(ParseIssue::Truncated);
            }
            let text = line_text(bytes, truncated, &mut issue);
            let attrs = batch.attrs_of(span);
            let mut repaired = String::new();
            let ev = parser.parse_line(&text, &mut repaired, attrs, received, &mut issue);
            tally.line(ev.parsed, at);
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
            self.deriver.apply(&ev, tick);
            // `[[spans]]`: a span rides on the event that ends it (same acknowledgement).
            let ends_span = if self.deriver.spans.is_empty() {
                None
            } else {
                self.deriver.spans.derive(&ev).map(Arc::new)
            };
            if want_events {
                let id = match batch.origin {
                    // A file line: its identity is its place in the file, stable across restarts.
                    Some((stream, base)) if !truncated => {
                        let mut key = [0u8; 16];
                        key[..8].copy_from_slice(&stream.to_le_bytes());
                        key[8..].copy_from_slice(&(base + u64::from(span.start)).to_le_bytes());
                        xxh3_128(&key)
                    }
                    _ => {
                        self.seq += 1;
                        let mut h = xxhash_rust::xxh3::Xxh3::new();
                        h.update(batch.source.as_bytes());
                        h.update(&self.seq.to_le_bytes());
                        h.update(bytes);
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
                    attrs: attrs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    source: batch.source.clone(),
                    ack: ack.clone(),
                    received,
                    span: ends_span,
                });
            }
        }
        for (c, &n) in self.issues.iter().zip(&tally.counts) {
            if n > 0 {
                c.inc_by(n);
            }
        }
        // Lines read: several make one event where multi-line joining put them together.
        tally.lines = batch.lines.len() as u64 + batch.joined_lines;
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
            .add(&batch.source, batch.lines.len() as u64, &tally, line_of);
        self.warnings.after_batch(&batch.source, &tally, line_of);
        if tally.counts[ParseIssue::InvalidJson as usize] > 0 {
            tracing::debug!(
                source = %batch.source,
                lines = tally.counts[ParseIssue::InvalidJson as usize],
                "lines that are not JSON kept as raw-message events"
            );
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

    /// Runs until every sender of `rx` is gone, on a thread of its own (a current-thread
    /// runtime only for the channel and the timer). Each tick expires idle series.
    fn spawn(
        mut self,
        mut rx: mpsc::Receiver<LineBatch>,
        mut reloads: mpsc::Receiver<Reload>,
        fill: prometheus::IntGauge,
    ) -> std::io::Result<std::thread::JoinHandle<Option<Engine>>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        std::thread::Builder::new()
            .name("weir-processor".into())
            .spawn(move || {
                rt.block_on(async move {
                    let mut every = tokio::time::interval(TICK);
                    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut last = (Instant::now(), 0u64);
                    let mut events = 0u64;
                    let mut alert_every = tokio::time::interval(Duration::from_secs(1));
                    alert_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            biased;
                            batch = rx.recv() => {
                                let Some(batch) = batch else {
                                    self.finish_alerts();
                                    return self.into_alerts();
                                };
                                fill.set(rx.len() as i64);
                                events += batch.lines.len() as u64;
                                let out = self.process(&batch);
                                drop(batch);
                                self.fan_out(out).await;
                            }
                            Some(r) = reloads.recv() => self.reload(r).await,
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
                })
            })
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

/// What the command line adds to a pipeline's sources and sinks (`weir run FILE`, `--tcp`,
/// `--loki`, `--stdout`, `--buffer`); a reload adds it again to the new pipeline's.
#[derive(Debug, Clone, Default)]
pub struct CliAdditions {
    pub files: Vec<PathBuf>,
    pub tcp: Vec<String>,
    pub format: Option<source::Format>,
    /// `--multiline`, else the pipeline's top-level `multiline`: for the sources made here.
    pub multiline: Option<source::multiline::MultilineConfig>,
    pub stdout: bool,
    pub sinks: Vec<SinkCfg>,
    pub buffer: Option<sink::BufferKind>,
}

impl CliAdditions {
    fn of(opts: &RunOptions, multiline: Option<&source::multiline::MultilineConfig>) -> Self {
        CliAdditions {
            files: opts.files.clone(),
            tcp: opts.tcp.clone(),
            format: opts.format,
            multiline: opts.multiline.clone().or_else(|| multiline.cloned()),
            stdout: opts.stdout,
            sinks: opts.sinks.clone(),
            buffer: opts.buffer,
        }
    }

    /// The sinks to run, named: the pipeline's, then the command line's; by their `name`,
    /// else `loki`, or `loki_2` when there are several of a kind.
    pub fn sinks(&self, pipeline: Vec<SinkCfg>) -> Vec<(String, SinkCfg)> {
        let mut cfgs = pipeline;
        cfgs.extend(self.sinks.iter().cloned());
        if self.stdout {
            cfgs.push(SinkCfg::Stdout(sink::StdoutConfig::default()));
        }
        if let Some(kind) = self.buffer {
            for c in &mut cfgs {
                c.buffer_mut().kind = kind;
            }
        }
        let kinds: Vec<&'static str> = cfgs.iter().map(SinkCfg::kind).collect();
        cfgs.into_iter()
            .enumerate()
            .map(|(i, c)| {
                let same = kinds.iter().filter(|k| **k == c.kind()).count();
                let name = match c.name() {
                    Some(n) => n.to_string(),
                    None if same > 1 => format!("{}_{}", c.kind(), i),
                    None => c.kind().to_string(),
                };
                (name, c)
            })
            .collect()
    }

    /// The sources to run: the pipeline's, the command line's files and TCP addresses; stdin
    /// when there is nothing else.
    pub fn sources(&self, pipeline: Vec<SourceConfig>) -> Vec<SourceConfig> {
        let format = self.format.unwrap_or_default();
        let mut sources = pipeline;
        if !self.files.is_empty() {
            let mut f = source::FileConfig::for_paths(
                self.files.iter().map(|p| p.display().to_string()).collect(),
                format,
            );
            f.multiline = self.multiline.clone();
            sources.push(SourceConfig::File(f));
        }
        for address in &self.tcp {
            sources.push(SourceConfig::Tcp(source::TcpConfig {
                address: address.clone(),
                format,
                multiline: self.multiline.clone(),
                ..source::TcpConfig::default()
            }));
        }
        if sources.is_empty() {
            sources.push(SourceConfig::Stdin(source::StdinConfig {
                format,
                multiline: self.multiline.clone(),
                parser: None,
            }));
        }
        sources
    }
}

/// What every source task needs.
#[derive(Clone)]
struct SourceContext {
    out: mpsc::Sender<LineBatch>,
    max_line: usize,
    selfm: SelfMetrics,
    data_dir: Option<PathBuf>,
    oneshot: bool,
    progress: bool,
}

type SourceTasks = tokio::task::JoinSet<anyhow::Result<()>>;

/// Starts source `s` in `tasks`; cancelling the returned token (a child of `shutdown`) stops it.
fn spawn_source(
    tasks: &mut SourceTasks,
    s: SourceConfig,
    ctx: &SourceContext,
    shutdown: &CancellationToken,
) -> anyhow::Result<(CancellationToken, tokio::task::Id)> {
    let stop = shutdown.child_token();
    let (out, max_line, selfm) = (ctx.out.clone(), ctx.max_line, ctx.selfm.clone());
    let token = stop.clone();
    // Checked by `weir validate` already; compiled here for the source's joiner.
    let multiline = s
        .multiline()
        .map(source::multiline::MultilineConfig::compile)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let handle = match s {
        SourceConfig::Stdin(cfg) => tasks.spawn(async move {
            source::stdin::run(cfg.format, multiline, out, stop, max_line, selfm)
                .await
                .context("reading stdin")
        }),
        SourceConfig::Tcp(cfg) => tasks.spawn(async move {
            source::tcp::run(cfg, out, stop, max_line, selfm)
                .await
                .map_err(anyhow::Error::from)
        }),
        SourceConfig::File(f) if ctx.oneshot => {
            // A backfill: every matching file once, to its end, in order.
            // Labelled by the pattern that selected each file, as when tailing, so that a
            // backfill and a live run give the same series.
            let paths: Vec<(PathBuf, Arc<str>)> = source::file::expand(&f, &selfm, &stop)?
                .into_iter()
                .map(|(p, i)| {
                    let pattern = f.paths.get(i).map_or("", String::as_str);
                    (p, Arc::from(pattern))
                })
                .collect();
            if paths.is_empty() {
                anyhow::bail!("no file matches {:?}", f.paths.join(" "));
            }
            let progress = ctx.progress.then(|| progress_bar(&paths));
            tasks.spawn(async move {
                let read = source::file::ReadOnce {
                    format: f.format,
                    multiline,
                    max_line_bytes: max_line,
                    selfm,
                    progress,
                };
                source::file::read_to_end(paths, read, out, stop)
                    .await
                    .map_err(anyhow::Error::from)
            })
        }
        SourceConfig::File(cfg) => {
            let tail = source::file::Tail {
                cfg,
                multiline,
                data_dir: ctx.data_dir.clone(),
                max_line_bytes: max_line,
                selfm,
            };
            tasks.spawn(async move { tail.run(out, stop).await.map_err(anyhow::Error::from) })
        }
    };
    Ok((token, handle.id()))
}

/// Runs the pipeline until its inputs end or `shutdown` is cancelled. The final values stay in
/// the pipeline's registry (clone it before the call to read them after).
pub async fn run(
    pipeline: CompiledPipeline,
    opts: RunOptions,
    selfm: SelfMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let CompiledPipeline {
        parser,
        event,
        deriver,
        registry,
        sources,
        multiline,
        origin,
        data_dir: pipeline_data_dir,
        sinks,
        rules,
        notifiers,
    } = pipeline;
    let adds = CliAdditions::of(&opts, multiline.as_ref());
    let mut deriver = deriver;
    let data_dir = opts.data_dir.clone().or(pipeline_data_dir.clone());
    let sources = adds.sources(sources);
    if data_dir.is_none()
        && sources.iter().any(|s| matches!(s, SourceConfig::File(_)))
        && !opts.oneshot
    {
        tracing::warn!(
            "no data_dir: file positions are not checkpointed, a restart reads files again"
        );
    }
    tracing::debug!(pipeline = %origin, "starting");
    let max_line = parser.max_line_bytes();
    let (tx, rx) = mpsc::channel::<LineBatch>(CHANNEL_BATCHES);
    let fill = selfm
        .channel_fill
        .with_label_values(&["sources_to_processor"]);
    let abandon = CancellationToken::new();
    // The shutdown deadline runs from the signal, not from the processor's end: a processor
    // held by a sink that cannot take events (backend down, disk full) is freed by it too.
    let deadline = {
        let (shutdown, abandon) = (shutdown.clone(), abandon.clone());
        let secs = opts.shutdown_timeout_secs;
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tokio::time::sleep(Duration::from_secs(secs)).await;
            tracing::warn!(
                secs,
                "shutdown deadline passed: sinks abandon what they hold"
            );
            abandon.cancel();
        })
    };
    let mut parts = reload::Components {
        selfm: selfm.clone(),
        adds: adds.clone(),
        data_dir: data_dir.clone(),
        pipeline_data_dir,
        abandon: abandon.clone(),
        shutdown_timeout: Duration::from_secs(opts.shutdown_timeout_secs),
        sinks: Vec::new(),
        retired: Vec::new(),
        sources: sources.iter().map(reload::source_key).collect(),
        source_changes: None,
        notifiers_key: String::new(),
        dispatcher: None,
        retired_dispatchers: Vec::new(),
    };
    let mut sink_inputs = Vec::new();
    for (name, c) in adds.sinks(sinks) {
        let (input, running) = parts.start_sink(&name, &c).map_err(anyhow::Error::msg)?;
        sink_inputs.push(input);
        parts.sinks.push(running);
    }
    // Alerts: live on the wall clock, backfills on the events' time. A backfill reports what
    // would have fired; it notifies only with --notify.
    let clock = if opts.oneshot {
        Clock::Event
    } else {
        Clock::Wall
    };
    let mut engine = Engine::new(rules, &selfm).with_clock(clock);
    parts.notifiers_key = reload::notifiers_key(&notifiers, engine.is_empty());
    if !parts.notifiers_key.is_empty() && (!opts.oneshot || opts.notify) {
        let mut built = Vec::new();
        for (name, cfg) in &notifiers {
            let n = cfg
                .build()
                .map_err(|e| anyhow::anyhow!("notifier {name}: {e}"))?;
            built.push((name.clone(), n));
        }
        let (handle, d) = Dispatcher::start(built, DispatchOptions::default(), &selfm);
        engine = engine.with_dispatch(handle);
        parts.dispatcher = Some(d);
    }
    if let Some(dir) = &data_dir {
        engine = engine.with_state(dir.join("alerts").join("state.json"), &mut deriver.feed);
    }
    let alerts_view = opts.listen.is_some().then(|| engine.view());
    // What /metrics serves: the compiled registry until a reload swaps in another.
    let live = crate::derive::live::Live::new(registry.clone());
    let served = live.served();
    let processor = Processor::new(parser, deriver, selfm.clone())
        .with_sinks(sink_inputs)
        .with_alerts(engine)
        .with_registry(live)
        .with_report(opts.parse_report.clone());
    let tap = opts
        .listen
        .is_some()
        .then(|| Arc::new(TapHub::new(event, selfm.taps_active.clone())));
    let processor = match &tap {
        Some(t) => {
            // So that `weir tap --source NAME` can be told NAME does not exist.
            t.add_sources(sources.iter().flat_map(crate::tap::source_names));
            processor.with_tap(t.clone())
        }
        None => processor,
    };
    // Reloads (live, from a file): SIGHUP, POST /-/reload, --watch-config.
    let (reload_tx, reload_rx) = mpsc::channel::<Reload>(1);
    let (source_changes_tx, mut source_changes) = mpsc::channel::<reload::SourceChange>(1);
    let live_reload = matches!((&opts.config, opts.oneshot), (Some(_), false));
    if live_reload {
        parts.source_changes = Some(source_changes_tx);
    }
    let parts = Arc::new(tokio::sync::Mutex::new(parts));
    let reload_requests = match (&opts.config, live_reload) {
        (Some(path), true) => {
            let (tx, requests) = mpsc::channel::<reload::Request>(4);
            tokio::spawn(reload::run(
                path.clone(),
                parts.clone(),
                opts.watch_config,
                selfm.clone(),
                reload_tx,
                requests,
                shutdown.clone(),
            ));
            Some(tx)
        }
        (config, _) => {
            // SIGHUP must not kill weir (its default action) when there is nothing to reload.
            let why = if config.is_none() {
                "no --config"
            } else {
                "--oneshot"
            };
            tokio::spawn(reload::ignore_hangup(why, shutdown.clone()));
            None
        }
    };
    let processing = processor
        .spawn(rx, reload_rx, fill)
        .context("cannot start the processing thread")?;

    let ready = Arc::new(AtomicBool::new(false));
    let server_stop = CancellationToken::new();
    let server = match opts.listen {
        Some(addr) => {
            let state = AppState {
                derived: served.clone(),
                selfm: selfm.clone(),
                ready: ready.clone(),
                alerts: alerts_view.clone(),
                reload: reload_requests.clone(),
                tap: tap.clone(),
                parse_report: Some(opts.parse_report.clone()),
            };
            // The public and the admin listener (see server/mod.rs for what each serves).
            let serving = server::start(addr, opts.http, state, server_stop.clone()).await?;
            let admin = serving.admin.map_or("off".to_string(), |a| a.to_string());
            tracing::info!(addr = %serving.public, admin = %admin, pipeline = %origin, "serving /metrics");
            Some(serving.task)
        }
        None => None,
    };

    let ctx = SourceContext {
        out: tx,
        max_line,
        selfm: selfm.clone(),
        data_dir: data_dir.clone(),
        oneshot: opts.oneshot,
        progress: opts.progress,
    };
    let mut tasks = SourceTasks::new();
    // Running sources by key; a reload stops and starts them.
    let mut running: Vec<(String, CancellationToken, tokio::task::Id)> = Vec::new();
    for s in sources {
        let key = reload::source_key(&s);
        let (token, id) = spawn_source(&mut tasks, s, &ctx, &shutdown)?;
        running.push((key, token, id));
    }
    ready.store(true, Ordering::Relaxed);

    let mut first_error = None;
    let mut ended =
        |r: Result<(tokio::task::Id, anyhow::Result<()>), tokio::task::JoinError>,
         running: &mut Vec<(String, CancellationToken, tokio::task::Id)>| {
            let id = match &r {
                Ok((id, _)) => *id,
                Err(e) => e.id(),
            };
            running.retain(|(_, _, i)| *i != id);
            match r {
                Ok((_, Ok(()))) => {}
                Ok((_, Err(e))) => {
                    tracing::error!(error = format!("{e:#}"), "source failed");
                    first_error.get_or_insert(e);
                    // One failed input fails the run, as a backfill must not look complete.
                    shutdown.cancel();
                }
                Err(e) => {
                    first_error.get_or_insert(anyhow::anyhow!("source task panicked: {e}"));
                    shutdown.cancel();
                }
            }
            id
        };
    // Until every source has ended: their results, and the reloads' source changes.
    while !tasks.is_empty() {
        tokio::select! {
            Some(r) = tasks.join_next_with_id() => { ended(r, &mut running); }
            Some(change) = source_changes.recv() => {
                let mut stopping = Vec::new();
                for key in &change.stop {
                    if let Some(i) = running.iter().position(|(k, _, _)| k == key) {
                        let (_, token, id) = running.remove(i);
                        token.cancel();
                        stopping.push(id);
                    }
                }
                while !stopping.is_empty() {
                    let Some(r) = tasks.join_next_with_id().await else { break };
                    let id = ended(r, &mut running);
                    stopping.retain(|i| *i != id);
                }
                if let Some(t) = &tap {
                    t.add_sources(change.start.iter().flat_map(crate::tap::source_names));
                }
                for s in change.start {
                    let key = reload::source_key(&s);
                    match spawn_source(&mut tasks, s, &ctx, &shutdown) {
                        Ok((token, id)) => running.push((key, token, id)),
                        Err(e) => tracing::error!(error = format!("{e:#}"), "source did not start"),
                    }
                }
                let _ = change.done.send(());
            }
        }
    }
    drop(source_changes);
    drop(ctx);
    // The processor ends once every batch sent is handled; join it off the async workers.
    let engine = tokio::task::spawn_blocking(move || processing.join())
        .await
        .context("joining the processing thread")?
        .map_err(|_| anyhow::anyhow!("the processing thread panicked"))?;
    // No more events: open taps end their streams, so the server can stop.
    if let Some(t) = &tap {
        t.close();
    }
    if let (Some(e), true) = (engine.as_ref().filter(|e| !e.is_empty()), opts.oneshot) {
        let (fired, resolved) = e.counts();
        let firing = e
            .rules()
            .iter()
            .flat_map(|r| r.states.values())
            .filter(|s| s.firing_since.is_some())
            .count();
        tracing::info!(
            fired,
            resolved,
            firing,
            "backfill alerts (each is logged above as `alert firing` / `alert resolved`)"
        );
    }
    // The processor is gone: no reload can change the components any more.
    let mut parts = parts.lock().await;
    if let Some(d) = parts.dispatcher.take() {
        // Notifications still queued get the shutdown timeout to go out.
        d.shutdown(Duration::from_secs(opts.shutdown_timeout_secs))
            .await;
    }
    for old in std::mem::take(&mut parts.retired_dispatchers) {
        let _ = old.await;
    }
    ready.store(false, Ordering::Relaxed);
    // Sinks deliver what they hold. After a signal they get shutdown_timeout_secs; at stdin's
    // end (or a oneshot's) they take the time delivery takes.
    // (The deadline runs from the signal: see `deadline` above.)
    let sink_tasks = std::mem::take(&mut parts.retired).into_iter().chain(
        std::mem::take(&mut parts.sinks)
            .into_iter()
            .map(|r| (r.name, r.task)),
    );
    for (name, task) in sink_tasks {
        if task.await.is_err() {
            first_error.get_or_insert(anyhow::anyhow!("sink {name} panicked"));
        }
    }
    drop(parts);
    deadline.abort();
    server_stop.cancel();
    if let Some(s) = server {
        s.await.context("server task panicked")?;
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn progress_bar(paths: &[(PathBuf, Arc<str>)]) -> ProgressBar {
    let total: u64 = paths
        .iter()
        .filter_map(|(p, _)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // Log lines are written around the bar, not into it.
    crate::progress::show(&pb);
    pb
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sinks(toml_text: &str) -> Vec<SinkCfg> {
        #[derive(serde::Deserialize)]
        struct S {
            sinks: Vec<SinkCfg>,
        }
        toml::from_str::<S>(toml_text).expect("sinks").sinks
    }

    #[test]
    fn sinks_are_named_by_their_name_else_their_kind() {
        let adds = CliAdditions {
            stdout: true,
            ..CliAdditions::default()
        };
        let named =
            |t: &str| -> Vec<String> { adds.sinks(sinks(t)).into_iter().map(|(n, _)| n).collect() };
        let two =
            "[[sinks]]\ntype = \"file\"\npath = \"a\"\n[[sinks]]\ntype = \"file\"\npath = \"b\"\n";
        assert_eq!(named(two), ["file_0", "file_1", "stdout"]);
        let named_two = "[[sinks]]\ntype = \"file\"\npath = \"a\"\nname = \"main\"\n[[sinks]]\ntype = \"file\"\npath = \"b\"\nname = \"archive\"\n";
        assert_eq!(named(named_two), ["main", "archive", "stdout"]);
    }

    #[test]
    fn stdin_only_when_nothing_else_is_configured() {
        let none = CliAdditions::default();
        assert!(matches!(
            none.sources(Vec::new())[..],
            [SourceConfig::Stdin(_)]
        ));
        let tcp = CliAdditions {
            tcp: vec!["127.0.0.1:0".into()],
            ..CliAdditions::default()
        };
        assert!(matches!(
            tcp.sources(Vec::new())[..],
            [SourceConfig::Tcp(_)]
        ));
    }

    /// `max_line_bytes` of [`ONE_EVENT_PIPELINE`].
    const MAX_LINE: usize = 64;
    const ONE_EVENT_PIPELINE: &str = r#"
[event]
max_line_bytes = 64
repair_unescaped_message = false
[[metrics]]
name = "lines_total"
kind = "counter"
labels = { level = "level" }
"#;

    /// One line of the stream (no `\n`): bytes of every kind, JSON, empty, at and around the
    /// line limit, CRLF.
    fn any_line() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let no_nl = |v: Vec<u8>| v.into_iter().filter(|&b| b != b'\n').collect::<Vec<u8>>();
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..100).prop_map(no_nl),
            Just(Vec::new()),
            Just(b"\r".to_vec()),
            "\\{\"level\":\"(info|error)\",\"message\":\"[a-z\u{e9}]{0,8}\"\\}\r?"
                .prop_map(String::into_bytes),
            (MAX_LINE - 2..MAX_LINE + 3, any::<u8>()).prop_map(|(n, b)| {
                let b = if b == b'\n' { b'x' } else { b };
                vec![b; n]
            }),
            // A multi-byte character across the cut.
            Just("\u{e9}".repeat(MAX_LINE / 2 + 1).into_bytes()),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Every line of a byte stream, read in pieces of any size, becomes exactly one event,
        /// in order, holding that line (cut at `max_line_bytes`, invalid UTF-8 replaced), and
        /// `weir_events_total` counts each once. No line is dropped, merged or invented.
        #[test]
        fn every_line_in_becomes_exactly_one_event(
            lines in proptest::collection::vec(any_line(), 0..40),
            trailing_newline in proptest::prelude::any::<bool>(),
            read_size in 1usize..300,
        ) {
            let mut data = lines.join(&b'\n');
            if trailing_newline && !lines.is_empty() {
                data.push(b'\n');
            }
            // What a user expects: one line per `\n`-separated piece (a last piece without
            // `\n` still counts), cut at the limit, a CR before the newline dropped.
            let mut pieces: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
            if data.is_empty() || data.ends_with(b"\n") {
                pieces.pop();
            }
            let expected: Vec<String> = pieces
                .iter()
                .map(|p| {
                    let (bytes, cut) = if p.len() > MAX_LINE {
                        (&p[..MAX_LINE], true)
                    } else {
                        (p.strip_suffix(b"\r").unwrap_or(p), false)
                    };
                    line_text(bytes, cut, &mut |_| {}).into_owned()
                })
                .collect();

            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            let _guard = rt.enter();
            let dir = tempfile::tempdir().map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            let selfm = SelfMetrics::new();
            let p = crate::config::PipelineConfig::parse("t.toml", ONE_EVENT_PIPELINE)
                .and_then(|c| c.compile("t.toml", ONE_EVENT_PIPELINE, &selfm))
                .map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            let sink_cfg: SinkCfg = toml::from_str(&format!(
                "type = \"file\"\npath = {:?}\n",
                dir.path().join("out.ndjson")
            ))
            .map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            let (input, _task) = sink::start("file", &sink_cfg, &selfm, CancellationToken::new(), None)
                .map_err(proptest::test_runner::TestCaseError::fail)?;
            let mut processor = Processor::new(p.parser, p.deriver, selfm.clone()).with_sinks(vec![input]);

            let mut reader = source::LineReader::new(&data[..], "prop".into(), MAX_LINE)
                .with_read_size(read_size);
            let mut got = Vec::new();
            while let Some(batch) = rt
                .block_on(reader.next_batch())
                .map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?
            {
                let events = processor.process(&batch);
                proptest::prop_assert_eq!(events.len(), batch.lines.len());
                got.extend(events.into_iter().map(|e| e.line));
            }
            proptest::prop_assert_eq!(&got, &expected);
            let counted = selfm.events_total.with_label_values(&["prop"]).get();
            proptest::prop_assert_eq!(counted, expected.len() as u64);
        }
    }
}
