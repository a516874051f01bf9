//! `weir tap` against a running weir: the events of a known stream that match a filter come
//! out, in order, as JSON; a bad filter is refused with its column; the rate limit holds and
//! every line is accounted for (sent, dropped or skipped).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Stdio};

use serde_json::{json, Value};

use crate::util::{spawn_weir, wait_for_metric, weir, Running};

fn tap(addr: &str, args: &[&str]) -> Child {
    weir()
        .args(["tap", "--addr", addr])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir tap")
}

/// Closes weir's stdin: it processes what it read and exits 0.
fn stop(mut w: Running) {
    drop(w.child.stdin.take());
    assert!(w.child.wait().unwrap().success());
}

#[test]
fn tap_prints_the_first_matching_events_in_order() {
    let mut w = spawn_weir(&[]);
    let filter = r#"level == "ERROR" && component == "EventBus""#;
    let mut t = tap(&w.admin, &["--filter", filter, "--limit", "5"]);
    wait_for_metric(&w.addr, "weir_taps_active", &[], 1.0);
    let input = w.child.stdin.as_mut().unwrap();
    let mut expected = Vec::new();
    for i in 0..40 {
        let (level, component) = match i % 5 {
            0 => ("ERROR", "EventBus"),
            1 => ("INFO", "EventBus"),
            2 => ("ERROR", "SchedulerService"),
            3 => ("WARNING", "EventBus"),
            _ => ("DEBUG", "AgentOrchestrator"),
        };
        // `metadata.n` is a field the default pipeline never captures: it comes out all the same.
        let line = json!({"timestamp": "2024-01-01T00:00:00Z", "level": level,
                          "component": component, "message": format!("m{i}"),
                          "trace_id": format!("t{i}"), "metadata": {"n": i}});
        if i % 5 == 0 {
            expected.push(json!({"source": "stdin", "event": line.clone()}));
        }
        writeln!(input, "{line}").unwrap();
    }
    input.flush().unwrap();
    let got: Vec<Value> = BufReader::new(t.stdout.take().unwrap())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).expect("JSON lines"))
        .collect();
    assert!(t.wait().unwrap().success());
    // The first five of the eight matches, whole.
    expected.truncate(5);
    assert_eq!(got, expected);
    // The tap went away with its connection.
    wait_for_metric(&w.addr, "weir_taps_active", &[], 0.0);
    stop(w);
}

#[test]
fn a_bad_filter_is_refused_with_its_column() {
    let w = spawn_weir(&[]);
    let out = weir()
        .args([
            "tap",
            "--addr",
            &w.admin,
            "--filter",
            r#"level == "ERROR" &&"#,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("400"), "{err}");
    assert!(
        err.contains("invalid filter at column 20: expected "),
        "{err}"
    );
    stop(w);
}

#[test]
fn the_rate_limit_holds_and_every_line_is_accounted_for() {
    let mut w = spawn_weir(&[]);
    let mut t = tap(&w.admin, &["--rate", "10"]);
    wait_for_metric(&w.addr, "weir_taps_active", &[], 1.0);
    let input = w.child.stdin.as_mut().unwrap();
    for i in 0..1000 {
        writeln!(input, "{}", json!({"message": format!("m{i}")})).unwrap();
    }
    input.flush().unwrap();
    // weir ends at stdin's end; the tap's stream ends with it (after a last note) and the tap
    // exits 0.
    stop(w);
    assert!(t.wait().unwrap().success());
    let mut out = String::new();
    t.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let mut err = String::new();
    t.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let sent: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Lines of stderr: `tap: N events dropped (rate limit), M lines skipped (...)`.
    let (mut dropped, mut skipped) = (0, 0);
    for line in err.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(
            words.len() > 6 && words[0] == "tap:" && words[2] == "events",
            "{err}"
        );
        dropped += words[1].parse::<usize>().unwrap();
        skipped += words[6].parse::<usize>().unwrap();
    }
    assert!(!sent.is_empty() && sent.len() < 1000, "{} sent", sent.len());
    assert!(dropped > 0, "{err}");
    assert_eq!(sent.len() + dropped + skipped, 1000, "{err}");
    // What was sent starts with the stream's start, in order.
    let n: Vec<usize> = sent
        .iter()
        .map(|v| {
            v["event"]["message"].as_str().unwrap()[1..]
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(n[0], 0);
    assert!(n.windows(2).all(|p| p[0] < p[1]), "{n:?}");
}
