//! The accept loop and the connection limits of both listeners (public and admin).
//!
//! `axum::serve` has no knob for what a hostile peer does, so connections are served with
//! hyper's HTTP/1.1 builder directly, each in its own task:
//!
//! - **Connections are capped** ([`Limits::max_connections`], a semaphore, as mini-redis
//!   does). At the cap, the connection that has been idle the longest (no request in flight,
//!   no response being written) is closed to make room, so a flood of idle connections cannot
//!   lock out a scrape or a health check; when every connection is busy, the new one is closed
//!   at once. Both are counted (`weir_http_connections_closed_total{reason="evicted_idle"}`,
//!   `weir_http_connections_refused_total`). Running out of file descriptors (EMFILE) while
//!   accepting is logged (rate-limited), counted and also makes room the same way.
//! - **Slow and idle clients are cut off.** hyper's header read timeout
//!   ([`Limits::header_timeout`]) bounds both the time a client may take to send a request's
//!   head (slowloris) and the time a kept-alive connection may wait for its next request; TLS
//!   handshakes get the same deadline. The request head is at most [`MAX_HEADER_BYTES`]
//!   (hyper answers 431 past it).
//! - **Clients that stop reading are dropped.** A write that cannot progress for
//!   [`Limits::write_timeout`] fails the connection ([`StallGuard`]): a `/tap` subscriber or a
//!   scraper whose socket does not drain gives its slot (and its tap) back.
//! - Per request (in [`super`]): a handler deadline (not `/tap`, a stream), a body size cap.
//!
//! Shutdown: the loop stops accepting when `stop` fires; open connections finish the request
//! they are on (at most [`GRACE`]) and are closed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The largest request head (request line and headers) accepted.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// How long open connections may take to finish at shutdown.
pub const GRACE: Duration = Duration::from_secs(5);
/// Idle connections closed at once when accepting fails for want of file descriptors.
const EVICT_ON_EMFILE: usize = 16;
/// How long a new connection waits for an evicted one to give its slot back.
const EVICT_WAIT: Duration = Duration::from_secs(1);

/// What a listener allows a client.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time to send a request head, and the longest a kept-alive connection waits idle.
    pub header_timeout: Duration,
    /// The longest a response write may make no progress.
    pub write_timeout: Duration,
    /// The longest a handler may take to answer (`/tap` streams are exempt).
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// The `weir_http_*` self-metrics, labelled by listener (`public`, `admin`).
#[derive(Clone)]
pub struct HttpMetrics {
    refused: IntCounterVec,
    closed: IntCounterVec,
    open: IntGaugeVec,
    accept_errors: IntCounterVec,
}

impl HttpMetrics {
    /// Creates the metrics and registers them in weir's own registry.
    pub fn register(registry: &Registry) -> HttpMetrics {
        // The names and labels are constants: creating them cannot fail.
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("a valid constant metric name and labels");
            if let Err(e) = registry.register(Box::new(c.clone())) {
                tracing::warn!(metric = name, error = %e, "self-metric not registered");
            }
            c
        };
        let refused = counter(
            "weir_http_connections_refused_total",
            "HTTP connections closed on accept: every slot was busy with a request.",
            &["listener"],
        );
        let closed = counter(
            "weir_http_connections_closed_total",
            "HTTP connections closed by weir: evicted_idle (room for a new one), \
             header_timeout (slow or idle client), write_stalled (client stopped reading), \
             tls_handshake (failed or too slow).",
            &["listener", "reason"],
        );
        let accept_errors = counter(
            "weir_http_accept_errors_total",
            "Errors accepting HTTP connections, by kind (too_many_open_files, other).",
            &["listener", "kind"],
        );
        let open = IntGaugeVec::new(
            Opts::new("weir_http_connections_open", "HTTP connections open now."),
            &["listener"],
        )
        .expect("a valid constant metric name and labels");
        if let Err(e) = registry.register(Box::new(open.clone())) {
            tracing::warn!(error = %e, "self-metric not registered");
        }
        HttpMetrics {
            refused,
            closed,
            open,
            accept_errors,
        }
    }
}

/// A connection's shared state: what the eviction needs to know.
struct ConnState {
    /// Requests whose response is not fully written yet.
    in_flight: AtomicUsize,
    /// Milliseconds since the server started, when `in_flight` last became 0.
    idle_since_ms: AtomicU64,
    /// Closes the connection.
    kill: CancellationToken,
}

/// The connections of one listener.
struct Table {
    started: Instant,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl Table {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the connection idle the longest; `false` if none is idle.
    fn evict_idle(&self) -> bool {
        self.evict_idle_n(1) == 1
    }

    /// Closes up to `n` connections, those idle the longest first; returns how many.
    fn evict_idle_n(&self, n: usize) -> usize {
        let conns = self.lock();
        let mut idle: Vec<&Arc<ConnState>> = conns
            .values()
            .filter(|c| c.in_flight.load(Ordering::Acquire) == 0 && !c.kill.is_cancelled())
            .collect();
        idle.sort_unstable_by_key(|c| c.idle_since_ms.load(Ordering::Relaxed));
        for c in idle.iter().take(n) {
            c.kill.cancel();
        }
        idle.len().min(n)
    }
}

/// Removes a connection from its table when its task ends.
struct Registered {
    table: Arc<Table>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.table.lock().remove(&self.id);
    }
}

/// Marks a request in flight until its response body is dropped.
struct InFlight {
    state: Arc<ConnState>,
    table: Arc<Table>,
}

impl InFlight {
    fn new(state: Arc<ConnState>, table: Arc<Table>) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight { state, table }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.state.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.state
                .idle_since_ms
                .store(self.table.now_ms(), Ordering::Relaxed);
        }
    }
}

/// A response body that keeps its request counted as in flight while it is written.
struct Guarded {
    inner: Body,
    _guard: InFlight,
}

impl http_body::Body for Guarded {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A bound listener: TCP, or a unix socket (the admin listener's `unix:/path`).
pub enum Bound {
    Tcp(TcpListener),
    /// The socket and its path, removed when the listener stops.
    Unix(UnixListener, std::path::PathBuf),
}

/// A connection of a [`Bound`] listener.
pub enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Bound {
    async fn accept(&self) -> io::Result<Stream> {
        match self {
            Bound::Tcp(l) => {
                let (s, _) = l.accept().await?;
                // Small responses go out at once rather than waiting for an ACK.
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s))
            }
            Bound::Unix(l, _) => Ok(Stream::Unix(l.accept().await?.0)),
        }
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        if let Bound::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Serves `app` on `listener` until `stop`; `name` labels the metrics and logs.
pub async fn serve(
    listener: Bound,
    name: &'static str,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    metrics: HttpMetrics,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let table = Arc::new(Table {
        started: Instant::now(),
        next_id: AtomicU64::new(0),
        conns: Mutex::new(HashMap::new()),
    });
    let tasks = TaskTracker::new();
    let mut accept_warnings = crate::telemetry::LogLimit::every(Duration::from_secs(10));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => {
                let emfile = e.raw_os_error().is_some_and(is_fd_exhaustion);
                let kind = if emfile {
                    "too_many_open_files"
                } else {
                    "other"
                };
                metrics.accept_errors.with_label_values(&[name, kind]).inc();
                if let Some(not_logged) = accept_warnings.hit() {
                    tracing::warn!(listener = name, error = %e, not_logged, "cannot accept an HTTP connection");
                }
                // Out of descriptors: idle connections are the cheapest to give up. A batch,
                // so that a flood waiting in the backlog is worked through in rounds.
                let evicted = if emfile {
                    table.evict_idle_n(EVICT_ON_EMFILE)
                } else {
                    0
                };
                if evicted > 0 {
                    metrics
                        .closed
                        .with_label_values(&[name, "evicted_idle"])
                        .inc_by(evicted as u64);
                }
                // The listener stays readable while the error lasts: do not spin on it.
                let pause = if evicted > 0 { 5 } else { 50 };
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(pause)) => {}
                }
                continue;
            }
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if table.evict_idle() {
                    metrics
                        .closed
                        .with_label_values(&[name, "evicted_idle"])
                        .inc();
                    match tokio::time::timeout(EVICT_WAIT, slots.clone().acquire_owned()).await {
                        Ok(Ok(p)) => p,
                        _ => {
                            metrics.refused.with_label_values(&[name]).inc();
                            continue;
                        }
                    }
                } else {
                    metrics.refused.with_label_values(&[name]).inc();
                    continue;
                }
            }
        };
        let id = table.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(table.now_ms()),
            kill: CancellationToken::new(),
        });
        table.lock().insert(id, state.clone());
        let registered = Registered {
            table: table.clone(),
            id,
        };
        let (app, tls, metrics, stop) = (app.clone(), tls.clone(), metrics.clone(), stop.clone());
        let table = table.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let _registered = registered;
            let open = metrics.open.with_label_values(&[name]);
            open.inc();
            let closed = connection(stream, app, tls, limits, state, table, stop).await;
            open.dec();
            if let Some(reason) = closed {
                metrics.closed.with_label_values(&[name, reason]).inc();
            }
        });
    }
    tasks.close();
    // Each connection stops on `stop` and takes at most GRACE; this only bounds the sum.
    let _ = tokio::time::timeout(GRACE + Duration::from_secs(1), tasks.wait()).await;
}

/// EMFILE (process) or ENFILE (system): out of file descriptors.
fn is_fd_exhaustion(errno: i32) -> bool {
    // Linux and the BSDs agree on these numbers.
    errno == 24 || errno == 23
}

/// Serves one connection; returns why weir closed it, if it did for a counted reason.
async fn connection(
    stream: Stream,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    state: Arc<ConnState>,
    table: Arc<Table>,
    stop: CancellationToken,
) -> Option<&'static str> {
    let stalled = Arc::new(AtomicBool::new(false));
    let io = StallGuard::new(stream, limits.write_timeout, stalled.clone());
    let kill = state.kill.clone();
    let closed = match tls {
        None => http(io, app, limits, state, table, &stop).await,
        Some(acceptor) => {
            let handshake = tokio::time::timeout(limits.header_timeout, acceptor.accept(io));
            let tls_stream = tokio::select! {
                r = handshake => r,
                () = kill.cancelled() => return None,
                () = stop.cancelled() => return None,
            };
            match tls_stream {
                Ok(Ok(s)) => http(s, app, limits, state, table, &stop).await,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    Some("tls_handshake")
                }
                Err(_) => Some("tls_handshake"),
            }
        }
    };
    if stalled.load(Ordering::Relaxed) {
        return Some("write_stalled");
    }
    closed
}

async fn http<IO>(
    io: IO,
    app: Router,
    limits: Limits,
    state: Arc<ConnState>,
    table: Arc<Table>,
    stop: &CancellationToken,
) -> Option<&'static str>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tower = TowerToHyperService::new(app);
    let kill = state.kill.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let guard = InFlight::new(state.clone(), table.clone());
        let answer = hyper::service::Service::call(&tower, req);
        async move {
            let res = answer.await.unwrap_or_else(|e: Infallible| match e {});
            Ok::<_, Infallible>(res.map(|inner| {
                Body::new(Guarded {
                    inner,
                    _guard: guard,
                })
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = kill.cancelled() => return None,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(GRACE, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => return None,
            }
        }
    };
    match result {
        Err(e) if e.is_timeout() => Some("header_timeout"),
        Err(e) => {
            tracing::debug!(error = %e, "HTTP connection ended");
            None
        }
        Ok(()) => None,
    }
}

/// An I/O stream whose writes fail once they have made no progress for a while: a peer that
/// stops reading cannot hold a connection (or a tap) forever.
pub struct StallGuard<IO> {
    io: IO,
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    stalled: Arc<AtomicBool>,
}

impl<IO> StallGuard<IO> {
    pub fn new(io: IO, limit: Duration, stalled: Arc<AtomicBool>) -> Self {
        StallGuard {
            io,
            limit,
            timer: None,
            stalled,
        }
    }

    /// After the inner stream said Pending: Pending, or an error once the deadline passed.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_ready() {
            self.stalled.store(true, Ordering::Relaxed);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            )));
        }
        Poll::Pending
    }

    fn progress<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.pending(cx),
            ready => {
                self.timer = None;
                ready
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for StallGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for StallGuard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.progress(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.progress(r, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.progress(r, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A peer that never reads: the write fails after the limit instead of waiting forever.
    #[tokio::test(start_paused = true)]
    async fn a_write_that_makes_no_progress_fails_after_the_limit() {
        let (near, _far) = tokio::io::duplex(64);
        let stalled = Arc::new(AtomicBool::new(false));
        let mut io = StallGuard::new(near, Duration::from_secs(30), stalled.clone());
        let err = io
            .write_all(&[0u8; 4096])
            .await
            .expect_err("the peer never reads");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(stalled.load(Ordering::Relaxed));
    }

    /// A peer that reads slowly but steadily is not cut off.
    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_keeps_its_connection() {
        use tokio::io::AsyncReadExt;
        let (near, mut far) = tokio::io::duplex(64);
        let stalled = Arc::new(AtomicBool::new(false));
        let mut io = StallGuard::new(near, Duration::from_secs(30), stalled.clone());
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut total = 0;
            while total < 4096 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                total += far.read(&mut buf).await.expect("read");
            }
        });
        io.write_all(&[0u8; 4096])
            .await
            .expect("progress resets the deadline");
        reader.await.expect("reader");
        assert!(!stalled.load(Ordering::Relaxed));
    }
}
