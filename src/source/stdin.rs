//! The stdin source: `app | weir run`.
//!
//! Reads until EOF or shutdown. When the pipeline is slow, the read pauses (the channel send
//! waits), the pipe fills, and the writing application blocks: backpressure, not buffering.
//! With `multiline`, lines are joined into events after envelope decoding; a held event is
//! emitted when the next event starts, after `timeout_ms` of silence, or at EOF.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::multiline::{Joiner, Multiline, Quiet};
use super::{Format, LineBatch, LineReader};
use crate::parse::container::ContainerDecoder;
use crate::telemetry::SelfMetrics;

pub async fn run(
    format: Format,
    multiline: Option<Multiline>,
    out: mpsc::Sender<LineBatch>,
    shutdown: CancellationToken,
    max_line_bytes: usize,
    selfm: SelfMetrics,
) -> std::io::Result<()> {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        // A newcomer who types `weir run` sees weir wait: say what it waits for.
        tracing::info!(
            "reading stdin, which is a terminal: pipe logs in (`app | weir run`) or name files \
             (`weir run app.log`); Ctrl-D ends the input, Ctrl-C stops weir"
        );
    }
    let name: Arc<str> = Arc::from("stdin");
    // Following: a read that ends at the joiner's deadline is not the end of the input.
    let input = Quiet::new(tokio::io::stdin());
    let mut reader = LineReader::following(input, name.clone(), max_line_bytes, 0);
    let mut decoder = (format != Format::Json).then(|| {
        let invalid = selfm.parse_errors.with_label_values(&["invalid_envelope"]);
        ContainerDecoder::new(format, None, max_line_bytes, invalid)
    });
    let mut joiner = multiline.map(|m| m.joiner(max_line_bytes, &selfm));
    loop {
        let deadline = joiner.as_ref().and_then(Joiner::deadline);
        reader.get_mut().set_deadline(deadline);
        let batch = tokio::select! {
            b = reader.next_batch() => b?,
            _ = shutdown.cancelled() => {
                // The held event's lines are complete: deliver them (stdin has no replay).
                if let Some(b) = joiner.as_mut().and_then(|j| j.flush(&name)) {
                    let _ = out.send(b).await;
                }
                return Ok(());
            }
        };
        let batch = match batch {
            Some(raw) => stage(&mut decoder, &mut joiner, raw),
            None if reader.get_mut().take_tick() => {
                // Silent past the held event's timeout: it is complete.
                if let Some(b) = joiner.as_mut().and_then(|j| j.flush(&name)) {
                    if out.send(b).await.is_err() {
                        return Ok(());
                    }
                }
                continue;
            }
            None => {
                // EOF: the last line without a newline, then whatever is still being joined.
                let mut tail = Vec::new();
                if let Some(raw) = reader.take_partial() {
                    tail.push(stage(&mut decoder, &mut joiner, raw));
                }
                if let Some(b) = decoder.as_mut().and_then(|d| d.flush_batch(&name)) {
                    tail.push(match &mut joiner {
                        Some(j) => j.join(b),
                        None => b,
                    });
                }
                tail.extend(joiner.as_mut().and_then(|j| j.flush(&name)));
                for b in tail {
                    if (!b.lines.is_empty() || b.bytes_read > 0) && out.send(b).await.is_err() {
                        return Ok(());
                    }
                }
                return Ok(());
            }
        };
        if (!batch.lines.is_empty() || batch.bytes_read > 0) && out.send(batch).await.is_err() {
            return Ok(());
        }
    }
}

/// Envelope decoding, then joining: the lines as the pipeline should see them.
pub(super) fn stage(
    decoder: &mut Option<ContainerDecoder>,
    joiner: &mut Option<Joiner>,
    raw: LineBatch,
) -> LineBatch {
    let batch = match decoder {
        Some(d) => d.decode_batch(raw),
        None => raw,
    };
    match joiner {
        Some(j) => j.join(batch),
        None => batch,
    }
}
