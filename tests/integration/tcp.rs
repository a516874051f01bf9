//! The TCP source: many clients at once, and the limits that keep one client from hurting the
//! others (line length, idle time, connection count), checked from the outside through
//! /metrics as a user would.

use std::io::{BufWriter, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::*;

/// Counts lines per `client` field.
const PER_CLIENT: &str = r#"
[[metrics]]
name = "lines_total"
kind = "counter"
labels = { client = "client" }
"#;

/// Starts weir with `args` and returns it with its TCP source's address.
fn start(args: &[&str]) -> (Running, String) {
    let (w, mut addrs) = spawn_weir_logging(args, &["tcp source listening"]);
    let tcp = addrs.pop().expect("one address per message");
    (w, tcp)
}

fn pipeline(dir: &Path, toml: &str) -> String {
    temp_file(dir, "p.toml", toml.as_bytes())
        .to_str()
        .expect("utf-8 temp path")
        .to_string()
}

/// Sends `n` numbered JSON lines as client `c`, then closes. Returns the bytes sent.
fn send_lines(addr: &str, c: usize, n: usize) -> u64 {
    let stream = TcpStream::connect(addr).expect("connect");
    let mut w = BufWriter::new(stream);
    let mut bytes = 0;
    for i in 0..n {
        let line = format!("{{\"message\":\"n\",\"client\":{c},\"seq\":{i}}}\n");
        w.write_all(line.as_bytes()).expect("write");
        bytes += line.len() as u64;
    }
    w.flush().expect("flush");
    bytes
}

/// The server closed this connection: a read ends (EOF, or a reset if unread data was left).
fn assert_closed_by_server(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to close the connection, got {other:?}"),
    }
}

/// Resident memory of a process, in bytes, from /proc/PID/status.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kib * 1024
}

/// 100 clients at once, 1,000 lines each: every line arrives exactly once (per client, by a
/// derived counter), all under the one `source="tcp:ADDR"` label, with every byte counted, and
/// each connection is counted accepted, then closed by EOF.
#[test]
fn a_hundred_concurrent_clients_deliver_every_line_exactly_once() {
    const CLIENTS: usize = 100;
    const LINES: usize = 1000;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pipeline(dir.path(), PER_CLIENT);
    let (w, tcp) = start(&["--config", &p, "--tcp", "127.0.0.1:0"]);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let tcp = tcp.clone();
            std::thread::spawn(move || send_lines(&tcp, c, LINES))
        })
        .collect();
    let bytes: u64 = clients
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .sum();
    let m = scrape_when_processed(&w.addr, (CLIENTS * LINES) as f64);
    let source = format!("tcp:{tcp}");
    let source = [("source", source.as_str())];
    assert_eq!(
        m[&key("weir_events_total", &source)],
        (CLIENTS * LINES) as f64
    );
    assert_eq!(m[&key("weir_bytes_total", &source)], bytes as f64);
    for c in 0..CLIENTS {
        let c = c.to_string();
        assert_eq!(
            m.get(&key("lines_total", &[("client", &c)])),
            Some(&(LINES as f64)),
            "client {c}"
        );
    }
    assert_eq!(
        m[&key("weir_parse_errors_total", &[("reason", "invalid_json")])],
        0.0
    );
    let result = |r| m[&key("weir_tcp_connections_total", &[("result", r)])];
    assert_eq!(result("accepted"), CLIENTS as f64);
    assert_eq!(result("refused"), 0.0);
    wait_for_metric(
        &w.addr,
        "weir_tcp_disconnects_total",
        &[("reason", "eof")],
        CLIENTS as f64,
    );
    wait_for_metric(&w.addr, "weir_tcp_connections", &[], 0.0);
}

/// A client streaming a 100 MiB line with no newline is cut off after the line limit: its head
/// becomes one truncated event, it is disconnected and counted as `line_too_long`, weir's memory
/// stays small, and another client sending at the same time gets all its lines through.
#[test]
fn an_endless_line_cuts_off_its_client_while_others_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pipeline(
        dir.path(),
        &format!("[event]\nmax_line_bytes = 65536\n{PER_CLIENT}"),
    );
    let (w, tcp) = start(&["--config", &p, "--tcp", "127.0.0.1:0"]);
    let big = {
        let tcp = tcp.clone();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(&tcp).expect("connect");
            // Bounds the test if the server never closed the connection.
            s.set_write_timeout(Some(Duration::from_secs(30)))
                .expect("write timeout");
            let total = 100usize << 20;
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = b"{\"message\":\"".len();
            s.write_all(b"{\"message\":\"").expect("write");
            while sent < total {
                if let Err(e) = s.write_all(&chunk) {
                    return (sent, Some(e));
                }
                sent += chunk.len();
            }
            (sent, None)
        })
    };
    let other = {
        let tcp = tcp.clone();
        std::thread::spawn(move || send_lines(&tcp, 1, 1000))
    };
    other.join().expect("other client");
    let (sent, err) = big.join().expect("big client");
    let err = err.unwrap_or_else(|| panic!("all {sent} bytes were accepted: never cut off"));
    assert!(
        matches!(
            err.kind(),
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
        ),
        "the server closed the connection: {err}"
    );
    // The other client's 1000 lines and the cut head of the long one.
    let m = scrape_when_processed(&w.addr, 1001.0);
    assert_eq!(m[&key("lines_total", &[("client", "1")])], 1000.0);
    assert_eq!(
        m[&key("weir_parse_errors_total", &[("reason", "line_truncated")])],
        1.0
    );
    wait_for_metric(
        &w.addr,
        "weir_tcp_disconnects_total",
        &[("reason", "line_too_long")],
        1.0,
    );
    wait_for_metric(
        &w.addr,
        "weir_tcp_disconnects_total",
        &[("reason", "eof")],
        1.0,
    );
    let rss = rss_bytes(w.child.id());
    assert!(rss < 200 << 20, "weir's RSS is {} MiB", rss >> 20);
}

/// A client that connects and stays silent is disconnected after `idle_timeout_secs` and
/// counted as `idle_timeout`.
#[test]
fn a_silent_client_is_dropped_after_the_idle_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pipeline(
        dir.path(),
        "[[sources]]\ntype = \"tcp\"\naddress = \"127.0.0.1:0\"\nidle_timeout_secs = 1\n",
    );
    let (w, tcp) = start(&["--config", &p]);
    let connected = Instant::now();
    let mut s = TcpStream::connect(&tcp).expect("connect");
    assert_closed_by_server(&mut s);
    // A timer never fires early: the server waited at least the timeout.
    assert!(connected.elapsed() >= Duration::from_secs(1));
    wait_for_metric(
        &w.addr,
        "weir_tcp_disconnects_total",
        &[("reason", "idle_timeout")],
        1.0,
    );
    wait_for_metric(&w.addr, "weir_tcp_connections", &[], 0.0);
}

/// With `max_connections = 2`, a third client is closed at once and counted as refused; once
/// one of the first two leaves, a new client is accepted and its lines are read.
#[test]
fn clients_past_max_connections_are_refused_until_a_slot_frees() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pipeline(
        dir.path(),
        "[[sources]]\ntype = \"tcp\"\naddress = \"127.0.0.1:0\"\nmax_connections = 2\n",
    );
    let (w, tcp) = start(&["--config", &p]);
    let accepted = [("result", "accepted")];
    let refused = [("result", "refused")];
    let first = TcpStream::connect(&tcp).expect("connect");
    let _second = TcpStream::connect(&tcp).expect("connect");
    wait_for_metric(&w.addr, "weir_tcp_connections_total", &accepted, 2.0);
    wait_for_metric(&w.addr, "weir_tcp_connections", &[], 2.0);

    let mut third = TcpStream::connect(&tcp).expect("connect");
    assert_closed_by_server(&mut third);
    wait_for_metric(&w.addr, "weir_tcp_connections_total", &refused, 1.0);

    drop(first);
    wait_for_metric(&w.addr, "weir_tcp_connections", &[], 1.0);
    let mut fourth = TcpStream::connect(&tcp).expect("connect");
    wait_for_metric(&w.addr, "weir_tcp_connections_total", &accepted, 3.0);
    fourth.write_all(b"{\"message\":\"in\"}\n").expect("write");
    scrape_when_processed(&w.addr, 1.0);
    assert_eq!(metric(&w.addr, "weir_tcp_connections_total", &refused), 1.0);
    assert_eq!(metric(&w.addr, "weir_tcp_connections", &[]), 2.0);
}

/// SIGTERM with clients still connected: weir closes them (they read EOF) and exits 0.
#[test]
fn sigterm_closes_tcp_clients_and_exits_zero() {
    let (mut w, tcp) = start(&["--tcp", "127.0.0.1:0"]);
    let mut a = TcpStream::connect(&tcp).expect("connect");
    let mut b = TcpStream::connect(&tcp).expect("connect");
    a.write_all(b"{\"message\":\"hello\"}\n").expect("write");
    scrape_when_processed(&w.addr, 1.0);
    wait_for_metric(&w.addr, "weir_tcp_connections", &[], 2.0);
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &w.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    assert_closed_by_server(&mut a);
    assert_closed_by_server(&mut b);
    let status = w.child.wait().expect("wait");
    assert!(status.success(), "exit status {status}");
}
