//! Order under parallel parse (see `src/processor.rs`): lines are parsed on several threads
//! and must still be derived, passed through and checkpointed in the order they were read.
//! Every test runs `--threads 4` (more parse workers than this machine has cores, so workers
//! finish out of turn) over inputs built to show reordering: uneven batches (every 97th line
//! is 8 KiB, so some batches take far longer to parse than their neighbours), and state that
//! spans batch boundaries.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::*;

/// Every 97th line gets this much padding: a batch holding such lines parses slower.
fn pad(i: u64) -> String {
    if i % 97 == 0 {
        format!(",\"pad\":\"{}\"", "x".repeat(8192))
    } else {
        String::new()
    }
}

fn run_oneshot(pipeline: &str, corpus: &str) -> std::collections::BTreeMap<Key, f64> {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = temp_file(dir.path(), "p.toml", pipeline.as_bytes());
    let input = temp_file(dir.path(), "in.jsonl", corpus.as_bytes());
    let out = weir()
        .args(["run", "--oneshot", "--threads", "4", "--config"])
        .arg(&p)
        .arg(&input)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_exposition(&String::from_utf8(out.stdout).expect("utf-8"))
}

/// A gauge keeps the last value of each key: three keys take turns, the value is the line
/// number, so any batch derived out of turn leaves an earlier number behind.
#[test]
fn gauges_keep_each_keys_last_value_under_parallel_parse() {
    let n = 150_000u64;
    let corpus: String = (0..n)
        .map(|i| {
            let k = ["a", "b", "c"][(i % 3) as usize];
            format!(
                "{{\"timestamp\":\"2024-01-01T00:00:00Z\",\"message\":\"m\",\"k\":\"{k}\",\"n\":{i}{}}}\n",
                pad(i)
            )
        })
        .collect();
    let pipeline = r#"
[[metrics]]
name = "last_n"
kind = "gauge"
help = "The line number of the key's last line."
value = "n"
labels = { k = "k" }
"#;
    let m = run_oneshot(pipeline, &corpus);
    for (k, last) in [("a", n - 3), ("b", n - 2), ("c", n - 1)] {
        assert_eq!(m[&key("last_n", &[("k", k)])], last as f64, "key {k}");
    }
}

/// Paired durations on event time: each task's end comes 300 lines (300 s) after its start,
/// so most pairs span two batches. Derived in order, every end finds its start and every
/// duration is exactly 300 s; an end derived before its start is unmatched instead.
#[test]
fn paired_durations_across_batches_under_parallel_parse() {
    let tasks = 60_000u64;
    let gap = 300u64;
    let base = jiff::Timestamp::from_second(1_704_067_200).expect("ts");
    let mut corpus = String::new();
    // Line t: the start of task t (t < tasks) and, from line `gap` on, the end of task t-gap.
    for t in 0..tasks + gap {
        let ts = base + jiff::SignedDuration::from_secs(t as i64);
        if t < tasks {
            corpus.push_str(&format!(
                "{{\"timestamp\":\"{ts}\",\"message\":\"Task started\",\"trace_id\":\"t-{t}\"{}}}\n",
                pad(t)
            ));
        }
        if t >= gap {
            corpus.push_str(&format!(
                "{{\"timestamp\":\"{ts}\",\"message\":\"Task completed\",\"trace_id\":\"t-{}\"}}\n",
                t - gap
            ));
        }
    }
    let pipeline = r#"
[[metrics]]
name = "task_wall_seconds"
kind = "histogram"
help = "Start to end of the same trace."
when = 'message == "Task completed"'
buckets = [299, 301]

[metrics.pair]
start = 'message == "Task started"'
key = "trace_id"
timeout_secs = 3600
max_open = 100000
"#;
    let m = run_oneshot(pipeline, &corpus);
    let t = tasks as f64;
    assert_eq!(m[&key("task_wall_seconds_count", &[])], t);
    assert_eq!(m[&key("task_wall_seconds_sum", &[])], t * gap as f64);
    assert_eq!(m[&key("task_wall_seconds_bucket", &[("le", "299")])], 0.0);
    assert_eq!(m[&key("task_wall_seconds_bucket", &[("le", "301")])], t);
    let unmatched = m
        .get(&key(
            "weir_pair_unmatched_total",
            &[("metric", "task_wall_seconds")],
        ))
        .copied()
        .unwrap_or(0.0);
    assert_eq!(unmatched, 0.0, "an end was derived before its start");
}

/// Numbered lines of uneven length, some of them not JSON (kept and passed through as well).
fn numbered_lines(from: u64, to: u64) -> String {
    (from..to)
        .map(|i| {
            if i % 1013 == 0 {
                format!("not json {i}\n")
            } else {
                format!(
                    "{{\"timestamp\":\"2024-01-01T00:00:00Z\",\"message\":\"m\",\"seq\":{i}{}}}\n",
                    pad(i)
                )
            }
        })
        .collect()
}

/// The number of a line of [`numbered_lines`].
fn seq_of(line: &str) -> u64 {
    if let Some(n) = line.strip_prefix("not json ") {
        return n.parse().expect("number");
    }
    let v: serde_json::Value = serde_json::from_str(line).expect("json line");
    v["seq"].as_u64().expect("seq")
}

/// A live `weir run --stdout` on four parse threads.
fn passthrough() -> std::process::Command {
    let mut c = weir();
    c.args(["run", "--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .args(["--stdout", "--threads", "4"]);
    c
}

/// `--stdout` passes every line through byte for byte, in order, while the lines are parsed
/// on four threads.
#[test]
fn stdout_passthrough_keeps_the_order_of_stdin() {
    let input = numbered_lines(0, 120_000);
    let mut w = passthrough()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stdin = w.stdin.take().expect("stdin");
    let feed = {
        let input = input.clone();
        std::thread::spawn(move || {
            stdin.write_all(input.as_bytes()).expect("write");
        })
    };
    let mut out = String::new();
    w.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read stdout");
    feed.join().expect("feeder");
    assert!(w.wait().expect("wait").success());
    assert_eq!(out.len(), input.len(), "every byte passed through");
    // Equal, and where not, the first line out of place (rather than two 100 MB strings).
    if out != input {
        let (a, b) = out
            .lines()
            .zip(input.lines())
            .find(|(a, b)| a != b)
            .expect("a differing line");
        panic!(
            "out of order: got line {} where {} was due",
            seq_of(a),
            seq_of(b)
        );
    }
}

/// A tailed file's checkpoint advances only past lines delivered, in order: weir is killed
/// (-9) mid-file and restarted on the same data dir. Each run passes its lines through in
/// increasing order, and the restart resumes at or before the first line the first run did
/// not deliver: together they hold every line (a few of them twice, which at-least-once
/// allows), none skipped.
#[test]
fn kill_9_mid_file_resumes_without_a_gap_under_parallel_parse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("app.log");
    let total = 200_000u64;
    std::fs::write(&log, numbered_lines(0, total)).expect("write");
    let data = dir.path().join("data");
    let run = |out: &std::path::Path| {
        passthrough()
            .arg("--data-dir")
            .arg(&data)
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(out).expect("create"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn")
    };
    let lines_in = |p: &std::path::Path| -> Vec<u64> {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        // A line cut by the kill has no newline: it was not delivered.
        let whole = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        whole.lines().map(seq_of).collect()
    };
    let (first, second) = (dir.path().join("1.out"), dir.path().join("2.out"));
    let mut w = run(&first);
    // Killed once part of the file is through.
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines_in(&first).len() < 20_000 {
        assert!(
            Instant::now() < deadline,
            "the first run delivered too little"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    w.kill().expect("kill -9");
    w.wait().expect("wait");
    let a = lines_in(&first);
    assert!(
        (a.len() as u64) < total,
        "the first run finished the file before the kill; nothing to resume"
    );
    let mut w = run(&second);
    let deadline = Instant::now() + Duration::from_secs(120);
    while lines_in(&second).last().copied() != Some(total - 1) {
        assert!(
            Instant::now() < deadline,
            "the restart did not reach the end"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    w.kill().expect("kill");
    w.wait().expect("wait");
    let b = lines_in(&second);
    for (name, run) in [("first", &a), ("second", &b)] {
        let bad = run.windows(2).find(|p| p[1] != p[0] + 1);
        assert!(bad.is_none(), "the {name} run out of order at {bad:?}");
    }
    let resumed = b[0];
    let reached = a.last().copied().map_or(0, |l| l + 1);
    assert!(
        resumed <= reached,
        "the restart began at line {resumed}, past line {reached} that no run delivered"
    );
}

/// Lines without a timestamp take their batch's arrival time. Under parallel parse those
/// times still rise from batch to batch, so a spec Loki receiver, which refuses a stream's
/// lines out of order, stores every line once and dead-letters none.
#[test]
fn arrival_times_rise_batch_after_batch_for_loki() {
    let rx = crate::support::loki::LokiReceiver::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let dead = dir.path().join("loki.dead.jsonl");
    let p = temp_file(
        dir.path(),
        "p.toml",
        format!(
            "[[sinks]]\ntype = \"loki\"\nendpoint = \"{}\"\ndead_letter_path = \"{}\"\n",
            rx.url(),
            dead.display()
        )
        .as_bytes(),
    );
    let total = 60_000u64;
    // No timestamp; uneven batches, as above.
    let input: String = (0..total)
        .map(|i| format!("{{\"message\":\"m\",\"seq\":{i}{}}}\n", pad(i)))
        .collect();
    let mut w = weir()
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "4",
            "--config",
        ])
        .arg(&p)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    w.stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    assert!(w.wait().expect("wait").success());
    let mut seen = std::collections::BTreeMap::<u64, usize>::new();
    for e in rx.entries() {
        *seen.entry(seq_of(&e.line)).or_default() += 1;
    }
    assert_eq!(seen.len() as u64, total, "every line stored");
    assert!(seen.values().all(|&n| n == 1), "none twice");
    let dead_lines = std::fs::read_to_string(&dead).unwrap_or_default();
    assert_eq!(
        dead_lines.lines().count(),
        0,
        "refused out of order: {dead_lines:.300}"
    );
}

/// `--threads` is bounded: a number of parse threads no machine needs is a usage error (exit 2)
/// that says the range, not thousands of threads.
#[test]
fn too_many_threads_is_a_usage_error() {
    let out = weir()
        .args(["run", "--oneshot", "--threads", "100000", "/dev/null"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not in 0..=256"), "{err}");
}
