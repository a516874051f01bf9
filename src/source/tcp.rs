//! The TCP source: newline-delimited JSON from many clients. (Being written.)

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{LineBatch, TcpConfig};
use crate::telemetry::SelfMetrics;

#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
}

/// Accepts clients on `cfg.address` until `shutdown`; each client's lines are sent to `out`.
pub async fn run(
    cfg: TcpConfig,
    out: mpsc::Sender<LineBatch>,
    shutdown: CancellationToken,
    max_line_bytes: usize,
    selfm: SelfMetrics,
) -> Result<(), TcpError> {
    let _ = (cfg, out, max_line_bytes, selfm);
    shutdown.cancelled().await;
    Ok(())
}
