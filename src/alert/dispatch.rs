//! Dispatch: delivering notifications off the pipeline's path.
//!
//! # What
//! The alert engine runs on the processor thread and must never wait on the network. It hands
//! each [`Notification`] (firing, repeats while firing, resolved) to a [`DispatchHandle`], whose
//! [`DispatchHandle::send`] only appends it to a queue and returns. A [`Dispatcher`] owns one
//! tokio task per notifier that takes its queue in order and calls [`Notifier::send`], retrying
//! with [`crate::sink::driver::backoff`] as [`NotifyError`] allows.
//!
//! # Why
//! - **Off the path.** `send` takes a short `std` lock per addressed notifier, never awaits and
//!   never does I/O, so a slow, hanging or failing notifier cannot stall log processing.
//! - **Per-notifier isolation.** Each notifier has its own queue, task and position in its
//!   queue: a notifier that hangs or keeps failing holds up only its own notifications; the
//!   others go on delivering theirs.
//! - **Alertmanager refresh.** Alertmanager resolves an alert by itself once its `endsAt` (or
//!   its `resolve_timeout`, default 5m) has passed unless the alert is sent again, as
//!   Prometheus does every minute. So each Alertmanager notifier keeps the alerts firing for it
//!   (by fingerprint: a firing notification inserts or replaces, a resolved one removes) and
//!   sends them all again every [`DispatchOptions::alertmanager_resend`]. Every firing alert
//!   it posts (first, repeat or refresh) carries `endsAt` = now + 4 × `alertmanager_resend`,
//!   so three refreshes may fail before Alertmanager lets the alert go; resolved ones are sent
//!   as the engine made them.
//!
//! # Invariants
//! - **Order.** A notifier gets its notifications in the order `send` was called; nothing is
//!   merged or superseded (a firing still queued and its resolve are both sent). Alertmanager
//!   refreshes go between queued notifications, never inside one's retries.
//! - **Bounded.** A queue holds at most [`DispatchOptions::max_queue`] notifications waiting,
//!   besides the one being attempted; past that, the oldest waiting one is dropped.
//! - **Counted, never silent.** Every notification that reaches a known notifier ends in
//!   `weir_alert_notifications_total{notifier, result}` exactly once: `sent`; `failed` (a
//!   permanent error, or retried for over an hour); or `dropped` (queue full, sent after
//!   [`Dispatcher::shutdown`], or still queued when the shutdown deadline passed or the
//!   dispatcher was dropped). Alertmanager refreshes count as `sent`/`failed` too: each is a
//!   notification Alertmanager receives. Each failed attempt that is tried again counts in
//!   `weir_alert_notification_retries_total{notifier}`; `weir_alert_notification_queue`
//!   is the number waiting plus the one being attempted.
//! - **No retry limit while running**: the queue cap is the backpressure. A notification
//!   retried for more than [`GIVE_UP_AFTER`] is given up (failed), since it is stale by then.
//! - **No secrets in logs.** Logs name the notifier by its config name and quote
//!   [`NotifyError`]s, whose text never carries a URL or a header value; notifier URLs and the
//!   notifiers' `Debug` are never logged.
//! - **Ending.** [`Dispatcher::shutdown`] stops taking notifications and lets the queues drain
//!   until its deadline. When every [`DispatchHandle`] and the [`Dispatcher`] are dropped
//!   without it, the tasks stop at once and count what they still held as dropped.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::alert::notify::{Notification, Notifier, NotifyError, Status};
use crate::sink::driver::backoff;
use crate::sink::RequestConfig;
use crate::telemetry::SelfMetrics;

/// A notification still failing after being retried this long is given up (counted failed):
/// an alert an hour late is stale, and the queue behind it waits.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(3600);

/// The shortest Alertmanager refresh period taken, so a zero cannot spin.
const MIN_RESEND: Duration = Duration::from_millis(100);

/// How long each Alertmanager post of a firing alert holds, in refresh periods.
const VALIDITY_PERIODS: u32 = 4;

/// At most one log line per notifier this often about its full queue.
const OVERFLOW_LOG_EVERY: Duration = Duration::from_secs(10);

/// At most this many unknown notifier names are remembered (and warned about once each).
const MAX_WARNED_UNKNOWN: usize = 64;

/// How notifications are sent.
#[derive(Debug, Clone)]
pub struct DispatchOptions {
    /// Request timeout and retry backoff, as for sinks.
    pub request: RequestConfig,
    /// Notifications waiting per notifier, besides the one being attempted; past it the oldest
    /// waiting one is dropped (counted). At least 1. Default: 10000.
    pub max_queue: usize,
    /// How often the alerts firing are sent again to each Alertmanager notifier; each post of a
    /// firing alert holds for 4 times this. At least 100 ms. Default: 60 s.
    pub alertmanager_resend: Duration,
}

const fn default_max_queue() -> usize {
    10_000
}

const fn default_alertmanager_resend() -> Duration {
    Duration::from_secs(60)
}

impl Default for DispatchOptions {
    fn default() -> Self {
        DispatchOptions {
            request: RequestConfig::default(),
            max_queue: default_max_queue(),
            alertmanager_resend: default_alertmanager_resend(),
        }
    }
}

/// Owns the notifiers' tasks; see the module docs. Ends with [`Dispatcher::shutdown`].
pub struct Dispatcher {
    shared: Arc<Shared>,
    tasks: Vec<(String, JoinHandle<()>)>,
}

/// Where the alert engine hands its notifications: cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct DispatchHandle {
    shared: Arc<Shared>,
}

/// What the handles and the dispatcher share. When the last of them goes, the tasks stop.
struct Shared {
    /// In the order the notifiers were given.
    lanes: Vec<Arc<Lane>>,
    by_name: HashMap<String, usize>,
    warned_unknown: Mutex<HashSet<String>>,
    cancel: CancellationToken,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // No handle can send any more and no one can shut down: stop the tasks (they count
        // what they still hold as dropped).
        self.cancel.cancel();
    }
}

/// One notifier's queue, shared by the senders and its task.
struct Lane {
    name: String,
    max_queue: usize,
    state: Mutex<LaneState>,
    /// Woken on every push and on close; a wake with no waiter is kept for the next wait.
    wake: Notify,
    m: LaneMetrics,
}

struct LaneState {
    queue: VecDeque<Notification>,
    /// The task has taken a notification and is attempting it.
    in_flight: bool,
    /// Shut down (or the task ended): what is sent now is counted as dropped.
    closed: bool,
    /// Dropped for a full queue since the last log line about it.
    overflow_unlogged: u64,
    overflow_logged_at: Option<std::time::Instant>,
}

impl LaneState {
    /// Waiting plus the one being attempted: the queue gauge.
    fn pending(&self) -> i64 {
        i64::try_from(self.queue.len())
            .unwrap_or(i64::MAX)
            .saturating_add(i64::from(self.in_flight))
    }
}

/// The notifier's self-metric handles, looked up once.
struct LaneMetrics {
    sent: IntCounter,
    failed: IntCounter,
    dropped: IntCounter,
    retries: IntCounter,
    queue: IntGauge,
}

impl LaneMetrics {
    fn new(selfm: &SelfMetrics, name: &str) -> Self {
        LaneMetrics {
            sent: selfm.alert_notifications.with_label_values(&[name, "sent"]),
            failed: selfm
                .alert_notifications
                .with_label_values(&[name, "failed"]),
            dropped: selfm
                .alert_notifications
                .with_label_values(&[name, "dropped"]),
            retries: selfm.alert_notification_retries.with_label_values(&[name]),
            queue: selfm.alert_notification_queue.with_label_values(&[name]),
        }
    }
}

impl Lane {
    /// Locks the state whatever happened: every change under the lock is a single step, so a
    /// panic elsewhere leaves it consistent.
    fn lock(&self) -> MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `n` (dropping the oldest waiting one when full) or, once closed, drops it.
    fn push(&self, n: Notification) {
        let mut st = self.lock();
        if st.closed {
            drop(st);
            self.m.dropped.inc();
            tracing::debug!(notifier = %self.name, rule = %n.rule, "notification after shutdown; dropped");
            return;
        }
        let mut overflow_log = None;
        if st.queue.len() >= self.max_queue {
            st.queue.pop_front();
            self.m.dropped.inc();
            st.overflow_unlogged += 1;
            let now = std::time::Instant::now();
            if st
                .overflow_logged_at
                .is_none_or(|t| now.duration_since(t) >= OVERFLOW_LOG_EVERY)
            {
                overflow_log = Some(std::mem::take(&mut st.overflow_unlogged));
                st.overflow_logged_at = Some(now);
            }
        }
        st.queue.push_back(n);
        self.m.queue.set(st.pending());
        drop(st);
        self.wake.notify_one();
        if let Some(dropped) = overflow_log {
            tracing::warn!(
                notifier = %self.name,
                dropped,
                max_queue = self.max_queue,
                "notification queue full; dropped the oldest waiting notifications"
            );
        }
    }

    /// Takes no more notifications; the task delivers what is queued, then ends.
    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }
}

impl Dispatcher {
    /// Starts one tokio task per notifier on the current runtime. `notifiers`: (name, built
    /// notifier); a name given twice keeps its first notifier (the other is ignored, with a
    /// warning). The HTTP notifiers share one client whose timeout is
    /// `opts.request.timeout_secs`.
    ///
    /// # Panics
    /// Outside a tokio runtime (as `tokio::spawn`).
    pub fn start(
        notifiers: Vec<(String, Notifier)>,
        opts: DispatchOptions,
        selfm: &SelfMetrics,
    ) -> (DispatchHandle, Dispatcher) {
        Self::start_with(notifiers, opts, selfm, GIVE_UP_AFTER)
    }

    /// [`Dispatcher::start`] with the retry limit as a parameter, for tests.
    fn start_with(
        notifiers: Vec<(String, Notifier)>,
        opts: DispatchOptions,
        selfm: &SelfMetrics,
        give_up_after: Duration,
    ) -> (DispatchHandle, Dispatcher) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(opts.request.timeout_secs.max(1)))
            .build()
            .map_err(|e| {
                tracing::error!(error = %e, "cannot build an HTTP client; notifications will fail");
                e.to_string()
            });
        let resend = opts.alertmanager_resend.max(MIN_RESEND);
        let max_queue = opts.max_queue.max(1);
        let cancel = CancellationToken::new();
        let mut lanes = Vec::with_capacity(notifiers.len());
        let mut by_name = HashMap::with_capacity(notifiers.len());
        let mut tasks = Vec::with_capacity(notifiers.len());
        for (name, notifier) in notifiers {
            if by_name.contains_key(&name) {
                tracing::warn!(notifier = %name, "a notifier of this name is already started; ignoring the second");
                continue;
            }
            let m = LaneMetrics::new(selfm, &name);
            m.queue.set(0);
            let lane = Arc::new(Lane {
                name: name.clone(),
                max_queue,
                state: Mutex::new(LaneState {
                    queue: VecDeque::new(),
                    in_flight: false,
                    closed: false,
                    overflow_unlogged: 0,
                    overflow_logged_at: None,
                }),
                wake: Notify::new(),
                m,
            });
            by_name.insert(name.clone(), lanes.len());
            lanes.push(Arc::clone(&lane));
            let worker = Worker {
                lane,
                notifier,
                client: client.clone(),
                request: opts.request.clone(),
                resend,
                give_up_after,
                firing: BTreeMap::new(),
                next_refresh: Instant::now() + resend,
            };
            tasks.push((name, tokio::spawn(worker.run(cancel.clone()))));
        }
        let shared = Arc::new(Shared {
            lanes,
            by_name,
            warned_unknown: Mutex::new(HashSet::new()),
            cancel,
        });
        (
            DispatchHandle {
                shared: Arc::clone(&shared),
            },
            Dispatcher { shared, tasks },
        )
    }

    /// Stops taking new notifications (later sends are counted as dropped) and waits until
    /// every queue is delivered or `deadline` passes. Then what is still queued or being
    /// attempted is counted as dropped and logged with its count, per notifier.
    pub async fn shutdown(self, deadline: Duration) {
        let Dispatcher { shared, tasks } = self;
        for lane in &shared.lanes {
            lane.close();
        }
        let mut tasks: Vec<(String, Option<JoinHandle<()>>)> =
            tasks.into_iter().map(|(n, t)| (n, Some(t))).collect();
        let drained = tokio::time::timeout(deadline, join_all(&mut tasks))
            .await
            .is_ok();
        if !drained {
            let busy: Vec<&str> = tasks
                .iter()
                .filter(|(_, t)| t.is_some())
                .map(|(n, _)| n.as_str())
                .collect();
            tracing::warn!(
                notifiers = ?busy,
                deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
                "notifiers still busy at the shutdown deadline; dropping what they hold"
            );
            // Each task stops at its next await, counts and logs what it held.
            shared.cancel.cancel();
            join_all(&mut tasks).await;
        }
    }
}

/// Awaits each task still in `tasks`, emptying its slot once it has ended.
async fn join_all(tasks: &mut [(String, Option<JoinHandle<()>>)]) {
    for (name, slot) in tasks.iter_mut() {
        if let Some(task) = slot.as_mut() {
            if let Err(e) = task.await {
                tracing::error!(notifier = %name, error = %e, "notifier task failed");
            }
            *slot = None;
        }
    }
}

impl DispatchHandle {
    /// Queues `n` for each notifier named in `to` (a name given twice counts once). Never
    /// blocks, never awaits: callable from synchronous code on any thread. Unknown names are
    /// ignored, with a warning the first time each is seen.
    pub fn send(&self, to: &[String], n: Notification) {
        let mut targets: Vec<&Lane> = Vec::with_capacity(to.len());
        for (i, name) in to.iter().enumerate() {
            if to[..i].contains(name) {
                continue;
            }
            match self.shared.by_name.get(name) {
                Some(&idx) => targets.push(&self.shared.lanes[idx]),
                None => self.warn_unknown(name),
            }
        }
        if let Some((last, rest)) = targets.split_last() {
            for lane in rest {
                lane.push(n.clone());
            }
            last.push(n);
        }
    }

    /// Names of the notifiers, in the order they were started.
    pub fn names(&self) -> Vec<String> {
        self.shared.lanes.iter().map(|l| l.name.clone()).collect()
    }

    fn warn_unknown(&self, name: &str) {
        let first = {
            let mut warned = self
                .shared
                .warned_unknown
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            !warned.contains(name)
                && warned.len() < MAX_WARNED_UNKNOWN
                && warned.insert(name.to_string())
        };
        if first {
            tracing::warn!(notifier = %name, "notification for an unknown notifier; ignored");
        }
    }
}

/// How one notification's delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Sent,
    /// A permanent error: sending the same again fails again.
    Rejected,
    /// Retried for longer than the limit.
    GaveUp,
}

/// What a notifier's task does next.
enum Step {
    Refresh,
    /// Boxed: a notification is large beside the other steps.
    Deliver(Box<Notification>),
    Wait,
    Done,
}

/// One notifier's task: its queue, its notifier and, for Alertmanager, the alerts firing.
struct Worker {
    lane: Arc<Lane>,
    notifier: Notifier,
    /// Shared by all tasks; an error (no TLS backend) fails every notification.
    client: Result<reqwest::Client, String>,
    request: RequestConfig,
    resend: Duration,
    give_up_after: Duration,
    /// Alertmanager only: the alerts firing, by fingerprint, as last received.
    firing: BTreeMap<String, Notification>,
    next_refresh: Instant,
}

impl Worker {
    async fn run(mut self, cancel: CancellationToken) {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {}
            _ = self.work() => {}
        }
        self.abandon();
    }

    /// Delivers the queue in order (and refreshes Alertmanager) until closed and drained.
    async fn work(&mut self) {
        loop {
            let step = {
                let mut st = self.lane.lock();
                if !st.closed && self.refresh_due() {
                    Step::Refresh
                } else if let Some(n) = st.queue.pop_front() {
                    st.in_flight = true;
                    self.lane.m.queue.set(st.pending());
                    Step::Deliver(Box::new(n))
                } else if st.closed {
                    Step::Done
                } else {
                    Step::Wait
                }
            };
            match step {
                Step::Refresh => self.refresh().await,
                Step::Deliver(n) => {
                    self.process(*n).await;
                    let mut st = self.lane.lock();
                    st.in_flight = false;
                    self.lane.m.queue.set(st.pending());
                }
                Step::Done => return,
                Step::Wait => {
                    let refresh_at = (!self.firing.is_empty()).then_some(self.next_refresh);
                    tokio::select! {
                        _ = self.lane.wake.notified() => {}
                        _ = sleep_until(refresh_at) => {}
                    }
                }
            }
        }
    }

    /// Ended before its queue was delivered: counts what is left as dropped, and takes no
    /// more.
    fn abandon(&mut self) {
        let left = {
            let mut st = self.lane.lock();
            let left = st.queue.len() as u64 + u64::from(st.in_flight);
            st.queue.clear();
            st.in_flight = false;
            st.closed = true;
            self.lane.m.queue.set(0);
            left
        };
        if left > 0 {
            self.lane.m.dropped.inc_by(left);
            tracing::warn!(
                notifier = %self.lane.name,
                dropped = left,
                "notifier stopped with notifications unsent; counted as dropped"
            );
        }
    }

    fn is_alertmanager(&self) -> bool {
        matches!(self.notifier, Notifier::Alertmanager(_))
    }

    fn refresh_due(&self) -> bool {
        !self.firing.is_empty() && Instant::now() >= self.next_refresh
    }

    /// One queued notification: keeps Alertmanager's firing set, then delivers it.
    async fn process(&mut self, mut n: Notification) {
        if self.is_alertmanager() {
            match n.status {
                Status::Firing => {
                    if self.firing.is_empty() {
                        // This post holds for 4 periods: the next refresh is one away.
                        self.next_refresh = Instant::now() + self.resend;
                    }
                    self.firing.insert(n.fingerprint.clone(), n.clone());
                }
                Status::Resolved => {
                    self.firing.remove(&n.fingerprint);
                }
            }
        }
        if self.deliver(&mut n).await == Delivery::Rejected && n.status == Status::Firing {
            // Refreshing it would be rejected the same way.
            self.firing.remove(&n.fingerprint);
        }
    }

    /// Sends every Alertmanager alert firing again, so that it does not expire there.
    async fn refresh(&mut self) {
        let alerts: Vec<Notification> = self.firing.values().cloned().collect();
        for mut n in alerts {
            if self.deliver(&mut n).await == Delivery::Rejected {
                self.firing.remove(&n.fingerprint);
            }
        }
        self.next_refresh = Instant::now() + self.resend;
    }

    /// Sends `n` until it is delivered, rejected, or has been retried for too long; counts
    /// the outcome and the retries.
    async fn deliver(&self, n: &mut Notification) -> Delivery {
        let started = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            if n.status == Status::Firing && self.is_alertmanager() {
                n.ends_at = Some(self.valid_until());
            }
            let result = match &self.client {
                Ok(client) => self.notifier.send(client, n).await,
                Err(reason) => Err(NotifyError::Permanent {
                    notifier: self.notifier.kind(),
                    reason: format!("no HTTP client: {reason}"),
                }),
            };
            let e = match result {
                Ok(()) => {
                    self.lane.m.sent.inc();
                    return Delivery::Sent;
                }
                Err(e) => e,
            };
            if !e.is_retryable() {
                self.lane.m.failed.inc();
                tracing::warn!(
                    notifier = %self.lane.name,
                    rule = %n.rule,
                    fingerprint = %n.fingerprint,
                    status = %n.status,
                    error = %e,
                    "notification rejected; not retried"
                );
                return Delivery::Rejected;
            }
            if started.elapsed() >= self.give_up_after {
                self.lane.m.failed.inc();
                tracing::warn!(
                    notifier = %self.lane.name,
                    rule = %n.rule,
                    fingerprint = %n.fingerprint,
                    status = %n.status,
                    attempts = u64::from(attempt) + 1,
                    error = %e,
                    "notification still failing after retrying for too long; given up"
                );
                return Delivery::GaveUp;
            }
            self.lane.m.retries.inc();
            let delay = backoff(&self.request, attempt, e.retry_after());
            let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            if attempt == 0 {
                tracing::warn!(notifier = %self.lane.name, rule = %n.rule, error = %e, retry_in_ms = delay_ms, "notification failed; retrying");
            } else {
                tracing::debug!(notifier = %self.lane.name, rule = %n.rule, error = %e, attempt, retry_in_ms = delay_ms, "notification failed again; retrying");
            }
            attempt = attempt.saturating_add(1);
            tokio::time::sleep(delay).await;
        }
    }

    /// The `endsAt` of a firing alert posted now: four refresh periods ahead.
    fn valid_until(&self) -> jiff::Timestamp {
        jiff::Timestamp::now()
            .checked_add(self.resend.saturating_mul(VALIDITY_PERIODS))
            .unwrap_or(jiff::Timestamp::MAX)
    }
}

/// Sleeps until `at`, or forever when `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::StatusCode;
    use serde_json::Value;

    use super::*;
    use crate::alert::notify::{sample, NotifierConfig};

    // -----------------------------------------------------------------------------------------
    // A receiver on 127.0.0.1 whose answers a test chooses.

    /// How the receiver answers one request.
    #[derive(Debug, Clone, Copy)]
    enum Reply {
        Status(u16),
        /// Never answers.
        Hang,
        /// Answers 200 once the gate is opened.
        Gated,
    }

    /// One request answered with a 2xx: a delivery.
    #[derive(Debug, Clone)]
    struct Received {
        at: jiff::Timestamp,
        body: Value,
    }

    type Policy = dyn Fn(usize, &Value) -> Reply + Send + Sync;

    #[derive(Clone)]
    struct RecvState {
        policy: Arc<Policy>,
        attempts: Arc<AtomicUsize>,
        got: Arc<Mutex<Vec<Received>>>,
        gate: Arc<tokio::sync::watch::Sender<bool>>,
    }

    struct Receiver {
        addr: SocketAddr,
        state: RecvState,
    }

    async fn receive(State(s): State<RecvState>, body: Bytes) -> StatusCode {
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let i = s.attempts.fetch_add(1, Ordering::SeqCst);
        let status = match (s.policy)(i, &body) {
            Reply::Status(code) => StatusCode::from_u16(code).expect("a valid status"),
            Reply::Hang => std::future::pending::<StatusCode>().await,
            Reply::Gated => {
                let mut open = s.gate.subscribe();
                let _ = open.wait_for(|o| *o).await;
                StatusCode::OK
            }
        };
        if status.is_success() {
            s.got.lock().expect("not poisoned").push(Received {
                at: jiff::Timestamp::now(),
                body,
            });
        }
        status
    }

    impl Receiver {
        async fn start(policy: impl Fn(usize, &Value) -> Reply + Send + Sync + 'static) -> Self {
            let state = RecvState {
                policy: Arc::new(policy),
                attempts: Arc::default(),
                got: Arc::default(),
                gate: Arc::new(tokio::sync::watch::channel(false).0),
            };
            let app = axum::Router::new()
                .fallback(receive)
                .with_state(state.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a port on 127.0.0.1");
            let addr = listener.local_addr().expect("bound");
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            Receiver { addr, state }
        }

        fn webhook(&self) -> Notifier {
            build(&format!(
                "type = \"webhook\"\nurl = \"http://{}/hook\"",
                self.addr
            ))
        }

        fn alertmanager(&self) -> Notifier {
            build(&format!(
                "type = \"alertmanager\"\nurl = \"http://{}\"",
                self.addr
            ))
        }

        fn attempts(&self) -> usize {
            self.state.attempts.load(Ordering::SeqCst)
        }

        fn got(&self) -> Vec<Received> {
            self.state.got.lock().expect("not poisoned").clone()
        }

        /// The webhook `message` (our summary) of each delivery, in order.
        fn messages(&self) -> Vec<String> {
            self.got()
                .iter()
                .map(|r| r.body["message"].as_str().unwrap_or_default().to_string())
                .collect()
        }

        fn open_gate(&self) {
            self.state.gate.send_replace(true);
        }
    }

    fn build(toml_text: &str) -> Notifier {
        toml::from_str::<NotifierConfig>(toml_text)
            .expect("the config parses")
            .build()
            .expect("the config builds")
    }

    fn opts(timeout_secs: u64) -> DispatchOptions {
        DispatchOptions {
            request: RequestConfig {
                timeout_secs,
                initial_backoff_ms: 20,
                max_backoff_ms: 200,
            },
            ..DispatchOptions::default()
        }
    }

    /// A firing notification whose summary (the webhook's `message`) is `n{i}`.
    fn note(i: usize) -> Notification {
        Notification {
            summary: format!("n{i}"),
            ..sample::firing()
        }
    }

    fn to(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn count(selfm: &SelfMetrics, name: &str, result: &str) -> u64 {
        selfm
            .alert_notifications
            .with_label_values(&[name, result])
            .get()
    }

    fn retries(selfm: &SelfMetrics, name: &str) -> u64 {
        selfm
            .alert_notification_retries
            .with_label_values(&[name])
            .get()
    }

    fn queued(selfm: &SelfMetrics, name: &str) -> i64 {
        selfm
            .alert_notification_queue
            .with_label_values(&[name])
            .get()
    }

    /// Polls `cond` every 10 ms; fails the test when it is still false after 15 s.
    async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while !cond() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // -----------------------------------------------------------------------------------------

    #[test]
    fn handle_is_cheap_to_share() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<DispatchHandle>();
        let d = DispatchOptions::default();
        assert_eq!(d.max_queue, 10_000);
        assert_eq!(d.alertmanager_resend, Duration::from_secs(60));
    }

    #[tokio::test]
    async fn retryable_errors_are_retried_until_delivered_once() {
        let r = Receiver::start(|i, _| Reply::Status(if i < 3 { 500 } else { 200 })).await;
        let selfm = SelfMetrics::new();
        let (h, d) = Dispatcher::start(vec![("hook".into(), r.webhook())], opts(5), &selfm);
        h.send(&to(&["hook"]), note(0));
        wait_until("the delivery", || count(&selfm, "hook", "sent") == 1).await;
        assert_eq!(r.messages(), ["n0"]);
        assert_eq!(r.attempts(), 4);
        assert_eq!(retries(&selfm, "hook"), 3);
        assert_eq!(count(&selfm, "hook", "failed"), 0);
        d.shutdown(Duration::from_secs(5)).await;
        assert_eq!(r.messages(), ["n0"], "delivered exactly once");
        assert_eq!(queued(&selfm, "hook"), 0);
    }

    /// The case, in real time and with the default retry settings (200 ms doubling to
    /// 30 s): a receiver that answers 500 for a whole minute gets the notification afterwards,
    /// once, within one maximal backoff of its recovery. (Takes 60 to 90 s.)
    #[tokio::test]
    async fn a_notifier_answering_500_for_a_minute_gets_it_through_afterwards() {
        const OUTAGE: Duration = Duration::from_secs(60);
        let first: Arc<Mutex<Option<std::time::Instant>>> = Arc::default();
        let first2 = first.clone();
        let r = Receiver::start(move |_, _| {
            let mut f = first2.lock().expect("not poisoned");
            let t0 = *f.get_or_insert_with(std::time::Instant::now);
            Reply::Status(if t0.elapsed() < OUTAGE { 500 } else { 200 })
        })
        .await;
        let selfm = SelfMetrics::new();
        let d = DispatchOptions::default();
        let max_backoff = Duration::from_millis(d.request.max_backoff_ms);
        let (h, d) = Dispatcher::start(vec![("hook".into(), r.webhook())], d, &selfm);
        h.send(&to(&["hook"]), note(0));
        let deadline = std::time::Instant::now() + OUTAGE + max_backoff + Duration::from_secs(15);
        while count(&selfm, "hook", "sent") == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "not delivered {:?} after the outage ended ({} attempts)",
                max_backoff + Duration::from_secs(15),
                r.attempts()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let t0 = first.lock().expect("not poisoned").expect("attempted");
        assert!(t0.elapsed() >= OUTAGE, "delivered during the outage");
        assert_eq!(r.messages(), ["n0"], "delivered exactly once");
        // Attempts during the outage are retries: spaced by the backoff, not hammering.
        let attempts = r.attempts();
        assert!((6..=14).contains(&attempts), "{attempts} attempts");
        assert_eq!(retries(&selfm, "hook"), attempts as u64 - 1);
        assert_eq!(count(&selfm, "hook", "failed"), 0);
        d.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_hung_notifier_blocks_neither_send_nor_the_others() {
        let slow = Receiver::start(|_, _| Reply::Hang).await;
        let fast = Receiver::start(|_, _| Reply::Status(200)).await;
        let selfm = SelfMetrics::new();
        let (h, d) = Dispatcher::start(
            vec![
                ("slow".into(), slow.webhook()),
                ("fast".into(), fast.webhook()),
            ],
            opts(1),
            &selfm,
        );
        h.send(&to(&["slow", "fast"]), note(0));
        wait_until("the slow receiver to hang", || slow.attempts() >= 1).await;

        // From plain synchronous code on another thread, while `slow` hangs.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let h2 = h.clone();
        let thread = std::thread::spawn(move || {
            for i in 1..=20 {
                h2.send(&to(&["slow", "fast"]), note(i));
            }
            let _ = done_tx.send(());
        });
        tokio::time::timeout(Duration::from_secs(5), done_rx)
            .await
            .expect("send returns while a notifier hangs")
            .expect("the thread finished");
        thread.join().expect("the sending thread did not panic");

        wait_until("the healthy notifier's deliveries", || {
            count(&selfm, "fast", "sent") == 21
        })
        .await;
        let want: Vec<String> = (0..=20).map(|i| format!("n{i}")).collect();
        assert_eq!(fast.messages(), want);
        assert!(slow.got().is_empty());
        assert_eq!(count(&selfm, "slow", "sent"), 0);
        // The hang ends in a timeout (1 s), which is retried.
        wait_until("a retry after the timeout", || retries(&selfm, "slow") >= 1).await;
        assert_eq!(queued(&selfm, "slow"), 21);
        d.shutdown(Duration::from_millis(100)).await;
        assert_eq!(count(&selfm, "slow", "dropped"), 21);
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_oldest_waiting() {
        let r = Receiver::start(|_, _| Reply::Gated).await;
        let selfm = SelfMetrics::new();
        let options = DispatchOptions {
            max_queue: 3,
            ..opts(30)
        };
        let (h, d) = Dispatcher::start(vec![("hook".into(), r.webhook())], options, &selfm);
        h.send(&to(&["hook"]), note(0));
        wait_until("the first attempt", || r.attempts() == 1).await;
        for i in 1..10 {
            h.send(&to(&["hook"]), note(i));
        }
        // n0 is being attempted; of n1..n9 the three newest wait.
        assert_eq!(count(&selfm, "hook", "dropped"), 6);
        assert_eq!(queued(&selfm, "hook"), 4);
        r.open_gate();
        wait_until("the deliveries", || count(&selfm, "hook", "sent") == 4).await;
        assert_eq!(r.messages(), ["n0", "n7", "n8", "n9"]);
        d.shutdown(Duration::from_secs(5)).await;
        assert_eq!(queued(&selfm, "hook"), 0);
        assert_eq!(count(&selfm, "hook", "dropped"), 6);
    }

    #[tokio::test]
    async fn a_queued_firing_and_its_resolve_are_both_sent_in_order() {
        let r = Receiver::start(|_, _| Reply::Gated).await;
        let selfm = SelfMetrics::new();
        let (h, d) = Dispatcher::start(vec![("hook".into(), r.webhook())], opts(30), &selfm);
        h.send(&to(&["hook"]), note(0));
        wait_until("the first attempt", || r.attempts() == 1).await;
        h.send(&to(&["hook"]), sample::firing());
        h.send(&to(&["hook"]), sample::resolved());
        r.open_gate();
        wait_until("the deliveries", || count(&selfm, "hook", "sent") == 3).await;
        let statuses: Vec<Value> = r.got().iter().map(|g| g.body["status"].clone()).collect();
        assert_eq!(statuses, ["firing", "firing", "resolved"]);
        d.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_permanent_error_fails_and_the_next_is_delivered() {
        let r = Receiver::start(|i, _| Reply::Status(if i == 0 { 400 } else { 200 })).await;
        let selfm = SelfMetrics::new();
        let (h, d) = Dispatcher::start(vec![("hook".into(), r.webhook())], opts(5), &selfm);
        h.send(&to(&["hook"]), note(0));
        h.send(&to(&["hook"]), note(1));
        wait_until("the second delivery", || count(&selfm, "hook", "sent") == 1).await;
        assert_eq!(count(&selfm, "hook", "failed"), 1);
        assert_eq!(retries(&selfm, "hook"), 0);
        assert_eq!(r.attempts(), 2);
        assert_eq!(r.messages(), ["n1"]);
        d.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_notification_retried_too_long_is_given_up() {
        let r = Receiver::start(|_, body| {
            Reply::Status(if body["message"] == "n0" { 503 } else { 200 })
        })
        .await;
        let selfm = SelfMetrics::new();
        let (h, d) = Dispatcher::start_with(
            vec![("hook".into(), r.webhook())],
            opts(5),
            &selfm,
            Duration::from_millis(200),
        );
        h.send(&to(&["hook"]), note(0));
        h.send(&to(&["hook"]), note(1));
        wait_until("the second delivery", || count(&selfm, "hook", "sent") == 1).await;
        assert_eq!(count(&selfm, "hook", "failed"), 1);
        assert!(retries(&selfm, "hook") >= 1);
        assert_eq!(r.messages(), ["n1"]);
        d.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn alertmanager_alerts_are_refreshed_until_resolved() {
        let r = Receiver::start(|_, _| Reply::Status(200)).await;
        let selfm = SelfMetrics::new();
        let options = DispatchOptions {
            alertmanager_resend: Duration::from_millis(300),
            ..opts(5)
        };
        let (h, d) = Dispatcher::start(vec![("am".into(), r.alertmanager())], options, &selfm);
        h.send(&to(&["am"]), sample::firing());
        wait_until("three posts", || r.got().len() >= 3).await;

        let firing = r.got();
        let mut last_end: Option<jiff::Timestamp> = None;
        for post in &firing {
            let alert = &post.body[0];
            assert_eq!(alert["labels"]["alertname"], "AgentTaskFailures");
            assert_eq!(alert["startsAt"], "2024-05-01T12:00:00Z");
            let ends: jiff::Timestamp = alert["endsAt"]
                .as_str()
                .expect("a firing post has endsAt")
                .parse()
                .expect("endsAt is a timestamp");
            // 4 × 300 ms after it was posted (less the time the post took to arrive).
            let ahead = ends.duration_since(post.at);
            assert!(
                ahead > jiff::SignedDuration::from_millis(600)
                    && ahead <= jiff::SignedDuration::from_millis(1200),
                "endsAt {ends} is {ahead:?} after the post"
            );
            assert!(last_end.is_none_or(|l| ends > l), "endsAt moves on");
            last_end = Some(ends);
        }

        h.send(&to(&["am"]), sample::resolved());
        let resolved_at = "2024-05-01T12:10:00Z";
        wait_until("the resolve", || {
            r.got().iter().any(|p| p.body[0]["endsAt"] == resolved_at)
        })
        .await;
        let posts = r.got().len();
        // Three refresh periods: a refresh would have come by now.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let all = r.got();
        assert_eq!(all.len(), posts, "no refresh after the resolve");
        assert_eq!(all[posts - 1].body[0]["endsAt"], resolved_at);
        assert_eq!(count(&selfm, "am", "sent"), posts as u64);
        d.shutdown(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn shutdown_delivers_what_is_queued() {
        let r = Receiver::start(|_, _| Reply::Status(200)).await;
        let selfm = SelfMetrics::new();
        let (h, d) = Dispatcher::start(vec![("hook".into(), r.webhook())], opts(5), &selfm);
        // On this single-threaded runtime the task has not run yet: both wait in the queue.
        h.send(&to(&["hook"]), note(0));
        h.send(&to(&["hook"]), note(1));
        d.shutdown(Duration::from_secs(10)).await;
        assert_eq!(r.messages(), ["n0", "n1"]);
        assert_eq!(count(&selfm, "hook", "sent"), 2);
        assert_eq!(count(&selfm, "hook", "dropped"), 0);
        // No longer taken, and counted.
        h.send(&to(&["hook"]), note(2));
        assert_eq!(count(&selfm, "hook", "dropped"), 1);
    }

    #[tokio::test]
    async fn shutdown_returns_by_its_deadline_and_counts_what_is_left() {
        let r = Receiver::start(|_, _| Reply::Hang).await;
        let selfm = SelfMetrics::new();
        let (h, d) = Dispatcher::start(vec![("hook".into(), r.webhook())], opts(30), &selfm);
        h.send(&to(&["hook"]), note(0));
        h.send(&to(&["hook"]), note(1));
        wait_until("the first attempt", || r.attempts() == 1).await;
        tokio::time::timeout(
            Duration::from_secs(10),
            d.shutdown(Duration::from_millis(200)),
        )
        .await
        .expect("shutdown returns soon after its deadline");
        assert_eq!(count(&selfm, "hook", "dropped"), 2);
        assert_eq!(count(&selfm, "hook", "sent"), 0);
        assert_eq!(queued(&selfm, "hook"), 0);
        h.send(&to(&["hook"]), note(2));
        assert_eq!(count(&selfm, "hook", "dropped"), 3);
    }

    #[tokio::test]
    async fn tasks_end_when_handle_and_dispatcher_are_dropped() {
        let r = Receiver::start(|_, _| Reply::Hang).await;
        let selfm = SelfMetrics::new();
        let (h, d) = Dispatcher::start(vec![("hook".into(), r.webhook())], opts(30), &selfm);
        let lane = Arc::downgrade(&h.shared.lanes[0]);
        h.send(&to(&["hook"]), note(0));
        wait_until("the first attempt", || r.attempts() == 1).await;
        let h2 = h.clone();
        drop(h);
        drop(d);
        // A handle left keeps the tasks going.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(lane.upgrade().is_some());
        drop(h2);
        wait_until("the task to end", || lane.upgrade().is_none()).await;
        assert_eq!(count(&selfm, "hook", "dropped"), 1);
    }

    #[tokio::test]
    async fn names_and_addressing() {
        let a = Receiver::start(|_, _| Reply::Status(200)).await;
        let b = Receiver::start(|_, _| Reply::Status(200)).await;
        let selfm = SelfMetrics::new();
        let (h, d) = Dispatcher::start(
            vec![
                ("a".into(), a.webhook()),
                ("b".into(), b.webhook()),
                ("a".into(), b.webhook()),
            ],
            opts(5),
            &selfm,
        );
        assert_eq!(h.names(), ["a", "b"]);
        h.send(&to(&["nope", "a", "a"]), note(0));
        h.send(&to(&["nope"]), note(1));
        h.send(&to(&[]), note(2));
        d.shutdown(Duration::from_secs(5)).await;
        assert_eq!(a.messages(), ["n0"]);
        assert!(b.messages().is_empty());
        assert_eq!(
            h.shared.warned_unknown.lock().expect("not poisoned").len(),
            1
        );
    }
}
