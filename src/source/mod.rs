//! Sources: where lines come from. Each source reads bytes, cuts them into lines with a
//! [`LineReader`], and sends [`LineBatch`]es into the pipeline's bounded channel.
//!
//! Invariants: a source never holds more than one batch plus one partial line (at most
//! `max_line_bytes`) in memory; `send().await` on the bounded channel is the backpressure, so a
//! slow pipeline slows the reads and the writer is pushed back by the kernel's pipe buffer. A line
//! longer than `max_line_bytes` is cut there and flagged (counted downstream); the rest of it is
//! read and discarded without being buffered. A last line without a newline is emitted at EOF.

pub mod checkpoint;
pub mod file;
pub mod multiline;
pub mod stdin;
pub mod tcp;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};

/// `[[sources]]`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Lines from standard input (`app | weir run`).
    Stdin(StdinConfig),
    /// Lines from files, read in order to their end.
    File(FileConfig),
    /// Newline-delimited JSON from TCP clients.
    Tcp(TcpConfig),
}

/// How a source's lines are framed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Each line is the application's line (JSON or not).
    #[default]
    Json,
    /// Docker json-file: `{"log":"...\n","stream":"stdout","time":"..."}`.
    Docker,
    /// CRI (containerd, CRI-O): `2024-05-01T12:00:00.123456789Z stdout F message`.
    Cri,
    /// Docker or CRI or plain, told apart per line.
    Auto,
}

/// `type = "stdin"`
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinConfig {
    /// Framing of the lines. Default: json.
    #[serde(default)]
    pub format: Format,
    /// Join multi-line events (tracebacks, stack traces): see [`multiline`]. Default: none.
    #[serde(default)]
    pub multiline: Option<multiline::MultilineConfig>,
    /// How this source's lines are read (`{ format = "logfmt" }`), instead of the pipeline's
    /// `[parser]`; same keys. Default: the pipeline's.
    #[serde(default)]
    pub parser: Option<crate::parse::text::SourceParserConfig>,
}

/// `type = "file"`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Files or globs to follow (`/var/log/app/*.log`).
    pub paths: Vec<String>,
    /// Globs of files to leave out.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// For files found at startup without a checkpoint: `beginning` (default) or `end`.
    /// Files that appear later are always read from their beginning.
    #[serde(default)]
    pub read_from: file::ReadFrom,
    /// Framing of the lines. Default: json.
    #[serde(default)]
    pub format: Format,
    /// Most files read at once; more wait their turn. Default: 256.
    #[serde(default = "default_max_open_files")]
    pub max_open_files: usize,
    /// Most files one expansion of the globs lists; past it the walk stops, says so in a
    /// warning and counts `weir_file_skipped_total{reason="max_glob_matches"}`. Default: 100000.
    #[serde(default = "default_max_glob_matches")]
    pub max_glob_matches: usize,
    /// A last line without newline is emitted after waiting this long. Default: 5000.
    #[serde(default = "default_partial_line_timeout_ms")]
    pub partial_line_timeout_ms: u64,
    /// Globs are expanded again this often (and on notify events). Default: 1000.
    #[serde(default = "default_rescan_interval_ms")]
    pub rescan_interval_ms: u64,
    /// Files at their end are checked for new data this often (and on notify events).
    /// Default: 250.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// A file renamed away or deleted (rotated) is kept open and read while it still grows (a
    /// writer that has not reopened its log yet), and closed once it has been quiet this long;
    /// 0 closes it as soon as it is read to its end. Default: 5000.
    #[serde(default = "default_rotate_wait_ms")]
    pub rotate_wait_ms: u64,
    /// Join multi-line events (tracebacks, stack traces): see [`multiline`]. Default: none.
    #[serde(default)]
    pub multiline: Option<multiline::MultilineConfig>,
    /// How this source's lines are read (`{ format = "logfmt" }`), instead of the pipeline's
    /// `[parser]`; same keys. Default: the pipeline's.
    #[serde(default)]
    pub parser: Option<crate::parse::text::SourceParserConfig>,
}

impl FileConfig {
    /// A file source for paths given on the command line.
    pub fn for_paths(paths: Vec<String>, format: Format) -> Self {
        FileConfig {
            paths,
            exclude: Vec::new(),
            read_from: file::ReadFrom::Beginning,
            format,
            max_open_files: default_max_open_files(),
            max_glob_matches: default_max_glob_matches(),
            partial_line_timeout_ms: default_partial_line_timeout_ms(),
            rescan_interval_ms: default_rescan_interval_ms(),
            poll_interval_ms: default_poll_interval_ms(),
            rotate_wait_ms: default_rotate_wait_ms(),
            multiline: None,
            parser: None,
        }
    }
}

const fn default_max_open_files() -> usize {
    256
}
const fn default_max_glob_matches() -> usize {
    100_000
}
const fn default_partial_line_timeout_ms() -> u64 {
    5000
}
const fn default_rescan_interval_ms() -> u64 {
    1000
}
const fn default_poll_interval_ms() -> u64 {
    250
}
const fn default_rotate_wait_ms() -> u64 {
    5000
}

/// `type = "tcp"`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    /// Address to listen on. Default: 127.0.0.1:5170 (loopback unless configured).
    #[serde(default = "default_tcp_address")]
    pub address: String,
    /// Most concurrent clients; past it new connections are refused and counted. Default: 1024.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A client that sends nothing for this long is disconnected; 0 never. Default: 300.
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// A line must be complete within this many seconds of its first byte (time weir waits
    /// on the pipeline does not count), or the client is cut off (`reason="slow"`), its
    /// partial line kept flagged as cut; 0 never. Default: 30.
    #[serde(default = "default_line_timeout_secs")]
    pub line_timeout_secs: u64,
    /// Bytes of partial lines all clients together may hold (past 16 KiB each); a client
    /// that needs more is not read until some is freed (backpressure). Default: 64 MiB.
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: usize,
    /// TLS: `{ cert_file, key_file, client_ca_file, handshake_timeout_secs }`. Default: none.
    #[serde(default)]
    pub tls: Option<tcp::TlsConfig>,
    /// Longest line a client may send; a longer one is cut there, counted, and the client is
    /// disconnected. Default: the pipeline's `event.max_line_bytes`.
    #[serde(default)]
    pub max_line_bytes: Option<usize>,
    /// Framing of the lines. Default: json.
    #[serde(default)]
    pub format: Format,
    /// Join multi-line events (tracebacks, stack traces), per connection: see [`multiline`].
    /// Default: none.
    #[serde(default)]
    pub multiline: Option<multiline::MultilineConfig>,
    /// How this source's lines are read (`{ format = "logfmt" }`), instead of the pipeline's
    /// `[parser]`; same keys. Default: the pipeline's.
    #[serde(default)]
    pub parser: Option<crate::parse::text::SourceParserConfig>,
}

impl SourceConfig {
    /// The source's `multiline` setting.
    pub fn multiline(&self) -> Option<&multiline::MultilineConfig> {
        match self {
            SourceConfig::Stdin(s) => s.multiline.as_ref(),
            SourceConfig::File(f) => f.multiline.as_ref(),
            SourceConfig::Tcp(t) => t.multiline.as_ref(),
        }
    }

    /// What serde cannot check. The message names the field; the caller places it.
    pub fn check(&self) -> Result<(), String> {
        if let Some(m) = self.multiline() {
            m.compile()?;
        }
        match self {
            SourceConfig::Stdin(_) => Ok(()),
            SourceConfig::File(f) => {
                if f.paths.is_empty() {
                    return Err("a file source needs at least one path in `paths`".into());
                }
                for p in f.paths.iter().chain(&f.exclude) {
                    globset::Glob::new(p).map_err(|e| format!("invalid glob {p:?}: {e}"))?;
                }
                if f.max_open_files == 0 {
                    return Err("max_open_files must be at least 1".into());
                }
                Ok(())
            }
            SourceConfig::Tcp(t) => {
                t.address.parse::<std::net::SocketAddr>().map_err(|e| {
                    format!(
                        "invalid address {:?} ({e}): expected IP:PORT, such as 127.0.0.1:5170",
                        t.address
                    )
                })?;
                if t.max_connections == 0 {
                    return Err("max_connections must be at least 1".into());
                }
                if t.max_line_bytes == Some(0) {
                    return Err("max_line_bytes must be at least 1".into());
                }
                if t.max_buffered_bytes == 0 {
                    return Err("max_buffered_bytes must be at least 1".into());
                }
                if let Some(tls) = &t.tls {
                    tls.check()?;
                }
                Ok(())
            }
        }
    }
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            address: default_tcp_address(),
            max_connections: default_max_connections(),
            idle_timeout_secs: default_idle_timeout_secs(),
            line_timeout_secs: default_line_timeout_secs(),
            max_buffered_bytes: default_max_buffered_bytes(),
            tls: None,
            max_line_bytes: None,
            format: Format::Json,
            multiline: None,
            parser: None,
        }
    }
}

pub fn default_tcp_address() -> String {
    "127.0.0.1:5170".into()
}
const fn default_max_connections() -> usize {
    1024
}
const fn default_idle_timeout_secs() -> u64 {
    300
}
const fn default_line_timeout_secs() -> u64 {
    30
}
const fn default_max_buffered_bytes() -> usize {
    64 << 20
}

/// Where a line sits in its batch's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineSpan {
    pub start: u32,
    pub end: u32,
    /// The line was longer than `max_line_bytes` and was cut.
    pub truncated: bool,
    /// 0: no attributes; n: the line's attributes are `LineBatch::attrs[n - 1]`.
    pub attrs: u32,
}

/// Fields a source attaches to its lines, beside those of the line itself: Docker's `stream` and
/// `container_id`, CRI's `stream`, `namespace`, `pod`, `container`. Shared by the lines of a file.
pub type Attrs = Arc<[(Box<str>, Box<str>)]>;

/// Complete lines read by a source, in order, sharing one buffer.
#[derive(Debug)]
pub struct LineBatch {
    /// The source's name, for the `source` label of weir's metrics.
    pub source: Arc<str>,
    pub buf: Vec<u8>,
    pub lines: Vec<LineSpan>,
    /// Bytes read from the source for these lines, including any discarded past a cut.
    pub bytes_read: u64,
    /// Lines beyond the first of each event that multi-line joining made (kept or cut): the
    /// events of this batch hold `lines.len() + joined_lines` lines as read. 0 without joining.
    pub joined_lines: u64,
    /// Attribute sets referred to by `LineSpan::attrs`.
    pub attrs: Vec<Attrs>,
    /// Set by sources that checkpoint: acknowledged once the batch is processed.
    pub ack: Option<Ack>,
    /// For raw file batches: (file identity, file offset of `buf[0]`), so each line gets an id
    /// from its place in the file. `None` where lines have no stable position.
    pub origin: Option<(u64, u64)>,
}

/// End-to-end acknowledgement of one batch: set once every consumer (the processor, then every
/// sink) is done with it. See [`AckQueue`].
#[derive(Debug, Clone)]
pub struct Ack {
    done: Arc<AtomicBool>,
}

impl Ack {
    pub fn acknowledge(&self) {
        self.done.store(true, Ordering::Release);
    }
}

/// The batches of one file in flight, in the order they were sent. The file's checkpoint is the
/// end of the longest run of acknowledged batches from the front: a batch acknowledged early
/// (one sink was faster) never lets the checkpoint pass an earlier batch still in flight.
#[derive(Debug)]
pub struct AckQueue {
    /// The position reached, and the batches in flight: (end, done).
    state: Mutex<(u64, VecDeque<InFlight>)>,
}

type InFlight = (u64, Arc<AtomicBool>);

impl AckQueue {
    /// A queue whose position starts at `start` (a resumed checkpoint, or 0).
    pub fn new(start: u64) -> Arc<AckQueue> {
        Arc::new(AckQueue {
            state: Mutex::new((start, VecDeque::new())),
        })
    }

    /// Registers a batch ending at `end` and returns its acknowledgement.
    pub fn ack_for(&self, end: u64) -> Ack {
        let done = Arc::new(AtomicBool::new(false));
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.1.push_back((end, done.clone()));
        Ack { done }
    }

    /// The position up to which everything sent has been acknowledged.
    pub fn position(&self) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((end, done)) = s.1.front() {
            if !done.load(Ordering::Acquire) {
                break;
            }
            let end = *end;
            s.0 = s.0.max(end);
            s.1.pop_front();
        }
        s.0
    }
}

impl LineBatch {
    pub fn new(source: Arc<str>) -> Self {
        LineBatch {
            source,
            buf: Vec::new(),
            lines: Vec::new(),
            bytes_read: 0,
            joined_lines: 0,
            attrs: Vec::new(),
            ack: None,
            origin: None,
        }
    }

    /// Appends a line (copying its bytes) with optional attributes.
    pub fn push(&mut self, line: &[u8], truncated: bool, attrs: Option<&Attrs>) {
        let start = self.buf.len() as u32;
        self.buf.extend_from_slice(line);
        let attrs = match attrs {
            None => 0,
            Some(a) => {
                if !self.attrs.last().is_some_and(|last| Arc::ptr_eq(last, a)) {
                    self.attrs.push(a.clone());
                }
                self.attrs.len() as u32
            }
        };
        self.lines.push(LineSpan {
            start,
            end: self.buf.len() as u32,
            truncated,
            attrs,
        });
    }

    /// The attributes of a line (empty for most sources).
    pub fn attrs_of(&self, span: &LineSpan) -> &[(Box<str>, Box<str>)] {
        match span.attrs {
            0 => &[],
            n => &self.attrs[n as usize - 1],
        }
    }

    pub fn line(&self, span: &LineSpan) -> &[u8] {
        &self.buf[span.start as usize..span.end as usize]
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], bool)> {
        self.lines.iter().map(|s| (self.line(s), s.truncated))
    }
}

/// Size of one read.
const READ_CHUNK: usize = 128 * 1024;

/// Cuts a byte stream into lines, in batches. `\n` ends a line; a `\r` before it is dropped.
pub struct LineReader<R> {
    inner: R,
    source: Arc<str>,
    max_line: usize,
    /// The partial line carried over from the last batch (at most `max_line` bytes).
    carry: Vec<u8>,
    /// The current line passed `max_line`: its kept part is in `carry`, the rest is skipped.
    skipping: bool,
    eof: bool,
    /// Follow mode (tailing): EOF means "nothing more for now", not the end.
    follow: bool,
    /// Stream position: bytes consumed from the start of the stream (or the resume offset).
    consumed: u64,
    /// Stream position where the line being skipped started.
    skip_start: u64,
    /// Bytes read in a call that returned no batch, to be counted in the next batch.
    pending_bytes: u64,
    /// Size of one read (and of the buffer a waiting read holds).
    read_size: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R, source: Arc<str>, max_line_bytes: usize) -> Self {
        LineReader {
            inner,
            source,
            max_line: max_line_bytes.clamp(1, u32::MAX as usize / 2),
            carry: Vec::new(),
            skipping: false,
            eof: false,
            follow: false,
            consumed: 0,
            skip_start: 0,
            pending_bytes: 0,
            read_size: READ_CHUNK,
        }
    }

    /// Reads at most `n` bytes at a time (default 128 KiB): for sources with many readers,
    /// each of which holds its read buffer while it waits.
    pub fn with_read_size(mut self, n: usize) -> Self {
        self.read_size = n.max(1);
        self
    }

    /// A reader that tails: at EOF, [`next_batch`](Self::next_batch) returns `None` but keeps
    /// the partial last line, and may be called again when more data arrives. `offset` is the
    /// stream position the reader starts at (a resumed file's checkpoint).
    pub fn following(inner: R, source: Arc<str>, max_line_bytes: usize, offset: u64) -> Self {
        let mut r = LineReader::new(inner, source, max_line_bytes);
        r.follow = true;
        r.consumed = offset;
        r
    }

    /// Stream position just past the last complete line returned: where a restart resumes.
    pub fn position(&self) -> u64 {
        if self.skipping {
            self.skip_start
        } else {
            self.consumed - self.carry.len() as u64
        }
    }

    /// Bytes of a partial line waiting for its newline.
    pub fn pending(&self) -> usize {
        self.carry.len()
    }

    /// Whether the reader is discarding the rest of an over-long line.
    pub fn is_skipping(&self) -> bool {
        self.skipping
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Emits the partial last line as it is (a writer that never finished it), if there is one.
    pub fn take_partial(&mut self) -> Option<LineBatch> {
        if self.carry.is_empty() && !self.skipping {
            return None;
        }
        let mut batch = LineBatch::new(self.source.clone());
        batch.bytes_read = std::mem::take(&mut self.pending_bytes);
        batch.buf = std::mem::take(&mut self.carry);
        let end = batch.buf.len();
        push_line(&batch.buf, &mut batch.lines, 0, end, self.skipping);
        if self.skipping {
            // The rest of the over-long line is still skipped when it comes.
            self.skip_start = self.consumed;
        }
        Some(batch)
    }

    /// The next batch of complete lines; `None` once the input is exhausted.
    pub async fn next_batch(&mut self) -> std::io::Result<Option<LineBatch>> {
        if self.eof {
            return Ok(None);
        }
        let mut batch = LineBatch::new(self.source.clone());
        batch.bytes_read = std::mem::take(&mut self.pending_bytes);
        // The carried partial line becomes the batch's buffer (moved, not copied), so a long
        // line's allocation leaves with its batch instead of staying with the reader.
        batch.buf = std::mem::take(&mut self.carry);
        batch.buf.reserve(self.read_size);
        // Start of the line being read, and where the newline scan resumes.
        let mut line_start = 0usize;
        let mut scan_from = batch.buf.len();
        let mut scratch = Vec::new();
        loop {
            if self.skipping {
                // Read the rest of an over-long line aside; only what follows its end is kept.
                scratch.resize(self.read_size, 0);
                let n = self.inner.read(&mut scratch).await?;
                batch.bytes_read += n as u64;
                self.consumed += n as u64;
                if n == 0 {
                    return Ok(self.at_eof(batch, line_start));
                }
                let Some(i) = memchr::memchr(b'\n', &scratch[..n]) else {
                    continue;
                };
                let end = batch.buf.len();
                push_line(&batch.buf, &mut batch.lines, line_start, end, true);
                self.skipping = false;
                line_start = batch.buf.len();
                batch.buf.extend_from_slice(&scratch[i + 1..n]);
                scan_from = line_start;
            } else {
                let len = batch.buf.len();
                batch.buf.resize(len + self.read_size, 0);
                let n = self.inner.read(&mut batch.buf[len..]).await?;
                batch.buf.truncate(len + n);
                batch.bytes_read += n as u64;
                self.consumed += n as u64;
                if n == 0 {
                    return Ok(self.at_eof(batch, line_start));
                }
            }
            let LineBatch { buf, lines, .. } = &mut batch;
            for i in memchr::memchr_iter(b'\n', &buf[scan_from..]) {
                let end = scan_from + i;
                let cut = end - line_start > self.max_line;
                let line_end = if cut { line_start + self.max_line } else { end };
                push_line(buf, lines, line_start, line_end, cut);
                line_start = end + 1;
            }
            scan_from = batch.buf.len();
            if batch.buf.len() - line_start > self.max_line {
                // The current line is over the limit with no end in sight: keep its head only.
                self.skip_start = self.consumed - (batch.buf.len() - line_start) as u64;
                batch.buf.truncate(line_start + self.max_line);
                scan_from = batch.buf.len();
                self.skipping = true;
            }
            // Send as soon as a read completed lines: a live source must not wait for a full
            // batch. The partial line (or the kept head of one being skipped) moves to `carry`.
            if !batch.lines.is_empty() {
                self.carry.extend_from_slice(&batch.buf[line_start..]);
                batch.buf.truncate(line_start);
                return Ok(Some(batch));
            }
        }
    }

    /// At EOF. Following: keep the partial line for later and report nothing new. Otherwise:
    /// the last line, if it had no newline, is emitted as it is.
    fn at_eof(&mut self, mut batch: LineBatch, line_start: usize) -> Option<LineBatch> {
        if self.follow {
            self.carry.extend_from_slice(&batch.buf[line_start..]);
            self.pending_bytes += batch.bytes_read;
            return None;
        }
        self.finish(&mut batch, line_start);
        Some(batch)
    }

    fn finish(&mut self, batch: &mut LineBatch, line_start: usize) {
        self.eof = true;
        if batch.buf.len() > line_start || self.skipping {
            let end = batch.buf.len();
            push_line(&batch.buf, &mut batch.lines, line_start, end, self.skipping);
        }
    }
}

/// Records the line `start..end` of `buf`, dropping the `\r` of a CRLF ending.
fn push_line(buf: &[u8], lines: &mut Vec<LineSpan>, start: usize, end: usize, truncated: bool) {
    let mut end = end;
    if !truncated && end > start && buf[end - 1] == b'\r' {
        end -= 1;
    }
    lines.push(LineSpan {
        start: start as u32,
        end: end as u32,
        truncated,
        attrs: 0,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that returns its input in fixed-size pieces, as pipes do.
    struct Pieces {
        data: Vec<u8>,
        at: usize,
        piece: usize,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self
                .piece
                .min(buf.remaining())
                .min(self.data.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    async fn lines(data: &[u8], piece: usize, max: usize) -> Vec<(String, bool)> {
        let mut r = LineReader::new(
            Pieces {
                data: data.to_vec(),
                at: 0,
                piece,
            },
            "t".into(),
            max,
        );
        let mut out = Vec::new();
        let mut bytes = 0;
        while let Some(b) = r.next_batch().await.unwrap() {
            bytes += b.bytes_read;
            out.extend(
                b.iter()
                    .map(|(l, t)| (String::from_utf8_lossy(l).into_owned(), t)),
            );
        }
        assert_eq!(bytes, data.len() as u64, "every byte read is accounted for");
        out
    }

    fn s(v: &[(&str, bool)]) -> Vec<(String, bool)> {
        v.iter().map(|(a, b)| (a.to_string(), *b)).collect()
    }

    #[tokio::test]
    async fn splits_in_any_piece_size() {
        let data = b"one\ntwo\r\n\nthree";
        for piece in [1, 2, 3, 5, 100] {
            assert_eq!(
                lines(data, piece, 100).await,
                s(&[
                    ("one", false),
                    ("two", false),
                    ("", false),
                    ("three", false)
                ]),
                "piece {piece}"
            );
        }
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_the_rest_skipped() {
        let mut data = b"short\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', 10_000));
        data.extend(b"\nafter\n");
        data.extend(std::iter::repeat_n(b'y', 20));
        for piece in [1, 7, 4096, 1 << 20] {
            assert_eq!(
                lines(&data, piece, 8).await,
                s(&[
                    ("short", false),
                    ("xxxxxxxx", true),
                    ("after", false),
                    ("yyyyyyyy", true)
                ]),
                "piece {piece}"
            );
        }
    }

    #[tokio::test]
    async fn a_huge_line_is_never_buffered_whole() {
        let big = 7 * READ_CHUNK + 17;
        let mut data = vec![b'z'; big];
        data.push(b'\n');
        data.extend(b"ok\n");
        let mut r = LineReader::new(&data[..], "t".into(), 1000);
        let mut got = Vec::new();
        while let Some(b) = r.next_batch().await.unwrap() {
            assert!(b.buf.capacity() <= 2 * READ_CHUNK + 1000);
            got.extend(b.iter().map(|(l, t)| (l.len(), t)));
        }
        assert_eq!(got, vec![(1000, true), (2, false)]);
    }

    #[test]
    fn checkpoints_advance_only_over_a_prefix_of_acknowledged_batches() {
        let q = AckQueue::new(10);
        let a = q.ack_for(20);
        let b = q.ack_for(30);
        let c = q.ack_for(40);
        assert_eq!(q.position(), 10);
        b.acknowledge();
        assert_eq!(q.position(), 10, "b is done but a is not");
        a.acknowledge();
        assert_eq!(q.position(), 30);
        c.acknowledge();
        assert_eq!(q.position(), 40);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Batches of any sizes, acknowledged in any order, with `position()` read at any time
        /// (even twice in a row, or never until the end): the checkpoint never passes the end of
        /// the longest acknowledged run from the front, never goes back, and reaches the last
        /// batch's end once every batch is acknowledged.
        #[test]
        fn checkpoint_never_passes_unacknowledged_data(
            start in 0u64..1_000_000,
            sizes in proptest::collection::vec(0u64..10_000, 0..40),
            order in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 0..40),
            peeks in proptest::collection::vec(proptest::prelude::any::<bool>(), 40),
        ) {
            let q = AckQueue::new(start);
            let mut end = start;
            let mut batches = Vec::new();
            for s in &sizes {
                end += s;
                batches.push((end, q.ack_for(end), false));
            }
            // The ack order: a permutation of the batches from `order`, then any left.
            let mut pending: Vec<usize> = (0..batches.len()).collect();
            let mut acks = Vec::new();
            for ix in &order {
                if pending.is_empty() {
                    break;
                }
                acks.push(pending.remove(ix.index(pending.len())));
            }
            acks.extend(pending);
            let mut last = q.position();
            proptest::prop_assert_eq!(last, start);
            for (n, &i) in acks.iter().enumerate() {
                batches[i].1.acknowledge();
                batches[i].2 = true;
                if !peeks[n % peeks.len()] {
                    continue;
                }
                let pos = q.position();
                let safe = batches
                    .iter()
                    .take_while(|b| b.2)
                    .last()
                    .map_or(start, |b| b.0);
                proptest::prop_assert!(pos <= safe, "checkpoint {} past acknowledged data {}", pos, safe);
                proptest::prop_assert_eq!(pos, safe, "every acknowledged prefix is taken");
                proptest::prop_assert!(pos >= last, "checkpoint went back from {} to {}", last, pos);
                last = pos;
            }
            proptest::prop_assert_eq!(q.position(), end);
        }
    }

    #[test]
    fn source_config_parses() {
        #[derive(Deserialize)]
        struct T {
            sources: Vec<SourceConfig>,
        }
        let t: T = toml::from_str(
            "[[sources]]\ntype = \"stdin\"\n[[sources]]\ntype = \"file\"\npaths = [\"/a.log\"]\n",
        )
        .unwrap();
        assert!(matches!(t.sources[0], SourceConfig::Stdin(_)));
        assert!(matches!(&t.sources[1], SourceConfig::File(f) if f.paths == ["/a.log"]));
        let e = toml::from_str::<T>("[[sources]]\ntype = \"stdin\"\npath = 1\n")
            .err()
            .unwrap();
        assert!(e.to_string().contains("unknown field `path`"), "{e}");
    }
}
