//! State under data_dir under damage, with the Loki receiver written from Loki's push API spec
//! (tests/support/loki.rs; not a real Loki): a disk-buffer segment with flipped bytes, a full
//! disk (a 5 MB tmpfs), corrupt checkpoint and cursor files, and the buffer gauge.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::loki::LokiReceiver;
use crate::util::*;

/// Lines of one length (the sequence number is zero-padded), so a file offset is a line count.
fn line(i: u64) -> String {
    format!("{{\"level\":\"INFO\",\"component\":\"c\",\"message\":\"m\",\"seq\":\"{i:09}\"}}\n")
}

fn lines(from: u64, to: u64) -> String {
    (from..to).map(line).collect()
}

fn seq_of(line: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
    v["seq"].as_str().expect("seq").parse().expect("number")
}

fn seqs(rx: &LokiReceiver) -> BTreeMap<u64, usize> {
    let mut count = BTreeMap::new();
    for e in rx.entries() {
        *count.entry(seq_of(&e.line)).or_default() += 1;
    }
    count
}

/// The records of a disk buffer segment: (start offset, end offset, seq) per frame found.
fn frames(segment: &[u8]) -> Vec<(usize, usize, u64)> {
    let mut out = Vec::new();
    let mut start = 0;
    for piece in segment.split_inclusive(|&b| b == b'\n') {
        let end = start + piece.len();
        if piece.len() > 19 && piece[0] == 0x1e && piece[17] == b' ' {
            let rec: serde_json::Value =
                serde_json::from_slice(&piece[18..piece.len() - 1]).expect("record JSON");
            out.push((start, end, seq_of(rec["line"].as_str().expect("line"))));
        }
        start = end;
    }
    out
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .collect()
        })
        .unwrap_or_default();
    segs.sort();
    segs
}

fn records_on_disk(dir: &Path) -> usize {
    segments(dir)
        .iter()
        .map(|p| frames(&std::fs::read(p).unwrap_or_default()).len())
        .sum()
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

/// The JSON log lines of weir with this message.
fn logged<'a>(log: &'a [serde_json::Value], message: &str) -> Vec<&'a serde_json::Value> {
    log.iter()
        .filter(|v| v["fields"]["message"] == message)
        .collect()
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// 100,000 records go into the disk buffer while the backend is down; 16 bytes in the middle
/// of a segment are flipped while weir is stopped; a new weir with the backend up sends every
/// record but the damaged ones, reports exactly how many it lost (and where), and exits 0 at
/// stdin EOF.
#[test]
fn flipped_bytes_in_a_disk_buffer_lose_only_the_damaged_records() {
    let rx = LokiReceiver::start();
    rx.refuse_connections_for(Duration::from_secs(3600));
    let data = tempfile::tempdir().expect("tempdir");
    let url = rx.url();
    let total = 100_000u64;
    let args = |w: &mut std::process::Command| {
        w.args(["run", "--listen", "127.0.0.1:0", "--loki", &url])
            .args([
                "--buffer",
                "disk",
                "--shutdown-timeout-secs",
                "1",
                "--data-dir",
            ])
            .arg(data.path())
            .stdout(Stdio::null());
    };
    let mut cmd = weir();
    args(&mut cmd);
    let mut w = cmd
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stdin = w.stdin.take().expect("stdin");
    stdin.write_all(lines(0, total).as_bytes()).expect("write");
    let dir = data.path().join("buffer/loki");
    let deadline = Instant::now() + Duration::from_secs(60);
    while records_on_disk(&dir) < total as usize {
        assert!(Instant::now() < deadline, "not all on disk");
        std::thread::sleep(Duration::from_millis(100));
    }
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &w.id().to_string()])
        .status();
    assert!(kill.expect("kill").success());
    assert!(wait_exit(&mut w, Duration::from_secs(20)).success());
    drop(stdin);

    let segs = segments(&dir);
    assert!(segs.len() >= 2, "several segments: {segs:?}");
    let path = &segs[0];
    let mut bytes = std::fs::read(path).expect("segment");
    let mid = bytes.len() / 2;
    let damaged: Vec<u64> = frames(&bytes)
        .into_iter()
        .filter(|&(s, e, _)| s < mid + 16 && mid < e)
        .map(|(_, _, seq)| seq)
        .collect();
    assert!(!damaged.is_empty());
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0xff;
    }
    std::fs::write(path, &bytes).expect("write");

    rx.clear_faults();
    rx.refuse_connections_for(Duration::from_millis(1));
    std::thread::sleep(Duration::from_millis(200));
    let mut cmd = weir();
    args(&mut cmd);
    let mut w = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = w.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || read_all(stderr));
    let status = wait_exit(&mut w, Duration::from_secs(120));
    let log = json_lines(&reader.join().expect("stderr"));
    assert!(status.success(), "exit 0 at stdin EOF: {status:?}");
    let count = seqs(&rx);
    let missing: Vec<u64> = (0..total).filter(|s| !count.contains_key(s)).collect();
    assert_eq!(missing, damaged, "only the damaged records are missing");
    assert_eq!(
        count.values().filter(|&&n| n > 1).count() + rx.duplicates(),
        0,
        "none twice"
    );
    let skips = logged(
        &log,
        "disk buffer corrupt: bytes skipped; reading on at the next valid record",
    );
    let reported: u64 = skips
        .iter()
        .map(|v| v["fields"]["records"].as_u64().expect("records"))
        .sum();
    assert_eq!(reported, damaged.len() as u64, "{skips:?}");
    assert!(skips.iter().all(|v| v["fields"]["segment"]
        .as_str()
        .is_some_and(|s| s.ends_with(&*path.file_name().expect("name").to_string_lossy()))
        && v["fields"]["bytes"].as_u64().is_some_and(|b| b > 0)));
}

/// Unmounts the tmpfs when the test ends, whatever happens.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A small tmpfs at `dir`: `None` (SKIPPED) where mounting is not allowed, a failure in CI.
fn tmpfs(dir: &Path, size: &str) -> Option<Mounted> {
    std::fs::create_dir_all(dir).expect("mkdir");
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "mounting a tmpfs is required in CI (the tests run as root)"
        );
        eprintln!("SKIPPED: cannot mount a tmpfs (needs root)");
        return None;
    }
    Some(Mounted(dir.to_path_buf()))
}

fn checkpoint_offset(data: &Path) -> Option<u64> {
    let entry = std::fs::read_dir(data)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.starts_with("file-checkpoints-") && n.ends_with(".json")
        })?;
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok()?;
    v["files"].as_object()?.values().next()?["offset"].as_u64()
}

/// The disk buffer's data_dir is a 5 MB tmpfs, the backend is down, a file source reads more
/// than fits: weir keeps running and reports ENOSPC (metric, one log line), the file checkpoint
/// never passes the lines that are on disk, and once space is freed and the backend is back
/// every line arrives exactly once.
#[test]
fn a_full_disk_is_backpressure_and_loses_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let Some(_mounted) = tmpfs(&data, "5m") else {
        return;
    };
    let filler = data.join("filler");
    std::fs::write(&filler, vec![0u8; 1 << 20]).expect("filler");
    let log = tmp.path().join("app.log");
    let total = 30_000u64;
    std::fs::write(&log, lines(0, total)).expect("log");
    let line_len = line(0).len() as u64;
    let rx = LokiReceiver::start();
    rx.refuse_connections_for(Duration::from_secs(3600));
    let config = temp_file(
        tmp.path(),
        "p.toml",
        format!(
            "[[sources]]\ntype = \"file\"\npaths = [\"{}\"]\n\n[[sinks]]\ntype = \"loki\"\nendpoint = \"{}\"\n[sinks.buffer]\ntype = \"disk\"\nmax_bytes = 16777216\n",
            log.display(),
            rx.url()
        )
        .as_bytes(),
    );
    let config_arg = config.display().to_string();
    let data_arg = data.display().to_string();
    let w = spawn_weir(&["--config", &config_arg, "--data-dir", &data_arg]);
    let errors = [("file", "disk_buffer"), ("kind", "enospc")];
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&w.addr, "weir_disk_errors_total", &errors) < 1.0 {
        assert!(Instant::now() < deadline, "no ENOSPC reported");
        std::thread::sleep(Duration::from_millis(100));
    }
    let buffer = data.join("buffer/loki");
    let check = |when: &str| {
        // Read the checkpoint first: what is on disk only grows while the backend is down.
        if let Some(offset) = checkpoint_offset(&data) {
            let stored = records_on_disk(&buffer) as u64;
            assert!(
                offset / line_len <= stored,
                "{when}: checkpoint at line {} but only {stored} lines stored",
                offset / line_len
            );
        }
    };
    for _ in 0..10 {
        check("disk full");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        records_on_disk(&buffer) < total as usize,
        "the tmpfs is too small for every line"
    );
    std::fs::remove_file(&filler).expect("free space");
    for _ in 0..5 {
        check("space freed");
        std::thread::sleep(Duration::from_millis(300));
    }
    rx.clear_faults();
    rx.refuse_connections_for(Duration::from_millis(1));
    let deadline = Instant::now() + Duration::from_secs(120);
    while (seqs(&rx).len() as u64) < total {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} delivered",
            seqs(&rx).len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    let count = seqs(&rx);
    assert_eq!(count.len() as u64, total, "every line");
    assert_eq!(
        count.values().filter(|&&n| n > 1).count() + rx.duplicates(),
        0,
        "none twice"
    );
    wait_for_metric(&w.addr, "weir_sink_buffer_events", &[("sink", "loki")], 0.0);
    let log: Vec<serde_json::Value> = w
        ._stderr_lines
        .try_iter()
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect();
    let lines = logged(
        &log,
        "cannot write the disk buffer; holding the events (backpressure) and retrying",
    );
    assert!(
        (1..=2).contains(&lines.len()),
        "logged once (then at most once a minute): {}",
        lines.len()
    );
    assert_eq!(lines[0]["fields"]["kind"], "enospc");
}

/// 10,000 deliveries through a disk buffer: the buffer gauge ends at 0, never below.
#[test]
fn the_buffer_gauge_ends_at_zero_with_a_disk_buffer() {
    let rx = LokiReceiver::start();
    let data = tempfile::tempdir().expect("tempdir");
    let url = rx.url();
    let data_arg = data.path().display().to_string();
    let w = spawn_weir(&["--loki", &url, "--buffer", "disk", "--data-dir", &data_arg]);
    let mut stdin = w.child.stdin.as_ref().expect("stdin");
    stdin.write_all(lines(0, 10_000).as_bytes()).expect("write");
    stdin.flush().expect("flush");
    wait_for_metric(
        &w.addr,
        "weir_sink_events_total",
        &[("sink", "loki")],
        10_000.0,
    );
    wait_for_metric(&w.addr, "weir_sink_buffer_events", &[("sink", "loki")], 0.0);
    assert_eq!(seqs(&rx).len(), 10_000);
}

/// Garbage in the file checkpoint and in the disk buffer's cursor: weir starts anyway, says
/// which file it could not read and what it does instead, and loses no line.
#[test]
fn corrupt_checkpoint_and_cursor_files_are_reported_and_nothing_is_lost() {
    let rx = LokiReceiver::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let log = tmp.path().join("app.log");
    std::fs::write(&log, lines(0, 2_000)).expect("log");
    let config = temp_file(
        tmp.path(),
        "p.toml",
        format!(
            "[[sources]]\ntype = \"file\"\npaths = [\"{}\"]\n\n[[sinks]]\ntype = \"loki\"\nendpoint = \"{}\"\n[sinks.buffer]\ntype = \"disk\"\n",
            log.display(),
            rx.url()
        )
        .as_bytes(),
    );
    let config_arg = config.display().to_string();
    let data_arg = data.display().to_string();
    // A first run creates the state files.
    let w = spawn_weir(&["--config", &config_arg, "--data-dir", &data_arg]);
    wait_for_metric(
        &w.addr,
        "weir_sink_events_total",
        &[("sink", "loki")],
        2_000.0,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while checkpoint_offset(&data) != Some(2_000 * line(0).len() as u64)
        || !data.join("buffer/loki/cursor").exists()
    {
        assert!(Instant::now() < deadline, "state files written");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(w);
    let checkpoint = std::fs::read_dir(&data)
        .expect("data dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("file-checkpoints-"))
        .expect("a checkpoint file");
    std::fs::write(&checkpoint, b"{\"version\":1,\"files\":{\"1:2\":{\"pa").expect("damage");
    std::fs::write(data.join("buffer/loki/cursor"), b"\xff\xfe garbage").expect("damage");
    let w = spawn_weir(&["--config", &config_arg, "--data-dir", &data_arg]);
    // The buffer sends again from its oldest segment, and the file is read again from its
    // beginning: every line is sent twice, none is lost.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&w.addr, "weir_sink_events_total", &[("sink", "loki")]) < 4_000.0 {
        assert!(Instant::now() < deadline, "buffer resent and file re-read");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seqs(&rx).len(), 2_000);
    assert_eq!(
        metric(
            &w.addr,
            "weir_state_files_unreadable_total",
            &[("file", "checkpoint")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &w.addr,
            "weir_state_files_unreadable_total",
            &[("file", "disk_buffer_cursor")]
        ),
        1.0
    );
    let log: Vec<serde_json::Value> = w
        ._stderr_lines
        .try_iter()
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect();
    let warned = |needle: &str, path: &Path| {
        log.iter().any(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(needle))
                && v["fields"]["path"] == path.display().to_string()
        })
    };
    assert!(warned("checkpoint unreadable", &checkpoint), "{log:?}");
    // The cursor's warning comes before "serving /metrics" (sinks start first), so the
    // lines spawn_weir reads past; its count above says it was met.
    assert!(checkpoint.with_extension("json.corrupt").exists());
}

/// SIGTERM while the disk buffer cannot be written (a full tmpfs, the backend down): weir
/// stops within its shutdown deadline instead of retrying the write for ever.
#[test]
fn sigterm_on_a_full_disk_stops_within_the_deadline() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let Some(_mounted) = tmpfs(&data, "2m") else {
        return;
    };
    let rx = LokiReceiver::start();
    rx.refuse_connections_for(Duration::from_secs(3600));
    let url = rx.url();
    let data_arg = data.display().to_string();
    let mut w = spawn_weir(&[
        "--loki",
        &url,
        "--buffer",
        "disk",
        "--shutdown-timeout-secs",
        "2",
        "--data-dir",
        &data_arg,
    ]);
    let mut stdin = w.child.stdin.take().expect("stdin");
    // weir stops reading once the disk is full: write from a thread that may block.
    let writer = std::thread::spawn(move || {
        for i in 0..100u64 {
            if stdin
                .write_all(lines(i * 1000, (i + 1) * 1000).as_bytes())
                .is_err()
            {
                return;
            }
        }
    });
    let errors = [("file", "disk_buffer"), ("kind", "enospc")];
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&w.addr, "weir_disk_errors_total", &errors) < 1.0 {
        assert!(Instant::now() < deadline, "no ENOSPC reported");
        std::thread::sleep(Duration::from_millis(100));
    }
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &w.child.id().to_string()])
        .status();
    assert!(kill.expect("kill").success());
    let status = wait_exit(&mut w.child, Duration::from_secs(15));
    assert!(status.code().is_some(), "exited, not killed: {status:?}");
    let _ = writer.join();
}
