//! Issue 13 §1, the HTTP surface of a real `weir run`: the public listener serves no raw log
//! line and no control (`/tap`, `/stats`, `/-/reload` are 404 there, served on the admin
//! listener, which `weir tap` and `weir top` find by default); TLS and basic auth from an
//! exporter-toolkit web config (reqwest trusting a test CA; a real Prometheus scraping with
//! `scheme: https` and `basic_auth`); idle floods, slowloris clients and taps that never read
//! are cut off and counted.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::{
    free_port, get, have_tool, http_get, metric, parse_exposition, post, spawn_weir,
    spawn_weir_env, temp_file, wait_for_metric, weir, Running,
};

/// Closes weir's stdin and waits for a clean exit.
fn stop(mut w: Running) {
    drop(w.child.stdin.take());
    assert!(w.child.wait().expect("wait").success());
}

#[test]
fn the_public_listener_has_no_tap_stats_or_reload_and_the_clients_find_the_admin_one() {
    let port = free_port();
    let admin_flag = format!("127.0.0.1:{port}");
    let w = spawn_weir(&["--admin-listen", &admin_flag]);
    assert_eq!(w.admin, admin_flag);
    for path in ["/tap", "/stats"] {
        let (status, body) = get(&w.addr, path);
        assert_eq!(status, 404, "public {path}: {body}");
    }
    let (status, _) = post(&w.addr, "/-/reload");
    assert_eq!(status, 404, "public POST /-/reload");
    assert_eq!(get(&w.addr, "/metrics").0, 200);
    assert_eq!(get(&w.addr, "/alerts").0, 200);
    // The admin listener serves them (and nothing of the public side but /health).
    assert_eq!(get(&w.admin, "/stats").0, 200);
    assert_eq!(get(&w.admin, "/metrics").0, 404);
    assert_eq!(
        post(&w.admin, "/-/reload").0,
        400,
        "no pipeline file to reload"
    );

    // `weir top` and `weir tap` without --addr ask $WEIR_ADMIN_LISTEN, as `weir run` reads it.
    let out = weir()
        .env("WEIR_ADMIN_LISTEN", &admin_flag)
        .args(["top", "--count", "1"])
        .output()
        .expect("run weir top");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("at {admin_flag}")));
    let tap = weir()
        .env("WEIR_ADMIN_LISTEN", &admin_flag)
        .args(["tap", "--limit", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir tap");
    wait_for_metric(&w.addr, "weir_taps_active", &[], 1.0);
    let mut w = w;
    writeln!(
        w.child.stdin.as_mut().expect("stdin"),
        r#"{{"message":"through the admin listener"}}"#
    )
    .expect("write");
    let out = tap.wait_with_output().expect("tap output");
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("through the admin listener"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop(w);
}

#[test]
fn the_admin_listener_can_be_off_and_can_require_a_token() {
    let w = spawn_weir(&["--admin-listen", "off"]);
    assert_eq!(w.admin, "", "no admin listener");
    assert_eq!(get(&w.addr, "/health").0, 200);
    stop(w);

    let mut run = weir();
    run.args([
        "run",
        "--listen",
        "127.0.0.1:0",
        "--admin-token-env",
        "WEIR_TEST_ADMIN",
    ]);
    let out = run.stdin(Stdio::null()).output().expect("run weir");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("WEIR_TEST_ADMIN is unset or empty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let token = [("WEIR_TEST_ADMIN_TOKEN_X", "s3cr3t-t0ken")];
    let w = spawn_weir_env(&["--admin-token-env", "WEIR_TEST_ADMIN_TOKEN_X"], &token);
    let (status, body) = get(&w.admin, "/stats");
    assert_eq!(status, 401, "{body}");
    let top = |token_env: Option<&str>| {
        let mut c = weir();
        c.args(["top", "--addr", &w.admin, "--count", "1"])
            .envs(token);
        if let Some(v) = token_env {
            c.args(["--admin-token-env", v]);
        }
        c.output().expect("run weir top")
    };
    let refused = top(None);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
    let ok = top(Some("WEIR_TEST_ADMIN_TOKEN_X"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    stop(w);
}

/// `--admin-listen unix:PATH`: a socket only weir's user may use (0600), which `weir top` and
/// `weir tap` reach with `--addr unix:PATH`, and which is gone when weir exits.
#[test]
fn the_admin_listener_on_a_unix_socket() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("admin.sock");
    let flag = format!("unix:{}", sock.display());
    let mut w = spawn_weir(&["--admin-listen", &flag]);
    assert_eq!(w.admin, flag);
    let mode = std::fs::metadata(&sock)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let out = weir()
        .args(["top", "--addr", &flag, "--count", "1"])
        .output()
        .expect("run weir top");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tap = weir()
        .args(["tap", "--addr", &flag, "--limit", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn weir tap");
    wait_for_metric(&w.addr, "weir_taps_active", &[], 1.0);
    writeln!(
        w.child.stdin.as_mut().expect("stdin"),
        r#"{{"message":"over the socket"}}"#
    )
    .expect("write");
    let out = tap.wait_with_output().expect("tap output");
    assert!(String::from_utf8_lossy(&out.stdout).contains("over the socket"));
    stop(w);
    assert!(!sock.exists(), "the socket is removed at exit");
}

/// The number of open file descriptors of a process (Linux).
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// 2,000 idle connections against a cap of 100: weir keeps at most the cap open (plus its
/// own files), closes the longest idle ones to make room, and /health still answers.
#[test]
fn an_idle_flood_neither_exhausts_fds_nor_locks_out_health() {
    const CAP: usize = 100;
    let cap = CAP.to_string();
    let w = spawn_weir(&["--http-max-connections", &cap]);
    let pid = w.child.id();
    let before = open_fds(pid);
    let mut idle = Vec::new();
    for _ in 0..2_000 {
        if let Ok(s) = TcpStream::connect(&w.addr) {
            idle.push(s);
        }
    }
    assert!(idle.len() > 1_000, "only {} connections", idle.len());
    let (status, body) = get(&w.addr, "/health");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let fds = open_fds(pid);
    assert!(
        fds <= before + CAP + 20,
        "{fds} fds open with a cap of {CAP} connections (had {before} before)"
    );
    let m = parse_exposition(&get(&w.addr, "/metrics").1);
    let evicted = m
        .iter()
        .filter(|((n, l), _)| {
            n == "weir_http_connections_closed_total"
                && l.get("reason").map(String::as_str) == Some("evicted_idle")
        })
        .map(|(_, v)| *v)
        .sum::<f64>();
    assert!(evicted >= 1_000.0, "evicted {evicted}");
    drop(idle);
    stop(w);
}

/// With `nofile` at 128, 600 idle connections exhaust weir's descriptors: accepting fails with
/// EMFILE, which is counted and makes room by closing idle connections, so /health answers.
#[test]
fn out_of_file_descriptors_idle_connections_make_room() {
    use std::io::BufRead;
    let mut child = Command::new("prlimit")
        .args(["--nofile=128:128", "--", env!("CARGO_BIN_EXE_weir")])
        .args(["run", "--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir under prlimit");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("weir logs its address");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        if v["fields"]["message"] == "serving /metrics" {
            break v["fields"]["addr"].as_str().expect("addr").to_string();
        }
    };
    let w = Running {
        child,
        addr,
        admin: String::new(),
        _stderr_lines: rx,
    };
    let idle: Vec<TcpStream> = (0..600)
        .filter_map(|_| TcpStream::connect(&w.addr).ok())
        .collect();
    assert!(idle.len() >= 500, "only {} connections", idle.len());
    let (status, body) = get(&w.addr, "/health");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let emfile = metric(
        &w.addr,
        "weir_http_accept_errors_total",
        &[("listener", "public"), ("kind", "too_many_open_files")],
    );
    assert!(emfile >= 1.0, "EMFILE counted: {emfile}");
    drop(idle);
    stop(w);
}

/// A request head over 16 KiB is answered 431, not buffered.
#[test]
fn a_huge_request_head_is_refused() {
    let w = spawn_weir(&[]);
    let mut s = TcpStream::connect(&w.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let head = format!(
        "GET /metrics HTTP/1.1\r\nHost: weir\r\nX-Big: {}\r\n\r\n",
        "a".repeat(32 * 1024)
    );
    // weir may close before taking it all; what it answered is what counts.
    let _ = s.write_all(head.as_bytes());
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    stop(w);
}

/// A client sending its request head one byte a second is cut off by the header deadline
/// (2 s here) long before it finishes; so is one that sends nothing.
#[test]
fn slowloris_and_silent_clients_are_cut_off() {
    let w = spawn_weir(&["--http-header-timeout-secs", "2"]);
    let head = b"GET /health HTTP/1.1\r\nHost: weir\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut slow = TcpStream::connect(&w.addr).expect("connect");
    slow.set_read_timeout(Some(Duration::from_millis(10)))
        .expect("timeout");
    let mut silent = TcpStream::connect(&w.addr).expect("connect");
    let mut sent = 0;
    let mut cut = false;
    for &b in head.iter() {
        if slow.write_all(&[b]).is_err() {
            cut = true;
            break;
        }
        sent += 1;
        let mut buf = [0u8; 256];
        match slow.read(&mut buf) {
            Ok(0) | Err(_) if !would_block(&slow) => {
                cut = true;
                break;
            }
            Ok(n) if n > 0 => panic!(
                "weir answered a request it never got: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            _ => {}
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        cut,
        "the slow client sent all {sent} bytes without being cut off"
    );
    assert!(sent < head.len() / 2, "cut off after {sent} bytes");
    // The silent one is gone too: its read sees the end.
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "an idle connection is closed");
    let timeouts = metric(
        &w.addr,
        "weir_http_connections_closed_total",
        &[("listener", "public"), ("reason", "header_timeout")],
    );
    assert!(timeouts >= 2.0, "header timeouts counted: {timeouts}");
    assert_eq!(get(&w.addr, "/health").0, 200);
    stop(w);
}

/// Whether the last read on `s` only timed out (the peer is still there).
fn would_block(s: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    match s.peek(&mut probe) {
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        Ok(0) => false,
        Ok(_) => true,
    }
}

/// A tap subscriber that never reads its socket: once weir's writes have made no progress for
/// the write timeout (2 s here), the connection is closed and the tap freed, while the client
/// still holds its end open.
#[test]
fn a_tap_that_never_reads_is_dropped() {
    let mut w = spawn_weir(&["--http-write-timeout-secs", "2"]);
    let mut client = TcpStream::connect(&w.admin).expect("connect");
    client
        .write_all(b"GET /tap?rate=1000 HTTP/1.1\r\nHost: weir\r\n\r\n")
        .expect("request");
    wait_for_metric(&w.addr, "weir_taps_active", &[], 1.0);
    // Big lines, about 6 MB/s (more than the socket buffers hold within seconds, without
    // taking every core), until the tap is gone.
    let mut stdin = w.child.stdin.take().expect("stdin");
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let line = format!("{{\"message\":\"{}\"}}\n", "x".repeat(16 * 1024));
            'feed: while !done.load(Ordering::Relaxed) {
                for _ in 0..64 {
                    if stdin.write_all(line.as_bytes()).is_err() {
                        break 'feed;
                    }
                }
                std::thread::sleep(Duration::from_millis(160));
            }
            drop(stdin);
        })
    };
    wait_for_metric(&w.addr, "weir_taps_active", &[], 0.0);
    // Read while stdin is open: weir exits once it closes. The tap is freed as its
    // connection ends, a moment before that connection's close is counted: waited for.
    let stalled = [("listener", "admin"), ("reason", "write_stalled")];
    wait_for_metric(&w.addr, "weir_http_connections_closed_total", &stalled, 1.0);
    done.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    drop(client);
    assert!(w.child.wait().expect("wait").success());
}

/// A self-signed CA and a server certificate for 127.0.0.1 and localhost, in `dir`.
fn make_certs(dir: &Path) -> (String, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "weir test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = ca_params.self_signed(&ca_key).expect("CA cert");
    let key = rcgen::KeyPair::generate().expect("server key");
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server params");
    let cert = params
        .signed_by(&key, &rcgen::Issuer::from_params(&ca_params, &ca_key))
        .expect("server cert");
    temp_file(dir, "server.crt", cert.pem().as_bytes());
    temp_file(dir, "server.key", key.serialize_pem().as_bytes());
    let ca_path = temp_file(dir, "ca.crt", ca.pem().as_bytes());
    (ca.pem(), ca_path)
}

/// TLS and basic auth from a web config file: 401 without or with a wrong password, 200 with
/// the right one, plain HTTP refused; /health answers without credentials.
#[test]
fn tls_and_basic_auth_from_a_web_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_pem, ca_path) = make_certs(dir.path());
    let hash = bcrypt::hash("scrape-pw", 4).expect("hash");
    let web = temp_file(
        dir.path(),
        "web.yml",
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             basic_auth_users:\n  prometheus: '{hash}'\n\
             http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
        )
        .as_bytes(),
    );
    let web_arg = web.display().to_string();
    let w = spawn_weir(&["--web-config-file", &web_arg]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let url = |path: &str| format!("https://{}{path}", w.addr);
    let ask = |path: &str, auth: Option<(&str, &str)>| {
        rt.block_on(async {
            let mut r = client.get(url(path));
            if let Some((u, p)) = auth {
                r = r.basic_auth(u, Some(p));
            }
            let res = r.send().await.expect("TLS request");
            let nosniff = res.headers().get("x-content-type-options").cloned();
            (res.status().as_u16(), nosniff)
        })
    };
    assert_eq!(ask("/metrics", None).0, 401);
    assert_eq!(ask("/metrics", Some(("prometheus", "wrong"))).0, 401);
    assert_eq!(ask("/metrics", Some(("nobody", "scrape-pw"))).0, 401);
    let (status, nosniff) = ask("/metrics", Some(("prometheus", "scrape-pw")));
    assert_eq!(status, 200);
    assert_eq!(
        nosniff.as_ref().and_then(|v| v.to_str().ok()),
        Some("nosniff")
    );
    assert_eq!(ask("/health", None).0, 200);
    // Plain HTTP to the TLS port gets no answer.
    assert!(http_get(&format!("http://{}/metrics", w.addr), &[]).is_none_or(|(s, _)| s != 200));
    // `weir health` asks over HTTPS when given a URL.
    let out = weir()
        .args(["health", "--addr", &format!("https://{}", w.addr)])
        .output()
        .expect("weir health");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    if have_tool("prometheus") {
        prometheus_scrapes_over_tls(dir.path(), &w.addr, &ca_path);
    }
    stop(w);
}

/// A real Prometheus with `scheme: https`, `basic_auth` and `tls_config.ca_file`: target up.
fn prometheus_scrapes_over_tls(dir: &Path, target: &str, ca: &Path) {
    let port = free_port();
    let config = temp_file(
        dir,
        "prometheus.yml",
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: weir\n    scheme: https\n\
             \x20   basic_auth:\n      username: prometheus\n      password: scrape-pw\n\
             \x20   tls_config:\n      ca_file: {ca:?}\n\
             \x20   static_configs:\n      - targets: [{target:?}]\n"
        )
        .as_bytes(),
    );
    let log = dir.join("prometheus.log");
    let mut child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn prometheus");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    let up = loop {
        let answer = http_get(
            &format!("http://127.0.0.1:{port}/api/v1/targets"),
            &[("state", "active")],
        );
        if let Some((200, body)) = answer {
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            let t = &v["data"]["activeTargets"][0];
            if t["health"] == "up" {
                break true;
            }
            last = format!("{} {}", t["health"], t["lastError"]);
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        up,
        "target not up: {last}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// A web config that names an unknown key is refused when weir starts (exit 2, where).
#[test]
fn a_bad_web_config_stops_weir_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let web = temp_file(dir.path(), "web.yml", b"basic_auth_user:\n  a: b\n");
    let out = weir()
        .args(["run", "--listen", "127.0.0.1:0", "--web-config-file"])
        .arg(&web)
        .stdin(Stdio::null())
        .output()
        .expect("run weir");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `basic_auth_user`"), "{err}");
    assert!(err.contains("line 1"), "{err}");
}
