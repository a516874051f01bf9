//! The OpenMetrics 1.0 text exposition, with exemplars: what `/metrics` serves to a scraper
//! that asks for it (`Accept: application/openmetrics-text`, as Prometheus does).
//!
//! The `prometheus` crate writes only the 0.0.4 text format and keeps no exemplars, so this is
//! weir's own encoder over the families the crate gathers plus the exemplars the derive stage
//! keeps ([`crate::derive::exemplar`]). Like [`super::Exposition`] it yields the text in chunks
//! of at most [`super::CHUNK_SERIES`] series, and ends with `# EOF`.
//!
//! What it writes, per the OpenMetrics 1.0 specification:
//! - `# TYPE`, `# HELP` (escaped `\\`, `\n`, `\"`) and, for a family whose name ends in
//!   `_seconds` or `_bytes`, `# UNIT`.
//! - Counters as `NAME_total` samples, the family named without `_total`; gauges as they are;
//!   histograms as `_bucket` (with `le` as a float: `1.0`, `+Inf`), `_count`, `_sum`;
//!   summaries as quantiles, `_count`, `_sum`.
//! - No `_created` samples: weir keeps no creation time per series, and they are optional.
//! - Exemplars after counter samples and histogram buckets: ` # {trace_id="..."} VALUE
//!   TIMESTAMP` (seconds since the epoch). A trace id is at most 64 bytes
//!   ([`crate::derive::exemplar::MAX_TRACE_ID_BYTES`]), under the spec's 128-character cap.

use std::fmt::Write as _;
use std::sync::Arc;

use prometheus::proto::{Metric, MetricFamily, MetricType};

use crate::derive::exemplar::{Exemplar, ExemplarStore, FamilyExemplars};

/// The Content-Type of the OpenMetrics exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics (a media range
/// `application/openmetrics-text` with a q above 0).
pub fn accepts_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/openmetrics-text") {
            return false;
        }
        parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .is_none_or(|(_, q)| q.trim().parse::<f64>().is_ok_and(|q| q > 0.0))
    })
}

/// The OpenMetrics text of `families`, in chunks (see the module docs), `# EOF` last.
pub struct OpenMetrics {
    families: std::vec::IntoIter<MetricFamily>,
    exemplars: ExemplarStore,
    /// The family being written (without its samples), its exemplars, the samples left, and
    /// whether its header is written.
    current: Option<Current>,
    done: bool,
}

struct Current {
    family: MetricFamily,
    exemplars: Option<Arc<FamilyExemplars>>,
    samples: std::vec::IntoIter<Metric>,
    header_written: bool,
}

impl OpenMetrics {
    pub fn new(families: Vec<MetricFamily>, exemplars: ExemplarStore) -> Self {
        OpenMetrics {
            families: families.into_iter(),
            exemplars,
            current: None,
            done: false,
        }
    }
}

impl Iterator for OpenMetrics {
    type Item = Result<String, prometheus::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            let cur = match &mut self.current {
                Some(c) => c,
                None => match self.families.next() {
                    Some(mut family) => {
                        let samples = family.take_metric().into_iter();
                        let exemplars = self.exemplars.family(family.name());
                        self.current.insert(Current {
                            family,
                            exemplars,
                            samples,
                            header_written: false,
                        })
                    }
                    None => {
                        self.done = true;
                        return Some(Ok("# EOF\n".to_string()));
                    }
                },
            };
            let chunk: Vec<Metric> = cur.samples.by_ref().take(super::CHUNK_SERIES).collect();
            if chunk.is_empty() {
                // A family without series writes nothing (`gather` leaves those out anyway).
                self.current = None;
                continue;
            }
            let mut text = String::new();
            if !cur.header_written {
                write_header(&cur.family, &mut text);
                cur.header_written = true;
            }
            for m in &chunk {
                write_metric(&cur.family, m, cur.exemplars.as_deref(), &mut text);
            }
            return Some(Ok(text));
        }
    }
}

/// The whole OpenMetrics text of `families` (tests, `--oneshot` style uses).
pub fn encode(families: Vec<MetricFamily>, exemplars: &ExemplarStore) -> String {
    OpenMetrics::new(families, exemplars.clone())
        .filter_map(Result::ok)
        .collect()
}

/// The family name: a counter's without `_total`.
fn family_name(f: &MetricFamily) -> &str {
    let name = f.name();
    match f.get_field_type() {
        MetricType::COUNTER => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    }
}

fn write_header(f: &MetricFamily, out: &mut String) {
    let name = family_name(f);
    let kind = match f.get_field_type() {
        MetricType::COUNTER => "counter",
        MetricType::GAUGE => "gauge",
        MetricType::HISTOGRAM => "histogram",
        MetricType::SUMMARY => "summary",
        MetricType::UNTYPED => "unknown",
    };
    let _ = writeln!(out, "# TYPE {name} {kind}");
    if let Some(unit) = ["seconds", "bytes"]
        .into_iter()
        .find(|u| name.strip_suffix(u).is_some_and(|rest| rest.ends_with('_')))
    {
        let _ = writeln!(out, "# UNIT {name} {unit}");
    }
    if !f.help().is_empty() {
        out.push_str("# HELP ");
        out.push_str(name);
        out.push(' ');
        escape(f.help(), out);
        out.push('\n');
    }
}

/// Escapes a label value or help text: `\\`, `\"`, `\n`.
fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A number as OpenMetrics writes it: `+Inf`, `-Inf`, `NaN`, else Rust's shortest form.
fn number(v: f64, out: &mut String) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

/// A bucket bound as a canonical float (`1.0`, not `1`), as the spec asks of `le`.
fn bound(v: f64, out: &mut String) {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{v:.1}");
    } else {
        number(v, out);
    }
}

/// `NAME{labels[,extra]}`.
fn series(name: &str, suffix: &str, m: &Metric, extra: Option<(&str, &str)>, out: &mut String) {
    out.push_str(name);
    out.push_str(suffix);
    let labels = m.get_label();
    if labels.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    let pairs = labels.iter().map(|l| (l.name(), l.value())).chain(extra);
    for (n, v) in pairs {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(n);
        out.push_str("=\"");
        escape(v, out);
        out.push('"');
    }
    out.push('}');
}

fn exemplar(e: &Exemplar, out: &mut String) {
    out.push_str(" # {trace_id=\"");
    escape(&e.trace_id, out);
    out.push_str("\"} ");
    number(e.value, out);
    let secs = e.timestamp_ns.div_euclid(1_000_000_000);
    let nanos = e.timestamp_ns.rem_euclid(1_000_000_000);
    let _ = write!(out, " {secs}.{:03}", nanos / 1_000_000);
}

fn write_metric(f: &MetricFamily, m: &Metric, ex: Option<&FamilyExemplars>, out: &mut String) {
    let name = family_name(f);
    let slots = ex.and_then(|ex| ex.find(m.get_label().iter().map(|l| (l.name(), l.value()))));
    match f.get_field_type() {
        MetricType::COUNTER => {
            series(name, "_total", m, None, out);
            out.push(' ');
            number(m.get_counter().get_value(), out);
            if let Some(e) = slots.as_ref().and_then(|s| s.get(0)) {
                exemplar(&e, out);
            }
            out.push('\n');
        }
        MetricType::GAUGE => {
            series(name, "", m, None, out);
            out.push(' ');
            number(m.get_gauge().get_value(), out);
            out.push('\n');
        }
        // No collector of weir makes untyped samples, and the crate's proto gives no reader of
        // their value: the family is declared `unknown`, without samples.
        MetricType::UNTYPED => {}
        MetricType::HISTOGRAM => {
            let h = m.get_histogram();
            let mut le = String::new();
            let mut has_inf = false;
            for (i, b) in h.get_bucket().iter().enumerate() {
                le.clear();
                bound(b.upper_bound(), &mut le);
                has_inf |= b.upper_bound() == f64::INFINITY;
                series(name, "_bucket", m, Some(("le", &le)), out);
                let _ = write!(out, " {}", b.cumulative_count());
                if let Some(e) = slots.as_ref().and_then(|s| s.get(i)) {
                    exemplar(&e, out);
                }
                out.push('\n');
            }
            if !has_inf {
                series(name, "_bucket", m, Some(("le", "+Inf")), out);
                let _ = write!(out, " {}", h.get_sample_count());
                let last = h.get_bucket().len();
                if let Some(e) = slots.as_ref().and_then(|s| s.get(last)) {
                    exemplar(&e, out);
                }
                out.push('\n');
            }
            series(name, "_count", m, None, out);
            let _ = writeln!(out, " {}", h.get_sample_count());
            series(name, "_sum", m, None, out);
            out.push(' ');
            number(h.get_sample_sum(), out);
            out.push('\n');
        }
        MetricType::SUMMARY => {
            let s = m.get_summary();
            let mut q = String::new();
            for quantile in s.get_quantile() {
                q.clear();
                number(quantile.quantile(), &mut q);
                series(name, "", m, Some(("quantile", &q)), out);
                out.push(' ');
                number(quantile.value(), out);
                out.push('\n');
            }
            series(name, "_count", m, None, out);
            let _ = writeln!(out, " {}", s.sample_count());
            series(name, "_sum", m, None, out);
            out.push(' ');
            number(s.sample_sum(), out);
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::derive::exemplar::FamilyExemplars;
    use prometheus::{CounterVec, Gauge, HistogramOpts, HistogramVec, Opts, Registry};

    #[test]
    fn accept_headers() {
        assert!(accepts_openmetrics(
            "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        ));
        assert!(accepts_openmetrics("application/openmetrics-text"));
        assert!(!accepts_openmetrics("text/plain; version=0.0.4"));
        assert!(!accepts_openmetrics("*/*"));
        assert!(!accepts_openmetrics("application/openmetrics-text; q=0"));
        assert!(!accepts_openmetrics(""));
    }

    /// A counter, a gauge and a histogram with exemplars, in the exact OpenMetrics text.
    #[test]
    fn exact_text_with_exemplars_and_escaping() {
        let reg = Registry::new();
        let c = CounterVec::new(Opts::new("jobs_total", "Jobs \"done\"\\\nnow."), &["v"]).unwrap();
        let g = Gauge::new("depth", "Depth.").unwrap();
        let h = HistogramVec::new(
            HistogramOpts::new("task_duration_seconds", "Task time.").buckets(vec![0.5, 2.0]),
            &["agent"],
        )
        .unwrap();
        reg.register(Box::new(c.clone())).unwrap();
        reg.register(Box::new(g.clone())).unwrap();
        reg.register(Box::new(h.clone())).unwrap();
        let store = ExemplarStore::default();
        let ce = Arc::new(FamilyExemplars::new(vec!["v".into()], 0));
        let he = Arc::new(FamilyExemplars::new(vec!["agent".into()], 2));
        store.install("jobs_total", ce.clone());
        store.install("task_duration_seconds", he.clone());

        let odd = "a \"q\" \\ b\n";
        c.with_label_values(&[odd]).inc_by(3.0);
        ce.add(&[odd])
            .record(&[], 1.0, "t-\"1\"", 1_700_000_000_250_000_000);
        g.set(4.5);
        let hs = h.with_label_values(&["a1"]);
        let slots = he.add(&["a1"]);
        for (v, t) in [(0.25, "t-low"), (1.0, "t-mid"), (3.0, "t-high")] {
            hs.observe(v);
            slots.record(&[0.5, 2.0], v, t, 1_700_000_001_000_000_000);
        }
        assert_eq!(
            encode(reg.gather(), &store),
            concat!(
                "# TYPE depth gauge\n",
                "# HELP depth Depth.\n",
                "depth 4.5\n",
                "# TYPE jobs counter\n",
                "# HELP jobs Jobs \\\"done\\\"\\\\\\nnow.\n",
                "jobs_total{v=\"a \\\"q\\\" \\\\ b\\n\"} 3 # {trace_id=\"t-\\\"1\\\"\"} 1 1700000000.250\n",
                "# TYPE task_duration_seconds histogram\n",
                "# UNIT task_duration_seconds seconds\n",
                "# HELP task_duration_seconds Task time.\n",
                "task_duration_seconds_bucket{agent=\"a1\",le=\"0.5\"} 1 # {trace_id=\"t-low\"} 0.25 1700000001.000\n",
                "task_duration_seconds_bucket{agent=\"a1\",le=\"2.0\"} 2 # {trace_id=\"t-mid\"} 1 1700000001.000\n",
                "task_duration_seconds_bucket{agent=\"a1\",le=\"+Inf\"} 3 # {trace_id=\"t-high\"} 3 1700000001.000\n",
                "task_duration_seconds_count{agent=\"a1\"} 3\n",
                "task_duration_seconds_sum{agent=\"a1\"} 4.25\n",
                "# EOF\n",
            )
        );
    }

    /// `/metrics` serves OpenMetrics to Prometheus' Accept header, 0.0.4 to anything else.
    #[tokio::test]
    async fn the_handler_negotiates() {
        use axum::body::Body;
        use axum::http::{header, Request};
        use tower::ServiceExt;
        let state =
            crate::server::AppState::new(Registry::new(), crate::telemetry::SelfMetrics::new());
        let app = crate::server::public_router(
            state,
            &crate::server::WebConfig::default(),
            crate::server::Limits::default(),
        );
        let get = |accept: &str| {
            Request::get("/metrics")
                .header(header::ACCEPT, accept)
                .body(Body::empty())
                .unwrap()
        };
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        let res = app.clone().oneshot(get(prometheus)).await.unwrap();
        assert_eq!(res.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        let body = axum::body::to_bytes(res.into_body(), 1 << 22)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.ends_with("\n# EOF\n"), "{text}");
        assert!(
            text.contains("# TYPE weir_parse_errors counter\n"),
            "{text}"
        );
        assert!(text.contains("weir_parse_errors_total{reason=\"invalid_json\"} 0\n"));
        let res = app.oneshot(get("text/plain")).await.unwrap();
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let body = axum::body::to_bytes(res.into_body(), 1 << 22)
            .await
            .unwrap();
        assert!(!String::from_utf8_lossy(&body).contains("# EOF"));
    }

    /// Many series come in several chunks that join to one family (one `# TYPE`), `# EOF` once.
    #[test]
    fn chunks_join_with_one_header_and_one_eof() {
        let reg = Registry::new();
        let c = CounterVec::new(Opts::new("n_total", "N."), &["id"]).unwrap();
        reg.register(Box::new(c.clone())).unwrap();
        for i in 0..1_000 {
            c.with_label_values(&[&format!("id-{i}")]).inc();
        }
        let chunks: Vec<String> = OpenMetrics::new(reg.gather(), ExemplarStore::default())
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(chunks.len() > 1_000 / super::super::CHUNK_SERIES);
        let text = chunks.concat();
        assert_eq!(text.matches("# TYPE n counter\n").count(), 1);
        assert_eq!(text.matches("n_total{id=").count(), 1_000);
        assert!(text.ends_with("n_total{id=\"id-999\"} 1\n# EOF\n") || text.ends_with("# EOF\n"));
        assert_eq!(text.matches("# EOF").count(), 1);
    }
}
