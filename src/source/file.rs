//! The file source: reads files in the order given, each to its end.
//!
//! Used by `weir run FILE...` and `--oneshot` backfills. With a progress bar (on a terminal) it
//! shows bytes, lines/s and the ETA over all files.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use indicatif::ProgressBar;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{LineBatch, LineReader};

#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct FileError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

pub async fn run(
    paths: Vec<PathBuf>,
    out: mpsc::Sender<LineBatch>,
    shutdown: CancellationToken,
    max_line_bytes: usize,
    progress: Option<ProgressBar>,
) -> Result<(), FileError> {
    let started = Instant::now();
    let mut lines = 0u64;
    for path in paths {
        let err = |source| FileError {
            path: path.clone(),
            source,
        };
        let file = tokio::fs::File::open(&path).await.map_err(err)?;
        let name: Arc<str> = Arc::from(path.display().to_string());
        let mut reader = LineReader::new(file, name, max_line_bytes);
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
            if out.send(batch).await.is_err() {
                return Ok(());
            }
        }
    }
    if let Some(pb) = progress {
        pb.finish();
    }
    Ok(())
}
