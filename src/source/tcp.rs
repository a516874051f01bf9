//! The TCP source: newline-delimited JSON from many clients (`type = "tcp"`, or `--tcp ADDR`).
//!
//! Applications and log shippers connect and write lines; each connection is served by a task
//! of its own that cuts its bytes into lines with a [`LineReader`] and sends the batches into
//! the pipeline's bounded channel. All connections share one `source` label, `tcp:ADDR` with the
//! listen address (never the peer's), so `weir_events_total` and `weir_bytes_total` stay
//! low-cardinality however many clients come and go.
//!
//! # Invariants
//! - **Bounded connections.** A semaphore holds `max_connections` permits; a connection past
//!   them is accepted and closed at once, counted in
//!   `weir_tcp_connections_total{result="refused"}`. Accepted ones are counted
//!   `{result="accepted"}` and `weir_tcp_connections` is the number open now. A permit is
//!   released before the gauge drops, so a client that sees the gauge fall can connect.
//! - **Bounded memory per connection.** One batch plus one partial line (at most the line limit).
//!   A line longer than the limit is cut there; its head is sent as one truncated event (counted
//!   downstream as `line_truncated`) and the client is disconnected with
//!   `weir_tcp_disconnects_total{reason="line_too_long"}`. Reading stops as soon as the line
//!   passes the limit: a client streaming 100 MiB without a newline costs one read buffer.
//!   Reads are 8 KiB ([`READ_SIZE`]), because every waiting client holds one: with 128 KiB
//!   reads, 1,024 clients held 128 MiB, and glibc kept it resident after they left.
//! - **Bounded memory in total.** A per-client cap is not a global one: partial lines past
//!   16 KiB a client ([`FREE_PER_CLIENT`]) are held against `max_buffered_bytes` (one
//!   [`Budget`] per source, exported summed as `weir_tcp_buffered_bytes`). A client takes the
//!   share its next read could need before reading; one that cannot get it is not read until
//!   another line ends or is cut (backpressure, as Fluent Bit's `mem_buf_limit` pauses an
//!   input) — its line deadline keeps running, so a budget held by clients that never end
//!   their lines frees itself within `line_timeout_secs`. Clients whose lines are shorter than
//!   one read never wait. So a source holds at most `max_buffered_bytes` plus
//!   `max_connections` × (16 KiB + one read), plus what the allocator rounds up.
//! - **Line deadline (slowloris).** A line must be complete within `line_timeout_secs` of weir
//!   waiting on it (for the client's bytes, or for budget) since its first byte; each byte
//!   resets the idle timeout but not this. A client past it is disconnected
//!   (`reason="slow"`); its partial line is kept, flagged as cut. Time spent sending into a
//!   full pipeline is weir's, not the client's, and does not count.
//! - **TLS** (`tls = {...}`, see [`tls`]). The connection holds its slot from `accept`, so the
//!   cap applies before the handshake; the handshake must finish within
//!   `handshake_timeout_secs` (`reason="handshake_timeout"`); a failed one (plaintext, a
//!   missing or untrusted client certificate) is `reason="tls_error"`, logged at most every
//!   10 s. A TLS client that closes without close_notify ends like a plaintext one (`eof`).
//! - **Backpressure, isolation.** `send().await` on the bounded channel pauses a connection's
//!   reads when the pipeline is behind, and the kernel's socket buffers push back on the client.
//!   A slow or stuck client only blocks its own task.
//! - **Idle timeout.** A client whose socket stays silent for `idle_timeout_secs` (0: never) while
//!   weir waits to read is disconnected (`reason="idle_timeout"`). Time spent waiting on the
//!   pipeline does not count: the clock starts when a read finds no data.
//! - **Nothing read is lost silently.** Complete lines are sent as soon as a read completes them.
//!   At EOF, idle timeout or cut-off, a last partial line is emitted as it is; only a partial line
//!   of a connection broken by an error or by shutdown is dropped (it was never complete).
//!   Every disconnection is counted once by reason: `eof`, `idle_timeout`, `line_too_long`,
//!   `error`, `shutdown`, `slow`, `handshake_timeout`, `tls_error`.
//! - **Shutdown.** Cancelling the token stops accepting, closes every connection, waits for the
//!   connection tasks (each drops its sender), then returns `Ok`.
//!
//! With `format` other than `json`, each connection has its own [`ContainerDecoder`] that
//! unwraps Docker or CRI envelopes; bytes are counted as read, before unwrapping.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::multiline::{Joiner, Multiline, MultilineConfig, Quiet};
use super::{Format, LineBatch, LineReader, TcpConfig};
use crate::parse::container::ContainerDecoder;
use crate::telemetry::SelfMetrics;

pub mod tls;
pub use tls::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error("tcp source on {address}")]
    Tls {
        address: String,
        #[source]
        error: tls::TlsError,
    },
    #[error("tcp source on {address}: {message}")]
    Multiline { address: String, message: String },
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    #[error("cannot read the local address of the listener on {address}: {source}")]
    LocalAddr {
        address: String,
        source: std::io::Error,
    },
}

/// Longest idle timeout honoured; longer ones (up to `u64::MAX` seconds) mean "practically never"
/// and would overflow the clock.
const MAX_IDLE: Duration = Duration::from_secs(365 * 24 * 3600);
/// Pause after a failed `accept` (such as EMFILE), so a persistent failure does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one warning about refused connections (or failed TLS handshakes) per this interval.
const REFUSED_WARN_EVERY: Duration = Duration::from_secs(10);
/// Size of one read from a client. Small, because every connected client holds one while it
/// waits for data: 1,024 clients cost 8 MiB, not the 128 MiB of the file source's reads.
const READ_SIZE: usize = 8 * 1024;
/// Bytes of partial line each client may hold outside the global budget: a client whose
/// lines are shorter than one read never waits on the budget, whatever the others do.
const FREE_PER_CLIENT: usize = 2 * READ_SIZE;

/// Why a connection ended; the `reason` label of `weir_tcp_disconnects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disconnect {
    Eof,
    IdleTimeout,
    LineTooLong,
    Error,
    Shutdown,
    /// A line not complete within `line_timeout_secs` of its first byte.
    Slow,
    HandshakeTimeout,
    TlsError,
}

impl Disconnect {
    const ALL: [Disconnect; 8] = [
        Disconnect::Eof,
        Disconnect::IdleTimeout,
        Disconnect::LineTooLong,
        Disconnect::Error,
        Disconnect::Shutdown,
        Disconnect::Slow,
        Disconnect::HandshakeTimeout,
        Disconnect::TlsError,
    ];

    fn reason(self) -> &'static str {
        match self {
            Disconnect::Eof => "eof",
            Disconnect::IdleTimeout => "idle_timeout",
            Disconnect::LineTooLong => "line_too_long",
            Disconnect::Error => "error",
            Disconnect::Shutdown => "shutdown",
            Disconnect::Slow => "slow",
            Disconnect::HandshakeTimeout => "handshake_timeout",
            Disconnect::TlsError => "tls_error",
        }
    }
}

/// What every connection task needs; one per listener, shared.
struct Shared {
    /// `tcp:ADDR`, the `source` label of every batch.
    source: Arc<str>,
    max_line: usize,
    /// `None`: clients may stay silent forever.
    idle: Option<Duration>,
    /// `None`: a line may take forever.
    line_timeout: Option<Duration>,
    /// Partial-line bytes all clients together may hold past their free share.
    budget: Arc<Budget>,
    /// The TLS acceptor and handshake timeout; `None`: plaintext.
    tls: Option<(tokio_rustls::TlsAcceptor, Duration)>,
    /// When a failed handshake was last logged, and the count then.
    tls_warned: std::sync::Mutex<crate::telemetry::LogLimit>,
    format: Format,
    out: mpsc::Sender<LineBatch>,
    shutdown: CancellationToken,
    open: IntGauge,
    /// Indexed by `Disconnect as usize`.
    disconnects: [IntCounter; Disconnect::ALL.len()],
    invalid_envelope: IntCounter,
    /// Joins multi-line events, per connection.
    multiline: Option<Multiline>,
    selfm: SelfMetrics,
}

/// Accepts clients on `cfg.address` until `shutdown`; each client's lines are sent to `out`.
pub async fn run(
    cfg: TcpConfig,
    out: mpsc::Sender<LineBatch>,
    shutdown: CancellationToken,
    max_line_bytes: usize,
    selfm: SelfMetrics,
) -> Result<(), TcpError> {
    // Before binding: a source whose certificate cannot be read does not listen at all.
    if let Some(t) = &cfg.tls {
        t.acceptor().map_err(|error| TcpError::Tls {
            address: cfg.address.clone(),
            error,
        })?;
    }
    let listener = TcpListener::bind(cfg.address.as_str())
        .await
        .map_err(|source| TcpError::Bind {
            address: cfg.address.clone(),
            source,
        })?;
    serve(listener, cfg, out, shutdown, max_line_bytes, selfm).await
}

/// The accept loop over a bound listener.
async fn serve(
    listener: TcpListener,
    cfg: TcpConfig,
    out: mpsc::Sender<LineBatch>,
    shutdown: CancellationToken,
    max_line_bytes: usize,
    selfm: SelfMetrics,
) -> Result<(), TcpError> {
    let local = listener
        .local_addr()
        .map_err(|source| TcpError::LocalAddr {
            address: cfg.address.clone(),
            source,
        })?;
    let max_line = cfg.max_line_bytes.unwrap_or(max_line_bytes);
    let tls = match &cfg.tls {
        None => None,
        Some(t) => Some((
            t.acceptor().map_err(|error| TcpError::Tls {
                address: cfg.address.clone(),
                error,
            })?,
            t.handshake_timeout(),
        )),
    };
    let multiline = cfg
        .multiline
        .as_ref()
        .map(MultilineConfig::compile)
        .transpose()
        .map_err(|message| TcpError::Multiline {
            address: cfg.address.clone(),
            message,
        })?;
    tracing::info!(
        addr = %local,
        max_connections = cfg.max_connections,
        idle_timeout_secs = cfg.idle_timeout_secs,
        line_timeout_secs = cfg.line_timeout_secs,
        max_buffered_bytes = cfg.max_buffered_bytes,
        max_line_bytes = max_line,
        tls = cfg.tls.is_some(),
        client_certificates = cfg.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some()),
        "tcp source listening"
    );
    let shared = Arc::new(Shared {
        source: Arc::from(format!("tcp:{local}")),
        max_line,
        idle: (cfg.idle_timeout_secs > 0)
            .then(|| Duration::from_secs(cfg.idle_timeout_secs).min(MAX_IDLE)),
        line_timeout: (cfg.line_timeout_secs > 0)
            .then(|| Duration::from_secs(cfg.line_timeout_secs).min(MAX_IDLE)),
        budget: Arc::new(Budget::new(
            cfg.max_buffered_bytes,
            selfm.tcp_buffered_bytes.clone(),
        )),
        tls,
        tls_warned: std::sync::Mutex::new(crate::telemetry::LogLimit::every(REFUSED_WARN_EVERY)),
        format: cfg.format,
        out,
        shutdown: shutdown.clone(),
        open: selfm.tcp_connections.clone(),
        // Created up front so every reason is exported (at 0) from the start.
        disconnects: Disconnect::ALL
            .map(|d| selfm.tcp_disconnects_total.with_label_values(&[d.reason()])),
        invalid_envelope: selfm.parse_errors.with_label_values(&["invalid_envelope"]),
        multiline,
        selfm: selfm.clone(),
    });
    let accepted = selfm.tcp_connections_total.with_label_values(&["accepted"]);
    let refused = selfm.tcp_connections_total.with_label_values(&["refused"]);
    let permits = Arc::new(Semaphore::new(
        cfg.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let tasks = TaskTracker::new();
    let mut refused_warned = crate::telemetry::LogLimit::every(REFUSED_WARN_EVERY);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            // The pipeline is gone (its processor ended): nothing more can be delivered.
            _ = shared.out.closed() => break,
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(addr = %local, error = %e, "tcp accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Over the limit: closing the socket now is the refusal.
            drop(stream);
            refused.inc();
            if let Some(not_logged) = refused_warned.hit() {
                tracing::warn!(
                    addr = %local,
                    peer = %peer,
                    max_connections = cfg.max_connections,
                    refused = not_logged + 1,
                    "tcp connections refused: max_connections reached"
                );
            }
            continue;
        };
        accepted.inc();
        let open = Open::new(permit, shared.open.clone());
        tasks.spawn(connection(shared.clone(), stream, peer, open));
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
    tracing::debug!(addr = %local, "tcp source stopped");
    Ok(())
}

/// An open connection's hold on a permit and on the gauge.
struct Open {
    permit: Option<OwnedSemaphorePermit>,
    gauge: IntGauge,
}

impl Open {
    fn new(permit: OwnedSemaphorePermit, gauge: IntGauge) -> Self {
        gauge.inc();
        Open {
            permit: Some(permit),
            gauge,
        }
    }
}

impl Drop for Open {
    /// The permit goes back before the gauge drops: whoever sees the gauge fall can connect.
    fn drop(&mut self) {
        drop(self.permit.take());
        self.gauge.dec();
    }
}

/// Serves one client (after its TLS handshake, if the source has TLS), then counts why it
/// ended.
async fn connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, open: Open) {
    tracing::debug!(peer = %peer, source = %shared.source, "tcp client connected");
    let reason = match &shared.tls {
        None => read_client(&shared, stream, peer).await,
        Some((acceptor, timeout)) => {
            // The slot is held from `accept`: a client cannot hold more than one before its
            // handshake completes, nor for longer than the handshake timeout.
            let handshake = tokio::select! {
                biased;
                _ = shared.shutdown.cancelled() => Err(Disconnect::Shutdown),
                r = tokio::time::timeout(*timeout, acceptor.accept(stream)) => match r {
                    Err(_) => Err(Disconnect::HandshakeTimeout),
                    Ok(Err(e)) => {
                        warn_handshake(&shared, peer, &e);
                        Err(Disconnect::TlsError)
                    }
                    Ok(Ok(s)) => Ok(s),
                },
            };
            match handshake {
                Ok(s) => read_client(&shared, s, peer).await,
                Err(why) => why,
            }
        }
    };
    // The socket is closed by now; free the slot, then count.
    drop(open);
    shared.disconnects[reason as usize].inc();
    tracing::debug!(peer = %peer, reason = reason.reason(), "tcp client disconnected");
}

/// Logs a failed handshake, at most once per [`REFUSED_WARN_EVERY`] (with the count since);
/// each is counted as `tls_error` by the caller.
fn warn_handshake(shared: &Shared, peer: SocketAddr, e: &io::Error) {
    let mut limit = shared.tls_warned.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(not_logged) = limit.hit() {
        tracing::warn!(
            source = %shared.source,
            peer = %peer,
            error = %e,
            failed = not_logged + 1,
            "tcp client failed its TLS handshake"
        );
    } else {
        tracing::debug!(peer = %peer, error = %e, "tcp client failed its TLS handshake");
    }
}

/// Reads a client's lines until it ends; returns why. The socket is closed on return.
async fn read_client<S: AsyncRead + Unpin>(
    shared: &Shared,
    stream: S,
    peer: SocketAddr,
) -> Disconnect {
    let ended = OnceLock::new();
    let guarded = Guarded::new(stream, shared.max_line, shared.idle, &ended)
        .with_line_timeout(shared.line_timeout)
        .with_budget(shared.budget.clone());
    // Following, so that a read ended at the joiner's deadline is not taken for the end; the
    // last partial line is taken at the end instead.
    let guarded = Quiet::new(guarded);
    let mut reader = LineReader::following(guarded, shared.source.clone(), shared.max_line, 0)
        .with_read_size(READ_SIZE);
    let mut joiner = shared
        .multiline
        .as_ref()
        .map(|m| m.joiner(shared.max_line, &shared.selfm));
    let mut decoder = (shared.format != Format::Json).then(|| {
        ContainerDecoder::new(
            shared.format,
            None,
            shared.max_line,
            shared.invalid_envelope.clone(),
        )
    });
    let reason = loop {
        reader
            .get_mut()
            .set_deadline(joiner.as_ref().and_then(Joiner::deadline));
        let next = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => break Disconnect::Shutdown,
            next = reader.next_batch() => next,
        };
        let (raw, end) = match next {
            Ok(Some(raw)) => (raw, None),
            Ok(None) if reader.get_mut().take_tick() => {
                // Silent past the held event's timeout: it is complete.
                if let Some(b) = joiner.as_mut().and_then(|j| j.flush(&shared.source)) {
                    if shared.out.send(b).await.is_err() {
                        break Disconnect::Shutdown;
                    }
                }
                continue;
            }
            // A stop forced by the guard looks like EOF to the reader; the guard says which.
            Ok(None) => {
                let why = ended.get().copied().unwrap_or(Disconnect::Eof);
                match reader.take_partial() {
                    Some(raw) => (raw, Some(why)),
                    None => break why,
                }
            }
            // A TLS client that closed without close_notify (as many shippers do): the end,
            // as for a plaintext client; its complete lines are all delivered already.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => match reader.take_partial() {
                Some(raw) => (raw, Some(Disconnect::Eof)),
                None => break Disconnect::Eof,
            },
            Err(e) => {
                tracing::debug!(peer = %peer, error = %e, "tcp read failed");
                break Disconnect::Error;
            }
        };
        // A cut line means this client goes, once what it sent up to the cut is delivered.
        let cut = raw.lines.iter().any(|l| l.truncated);
        let mut raw = raw;
        if end == Some(Disconnect::Slow) {
            // The partial line of a client cut off at its line deadline never ended: it is
            // kept, flagged as cut (counted downstream as `line_truncated`).
            for l in &mut raw.lines {
                l.truncated = true;
            }
            tracing::debug!(peer = %peer, "tcp client too slow to complete its line");
        }
        let batch = super::stdin::stage(&mut decoder, &mut joiner, raw);
        if (!batch.lines.is_empty() || batch.bytes_read > 0)
            && shared.out.send(batch).await.is_err()
        {
            break Disconnect::Shutdown;
        }
        if let Some(why) = end.filter(|_| !cut) {
            break why;
        }
        if cut {
            tracing::debug!(
                peer = %peer,
                max_line_bytes = shared.max_line,
                "tcp client sent a line over the limit"
            );
            break Disconnect::LineTooLong;
        }
    };
    // Close the socket before the last send, which may wait on the pipeline.
    drop(reader);
    let mut tail: Vec<LineBatch> = Vec::new();
    if let Some(b) = decoder.as_mut().and_then(|d| d.flush_batch(&shared.source)) {
        tail.push(match &mut joiner {
            Some(j) => j.join(b),
            None => b,
        });
    }
    // The held event's lines were complete: they are delivered, also at shutdown.
    tail.extend(joiner.as_mut().and_then(|j| j.flush(&shared.source)));
    for b in tail {
        // A failed send means the pipeline is gone; nothing else can be done with it.
        let _ = shared.out.send(b).await;
    }
    reason
}

/// The bytes of partial lines the clients of one source may hold together past their free
/// share (`max_buffered_bytes`), as semaphore permits. A client takes what its next read could
/// add before reading, and gives back what its line no longer holds once the read is in; a
/// client that cannot get its share waits (it is not read: backpressure), its line deadline
/// still running. The permits taken are forgotten and given back by hand (`add_permits`), so
/// a client's share can shrink one byte at a time.
struct Budget {
    permits: Arc<Semaphore>,
    capacity: usize,
    /// `weir_tcp_buffered_bytes`: permits taken, summed over every TCP source.
    gauge: IntGauge,
}

impl Budget {
    fn new(capacity: usize, gauge: IntGauge) -> Self {
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
        Budget {
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            gauge,
        }
    }

    /// The share a client holding a partial line of `partial` bytes needs, with a line limit
    /// of `max_line` (the reader keeps no more than that of a line).
    fn share(&self, partial: usize, max_line: usize) -> usize {
        partial
            .min(max_line)
            .saturating_sub(FREE_PER_CLIENT)
            .min(self.capacity)
    }

    fn release(&self, n: usize) {
        if n > 0 {
            self.permits.add_permits(n);
            self.gauge.sub(n as i64);
        }
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// One client's hold on the [`Budget`].
struct Share {
    budget: Arc<Budget>,
    held: usize,
    /// Waiting for more permits (the budget was spent when they were asked for).
    acquiring: Option<Acquire>,
}

impl Share {
    /// Holds at least `want` permits: `Ready` once it does, `Pending` while it waits.
    fn poll_hold(&mut self, want: usize, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.held >= want {
                return Poll::Ready(());
            }
            let more = u32::try_from(want - self.held).unwrap_or(u32::MAX);
            let fut = match &mut self.acquiring {
                Some(f) => f,
                None => {
                    if let Ok(p) = self.budget.permits.clone().try_acquire_many_owned(more) {
                        self.take(p);
                        continue;
                    }
                    self.acquiring.insert(Box::pin(
                        self.budget.permits.clone().acquire_many_owned(more),
                    ))
                }
            };
            match fut.as_mut().poll(cx) {
                Poll::Ready(r) => {
                    self.acquiring = None;
                    match r {
                        Ok(p) => self.take(p),
                        // The semaphore is never closed; if it were, nothing could be held.
                        Err(_) => return Poll::Ready(()),
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn take(&mut self, p: OwnedSemaphorePermit) {
        let n = p.num_permits();
        p.forget();
        self.held += n;
        self.budget.gauge.add(n as i64);
    }

    /// Gives back what is held past `keep`.
    fn shrink_to(&mut self, keep: usize) {
        if self.held > keep {
            self.budget.release(self.held - keep);
            self.held = keep;
        }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.acquiring = None;
        self.budget.release(self.held);
    }
}

/// A client socket as the [`LineReader`] sees it: reads end early (as EOF) when the client
/// stays silent past the idle timeout, when its current line is not complete within the line
/// deadline, or once its current line has passed the line limit. The reader then emits what
/// it holds as it does at EOF (a cut line's head flagged truncated), and `ended` says why.
/// Before each read it holds the budget share the read could need ([`Budget`]).
struct Guarded<'a, S> {
    inner: S,
    max_line: usize,
    /// Bytes of the current line seen so far (since the last `\n`).
    line_len: usize,
    idle: Option<Idle>,
    line: Option<LineClock>,
    share: Option<Share>,
    ended: &'a OnceLock<Disconnect>,
}

struct Idle {
    after: Duration,
    deadline: Pin<Box<Sleep>>,
    /// A read is waiting for data, and `deadline` is set for it.
    waiting: bool,
}

/// The line deadline: the time weir spent waiting on the client (for data, or for budget)
/// since the current line's first byte. Time spent away from the socket (sending into a full
/// pipeline) is weir's, not the client's, and is not counted.
struct LineClock {
    after: Duration,
    /// Waited for the current line before the present wait.
    used: Duration,
    /// The present wait started then (its sleep is set for it).
    since: Option<Instant>,
    deadline: Pin<Box<Sleep>>,
}

impl<'a, S> Guarded<'a, S> {
    fn new(
        inner: S,
        max_line: usize,
        idle: Option<Duration>,
        ended: &'a OnceLock<Disconnect>,
    ) -> Self {
        Guarded {
            inner,
            // The same clamp as the LineReader's, so both agree on when a line is too long.
            max_line: max_line.clamp(1, u32::MAX as usize / 2),
            line_len: 0,
            idle: idle.map(|after| Idle {
                after,
                deadline: Box::pin(tokio::time::sleep(after)),
                waiting: false,
            }),
            line: None,
            share: None,
            ended,
        }
    }

    /// A line must be complete within `after` of waiting on the client; `None`: no deadline.
    fn with_line_timeout(mut self, after: Option<Duration>) -> Self {
        self.line = after.map(|after| LineClock {
            after,
            used: Duration::ZERO,
            since: None,
            deadline: Box::pin(tokio::time::sleep(after)),
        });
        self
    }

    /// Partial-line bytes past the free share are held against `budget`.
    fn with_budget(mut self, budget: Arc<Budget>) -> Self {
        self.share = Some(Share {
            budget,
            held: 0,
            acquiring: None,
        });
        self
    }

    /// While weir waits on the client: whether its current line is past its deadline.
    fn line_overdue(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(clock) = &mut self.line else {
            return false;
        };
        if self.line_len == 0 {
            return false;
        }
        if clock.since.is_none() {
            let now = Instant::now();
            clock.since = Some(now);
            let left = clock.after.saturating_sub(clock.used);
            clock.deadline.as_mut().reset(now + left);
        }
        clock.deadline.as_mut().poll(cx).is_ready()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ended.get().is_some() {
            return Poll::Ready(Ok(()));
        }
        // Hold what this read could add to the partial line before reading it, so the budget
        // is never passed; without it, the client is not read (backpressure).
        if let Some(share) = &mut this.share {
            let want = share
                .budget
                .share(this.line_len + buf.remaining(), this.max_line);
            if share.poll_hold(want, cx).is_pending() {
                if this.line_overdue(cx) {
                    let _ = this.ended.set(Disconnect::Slow);
                    return Poll::Ready(Ok(()));
                }
                return Poll::Pending;
            }
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if let Some(idle) = &mut this.idle {
                    idle.waiting = false;
                }
                let new = &buf.filled()[before..];
                let newline = memchr::memrchr(b'\n', new);
                match newline {
                    Some(i) => this.line_len = new.len() - i - 1,
                    None => this.line_len += new.len(),
                }
                if let Some(clock) = &mut this.line {
                    if let Some(since) = clock.since.take() {
                        clock.used += since.elapsed();
                    }
                    if newline.is_some() || this.line_len == 0 {
                        // The current line started in this read.
                        clock.used = Duration::ZERO;
                    }
                }
                if let Some(share) = &mut this.share {
                    let keep = share.budget.share(this.line_len, this.max_line);
                    share.shrink_to(keep);
                }
                if this.line_len > this.max_line {
                    // The reader now holds the head and skips; it gets EOF on its next read,
                    // so nothing more is read from this client.
                    let _ = this.ended.set(Disconnect::LineTooLong);
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if this.line_overdue(cx) {
                    let _ = this.ended.set(Disconnect::Slow);
                    return Poll::Ready(Ok(()));
                }
                let Some(idle) = &mut this.idle else {
                    return Poll::Pending;
                };
                if !idle.waiting {
                    // The clock starts when a read finds nothing, not when the last one ended:
                    // time spent waiting on the pipeline is not the client's silence.
                    idle.waiting = true;
                    let deadline = Instant::now() + idle.after;
                    idle.deadline.as_mut().reset(deadline);
                }
                match idle.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let _ = this.ended.set(Disconnect::IdleTimeout);
                        Poll::Ready(Ok(()))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn lines(b: &LineBatch) -> Vec<(String, bool)> {
        b.iter()
            .map(|(l, t)| (String::from_utf8_lossy(l).into_owned(), t))
            .collect()
    }

    /// A client silent past the timeout ends the stream; a partial line it sent is kept.
    #[tokio::test(start_paused = true)]
    async fn idle_client_ends_the_stream_and_keeps_its_partial_line() {
        let (mut client, server) = tokio::io::duplex(1024);
        let ended = OnceLock::new();
        let g = Guarded::new(server, 100, Some(Duration::from_secs(5)), &ended);
        let mut r = LineReader::new(g, "t".into(), 100);
        client.write_all(b"one\npart").await.unwrap();
        let b = r.next_batch().await.unwrap().unwrap();
        assert_eq!(lines(&b), [("one".to_string(), false)]);
        let start = Instant::now();
        let b = r.next_batch().await.unwrap().unwrap();
        assert_eq!(lines(&b), [("part".to_string(), false)]);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert!(r.next_batch().await.unwrap().is_none());
        assert_eq!(ended.get(), Some(&Disconnect::IdleTimeout));
    }

    /// Time spent away from the socket (a full pipeline) is not counted as the client's silence.
    #[tokio::test(start_paused = true)]
    async fn time_waiting_on_the_pipeline_is_not_idle_time() {
        let (mut client, server) = tokio::io::duplex(1024);
        let ended = OnceLock::new();
        let g = Guarded::new(server, 100, Some(Duration::from_secs(5)), &ended);
        let mut r = LineReader::new(g, "t".into(), 100);
        client.write_all(b"a\n").await.unwrap();
        r.next_batch().await.unwrap().unwrap();
        // As if the send into the channel took a minute.
        tokio::time::advance(Duration::from_secs(60)).await;
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            client.write_all(b"b\n").await.unwrap();
            client
        });
        let b = r.next_batch().await.unwrap().unwrap();
        assert_eq!(lines(&b), [("b".to_string(), false)]);
        assert_eq!(ended.get(), None);
        drop(writer.await.unwrap());
        assert!(r.next_batch().await.unwrap().unwrap().lines.is_empty());
        assert!(r.next_batch().await.unwrap().is_none());
        assert_eq!(ended.get(), None, "a real EOF");
    }

    /// An endless line: its head comes out truncated and reading stops right past the limit.
    #[tokio::test]
    async fn an_endless_line_is_cut_and_reading_stops() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let ended = OnceLock::new();
        let g = Guarded::new(server, 1000, None, &ended);
        let mut r = LineReader::new(g, "t".into(), 1000);
        let writer = tokio::spawn(async move {
            client.write_all(b"first\n").await.unwrap();
            let chunk = vec![b'x'; 4096];
            let mut sent = 0usize;
            // Stops when the reader side is dropped: the write fails.
            while client.write_all(&chunk).await.is_ok() {
                sent += chunk.len();
                assert!(sent < 64 << 20, "the reader kept reading");
            }
            sent
        });
        let mut got = Vec::new();
        let mut read = 0;
        while let Some(b) = r.next_batch().await.unwrap() {
            read += b.bytes_read;
            got.extend(b.iter().map(|(l, t)| (l.len(), t)));
        }
        assert_eq!(got, [(5, false), (1000, true)]);
        assert_eq!(ended.get(), Some(&Disconnect::LineTooLong));
        assert!(read < 2 * 64 * 1024 + 1000, "read {read} bytes");
        drop(r);
        assert!(writer.await.unwrap() < 1 << 20);
    }

    /// A long line that does end is cut by the reader; the guard lets the stream go on (the
    /// connection task disconnects on the truncated flag).
    #[tokio::test]
    async fn a_long_terminated_line_is_cut_by_the_reader() {
        let mut data = vec![b'y'; 50];
        data.extend(b"\nok\n");
        let ended = OnceLock::new();
        let g = Guarded::new(&data[..], 10, None, &ended);
        let mut r = LineReader::new(g, "t".into(), 10);
        let b = r.next_batch().await.unwrap().unwrap();
        assert_eq!(
            lines(&b),
            [("yyyyyyyyyy".to_string(), true), ("ok".to_string(), false)]
        );
        assert_eq!(ended.get(), None);
    }

    /// A line that trickles in is cut at its deadline, however often a byte arrives (each
    /// byte would reset the idle timeout); its partial line comes out, and `ended` says slow.
    #[tokio::test(start_paused = true)]
    async fn a_trickled_line_is_cut_at_the_line_deadline() {
        let (mut client, server) = tokio::io::duplex(1024);
        let ended = OnceLock::new();
        let g = Guarded::new(server, 100, Some(Duration::from_secs(2)), &ended)
            .with_line_timeout(Some(Duration::from_secs(5)));
        let mut r = LineReader::new(g, "t".into(), 100);
        client.write_all(b"one\n").await.unwrap();
        let b = r.next_batch().await.unwrap().unwrap();
        assert_eq!(lines(&b), [("one".to_string(), false)]);
        let start = Instant::now();
        let writer = tokio::spawn(async move {
            for _ in 0..100 {
                if client.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            client
        });
        let b = r.next_batch().await.unwrap().unwrap();
        assert_eq!(ended.get(), Some(&Disconnect::Slow));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(b.lines.len(), 1);
        assert!(b.line(&b.lines[0]).iter().all(|&c| c == b'x'));
        drop(r);
        drop(writer.await.unwrap());
    }

    /// Time spent away from the socket (a full pipeline) does not count against the line: a
    /// line whose end comes 3 s after weir is back is complete, also after a minute away.
    #[tokio::test(start_paused = true)]
    async fn time_away_from_the_socket_is_not_the_lines() {
        let (mut client, server) = tokio::io::duplex(1024);
        let ended = OnceLock::new();
        let g =
            Guarded::new(server, 100, None, &ended).with_line_timeout(Some(Duration::from_secs(5)));
        let mut r = LineReader::new(g, "t".into(), 100);
        client.write_all(b"a\npar").await.unwrap();
        r.next_batch().await.unwrap().unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            client.write_all(b"t\n").await.unwrap();
            client
        });
        let b = r.next_batch().await.unwrap().unwrap();
        assert_eq!(lines(&b), [("part".to_string(), false)]);
        assert_eq!(ended.get(), None);
        drop(writer.await.unwrap());
    }

    /// Two clients share a budget: the one that would take it past its capacity is not read
    /// (its bytes stay with the client) until the other's line ends and frees its share; what
    /// is held never passes the capacity, and every share is given back at the end.
    #[tokio::test(start_paused = true)]
    async fn a_client_waits_for_budget_that_another_holds() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let capacity = 3 * READ_SIZE;
        let budget = Arc::new(Budget::new(capacity, gauge.clone()));
        let reader = |server, ended| {
            let g = Guarded::new(server, 1 << 20, None, ended).with_budget(budget.clone());
            LineReader::new(g, "t".into(), 1 << 20).with_read_size(READ_SIZE)
        };
        let (mut ca, sa) = tokio::io::duplex(1 << 20);
        let (mut cb, sb) = tokio::io::duplex(1 << 20);
        let (ea, eb) = (OnceLock::new(), OnceLock::new());
        let mut ra = reader(sa, &ea);
        let mut rb = reader(sb, &eb);
        // A: a partial line past its free share holds most of the budget.
        ca.write_all(&vec![b'a'; FREE_PER_CLIENT + 2 * READ_SIZE])
            .await
            .unwrap();
        {
            // `next_batch` is not cancel-safe: each read is polled to its end, not timed out.
            let a = ra.next_batch();
            tokio::pin!(a);
            tokio::select! {
                _ = &mut a => panic!("no line of A is complete yet"),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            assert!(gauge.get() as usize >= 2 * READ_SIZE);
            assert!(gauge.get() as usize <= capacity);
            // B: its line cannot be held, so it stops being read.
            cb.write_all(&vec![b'b'; FREE_PER_CLIENT + 2 * READ_SIZE])
                .await
                .unwrap();
            cb.write_all(b"\n").await.unwrap();
            let b = rb.next_batch();
            tokio::pin!(b);
            tokio::select! {
                _ = &mut b => panic!("B was read past the budget"),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            assert!(gauge.get() as usize <= capacity);
            // A's line ends: its share comes back and B goes on to its end.
            ca.write_all(b"\n").await.unwrap();
            let a = a.await.unwrap().unwrap();
            assert_eq!(a.line(&a.lines[0]).len(), FREE_PER_CLIENT + 2 * READ_SIZE);
            let b = b.await.unwrap().unwrap();
            assert_eq!(b.line(&b.lines[0]).len(), FREE_PER_CLIENT + 2 * READ_SIZE);
            assert!(gauge.get() as usize <= capacity);
        }
        drop((ra, rb));
        assert_eq!(gauge.get(), 0, "every share given back");
        assert_eq!(budget.permits.available_permits(), capacity);
    }

    struct Harness {
        addr: SocketAddr,
        rx: mpsc::Receiver<LineBatch>,
        selfm: SelfMetrics,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<Result<(), TcpError>>,
    }

    async fn start(cfg: TcpConfig) -> Harness {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel(16);
        let selfm = SelfMetrics::new();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            cfg,
            tx,
            shutdown.clone(),
            1000,
            selfm.clone(),
        ));
        Harness {
            addr,
            rx,
            selfm,
            shutdown,
            task,
        }
    }

    impl Harness {
        fn disconnects(&self, reason: &str) -> u64 {
            self.selfm
                .tcp_disconnects_total
                .with_label_values(&[reason])
                .get()
        }
        fn connections(&self, result: &str) -> u64 {
            self.selfm
                .tcp_connections_total
                .with_label_values(&[result])
                .get()
        }
    }

    /// Polls `f` until it holds (real time; the server runs on real sockets).
    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn with_deadline<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("in time")
    }

    #[tokio::test]
    async fn lines_arrive_under_the_listen_address_and_eof_is_counted() {
        let mut h = start(TcpConfig::default()).await;
        let mut c = TcpStream::connect(h.addr).await.unwrap();
        c.write_all(b"{\"a\":1}\r\n{\"a\":2}\nlast").await.unwrap();
        drop(c);
        let mut got = Vec::new();
        let mut bytes = 0;
        while got.len() < 3 {
            let b = with_deadline(h.rx.recv()).await.unwrap();
            assert_eq!(&*b.source, format!("tcp:{}", h.addr));
            bytes += b.bytes_read;
            got.extend(lines(&b));
        }
        assert_eq!(got[2], ("last".to_string(), false));
        assert_eq!(bytes, 21);
        until("eof", || h.disconnects("eof") == 1).await;
        assert_eq!(h.connections("accepted"), 1);
        assert_eq!(h.selfm.tcp_connections.get(), 0);
        h.shutdown.cancel();
        with_deadline(&mut h.task).await.unwrap().unwrap();
    }

    /// Shutdown closes open connections (counted), drops every sender and returns Ok.
    #[tokio::test]
    async fn shutdown_closes_clients_and_drops_the_senders() {
        let mut h = start(TcpConfig::default()).await;
        let mut a = TcpStream::connect(h.addr).await.unwrap();
        let mut b = TcpStream::connect(h.addr).await.unwrap();
        a.write_all(b"x\n").await.unwrap();
        with_deadline(h.rx.recv()).await.unwrap();
        until("two open", || h.selfm.tcp_connections.get() == 2).await;
        h.shutdown.cancel();
        with_deadline(&mut h.task).await.unwrap().unwrap();
        assert!(h.rx.recv().await.is_none(), "all senders dropped");
        let mut buf = [0u8; 8];
        assert_eq!(a.read(&mut buf).await.unwrap(), 0);
        assert_eq!(b.read(&mut buf).await.unwrap(), 0);
        assert_eq!(h.disconnects("shutdown"), 2);
        assert_eq!(h.selfm.tcp_connections.get(), 0);
    }

    /// Past max_connections a client is closed at once and counted; a freed slot is reusable.
    #[tokio::test]
    async fn connections_past_the_limit_are_refused() {
        let h = start(TcpConfig {
            max_connections: 1,
            ..TcpConfig::default()
        })
        .await;
        let first = TcpStream::connect(h.addr).await.unwrap();
        until("accepted", || h.selfm.tcp_connections.get() == 1).await;
        let mut second = TcpStream::connect(h.addr).await.unwrap();
        let mut buf = [0u8; 8];
        // Closed by the server: EOF (or a reset, if the close raced our connect).
        let n = with_deadline(second.read(&mut buf)).await.unwrap_or(0);
        assert_eq!(n, 0);
        assert_eq!(h.connections("refused"), 1);
        drop(first);
        until("slot freed", || h.selfm.tcp_connections.get() == 0).await;
        let _third = TcpStream::connect(h.addr).await.unwrap();
        until("accepted again", || h.connections("accepted") == 2).await;
        assert_eq!(h.connections("refused"), 1);
        h.shutdown.cancel();
    }

    /// A cut line: the head is delivered flagged, the client is disconnected and counted.
    #[tokio::test]
    async fn a_line_over_the_limit_disconnects_its_client() {
        let mut h = start(TcpConfig {
            max_line_bytes: Some(16),
            ..TcpConfig::default()
        })
        .await;
        let mut c = TcpStream::connect(h.addr).await.unwrap();
        c.write_all(b"fine\n0123456789abcdefXYZ\nnever\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        while !got.iter().any(|(_, t)| *t) {
            got.extend(lines(&with_deadline(h.rx.recv()).await.unwrap()));
        }
        assert_eq!(
            got[..2],
            [
                ("fine".to_string(), false),
                ("0123456789abcdef".to_string(), true)
            ]
        );
        let mut buf = [0u8; 8];
        assert_eq!(with_deadline(c.read(&mut buf)).await.unwrap_or(0), 0);
        until("line_too_long", || h.disconnects("line_too_long") == 1).await;
        h.shutdown.cancel();
    }
}
