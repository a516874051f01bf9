//! The file source: tail files the way `tail -F` does, without losing or repeating a line across
//! rotation and restarts; or read them once to their end (`--oneshot` backfills).
//!
//! # Tailing
//! - Files come from globs (`paths`, minus `exclude`), rescanned every `rescan_interval_ms` and
//!   whenever notify reports a change in their directories (polling remains the fallback).
//! - A file is known by device + inode (and a fingerprint of its first bytes in checkpoints).
//!   Rename-and-create: the old file keeps being read through its open handle, beside the new
//!   file at the path (read from its start), for as long as it still grows: it is closed once it
//!   has been quiet (its size unchanged) for `rotate_wait_ms`, so lines a late writer adds (nginx
//!   before its USR1, an app that reopens from `postrotate`) are read, and a write after that
//!   quiet time is not. A renamed file whose new name the globs still select simply keeps being
//!   followed under that name. Copytruncate: a size below the read
//!   position, or first bytes that changed (truncated and refilled), restart the file at 0; both
//!   are checked before every read. (A truncation that lands between that check and the read
//!   itself cannot be told from an append; copytruncate also loses what is written between its
//!   copy and its truncate. Prefer rename-and-create.) Deletion: the file is read through its
//!   open handle as a rotated one (a writer may still hold it), then closed and forgotten.
//! - Whether a followed file moved is asked of the file itself (its path and its link count),
//!   never inferred from a glob walk that came back short: an I/O error (EMFILE, EACCES) is
//!   counted as `weir_file_events_total{event="error_<kind>"}`, logged at most once a minute per
//!   kind, and never taken for a rotation. `rotated` counts renames of followed files, `deleted`
//!   unlinks.
//! - Short-lived files: notify's create and rename events open the file at once, on notify's own
//!   thread, so a file created and renamed to a name the globs do not select (or deleted) before
//!   the next scan is still read, from its start, as a rotated file. The boundary: a file created
//!   and renamed twice (or deleted) before notify's thread gets to its event is found by no one;
//!   without notify (inotify limits, unsupported filesystems) only rescans see files, and a file
//!   that lives less than `rescan_interval_ms` under a selected name may be missed.
//! - A partial last line waits for its newline up to `partial_line_timeout_ms`, then is emitted.
//! - At most `max_open_files` files are open at once, rotated files still held included. When
//!   more files are found, they wait in a queue (`weir_files_waiting`, and a warning): a file
//!   read to its end (nothing pending: no partial line, no multi-line event held) is closed to
//!   give its slot to the next one, keeping its position; it is queued again when its size
//!   changes, and reopened at that position once its identity is checked (device + inode +
//!   fingerprint of its first bytes). A file that keeps growing gives up its slot after
//!   [`tail::TURN`] when others wait. A file closed so, then rotated, is looked for by inode beside
//!   its old name; one deleted (or moved elsewhere) while closed loses what it had unread,
//!   counted as `weir_file_events_total{event="lost_while_closed"}`. An open that fails
//!   (EMFILE, ENFILE, EACCES) is counted in `weir_file_errors_total{kind}`, logged at most once
//!   a minute per kind, and retried later: never taken for a rotation or a deletion.
//! - What the globs select is walked by [`walk`]: symlinks are followed but no directory is
//!   entered twice (cycles), `**` descends at most [`walk::MAX_WALK_DEPTH`] levels, one walk
//!   lists at most `max_glob_matches` files, and FIFOs, sockets and devices are never opened
//!   (a warning names each, `weir_file_skipped_total{reason="not_regular"}` counts them).
//! - Every loop that can run long (walks, reads, sends into a full pipeline, retries) observes
//!   the shutdown token: SIGTERM stops the source whatever it is doing.
//!
//! # Checkpoints
//! With a `data_dir`, the position of each file is saved (atomic write + rename) every second and
//! at shutdown. Only positions the processor has acknowledged are saved ([`Ack`]): after a
//! restart, also after `kill -9`, no line is lost, and at most the lines processed after the
//! last save (about one second's worth) are read again. A rotated file still held keeps its
//! entry (by device + inode) under its new name, found in its directory when it is noticed: a
//! restart during `rotate_wait_ms` finds it there (or in the same directory under a later name),
//! checks its fingerprint and reads its tail. What the format cannot express: a file moved to
//! another directory, or deleted, while weir was down; its tail is lost. The entry of a rotated
//! file is forgotten ten minutes after the file is closed (until then, a late notify event for
//! it is recognised and ignored instead of reading the file again).

pub mod oneshot;
pub mod tail;
pub mod walk;
mod watch;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::checkpoint::CheckpointError;
use super::{FileConfig, LineBatch};
use crate::telemetry::{io_error_kind, LogLimit, SelfMetrics};

pub use oneshot::{read_to_end, ReadOnce};
pub use tail::Tail;
use walk::{Globs, WalkLimits, Walked};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid glob {pattern:?}: {message}")]
    Glob { pattern: String, message: String },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("no file matches {0:?}")]
    NoMatch(String),
}

/// Where reading starts in files found at startup that have no checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadFrom {
    #[default]
    Beginning,
    End,
}

/// The bounds of a source's walks.
fn limits(cfg: &FileConfig) -> WalkLimits {
    WalkLimits {
        max_matches: cfg.max_glob_matches.max(1),
        max_depth: walk::MAX_WALK_DEPTH,
    }
}

/// Expands the source's globs to the regular files they select, sorted per pattern, each file
/// once, with the index of the pattern that selects it (for `--oneshot`). What the walk left
/// out is logged and counted as in tailing; a walk cut short by `shutdown` returns what it found.
pub fn expand(
    cfg: &FileConfig,
    selfm: &SelfMetrics,
    shutdown: &CancellationToken,
) -> Result<Vec<(PathBuf, usize)>, FileError> {
    let globs = Globs::new(&cfg.paths, &cfg.exclude)?;
    let walked = globs.walk(limits(cfg), shutdown);
    let report = WalkReport::new(selfm);
    let io = IoErrors::new(selfm);
    report.report(&walked, &io, cfg);
    Ok(walked
        .files
        .into_iter()
        .map(|f| (f.path, f.pattern))
        .collect())
}

/// Opens `path` for reading if it is a regular file. The open itself never blocks (a FIFO's
/// open would wait for a writer): on Linux it is made with `O_NONBLOCK` (no effect on the reads
/// of a regular file), elsewhere the path is checked first (a FIFO put in its place between the
/// check and the open is the one case left). Not a regular file (FIFO,
/// directory, socket, device): `ErrorKind::InvalidInput`.
fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    let not_regular = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        )
    };
    #[cfg(all(
        target_os = "linux",
        any(
            target_arch = "x86_64",
            target_arch = "x86",
            target_arch = "aarch64",
            target_arch = "arm",
            target_arch = "riscv64",
            target_arch = "powerpc64"
        )
    ))]
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        /// `O_NONBLOCK` on Linux for these architectures (mips and sparc differ).
        const O_NONBLOCK: i32 = 0o4000;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(O_NONBLOCK)
            .open(path)?
    };
    #[cfg(not(all(
        target_os = "linux",
        any(
            target_arch = "x86_64",
            target_arch = "x86",
            target_arch = "aarch64",
            target_arch = "arm",
            target_arch = "riscv64",
            target_arch = "powerpc64"
        )
    )))]
    let file = {
        if !std::fs::metadata(path)?.is_file() {
            return Err(not_regular());
        }
        std::fs::File::open(path)?
    };
    if !file.metadata()?.is_file() {
        return Err(not_regular());
    }
    Ok(file)
}

fn envelope_counter(selfm: &SelfMetrics) -> prometheus::IntCounter {
    selfm.parse_errors.with_label_values(&["invalid_envelope"])
}

/// Sends batches into the pipeline unless shutdown comes first: a send blocked on a full
/// channel (a sink that does not answer) must not keep the source from stopping. A batch not
/// sent was never acknowledged, so its lines are read again after a restart.
struct Out<'a> {
    tx: &'a mpsc::Sender<LineBatch>,
    shutdown: &'a CancellationToken,
}

impl Out<'_> {
    /// `false` when the pipeline is closed or shutting down.
    async fn send(&self, batch: LineBatch) -> bool {
        tokio::select! {
            r = self.tx.send(batch) => r.is_ok(),
            _ = self.shutdown.cancelled() => false,
        }
    }
}

/// Counts and logs (rate-limited, per kind) the I/O errors met while finding and opening files:
/// each is reported as what it is, never taken for a rotation or a deletion.
struct IoErrors {
    events: prometheus::IntCounterVec,
    errors: prometheus::IntCounterVec,
    limits: Mutex<HashMap<&'static str, LogLimit>>,
}

impl IoErrors {
    fn new(selfm: &SelfMetrics) -> IoErrors {
        IoErrors {
            events: selfm.file_events_total.clone(),
            errors: selfm.file_errors_total.clone(),
            limits: Mutex::default(),
        }
    }

    fn report(&self, op: &'static str, path: &Path, e: &std::io::Error) {
        let kind = io_error_kind(e);
        self.events
            .with_label_values(&[&format!("error_{kind}")])
            .inc();
        self.errors.with_label_values(&[kind]).inc();
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(suppressed) = limits.entry(kind).or_default().hit() {
            tracing::warn!(path = %path.display(), error = %e, kind, op, suppressed, "file I/O error (retried later; not taken for a rotation or a deletion)");
        }
    }
}

/// Most distinct non-regular paths remembered, so that each is warned about and counted once.
const MAX_SKIPPED_REMEMBERED: usize = 10_000;

/// Says what a walk left out: each non-regular file once (a warning naming it, a count), and
/// the walk's bounds when hit (a warning at most once a minute, a count per walk).
struct WalkReport {
    skipped: prometheus::IntCounterVec,
    seen: Mutex<HashSet<PathBuf>>,
    bounds: Mutex<LogLimit>,
}

impl WalkReport {
    fn new(selfm: &SelfMetrics) -> WalkReport {
        WalkReport {
            skipped: selfm.file_skipped_total.clone(),
            seen: Mutex::default(),
            bounds: Mutex::default(),
        }
    }

    fn report(&self, walked: &Walked, io: &IoErrors, cfg: &FileConfig) {
        for (path, e) in &walked.errors {
            io.report("walk", path, e);
        }
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            for path in &walked.not_regular {
                if seen.contains(path) {
                    continue;
                }
                if seen.len() < MAX_SKIPPED_REMEMBERED {
                    seen.insert(path.clone());
                }
                self.skipped.with_label_values(&["not_regular"]).inc();
                tracing::warn!(path = %path.display(), "not a regular file (a FIFO, socket or device): skipped, never opened");
            }
        }
        if walked.depth_limited == 0 && !walked.match_limited {
            return;
        }
        if walked.depth_limited > 0 {
            self.skipped
                .with_label_values(&["max_depth"])
                .inc_by(walked.depth_limited);
        }
        if walked.match_limited {
            self.skipped.with_label_values(&["max_glob_matches"]).inc();
        }
        let mut limit = self.bounds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(suppressed) = limit.hit() {
            tracing::warn!(
                paths = ?cfg.paths,
                dirs_not_entered = walked.depth_limited,
                max_depth = walk::MAX_WALK_DEPTH,
                stopped_at_max_glob_matches = walked.match_limited,
                max_glob_matches = cfg.max_glob_matches,
                suppressed,
                "glob walk bounded: files beyond these bounds are not read"
            );
        }
    }
}

#[cfg(test)]
mod tests;
