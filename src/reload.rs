//! Hot reload: SIGHUP, `POST /-/reload`, or (`--watch-config`) a change of the pipeline file
//! compiles the file again and switches the processor to it between two batches.
//!
//! # What a reload keeps
//! - Every event: sources, the batch channel and the sinks keep running; the processor finishes
//!   the batch in hand, swaps its parser, metrics and rules, and takes the next batch. File
//!   positions are untouched, so nothing is read twice.
//! - Counters: a metric whose definition did not change keeps its series (the same
//!   prometheus handles); a changed, new or removed metric is swapped in the registry `/metrics`
//!   serves. An alert rule whose name and expression did not change keeps its alerts (no
//!   second notification) and its windows.
//! - An invalid file changes nothing: the error (file:line:column) is logged and answered to
//!   `POST /-/reload` with a 400, and counted in `weir_config_reloads_total{result="error"}`.
//!
//! Sources, sinks, notifiers and `data_dir` are built once at start: a reload that changes
//! them applies the rest and says (log, HTTP answer) that those parts wait for a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::alert::engine::{Clock, Engine};
use crate::config::{CompiledPipeline, PipelineConfig};
use crate::derive::Deriver;
use crate::parse::LineParser;
use crate::telemetry::SelfMetrics;

/// A compiled pipeline for the processor to switch to.
pub struct Reload {
    pub parser: LineParser,
    pub deriver: Deriver,
    pub engine: Engine,
    /// `[event]`, for the parsers of `weir tap` opened after the reload.
    pub event: crate::parse::EventConfig,
    /// The processor answers with what changed.
    pub done: oneshot::Sender<Summary>,
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

/// The parts of a pipeline that only a restart applies, as text to compare.
pub fn fixed_parts(p: &CompiledPipeline) -> String {
    format!("{:?}", (&p.sources, &p.sinks, &p.notifiers, &p.data_dir))
}

/// Reloads `path` on SIGHUP, on each request from `requests`, and (with `watch`) when the file
/// changes, until `shutdown`. `fixed` is [`fixed_parts`] of the running pipeline.
pub async fn run(
    path: PathBuf,
    fixed: String,
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
        let result = reload_once(&path, &fixed, &selfm, &to_processor).await;
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

async fn reload_once(
    path: &Path,
    fixed: &str,
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
    let restart_needed = fixed_parts(&p) != fixed;
    let (done, answer) = oneshot::channel();
    let rules = p.rules.len();
    to_processor
        .send(Reload {
            parser: p.parser,
            engine: Engine::new(p.rules, selfm).with_clock(Clock::Wall),
            deriver: p.deriver,
            event: p.event,
            done,
        })
        .await
        .map_err(|_| "the pipeline is shutting down".to_string())?;
    let s = answer
        .await
        .map_err(|_| "the pipeline is shutting down".to_string())?;
    let mut msg = format!(
        "reloaded: {} metrics kept, {} new or changed{}, {} removed{}; {rules} alert rules",
        s.kept.len(),
        s.changed.len(),
        list(&s.changed),
        s.removed.len(),
        list(&s.removed),
    );
    if restart_needed {
        msg.push_str(
            "; sources, sinks, notifiers or data_dir changed too: those apply at the next restart",
        );
    }
    Ok(msg)
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
