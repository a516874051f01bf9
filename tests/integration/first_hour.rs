//! Issue 16, a newcomer's first hour: the small things a first try runs into. `WEIR_LOG` is in
//! `--help` and a bad value is refused; `--oneshot` with a TCP listener is refused; a tap on a
//! source no one has says so; events a sink rejected and kept nowhere are named at the end.

use std::io::Write;
use std::process::Stdio;

use crate::support::loki::LokiReceiver;
use crate::util::{spawn_weir, temp_file, weir};

#[test]
fn weir_log_is_documented_and_an_invalid_value_is_refused() {
    for args in [&["--help"][..], &["run", "--help"][..]] {
        let out = weir().args(args).output().expect("run weir --help");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("WEIR_LOG"), "{args:?}:\n{help}");
    }
    let out = weir()
        .args(["run", "--oneshot"])
        .env("WEIR_LOG", "verbose")
        .stdin(Stdio::null())
        .output()
        .expect("run weir");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("WEIR_LOG=\"verbose\": \"verbose\" is not a log level"),
        "{err}"
    );
    // A valid filter still runs.
    let out = weir()
        .args(["run", "--oneshot"])
        .env("WEIR_LOG", "warn,weir::sink=debug")
        .stdin(Stdio::null())
        .output()
        .expect("run weir");
    assert!(matches!(out.status.code(), Some(0 | 3)), "{out:?}");
}

#[test]
fn oneshot_with_a_tcp_listener_is_refused() {
    let out = weir()
        .args(["run", "--oneshot", "--tcp", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .expect("run weir");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("a TCP listener has no end"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_tap_on_a_source_no_one_has_lists_the_sources_and_exits_2() {
    let w = spawn_weir(&[]);
    let out = weir()
        .args(["tap", "--addr", &w.admin, "--source", "nosuch"])
        .output()
        .expect("run weir tap");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("404"), "{err}");
    assert!(
        err.contains("no source named \"nosuch\"; this weir's sources: stdin"),
        "{err}"
    );
}

#[test]
fn events_rejected_without_a_dead_letter_path_are_named_at_the_end() {
    let loki = LokiReceiver::start();
    // Every push is refused for good: 400 is not retried.
    loki.fail_next_with(1000, 400);
    let dir = tempfile::tempdir().expect("temp dir");
    let pipeline = format!(
        "[[sinks]]\ntype = \"loki\"\nendpoint = \"{}\"\n",
        loki.url()
    );
    let config = temp_file(dir.path(), "p.toml", pipeline.as_bytes());
    let mut child = weir()
        .args(["run", "--oneshot", "--config"])
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir");
    let mut stdin = child.stdin.take().expect("stdin");
    for i in 0..5 {
        writeln!(
            stdin,
            r#"{{"timestamp":"2024-01-01T00:00:0{i}Z","level":"INFO","message":"lost line {i}"}}"#
        )
        .expect("write");
    }
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let warn: serde_json::Value = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("were lost"))
        })
        .unwrap_or_else(|| panic!("no loss warning in:\n{err}"));
    assert_eq!(warn["level"], "WARN", "{warn}");
    assert_eq!(warn["fields"]["events"], 5, "{warn}");
    assert_eq!(warn["fields"]["sink"], "loki", "{warn}");
    let reason = warn["fields"]["reason"].as_str().unwrap_or_default();
    assert!(reason.ends_with("no dead_letter_path"), "{warn}");
    let first = warn["fields"]["first_lines"].as_str().unwrap_or_default();
    assert!(first.contains("lost line 0"), "{warn}");
}

/// `weir run` with a terminal on stdin (a pty from util-linux `script`) says what it waits
/// for; with a pipe it does not.
#[test]
fn run_on_a_terminal_says_it_reads_stdin_and_how_to_feed_it() {
    const HINT: &str = "reading stdin, which is a terminal: pipe logs in (`app | weir run`)";
    if !crate::util::have_tool("script") {
        return;
    }
    let cmd = format!(
        "{} run --listen 127.0.0.1:0 --admin-listen off",
        env!("CARGO_BIN_EXE_weir")
    );
    // script's stdin at EOF closes the pty's input: weir reads EOF and exits.
    let out = std::process::Command::new("timeout")
        .args(["30", "script", "-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("run script");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(HINT), "{out:?}");
    let out = weir()
        .args(["run", "--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .stdin(Stdio::null())
        .output()
        .expect("run weir");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("serving /metrics") && !err.contains(HINT),
        "{err}"
    );
}

/// A glob gives the same `source` label whether weir backfills (`--oneshot`, where it was
/// each file's path) or tails the files (the glob): dashboards see one series either way.
#[test]
fn a_glob_labels_its_source_the_same_in_oneshot_and_in_follow_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let line = |i: u32| format!("{{\"message\":\"m\",\"n\":{i}}}\n");
    temp_file(
        dir.path(),
        "a.log",
        (0..3).map(line).collect::<String>().as_bytes(),
    );
    temp_file(
        dir.path(),
        "b.log",
        (3..5).map(line).collect::<String>().as_bytes(),
    );
    let glob = format!("{}/*.log", dir.path().display());
    let out = weir()
        .args(["run", "--oneshot", &glob])
        .output()
        .expect("run weir");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = crate::util::parse_exposition(&String::from_utf8_lossy(&out.stdout));
    let events = crate::util::key("weir_lines_total", &[("source", &glob)]);
    assert_eq!(m.get(&events), Some(&5.0), "oneshot: {m:?}");
    let w = spawn_weir(&[&glob]);
    crate::util::wait_for_metric(&w.addr, "weir_lines_total", &[("source", &glob)], 5.0);
}
