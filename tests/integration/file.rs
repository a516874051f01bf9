//! The file source: tailing through rotation and restarts, checkpoints, partial lines, and
//! backpressure. Lines are numbered; `--stdout` passes every processed line through, so the test
//! sees exactly which lines weir delivered, in which order.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::util::*;

fn line(seq: u64) -> String {
    format!("{{\"timestamp\":\"2024-01-01T00:00:00Z\",\"level\":\"INFO\",\"message\":\"numbered\",\"seq\":{seq}}}\n")
}

fn append(path: &Path, from: u64, to: u64) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open");
    let mut buf = String::new();
    for i in from..to {
        buf.push_str(&line(i));
    }
    f.write_all(buf.as_bytes()).expect("append");
}

/// A `weir run --stdout` tailing `pattern`, with its stdout read line by line on a thread.
struct Tailer {
    child: Child,
    lines: Receiver<String>,
    _stderr: Receiver<String>,
}

/// A file source pipeline, for options the command line does not have.
fn file_pipeline(dir: &Path, pattern: &Path, options: &str) -> std::path::PathBuf {
    temp_file(
        dir,
        "p.toml",
        format!(
            "[[sources]]\ntype = \"file\"\npaths = [\"{}\"]\n{options}\n",
            pattern.display()
        )
        .as_bytes(),
    )
}

impl Drop for Tailer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(pattern: &Path, data_dir: &Path, extra: &[&str]) -> Tailer {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    if !extra.contains(&"--listen") {
        args.extend(["--listen", "127.0.0.1:0"].map(Into::into));
    }
    args.push("--data-dir".into());
    args.push(data_dir.into());
    args.extend(extra.iter().map(Into::into));
    args.push(pattern.into());
    tail_args(&args)
}

/// `weir run --stdout ARGS...`, its stdout and stderr read on threads.
#[allow(clippy::zombie_processes)]
fn tail_args(args: &[std::ffi::OsString]) -> Tailer {
    let mut child = weir()
        .args(["run", "--stdout"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir");
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let (etx, erx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("weir: {l}");
            let _ = etx.send(l);
        }
    });
    Tailer {
        child,
        lines,
        _stderr: erx,
    }
}

fn seq_of(l: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|_| panic!("JSON line: {l}"));
    v["seq"].as_u64().expect("seq")
}

/// Collects delivered sequence numbers until `want` distinct ones arrived (or 60 s passed).
fn collect(lines: &Receiver<String>, got: &mut Vec<u64>, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut distinct: std::collections::HashSet<u64> = got.iter().copied().collect();
    while distinct.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left.min(Duration::from_millis(500))) {
            Ok(l) => {
                let s = seq_of(&l);
                distinct.insert(s);
                got.push(s);
            }
            Err(_) if Instant::now() >= deadline => break,
            Err(_) => {}
        }
    }
}

fn assert_exactly_once_in_order(got: &[u64], total: u64, chunk: u64) {
    let mut count: HashMap<u64, usize> = HashMap::new();
    for s in got {
        *count.entry(*s).or_default() += 1;
    }
    let missing: Vec<u64> = (0..total)
        .filter(|s| !count.contains_key(s))
        .take(10)
        .collect();
    let dups: Vec<(&u64, &usize)> = count.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(
        missing.is_empty(),
        "missing lines, e.g. {missing:?} ({} of {total} arrived)",
        count.len()
    );
    assert!(dups.is_empty(), "duplicated lines, e.g. {dups:?}");
    assert_eq!(got.len() as u64, total);
    // Each file holds one chunk of consecutive numbers: within a chunk, delivery is in order.
    let mut last: HashMap<u64, u64> = HashMap::new();
    for s in got {
        if let Some(prev) = last.insert(s / chunk, *s) {
            assert!(
                prev < *s,
                "line {s} delivered after {prev} of the same file"
            );
        }
    }
}

/// Rename-and-create (the logrotate default), 200 times while weir tails: every numbered line
/// arrives exactly once, in order within each file.
#[test]
fn rotation_by_rename_and_create_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).expect("mkdir");
    let live = logs.join("app.log");
    std::fs::write(&live, b"").expect("create");
    let t = tail(&logs.join("app.log*"), &dir.path().join("data"), &[]);
    let (rotations, chunk) = (200u64, 50u64);
    for r in 0..rotations {
        append(&live, r * chunk, (r + 1) * chunk);
        std::fs::rename(&live, logs.join(format!("app.log.{r}"))).expect("rotate");
        std::fs::write(&live, b"").expect("create");
        if r % 20 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let total = rotations * chunk;
    let mut got = Vec::new();
    collect(&t.lines, &mut got, total as usize);
    std::thread::sleep(Duration::from_millis(500));
    while let Ok(l) = t.lines.try_recv() {
        got.push(seq_of(&l));
    }
    assert_exactly_once_in_order(&got, total, chunk);
}

/// Copytruncate, 100 times: the size drop is seen and the file is read again from 0, so every
/// line written after a truncation arrives, exactly once. (Lines written between copy and
/// truncate are lost by copytruncate itself, in any tool; the writer here waits for weir to
/// catch up before truncating, as only then is that window empty.)
#[test]
fn rotation_by_copytruncate_restarts_at_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("app.log");
    std::fs::write(&live, b"").expect("create");
    let t = tail(&live, &dir.path().join("data"), &[]);
    let (rotations, chunk) = (100u64, 40u64);
    let mut got = Vec::new();
    for r in 0..rotations {
        append(&live, r * chunk, (r + 1) * chunk);
        collect(&t.lines, &mut got, ((r + 1) * chunk) as usize);
        // Rotation is not microseconds behind a write in life; the pause also keeps the
        // truncation out of the instant between weir's size check and its read, a window every
        // tailer has with copytruncate.
        std::thread::sleep(Duration::from_millis(30));
        std::fs::copy(&live, dir.path().join("app.log.1")).expect("copy");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&live)
            .and_then(|f| f.set_len(0))
            .expect("truncate");
    }
    std::thread::sleep(Duration::from_millis(500));
    while let Ok(l) = t.lines.try_recv() {
        got.push(seq_of(&l));
    }
    assert_exactly_once_in_order(&got, rotations * chunk, chunk);
}

/// `kill -9` at several points while the file grows; each restart resumes from the checkpoint.
/// No numbered line is missing; duplicates (lines processed after the last checkpoint, at most
/// about a second's worth) are counted and reported.
#[test]
fn kill_9_and_restart_lose_no_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("app.log");
    let data = dir.path().join("data");
    std::fs::write(&live, b"").expect("create");
    let total = 60_000u64;
    let mut got = Vec::new();
    let mut written = 0u64;
    for round in 0..6u64 {
        let mut t = tail(&live, &data, &[]);
        // Let it read some of what is there and some of what comes.
        let step = total / 6;
        append(&live, written, written + step);
        written += step;
        let want = got.iter().collect::<std::collections::HashSet<_>>().len() + (step / 2) as usize;
        collect(&t.lines, &mut got, want);
        std::thread::sleep(Duration::from_millis(300 + 400 * (round % 3)));
        t.child.kill().expect("kill -9");
        t.child.wait().expect("wait");
        while let Ok(l) = t.lines.try_recv() {
            got.push(seq_of(&l));
        }
    }
    let t = tail(&live, &data, &[]);
    collect(&t.lines, &mut got, total as usize);
    std::thread::sleep(Duration::from_millis(300));
    while let Ok(l) = t.lines.try_recv() {
        got.push(seq_of(&l));
    }
    let mut count: HashMap<u64, usize> = HashMap::new();
    for s in &got {
        *count.entry(*s).or_default() += 1;
    }
    let missing = (0..total).filter(|s| !count.contains_key(s)).count();
    let dups: usize = count.values().map(|n| n - 1).sum();
    eprintln!("kill -9 x6: {total} lines, {missing} missing, {dups} delivered twice");
    assert_eq!(missing, 0, "no line may be lost across kill -9");
    assert!(
        dups < total as usize / 2,
        "duplicates bounded by the checkpoint interval: {dups}"
    );
}

/// A last line without newline is held, then emitted after partial_line_timeout_ms; and
/// read_from = "end" skips what a file held at startup.
#[test]
fn partial_lines_wait_then_flush_and_read_from_end_skips_old_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("app.log");
    append(&live, 0, 10);
    let pipeline = temp_file(
        dir.path(),
        "p.toml",
        format!(
            "[[sources]]\ntype = \"file\"\npaths = [\"{}\"]\nread_from = \"end\"\npartial_line_timeout_ms = 700\n",
            live.display()
        )
        .as_bytes(),
    );
    let mut child = weir()
        .args(["run", "--stdout", "--listen", "127.0.0.1:0", "--config"])
        .arg(&pipeline)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), l));
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&live)
        .expect("open");
    f.write_all(line(10).as_bytes()).expect("write");
    f.write_all(b"{\"message\":\"unfinished\",\"seq\":11}")
        .expect("write");
    let written = Instant::now();
    let (_, first) = rx.recv_timeout(Duration::from_secs(10)).expect("line 10");
    assert_eq!(
        seq_of(&first),
        10,
        "lines present at startup are skipped with read_from = end"
    );
    let (at, second) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("partial line");
    assert_eq!(seq_of(&second), 11);
    assert!(
        at.duration_since(written) >= Duration::from_millis(600),
        "held until the timeout"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Backpressure: weir's stdout is not read, so the pipeline stalls; a 1,000,000-line file waits
/// on disk while weir's memory stays bounded; once stdout is drained, every line arrives.
#[test]
fn a_stalled_downstream_holds_memory_bounded_with_a_million_lines_waiting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("big.log");
    let corpus = demo_logs(1_000_000, 9, 0.0);
    std::fs::write(&big, &corpus).expect("write");
    let mut child = weir()
        .args(["run", "--stdout", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg(&big)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_secs(2));
    let rss_kb = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    };
    let stalled = rss_kb(child.id());
    let out = child.stdout.take().expect("stdout");
    let mut r = BufReader::new(out);
    let mut buf = String::new();
    let mut n = 0u64;
    let mut peak = stalled;
    while n < 1_000_000 {
        buf.clear();
        if r.read_line(&mut buf).expect("read") == 0 {
            break;
        }
        n += 1;
        if n % 100_000 == 0 {
            peak = peak.max(rss_kb(child.id()));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("stalled RSS {stalled} KiB, peak while draining {peak} KiB");
    assert_eq!(
        n, 1_000_000,
        "every line arrives once the downstream drains"
    );
    assert!(stalled < 64 * 1024, "RSS while stalled: {stalled} KiB");
    assert!(peak < 64 * 1024, "RSS while draining: {peak} KiB");
}

/// Opens a file for appending numbered lines, as a logging application holds its log.
fn writer(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open for append")
}

fn write_lines(f: &mut std::fs::File, from: u64, to: u64) {
    let buf: String = (from..to).map(line).collect();
    f.write_all(buf.as_bytes()).expect("write");
}

/// Waits (60 s deadline) until `seq` has been delivered, collecting everything before it.
fn collect_until(lines: &Receiver<String>, got: &mut Vec<u64>, seq: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !got.contains(&seq) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "line {seq} not delivered within 60 s");
        if let Ok(l) = lines.recv_timeout(left.min(Duration::from_millis(500))) {
            got.push(seq_of(&l));
        }
    }
}

/// Late writers: logrotate renames app.log (create mode) and the application keeps writing to
/// the renamed file through its open handle for over a second before it reopens app.log, 20
/// times. The glob selects only app.log, so every line after the rename comes from a file weir
/// holds for `rotate_wait_ms` (default 5000): every line arrives exactly once, in order per
/// file; each rename is counted as `rotated` (none as `deleted`), and the rotated files are
/// closed once quiet.
#[test]
fn late_writers_to_a_rotated_file_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("app.log");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut app = writer(&live);
    let t = tail(&live, &dir.path().join("data"), &["--listen", &addr]);
    let (rotations, chunk, before_rename) = (20u64, 150u64, 50u64);
    // Only once weir follows the file (and watches its directory) does rotating make sense.
    write_lines(&mut app, 0, 1);
    let mut got = Vec::new();
    collect(&t.lines, &mut got, 1);
    for r in 0..rotations {
        let first = r * chunk;
        // (Line `first` is already in: written as the last step of the previous round.)
        write_lines(&mut app, first + 1, first + before_rename);
        std::fs::rename(&live, dir.path().join(format!("app.log.{r}"))).expect("rotate");
        let next = writer(&live);
        // The application has not reopened yet: its lines still go to the renamed file.
        for i in first + before_rename..first + chunk {
            write_lines(&mut app, i, i + 1);
            std::thread::sleep(Duration::from_millis(12));
        }
        app = next;
        write_lines(&mut app, first + chunk, first + chunk + 1);
    }
    // The last line written (to the live file) closes the last chunk's run of numbers.
    let total = rotations * chunk + 1;
    collect(&t.lines, &mut got, total as usize);
    std::thread::sleep(Duration::from_millis(500));
    while let Ok(l) = t.lines.try_recv() {
        got.push(seq_of(&l));
    }
    assert_exactly_once_in_order(&got, total, chunk);
    let events = "weir_file_events_total";
    assert_eq!(
        metric(&addr, events, &[("event", "rotated")]),
        rotations as f64
    );
    assert_eq!(metric(&addr, events, &[("event", "deleted")]), 0.0);
    // Quiet rotated files are closed: only app.log stays open.
    wait_for_metric(&addr, "weir_files_open", &[], 1.0);
}

/// What `rotate_wait_ms` promises and no more: a rotated file is read while it grows, and once
/// it has been quiet for rotate_wait_ms it is closed; a line written to it after that is not
/// read (by design, as documented). Here rotate_wait_ms = 200.
#[test]
fn a_write_to_a_rotated_file_after_rotate_wait_is_not_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("app.log");
    let pipeline = file_pipeline(dir.path(), &live, "rotate_wait_ms = 200");
    let addr = format!("127.0.0.1:{}", free_port());
    let data = dir.path().join("data");
    let mut app = writer(&live);
    let t = tail_args(&[
        "--listen".into(),
        addr.clone().into(),
        "--data-dir".into(),
        data.into(),
        "--config".into(),
        pipeline.into(),
    ]);
    write_lines(&mut app, 0, 10);
    let mut got = Vec::new();
    collect(&t.lines, &mut got, 10);
    std::fs::rename(&live, dir.path().join("app.log.1")).expect("rotate");
    let mut next = writer(&live);
    let events = "weir_file_events_total";
    wait_for_metric(&addr, events, &[("event", "rotated")], 1.0);
    wait_for_metric(&addr, events, &[("event", "discovered")], 2.0);
    // The rotated file, quiet, is closed: only the new app.log is open.
    wait_for_metric(&addr, "weir_files_open", &[], 1.0);
    write_lines(&mut app, 10, 11);
    write_lines(&mut next, 11, 12);
    collect_until(&t.lines, &mut got, 11);
    std::thread::sleep(Duration::from_millis(500));
    while let Ok(l) = t.lines.try_recv() {
        got.push(seq_of(&l));
    }
    let mut want: Vec<u64> = (0..10).collect();
    want.push(11);
    assert_eq!(
        got, want,
        "line 10, written to the rotated file after it was closed, is not read"
    );
}

/// Short-lived files: app.log is created, written and renamed to a name the glob does not
/// select (done.N) at once, 100 times, never waiting for weir. The create and rename events
/// open each file as they come, so every file is read from its start, even those renamed
/// before any rescan: every line arrives exactly once, in order per file.
#[test]
fn files_renamed_away_before_a_rescan_are_still_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("app.log");
    std::fs::write(&live, b"").expect("create");
    let t = tail(&live, &dir.path().join("data"), &[]);
    let (files, chunk) = (100u64, 20u64);
    // The first file tells that weir follows the directory.
    append(&live, 0, chunk);
    let mut got = Vec::new();
    collect(&t.lines, &mut got, chunk as usize);
    std::fs::rename(&live, dir.path().join("done.0")).expect("rename");
    for r in 1..files {
        let buf: String = (r * chunk..(r + 1) * chunk).map(line).collect();
        std::fs::write(&live, buf).expect("write");
        std::fs::rename(&live, dir.path().join(format!("done.{r}"))).expect("rename");
    }
    let total = files * chunk;
    collect(&t.lines, &mut got, total as usize);
    std::thread::sleep(Duration::from_millis(500));
    while let Ok(l) = t.lines.try_recv() {
        got.push(seq_of(&l));
    }
    assert_exactly_once_in_order(&got, total, chunk);
}

/// SIGTERM while rotated files are held (rotate_wait_ms of an hour): weir stops without
/// waiting for them, exit 0, and a restart reads the held file's late lines from its
/// checkpoint, found under its new name, without repeating the ones already delivered.
#[test]
fn sigterm_with_a_rotated_file_held_and_its_tail_read_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("app.log");
    let pipeline = file_pipeline(dir.path(), &live, "rotate_wait_ms = 3600000");
    let data = dir.path().join("data");
    let args: Vec<std::ffi::OsString> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        data.into(),
        "--config".into(),
        pipeline.into(),
    ];
    let mut app = writer(&live);
    let mut t = tail_args(&args);
    write_lines(&mut app, 0, 10);
    let mut got = Vec::new();
    collect(&t.lines, &mut got, 10);
    std::fs::rename(&live, dir.path().join("app.log.1")).expect("rotate");
    let mut next = writer(&live);
    write_lines(&mut app, 10, 20);
    write_lines(&mut next, 1000, 1010);
    collect(&t.lines, &mut got, 30);
    let term = std::process::Command::new("kill")
        .args(["-TERM", &t.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = t.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "weir still running 30 s after SIGTERM (rotate_wait_ms is an hour)"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    while let Ok(l) = t.lines.try_recv() {
        got.push(seq_of(&l));
    }
    // The application still writes to the rotated file while weir is down, and after.
    write_lines(&mut app, 20, 30);
    let t = tail_args(&args);
    collect(&t.lines, &mut got, 40);
    write_lines(&mut app, 30, 40);
    collect(&t.lines, &mut got, 50);
    std::thread::sleep(Duration::from_millis(500));
    while let Ok(l) = t.lines.try_recv() {
        got.push(seq_of(&l));
    }
    let mut want: Vec<u64> = (0..40).chain(1000..1010).collect();
    want.sort_unstable();
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, want, "every line once, across the restart");
}

// ---- Hostile inputs: symlink loops, FIFOs, files replaced by directories, more files than
// max_open_files, descriptors running out, SIGHUP. Each reproduces a defect first seen on a
// release build (issue 13).

/// Sends `signal` (TERM, HUP) to the child.
fn signal(child: &Child, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

/// Waits for the child to exit, failing the test after `secs`.
fn exit_within(child: &mut Child, secs: u64, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "weir still running {secs} s after {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// weir's log lines until one satisfies `want` (30 s), all of them returned.
fn stderr_until(
    rx: &Receiver<String>,
    mut want: impl FnMut(&serde_json::Value) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("weir did not log what was expected; it logged {seen:#?}"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or(serde_json::Value::Null);
        seen.push(line);
        if want(&v) {
            return seen;
        }
    }
}

fn message_is(v: &serde_json::Value, m: &str) -> bool {
    v["fields"]["message"]
        .as_str()
        .is_some_and(|s| s.starts_with(m))
}

/// The /metrics address from weir's log.
fn metrics_addr(rx: &Receiver<String>) -> String {
    let lines = stderr_until(rx, |v| message_is(v, "serving /metrics"));
    let v: serde_json::Value = serde_json::from_str(lines.last().expect("a line")).expect("JSON");
    v["fields"]["addr"].as_str().expect("addr").to_string()
}

/// `g/sub/loop -> .` and `g/sub/loop2 -> ../sub` under `g/**/*.log`: `--oneshot` ends and
/// counts each real file's lines once (it used to spin forever, deaf to SIGTERM); tailing
/// reads every file once and stops promptly on SIGTERM.
#[cfg(unix)]
#[test]
fn directory_symlink_loops_under_globstar_are_walked_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = dir.path().join("g");
    std::fs::create_dir_all(g.join("sub/deep")).expect("mkdir");
    append(&g.join("top.log"), 0, 10);
    append(&g.join("sub/a.log"), 10, 30);
    append(&g.join("sub/deep/b.log"), 30, 60);
    std::os::unix::fs::symlink(".", g.join("sub/loop")).expect("symlink");
    std::os::unix::fs::symlink("../sub", g.join("sub/loop2")).expect("symlink");
    let pattern = format!("{}/**/*.log", g.display());

    let mut child = weir()
        .args(["run", "--oneshot", &pattern])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn weir");
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || read_all(stdout));
    let status = exit_within(&mut child, 60, "starting a oneshot over a symlink loop");
    assert!(status.success(), "exit status {status}");
    let m = parse_exposition(&reader.join().expect("reader"));
    // Each real file read once: 60 events under the glob (the source label of a backfill is
    // the pattern that selected the file, as when tailing); a file read twice would show.
    let per_source: BTreeMap<String, f64> = m
        .iter()
        .filter(|(k, _)| k.0 == "weir_events_total")
        .map(|(k, v)| (k.1["source"].clone(), *v))
        .collect();
    let want: BTreeMap<String, f64> = [(pattern.clone(), 60.0)].into_iter().collect();
    assert_eq!(per_source, want, "each of the 60 lines once");

    let mut t = tail(&g.join("**/*.log"), &dir.path().join("data"), &[]);
    let mut got = Vec::new();
    collect(&t.lines, &mut got, 60);
    std::thread::sleep(Duration::from_millis(1500));
    while let Ok(l) = t.lines.try_recv() {
        got.push(seq_of(&l));
    }
    got.sort_unstable();
    assert_eq!(got, (0..60).collect::<Vec<_>>(), "every line once");
    signal(&t.child, "TERM");
    let status = exit_within(&mut t.child, 10, "SIGTERM");
    assert!(status.success(), "exit status {status}");
}

/// A FIFO the glob matches is never opened (its open would block until a writer comes): a
/// warning names it, `weir_file_skipped_total{reason="not_regular"}` counts it once, the
/// regular files beside it are read, and SIGTERM stops weir at once.
#[cfg(unix)]
#[test]
fn a_fifo_matched_by_the_glob_is_skipped_said_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).expect("mkdir");
    let fifo = logs.join("pipe.log");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    append(&logs.join("app.log"), 0, 20);
    let mut t = tail(&logs.join("*.log"), &dir.path().join("data"), &[]);
    let addr = metrics_addr(&t._stderr);
    let mut got = Vec::new();
    collect(&t.lines, &mut got, 20);
    let warned = stderr_until(&t._stderr, |v| {
        message_is(v, "not a regular file") && v["fields"]["path"] == fifo.display().to_string()
    });
    assert!(!warned.is_empty());
    // A fifo created while weir runs is skipped too (notify sees it first: never opened).
    let fifo2 = logs.join("late.log");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo2)
        .status()
        .is_ok_and(|s| s.success()));
    append(&logs.join("app.log"), 20, 30);
    collect(&t.lines, &mut got, 30);
    wait_for_metric(
        &addr,
        "weir_file_skipped_total",
        &[("reason", "not_regular")],
        2.0,
    );
    // Rescans do not count the same FIFO again.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        metric(
            &addr,
            "weir_file_skipped_total",
            &[("reason", "not_regular")]
        ),
        2.0
    );
    signal(&t.child, "TERM");
    let status = exit_within(&mut t.child, 10, "SIGTERM");
    assert!(status.success(), "exit status {status}");
    got.sort_unstable();
    assert_eq!(got, (0..30).collect::<Vec<_>>());
}

/// The followed file is replaced by a directory (and the directory by a file again): nothing
/// is lost, nothing breaks, the new file is read, SIGTERM stops weir promptly.
#[test]
fn a_file_replaced_by_a_directory_neither_hangs_nor_breaks_the_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("app.log");
    let pipeline = file_pipeline(dir.path(), &live, "rotate_wait_ms = 200");
    append(&live, 0, 10);
    let args: Vec<std::ffi::OsString> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--config".into(),
        pipeline.into(),
    ];
    let mut t = tail_args(&args);
    let mut got = Vec::new();
    collect(&t.lines, &mut got, 10);
    std::fs::remove_file(&live).expect("rm");
    std::fs::create_dir(&live).expect("mkdir in its place");
    append(&live.join("inner.log"), 500, 510);
    std::thread::sleep(Duration::from_millis(2500));
    std::fs::remove_dir_all(&live).expect("rmdir");
    append(&live, 10, 20);
    collect(&t.lines, &mut got, 20);
    signal(&t.child, "TERM");
    let status = exit_within(&mut t.child, 10, "SIGTERM");
    assert!(status.success(), "exit status {status}");
    got.sort_unstable();
    assert_eq!(
        got,
        (0..20).collect::<Vec<_>>(),
        "the directory's file is not selected"
    );
}

/// 2,000 files, `max_open_files = 16`: files take turns (closed at their end, reopened at
/// their position), so every line is read exactly once, also lines appended later to files
/// whose turn is over; the waiting files are said (a warning) and counted.
#[test]
fn more_files_than_max_open_files_all_get_read_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).expect("mkdir");
    let (files, per) = (2000u64, 5u64);
    for f in 0..files {
        append(&logs.join(format!("f{f:04}.log")), f * per, (f + 1) * per);
    }
    let pipeline = file_pipeline(dir.path(), &logs.join("*.log"), "max_open_files = 16");
    let args: Vec<std::ffi::OsString> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        dir.path().join("data").into(),
        "--config".into(),
        pipeline.into(),
    ];
    let mut t = tail_args(&args);
    let addr = metrics_addr(&t._stderr);
    let mut got = Vec::new();
    collect(&t.lines, &mut got, (files * per) as usize);
    stderr_until(&t._stderr, |v| {
        message_is(v, "more files than max_open_files")
    });
    // Files whose turn is over get more lines: each is reopened where it was left.
    for f in (0..files).step_by(20) {
        append(&logs.join(format!("f{f:04}.log")), 100_000 + f, 100_001 + f);
    }
    let total = files * per + files / 20;
    collect(&t.lines, &mut got, total as usize);
    std::thread::sleep(Duration::from_millis(1500));
    while let Ok(l) = t.lines.try_recv() {
        got.push(seq_of(&l));
    }
    let mut want: Vec<u64> = (0..files * per)
        .chain((0..files).step_by(20).map(|f| 100_000 + f))
        .collect();
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(got.len(), want.len(), "no line twice, none missing");
    assert_eq!(got, want);
    assert!(metric(&addr, "weir_files_open", &[]) <= 16.0);
    assert_eq!(
        metric(&addr, "weir_files_waiting", &[]),
        0.0,
        "nobody waits at the end"
    );
    assert_eq!(
        metric(&addr, "weir_file_events_total", &[("event", "rotated")]),
        0.0
    );
    signal(&t.child, "TERM");
    let status = exit_within(&mut t.child, 10, "SIGTERM");
    assert!(status.success(), "exit status {status}");
}

/// Fewer descriptors than files (`ulimit -n 64`, 300 files): an open failing with EMFILE is
/// reported as such (logged with its kind), never taken for a rotation or a deletion, and
/// retried: every line arrives, once.
#[cfg(unix)]
#[test]
fn emfile_is_reported_as_emfile_and_every_line_still_arrives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).expect("mkdir");
    let (files, per) = (300u64, 4u64);
    for f in 0..files {
        append(&logs.join(format!("f{f:03}.log")), f * per, (f + 1) * per);
    }
    let script = format!(
        "ulimit -n 64 && exec \"$0\" run --stdout --listen 127.0.0.1:0 --data-dir '{}' '{}'",
        dir.path().join("data").display(),
        logs.join("*.log").display()
    );
    let mut child = std::process::Command::new("sh")
        .args(["-c", &script, env!("CARGO_BIN_EXE_weir")])
        .env("WEIR_ADMIN_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir under ulimit");
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let (etx, logs_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = etx.send(l);
        }
    });
    let mut t = Tailer {
        child,
        lines,
        _stderr: logs_rx,
    };
    let mut got = Vec::new();
    collect(&t.lines, &mut got, (files * per) as usize);
    std::thread::sleep(Duration::from_millis(1000));
    while let Ok(l) = t.lines.try_recv() {
        got.push(seq_of(&l));
    }
    signal(&t.child, "TERM");
    let status = exit_within(&mut t.child, 10, "SIGTERM");
    let log: Vec<String> = t._stderr.try_iter().collect();
    got.sort_unstable();
    assert_eq!(got, (0..files * per).collect::<Vec<_>>(), "every line once");
    assert!(status.success(), "exit status {status}");
    let has = |needle: &str| log.iter().any(|l| l.contains(needle));
    assert!(
        has("\"kind\":\"emfile\""),
        "the open failures are logged as EMFILE: {log:#?}"
    );
    assert!(!has("file rotated") && !has("file deleted") && !has("file renamed"));
}

/// SIGHUP without `--config` used to kill weir (rc 129, lines lost): now it is logged and
/// weir goes on: every line comes out and the exit status is 0.
#[cfg(unix)]
#[test]
fn sighup_without_a_config_file_is_logged_and_changes_nothing() {
    let mut child = weir()
        .args(["run", "--stdout", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir");
    let mut stdin = child.stdin.take().expect("stdin");
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let (etx, logs) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = etx.send(l);
        }
    });
    let mut t = Tailer {
        child,
        lines,
        _stderr: logs,
    };
    metrics_addr(&t._stderr);
    let (chunk, chunks) = (10_000u64, 3u64);
    let mut got = Vec::new();
    for c in 0..chunks {
        let mut buf = String::new();
        for i in c * chunk..(c + 1) * chunk {
            buf.push_str(&line(i));
        }
        stdin.write_all(buf.as_bytes()).expect("write");
        stdin.flush().expect("flush");
        collect(&t.lines, &mut got, ((c + 1) * chunk) as usize);
        if c + 1 < chunks {
            signal(&t.child, "HUP");
            stderr_until(&t._stderr, |v| {
                message_is(v, "SIGHUP: no --config, nothing to reload")
            });
        }
    }
    drop(stdin);
    let status = exit_within(&mut t.child, 30, "stdin closed");
    assert_eq!(status.code(), Some(0), "exit status {status}");
    while let Ok(l) = t.lines.try_recv() {
        got.push(seq_of(&l));
    }
    got.sort_unstable();
    assert_eq!(got, (0..chunk * chunks).collect::<Vec<_>>());
}

/// With no sink at all (metrics only), a tailed file's checkpoint passes the lines once they
/// are derived: a restart on the same data dir counts only the lines written since, not the
/// whole file again.
#[test]
fn without_sinks_the_checkpoint_follows_the_derived_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("app.log");
    append(&log, 0, 5000);
    let (log_arg, data_arg) = (
        log.display().to_string(),
        dir.path().join("data").display().to_string(),
    );
    let source = [("source", log_arg.as_str())];
    let run = || spawn_weir(&["--data-dir", &data_arg, &log_arg]);
    let stop = |mut w: Running| {
        let pid = w.child.id().to_string();
        let kill = std::process::Command::new("kill").arg(&pid).status();
        assert!(kill.expect("kill").success());
        assert!(w.child.wait().expect("wait").success());
    };
    let w = run();
    wait_for_metric(&w.addr, "weir_lines_total", &source, 5000.0);
    stop(w);
    append(&log, 5000, 5100);
    let w = run();
    wait_for_metric(&w.addr, "weir_lines_total", &source, 100.0);
    // Settled: nothing of the first 5000 comes after the new lines.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(metric(&w.addr, "weir_lines_total", &source), 100.0);
    stop(w);
}
