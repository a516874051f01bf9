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

use crate::config::CompiledPipeline;
use crate::derive::Deriver;
use crate::event::ParseIssue;
use crate::parse::{line_text, LineParser};
use crate::server::{self, AppState};
use crate::source::{self, LineBatch, SourceConfig};
use crate::telemetry::SelfMetrics;

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
    /// Show a progress bar over the files.
    pub progress: bool,
    /// TCP listen addresses from `--tcp`; each adds a TCP source.
    pub tcp: Vec<String>,
    /// Read inputs to their end and stop (files are read once instead of tailed).
    pub oneshot: bool,
    /// `--format` for the sources made from the command line.
    pub format: Option<source::Format>,
    /// `--data-dir`, else the pipeline's `data_dir`: where checkpoints are kept.
    pub data_dir: Option<PathBuf>,
    /// `--stdout`: pass every line through to stdout.
    pub stdout: bool,
}

/// Parse + derive, one batch at a time.
pub struct Processor {
    parser: LineParser,
    deriver: Deriver,
    selfm: SelfMetrics,
    issues: Vec<IntCounter>,
    started: Instant,
    /// `--stdout`: every line passes through to stdout, before the batch is acknowledged.
    passthrough: Option<std::io::BufWriter<std::io::Stdout>>,
}

impl Processor {
    pub fn new(parser: LineParser, deriver: Deriver, selfm: SelfMetrics) -> Self {
        Processor {
            issues: selfm.parse_issue_counters(),
            parser,
            deriver,
            selfm,
            started: Instant::now(),
            passthrough: None,
        }
    }

    /// Passes every line through to stdout (`app | weir run --stdout | tee`).
    pub fn with_passthrough(mut self) -> Self {
        self.passthrough = Some(std::io::BufWriter::with_capacity(
            256 * 1024,
            std::io::stdout(),
        ));
        self
    }

    fn tick(&self) -> u32 {
        u32::try_from(self.started.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// Parses and derives every line of `batch`.
    pub fn process(&mut self, batch: &LineBatch) {
        let received = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let tick = self.tick();
        let mut counts = [0u64; ParseIssue::ALL.len()];
        for span in &batch.lines {
            let (bytes, truncated) = (batch.line(span), span.truncated);
            let mut issue = |i: ParseIssue| counts[i as usize] += 1;
            if truncated {
                issue(ParseIssue::Truncated);
            }
            let text = line_text(bytes, truncated, &mut issue);
            let attrs = batch.attrs_of(span);
            let ev = self
                .parser
                .parse_with_attrs(&text, attrs, received, &mut issue);
            self.deriver.apply(&ev, tick);
        }
        for (c, n) in self.issues.iter().zip(counts) {
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
            .bytes_total
            .with_label_values(&source)
            .inc_by(batch.bytes_read);
        if let Some(out) = &mut self.passthrough {
            use std::io::Write;
            let written = batch
                .lines
                .iter()
                .try_for_each(|span| {
                    out.write_all(batch.line(span))?;
                    out.write_all(b"\n")
                })
                .and_then(|()| out.flush());
            if let Err(e) = written {
                // Downstream closed (`| head`): stop passing through, keep deriving.
                tracing::warn!(error = %e, "stdout closed; passthrough stopped");
                self.passthrough = None;
            }
        }
        if let Some(ack) = &batch.ack {
            ack.acknowledge();
        }
        if counts[ParseIssue::InvalidJson as usize] > 0 {
            tracing::debug!(
                source = %batch.source,
                lines = counts[ParseIssue::InvalidJson as usize],
                "lines that are not JSON kept as raw-message events"
            );
        }
    }

    /// Runs until every sender of `rx` is gone, on a thread of its own (a current-thread
    /// runtime only for the channel and the timer). Each tick expires idle series.
    fn spawn(
        mut self,
        mut rx: mpsc::Receiver<LineBatch>,
        fill: prometheus::IntGauge,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
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
                    let mut warned_issues = 0u64;
                    loop {
                        tokio::select! {
                            biased;
                            batch = rx.recv() => {
                                let Some(batch) = batch else { return };
                                fill.set(rx.len() as i64);
                                events += batch.lines.len() as u64;
                                self.process(&batch);
                            }
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
                                let issues: u64 = self.issues.iter().map(IntCounter::get).sum();
                                if issues > warned_issues {
                                    // One line per tick at most: bad lines cannot flood the log.
                                    tracing::warn!(
                                        new = issues - warned_issues,
                                        "lines with parse problems (kept; see weir_parse_errors_total)"
                                    );
                                    warned_issues = issues;
                                }
                            }
                        }
                    }
                })
            })
    }
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
        deriver,
        registry,
        sources,
        origin,
        data_dir: pipeline_data_dir,
    } = pipeline;
    let data_dir = opts.data_dir.clone().or(pipeline_data_dir);
    if data_dir.is_none()
        && (!opts.files.is_empty() || sources.iter().any(|s| matches!(s, SourceConfig::File(_))))
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
    let mut processor = Processor::new(parser, deriver, selfm.clone());
    if opts.stdout {
        processor = processor.with_passthrough();
    }
    let processing = processor
        .spawn(rx, fill)
        .context("cannot start the processing thread")?;

    let ready = Arc::new(AtomicBool::new(false));
    let server_stop = CancellationToken::new();
    let server = match opts.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let local = listener.local_addr()?;
            tracing::info!(addr = %local, pipeline = %origin, "serving /metrics");
            let app = server::router(AppState {
                derived: registry.clone(),
                selfm: selfm.clone(),
                ready: ready.clone(),
            });
            let stop = server_stop.clone();
            Some(tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            }))
        }
        None => None,
    };

    let format = opts.format.unwrap_or_default();
    let mut sources = sources;
    if !opts.files.is_empty() {
        sources.push(SourceConfig::File(source::FileConfig::for_paths(
            opts.files.iter().map(|p| p.display().to_string()).collect(),
            format,
        )));
    }
    for address in opts.tcp {
        sources.push(SourceConfig::Tcp(source::TcpConfig {
            address,
            format,
            ..source::TcpConfig::default()
        }));
    }
    // stdin is the default only when nothing else is configured.
    if sources.is_empty() {
        sources.push(SourceConfig::Stdin(source::StdinConfig { format }));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for s in sources {
        let (out, stop) = (tx.clone(), shutdown.clone());
        let selfm = selfm.clone();
        match s {
            SourceConfig::Stdin(cfg) => {
                tasks.spawn(async move {
                    source::stdin::run(cfg.format, out, stop, max_line, selfm)
                        .await
                        .context("reading stdin")
                });
            }
            SourceConfig::Tcp(cfg) => {
                tasks.spawn(async move {
                    source::tcp::run(cfg, out, stop, max_line, selfm)
                        .await
                        .map_err(anyhow::Error::from)
                });
            }
            SourceConfig::File(f) if opts.oneshot => {
                // A backfill: every matching file once, to its end, in order.
                let paths: Vec<PathBuf> = source::file::expand(&f.paths, &f.exclude)?
                    .into_iter()
                    .map(|(p, _)| p)
                    .collect();
                if paths.is_empty() {
                    anyhow::bail!("no file matches {:?}", f.paths.join(" "));
                }
                let progress = opts.progress.then(|| progress_bar(&paths));
                tasks.spawn(async move {
                    source::file::read_to_end(paths, f.format, out, stop, max_line, selfm, progress)
                        .await
                        .map_err(anyhow::Error::from)
                });
            }
            SourceConfig::File(cfg) => {
                let tail = source::file::Tail {
                    cfg,
                    data_dir: data_dir.clone(),
                    max_line_bytes: max_line,
                    selfm,
                };
                tasks.spawn(async move { tail.run(out, stop).await.map_err(anyhow::Error::from) });
            }
        }
    }
    drop(tx);
    ready.store(true, Ordering::Relaxed);

    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
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
    }
    // The processor ends once every batch sent is handled; join it off the async workers.
    tokio::task::spawn_blocking(move || processing.join())
        .await
        .context("joining the processing thread")?
        .map_err(|_| anyhow::anyhow!("the processing thread panicked"))?;
    ready.store(false, Ordering::Relaxed);
    server_stop.cancel();
    if let Some(s) = server {
        s.await.context("server task panicked")??;
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn progress_bar(paths: &[PathBuf]) -> ProgressBar {
    let total: u64 = paths
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}
