//! The disk buffer of a sink (`[sinks.buffer] type = "disk"`).
//!
//! Events are appended as JSON lines to segment files under `<data_dir>/buffer/<sink>/`, and
//! fsynced, before the processor lets go of them, so the source may acknowledge them (and a file
//! source checkpoint past them): an outage of the backend, and a restart of weir during it, lose
//! nothing. A pump reads the segments in order and feeds the sink's driver; what the driver has
//! delivered or dead-lettered (the same ack-on-drop tokens as everywhere) moves the read cursor,
//! which is saved (temp file + rename) and frees whole segments. On start, the pump resumes at
//! the saved cursor, so what the buffer held is sent first. The buffer is capped at `max_bytes`
//! of unsent data: past it the processor waits (`block`) or drops new events, counted.
//!
//! A crash can leave a half-written last record; it is cut off when the buffer is reopened. At
//! most the events delivered after the last cursor save are sent again (at-least-once).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::{AckToken, SinkEvent};
use crate::event::Level;
use crate::source::AckQueue;

/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 16 << 20;

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
}

/// State shared by the writer (processor) and the pump (sink task).
struct Shared {
    dir: PathBuf,
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
    max_bytes: u64,
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

fn read_cursor(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("cursor"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn save_cursor(dir: &Path, pos: u64) -> std::io::Result<()> {
    let tmp = dir.join("cursor.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(pos.to_string().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(tmp, dir.join("cursor"))
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
    let (segment_start, file, end) = match segs.last() {
        Some(&start) => {
            let path = dir.join(segment_name(start));
            let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
            // Cut a record a crash left half-written: keep up to the last newline.
            let len = file.metadata()?.len();
            let mut keep = len;
            if len > 0 {
                let mut buf = Vec::new();
                let back = len.min(1 << 20);
                file.seek(SeekFrom::Start(len - back))?;
                std::io::Read::read_to_end(&mut file, &mut buf)?;
                keep = match buf.iter().rposition(|&b| b == b'\n') {
                    Some(i) => len - back + i as u64 + 1,
                    None if back == len => 0,
                    None => len,
                };
                if keep < len {
                    file.set_len(keep)?;
                    tracing::warn!(segment = %path.display(), bytes = len - keep, "cut a half-written record");
                }
            }
            file.seek(SeekFrom::End(0))?;
            (start, file, start + keep)
        }
        None => {
            let file = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(dir.join(segment_name(0)))?;
            (0, file, 0)
        }
    };
    let first = segs.first().copied().unwrap_or(0);
    let done = read_cursor(&dir).clamp(first, end);
    let shared = Arc::new(Shared {
        dir,
        written: AtomicU64::new(end),
        done: AtomicU64::new(done),
        notify: Notify::new(),
    });
    Ok((
        DiskWriter {
            shared: shared.clone(),
            file,
            segment_start,
            max_bytes,
        },
        DiskPump { shared },
    ))
}

impl DiskWriter {
    /// Bytes written but not yet delivered.
    pub fn backlog(&self) -> u64 {
        self.shared.written.load(Ordering::Acquire) - self.shared.done.load(Ordering::Acquire)
    }

    pub fn is_full(&self) -> bool {
        self.backlog() >= self.max_bytes
    }

    /// Appends events and syncs them to disk.
    pub fn append(&mut self, events: &[SinkEvent]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(events.iter().map(SinkEvent::size).sum());
        for e in events {
            let rec = Record {
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
            };
            serde_json::to_writer(&mut buf, &rec).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        let written = self.shared.written.load(Ordering::Acquire);
        if written - self.segment_start >= SEGMENT_BYTES {
            self.file.sync_all()?;
            self.segment_start = written;
            self.file = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(self.shared.dir.join(segment_name(written)))?;
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.shared
            .written
            .store(written + buf.len() as u64, Ordering::Release);
        self.shared.notify.notify_one();
        Ok(())
    }
}

impl DiskPump {
    /// Feeds the driver until `stop` (the processor is gone and everything is sent) or
    /// `abandon`. Events go out in chunks; each chunk's token moves the cursor once the driver
    /// is done with all of its events.
    pub async fn run(
        self,
        out: mpsc::Sender<Vec<SinkEvent>>,
        writer_gone: CancellationToken,
        abandon: CancellationToken,
    ) {
        let acks = AckQueue::new(self.shared.done.load(Ordering::Acquire));
        let mut pos = self.shared.done.load(Ordering::Acquire);
        let mut reader: Option<(u64, BufReader<File>)> = None;
        let mut last_save = Instant::now();
        let mut saved = pos;
        loop {
            let written = self.shared.written.load(Ordering::Acquire);
            if pos < written {
                match self.read_chunk(&mut reader, &mut pos, written) {
                    Ok(events) if !events.is_empty() => {
                        let ack = acks.ack_for(pos);
                        let token = AckToken::new(move || ack.acknowledge());
                        let events = events
                            .into_iter()
                            .map(|mut e| {
                                e.ack = Some(token.clone());
                                e
                            })
                            .collect();
                        drop(token);
                        tokio::select! {
                            r = out.send(events) => if r.is_err() { return },
                            _ = abandon.cancelled() => return,
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(dir = %self.shared.dir.display(), error = %e, "disk buffer unreadable; skipping to its end");
                        pos = written;
                        reader = None;
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
                    tracing::error!(error = %e, "cannot save the disk buffer cursor");
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

    /// Reads up to 512 records from `pos` (never past `written`).
    fn read_chunk(
        &self,
        reader: &mut Option<(u64, BufReader<File>)>,
        pos: &mut u64,
        written: u64,
    ) -> std::io::Result<Vec<SinkEvent>> {
        let segs = segments(&self.shared.dir)?;
        let start = segs
            .iter()
            .rev()
            .find(|&&s| s <= *pos)
            .copied()
            .ok_or_else(|| std::io::Error::other("no segment holds the cursor"))?;
        let next_start = segs.iter().find(|&&s| s > start).copied();
        if reader.as_ref().is_none_or(|(s, _)| *s != start) {
            let mut f = File::open(self.shared.dir.join(segment_name(start)))?;
            f.seek(SeekFrom::Start(*pos - start))?;
            *reader = Some((start, BufReader::with_capacity(256 * 1024, f)));
        }
        let Some((_, r)) = reader.as_mut() else {
            return Ok(Vec::new());
        };
        let mut events = Vec::new();
        let mut line = String::new();
        while events.len() < super::CHUNK && *pos < written {
            line.clear();
            let n = r.read_line(&mut line)?;
            if n == 0 || !line.ends_with('\n') {
                // End of this segment: move to the next one if there is one.
                if let Some(next) = next_start {
                    *pos = next;
                    *reader = None;
                } else if n > 0 {
                    // A record being written: read it again next time.
                    r.seek_relative(-(n as i64))?;
                }
                break;
            }
            *pos += n as u64;
            match serde_json::from_str::<Record>(&line) {
                Ok(rec) => events.push(SinkEvent {
                    id: rec.id,
                    line: rec.line,
                    timestamp: rec.ts,
                    level: rec.level,
                    component: rec.component,
                    message: rec.message,
                    trace_id: rec.trace_id,
                    is_json: rec.is_json,
                    attrs: rec.attrs,
                    source: Arc::from(rec.source),
                    ack: None,
                }),
                Err(e) => tracing::error!(error = %e, "unreadable disk buffer record skipped"),
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: u64) -> SinkEvent {
        SinkEvent {
            id: format!("{i:032x}"),
            line: format!("{{\"seq\":{i}}}"),
            timestamp: i as i64,
            level: Level::Info,
            component: Some("c".into()),
            message: "m".into(),
            trace_id: "t".into(),
            is_json: true,
            attrs: vec![("stream".into(), "stdout".into())],
            source: Arc::from("test"),
            ack: None,
        }
    }

    /// Reads `want` events through a pump; events in `deliver` are acknowledged (dropped), the
    /// others held until the pump is abandoned (as if weir was killed with them in flight).
    async fn pump_once(dir: &Path, want: usize, deliver: usize) -> Vec<u64> {
        let (w, pump) = open(dir, "s", 1 << 30).unwrap();
        drop(w);
        let (tx, mut rx) = mpsc::channel(4);
        let (gone, abandon) = (CancellationToken::new(), CancellationToken::new());
        let task = tokio::spawn(pump.run(tx, gone.clone(), abandon.clone()));
        let mut got = Vec::new();
        let mut held = Vec::new();
        while got.len() < want {
            let chunk = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap();
            for e in chunk {
                got.push(e.timestamp as u64);
                if got.len() > deliver {
                    held.push(e);
                }
            }
        }
        // Let the cursor be saved for what was delivered, then stop.
        tokio::time::sleep(Duration::from_millis(700)).await;
        abandon.cancel();
        task.await.unwrap();
        drop(held);
        got
    }

    #[tokio::test]
    async fn survives_a_restart_and_resends_only_what_was_not_delivered() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut w, _pump) = open(dir.path(), "s", 1 << 30).unwrap();
            let batch: Vec<SinkEvent> = (0..1000).map(ev).collect();
            w.append(&batch).unwrap();
            assert!(w.backlog() > 0);
        }
        // First run: 1000 read, the first 600 (whole chunks: 512) delivered.
        let got = pump_once(dir.path(), 1000, 600).await;
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
        // Second run resumes after the last fully delivered chunk: from 512.
        let got = pump_once(dir.path(), 488, 488).await;
        assert_eq!(got, (512..1000).collect::<Vec<_>>());
        // A half-written record (crash mid-append) is cut when reopened.
        let seg = dir.path().join("buffer/s").join(segment_name(0));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"{\"id\":\"half").unwrap();
        let (mut w, _p) = open(dir.path(), "s", 1 << 30).unwrap();
        w.append(&[ev(1000)]).unwrap();
        drop(w);
        let got = pump_once(dir.path(), 1, 1).await;
        assert_eq!(got, vec![1000]);
    }
}
