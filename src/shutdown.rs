//! One shutdown path: SIGINT or SIGTERM cancels the token that every source watches. SIGHUP
//! never ends weir (see [`watch_signals`]).
//!
//! Drain order follows the data: sources stop reading and drop their senders; the processing
//! stage ends when its channel closes, after handling every batch already queued; the server
//! stops last. A second signal exits at once.

use tokio_util::sync::CancellationToken;

/// Waits for SIGINT or SIGTERM, then cancels `token`; a second signal exits the process.
///
/// Also takes SIGHUP from the default action (which ends the process) before anything else
/// runs: a SIGHUP that comes while the pipeline starts is ignored; once it runs, the reload
/// task (or [`crate::reload::ignore_hangup`] without a pipeline file) answers it.
pub async fn watch_signals(token: CancellationToken) {
    #[cfg(unix)]
    let _hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| tracing::warn!(error = %e, "cannot handle SIGHUP; it would end weir"));
    wait_for_signal().await;
    tracing::info!("shutdown requested: draining");
    token.cancel();
    wait_for_signal().await;
    tracing::warn!("second signal: exiting without draining");
    std::process::exit(130);
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
