//! The harness the test receivers run on: what is the same whatever backend they play.
//!
//! A [`FaultyServer`] binds `127.0.0.1:0`, serves an axum [`Router`] on its own thread with its
//! own tokio runtime (so plain `#[test]` functions can use it) and stops when dropped. Around
//! the receiver's own state it keeps the faults a test programs while it runs:
//! - whole-request answers ([`FaultyServer::fail_next`], [`FaultyServer::fail_next_with`],
//!   [`FaultyServer::throttle_next`]), each receiver words them as its backend does;
//! - late answers ([`FaultyServer::delay_next`], [`FaultyServer::set_delay`]), given after
//!   the request was stored, so a client that times out resends what is already there;
//! - refusals ([`FaultyServer::refuse_connections_for`]): the listening socket and every open
//!   connection close, and the same port is listened on again later.
//!
//! A receiver *is* a `FaultyServer`, generic over what differs: its options `O` (fixed at
//! start) and its state `S` (what it stored and recorded, a [`Store`]). Each receiver names
//! its instance (`pub type LokiReceiver = FaultyServer<LokiLimits, Inner>`) and adds its own
//! methods to it; its handlers take [`Shared`] as axum state, read [`Shared::options`], lock
//! the state with [`Shared::lock`] and ask [`Shared::next_fault`] and [`Shared::next_delay`]
//! how to answer.

use std::collections::VecDeque;
use std::future::{Future as _, IntoFuture};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Locks `m` whatever happened: a panicking test thread may poison the lock; the data is still
/// fine to read.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Calls `poll` every 10 ms until it returns something, and returns that; panics with
/// `failure()` once `timeout` has passed.
pub fn wait_for<T>(
    timeout: Duration,
    mut poll: impl FnMut() -> Option<T>,
    failure: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = poll() {
            return found;
        }
        if Instant::now() >= deadline {
            panic!("{}", failure());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An answer: status, extra headers, body.
pub type Answer = (StatusCode, Vec<(HeaderName, HeaderValue)>, String);

/// Waits `delay`, then answers: the bare status when the body is empty, else the body as
/// `content_type`; then the extra headers.
pub async fn respond(answer: Answer, content_type: &'static str, delay: Duration) -> Response {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (status, extra, body) = answer;
    let mut res = if body.is_empty() {
        status.into_response()
    } else {
        (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    for (k, v) in extra {
        res.headers_mut().append(k, v);
    }
    res
}

/// `answer` with a `Retry-After` header.
pub fn with_retry_after(answer: Answer, retry_after: &str) -> Answer {
    let (status, mut headers, body) = answer;
    headers.push((
        header::RETRY_AFTER,
        HeaderValue::from_str(retry_after).expect("a valid Retry-After"),
    ));
    (status, headers, body)
}

/// A request header's value, when it is text.
pub fn header_text(headers: &HeaderMap, name: HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The media type of a `Content-Type` value, lowercase, without its parameters.
pub fn media_type(content_type: Option<&str>) -> Option<String> {
    content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase())
}

/// Decompresses a gzip body, stopping after `max + 1` bytes (so a longer result is too long).
pub fn gunzip(body: &[u8], max: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(max as u64 + 1)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// An injected answer to a whole request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// This status, without storing anything.
    Status(u16),
    /// 429 with this `Retry-After`, without storing anything.
    Throttle { retry_after: String },
}

/// The faults programmed for the next requests.
#[derive(Debug, Default)]
struct Faults {
    /// Injected answers, one a request.
    answers: VecDeque<Fault>,
    /// One-off delays, one a request, before the standing `delay`.
    delays: VecDeque<Duration>,
    delay: Duration,
}

/// The listening side's state, shared between the accept loop and the controls.
struct Gate {
    state: Mutex<GateState>,
    /// Wakes the accept loop when a refusal starts.
    refuse: Notify,
}

struct GateState {
    refuse_until: Option<Instant>,
    /// Whether the listening socket is open.
    listening: bool,
    /// Cancelled to close every open connection.
    kill: CancellationToken,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        lock(&self.state)
    }

    /// The end of the current refusal, if one is running.
    fn refusing_until(&self) -> Option<Instant> {
        self.lock().refuse_until.filter(|u| *u > Instant::now())
    }
}

/// A receiver's state: what it stored and recorded, and any faults of its own.
pub trait Store: Default + Send + 'static {
    /// Forgets the receiver's own faults; [`FaultyServer::clear_faults`] calls it.
    fn clear_faults(&mut self) {}
}

/// What a receiver's handlers see (the axum state): its options, its state and the faults.
pub struct Shared<O, S> {
    /// The receiver's options.
    pub options: O,
    store: Mutex<S>,
    faults: Mutex<Faults>,
    gate: Arc<Gate>,
}

impl<O, S> Shared<O, S> {
    /// The receiver's state.
    pub fn lock(&self) -> MutexGuard<'_, S> {
        lock(&self.store)
    }

    /// The injected answer for this request, if any.
    pub fn next_fault(&self) -> Option<Fault> {
        lock(&self.faults).answers.pop_front()
    }

    /// How late to answer this request: the next one-off delay, else the standing one.
    pub fn next_delay(&self) -> Duration {
        let mut faults = lock(&self.faults);
        let once = faults.delays.pop_front();
        once.unwrap_or(faults.delay)
    }
}

/// A running server; dropping it stops it.
pub struct FaultyServer<O, S> {
    addr: SocketAddr,
    shared: Arc<Shared<O, S>>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<O: Send + Sync + 'static, S: Store> FaultyServer<O, S> {
    /// Serves `routes` with `options` and an empty state on `127.0.0.1:0`, from a thread named
    /// `name`; returns at once (the port is bound, so connections wait in the backlog until
    /// the server thread accepts them). Request bodies are not limited in size: the receiver
    /// checks them.
    pub fn serve(name: &str, options: O, routes: Router<Arc<Shared<O, S>>>) -> FaultyServer<O, S> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        std_listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = std_listener.local_addr().expect("local addr");
        let gate = Arc::new(Gate {
            state: Mutex::new(GateState {
                refuse_until: None,
                listening: true,
                kill: CancellationToken::new(),
            }),
            refuse: Notify::new(),
        });
        let shared = Arc::new(Shared {
            options,
            store: Mutex::default(),
            faults: Mutex::new(Faults::default()),
            gate: gate.clone(),
        });
        let app = routes
            .layer(DefaultBodyLimit::disable())
            .with_state(shared.clone());
        let stop = CancellationToken::new();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("receiver runtime");
                    rt.block_on(async move {
                        let listener = TcpListener::from_std(std_listener).expect("tokio listener");
                        let listener = RefusingListener {
                            listener: Some(listener),
                            addr,
                            gate,
                        };
                        // Dropping the runtime on stop ends every connection task.
                        tokio::select! {
                            _ = axum::serve(listener, app).into_future() => {}
                            _ = stop.cancelled() => {}
                        }
                    });
                })
                .expect("spawn receiver thread")
        };
        FaultyServer {
            addr,
            shared,
            stop,
            thread: Some(thread),
        }
    }
}

impl<O, S: Store> FaultyServer<O, S> {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the value for the sink's `endpoint`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The receiver's options.
    pub fn options(&self) -> &O {
        &self.shared.options
    }

    /// The receiver's state.
    pub fn lock(&self) -> MutexGuard<'_, S> {
        self.shared.lock()
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.shared.faults)
    }

    /// The next `n` requests are answered 500 without storing anything.
    pub fn fail_next(&self, n: usize) {
        self.fail_next_with(n, 500);
    }

    /// The next `n` requests are answered `status` without storing anything.
    pub fn fail_next_with(&self, n: usize, status: u16) {
        let mut faults = self.faults();
        faults.answers.extend((0..n).map(|_| Fault::Status(status)));
    }

    /// The next `n` requests are answered 429 with this `Retry-After` value, as the backend's
    /// rate limiting does (neither Loki nor Elasticsearch sends `Retry-After` itself; proxies
    /// and hosted services in front of them do).
    pub fn throttle_next(&self, n: usize, retry_after: &str) {
        let mut faults = self.faults();
        faults.answers.extend((0..n).map(|_| Fault::Throttle {
            retry_after: retry_after.to_string(),
        }));
    }

    /// The next `n` requests are answered `delay` after they were stored.
    pub fn delay_next(&self, n: usize, delay: Duration) {
        self.faults().delays.extend((0..n).map(|_| delay));
    }

    /// Every answer from now on comes `delay` after the request was stored.
    pub fn set_delay(&self, delay: Duration) {
        self.faults().delay = delay;
    }

    /// Forgets pending injected answers and delays, and the receiver's own faults.
    pub fn clear_faults(&self) {
        *self.faults() = Faults::default();
        self.lock().clear_faults();
    }

    /// Closes the listening socket and every open connection now, so connections are refused,
    /// and listens on the same port again after `d`. Returns once the port is closed.
    pub fn refuse_connections_for(&self, d: Duration) {
        let gate = &self.shared.gate;
        {
            let mut state = gate.lock();
            state.refuse_until = Some(Instant::now() + d);
            let old = std::mem::replace(&mut state.kill, CancellationToken::new());
            old.cancel();
        }
        gate.refuse.notify_one();
        wait_for(
            Duration::from_secs(10),
            || (!self.is_listening()).then_some(()),
            || "the receiver did not close its port".to_string(),
        );
    }

    /// Whether the listening socket is open (false during a refusal).
    pub fn is_listening(&self) -> bool {
        self.shared.gate.lock().listening
    }
}

impl<O, S> Drop for FaultyServer<O, S> {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The listening side: closes its socket during a refusal and rebinds the same port after.
struct RefusingListener {
    listener: Option<TcpListener>,
    addr: SocketAddr,
    gate: Arc<Gate>,
}

impl axum::serve::Listener for RefusingListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        loop {
            if let Some(until) = self.gate.refusing_until() {
                if self.listener.take().is_some() {
                    self.gate.lock().listening = false;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = self.gate.refuse.notified() => {}
                }
                continue;
            }
            let listener = match &mut self.listener {
                Some(l) => l,
                empty @ None => match TcpListener::bind(self.addr).await {
                    Ok(l) => {
                        self.gate.lock().listening = true;
                        empty.insert(l)
                    }
                    Err(_) => {
                        // The old socket may linger a moment; the port is ours to take back.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            tokio::select! {
                r = TcpListener::accept(listener) => match r {
                    Ok((stream, peer)) => {
                        if self.gate.refusing_until().is_some() {
                            continue;
                        }
                        let kill = self.gate.lock().kill.clone();
                        return (Conn { inner: stream, kill: Box::pin(kill.cancelled_owned()) }, peer);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                },
                _ = self.gate.refuse.notified() => {}
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// A connection that fails every read and write once its kill token is cancelled, so a
/// refusal also ends keep-alive connections (hyper then closes the socket).
struct Conn {
    inner: TcpStream,
    kill: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Conn {
    fn killed(&mut self, cx: &mut Context<'_>) -> bool {
        self.kill.as_mut().poll(cx).is_ready()
    }
}

fn reset() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "receiver refusing connections",
    )
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.killed(cx) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
