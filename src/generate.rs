//! `weir generate demo-logs`: a deterministic generator of the agent system's JSON logs.
//!
//! Same count, seed and malformed rate give byte-identical output, so tests and benchmarks can
//! compute the exact metrics they expect. The shape follows the agent-orchestration system:
//! "Task started" / "Task completed" pairs (a few failures, with an error type, and a log-normal
//! duration), "Queue depth" reports, and noise from every component. `--malformed-rate` mixes in
//! truncated JSON and plain-text lines (tracebacks, panics). `--live` stamps lines with the
//! current time and `--rate` paces them, to feed a demo stack. `--incidents` plays a schedule of
//! incidents (a failure burst, a queue backlog, slow tasks, a silent component) over the same
//! baseline, one for each alert of the default pipeline.
//!
//! The baseline is healthy: no alert of the default pipeline fires unless an incident is played.
//! At `--rate 500` about 110 tasks complete per second, 5.5 per agent, so 1,650 per agent in
//! AgentTaskFailures' 5-minute window; [`BASELINE_FAILURE_RATE`] keeps the expected failures of
//! one agent there under 1 (the rule fires at 6). Queue depths stay ≤ [`BASELINE_MAX_DEPTH`],
//! well under QueueBacklog's 100.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal};
use serde_json::json;

pub const COMPONENTS: [&str; 5] = [
    "AgentOrchestrator",
    "EventBus",
    "SchedulerService",
    "SlackGateway",
    "CollaborativeAgentPool",
];
pub const QUEUES: [&str; 5] = [
    "tasks",
    "events",
    "notifications",
    "retries",
    "slack-outbound",
];
pub const ERRORS: [&str; 5] = [
    "TimeoutError",
    "ValueError",
    "RateLimitError",
    "ConnectionError",
    "KeyError",
];
const GARBAGE: [&str; 5] = [
    "Traceback (most recent call last):",
    "panic: runtime error: index out of range",
    "  File \"/app/orchestrator.py\", line 88, in run",
    "Killed",
    "",
];
/// Fraction of tasks that fail outside an incident (see the module docs for the arithmetic).
pub const BASELINE_FAILURE_RATE: f64 = 0.0005;
/// Highest queue depth reported outside an incident.
pub const BASELINE_MAX_DEPTH: u32 = 80;
/// 2024-01-01T00:00:00.000Z, the first timestamp of a non-live run.
const START_MS: i64 = 1_704_067_200_000;

/// Options of `weir generate demo-logs`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Lines to write; 0 writes until the output closes.
    pub count: u64,
    pub seed: u64,
    /// Fraction of lines replaced by broken ones.
    pub malformed_rate: f64,
    /// Lines per second; 0 writes as fast as possible.
    pub rate: f64,
    /// Stamp lines with the current time instead of a fixed clock.
    pub live: bool,
    /// Play the incident schedule (see [`incidents`]) over a quiet baseline.
    pub incidents: bool,
}

/// The incident schedule of `--incidents`, in seconds into each 40-minute cycle of the log's
/// clock (event time; with `--live`, wall time since start). Each incident trips one of the
/// default pipeline's alerts; around them the system is quiet ([`BASELINE_FAILURE_RATE`] of
/// failures, queues ≤ [`BASELINE_MAX_DEPTH`]), so nothing else fires.
pub mod incidents {
    /// Length of the cycle.
    pub const CYCLE: i64 = 2400;
    /// Every task of [`BURST_AGENT`] fails (TimeoutError): AgentTaskFailures.
    pub const BURST: (i64, i64) = (120, 180);
    pub const BURST_AGENT: &str = "agent-07";
    /// Queue [`BACKLOG_QUEUE`] reports 150..=250: QueueBacklog (over 100 for 2m).
    pub const BACKLOG: (i64, i64) = (240, 420);
    pub const BACKLOG_QUEUE: &str = "retries";
    /// Every task takes 65..=180 s: SlowTasks (p95 over 60 s for 10m).
    pub const SLOW: (i64, i64) = (600, 1500);
    /// [`SILENT_COMPONENT`] writes nothing: ComponentSilent (absent for 5m).
    pub const SILENT: (i64, i64) = (900, 1300);
    pub const SILENT_COMPONENT: &str = "SlackGateway";

    pub fn during(window: (i64, i64), t: i64) -> bool {
        (window.0..window.1).contains(&t.rem_euclid(CYCLE))
    }
}

fn timestamp(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| format!("{}", t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ")))
        .unwrap_or_default()
}

fn uuid4(r: &mut ChaCha8Rng) -> String {
    uuid::Builder::from_random_bytes(r.random())
        .into_uuid()
        .to_string()
}

/// Writes demo logs to `out`. A closed pipe ends the run without an error.
pub fn demo_logs(opts: &DemoOptions, out: &mut dyn Write) -> io::Result<()> {
    let mut r = ChaCha8Rng::seed_from_u64(opts.seed);
    let agents: Vec<String> = (0..20).map(|i| format!("agent-{i:02}")).collect();
    // Parameters are constants within the distributions' domains.
    let fail_d = LogNormal::<f64>::new(1.0, 1.3).expect("valid log-normal");
    let ok_d = LogNormal::<f64>::new(0.3, 1.1).expect("valid log-normal");
    let mut ms = START_MS;
    let mut open: Vec<(String, String, String)> = Vec::new();
    let mut next_task = 0u64;
    let started = Instant::now();
    let mut line = Vec::with_capacity(512);
    let mut n = 0u64;
    while opts.count == 0 || n < opts.count {
        n += 1;
        ms += r.random_range(1..=40);
        let ts = if opts.live {
            timestamp(jiff::Timestamp::now().as_millisecond())
        } else {
            timestamp(ms)
        };
        // Seconds into the incident cycle.
        let t = if opts.live {
            started.elapsed().as_secs() as i64
        } else {
            (ms - START_MS) / 1000
        };
        let inc = |w| opts.incidents && incidents::during(w, t);
        let x: f64 = r.random();
        let obj = if x < 0.22 || (x < 0.44 && open.is_empty()) {
            next_task += 1;
            let tid = uuid4(&mut r);
            let agent = agents.choose(&mut r).expect("non-empty").clone();
            let task = format!("task-{next_task:08}");
            open.push((tid.clone(), agent.clone(), task.clone()));
            json!({"timestamp": ts, "level": "INFO", "component": "AgentOrchestrator",
                   "message": "Task started", "trace_id": tid,
                   "metadata": {"agent_id": agent, "task_id": task}})
        } else if x < 0.44 {
            let i = r.random_range(0..open.len());
            let (tid, agent, task) = open.swap_remove(i);
            let fail_rate = if inc(incidents::BURST) && agent == incidents::BURST_AGENT {
                1.0
            } else {
                BASELINE_FAILURE_RATE
            };
            let slow = inc(incidents::SLOW);
            let (level, md) = if r.random::<f64>() < fail_rate {
                let d = (fail_d.sample(&mut r).min(300.0) * 1000.0).round() / 1000.0;
                (
                    "ERROR",
                    json!({"agent_id": agent, "task_id": task, "status": "failure",
                                 "duration": d, "error_type": *ERRORS.choose(&mut r).expect("non-empty")}),
                )
            } else {
                let d = if slow {
                    r.random_range(65.0..=180.0f64)
                } else {
                    ok_d.sample(&mut r).min(300.0)
                };
                let d = (d * 1000.0).round() / 1000.0;
                (
                    "INFO",
                    json!({"agent_id": agent, "task_id": task, "status": "success", "duration": d}),
                )
            };
            let component = ["AgentOrchestrator", "CollaborativeAgentPool"]
                .choose(&mut r)
                .expect("non-empty");
            json!({"timestamp": ts, "level": level, "component": component,
                   "message": "Task completed", "trace_id": tid, "metadata": md})
        } else if x < 0.60 {
            let queue = *QUEUES.choose(&mut r).expect("non-empty");
            let depth = if inc(incidents::BACKLOG) && queue == incidents::BACKLOG_QUEUE {
                r.random_range(150..=250)
            } else {
                r.random_range(0..=BASELINE_MAX_DEPTH)
            };
            json!({"timestamp": ts, "level": "DEBUG", "component": "SchedulerService",
                   "message": "Queue depth", "trace_id": uuid4(&mut r),
                   "metadata": {"queue_name": queue, "depth": depth}})
        } else {
            let (level, message, metadata) = noise(&mut r, &agents);
            let mut component = *COMPONENTS.choose(&mut r).expect("non-empty");
            if component == incidents::SILENT_COMPONENT && inc(incidents::SILENT) {
                component = "EventBus";
            }
            json!({"timestamp": ts, "level": level, "component": component,
                   "message": message, "trace_id": uuid4(&mut r), "metadata": metadata})
        };
        line.clear();
        serde_json::to_writer(&mut line, &obj).map_err(io::Error::other)?;
        if opts.malformed_rate > 0.0 && r.random::<f64>() < opts.malformed_rate {
            if r.random::<f64>() < 0.5 {
                let cut = r.random_range(1..line.len());
                line.truncate(cut);
            } else {
                line.clear();
                line.extend_from_slice(GARBAGE.choose(&mut r).expect("non-empty").as_bytes());
            }
        }
        line.push(b'\n');
        match out.write_all(&line) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            r => r?,
        }
        if opts.rate > 0.0 {
            let due = started + Duration::from_secs_f64(n as f64 / opts.rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                match out.flush() {
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                    r => r?,
                }
                std::thread::sleep(wait);
            }
        }
    }
    match out.flush() {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

fn noise(r: &mut ChaCha8Rng, agents: &[String]) -> (&'static str, &'static str, serde_json::Value) {
    let agent = |r: &mut ChaCha8Rng| agents.choose(r).expect("non-empty").clone();
    match r.random_range(0..8) {
        0 => (
            "DEBUG",
            "Heartbeat received",
            json!({"agent_id": agent(r), "latency_ms": r.random_range(1..=900)}),
        ),
        1 => (
            "INFO",
            "Event published",
            json!({"topic": (["task.created", "task.done", "agent.idle"]).choose(r).expect("non-empty"),
                     "subscribers": r.random_range(0..=12), "payload_bytes": r.random_range(80..=9000)}),
        ),
        2 => (
            "INFO",
            "Slack message sent",
            json!({"channel": (["#ops", "#agents", "#alerts"]).choose(r).expect("non-empty"),
                     "ts": format!("{}.{:06}", r.random_range(1_700_000_000u64..=1_800_000_000), r.random_range(0..=999_999))}),
        ),
        3 => (
            "WARNING",
            "Retrying request",
            json!({"attempt": r.random_range(1..=5),
                     "backoff_s": (r.random_range(0.1..8.0f64) * 1000.0).round() / 1000.0,
                     "endpoint": (["/v1/chat", "/v1/embed", "/api/slack"]).choose(r).expect("non-empty")}),
        ),
        4 => (
            "ERROR",
            "Upstream call failed",
            json!({"status_code": ([429, 500, 502, 503]).choose(r).expect("non-empty"),
                     "error": format!("upstream said: {}", ["overloaded", "bad gateway"].choose(r).expect("non-empty"))}),
        ),
        5 => (
            "INFO",
            "Agent pool resized",
            json!({"pool": "default", "size": r.random_range(1..=64), "reason": "autoscale"}),
        ),
        6 => (
            "WARNING",
            "Task retry scheduled",
            json!({"agent_id": agent(r), "attempt": r.random_range(1..=3), "status": "retrying",
                     "error_type": ERRORS.choose(r).expect("non-empty")}),
        ),
        _ => (
            "DEBUG",
            "Config reloaded",
            json!({"path": "/etc/agents/config.yaml", "changed_keys": r.random_range(0..=9)}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen(count: u64, seed: u64, malformed_rate: f64) -> Vec<u8> {
        let mut out = Vec::new();
        let opts = DemoOptions {
            count,
            seed,
            malformed_rate,
            rate: 0.0,
            live: false,
            incidents: false,
        };
        demo_logs(&opts, &mut out).unwrap();
        out
    }

    #[test]
    fn deterministic_and_well_formed() {
        let a = gen(2000, 7, 0.0);
        assert_eq!(a, gen(2000, 7, 0.0));
        assert_ne!(a, gen(2000, 8, 0.0));
        let text = String::from_utf8(a).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2000);
        let mut completed = 0;
        for l in &lines {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(v["metadata"].is_object());
            assert_eq!(v["trace_id"].as_str().unwrap().len(), 36);
            if v["message"] == "Task completed" {
                completed += 1;
                assert!(v["metadata"]["duration"].as_f64().unwrap() >= 0.0);
            }
        }
        assert!(completed > 300, "{completed}");
        assert!(
            lines[0].starts_with("{\"timestamp\":\"2024-01-01T00:00:00."),
            "{}",
            lines[0]
        );
    }

    /// The README's first run is `--rate 500 --live` without `--incidents`: at 500 lines/s,
    /// 150,000 consecutive lines are AgentTaskFailures' 5-minute window. No agent may reach the
    /// rule's 6 failures in any such window, and no queue may go over QueueBacklog's 100.
    #[test]
    fn normal_mode_fires_no_default_alert_at_rate_500() {
        const WINDOW: usize = 150_000;
        let text = String::from_utf8(gen(2 * WINDOW as u64, 3, 0.0)).unwrap();
        let mut failures: Vec<(usize, String)> = Vec::new();
        let mut completed = 0;
        for (i, l) in text.lines().enumerate() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let md = &v["metadata"];
            if v["message"] == "Queue depth" {
                let d = md["depth"].as_u64().unwrap();
                assert!(d <= 80, "line {i}: depth {d}");
            }
            if v["message"] == "Task completed" {
                completed += 1;
                if md["status"] == "failure" {
                    failures.push((i, md["agent_id"].as_str().unwrap().to_string()));
                }
            }
        }
        assert!(completed > 50_000, "{completed}");
        // A few failures still happen, so the failure counter has data.
        assert!(!failures.is_empty());
        for (j, (start, _)) in failures.iter().enumerate() {
            let mut per_agent: std::collections::BTreeMap<&str, usize> = Default::default();
            for (i, agent) in &failures[j..] {
                if *i >= start + WINDOW {
                    break;
                }
                *per_agent.entry(agent).or_default() += 1;
            }
            let worst = per_agent.values().max().copied().unwrap_or(0);
            assert!(
                worst < 6,
                "{per_agent:?} within {WINDOW} lines from line {start}"
            );
        }
    }

    #[test]
    fn malformed_rate_breaks_lines() {
        let text = String::from_utf8(gen(2000, 1, 0.2)).unwrap();
        let bad = text
            .lines()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_err())
            .count();
        assert!((250..550).contains(&bad), "{bad}");
    }
}
