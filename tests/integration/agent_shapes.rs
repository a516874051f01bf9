//! The agent system's own log shapes, written by Python's `logging` (not by weir): the
//! MonitoringCollector formatter (`"message":"%(message)s"` unescaped, trace_id in metadata,
//! `Task completed: <status>`, log_error with tracebacks, `ALERT:` queue alerts) and the clean
//! shape with keys in any order. The expected metrics come from the script that logged them
//! (tests/fixtures/python/agent_system.py), not from parsing the log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

struct Fixture {
    log: PathBuf,
    expected: BTreeMap<Key, f64>,
    records: u64,
    unescaped: u64,
    tracebacks: u64,
}

fn python_fixture(dir: &Path, shape: &str, tasks: u32, seed: u32) -> Fixture {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/python/agent_system.py");
    let log = dir.join(format!("{shape}.log"));
    let exp = dir.join(format!("{shape}.json"));
    let out = Command::new("python3")
        .arg(&script)
        .args([&log, &exp])
        .args([
            "--shape",
            shape,
            "--tasks",
            &tasks.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .output()
        .expect("python3 is required for these tests (Debian: apt-get install -y python3)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&exp).expect("expected file")).expect("json");
    // The expected series are written in exposition syntax: parse them as weir's output is.
    let text: String = v["series"]
        .as_object()
        .expect("series")
        .iter()
        .map(|(k, v)| format!("{k} {}\n", v.as_f64().expect("number")))
        .collect();
    Fixture {
        log,
        expected: parse_exposition(&text),
        records: v["records"].as_u64().expect("records"),
        unescaped: v["unescaped"].as_u64().expect("unescaped"),
        tracebacks: v["tracebacks"].as_u64().expect("tracebacks"),
    }
}

fn oneshot(args: &[&str]) -> BTreeMap<Key, f64> {
    let out = weir()
        .args(["run", "--oneshot", "--progress", "never"])
        .args(args)
        .output()
        .expect("run weir");
    assert!(
        out.status.success(),
        "weir failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_exposition(&String::from_utf8(out.stdout).expect("utf-8"))
}

fn parse_errors(got: &BTreeMap<Key, f64>, reason: &str) -> f64 {
    got.get(&key("weir_parse_errors_total", &[("reason", reason)]))
        .copied()
        .unwrap_or(0.0)
}

/// The embedded default pipeline on the Python formatter's output: every agent series equals
/// what the script logged, series by series; lines broken by an unescaped quote or backslash
/// in the message are repaired (their error_type reaches the failure counter) and counted.
#[test]
fn the_python_formatter_shape_gives_every_agent_metric_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = python_fixture(dir.path(), "python", 800, 11);
    assert!(
        f.unescaped > 10 && f.tracebacks > 10,
        "the fixture has both"
    );
    let got = oneshot(&[f.log.to_str().expect("path")]);
    assert_agent_metrics(&got, &f.expected);
    assert_eq!(parse_errors(&got, "message_unescaped"), f.unescaped as f64);
    // Every record of the log is one event: its traceback lines joined it (the default
    // pipeline joins Python tracebacks), so no line is left unparsed.
    let events: f64 = got
        .iter()
        .filter(|(k, _)| k.0 == "weir_events_total")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(events, f.records as f64);
    assert_eq!(parse_errors(&got, "invalid_json"), 0.0);
    assert_eq!(parse_errors(&got, "multiline_truncated"), 0.0);
}

/// The clean shape, its keys shuffled on every line, gives the same exactness.
#[test]
fn the_clean_shape_with_keys_in_any_order_gives_every_agent_metric_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = python_fixture(dir.path(), "clean", 800, 12);
    let got = oneshot(&[f.log.to_str().expect("path")]);
    assert_agent_metrics(&got, &f.expected);
    assert_eq!(parse_errors(&got, "message_unescaped"), 0.0);
    assert_eq!(parse_errors(&got, "invalid_json"), 0.0);
}

/// Both shapes in one stream (services of both kinds writing to one collector).
#[test]
fn both_shapes_mixed_in_one_stream_add_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = python_fixture(dir.path(), "python", 300, 21);
    let b = python_fixture(dir.path(), "clean", 300, 22);
    let mut both = std::fs::read(&a.log).expect("read");
    both.extend(std::fs::read(&b.log).expect("read"));
    let path = temp_file(dir.path(), "both.log", &both);
    let got = oneshot(&[path.to_str().expect("path")]);
    let mut expected = a.expected.clone();
    for (k, v) in &b.expected {
        if k.0 == "agent_queue_depth" {
            // The last value wins: the clean lines come second.
            expected.insert(k.clone(), *v);
        } else {
            *expected.entry(k.clone()).or_default() += v;
        }
    }
    assert_agent_metrics(&got, &expected);
}
