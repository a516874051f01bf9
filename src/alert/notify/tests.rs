//! The notifiers against real receivers on 127.0.0.1: a real Alertmanager (Debian's
//! `prometheus-alertmanager`), a real SMTP server (Python's `aiosmtpd`, with STARTTLS and AUTH
//! on a certificate made by `openssl`), and small axum servers standing in for Slack, a generic
//! webhook and PagerDuty, which record what they receive and answer with a chosen status.
//!
//! A missing tool skips its test with `SKIPPED` on stderr; with `CI=true` it fails it instead.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Skips (or, with `CI=true`, fails) a test whose tool is missing.
fn missing(what: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is missing, and CI=true requires it");
    }
    // Past libtest's capture, so the skip shows in `cargo test`'s output (reported ok).
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {what} is missing");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// Kills its process when dropped, so a failing test leaves nothing running.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

fn build(toml_text: &str) -> Notifier {
    toml::from_str::<NotifierConfig>(toml_text)
        .expect("the config parses")
        .build()
        .expect("the config builds")
}

/// What a fake receiver got: path, headers, JSON body.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

/// A stand-in for Slack, a webhook endpoint or PagerDuty: records every request and answers
/// `status` (with `Retry-After: 7` on a 429) and `reply` as body.
struct FakeReceiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    reply: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeReceiver {
    async fn start(status: u16, reply: &str) -> FakeReceiver {
        use axum::extract::State;
        use axum::http::{HeaderMap, StatusCode, Uri};

        #[derive(Clone)]
        struct Shared {
            got: Arc<Mutex<Vec<Received>>>,
            status: Arc<AtomicU16>,
            reply: Arc<Mutex<String>>,
        }
        async fn handle(
            State(s): State<Shared>,
            uri: Uri,
            headers: HeaderMap,
            body: axum::body::Bytes,
        ) -> axum::response::Response {
            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
            s.got.lock().expect("not poisoned").push(Received {
                path: uri.path().to_string(),
                headers,
                body,
            });
            let status =
                StatusCode::from_u16(s.status.load(Ordering::SeqCst)).expect("a valid status");
            let mut resp = axum::response::Response::new(axum::body::Body::from(
                s.reply.lock().expect("not poisoned").clone(),
            ));
            *resp.status_mut() = status;
            if status == StatusCode::TOO_MANY_REQUESTS {
                resp.headers_mut()
                    .insert("retry-after", axum::http::HeaderValue::from_static("7"));
            }
            resp
        }

        let shared = Shared {
            got: Arc::default(),
            status: Arc::new(AtomicU16::new(status)),
            reply: Arc::new(Mutex::new(reply.to_string())),
        };
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("has an address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeReceiver {
            addr,
            got: shared.got,
            status: shared.status,
            reply: shared.reply,
            task,
        }
    }

    fn answer(&self, status: u16, reply: &str) {
        self.status.store(status, Ordering::SeqCst);
        *self.reply.lock().expect("not poisoned") = reply.to_string();
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().expect("not poisoned").clone()
    }
}

impl Drop for FakeReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Slack, webhook, PagerDuty against fake receivers

#[tokio::test]
async fn slack_posts_to_the_secret_url_and_classifies_failures() {
    let rx = FakeReceiver::start(200, "ok").await;
    std::env::set_var(
        "WEIR_TEST_IT_SLACK_URL",
        format!("http://{}/services/T000/B000/s3cretPATH", rx.addr),
    );
    let slack = build(
        "type = \"slack\"\nwebhook_url_env = \"WEIR_TEST_IT_SLACK_URL\"\nchannel = \"#agents\"",
    );
    let client = http_client();

    slack
        .send(&client, &sample::firing())
        .await
        .expect("delivered");
    slack
        .send(&client, &sample::resolved())
        .await
        .expect("delivered");
    let got = rx.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].path, "/services/T000/B000/s3cretPATH");
    assert_eq!(got[0].headers["content-type"], "application/json");
    let firing = &got[0].body;
    assert_eq!(
        firing["text"],
        ":red_circle: [FIRING:critical] AgentTaskFailures agent_id=agent-07: 7 task failures in 5m on agent-07"
    );
    assert_eq!(firing["channel"], "#agents");
    assert_eq!(firing["attachments"][0]["color"], "#d40e0d");
    let fields = &firing["attachments"][0]["blocks"][2]["fields"];
    assert_eq!(
        fields[1]["text"],
        "*Value*\n7 (threshold 5)\n`agent_task_failure_total`"
    );
    assert_eq!(fields[2]["text"], "*Labels*\n`agent_id=agent-07`");
    let resolved = &got[1].body;
    assert!(resolved["text"]
        .as_str()
        .expect("text")
        .starts_with(":white_check_mark: [RESOLVED:critical]"));
    assert_eq!(resolved["attachments"][0]["color"], "#2eb886");

    // Failures: Slack's 5xx and 429 may pass later; its 4xx will not. No error shows the URL.
    rx.answer(500, "rollup_error");
    let e = slack.send(&client, &sample::firing()).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert_eq!(
        e.to_string(),
        "slack: HTTP 500: rollup_error (temporary; will be retried)"
    );
    rx.answer(429, "rate limited");
    let e = slack.send(&client, &sample::firing()).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    rx.answer(400, "invalid_payload");
    let e = slack.send(&client, &sample::firing()).await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert_eq!(
        e.to_string(),
        "slack: HTTP 400: invalid_payload (permanent; not retried)"
    );
    rx.answer(404, "no_service");
    let e = slack.send(&client, &sample::firing()).await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(!format!("{e} {e:?} {slack:?}").contains("s3cretPATH"));
}

#[tokio::test]
async fn webhook_sends_the_documented_json_with_headers() {
    let rx = FakeReceiver::start(204, "").await;
    std::env::set_var("WEIR_TEST_IT_WEBHOOK_AUTH", "Bearer it-token-123");
    let hook = build(&format!(
        r#"
type = "webhook"
url = "http://{}/hooks/weir"
headers = {{ "X-Team" = "agents" }}
secret_headers_env = {{ Authorization = "WEIR_TEST_IT_WEBHOOK_AUTH" }}
"#,
        rx.addr
    ));
    let client = http_client();
    let n = sample::firing();
    hook.send(&client, &n).await.expect("delivered");
    hook.send(&client, &sample::resolved())
        .await
        .expect("delivered");

    let got = rx.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].path, "/hooks/weir");
    assert_eq!(got[0].headers["authorization"], "Bearer it-token-123");
    assert_eq!(got[0].headers["x-team"], "agents");
    assert_eq!(
        got[0].body,
        json!({
            "status": "firing",
            "rule": "AgentTaskFailures",
            "severity": "critical",
            "message": "7 task failures in 5m on agent-07",
            "description": "agent-07 failed more than 5 tasks in the last 5 minutes.",
            "triggered_at": "2024-05-01T12:00:00Z",
            "resolved_at": null,
            "metric_name": "agent_task_failure_total",
            "current_value": 7.0,
            "threshold_value": 5.0,
            "labels": {"agent_id": "agent-07"},
            "fingerprint": n.fingerprint,
            "link": "https://grafana.example.com/d/agents?var-agent_id=agent-07",
        })
    );
    assert_eq!(got[1].body["status"], "resolved");
    assert_eq!(got[1].body["resolved_at"], "2024-05-01T12:10:00Z");
    assert_eq!(got[1].body["fingerprint"], got[0].body["fingerprint"]);

    rx.answer(503, "");
    let e = hook.send(&client, &n).await.unwrap_err();
    assert!(e.is_retryable());
    assert_eq!(
        e.to_string(),
        "webhook: HTTP 503 (temporary; will be retried)"
    );
    rx.answer(400, "{\"error\": \"unknown field\"}");
    let e = hook.send(&client, &n).await.unwrap_err();
    assert!(!e.is_retryable());
    assert!(!format!("{e:?} {hook:?}").contains("it-token-123"));
}

#[tokio::test]
async fn unreachable_endpoint_is_retryable_and_hides_the_url() {
    // Nothing listens on this port: connection refused.
    let port = free_port();
    std::env::set_var(
        "WEIR_TEST_IT_WEBHOOK_DOWN",
        format!("http://127.0.0.1:{port}/hook?token=tok-in-url"),
    );
    let hook = build("type = \"webhook\"\nurl_env = \"WEIR_TEST_IT_WEBHOOK_DOWN\"");
    let e = hook
        .send(&http_client(), &sample::firing())
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    let text = e.to_string();
    assert!(text.starts_with("webhook: error sending request"), "{text}");
    assert!(
        !text.contains("tok-in-url") && !text.contains("127.0.0.1"),
        "{text}"
    );
}

#[tokio::test]
async fn pagerduty_triggers_and_resolves_under_one_dedup_key() {
    let rx = FakeReceiver::start(
        202,
        r#"{"status":"success","message":"Event processed","dedup_key":"x"}"#,
    )
    .await;
    std::env::set_var("WEIR_TEST_IT_PD_KEY", "R0UT1NGKEY0000000000000000000000");
    let pd = build(&format!(
        "type = \"pagerduty\"\nrouting_key_env = \"WEIR_TEST_IT_PD_KEY\"\nurl = \"http://{}/v2/enqueue\"",
        rx.addr
    ));
    let client = http_client();
    let n = sample::firing();
    pd.send(&client, &n).await.expect("202 is success");
    pd.send(&client, &sample::resolved())
        .await
        .expect("202 is success");

    let got = rx.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].path, "/v2/enqueue");
    let trigger = &got[0].body;
    assert_eq!(trigger["routing_key"], "R0UT1NGKEY0000000000000000000000");
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(trigger["dedup_key"], n.fingerprint.as_str());
    assert_eq!(
        trigger["payload"],
        json!({
            "summary": "7 task failures in 5m on agent-07",
            "source": "weir",
            "severity": "critical",
            "timestamp": "2024-05-01T12:00:00Z",
            "component": "agent_task_failure_total",
            "class": "AgentTaskFailures",
            "custom_details": {
                "labels": {"agent_id": "agent-07"},
                "value": 7.0,
                "threshold": 5.0,
                "description": "agent-07 failed more than 5 tasks in the last 5 minutes.",
            },
        })
    );
    assert_eq!(
        trigger["links"],
        json!([{"href": "https://grafana.example.com/d/agents?var-agent_id=agent-07",
                "text": "AgentTaskFailures details"}])
    );
    assert_eq!(
        got[1].body,
        json!({"routing_key": "R0UT1NGKEY0000000000000000000000", "event_action": "resolve",
               "dedup_key": n.fingerprint})
    );

    rx.answer(
        400,
        r#"{"status":"invalid event","message":"Event object is invalid","errors":["Length of 'routing_key' is incorrect"]}"#,
    );
    let e = pd.send(&client, &n).await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.to_string().contains("Event object is invalid"), "{e}");
    rx.answer(429, "");
    assert!(pd.send(&client, &n).await.unwrap_err().is_retryable());
    rx.answer(502, "");
    assert!(pd.send(&client, &n).await.unwrap_err().is_retryable());
    assert!(!format!("{pd:?}").contains("R0UT1NGKEY"));
}

// ---------------------------------------------------------------------------------------------
// A real Alertmanager

const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

struct Alertmanager {
    base: String,
    _child: ChildGuard,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Starts Alertmanager on a free port with one receiver that drops everything, and waits
    /// until it is ready. `None` (skipped) when the binary is missing.
    async fn start() -> Option<Alertmanager> {
        if !Path::new(ALERTMANAGER).exists() {
            missing("prometheus-alertmanager (apt-get install prometheus-alertmanager)");
            return None;
        }
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: 'null'\n  group_wait: 1s\nreceivers:\n  - name: 'null'\n",
        )
        .expect("writes the config");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("creates the data dir");
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).expect("a log file");
        let port = free_port();
        let child = Command::new(ALERTMANAGER)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starts alertmanager");
        let mut am = Alertmanager {
            base: format!("http://127.0.0.1:{port}"),
            _child: ChildGuard(child),
            _dir: dir,
        };
        let client = http_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{}/-/ready", am.base)).send().await {
                if r.status().is_success() {
                    return Some(am);
                }
            }
            if let Ok(Some(status)) = am._child.0.try_wait() {
                panic!(
                    "alertmanager exited ({status}): {}",
                    std::fs::read_to_string(am._dir.path().join("alertmanager.log"))
                        .unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "alertmanager not ready after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The alerts `GET /api/v2/alerts` lists for one alertname.
    async fn alerts(&self, client: &reqwest::Client, alertname: &str) -> Vec<Value> {
        let resp = client
            .get(format!("{}/api/v2/alerts", self.base))
            .query(&[("filter", format!("alertname=\"{alertname}\""))])
            .send()
            .await
            .expect("alertmanager answers");
        assert!(resp.status().is_success(), "{}", resp.status());
        let v: Value = resp.json().await.expect("a JSON array");
        v.as_array().cloned().expect("an array")
    }
}

#[tokio::test]
async fn alertmanager_shows_the_alert_firing_then_resolved() {
    let Some(am) = Alertmanager::start().await else {
        return;
    };
    let client = http_client();
    let notifier = build(&format!("type = \"alertmanager\"\nurl = \"{}\"", am.base));

    let now = jiff::Timestamp::now();
    let mut firing = sample::firing();
    firing.rule = "WeirNotifyTest".into();
    firing.starts_at = now - jiff::SignedDuration::from_secs(60);
    firing.fingerprint = Notification::fingerprint(&firing.rule, &firing.labels);
    notifier.send(&client, &firing).await.expect("accepted");

    // Alertmanager lists it at once; its state turns "active" once the dispatcher has it.
    let deadline = Instant::now() + Duration::from_secs(15);
    let alert = loop {
        let alerts = am.alerts(&client, "WeirNotifyTest").await;
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        if alerts[0]["status"]["state"] == "active" {
            break alerts[0].clone();
        }
        assert!(Instant::now() < deadline, "never active: {alerts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        alert["labels"],
        json!({"alertname": "WeirNotifyTest", "severity": "critical", "agent_id": "agent-07"})
    );
    assert_eq!(
        alert["annotations"]["summary"],
        "7 task failures in 5m on agent-07"
    );
    assert_eq!(
        alert["annotations"]["description"],
        "agent-07 failed more than 5 tasks in the last 5 minutes."
    );
    assert_eq!(alert["annotations"]["value"], "7");
    assert_eq!(alert["annotations"]["threshold"], "5");
    assert_eq!(
        alert["generatorURL"],
        "https://grafana.example.com/d/agents?var-agent_id=agent-07"
    );
    let starts: jiff::Timestamp = alert["startsAt"]
        .as_str()
        .expect("startsAt")
        .parse()
        .expect("RFC 3339");
    assert_eq!(starts.as_second(), firing.starts_at.as_second());
    // No endsAt sent: Alertmanager holds the alert for its resolve_timeout (5m by default).
    let ends: jiff::Timestamp = alert["endsAt"]
        .as_str()
        .expect("endsAt")
        .parse()
        .expect("RFC 3339");
    assert!(ends > now, "{ends} is not after {now}");

    // The resolve: endsAt now. Alertmanager stops listing resolved alerts.
    let mut resolved = firing.clone();
    resolved.status = Status::Resolved;
    resolved.ends_at = Some(jiff::Timestamp::now());
    notifier.send(&client, &resolved).await.expect("accepted");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let alerts = am.alerts(&client, "WeirNotifyTest").await;
        if alerts.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still listed: {alerts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A rejected alert is a permanent error: Alertmanager refuses a label name it cannot use.
    let mut bad = firing.clone();
    bad.labels = BTreeMap::from([("bad-label".to_string(), "x".to_string())]);
    let e = notifier.send(&client, &bad).await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.to_string().starts_with("alertmanager: HTTP 400"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// A real SMTP server

/// The Python interpreter with aiosmtpd (`WEIR_PYTHON`, else `python3`).
fn python() -> String {
    std::env::var("WEIR_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// An aiosmtpd server: saves each message it accepts as JSON (envelope, decoded subject and
/// body, whether TLS and AUTH were used).
const SMTP_SERVER_PY: &str = r#"
import email, email.policy, json, os, ssl, sys, threading
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

port, out, cert, key, user, password = sys.argv[1:7]

class Handler:
    def __init__(self):
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        part = msg.get_body(preferencelist=("plain",))
        login = session.auth_data
        if isinstance(login, bytes):
            login = login.decode()
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(msg["from"]),
            "to": str(msg["to"]),
            "subject": str(msg["subject"]),
            "references": str(msg.get("references", "")),
            "content_type": msg.get_content_type(),
            "body": part.get_content().replace("\r\n", "\n") if part is not None else "",
            "tls": session.ssl is not None,
            "authenticated": bool(session.authenticated),
            "login": login,
        }
        tmp = os.path.join(out, ".msg-%03d.tmp" % self.count)
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.replace(tmp, os.path.join(out, "msg-%03d.json" % self.count))
        return "250 Message accepted for delivery"

kwargs = {}
if cert:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    kwargs.update(tls_context=ctx, require_starttls=True)
if user:
    def authenticator(server, session, envelope, mechanism, data):
        ok = data.login == user.encode() and data.password == password.encode()
        return AuthResult(success=ok, handled=False, auth_data=data.login if ok else None)
    kwargs.update(authenticator=authenticator, auth_require_tls=True)

controller = Controller(Handler(), hostname="127.0.0.1", port=int(port), **kwargs)
controller.start()
print("READY", flush=True)
threading.Event().wait()
"#;

struct SmtpServer {
    port: u16,
    out: PathBuf,
    _child: ChildGuard,
    _dir: tempfile::TempDir,
}

impl SmtpServer {
    /// `None` (skipped) when Python or aiosmtpd is missing. With `tls`, a private CA and a
    /// certificate it signs for 127.0.0.1 are made, STARTTLS is required and the CA's PEM file
    /// is returned; with `auth`, that user and password are required (after STARTTLS).
    fn start(tls: bool, auth: Option<(&str, &str)>) -> Option<(SmtpServer, Option<PathBuf>)> {
        let has_aiosmtpd = Command::new(python())
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has_aiosmtpd {
            missing("Python's aiosmtpd (python3 -m pip install aiosmtpd)");
            return None;
        }
        let dir = tempfile::tempdir().expect("a temp dir");
        let script = dir.path().join("smtp_server.py");
        std::fs::write(&script, SMTP_SERVER_PY).expect("writes the script");
        let out = dir.path().join("messages");
        std::fs::create_dir(&out).expect("creates the message dir");
        let mut ca_file = None;

        let (cert, key) = if tls {
            match make_certificates(dir.path()) {
                Some((ca, cert, key)) => {
                    ca_file = Some(ca);
                    (Some(cert), Some(key))
                }
                None => {
                    missing("openssl (to make the test certificates)");
                    return None;
                }
            }
        } else {
            (None, None)
        };
        let path_arg = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let (user, password) = auth.unwrap_or(("", ""));
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("smtp.log")).expect("a log file");
        let child = Command::new(python())
            .arg(&script)
            .arg(port.to_string())
            .arg(&out)
            .arg(path_arg(&cert))
            .arg(path_arg(&key))
            .arg(user)
            .arg(password)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starts the SMTP server");
        let mut server = SmtpServer {
            port,
            out,
            _child: ChildGuard(child),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = server._child.0.try_wait() {
                panic!(
                    "the SMTP server exited ({status}): {}",
                    std::fs::read_to_string(server._dir.path().join("smtp.log"))
                        .unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the SMTP server did not start in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some((server, ca_file))
    }

    /// The messages received so far, in order.
    fn messages(&self) -> Vec<Value> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.out)
            .expect("reads the message dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| {
                serde_json::from_slice(&std::fs::read(p).expect("reads a message"))
                    .expect("a JSON record")
            })
            .collect()
    }
}

/// Makes, with `openssl`, a private CA and a server certificate for 127.0.0.1 that it signs:
/// `(ca.pem, cert.pem, key.pem)` in `dir`. `None` when openssl is missing or fails.
fn make_certificates(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let ca_key = dir.join("ca-key.pem");
    let ca = dir.join("ca.pem");
    let key = dir.join("key.pem");
    let csr = dir.join("server.csr");
    let cert = dir.join("cert.pem");
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .ok()?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let steps: [Vec<std::ffi::OsString>; 3] = [
        ["req", "-x509", "-days", "2", "-subj", "/CN=weir test CA"]
            .iter()
            .chain(&ec)
            .map(Into::into)
            .chain([
                "-keyout".into(),
                ca_key.clone().into(),
                "-out".into(),
                ca.clone().into(),
            ])
            .collect(),
        ["req", "-subj", "/CN=127.0.0.1"]
            .iter()
            .chain(&ec)
            .map(Into::into)
            .chain([
                "-keyout".into(),
                key.clone().into(),
                "-out".into(),
                csr.clone().into(),
            ])
            .collect(),
        ["x509", "-req", "-days", "2", "-set_serial", "2"]
            .iter()
            .map(Into::into)
            .chain([
                "-in".into(),
                csr.into(),
                "-CA".into(),
                ca.clone().into(),
                "-CAkey".into(),
                ca_key.into(),
                "-extfile".into(),
                ext.into(),
                "-out".into(),
                cert.clone().into(),
            ])
            .collect(),
    ];
    for args in steps {
        let ok = Command::new("openssl")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
    }
    Some((ca, cert, key))
}

#[tokio::test]
async fn email_over_plain_smtp_arrives_with_subject_and_body() {
    let Some((smtp, _)) = SmtpServer::start(false, None) else {
        return;
    };
    let mail = build(&format!(
        r#"
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {}
starttls = false
from = "weir <alerts@example.com>"
to = ["oncall@example.com", "Agents Team <agents@example.com>"]
"#,
        smtp.port
    ));
    let client = http_client();
    mail.send(&client, &sample::firing()).await.expect("sent");
    mail.send(&client, &sample::resolved()).await.expect("sent");

    let got = smtp.messages();
    assert_eq!(got.len(), 2, "{got:?}");
    let m = &got[0];
    assert_eq!(m["mail_from"], "alerts@example.com");
    assert_eq!(
        m["rcpt_tos"],
        json!(["oncall@example.com", "agents@example.com"])
    );
    assert_eq!(m["from"], "weir <alerts@example.com>");
    assert_eq!(
        m["to"],
        "oncall@example.com, Agents Team <agents@example.com>"
    );
    assert_eq!(
        m["subject"],
        "[FIRING:critical] AgentTaskFailures agent_id=agent-07"
    );
    assert_eq!(m["content_type"], "text/plain");
    // SMTP carries lines ending in CRLF (the server's copy is read back with LF) and adds a
    // last line break.
    assert_eq!(
        m["body"].as_str().expect("a body").trim_end(),
        email::body(&sample::firing()).trim_end()
    );
    assert_eq!(m["tls"], false);
    assert_eq!(m["authenticated"], false);
    let r = &got[1];
    assert_eq!(
        r["subject"],
        "[RESOLVED:critical] AgentTaskFailures agent_id=agent-07"
    );
    assert!(r["body"]
        .as_str()
        .expect("body")
        .contains("Resolved:    2024-05-01T12:10:00Z\n"));
    // Both messages of the alert share a thread.
    assert_eq!(r["references"], m["references"]);
    assert!(m["references"]
        .as_str()
        .expect("references")
        .starts_with("<weir."));
}

#[tokio::test]
async fn email_with_starttls_and_auth() {
    let Some((smtp, cert)) = SmtpServer::start(true, Some(("weir", "s3cret-pw"))) else {
        return;
    };
    let cert = cert.expect("the CA of a TLS server");
    std::env::set_var("WEIR_TEST_IT_SMTP_PASSWORD", "s3cret-pw");
    std::env::set_var("WEIR_TEST_IT_SMTP_WRONG_PASSWORD", "not-it");
    let config = |password_env: &str, ca_file: Option<&Path>| {
        let ca = ca_file
            .map(|p| format!("ca_file = {:?}\n", p.display().to_string()))
            .unwrap_or_default();
        format!(
            r#"
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {}
username = "weir"
password_env = "{password_env}"
from = "alerts@example.com"
to = ["oncall@example.com"]
{ca}"#,
            smtp.port
        )
    };
    let client = http_client();

    let mail = build(&config("WEIR_TEST_IT_SMTP_PASSWORD", Some(&cert)));
    mail.send(&client, &sample::firing()).await.expect("sent");
    let got = smtp.messages();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["tls"], true);
    assert_eq!(got[0]["authenticated"], true);
    assert_eq!(got[0]["login"], "weir");
    assert_eq!(
        got[0]["subject"],
        "[FIRING:critical] AgentTaskFailures agent_id=agent-07"
    );

    // A wrong password: the server's 535 is permanent, and the error has no password.
    let wrong = build(&config("WEIR_TEST_IT_SMTP_WRONG_PASSWORD", Some(&cert)));
    let e = wrong.send(&client, &sample::firing()).await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.to_string().contains("535"), "{e}");
    assert!(!format!("{e} {e:?} {wrong:?}").contains("not-it"));

    // Without the CA the server's certificate is refused: nothing is sent in the clear.
    let untrusted = build(&config("WEIR_TEST_IT_SMTP_PASSWORD", None));
    let e = untrusted
        .send(&client, &sample::firing())
        .await
        .unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.to_string().contains("invalid peer certificate"), "{e}");
    assert_eq!(smtp.messages().len(), 1);
}

#[tokio::test]
async fn email_to_a_closed_port_is_retryable() {
    let port = free_port();
    let mail = build(&format!(
        "type = \"email\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\nstarttls = false\nfrom = \"a@example.com\"\nto = [\"b@example.com\"]"
    ));
    let e = mail
        .send(&http_client(), &sample::firing())
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
}
