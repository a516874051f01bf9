//! notify: files that appear are opened at once on notify's thread (never blocking: a FIFO is
//! not opened), and the tailer is woken to read or rescan.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use super::walk::Globs;
use super::{open_regular, IoErrors};

/// A file opened the moment notify reported it, at `path` (a name the globs select): by the
/// time the tailer takes it, that name may already be another file's, or nobody's.
pub(super) struct Opened {
    pub path: PathBuf,
    pub pattern: usize,
    pub file: std::fs::File,
}

/// Files opened on notify events, waiting for the tailer (each holds a descriptor).
pub(super) const OPENED_QUEUE: usize = 64;

/// What the notify callback needs: where to send files it opens, and how to wake the tailer.
pub(super) struct Watch {
    pub matcher: Arc<Globs>,
    pub io: Arc<IoErrors>,
    pub opened: mpsc::Sender<Opened>,
    pub wake: Arc<Notify>,
    pub rescan: Arc<AtomicBool>,
}

impl Watch {
    /// Handles one notify event, on notify's thread. A file created under (or moved to) a
    /// selected name, or moved from a selected name to another, is opened here and now: the
    /// open handle keeps the inode readable whatever happens to its name before the tailer
    /// takes it.
    fn on_event(&self, res: notify::Result<notify::Event>) {
        use notify::event::{ModifyKind, RenameMode};
        use notify::EventKind;
        let ev = match res {
            Ok(ev) => ev,
            Err(e) => {
                // E.g. the kernel's event queue overflowed: only a walk can tell what changed.
                tracing::debug!(error = %e, "file notification error; rescanning");
                self.rescan.store(true, Ordering::Release);
                self.wake.notify_one();
                return;
            }
        };
        // Creations, renames and removals call for a rescan; writes only for a read.
        if !matches!(ev.kind, EventKind::Modify(ModifyKind::Data(_))) {
            self.rescan.store(true, Ordering::Release);
        }
        match ev.kind {
            EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                for p in &ev.paths {
                    if let Some(pattern) = self.matcher.pattern_of(p) {
                        self.open(p, p, pattern);
                    }
                }
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                if let [from, to] = &ev.paths[..] {
                    let selected = self.matcher.pattern_of(from);
                    if let (Some(pattern), None) = (selected, self.matcher.pattern_of(to)) {
                        self.open(to, from, pattern);
                    }
                }
            }
            _ => {}
        }
        self.wake.notify_one();
    }

    /// Opens `path` (the file seen at the selected name `seen_at`) for the tailer.
    fn open(&self, path: &Path, seen_at: &Path, pattern: usize) {
        let file = match open_regular(path) {
            Ok(f) => f,
            // Renamed or deleted again already; a later event (or a walk) may still find it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            // A FIFO or a directory: never read; the next walk names it in a warning.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => return,
            Err(e) => return self.io.report("open", path, &e),
        };
        let opened = Opened {
            path: seen_at.to_path_buf(),
            pattern,
            file,
        };
        // When the tailer is behind, notify's thread waits here (the kernel queues the events
        // meanwhile; if its queue overflows, notify reports an error and the tailer rescans):
        // open handles stay bounded by the queue. Err: the tailer stopped.
        let _ = self.opened.blocking_send(opened);
    }
}

/// Watches the directories the patterns live in; any event wakes the tailer early, events
/// other than writes make it rescan the globs at once, and files that appear are opened at once
/// (see [`Watch::on_event`]).
pub(super) fn watch_dirs(patterns: &[String], watch: Watch) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| watch.on_event(res))
            .map_err(|e| tracing::warn!(error = %e, "file notifications unavailable; polling only"))
            .ok()?;
    for p in patterns {
        // The directory part before the first glob character.
        let literal: String = p
            .split('/')
            .take_while(|seg| !seg.contains(['*', '?', '[', '{']))
            .collect::<Vec<_>>()
            .join("/");
        let mut dir = PathBuf::from(if literal.is_empty() { "." } else { &literal });
        if dir.is_file() || !dir.exists() {
            dir = dir
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
        }
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
            tracing::debug!(dir = %dir.display(), error = %e, "cannot watch directory");
        }
    }
    Some(watcher)
}
