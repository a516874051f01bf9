//! stderr shared by weir's logs and the `--oneshot` progress bar.
//!
//! Why: the bar redraws its line on stderr in place; a log line written meanwhile (a parse
//! problem's first warning, an alert of a backfill) would be cut into it. The tracing writer
//! ([`Stderr`]) writes each log line with the bar hidden (`ProgressBar::suspend`), so the line
//! stands alone and the bar is drawn again below it. With no bar shown it is plain stderr.

use std::io::{self, Write};
use std::sync::{Mutex, PoisonError};

use indicatif::ProgressBar;

/// The bar on screen, if any.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Makes `bar` the one log lines are written around (once finished, it is ignored).
pub fn show(bar: &ProgressBar) {
    *BAR.lock().unwrap_or_else(PoisonError::into_inner) = Some(bar.clone());
}

/// stderr for `tracing_subscriber`'s `with_writer`: each write with the bar suspended.
#[derive(Clone, Copy, Default)]
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let bar = BAR.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match bar {
            // The formatter hands over one whole log line: written at once, bar hidden.
            Some(b) if !b.is_finished() => b.suspend(|| io::stderr().write_all(buf))?,
            _ => io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Self::Writer {
        Stderr
    }
}
