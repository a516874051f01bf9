//! The file source: tail files the way `tail -F` does, without losing or repeating a line across
//! rotation and restarts; or read them once to their end (`--oneshot` backfills).
//!
//! # Tailing
//! - Files come from globs (`paths`, minus `exclude`), rescanned every `rescan_interval_ms` and
//!   whenever notify reports a change in their directories (polling remains the fallback).
//! - A file is known by device + inode (and a fingerprint of its first bytes in checkpoints).
//!   Rename-and-create: the old file keeps being read through its open handle to its end, then is
//!   closed; the new file at the path is read from its start. Copytruncate: a size below the read
//!   position, or first bytes that changed (truncated and refilled), restart the file at 0; both
//!   are checked before every read. (A truncation that lands between that check and the read
//!   itself cannot be told from an append; copytruncate also loses what is written between its
//!   copy and its truncate. Prefer rename-and-create.) Deletion: the file is read to its end,
//!   then forgotten.
//! - A partial last line waits for its newline up to `partial_line_timeout_ms`, then is emitted.
//! - At most `max_open_files` files are read at once; others wait their turn.
//!
//! # Checkpoints
//! With a `data_dir`, the position of each file is saved (atomic write + rename) every second and
//! at shutdown. Only positions the processor has acknowledged are saved ([`Ack`]): after a
//! restart, also after `kill -9`, no line is lost, and at most the lines processed after the
//! last save (about one second's worth) are read again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde::Deserialize;
use tokio::io::AsyncSeekExt;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::checkpoint::{fingerprint, read_at, CheckpointError, FileKey, Store, FINGERPRINT_BYTES};
use super::{AckQueue, FileConfig, Format, LineBatch, LineReader};
use crate::parse::container::ContainerDecoder;
use crate::telemetry::SelfMetrics;

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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
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

/// Reads files in the order given, each to its end (oneshot). A progress bar, if given, shows
/// bytes, lines/s and the ETA over all files.
pub async fn read_to_end(
    paths: Vec<PathBuf>,
    format: Format,
    out: mpsc::Sender<LineBatch>,
    shutdown: CancellationToken,
    max_line_bytes: usize,
    selfm: SelfMetrics,
    progress: Option<ProgressBar>,
) -> Result<(), FileError> {
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
            let batch = match &mut decoder {
                Some(d) => d.decode_batch(batch),
                None => batch,
            };
            if out.send(batch).await.is_err() {
                return Ok(());
            }
        }
        if let Some(b) = decoder.as_mut().and_then(|d| d.flush_batch(&name)) {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Live,
    /// The path now names another file, or none: read to the end, then close.
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
    /// The head of the file changed (truncated and refilled): read it again from the start.
    restart: bool,
    /// Fingerprint of the file's first bytes as read so far: (length, CRC32).
    head: (u64, u32),
}

/// The options of a tailing file source.
pub struct Tail {
    pub cfg: FileConfig,
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
        let wake = Arc::new(Notify::new());
        let wake_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let _watcher = watch_dirs(&self.cfg.paths, wake.clone(), wake_flag.clone());
        let poll = Duration::from_millis(self.cfg.poll_interval_ms.max(10));
        let rescan = Duration::from_millis(self.cfg.rescan_interval_ms.max(10));
        let partial_timeout = Duration::from_millis(self.cfg.partial_line_timeout_ms);
        let mut files: HashMap<FileKey, Tailed> = HashMap::new();
        let mut order: Vec<FileKey> = Vec::new();
        let mut last_scan: Option<Instant> = None;
        let mut last_save = Instant::now();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let notified = wake_flag.swap(false, Ordering::AcqRel);
            if notified || last_scan.is_none_or(|t| t.elapsed() >= rescan) {
                self.scan(&mut files, &mut order, &mut store, last_scan.is_none())?;
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
                    let deleted = t.state == State::Gone { deleted: true };
                    let mut handle = t.handle;
                    record(&mut store, key, &mut handle, &t.path, &t.acks);
                    if deleted {
                        store.forget(key);
                    }
                    tracing::info!(path = %t.path.display(), deleted, "finished file");
                }
                order.retain(|k| *k != key);
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
    ) -> Result<(), FileError> {
        let found = expand(&self.cfg.paths, &self.cfg.exclude)?;
        let mut seen: HashMap<FileKey, (PathBuf, usize)> = HashMap::new();
        for (path, pattern) in found {
            if let Ok(meta) = std::fs::metadata(&path) {
                seen.entry(FileKey::of(&meta)).or_insert((path, pattern));
            }
        }
        for (key, t) in files.iter_mut() {
            match seen.get(key) {
                Some((path, _)) if *path != t.path => {
                    tracing::info!(from = %t.path.display(), to = %path.display(), "file renamed");
                    t.path = path.clone();
                }
                Some(_) => {}
                None if t.state == State::Live => {
                    let deleted = !t.path.exists();
                    t.state = State::Gone { deleted };
                    let event = if deleted { "deleted" } else { "rotated" };
                    self.selfm
                        .file_events_total
                        .with_label_values(&[event])
                        .inc();
                    tracing::info!(path = %t.path.display(), event, "reading the old file to its end");
                }
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
            match self.open(&path, pattern, store, startup) {
                // The key of the file actually opened: the path may have been rotated between
                // the scan and the open.
                Ok((key, t)) if !files.contains_key(&key) => {
                    self.selfm.files_open.inc();
                    files.insert(key, t);
                    order.push(key);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot open file"),
            }
        }
        Ok(())
    }

    fn open(
        &self,
        path: &Path,
        pattern: usize,
        store: &Store,
        startup: bool,
    ) -> std::io::Result<(FileKey, Tailed)> {
        let mut handle = std::fs::File::open(path)?;
        let meta = handle.metadata()?;
        let (key, len) = (FileKey::of(&meta), meta.len());
        let offset = match store.resume(key, &mut handle)? {
            Some(o) => {
                self.selfm
                    .file_events_total
                    .with_label_values(&["resumed"])
                    .inc();
                o
            }
            None if startup && self.cfg.read_from == ReadFrom::End => len,
            None => 0,
        };
        self.selfm
            .file_events_total
            .with_label_values(&["discovered"])
            .inc();
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
                restart: false,
                head: (0, 0),
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
        let joining = t
            .decoder
            .as_ref()
            .is_some_and(ContainerDecoder::has_pending);
        if !joining {
            batch.ack = Some(t.acks.ack_for(t.reader.position()));
        }
        out.send(batch).await.is_ok()
    }

    async fn at_eof(
        &self,
        t: &mut Tailed,
        out: &mpsc::Sender<LineBatch>,
        partial_timeout: Duration,
        read_before: bool,
    ) -> std::io::Result<Progress> {
        let len = t.handle.metadata()?.len();
        let pos = t.reader.position() + t.reader.pending() as u64;
        if len < pos || t.restart {
            // Copytruncate: the file was emptied under us. Whatever partial line was pending
            // belonged to the old content; emit it, then start again at 0.
            if let Some(b) = t.reader.take_partial() {
                if !self.send(t, b, out).await {
                    return Ok(Progress::Stopped);
                }
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
            let done = matches!(t.state, State::Gone { .. });
            if done || since.elapsed() >= partial_timeout {
                if let Some(b) = t.reader.take_partial() {
                    if !self.send(t, b, out).await {
                        return Ok(Progress::Stopped);
                    }
                }
                if let Some(mut b) = t.decoder.as_mut().and_then(|d| d.flush_batch(&t.source)) {
                    b.ack = Some(t.acks.ack_for(t.reader.position()));
                    if out.send(b).await.is_err() {
                        return Ok(Progress::Stopped);
                    }
                }
                t.partial_since = None;
            }
        }
        if matches!(t.state, State::Gone { .. }) && t.reader.pending() == 0 {
            return Ok(Progress::Ended);
        }
        Ok(if read_before {
            Progress::Read
        } else {
            Progress::Idle
        })
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

/// Watches the directories the patterns live in; any event wakes the tailer early, and events
/// other than writes make it rescan the globs at once.
fn watch_dirs(
    patterns: &[String],
    wake: Arc<Notify>,
    rescan: Arc<std::sync::atomic::AtomicBool>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Creations, renames and removals call for a rescan; writes only for a read.
        if let Ok(ev) = res {
            if !matches!(
                ev.kind,
                notify::EventKind::Modify(notify::event::ModifyKind::Data(_))
            ) {
                rescan.store(true, Ordering::Release);
            }
        }
        wake.notify_one();
    })
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
