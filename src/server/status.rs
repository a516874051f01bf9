//! The status page: `GET /` (one self-contained HTML page, compiled in) and `GET /status.json`
//! (what the page shows), on both listeners.
//!
//! # Why a JSON document of its own
//! The page needs weir's self-metrics (as `/stats` serves them for `weir top`), the derived
//! metrics' series counts and the alerts in one poll, without parsing the text exposition in a
//! browser. [`StatusDoc`] is built from the same registries and alerts view `/metrics` and
//! `/alerts` read, at the moment of the request: the handler reads atomics and the view's lock,
//! nothing else. Rates are computed by the page from two polls, as `weir top` does, so weir does
//! nothing per event for the page.
//!
//! # What each listener tells
//! The public document holds counts, names and labels only, which `/metrics` and `/alerts`
//! already show on the public listener (behind its basic auth). No raw log line is in it: those
//! stay on the admin listener, whose document adds the first sample line of each parse problem
//! (as the `--oneshot` summary and the live warnings show them). `listener` says which listener
//! served it, so the page links `/stats` and shows samples only where they exist.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus::proto::MetricType;
use serde::Serialize;

use super::AppState;
use crate::alert::engine::AlertView;
use crate::top::{Sample, Stats};

/// The page, served as is.
pub const PAGE: &str = include_str!("status.html");

/// Which listener serves the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Listener {
    Public,
    Admin,
}

/// `GET /status.json`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusDoc {
    pub version: &'static str,
    /// When the document was gathered, in seconds since the Unix epoch: the page divides the
    /// difference of two polls by the difference of these (not by its own clock, which a
    /// slow network or a headless browser's virtual time would skew).
    pub time_secs: f64,
    /// Seconds since weir started (from `process_start_time_seconds`; `None` off Linux).
    pub uptime_secs: Option<f64>,
    pub listener: Listener,
    /// weir's self-metrics (`weir_*`, `process_*`) as in [`Stats`].
    pub families: BTreeMap<String, Vec<Sample>>,
    /// The derived metrics, by name.
    pub derived: Vec<DerivedFamily>,
    /// The pending and firing alerts, as `/alerts` lists them.
    pub alerts: Vec<AlertView>,
    /// Admin listener only: the first line of each parse problem, by reason (cut to 200
    /// characters). Empty on the public listener.
    pub samples: BTreeMap<&'static str, SampleLine>,
}

/// A parse problem's first line and its source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleLine {
    pub source: String,
    pub line: String,
}

/// One derived metric family.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DerivedFamily {
    pub name: String,
    /// `counter`, `gauge`, `histogram`, `summary` or `untyped`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Label sets (a histogram's buckets are one series here, as in `weir_series`).
    pub series: usize,
}

impl StatusDoc {
    pub fn gather(state: &AppState, listener: Listener) -> StatusDoc {
        let stats = Stats::gather(&state.selfm.registry);
        let time_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let uptime_secs = stats
            .families
            .get("process_start_time_seconds")
            .and_then(|s| s.first())
            .map(|s| (time_secs - s.value).max(0.0));
        let derived = state
            .derived
            .gather()
            .iter()
            .map(|mf| DerivedFamily {
                name: mf.name().to_string(),
                kind: match mf.get_field_type() {
                    MetricType::COUNTER => "counter",
                    MetricType::GAUGE => "gauge",
                    MetricType::HISTOGRAM => "histogram",
                    MetricType::SUMMARY => "summary",
                    MetricType::UNTYPED => "untyped",
                },
                series: mf.get_metric().len(),
            })
            .collect();
        let alerts = state
            .alerts
            .as_ref()
            .and_then(|v| v.read().ok().map(|v| v.clone()))
            .unwrap_or_default();
        let mut samples = BTreeMap::new();
        if let (Listener::Admin, Some(report)) = (listener, &state.parse_report) {
            for &issue in crate::event::ParseIssue::ALL {
                if let Some(s) = report.sample(issue) {
                    let line = SampleLine {
                        source: s.source.clone(),
                        line: s.line.clone(),
                    };
                    samples.insert(issue.reason(), line);
                }
            }
        }
        StatusDoc {
            version: env!("CARGO_PKG_VERSION"),
            time_secs,
            uptime_secs,
            listener,
            families: stats.families,
            derived,
            alerts,
            samples,
        }
    }
}

/// `GET /`: the page.
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Inline script and style only; nothing from elsewhere.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'",
            ),
        ],
        PAGE,
    )
        .into_response()
}

/// `GET /status.json` on the public listener.
pub async fn public_json(State(state): State<AppState>) -> axum::Json<StatusDoc> {
    axum::Json(StatusDoc::gather(&state, Listener::Public))
}

/// `GET /status.json` on the admin listener.
pub async fn admin_json(State(state): State<AppState>) -> axum::Json<StatusDoc> {
    axum::Json(StatusDoc::gather(&state, Listener::Admin))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{admin_router, public_router, Limits, WebConfig};
    use crate::telemetry::SelfMetrics;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use prometheus::Registry;
    use tower::ServiceExt;

    async fn fetch(app: axum::Router, path: &str) -> (StatusCode, String) {
        let res = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), 1 << 22)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn both_listeners_serve_the_page_and_the_document() {
        let derived = Registry::new();
        let h = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new("d_seconds", "D."),
            &["id"],
        )
        .unwrap();
        derived.register(Box::new(h.clone())).unwrap();
        h.with_label_values(&["a"]).observe(1.0);
        h.with_label_values(&["b"]).observe(1.0);
        let state = AppState::new(derived, SelfMetrics::new());
        let public = public_router(state.clone(), &WebConfig::default(), Limits::default());
        let admin = admin_router(state, None, Limits::default());
        for (app, listener) in [(public, "public"), (admin, "admin")] {
            let (status, page) = fetch(app.clone(), "/").await;
            assert_eq!(status, StatusCode::OK);
            assert!(page.contains("<title>weir</title>"), "{page}");
            let (status, body) = fetch(app, "/status.json").await;
            assert_eq!(status, StatusCode::OK);
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["listener"], listener);
            assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
            assert_eq!(
                v["derived"],
                serde_json::json!([{"name": "d_seconds", "type": "histogram", "series": 2}])
            );
            assert!(
                v["families"]["weir_parse_errors_total"].is_array(),
                "{body}"
            );
            assert!(v["time_secs"].as_f64().is_some_and(|t| t > 0.0), "{body}");
        }
    }
}
