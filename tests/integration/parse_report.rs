//! Saying so when the input is not what the pipeline expects: the `--oneshot` summary on
//! stderr, exit code 3 when no line could be used, and a live run's first warning per reason.

use std::io::{BufRead, BufReader, Write};
use std::process::{Output, Stdio};

use crate::util::{demo_logs, temp_file, weir};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The summary lines of stderr (weir's own logs there are JSON).
fn summary(o: &Output) -> String {
    stderr(o)
        .lines()
        .filter(|l| l.starts_with("weir: "))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn oneshot_ends_with_a_summary_of_lines_events_and_problems() {
    let corpus = demo_logs(5_000, 3, 0.02);
    // Counted independently: a line that is not a JSON object (an empty line neither).
    let bad = corpus
        .strip_suffix(b"\n")
        .unwrap_or(&corpus)
        .split(|&b| b == b'\n')
        .filter(|l| {
            !matches!(
                serde_json::from_slice::<serde_json::Value>(l),
                Ok(serde_json::Value::Object(_))
            )
        })
        .count();
    assert!(bad > 0, "the corpus has malformed lines");
    let dir = tempfile::tempdir().expect("tempdir");
    let input = temp_file(dir.path(), "app.log", &corpus);
    // A pipeline without multi-line joining, so that lines and events are counted alike (the
    // default pipeline joins the corpus' traceback-like lines to the event before them).
    let pipeline = temp_file(dir.path(), "p.toml", b"[event]\n");
    let out = weir()
        .args(["run", "--oneshot", "--progress", "never", "--config"])
        .arg(&pipeline)
        .arg(&input)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        summary(&out),
        format!(
            "weir: 5,000 lines, 5,000 events; parse problems: invalid_json {bad} ({:.1}%)\n",
            bad as f64 * 100.0 / 5000.0
        )
    );
}

#[test]
fn a_oneshot_with_no_usable_line_says_so_and_exits_3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines: String = (0..300)
        .map(|i| {
            format!(
                "ts=2024-01-01T00:00:{:02}Z level=info msg=\"request {i}\"\n",
                i % 60
            )
        })
        .collect();
    let input = temp_file(dir.path(), "app.logfmt", lines.as_bytes());
    let out = weir()
        .args(["run", "--oneshot", "--progress", "never"])
        .arg(&input)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(
        summary(&out),
        format!(
            "weir: 300 lines, 300 events; parse problems: invalid_json 300 (100.0%)\n\
             weir: no line could be used: this pipeline expects one JSON object a line, and all \
             300 events were unusable (invalid_json); they were counted and kept, but no metric \
             saw them\n\
             weir: first line (from {}): \"ts=2024-01-01T00:00:00Z level=info msg=\\\"request 0\\\"\"\n\
             weir: hint: is the input in another format? `--format docker|cri|auto` unwraps \
             container logs; a pipeline's `[parser]` reads other line formats (logfmt, regex); \
             exit code 3\n",
            input.display()
        )
    );
    // The exposition is still written (all zeros but weir's own counters).
    assert!(String::from_utf8_lossy(&out.stdout).contains("weir_parse_errors_total"));
}

/// A live run over many bad lines in several writes: exactly one warning per reason, with a
/// sample line, however many batches carry them.
#[test]
fn a_live_run_warns_once_per_reason_with_a_sample() {
    let mut child = weir()
        .args(["run", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir");
    let mut stdin = child.stdin.take().expect("stdin piped");
    let stderr = child.stderr.take().expect("stderr piped");
    let reader = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    for round in 0..5 {
        let mut chunk = String::new();
        for i in 0..400 {
            chunk.push_str(&format!("not json {round}-{i}\n"));
            if i % 50 == 0 {
                chunk.push_str("[1, 2]\n");
            }
            chunk.push_str(
                "{\"timestamp\":\"2024-01-01T00:00:00Z\",\"level\":\"INFO\",\"message\":\"fine\"}\n",
            );
        }
        stdin.write_all(chunk.as_bytes()).expect("write");
        stdin.flush().expect("flush");
        // Separate reads, so the lines come in several batches (not a timing assertion).
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(stdin);
    let status = child.wait().expect("wait");
    assert!(status.success());
    let logs = reader.join().expect("reader");
    let first: Vec<serde_json::Value> = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("parse problem seen for the first time"))
        })
        .collect();
    let reasons: Vec<&str> = first
        .iter()
        .map(|v| v["fields"]["reason"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(reasons, ["invalid_json", "not_an_object"], "{logs:#?}");
    assert_eq!(first[0]["fields"]["sample"], "not json 0-0");
    assert_eq!(first[0]["fields"]["source"], "stdin");
    assert_eq!(first[1]["fields"]["sample"], "[1, 2]");
    assert_eq!(first[0]["level"], "WARN");
}
