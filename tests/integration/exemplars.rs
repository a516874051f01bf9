//! OpenMetrics and exemplars checked by a real Prometheus (Debian's package) with exemplar
//! storage on: it scrapes weir fed generated agent logs in OpenMetrics mode without a scrape
//! error, and `/api/v1/query_exemplars` returns trace ids of the input, each in the bucket its
//! task's duration falls in.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::server::wait_for;
use crate::util::{demo_logs, free_port, have_tool, http_get, scrape_when_processed, spawn_weir};

/// The buckets of `agent_task_duration_seconds` in pipelines/agents.toml.
const BUCKETS: [f64; 8] = [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

struct Prometheus {
    child: Child,
    addr: String,
    log: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Prometheus {
        let port = free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: weir\n    static_configs:\n      - targets: [{target:?}]\n",
            ),
        )
        .expect("write config");
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--enable-feature=exemplar-storage")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn prometheus");
        let p = Prometheus {
            child,
            addr: format!("127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(&format!("http://{}/-/ready", p.addr), &[]).is_none_or(|(s, _)| s != 200) {
            assert!(Instant::now() < deadline, "not ready:\n{}", p.log_tail());
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let url = format!("http://{}{path}", self.addr);
        match http_get(&url, query) {
            Some((200, body)) => {
                serde_json::from_str::<Value>(&body).expect("JSON")["data"].clone()
            }
            other => panic!("{path} {query:?}: {other:?}"),
        }
    }

    /// The values of an instant query, by series.
    fn values(&self, q: &str) -> Vec<(Value, f64)> {
        let data = self.api("/api/v1/query", &[("query", q)]);
        data["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                let v = r["value"][1].as_str().and_then(|s| s.parse().ok());
                (r["metric"].clone(), v.unwrap_or(f64::NAN))
            })
            .collect()
    }
}

#[test]
fn prometheus_stores_weirs_exemplars_in_the_right_buckets() {
    if !have_tool("prometheus") {
        return;
    }
    const LINES: usize = 4_000;
    let corpus = demo_logs(LINES as u64, 5, 0.0);
    // trace id -> the durations of its "Task completed" events.
    let mut durations: HashMap<String, Vec<f64>> = HashMap::new();
    for line in corpus.split(|&b| b == b'\n') {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        if let (Some(t), Some(d)) = (v["trace_id"].as_str(), v["metadata"]["duration"].as_f64()) {
            durations.entry(t.to_string()).or_default().push(d);
        }
    }
    assert!(!durations.is_empty(), "the corpus has completed tasks");

    let mut w = spawn_weir(&[]);
    let mut stdin = w.child.stdin.take().expect("stdin piped");
    let dir = tempfile::tempdir().expect("temp dir");
    let prom = Prometheus::start(dir.path(), &w.addr);
    wait_for(
        Duration::from_secs(30),
        || (prom.values(r#"up{job="weir"}"#).first().map(|v| v.1) == Some(1.0)).then_some(()),
        || format!("Prometheus never scraped weir:\n{}", prom.log_tail()),
    );
    let lines: Vec<&[u8]> = corpus.split_inclusive(|&b| b == b'\n').collect();
    for chunk in lines.chunks(LINES / 4) {
        for l in chunk {
            stdin.write_all(l).expect("write to weir");
        }
        stdin.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(1_200));
    }
    scrape_when_processed(&w.addr, LINES as f64);
    wait_for(
        Duration::from_secs(30),
        || {
            let seen = prom.values("sum(weir_events_total)");
            (seen.first().map(|v| v.1) == Some(LINES as f64)).then_some(())
        },
        || format!("Prometheus never saw {LINES} events:\n{}", prom.log_tail()),
    );

    let end = format!("{}", jiff::Timestamp::now().as_second() + 60);
    let data = prom.api(
        "/api/v1/query_exemplars",
        &[
            ("query", "agent_task_duration_seconds_bucket"),
            ("start", "1704000000"),
            ("end", &end),
        ],
    );
    let series = data.as_array().cloned().unwrap_or_default();
    let mut checked = 0;
    for s in &series {
        let le = s["seriesLabels"]["le"].as_str().expect("le label");
        let upper: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().expect("le is a number")
        };
        let lower = BUCKETS
            .iter()
            .copied()
            .filter(|b| *b < upper)
            .fold(f64::NEG_INFINITY, f64::max);
        for e in s["exemplars"].as_array().expect("exemplars") {
            let trace = e["labels"]["trace_id"].as_str().expect("trace_id label");
            let value: f64 = e["value"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .expect("value");
            assert!(
                value > lower && value <= upper,
                "exemplar {value} in bucket le={le}"
            );
            let known = durations
                .get(trace)
                .unwrap_or_else(|| panic!("trace id {trace:?} of an exemplar is not in the input"));
            assert!(
                known.iter().any(|d| (d - value).abs() < 1e-9),
                "{trace}: {value} is not one of its durations {known:?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} exemplars: {series:?}");

    assert_eq!(
        prom.values(r#"up{job="weir"}"#).first().map(|v| v.1),
        Some(1.0)
    );
    let samples = prom.values(r#"scrape_samples_post_metric_relabeling{job="weir"}"#);
    assert!(samples.first().is_some_and(|v| v.1 > 0.0), "{samples:?}");
    // Prometheus' own scrape error counters, from its /metrics.
    let (_, own) = http_get(&format!("http://{}/metrics", prom.addr), &[]).expect("own metrics");
    let errors: Vec<&str> = own
        .lines()
        .filter(|l| l.starts_with("prometheus_target_scrapes_"))
        .collect();
    assert!(
        !errors.is_empty(),
        "Prometheus exports its scrape error counters"
    );
    for l in &errors {
        assert!(l.ends_with(" 0"), "a scrape error: {l}");
    }
    drop(stdin);
    let _ = w.child.kill();
    let _ = w.child.wait();
}
