//! The Loki sink against a receiver written from Loki's public push API spec
//! (`tests/support/loki.rs`) — not a real Loki: snappy + protobuf decoding, per-stream ordering,
//! line and push size limits, partial accepts with 400, and injected faults (500, 429 with
//! Retry-After, refused connections, slow answers).
//!
//! Needs the lead's wiring, assumed as follows (adjust here if it differs):
//! - `weir run --loki URL` adds a Loki sink with the default config for endpoint URL;
//! - a pipeline file's `[[sinks]] type = "loki"` with `endpoint`, `dead_letter_path`, `[sinks.batch]`;
//! - stdin EOF: weir flushes the sink (retrying as needed) and exits 0;
//! - the dead-letter file holds one JSON object per event with `line`, `reason` and, as the
//!   driver writes it today, `detail` (the backend's words);
//! - `weir_sink_dead_lettered_total{sink="loki",...}` counts dead-lettered events.
//!
//! The `the_spec_loki_receiver_*` tests check the receiver itself and need no wiring.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{ChildStdin, ExitStatus};
use std::time::{Duration, Instant};

use prost::Message as _;

use crate::support::loki::{proto, LokiLimits, LokiReceiver, PushRecord, ReceivedEntry};
use crate::util::*;

/// The `weir run` flag that adds a Loki sink.
const LOKI_FLAG: &str = "--loki";
/// Generous: a retried flush can take several backoff rounds.
const EXIT_DEADLINE: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(60);

/// Nanoseconds since the epoch, now, rounded down to the millisecond.
fn now_ms_ns() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    (d.as_millis() as i64) * 1_000_000
}

/// Timestamps of a test's lines: ten minutes ago plus `seq` milliseconds (recent enough for
/// Loki's 7-day `reject_old_samples_max_age`).
struct Clock {
    base_ns: i64,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            base_ns: now_ms_ns() - 600 * 1_000_000_000,
        }
    }

    fn ts(&self, seq: i64) -> i64 {
        self.base_ns + seq * 1_000_000
    }
}

fn rfc3339(ns: i64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(ns))
        .expect("timestamp in range")
        .to_string()
}

fn component(seq: i64) -> &'static str {
    if seq % 2 == 0 {
        "c1"
    } else {
        "c2"
    }
}

/// The line of `seq` at `ts_ns`, with `extra` JSON members appended.
fn line_at(seq: i64, ts_ns: i64, extra: &str) -> String {
    format!(
        r#"{{"timestamp":"{}","level":"INFO","component":"{}","message":"m","seq":{seq},"trace_id":"trace-{seq}"{extra}}}"#,
        rfc3339(ts_ns),
        component(seq)
    )
}

fn write_lines(stdin: &mut ChildStdin, clock: &Clock, seqs: std::ops::Range<i64>) {
    let mut buf = String::new();
    for seq in seqs {
        buf.push_str(&line_at(seq, clock.ts(seq), ""));
        buf.push('\n');
    }
    stdin.write_all(buf.as_bytes()).expect("write stdin");
    stdin.flush().expect("flush stdin");
}

fn write_line(stdin: &mut ChildStdin, line: &str) {
    stdin
        .write_all(format!("{line}\n").as_bytes())
        .expect("write stdin");
    stdin.flush().expect("flush stdin");
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

fn seq_of(e: &ReceivedEntry) -> i64 {
    let v: serde_json::Value = serde_json::from_str(&e.line).expect("stored line is JSON");
    v["seq"].as_i64().expect("seq")
}

/// Every seq of `expected` stored exactly once, with its exact line, timestamp, labels
/// `{job, component, level}` and `trace_id` as structured metadata; each stream in timestamp
/// order; nothing else stored.
fn assert_delivered_once(rx: &LokiReceiver, clock: &Clock, expected: &[i64]) {
    let entries = rx.entries();
    let mut count: BTreeMap<i64, usize> = BTreeMap::new();
    for e in &entries {
        let seq = seq_of(e);
        *count.entry(seq).or_default() += 1;
        assert_eq!(e.line, line_at(seq, clock.ts(seq), ""), "line of seq {seq}");
        assert_eq!(e.timestamp_ns, clock.ts(seq), "timestamp of seq {seq}");
        let labels: BTreeMap<String, String> = [
            ("job", "weir"),
            ("component", component(seq)),
            ("level", "INFO"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(e.labels, labels, "labels of seq {seq}");
        let md: BTreeMap<String, String> = [("trace_id".to_string(), format!("trace-{seq}"))]
            .into_iter()
            .collect();
        assert_eq!(e.metadata, md, "structured metadata of seq {seq}");
    }
    let wrong: Vec<_> = count.iter().filter(|(_, n)| **n != 1).collect();
    assert!(wrong.is_empty(), "seqs stored more than once: {wrong:?}");
    let got: Vec<i64> = count.keys().copied().collect();
    let mut want = expected.to_vec();
    want.sort_unstable();
    assert_eq!(got.len(), want.len(), "entries stored");
    assert_eq!(got, want, "the seqs stored");
    assert_eq!(rx.duplicates(), 0, "weir resent entries Loki already had");

    let mut newest: BTreeMap<BTreeMap<String, String>, i64> = BTreeMap::new();
    for e in &entries {
        let last = newest.entry(e.labels.clone()).or_insert(i64::MIN);
        assert!(
            e.timestamp_ns >= *last,
            "stream {:?} stored out of timestamp order",
            e.labels
        );
        *last = e.timestamp_ns;
    }
}

fn assert_no_rejected_push(pushes: &[PushRecord]) {
    for p in pushes {
        assert!(
            !(400..500).contains(&p.status) || p.status == 429,
            "a push was rejected {}: {}",
            p.status,
            p.response
        );
    }
}

fn assert_protobuf_pushes(pushes: &[PushRecord]) {
    for p in pushes {
        assert_eq!(p.content_type.as_deref(), Some("application/x-protobuf"));
        assert_eq!(p.content_encoding.as_deref(), Some("snappy"));
    }
}

/// Runs `weir run --loki URL`, feeds `n` lines, closes stdin; weir must exit 0.
fn run_lines(rx: &LokiReceiver, clock: &Clock, n: i64) {
    let mut w = spawn_weir(&[LOKI_FLAG, &rx.url()]);
    let mut stdin = w.child.stdin.take().expect("stdin piped");
    write_lines(&mut stdin, clock, 0..n);
    let status = finish(&mut w, stdin);
    assert!(status.success(), "weir exited with {status}");
}

/// Sum of `weir_sink_dead_lettered_total` over the series with `sink="loki"`.
fn loki_dead_lettered(addr: &str) -> f64 {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200);
    parse_exposition(&body)
        .iter()
        .filter(|((name, labels), _)| {
            name == "weir_sink_dead_lettered_total"
                && labels.get("sink").map(String::as_str) == Some("loki")
        })
        .map(|(_, v)| v)
        .sum()
}

fn wait_dead_lettered(addr: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = loki_dead_lettered(addr);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "weir_sink_dead_lettered_total{{sink=\"loki\"}} is {got}, expected {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A pipeline whose one sink is Loki at `url`, with `extra` keys in its `[[sinks]]` table.
fn pipeline_with_loki(dir: &Path, url: &str, dead_letter: &Path, extra: &str) -> String {
    let toml = format!(
        r#"
[[sinks]]
type = "loki"
endpoint = '{url}'
dead_letter_path = '{}'
{extra}

[sinks.batch]
max_age_ms = 200
"#,
        dead_letter.display()
    );
    temp_file(dir, "loki.toml", toml.as_bytes())
        .to_str()
        .expect("utf-8 temp path")
        .to_string()
}

/// A dead letter's `reason` and, when the record has one, its `detail` (Loki's own words).
fn dead_letter_reason(letter: &serde_json::Value) -> String {
    let reason = letter["reason"]
        .as_str()
        .expect("a dead letter has a reason");
    match letter["detail"].as_str() {
        Some(detail) => format!("{reason}: {detail}"),
        None => reason.to_string(),
    }
}

fn dead_letters(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a dead letter is one JSON object per line"))
        .collect()
}

/// The basic path: numbered lines on stdin reach a receiver written from the Loki push API
/// spec exactly once, in timestamp order per stream, with the default labels and trace_id as
/// structured metadata, in snappy-compressed protobuf.
#[test]
fn every_line_reaches_a_spec_loki_receiver_once_in_order_with_labels_and_trace_metadata() {
    let rx = LokiReceiver::start();
    let clock = Clock::new();
    run_lines(&rx, &clock, 5000);
    let expected: Vec<i64> = (0..5000).collect();
    assert_delivered_once(&rx, &clock, &expected);
    let pushes = rx.pushes();
    assert_no_rejected_push(&pushes);
    assert_protobuf_pushes(&pushes);
    assert!(pushes.iter().all(|p| p.status == 204));
}

/// `encoding = "json"` and `tenant_id`: the spec receiver (with Loki's `auth_enabled`, so a
/// push without `X-Scope-OrgID` would be refused 401) stores every line exactly once under the
/// tenant, with the same labels and structured metadata as with protobuf.
#[test]
fn json_pushes_with_a_tenant_reach_a_spec_loki_receiver_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dead = dir.path().join("loki.dead.jsonl");
    let rx = LokiReceiver::start_with(LokiLimits {
        require_tenant: true,
        ..LokiLimits::default()
    });
    let clock = Clock::new();
    let extra = "encoding = \"json\"\ntenant_id = \"team-a\"";
    let p = pipeline_with_loki(dir.path(), &rx.url(), &dead, extra);
    let mut w = spawn_weir(&["--config", &p]);
    let mut stdin = w.child.stdin.take().expect("stdin piped");
    write_lines(&mut stdin, &clock, 0..1000);
    let status = finish(&mut w, stdin);
    assert!(status.success(), "weir exited with {status}");
    assert_delivered_once(&rx, &clock, &(0..1000).collect::<Vec<_>>());
    assert!(rx.entries().iter().all(|e| e.tenant == "team-a"));
    let pushes = rx.pushes();
    assert_no_rejected_push(&pushes);
    for p in &pushes {
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        assert_eq!(p.tenant.as_deref(), Some("team-a"));
    }
    assert!(dead_letters(&dead).is_empty());
}

/// The spec receiver answers the first three pushes 500: weir retries, and every line
/// arrives exactly once.
#[test]
fn a_spec_loki_receiver_failing_with_500_then_recovering_gets_every_line_exactly_once() {
    let rx = LokiReceiver::start();
    rx.fail_next(3);
    let clock = Clock::new();
    run_lines(&rx, &clock, 500);
    assert_delivered_once(&rx, &clock, &(0..500).collect::<Vec<_>>());
    let pushes = rx.pushes();
    assert_eq!(
        pushes.iter().take(3).map(|p| p.status).collect::<Vec<_>>(),
        [500, 500, 500]
    );
    assert_no_rejected_push(&pushes);
}

/// The spec receiver rate-limits twice with `429` and `Retry-After: 1`: weir waits at least
/// the second asked before sending again, and every line arrives exactly once.
#[test]
fn a_spec_loki_receiver_answering_429_with_retry_after_gets_every_line_exactly_once() {
    let rx = LokiReceiver::start();
    rx.throttle_next(2, "1");
    let clock = Clock::new();
    run_lines(&rx, &clock, 500);
    assert_delivered_once(&rx, &clock, &(0..500).collect::<Vec<_>>());
    let pushes = rx.pushes();
    assert_no_rejected_push(&pushes);
    assert_eq!(pushes[0].status, 429);
    assert_eq!(pushes[1].status, 429);
    // A lower bound only (a slow machine makes the gap longer, never shorter).
    for pair in pushes.windows(2).take(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap >= Duration::from_millis(950),
            "weir retried {gap:?} after a 429 with Retry-After: 1"
        );
    }
}

/// The spec receiver closes its port (and every open connection) for five seconds between two
/// halves of the input, then listens again on the same port: every line arrives exactly once.
#[test]
fn a_spec_loki_receiver_refusing_connections_for_five_seconds_gets_every_line_exactly_once() {
    let rx = LokiReceiver::start();
    let clock = Clock::new();
    let mut w = spawn_weir(&[LOKI_FLAG, &rx.url()]);
    let mut stdin = w.child.stdin.take().expect("stdin piped");
    write_lines(&mut stdin, &clock, 0..300);
    rx.wait_for_entries(300, WAIT);
    rx.refuse_connections_for(Duration::from_secs(5));
    write_lines(&mut stdin, &clock, 300..600);
    let status = finish(&mut w, stdin);
    assert!(status.success(), "weir exited with {status}");
    assert_delivered_once(&rx, &clock, &(0..600).collect::<Vec<_>>());
    assert_no_rejected_push(&rx.pushes());
}

/// The spec receiver answers every push 1.5 s late (well within weir's request timeout):
/// every line arrives exactly once, nothing is sent twice.
#[test]
fn a_spec_loki_receiver_answering_slowly_gets_every_line_exactly_once() {
    let rx = LokiReceiver::start();
    rx.set_delay(Duration::from_millis(1500));
    let clock = Clock::new();
    run_lines(&rx, &clock, 500);
    assert_delivered_once(&rx, &clock, &(0..500).collect::<Vec<_>>());
    let pushes = rx.pushes();
    assert_no_rejected_push(&pushes);
    assert!(pushes.iter().all(|p| p.status == 204));
}

/// A line older than what the spec receiver (ordered writes, as Loki before 2.4) already holds
/// for its stream is answered `400 entry out of order`: weir dead-letters it with that reason
/// and counts it; every other line arrives exactly once.
#[test]
fn an_out_of_order_line_refused_by_a_spec_loki_receiver_is_dead_lettered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dead = dir.path().join("loki.dead.jsonl");
    let rx = LokiReceiver::start();
    let clock = Clock::new();
    let p = pipeline_with_loki(dir.path(), &rx.url(), &dead, "");
    let mut w = spawn_weir(&["--config", &p]);
    let mut stdin = w.child.stdin.take().expect("stdin piped");

    write_lines(&mut stdin, &clock, 0..50);
    rx.wait_for_entries(50, WAIT);
    // Alone in its request, a second older than everything of stream c1.
    let old = line_at(1000, clock.ts(-1000), "");
    write_line(&mut stdin, &old);
    let refused = rx.wait_for_push(|p| p.status == 400, WAIT);
    assert!(
        refused.response.contains("entry out of order"),
        "{}",
        refused.response
    );
    wait_dead_lettered(&w.addr, 1.0);
    write_lines(&mut stdin, &clock, 50..100);
    let status = finish(&mut w, stdin);
    assert!(status.success(), "weir exited with {status}");

    assert_delivered_once(&rx, &clock, &(0..100).collect::<Vec<_>>());
    let letters = dead_letters(&dead);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["line"], old.as_str());
    let why = dead_letter_reason(&letters[0]);
    assert!(why.contains("entry out of order"), "{why}");
}

/// A line longer than the spec receiver's `max_line_size` is answered `400 Max entry size ...
/// exceeded`: weir dead-letters it with that reason and counts it; every other line arrives
/// exactly once.
#[test]
fn a_line_too_long_for_a_spec_loki_receiver_is_dead_lettered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dead = dir.path().join("loki.dead.jsonl");
    let rx = LokiReceiver::start_with(LokiLimits {
        max_line_size: 1024,
        ..LokiLimits::default()
    });
    let clock = Clock::new();
    let p = pipeline_with_loki(dir.path(), &rx.url(), &dead, "");
    let mut w = spawn_weir(&["--config", &p]);
    let mut stdin = w.child.stdin.take().expect("stdin piped");

    write_lines(&mut stdin, &clock, 0..20);
    rx.wait_for_entries(20, WAIT);
    let long = line_at(
        500,
        clock.ts(500),
        &format!(r#","pad":"{}""#, "x".repeat(2000)),
    );
    write_line(&mut stdin, &long);
    let refused = rx.wait_for_push(|p| p.status == 400, WAIT);
    assert!(
        refused
            .response
            .contains("Max entry size '1024' bytes exceeded"),
        "{}",
        refused.response
    );
    wait_dead_lettered(&w.addr, 1.0);
    write_lines(&mut stdin, &clock, 20..40);
    let status = finish(&mut w, stdin);
    assert!(status.success(), "weir exited with {status}");

    assert_delivered_once(&rx, &clock, &(0..40).collect::<Vec<_>>());
    let letters = dead_letters(&dead);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["line"], long.as_str());
    let why = dead_letter_reason(&letters[0]);
    assert!(why.contains("Max entry size"), "{why}");
}

// --- The receiver itself (no weir involved) ---

fn entry(ts_ns: i64, line: &str, md: &[(&str, &str)]) -> proto::EntryAdapter {
    proto::EntryAdapter {
        timestamp: Some(proto::Timestamp {
            seconds: ts_ns.div_euclid(1_000_000_000),
            nanos: ts_ns.rem_euclid(1_000_000_000) as i32,
        }),
        line: line.to_string(),
        structured_metadata: md
            .iter()
            .map(|(k, v)| proto::LabelPairAdapter {
                name: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        parsed: Vec::new(),
    }
}

fn protobuf_body(streams: Vec<(&str, Vec<proto::EntryAdapter>)>) -> Vec<u8> {
    let req = proto::PushRequest {
        streams: streams
            .into_iter()
            .map(|(labels, entries)| proto::StreamAdapter {
                labels: labels.to_string(),
                entries,
                hash: 0,
            })
            .collect(),
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .expect("snappy")
}

struct Client {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    url: String,
}

impl Client {
    fn new(rx: &LokiReceiver) -> Client {
        Client {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            http: reqwest::Client::new(),
            url: format!("{}/loki/api/v1/push", rx.url()),
        }
    }

    /// Status, Retry-After and body; `Err` for a transport error.
    fn push(
        &self,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Option<String>, String), reqwest::Error> {
        self.rt.block_on(async {
            let res = self
                .http
                .post(&self.url)
                .header("Content-Type", content_type)
                .body(body)
                .send()
                .await?;
            let status = res.status().as_u16();
            let retry = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            Ok((status, retry, res.text().await?))
        })
    }

    fn protobuf(&self, streams: Vec<(&str, Vec<proto::EntryAdapter>)>) -> (u16, String) {
        let (status, _, body) = self
            .push("application/x-protobuf", protobuf_body(streams))
            .expect("push");
        (status, body)
    }
}

/// The receiver written from the Loki push API spec decodes protobuf and JSON, stores entries
/// with labels and structured metadata, and enforces ordering, duplicates, line and push size
/// limits and label rules with Loki's statuses and messages, storing the valid part of a
/// partially invalid push.
#[test]
fn the_spec_loki_receiver_decodes_pushes_and_enforces_loki_rules() {
    let rx = LokiReceiver::start_with(LokiLimits {
        max_line_size: 100,
        max_push_bytes: 64 * 1024,
        ..LokiLimits::default()
    });
    let c = Client::new(&rx);
    let t = now_ms_ns() - 60_000_000_000;

    let (status, _) = c.protobuf(vec![(
        r#"{job="t", esc="a\"b\\c"}"#,
        vec![
            entry(t, "one", &[("trace_id", "abc")]),
            entry(t + 1, "two", &[]),
        ],
    )]);
    assert_eq!(status, 204);
    let stored = rx.entries();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].labels["esc"], r#"a"b\c"#);
    assert_eq!(stored[0].labels["job"], "t");
    assert_eq!(stored[0].metadata["trace_id"], "abc");
    assert_eq!(stored[0].tenant, "fake");
    assert_eq!(
        (stored[1].timestamp_ns, stored[1].line.as_str()),
        (t + 1, "two")
    );

    let json = serde_json::json!({"streams": [{"stream": {"job": "t"}, "values": [
        [(t + 2).to_string(), "three", {"trace_id": "def"}],
        [(t + 3).to_string(), "four"],
    ]}]});
    let (status, _, _) = c
        .push("application/json", json.to_string().into_bytes())
        .expect("push");
    assert_eq!(status, 204);
    assert_eq!(rx.entries().len(), 4);
    assert_eq!(rx.entries()[2].metadata["trace_id"], "def");
    let job_t: BTreeMap<String, String> = [("job".to_string(), "t".to_string())].into();
    assert_eq!(rx.entries()[3].labels, job_t);

    // Out of order in stream {job="t"} (newest is t+3): refused, the valid entry kept.
    let (status, body) = c.protobuf(vec![(
        r#"{job="t"}"#,
        vec![entry(t + 1, "late", &[]), entry(t + 4, "five", &[])],
    )]);
    assert_eq!(status, 400);
    assert!(
        body.lines()
            .next()
            .expect("a line")
            .contains("ignored, reason: 'entry out of order'"),
        "{body}"
    );
    assert!(body.contains("total ignored: 1 out of 2"), "{body}");
    assert_eq!(rx.entries().last().map(|e| e.line.as_str()), Some("five"));

    // The newest entry again: a duplicate, dropped silently.
    let (status, _) = c.protobuf(vec![(r#"{job="t"}"#, vec![entry(t + 4, "five", &[])])]);
    assert_eq!(status, 204);
    assert_eq!(rx.duplicates(), 1);
    assert_eq!(rx.entries().len(), 5);

    let (status, body) = c.protobuf(vec![(
        r#"{job="t"}"#,
        vec![entry(t + 5, &"x".repeat(101), &[])],
    )]);
    assert_eq!(status, 400);
    assert!(body.starts_with("Max entry size '100' bytes exceeded for stream '{job=\"t\"}' while adding an entry with length '101' bytes"), "{body}");

    let (status, body) = c.protobuf(vec![("{}", vec![entry(t + 5, "x", &[])])]);
    assert_eq!(
        (status, body.trim()),
        (400, "error at least one label pair is required per stream")
    );
    let (status, body) = c.protobuf(vec![("{job=~\"t\"}", vec![entry(t + 5, "x", &[])])]);
    assert_eq!(status, 400, "{body}");
    let (status, body) = c.protobuf(vec![(
        r#"{job="t"}"#,
        vec![entry(1_000_000_000, "1970", &[])],
    )]);
    assert_eq!(status, 400);
    assert!(body.contains("has timestamp too old"), "{body}");

    let big: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let (status, _, body) = c.push("application/x-protobuf", big).expect("push");
    assert_eq!(status, 413, "{body}");
    let (status, _, _) = c
        .push("application/x-protobuf", b"not snappy".to_vec())
        .expect("push");
    assert_eq!(status, 400);
    assert_eq!(rx.entries().len(), 5, "nothing stored from refused pushes");
}

/// The spec receiver's fault injection: 500s, 429 with Retry-After, slow answers, and
/// refused connections (open keep-alive connections included) with the port back afterwards.
#[test]
fn the_spec_loki_receiver_injects_faults_on_demand() {
    let rx = LokiReceiver::start();
    let c = Client::new(&rx);
    let t = now_ms_ns() - 60_000_000_000;
    let push = |ts: i64| {
        c.push(
            "application/x-protobuf",
            protobuf_body(vec![(r#"{job="f"}"#, vec![entry(ts, "x", &[])])]),
        )
    };

    rx.fail_next(2);
    assert_eq!(push(t).expect("push").0, 500);
    assert_eq!(push(t).expect("push").0, 500);
    assert_eq!(push(t).expect("push").0, 204);
    rx.throttle_next(1, "1");
    let (status, retry, body) = push(t + 1).expect("push");
    assert_eq!((status, retry.as_deref()), (429, Some("1")));
    assert!(body.starts_with("Ingestion rate limit exceeded"), "{body}");
    assert_eq!(push(t + 1).expect("push").0, 204);
    assert_eq!(rx.entries().len(), 2);

    rx.set_delay(Duration::from_millis(300));
    let start = Instant::now();
    assert_eq!(push(t + 2).expect("push").0, 204);
    assert!(start.elapsed() >= Duration::from_millis(300));
    rx.set_delay(Duration::ZERO);

    // The client holds a keep-alive connection; the refusal closes it and the port.
    rx.refuse_connections_for(Duration::from_secs(3));
    assert!(!rx.is_listening());
    assert!(push(t + 3).is_err(), "a push while refusing must fail");
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
    assert_eq!(push(t + 3).expect("push after the refusal").0, 204);
    assert_eq!(rx.entries().len(), 4);
    assert_eq!(
        rx.pushes().iter().map(|p| p.status).collect::<Vec<_>>(),
        [500, 500, 204, 429, 204, 204, 204]
    );
}
