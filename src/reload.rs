//! Hot reload: SIGHUP, `POST /-/reload`, or (`--watch-config`) a change of the pipeline file
//! compiles the file again and switches the running pipeline to it.
//!
//! # What a reload keeps
//! - Every event: the processor finishes the batch in hand, swaps its parser, metrics, rules —
//!   and sinks, when they changed — and takes the next batch. Unchanged sources and sinks keep
//!   running untouched; file positions are untouched, so nothing is read twice.
//! - Counters: a metric whose definition did not change keeps its series (the same
//!   prometheus handles); a changed, new or removed metric is swapped in the registry `/metrics`
//!   serves. An alert rule whose name and expression did not change keeps its alerts (no
//!   second notification) and its windows.
//! - An invalid file changes nothing: the error (file:line:column) is logged and answered to
//!   `POST /-/reload` with a 400, and counted in `weir_config_reloads_total{result="error"}`.
//!
//! # Components ([`Components`])
//! Sources, sinks and notifiers are compared with the running ones by their whole settings:
//! - **Sinks** (named `kind` or `kind_i`, as at start): a new one starts; a removed or changed
//!   one stops taking events and delivers what it holds — in memory, within
//!   `shutdown_timeout_secs`, as at shutdown; a disk buffer is handed over instead: the old sink
//!   lets go of it at once and the new sink of that name sends what it holds. The processor
//!   waits during the handover (backpressure, no loss).
//! - **Sources**: a new one starts; a removed one stops (a file source saves its positions); a
//!   changed one is stopped, then started again — a file source resumes at its checkpoint, so a
//!   file source is only restarted with a `data_dir` (without one it would read its files
//!   again: the change then waits for a restart). stdin is never stopped (the application
//!   writing to it would lose its pipe); a TCP source that restarts closes its connections.
//!   A reload never stops every source (weir would end): the sources then stay as they were.
//! - **Notifiers**: changed ones get a new dispatcher; the old one sends what it has queued
//!   (within `shutdown_timeout_secs`) and ends.
//!
//! `data_dir` is read once at start: a reload that changes it says so and applies the rest.
//!
//! SIGHUP is handled in every run, so that it never kills weir (its default action): without
//! a pipeline file to read again (no `--config`, or `--oneshot`), [`ignore_hangup`] says so
//! in a log line and the run goes on. [`crate::shutdown::watch_signals`] installs the handler
//! first thing, before the pipeline starts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::additions::CliAdditions;
use crate::alert::dispatch::{DispatchHandle, DispatchOptions, Dispatcher};
use crate::alert::engine::{Clock, Engine};
use crate::config::PipelineConfig;
use crate::derive::Deriver;
use crate::parse::LineParser;
use crate::sink::{self, BufferKind, SinkConfig, SinkInput};
use crate::source::SourceConfig;
use crate::telemetry::SelfMetrics;

/// A compiled pipeline for the processor to switch to.
pub struct Reload {
    pub parser: std::sync::Arc<LineParser>,
    pub deriver: Deriver,
    pub engine: Engine,
    /// `[event]`, for the parsers of `weir tap` opened after the reload.
    pub event: crate::parse::EventConfig,
    /// Sinks to close and start, when they changed.
    pub sinks: Option<SinkSwap>,
    /// Where notifications go from now on, when the notifiers changed (`Some(None)`: nowhere).
    pub dispatch: Option<Option<DispatchHandle>>,
    /// The processor answers with what changed.
    pub done: oneshot::Sender<Summary>,
}

/// The processor's part of a sink change: drop the inputs of `close`, say so on `closed`,
/// then wait for the inputs of the started sinks on `start`.
pub struct SinkSwap {
    pub close: Vec<String>,
    pub closed: oneshot::Sender<()>,
    pub start: oneshot::Receiver<Vec<SinkInput>>,
}

/// A change of the sources, for the loop that runs them (in `topology::run`): stop the
/// sources with these keys (and wait for them to end), then start these.
pub struct SourceChange {
    pub stop: Vec<String>,
    pub start: Vec<SourceConfig>,
    pub done: oneshot::Sender<()>,
}

/// The notifiers' identity, empty when none is needed (no notifier, or no rule to notify).
pub fn notifiers_key(
    notifiers: &std::collections::BTreeMap<String, crate::alert::notify::NotifierConfig>,
    no_rules: bool,
) -> String {
    if notifiers.is_empty() || no_rules {
        String::new()
    } else {
        format!("{notifiers:?}")
    }
}

/// A source's identity: its whole settings.
pub fn source_key(s: &SourceConfig) -> String {
    format!("{s:?}")
}

/// What a reload changed, by metric name.
#[derive(Debug, Default)]
pub struct Summary {
    pub kept: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub rules: usize,
}

/// A request to reload; the answer is a message for people (`Err`: the config was refused).
pub type Request = oneshot::Sender<Result<String, String>>;

/// A running sink.
pub struct RunningSink {
    pub name: String,
    /// Its settings, to compare.
    pub key: String,
    pub disk: bool,
    /// Cancelled: it stops at once (the shutdown deadline, or a disk buffer handed over).
    pub abandon: CancellationToken,
    pub task: JoinHandle<()>,
}

/// The running pipeline's sources, sinks and notifiers, which a reload replaces where they
/// changed. Shared by `topology::run` (which starts them and waits for them at the end) and the
/// reload task.
pub struct Components {
    pub selfm: SelfMetrics,
    /// What the command line adds to the pipeline's sources and sinks.
    pub adds: CliAdditions,
    /// The data dir in use (command line, else the pipeline's at start).
    pub data_dir: Option<PathBuf>,
    /// The pipeline file's `data_dir` at start, to tell a change.
    pub pipeline_data_dir: Option<PathBuf>,
    /// Parent of every sink's abandon token: the shutdown deadline.
    pub abandon: CancellationToken,
    pub shutdown_timeout: Duration,
    pub sinks: Vec<RunningSink>,
    /// Sinks stopped by a reload, still delivering what they hold.
    pub retired: Vec<(String, JoinHandle<()>)>,
    /// The running sources' keys, in order.
    pub sources: Vec<String>,
    /// The loop that runs the sources.
    pub source_changes: Option<mpsc::Sender<SourceChange>>,
    /// `format!("{:?}")` of the notifiers the dispatcher was built from.
    pub notifiers_key: String,
    pub dispatcher: Option<Dispatcher>,
    /// Old dispatchers sending what they queued.
    pub retired_dispatchers: Vec<JoinHandle<()>>,
}

pub type SharedComponents = Arc<Mutex<Components>>;

impl Components {
    /// Starts sink `name`.
    pub fn start_sink(
        &self,
        name: &str,
        cfg: &SinkConfig,
    ) -> Result<(SinkInput, RunningSink), String> {
        let abandon = self.abandon.child_token();
        let (input, task) = sink::start(
            name,
            cfg,
            &self.selfm,
            abandon.clone(),
            self.data_dir.as_deref(),
        )
        .map_err(|e| format!("sink {name}: {e}"))?;
        tracing::info!(sink = %name, "sink started");
        Ok((
            input,
            RunningSink {
                name: name.to_string(),
                key: format!("{cfg:?}"),
                disk: cfg.buffer().kind == BufferKind::Disk,
                abandon,
                task,
            },
        ))
    }
}

/// Answers SIGHUP when there is nothing to reload (`why`: no `--config`, or a `--oneshot`
/// run): logs it and goes on, until `shutdown`.
pub async fn ignore_hangup(why: &'static str, shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    tracing::info!(reason = why, "SIGHUP: {why}, nothing to reload");
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = why;
        shutdown.cancelled().await;
    }
}

/// Reloads `path` on SIGHUP, on each request from `requests`, and (with `watch`) when the file
/// changes, until `shutdown`.
pub async fn run(
    path: PathBuf,
    parts: SharedComponents,
    watch: bool,
    selfm: SelfMetrics,
    to_processor: mpsc::Sender<Reload>,
    mut requests: mpsc::Receiver<Request>,
    shutdown: CancellationToken,
) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /-/reload");
            None
        }
    };
    let (changed_tx, mut changed) = mpsc::channel::<()>(1);
    // Kept alive for as long as the loop runs.
    let _watcher = if watch {
        match watch_file(&path, changed_tx) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot watch the pipeline file");
                None
            }
        }
    } else {
        None
    };
    loop {
        let (reply, why) = tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(()) = async { match &mut hup { Some(h) => h.recv().await, None => std::future::pending().await } } => (None, "SIGHUP"),
            r = requests.recv() => match r {
                Some(r) => (Some(r), "POST /-/reload"),
                None => return,
            },
            Some(()) = changed.recv() => {
                // Editors write in several steps: let the file settle.
                tokio::time::sleep(Duration::from_millis(300)).await;
                while changed.try_recv().is_ok() {}
                (None, "file changed")
            }
        };
        let result = reload_once(&path, &parts, &selfm, &to_processor).await;
        match &result {
            Ok(msg) => {
                selfm.config_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(trigger = why, path = %path.display(), "{msg}");
            }
            Err(msg) => {
                selfm.config_reloads.with_label_values(&["error"]).inc();
                tracing::error!(trigger = why, path = %path.display(), error = %msg, "reload refused; the running pipeline is unchanged");
            }
        }
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }
}

const SHUTTING_DOWN: &str = "the pipeline is shutting down";

async fn reload_once(
    path: &Path,
    parts: &SharedComponents,
    selfm: &SelfMetrics,
    to_processor: &mpsc::Sender<Reload>,
) -> Result<String, String> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let name = path.display().to_string();
    let p = PipelineConfig::parse(&name, &text)
        .and_then(|c| c.compile(&name, &text, selfm))
        .map_err(|e| e.to_string())?;
    let mut parts = parts.lock().await;
    let mut notes: Vec<String> = Vec::new();

    // Notifiers: built (and refused) before anything changes.
    let notifiers_key = notifiers_key(&p.notifiers, p.rules.is_empty());
    let mut new_dispatcher = None;
    let dispatch = if notifiers_key == parts.notifiers_key {
        None
    } else if notifiers_key.is_empty() {
        Some(None)
    } else {
        let mut built = Vec::new();
        for (n, cfg) in &p.notifiers {
            built.push((
                n.clone(),
                cfg.build().map_err(|e| format!("notifier {n}: {e}"))?,
            ));
        }
        let (handle, d) = Dispatcher::start(built, DispatchOptions::default(), selfm);
        new_dispatcher = Some(d);
        Some(Some(handle))
    };

    // Sinks: by name and settings.
    let wanted = parts.adds.sinks(p.sinks.clone());
    let keep = |r: &RunningSink| {
        wanted
            .iter()
            .any(|(n, c)| *n == r.name && format!("{c:?}") == r.key)
    };
    let close: Vec<String> = parts
        .sinks
        .iter()
        .filter(|r| !keep(r))
        .map(|r| r.name.clone())
        .collect();
    let start: Vec<(String, SinkConfig)> = wanted
        .into_iter()
        .filter(|(n, c)| {
            !parts
                .sinks
                .iter()
                .any(|r| r.name == *n && r.key == format!("{c:?}"))
        })
        .collect();
    let (swap, sink_io) = if close.is_empty() && start.is_empty() {
        (None, None)
    } else {
        let (closed_tx, closed_rx) = oneshot::channel();
        let (start_tx, start_rx) = oneshot::channel();
        (
            Some(SinkSwap {
                close: close.clone(),
                closed: closed_tx,
                start: start_rx,
            }),
            Some((closed_rx, start_tx)),
        )
    };

    let (done, answer) = oneshot::channel();
    let rules = p.rules.len();
    to_processor
        .send(Reload {
            parser: std::sync::Arc::new(p.parser),
            engine: Engine::new(p.rules, selfm).with_clock(Clock::Wall),
            deriver: p.deriver,
            event: p.event,
            sinks: swap,
            dispatch,
            done,
        })
        .await
        .map_err(|_| SHUTTING_DOWN.to_string())?;

    if let Some((closed_rx, start_tx)) = sink_io {
        // The processor holds no input of the closed sinks any more.
        let _ = closed_rx.await;
        let closing: Vec<RunningSink> = {
            let (gone, kept) = std::mem::take(&mut parts.sinks)
                .into_iter()
                .partition(|r| close.contains(&r.name));
            parts.sinks = kept;
            gone
        };
        for old in closing {
            if old.disk && start.iter().any(|(n, _)| *n == old.name) {
                // Hand the disk buffer over: the old sink lets go now, what it held stays on
                // disk for the new one.
                old.abandon.cancel();
                let _ = old.task.await;
            } else {
                // Deliver what it holds, within the shutdown timeout.
                let (abandon, secs) = (old.abandon.clone(), parts.shutdown_timeout);
                tokio::spawn(async move {
                    tokio::time::sleep(secs).await;
                    abandon.cancel();
                });
                parts.retired.push((old.name, old.task));
            }
        }
        let mut inputs = Vec::new();
        for (n, cfg) in &start {
            match parts.start_sink(n, cfg) {
                Ok((input, running)) => {
                    inputs.push(input);
                    parts.sinks.push(running);
                }
                Err(e) => {
                    tracing::error!(error = %e, "sink did not start");
                    notes.push(format!("{e} (not started)"));
                }
            }
        }
        let _ = start_tx.send(inputs);
        let names: Vec<String> = start.iter().map(|(n, _)| n.clone()).collect();
        notes.push(format!(
            "sinks: {} started{}, {} stopped{}",
            names.len(),
            list(&names),
            close.len(),
            list(&close)
        ));
    }
    let s = answer.await.map_err(|_| SHUTTING_DOWN.to_string())?;

    if let Some(d) = dispatch_swap(&mut parts, new_dispatcher, notifiers_key) {
        notes.push(d);
    }
    if let Some(n) = change_sources(&mut parts, p.sources).await? {
        notes.push(n);
    }
    if p.data_dir != parts.pipeline_data_dir {
        notes.push("data_dir changed: it applies at the next restart".into());
    }

    let mut msg = format!(
        "reloaded: {} metrics kept, {} new or changed{}, {} removed{}; {rules} alert rules",
        s.kept.len(),
        s.changed.len(),
        list(&s.changed),
        s.removed.len(),
        list(&s.removed),
    );
    for n in notes {
        msg.push_str("; ");
        msg.push_str(&n);
    }
    Ok(msg)
}

/// Puts the new dispatcher in place (the processor uses its handle already); the old one sends
/// what it queued within the shutdown timeout.
fn dispatch_swap(parts: &mut Components, new: Option<Dispatcher>, key: String) -> Option<String> {
    if key == parts.notifiers_key {
        return None;
    }
    parts.notifiers_key = key;
    if let Some(old) = std::mem::replace(&mut parts.dispatcher, new) {
        let secs = parts.shutdown_timeout;
        parts
            .retired_dispatchers
            .push(tokio::spawn(old.shutdown(secs)));
    }
    Some("notifiers replaced".into())
}

/// Stops the removed and changed sources and starts the new ones; a note for people.
async fn change_sources(
    parts: &mut Components,
    pipeline: Vec<SourceConfig>,
) -> Result<Option<String>, String> {
    let wanted = parts.adds.sources(pipeline);
    let wanted_keys: Vec<String> = wanted.iter().map(source_key).collect();
    let mut stop = Vec::new();
    let mut waiting = Vec::new();
    for key in &parts.sources {
        if wanted_keys.contains(key) {
            continue;
        }
        if key.starts_with("Stdin(") {
            waiting.push("stdin is never stopped by a reload".to_string());
            continue;
        }
        stop.push(key.clone());
    }
    let mut start = Vec::new();
    for (cfg, key) in wanted.into_iter().zip(wanted_keys) {
        if parts.sources.contains(&key) {
            continue;
        }
        match &cfg {
            SourceConfig::Stdin(_) => {
                waiting.push("a stdin source is only read from the start".to_string());
                continue;
            }
            // The same paths are the same checkpoint store: without one, starting it again
            // would read its files again. It keeps running as it was.
            SourceConfig::File(f) if parts.data_dir.is_none() => {
                let same_paths =
                    |k: &String| stop.contains(k) && k.contains(&format!("paths: {:?}", f.paths));
                if let Some(i) = stop.iter().position(same_paths) {
                    stop.remove(i);
                    waiting.push(format!("file source {:?} changed, but without a data_dir its positions cannot carry over: the change applies at the next restart", f.paths.join(" ")));
                    continue;
                }
            }
            _ => {}
        }
        start.push(cfg);
    }
    if start.is_empty() && stop.len() == parts.sources.len() && !stop.is_empty() {
        // Stopping every source would end weir: a reload never does that.
        waiting.push("no source would be left: the sources keep running as they were".into());
        stop.clear();
    }
    if stop.is_empty() && start.is_empty() {
        return Ok((!waiting.is_empty()).then(|| waiting.join("; ")));
    }
    let tx = parts.source_changes.clone().ok_or(SHUTTING_DOWN)?;
    let (done, finished) = oneshot::channel();
    let (stopped, started) = (stop.len(), start.len());
    let started_keys: Vec<String> = start.iter().map(source_key).collect();
    tx.send(SourceChange {
        stop: stop.clone(),
        start,
        done,
    })
    .await
    .map_err(|_| SHUTTING_DOWN.to_string())?;
    finished.await.map_err(|_| SHUTTING_DOWN.to_string())?;
    parts.sources.retain(|k| !stop.contains(k));
    parts.sources.extend(started_keys);
    waiting.insert(0, format!("sources: {started} started, {stopped} stopped"));
    Ok(Some(waiting.join("; ")))
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!(" ({})", names.join(", "))
    }
}

/// Watches the directory of `path` (editors replace files by renaming) and signals on any
/// event about `path`.
fn watch_file(path: &Path, tx: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let file = path.file_name().map(|f| f.to_os_string());
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            let ours = ev
                .paths
                .iter()
                .any(|p| p.file_name().map(|f| f.to_os_string()) == file);
            if ours && !matches!(ev.kind, notify::EventKind::Access(_)) {
                let _ = tx.try_send(());
            }
        }
    })?;
    w.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    Ok(w)
}
