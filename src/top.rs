//! `weir top`: a running weir's own numbers, refreshed in place — events a second per source,
//! parse errors, what each sink delivers and holds, retries, channel fill, alerts, taps.
//!
//! # How
//! The numbers come from `GET /stats`: weir's self-metrics (`weir_*`) as JSON ([`Stats`]),
//! the values `/metrics` shows, without a text format for the client to parse. Rates are the
//! differences between two polls divided by the time between them, so the running weir does
//! no work for `weir top` between polls and nothing per event. The client ([`run`]) redraws the
//! screen when its output is a terminal and prints one frame after another otherwise (for
//! scripts and logs); [`render`] is a pure function of two polls, tested as such.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use prometheus::proto::MetricType;
use prometheus::Registry;
use serde::{Deserialize, Serialize};

/// weir's self-metrics at one instant: family name → samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub families: BTreeMap<String, Vec<Sample>>,
}

/// One series: its labels and value (a histogram gives its count as `NAME_count`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Stats {
    /// The counters and gauges of `registry` (histograms as their `_count`).
    pub fn gather(registry: &Registry) -> Stats {
        let mut families = BTreeMap::new();
        for mf in registry.gather() {
            let (name, kind) = (mf.name().to_string(), mf.get_field_type());
            let name = match kind {
                MetricType::HISTOGRAM => format!("{name}_count"),
                _ => name,
            };
            let samples = mf
                .get_metric()
                .iter()
                .filter_map(|m| {
                    let value = match kind {
                        MetricType::COUNTER => m.get_counter().get_value(),
                        MetricType::GAUGE => m.get_gauge().get_value(),
                        MetricType::HISTOGRAM => m.get_histogram().get_sample_count() as f64,
                        _ => return None,
                    };
                    let labels = m
                        .get_label()
                        .iter()
                        .map(|l| (l.name().to_string(), l.value().to_string()))
                        .collect();
                    Some(Sample { labels, value })
                })
                .collect();
            families.insert(name, samples);
        }
        Stats { families }
    }

    /// The family's values summed by one label (the others summed over).
    fn by(&self, family: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.families.get(family).into_iter().flatten() {
            let key = s.labels.get(label).cloned().unwrap_or_default();
            *out.entry(key).or_insert(0.0) += s.value;
        }
        out
    }

    /// The family's values summed.
    fn total(&self, family: &str) -> f64 {
        self.families
            .get(family)
            .into_iter()
            .flatten()
            .fold(0.0, |a, s| a + s.value)
    }

    fn label_of(&self, family: &str, label: &str) -> Option<String> {
        self.families
            .get(family)?
            .first()?
            .labels
            .get(label)
            .cloned()
    }
}

/// A counter's rate between two polls; `None` on the first poll or if it went down (weir
/// restarted in between).
fn rate(prev: Option<(&Stats, Duration)>, cur: f64, get: impl Fn(&Stats) -> f64) -> Option<f64> {
    let (p, dt) = prev?;
    let d = cur - get(p);
    (d >= 0.0 && dt > Duration::ZERO).then(|| d / dt.as_secs_f64())
}

fn fmt_rate(r: Option<f64>) -> String {
    match r {
        Some(r) if r >= 100.0 => format!("{r:.0}"),
        Some(r) => format!("{r:.1}"),
        None => "-".into(),
    }
}

fn fmt_bytes_rate(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r >= 1e6 => format!("{:.1} MB/s", r / 1e6),
        Some(r) if r >= 1e3 => format!("{:.1} kB/s", r / 1e3),
        Some(r) => format!("{r:.0} B/s"),
    }
}

/// One frame: `cur`, with rates against `prev` (the previous poll and the time since it).
pub fn render(addr: &str, prev: Option<(&Stats, Duration)>, cur: &Stats) -> String {
    let mut o = String::new();
    let version = cur
        .label_of("weir_build_info", "version")
        .unwrap_or_else(|| "?".into());
    let events = cur.total("weir_events_total");
    let _ = writeln!(
        o,
        "weir {version} at {addr}: {} events/s, {} events, {} series, {} taps open",
        fmt_rate(rate(prev, events, |s| s.total("weir_events_total"))),
        events,
        cur.total("weir_series"),
        cur.total("weir_taps_active"),
    );

    // Sources: what came in.
    let _ = writeln!(
        o,
        "\n{:<32} {:>10} {:>12} {:>12}",
        "SOURCE", "EVENTS/S", "EVENTS", "IN"
    );
    let bytes = cur.by("weir_bytes_total", "source");
    for (source, n) in cur.by("weir_events_total", "source") {
        let r = rate(prev, n, |s| {
            s.by("weir_events_total", "source")
                .get(&source)
                .copied()
                .unwrap_or(0.0)
        });
        let b = bytes.get(&source).copied().unwrap_or(0.0);
        let br = rate(prev, b, |s| {
            s.by("weir_bytes_total", "source")
                .get(&source)
                .copied()
                .unwrap_or(0.0)
        });
        let _ = writeln!(
            o,
            "{source:<32} {:>10} {n:>12} {:>12}",
            fmt_rate(r),
            fmt_bytes_rate(br)
        );
    }

    // Lines kept despite a problem, by reason (only reasons that happened).
    let errors: Vec<(String, f64)> = cur
        .by("weir_parse_errors_total", "reason")
        .into_iter()
        .chain(
            cur.by("weir_derive_errors_total", "reason")
                .into_iter()
                .map(|(r, n)| (format!("derive: {r}"), n)),
        )
        .filter(|(_, n)| *n > 0.0)
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(
            o,
            "\n{:<32} {:>10} {:>12}",
            "KEPT WITH A PROBLEM", "/S", "TOTAL"
        );
        for (reason, n) in errors {
            let r = rate(prev, n, |s| {
                let (fam, key) = match reason.strip_prefix("derive: ") {
                    Some(k) => ("weir_derive_errors_total", k),
                    None => ("weir_parse_errors_total", reason.as_str()),
                };
                s.by(fam, "reason").get(key).copied().unwrap_or(0.0)
            });
            let _ = writeln!(o, "{reason:<32} {:>10} {n:>12}", fmt_rate(r));
        }
    }

    // Sinks: what went out, what waits, what failed.
    let sinks = cur.by("weir_sink_events_total", "sink");
    if !sinks.is_empty() {
        let _ = writeln!(
            o,
            "\n{:<16} {:>10} {:>12} {:>9} {:>9} {:>9} {:>13} {:>8}",
            "SINK",
            "EVENTS/S",
            "EVENTS",
            "RETRIES",
            "ERRORS",
            "BUFFERED",
            "DEAD-LETTERED",
            "DROPPED"
        );
        let retries = cur.by("weir_sink_retries_total", "sink");
        let errs = cur.by("weir_sink_errors_total", "sink");
        let buffered = cur.by("weir_sink_buffer_events", "sink");
        let dead = cur.by("weir_sink_dead_lettered_total", "sink");
        let dropped = cur.by("weir_sink_dropped_total", "sink");
        let get = |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
        for (sink, n) in &sinks {
            let r = rate(prev, *n, |s| {
                get(&s.by("weir_sink_events_total", "sink"), sink)
            });
            let _ = writeln!(
                o,
                "{sink:<16} {:>10} {n:>12} {:>9} {:>9} {:>9} {:>13} {:>8}",
                fmt_rate(r),
                get(&retries, sink),
                get(&errs, sink),
                get(&buffered, sink),
                get(&dead, sink),
                get(&dropped, sink),
            );
        }
    }

    // Bounded channels between components: batches waiting.
    let fill = cur.by("weir_channel_fill", "channel");
    if !fill.is_empty() {
        let line: Vec<String> = fill.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let _ = writeln!(o, "\nBATCHES WAITING  {}", line.join(", "));
    }

    // Alerts: firing and pending now.
    let mut alerts: Vec<String> = Vec::new();
    for s in cur.families.get("weir_alerts_firing").into_iter().flatten() {
        if s.value > 0.0 {
            let rule = s.labels.get("rule").map_or("?", String::as_str);
            let sev = s.labels.get("severity").map_or("?", String::as_str);
            alerts.push(format!("{rule} ({sev}): {} firing", s.value));
        }
    }
    for (rule, n) in cur.by("weir_alerts_pending", "rule") {
        if n > 0.0 {
            alerts.push(format!("{rule}: {n} pending"));
        }
    }
    if !alerts.is_empty() {
        let _ = writeln!(o, "\nALERTS  {}", alerts.join("; "));
    }
    o
}

/// Options of `weir top`.
pub struct TopOptions {
    /// `HOST:PORT` or `unix:/path` of the running weir's admin listener.
    pub addr: String,
    /// Sent as `Authorization: Bearer TOKEN` (`--admin-token-env`).
    pub token: Option<String>,
    pub interval: Duration,
    /// Stop after this many frames.
    pub count: Option<u64>,
}

async fn poll(client: &reqwest::Client, base: &str, addr: &str) -> anyhow::Result<Stats> {
    let res = client
        .get(format!("{base}/stats"))
        .send()
        .await
        .with_context(|| format!("cannot reach weir at {addr}"))?;
    let status = res.status();
    anyhow::ensure!(
        status.is_success(),
        "weir at {addr} answered {status} to GET /stats"
    );
    let body = res
        .bytes()
        .await
        .with_context(|| format!("weir at {addr}: GET /stats broke off"))?;
    serde_json::from_slice(&body)
        .with_context(|| format!("weir at {addr}: GET /stats is not weir's statistics"))
}

/// Polls `GET /stats` every interval and prints a frame, until `count` frames, Ctrl-C, or
/// weir goes away (an error).
pub async fn run(opts: TopOptions) -> anyhow::Result<()> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = &opts.token {
        let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
            .context("the admin token is not a valid header value")?;
        v.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    let (client, base) = crate::server::admin_client(&opts.addr);
    let client = client
        .timeout(Duration::from_secs(5))
        .default_headers(headers)
        .build()
        .context("cannot build an HTTP client")?;
    let terminal = std::io::stdout().is_terminal();
    let mut prev: Option<(Stats, Instant)> = None;
    let mut frames = 0u64;
    loop {
        let cur = poll(&client, &base, &opts.addr).await?;
        let now = Instant::now();
        let frame = render(&opts.addr, prev.as_ref().map(|(s, t)| (s, now - *t)), &cur);
        let mut out = std::io::stdout().lock();
        if terminal {
            // Home and clear, then the frame: the table stays in place.
            write!(out, "\x1b[H\x1b[2J{frame}")?;
        } else {
            if frames > 0 {
                writeln!(out)?;
            }
            write!(out, "{frame}")?;
        }
        out.flush()?;
        drop(out);
        frames += 1;
        if opts.count.is_some_and(|c| frames >= c) {
            return Ok(());
        }
        prev = Some((cur, now));
        tokio::select! {
            _ = tokio::time::sleep(opts.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::SelfMetrics;

    #[test]
    fn gather_reads_counters_gauges_and_histogram_counts() {
        let m = SelfMetrics::new();
        m.events_total.with_label_values(&["stdin"]).inc_by(7);
        m.channel_fill.with_label_values(&["processor"]).set(3);
        m.sink_latency.with_label_values(&["loki"]).observe(0.2);
        let s = Stats::gather(&m.registry);
        assert_eq!(s.by("weir_events_total", "source")["stdin"], 7.0);
        assert_eq!(s.by("weir_channel_fill", "channel")["processor"], 3.0);
        assert_eq!(s.total("weir_sink_send_seconds_count"), 1.0);
        assert_eq!(
            s.label_of("weir_build_info", "version").as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
    }

    fn stats(events: u64, bytes: u64, loki: u64, invalid: u64) -> Stats {
        let m = SelfMetrics::new();
        m.events_total.with_label_values(&["stdin"]).inc_by(events);
        m.bytes_total.with_label_values(&["stdin"]).inc_by(bytes);
        m.sink_events.with_label_values(&["loki"]).inc_by(loki);
        m.sink_retries
            .with_label_values(&["loki", "http_429"])
            .inc_by(2);
        m.sink_buffer_events.with_label_values(&["loki"]).set(40);
        m.parse_errors
            .with_label_values(&["invalid_json"])
            .inc_by(invalid);
        m.channel_fill.with_label_values(&["processor"]).set(1);
        m.alerts_firing
            .with_label_values(&["AgentTaskFailures", "critical"])
            .set(2);
        m.alerts_pending.with_label_values(&["QueueBacklog"]).set(1);
        Stats::gather(&m.registry)
    }

    #[test]
    fn a_frame_shows_rates_between_two_polls() {
        let before = stats(1000, 300_000, 900, 1);
        let after = stats(3000, 900_000, 2800, 5);
        let v = env!("CARGO_PKG_VERSION");
        let want = format!(
            "weir {v} at 127.0.0.1:9090: 1000 events/s, 3000 events, 0 series, 0 taps open

SOURCE                             EVENTS/S       EVENTS           IN
stdin                                  1000         3000   300.0 kB/s

KEPT WITH A PROBLEM                      /S        TOTAL
invalid_json                            2.0            5

SINK               EVENTS/S       EVENTS   RETRIES    ERRORS  BUFFERED DEAD-LETTERED  DROPPED
loki                    950         2800         2         0        40             0        0

BATCHES WAITING  processor 1

ALERTS  AgentTaskFailures (critical): 2 firing; QueueBacklog: 1 pending
"
        );
        let got = render(
            "127.0.0.1:9090",
            Some((&before, Duration::from_secs(2))),
            &after,
        );
        assert_eq!(got, want, "\n{got}");
    }

    #[test]
    fn the_first_frame_has_no_rates_and_a_restart_shows_none() {
        let first = render("h:1", None, &stats(10, 100, 0, 0));
        assert!(first.contains(": - events/s, 10 events"), "{first}");
        assert!(!first.contains("KEPT WITH A PROBLEM"), "{first}");
        // Counters that went down: weir restarted between the polls.
        let after_restart = render(
            "h:1",
            Some((&stats(500, 100, 0, 0), Duration::from_secs(1))),
            &stats(10, 100, 0, 0),
        );
        assert!(after_restart.contains(": - events/s"), "{after_restart}");
    }
}
