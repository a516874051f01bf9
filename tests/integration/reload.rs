//! Hot reload under load: numbered lines stream through weir while its pipeline file is
//! changed (SIGHUP) and then broken (`POST /-/reload`): every line comes out exactly once and
//! in order, the counter of the unchanged metric never restarts, the new metric counts from the
//! reload on, and the broken file changes nothing.

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use crate::support::server::wait_for;
use crate::util::{metric, post, spawn_weir};

const A: &str = r#"
[[metrics]]
name = "seen_total"
kind = "counter"

[[metrics]]
name = "a_total"
kind = "counter"
when = 'kind == "a"'
"#;

const B: &str = r#"
[[metrics]]
name = "seen_total"
kind = "counter"

[[metrics]]
name = "b_total"
kind = "counter"
when = 'kind == "b"'
"#;

#[test]
fn reload_under_load_loses_nothing_and_keeps_counters() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("p.toml");
    std::fs::write(&config, A).unwrap();
    let config_arg = config.display().to_string();
    let mut weir = spawn_weir(&["--config", &config_arg, "--stdout"]);
    let addr = weir.addr.clone();
    let pid = weir.child.id();
    let mut input = weir.child.stdin.take().unwrap();
    let output = weir.child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(output)
            .lines()
            .map(|l| l.unwrap())
            .collect::<Vec<String>>()
    });
    const N: usize = 60_000;
    let line = |i: usize| {
        format!(
            "{{\"n\":{i},\"kind\":\"{}\"}}",
            if i % 2 == 0 { "a" } else { "b" }
        )
    };
    let mut write_range = |from: usize, to: usize| {
        for i in from..to {
            writeln!(input, "{}", line(i)).unwrap();
        }
        input.flush().unwrap();
    };
    write_range(0, 20_000);
    // Change the pipeline while lines flow: SIGHUP.
    std::fs::write(&config, B).unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    write_range(20_000, 40_000);
    wait_for(
        Duration::from_secs(30),
        || (metric(&addr, "weir_config_reloads_total", &[("result", "ok")]) == 1.0).then_some(()),
        || "the SIGHUP reload never happened".into(),
    );
    // A broken file: refused, with its place; the running pipeline stays.
    std::fs::write(
        &config,
        format!("{B}\n[[metrics]]\nname = \"c_total\"\nkind = \"countr\"\n"),
    )
    .unwrap();
    let (status, body) = post(&weir.admin, "/-/reload");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("p.toml:"), "{body}");
    assert!(body.contains("countr"), "{body}");
    write_range(40_000, N);
    wait_for(
        Duration::from_secs(60),
        || (metric(&addr, "weir_events_total", &[("source", "stdin")]) == N as f64).then_some(()),
        || "not every line was processed".into(),
    );
    // Continuous: never reset by the reload.
    assert_eq!(metric(&addr, "seen_total", &[]), N as f64);
    let b = metric(&addr, "b_total", &[]);
    assert!(
        b > 0.0 && b <= 20_000.0,
        "b_total {b}: counts only lines after the reload"
    );
    assert_eq!(
        metric(&addr, "a_total", &[]),
        0.0,
        "a_total left the exposition"
    );
    assert_eq!(
        metric(&addr, "weir_config_reloads_total", &[("result", "error")]),
        1.0
    );
    assert_eq!(
        metric(&addr, "weir_config_reloads_total", &[("result", "ok")]),
        1.0
    );
    drop(input);
    assert!(weir.child.wait().unwrap().success());
    let out = reader.join().unwrap();
    assert_eq!(out.len(), N, "every line passed through exactly once");
    for (i, l) in out.iter().enumerate() {
        assert_eq!(*l, line(i), "line {i} in order");
    }
}

/// Without a pipeline file there is nothing to reload: a clear 400.
#[test]
fn reload_without_a_file_says_why() {
    let weir = spawn_weir(&[]);
    let (status, body) = post(&weir.admin, "/-/reload");
    assert_eq!(status, 400);
    assert!(body.contains("--config"), "{body}");
}

/// A reload that changes only a metric's `help` (found by the soak benchmark): the metric used
/// to leave `/metrics` until a restart (the registry kept the old help). It stays, with the new
/// help, and counts the lines after the reload.
#[test]
fn a_reload_that_changes_help_keeps_the_metric() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("p.toml");
    let pipeline = |help: &str| {
        format!("[[metrics]]\nname = \"seen_total\"\nkind = \"counter\"\nhelp = \"{help}\"\n")
    };
    std::fs::write(&config, pipeline("lines before")).unwrap();
    let config_arg = config.display().to_string();
    let mut weir = spawn_weir(&["--config", &config_arg]);
    let addr = weir.addr.clone();
    let mut input = weir.child.stdin.take().unwrap();
    writeln!(input, "{{\"n\":1}}").unwrap();
    input.flush().unwrap();
    wait_for(
        Duration::from_secs(30),
        || (metric(&addr, "seen_total", &[]) == 1.0).then_some(()),
        || "the first line was never counted".into(),
    );
    std::fs::write(&config, pipeline("lines after")).unwrap();
    let (status, body) = post(&weir.admin, "/-/reload");
    assert_eq!(status, 200, "{body}");
    writeln!(input, "{{\"n\":2}}").unwrap();
    input.flush().unwrap();
    wait_for(
        Duration::from_secs(30),
        || (metric(&addr, "seen_total", &[]) == 1.0).then_some(()),
        || "seen_total is not on /metrics after the reload".into(),
    );
    let (_, text) = crate::util::get(&addr, "/metrics");
    assert!(
        text.contains("# HELP seen_total lines after\n"),
        "the new help is not served:\n{text}"
    );
    drop(input);
}

/// Sinks and sources change with a reload. Numbered lines stream in on stdin while the
/// pipeline file moves the file sink from `a.out` to `b.out` and adds a file source: every
/// stdin line comes out exactly once, a prefix in `a.out` and the rest in `b.out`, in order;
/// the new source's lines are read once. A second reload changes that file source's settings
/// (it restarts): it resumes at its checkpoint instead of reading its file again.
#[test]
fn a_reload_swaps_sinks_and_sources_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (config, a_out, b_out, log) = (
        dir.path().join("p.toml"),
        dir.path().join("a.out"),
        dir.path().join("b.out"),
        dir.path().join("new.log"),
    );
    let sink = |out: &std::path::Path| {
        format!(
            "[[sinks]]\ntype = \"file\"\npath = {:?}\n",
            out.display().to_string()
        )
    };
    let source = |poll_ms: u64| {
        format!(
            "[[sources]]\ntype = \"file\"\npaths = [{:?}]\npoll_interval_ms = {poll_ms}\n",
            log.display().to_string()
        )
    };
    let from_file = |from: usize, to: usize| -> String {
        (from..to).map(|i| format!("{{\"f\":{i}}}\n")).collect()
    };
    std::fs::write(&log, from_file(0, 1_000)).unwrap();
    std::fs::write(&config, sink(&a_out)).unwrap();
    let (config_arg, data_arg) = (
        config.display().to_string(),
        dir.path().join("data").display().to_string(),
    );
    let mut weir = spawn_weir(&["--config", &config_arg, "--data-dir", &data_arg]);
    let addr = weir.addr.clone();
    let mut input = weir.child.stdin.take().unwrap();
    let line = |i: usize| format!("{{\"n\":{i}}}");
    let mut write_range = |from: usize, to: usize| {
        for i in from..to {
            writeln!(input, "{}", line(i)).unwrap();
        }
        input.flush().unwrap();
    };
    let stdin_events = |want: f64| {
        wait_for(
            Duration::from_secs(30),
            || (metric(&addr, "weir_events_total", &[("source", "stdin")]) == want).then_some(()),
            || format!("stdin events never reached {want}"),
        )
    };
    let log_label = log.display().to_string();
    let log_events = || metric(&addr, "weir_events_total", &[("source", &log_label)]);
    write_range(0, 20_000);

    std::fs::write(&config, format!("{}{}", sink(&b_out), source(250))).unwrap();
    let (status, body) = post(&weir.admin, "/-/reload");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("sinks: 1 started (file), 1 stopped (file)"),
        "{body}"
    );
    assert!(
        body.contains("sources: 1 started, 0 stopped; stdin is never stopped by a reload"),
        "{body}"
    );
    write_range(20_000, 40_000);
    stdin_events(40_000.0);
    wait_for(
        Duration::from_secs(30),
        || (log_events() == 1_000.0).then_some(()),
        || format!("the new file source read {} lines", log_events()),
    );

    // Changed settings restart the file source: at its checkpoint, not at the start.
    std::fs::write(&config, format!("{}{}", sink(&b_out), source(100))).unwrap();
    let (status, body) = post(&weir.admin, "/-/reload");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("sources: 1 started, 1 stopped"), "{body}");
    assert!(!body.contains("sinks:"), "the sink did not change: {body}");
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(from_file(1_000, 1_010).as_bytes()).unwrap();
    wait_for(
        Duration::from_secs(30),
        || (log_events() >= 1_010.0).then_some(()),
        || format!("the restarted file source read {} lines", log_events()),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(log_events(), 1_010.0, "no line of new.log read twice");
    write_range(40_000, 40_010);
    stdin_events(40_010.0);

    // SIGTERM: sinks deliver what they hold.
    drop(input);
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &weir.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(weir.child.wait().unwrap().success());
    let read = |p: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect()
    };
    let (a, b) = (read(&a_out), read(&b_out));
    let ns = |v: &[serde_json::Value]| -> Vec<u64> {
        v.iter().filter_map(|e| e["n"].as_u64()).collect()
    };
    let (na, nb) = (ns(&a), ns(&b));
    assert!(
        !na.is_empty() && !nb.is_empty(),
        "{} in a, {} in b",
        na.len(),
        nb.len()
    );
    let all: Vec<u64> = na.iter().chain(&nb).copied().collect();
    assert_eq!(
        all,
        (0..40_010).collect::<Vec<u64>>(),
        "each stdin line once, in order"
    );
    let fs: Vec<u64> = b.iter().filter_map(|e| e["f"].as_u64()).collect();
    assert_eq!(
        fs,
        (0..1_010).collect::<Vec<u64>>(),
        "new.log's lines once, in b.out"
    );
    assert!(a.iter().all(|e| e["f"].is_null()));
}

/// A reload that would leave no source (the file's only source removed; stdin cannot be
/// started late) keeps the running one, says so, and weir keeps reading.
#[test]
fn a_reload_never_stops_the_last_source() {
    let dir = tempfile::tempdir().unwrap();
    let (config, log) = (dir.path().join("p.toml"), dir.path().join("app.log"));
    std::fs::write(&log, "{\"n\":0}\n").unwrap();
    std::fs::write(
        &config,
        format!(
            "[[sources]]\ntype = \"file\"\npaths = [{:?}]\n",
            log.display().to_string()
        ),
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let data_arg = dir.path().join("data").display().to_string();
    let mut weir = spawn_weir(&["--config", &config_arg, "--data-dir", &data_arg]);
    let label = log.display().to_string();
    let read = || metric(&weir.addr, "weir_events_total", &[("source", &label)]);
    wait_for(
        Duration::from_secs(30),
        || (read() == 1.0).then_some(()),
        || "the first line was never read".into(),
    );
    std::fs::write(&config, "").unwrap();
    let (status, body) = post(&weir.admin, "/-/reload");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("no source would be left: the sources keep running as they were"),
        "{body}"
    );
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"{\"n\":1}\n").unwrap();
    wait_for(
        Duration::from_secs(30),
        || (read() == 2.0).then_some(()),
        || "the file source stopped".into(),
    );
    assert!(weir.child.try_wait().unwrap().is_none(), "weir still runs");
    let _ = weir.child.kill();
    let _ = weir.child.wait();
}
