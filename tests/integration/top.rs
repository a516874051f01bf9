//! `weir top` against a running weir fed a known stream: the frames show the source's event
//! count, the parse problems by reason, and a rate once two polls were made; `/stats` agrees
//! with `/metrics`; a weir that does not answer is an error, not an empty screen.

use std::io::Write;
use std::process::Stdio;

use crate::util::{demo_logs, get, scrape_when_processed, spawn_weir, weir};

#[test]
fn top_shows_what_a_running_weir_has_processed() {
    const LINES: usize = 3_000;
    let corpus = demo_logs(LINES as u64, 21, 0.02);
    let mut w = spawn_weir(&[]);
    let input = w.child.stdin.as_mut().expect("stdin");
    input.write_all(&corpus).expect("write");
    input.flush().expect("flush");
    let metrics = scrape_when_processed(&w.addr, LINES as f64);
    let problems: Vec<(String, f64)> = metrics
        .iter()
        .filter(|(k, v)| k.0 == "weir_parse_errors_total" && **v > 0.0)
        .map(|(k, v)| (k.1["reason"].clone(), *v))
        .collect();
    assert!(!problems.is_empty(), "the corpus has malformed lines");
    // Events, which may be fewer than lines: tracebacks join the event before them.
    let events = metrics[&crate::util::key("weir_events_total", &[("source", "stdin")])] as usize;

    // /stats carries the values /metrics shows.
    let (status, body) = get(&w.admin, "/stats");
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let lines = &stats["families"]["weir_lines_total"][0];
    assert_eq!(lines["labels"]["source"], "stdin");
    assert_eq!(lines["value"], LINES as f64);

    let out = weir()
        .args([
            "top",
            "--addr",
            &w.admin,
            "--count",
            "2",
            "--interval-secs",
            "0.2",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run weir top");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let frames: Vec<&str> = text.split("\n\nweir ").collect();
    assert_eq!(frames.len(), 2, "two frames, one after the other:\n{text}");
    let (first, second) = (frames[0], frames[1]);
    assert!(
        first.contains(&format!(": - events/s, {events} events")),
        "no rate before a second poll:\n{first}"
    );
    // Nothing came in between the polls: a rate of zero.
    assert!(
        second.contains(&format!(": 0.0 events/s, {events} events")),
        "{second}"
    );
    let stdin_row = second
        .lines()
        .find(|l| l.starts_with("stdin "))
        .unwrap_or_else(|| panic!("a row for the stdin source:\n{second}"));
    let cols: Vec<&str> = stdin_row.split_whitespace().collect();
    assert_eq!(cols[1..3], ["0.0", &events.to_string()], "{stdin_row}");
    for (reason, n) in &problems {
        let row = second
            .lines()
            .find(|l| l.starts_with(reason.as_str()))
            .unwrap_or_else(|| panic!("a row for {reason}:\n{second}"));
        let total: f64 = row.split_whitespace().last().unwrap().parse().unwrap();
        assert_eq!(total, *n, "{row}");
    }

    drop(w.child.stdin.take());
    assert!(w.child.wait().expect("wait").success());

    // weir is gone: top says so and fails.
    let out = weir()
        .args(["top", "--addr", &w.admin, "--count", "1"])
        .output()
        .expect("run weir top");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach weir at"), "{err}");
}
