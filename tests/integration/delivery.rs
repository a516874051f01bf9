//! Delivery guarantees across sinks, with the Loki receiver written from Loki's public push API
//! spec (tests/support/loki.rs; not a real Loki): the disk buffer across a restart during an
//! outage, file checkpoints that wait for the sink, fan-out to several sinks.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::loki::LokiReceiver;
use crate::util::*;

fn numbered(from: u64, to: u64) -> String {
    let base = jiff::Timestamp::now().as_millisecond() - 600_000;
    (from..to)
        .map(|i| {
            let ts = jiff::Timestamp::from_millisecond(base + i as i64).expect("ts");
            format!("{{\"timestamp\":\"{ts}\",\"level\":\"INFO\",\"component\":\"c\",\"message\":\"m\",\"seq\":{i}}}\n")
        })
        .collect()
}

fn seqs(rx: &LokiReceiver) -> BTreeMap<u64, usize> {
    let mut count = BTreeMap::new();
    for e in rx.entries() {
        let v: serde_json::Value = serde_json::from_str(&e.line).expect("JSON line");
        *count.entry(v["seq"].as_u64().expect("seq")).or_default() += 1;
    }
    count
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        assert!(Instant::now() < deadline, "weir did not exit in {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The backend is down while weir reads 20,000 lines into its disk buffer; weir is stopped
/// (SIGTERM, 1 s deadline) during the outage; the backend comes back; a new weir on the same
/// data_dir sends what the disk holds first: every line arrives, none twice.
#[test]
fn disk_buffer_keeps_everything_across_a_restart_during_an_outage() {
    let rx = LokiReceiver::start();
    rx.refuse_connections_for(Duration::from_secs(3600));
    let data = tempfile::tempdir().expect("tempdir");
    let url = rx.url();
    let total = 20_000u64;
    let mut w = weir()
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--loki",
            &url,
            "--buffer",
            "disk",
        ])
        .args(["--shutdown-timeout-secs", "1", "--data-dir"])
        .arg(data.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stdin = w.stdin.take().expect("stdin");
    stdin
        .write_all(numbered(0, total).as_bytes())
        .expect("write");
    // All of it on disk: the segments hold every line.
    let dir = data.path().join("buffer/loki");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let on_disk: usize = std::fs::read_dir(&dir)
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
            .unwrap_or(0);
        if on_disk >= total as usize {
            break;
        }
        assert!(Instant::now() < deadline, "only {on_disk} lines on disk");
        std::thread::sleep(Duration::from_millis(50));
    }
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &w.id().to_string()])
        .status();
    assert!(kill.expect("kill").success());
    assert!(wait_exit(&mut w, Duration::from_secs(20)).success());
    drop(stdin);
    assert!(
        rx.entries().is_empty(),
        "nothing could be delivered during the outage"
    );

    rx.clear_faults();
    rx.refuse_connections_for(Duration::from_millis(1));
    std::thread::sleep(Duration::from_millis(200));
    let mut w2 = weir()
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--loki",
            &url,
            "--buffer",
            "disk",
            "--data-dir",
        ])
        .arg(data.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    assert!(wait_exit(&mut w2, Duration::from_secs(60)).success());
    let count = seqs(&rx);
    let missing: Vec<u64> = (0..total)
        .filter(|s| !count.contains_key(s))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "missing after the restart, e.g. {missing:?}"
    );
    assert_eq!(
        count.values().filter(|&&n| n > 1).count() + rx.duplicates(),
        0,
        "none twice"
    );
    assert_eq!(count.len() as u64, total);
}

/// A file source's checkpoint waits for the sink: with the backend down, weir is killed (-9);
/// a restart re-reads the lines the sink never delivered, so when the backend is back every
/// line arrives at least once.
#[test]
fn file_checkpoints_wait_for_the_sink_so_kill_9_loses_nothing() {
    let rx = LokiReceiver::start();
    rx.refuse_connections_for(Duration::from_secs(3600));
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("app.log");
    let total = 5_000u64;
    std::fs::write(&log, numbered(0, total)).expect("write");
    let url = rx.url();
    let run = || {
        weir()
            .args([
                "run",
                "--listen",
                "127.0.0.1:0",
                "--loki",
                &url,
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn")
    };
    let mut w = run();
    std::thread::sleep(Duration::from_secs(3));
    w.kill().expect("kill -9");
    w.wait().expect("wait");
    rx.clear_faults();
    rx.refuse_connections_for(Duration::from_millis(1));
    std::thread::sleep(Duration::from_millis(200));
    let mut w = run();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (seqs(&rx).len() as u64) < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = w.kill();
    let _ = w.wait();
    let count = seqs(&rx);
    assert_eq!(
        count.len() as u64,
        total,
        "every line delivered after the restart"
    );
}

/// Fan-out: one line stream to Loki and to a file sink at once; both get every line.
#[test]
fn fan_out_to_loki_and_a_file() {
    let rx = LokiReceiver::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("copy.log");
    let p = temp_file(
        dir.path(),
        "p.toml",
        format!(
            "[[sinks]]\ntype = \"loki\"\nendpoint = \"{}\"\n\n[[sinks]]\ntype = \"file\"\npath = \"{}\"\n",
            rx.url(),
            out.display()
        )
        .as_bytes(),
    );
    let input = numbered(0, 3000);
    let mut w = weir()
        .args(["run", "--listen", "127.0.0.1:0", "--config"])
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
    assert!(wait_exit(&mut w, Duration::from_secs(60)).success());
    assert_eq!(seqs(&rx).len(), 3000);
    assert_eq!(
        std::fs::read_to_string(&out).expect("copy"),
        input,
        "the file holds every line as read"
    );
}

/// A reload hands a disk buffer over: the Loki sink's backend (a receiver written from Loki's
/// push API spec, not a real Loki) is down while 10,000 lines go into the disk buffer; the
/// pipeline file is changed to point the sink at a second receiver that is up and reloaded
/// (`POST /-/reload`) while lines keep coming. The new sink sends what the old one buffered,
/// then the rest: every line reaches the new receiver, none twice, none the old one.
#[test]
fn a_reload_hands_a_disk_buffer_to_the_changed_sink() {
    let down = LokiReceiver::start();
    down.refuse_connections_for(Duration::from_secs(3600));
    let up = LokiReceiver::start();
    let data = tempfile::tempdir().expect("tempdir");
    let config = data.path().join("p.toml");
    let pipeline = |url: &str| {
        format!(
            "[[sinks]]\ntype = \"loki\"\nendpoint = \"{url}\"\n[sinks.buffer]\ntype = \"disk\"\n"
        )
    };
    std::fs::write(&config, pipeline(&down.url())).expect("write");
    let config_arg = config.display().to_string();
    let data_arg = data.path().join("data").display().to_string();
    let mut w = spawn_weir(&["--config", &config_arg, "--data-dir", &data_arg]);
    let mut stdin = w.child.stdin.take().expect("stdin");
    stdin
        .write_all(numbered(0, 10_000).as_bytes())
        .expect("write");
    stdin.flush().expect("flush");
    scrape_when_processed(&w.addr, 10_000.0);
    assert!(down.entries().is_empty());

    std::fs::write(&config, pipeline(&up.url())).expect("write");
    let (status, body) = post(&w.admin, "/-/reload");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("sinks: 1 started (loki), 1 stopped (loki)"),
        "{body}"
    );
    stdin
        .write_all(numbered(10_000, 20_000).as_bytes())
        .expect("write");
    drop(stdin);
    assert!(wait_exit(&mut w.child, Duration::from_secs(60)).success());
    let count = seqs(&up);
    let missing: Vec<u64> = (0..20_000)
        .filter(|s| !count.contains_key(s))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "missing, e.g. {missing:?}");
    assert_eq!(
        count.values().filter(|&&n| n > 1).count() + up.duplicates(),
        0,
        "none twice"
    );
    assert!(down.entries().is_empty(), "nothing reached the old backend");
}

/// SIGTERM while the sink hangs (Loki accepts the push and never answers): weir gives the sink
/// `shutdown_timeout_secs`, then stops anyway and says how many events it could not deliver.
#[test]
fn sigterm_while_the_sink_hangs_stops_within_the_deadline_and_says_what_is_lost() {
    let rx = LokiReceiver::start();
    rx.set_delay(Duration::from_secs(3600));
    let mut w = weir()
        .args(["run", "--listen", "127.0.0.1:0", "--loki", &rx.url()])
        .args(["--shutdown-timeout-secs", "2"])
        .env("WEIR_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = w.stdin.take().expect("stdin");
    stdin
        .write_all(numbered(0, 1_000).as_bytes())
        .expect("write");
    stdin.flush().expect("flush");
    // The first push is on its way and will never be answered.
    std::thread::sleep(Duration::from_secs(2));
    let sent = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &w.id().to_string()])
        .status();
    assert!(kill.expect("kill").success());
    let status = wait_exit(&mut w, Duration::from_secs(20));
    let took = sent.elapsed();
    drop(stdin);
    let mut err = String::new();
    std::io::Read::read_to_string(&mut w.stderr.take().expect("stderr"), &mut err).expect("read");
    assert!(
        took >= Duration::from_secs(2),
        "weir did not wait for the sink: {took:?}\n{err}"
    );
    assert!(
        took < Duration::from_secs(10),
        "weir took {took:?} to stop with a 2 s deadline\n{err}"
    );
    assert!(status.success(), "{status:?}\n{err}");
    assert!(
        err.contains("1000 events not delivered"),
        "weir does not say what it could not deliver:\n{err}"
    );
}
