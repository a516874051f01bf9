//! The core path: stdin or files → parse → derive → /metrics (or the oneshot exposition).

use std::io::Write;
use std::process::Stdio;

use crate::util::*;

/// The default pipeline over stdin, scraped over HTTP: every agent series equals the value
/// computed independently from the corpus; then closing stdin ends weir with exit code 0.
#[test]
fn stdin_to_metrics_over_http_matches_the_corpus_exactly() {
    let corpus = demo_logs(30_000, 7, 0.02);
    let lines = corpus.iter().filter(|&&b| b == b'\n').count() as f64;
    let expected = expected_agent_metrics(&corpus);
    let mut w = spawn_weir(&[]);
    let mut stdin = w.child.stdin.take().expect("stdin");
    stdin.write_all(&corpus).expect("write corpus");
    let got = scrape_when_processed(&w.addr, lines);
    assert_agent_metrics(&got, &expected);
    let (status, body) = get(&w.addr, "/health");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(get(&w.addr, "/ready").0, 200);
    drop(stdin);
    let status = w.child.wait().expect("wait");
    assert!(status.success(), "exit status {status}");
    // weir's stdout stays clean of its own logs (it is for passthrough later).
    assert_eq!(read_all(w.child.stdout.take().expect("stdout")), "");
}

/// `--oneshot FILE` prints the final exposition; it matches the corpus and promtool accepts it.
#[test]
fn oneshot_over_files_prints_an_exposition_promtool_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = demo_logs(20_000, 1, 0.0);
    let b = demo_logs(20_000, 2, 0.05);
    let (pa, pb) = (
        temp_file(dir.path(), "a.jsonl", &a),
        temp_file(dir.path(), "b.jsonl", &b),
    );
    let out = weir()
        .args(["run", "--oneshot"])
        .args([&pa, &pb])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 exposition");
    let both: Vec<u8> = [a.as_slice(), b.as_slice()].concat();
    assert_agent_metrics(&parse_exposition(&text), &expected_agent_metrics(&both));
    let m = parse_exposition(&text);
    // Every line read; the malformed ones that look like a Python traceback joined the
    // event before them (the default pipeline joins tracebacks), so b has fewer events.
    for p in [&pa, &pb] {
        let source = [("source", p.to_str().unwrap())];
        assert_eq!(m[&key("weir_lines_total", &source)], 20_000.0);
    }
    assert_eq!(
        m[&key("weir_events_total", &[("source", pa.to_str().unwrap())])],
        20_000.0
    );
    assert!(m[&key("weir_events_total", &[("source", pb.to_str().unwrap())])] < 20_000.0);
    assert!(m[&key("weir_parse_errors_total", &[("reason", "invalid_json")])] > 500.0);
    if have_tool("promtool") {
        let mut p = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool");
        p.stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
        let out = p.wait_with_output().expect("promtool");
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Bad input is kept and counted by reason, never dropped: broken JSON, non-objects, invalid
/// UTF-8, over-long lines, missing and unparsable timestamps.
#[test]
fn bad_lines_are_counted_by_reason_and_never_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pipeline = temp_file(
        dir.path(),
        "p.toml",
        br#"
[event]
max_line_bytes = 100

[[metrics]]
name = "lines_total"
kind = "counter"
labels = { level = "level" }

[[metrics]]
name = "raw_lines_total"
kind = "counter"
labels = { level = "level" }
include_unparsed = true
"#,
    );
    let mut input = Vec::new();
    input.extend(
        b"{\"timestamp\":\"2024-01-01T00:00:00Z\",\"level\":\"info\",\"message\":\"ok\"}\n",
    );
    input.extend(b"{\"timestamp\":\"2024-01-01T00:00:00Z\",\"message\":\"cut\n");
    input.extend(b"Traceback (most recent call last):\n");
    input.extend(b"[1,2,3]\n");
    input.extend(b"{\"timestamp\":\"2024-01-01T00:00:00Z\",\"level\":\"warn\",\"message\":\"bad \xff byte\"}\n");
    input.extend(b"{\"message\":\"");
    input.extend(std::iter::repeat_n(b'x', 5000));
    input.extend(b"\"}\n");
    input.extend(b"{\"level\":\"ERROR\",\"message\":\"no time\"}\n");
    input.extend(b"{\"timestamp\":\"later\",\"level\":\"E\",\"message\":\"bad time\"}\n");
    input.extend(b"{\"level\":\"debug\",\"message\":\"no newline at the end\"}");
    let mut p = weir()
        .args(["run", "--oneshot", "--config"])
        .arg(&pipeline)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    p.stdin
        .take()
        .expect("stdin")
        .write_all(&input)
        .expect("write");
    let out = p.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = parse_exposition(&String::from_utf8(out.stdout).expect("utf-8"));
    let reason = |r: &str| m[&key("weir_parse_errors_total", &[("reason", r)])];
    assert_eq!(m[&key("weir_events_total", &[("source", "stdin")])], 9.0);
    assert_eq!(
        reason("invalid_json"),
        3.0,
        "cut JSON, plain text, and the cut long line"
    );
    assert_eq!(reason("not_an_object"), 1.0);
    assert_eq!(reason("invalid_utf8"), 1.0);
    assert_eq!(reason("line_truncated"), 1.0);
    assert_eq!(reason("timestamp_missing"), 2.0);
    assert_eq!(reason("timestamp_invalid"), 1.0);
    // Every line became an event: 9 in all, by normalised level. The 4 lines the parser
    // could not read feed only the metric that includes them.
    let lvl = |name: &str, l: &str| m.get(&key(name, &[("level", l)])).copied().unwrap_or(0.0);
    for name in ["lines_total", "raw_lines_total"] {
        assert_eq!(lvl(name, "INFO"), 1.0);
        assert_eq!(lvl(name, "WARNING"), 1.0);
        assert_eq!(lvl(name, "ERROR"), 2.0);
        assert_eq!(lvl(name, "DEBUG"), 1.0);
    }
    assert_eq!(lvl("lines_total", "UNKNOWN"), 0.0);
    assert_eq!(lvl("raw_lines_total", "UNKNOWN"), 4.0);
}

/// SIGTERM while stdin is still open: weir drains and exits 0.
#[test]
fn sigterm_drains_and_exits_zero() {
    let mut w = spawn_weir(&[]);
    let mut stdin = w.child.stdin.take().expect("stdin");
    stdin.write_all(&demo_logs(1000, 3, 0.0)).expect("write");
    scrape_when_processed(&w.addr, 1000.0);
    let pid = w.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = w.child.wait().expect("wait");
    assert!(status.success(), "exit status {status}");
    drop(stdin);
}

/// `weir validate`: the shipped pipelines pass; a broken one names file, line and column, quotes
/// the line, says what was expected, and exits 2.
#[test]
fn validate_accepts_shipped_pipelines_and_locates_errors() {
    for p in ["pipelines/agents.toml", "pipelines/paired.toml"] {
        let out = weir()
            .args(["validate", "--config", p])
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{p}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let p = temp_file(
        dir.path(),
        "bad.toml",
        b"[[metrics]]\nname = \"x_total\"\nkind = \"counter\"\nwhen = 'level == \"ERROR\" && message =~ \"(\"'\n",
    );
    let out = weir()
        .args(["validate", "--config"])
        .arg(&p)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).expect("utf-8");
    let want = format!(
        "error: {}:4:40: invalid condition: expected a valid regular expression",
        p.display()
    );
    assert!(err.starts_with(&want), "{err}");
    assert!(err.contains("(unclosed group)"), "{err}");
    assert!(
        err.contains("4 | when = 'level == \"ERROR\" && message =~ \"(\"'"),
        "{err}"
    );
    let out = weir()
        .args(["validate", "--config", "/nonexistent.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

/// A duration from a start event paired with its end on trace_id (pipelines/paired.toml): the
/// histogram count equals the completed tasks whose start was seen, and the sum the time between.
#[test]
fn paired_start_and_end_events_give_durations() {
    let corpus = demo_logs(20_000, 11, 0.0);
    let mut starts = std::collections::HashMap::new();
    let (mut n, mut sum) = (0u64, 0f64);
    for line in corpus.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).expect("json");
        let ts = v["timestamp"]
            .as_str()
            .expect("ts")
            .parse::<jiff::Timestamp>()
            .expect("timestamp")
            .as_nanosecond();
        let tid = v["trace_id"].as_str().expect("trace_id").to_string();
        if v["message"] == "Task started" {
            starts.insert(tid, ts);
        } else if v["message"] == "Task completed" {
            if let Some(s) = starts.remove(&tid) {
                n += 1;
                sum += (ts - s) as f64 / 1e9;
            }
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let f = temp_file(dir.path(), "c.jsonl", &corpus);
    let out = weir()
        .args(["run", "--oneshot", "--config", "pipelines/paired.toml"])
        .arg(&f)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = parse_exposition(&String::from_utf8(out.stdout).expect("utf-8"));
    let got_n: f64 = m
        .iter()
        .filter(|(k, _)| k.0 == "task_wall_seconds_count")
        .map(|(_, v)| v)
        .sum();
    let got_sum: f64 = m
        .iter()
        .filter(|(k, _)| k.0 == "task_wall_seconds_sum")
        .map(|(_, v)| v)
        .sum();
    assert!(n > 1000);
    assert_eq!(got_n, n as f64);
    assert!((got_sum - sum).abs() < 1e-6 * sum, "{got_sum} vs {sum}");
}

/// The series limit: new label sets past it go to one overflow series, counted.
#[test]
fn series_limit_overflows_into_one_series_and_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = temp_file(
        dir.path(),
        "p.toml",
        b"[[metrics]]\nname = \"by_trace_total\"\nkind = \"counter\"\nlabels = { t = \"trace_id\" }\nmax_series = 50\n",
    );
    let f = temp_file(dir.path(), "c.jsonl", &demo_logs(1000, 5, 0.0));
    let out = weir()
        .args(["run", "--oneshot", "--config"])
        .arg(&p)
        .arg(&f)
        .output()
        .expect("run");
    assert!(out.status.success());
    let m = parse_exposition(&String::from_utf8(out.stdout).expect("utf-8"));
    let series = m.keys().filter(|k| k.0 == "by_trace_total").count();
    assert_eq!(series, 51, "50 label sets and the overflow series");
    let overflow = m[&key("by_trace_total", &[("t", "__weir_overflow__")])];
    let dropped = m[&key("weir_series_dropped_total", &[("metric", "by_trace_total")])];
    assert_eq!(overflow, dropped);
    let total: f64 = m
        .iter()
        .filter(|(k, _)| k.0 == "by_trace_total")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total, 1000.0, "no event lost to the limit");
}

/// METRICS_PORT sets the port when --listen is absent.
#[test]
fn metrics_port_from_the_environment() {
    let port = free_port();
    let mut child = weir()
        .arg("run")
        .env("METRICS_PORT", port.to_string())
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let addr = format!("127.0.0.1:{port}");
    loop {
        if std::net::TcpStream::connect(&addr).is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "weir did not listen on {addr}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(get(&addr, "/health").0, 200);
    drop(child.stdin.take());
    assert!(child.wait().expect("wait").success());
}
