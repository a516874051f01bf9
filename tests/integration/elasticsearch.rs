//! The Elasticsearch sink against a receiver written from Elasticsearch's public `_bulk` API
//! spec (`tests/support/elasticsearch.rs`) — not a real Elasticsearch: NDJSON bulk bodies
//! (gzip too), `create` with ids (409 on a second create), per-item results and errors,
//! dynamic mapping errors, data streams, and injected faults (500, 429 with Retry-After,
//! per-item 429, slow answers after indexing, refused connections).
//!
//! These tests are written against the binary as it WILL be wired (adjust here if the wiring
//! differs):
//! - `weir run --elasticsearch URL` adds an Elasticsearch sink with the default config
//!   (index `logs-weir-%Y.%m.%d`, from each event's timestamp in UTC) for endpoint URL;
//! - a pipeline file's `[[sinks]] type = "elasticsearch"` with `endpoint`, `index`, `mode`,
//!   `compression`, `api_key_env`, `dead_letter_path`, `[sinks.batch]`, `[sinks.request]`;
//! - the sink is named `elasticsearch` in the `weir_sink_*` metrics;
//! - stdin EOF: weir flushes the sink (retrying as needed) and exits 0;
//! - the dead-letter file holds one JSON object per event with `line`, `reason` and `detail`
//!   (Elasticsearch's `<type>: <reason>`), as the driver writes it today.
//!
//! The `the_spec_elasticsearch_receiver_*` tests check the receiver itself and need no wiring.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{ChildStdin, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::elasticsearch::{ElasticsearchOptions, ElasticsearchReceiver, StoredDoc};
use crate::util::*;

/// The `weir run` flag that adds an Elasticsearch sink.
const ES_FLAG: &str = "--elasticsearch";
/// Generous: a retried flush can take several backoff rounds.
const EXIT_DEADLINE: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(60);
/// 2024-03-09T23:59:58Z: lines 1 ms apart cross midnight UTC at seq 2000.
const BASE_NS: i64 = 1_710_028_798_000_000_000;

fn ts(seq: i64) -> i64 {
    BASE_NS + seq * 1_000_000
}

fn rfc3339(ns: i64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(ns))
        .expect("timestamp in range")
        .to_string()
}

/// The daily index weir's default template gives the line of `seq`.
fn index_of(seq: i64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(ts(seq)))
        .expect("timestamp in range")
        .strftime("logs-weir-%Y.%m.%d")
        .to_string()
}

fn message(seq: i64) -> String {
    format!("task {seq} done")
}

/// The line of `seq` with this message and `metadata` JSON.
fn line_with(seq: i64, message: &str, metadata: &str) -> String {
    format!(
        r#"{{"timestamp":"{}","level":"info","component":"c{}","message":{},"seq":{seq},"trace_id":"trace-{seq}","metadata":{metadata}}}"#,
        rfc3339(ts(seq)),
        seq % 3,
        serde_json::Value::String(message.to_string()),
    )
}

fn metadata(seq: i64) -> String {
    format!(
        r#"{{"agent":{{"id":"agent-{}"}},"attempt":{}}}"#,
        seq % 5,
        seq % 4
    )
}

fn line(seq: i64) -> String {
    line_with(seq, &message(seq), &metadata(seq))
}

fn write_text(stdin: &mut ChildStdin, text: &str) {
    stdin.write_all(text.as_bytes()).expect("write stdin");
    stdin.flush().expect("flush stdin");
}

fn write_lines(stdin: &mut ChildStdin, seqs: std::ops::Range<i64>) {
    let text: String = seqs.map(|s| format!("{}\n", line(s))).collect();
    write_text(stdin, &text);
}

/// Closes stdin and waits for weir to flush and exit.
fn finish(w: &mut Running, stdin: ChildStdin) -> ExitStatus {
    drop(stdin);
    let deadline = Instant::now() + EXIT_DEADLINE;
    loop {
        if let Some(status) = w.child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "weir did not exit within {EXIT_DEADLINE:?} of stdin closing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `weir run --elasticsearch URL`, feeds lines `0..n`, closes stdin; weir must exit 0.
fn run_lines(rx: &ElasticsearchReceiver, n: i64) {
    let mut w = spawn_weir(&[ES_FLAG, &rx.url()]);
    let mut stdin = w.child.stdin.take().expect("stdin piped");
    write_lines(&mut stdin, 0..n);
    let status = finish(&mut w, stdin);
    assert!(status.success(), "weir exited with {status}");
}

/// Like `util::spawn_weir`, with extra environment variables for weir (secrets).
#[allow(clippy::zombie_processes)]
fn spawn_weir_with_env(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut child = weir()
        .args(["run", "--listen", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir");
    let stderr = child.stderr.take().expect("stderr piped");
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

fn seq_of(d: &StoredDoc) -> i64 {
    d.source["seq"]
        .as_i64()
        .expect("a stored document has its seq")
}

/// One document as weir must send it: in its day's index, `_id` a 32-digit hex event id, the
/// normalised fields (`@timestamp` the line's time, `level` normalised, `component`,
/// `message`, `trace_id`) and the line's own fields with nested objects kept.
fn assert_document(d: &StoredDoc, message: &str, metadata: &serde_json::Value) {
    let seq = seq_of(d);
    let s = &d.source;
    assert_eq!(d.index, index_of(seq), "index of seq {seq}");
    assert!(
        d.id.len() == 32 && d.id.bytes().all(|b| b.is_ascii_hexdigit()),
        "_id of seq {seq} is the event id: {}",
        d.id
    );
    let at: jiff::Timestamp = s["@timestamp"]
        .as_str()
        .expect("@timestamp is a string")
        .parse()
        .expect("@timestamp is RFC 3339");
    assert_eq!(
        at.as_nanosecond(),
        i128::from(ts(seq)),
        "@timestamp of seq {seq}"
    );
    assert_eq!(s["level"], "INFO", "level of seq {seq}");
    assert_eq!(s["component"], format!("c{}", seq % 3).as_str());
    assert_eq!(s["message"], message);
    assert_eq!(s["trace_id"], format!("trace-{seq}").as_str());
    assert_eq!(&s["metadata"], metadata, "nested fields of seq {seq}");
    assert_eq!(
        s["timestamp"],
        rfc3339(ts(seq)).as_str(),
        "the line's own fields"
    );
}

/// Every seq of `expected` stored exactly once, with every field; nothing else stored.
fn assert_stored_once(rx: &ElasticsearchReceiver, expected: &[i64]) {
    let docs = rx.documents();
    let mut count: BTreeMap<i64, usize> = BTreeMap::new();
    for d in &docs {
        let seq = seq_of(d);
        *count.entry(seq).or_default() += 1;
        let md: serde_json::Value = serde_json::from_str(&metadata(seq)).expect("metadata is JSON");
        assert_document(d, &message(seq), &md);
    }
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "seqs stored more than once: {twice:?}");
    let mut want = expected.to_vec();
    want.sort_unstable();
    assert_eq!(
        count.keys().copied().collect::<Vec<_>>(),
        want,
        "the seqs stored"
    );
}

/// Sum of a `weir_sink_*` counter over the series with `sink="elasticsearch"`.
fn es_metric(addr: &str, name: &str) -> f64 {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200);
    parse_exposition(&body)
        .iter()
        .filter(|((n, labels), _)| {
            n == name && labels.get("sink").map(String::as_str) == Some("elasticsearch")
        })
        .map(|(_, v)| v)
        .sum()
}

fn wait_es_metric(addr: &str, name: &str, want: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = es_metric(addr, name);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{{sink=\"elasticsearch\"}} is {got}, expected {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A pipeline file with one Elasticsearch sink: `endpoint`, a short batch age, and `extra`
/// (more keys of the sink, then tables).
fn pipeline_with_es(dir: &Path, url: &str, extra: &str) -> String {
    let toml = format!(
        r#"
[[sinks]]
type = "elasticsearch"
endpoint = '{url}'
{extra}

[sinks.batch]
max_age_ms = 200
"#
    );
    temp_file(dir, "elasticsearch.toml", toml.as_bytes())
        .to_str()
        .expect("utf-8 temp path")
        .to_string()
}

fn dead_letters(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a dead letter is one JSON object per line"))
        .collect()
}

/// A dead letter's `reason` and, when the record has one, its `detail` (Elasticsearch's own
/// words).
fn dead_letter_reason(letter: &serde_json::Value) -> String {
    let reason = letter["reason"]
        .as_str()
        .expect("a dead letter has a reason");
    match letter["detail"].as_str() {
        Some(detail) => format!("{reason}: {detail}"),
        None => reason.to_string(),
    }
}

/// The basic path: numbered lines on stdin reach a receiver written from the Elasticsearch
/// `_bulk` API spec exactly once, each in the daily index of its own timestamp (the input
/// crosses midnight UTC), with the normalised and nested fields, as NDJSON `create` actions.
#[test]
fn every_line_reaches_a_spec_elasticsearch_receiver_once_in_its_days_index() {
    let rx = ElasticsearchReceiver::start();
    run_lines(&rx, 3000);
    assert_stored_once(&rx, &(0..3000).collect::<Vec<_>>());
    assert_eq!(
        rx.indices(),
        ["logs-weir-2024.03.09", "logs-weir-2024.03.10"]
    );
    assert_eq!(rx.documents_in("logs-weir-2024.03.09").len(), 2000);
    for r in rx.requests() {
        assert_eq!(r.path, "/_bulk");
        assert_eq!(r.status, 200, "{}", r.response);
        assert_eq!(r.content_type.as_deref(), Some("application/x-ndjson"));
        assert_eq!(r.content_encoding, None);
        for item in &r.items {
            assert_eq!(
                (item.action.as_str(), item.status),
                ("create", 201),
                "{item:?}"
            );
        }
    }
    assert_eq!(rx.conflicts(), 0);
}

/// The spec receiver answers the first three requests 500: weir retries, and every line is
/// indexed exactly once.
#[test]
fn a_spec_elasticsearch_receiver_failing_with_500_then_recovering_gets_every_line_once() {
    let rx = ElasticsearchReceiver::start();
    rx.fail_next(3);
    run_lines(&rx, 500);
    assert_stored_once(&rx, &(0..500).collect::<Vec<_>>());
    let statuses: Vec<u16> = rx.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses[..3], [500, 500, 500], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 200), "{statuses:?}");
}

/// The spec receiver answers twice `429` with `Retry-After: 1`: weir waits at least the second
/// asked before sending again, and every line is indexed exactly once.
#[test]
fn a_spec_elasticsearch_receiver_answering_429_with_retry_after_gets_every_line_once() {
    let rx = ElasticsearchReceiver::start();
    rx.throttle_next(2, "1");
    run_lines(&rx, 500);
    assert_stored_once(&rx, &(0..500).collect::<Vec<_>>());
    let requests = rx.requests();
    assert_eq!(requests[0].status, 429);
    assert_eq!(requests[1].status, 429);
    // A lower bound only (a slow machine makes the gap longer, never shorter).
    for pair in requests.windows(2).take(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap >= Duration::from_millis(950),
            "weir retried {gap:?} after a 429 with Retry-After: 1"
        );
    }
}

/// The spec receiver rejects every 7th document with a per-item `429
/// es_rejected_execution_exception` inside a `200` bulk response: weir resends only those
/// documents (each seen exactly twice by the receiver, every other once), and every line is
/// indexed exactly once.
#[test]
fn documents_refused_per_item_by_a_spec_elasticsearch_receiver_are_resent_alone() {
    let rx = ElasticsearchReceiver::start();
    rx.fail_every_kth_item(7);
    run_lines(&rx, 700);
    assert_stored_once(&rx, &(0..700).collect::<Vec<_>>());
    let failed = rx.failed_item_ids();
    assert!(failed.len() >= 100, "{} items failed", failed.len());
    let attempts = rx.id_attempts();
    for d in rx.documents() {
        let want = if failed.contains(&d.id) { 2 } else { 1 };
        assert_eq!(
            attempts.get(&d.id).copied(),
            Some(want),
            "items sent for seq {} (failed once: {})",
            seq_of(&d),
            failed.contains(&d.id)
        );
    }
    assert_eq!(attempts.len(), 700, "no id the receiver did not store");
    let rejected: usize = rx
        .requests()
        .iter()
        .flat_map(|r| &r.items)
        .filter(|i| {
            i.status == 429 && i.error_type.as_deref() == Some("es_rejected_execution_exception")
        })
        .count();
    assert_eq!(rejected, failed.len());
}

/// Documents the spec receiver refuses with `400 mapper_parsing_exception` — injected ones,
/// and real dynamic mapping conflicts (a string where an object is mapped, text where a long
/// is) — are dead-lettered with Elasticsearch's reason and counted in
/// `weir_sink_dead_lettered_total{sink="elasticsearch"}`; every other line is indexed once.
#[test]
fn mapping_errors_from_a_spec_elasticsearch_receiver_are_dead_lettered_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dead = dir.path().join("es.dead.jsonl");
    let rx = ElasticsearchReceiver::start();
    rx.reject_messages_containing("BAD-MAPPING");
    let p = pipeline_with_es(
        dir.path(),
        &rx.url(),
        &format!("dead_letter_path = '{}'", dead.display()),
    );
    let mut w = spawn_weir(&["--config", &p]);
    let mut stdin = w.child.stdin.take().expect("stdin piped");

    let injected: Vec<i64> = (0..100).filter(|s| s % 10 == 3).collect();
    let mut refused: BTreeMap<i64, String> = BTreeMap::new();
    let mut text = String::new();
    for seq in 0..100 {
        let l = if injected.contains(&seq) {
            line_with(seq, &format!("BAD-MAPPING {seq}"), &metadata(seq))
        } else {
            line(seq)
        };
        if injected.contains(&seq) {
            refused.insert(seq, l.clone());
        }
        text.push_str(&l);
        text.push('\n');
    }
    write_text(&mut stdin, &text);
    rx.wait_for_docs(90, WAIT);
    // Now that `metadata` is mapped as an object with a long `attempt`:
    let flat = line_with(100, &message(100), r#""just a string""#);
    let not_long = line_with(
        101,
        &message(101),
        r#"{"agent":{"id":"agent-1"},"attempt":"third"}"#,
    );
    refused.insert(100, flat.clone());
    refused.insert(101, not_long.clone());
    write_text(&mut stdin, &format!("{flat}\n{not_long}\n"));
    write_lines(&mut stdin, 102..120);
    wait_es_metric(&w.addr, "weir_sink_dead_lettered_total", 12.0);
    let status = finish(&mut w, stdin);
    assert!(status.success(), "weir exited with {status}");

    let delivered: Vec<i64> = (0..120).filter(|s| !refused.contains_key(s)).collect();
    assert_stored_once(&rx, &delivered);
    let letters = dead_letters(&dead);
    assert_eq!(letters.len(), 12, "{letters:?}");
    let lines: HashSet<&str> = letters
        .iter()
        .map(|l| l["line"].as_str().expect("a dead letter has the line"))
        .collect();
    let want: HashSet<&str> = refused.values().map(String::as_str).collect();
    assert_eq!(lines, want);
    for l in &letters {
        let why = dead_letter_reason(l);
        assert!(why.contains("mapper_parsing_exception"), "{why}");
        let line = l["line"].as_str().expect("line");
        if line == flat {
            assert!(
                why.contains("object mapping for [metadata] tried to parse field [metadata] as object, but found a concrete value"),
                "{why}"
            );
        } else if line == not_long {
            assert!(
                why.contains("failed to parse field [metadata.attempt] of type [long]"),
                "{why}"
            );
        } else {
            assert!(why.contains("failed to parse field [message]"), "{why}");
        }
    }
}

/// The spec receiver indexes the first request, then answers it only after weir's 1 s request
/// timeout: weir resends the batch, the receiver answers `409 version_conflict_engine_exception`
/// for the documents it already has, weir counts them as delivered, and nothing is indexed
/// twice.
#[test]
fn a_batch_resent_after_a_timeout_yields_conflicts_not_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rx = ElasticsearchReceiver::start();
    rx.delay_next(1, Duration::from_secs(3));
    let p = pipeline_with_es(dir.path(), &rx.url(), "\n[sinks.request]\ntimeout_secs = 1");
    let mut w = spawn_weir(&["--config", &p]);
    let mut stdin = w.child.stdin.take().expect("stdin piped");
    write_lines(&mut stdin, 0..500);
    rx.wait_for_request(|r| r.items.iter().any(|i| i.status == 409), WAIT);
    wait_es_metric(&w.addr, "weir_sink_events_total", 500.0);
    assert!(
        metric(
            &w.addr,
            "weir_sink_retries_total",
            &[("sink", "elasticsearch"), ("reason", "timeout")]
        ) >= 1.0,
        "the timeout was retried"
    );
    assert_eq!(es_metric(&w.addr, "weir_sink_dead_lettered_total"), 0.0);
    let status = finish(&mut w, stdin);
    assert!(status.success(), "weir exited with {status}");

    assert_stored_once(&rx, &(0..500).collect::<Vec<_>>());
    let requests = rx.requests();
    let first: HashSet<&str> = requests[0].items.iter().map(|i| i.id.as_str()).collect();
    assert!(requests[0].items.iter().all(|i| i.status == 201));
    let conflicted: HashSet<&str> = requests[1..]
        .iter()
        .flat_map(|r| &r.items)
        .filter(|i| i.status == 409)
        .map(|i| i.id.as_str())
        .collect();
    assert_eq!(
        conflicted, first,
        "every document of the timed-out request came back as 409"
    );
    assert_eq!(rx.conflicts(), first.len());
}

/// The spec receiver closes its port (and every open connection) for five seconds between two
/// halves of the input, then listens again on the same port: every line is indexed exactly
/// once.
#[test]
fn a_spec_elasticsearch_receiver_refusing_connections_for_five_seconds_gets_every_line_once() {
    let rx = ElasticsearchReceiver::start();
    let mut w = spawn_weir(&[ES_FLAG, &rx.url()]);
    let mut stdin = w.child.stdin.take().expect("stdin piped");
    write_lines(&mut stdin, 0..300);
    rx.wait_for_docs(300, WAIT);
    rx.refuse_connections_for(Duration::from_secs(5));
    write_lines(&mut stdin, 300..600);
    let status = finish(&mut w, stdin);
    assert!(status.success(), "weir exited with {status}");
    assert_stored_once(&rx, &(0..600).collect::<Vec<_>>());
}

/// `mode = "data_stream"`, `compression = "gzip"` and an API key from the environment: the
/// spec receiver (security on, `logs-*-*` data streams) gets gzip bodies with `Authorization:
/// ApiKey ...`, and every line lands once in the data stream named verbatim.
#[test]
fn gzip_an_api_key_and_a_data_stream_reach_a_spec_elasticsearch_receiver() {
    let dir = tempfile::tempdir().expect("tempdir");
    // base64("test-id:test-key"), the "encoded" form Elasticsearch returns.
    let key = "dGVzdC1pZDp0ZXN0LWtleQ==";
    let rx = ElasticsearchReceiver::start_with(ElasticsearchOptions {
        required_authorization: Some(format!("ApiKey {key}")),
        ..ElasticsearchOptions::default()
    });
    let p = pipeline_with_es(
        dir.path(),
        &rx.url(),
        "mode = \"data_stream\"\nindex = \"logs-weir-default\"\ncompression = \"gzip\"\napi_key_env = \"WEIR_IT_ES_API_KEY\"",
    );
    let mut w = spawn_weir_with_env(&["--config", &p], &[("WEIR_IT_ES_API_KEY", key)]);
    let mut stdin = w.child.stdin.take().expect("stdin piped");
    write_lines(&mut stdin, 0..300);
    let status = finish(&mut w, stdin);
    assert!(status.success(), "weir exited with {status}");

    assert_eq!(rx.indices(), ["logs-weir-default"]);
    let docs = rx.documents();
    assert_eq!(docs.len(), 300);
    let seqs: BTreeMap<i64, usize> = docs.iter().fold(BTreeMap::new(), |mut m, d| {
        *m.entry(seq_of(d)).or_default() += 1;
        m
    });
    assert_eq!(seqs.len(), 300, "every seq once");
    assert!(seqs.values().all(|n| *n == 1));
    for r in rx.requests() {
        assert_eq!(r.status, 200, "{}", r.response);
        assert_eq!(r.content_encoding.as_deref(), Some("gzip"));
        assert_eq!(
            r.authorization.as_deref(),
            Some(format!("ApiKey {key}").as_str())
        );
        assert!(
            r.response.contains(".ds-logs-weir-default-"),
            "backing index named"
        );
    }
}

// --- The receiver itself (no weir involved) ---

struct Client {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
}

/// A response: status, `Retry-After`, body as JSON (`Null` when empty or not JSON).
type Reply = (u16, Option<String>, serde_json::Value);

impl Client {
    fn new(rx: &ElasticsearchReceiver) -> Client {
        Client {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            http: reqwest::Client::new(),
            base: rx.url(),
        }
    }

    fn send(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Reply, reqwest::Error> {
        self.rt.block_on(async {
            let mut req = self.http.post(format!("{}{path}", self.base)).body(body);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let res = req.send().await?;
            let status = res.status().as_u16();
            let retry = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let text = res.text().await?;
            Ok((
                status,
                retry,
                serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
            ))
        })
    }

    /// `POST /_bulk` with an NDJSON body.
    fn bulk(&self, body: &str) -> Reply {
        self.send(
            "/_bulk",
            &[("Content-Type", "application/x-ndjson")],
            body.as_bytes().to_vec(),
        )
        .expect("bulk request")
    }
}

/// The `(status, error type)` of each item of a bulk response.
fn item_statuses(v: &serde_json::Value) -> Vec<(u64, String)> {
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| {
            let (_, body) = item
                .as_object()
                .and_then(|o| o.iter().next())
                .expect("one action per item");
            (
                body["status"].as_u64().expect("status"),
                body["error"]["type"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The receiver written from the Elasticsearch `_bulk` API spec: `create` and `index`
/// semantics, per-item results with `errors`, whole-request errors (newline, parameters,
/// content type, missing index), index name rules, dynamic mapping, data streams and gzip.
#[test]
fn the_spec_elasticsearch_receiver_answers_bulk_requests_as_the_api_describes() {
    let rx = ElasticsearchReceiver::start();
    let c = Client::new(&rx);

    let (status, _, v) = c.bulk(concat!(
        "{\"create\":{\"_index\":\"app\",\"_id\":\"1\"}}\n{\"n\":1,\"tags\":{\"a\":\"x\"}}\n",
        "{\"create\":{\"_index\":\"app\",\"_id\":\"2\"}}\n{\"n\":2}\n",
    ));
    assert_eq!(status, 200);
    assert_eq!(v["errors"], false);
    assert!(v["took"].is_u64());
    let first = &v["items"][0]["create"];
    assert_eq!(first["_index"], "app");
    assert_eq!(first["_id"], "1");
    assert_eq!(first["_version"], 1);
    assert_eq!(first["result"], "created");
    assert_eq!(first["status"], 201);
    assert_eq!(first["_shards"]["successful"], 1);

    // create again: 409; index: overwrite.
    let (status, _, v) = c.bulk(concat!(
        "{\"create\":{\"_index\":\"app\",\"_id\":\"1\"}}\n{\"n\":10}\n",
        "{\"index\":{\"_index\":\"app\",\"_id\":\"2\"}}\n{\"n\":20}\n",
        "{\"index\":{\"_index\":\"app\"}}\n{\"n\":30}\n",
    ));
    assert_eq!(status, 200);
    assert_eq!(v["errors"], true);
    assert_eq!(
        item_statuses(&v),
        [
            (409, "version_conflict_engine_exception".to_string()),
            (200, String::new()),
            (201, String::new())
        ]
    );
    assert_eq!(
        v["items"][0]["create"]["error"]["reason"],
        "[1]: version conflict, document already exists (current version [1])"
    );
    assert_eq!(v["items"][1]["index"]["result"], "updated");
    assert_eq!(v["items"][1]["index"]["_version"], 2);
    assert_eq!(rx.conflicts(), 1);
    let docs = rx.documents_in("app");
    assert_eq!(docs.len(), 3);
    assert_eq!(docs[0].source["n"], 1, "the 409 left the document alone");
    assert_eq!(
        (docs[1].version, &docs[1].source["n"]),
        (2, &serde_json::json!(20))
    );

    // The index from the path; mapping conflicts; a bad index name; a bad source.
    let (status, _, v) = c
        .send(
            "/app/_bulk",
            &[("Content-Type", "application/json")],
            concat!(
                "{\"create\":{\"_id\":\"3\"}}\n{\"n\":\"three\"}\n",
                "{\"create\":{\"_id\":\"4\"}}\n{\"tags\":\"flat\"}\n",
                "{\"create\":{\"_id\":\"5\"}}\n{\"n\":\"5\",\"tags\":{\"a\":7}}\n",
                "{\"create\":{\"_index\":\"App\",\"_id\":\"6\"}}\n{}\n",
                "{\"create\":{\"_id\":\"7\"}}\n[1,2]\n",
                "{\"create\":{\"_id\":\"8\"}}\n{not json\n",
            )
            .as_bytes()
            .to_vec(),
        )
        .expect("bulk");
    assert_eq!(status, 200);
    let statuses = item_statuses(&v);
    assert_eq!(
        statuses,
        [
            (400, "mapper_parsing_exception".to_string()),
            (400, "mapper_parsing_exception".to_string()),
            (201, String::new()),
            (400, "invalid_index_name_exception".to_string()),
            (400, "mapper_parsing_exception".to_string()),
            (400, "mapper_parsing_exception".to_string()),
        ],
        "{v}"
    );
    let reason = |i: usize| {
        v["items"][i]["create"]["error"]["reason"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(
        reason(0),
        "failed to parse field [n] of type [long] in document with id '3'. Preview of field's value: 'three'"
    );
    assert_eq!(
        v["items"][0]["create"]["error"]["caused_by"]["reason"],
        "For input string: \"three\""
    );
    assert_eq!(
        reason(1),
        "object mapping for [tags] tried to parse field [tags] as object, but found a concrete value"
    );
    assert_eq!(reason(3), "Invalid index name [App], must be lowercase");

    // Whole-request errors.
    let (status, _, v) = c.bulk("{\"create\":{\"_index\":\"app\",\"_id\":\"9\"}}\n{}");
    assert_eq!(status, 400);
    assert_eq!(
        v["error"]["reason"],
        "The bulk request must be terminated by a newline [\\n]"
    );
    assert_eq!(v["status"], 400);
    let (status, _, v) = c.bulk("{\"create\":{\"_index\":\"app\",\"_idx\":\"9\"}}\n{}\n");
    assert_eq!(status, 400);
    assert_eq!(
        v["error"]["reason"],
        "Action/metadata line [1] contains an unknown parameter [_idx]"
    );
    let (status, _, v) = c.bulk("{\"upsert\":{\"_index\":\"app\"}}\n{}\n");
    assert_eq!(status, 400);
    assert!(v["error"]["reason"]
        .as_str()
        .expect("reason")
        .contains("but found [upsert]"));
    let (status, _, v) = c.bulk("{\"create\":{\"_id\":\"9\"}}\n{}\n");
    assert_eq!(status, 400);
    assert_eq!(v["error"]["type"], "action_request_validation_exception");
    let (status, _, v) = c
        .send(
            "/_bulk",
            &[("Content-Type", "text/plain")],
            b"{}\n{}\n".to_vec(),
        )
        .expect("bulk");
    assert_eq!(status, 406);
    assert_eq!(
        v["error"],
        "Content-Type header [text/plain] is not supported"
    );
    assert_eq!(
        rx.documents().len(),
        4,
        "nothing stored from refused requests"
    );

    // Data streams (`logs-*-*`): create only, @timestamp required, backing index in `_index`.
    let (status, _, v) = c.bulk(concat!(
        "{\"create\":{\"_index\":\"logs-app-default\",\"_id\":\"a\"}}\n{\"@timestamp\":\"2024-03-09T10:00:00Z\"}\n",
        "{\"index\":{\"_index\":\"logs-app-default\",\"_id\":\"b\"}}\n{\"@timestamp\":\"2024-03-09T10:00:00Z\"}\n",
        "{\"create\":{\"_index\":\"logs-app-default\",\"_id\":\"c\"}}\n{\"msg\":\"no time\"}\n",
        "{\"create\":{\"_index\":\"logs-app-default\",\"_id\":\"d\"}}\n{\"@timestamp\":\"yesterday\"}\n",
    ));
    assert_eq!(status, 200);
    assert_eq!(
        item_statuses(&v),
        [
            (201, String::new()),
            (400, "illegal_argument_exception".to_string()),
            (400, "mapper_parsing_exception".to_string()),
            (400, "mapper_parsing_exception".to_string()),
        ],
        "{v}"
    );
    assert!(v["items"][0]["create"]["_index"]
        .as_str()
        .expect("_index")
        .starts_with(".ds-logs-app-default-"));
    assert_eq!(rx.documents_in("logs-app-default").len(), 1);

    // gzip.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"{\"create\":{\"_index\":\"zipped\",\"_id\":\"z\"}}\n{\"k\":\"v\"}\n")
        .expect("gzip");
    let (status, _, v) = c
        .send(
            "/_bulk",
            &[
                ("Content-Type", "application/x-ndjson"),
                ("Content-Encoding", "gzip"),
            ],
            gz.finish().expect("gzip"),
        )
        .expect("bulk");
    assert_eq!((status, &v["errors"]), (200, &serde_json::json!(false)));
    assert_eq!(rx.documents_in("zipped")[0].source["k"], "v");
}

/// The spec receiver's fault injection: whole-request 500s and 429 with Retry-After, per-item
/// 429s (each id once) and mapping rejections, answers delayed after indexing, refused
/// connections (open keep-alive connections included) with the port back afterwards, and
/// security.
#[test]
fn the_spec_elasticsearch_receiver_injects_faults_on_demand() {
    let rx = ElasticsearchReceiver::start();
    let c = Client::new(&rx);
    let doc = |id: &str, msg: &str| {
        format!("{{\"create\":{{\"_index\":\"f\",\"_id\":\"{id}\"}}}}\n{{\"message\":\"{msg}\"}}\n")
    };

    rx.fail_next(2);
    assert_eq!(c.bulk(&doc("1", "a")).0, 500);
    assert_eq!(c.bulk(&doc("1", "a")).0, 500);
    assert_eq!(c.bulk(&doc("1", "a")).0, 200);
    rx.throttle_next(1, "1");
    let (status, retry, v) = c.bulk(&doc("2", "b"));
    assert_eq!((status, retry.as_deref()), (429, Some("1")));
    assert_eq!(v["error"]["type"], "es_rejected_execution_exception");
    assert_eq!(c.bulk(&doc("2", "b")).0, 200);
    assert_eq!(rx.documents().len(), 2);

    rx.fail_every_kth_item(2);
    let batch: String = (10..16).map(|i| doc(&i.to_string(), "m")).collect();
    let (_, _, v) = c.bulk(&batch);
    let failed: Vec<u64> = item_statuses(&v).iter().map(|(s, _)| *s).collect();
    assert_eq!(failed, [201, 429, 201, 429, 201, 429]);
    assert_eq!(
        rx.failed_item_ids(),
        ["11", "13", "15"].map(String::from).into_iter().collect()
    );
    // The failed ids alone, again: each fails only once.
    let again: String = ["11", "13", "15"].iter().map(|i| doc(i, "m")).collect();
    let (_, _, v) = c.bulk(&again);
    assert!(item_statuses(&v).iter().all(|(s, _)| *s == 201), "{v}");
    assert_eq!(rx.id_attempts()["11"], 2);
    assert_eq!(rx.id_attempts()["10"], 1);
    rx.clear_faults();

    rx.reject_messages_containing("BAD");
    let (_, _, v) = c.bulk(&(doc("20", "ok") + &doc("21", "a BAD one")));
    assert_eq!(
        item_statuses(&v),
        [
            (201, String::new()),
            (400, "mapper_parsing_exception".to_string())
        ]
    );
    rx.clear_faults();

    // A delayed answer comes after the documents are indexed.
    rx.delay_next(1, Duration::from_millis(600));
    let before = rx.documents().len();
    let start = Instant::now();
    let (indexed_at, (status, _, _)) = std::thread::scope(|s| {
        let t = s.spawn(|| c.bulk(&doc("30", "late")));
        rx.wait_for_docs(before + 1, Duration::from_secs(5));
        let indexed_at = start.elapsed();
        (indexed_at, t.join().expect("request thread"))
    });
    let answered_at = start.elapsed();
    assert_eq!(status, 200);
    // Lower bounds only: the answer came well after the document was visible.
    assert!(
        answered_at >= indexed_at + Duration::from_millis(400),
        "indexed at {indexed_at:?}, answered at {answered_at:?}"
    );
    assert_eq!(
        c.bulk(&doc("31", "prompt")).0,
        200,
        "only the next request is late"
    );

    // The client holds a keep-alive connection; the refusal closes it and the port.
    rx.refuse_connections_for(Duration::from_secs(3));
    assert!(!rx.is_listening());
    assert!(
        c.send(
            "/_bulk",
            &[("Content-Type", "application/x-ndjson")],
            doc("40", "x").into_bytes()
        )
        .is_err(),
        "a request while refusing must fail"
    );
    let err = std::net::TcpStream::connect(rx.addr()).expect_err("connection refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rx.is_listening() {
        assert!(
            Instant::now() < deadline,
            "the receiver never listened again"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(c.bulk(&doc("40", "x")).0, 200);

    // Security on: 401 without the right credentials.
    let secure = ElasticsearchReceiver::start_with(ElasticsearchOptions {
        required_authorization: Some("ApiKey abc=".to_string()),
        ..ElasticsearchOptions::default()
    });
    let sc = Client::new(&secure);
    let (status, _, v) = sc.bulk(&doc("1", "a"));
    assert_eq!(status, 401);
    assert_eq!(v["error"]["type"], "security_exception");
    let (status, _, _) = sc
        .send(
            "/_bulk",
            &[
                ("Content-Type", "application/x-ndjson"),
                ("Authorization", "ApiKey abc="),
            ],
            doc("1", "a").into_bytes(),
        )
        .expect("bulk");
    assert_eq!(status, 200);
}
