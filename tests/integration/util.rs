//! Helpers: run the real `weir` binary, generate corpora, parse expositions, compute the exact
//! metrics a corpus implies (independently of weir's parser: full `serde_json::Value` per line).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

/// The `weir` binary. Its admin listener (`/tap`, `/stats`, `/-/reload`) binds a port the OS
/// chooses, so tests running at once do not fight over the default 127.0.0.1:9190.
pub fn weir() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.env("WEIR_ADMIN_LISTEN", "127.0.0.1:0");
    c
}

/// A series key: metric name and sorted labels.
pub type Key = (String, BTreeMap<String, String>);

/// Runs `weir generate demo-logs` and returns the corpus.
pub fn demo_logs(count: u64, seed: u64, malformed_rate: f64) -> Vec<u8> {
    let out = weir()
        .args([
            "generate",
            "demo-logs",
            "--count",
            &count.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .args(["--malformed-rate", &malformed_rate.to_string()])
        .output()
        .expect("run weir generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn temp_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write temp file");
    p
}

/// Parses a Prometheus text exposition into series values.
pub fn parse_exposition(text: &str) -> BTreeMap<Key, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => (name.to_string(), parse_labels(rest.trim_end_matches('}'))),
        };
        out.insert((name, labels), value);
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if name.is_empty() {
            return out;
        }
        assert_eq!(chars.next(), Some('"'));
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(name.trim_start_matches(',').to_string(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

pub fn key(name: &str, labels: &[(&str, &str)]) -> Key {
    (
        name.to_string(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

const BUCKETS: [f64; 8] = [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// The agent metrics a corpus implies under the default pipeline, computed from full JSON trees.
pub fn expected_agent_metrics(corpus: &[u8]) -> BTreeMap<Key, f64> {
    let mut exp: BTreeMap<Key, f64> = BTreeMap::new();
    let mut hist: BTreeMap<(String, String), (Vec<u64>, f64, u64)> = BTreeMap::new();
    for line in corpus.split(|&b| b == b'\n') {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        let md = &v["metadata"];
        if !md.is_object() {
            continue;
        }
        let s = |x: &serde_json::Value| x.as_str().unwrap_or_default().to_string();
        if v["message"] == "Task completed" {
            let (agent, status) = (s(&md["agent_id"]), s(&md["status"]));
            if status == "success" {
                *exp.entry(key("agent_task_success_total", &[("agent_id", &agent)]))
                    .or_default() += 1.0;
            } else if status == "failure" {
                let et = md["error_type"].as_str().unwrap_or("unknown");
                *exp.entry(key(
                    "agent_task_failure_total",
                    &[("agent_id", &agent), ("error_type", et)],
                ))
                .or_default() += 1.0;
            }
            let d = md["duration"].as_f64().expect("duration");
            let h = hist.entry((agent, status)).or_insert((vec![0; 9], 0.0, 0));
            let i = BUCKETS.iter().position(|&b| d <= b).unwrap_or(8);
            h.0[i] += 1;
            h.1 += d;
            h.2 += 1;
        } else if md["queue_name"].is_string() && md["depth"].is_number() {
            exp.insert(
                key(
                    "agent_queue_depth",
                    &[("queue_name", &s(&md["queue_name"]))],
                ),
                md["depth"].as_f64().expect("depth"),
            );
        }
    }
    for ((agent, status), (counts, sum, n)) in hist {
        let mut cum = 0;
        for (i, c) in counts.iter().enumerate() {
            cum += c;
            let le = if i < 8 {
                format!("{}", BUCKETS[i])
            } else {
                "+Inf".into()
            };
            exp.insert(
                key(
                    "agent_task_duration_seconds_bucket",
                    &[("agent_id", &agent), ("status", &status), ("le", &le)],
                ),
                cum as f64,
            );
        }
        let l = [("agent_id", agent.as_str()), ("status", status.as_str())];
        exp.insert(key("agent_task_duration_seconds_sum", &l), sum);
        exp.insert(key("agent_task_duration_seconds_count", &l), n as f64);
    }
    exp
}

/// Asserts that the `agent_*` series of `got` are exactly `expected` (sums to 1e-9 relative).
pub fn assert_agent_metrics(got: &BTreeMap<Key, f64>, expected: &BTreeMap<Key, f64>) {
    let got: BTreeMap<&Key, f64> = got
        .iter()
        .filter(|(k, _)| k.0.starts_with("agent_"))
        .map(|(k, v)| (k, *v))
        .collect();
    let mut diffs = Vec::new();
    for (k, e) in expected {
        match got.get(k) {
            None => diffs.push(format!("missing {k:?} (expected {e})")),
            Some(g) if k.0.ends_with("_sum") && (g - e).abs() > 1e-9 * e.abs().max(1.0) => {
                diffs.push(format!("{k:?}: expected {e} got {g}"));
            }
            Some(_) if k.0.ends_with("_sum") => {}
            Some(g) if g != e => diffs.push(format!("{k:?}: expected {e} got {g}")),
            _ => {}
        }
    }
    for k in got.keys() {
        if !expected.contains_key(*k) {
            diffs.push(format!("unexpected {k:?}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs[..diffs.len().min(20)].join("\n")
    );
    assert!(
        expected.len() > 100,
        "the corpus should produce many series"
    );
}

/// A running `weir run` that serves /metrics on a port chosen by the OS.
pub struct Running {
    pub child: Child,
    /// The public listener: /metrics, /health, /ready, /alerts.
    pub addr: String,
    /// The admin listener: /tap, /stats, POST /-/reload (empty when it is off).
    pub admin: String,
    /// weir's log lines; kept so the reader thread keeps draining the pipe.
    pub _stderr_lines: std::sync::mpsc::Receiver<String>,
}

/// Starts `weir run --listen 127.0.0.1:0 ARGS` with stdin piped, and waits for its address.
/// The caller waits for the child.
pub fn spawn_weir(args: &[&str]) -> Running {
    spawn_weir_env(args, &[])
}

/// [`spawn_weir`] with extra environment variables for weir.
#[allow(clippy::zombie_processes)]
pub fn spawn_weir_env(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut child = weir()
        .args(["run", "--listen", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir");
    let stderr: ChildStderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("weir logs its listening address");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("stderr is JSON: {line}"));
        if v["fields"]["message"] == "serving /metrics" {
            let addr = v["fields"]["addr"].as_str().expect("addr").to_string();
            return Running {
                child,
                addr,
                admin: admin_of(&v),
                _stderr_lines: rx,
            };
        }
    }
}

/// The admin address in weir's "serving /metrics" log line (empty when it is off).
pub fn admin_of(line: &serde_json::Value) -> String {
    match line["fields"]["admin"].as_str() {
        Some("off") | None => String::new(),
        Some(a) => a.to_string(),
    }
}

/// GET with query parameters (10 s timeout); `None` when nothing answers.
pub fn http_get(url: &str, query: &[(&str, &str)]) -> Option<(u16, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let res = reqwest::Client::new()
            .get(url)
            .query(query)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        let status = res.status().as_u16();
        Some((status, res.text().await.ok()?))
    })
}

/// GETs a path of a running weir, returning status and body.
pub fn get(addr: &str, path: &str) -> (u16, String) {
    http_get(&format!("http://{addr}{path}"), &[]).expect("GET")
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Scrapes until `weir_events_total` reaches `lines`, then returns the exposition.
pub fn scrape_when_processed(addr: &str, lines: f64) -> BTreeMap<Key, f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(addr, "/metrics");
        assert_eq!(status, 200);
        let m = parse_exposition(&body);
        // Lines, not events: the default pipeline joins Python tracebacks (the demo logs'
        // malformed lines include some) into the event before them.
        let seen: f64 = m
            .iter()
            .filter(|(k, _)| k.0 == "weir_lines_total")
            .map(|(_, v)| v)
            .sum();
        if seen >= lines {
            assert_eq!(seen, lines, "no line counted twice");
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "only {seen} of {lines} lines after 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads the rest of a child's stdout.
pub fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    r.read_to_string(&mut s).expect("read");
    s
}

/// `true` if the tool is on PATH. In CI a missing tool fails the test instead.
pub fn have_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").is_err(),
            "{tool} is required in CI (.ci/install-test-tools.sh installs it)"
        );
        // Written past libtest's capture (which takes print!/eprint! only), so the skip shows
        // in `cargo test`'s output although the test is reported ok.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {tool} not installed (.ci/install-test-tools.sh installs it)"
        );
    }
    found
}

impl Drop for Running {
    /// A failed test must not leave weir running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `weir run --listen 127.0.0.1:0 ARGS` with stdin closed and waits until weir has
/// logged every message of `messages` (such as "serving /metrics", "tcp source listening"),
/// whatever their order. Returns the running weir and the `addr` field of each message, in
/// the order asked. `Running::addr` is the /metrics address.
#[allow(clippy::zombie_processes)]
pub fn spawn_weir_logging(args: &[&str], messages: &[&str]) -> (Running, Vec<String>) {
    let mut child = weir()
        .args(["run", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir");
    let stderr: ChildStderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut found: Vec<Option<String>> = vec![None; messages.len()];
    let mut metrics = None;
    let mut admin = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while found.iter().any(Option::is_none) || metrics.is_none() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("weir logs {messages:?} and \"serving /metrics\""));
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("stderr is JSON: {line}"));
        let Some(addr) = v["fields"]["addr"].as_str() else {
            continue;
        };
        if v["fields"]["message"] == "serving /metrics" {
            metrics = Some(addr.to_string());
            admin = admin_of(&v);
        }
        for (m, f) in messages.iter().zip(&mut found) {
            if v["fields"]["message"] == *m && f.is_none() {
                *f = Some(addr.to_string());
            }
        }
    }
    let running = Running {
        child,
        addr: metrics.expect("loop ends once found"),
        admin,
        _stderr_lines: rx,
    };
    (running, found.into_iter().flatten().collect())
}

/// One value from a scrape of a running weir's /metrics (0 if the series is absent).
pub fn metric(addr: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200);
    parse_exposition(&body)
        .get(&key(name, labels))
        .copied()
        .unwrap_or(0.0)
}

/// Scrapes until the series has the value `want` (30 s deadline), for values that settle
/// shortly after an action (a disconnect counted, a gauge that drops).
pub fn wait_for_metric(addr: &str, name: &str, labels: &[(&str, &str)], want: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = metric(addr, name, labels);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} is {got}, expected {want} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// POSTs to a path of a running weir, returning status and body.
pub fn post(addr: &str, path: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("http://{addr}{path}"))
            .send()
            .await
            .expect("POST");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    })
}
