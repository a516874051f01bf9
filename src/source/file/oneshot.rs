//! `--oneshot`: each file the globs select read once, in order, to its end (a backfill).
//! Reads and sends observe shutdown; a path that is no longer a regular file when its turn
//! comes (replaced by a FIFO or a directory) is skipped and counted, never opened for reading.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use indicatif::ProgressBar;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{envelope_counter, FileError, Out};
use crate::parse::container::ContainerDecoder;
use crate::source::multiline::Multiline;
use crate::source::{Format, LineBatch, LineReader};
use crate::telemetry::SelfMetrics;

/// How [`read_to_end`] reads each file.
pub struct ReadOnce {
    pub format: Format,
    /// Joins multi-line events, per file.
    pub multiline: Option<Multiline>,
    pub max_line_bytes: usize,
    pub selfm: SelfMetrics,
    /// Shows bytes, lines/s and the ETA over all files.
    pub progress: Option<ProgressBar>,
}

/// Reads files in the order given, each to its end (oneshot); each file's lines carry the
/// source name given with it (the glob that selected it).
pub async fn read_to_end(
    paths: Vec<(PathBuf, Arc<str>)>,
    read: ReadOnce,
    out: mpsc::Sender<LineBatch>,
    shutdown: CancellationToken,
) -> Result<(), FileError> {
    let ReadOnce {
        format,
        multiline,
        max_line_bytes,
        selfm,
        progress,
    } = read;
    let out = Out {
        tx: &out,
        shutdown: &shutdown,
    };
    let started = Instant::now();
    let mut lines = 0u64;
    for (path, name) in paths {
        let err = |source| FileError::Io {
            path: path.clone(),
            source,
        };
        let file = match super::open_regular(&path) {
            Ok(f) => tokio::fs::File::from_std(f),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                // Replaced by a FIFO or a directory since the walk: never read as a file.
                selfm
                    .file_skipped_total
                    .with_label_values(&["not_regular"])
                    .inc();
                tracing::warn!(path = %path.display(), "not a regular file any more: skipped");
                continue;
            }
            Err(e) => return Err(err(e)),
        };
        let mut reader = LineReader::new(file, name.clone(), max_line_bytes);
        let mut decoder = (format != Format::Json).then(|| {
            ContainerDecoder::new(
                format,
                Some(&path),
                max_line_bytes,
                envelope_counter(&selfm),
            )
        });
        let mut joiner = multiline.as_ref().map(|m| m.joiner(max_line_bytes, &selfm));
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
            let batch = crate::source::stdin::stage(&mut decoder, &mut joiner, batch);
            if !out.send(batch).await {
                return Ok(());
            }
        }
        let mut tail: Vec<LineBatch> = Vec::new();
        if let Some(b) = decoder.as_mut().and_then(|d| d.flush_batch(&name)) {
            tail.push(match &mut joiner {
                Some(j) => j.join(b),
                None => b,
            });
        }
        // An event is never joined across files.
        tail.extend(joiner.as_mut().and_then(|j| j.flush(&name)));
        for b in tail {
            if !out.send(b).await {
                return Ok(());
            }
        }
    }
    if let Some(pb) = progress {
        pb.finish();
    }
    Ok(())
}
