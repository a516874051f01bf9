//! The segment format of the disk buffer (v2, framed; v1, JSON lines, read only) and a reader
//! that finds its way past corrupt bytes. See the parent module for the format.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::segment_name;

/// The first bytes of every v2 segment.
pub(super) const HEADER: &[u8] = b"\x1eweir-buffer v2\n";
/// What every segment header starts with, whatever its version.
pub(super) const HEADER_PREFIX: &[u8] = b"\x1eweir-buffer v";
/// First byte of every frame; never inside a JSON payload (JSON escapes control characters).
pub(super) const MARKER: u8 = 0x1e;
/// Marker, length (8 hex), CRC-32 (8 hex), space.
pub(super) const FRAME_HEAD: usize = 18;
/// Bytes read from a segment at a time.
const WINDOW: usize = 256 * 1024;

/// Appends one frame holding `payload` to `out`.
pub(super) fn frame(payload: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "an event of 4 GiB or more cannot be buffered",
        )
    })?;
    out.push(MARKER);
    write!(out, "{len:08x}{:08x} ", crc32fast::hash(payload))?;
    out.extend_from_slice(payload);
    out.push(b'\n');
    Ok(())
}

fn hex8(b: &[u8]) -> Option<u32> {
    if b.len() != 8 || !b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok()
}

/// What the bytes at a frame's start say.
enum Check {
    /// A whole frame of this many bytes, CRC correct.
    Valid(usize),
    Invalid,
    /// At least this many bytes are needed to tell.
    Need(usize),
}

/// Checks the frame at the start of `b`; `to_limit`: bytes from there to the end of the data.
fn check_frame(b: &[u8], to_limit: u64) -> Check {
    if to_limit < FRAME_HEAD as u64 {
        return Check::Invalid;
    }
    if b.len() < FRAME_HEAD {
        return Check::Need(FRAME_HEAD);
    }
    if b[0] != MARKER || b[FRAME_HEAD - 1] != b' ' {
        return Check::Invalid;
    }
    let (Some(len), Some(crc)) = (hex8(&b[1..9]), hex8(&b[9..17])) else {
        return Check::Invalid;
    };
    let total = FRAME_HEAD + len as usize + 1;
    if total as u64 > to_limit {
        return Check::Invalid;
    }
    if b.len() < total {
        return Check::Need(total);
    }
    if b[total - 1] != b'\n' || crc32fast::hash(&b[FRAME_HEAD..total - 1]) != crc {
        return Check::Invalid;
    }
    Check::Valid(total)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Format {
    /// Framed records after a header.
    V2,
    /// JSON lines, no header (weir before framing).
    V1,
}

/// One step through a segment.
pub(super) enum Step {
    /// A record's payload, and where the next one starts.
    Record(Vec<u8>, u64),
    /// Corrupt bytes up to `to`, holding about `records` records.
    Skip { to: u64, records: u64 },
    /// Nothing more (yet) below the limit.
    End,
}

/// Reads one segment through a window of its bytes. Offsets are within the file.
pub(super) struct SegReader {
    pub(super) start: u64,
    pub(super) path: PathBuf,
    file: File,
    pub(super) format: Format,
    buf: Vec<u8>,
    buf_off: u64,
}

/// The format of a segment from its first bytes; an error for a version this weir cannot read.
pub(super) fn segment_format(path: &Path, head: &[u8]) -> std::io::Result<Format> {
    if head.starts_with(HEADER) || head.is_empty() || HEADER.starts_with(head) {
        Ok(Format::V2)
    } else if head.starts_with(HEADER_PREFIX) {
        let version: String = head[HEADER_PREFIX.len()..]
            .iter()
            .take_while(|&&b| b != b'\n')
            .map(|&b| b as char)
            .collect();
        Err(std::io::Error::other(format!(
            "{}: disk buffer segment format v{version} is not one this weir reads (v2, or v1 JSON lines); drain it with the weir that wrote it, or move {} away",
            path.display(),
            path.parent().unwrap_or(path).display()
        )))
    } else if head.first() == Some(&b'{') {
        Ok(Format::V1)
    } else {
        // A damaged header: read as v2; the frames after it are found by their markers.
        tracing::warn!(segment = %path.display(), "disk buffer segment header damaged; reading it as v2");
        Ok(Format::V2)
    }
}

pub(super) fn read_head(file: &mut File) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(HEADER.len());
    file.seek(SeekFrom::Start(0))?;
    Read::by_ref(file)
        .take(HEADER.len() as u64)
        .read_to_end(&mut head)?;
    Ok(head)
}

impl SegReader {
    pub(super) fn open(dir: &Path, start: u64) -> std::io::Result<SegReader> {
        let path = dir.join(segment_name(start));
        let mut file = File::open(&path)?;
        let head = read_head(&mut file)?;
        let format = segment_format(&path, &head)?;
        Ok(SegReader {
            start,
            path,
            file,
            format,
            buf: Vec::new(),
            buf_off: 0,
        })
    }

    /// The bytes from `off`, at least `n` of them unless `limit` (or the file) ends first.
    pub(super) fn window(&mut self, off: u64, n: usize, limit: u64) -> std::io::Result<&[u8]> {
        let want_end = off.saturating_add(n as u64).min(limit).max(off);
        let have_end = self.buf_off + self.buf.len() as u64;
        if off < self.buf_off || want_end > have_end {
            let len = (want_end - off)
                .max(WINDOW as u64)
                .min(limit.saturating_sub(off));
            self.buf.clear();
            self.file.seek(SeekFrom::Start(off))?;
            Read::by_ref(&mut self.file)
                .take(len)
                .read_to_end(&mut self.buf)?;
            self.buf_off = off;
        }
        let s = (off - self.buf_off) as usize;
        Ok(&self.buf[s.min(self.buf.len())..])
    }

    /// Whether a whole valid frame starts at `off`; its length if so.
    pub(super) fn frame_at(&mut self, off: u64, limit: u64) -> std::io::Result<Option<usize>> {
        let mut need = FRAME_HEAD;
        loop {
            let w = self.window(off, need, limit)?;
            let had = w.len();
            match check_frame(w, limit.saturating_sub(off)) {
                Check::Valid(n) => return Ok(Some(n)),
                Check::Invalid => return Ok(None),
                // Asked for `need` bytes below the limit, got fewer: the file ends early.
                Check::Need(_) if had < need => return Ok(None),
                Check::Need(n) => need = n,
            }
        }
    }

    pub(super) fn find_byte(
        &mut self,
        from: u64,
        to: u64,
        byte: u8,
    ) -> std::io::Result<Option<u64>> {
        let mut p = from;
        while p < to {
            let w = self.window(p, WINDOW, to)?;
            let w = &w[..w.len().min((to - p) as usize)];
            if w.is_empty() {
                return Ok(None);
            }
            if let Some(i) = memchr::memchr(byte, w) {
                return Ok(Some(p + i as u64));
            }
            p += w.len() as u64;
        }
        Ok(None)
    }

    /// The first offset at or after `from` where a valid frame starts, else `limit`.
    pub(super) fn resync(&mut self, from: u64, limit: u64) -> std::io::Result<u64> {
        let mut p = from;
        while let Some(q) = self.find_byte(p, limit, MARKER)? {
            if self.frame_at(q, limit)?.is_some() {
                return Ok(q);
            }
            p = q + 1;
        }
        Ok(limit)
    }

    /// How many records the corrupt bytes `[from, to)` held: a frame whose head still reads
    /// is followed by its length; one whose head is damaged ends at the next newline.
    pub(super) fn count_lost(&mut self, from: u64, to: u64) -> std::io::Result<u64> {
        let mut n = 0;
        let mut i = from;
        while i < to {
            n += 1;
            let w = self.window(i, FRAME_HEAD, to)?;
            if w.len() >= FRAME_HEAD && w[0] == MARKER && w[FRAME_HEAD - 1] == b' ' {
                if let (Some(len), Some(_)) = (hex8(&w[1..9]), hex8(&w[9..17])) {
                    let end = i + FRAME_HEAD as u64 + u64::from(len) + 1;
                    if end <= to {
                        i = end;
                        continue;
                    }
                }
            }
            i = match self.find_byte(i, to, b'\n')? {
                Some(j) => j + 1,
                None => to,
            };
        }
        Ok(n)
    }

    /// The next record at or after `off`, below `limit`.
    pub(super) fn next(&mut self, off: u64, limit: u64) -> std::io::Result<Step> {
        if off >= limit {
            return Ok(Step::End);
        }
        match self.format {
            Format::V2 => match self.frame_at(off, limit)? {
                Some(n) => {
                    let w = self.window(off, n, limit)?;
                    let payload = w[FRAME_HEAD..n - 1].to_vec();
                    Ok(Step::Record(payload, off + n as u64))
                }
                None => {
                    let to = self.resync(off + 1, limit)?;
                    let records = self.count_lost(off, to)?;
                    Ok(Step::Skip { to, records })
                }
            },
            Format::V1 => match self.find_byte(off, limit, b'\n')? {
                Some(j) => {
                    let line =
                        self.window(off, (j - off) as usize, limit)?[..(j - off) as usize].to_vec();
                    Ok(Step::Record(line, j + 1))
                }
                // A v1 segment is never the one written to: a line without its newline is torn.
                None => Ok(Step::Skip {
                    to: limit,
                    records: 1,
                }),
            },
        }
    }
}
