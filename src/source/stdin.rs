//! The stdin source: `app | weir run`.
//!
//! Reads until EOF or shutdown. When the pipeline is slow, the read pauses (the channel send
//! waits), the pipe fills, and the writing application blocks: backpressure, not buffering.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{LineBatch, LineReader};

pub async fn run(
    out: mpsc::Sender<LineBatch>,
    shutdown: CancellationToken,
    max_line_bytes: usize,
) -> std::io::Result<()> {
    let mut reader = LineReader::new(tokio::io::stdin(), Arc::from("stdin"), max_line_bytes);
    loop {
        let batch = tokio::select! {
            b = reader.next_batch() => b?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let Some(batch) = batch else { return Ok(()) };
        if out.send(batch).await.is_err() {
            return Ok(());
        }
    }
}
