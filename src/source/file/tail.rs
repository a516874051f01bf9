//! Tailing: the loop that finds files, reads them as they grow, follows them through rotation,
//! shares `max_open_files` slots between them, and checkpoints what was acknowledged. See the
//! module docs of [`super`] for the behaviour; this file holds its mechanics.
//!
//! # Slots
//! `files` are the open files (at most `max_open_files`). Files found beyond that wait in
//! `waiting`, in the order found; a file closed to give its slot away is `parked` (its position,
//! acknowledgements in flight and fingerprint kept, no descriptor held) and queued again when
//! the walk sees its size change. Every file that wants reading thus gets a turn, whatever the
//! number of files; what is read once is never read again (the position is kept across the
//! close), and a file found different on reopen (other inode, other first bytes) is not
//! resumed blindly.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncSeekExt;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::walk::{dir_index, dir_of, find_in, find_in_dir, Globs};
use super::watch::{watch_dirs, Opened, Watch, OPENED_QUEUE};
use super::{
    envelope_counter, limits, open_regular, FileError, IoErrors, Out, ReadFrom, WalkReport,
};
use crate::parse::container::ContainerDecoder;
use crate::source::checkpoint::{fingerprint, read_at, FileKey, Store, FINGERPRINT_BYTES};
use crate::source::multiline::{Joiner, Multiline};
use crate::source::{AckQueue, FileConfig, Format, LineBatch, LineReader};
use crate::telemetry::{LogLimit, SelfMetrics};

/// How long the checkpoint of a closed rotated file is kept: a handle notify opened for it
/// before it was closed (still queued) then resumes at its end instead of reading it again.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// Closed rotated files whose checkpoints are kept for [`FORGET_AFTER`] at most.
const MAX_FINISHED: usize = 10_000;

/// How long a file that keeps growing holds its slot while other files wait for one.
pub const TURN: Duration = Duration::from_secs(1);

/// After EMFILE or ENFILE, files kept open fewer than were open then (each holds two
/// descriptors), so that checkpoints, sockets and the HTTP server still get theirs.
const FD_RESERVE: usize = 4;

/// How long that lower cap holds before `max_open_files` is tried again.
const FD_CAP_FOR: Duration = Duration::from_secs(60);

/// Whether an open failed because the process (EMFILE) or the system (ENFILE) has no
/// descriptor left.
fn out_of_fds(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(24 | 23))
}

/// What a tailing run shares between its steps and with notify's thread.
pub(super) struct Ctx {
    pub matcher: Arc<Globs>,
    pub io: Arc<IoErrors>,
    pub report: WalkReport,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Live,
    /// The path now names another file, or none: read while it grows, closed after
    /// `rotate_wait_ms` of quiet.
    Gone {
        deleted: bool,
    },
}

pub(super) struct Tailed {
    pub key: FileKey,
    pub path: PathBuf,
    pattern: usize,
    source: Arc<str>,
    reader: LineReader<tokio::fs::File>,
    /// A second handle to the same file, for metadata and fingerprints after a rename.
    handle: std::fs::File,
    acks: Arc<AckQueue>,
    pub state: State,
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
    /// When it got its slot (for [`TURN`]).
    opened_at: Instant,
}

impl Tailed {
    /// Whether it can be closed now and reopened later at `reader.position()` without losing
    /// or repeating anything: live, nothing half-read (partial line, over-long line being
    /// skipped, container line or multi-line event being joined), no restart due.
    fn parkable(&self) -> bool {
        self.state == State::Live
            && !self.restart
            && self.reader.pending() == 0
            && !self.reader.is_skipping()
            && !self
                .decoder
                .as_ref()
                .is_some_and(ContainerDecoder::has_pending)
            && !self.joiner.as_ref().is_some_and(Joiner::has_pending)
    }
}

/// A file closed to give its slot to another: where to pick it up again.
struct Parked {
    path: PathBuf,
    pattern: usize,
    acks: Arc<AckQueue>,
    /// Where reading resumes (everything before was sent).
    pos: u64,
    head: (u64, u32),
}

/// A file that wants a slot.
enum Wait {
    /// Found by a walk (at startup: `startup`, for `read_from`) and never opened yet.
    New {
        path: PathBuf,
        pattern: usize,
        key: FileKey,
        startup: bool,
    },
    /// Parked, and its size changed since (or it was not where the walk looked).
    Parked(FileKey),
}

/// The files of a tailing run: open ones, parked ones, and the queue for slots.
#[derive(Default)]
struct Files {
    open: HashMap<FileKey, Tailed>,
    /// Open files in reading order.
    order: Vec<FileKey>,
    parked: HashMap<FileKey, Parked>,
    waiting: VecDeque<Wait>,
    /// Keys in `waiting`, so that a file is queued once.
    queued: HashSet<FileKey>,
    /// A lower cap than `max_open_files` after the process ran out of descriptors (EMFILE,
    /// ENFILE), and since when: files then leave room for checkpoints, sockets and the rest.
    fd_cap: Option<(usize, Instant)>,
    /// A checkpoint that cannot be written (read-only or full data_dir) fails on every save:
    /// logged once, then once a minute with a count (always counted in the metric).
    save_errors: crate::telemetry::LogLimit,
}

impl Files {
    fn insert(&mut self, key: FileKey, t: Tailed, selfm: &SelfMetrics) {
        selfm.files_open.inc();
        self.open.insert(key, t);
        self.order.push(key);
    }

    fn remove(&mut self, key: FileKey, selfm: &SelfMetrics) -> Option<Tailed> {
        let t = self.open.remove(&key)?;
        selfm.files_open.dec();
        self.order.retain(|k| *k != key);
        Some(t)
    }

    fn queue(&mut self, key: FileKey, wait: Wait) {
        if self.queued.insert(key) {
            self.waiting.push_back(wait);
        }
    }

    /// How many files may be open now: `max_open_files`, or less for [`FD_CAP_FOR`] after
    /// descriptors ran out.
    fn cap(&mut self, max_open_files: usize) -> usize {
        match self.fd_cap {
            Some((_, since)) if since.elapsed() >= FD_CAP_FOR => {
                self.fd_cap = None;
                max_open_files
            }
            Some((cap, _)) => cap.min(max_open_files),
            None => max_open_files,
        }
    }

    /// Descriptors ran out with `open` files open: keep [`FD_RESERVE`] fewer for a while.
    fn out_of_descriptors(&mut self) {
        let cap = self.open.len().saturating_sub(FD_RESERVE).max(1);
        if self.fd_cap.is_none_or(|(c, _)| cap < c) {
            tracing::warn!(
                open = self.open.len(),
                cap,
                "out of file descriptors: reading at most this many files at once for a minute"
            );
        }
        self.fd_cap = Some((cap, Instant::now()));
    }

    fn known(&self, key: &FileKey) -> bool {
        self.open.contains_key(key) || self.parked.contains_key(key) || self.queued.contains(key)
    }
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

    pub(super) fn ctx(&self) -> Result<Ctx, FileError> {
        Ok(Ctx {
            matcher: Arc::new(Globs::new(&self.cfg.paths, &self.cfg.exclude)?),
            io: Arc::new(IoErrors::new(&self.selfm)),
            report: WalkReport::new(&self.selfm),
        })
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
        let ctx = self.ctx()?;
        let out = Out {
            tx: &out,
            shutdown: &shutdown,
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
        let mut fs = Files::default();
        let mut last_scan: Option<Instant> = None;
        let mut last_save = Instant::now();
        let mut finished: VecDeque<(Instant, FileKey)> = Default::default();
        let waiting_log = Mutex::new(LogLimit::default());
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            // Files notify saw appear, already open: taken before the scan, which might no
            // longer find them under a selected name.
            while let Ok(o) = opened.try_recv() {
                self.adopt(o, &mut fs, &store, &ctx, &finished);
            }
            let notified = wake_flag.swap(false, Ordering::AcqRel);
            if notified || last_scan.is_none_or(|t| t.elapsed() >= rescan) {
                let startup = last_scan.is_none();
                self.scan(&mut fs, startup, &ctx, &shutdown);
                if startup {
                    self.resume_rotated(&mut fs, &store, &ctx, &shutdown);
                }
                last_scan = Some(Instant::now());
            }
            let mut progressed = self.fill(&mut fs, &mut store, &ctx, &shutdown);
            let mut closed = Vec::new();
            let mut idle = Vec::new();
            for key in fs.order.clone() {
                let Some(t) = fs.open.get_mut(&key) else {
                    continue;
                };
                match self.read_some(t, &out, &shutdown, partial_timeout).await {
                    Ok(Progress::Read) => {
                        progressed = true;
                        if t.opened_at.elapsed() >= TURN {
                            idle.push(key);
                        }
                    }
                    Ok(Progress::Idle) => idle.push(key),
                    Ok(Progress::Ended) => closed.push(key),
                    Ok(Progress::Stopped) => return self.finish(&mut fs, &mut store),
                    Err(e) => {
                        ctx.io.report("read", &t.path, &e);
                        tracing::warn!(path = %t.path.display(), error = %e, "read failed; closing the file (a later walk reopens it at its checkpoint)");
                        closed.push(key);
                    }
                }
            }
            for key in closed {
                if let Some(t) = fs.remove(key, &self.selfm) {
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
            }
            // Others wait for a slot, or more files are open than descriptors allow: files at
            // their end (or past their turn) give theirs up.
            let cap = fs.cap(self.cfg.max_open_files);
            if !fs.waiting.is_empty() || fs.open.len() > cap {
                for key in idle {
                    if fs.waiting.is_empty() && fs.open.len() <= cap {
                        break;
                    }
                    self.park(key, &mut fs, &mut store);
                }
                progressed |= self.fill(&mut fs, &mut store, &ctx, &shutdown);
            }
            self.selfm.files_waiting.set(fs.waiting.len() as i64);
            if !fs.waiting.is_empty() {
                let mut limit = waiting_log.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(suppressed) = limit.hit() {
                    tracing::warn!(
                        waiting = fs.waiting.len(),
                        open = fs.open.len(),
                        max_open_files = self.cfg.max_open_files,
                        suppressed,
                        "more files than max_open_files: files take turns (closed at their end, reopened at their position)"
                    );
                }
            }
            while let Some(&(at, key)) = finished.front() {
                if at.elapsed() < FORGET_AFTER && finished.len() <= MAX_FINISHED {
                    break;
                }
                finished.pop_front();
                // Unless it is followed again (renamed back under a selected name).
                if !fs.known(&key) {
                    store.forget(key);
                }
            }
            // Save every second, and as soon as the files are idle (positions then stand still).
            let due = last_save.elapsed() >= Duration::from_secs(1)
                || (!progressed && last_save.elapsed() >= Duration::from_millis(100));
            if due {
                self.save(&mut fs, &mut store);
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
        self.finish(&mut fs, &mut store)
    }

    fn finish(&self, fs: &mut Files, store: &mut Store) -> Result<(), FileError> {
        self.save(fs, store);
        self.selfm.files_open.sub(fs.open.len() as i64);
        self.selfm.files_waiting.set(0);
        Ok(())
    }

    fn save(&self, fs: &mut Files, store: &mut Store) {
        for (key, t) in fs.open.iter_mut() {
            record(store, *key, &mut t.handle, &t.path, &t.acks);
        }
        for (key, p) in &fs.parked {
            store.advance(*key, p.acks.position());
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
                if let Some(suppressed) = fs.save_errors.hit() {
                    tracing::error!(
                        error = %e,
                        not_logged_since = suppressed,
                        "checkpoint not saved (said at most once a minute; counted in weir_checkpoint_writes_total{{result=\"error\"}})"
                    );
                }
            }
        }
    }

    /// Walks the globs: notices rotations and deletions of open files, renames and changes of
    /// parked ones, and queues new files for a slot. A walk cut short (shutdown) changes
    /// nothing; one that met errors or bounds changes only what it saw.
    fn scan(&self, fs: &mut Files, startup: bool, ctx: &Ctx, shutdown: &CancellationToken) {
        let walked = ctx.matcher.walk(limits(&self.cfg), shutdown);
        ctx.report.report(&walked, &ctx.io, &self.cfg);
        if walked.cancelled {
            return;
        }
        let mut seen: HashMap<FileKey, (PathBuf, usize, u64)> = HashMap::new();
        let mut found = Vec::with_capacity(walked.files.len());
        for f in walked.files {
            if let std::collections::hash_map::Entry::Vacant(v) = seen.entry(f.key) {
                v.insert((f.path.clone(), f.pattern, f.len));
                found.push(f.key);
            }
        }
        for (key, t) in fs.open.iter_mut() {
            match seen.get(key) {
                Some((path, _, _)) => {
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
        let mut wake_parked = Vec::new();
        for (key, p) in fs.parked.iter_mut() {
            match seen.get(key) {
                Some((path, _, len)) => {
                    if *path != p.path {
                        self.count_event("rotated");
                        tracing::info!(from = %p.path.display(), to = %path.display(), "file renamed while waiting; still followed");
                        p.path = path.clone();
                    }
                    if *len != p.pos {
                        wake_parked.push(*key);
                    }
                }
                // Renamed away or deleted while closed: the reopen finds out which.
                None => wake_parked.push(*key),
            }
        }
        for key in wake_parked {
            fs.queue(key, Wait::Parked(key));
        }
        for key in found {
            if fs.known(&key) {
                continue;
            }
            let Some((path, pattern, _)) = seen.remove(&key) else {
                continue;
            };
            fs.queue(
                key,
                Wait::New {
                    path,
                    pattern,
                    key,
                    startup,
                },
            );
        }
    }

    /// Opens waiting files while slots are free. An open that fails for lack of descriptors
    /// (or any error but the file being gone) puts the file back at the end of the queue and
    /// stops for this round: it is retried after open files give up their slots. Returns
    /// whether a file was opened.
    fn fill(
        &self,
        fs: &mut Files,
        store: &mut Store,
        ctx: &Ctx,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut opened = false;
        let mut tries = fs.waiting.len();
        while fs.open.len() < fs.cap(self.cfg.max_open_files)
            && tries > 0
            && !shutdown.is_cancelled()
        {
            tries -= 1;
            let Some(wait) = fs.waiting.pop_front() else {
                break;
            };
            match wait {
                Wait::New {
                    path,
                    pattern,
                    key,
                    startup,
                } => {
                    fs.queued.remove(&key);
                    if fs.open.contains_key(&key) || fs.parked.contains_key(&key) {
                        continue;
                    }
                    let opened_file = open_regular(&path)
                        .and_then(|handle| self.open(handle, &path, pattern, store, startup));
                    match opened_file {
                        // The key of the file actually opened: the path may have been rotated
                        // between the walk and the open.
                        Ok((key, t)) if !fs.open.contains_key(&key) => {
                            fs.insert(key, t, &self.selfm);
                            opened = true;
                        }
                        Ok(_) => {}
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidInput
                            ) => {}
                        Err(e) => {
                            ctx.io.report("open", &path, &e);
                            if out_of_fds(&e) {
                                fs.out_of_descriptors();
                            }
                            fs.queue(
                                key,
                                Wait::New {
                                    path,
                                    pattern,
                                    key,
                                    startup,
                                },
                            );
                            break;
                        }
                    }
                }
                Wait::Parked(key) => {
                    fs.queued.remove(&key);
                    match self.reopen(key, fs, ctx) {
                        Ok(true) => opened = true,
                        Ok(false) => {}
                        Err(fds) => {
                            if fds {
                                fs.out_of_descriptors();
                            }
                            fs.queue(key, Wait::Parked(key));
                            break;
                        }
                    }
                }
            }
        }
        opened
    }

    /// Closes an open file to give its slot away, if it can be picked up again where it is
    /// (see [`Tailed::parkable`]).
    fn park(&self, key: FileKey, fs: &mut Files, store: &mut Store) {
        if !fs.open.get(&key).is_some_and(Tailed::parkable) {
            return;
        }
        let Some(t) = fs.remove(key, &self.selfm) else {
            return;
        };
        let mut handle = t.handle;
        record(store, key, &mut handle, &t.path, &t.acks);
        tracing::debug!(path = %t.path.display(), offset = t.reader.position(), "file closed to give its slot to a waiting one");
        fs.parked.insert(
            key,
            Parked {
                path: t.path,
                pattern: t.pattern,
                acks: t.acks,
                pos: t.reader.position(),
                head: t.head,
            },
        );
    }

    /// Reopens a parked file at its position, after checking it is the same file (device +
    /// inode; the first bytes are checked before every read, as for any open file). Not at its
    /// path any more: looked for by inode in its directory (a rotation while it was closed)
    /// and read as a rotated file; not found: its unread part is lost, said and counted.
    /// `Ok(true)`: opened; `Ok(false)`: nothing to open; `Err`: the open failed (`true`: out
    /// of descriptors), the file stays parked.
    fn reopen(&self, key: FileKey, fs: &mut Files, ctx: &Ctx) -> Result<bool, bool> {
        let Some(p) = fs.parked.get(&key) else {
            return Ok(false);
        };
        let mut rotated = false;
        let handle = match open_regular(&p.path) {
            Ok(h) if h.metadata().is_ok_and(|m| FileKey::of(&m) == key) => Some(h),
            Ok(_) => None,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidInput
                ) =>
            {
                None
            }
            Err(e) => {
                ctx.io.report("open", &p.path, &e);
                return Err(out_of_fds(&e));
            }
        };
        let (handle, path) = match handle {
            Some(h) => (h, p.path.clone()),
            None => {
                let found = match find_in_dir(dir_of(&p.path), key) {
                    Ok(f) => f,
                    Err(e) => {
                        ctx.io.report("read_dir", dir_of(&p.path), &e);
                        None
                    }
                };
                let opened = found.and_then(|at| match open_regular(&at) {
                    Ok(h) if h.metadata().is_ok_and(|m| FileKey::of(&m) == key) => Some((h, at)),
                    Ok(_) => None,
                    Err(e) => {
                        ctx.io.report("open", &at, &e);
                        None
                    }
                });
                match opened {
                    Some(found) => {
                        rotated = true;
                        found
                    }
                    None => {
                        self.count_event("lost_while_closed");
                        tracing::warn!(path = %p.path.display(), offset = p.pos, "a file closed to share max_open_files was deleted or moved away before its turn came: its unread part is lost (raise max_open_files)");
                        fs.parked.remove(&key);
                        return Ok(false);
                    }
                }
            }
        };
        let Some(p) = fs.parked.remove(&key) else {
            return Ok(false);
        };
        let mut t = match self.tailed(handle, key, &path, p.pattern, p.pos, p.acks) {
            Ok(t) => t,
            Err(e) => {
                ctx.io.report("open", &path, &e);
                return Ok(false);
            }
        };
        t.head = p.head;
        if rotated {
            self.count_event("rotated");
            tracing::info!(path = %path.display(), "file rotated while waiting for a slot; reading its rest");
            if ctx.matcher.pattern_of(&path).is_none() {
                t.state = State::Gone { deleted: false };
            }
        }
        fs.insert(key, t, &self.selfm);
        Ok(true)
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
    pub(super) fn locate(&self, t: &mut Tailed, ctx: &Ctx) {
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
    /// rotated file closed since the event (its checkpoint still recognises it). With no slot
    /// free it is queued by path (its descriptor closed).
    fn adopt(
        &self,
        mut o: Opened,
        fs: &mut Files,
        store: &Store,
        ctx: &Ctx,
        finished: &VecDeque<(Instant, FileKey)>,
    ) {
        let key = match o.file.metadata() {
            Ok(m) => FileKey::of(&m),
            Err(e) => return ctx.io.report("stat", &o.path, &e),
        };
        if fs.known(&key) {
            return;
        }
        if finished.iter().any(|(_, k)| *k == key)
            && matches!(store.resume(key, &mut o.file), Ok(Some(_)))
        {
            return;
        }
        if fs.open.len() >= fs.cap(self.cfg.max_open_files) {
            fs.queue(
                key,
                Wait::New {
                    path: o.path,
                    pattern: o.pattern,
                    key,
                    startup: false,
                },
            );
            return;
        }
        match self.open(o.file, &o.path, o.pattern, store, false) {
            Ok((key, mut t)) => {
                // Perhaps already renamed away or deleted: then read as a rotated file.
                self.locate(&mut t, ctx);
                fs.insert(key, t, &self.selfm);
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
        fs: &mut Files,
        store: &Store,
        ctx: &Ctx,
        shutdown: &CancellationToken,
    ) {
        let mut dirs: HashMap<PathBuf, HashMap<u64, PathBuf>> = HashMap::new();
        for (key, path) in store.entries() {
            if shutdown.is_cancelled() || fs.open.len() >= fs.cap(self.cfg.max_open_files) {
                return;
            }
            if fs.known(&key) {
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
            let mut handle = match open_regular(&at) {
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
                    fs.insert(key, t, &self.selfm);
                }
                Err(e) => ctx.io.report("open", &at, &e),
            }
        }
    }

    /// Starts following `handle`, the file at `path`, from its checkpoint if it has one.
    pub(super) fn open(
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
        let t = self.tailed(handle, key, path, pattern, offset, AckQueue::new(offset))?;
        Ok((key, t))
    }

    /// A [`Tailed`] reading `handle` (the file `key` at `path`) from `offset`.
    fn tailed(
        &self,
        handle: std::fs::File,
        key: FileKey,
        path: &Path,
        pattern: usize,
        offset: u64,
        acks: Arc<AckQueue>,
    ) -> std::io::Result<Tailed> {
        let mut std_file = handle.try_clone()?;
        use std::io::Seek;
        std_file.seek(std::io::SeekFrom::Start(offset))?;
        let pattern = pattern.min(self.cfg.paths.len().saturating_sub(1));
        let source: Arc<str> = Arc::from(self.cfg.paths.get(pattern).map_or("", String::as_str));
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
        Ok(Tailed {
            key,
            path: path.to_path_buf(),
            pattern,
            source,
            reader,
            handle,
            acks,
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
            opened_at: Instant::now(),
        })
    }

    /// Reads up to a few batches of one file and sends them.
    async fn read_some(
        &self,
        t: &mut Tailed,
        out: &Out<'_>,
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
    async fn send(&self, t: &mut Tailed, batch: LineBatch, out: &Out<'_>) -> bool {
        self.send_at(t, batch, out, None).await
    }

    /// As `send`; `base` is the file offset of the batch's first byte, when known, which gives
    /// each line an id from its place in the file (stable across restarts, for idempotent
    /// delivery). Decoded container lines and cut lines have no such place.
    async fn send_at(
        &self,
        t: &mut Tailed,
        batch: LineBatch,
        out: &Out<'_>,
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
        out.send(batch).await
    }

    /// Emits the multi-line event still held (timeout, rotation, truncation), acknowledged.
    async fn flush_joiner(&self, t: &mut Tailed, out: &Out<'_>) -> bool {
        let Some(mut b) = t.joiner.as_mut().and_then(|j| j.flush(&t.source)) else {
            return true;
        };
        if let Some(at) = ack_position(t) {
            b.ack = Some(t.acks.ack_for(at));
        }
        out.send(b).await
    }

    async fn at_eof(
        &self,
        t: &mut Tailed,
        out: &Out<'_>,
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
                    if !out.send(b).await {
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
