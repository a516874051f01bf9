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

/// A gauge or counter from one scrape, 0 when absent; panics when weir does not answer.
fn scrape(addr: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(addr, name, labels)
}

/// Waits (60 s at most) until `f` holds for the series' value; returns the value.
fn wait_until(addr: &str, name: &str, labels: &[(&str, &str)], f: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = scrape(addr, name, labels);
        if f(got) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} is {got} after 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// 1,000 clients each send 1 MB without a newline. Past the global budget
/// (`max_buffered_bytes`, default 64 MiB) weir stops reading from the clients that would take
/// it further (backpressure), so what it holds stays under the budget and its RSS stays small,
/// while a well-behaved client sending at the same time still gets every line through.
#[test]
fn a_thousand_endless_partial_lines_stay_within_the_memory_budget() {
    const CLIENTS: usize = 1000;
    const EACH: usize = 1_000_000;
    const BUDGET: f64 = (64u64 << 20) as f64;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pipeline(
        dir.path(),
        &format!(
            "[[sources]]\ntype = \"tcp\"\naddress = \"127.0.0.1:0\"\nmax_connections = 1100\n\
             line_timeout_secs = 3600\n{PER_CLIENT}"
        ),
    );
    let (w, tcp) = start(&["--config", &p]);
    let mut socks: Vec<(TcpStream, usize)> = (0..CLIENTS)
        .map(|_| {
            let s = TcpStream::connect(&tcp).expect("connect");
            s.set_nonblocking(true).expect("nonblocking");
            (s, 0)
        })
        .collect();
    // Round-robin writes until every client has sent its megabyte or the kernel's buffers and
    // weir's backpressure stop taking more (no progress for 2 s); bounded at 120 s.
    let chunk = vec![b'x'; 64 * 1024];
    let started = Instant::now();
    let mut last_progress = Instant::now();
    while socks.iter().any(|(_, sent)| *sent < EACH)
        && last_progress.elapsed() < Duration::from_secs(2)
        && started.elapsed() < Duration::from_secs(120)
    {
        let mut progressed = false;
        for (s, sent) in socks.iter_mut().filter(|(_, sent)| *sent < EACH) {
            let want = (EACH - *sent).min(chunk.len());
            match s.write(&chunk[..want]) {
                Ok(n) if n > 0 => {
                    *sent += n;
                    progressed = true;
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("weir closed a client of the budget test: {e}"),
            }
        }
        if progressed {
            last_progress = Instant::now();
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let mut max_rss = 0;
    for _ in 0..20 {
        max_rss = max_rss.max(rss_bytes(w.child.id()));
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "budget test: {} MB sent by {CLIENTS} clients, weir RSS at most {} MiB",
        socks.iter().map(|(_, s)| s).sum::<usize>() >> 20,
        max_rss >> 20
    );
    // weir has taken what it will: the budget is (nearly) used up, never passed.
    let held = wait_until(&w.addr, "weir_tcp_buffered_bytes", &[], |v| {
        v >= BUDGET / 2.0
    });
    assert!(held <= BUDGET, "{held} bytes held, over the budget");
    // A client with ordinary lines is not held back by the others' partial lines.
    send_lines(&tcp, 7, 1000);
    let m = scrape_when_processed(&w.addr, 1000.0);
    assert_eq!(m[&key("lines_total", &[("client", "7")])], 1000.0);
    let held = scrape(&w.addr, "weir_tcp_buffered_bytes", &[]);
    assert!(held <= BUDGET, "{held} bytes held, over the budget");
    max_rss = max_rss.max(rss_bytes(w.child.id()));
    assert!(max_rss < 300 << 20, "weir's RSS is {} MiB", max_rss >> 20);
    assert_eq!(
        scrape(
            &w.addr,
            "weir_tcp_disconnects_total",
            &[("reason", "line_too_long")]
        ),
        0.0
    );
}

/// 1,024 clients connect at once, each sends one line and leaves: once they are gone, weir's
/// resident memory is back near where it was (no per-client buffer kept).
#[test]
fn short_lived_clients_leave_no_memory_resident() {
    const CLIENTS: usize = 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pipeline(
        dir.path(),
        "[[sources]]\ntype = \"tcp\"\naddress = \"127.0.0.1:0\"\nmax_connections = 2048\n",
    );
    let (w, tcp) = start(&["--config", &p]);
    // A first round warms up what is allocated once (the runtime, the registry, the HTTP server).
    send_lines(&tcp, 0, 10);
    scrape_when_processed(&w.addr, 10.0);
    let before = rss_bytes(w.child.id());
    for round in 0..2 {
        let mut socks: Vec<TcpStream> = (0..CLIENTS)
            .map(|_| TcpStream::connect(&tcp).expect("connect"))
            .collect();
        wait_for_metric(&w.addr, "weir_tcp_connections", &[], CLIENTS as f64);
        for (c, s) in socks.iter_mut().enumerate() {
            let line = format!("{{\"message\":\"n\",\"client\":{c},\"seq\":0}}\n");
            s.write_all(line.as_bytes()).expect("write");
        }
        scrape_when_processed(&w.addr, (10 + (round + 1) * CLIENTS) as f64);
        drop(socks);
        wait_for_metric(&w.addr, "weir_tcp_connections", &[], 0.0);
    }
    let after = rss_bytes(w.child.id());
    eprintln!(
        "short-lived clients: RSS {} KiB before, {} KiB after 2 x {CLIENTS} clients",
        before >> 10,
        after >> 10
    );
    let grown = after.saturating_sub(before);
    assert!(
        grown < 40 << 20,
        "RSS grew by {} MiB ({} -> {} MiB)",
        grown >> 20,
        before >> 20,
        after >> 20
    );
}

/// 50 clients trickle one byte every 200 ms and never end their line, on a source with 50
/// slots: each is cut off at its line deadline (`line_timeout_secs`), counted as `slow`, and a
/// real client then connects and gets its lines through.
#[test]
fn slowloris_clients_are_cut_at_the_line_deadline_and_real_clients_get_in() {
    const SLOW: usize = 50;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pipeline(
        dir.path(),
        &format!(
            "[[sources]]\ntype = \"tcp\"\naddress = \"127.0.0.1:0\"\nmax_connections = {SLOW}\n\
             idle_timeout_secs = 600\nline_timeout_secs = 2\n{PER_CLIENT}"
        ),
    );
    let (w, tcp) = start(&["--config", &p]);
    let slow: Vec<_> = (0..SLOW)
        .map(|_| {
            let mut s = TcpStream::connect(&tcp).expect("connect");
            std::thread::spawn(move || {
                // Until weir cuts the client off; bounded at 600 bytes (120 s).
                for _ in 0..600 {
                    if s.write_all(b"x").is_err() {
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                false
            })
        })
        .collect();
    wait_for_metric(&w.addr, "weir_tcp_connections", &[], SLOW as f64);
    // Every slot is held: a client now is refused.
    let mut early = TcpStream::connect(&tcp).expect("connect");
    assert_closed_by_server(&mut early);
    wait_until(
        &w.addr,
        "weir_tcp_connections_total",
        &[("result", "refused")],
        |v| v >= 1.0,
    );
    wait_for_metric(
        &w.addr,
        "weir_tcp_disconnects_total",
        &[("reason", "slow")],
        SLOW as f64,
    );
    for t in slow {
        assert!(
            t.join().expect("slow client"),
            "a slow client was never cut off"
        );
    }
    send_lines(&tcp, 1, 100);
    let m = scrape_when_processed(&w.addr, (100 + SLOW) as f64);
    assert_eq!(m[&key("lines_total", &[("client", "1")])], 100.0);
    // Each slow client's partial line is kept, flagged as cut.
    assert_eq!(
        m[&key("weir_parse_errors_total", &[("reason", "line_truncated")])],
        SLOW as f64
    );
}

/// Certificates made for the test: a CA, a server certificate for localhost/127.0.0.1 and a
/// client certificate, both signed by the CA; PEM files in `dir`.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    client_key: rustls::pki_types::PrivateKeyDer<'static>,
}

fn make_pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::pem::PemObject;
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("server key");
    let server_cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".into()])
        .expect("server params")
        .signed_by(&server_key, &issuer)
        .expect("server cert");
    let client_key = KeyPair::generate().expect("client key");
    let client_cert = CertificateParams::new(vec!["client.test".to_string()])
        .expect("client params")
        .signed_by(&client_key, &issuer)
        .expect("client cert");
    let path = |name: &str, text: String| {
        temp_file(dir, name, text.as_bytes())
            .to_str()
            .expect("utf-8 temp path")
            .to_string()
    };
    Pki {
        ca: path("ca.crt", ca_cert.pem()),
        server_cert: path("server.crt", server_cert.pem()),
        server_key: path("server.key", server_key.serialize_pem()),
        client_chain: vec![client_cert.der().clone()],
        client_key: rustls::pki_types::PrivateKeyDer::from_pem_slice(
            client_key.serialize_pem().as_bytes(),
        )
        .expect("client key pem"),
    }
}

/// A TLS client trusting the test CA, with the client certificate when `with_cert`.
fn tls_client(
    pki: &Pki,
    addr: &str,
    with_cert: bool,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    {
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_file_iter(&pki.ca).expect("ca file") {
            roots.add(c.expect("ca pem")).expect("ca cert");
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let cfg = if with_cert {
        builder
            .with_client_auth_cert(pki.client_chain.clone(), pki.client_key.clone_key())
            .expect("client cert")
    } else {
        builder.with_no_client_auth()
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).expect("client");
    let sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    rustls::StreamOwned::new(conn, sock)
}

/// Reads until the server closes the connection (EOF, a reset or a TLS alert) within 30 s.
fn assert_ends(mut r: impl Read) {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the server kept the connection");
        match r.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the server kept the connection open: {e}")
            }
            Err(_) => return,
        }
    }
}

fn tls_pipeline(dir: &Path, pki: &Pki, extra_tls: &str, extra: &str) -> String {
    pipeline(
        dir,
        &format!(
            "[[sources]]\ntype = \"tcp\"\naddress = \"127.0.0.1:0\"\n{extra}\n\
             tls = {{ cert_file = {:?}, key_file = {:?}{extra_tls} }}\n{PER_CLIENT}",
            pki.server_cert, pki.server_key
        ),
    )
}

/// Over TLS, numbered lines from two clients all arrive; a plaintext client on the TLS port is
/// refused and counted as `tls_error`, and none of its bytes becomes an event.
#[test]
fn tls_clients_deliver_every_line_and_plaintext_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(dir.path());
    let p = tls_pipeline(dir.path(), &pki, "", "");
    let (w, tcp) = start(&["--config", &p]);
    for c in 0..2 {
        let mut s = tls_client(&pki, &tcp, false);
        for i in 0..1000 {
            let line = format!("{{\"message\":\"n\",\"client\":{c},\"seq\":{i}}}\n");
            s.write_all(line.as_bytes()).expect("tls write");
        }
        s.flush().expect("flush");
        s.conn.send_close_notify();
        s.flush().expect("close_notify");
        // Reading to the end takes the server's session tickets: a client that closed with
        // them unread would reset the connection, and the kernel would drop what weir had not
        // read yet.
        s.sock
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        assert_ends(&mut s);
    }
    let mut plain = TcpStream::connect(&tcp).expect("connect");
    plain
        .write_all(b"{\"message\":\"plaintext\",\"client\":9}\n")
        .expect("write");
    plain
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    assert_ends(&mut plain);
    wait_for_metric(
        &w.addr,
        "weir_tcp_disconnects_total",
        &[("reason", "tls_error")],
        1.0,
    );
    let m = scrape_when_processed(&w.addr, 2000.0);
    assert_eq!(m[&key("lines_total", &[("client", "0")])], 1000.0);
    assert_eq!(m[&key("lines_total", &[("client", "1")])], 1000.0);
    assert_eq!(m.get(&key("lines_total", &[("client", "9")])), None);
    wait_for_metric(
        &w.addr,
        "weir_tcp_disconnects_total",
        &[("reason", "eof")],
        2.0,
    );
}

/// With `client_ca_file`, a client without a certificate, or with one from another CA, is
/// refused (its lines never arrive) and one with a certificate from that CA is served.
#[test]
fn tls_with_a_client_ca_requires_client_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(dir.path());
    let p = tls_pipeline(
        dir.path(),
        &pki,
        &format!(", client_ca_file = {:?}", pki.ca),
        "",
    );
    let (w, tcp) = start(&["--config", &p]);
    let mut anon = tls_client(&pki, &tcp, false);
    // TLS 1.3: the client may finish its side before the server has checked; the server's
    // alert then ends the connection.
    let _ = anon.write_all(b"{\"message\":\"anonymous\",\"client\":9}\n");
    let _ = anon.flush();
    assert_ends(&mut anon);
    wait_for_metric(
        &w.addr,
        "weir_tcp_disconnects_total",
        &[("reason", "tls_error")],
        1.0,
    );
    // A certificate from another CA is refused as well.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = make_pki(other_dir.path());
    let stranger = Pki {
        ca: pki.ca.clone(),
        server_cert: pki.server_cert.clone(),
        server_key: pki.server_key.clone(),
        client_chain: other.client_chain,
        client_key: other.client_key,
    };
    let mut untrusted = tls_client(&stranger, &tcp, true);
    let _ = untrusted.write_all(b"{\"message\":\"untrusted\",\"client\":8}\n");
    let _ = untrusted.flush();
    assert_ends(&mut untrusted);
    wait_for_metric(
        &w.addr,
        "weir_tcp_disconnects_total",
        &[("reason", "tls_error")],
        2.0,
    );
    let mut ok = tls_client(&pki, &tcp, true);
    ok.write_all(b"{\"message\":\"signed\",\"client\":1}\n")
        .expect("tls write");
    ok.flush().expect("flush");
    let m = scrape_when_processed(&w.addr, 1.0);
    assert_eq!(m[&key("lines_total", &[("client", "1")])], 1.0);
    assert_eq!(m.get(&key("lines_total", &[("client", "9")])), None);
    assert_eq!(m.get(&key("lines_total", &[("client", "8")])), None);
}

/// The connection cap holds before TLS completes: a client that opens TCP and never says hello
/// holds its slot (others are refused) only until the handshake timeout, is counted as
/// `handshake_timeout`, and then a TLS client gets in.
#[test]
fn a_client_that_never_says_hello_is_dropped_after_the_handshake_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(dir.path());
    let p = tls_pipeline(
        dir.path(),
        &pki,
        ", handshake_timeout_secs = 1",
        "max_connections = 1",
    );
    let (w, tcp) = start(&["--config", &p]);
    let mut silent = TcpStream::connect(&tcp).expect("connect");
    wait_for_metric(&w.addr, "weir_tcp_connections", &[], 1.0);
    let mut refused = TcpStream::connect(&tcp).expect("connect");
    assert_closed_by_server(&mut refused);
    wait_for_metric(
        &w.addr,
        "weir_tcp_connections_total",
        &[("result", "refused")],
        1.0,
    );
    assert_closed_by_server(&mut silent);
    wait_for_metric(
        &w.addr,
        "weir_tcp_disconnects_total",
        &[("reason", "handshake_timeout")],
        1.0,
    );
    wait_for_metric(&w.addr, "weir_tcp_connections", &[], 0.0);
    let mut s = tls_client(&pki, &tcp, false);
    s.write_all(b"{\"message\":\"late\",\"client\":2}\n")
        .expect("tls write");
    s.flush().expect("flush");
    let m = scrape_when_processed(&w.addr, 1.0);
    assert_eq!(m[&key("lines_total", &[("client", "2")])], 1.0);
}

/// A TLS block is checked by `weir validate` (unknown keys, empty paths, a zero timeout, each
/// placed in the file); files that do not exist are reported by `weir run`, naming the file.
#[test]
fn tls_settings_are_validated_and_missing_files_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let validate = |toml: &str| {
        let p = pipeline(dir.path(), toml);
        let out = weir()
            .args(["validate", "--config", &p])
            .output()
            .expect("weir validate");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let src = "[[sources]]\ntype = \"tcp\"\naddress = \"127.0.0.1:0\"\n";
    let (ok, err) = validate(&format!(
        "{src}tls = {{ cert_file = \"a.crt\", key_file = \"a.key\", ciphers = \"x\" }}\n"
    ));
    assert!(
        !ok && err.contains("unknown field `ciphers`") && err.contains(":1:"),
        "{err}"
    );
    let (ok, err) = validate(&format!("{src}tls = {{ cert_file = \"a.crt\" }}\n"));
    assert!(!ok && err.contains("missing field `key_file`"), "{err}");
    let (ok, err) = validate(&format!(
        "{src}tls = {{ cert_file = \"\", key_file = \"a.key\" }}\n"
    ));
    assert!(
        !ok && err.contains("tls.cert_file") && err.contains(":1:"),
        "{err}"
    );
    let (ok, err) = validate(&format!(
        "{src}tls = {{ cert_file = \"a.crt\", key_file = \"a.key\", handshake_timeout_secs = 0 }}\n"
    ));
    assert!(!ok && err.contains("handshake_timeout_secs"), "{err}");
    let (ok, err) = validate(&format!(
        "{src}line_timeout_secs = 0\nmax_buffered_bytes = 0\n"
    ));
    assert!(!ok && err.contains("max_buffered_bytes"), "{err}");
    let missing = dir.path().join("nowhere.crt");
    let p = pipeline(
        dir.path(),
        &format!(
            "{src}tls = {{ cert_file = {:?}, key_file = \"a.key\" }}\n",
            missing.display()
        ),
    );
    let (ok, _) = validate(&std::fs::read_to_string(&p).expect("read back"));
    assert!(ok, "files are not read by validate");
    let out = weir()
        .args(["run", "--listen", "127.0.0.1:0", "--config", &p])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("weir run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&missing.display().to_string()), "{err}");
}
