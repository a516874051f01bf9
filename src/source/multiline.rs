//! Multi-line events: a Python traceback, a Java or Go stack trace, or lines a custom rule ties
//! together, joined into one event per source (`multiline = { mode = "python" }` on a source).
//!
//! # Where joining happens, and why there
//! A [`Joiner`] is a stage between a source's line cutting and its channel: it takes each
//! [`LineBatch`] the source would send (after Docker/CRI envelopes were decoded, so container
//! logs are joined on the application's lines, not on envelopes) and returns a batch whose
//! lines are the joined events. An event's lines stay contiguous in the new batch's buffer,
//! separated by `\n`, so one [`LineSpan`](super::LineSpan) covers `line1\nline2\n...` (without a
//! final newline) and the rest of the pipeline sees one line per event. Only this stage can
//! make a line with a `\n` in it: the parser reads such a line as "head + continuation".
//!
//! The last event of a batch may still grow, so the joiner holds it back until a line that
//! starts a new event, `timeout_ms` without input, or the end of the input. File sources
//! acknowledge a batch at the file offset where the held event starts ([`Joiner::held_offset`]),
//! so a checkpoint never passes a held line: after a restart the held event is read again,
//! whole. Each line read is part of exactly one event; nothing is held twice or dropped, except
//! the lines past an event's limits (below).
//!
//! # Rules
//! A rule says, for each line, whether it continues the open event or starts a new one. A line
//! that continues while nothing is open starts an event. For container logs, a line of another
//! `stream` (stdout/stderr) than the open event's always starts a new event.
//! - `python`: continuing are `Traceback (most recent call last):`, indented lines (the
//!   `  File ...` frames, code and `^^^` markers, exception groups), `During handling of the
//!   above exception...` / `The above exception was the direct cause...`, and inside a
//!   traceback the empty lines and the first unindented line after a frame (the final
//!   `ExceptionType: message`) unless it opens a JSON object. So the JSON line that
//!   `logger.exception` or `exc_info=True` wrote carries its traceback.
//! - `java`: indented `at ...`, `... N more`, `Caused by:`, `Suppressed:`, `Exception in
//!   thread "..."` and a line that begins with a qualified throwable name
//!   (`java.lang.IllegalStateException: ...`) continue.
//! - `go`: `panic: ...`, `fatal error: ...` and (outside a panic) `goroutine N [...]:` at
//!   column 0 start an event; inside it empty lines, indented lines, `goroutine ...`, `created by ...`, `[signal ...`,
//!   `exit status ...` and frame lines (ending in `)`) continue.
//! - custom, with `start` and/or `continuation` regexes: a line matching `start` starts an
//!   event; a line matching `continuation` (and not `start`) continues the open one; any other
//!   line continues when only `start` is given and starts an event otherwise.
//!
//! The built-in rules test byte prefixes only (no regex); a source without `multiline` has no
//! joiner at all and costs nothing.
//!
//! # Limits
//! An event holds at most `max_lines` lines and `max_bytes` bytes (capped at the pipeline's
//! `event.max_line_bytes`, so an event is never longer than a line may be). Its first line is
//! always kept whole (a single line is never cut here: it is already at most
//! `max_line_bytes`); a continuation line that would pass a limit is dropped, with every further
//! line of the event (still recognised as its continuation, so they do not become events of
//! their own), and the event is counted once in
//! `weir_parse_errors_total{reason="multiline_truncated"}`. At most one event is held
//! per source (per file, per TCP connection): memory stays bounded by `max_bytes`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use serde::Deserialize;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::{Attrs, LineBatch, LineSpan};

/// `multiline = { ... }` on a source: how its lines are joined into events.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MultilineConfig {
    /// A built-in rule: `python`, `java` or `go`. Not together with `start`/`continuation`.
    #[serde(default)]
    pub mode: Option<MultilineMode>,
    /// Regex: a line matching it starts a new event.
    #[serde(default)]
    pub start: Option<String>,
    /// Regex: a line matching it (and not `start`) continues the open event. With only
    /// `continuation`, every other line starts an event; with only `start`, every other line
    /// continues one.
    #[serde(default)]
    pub continuation: Option<String>,
    /// An open event is emitted when no line arrives for this long. Default: 1000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Most lines in one event; the rest of a longer event is dropped and counted
    /// (`multiline_truncated`). Default: 500.
    #[serde(default = "default_max_lines")]
    pub max_lines: usize,
    /// Most bytes in one event (capped at `event.max_line_bytes`): a line that would take the
    /// event past it is dropped, with the rest of the event, and counted
    /// (`multiline_truncated`). An event's first line is always kept whole (it is at most
    /// `event.max_line_bytes`), so a long single line is never cut here. Default: 1048576.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
}

/// The built-in rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MultilineMode {
    Python,
    Java,
    Go,
}

impl MultilineMode {
    /// `--multiline python|java|go`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "python" => Some(MultilineMode::Python),
            "java" => Some(MultilineMode::Java),
            "go" => Some(MultilineMode::Go),
            _ => None,
        }
    }
}

const fn default_timeout_ms() -> u64 {
    1000
}
const fn default_max_lines() -> usize {
    500
}
const fn default_max_bytes() -> usize {
    1024 * 1024
}

impl MultilineConfig {
    /// A built-in rule with the default limits.
    pub fn mode(mode: MultilineMode) -> Self {
        MultilineConfig {
            mode: Some(mode),
            start: None,
            continuation: None,
            timeout_ms: default_timeout_ms(),
            max_lines: default_max_lines(),
            max_bytes: default_max_bytes(),
        }
    }

    /// Checks and compiles the rule (pure). The message names the field.
    pub fn compile(&self) -> Result<Multiline, String> {
        let regex = |field: &str, p: &Option<String>| {
            p.as_deref()
                .map(|p| {
                    regex::bytes::Regex::new(p)
                        .map_err(|e| format!("multiline.{field}: invalid regex {p:?}: {e}"))
                })
                .transpose()
        };
        let rule = match (self.mode, &self.start, &self.continuation) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(
                    "multiline: give either `mode` or `start`/`continuation`, not both".into(),
                )
            }
            (Some(MultilineMode::Python), None, None) => Rule::Python,
            (Some(MultilineMode::Java), None, None) => Rule::Java,
            (Some(MultilineMode::Go), None, None) => Rule::Go,
            (None, None, None) => return Err(
                "multiline: needs `mode` (python, java, go) or a `start` or `continuation` regex"
                    .into(),
            ),
            (None, start, continuation) => Rule::Custom {
                start: regex("start", start)?,
                continuation: regex("continuation", continuation)?,
            },
        };
        if self.max_lines == 0 {
            return Err("multiline.max_lines must be at least 1".into());
        }
        if self.max_bytes == 0 {
            return Err("multiline.max_bytes must be at least 1".into());
        }
        if self.timeout_ms == 0 {
            return Err("multiline.timeout_ms must be at least 1".into());
        }
        Ok(Multiline {
            rule,
            timeout: Duration::from_millis(self.timeout_ms.min(24 * 3600 * 1000)),
            max_lines: self.max_lines,
            max_bytes: self.max_bytes,
        })
    }
}

/// A compiled `multiline` setting.
#[derive(Debug, Clone)]
pub struct Multiline {
    rule: Rule,
    timeout: Duration,
    max_lines: usize,
    max_bytes: usize,
}

#[derive(Debug, Clone)]
enum Rule {
    Python,
    Java,
    Go,
    Custom {
        start: Option<regex::bytes::Regex>,
        continuation: Option<regex::bytes::Regex>,
    },
}

/// What a rule remembers about the open event.
#[derive(Debug, Clone, Copy, Default)]
struct RuleState {
    /// Python: a `Traceback` line was seen. Go: inside a panic block.
    inside: bool,
    /// Python: the last line was a frame; the next unindented one is the exception line.
    expect_exception: bool,
}

impl Rule {
    /// Whether `line` continues the open event (whose state is `st`); updates `st`. For a line
    /// that starts an event, `st` is reset by [`Rule::start`].
    fn continues(&self, line: &[u8], st: &mut RuleState) -> bool {
        match self {
            Rule::Python => python_continues(line, st),
            Rule::Java => java_continues(line),
            // A goroutine header inside a panic block is one of its goroutines.
            Rule::Go => {
                st.inside
                    && !line.starts_with(b"panic: ")
                    && !line.starts_with(b"fatal error: ")
                    && go_continues(line)
            }
            Rule::Custom {
                start,
                continuation,
            } => {
                if start.as_ref().is_some_and(|r| r.is_match(line)) {
                    return false;
                }
                match continuation {
                    Some(c) => c.is_match(line),
                    None => true,
                }
            }
        }
    }

    /// The state of an event that `line` starts.
    fn start(&self, line: &[u8]) -> RuleState {
        let mut st = RuleState::default();
        match self {
            Rule::Python => {
                if line.starts_with(b"Traceback (most recent call last):") {
                    st.inside = true;
                    st.expect_exception = true;
                }
            }
            Rule::Go => st.inside = go_starts(line),
            Rule::Java | Rule::Custom { .. } => {}
        }
        st
    }
}

fn indented(line: &[u8]) -> bool {
    matches!(line.first(), Some(b' ' | b'\t'))
}

fn python_continues(line: &[u8], st: &mut RuleState) -> bool {
    if line.starts_with(b"Traceback (most recent call last):") {
        st.inside = true;
        st.expect_exception = true;
        return true;
    }
    if indented(line) {
        if st.inside {
            st.expect_exception = true;
        }
        return true;
    }
    if line.starts_with(b"During handling of the above exception")
        || line.starts_with(b"The above exception was the direct cause")
    {
        st.expect_exception = false;
        return true;
    }
    if !st.inside {
        return false;
    }
    if line.is_empty() {
        return true;
    }
    if st.expect_exception && !line.starts_with(b"{") {
        // `ValueError: bad value`, `KeyboardInterrupt`, `pkg.CustomError: ...`
        st.expect_exception = false;
        return true;
    }
    false
}

fn java_continues(line: &[u8]) -> bool {
    let trimmed = line.trim_ascii_start();
    if trimmed.len() < line.len() {
        return trimmed.starts_with(b"at ")
            || (trimmed.starts_with(b"... ") && trimmed.ends_with(b" more"))
            || trimmed.starts_with(b"Caused by:")
            || trimmed.starts_with(b"Suppressed:");
    }
    line.starts_with(b"Caused by:")
        || line.starts_with(b"Exception in thread \"")
        || throwable_head(line)
}

/// `java.lang.IllegalStateException: queue full`, `com.acme.FooError`: a qualified class name
/// ending in Exception, Error or Throwable, then `:` or the end of the line.
fn throwable_head(line: &[u8]) -> bool {
    let end = line
        .iter()
        .position(|&b| b == b':' || b == b' ')
        .unwrap_or(line.len());
    if end < line.len() && line[end] != b':' {
        return false;
    }
    let name = &line[..end];
    name.contains(&b'.')
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'$')
        && (name.ends_with(b"Exception")
            || name.ends_with(b"Error")
            || name.ends_with(b"Throwable"))
}

fn go_starts(line: &[u8]) -> bool {
    line.starts_with(b"panic: ")
        || line.starts_with(b"fatal error: ")
        || (line.starts_with(b"goroutine ") && line.ends_with(b"]:"))
}

fn go_continues(line: &[u8]) -> bool {
    line.is_empty()
        || indented(line)
        || line.starts_with(b"goroutine ")
        || line.starts_with(b"created by ")
        || line.starts_with(b"[signal ")
        || line.starts_with(b"exit status ")
        || (line.ends_with(b")") && !line.starts_with(b"{"))
}

/// The open event. Its bytes are in the batch being built (from `start`), or in `held`
/// between batches.
#[derive(Debug)]
struct Open {
    /// Where its text starts in the buffer that holds it.
    start: usize,
    lines: usize,
    /// Lines read into it, including those dropped past the limits.
    read: u64,
    /// Its first line was cut at `max_line_bytes`.
    truncated: bool,
    /// Lines past the limits were dropped (counted once).
    cut: bool,
    attrs: Option<Attrs>,
    /// File offset of its first line, when known.
    offset: Option<u64>,
    state: RuleState,
    /// When its last line arrived.
    last: Instant,
}

/// Joins the lines of one stream (a file, stdin, a TCP connection) into events; see the
/// module docs.
pub struct Joiner {
    cfg: Multiline,
    max_bytes: usize,
    /// Counts events cut at their limits (`multiline_truncated`); `None`: not counted.
    cut: Option<IntCounter>,
    open: Option<Open>,
    /// The bytes of `open` between batches (then `open.start` is 0).
    held: Vec<u8>,
}

impl Joiner {
    /// `max_line_bytes` caps `max_bytes`; `cut` counts events cut at their limits.
    pub fn new(cfg: Multiline, max_line_bytes: usize, cut: Option<IntCounter>) -> Self {
        let max_bytes = cfg.max_bytes.min(max_line_bytes).max(1);
        Joiner {
            cfg,
            max_bytes,
            cut,
            open: None,
            held: Vec::new(),
        }
    }

    /// Whether an event is held back, waiting for more lines.
    pub fn has_pending(&self) -> bool {
        self.open.is_some()
    }

    /// File offset where the held event starts: a checkpoint must not pass it. `None` when
    /// nothing is held or the offset is unknown (decoded container lines).
    pub fn held_offset(&self) -> Option<u64> {
        self.open.as_ref().and_then(|o| o.offset)
    }

    /// When the held event is due to be emitted (its last line + `timeout_ms`).
    pub fn deadline(&self) -> Option<Instant> {
        self.open.as_ref().map(|o| o.last + self.cfg.timeout)
    }

    /// Whether the held event has waited its `timeout_ms`.
    pub fn is_due(&self) -> bool {
        self.deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// Joins the lines of `input` into events. The last event is held back (see
    /// [`flush`](Self::flush)); the batch returned carries `input`'s `bytes_read`, and an
    /// `origin` when every event in it sits at its file offset (so line ids stay stable).
    pub fn join(&mut self, input: LineBatch) -> LineBatch {
        let now = Instant::now();
        let mut out = LineBatch::new(input.source.clone());
        out.bytes_read = input.bytes_read;
        out.buf = std::mem::take(&mut self.held);
        out.buf.reserve(input.buf.len() + input.lines.len());
        let (stream, base) = match input.origin {
            Some((s, b)) => (Some(s), Some(b)),
            None => (None, None),
        };
        // The file offset of `out.buf[0]`, while every byte placed so far sits at its offset.
        let mut out_base: Option<u64> = match &self.open {
            Some(o) => o.offset,
            None => None,
        };
        let mut consistent = self.open.as_ref().is_none_or(|o| o.offset.is_some());
        let mut fresh = self.open.is_none();
        for span in &input.lines {
            let line = input.line(span);
            let attrs = match span.attrs {
                0 => None,
                n => input.attrs.get(n as usize - 1),
            };
            let offset = base.map(|b| b + u64::from(span.start));
            let joins = match &mut self.open {
                Some(o) if same_stream(o.attrs.as_ref(), attrs) => {
                    self.cfg.rule.continues(line, &mut o.state)
                }
                _ => false,
            };
            if joins {
                let Some(o) = self.open.as_mut() else {
                    continue;
                };
                o.last = now;
                o.read += 1;
                let len = out.buf.len() - o.start;
                if o.cut || o.lines >= self.cfg.max_lines || len + 1 + line.len() > self.max_bytes {
                    if !o.cut {
                        o.cut = true;
                        if let Some(c) = &self.cut {
                            c.inc();
                        }
                    }
                    consistent = false;
                    continue;
                }
                out.buf.push(b'\n');
                check(&mut consistent, out_base, out.buf.len(), offset);
                out.buf.extend_from_slice(line);
                o.lines += 1;
                continue;
            }
            if let Some(o) = self.open.take() {
                emit(&mut out, o);
                // A separator, so the next event sits at its file offset too.
                out.buf.push(b'\n');
            }
            if fresh {
                fresh = false;
                out_base = offset;
                consistent = offset.is_some();
            }
            check(&mut consistent, out_base, out.buf.len(), offset);
            let start = out.buf.len();
            out.buf.extend_from_slice(line);
            self.open = Some(Open {
                start,
                lines: 1,
                read: 1,
                truncated: span.truncated,
                cut: false,
                attrs: attrs.cloned(),
                offset,
                state: self.cfg.rule.start(line),
                last: now,
            });
        }
        // Hold the last event back: it may go on in the next batch.
        if let Some(o) = &mut self.open {
            self.held = out.buf[o.start..].to_vec();
            out.buf.truncate(o.start);
            o.start = 0;
        }
        if consistent && !out.lines.is_empty() {
            if let (Some(s), Some(b)) = (stream, out_base) {
                out.origin = Some((s, b));
            }
        }
        out
    }

    /// Emits the held event, if there is one (timeout, end of input, rotation).
    pub fn flush(&mut self, source: &Arc<str>) -> Option<LineBatch> {
        let o = self.open.take()?;
        let mut out = LineBatch::new(source.clone());
        out.buf = std::mem::take(&mut self.held);
        emit(&mut out, o);
        Some(out)
    }
}

impl Multiline {
    /// A joiner for one stream of lines, counting its cuts in `weir_parse_errors_total`.
    pub fn joiner(&self, max_line_bytes: usize, selfm: &crate::telemetry::SelfMetrics) -> Joiner {
        let reason = crate::event::ParseIssue::MultilineTruncated.reason();
        Joiner::new(
            self.clone(),
            max_line_bytes,
            Some(selfm.parse_errors.with_label_values(&[reason])),
        )
    }

    /// A joiner whose cuts are not counted (`weir test`).
    pub fn joiner_uncounted(&self, max_line_bytes: usize) -> Joiner {
        Joiner::new(self.clone(), max_line_bytes, None)
    }
}

/// A stream (stdin, a TCP socket) as a following [`LineReader`](super::LineReader) sees it when
/// lines are joined: a read that waits past the held event's deadline ends early with nothing,
/// as if at the end of the data for now ([`take_tick`](Self::take_tick) says so), so the
/// source can emit the held event and read on. The real end of the stream is remembered
/// ([`at_end`](Self::at_end)). Without a deadline it only passes reads through.
pub struct Quiet<R> {
    inner: R,
    deadline: Option<Instant>,
    sleep: Pin<Box<Sleep>>,
    armed: Option<Instant>,
    ticked: bool,
    end: bool,
}

impl<R> Quiet<R> {
    pub fn new(inner: R) -> Self {
        Quiet {
            inner,
            deadline: None,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
            ticked: false,
            end: false,
        }
    }

    /// When a waiting read should give up (the held event's deadline); `None`: never.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// Whether the last read ended at the deadline (and not at the end of the stream).
    pub fn take_tick(&mut self) -> bool {
        std::mem::take(&mut self.ticked)
    }

    /// Whether the stream itself ended.
    pub fn at_end(&self) -> bool {
        self.end
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Quiet<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        if let Poll::Ready(r) = Pin::new(&mut this.inner).poll_read(cx, buf) {
            if r.is_ok() && buf.filled().len() == before {
                this.end = true;
            }
            return Poll::Ready(r);
        }
        let Some(deadline) = this.deadline else {
            return Poll::Pending;
        };
        if this.armed != Some(deadline) {
            this.sleep.as_mut().reset(deadline);
            this.armed = Some(deadline);
        }
        match this.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.deadline = None;
                this.armed = None;
                this.ticked = true;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Keeps `consistent` only while the byte placed at `pos` is the one at file offset `offset`.
fn check(consistent: &mut bool, base: Option<u64>, pos: usize, offset: Option<u64>) {
    if *consistent && base.map(|b| b + pos as u64) != offset {
        *consistent = false;
    }
}

/// Records the open event `o` (whose text runs from `o.start` to the end of `out.buf`).
fn emit(out: &mut LineBatch, o: Open) {
    out.joined_lines += o.read - 1;
    let attrs = match &o.attrs {
        None => 0,
        Some(a) => {
            if !out.attrs.last().is_some_and(|last| Arc::ptr_eq(last, a)) {
                out.attrs.push(a.clone());
            }
            out.attrs.len() as u32
        }
    };
    out.lines.push(LineSpan {
        start: o.start as u32,
        end: out.buf.len() as u32,
        truncated: o.truncated,
        attrs,
    });
}

/// Lines of different container streams never join.
fn same_stream(a: Option<&Attrs>, b: Option<&Attrs>) -> bool {
    let stream = |a: Option<&Attrs>| {
        a.and_then(|a| {
            a.iter()
                .find(|(k, _)| &**k == "stream")
                .map(|(_, v)| v.clone())
        })
    };
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) if Arc::ptr_eq(x, y) => true,
        _ => stream(a) == stream(b),
    }
}

#[cfg(test)]
mod tests;
