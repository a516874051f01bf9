//! Container log envelopes: Docker json-file and CRI lines, unwrapped to the application's line.
//!
//! Container runtimes do not store what an application printed as it is. Docker's json-file
//! driver wraps each line in `{"log":"...\n","stream":"stdout","time":"..."}`; containerd and
//! CRI-O (Kubernetes, `/var/log/pods`) prefix it: `2024-05-01T12:00:00.123456789Z stdout F ...`.
//! Both split long lines (Docker at 16 KiB, leaving the `\n` off all but the last part; CRI with
//! `P` partials ended by an `F`). A [`ContainerDecoder`] sits between a source's line reader and
//! the parser: it takes the raw lines of one stream and gives back the application's lines, whole
//! again, with the envelope's fields as attributes (`stream`, `time`, and what the file's path
//! tells: `container_id`, `namespace`, `pod`, `pod_uid`, `container`). The parser uses an
//! attribute only for a path the line itself lacks, so the envelope's `time` becomes the
//! timestamp of an application line that has none.
//!
//! Invariants:
//! - **Nothing dropped.** Every raw line becomes, or becomes part of, exactly one output line
//!   (only the bytes past a `max_line_bytes` cut are discarded, and that line is flagged).
//!   A line whose envelope cannot be read (not JSON, no `log` string, not CRI-shaped, or cut by
//!   the reader) is kept unchanged, without attributes, and counted once in `invalid_envelope`
//!   (`weir_parse_errors_total{reason="invalid_envelope"}`). A partial line still waiting at the
//!   end is emitted as it is by [`ContainerDecoder::flush`].
//! - **Order.** Lines come out in the order they are completed. Partials are joined per stream
//!   (stdout, stderr), so an stderr line written while a long stdout line was still being split
//!   comes out before that stdout line; within one stream the order is the file's.
//! - **Bounded memory.** A joined line never exceeds `max_line_bytes`: it is cut there and flagged
//!   truncated, and the rest of its parts are read and discarded, never buffered. At most
//!   [`MAX_PENDING`] streams wait with a partial line at once (past that the oldest is emitted as
//!   it is), so the decoder holds at most `MAX_PENDING * max_line_bytes` bytes.
//! - **Never panics**, whatever the bytes (checked by a proptest).

use std::borrow::Cow;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

use memchr::memmem;
use prometheus::IntCounter;
use serde::Deserialize;

use crate::source::{Attrs, Format, LineBatch, LineSpan};

/// Most streams with a partial line waiting at once. Docker and CRI have two (stdout, stderr)
/// and `auto` may meet both formats in one stream; past this the oldest partial is emitted as it
/// is, so entries with made-up `stream` names cannot make the decoder grow.
const MAX_PENDING: usize = 4;

/// The envelope an entry came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Docker,
    Cri,
}

/// One Docker json-file entry. Other fields (`attrs` of `--log-opt labels=...`) are skipped.
#[derive(Deserialize)]
struct DockerEntry<'a> {
    /// Borrowed from the raw line unless it holds escapes (it nearly always ends with `\n`, so
    /// it is usually rebuilt; the copy is the one allocation per entry).
    #[serde(borrow)]
    log: Cow<'a, str>,
    #[serde(borrow, default)]
    stream: Option<Str<'a>>,
    #[serde(borrow, default)]
    time: Option<Str<'a>>,
}

/// A string borrowed where possible: serde borrows a bare `Cow<str>` but not one inside an
/// `Option`, so the `Cow` gets its own newtype.
#[derive(Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

/// One CRI entry: `<RFC 3339 time> <stdout|stderr> <F|P>[:flags] <content>`.
struct CriEntry<'a> {
    time: &'a str,
    stream: &'a str,
    partial: bool,
    content: &'a [u8],
}

/// An entry of either envelope, ready to be joined.
struct Entry<'a> {
    kind: Kind,
    stream: Option<&'a str>,
    time: Option<&'a str>,
    /// The application's bytes of this entry, without the line end.
    content: &'a [u8],
    /// This entry ends the application's line (Docker: `log` ended with `\n`; CRI: `F`).
    complete: bool,
}

/// A line of one stream whose end has not come yet.
struct Pending {
    kind: Kind,
    stream: Box<str>,
    /// Joined so far, at most `max_line_bytes`.
    buf: Vec<u8>,
    /// The line passed `max_line_bytes`: `buf` is its head, further parts are discarded.
    truncated: bool,
    /// The attributes of the first part (the line's time is when it started).
    attrs: Attrs,
}

impl Pending {
    /// Appends a part, keeping at most `max` bytes in all.
    fn append(&mut self, part: &[u8], max: usize) {
        if self.truncated {
            return;
        }
        let room = max.saturating_sub(self.buf.len());
        if part.len() > room {
            self.buf.extend_from_slice(&part[..room]);
            self.truncated = true;
        } else {
            self.buf.extend_from_slice(part);
        }
    }

    fn emit(self, out: &mut LineBatch) {
        out.push(&self.buf, self.truncated, non_empty(&self.attrs));
    }
}

/// Unwraps container log lines of one stream (a file, a connection, stdin), joining lines that
/// the runtime split (Docker at 16 KiB without a trailing `\n`, CRI `P` partials).
pub struct ContainerDecoder {
    format: Format,
    max_line_bytes: usize,
    invalid_envelope: IntCounter,
    /// Attributes taken from the path, for Docker entries (`container_id`).
    docker_path: Vec<(Box<str>, Box<str>)>,
    /// Attributes taken from the path, for CRI entries (`namespace`, `pod`, `container`, ...).
    cri_path: Vec<(Box<str>, Box<str>)>,
    /// Partial lines waiting for their end, oldest first; one per (kind, stream).
    pending: Vec<Pending>,
    /// The last attribute set built, reused while an entry's fields are the same, so lines
    /// share one `Arc` (and the batch stores it once).
    last_attrs: Option<(Kind, Attrs)>,
    /// `"log"`: a line of `auto` without it is not worth a Docker decoding attempt.
    log_key: memmem::Finder<'static>,
}

impl ContainerDecoder {
    /// `path` is the file the lines come from: Docker's container id and CRI's namespace, pod
    /// and container are taken from it. `invalid_envelope` counts lines whose envelope could not
    /// be read (they are kept as they are).
    pub fn new(
        format: Format,
        path: Option<&Path>,
        max_line_bytes: usize,
        invalid_envelope: IntCounter,
    ) -> Self {
        ContainerDecoder {
            format,
            max_line_bytes: max_line_bytes.max(1),
            invalid_envelope,
            docker_path: path.map(docker_path_attrs).unwrap_or_default(),
            cri_path: path.map(cri_path_attrs).unwrap_or_default(),
            pending: Vec::new(),
            last_attrs: None,
            log_key: memmem::Finder::new(b"\"log\""),
        }
    }

    /// Decodes every line of `raw` into `out`: one application line per complete entry, with
    /// the envelope's fields as attributes. `out.bytes_read` is not touched.
    pub fn decode(&mut self, raw: &LineBatch, out: &mut LineBatch) {
        // Unwrapped lines are shorter than their envelopes: one reservation serves the batch.
        out.buf.reserve(raw.buf.len());
        out.lines.reserve(raw.lines.len());
        for span in &raw.lines {
            let line = raw.line(span);
            match self.format {
                Format::Json => pass(raw, span, out),
                Format::Docker => {
                    if span.truncated || !self.docker(line, out) {
                        self.broken(raw, span, out);
                    }
                }
                Format::Cri => match parse_cri(line) {
                    Some(e) if !span.truncated => self.cri(e, out),
                    _ => self.broken(raw, span, out),
                },
                Format::Auto => self.auto(raw, span, out),
            }
        }
    }

    /// Decodes a raw batch into a new one of the same source, carrying its `bytes_read`.
    pub fn decode_batch(&mut self, raw: LineBatch) -> LineBatch {
        let mut out = LineBatch::new(raw.source.clone());
        out.bytes_read = raw.bytes_read;
        self.decode(&raw, &mut out);
        out
    }

    /// [`flush`](Self::flush) into a new batch of `source`; `None` when nothing was waiting.
    pub fn flush_batch(&mut self, source: &std::sync::Arc<str>) -> Option<LineBatch> {
        let mut out = LineBatch::new(source.clone());
        self.flush(&mut out);
        (!out.lines.is_empty()).then_some(out)
    }

    /// Emits the joined lines still waiting for their end (at EOF, or after the partial
    /// timeout), as they are, oldest first.
    pub fn flush(&mut self, out: &mut LineBatch) {
        for p in self.pending.drain(..) {
            p.emit(out);
        }
    }

    /// Whether a partial line is waiting for its end.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// `auto`: Docker if the line is a JSON object with a string `log`, CRI if it has the CRI
    /// shape, else the application's own line. A line cut by the reader is a broken envelope if
    /// it starts like one (`{"log":"`, or a CRI prefix); otherwise it is passed on.
    fn auto(&mut self, raw: &LineBatch, span: &LineSpan, out: &mut LineBatch) {
        let line = raw.line(span);
        if line.first() == Some(&b'{') {
            let docker =
                !span.truncated && self.log_key.find(line).is_some() && self.docker(line, out);
            if !docker {
                if line.starts_with(br#"{"log":""#) {
                    self.broken(raw, span, out);
                } else {
                    pass(raw, span, out);
                }
            }
        } else {
            match parse_cri(line) {
                Some(e) if !span.truncated => self.cri(e, out),
                Some(_) => self.broken(raw, span, out),
                None => pass(raw, span, out),
            }
        }
    }

    /// Decodes a Docker entry; `false` (nothing written) if the line is not one.
    fn docker(&mut self, line: &[u8], out: &mut LineBatch) -> bool {
        // serde would also read a struct from an array (`["text"]`): only objects are entries.
        if line.trim_ascii_start().first() != Some(&b'{') {
            return false;
        }
        let Ok(e) = serde_json::from_slice::<DockerEntry<'_>>(line) else {
            return false;
        };
        let log = e.log.as_bytes();
        let (content, complete) = match log.strip_suffix(b"\n") {
            Some(c) => (c, true),
            None => (log, false),
        };
        self.entry(
            Entry {
                kind: Kind::Docker,
                stream: e.stream.as_ref().map(|s| &*s.0),
                time: e.time.as_ref().map(|s| &*s.0),
                content,
                complete,
            },
            out,
        );
        true
    }

    fn cri(&mut self, e: CriEntry<'_>, out: &mut LineBatch) {
        self.entry(
            Entry {
                kind: Kind::Cri,
                stream: Some(e.stream),
                time: Some(e.time),
                content: e.content,
                complete: !e.partial,
            },
            out,
        );
    }

    /// Joins an entry with the partial line of its stream, emitting the line if it is complete.
    fn entry(&mut self, e: Entry<'_>, out: &mut LineBatch) {
        let max = self.max_line_bytes;
        let stream = e.stream.unwrap_or("");
        // Docker keeps the application's `\r\n`; the `\n` is already off.
        let mut content = e.content;
        let mut strip_cr = false;
        if e.complete && e.kind == Kind::Docker {
            match content.strip_suffix(b"\r") {
                Some(c) => content = c,
                // The `\r` may end the previous part, this one being only the `\n`.
                None => strip_cr = content.is_empty(),
            }
        }
        let at = self
            .pending
            .iter()
            .position(|p| p.kind == e.kind && *p.stream == *stream);
        match at {
            None if e.complete => {
                let attrs = self.attrs(e.kind, e.stream, e.time);
                let cut = content.len().min(max);
                out.push(&content[..cut], content.len() > max, non_empty(&attrs));
            }
            None => {
                if self.pending.len() >= MAX_PENDING {
                    let oldest = self.pending.remove(0);
                    oldest.emit(out);
                }
                let attrs = self.attrs(e.kind, e.stream, e.time);
                let mut p = Pending {
                    kind: e.kind,
                    stream: stream.into(),
                    buf: Vec::new(),
                    truncated: false,
                    attrs,
                };
                p.append(content, max);
                self.pending.push(p);
            }
            Some(i) => {
                let p = &mut self.pending[i];
                p.append(content, max);
                if e.complete {
                    let mut p = self.pending.remove(i);
                    if strip_cr && !p.truncated && p.buf.last() == Some(&b'\r') {
                        p.buf.pop();
                    }
                    p.emit(out);
                }
            }
        }
    }

    /// The attributes of an entry: its stream and time, then those of the path.
    fn attrs(&mut self, kind: Kind, stream: Option<&str>, time: Option<&str>) -> Attrs {
        if let Some((k, a)) = &self.last_attrs {
            if *k == kind && attr(a, "stream") == stream && attr(a, "time") == time {
                return a.clone();
            }
        }
        let path = match kind {
            Kind::Docker => &self.docker_path,
            Kind::Cri => &self.cri_path,
        };
        let mut v: Vec<(Box<str>, Box<str>)> = Vec::with_capacity(2 + path.len());
        if let Some(s) = stream {
            v.push(("stream".into(), s.into()));
        }
        if let Some(t) = time {
            v.push(("time".into(), t.into()));
        }
        v.extend(path.iter().cloned());
        let a: Attrs = Arc::from(v);
        self.last_attrs = Some((kind, a.clone()));
        a
    }

    /// A line whose envelope could not be read: kept as it is, and counted.
    fn broken(&self, raw: &LineBatch, span: &LineSpan, out: &mut LineBatch) {
        self.invalid_envelope.inc();
        pass(raw, span, out);
    }
}

/// Passes a raw line on unchanged (with whatever attributes it already had: none from a reader).
fn pass(raw: &LineBatch, span: &LineSpan, out: &mut LineBatch) {
    let attrs = span
        .attrs
        .checked_sub(1)
        .and_then(|i| raw.attrs.get(i as usize));
    out.push(raw.line(span), span.truncated, attrs);
}

fn non_empty(a: &Attrs) -> Option<&Attrs> {
    (!a.is_empty()).then_some(a)
}

fn attr<'a>(attrs: &'a [(Box<str>, Box<str>)], key: &str) -> Option<&'a str> {
    attrs.iter().find(|(k, _)| &**k == key).map(|(_, v)| &**v)
}

/// Reads a CRI line; `None` if it does not have the shape.
fn parse_cri(line: &[u8]) -> Option<CriEntry<'_>> {
    let sp = memchr::memchr(b' ', line)?;
    let (time, rest) = (&line[..sp], &line[sp + 1..]);
    if !is_rfc3339(time) {
        return None;
    }
    let stream = match rest.get(..6)? {
        b"stdout" => "stdout",
        b"stderr" => "stderr",
        _ => return None,
    };
    let rest = rest[6..].strip_prefix(b" ")?;
    let tag_end = memchr::memchr(b' ', rest).unwrap_or(rest.len());
    let tag = &rest[..tag_end];
    let partial = match tag.first()? {
        b'F' => false,
        b'P' => true,
        _ => return None,
    };
    // Further flags are colon-separated (`F:x`); `Fx` is no tag.
    if tag.get(1).is_some_and(|&b| b != b':') {
        return None;
    }
    // One space, then the content to the end of the line (a bare tag: empty content).
    let content = rest.get(tag_end + 1..).unwrap_or_default();
    Some(CriEntry {
        time: std::str::from_utf8(time).ok()?,
        stream,
        partial,
        content,
    })
}

/// RFC 3339 shape: `2024-05-01T12:00:00`, an optional fraction, then `Z` or `±hh:mm`.
fn is_rfc3339(b: &[u8]) -> bool {
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    let [y0, y1, y2, y3, b'-', m0, m1, b'-', d0, d1, b'T' | b't', h0, h1, b':', n0, n1, b':', s0, s1, rest @ ..] =
        b
    else {
        return false;
    };
    if !digits(&[
        *y0, *y1, *y2, *y3, *m0, *m1, *d0, *d1, *h0, *h1, *n0, *n1, *s0, *s1,
    ]) {
        return false;
    }
    let mut rest = rest;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h0, h1, b':', m0, m1] => digits(&[*h0, *h1, *m0, *m1]),
        _ => false,
    }
}

/// The names of a file, its directory and the directory above, where they are UTF-8.
fn file_names(path: &Path) -> (Option<&str>, Option<&str>, Option<&str>) {
    fn name(p: Option<&Path>) -> Option<&str> {
        p.and_then(Path::file_name).and_then(OsStr::to_str)
    }
    let parent = path.parent();
    (
        name(Some(path)),
        name(parent),
        name(parent.and_then(Path::parent)),
    )
}

fn pair(k: &str, v: &str) -> (Box<str>, Box<str>) {
    (k.into(), v.into())
}

/// `/var/lib/docker/containers/<id>/<id>-json.log` (or a rotated `<id>-json.log.1`) →
/// `container_id`. Nothing for other paths.
fn docker_path_attrs(path: &Path) -> Vec<(Box<str>, Box<str>)> {
    let (Some(file), Some(dir), _) = file_names(path) else {
        return Vec::new();
    };
    let rest = file
        .strip_prefix(dir)
        .and_then(|r| r.strip_prefix("-json.log"));
    match rest {
        Some(r) if !dir.is_empty() && (r.is_empty() || r.starts_with('.')) => {
            vec![pair("container_id", dir)]
        }
        _ => Vec::new(),
    }
}

/// Kubernetes log paths:
/// - `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<n>.log` (or rotated `<n>.log.<date>`)
///   → `namespace`, `pod`, `pod_uid`, `container`;
/// - `/var/log/containers/<pod>_<namespace>_<container>-<64 hex id>.log` → `pod`, `namespace`,
///   `container`, `container_id`.
///
/// Namespace and pod names cannot hold `_` (DNS labels), which makes the split unambiguous.
fn cri_path_attrs(path: &Path) -> Vec<(Box<str>, Box<str>)> {
    let (Some(file), dir, grand) = file_names(path) else {
        return Vec::new();
    };
    if let (Some(container), Some(pod_dir)) = (dir, grand) {
        let numbered = file.split_once('.').is_some_and(|(n, ext)| {
            !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
                && (ext == "log" || ext.starts_with("log."))
        });
        if let Some([ns, pod, uid]) = three(pod_dir) {
            if numbered && !container.is_empty() {
                return vec![
                    pair("namespace", ns),
                    pair("pod", pod),
                    pair("pod_uid", uid),
                    pair("container", container),
                ];
            }
        }
    }
    let parts = file.strip_suffix(".log").and_then(three);
    if let Some([pod, ns, rest]) = parts {
        if let Some((container, id)) = rest.rsplit_once('-') {
            if !container.is_empty() && id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return vec![
                    pair("pod", pod),
                    pair("namespace", ns),
                    pair("container", container),
                    pair("container_id", id),
                ];
            }
        }
    }
    Vec::new()
}

/// `a_b_c` → `[a, b, c]`, each non-empty; `None` for any other number of parts.
fn three(s: &str) -> Option<[&str; 3]> {
    let mut it = s.split('_');
    let parts = [it.next()?, it.next()?, it.next()?];
    (it.next().is_none() && parts.iter().all(|p| !p.is_empty())).then_some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ID: &str = "4f2a9c1e7b3d5f608a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef";

    fn decoder(format: Format, path: Option<&str>, max: usize) -> (ContainerDecoder, IntCounter) {
        let c = IntCounter::new("invalid_envelope", "test").unwrap();
        let d = ContainerDecoder::new(format, path.map(Path::new), max, c.clone());
        (d, c)
    }

    fn batch<S: AsRef<[u8]>>(lines: &[S]) -> LineBatch {
        let mut b = LineBatch::new("test".into());
        for l in lines {
            b.push(l.as_ref(), false, None);
        }
        b
    }

    /// Lines of a file as the `LineReader` cuts them (`\n` ends a line, a `\r` before it goes).
    fn file_batch(path: &str) -> LineBatch {
        let data = std::fs::read(path).unwrap();
        let mut b = LineBatch::new("test".into());
        let mut lines: Vec<&[u8]> = data.split(|&c| c == b'\n').collect();
        if lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        for l in lines {
            b.push(l.strip_suffix(b"\r").unwrap_or(l), false, None);
        }
        b
    }

    /// (line, truncated, attributes) of each output line.
    type Out = (String, bool, Vec<(String, String)>);

    fn lines(out: &LineBatch) -> Vec<Out> {
        out.lines
            .iter()
            .map(|s| {
                let attrs = out
                    .attrs_of(s)
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                (
                    String::from_utf8_lossy(out.line(s)).into_owned(),
                    s.truncated,
                    attrs,
                )
            })
            .collect()
    }

    fn texts(out: &LineBatch) -> Vec<String> {
        lines(out).into_iter().map(|(l, _, _)| l).collect()
    }

    fn get<'a>(attrs: &'a [(String, String)], key: &str) -> Option<&'a str> {
        attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn run(d: &mut ContainerDecoder, raw: &LineBatch) -> LineBatch {
        let mut out = LineBatch::new("test".into());
        d.decode(raw, &mut out);
        out
    }

    fn docker_entry(log: &str, stream: &str, time: &str) -> String {
        serde_json::json!({"log": log, "stream": stream, "time": time}).to_string()
    }

    /// Splits `line` the way Docker does: 16 KiB parts, the `\n` only on the last.
    fn docker_split(line: &str, stream: &str, part: usize) -> Vec<String> {
        let chunks: Vec<&[u8]> = line.as_bytes().chunks(part).collect();
        let n = chunks.len();
        chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let s = std::str::from_utf8(c).unwrap();
                let log = if i + 1 == n {
                    format!("{s}\n")
                } else {
                    s.to_string()
                };
                docker_entry(&log, stream, "t")
            })
            .collect()
    }

    #[test]
    fn docker_complete_lines() {
        let (mut d, bad) = decoder(Format::Docker, None, 1 << 20);
        let raw = batch(&[
            r#"{"log":"{\"level\":\"INFO\",\"message\":\"hello\"}\n","stream":"stdout","time":"2024-05-01T12:00:00.123456789Z"}"#,
            r#"{"log":"plain text é\r\n","stream":"stderr","time":"2024-05-01T12:00:01Z"}"#,
            r#"{"log":"\n","stream":"stdout","time":"2024-05-01T12:00:02Z"}"#,
        ]);
        let out = lines(&run(&mut d, &raw));
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].0, r#"{"level":"INFO","message":"hello"}"#);
        assert!(!out[0].1);
        assert_eq!(get(&out[0].2, "stream"), Some("stdout"));
        assert_eq!(
            get(&out[0].2, "time"),
            Some("2024-05-01T12:00:00.123456789Z")
        );
        assert_eq!(get(&out[0].2, "container_id"), None);
        assert_eq!(
            (out[1].0.as_str(), get(&out[1].2, "stream")),
            ("plain text é", Some("stderr"))
        );
        assert_eq!(out[2].0, "");
        assert_eq!(bad.get(), 0);
        assert!(!d.has_pending());
    }

    #[test]
    fn docker_line_split_in_three_parts_is_joined_exactly() {
        // An application JSON line of about 40 KB, with escapes, split as Docker does.
        let filler = "x\"y\\z".repeat(8000);
        let line = format!(r#"{{"level":"INFO","blob":"{filler}"}}"#);
        let parts = docker_split(&line, "stdout", 16 * 1024);
        assert_eq!(parts.len(), 3);
        let (mut d, bad) = decoder(Format::Docker, None, 1 << 20);
        let out = run(&mut d, &batch(&parts[..2]));
        assert!(out.lines.is_empty());
        assert!(d.has_pending());
        let out = run(&mut d, &batch(&parts[2..]));
        assert_eq!(texts(&out), vec![line]);
        assert!(!out.lines[0].truncated);
        assert!(!d.has_pending());
        assert_eq!(bad.get(), 0);
    }

    #[test]
    fn docker_partials_of_stdout_and_stderr_are_joined_per_stream() {
        let (mut d, _) = decoder(Format::Docker, None, 1 << 20);
        let raw = batch(&[
            docker_entry("out-1 ", "stdout", "t1"),
            docker_entry("err-1 ", "stderr", "t2"),
            docker_entry("out-2 ", "stdout", "t3"),
            docker_entry("whole err\n", "stderr", "t4"),
            docker_entry("out-3\n", "stdout", "t5"),
            docker_entry("err-2\n", "stderr", "t6"),
        ]);
        let out = lines(&run(&mut d, &raw));
        let got: Vec<_> = out
            .iter()
            .map(|(l, _, a)| {
                (
                    l.as_str(),
                    get(a, "stream").unwrap(),
                    get(a, "time").unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("err-1 whole err", "stderr", "t2"),
                ("out-1 out-2 out-3", "stdout", "t1"),
                ("err-2", "stderr", "t6"),
            ]
        );
    }

    #[test]
    fn docker_container_id_from_path() {
        let path = format!("/var/lib/docker/containers/{ID}/{ID}-json.log");
        let (mut d, _) = decoder(Format::Docker, Some(&path), 1 << 20);
        let out = lines(&run(&mut d, &batch(&[docker_entry("a\n", "stdout", "t")])));
        assert_eq!(get(&out[0].2, "container_id"), Some(ID));
        let rotated = format!("{path}.1");
        assert_eq!(
            docker_path_attrs(Path::new(&rotated)),
            vec![pair("container_id", ID)]
        );
        for other in ["/var/log/app.log", "/x/abc/abd-json.log", "-json.log", ""] {
            assert!(docker_path_attrs(Path::new(other)).is_empty(), "{other}");
        }
    }

    #[test]
    fn attributes_are_shared_while_they_do_not_change() {
        let (mut d, _) = decoder(Format::Docker, None, 1 << 20);
        let raw = batch(&[
            docker_entry("a\n", "stdout", "t1"),
            docker_entry("b\n", "stdout", "t1"),
            docker_entry("c\n", "stdout", "t2"),
        ]);
        let out = run(&mut d, &raw);
        assert_eq!(out.attrs.len(), 2);
        assert_eq!(
            out.lines.iter().map(|s| s.attrs).collect::<Vec<_>>(),
            vec![1, 1, 2]
        );
    }

    #[test]
    fn cri_full_and_partial_entries() {
        let (mut d, bad) = decoder(Format::Cri, None, 1 << 20);
        let raw = batch(&[
            "2024-05-01T12:00:00.123456789Z stdout F {\"message\":\"one\"}",
            "2024-05-01T12:00:01.000000001Z stdout P part one, ",
            "2024-05-01T12:00:01.500000000+02:00 stderr F:x an error",
            "2024-05-01T12:00:02Z stdout P part two, ",
            "2024-05-01T12:00:03Z stdout F end",
            "2024-05-01T12:00:04Z stdout F ",
            "2024-05-01T12:00:05Z stderr F",
            "2024-05-01T12:00:06Z stdout F  two  spaces ",
        ]);
        let out = lines(&run(&mut d, &raw));
        let got: Vec<_> = out
            .iter()
            .map(|(l, _, a)| {
                (
                    l.as_str(),
                    get(a, "stream").unwrap(),
                    get(a, "time").unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "{\"message\":\"one\"}",
                    "stdout",
                    "2024-05-01T12:00:00.123456789Z"
                ),
                ("an error", "stderr", "2024-05-01T12:00:01.500000000+02:00"),
                (
                    "part one, part two, end",
                    "stdout",
                    "2024-05-01T12:00:01.000000001Z"
                ),
                ("", "stdout", "2024-05-01T12:00:04Z"),
                ("", "stderr", "2024-05-01T12:00:05Z"),
                (" two  spaces ", "stdout", "2024-05-01T12:00:06Z"),
            ]
        );
        assert_eq!(bad.get(), 0);
    }

    #[test]
    fn cri_attributes_from_both_path_forms() {
        let pods =
            "/var/log/pods/default_web-7d4b9c_0f1e2d3c-aaaa-bbbb-cccc-111122223333/app/0.log";
        let (mut d, _) = decoder(Format::Cri, Some(pods), 1 << 20);
        let out = lines(&run(&mut d, &batch(&["2024-05-01T12:00:00Z stdout F hi"])));
        let a = &out[0].2;
        assert_eq!(get(a, "namespace"), Some("default"));
        assert_eq!(get(a, "pod"), Some("web-7d4b9c"));
        assert_eq!(
            get(a, "pod_uid"),
            Some("0f1e2d3c-aaaa-bbbb-cccc-111122223333")
        );
        assert_eq!(get(a, "container"), Some("app"));
        assert_eq!(get(a, "container_id"), None);
        let rotated = cri_path_attrs(Path::new(
            "/var/log/pods/kube-system_dns_uid/coredns/3.log.20240501-120000",
        ));
        assert_eq!(rotated[3], pair("container", "coredns"));

        let containers = format!("/var/log/containers/web-7d4b9c_default_app-sidecar-{ID}.log");
        let (mut d, _) = decoder(Format::Cri, Some(&containers), 1 << 20);
        let out = lines(&run(&mut d, &batch(&["2024-05-01T12:00:00Z stdout F hi"])));
        let a = &out[0].2;
        assert_eq!(get(a, "pod"), Some("web-7d4b9c"));
        assert_eq!(get(a, "namespace"), Some("default"));
        assert_eq!(get(a, "container"), Some("app-sidecar"));
        assert_eq!(get(a, "container_id"), Some(ID));
        assert_eq!(get(a, "pod_uid"), None);

        for other in [
            "/var/log/app.log",
            "/var/log/pods/a_b/c/0.log",
            "/var/log/pods/a_b_c/d/app.log",
            "/var/log/containers/a_b_c-123.log",
            "/var/log/containers/a_b_c.log",
        ] {
            assert!(cri_path_attrs(Path::new(other)).is_empty(), "{other}");
        }
    }

    #[test]
    fn auto_tells_formats_apart_per_line() {
        let (mut d, bad) = decoder(Format::Auto, None, 1 << 20);
        let raw = batch(&[
            docker_entry("{\"message\":\"from docker\"}\n", "stdout", "t1"),
            "2024-05-01T12:00:00Z stderr F from cri".to_string(),
            r#"{"message":"plain json","log":{"nested":true}}"#.to_string(),
            "plain text line".to_string(),
            "2024-05-01T12:00:00Z stdout X not a tag".to_string(),
            docker_entry("docker part ", "stdout", "t2"),
            "2024-05-01T12:00:01Z stdout P cri part ".to_string(),
            docker_entry("end\n", "stdout", "t3"),
            "2024-05-01T12:00:02Z stdout F end".to_string(),
        ]);
        let out = lines(&run(&mut d, &raw));
        let got: Vec<_> = out
            .iter()
            .map(|(l, _, a)| (l.as_str(), get(a, "stream")))
            .collect();
        assert_eq!(
            got,
            vec![
                ("{\"message\":\"from docker\"}", Some("stdout")),
                ("from cri", Some("stderr")),
                (r#"{"message":"plain json","log":{"nested":true}}"#, None),
                ("plain text line", None),
                ("2024-05-01T12:00:00Z stdout X not a tag", None),
                ("docker part end", Some("stdout")),
                ("cri part end", Some("stdout")),
            ]
        );
        assert_eq!(bad.get(), 0);
    }

    #[test]
    fn malformed_envelopes_are_counted_and_kept() {
        let (mut d, bad) = decoder(Format::Docker, None, 1 << 20);
        let cut = r#"{"log":"half a line","stream":"stdo"#;
        let raw = batch(&[
            cut,
            "not json",
            r#"{"stream":"stdout"}"#,
            r#"{"log":42}"#,
            r#"["log"]"#,
            "",
        ]);
        let out = run(&mut d, &raw);
        assert_eq!(
            texts(&out),
            vec![
                cut,
                "not json",
                r#"{"stream":"stdout"}"#,
                r#"{"log":42}"#,
                r#"["log"]"#,
                ""
            ]
        );
        assert!(out.lines.iter().all(|s| s.attrs == 0));
        assert_eq!(bad.get(), 6);

        let (mut d, bad) = decoder(Format::Cri, None, 1 << 20);
        let raw = batch(&[
            "2024-05-01T12:00:00Z stdout",
            "2024-05-01 12:00:00Z stdout F x",
            "2024-05-01T12:00:00Z stdin F x",
            "2024-05-01T12:00:00Z stdout Q x",
            "2024-05-01T12:00:00Z stdout FP x",
            "plain",
        ]);
        let out = run(&mut d, &raw);
        assert_eq!(out.lines.len(), 6);
        assert_eq!(texts(&out)[0], "2024-05-01T12:00:00Z stdout");
        assert_eq!(bad.get(), 6);

        // A line the reader cut is a broken envelope, even if its head reads well.
        let mut raw = LineBatch::new("test".into());
        raw.push(b"2024-05-01T12:00:00Z stdout F aaaa", true, None);
        raw.push(br#"{"log":"aaaa"#, true, None);
        raw.push(b"plain but long", true, None);
        let (mut d, bad) = decoder(Format::Auto, None, 1 << 20);
        let out = run(&mut d, &raw);
        assert_eq!(out.lines.len(), 3);
        assert!(out.lines.iter().all(|s| s.truncated && s.attrs == 0));
        assert_eq!(bad.get(), 2);
        let (mut d, bad) = decoder(Format::Cri, None, 1 << 20);
        run(&mut d, &raw);
        assert_eq!(bad.get(), 3);
    }

    #[test]
    fn over_long_joined_line_is_cut_and_flagged() {
        let (mut d, _) = decoder(Format::Docker, None, 10);
        let raw = batch(&[
            docker_entry("0123456", "stdout", "t"),
            docker_entry("789abc", "stdout", "t"),
            docker_entry("def", "stdout", "t"),
            docker_entry("ghi\n", "stdout", "t"),
            docker_entry("short\n", "stdout", "t"),
            docker_entry("0123456789\n", "stdout", "t"),
            docker_entry("0123456789X\n", "stdout", "t"),
        ]);
        let out = lines(&run(&mut d, &raw));
        let got: Vec<_> = out.iter().map(|(l, t, _)| (l.as_str(), *t)).collect();
        assert_eq!(
            got,
            vec![
                ("0123456789", true),
                ("short", false),
                ("0123456789", false),
                ("0123456789", true),
            ]
        );
        let (mut d, _) = decoder(Format::Cri, None, 4);
        let raw = batch(&[
            "2024-05-01T12:00:00Z stdout P ab",
            "2024-05-01T12:00:00Z stdout P cd",
            "2024-05-01T12:00:00Z stdout F ",
            "2024-05-01T12:00:00Z stdout P abc",
            "2024-05-01T12:00:00Z stdout F de",
        ]);
        let out = lines(&run(&mut d, &raw));
        let got: Vec<_> = out.iter().map(|(l, t, _)| (l.as_str(), *t)).collect();
        assert_eq!(got, vec![("abcd", false), ("abcd", true)]);
    }

    #[test]
    fn flush_emits_the_pending_partial() {
        let (mut d, _) = decoder(Format::Docker, None, 1 << 20);
        let out = run(
            &mut d,
            &batch(&[
                docker_entry("no newline yet", "stdout", "t1"),
                docker_entry("err", "stderr", "t2"),
            ]),
        );
        assert!(out.lines.is_empty());
        assert!(d.has_pending());
        let mut out = LineBatch::new("test".into());
        d.flush(&mut out);
        let out = lines(&out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].0.as_str(), out[0].1), ("no newline yet", false));
        assert_eq!(get(&out[0].2, "time"), Some("t1"));
        assert_eq!(out[1].0, "err");
        assert!(!d.has_pending());
        let mut empty = LineBatch::new("test".into());
        d.flush(&mut empty);
        assert!(empty.lines.is_empty());
    }

    #[test]
    fn partials_of_many_streams_stay_bounded() {
        let (mut d, _) = decoder(Format::Docker, None, 1 << 20);
        let raw: Vec<String> = (0..10)
            .map(|i| docker_entry(&format!("p{i}"), &format!("s{i}"), "t"))
            .collect();
        let out = run(&mut d, &batch(&raw));
        assert_eq!(d.pending.len(), MAX_PENDING);
        assert_eq!(
            texts(&out),
            (0..6).map(|i| format!("p{i}")).collect::<Vec<_>>()
        );
    }

    #[test]
    fn json_format_passes_lines_through() {
        let (mut d, bad) = decoder(Format::Json, None, 1 << 20);
        let raw = batch(&[docker_entry("a\n", "stdout", "t"), "x".to_string()]);
        let out = run(&mut d, &raw);
        assert_eq!(texts(&out), texts(&raw));
        assert!(out.attrs.is_empty());
        assert_eq!(bad.get(), 0);
    }

    #[test]
    fn rfc3339_shapes() {
        for ok in [
            "2024-05-01T12:00:00Z",
            "2024-05-01T12:00:00.123456789Z",
            "2024-05-01t12:00:00.1z",
            "2024-05-01T12:00:00.5-07:00",
            "2024-05-01T12:00:00+00:00",
        ] {
            assert!(is_rfc3339(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00.Z",
            "2024-05-01 12:00:00Z",
            "2024-05-01T12:00:00+0000",
            "2024-5-01T12:00:00Z",
            "2024-05-01T12:00:00ZZ",
        ] {
            assert!(!is_rfc3339(bad.as_bytes()), "{bad}");
        }
    }

    fn fixture(rel: &str) -> String {
        format!("{}/tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn docker_fixture() {
        let path = fixture(&format!("docker/{ID}/{ID}-json.log"));
        let raw = file_batch(&path);
        assert_eq!(raw.lines.len(), 11);
        let (mut d, bad) = decoder(Format::Docker, Some(&path), 1 << 20);
        let mut out = run(&mut d, &raw);
        d.flush(&mut out);
        let out = lines(&out);
        assert_eq!(out.len(), 9);
        assert_eq!(bad.get(), 1);
        assert_eq!(out.iter().filter(|(_, _, a)| a.is_empty()).count(), 1);
        assert!(out.iter().all(|(_, t, _)| !t));
        // The 40 000-byte line, joined from three entries, is whole JSON again.
        let big = out.iter().find(|(l, _, _)| l.len() > 16 * 1024).unwrap();
        assert_eq!(big.0.len(), 40_000);
        let v: serde_json::Value = serde_json::from_str(&big.0).unwrap();
        assert_eq!(v["component"], "ContextBuilder");
        assert_eq!(get(&big.2, "container_id"), Some(ID));
        assert_eq!(get(&big.2, "stream"), Some("stdout"));
        // The stderr line written between its parts comes out before it.
        let streams: Vec<_> = out.iter().map(|(_, _, a)| get(a, "stream")).collect();
        assert_eq!(
            streams,
            vec![
                Some("stdout"),
                Some("stdout"),
                Some("stderr"),
                Some("stderr"),
                Some("stdout"),
                None,
                Some("stdout"),
                Some("stdout"),
                Some("stdout"),
            ]
        );
        // In auto mode the same file reads the same.
        let (mut d, bad) = decoder(Format::Auto, Some(&path), 1 << 20);
        let mut auto = run(&mut d, &raw);
        d.flush(&mut auto);
        assert_eq!(lines(&auto), out);
        assert_eq!(bad.get(), 1);
    }

    #[test]
    fn cri_fixture() {
        let path = fixture("cri/default_web-7d4b9c_0f1e2d3c-aaaa-bbbb-cccc-111122223333/app/0.log");
        let raw = file_batch(&path);
        assert_eq!(raw.lines.len(), 10);
        let (mut d, bad) = decoder(Format::Cri, Some(&path), 1 << 20);
        let mut out = run(&mut d, &raw);
        d.flush(&mut out);
        let out = lines(&out);
        assert_eq!(out.len(), 8);
        assert_eq!(bad.get(), 1);
        let big = out.iter().find(|(l, _, _)| l.len() > 16 * 1024).unwrap();
        assert_eq!(big.0.len(), 40_000);
        let v: serde_json::Value = serde_json::from_str(&big.0).unwrap();
        assert_eq!(v["component"], "ContextBuilder");
        for (k, v) in [
            ("namespace", "default"),
            ("pod", "web-7d4b9c"),
            ("pod_uid", "0f1e2d3c-aaaa-bbbb-cccc-111122223333"),
            ("container", "app"),
            ("stream", "stdout"),
        ] {
            assert_eq!(get(&big.2, k), Some(v), "{k}");
        }
        let (mut d, bad) = decoder(Format::Auto, Some(&path), 1 << 20);
        let mut auto = run(&mut d, &raw);
        d.flush(&mut auto);
        // In auto mode the torn entry no longer has the CRI shape: a plain line, not counted.
        assert_eq!(lines(&auto), out);
        assert_eq!(bad.get(), 0);
    }

    /// Pieces that make envelopes likely, mixed with arbitrary bytes.
    fn piece() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..12),
            Just(br#"{"log":""#.to_vec()),
            Just(br#"\n","stream":"stdout","time":"2024-05-01T12:00:00Z"}"#.to_vec()),
            Just(br#"","stream":"stderr"}"#.to_vec()),
            Just(br#""}"#.to_vec()),
            Just(b"\\r".to_vec()),
            Just(b"\\u00e9\\ud83d".to_vec()),
            Just(b"2024-05-01T12:00:00.5Z ".to_vec()),
            Just(b"2024-05-01T12:00:00+02:00 ".to_vec()),
            Just(b"stdout ".to_vec()),
            Just(b"stderr ".to_vec()),
            Just(b"F ".to_vec()),
            Just(b"P ".to_vec()),
            Just(b"P:x ".to_vec()),
            Just("é".as_bytes().to_vec()),
        ]
    }

    fn raw_lines() -> impl Strategy<Value = Vec<(Vec<u8>, bool)>> {
        let line = proptest::collection::vec(piece(), 0..6).prop_map(|p| p.concat());
        proptest::collection::vec((line, proptest::bool::weighted(0.1)), 0..24)
    }

    proptest! {
        #[test]
        fn never_panics_and_never_grows_lines(
            raw in raw_lines(),
            max in 1usize..64,
            format in prop_oneof![Just(Format::Json), Just(Format::Docker), Just(Format::Cri), Just(Format::Auto)],
        ) {
            let mut batch = LineBatch::new("test".into());
            for (l, t) in &raw {
                batch.push(l, *t, None);
            }
            let path = format!("/var/lib/docker/containers/{ID}/{ID}-json.log");
            let (mut d, _) = decoder(format, Some(&path), max);
            let mut out = LineBatch::new("test".into());
            // Half the lines in one batch, the rest in the next: state carries over.
            let half = raw.len() / 2;
            let mut first = LineBatch::new("test".into());
            for (l, t) in &raw[..half] {
                first.push(l, *t, None);
            }
            let mut second = LineBatch::new("test".into());
            for (l, t) in &raw[half..] {
                second.push(l, *t, None);
            }
            d.decode(&first, &mut out);
            d.decode(&second, &mut out);
            prop_assert!(out.lines.len() + d.pending.len() <= raw.len());
            d.flush(&mut out);
            prop_assert!(!d.has_pending());
            prop_assert!(out.lines.len() <= raw.len());
            for s in &out.lines {
                // Decoded lines (with attributes) stay within the limit.
                if s.attrs != 0 {
                    prop_assert!(out.line(s).len() <= max);
                }
            }
            if format == Format::Json {
                prop_assert_eq!(texts(&out), texts(&batch));
            }
        }

        #[test]
        fn split_lines_come_back_whole(
            app in proptest::collection::vec("[^\r\n]{0,40}", 1..6),
            cuts in proptest::collection::vec(1usize..16, 1..4),
        ) {
            // Each application line split into parts of the given sizes (by characters).
            let mut docker = Vec::new();
            let mut cri = Vec::new();
            for line in &app {
                let chars: Vec<char> = line.chars().collect();
                let mut parts: Vec<String> = Vec::new();
                let mut at = 0;
                for c in cuts.iter().cycle() {
                    if at >= chars.len() {
                        break;
                    }
                    let end = (at + c).min(chars.len());
                    parts.push(chars[at..end].iter().collect());
                    at = end;
                }
                if parts.is_empty() {
                    parts.push(String::new());
                }
                let n = parts.len();
                for (i, p) in parts.iter().enumerate() {
                    let last = i + 1 == n;
                    let log = if last { format!("{p}\n") } else { p.clone() };
                    docker.push(docker_entry(&log, "stdout", "2024-05-01T12:00:00Z"));
                    let tag = if last { "F" } else { "P" };
                    cri.push(format!("2024-05-01T12:00:00Z stderr {tag} {p}"));
                }
            }
            for (format, raw) in [(Format::Docker, &docker), (Format::Cri, &cri), (Format::Auto, &docker), (Format::Auto, &cri)] {
                let (mut d, bad) = decoder(format, None, 1 << 20);
                let out = run(&mut d, &batch(raw));
                prop_assert_eq!(texts(&out), app.clone());
                prop_assert!(!d.has_pending());
                prop_assert_eq!(bad.get(), 0);
            }
        }
    }
}
