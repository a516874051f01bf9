//! Multi-line events: Python's `logging` with `exc_info=True` writes a traceback after the JSON
//! line; with `multiline = { mode = "python" }` (or `--multiline python`) each traceback is part
//! of its event, counted once, with the traceback as `exception`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::*;

/// Writes `records` log records with Python's `logging` (the agent system's JSON format
/// string), every third an error logged with `exc_info=True` (a chained traceback) whose
/// message has quotes (so its JSON line needs weir's repair).
fn python_log(path: &Path, records: usize) {
    let script = r#"
import json, logging, sys
fmt = '{"timestamp":"%(asctime)s","level":"%(levelname)s","component":"%(name)s","message":"%(message)s","metadata":%(metadata)s}'
h = logging.FileHandler(sys.argv[1])
h.setFormatter(logging.Formatter(fmt))
log = logging.getLogger("MonitoringCollector")
log.addHandler(h)
log.setLevel(logging.INFO)
def lookup(d):
    return d["missing"]
for i in range(int(sys.argv[2])):
    if i % 3 == 2:
        try:
            try:
                lookup({})
            except KeyError as e:
                raise ValueError("lookup failed") from e
        except ValueError:
            md = {"trace_id": "t%d" % i, "error_type": "ValueError", "error_message": "lookup failed"}
            # The formatter pastes the message in unescaped: its quotes break the JSON head.
            log.error('Task failed: "lookup"', exc_info=True, extra={"metadata": json.dumps(md)})
    else:
        md = {"trace_id": "t%d" % i, "agent_id": "agent-%02d" % (i % 4), "duration": 0.5, "status": "success"}
        log.info("Task completed: success", extra={"metadata": json.dumps(md)})
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .arg(records.to_string())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pipeline(dir: &Path, log: &Path, multiline: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[[sources]]
type = "file"
paths = [{log:?}]
{multiline}

[[metrics]]
name = "errors_with_traceback_total"
kind = "counter"
help = "ERROR events that carry a traceback."
when = 'level == "ERROR" && exists(exception)'
"#,
        log = log.display().to_string(),
    );
    temp_file(dir, "pipeline.toml", text.as_bytes())
}

/// A running weir's stdout, line by line.
fn stdout_lines(w: &mut Running) -> std::sync::mpsc::Receiver<String> {
    let out = w.child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

fn recv_n(rx: &std::sync::mpsc::Receiver<String>, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            rx.recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("only {i} of {n} lines"))
        })
        .collect()
}

fn oneshot(args: &[&str]) -> std::collections::BTreeMap<Key, f64> {
    let out = weir()
        .args(["run", "--oneshot"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run weir");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_exposition(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn python_tracebacks_are_part_of_their_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    python_log(&log, 30);
    let text = std::fs::read_to_string(&log).unwrap();
    let physical = text.lines().count() as f64;
    assert!(
        physical > 100.0,
        "tracebacks were written: {physical} lines"
    );
    let source = log.display().to_string();
    let events = key("weir_events_total", &[("source", &source)]);
    let p = pipeline(dir.path(), &log, r#"multiline = { mode = "python" }"#);
    let m = oneshot(&["--config", p.to_str().unwrap()]);
    assert_eq!(m[&events], 30.0, "one event per record, not per line");
    assert_eq!(m[&key("errors_with_traceback_total", &[])], 10.0);
    assert_eq!(
        m[&key("weir_parse_errors_total", &[("reason", "invalid_json")])],
        0.0
    );
    assert_eq!(
        m[&key(
            "weir_parse_errors_total",
            &[("reason", "message_unescaped")]
        )],
        10.0,
        "the JSON heads are repaired, their tracebacks kept"
    );
    assert_eq!(
        m[&key(
            "weir_parse_errors_total",
            &[("reason", "multiline_truncated")]
        )],
        0.0
    );

    // The same file through the default pipeline and `--multiline python`.
    let m = oneshot(&["--multiline", "python", log.to_str().unwrap()]);
    assert_eq!(m[&events], 30.0);
    assert_eq!(
        m[&key("agent_task_success_total", &[("agent_id", "agent-00")])]
            + m[&key("agent_task_success_total", &[("agent_id", "agent-01")])]
            + m[&key("agent_task_success_total", &[("agent_id", "agent-02")])]
            + m[&key("agent_task_success_total", &[("agent_id", "agent-03")])],
        20.0,
        "{m:#?}"
    );
    // The default pipeline joins Python tracebacks without the flag too.
    let m = oneshot(&[log.to_str().unwrap()]);
    assert_eq!(m[&events], 30.0);
    // Without joining (a pipeline with no `multiline`), every traceback line is an event of
    // its own (and not JSON).
    let plain = log.with_file_name("plain.toml");
    std::fs::write(&plain, "[event]\n").expect("write pipeline");
    let m = oneshot(&["--config", plain.to_str().unwrap(), log.to_str().unwrap()]);
    assert_eq!(m[&events], physical);
}

#[test]
fn events_past_max_lines_are_cut_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    python_log(&log, 9);
    let p = pipeline(
        dir.path(),
        &log,
        r#"multiline = { mode = "python", max_lines = 4 }"#,
    );
    let m = oneshot(&["--config", p.to_str().unwrap()]);
    let source = log.display().to_string();
    assert_eq!(m[&key("weir_events_total", &[("source", &source)])], 9.0);
    assert_eq!(
        m[&key(
            "weir_parse_errors_total",
            &[("reason", "multiline_truncated")]
        )],
        3.0,
        "each of the 3 tracebacks is longer than 4 lines"
    );
    assert_eq!(m[&key("errors_with_traceback_total", &[])], 3.0);
}

#[test]
fn weir_test_joins_its_input_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/multiline");
    let out = weir()
        .arg("test")
        .arg(dir.join("python.toml"))
        .output()
        .expect("weir test");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("ok    a traceback is part of the JSON line before it"),
        "{text}"
    );
}

/// A traceback written slowly, partly after the joiner's timeout: every line comes out once,
/// in order; what arrived within the timeout is joined.
#[test]
fn a_slowly_written_file_yields_every_line_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(&log, "").unwrap();
    let data = dir.path().join("data");
    let p = pipeline(
        dir.path(),
        &log,
        r#"multiline = { mode = "python", timeout_ms = 300 }"#,
    );
    let mut w = spawn_weir(&[
        "--stdout",
        "--config",
        p.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let rx = stdout_lines(&mut w);
    let json = |i: u32, level: &str| {
        format!(
            "{{\"timestamp\":\"2024-01-01 00:00:0{i},000\",\"level\":\"{level}\",\"message\":\"m{i}\",\"metadata\":{{}}}}\n"
        )
    };
    let tb = |i: u32| {
        [
            "Traceback (most recent call last):\n".to_string(),
            format!("  File \"app.py\", line {i}, in run\n"),
            "    work()\n".to_string(),
            format!("ValueError: failure {i}\n"),
        ]
    };
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    let mut written: Vec<String> = Vec::new();
    let mut write = |f: &mut std::fs::File, s: &str| {
        f.write_all(s.as_bytes()).unwrap();
        f.flush().unwrap();
        written.push(s.trim_end_matches('\n').to_string());
    };
    // An error line, then its traceback only after the timeout: two events.
    write(&mut f, &json(1, "ERROR"));
    std::thread::sleep(Duration::from_millis(1200));
    for l in tb(1) {
        write(&mut f, &l);
    }
    // An error line and its traceback line by line, well within the timeout: one event.
    write(&mut f, &json(2, "ERROR"));
    for l in tb(2) {
        std::thread::sleep(Duration::from_millis(50));
        write(&mut f, &l);
    }
    write(&mut f, &json(3, "INFO"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got: Vec<String> = Vec::new();
    while got.len() < written.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => got.push(l),
            Err(_) => panic!("only {} of {} lines: {got:#?}", got.len(), written.len()),
        }
    }
    assert_eq!(got, written, "every line once, in order");
    let source = log.display().to_string();
    // JSON 1 | traceback 1 | JSON 2 + traceback 2 | JSON 3.
    wait_for_metric(&w.addr, "weir_events_total", &[("source", &source)], 4.0);
    assert_eq!(metric(&w.addr, "errors_with_traceback_total", &[]), 1.0);
    // Nothing more comes, also after a while.
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err());
}

const RECORD: &str = "{\"timestamp\":\"2024-01-01 00:00:00,019\",\"level\":\"ERROR\",\"component\":\"MonitoringCollector\",\"message\":\"Task failed\",\"metadata\":{\"trace_id\":\"t1\",\"error_type\":\"ValueError\"}}\nTraceback (most recent call last):\n  File \"app.py\", line 3, in <module>\n    run()\nValueError: bad\n";

/// stdin stays open: the held event comes out after its timeout, not only at EOF.
#[test]
fn stdin_emits_a_held_event_after_its_timeout() {
    let mut w = spawn_weir(&["--stdout", "--multiline", "python"]);
    let mut stdin = w.child.stdin.take().unwrap();
    stdin.write_all(RECORD.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let rx = stdout_lines(&mut w);
    let got: Vec<String> = (0..5)
        .map(|_| rx.recv_timeout(Duration::from_secs(30)).expect("a line"))
        .collect();
    assert_eq!(got.join("\n") + "\n", RECORD);
    wait_for_metric(&w.addr, "weir_events_total", &[("source", "stdin")], 1.0);
    drop(stdin);
}

/// Per TCP connection: each client's traceback joins that client's line.
#[test]
fn tcp_joins_per_connection() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let (w, _) = spawn_weir_logging(
        &["--tcp", &addr, "--multiline", "python"],
        &["serving /metrics", "tcp source listening"],
    );
    let mut a = std::net::TcpStream::connect(&addr).unwrap();
    let mut b = std::net::TcpStream::connect(&addr).unwrap();
    let (head, rest) = RECORD.split_once('\n').unwrap();
    a.write_all(format!("{head}\n").as_bytes()).unwrap();
    b.write_all(format!("{head}\n").as_bytes()).unwrap();
    a.write_all(rest.as_bytes()).unwrap();
    b.write_all(rest.as_bytes()).unwrap();
    a.flush().unwrap();
    b.flush().unwrap();
    let source = format!("tcp:{addr}");
    // Held until the timeout (the connections stay open), then one event each.
    wait_for_metric(&w.addr, "weir_events_total", &[("source", &source)], 2.0);
    drop(a);
    drop(b);
    wait_for_metric(
        &w.addr,
        "weir_tcp_disconnects_total",
        &[("reason", "eof")],
        2.0,
    );
    assert_eq!(
        metric(&w.addr, "weir_events_total", &[("source", &source)]),
        2.0
    );
}

/// A held event pins the checkpoint: after `kill -9` the restarted weir reads it again, whole,
/// with the traceback that arrived meanwhile; no line is lost or repeated.
#[test]
fn kill_9_while_an_event_is_held_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let data = dir.path().join("data");
    let p = pipeline(
        dir.path(),
        &log,
        r#"multiline = { mode = "python", timeout_ms = 3000 }"#,
    );
    let (head, traceback) = RECORD.split_once('\n').unwrap();
    let first = "{\"level\":\"INFO\",\"message\":\"before\"}";
    let last = "{\"level\":\"INFO\",\"message\":\"after\"}";
    std::fs::write(&log, format!("{first}\n{head}\n")).unwrap();
    let args = [
        "--stdout",
        "--config",
        p.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let mut w = spawn_weir(&args);
    let rx = stdout_lines(&mut w);
    // `first` is complete once `head` starts the next event; `head` is held.
    assert_eq!(recv_n(&rx, 1), [first]);
    wait_for_metric(
        &w.addr,
        "weir_events_total",
        &[("source", &log.display().to_string())],
        1.0,
    );
    // The checkpoint (written when the file is idle) stops at `head`.
    std::thread::sleep(Duration::from_millis(1200));
    let _ = w.child.kill();
    let _ = w.child.wait();
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "head was held"
    );

    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(format!("{traceback}{last}\n").as_bytes())
        .unwrap();
    let mut w = spawn_weir(&args);
    let rx = stdout_lines(&mut w);
    let want: Vec<String> = format!("{head}\n{traceback}{last}")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(recv_n(&rx, want.len()), want);
    let source = log.display().to_string();
    wait_for_metric(&w.addr, "weir_events_total", &[("source", &source)], 2.0);
    assert_eq!(metric(&w.addr, "errors_with_traceback_total", &[]), 1.0);
}

/// The spec receivers get one entry / one document per event: Loki the whole text with its
/// newlines, Elasticsearch a valid document of the JSON head with the traceback as `exception`.
#[test]
fn sinks_get_the_joined_event() {
    use crate::support::elasticsearch::ElasticsearchReceiver;
    use crate::support::loki::LokiReceiver;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    python_log(&log, 3);
    let text = std::fs::read_to_string(&log).unwrap();
    let loki = LokiReceiver::start();
    let es = ElasticsearchReceiver::start();
    let out = weir()
        .args(["run", "--oneshot", "--multiline", "python"])
        .args(["--loki", &loki.url(), "--elasticsearch", &es.url()])
        .arg(&log)
        .stdin(Stdio::null())
        .output()
        .expect("run weir");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries = loki.wait_for_entries(3, Duration::from_secs(30));
    assert_eq!(entries.len(), 3);
    // The error's JSON head as weir repaired it (its message re-escaped).
    let want = text.replace(r#""Task failed: "lookup"""#, r#""Task failed: \"lookup\"""#);
    let lines: Vec<&str> = entries.iter().map(|e| e.line.as_str()).collect();
    for l in &lines {
        assert!(want.contains(&format!("{l}\n")), "{l}");
    }
    let shipped: usize = lines.iter().map(|l| l.len() + 1).sum();
    assert_eq!(
        shipped,
        want.len(),
        "every line once, the tracebacks inside"
    );
    let error = lines
        .iter()
        .find(|l| l.contains("ERROR"))
        .expect("the error event");
    assert!(
        error.contains("\nTraceback (most recent call last):\n"),
        "{error}"
    );
    let docs = es.wait_for_docs(3, Duration::from_secs(30));
    assert_eq!(docs.len(), 3);
    let with_exception: Vec<_> = docs
        .iter()
        .filter(|d| d.source.get("exception").is_some())
        .collect();
    assert_eq!(with_exception.len(), 1, "{docs:#?}");
    let doc = &with_exception[0].source;
    assert_eq!(doc["level"], "ERROR");
    assert_eq!(doc["metadata"]["error_type"], "ValueError");
    let exception = doc["exception"].as_str().unwrap();
    assert!(exception.starts_with("Traceback (most recent call last):\n"));
    assert!(
        exception.ends_with("ValueError: lookup failed"),
        "{exception}"
    );
}
