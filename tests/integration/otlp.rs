//! The OTLP sink against a receiver written from the OTLP/HTTP specification
//! (`tests/support/otlp.rs`, decoding with the official proto types; not a real collector):
//! spans derived by `[[spans]]` and every line as a log record, with trace ids, span ids,
//! times, attributes, status, resource and severities checked; and the same fault injection
//! as the Loki tests (503 then 200, an outage with a disk buffer across a restart, a 400
//! dead-lettered, a `partial_success` counted).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{ChildStdin, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::common::v1::any_value::Value as V;

use crate::support::otlp::{attr, str_attr, OtlpReceiver};
use crate::util::*;

const WAIT: Duration = Duration::from_secs(60);
const EXIT_DEADLINE: Duration = Duration::from_secs(120);

/// The trace id of task `seq`: a UUID.
fn uuid_of(seq: u64) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", seq + 1, seq)
}

fn uuid_bytes(seq: u64) -> Vec<u8> {
    uuid::Uuid::parse_str(&uuid_of(seq))
        .expect("a UUID")
        .as_bytes()
        .to_vec()
}

fn failed(seq: u64) -> bool {
    seq % 5 == 0
}

/// Seconds task `seq` took: 0.5, 0.75, 1, 1.25 (exact in binary).
fn duration_of(seq: u64) -> f64 {
    0.5 + (seq % 4) as f64 * 0.25
}

/// Base time of a test's lines: ten minutes ago, on a millisecond.
fn base_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond() - 600_000
}

/// End time of task `seq`, in ns.
fn end_ns(base: i64, seq: u64) -> i64 {
    (base + 10 * seq as i64 + 5) * 1_000_000
}

fn rfc3339_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .expect("timestamp")
        .to_string()
}

/// Two lines per task: "Task started" (INFO, no span) and "Task completed" (ERROR when it
/// failed, else INFO) with its duration: a span.
fn task_lines(base: i64, seqs: std::ops::Range<u64>) -> String {
    let mut out = String::new();
    for seq in seqs {
        let status = if failed(seq) { "failure" } else { "success" };
        let level = if failed(seq) { "ERROR" } else { "INFO" };
        out.push_str(&format!(
            "{{\"timestamp\":\"{}\",\"level\":\"INFO\",\"component\":\"AgentOrchestrator\",\"message\":\"Task started\",\"trace_id\":\"{}\",\"metadata\":{{\"seq\":{seq}}}}}\n",
            rfc3339_ms(base + 10 * seq as i64),
            uuid_of(seq),
        ));
        out.push_str(&format!(
            "{{\"timestamp\":\"{}\",\"level\":\"{level}\",\"component\":\"AgentOrchestrator\",\"message\":\"Task completed\",\"trace_id\":\"{}\",\"metadata\":{{\"seq\":{seq},\"agent_id\":\"agent-{:02}\",\"status\":\"{status}\",\"duration\":{:?}}}}}\n",
            rfc3339_ms(base + 10 * seq as i64 + 5),
            uuid_of(seq),
            seq % 7,
            duration_of(seq),
        ));
    }
    out
}

/// A pipeline with the task spans and one OTLP sink at `url`; `extra` goes into `[[sinks]]`.
fn pipeline(dir: &Path, url: &str, extra: &str) -> String {
    let toml = format!(
        r#"
[[spans]]
name = "agent.task"
when = 'message == "Task completed"'
duration = "metadata.duration"
attributes = {{ "agent.id" = "metadata.agent_id", "task.seq" = "metadata.seq" }}
status_from = "metadata.status"

[[sinks]]
type = "otlp"
endpoint = '{url}'
service_name = "agents"
dead_letter_path = '{}'
{extra}

[sinks.batch]
max_age_ms = 200
"#,
        dir.join("otlp.dead.ndjson").display()
    );
    temp_file(dir, "otlp.toml", toml.as_bytes())
        .to_str()
        .expect("utf-8 temp path")
        .to_string()
}

fn finish(w: &mut Running, stdin: ChildStdin) -> ExitStatus {
    drop(stdin);
    wait_exit(&mut w.child, EXIT_DEADLINE)
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        assert!(Instant::now() < deadline, "weir did not exit in {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn seq_of_attrs(attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> u64 {
    match attr(attrs, key) {
        Some(V::IntValue(i)) => *i as u64,
        other => panic!("{key} is not an int: {other:?}"),
    }
}

/// Spans per task seq.
fn span_counts(rx: &OtlpReceiver) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for s in rx.spans() {
        *out.entry(seq_of_attrs(&s.span.attributes, "task.seq"))
            .or_default() += 1;
    }
    out
}

/// Log records per (task seq, body).
fn log_counts(rx: &OtlpReceiver) -> BTreeMap<(u64, String), usize> {
    let mut out = BTreeMap::new();
    for l in rx.logs() {
        let body = match l.record.body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(V::StringValue(s)) => s.clone(),
            other => panic!("body is not a string: {other:?}"),
        };
        *out.entry((seq_of_attrs(&l.record.attributes, "metadata.seq"), body))
            .or_default() += 1;
    }
    out
}

/// Every task's span and both its log records arrived exactly once, nothing else.
fn assert_once(rx: &OtlpReceiver, seqs: std::ops::Range<u64>) {
    let spans = span_counts(rx);
    let want: BTreeMap<u64, usize> = seqs.clone().map(|s| (s, 1)).collect();
    assert_eq!(spans, want, "spans per task; exports {:?}", rx.summary());
    let logs = log_counts(rx);
    let want: BTreeMap<(u64, String), usize> = seqs
        .flat_map(|s| {
            [
                ((s, "Task started".to_string()), 1),
                ((s, "Task completed".to_string()), 1),
            ]
        })
        .collect();
    assert_eq!(
        logs,
        want,
        "log records per task; exports {:?}",
        rx.summary()
    );
}

/// The whole path, checked field by field on the wire: trace ids are the input's UUID bytes,
/// span ids 8 bytes, start = end - duration, attributes typed, status ERROR for failures and
/// OK otherwise, resource service.name; log records with severity numbers, bodies, times,
/// the trace id and, on an end event, its span's id; gzip and a bearer token from the
/// environment.
#[test]
fn spans_and_log_records_reach_a_spec_otlp_receiver_wire_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rx = OtlpReceiver::start();
    let p = pipeline(
        dir.path(),
        &rx.url(),
        "compression = \"gzip\"\nbearer_token_env = \"WEIR_TEST_OTLP_TOKEN\"",
    );
    let mut w = spawn_weir_env(&["--config", &p], &[("WEIR_TEST_OTLP_TOKEN", "t0k")]);
    let mut stdin = w.child.stdin.take().expect("stdin");
    let base = base_ms();
    let n = 50;
    stdin
        .write_all(task_lines(base, 0..n).as_bytes())
        .expect("write");
    rx.wait_for_spans(n as usize, WAIT);
    rx.wait_for_logs(2 * n as usize, WAIT);
    let status = finish(&mut w, stdin);
    assert!(status.success(), "weir exited with {status}");
    assert_once(&rx, 0..n);

    for e in rx.exports() {
        assert_eq!(e.status, 200, "{e:?}");
        assert_eq!(e.content_type.as_deref(), Some("application/x-protobuf"));
        assert_eq!(e.content_encoding.as_deref(), Some("gzip"));
        assert_eq!(e.authorization.as_deref(), Some("Bearer t0k"));
    }
    let mut span_ids = BTreeMap::new();
    for s in rx.spans() {
        let seq = seq_of_attrs(&s.span.attributes, "task.seq");
        let sp = &s.span;
        assert_eq!(str_attr(&s.resource, "service.name"), Some("agents"));
        assert_eq!(s.scope, "weir");
        assert_eq!(sp.name, "agent.task");
        assert_eq!(sp.trace_id, uuid_bytes(seq), "trace id of task {seq}");
        assert_eq!(sp.span_id.len(), 8);
        assert!(sp.parent_span_id.is_empty());
        assert_eq!(sp.kind, 1, "internal");
        let end = end_ns(base, seq) as u64;
        assert_eq!(sp.end_time_unix_nano, end, "end of task {seq}");
        assert_eq!(
            sp.start_time_unix_nano,
            end - (duration_of(seq) * 1e9) as u64,
            "start of task {seq}"
        );
        let agent = format!("agent-{:02}", seq % 7);
        assert_eq!(str_attr(&sp.attributes, "agent.id"), Some(agent.as_str()));
        let st = sp.status.as_ref().expect("a status");
        if failed(seq) {
            assert_eq!((st.code, st.message.as_str()), (2, "failure"), "task {seq}");
        } else {
            assert_eq!(st.code, 1, "task {seq}");
        }
        span_ids.insert(seq, sp.span_id.clone());
    }
    for l in rx.logs() {
        let r = &l.record;
        let seq = seq_of_attrs(&r.attributes, "metadata.seq");
        assert_eq!(str_attr(&l.resource, "service.name"), Some("agents"));
        assert_eq!(r.trace_id, uuid_bytes(seq));
        assert_eq!(
            str_attr(&r.attributes, "component"),
            Some("AgentOrchestrator")
        );
        assert!(r.observed_time_unix_nano > 0);
        let body = match r.body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(V::StringValue(s)) => s.as_str(),
            other => panic!("{other:?}"),
        };
        if body == "Task completed" {
            let (num, text) = if failed(seq) {
                (17, "ERROR")
            } else {
                (9, "INFO")
            };
            assert_eq!((r.severity_number, r.severity_text.as_str()), (num, text));
            assert_eq!(r.time_unix_nano, end_ns(base, seq) as u64);
            assert_eq!(
                Some(&r.span_id),
                span_ids.get(&seq),
                "the end event's span id"
            );
            assert_eq!(
                attr(&r.attributes, "metadata.duration"),
                Some(&V::DoubleValue(duration_of(seq)))
            );
        } else {
            assert_eq!((r.severity_number, r.severity_text.as_str()), (9, "INFO"));
            assert!(r.span_id.is_empty());
        }
    }
}

/// `--otlp URL` with the embedded pipeline (no `[[spans]]`): every line as a log record, no
/// trace export at all.
#[test]
fn the_otlp_flag_sends_every_line_as_a_log_record() {
    let rx = OtlpReceiver::start();
    let mut w = spawn_weir(&["--otlp", &rx.url()]);
    let mut stdin = w.child.stdin.take().expect("stdin");
    stdin
        .write_all(task_lines(base_ms(), 0..20).as_bytes())
        .expect("write");
    rx.wait_for_logs(40, WAIT);
    let status = finish(&mut w, stdin);
    assert!(status.success(), "weir exited with {status}");
    assert_eq!(rx.logs().len(), 40);
    assert!(rx.spans().is_empty());
    assert!(rx
        .exports()
        .iter()
        .all(|e| e.signal == "logs" && e.status == 200));
    let l = &rx.logs()[0];
    assert_eq!(str_attr(&l.resource, "service.name"), Some("weir"));
}

/// The receiver answers 503 (and then 429 with Retry-After) before it recovers: weir retries
/// and every span and log record arrives exactly once.
#[test]
fn a_spec_otlp_receiver_answering_503_then_200_gets_everything_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rx = OtlpReceiver::start();
    rx.fail_next_with(3, 503);
    rx.throttle_next(1, "1");
    let p = pipeline(dir.path(), &rx.url(), "");
    let mut w = spawn_weir(&["--config", &p]);
    let mut stdin = w.child.stdin.take().expect("stdin");
    stdin
        .write_all(task_lines(base_ms(), 0..40).as_bytes())
        .expect("write");
    let status = finish(&mut w, stdin);
    assert!(status.success(), "weir exited with {status}");
    assert_once(&rx, 0..40);
    let statuses: Vec<u16> = rx.exports().iter().map(|e| e.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        1,
        "{statuses:?}"
    );
    assert!(!dir.path().join("otlp.dead.ndjson").exists());
}

/// Lines of the disk buffer's segments (records of events).
fn records_on_disk(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                .map(|e| {
                    std::fs::read_to_string(e.path())
                        .unwrap_or_default()
                        .lines()
                        .filter(|l| !l.starts_with("\u{1e}weir-buffer"))
                        .count()
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The receiver is down while weir reads into its disk buffer; weir is stopped (SIGTERM)
/// during the outage; the receiver comes back; a new weir on the same data_dir sends what the
/// disk holds: every span (stored with its event) and every log record arrives, none twice.
#[test]
fn an_otlp_outage_across_a_restart_with_a_disk_buffer_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("tempdir");
    let rx = OtlpReceiver::start();
    rx.refuse_connections_for(Duration::from_secs(3600));
    let p = pipeline(dir.path(), &rx.url(), "[sinks.buffer]\ntype = \"disk\"");
    let n = 500u64;
    let mut w = weir()
        .args(["run", "--listen", "127.0.0.1:0", "--config", &p])
        .args(["--shutdown-timeout-secs", "1", "--data-dir"])
        .arg(data.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stdin = w.stdin.take().expect("stdin");
    stdin
        .write_all(task_lines(base_ms(), 0..n).as_bytes())
        .expect("write");
    let buffer = data.path().join("buffer/otlp");
    let deadline = Instant::now() + Duration::from_secs(30);
    while records_on_disk(&buffer) < 2 * n as usize {
        assert!(
            Instant::now() < deadline,
            "only {} records on disk",
            records_on_disk(&buffer)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &w.id().to_string()])
        .status();
    assert!(kill.expect("kill").success());
    assert!(wait_exit(&mut w, Duration::from_secs(20)).success());
    drop(stdin);
    assert!(rx.spans().is_empty() && rx.logs().is_empty());

    rx.clear_faults();
    rx.refuse_connections_for(Duration::from_millis(1));
    std::thread::sleep(Duration::from_millis(200));
    let mut w2 = weir()
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--config",
            &p,
            "--data-dir",
        ])
        .arg(data.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    assert!(wait_exit(&mut w2, Duration::from_secs(60)).success());
    assert_once(&rx, 0..n);
}

/// A 400 is final (the OTLP/HTTP spec: not retried): the request's lines are dead-lettered
/// with the receiver's Status message, counted, and nothing of them is sent again; the other
/// lines arrive once.
#[test]
fn a_400_from_a_spec_otlp_receiver_is_dead_lettered_not_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rx = OtlpReceiver::start();
    let p = pipeline(dir.path(), &rx.url(), "signals = [\"logs\"]");
    let mut w = spawn_weir(&["--config", &p]);
    let mut stdin = w.child.stdin.take().expect("stdin");
    let base = base_ms();
    stdin
        .write_all(task_lines(base, 0..10).as_bytes())
        .expect("write");
    rx.wait_for_logs(20, WAIT);
    rx.fail_next_with(1, 400);
    stdin
        .write_all(task_lines(base, 10..20).as_bytes())
        .expect("write");
    wait_for_metric(
        &w.addr,
        "weir_sink_dead_lettered_total",
        &[("sink", "otlp/logs"), ("reason", "rejected")],
        20.0,
    );
    stdin
        .write_all(task_lines(base, 20..30).as_bytes())
        .expect("write");
    rx.wait_for_logs(40, WAIT);
    let status = finish(&mut w, stdin);
    assert!(status.success(), "weir exited with {status}");

    let text = std::fs::read_to_string(dir.path().join("otlp.dead.ndjson")).expect("dead letters");
    let letters: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(letters.len(), 20, "{text}");
    for l in &letters {
        assert_eq!(l["reason"], "rejected");
        assert_eq!(l["detail"], "http_400: injected fault");
        assert_eq!(l["sink"], "otlp/logs");
    }
    let logs = log_counts(&rx);
    assert_eq!(logs.len(), 40);
    assert!(logs.values().all(|n| *n == 1), "{logs:?}");
    assert!(logs.keys().all(|(s, _)| !(10..20).contains(s)));
    assert!(rx.exports().iter().filter(|e| e.status == 400).count() == 1);
}

/// A 200 whose `partial_success` rejects 3 records: delivered (not retried), the 3 counted in
/// `weir_sink_dropped_total{reason="partial_success"}`.
#[test]
fn a_partial_success_is_counted_and_not_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rx = OtlpReceiver::start();
    rx.reject_partially_next(1, 3);
    let p = pipeline(dir.path(), &rx.url(), "signals = [\"logs\"]");
    let mut w = spawn_weir(&["--config", &p]);
    let mut stdin = w.child.stdin.take().expect("stdin");
    stdin
        .write_all(task_lines(base_ms(), 0..10).as_bytes())
        .expect("write");
    rx.wait_for_logs(17, WAIT);
    wait_for_metric(
        &w.addr,
        "weir_sink_dropped_total",
        &[("sink", "otlp/logs"), ("reason", "partial_success")],
        3.0,
    );
    let status = finish(&mut w, stdin);
    assert!(status.success(), "weir exited with {status}");
    assert_eq!(rx.logs().len(), 17);
    assert!(rx.exports().iter().all(|e| e.status == 200));
}
