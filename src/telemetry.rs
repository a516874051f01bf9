//! weir's own observability: its logs (tracing, JSON on stderr, never stdout) and its
//! self-metrics (`weir_*`), served on `/metrics` beside the derived ones.
//!
//! Every counter that records a kept-but-irregular event lives here, labelled by reason, so
//! "counted, never silently dropped" can be checked from the outside.

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::event::ParseIssue;

pub mod process;

/// Levels a bare `WEIR_LOG` directive may name.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// `WEIR_LOG` holds no filter weir can use.
#[derive(Debug, thiserror::Error)]
pub enum LogFilterError {
    /// A bare word that is not a level: tracing would read it as a target name and hide every
    /// line of weir, errors included, so it is refused.
    #[error(
        "WEIR_LOG={value:?}: {word:?} is not a log level (use one of off, error, warn, info, \
         debug, trace, or TARGET=LEVEL pairs such as info,weir::sink=debug)"
    )]
    NotALevel { value: String, word: String },
    #[error("WEIR_LOG={value:?}: {source} (use a level such as info, or TARGET=LEVEL pairs)")]
    Syntax {
        value: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("WEIR_LOG is not valid UTF-8")]
    NotUnicode,
}

/// The filter for weir's logs from `WEIR_LOG`'s value (`None` or empty: `info`). Bare words
/// must be levels; a bare `weir`/`weir::...` target is allowed (it means trace for weir).
pub fn log_filter(value: Option<&str>) -> Result<tracing_subscriber::EnvFilter, LogFilterError> {
    let value = match value.map(str::trim) {
        None | Some("") => return Ok(tracing_subscriber::EnvFilter::new("info")),
        Some(v) => v,
    };
    for word in value.split(',').map(str::trim) {
        let bare = !word.contains(['=', '[', '{']);
        let known = LOG_LEVELS.iter().any(|l| l.eq_ignore_ascii_case(word))
            || word == "weir"
            || word.starts_with("weir::");
        if bare && !word.is_empty() && !known {
            return Err(LogFilterError::NotALevel {
                value: value.to_string(),
                word: word.to_string(),
            });
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(value)
        .map_err(|source| LogFilterError::Syntax {
            value: value.to_string(),
            source,
        })
}

/// Sets up tracing: JSON lines on stderr, filter from `WEIR_LOG` (default `info`). An invalid
/// `WEIR_LOG` is an error, never a filter that silently hides everything.
pub fn init_tracing() -> Result<(), LogFilterError> {
    let value = match std::env::var("WEIR_LOG") {
        Ok(v) => Some(v),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => return Err(LogFilterError::NotUnicode),
    };
    let filter = log_filter(value.as_deref())?;
    // A second init (tests run several pipelines in one process) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(crate::progress::Stderr)
        .with_current_span(false)
        .try_init();
    Ok(())
}

/// The `weir_*` metrics.
#[derive(Clone)]
pub struct SelfMetrics {
    pub registry: Registry,
    /// The derived metrics' exemplars, for the OpenMetrics exposition (`derive::exemplar`).
    pub exemplars: crate::derive::exemplar::ExemplarStore,
    pub events_total: IntCounterVec,
    pub lines_total: IntCounterVec,
    pub bytes_total: IntCounterVec,
    pub parse_errors: IntCounterVec,
    pub series_dropped: IntCounterVec,
    pub series_expired: IntCounterVec,
    pub series_active: IntGaugeVec,
    pub derive_errors: IntCounterVec,
    pub pair_evicted: IntCounterVec,
    pub pair_unmatched: IntCounterVec,
    pub events_per_second: Gauge,
    pub channel_fill: IntGaugeVec,
    pub up: IntGauge,
    /// TCP clients connected now.
    pub tcp_connections: IntGauge,
    /// TCP connections by result: accepted, refused (over max_connections).
    pub tcp_connections_total: IntCounterVec,
    /// TCP disconnections by reason: eof, idle_timeout, line_too_long, error, shutdown, slow,
    /// handshake_timeout, tls_error.
    pub tcp_disconnects_total: IntCounterVec,
    /// Bytes of TCP clients' partial lines held against `max_buffered_bytes` now.
    pub tcp_buffered_bytes: IntGauge,
    /// Files open for reading now.
    pub files_open: IntGauge,
    /// File lifecycle by event: discovered, rotated, truncated, deleted, resumed.
    pub file_events_total: IntCounterVec,
    /// Matched paths not read, by reason: not_regular (FIFO, socket, device), max_depth,
    /// max_glob_matches.
    pub file_skipped_total: IntCounterVec,
    /// Files found that wait for a slot under `max_open_files` (new, or closed with data left).
    pub files_waiting: IntGauge,
    /// I/O errors finding, opening and reading files, by kind (emfile, enfile, eacces, ...).
    pub file_errors_total: IntCounterVec,
    /// Checkpoint writes by result: ok, error.
    pub checkpoint_writes_total: IntCounterVec,
    pub sink_events: IntCounterVec,
    pub sink_bytes: IntCounterVec,
    pub sink_batches: IntCounterVec,
    pub sink_retries: IntCounterVec,
    pub sink_errors: IntCounterVec,
    pub sink_dead_lettered: IntCounterVec,
    pub sink_dropped: IntCounterVec,
    pub sink_buffer_events: IntGaugeVec,
    pub sink_latency: prometheus::HistogramVec,
    /// Alerts firing now, by rule and severity.
    pub alerts_firing: IntGaugeVec,
    /// Alerts pending (condition true, `for` not yet over), by rule.
    pub alerts_pending: IntGaugeVec,
    /// Alert state changes, by rule and new state (pending, firing, resolved, inactive).
    pub alert_transitions: IntCounterVec,
    /// Label sets a rule could not track (over its max_groups), by rule.
    pub alert_groups_dropped: IntCounterVec,
    /// Notifications by notifier and result (sent, failed, dropped).
    pub alert_notifications: IntCounterVec,
    /// Notification attempts that failed and were retried, by notifier.
    pub alert_notification_retries: IntCounterVec,
    /// Notifications waiting to be sent, by notifier.
    pub alert_notification_queue: IntGaugeVec,
    /// Pipeline reloads by result (ok, error).
    pub config_reloads: IntCounterVec,
    /// `weir tap` clients connected now.
    pub taps_active: IntGauge,
}

fn gauge(reg: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::with_opts(Opts::new(name, help)).expect("valid constant name");
    reg.register(Box::new(g.clone())).expect("registered once");
    g
}

fn counter_vec(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("self-metric names and labels are valid constants");
    reg.register(Box::new(v.clone()))
        .expect("self-metrics are registered once in a fresh registry");
    v
}

fn gauge_vec(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let v = IntGaugeVec::new(Opts::new(name, help), labels)
        .expect("self-metric names and labels are valid constants");
    reg.register(Box::new(v.clone()))
        .expect("self-metrics are registered once in a fresh registry");
    v
}

impl SelfMetrics {
    pub fn new() -> Self {
        let reg = Registry::new();
        let parse_errors = counter_vec(
            &reg,
            "weir_parse_errors_total",
            "Lines kept despite a parse problem, by reason.",
            &["reason"],
        );
        for issue in ParseIssue::ALL {
            parse_errors.with_label_values(&[issue.reason()]);
        }
        let events_per_second = Gauge::with_opts(Opts::new(
            "weir_events_per_second",
            "Events processed per second over the last few seconds.",
        ))
        .expect("valid constant name");
        reg.register(Box::new(events_per_second.clone()))
            .expect("registered once");
        let up = IntGauge::with_opts(
            Opts::new("weir_build_info", "weir's version; always 1.")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .expect("valid constant name");
        up.set(1);
        reg.register(Box::new(up.clone())).expect("registered once");
        register_state_metrics(&reg);
        // process_* (CPU, memory, fds, threads, start time), read from /proc at each scrape;
        // served on /metrics and in --oneshot output alike.
        if let Some(pc) = process::ProcessCollector::new() {
            reg.register(Box::new(pc))
                .expect("process_* metrics are registered once in a fresh registry");
        }
        SelfMetrics {
            events_total: counter_vec(
                &reg,
                "weir_events_total",
                "Events read, by source.",
                &["source"],
            ),
            lines_total: counter_vec(
                &reg,
                "weir_lines_total",
                "Lines read, by source: with multi-line joining, several lines make one event.",
                &["source"],
            ),
            bytes_total: counter_vec(
                &reg,
                "weir_bytes_total",
                "Bytes read, by source.",
                &["source"],
            ),
            parse_errors,
            series_dropped: counter_vec(
                &reg,
                "weir_series_dropped_total",
                "Updates sent to the overflow series because the metric reached its series limit.",
                &["metric"],
            ),
            series_expired: counter_vec(
                &reg,
                "weir_series_expired_total",
                "Series removed after being idle for longer than expire_after_secs.",
                &["metric"],
            ),
            series_active: gauge_vec(
                &reg,
                "weir_series",
                "Label sets currently held per derived metric.",
                &["metric"],
            ),
            derive_errors: counter_vec(
                &reg,
                "weir_derive_errors_total",
                "Matching events that updated no series, by metric and reason.",
                &["metric", "reason"],
            ),
            pair_evicted: counter_vec(
                &reg,
                "weir_pair_evicted_total",
                "Open start events evicted before their end arrived, by reason.",
                &["metric", "reason"],
            ),
            pair_unmatched: counter_vec(
                &reg,
                "weir_pair_unmatched_total",
                "End events without a recorded start.",
                &["metric"],
            ),
            channel_fill: gauge_vec(
                &reg,
                "weir_channel_fill",
                "Batches waiting in a bounded channel between components.",
                &["channel"],
            ),
            tcp_connections: gauge(&reg, "weir_tcp_connections", "TCP clients connected now."),
            tcp_connections_total: counter_vec(
                &reg,
                "weir_tcp_connections_total",
                "TCP connections by result (accepted, refused).",
                &["result"],
            ),
            tcp_disconnects_total: counter_vec(
                &reg,
                "weir_tcp_disconnects_total",
                "TCP disconnections by reason.",
                &["reason"],
            ),
            tcp_buffered_bytes: gauge(
                &reg,
                "weir_tcp_buffered_bytes",
                "Bytes of TCP clients' partial lines held against max_buffered_bytes.",
            ),
            files_open: gauge(&reg, "weir_files_open", "Files open for reading now."),
            file_events_total: counter_vec(
                &reg,
                "weir_file_events_total",
                "File lifecycle events (discovered, rotated, truncated, deleted, resumed).",
                &["event"],
            ),
            file_skipped_total: counter_vec(
                &reg,
                "weir_file_skipped_total",
                "Paths the globs matched that were not read, by reason (not_regular, max_depth, max_glob_matches).",
                &["reason"],
            ),
            files_waiting: gauge(
                &reg,
                "weir_files_waiting",
                "Files waiting for a slot under max_open_files.",
            ),
            file_errors_total: counter_vec(
                &reg,
                "weir_file_errors_total",
                "I/O errors finding, opening and reading files, by kind.",
                &["kind"],
            ),
            checkpoint_writes_total: counter_vec(
                &reg,
                "weir_checkpoint_writes_total",
                "Checkpoint writes by result.",
                &["result"],
            ),
            sink_events: counter_vec(&reg, "weir_sink_events_total", "Events a sink delivered.", &["sink"]),
            sink_bytes: counter_vec(&reg, "weir_sink_bytes_total", "Request bytes a sink delivered.", &["sink"]),
            sink_batches: counter_vec(&reg, "weir_sink_batches_total", "Requests (or writes) a sink made.", &["sink"]),
            sink_retries: counter_vec(&reg, "weir_sink_retries_total", "Requests sent again, by reason.", &["sink", "reason"]),
            sink_errors: counter_vec(&reg, "weir_sink_errors_total", "Failed requests and rejected items, by reason.", &["sink", "reason"]),
            sink_dead_lettered: counter_vec(&reg, "weir_sink_dead_lettered_total", "Events that can never be delivered, written to the dead-letter file.", &["sink", "reason"]),
            sink_dropped: counter_vec(&reg, "weir_sink_dropped_total", "Events dropped: buffer full with when_full = drop_newest, shutdown deadline passed, corrupt disk-buffer records skipped, or not stored on disk by shutdown (disk_error).", &["sink", "reason"]),
            sink_buffer_events: gauge_vec(&reg, "weir_sink_buffer_events", "Events waiting in a sink's buffer.", &["sink"]),
            sink_latency: {
                let h = prometheus::HistogramVec::new(
                    prometheus::HistogramOpts::new("weir_sink_send_seconds", "Time per request, response included.")
                        .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                    &["sink"],
                )
                .expect("valid constant name");
                reg.register(Box::new(h.clone())).expect("registered once");
                h
            },
            alerts_firing: gauge_vec(&reg, "weir_alerts_firing", "Alerts firing now, by rule and severity.", &["rule", "severity"]),
            alerts_pending: gauge_vec(&reg, "weir_alerts_pending", "Alerts whose condition holds but whose `for` is not over yet.", &["rule"]),
            alert_transitions: counter_vec(&reg, "weir_alert_transitions_total", "Alert state changes, by rule and new state.", &["rule", "state"]),
            alert_groups_dropped: counter_vec(&reg, "weir_alert_groups_dropped_total", "Label sets a rule did not track because it holds max_groups already.", &["rule"]),
            alert_notifications: counter_vec(&reg, "weir_alert_notifications_total", "Notifications by notifier and result (sent, failed, dropped).", &["notifier", "result"]),
            alert_notification_retries: counter_vec(&reg, "weir_alert_notification_retries_total", "Notification attempts that failed and were tried again.", &["notifier"]),
            alert_notification_queue: gauge_vec(&reg, "weir_alert_notification_queue", "Notifications waiting to be sent, by notifier.", &["notifier"]),
            taps_active: gauge(&reg, "weir_taps_active", "weir tap clients connected now."),
            config_reloads: {
                let v = counter_vec(&reg, "weir_config_reloads_total", "Pipeline reloads by result (ok, error).", &["result"]);
                v.with_label_values(&["ok"]);
                v.with_label_values(&["error"]);
                v
            },
            events_per_second,
            up,
            registry: reg,
            exemplars: Default::default(),
        }
    }

    /// Handles for the parse-issue counters, in [`ParseIssue::ALL`] order.
    pub fn parse_issue_counters(&self) -> Vec<IntCounter> {
        ParseIssue::ALL
            .iter()
            .map(|i| self.parse_errors.with_label_values(&[i.reason()]))
            .collect()
    }
}

impl Default for SelfMetrics {
    fn default() -> Self {
        SelfMetrics::new()
    }
}

/// What an I/O error is, as a metric label: `enospc`, `edquot`, `erofs`, `eacces`, `emfile`,
/// `eio`, `not_found`, or `other`. Never guessed into something else (a rotation, a deletion).
pub fn io_error_kind(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::StorageFull => "enospc",
        K::QuotaExceeded => "edquot",
        K::ReadOnlyFilesystem => "erofs",
        K::PermissionDenied => "eacces",
        K::NotFound => "not_found",
        _ => match e.raw_os_error() {
            Some(24) => "emfile",
            Some(23) => "enfile",
            Some(5) => "eio",
            _ => "other",
        },
    }
}

/// Process-wide counters for state under `data_dir` (disk buffers, checkpoints, alert state,
/// dead letters): the code that meets these errors does not always hold a [`SelfMetrics`], so
/// they live here once and every registry serves them.
pub struct StateMetrics {
    /// `weir_disk_errors_total{file, kind}`: failed reads and writes of state under data_dir.
    pub disk_errors: IntCounterVec,
    /// `weir_state_files_unreadable_total{file}`: state files found corrupt at start.
    pub state_unreadable: IntCounterVec,
    /// `weir_disk_buffer_corrupt_bytes_total{sink}`: bytes of a disk buffer skipped as corrupt.
    pub buffer_corrupt_bytes: IntCounterVec,
}

/// The process-wide [`StateMetrics`].
pub fn state_metrics() -> &'static StateMetrics {
    static M: std::sync::OnceLock<StateMetrics> = std::sync::OnceLock::new();
    M.get_or_init(|| StateMetrics {
        disk_errors: IntCounterVec::new(
            Opts::new(
                "weir_disk_errors_total",
                "Failed reads and writes of state under data_dir, by file and error kind.",
            ),
            &["file", "kind"],
        )
        .expect("self-metric names and labels are valid constants"),
        state_unreadable: IntCounterVec::new(
            Opts::new(
                "weir_state_files_unreadable_total",
                "State files found corrupt at start (moved aside, started afresh), by file.",
            ),
            &["file"],
        )
        .expect("self-metric names and labels are valid constants"),
        buffer_corrupt_bytes: IntCounterVec::new(
            Opts::new(
                "weir_disk_buffer_corrupt_bytes_total",
                "Bytes of a disk buffer skipped as corrupt (the records in them are counted in weir_sink_dropped_total{reason=\"corrupt\"}).",
            ),
            &["sink"],
        )
        .expect("self-metric names and labels are valid constants"),
    })
}

fn register_state_metrics(reg: &Registry) {
    let m = state_metrics();
    for c in [&m.disk_errors, &m.state_unreadable, &m.buffer_corrupt_bytes] {
        reg.register(Box::new(c.clone()))
            .expect("state metrics are registered once in a fresh registry");
    }
}

/// Rate limit for a repeated error's log line: the first occurrence is logged, then at most one
/// line a minute (or per [`LogLimit::every`]), carrying how many were not logged in between.
#[derive(Debug)]
pub struct LogLimit {
    last: Option<std::time::Instant>,
    suppressed: u64,
    every: std::time::Duration,
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit::every(Self::EVERY)
    }
}

impl LogLimit {
    /// The default interval between two lines about the same error.
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(60);

    /// A limit of one line per `every`.
    pub const fn every(every: std::time::Duration) -> Self {
        LogLimit {
            last: None,
            suppressed: 0,
            every,
        }
    }

    /// `Some(n)` when a line should be logged now (`n`: occurrences not logged since the last
    /// line), `None` when this one is only counted.
    pub fn hit(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod state_tests {
    use super::*;

    /// The first error is logged, the next ones within a minute only counted, and the line after
    /// the minute carries how many were not logged.
    #[test]
    fn a_repeated_error_is_logged_once_a_minute_with_a_count() {
        let mut l = LogLimit::default();
        assert_eq!(l.hit(), Some(0));
        for _ in 0..600 {
            assert_eq!(l.hit(), None);
        }
        l.last = l.last.map(|t| t - LogLimit::EVERY);
        assert_eq!(l.hit(), Some(600));
        assert_eq!(l.hit(), None);
    }

    #[test]
    fn io_errors_are_named_for_what_they_are() {
        let e = |code| std::io::Error::from_raw_os_error(code);
        assert_eq!(io_error_kind(&e(28)), "enospc");
        assert_eq!(io_error_kind(&e(30)), "erofs");
        assert_eq!(io_error_kind(&e(13)), "eacces");
        assert_eq!(io_error_kind(&e(24)), "emfile");
        assert_eq!(io_error_kind(&e(5)), "eio");
    }

    /// Every registry serves the process-wide state counters.
    #[test]
    fn state_metrics_are_served_by_every_registry() {
        let (a, b) = (SelfMetrics::new(), SelfMetrics::new());
        state_metrics()
            .disk_errors
            .with_label_values(&["test", "enospc"])
            .inc();
        for m in [a, b] {
            assert!(m
                .registry
                .gather()
                .iter()
                .any(|f| f.name() == "weir_disk_errors_total"));
        }
    }
}

#[cfg(test)]
mod log_filter_tests {
    use super::*;

    #[test]
    fn levels_and_targets_pass_and_bare_words_are_refused() {
        for ok in [
            None,
            Some(""),
            Some("debug"),
            Some("INFO"),
            Some("info,weir::sink=debug"),
        ] {
            assert!(log_filter(ok).is_ok(), "{ok:?}");
        }
        let err = log_filter(Some("verbose")).unwrap_err().to_string();
        assert_eq!(
            err,
            "WEIR_LOG=\"verbose\": \"verbose\" is not a log level (use one of off, error, warn, \
             info, debug, trace, or TARGET=LEVEL pairs such as info,weir::sink=debug)"
        );
        assert!(log_filter(Some("weir=loud")).is_err());
    }
}
