//! The disk buffer of a sink (`[sinks.buffer] type = "disk"`).
//!
//! Events are appended to segment files under `<data_dir>/buffer/<sink>/`, and fsynced, before
//! the processor lets go of them, so the source may acknowledge them (and a file source
//! checkpoint past them): an outage of the backend, and a restart of weir during it, lose
//! nothing. A pump reads the segments in order and feeds the sink's driver; what the driver has
//! delivered or dead-lettered (the same ack-on-drop tokens as everywhere) moves the read cursor,
//! which is saved (temp file + rename) and frees whole segments. On start, the pump resumes at
//! the saved cursor, so what the buffer held is sent first. The buffer is capped at `max_bytes`
//! of unsent data: past it the processor waits (`block`) or drops new events, counted.
//!
//! # On-disk format (v2)
//! A segment is named after its logical start (bytes across all segments ever written) and
//! begins with the 16-byte header `\x1eweir-buffer v2\n`. Each record is one frame:
//! `\x1e` (marker), the payload length and its CRC-32 as 8 lowercase hex digits each, a space,
//! the payload (the event as compact JSON), `\n`. JSON escapes every control character, so the
//! marker byte never occurs inside a payload: a reader that meets a bad frame (length, CRC or
//! terminator wrong) scans for the next marker that starts a frame whose CRC holds, counts the
//! records in between (`weir_sink_dropped_total{reason="corrupt"}`, bytes in
//! `weir_disk_buffer_corrupt_bytes_total`), logs segment, offset, bytes and records, and goes on
//! with the rest of the segment and the next ones. Segments of the previous format (v1: JSON
//! lines, no header) are still read, line by line; a segment whose header names another version
//! is refused at start with a message (weir does not guess at a newer format).
//!
//! # Failures
//! A write that fails (ENOSPC, EIO, a read-only data_dir) is truncated back to the last whole
//! record before anything else is appended, acknowledges nothing, and is retried by the sink's
//! input (backpressure: the source waits, the file is the buffer). A crash can leave a
//! half-written last record; it is cut off when the buffer is reopened. At most the events
//! delivered after the last cursor save are sent again (at-least-once). A cursor file that
//! cannot be read makes the pump start at the oldest segment (resent, never lost), said in a
//! warning.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::driver::SinkMetrics;
use super::{AckToken, SinkEvent};
use crate::event::Level;
use crate::source::AckQueue;
use crate::telemetry::{io_error_kind, state_metrics, LogLimit};

mod segment;
#[cfg(test)]
mod tests;

use segment::{frame, read_head, segment_format, Format, SegReader, Step, HEADER};

/// A segment is closed and a new one started past `max_bytes / 16`, within these bounds: space
/// comes back in whole segments, so a small buffer (on a small disk) needs small ones.
const SEGMENT_BYTES: std::ops::RangeInclusive<u64> = (1 << 20)..=(16 << 20);

#[derive(Serialize, Deserialize)]
struct Record {
    id: String,
    line: String,
    ts: i64,
    level: Level,
    #[serde(default)]
    component: Option<String>,
    message: String,
    trace_id: String,
    is_json: bool,
    #[serde(default)]
    attrs: Vec<(String, String)>,
    source: String,
    /// Added with the OTLP sink; records written before it read as 0 / none.
    #[serde(default, skip_serializing_if = "is_zero")]
    received: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    span: Option<crate::derive::span::Span>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl Record {
    fn of(e: &SinkEvent) -> Record {
        Record {
            id: e.id.clone(),
            line: e.line.clone(),
            ts: e.timestamp,
            level: e.level,
            component: e.component.clone(),
            message: e.message.clone(),
            trace_id: e.trace_id.clone(),
            is_json: e.is_json,
            attrs: e.attrs.clone(),
            source: e.source.to_string(),
            received: e.received,
            span: e.span.as_deref().cloned(),
        }
    }

    fn into_event(self) -> SinkEvent {
        SinkEvent {
            id: self.id,
            line: self.line,
            timestamp: self.ts,
            level: self.level,
            component: self.component,
            message: self.message,
            trace_id: self.trace_id,
            is_json: self.is_json,
            attrs: self.attrs,
            source: Arc::from(self.source),
            ack: None,
            received: self.received,
            span: self.span.map(Arc::new),
        }
    }
}

/// State shared by the writer (processor) and the pump (sink task).
struct Shared {
    dir: PathBuf,
    /// The sink's name (logs, metrics).
    name: String,
    /// Logical end of the data written (bytes across all segments ever).
    written: AtomicU64,
    /// Logical position up to which the sink is done (saved cursor).
    done: AtomicU64,
    notify: Notify,
}

/// The processor's side: appends events.
pub struct DiskWriter {
    shared: Arc<Shared>,
    file: File,
    segment_start: u64,
    /// Bytes of the current segment that hold whole records (and the header).
    committed: u64,
    /// A failed write left bytes past `committed` that could not be cut yet.
    torn: bool,
    max_bytes: u64,
    segment_bytes: u64,
}

/// The sink's side: reads events in order and tracks what was delivered.
pub struct DiskPump {
    shared: Arc<Shared>,
}

fn segment_name(start: u64) -> String {
    format!("{start:020}.seg")
}

fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut out: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// The saved cursor; `None` when there is none or it cannot be read (said in a warning).
fn read_cursor(dir: &Path) -> Option<u64> {
    let path = dir.join("cursor");
    match std::fs::read(&path) {
        Ok(b) => match std::str::from_utf8(&b).unwrap_or("").trim().parse() {
            Ok(v) => Some(v),
            Err(_) => {
                state_metrics()
                    .state_unreadable
                    .with_label_values(&["disk_buffer_cursor"])
                    .inc();
                tracing::warn!(path = %path.display(), "disk buffer cursor unreadable: sending again from the oldest segment (events may arrive twice, none is lost)");
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            state_metrics()
                .disk_errors
                .with_label_values(&["disk_buffer_cursor", io_error_kind(&e)])
                .inc();
            tracing::warn!(path = %path.display(), error = %e, "cannot read the disk buffer cursor: sending again from the oldest segment (events may arrive twice, none is lost)");
            None
        }
    }
}

fn save_cursor(dir: &Path, pos: u64) -> std::io::Result<()> {
    let tmp = dir.join("cursor.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(pos.to_string().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(tmp, dir.join("cursor"))
}

/// Creates segment `start` with its header; on failure nothing is left behind.
fn new_segment(dir: &Path, start: u64) -> std::io::Result<File> {
    let path = dir.join(segment_name(start));
    let made = (|| {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)?;
        f.write_all(HEADER)?;
        f.sync_all()?;
        Ok(f)
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    made
}

/// Opens (or creates) the disk buffer of sink `name` under `data_dir`.
pub fn open(
    data_dir: &Path,
    name: &str,
    max_bytes: u64,
) -> std::io::Result<(DiskWriter, DiskPump)> {
    let dir = data_dir.join("buffer").join(name);
    std::fs::create_dir_all(&dir)?;
    let segs = segments(&dir)?;
    // Refuse a format this weir cannot read before changing anything.
    for &s in &segs {
        let path = dir.join(segment_name(s));
        segment_format(&path, &read_head(&mut File::open(&path)?)?)?;
    }
    let (segment_start, file, committed) = match segs.last() {
        Some(&start) => open_last(&dir, start)?,
        None => (0, new_segment(&dir, 0)?, HEADER.len() as u64),
    };
    let end = segment_start + committed;
    let first = segs.first().copied().unwrap_or(0);
    let done = match read_cursor(&dir) {
        Some(c) if c > end => {
            tracing::warn!(dir = %dir.display(), cursor = c, end, "disk buffer cursor is past the data on disk: nothing is left to send");
            end
        }
        Some(c) => c.max(first),
        None => first,
    };
    let shared = Arc::new(Shared {
        dir,
        name: name.to_string(),
        written: AtomicU64::new(end),
        done: AtomicU64::new(done),
        notify: Notify::new(),
    });
    Ok((
        DiskWriter {
            shared: shared.clone(),
            file,
            segment_start,
            committed,
            torn: false,
            max_bytes,
            segment_bytes: (max_bytes / 16).clamp(*SEGMENT_BYTES.start(), *SEGMENT_BYTES.end()),
        },
        DiskPump { shared },
    ))
}

/// Prepares the last segment for appending: cuts a record a crash left half-written. A segment
/// of the old format, or with damage at its end, is left for the reader; appends go to a new
/// segment after it. Returns (segment start, file, committed bytes).
fn open_last(dir: &Path, start: u64) -> std::io::Result<(u64, File, u64)> {
    let path = dir.join(segment_name(start));
    let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
    let len = file.metadata()?.len();
    let head = read_head(&mut file)?;
    if len < HEADER.len() as u64 && HEADER.starts_with(&head) {
        // Created, header not (wholly) written.
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(HEADER)?;
        file.sync_all()?;
        return Ok((start, file, HEADER.len() as u64));
    }
    let format = segment_format(&path, &head)?;
    if format == Format::V2 && head == HEADER {
        // The end of the last whole record.
        let mut r = SegReader::open(dir, start)?;
        let (mut off, mut keep) = (HEADER.len() as u64, HEADER.len() as u64);
        loop {
            match r.next(off, len)? {
                Step::Record(_, next) => {
                    off = next;
                    keep = next;
                }
                Step::Skip { to, .. } => off = to,
                Step::End => break,
            }
        }
        if keep == len {
            return Ok((start, file, len));
        }
        if r.find_byte(keep, len, b'\n')?.is_none() {
            file.set_len(keep)?;
            file.sync_all()?;
            tracing::warn!(segment = %path.display(), bytes = len - keep, "cut a half-written record");
            return Ok((start, file, keep));
        }
        // Damage before the end: the reader skips and counts it; write after it.
        let next = start + len;
        return Ok((next, new_segment(dir, next)?, HEADER.len() as u64));
    }
    let mut keep = len;
    if format == Format::V1 {
        // Cut a line a crash left half-written: keep up to the last newline.
        let back = len.min(1 << 20);
        let mut r = SegReader::open(dir, start)?;
        let tail = r.window(len - back, back as usize, len)?;
        keep = match tail.iter().rposition(|&b| b == b'\n') {
            Some(i) => len - back + i as u64 + 1,
            None if back == len => 0,
            None => len,
        };
        if keep < len {
            file.set_len(keep)?;
            tracing::warn!(segment = %path.display(), bytes = len - keep, "cut a half-written record");
        }
    }
    let next = start + keep;
    Ok((next, new_segment(dir, next)?, HEADER.len() as u64))
}

impl DiskWriter {
    /// Bytes written but not yet delivered.
    pub fn backlog(&self) -> u64 {
        self.shared
            .written
            .load(Ordering::Acquire)
            .saturating_sub(self.shared.done.load(Ordering::Acquire))
    }

    pub fn is_full(&self) -> bool {
        self.backlog() >= self.max_bytes
    }

    /// Appends events and syncs them to disk. On an error nothing of them counts as written:
    /// what reached the file is cut back (now, or before the next append if the cut fails).
    pub fn append(&mut self, events: &[SinkEvent]) -> std::io::Result<()> {
        if self.torn {
            self.file.set_len(self.committed)?;
            self.torn = false;
        }
        let mut buf = Vec::with_capacity(events.iter().map(|e| e.size() + 64).sum());
        let mut payload = Vec::new();
        for e in events {
            payload.clear();
            serde_json::to_writer(&mut payload, &Record::of(e)).map_err(std::io::Error::other)?;
            frame(&payload, &mut buf)?;
        }
        let mut written = self.shared.written.load(Ordering::Acquire);
        if self.committed >= self.segment_bytes {
            self.file.sync_all()?;
            self.file = new_segment(&self.shared.dir, written)?;
            self.segment_start = written;
            self.committed = HEADER.len() as u64;
            written += HEADER.len() as u64;
            self.shared.written.store(written, Ordering::Release);
        }
        let r = self
            .file
            .seek(SeekFrom::Start(self.committed))
            .and_then(|_| self.file.write_all(&buf))
            .and_then(|()| self.file.sync_data());
        if let Err(e) = r {
            if self.file.set_len(self.committed).is_err() {
                self.torn = true;
            }
            return Err(e);
        }
        self.committed += buf.len() as u64;
        self.shared
            .written
            .store(written + buf.len() as u64, Ordering::Release);
        self.shared.notify.notify_one();
        Ok(())
    }
}

/// What one read from the buffer gave.
#[derive(Default)]
struct Chunk {
    events: Vec<SinkEvent>,
    /// Corrupt bytes skipped, and the records they held.
    skipped_bytes: u64,
    skipped_records: u64,
}

impl DiskPump {
    /// Feeds the driver until `stop` (the processor is gone and everything is sent) or
    /// `abandon`. Events go out in chunks; each chunk's token moves the cursor once the driver
    /// is done with all of its events (never when the sink let go of them on `abandon`: they
    /// stay on disk for the next run).
    pub async fn run(
        self,
        out: mpsc::Sender<Vec<SinkEvent>>,
        writer_gone: CancellationToken,
        abandon: CancellationToken,
        metrics: SinkMetrics,
    ) {
        let acks = AckQueue::new(self.shared.done.load(Ordering::Acquire));
        let mut pos = self.shared.done.load(Ordering::Acquire);
        let mut reader: Option<SegReader> = None;
        let mut last_save = Instant::now();
        let mut saved = pos;
        let (mut read_errors, mut save_errors) = (LogLimit::default(), LogLimit::default());
        loop {
            let written = self.shared.written.load(Ordering::Acquire);
            if pos < written {
                let before = pos;
                match self.read_chunk(&mut reader, &mut pos, written) {
                    Ok(chunk) => {
                        if chunk.skipped_records > 0 {
                            metrics.drop_events("corrupt", chunk.skipped_records as usize);
                            state_metrics()
                                .buffer_corrupt_bytes
                                .with_label_values(&[&self.shared.name])
                                .inc_by(chunk.skipped_bytes);
                        }
                        let n = chunk.events.len();
                        if n > 0 {
                            let ack = acks.ack_for(pos);
                            let gone = abandon.clone();
                            let token = AckToken::new(move || {
                                if !gone.is_cancelled() {
                                    ack.acknowledge()
                                }
                            });
                            let events = chunk
                                .events
                                .into_iter()
                                .map(|mut e| {
                                    e.ack = Some(token.clone());
                                    e
                                })
                                .collect();
                            drop(token);
                            metrics.buffer_events.add(n as i64);
                            let sent = tokio::select! {
                                r = out.send(events) => r.is_ok(),
                                _ = abandon.cancelled() => false,
                            };
                            if !sent {
                                metrics.buffer_events.sub(n as i64);
                                let _ = self.commit(acks.position());
                                return;
                            }
                        } else if pos > before {
                            // Only skipped bytes or a segment change: nothing to wait for.
                            acks.ack_for(pos).acknowledge();
                        } else {
                            // Nothing readable yet below `written`: wait, never spin.
                            tokio::select! {
                                _ = self.shared.notify.notified() => {}
                                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                                _ = abandon.cancelled() => {}
                            }
                        }
                    }
                    Err(e) => {
                        state_metrics()
                            .disk_errors
                            .with_label_values(&["disk_buffer", io_error_kind(&e)])
                            .inc();
                        if let Some(suppressed) = read_errors.hit() {
                            tracing::error!(sink = %self.shared.name, dir = %self.shared.dir.display(), error = %e, kind = io_error_kind(&e), suppressed, "cannot read the disk buffer; retrying");
                        }
                        reader = None;
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = abandon.cancelled() => return,
                        }
                    }
                }
            }
            // Move the cursor over what the sink finished; free whole segments behind it.
            let done = acks.position();
            self.shared.done.store(done, Ordering::Release);
            if done != saved
                && (last_save.elapsed() >= Duration::from_millis(500) || done == written)
            {
                if let Err(e) = self.commit(done) {
                    state_metrics()
                        .disk_errors
                        .with_label_values(&["disk_buffer_cursor", io_error_kind(&e)])
                        .inc();
                    if let Some(suppressed) = save_errors.hit() {
                        tracing::error!(sink = %self.shared.name, error = %e, kind = io_error_kind(&e), suppressed, "cannot save the disk buffer cursor (after a restart, events since the last save are sent again)");
                    }
                }
                saved = done;
                last_save = Instant::now();
            }
            if pos >= self.shared.written.load(Ordering::Acquire) {
                if writer_gone.is_cancelled() && done >= pos {
                    let _ = self.commit(done);
                    return;
                }
                tokio::select! {
                    _ = self.shared.notify.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = abandon.cancelled() => {
                        let _ = self.commit(acks.position());
                        return;
                    }
                }
            }
        }
    }

    fn commit(&self, done: u64) -> std::io::Result<()> {
        save_cursor(&self.shared.dir, done)?;
        // A segment is free once the next one starts at or before the cursor.
        let segs = segments(&self.shared.dir)?;
        for w in segs.windows(2) {
            if w[1] <= done {
                let _ = std::fs::remove_file(self.shared.dir.join(segment_name(w[0])));
            }
        }
        Ok(())
    }

    /// Reads up to CHUNK records from `pos` (never past `written`), skipping corrupt bytes.
    fn read_chunk(
        &self,
        reader: &mut Option<SegReader>,
        pos: &mut u64,
        written: u64,
    ) -> std::io::Result<Chunk> {
        let segs = segments(&self.shared.dir)?;
        let Some(start) = segs.iter().rev().find(|&&s| s <= *pos).copied() else {
            // The segment holding the cursor is gone (removed by hand): go on at the next.
            return match segs.iter().find(|&&s| s > *pos) {
                Some(&next) => {
                    tracing::warn!(sink = %self.shared.name, dir = %self.shared.dir.display(), from = *pos, to = next, "disk buffer segment missing; its events are lost");
                    *pos = next;
                    Ok(Chunk::default())
                }
                None => Err(std::io::Error::other(
                    "no disk buffer segment holds the cursor",
                )),
            };
        };
        let next_start = segs.iter().find(|&&s| s > start).copied();
        let limit = next_start.unwrap_or(written).min(written) - start;
        if reader.as_ref().is_none_or(|r| r.start != start) {
            *reader = Some(SegReader::open(&self.shared.dir, start)?);
        }
        let Some(r) = reader.as_mut() else {
            return Ok(Chunk::default());
        };
        let mut chunk = Chunk::default();
        let mut off = *pos - start;
        if r.format == Format::V2 {
            off = off.max(HEADER.len() as u64);
        }
        while chunk.events.len() < super::CHUNK {
            match r.next(off, limit)? {
                Step::Record(payload, next) => {
                    match serde_json::from_slice::<Record>(&payload) {
                        Ok(rec) => chunk.events.push(rec.into_event()),
                        Err(e) => {
                            tracing::warn!(sink = %self.shared.name, segment = %r.path.display(), offset = off, bytes = next - off, records = 1, error = %e, "disk buffer record unreadable; skipped");
                            chunk.skipped_bytes += next - off;
                            chunk.skipped_records += 1;
                        }
                    }
                    off = next;
                }
                Step::Skip { to, records } => {
                    tracing::warn!(sink = %self.shared.name, segment = %r.path.display(), offset = off, bytes = to - off, records, "disk buffer corrupt: bytes skipped; reading on at the next valid record");
                    chunk.skipped_bytes += to - off;
                    chunk.skipped_records += records;
                    off = to;
                }
                Step::End => {
                    if let Some(next) = next_start {
                        if next <= written {
                            *pos = next;
                            *reader = None;
                            return Ok(chunk);
                        }
                    }
                    break;
                }
            }
        }
        *pos = start + off;
        Ok(chunk)
    }
}
