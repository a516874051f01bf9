//! The HTTP surface, split in two listeners by what a caller may learn or do.
//!
//! - **Public** (`--listen`, default `0.0.0.0:9090`): `/metrics` (Prometheus text format
//!   0.0.4; OpenMetrics 1.0 with exemplars when asked for, see [`openmetrics`]), `/health`,
//!   `/ready`, `/alerts` (the pending and firing alerts: names, labels, values — what
//!   Prometheus' own `/alerts` shows anyone who can scrape it), `/` and `/status.json` (the
//!   status page and its data: counts, metric names, series counts, alerts, never a log line;
//!   see [`status`]). TLS and basic auth from `--web-config-file` ([`web_config`], the
//!   exporter-toolkit's format) guard all of them but `/health` and `/ready`, which answer
//!   without credentials (liveness probes carry none; they tell nothing).
//! - **Admin** (`--admin-listen`, default `127.0.0.1:9190`, or `unix:/path`, or `off`): `/tap`
//!   (raw log lines, see [`crate::tap`]), `/stats` (for `weir top`), `POST /-/reload`, and the
//!   status page `/` and `/status.json` as on the public listener (plus a link to `/stats`).
//!   Local by default, as Vector's API; an optional bearer token (`--admin-token-env`). The
//!   public listener answers 404 for `/tap`, `/stats` and `/-/reload`: no raw log line and no
//!   control there.
//!
//! Both are served by [`listener`]: connection cap with eviction of idle connections, header
//! and write deadlines; per request here: a handler deadline and a body cap.
//!
//! The derived metrics and weir's own live in two registries (so a pipeline can never shadow a
//! `weir_*` name); `/metrics` encodes both. Handlers only read atomics: a scrape never blocks the
//! pipeline.

pub mod auth;
pub mod listener;
pub mod openmetrics;
pub mod status;
pub mod web_config;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::proto::{Metric, MetricFamily};
use prometheus::{Registry, TextEncoder};
use tokio_util::sync::CancellationToken;

use crate::alert::engine::SharedView;
use crate::telemetry::SelfMetrics;

pub use listener::Limits;
pub use web_config::WebConfig;

/// The default admin address: local only, and clear of the ports the deployment kit publishes
/// (docker-compose maps weir's 9090 to 9091 on the host).
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9190";
/// The largest request body accepted (no endpoint reads one; `POST /-/reload` needs none).
pub const MAX_BODY_BYTES: u64 = 64 * 1024;

/// Where the admin listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddr {
    Tcp(SocketAddr),
    /// `unix:/path`: a unix socket, mode 0600 (weir's user only).
    Unix(std::path::PathBuf),
}

impl AdminAddr {
    /// `HOST:PORT` or `unix:/path`.
    pub fn parse(text: &str) -> Result<AdminAddr, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, e.g. unix:/run/weir/admin.sock".into());
            }
            return Ok(AdminAddr::Unix(path.into()));
        }
        text.parse()
            .map(AdminAddr::Tcp)
            .map_err(|_| format!("{text:?}: expected HOST:PORT, unix:/path or off"))
    }
}

impl std::fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminAddr::Tcp(a) => write!(f, "{a}"),
            AdminAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// How a client reaches the admin listener at `addr` (`HOST:PORT` or `unix:/path`): the
/// client builder (set to the socket for `unix:`) and the base URL of the requests.
pub fn admin_client(addr: &str) -> (reqwest::ClientBuilder, String) {
    match addr.strip_prefix("unix:") {
        Some(path) => (
            reqwest::Client::builder().unix_socket(std::path::PathBuf::from(path)),
            "http://localhost".to_string(),
        ),
        None => (reqwest::Client::builder(), format!("http://{addr}")),
    }
}

/// How the two listeners are set up (from the command line).
#[derive(Default)]
pub struct HttpOptions {
    /// The admin listener's address; `None`: no admin listener.
    pub admin: Option<AdminAddr>,
    /// TLS, basic auth and headers of the public listener.
    pub web: WebConfig,
    /// The bearer token the admin listener requires, if any.
    pub admin_token: Option<Arc<auth::BearerToken>>,
    pub limits: Limits,
}

impl std::fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOptions")
            .field("admin", &self.admin)
            .field("web", &self.web)
            .field("admin_token", &self.admin_token.is_some())
            .field("limits", &self.limits)
            .finish()
    }
}

/// The running listeners.
pub struct Serving {
    pub public: SocketAddr,
    pub admin: Option<AdminAddr>,
    /// Ends when both listeners have stopped (after `stop`).
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds the public listener on `listen` and the admin listener (if any), and serves both
/// until `stop`.
pub async fn start(
    listen: SocketAddr,
    opts: HttpOptions,
    state: AppState,
    stop: CancellationToken,
) -> anyhow::Result<Serving> {
    let public = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let public_addr = public.local_addr()?;
    let bind_error = |addr: &AdminAddr| {
        format!("cannot listen on {addr} for the admin endpoints (--admin-listen ADDR or off)")
    };
    let (admin, admin_addr) = match &opts.admin {
        Some(addr @ AdminAddr::Tcp(a)) => {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| bind_error(addr))?;
            let bound = AdminAddr::Tcp(l.local_addr()?);
            (Some(listener::Bound::Tcp(l)), Some(bound))
        }
        Some(addr @ AdminAddr::Unix(path)) => {
            let l = bind_unix(path).with_context(|| bind_error(addr))?;
            (
                Some(listener::Bound::Unix(l, path.clone())),
                Some(addr.clone()),
            )
        }
        None => (None, None),
    };
    if let Some(AdminAddr::Tcp(a)) = &admin_addr {
        if !a.ip().is_loopback() && opts.admin_token.is_none() {
            tracing::warn!(addr = %a, "the admin endpoints (/tap shows raw log lines, /-/reload) \
                are reachable beyond this host without a token: set --admin-token-env");
        }
    }
    let metrics = listener::HttpMetrics::register(&state.selfm.registry);
    let tls = opts.web.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let public_app = public_router(state.clone(), &opts.web, opts.limits);
    let admin_app = admin_router(state, opts.admin_token.clone(), opts.limits);
    let limits = opts.limits;
    let task = tokio::spawn(async move {
        let public = listener::serve(
            listener::Bound::Tcp(public),
            "public",
            public_app,
            tls,
            limits,
            metrics.clone(),
            stop.clone(),
        );
        match admin {
            Some(l) => {
                let admin = listener::serve(l, "admin", admin_app, None, limits, metrics, stop);
                tokio::join!(public, admin);
            }
            None => public.await,
        }
    });
    Ok(Serving {
        public: public_addr,
        admin: admin_addr,
        task,
    })
}

/// Binds a unix socket at `path`, mode 0600. A socket file left by a weir that is gone (nobody
/// answers on it) is replaced; any other file there is an error.
fn bind_unix(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process answers on this socket",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

#[derive(Clone)]
pub struct AppState {
    pub derived: Registry,
    pub selfm: SelfMetrics,
    /// Set once the pipeline runs; cleared when it shuts down.
    pub ready: Arc<AtomicBool>,
    /// Pending and firing alerts; `None` when the pipeline has no alert rules.
    pub alerts: Option<SharedView>,
    /// Where `POST /-/reload` asks for a reload; `None` when weir runs the embedded pipeline.
    pub reload: Option<tokio::sync::mpsc::Sender<crate::reload::Request>>,
    /// `weir tap` subscriptions.
    pub tap: Option<Arc<crate::tap::TapHub>>,
    /// Parse problems' first sample lines, for the admin listener's status document.
    pub parse_report: Option<Arc<crate::parse::report::ParseReport>>,
}

impl AppState {
    /// A state serving `derived` and `selfm`, ready, with nothing else (alerts, reload, tap,
    /// parse report: off); the caller sets what it needs.
    pub fn new(derived: Registry, selfm: SelfMetrics) -> AppState {
        AppState {
            derived,
            selfm,
            ready: Arc::new(AtomicBool::new(true)),
            alerts: None,
            reload: None,
            tap: None,
            parse_report: None,
        }
    }
}

/// An error from a handler, as a 500 with its message.
pub struct AppError(anyhow::Error);

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, format!("{:#}", self.0)).into_response()
    }
}

impl<E: Into<anyhow::Error>> From<E> for AppError {
    fn from(e: E) -> Self {
        AppError(e.into())
    }
}

/// Series encoded per chunk of [`Exposition`].
const CHUNK_SERIES: usize = 256;

/// The exposition of the derived metrics followed by weir's own, as text chunks of at most
/// [`CHUNK_SERIES`] series each: `/metrics` streams them, so a scrape holds the gathered
/// samples and one chunk of text, never the whole text (a histogram's label values are repeated
/// on each of its bucket lines, so the text is many times the samples). What the samples can
/// hold is bounded by the metrics' caps (`max_series`, `max_label_value_bytes`).
pub struct Exposition {
    families: std::vec::IntoIter<MetricFamily>,
    /// The family being written (without its samples), the samples left, and whether its
    /// `# HELP`/`# TYPE` header is written.
    current: Option<(MetricFamily, std::vec::IntoIter<Metric>, bool)>,
}

impl Exposition {
    pub fn gather(derived: &Registry, selfm: &SelfMetrics) -> Self {
        let mut families = derived.gather();
        families.extend(selfm.registry.gather());
        Exposition {
            families: families.into_iter(),
            current: None,
        }
    }
}

impl Iterator for Exposition {
    type Item = Result<String, prometheus::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (family, samples, header_written) = match &mut self.current {
                Some(c) => c,
                None => {
                    let mut family = self.families.next()?;
                    let samples = family.take_metric().into_iter();
                    self.current.insert((family, samples, false))
                }
            };
            let chunk: Vec<Metric> = samples.by_ref().take(CHUNK_SERIES).collect();
            if chunk.is_empty() {
                self.current = None;
                continue;
            }
            let mut part = family.clone();
            part.set_metric(chunk);
            let continued = *header_written;
            if continued {
                // An empty help writes no `# HELP`; the `# TYPE` line is cut below.
                part.set_help(String::new());
            }
            *header_written = true;
            let mut text = String::new();
            if let Err(e) = TextEncoder::new().encode_utf8(&[part], &mut text) {
                return Some(Err(e));
            }
            if continued {
                let body = text.find('\n').map_or(text.len(), |at| at + 1);
                text.drain(..body);
            }
            return Some(Ok(text));
        }
    }
}

/// The whole exposition as one text (`--oneshot`, tests).
pub fn exposition(derived: &Registry, selfm: &SelfMetrics) -> Result<String, prometheus::Error> {
    Exposition::gather(derived, selfm).collect()
}

/// `GET /metrics`: OpenMetrics 1.0 with exemplars when the `Accept` header asks for it
/// (Prometheus does), else the 0.0.4 text format.
async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(openmetrics::accepts_openmetrics);
    if openmetrics {
        let mut families = state.derived.gather();
        families.extend(state.selfm.registry.gather());
        let chunks = openmetrics::OpenMetrics::new(families, state.selfm.exemplars.clone());
        return (
            [(header::CONTENT_TYPE, openmetrics::CONTENT_TYPE)],
            axum::body::Body::from_stream(futures_util::stream::iter(chunks)),
        )
            .into_response();
    }
    let chunks = Exposition::gather(&state.derived, &state.selfm);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        axum::body::Body::from_stream(futures_util::stream::iter(chunks)),
    )
        .into_response()
}

/// `GET /stats`: weir's self-metrics as JSON, for `weir top`.
async fn stats(State(state): State<AppState>) -> axum::Json<crate::top::Stats> {
    axum::Json(crate::top::Stats::gather(&state.selfm.registry))
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// `GET /alerts`: `{"alerts": [...]}`, the pending and firing alerts (rule, state, severity,
/// labels, value, threshold, summary, since when).
async fn alerts(State(state): State<AppState>) -> Response {
    let list = state
        .alerts
        .as_ref()
        .and_then(|v| v.read().ok().map(|v| v.clone()))
        .unwrap_or_default();
    axum::Json(serde_json::json!({ "alerts": list })).into_response()
}

/// `POST /-/reload`: compiles the pipeline file again and switches to it; 200 with what
/// changed, or 400 with where the file is wrong (the running pipeline is then unchanged).
async fn reload(State(state): State<AppState>) -> (StatusCode, String) {
    let Some(tx) = &state.reload else {
        return (
            StatusCode::BAD_REQUEST,
            "weir runs the embedded default pipeline: start it with --config FILE to reload\n"
                .into(),
        );
    };
    let (answer, rx) = tokio::sync::oneshot::channel();
    if tx.send(answer).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    match rx.await {
        Ok(Ok(msg)) => (StatusCode::OK, format!("{msg}\n")),
        Ok(Err(msg)) => (StatusCode::BAD_REQUEST, format!("{msg}\n")),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into()),
    }
}

#[derive(serde::Deserialize)]
struct TapQuery {
    filter: Option<String>,
    source: Option<String>,
    rate: Option<f64>,
}

/// `GET /tap?filter=EXPR&source=NAME&rate=N`: the events passing, as a stream of JSON lines
/// (see [`crate::tap`]); 400 with the column for a bad filter.
async fn tap(
    State(state): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<TapQuery>,
) -> Result<Response, crate::tap::TapError> {
    let hub = state.tap.as_ref().ok_or(crate::tap::TapError::Off)?;
    let rate = q.rate.unwrap_or(crate::tap::DEFAULT_RATE);
    let sub = hub.subscribe(q.filter.as_deref(), q.source, rate)?;
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(sub.into_stream()),
    )
        .into_response())
}

/// The public listener's routes: status page, metrics, health, readiness, alerts.
pub fn public_router(state: AppState, web: &WebConfig, limits: Limits) -> Router {
    let auth = web.basic_auth.clone();
    let headers = Arc::new(web.headers.clone());
    Router::new()
        .route("/", get(status::page))
        .route("/status.json", get(status::public_json))
        .route("/alerts", get(alerts))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(state)
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let auth = auth.clone();
                async move {
                    match &auth {
                        // Probes carry no credentials; these answers tell nothing.
                        Some(a)
                            if !matches!(req.uri().path(), "/health" | "/ready")
                                && !a.allows(req.headers()).await =>
                        {
                            (
                                StatusCode::UNAUTHORIZED,
                                [(header::WWW_AUTHENTICATE, "Basic realm=\"weir\"")],
                                "unauthorized\n",
                            )
                                .into_response()
                        }
                        _ => next.run(req).await,
                    }
                }
            },
        ))
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let headers = headers.clone();
                async move {
                    let mut res = next.run(req).await;
                    for (n, v) in headers.iter() {
                        res.headers_mut().insert(n.clone(), v.clone());
                    }
                    res
                }
            },
        ))
        .layer(axum::middleware::from_fn_with_state(limits, limit_requests))
}

/// The admin listener's routes: status page, tap, stats, reload; behind the bearer token if
/// one is set.
pub fn admin_router(
    state: AppState,
    token: Option<Arc<auth::BearerToken>>,
    limits: Limits,
) -> Router {
    Router::new()
        .route("/", get(status::page))
        .route("/status.json", get(status::admin_json))
        .route("/tap", get(tap))
        .route("/stats", get(stats))
        .route("/-/reload", axum::routing::post(reload))
        .route("/health", get(health))
        .with_state(state)
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let token = token.clone();
                async move {
                    match &token {
                        Some(t) if !t.allows(req.headers()) => (
                            StatusCode::UNAUTHORIZED,
                            [(header::WWW_AUTHENTICATE, "Bearer")],
                            "unauthorized: this weir's admin endpoints need \
                         Authorization: Bearer TOKEN (weir tap/top --admin-token-env VAR)\n",
                        )
                            .into_response(),
                        _ => next.run(req).await,
                    }
                }
            },
        ))
        .layer(axum::middleware::from_fn_with_state(limits, limit_requests))
}

/// Per request: a body cap (413) and a handler deadline (503), `/tap` streams excepted.
async fn limit_requests(State(limits): State<Limits>, req: Request, next: Next) -> Response {
    let too_big = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > MAX_BODY_BYTES)
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    if too_big {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request bodies are limited to {MAX_BODY_BYTES} bytes\n"),
        )
            .into_response();
    }
    if req.uri().path() == "/tap" {
        return next.run(req).await;
    }
    match tokio::time::timeout(limits.request_timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "request timed out\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    #[tokio::test]
    async fn metrics_health_and_ready() {
        let selfm = SelfMetrics::new();
        let derived = Registry::new();
        let c =
            prometheus::CounterVec::new(prometheus::Opts::new("x_total", "X."), &["v"]).unwrap();
        derived.register(Box::new(c.clone())).unwrap();
        c.with_label_values(&["a \"quoted\" \\ value\n"]).inc();
        let state = AppState::new(derived, selfm);
        state.ready.store(false, Ordering::Relaxed);
        let app = public_router(state.clone(), &WebConfig::default(), Limits::default());
        let res = app
            .clone()
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains("# TYPE x_total counter\n"), "{text}");
        assert!(
            text.contains("x_total{v=\"a \\\"quoted\\\" \\\\ value\\n\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("weir_parse_errors_total{reason=\"invalid_json\"} 0\n"),
            "{text}"
        );
        let res = app
            .clone()
            .oneshot(Request::get("/ready").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        state.ready.store(true, Ordering::Relaxed);
        let res = app
            .oneshot(Request::get("/ready").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    fn state() -> AppState {
        AppState::new(Registry::new(), SelfMetrics::new())
    }

    async fn status(app: &Router, req: Request<Body>) -> StatusCode {
        app.clone().oneshot(req).await.unwrap().status()
    }

    /// The public listener has no raw log line and no control: 404, as for any unknown path.
    #[tokio::test]
    async fn the_public_router_has_no_tap_stats_or_reload() {
        let app = public_router(state(), &WebConfig::default(), Limits::default());
        for path in ["/tap", "/stats"] {
            let req = Request::get(path).body(Body::empty()).unwrap();
            assert_eq!(status(&app, req).await, StatusCode::NOT_FOUND, "{path}");
        }
        let req = Request::post("/-/reload").body(Body::empty()).unwrap();
        assert_eq!(status(&app, req).await, StatusCode::NOT_FOUND);
        let admin = admin_router(state(), None, Limits::default());
        let req = Request::get("/stats").body(Body::empty()).unwrap();
        assert_eq!(status(&admin, req).await, StatusCode::OK);
        let req = Request::get("/metrics").body(Body::empty()).unwrap();
        assert_eq!(status(&admin, req).await, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn basic_auth_guards_all_but_the_probes() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let yaml = format!("basic_auth_users:\n  prom: '{hash}'\n");
        let web = WebConfig::from_text("w.yml".as_ref(), ".".as_ref(), &yaml).unwrap();
        let app = public_router(state(), &web, Limits::default());
        let get = |path: &str, auth: Option<&str>| {
            let mut r = Request::get(path);
            if let Some(a) = auth {
                r = r.header(header::AUTHORIZATION, a);
            }
            r.body(Body::empty()).unwrap()
        };
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let right = format!("Basic {}", b64("prom:pw"));
        let wrong = format!("Basic {}", b64("prom:nope"));
        let res = app.clone().oneshot(get("/metrics", None)).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            res.headers()[header::WWW_AUTHENTICATE],
            "Basic realm=\"weir\""
        );
        assert_eq!(
            status(&app, get("/metrics", Some(&wrong))).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(&app, get("/metrics", Some(&right))).await,
            StatusCode::OK
        );
        for path in ["/alerts", "/", "/status.json"] {
            assert_eq!(
                status(&app, get(path, None)).await,
                StatusCode::UNAUTHORIZED,
                "{path}"
            );
        }
        assert_eq!(
            status(&app, get("/status.json", Some(&right))).await,
            StatusCode::OK
        );
        assert_eq!(status(&app, get("/health", None)).await, StatusCode::OK);
        assert_eq!(status(&app, get("/ready", None)).await, StatusCode::OK);
    }

    #[tokio::test]
    async fn the_admin_token_is_required_when_set() {
        let token = Arc::new(auth::BearerToken::new("t0ken"));
        let app = admin_router(state(), Some(token), Limits::default());
        let req = Request::get("/stats").body(Body::empty()).unwrap();
        assert_eq!(status(&app, req).await, StatusCode::UNAUTHORIZED);
        let req = Request::get("/stats")
            .header(header::AUTHORIZATION, "Bearer t0ken")
            .body(Body::empty())
            .unwrap();
        assert_eq!(status(&app, req).await, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_large_body_is_refused() {
        let app = admin_router(state(), None, Limits::default());
        let req = Request::post("/-/reload")
            .header(header::CONTENT_LENGTH, MAX_BODY_BYTES + 1)
            .body(Body::from(vec![b'x'; MAX_BODY_BYTES as usize + 1]))
            .unwrap();
        assert_eq!(status(&app, req).await, StatusCode::PAYLOAD_TOO_LARGE);
    }

    /// A family of 1,000 series is written in chunks that, joined, are exactly what the
    /// encoder writes for the whole family (one `# HELP`, one `# TYPE`).
    #[test]
    fn chunks_join_to_the_whole_exposition() {
        let selfm = SelfMetrics::new();
        let derived = Registry::new();
        let h = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new("h_seconds", "H.").buckets(vec![1.0, 2.0]),
            &["id"],
        )
        .unwrap();
        derived.register(Box::new(h.clone())).unwrap();
        for i in 0..1_000 {
            h.with_label_values(&[&format!("id-{i}")]).observe(1.5);
        }
        let mut families = derived.gather();
        families.extend(selfm.registry.gather());
        let mut whole = String::new();
        TextEncoder::new()
            .encode_utf8(&families, &mut whole)
            .unwrap();
        let chunks: Vec<String> = Exposition::gather(&derived, &selfm)
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(chunks.len() >= 1_000 / CHUNK_SERIES, "{}", chunks.len());
        assert!(chunks.iter().all(|c| !c.is_empty()));
        // process_* (CPU seconds, memory) change between the two gathers: compared by name.
        let steady = |text: &str| -> String {
            text.lines()
                .map(|l| match l.strip_prefix("process_") {
                    Some(rest) => format!("process_{}", rest.split(' ').next().unwrap_or("")),
                    None => l.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(steady(&chunks.concat()), steady(&whole));
        assert_eq!(whole.matches("# TYPE h_seconds histogram\n").count(), 1);
    }
}
