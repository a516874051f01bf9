//! Container log envelopes: Docker json-file and CRI lines, unwrapped to the application's line.
//!
//! (Interface in place; the Docker/CRI decoding is being written.)

use std::path::Path;

use prometheus::IntCounter;

use crate::source::{Format, LineBatch};

/// Unwraps container log lines of one stream (a file, a connection, stdin), joining lines that
/// the runtime split (Docker at 16 KiB without a trailing `\n`, CRI `P` partials).
pub struct ContainerDecoder {
    format: Format,
    max_line_bytes: usize,
    invalid_envelope: IntCounter,
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
        let _ = path;
        ContainerDecoder {
            format,
            max_line_bytes,
            invalid_envelope,
        }
    }

    /// Decodes every line of `raw` into `out`: one application line per complete entry, with
    /// the envelope's fields as attributes. `out.bytes_read` is not touched.
    pub fn decode(&mut self, raw: &LineBatch, out: &mut LineBatch) {
        let _ = (&self.format, self.max_line_bytes, &self.invalid_envelope);
        for span in &raw.lines {
            out.push(raw.line(span), span.truncated, None);
        }
    }

    /// Emits a joined line still waiting for its end (at EOF, or after the partial timeout).
    pub fn flush(&mut self, out: &mut LineBatch) {
        let _ = out;
    }

    /// Whether a partial line is waiting for its end.
    pub fn has_pending(&self) -> bool {
        false
    }
}
