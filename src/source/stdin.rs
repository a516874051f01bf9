//! The stdin source: `app | weir run`.
//!
//! Reads until EOF or shutdown. When the pipeline is slow, the read pauses (the channel send
//! waits), the pipe fills, and the writing application blocks: backpressure, not buffering.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Format, LineBatch, LineReader};
use crate::parse::container::ContainerDecoder;
use crate::telemetry::SelfMetrics;

pub async fn run(
    format: Format,
    out: mpsc::Sender<LineBatch>,
    shutdown: CancellationToken,
    max_line_bytes: usize,
    selfm: SelfMetrics,
) -> std::io::Result<()> {
    let name: Arc<str> = Arc::from("stdin");
    let mut reader = LineReader::new(tokio::io::stdin(), name.clone(), max_line_bytes);
    let mut decoder = (format != Format::Json).then(|| {
        let invalid = selfm.parse_errors.with_label_values(&["invalid_envelope"]);
        ContainerDecoder::new(format, None, max_line_bytes, invalid)
    });
    loop {
        let batch = tokio::select! {
            b = reader.next_batch() => b?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let batch = match (batch, &mut decoder) {
            (None, Some(d)) => {
                if let Some(b) = d.flush_batch(&name) {
                    let _ = out.send(b).await;
                }
                return Ok(());
            }
            (None, None) => return Ok(()),
            (Some(raw), Some(d)) => d.decode_batch(raw),
            (Some(b), None) => b,
        };
        if out.send(batch).await.is_err() {
            return Ok(());
        }
    }
}
