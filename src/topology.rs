//! Wires a compiled pipeline into running parts, joined by bounded channels:
//!
//! ```text
//! sources (async tasks) --LineBatch, bounded--> processor (parse workers, then one derive
//!                                                thread; see `processor`) --> registry, sinks
//!                                                                              ^
//!                                                       server (/metrics) reads it
//! ```
//!
//! Invariants: the source queue is the bounded batch channel ([`CHANNEL_BATCHES`] batches of
//! at most one read each), and the processor's own channels hold one batch each, so memory is
//! bounded and a slow stage pushes back on the sources. Events are derived in the order each
//! source read them (the processor keeps that order across its parse workers). Parse and derive
//! are CPU work with no `.await`, on threads of their own; the tokio workers stay free for I/O
//! and scrapes. Shutdown: cancelling the token stops the sources, which drop their senders; the
//! processor handles every batch already queued, then ends; then the server stops.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::additions::CliAdditions;
use crate::alert::dispatch::{DispatchOptions, Dispatcher};
use crate::alert::engine::{Clock, Engine};
use crate::config::CompiledPipeline;
use crate::parse::report::ParseReport;
use crate::processor::Processor;
use crate::reload::{self, Reload};
use crate::server::{self, AppState};
use crate::sink::{self, SinkConfig as SinkCfg};
use crate::source::{self, LineBatch, SourceConfig};
use crate::tap::TapHub;
use crate::telemetry::SelfMetrics;

/// Capacity of the source → processor channel, in batches (each at most one 128 KiB read).
pub const CHANNEL_BATCHES: usize = 16;

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
    /// `--threads`: parse workers (0: one per core); see [`crate::processor`].
    pub threads: usize,
}

/// The command line's additions of a run.
fn additions_of(
    opts: &RunOptions,
    multiline: Option<&source::multiline::MultilineConfig>,
) -> CliAdditions {
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
    let adds = additions_of(&opts, multiline.as_ref());
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
    let workers = match opts.threads {
        0 => crate::processor::default_workers(),
        n => n,
    };
    let processing = processor
        .spawn(rx, reload_rx, fill, workers)
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
                    crate::parse::line_text(bytes, cut, &mut |_| {}).into_owned()
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
