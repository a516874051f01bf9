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
//! - At most `max_open_files` files are read at once, rotated files still held included (they
//!   hold a descriptor each); others wait their turn (a rotated one frees its slot at most
//!   `rotate_wait_ms` after it goes quiet).
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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde::Deserialize;
use tokio::io::AsyncSeekExt;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::checkpoint::{fingerprint, read_at, CheckpointError, FileKey, Store, FINGERPRINT_BYTES};
use super::multiline::{Joiner, Multiline};
use super::{AckQueue, FileConfig, Format, LineBatch, LineReader};
use crate::parse::container::ContainerDecoder;
use crate::telemetry::{io_error_kind, LogLimit, SelfMetrics};

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

/// Expands globs to the existing regular files they match, sorted, without duplicates.
pub fn expand(patterns: &[String], exclude: &[String]) -> Result<Vec<(PathBuf, usize)>, FileError> {
    let mut ex = globset::GlobSetBuilder::new();
    for e in exclude {
        ex.add(globset::Glob::new(e).map_err(|err| FileError::Glob {
            pattern: e.clone(),
            message: err.to_string(),
        })?);
    }
    let ex = ex.build().map_err(|err| FileError::Glob {
        pattern: exclude.join(","),
        message: err.to_string(),
    })?;
    let mut out: Vec<(PathBuf, usize)> = Vec::new();
    for (i, p) in patterns.iter().enumerate() {
        let paths = glob::glob(p).map_err(|err| FileError::Glob {
            pattern: p.clone(),
            message: err.to_string(),
        })?;
        let mut found: Vec<PathBuf> = paths
            .filter_map(Result::ok)
            .filter(|p| p.is_file() && !ex.is_match(p))
            .collect();
        found.sort();
        for f in found {
            if !out.iter().any(|(o, _)| *o == f) {
                out.push((f, i));
            }
        }
    }
    Ok(out)
}

/// How [`read_to_end`] reads each file.
pub struct ReadOnce {
    pub format: Format,
    /// Joins multi-line events, per file.
    pub multiline: Option<Multiline>,
    pub max_line_bytes: usize,
    pub selfm: SelfMetrics,
    /// Shows bytes, lines/s and the ETA over all files.
    pub progress: Option<ProgressBar>,
}

/// Reads files in the order given, each to its end (oneshot).
pub async fn read_to_end(
    paths: Vec<PathBuf>,
    read: ReadOnce,
    out: mpsc::Sender<LineBatch>,
    shutdown: CancellationToken,
) -> Result<(), FileError> {
    let ReadOnce {
        format,
        multiline,
        max_line_bytes,
        selfm,
        progress,
    } = read;
    let started = Instant::now();
    let mut lines = 0u64;
    for path in paths {
        let err = |source| FileError::Io {
            path: path.clone(),
            source,
        };
        let file = tokio::fs::File::open(&path).await.map_err(err)?;
        let name: Arc<str> = Arc::from(path.display().to_string());
        let mut reader = LineReader::new(file, name.clone(), max_line_bytes);
        let mut decoder = (format != Format::Json).then(|| {
            ContainerDecoder::new(
                format,
                Some(&path),
                max_line_bytes,
                envelope_counter(&selfm),
            )
        });
        let mut joiner = multiline.as_ref().map(|m| m.joiner(max_line_bytes, &selfm));
        loop {
            let batch = tokio::select! {
                b = reader.next_batch() => b.map_err(err)?,
                _ = shutdown.cancelled() => return Ok(()),
            };
            let Some(batch) = batch else { break };
            if let Some(pb) = &progress {
                lines += batch.lines.len() as u64;
                pb.inc(batch.bytes_read);
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                pb.set_message(format!("{lines} lines, {:.0} lines/s", lines as f64 / secs));
            }
            let batch = super::stdin::stage(&mut decoder, &mut joiner, batch);
            if out.send(batch).await.is_err() {
                return Ok(());
            }
        }
        let mut tail: Vec<LineBatch> = Vec::new();
        if let Some(b) = decoder.as_mut().and_then(|d| d.flush_batch(&name)) {
            tail.push(match &mut joiner {
                Some(j) => j.join(b),
                None => b,
            });
        }
        // An event is never joined across files.
        tail.extend(joiner.as_mut().and_then(|j| j.flush(&name)));
        for b in tail {
            if out.send(b).await.is_err() {
                return Ok(());
            }
        }
    }
    if let Some(pb) = progress {
        pb.finish();
    }
    Ok(())
}

fn envelope_counter(selfm: &SelfMetrics) -> prometheus::IntCounter {
    selfm.parse_errors.with_label_values(&["invalid_envelope"])
}

/// Whether a path is one the source's globs select, as [`expand`] would find it: for paths
/// notify reports, and for the new name of a renamed file.
struct Matcher {
    include: Vec<glob::Pattern>,
    exclude: globset::GlobSet,
}

impl Matcher {
    fn new(patterns: &[String], exclude: &[String]) -> Result<Matcher, FileError> {
        let glob_err = |pattern: &str, message: String| FileError::Glob {
            pattern: pattern.to_string(),
            message,
        };
        let include = patterns
            .iter()
            .map(|p| glob::Pattern::new(p).map_err(|e| glob_err(p, e.to_string())))
            .collect::<Result<_, _>>()?;
        let mut ex = globset::GlobSetBuilder::new();
        for e in exclude {
            ex.add(globset::Glob::new(e).map_err(|err| glob_err(e, err.to_string()))?);
        }
        let exclude = ex
            .build()
            .map_err(|err| glob_err(&exclude.join(","), err.to_string()))?;
        Ok(Matcher { include, exclude })
    }

    /// The index of the first pattern that selects `path`, if one does and no exclude does.
    fn pattern_of(&self, path: &Path) -> Option<usize> {
        let opts = glob::MatchOptions {
            require_literal_separator: true,
            ..glob::MatchOptions::new()
        };
        // notify reports `./app.log` for a file that the pattern `app.log` names.
        let stripped = path.strip_prefix(".").ok();
        [Some(path), stripped].into_iter().flatten().find_map(|p| {
            if self.exclude.is_match(p) {
                return None;
            }
            self.include
                .iter()
                .position(|g| g.matches_path_with(p, opts))
        })
    }
}

/// Counts and logs (rate-limited, per kind) the I/O errors met while finding and opening files:
/// each is reported as what it is, never taken for a rotation or a deletion.
struct IoErrors {
    counter: prometheus::IntCounterVec,
    limits: Mutex<HashMap<&'static str, LogLimit>>,
}

impl IoErrors {
    fn report(&self, op: &'static str, path: &Path, e: &std::io::Error) {
        let kind = io_error_kind(e);
        self.counter
            .with_label_values(&[&format!("error_{kind}")])
            .inc();
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(suppressed) = limits.entry(kind).or_default().hit() {
            tracing::warn!(path = %path.display(), error = %e, kind, op, suppressed, "file I/O error");
        }
    }
}

/// A file opened the moment notify reported it, at `path` (a name the globs select): by the
/// time the tailer takes it, that name may already be another file's, or nobody's.
struct Opened {
    path: PathBuf,
    pattern: usize,
    file: std::fs::File,
}

/// Files opened on notify events, waiting for the tailer (each holds a descriptor).
const OPENED_QUEUE: usize = 64;

/// Directory entries examined at most when looking for a renamed file's new name.
const MAX_DIR_ENTRIES: usize = 100_000;

/// How long the checkpoint of a closed rotated file is kept: a handle notify opened for it
/// before it was closed (still queued) then resumes at its end instead of reading it again.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// Closed rotated files whose checkpoints are kept for [`FORGET_AFTER`] at most.
const MAX_FINISHED: usize = 10_000;

/// What a tailing run shares between its steps and with notify's thread.
struct Ctx {
    matcher: Arc<Matcher>,
    io: Arc<IoErrors>,
}

/// How many names a file has; 0 once it was deleted (while a handle still holds it).
#[cfg(unix)]
fn links(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.nlink()
}

#[cfg(not(unix))]
fn links(_meta: &std::fs::Metadata) -> u64 {
    1
}

/// The directory a path lives in, as `read_dir` and `join` want it.
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The entries of `dir` (at most [`MAX_DIR_ENTRIES`]) by inode number: where to look for a
/// renamed file, when logrotate kept it beside its old name.
fn dir_index(dir: &Path) -> std::io::Result<HashMap<u64, PathBuf>> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir)?.take(MAX_DIR_ENTRIES) {
        let Ok(entry) = entry else { continue };
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirEntryExt;
            out.insert(entry.ino(), entry.path());
        }
        #[cfg(not(unix))]
        let _ = entry;
    }
    Ok(out)
}

/// The path in `index` that is the file `key` now (checked with `stat`), if any.
fn find_in(index: &HashMap<u64, PathBuf>, key: FileKey) -> Option<PathBuf> {
    let path = index.get(&key.ino)?;
    let meta = std::fs::symlink_metadata(path).ok()?;
    (meta.is_file() && FileKey::of(&meta) == key).then(|| path.clone())
}

/// Looks for the file `key` among the entries of `dir`.
fn find_in_dir(dir: &Path, key: FileKey) -> std::io::Result<Option<PathBuf>> {
    Ok(find_in(&dir_index(dir)?, key))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Live,
    /// The path now names another file, or none: read while it grows, closed after
    /// `rotate_wait_ms` of quiet.
    Gone {
        deleted: bool,
    },
}

struct Tailed {
    key: FileKey,
    path: PathBuf,
    source: Arc<str>,
    reader: LineReader<tokio::fs::File>,
    /// A second handle to the same file, for metadata and fingerprints after a rename.
    handle: std::fs::File,
    acks: Arc<AckQueue>,
    state: State,
    partial_since: Option<Instant>,
    decoder: Option<ContainerDecoder>,
    /// Joins multi-line events (`multiline`), after `decoder`.
    joiner: Option<Joiner>,
    /// The head of the file changed (truncated and refilled): read it again from the start.
    restart: bool,
    /// Fingerprint of the file's first bytes as read so far: (length, CRC32).
    head: (u64, u32),
    /// The file's size when last looked at, and since when it has been that size (or since it
    /// was rotated, if later): a rotated file is closed after `rotate_wait_ms` of this.
    seen_len: u64,
    grew: Instant,
}

/// The options of a tailing file source.
pub struct Tail {
    pub cfg: FileConfig,
    /// `cfg.multiline`, compiled.
    pub multiline: Option<Multiline>,
    pub data_dir: Option<PathBuf>,
    pub max_line_bytes: usize,
    pub selfm: SelfMetrics,
}

impl Tail {
    fn checkpoint_path(&self) -> Option<PathBuf> {
        let dir = self.data_dir.as_ref()?;
        // One store per source, named by its patterns, so sources never share a file.
        let id = crc32fast::hash(self.cfg.paths.join("\n").as_bytes());
        Some(dir.join(format!("file-checkpoints-{id:08x}.json")))
    }

    /// Tails until `shutdown`, then saves checkpoints.
    pub async fn run(
        self,
        out: mpsc::Sender<LineBatch>,
        shutdown: CancellationToken,
    ) -> Result<(), FileError> {
        if let Some(dir) = &self.data_dir {
            std::fs::create_dir_all(dir).map_err(|source| FileError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        let mut store = Store::open(self.checkpoint_path())?;
        let ctx = Ctx {
            matcher: Arc::new(Matcher::new(&self.cfg.paths, &self.cfg.exclude)?),
            io: Arc::new(IoErrors {
                counter: self.selfm.file_events_total.clone(),
                limits: Mutex::default(),
            }),
        };
        let wake = Arc::new(Notify::new());
        let wake_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (opened_tx, mut opened) = mpsc::channel::<Opened>(OPENED_QUEUE);
        let _watcher = watch_dirs(
            &self.cfg.paths,
            Watch {
                matcher: ctx.matcher.clone(),
                io: ctx.io.clone(),
                opened: opened_tx,
                wake: wake.clone(),
                rescan: wake_flag.clone(),
            },
        );
        let poll = Duration::from_millis(self.cfg.poll_interval_ms.max(10));
        let rescan = Duration::from_millis(self.cfg.rescan_interval_ms.max(10));
        let partial_timeout = Duration::from_millis(self.cfg.partial_line_timeout_ms);
        let mut files: HashMap<FileKey, Tailed> = HashMap::new();
        let mut order: Vec<FileKey> = Vec::new();
        let mut last_scan: Option<Instant> = None;
        let mut last_save = Instant::now();
        let mut finished: std::collections::VecDeque<(Instant, FileKey)> = Default::default();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            // Files notify saw appear, already open: taken before the scan, which might no
            // longer find them under a selected name.
            while let Ok(o) = opened.try_recv() {
                self.adopt(o, &mut files, &mut order, &store, &ctx, &finished);
            }
            let notified = wake_flag.swap(false, Ordering::AcqRel);
            if notified || last_scan.is_none_or(|t| t.elapsed() >= rescan) {
                let startup = last_scan.is_none();
                self.scan(&mut files, &mut order, &mut store, startup, &ctx)?;
                if startup {
                    self.resume_rotated(&mut files, &mut order, &store, &ctx, &shutdown);
                }
                last_scan = Some(Instant::now());
            }
            let mut progressed = false;
            let mut closed = Vec::new();
            for key in &order {
                let Some(t) = files.get_mut(key) else {
                    continue;
                };
                match self.read_some(t, &out, &shutdown, partial_timeout).await {
                    Ok(Progress::Read) => progressed = true,
                    Ok(Progress::Idle) => {}
                    Ok(Progress::Ended) => closed.push(*key),
                    Ok(Progress::Stopped) => return self.finish(&mut files, &mut store),
                    Err(e) => {
                        tracing::warn!(path = %t.path.display(), error = %e, "read failed; closing the file");
                        closed.push(*key);
                    }
                }
            }
            for key in closed {
                if let Some(t) = files.remove(&key) {
                    self.selfm.files_open.dec();
                    let gone = matches!(t.state, State::Gone { .. });
                    let mut handle = t.handle;
                    record(&mut store, key, &mut handle, &t.path, &t.acks);
                    if gone {
                        // Rotated away or deleted, read to its end and quiet since: no scan
                        // selects it again, so its entry would only grow the store; it is
                        // forgotten after a while.
                        finished.push_back((Instant::now(), key));
                    }
                    tracing::info!(path = %t.path.display(), rotated = gone, "finished file");
                }
                order.retain(|k| *k != key);
            }
            while let Some(&(at, key)) = finished.front() {
                if at.elapsed() < FORGET_AFTER && finished.len() <= MAX_FINISHED {
                    break;
                }
                finished.pop_front();
                // Unless it is followed again (renamed back under a selected name).
                if !files.contains_key(&key) {
                    store.forget(key);
                }
            }
            // Save every second, and as soon as the files are idle (positions then stand still).
            let due = last_save.elapsed() >= Duration::from_secs(1)
                || (!progressed && last_save.elapsed() >= Duration::from_millis(100));
            if due {
                self.save(&mut files, &mut store);
                last_save = Instant::now();
            }
            if !progressed {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        }
        self.finish(&mut files, &mut store)
    }

    fn finish(
        &self,
        files: &mut HashMap<FileKey, Tailed>,
        store: &mut Store,
    ) -> Result<(), FileError> {
        self.save(files, store);
        self.selfm.files_open.sub(files.len() as i64);
        Ok(())
    }

    fn save(&self, files: &mut HashMap<FileKey, Tailed>, store: &mut Store) {
        for (key, t) in files.iter_mut() {
            record(store, *key, &mut t.handle, &t.path, &t.acks);
        }
        match store.save() {
            Ok(true) => self
                .selfm
                .checkpoint_writes_total
                .with_label_values(&["ok"])
                .inc(),
            Ok(false) => {}
            Err(e) => {
                self.selfm
                    .checkpoint_writes_total
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(error = %e, "checkpoint not saved");
            }
        }
    }

    /// Finds files, notices rotations and deletions, opens new files.
    fn scan(
        &self,
        files: &mut HashMap<FileKey, Tailed>,
        order: &mut Vec<FileKey>,
        store: &mut Store,
        startup: bool,
        ctx: &Ctx,
    ) -> Result<(), FileError> {
        let found = expand(&self.cfg.paths, &self.cfg.exclude)?;
        let mut seen: HashMap<FileKey, (PathBuf, usize)> = HashMap::new();
        for (path, pattern) in found {
            match std::fs::metadata(&path) {
                Ok(meta) => {
                    seen.entry(FileKey::of(&meta)).or_insert((path, pattern));
                }
                // Gone since the walk: a rotation the next look at the file itself will see.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => ctx.io.report("stat", &path, &e),
            }
        }
        for (key, t) in files.iter_mut() {
            match seen.get(key) {
                Some((path, _)) => {
                    if *path != t.path {
                        self.count_event("rotated");
                        tracing::info!(from = %t.path.display(), to = %path.display(), "file renamed; still followed");
                        t.path = path.clone();
                    }
                    if t.state != State::Live {
                        // Renamed back under a selected name (or missed by one walk).
                        tracing::info!(path = %t.path.display(), "rotated file selected again; following it");
                        t.state = State::Live;
                    }
                }
                None if t.state == State::Live => self.locate(t, ctx),
                None => {}
            }
        }
        for (key, (path, pattern)) in seen {
            if files.contains_key(&key) {
                continue;
            }
            if files.len() >= self.cfg.max_open_files {
                tracing::debug!(path = %path.display(), "max_open_files reached; the file waits");
                continue;
            }
            let opened = std::fs::File::open(&path)
                .and_then(|handle| self.open(handle, &path, pattern, store, startup));
            match opened {
                // The key of the file actually opened: the path may have been rotated between
                // the scan and the open.
                Ok((key, t)) if !files.contains_key(&key) => {
                    self.selfm.files_open.inc();
                    files.insert(key, t);
                    order.push(key);
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => ctx.io.report("open", &path, &e),
            }
        }
        Ok(())
    }

    fn count_event(&self, event: &str) {
        self.selfm
            .file_events_total
            .with_label_values(&[event])
            .inc();
    }

    /// A followed file the globs no longer list: asks the file itself where it is. Still at
    /// its path: nothing happened (the walk came back short). Its path names another file, or
    /// none: renamed (`rotated`, its new name looked for beside the old one) or unlinked
    /// (`deleted`). Either way it stays open for `rotate_wait_ms` of quiet. An error looking is
    /// reported as such and changes nothing.
    fn locate(&self, t: &mut Tailed, ctx: &Ctx) {
        match std::fs::metadata(&t.path) {
            Ok(m) if FileKey::of(&m) == t.key => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return ctx.io.report("stat", &t.path, &e),
        }
        let meta = match t.handle.metadata() {
            Ok(m) => m,
            Err(e) => return ctx.io.report("stat", &t.path, &e),
        };
        t.grew = Instant::now();
        if links(&meta) == 0 {
            t.state = State::Gone { deleted: true };
            self.count_event("deleted");
            tracing::info!(path = %t.path.display(), "file deleted; reading it until it is quiet");
            return;
        }
        self.count_event("rotated");
        match find_in_dir(dir_of(&t.path), t.key) {
            Ok(Some(to)) => {
                tracing::info!(from = %t.path.display(), to = %to.display(), "file rotated; reading it until it is quiet");
                t.path = to;
                if ctx.matcher.pattern_of(&t.path).is_some() {
                    // Renamed to a name the globs select: simply followed under it.
                    return;
                }
            }
            Ok(None) => {
                tracing::info!(path = %t.path.display(), "file moved out of its directory; reading it until it is quiet");
            }
            Err(e) => ctx.io.report("read_dir", dir_of(&t.path), &e),
        }
        t.state = State::Gone { deleted: false };
    }

    /// Takes a file notify saw appear (already open), unless it is followed already, or is a
    /// rotated file closed since the event (its checkpoint still recognises it).
    fn adopt(
        &self,
        mut o: Opened,
        files: &mut HashMap<FileKey, Tailed>,
        order: &mut Vec<FileKey>,
        store: &Store,
        ctx: &Ctx,
        finished: &std::collections::VecDeque<(Instant, FileKey)>,
    ) {
        let key = match o.file.metadata() {
            Ok(m) => FileKey::of(&m),
            Err(e) => return ctx.io.report("stat", &o.path, &e),
        };
        if files.contains_key(&key) {
            return;
        }
        if finished.iter().any(|(_, k)| *k == key)
            && matches!(store.resume(key, &mut o.file), Ok(Some(_)))
        {
            return;
        }
        if files.len() >= self.cfg.max_open_files {
            tracing::debug!(path = %o.path.display(), "max_open_files reached; the file waits for a rescan");
            return;
        }
        match self.open(o.file, &o.path, o.pattern, store, false) {
            Ok((key, mut t)) => {
                // Perhaps already renamed away or deleted: then read as a rotated file.
                self.locate(&mut t, ctx);
                self.selfm.files_open.inc();
                files.insert(key, t);
                order.push(key);
            }
            Err(e) => ctx.io.report("open", &o.path, &e),
        }
    }

    /// At startup: files with a checkpoint that the globs did not find, such as a rotated file
    /// still held when weir stopped. Looked for under the name recorded, then in that
    /// directory by inode (logrotate may have renamed it again); resumed only if its
    /// fingerprint matches, and read as a rotated file.
    fn resume_rotated(
        &self,
        files: &mut HashMap<FileKey, Tailed>,
        order: &mut Vec<FileKey>,
        store: &Store,
        ctx: &Ctx,
        shutdown: &CancellationToken,
    ) {
        let mut dirs: HashMap<PathBuf, HashMap<u64, PathBuf>> = HashMap::new();
        for (key, path) in store.entries() {
            if shutdown.is_cancelled() || files.len() >= self.cfg.max_open_files {
                return;
            }
            if files.contains_key(&key) {
                continue;
            }
            let at = match std::fs::metadata(&path) {
                Ok(m) if FileKey::of(&m) == key => Some(path.clone()),
                _ => {
                    // One listing per directory, however many entries point into it.
                    let dir = dir_of(&path).to_path_buf();
                    let index = dirs
                        .entry(dir)
                        .or_insert_with_key(|d| dir_index(d).unwrap_or_default());
                    find_in(index, key)
                }
            };
            let Some(at) = at else { continue };
            let mut handle = match std::fs::File::open(&at) {
                Ok(h) => h,
                Err(e) => {
                    ctx.io.report("open", &at, &e);
                    continue;
                }
            };
            let same = handle.metadata().is_ok_and(|m| FileKey::of(&m) == key);
            // Never read a stranger from 0: only a file its checkpoint recognises.
            if !same || !matches!(store.resume(key, &mut handle), Ok(Some(_))) {
                continue;
            }
            let pattern = ctx.matcher.pattern_of(&at);
            match self.open(handle, &at, pattern.unwrap_or(0), store, false) {
                Ok((key, mut t)) => {
                    if pattern.is_none() {
                        t.state = State::Gone { deleted: false };
                    }
                    tracing::info!(path = %at.display(), "resuming a rotated file");
                    self.selfm.files_open.inc();
                    files.insert(key, t);
                    order.push(key);
                }
                Err(e) => ctx.io.report("open", &at, &e),
            }
        }
    }

    /// Starts following `handle`, the file at `path`, from its checkpoint if it has one.
    fn open(
        &self,
        mut handle: std::fs::File,
        path: &Path,
        pattern: usize,
        store: &Store,
        startup: bool,
    ) -> std::io::Result<(FileKey, Tailed)> {
        let meta = handle.metadata()?;
        let (key, len) = (FileKey::of(&meta), meta.len());
        let offset = match store.resume(key, &mut handle)? {
            Some(o) => {
                self.count_event("resumed");
                o
            }
            None if startup && self.cfg.read_from == ReadFrom::End => len,
            None => 0,
        };
        self.count_event("discovered");
        tracing::info!(path = %path.display(), offset, "following file");
        let mut std_file = handle.try_clone()?;
        use std::io::Seek;
        std_file.seek(std::io::SeekFrom::Start(offset))?;
        let source: Arc<str> = Arc::from(self.cfg.paths[pattern].as_str());
        let reader = LineReader::following(
            tokio::fs::File::from_std(std_file),
            source.clone(),
            self.max_line_bytes,
            offset,
        );
        let decoder = (self.cfg.format != Format::Json).then(|| {
            ContainerDecoder::new(
                self.cfg.format,
                Some(path),
                self.max_line_bytes,
                envelope_counter(&self.selfm),
            )
        });
        Ok((
            key,
            Tailed {
                key,
                path: path.to_path_buf(),
                source,
                reader,
                handle,
                acks: AckQueue::new(offset),
                state: State::Live,
                partial_since: None,
                decoder,
                joiner: self
                    .multiline
                    .as_ref()
                    .map(|m| m.joiner(self.max_line_bytes, &self.selfm)),
                restart: false,
                head: (0, 0),
                seen_len: offset,
                grew: Instant::now(),
            },
        ))
    }

    /// Reads up to a few batches of one file and sends them.
    async fn read_some(
        &self,
        t: &mut Tailed,
        out: &mpsc::Sender<LineBatch>,
        shutdown: &CancellationToken,
        partial_timeout: Duration,
    ) -> std::io::Result<Progress> {
        for round in 0..8 {
            // Before every read: a truncated (and maybe refilled) file restarts at 0.
            if !t.restart && self.head_changed(t)? {
                t.restart = true;
            }
            if t.restart {
                return self.at_eof(t, out, partial_timeout, round > 0).await;
            }
            // Where the batch's bytes start in the file (its carried partial line included).
            let before = t.reader.position();
            let batch = tokio::select! {
                b = t.reader.next_batch() => b?,
                _ = shutdown.cancelled() => return Ok(Progress::Stopped),
            };
            let Some(batch) = batch else {
                return self.at_eof(t, out, partial_timeout, round > 0).await;
            };
            t.partial_since = None;
            if self.head_changed(t)? {
                // Truncated around this read: if the bytes read are the new content's bytes at
                // that offset, they were read after the truncation and will be read again from
                // 0; otherwise they are the old content's last lines, and are kept.
                let now = read_at(&t.handle, before, batch.buf.len())?;
                let from_new = now.as_deref() == Some(&batch.buf[..]);
                if !from_new && !self.send(t, batch, out).await {
                    return Ok(Progress::Stopped);
                }
                t.restart = true;
                return self.at_eof(t, out, partial_timeout, true).await;
            }
            if !self.send_at(t, batch, out, Some(before)).await {
                return Ok(Progress::Stopped);
            }
        }
        Ok(Progress::Read)
    }

    /// Whether the file was truncated under us, even if refilled past our position since: its
    /// size fell below the position, or its first bytes are no longer those seen before.
    fn head_changed(&self, t: &mut Tailed) -> std::io::Result<bool> {
        let len = t.handle.metadata()?.len();
        if len < t.reader.position() + t.reader.pending() as u64 {
            return Ok(true);
        }
        let (seen, crc) = t.head;
        if seen > 0 && fingerprint(&mut t.handle, seen)? != Some(crc) {
            return Ok(true);
        }
        let want = len.min(FINGERPRINT_BYTES);
        if want > seen {
            if let Some(c) = fingerprint(&mut t.handle, want)? {
                t.head = (want, c);
            }
        }
        Ok(false)
    }

    /// Sends a batch read from `t`, acknowledged at the reader's position unless a container
    /// line is still being joined (then the position is not safe to resume from yet).
    async fn send(&self, t: &mut Tailed, batch: LineBatch, out: &mpsc::Sender<LineBatch>) -> bool {
        self.send_at(t, batch, out, None).await
    }

    /// As `send`; `base` is the file offset of the batch's first byte, when known, which gives
    /// each line an id from its place in the file (stable across restarts, for idempotent
    /// delivery). Decoded container lines and cut lines have no such place.
    async fn send_at(
        &self,
        t: &mut Tailed,
        batch: LineBatch,
        out: &mpsc::Sender<LineBatch>,
        base: Option<u64>,
    ) -> bool {
        let mut batch = match &mut t.decoder {
            Some(d) => d.decode_batch(batch),
            None => batch,
        };
        let cut = batch.lines.iter().any(|l| l.truncated);
        if let (Some(base), None, false) = (base, &t.decoder, cut) {
            let mut id = [0u8; 20];
            id[..8].copy_from_slice(&t.key.dev.to_le_bytes());
            id[8..16].copy_from_slice(&t.key.ino.to_le_bytes());
            id[16..].copy_from_slice(&t.head.1.to_le_bytes());
            batch.origin = Some((xxhash_rust::xxh3::xxh3_64(&id), base));
        }
        if let Some(j) = &mut t.joiner {
            batch = j.join(batch);
        }
        if let Some(at) = ack_position(t) {
            batch.ack = Some(t.acks.ack_for(at));
        }
        out.send(batch).await.is_ok()
    }

    /// Emits the multi-line event still held (timeout, rotation, truncation), acknowledged.
    async fn flush_joiner(&self, t: &mut Tailed, out: &mpsc::Sender<LineBatch>) -> bool {
        let Some(mut b) = t.joiner.as_mut().and_then(|j| j.flush(&t.source)) else {
            return true;
        };
        if let Some(at) = ack_position(t) {
            b.ack = Some(t.acks.ack_for(at));
        }
        out.send(b).await.is_ok()
    }

    async fn at_eof(
        &self,
        t: &mut Tailed,
        out: &mpsc::Sender<LineBatch>,
        partial_timeout: Duration,
        read_before: bool,
    ) -> std::io::Result<Progress> {
        let len = t.handle.metadata()?.len();
        if len != t.seen_len {
            t.seen_len = len;
            t.grew = Instant::now();
        }
        // A rotated file is done once it has been quiet for rotate_wait: a late writer may
        // still complete its partial line or add lines until then.
        let closing = matches!(t.state, State::Gone { .. })
            && t.grew.elapsed() >= Duration::from_millis(self.cfg.rotate_wait_ms);
        let pos = t.reader.position() + t.reader.pending() as u64;
        if len < pos || t.restart {
            // Copytruncate: the file was emptied under us. Whatever partial line was pending
            // belonged to the old content; emit it, then start again at 0.
            if let Some(b) = t.reader.take_partial() {
                if !self.send(t, b, out).await {
                    return Ok(Progress::Stopped);
                }
            }
            if !self.flush_joiner(t, out).await {
                return Ok(Progress::Stopped);
            }
            self.selfm
                .file_events_total
                .with_label_values(&["truncated"])
                .inc();
            tracing::info!(path = %t.path.display(), "file truncated; reading it from the start");
            let mut file = tokio::fs::File::from_std(t.handle.try_clone()?);
            file.seek(std::io::SeekFrom::Start(0)).await?;
            t.reader = LineReader::following(file, t.source.clone(), self.max_line_bytes, 0);
            t.acks = AckQueue::new(0);
            t.partial_since = None;
            t.restart = false;
            t.head = (0, 0);
            return Ok(Progress::Read);
        }
        if t.reader.pending() > 0
            || t.decoder
                .as_ref()
                .is_some_and(ContainerDecoder::has_pending)
        {
            let since = *t.partial_since.get_or_insert_with(Instant::now);
            if closing || since.elapsed() >= partial_timeout {
                if let Some(b) = t.reader.take_partial() {
                    if !self.send(t, b, out).await {
                        return Ok(Progress::Stopped);
                    }
                }
                if let Some(b) = t.decoder.as_mut().and_then(|d| d.flush_batch(&t.source)) {
                    let mut b = match &mut t.joiner {
                        Some(j) => j.join(b),
                        None => b,
                    };
                    if let Some(at) = ack_position(t) {
                        b.ack = Some(t.acks.ack_for(at));
                    }
                    if out.send(b).await.is_err() {
                        return Ok(Progress::Stopped);
                    }
                }
                t.partial_since = None;
            }
        }
        // A held multi-line event: complete after `timeout_ms` without a line, or when the
        // file is done.
        if t.joiner
            .as_ref()
            .is_some_and(|j| j.has_pending() && (closing || j.is_due()))
            && !self.flush_joiner(t, out).await
        {
            return Ok(Progress::Stopped);
        }
        if closing && t.reader.pending() == 0 {
            return Ok(Progress::Ended);
        }
        Ok(if read_before {
            Progress::Read
        } else {
            Progress::Idle
        })
    }
}

/// Where a batch just sent may be acknowledged: the reader's position, or where the
/// multi-line event still held starts. `None` while a container line is being joined, or an
/// event is held whose file offset is unknown (decoded container lines): a restart must read
/// those lines again.
fn ack_position(t: &Tailed) -> Option<u64> {
    if t.decoder
        .as_ref()
        .is_some_and(ContainerDecoder::has_pending)
    {
        return None;
    }
    match &t.joiner {
        Some(j) if j.has_pending() => j.held_offset(),
        _ => Some(t.reader.position()),
    }
}

enum Progress {
    Read,
    Idle,
    Ended,
    Stopped,
}

fn record(
    store: &mut Store,
    key: FileKey,
    handle: &mut std::fs::File,
    path: &Path,
    acks: &AckQueue,
) {
    let offset = acks.position();
    if let Err(e) = store.record(key, path, handle, offset) {
        tracing::warn!(path = %path.display(), error = %e, "cannot fingerprint file for its checkpoint");
    }
}

/// What the notify callback needs: where to send files it opens, and how to wake the tailer.
struct Watch {
    matcher: Arc<Matcher>,
    io: Arc<IoErrors>,
    opened: mpsc::Sender<Opened>,
    wake: Arc<Notify>,
    rescan: Arc<std::sync::atomic::AtomicBool>,
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
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            // Renamed or deleted again already; a later event (or a walk) may still find it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => return self.io.report("open", path, &e),
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return;
        }
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
fn watch_dirs(patterns: &[String], watch: Watch) -> Option<notify::RecommendedWatcher> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tail_of(pattern: &Path) -> (Tail, Ctx) {
        let cfg = FileConfig::for_paths(vec![pattern.display().to_string()], Format::Json);
        let selfm = SelfMetrics::new();
        let ctx = Ctx {
            matcher: Arc::new(Matcher::new(&cfg.paths, &cfg.exclude).unwrap()),
            io: Arc::new(IoErrors {
                counter: selfm.file_events_total.clone(),
                limits: Mutex::default(),
            }),
        };
        let tail = Tail {
            cfg,
            multiline: None,
            data_dir: None,
            max_line_bytes: 1000,
            selfm,
        };
        (tail, ctx)
    }

    fn events(tail: &Tail, event: &str) -> u64 {
        tail.selfm
            .file_events_total
            .with_label_values(&[event])
            .get()
    }

    #[test]
    fn renamed_is_rotated_unlinked_is_deleted_and_an_error_is_neither() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("app.log");
        std::fs::write(&live, b"one\n").unwrap();
        let (tail, ctx) = tail_of(&live);
        let store = Store::open(None).unwrap();
        let open = |path: &Path| {
            let handle = std::fs::File::open(path).unwrap();
            tail.open(handle, path, 0, &store, false).unwrap().1
        };

        let mut t = open(&live);
        tail.locate(&mut t, &ctx);
        assert_eq!(t.state, State::Live, "still at its path");
        std::fs::rename(&live, dir.path().join("app.log.1")).unwrap();
        std::fs::write(&live, b"new\n").unwrap();
        tail.locate(&mut t, &ctx);
        assert_eq!(t.state, State::Gone { deleted: false });
        assert_eq!(
            t.path,
            dir.path().join("app.log.1"),
            "its new name, found by inode"
        );
        assert_eq!((events(&tail, "rotated"), events(&tail, "deleted")), (1, 0));

        let mut t = open(&live);
        std::fs::remove_file(&live).unwrap();
        tail.locate(&mut t, &ctx);
        assert_eq!(t.state, State::Gone { deleted: true });
        assert_eq!((events(&tail, "rotated"), events(&tail, "deleted")), (1, 1));

        // A path that cannot be looked at (ENOTDIR here; EACCES, EIO alike) is no rotation.
        std::fs::write(&live, b"again\n").unwrap();
        let mut t = open(&live);
        t.path = live.join("below-a-file");
        tail.locate(&mut t, &ctx);
        assert_eq!(t.state, State::Live);
        assert_eq!((events(&tail, "rotated"), events(&tail, "deleted")), (1, 1));
        assert_eq!(events(&tail, "error_other"), 1);
    }

    #[test]
    fn a_rename_to_a_selected_name_keeps_the_file_live() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("app.log");
        std::fs::write(&live, b"one\n").unwrap();
        let (tail, ctx) = tail_of(&dir.path().join("app.log*"));
        let store = Store::open(None).unwrap();
        let handle = std::fs::File::open(&live).unwrap();
        let (_, mut t) = tail.open(handle, &live, 0, &store, false).unwrap();
        std::fs::rename(&live, dir.path().join("app.log.1")).unwrap();
        tail.locate(&mut t, &ctx);
        assert_eq!(t.state, State::Live);
        assert_eq!(t.path, dir.path().join("app.log.1"));
        assert_eq!(events(&tail, "rotated"), 1);
    }

    #[test]
    fn notify_paths_are_matched_as_the_globs_would_list_them() {
        let globs = ["app.log".to_string(), "/var/log/*.log".to_string()];
        let m = Matcher::new(&globs, &["/var/log/skip.log".to_string()]).unwrap();
        assert_eq!(m.pattern_of(Path::new("./app.log")), Some(0));
        assert_eq!(m.pattern_of(Path::new("app.log")), Some(0));
        assert_eq!(m.pattern_of(Path::new("./app.log.1")), None);
        assert_eq!(m.pattern_of(Path::new("/var/log/x.log")), Some(1));
        assert_eq!(m.pattern_of(Path::new("/var/log/sub/x.log")), None);
        assert_eq!(m.pattern_of(Path::new("/var/log/skip.log")), None);
    }
}
