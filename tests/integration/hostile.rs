//! What an attacker's test broke, against the real binary: nesting that overflowed the stack,
//! non-finite numbers and 20 KB label values, and secrets in outputs (issue 13).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::elasticsearch::ElasticsearchReceiver;
use crate::support::loki::LokiReceiver;
use crate::util::{free_port, parse_exposition, temp_file, weir};

/// `weir validate` on files nested 20,000 deep (it aborted with rc 134): exit 2, and the
/// message names the file, line and column.
#[test]
fn validate_refuses_deep_nesting_with_a_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = 20_000;
    let metric = "[[metrics]]\nname = \"x_total\"\nkind = \"counter\"\n";
    let cases = [
        (
            format!(
                "{metric}when = '{}a == 1{}'\n",
                "(".repeat(n),
                ")".repeat(n)
            ),
            "4:73: invalid condition: expected at most 64 nested `(` or `!`",
        ),
        (
            format!("{metric}when = '{}a == 1'\n", "!".repeat(n)),
            "4:73: invalid condition: expected at most 64 nested `(` or `!`",
        ),
        (
            format!(
                "{metric}\n[[alerts]]\nname = \"A\"\nexpr = \"{}count(x_total){} > 1\"\n",
                "(".repeat(n),
                ")".repeat(n)
            ),
            "at most 64 nested `(` (the expression nests deeper)",
        ),
        (
            format!(
                "{metric}\n[[alerts]]\nname = \"A\"\nexpr = \"count(x_total){} > 1\"\n",
                " + 1".repeat(10 * n)
            ),
            "at most 256 arithmetic operators",
        ),
        (
            format!(
                "{metric}\n[[alerts]]\nname = \"A\"\nexpr = \"absent({}a == 1{}) for 1m\"\n",
                "(".repeat(n),
                ")".repeat(n)
            ),
            "at most 64 nested `(` or `!`",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let path = temp_file(dir.path(), &format!("deep{i}.toml"), text.as_bytes());
        let out = weir()
            .args(["validate", "--config"])
            .arg(&path)
            .output()
            .expect("run weir validate");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "case {i}: {stderr}");
        assert!(
            stderr.contains(&format!("{}:", path.display())) && stderr.contains(want),
            "case {i}: {want:?} not in {stderr}"
        );
    }
}

/// 2,000 lines with a 20 KB `agent_id` made a 482 MB exposition; `1e999999` made `_sum`
/// +Inf and `-1e999999` NaN; `1e400` set a gauge to inf. Now the label values are cut to
/// 1 KiB and counted, the numbers are counted and not observed.
#[test]
fn oneshot_cuts_long_label_values_and_counts_non_finite_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pipeline = temp_file(
        dir.path(),
        "p.toml",
        br#"
[[metrics]]
name = "d_seconds"
kind = "histogram"
value = "d"
labels = { agent_id = "agent_id" }
buckets = [1, 10]

[[metrics]]
name = "q"
kind = "gauge"
value = "q"
"#,
    );
    let mut logs = String::new();
    for i in 0..2_000 {
        logs.push_str(&format!(
            "{{\"agent_id\":\"{i:05}{}\",\"d\":2}}\n",
            "x".repeat(20_000)
        ));
    }
    logs.push_str("{\"d\":1e999999}\n{\"d\":-1e999999}\n{\"q\":7}\n{\"q\":1e400}\n");
    let input = temp_file(dir.path(), "in.jsonl", logs.as_bytes());
    let out = weir()
        .args(["run", "--oneshot", "--config"])
        .arg(&pipeline)
        .arg(&input)
        .output()
        .expect("run weir");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 exposition");
    // 2,000 series × 5 lines × (1 KiB + a little), not × 20 KB.
    assert!(text.len() < 2_000 * 5 * 1_200, "{} bytes", text.len());
    let m = parse_exposition(&text);
    let errors = |metric: &str, reason: &str| {
        let k = (
            "weir_derive_errors_total".to_string(),
            BTreeMap::from([
                ("metric".to_string(), metric.to_string()),
                ("reason".to_string(), reason.to_string()),
            ]),
        );
        m.get(&k).copied().unwrap_or(-1.0)
    };
    assert_eq!(errors("d_seconds", "label_value_truncated"), 2_000.0);
    assert_eq!(errors("d_seconds", "value_not_finite"), 2.0);
    assert_eq!(errors("q", "value_not_finite"), 1.0);
    let sums: Vec<f64> = m
        .iter()
        .filter(|((n, _), _)| n == "d_seconds_sum")
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(sums.len(), 2_000);
    assert!(sums.iter().all(|v| *v == 2.0), "{sums:?}");
    for ((_, labels), _) in m.iter().filter(|((n, _), _)| n.starts_with("d_seconds")) {
        let id = &labels["agent_id"];
        assert_eq!(id.len(), 1_024, "{}", &id[..10]);
    }
    assert_eq!(m[&("q".to_string(), BTreeMap::new())], 7.0);
    assert!(!text.contains("NaN") && !text.contains(" +Inf\n"));
}

/// Known secrets, one per kind the issue names: sink credentials (an Elasticsearch password, a
/// Loki bearer token and basic-auth password, passwords inline in URLs), notifier keys
/// (PagerDuty, SMTP, a webhook header; the Slack and webhook URLs, see [`url_secrets`]), the
/// admin bearer token, and the web config's basic-auth password (with its bcrypt hash).
const SECRETS: [(&str, &str); 10] = [
    ("WEIR_TEST_ES_PASSWORD", "es-password-S3CR3T-1"),
    ("WEIR_TEST_LOKI_TOKEN", "loki-token-S3CR3T-2"),
    ("WEIR_TEST_PD_KEY", "pagerduty-key-S3CR3T-3"),
    ("", "loki-url-password-S3CR3T-5"),
    ("", "am-url-password-S3CR3T-6"),
    ("WEIR_TEST_LOKI_PASSWORD", "loki-basic-password-S3CR3T-7"),
    ("WEIR_TEST_SMTP_PASSWORD", "smtp-password-S3CR3T-8"),
    ("WEIR_TEST_WEBHOOK_AUTH", "Bearer webhook-header-S3CR3T-9"),
    ("WEIR_TEST_ADMIN_TOKEN", ADMIN_TOKEN),
    ("", BASIC_PASSWORD),
];

const ADMIN_TOKEN: &str = "admin-token-S3CR3T-10";
/// The password of the web config's `prometheus` user; a wrong one is tried too.
const BASIC_PASSWORD: &str = "basic-password-S3CR3T-12";
const WRONG_PASSWORD: &str = "wrong-password-S3CR3T-13";
const WRONG_TOKEN: &str = "wrong-token-S3CR3T-14";

/// Secrets that are URLs (their path is the token): (variable, URL on the dead port).
fn url_secrets(dead_port: u16) -> [(&'static str, String); 2] {
    [
        (
            "WEIR_TEST_SLACK_URL",
            format!("http://127.0.0.1:{dead_port}/services/T0/B0/slack-path-S3CR3T-4"),
        ),
        (
            "WEIR_TEST_WEBHOOK_URL",
            format!("http://127.0.0.1:{dead_port}/hooks/webhook-path-S3CR3T-11"),
        ),
    ]
}

/// Every secret string: the values, the URLs and their secret paths, the wrong credentials a
/// client tried.
fn secrets(dead_port: u16) -> Vec<String> {
    let mut s: Vec<String> = SECRETS
        .iter()
        .map(|(_, v)| v.to_string())
        .chain([
            "slack-path-S3CR3T-4".into(),
            "webhook-path-S3CR3T-11".into(),
        ])
        .chain([WRONG_PASSWORD.into(), WRONG_TOKEN.into()])
        .collect();
    s.extend(url_secrets(dead_port).into_iter().map(|(_, url)| url));
    s
}

fn with_secret_env(cmd: &mut std::process::Command, dead_port: u16) {
    for (var, value) in SECRETS.iter().filter(|(var, _)| !var.is_empty()) {
        cmd.env(var, value);
    }
    for (var, url) in url_secrets(dead_port) {
        cmd.env(var, url);
    }
}

/// A request with credentials: `basic` = (user, password), or a bearer token.
fn request(
    method: &str,
    url: &str,
    query: &[(&str, &str)],
    basic: Option<(&str, &str)>,
    bearer: Option<&str>,
) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = reqwest::Client::new();
        let mut req = match method {
            "POST" => client.post(url),
            _ => client.get(url),
        }
        .query(query)
        .timeout(Duration::from_secs(10));
        if let Some((user, password)) = basic {
            req = req.basic_auth(user, Some(password));
        }
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            // A /tap stream that is still open when the timeout ends.
            Err(e) => (0, e.to_string()),
        }
    })
}

fn assert_no_secret(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "{what} contains the secret {s:?}"
        );
    }
    // Also no fragment that would make one guessable.
    assert!(!text.contains("S3CR3T"), "{what} contains part of a secret");
}

/// Every file under `dir`, with its contents (lossy).
fn files_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).expect("read file");
                out.push((p, String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
    }
    out
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `addr` of weir's "serving /metrics" log line, once it is in the stderr file.
fn metrics_addr(stderr: &Path, child: &mut Child) -> String {
    let mut addr = None;
    wait_until("weir to serve /metrics", || {
        assert!(child.try_wait().expect("try_wait").is_none(), "weir exited");
        let text = std::fs::read_to_string(stderr).unwrap_or_default();
        addr = text.lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["fields"]["message"] == "serving /metrics")
                .then(|| v["fields"]["addr"].as_str().map(str::to_string))
                .flatten()
        });
        addr.is_some()
    });
    addr.expect("found")
}

/// The admin address in the "serving /metrics" line of a weir's stderr log (after
/// [`metrics_addr`] found it).
fn admin_addr(stderr: &Path) -> String {
    let text = std::fs::read_to_string(stderr).unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["fields"]["message"] == "serving /metrics").then(|| crate::util::admin_of(&v))
        })
        .expect("weir logged its addresses")
}

/// Issue 13 §4: a run configured with known secrets of every kind (see [`SECRETS`]) at
/// `WEIR_LOG=trace`, with sinks that reject (dead letters), notifiers that cannot connect
/// (errors, retries), a web config with basic auth on the public listener, an admin bearer
/// token, and clients that try wrong credentials. No secret appears in `validate --explain`,
/// the logs, stdout, `/stats`, `/alerts`, `/metrics`, the reload answer, `/tap`, the 401
/// answers or any file under `data_dir` (dead letters, checkpoints, alert state).
#[test]
fn no_secret_appears_in_any_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let es = ElasticsearchReceiver::start();
    es.reject_messages_containing("BAD");
    let loki = LokiReceiver::start();
    loki.fail_next_with(1_000_000, 400);
    let dead_port = free_port();
    let loki_url = loki
        .url()
        .replacen("://", "://lokiuser:loki-url-password-S3CR3T-5@", 1);
    let am_url = format!("http://amuser:am-url-password-S3CR3T-6@127.0.0.1:{dead_port}");
    let pipeline = format!(
        r#"
data_dir = '{data}'

[[metrics]]
name = "hits_total"
kind = "counter"

[[alerts]]
name = "Hits"
expr = "count(hits_total) over 5m > 0"
summary = "{{{{ $value }}}} hits"

[[sinks]]
type = "elasticsearch"
endpoint = '{es}'
username = "elastic"
password_env = "WEIR_TEST_ES_PASSWORD"
dead_letter_path = '{data}/dead/es.jsonl'
[sinks.batch]
max_age_ms = 100

[[sinks]]
type = "loki"
endpoint = '{loki_url}'
bearer_token_env = "WEIR_TEST_LOKI_TOKEN"
dead_letter_path = '{data}/dead/loki.jsonl'
[sinks.batch]
max_age_ms = 100

[[sinks]]
type = "loki"
name = "loki_basic"
endpoint = '{loki_plain}'
basic_auth_user = "lokiuser"
basic_auth_password_env = "WEIR_TEST_LOKI_PASSWORD"
dead_letter_path = '{data}/dead/loki-basic.jsonl'
[sinks.batch]
max_age_ms = 100

[notifiers.slack]
type = "slack"
webhook_url_env = "WEIR_TEST_SLACK_URL"

[notifiers.pager]
type = "pagerduty"
routing_key_env = "WEIR_TEST_PD_KEY"
url = "http://127.0.0.1:{dead_port}/v2/enqueue"

[notifiers.am]
type = "alertmanager"
url = "{am_url}"

[notifiers.mail]
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {dead_port}
username = "alerts"
password_env = "WEIR_TEST_SMTP_PASSWORD"
from = "weir <alerts@example.com>"
to = ["ops@example.com"]
timeout_secs = 2

[notifiers.hook]
type = "webhook"
url_env = "WEIR_TEST_WEBHOOK_URL"
secret_headers_env = {{ Authorization = "WEIR_TEST_WEBHOOK_AUTH" }}
"#,
        data = data.display(),
        es = es.url(),
        loki_plain = loki.url(),
    );
    let p = temp_file(dir.path(), "secrets.toml", pipeline.as_bytes());
    // Cost 4: the lowest bcrypt allows, so that checking a scrape's password is quick.
    let hash = bcrypt::hash(BASIC_PASSWORD, 4).expect("bcrypt hash");
    let web = temp_file(
        dir.path(),
        "web.yml",
        format!("basic_auth_users:\n  prometheus: '{hash}'\n").as_bytes(),
    );
    let mut secrets = secrets(dead_port);
    secrets.push(hash.clone());
    let scrape = |addr: &str, path: &str| {
        request(
            "GET",
            &format!("http://{addr}{path}"),
            &[],
            Some(("prometheus", BASIC_PASSWORD)),
            None,
        )
    };

    let mut explain = weir();
    explain.args(["validate", "--explain", "--config"]).arg(&p);
    with_secret_env(&mut explain, dead_port);
    let out = explain.output().expect("run weir validate --explain");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert_no_secret("validate --explain", &text, &secrets);
    // The URLs are shown, their userinfo redacted.
    assert!(text.contains("://<redacted>@127.0.0.1:"), "{text}");

    let stderr_path = dir.path().join("stderr.log");
    let stdout_path = dir.path().join("stdout.log");
    let mut run = weir();
    run.args([
        "run",
        "--listen",
        "127.0.0.1:0",
        "--shutdown-timeout-secs",
        "3",
        "--admin-token-env",
        "WEIR_TEST_ADMIN_TOKEN",
    ])
    .arg("--web-config-file")
    .arg(&web)
    .arg("--config")
    .arg(&p)
    .env("WEIR_LOG", "trace")
    .stdin(Stdio::piped())
    .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
    .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
    with_secret_env(&mut run, dead_port);
    let mut child = run.spawn().expect("spawn weir");
    let addr = metrics_addr(&stderr_path, &mut child);
    let admin = admin_addr(&stderr_path);
    let mut stdin = child.stdin.take().expect("stdin piped");
    let mut lines = String::new();
    for i in 0..20 {
        let msg = if i % 2 == 0 { "BAD line" } else { "fine line" };
        lines.push_str(&format!(
            "{{\"timestamp\":\"2026-01-01T00:00:{i:02}Z\",\"level\":\"ERROR\",\"message\":\"{msg} {i}\"}}\n"
        ));
    }
    stdin.write_all(lines.as_bytes()).expect("write stdin");
    stdin.flush().expect("flush");

    let dead_es = data.join("dead/es.jsonl");
    let dead_loki = data.join("dead/loki.jsonl");
    let dead_loki_basic = data.join("dead/loki-basic.jsonl");
    wait_until("dead letters from every sink", || {
        let n = |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
        n(&dead_es) >= 10 && n(&dead_loki) >= 1 && n(&dead_loki_basic) >= 1
    });
    wait_until("a failed attempt of every notifier", || {
        let m = parse_exposition(&scrape(&addr, "/metrics").1);
        ["slack", "pager", "am", "mail", "hook"].iter().all(|n| {
            m.iter().any(|((name, labels), v)| {
                name == "weir_alert_notification_retries_total"
                    && labels.get("notifier").map(String::as_str) == Some(*n)
                    && *v > 0.0
            })
        })
    });
    let mut answers = Vec::new();
    for path in ["/alerts", "/metrics", "/health", "/ready"] {
        let (status, body) = scrape(&addr, path);
        assert_eq!(status, 200, "{path}: {body}");
        answers.push((path, status, body));
    }
    let admin_url = |path: &str| format!("http://{admin}{path}");
    let (status, stats) = request("GET", &admin_url("/stats"), &[], None, Some(ADMIN_TOKEN));
    assert_eq!(status, 200, "/stats: {stats}");
    answers.push(("/stats", status, stats));
    let (_, reload) = request(
        "POST",
        &admin_url("/-/reload"),
        &[],
        None,
        Some(ADMIN_TOKEN),
    );
    answers.push(("/-/reload", 0, reload));
    // A refused reload quotes the line at fault, in its answer and its log line: here the one
    // with the password inline in the Loki URL.
    let broken = pipeline.replacen(
        &format!("endpoint = '{loki_url}'"),
        &format!("endpoint = '{loki_url}' x"),
        1,
    );
    assert_ne!(broken, pipeline);
    std::fs::write(&p, &broken).expect("write the broken pipeline");
    let (status, refused) = request(
        "POST",
        &admin_url("/-/reload"),
        &[],
        None,
        Some(ADMIN_TOKEN),
    );
    assert!(
        refused.contains("<redacted>@127.0.0.1"),
        "{status}: {refused}"
    );
    answers.push(("/-/reload (refused)", status, refused));
    // A tap sees the lines (which hold no secret), not weir's settings.
    let tap = request(
        "GET",
        &admin_url("/tap"),
        &[("filter", "message =~ \"(\"")],
        None,
        Some(ADMIN_TOKEN),
    );
    answers.push(("/tap", 0, format!("{tap:?}")));
    // Wrong credentials are refused, and neither the answer nor (below) the log repeats them.
    for (what, url, basic, bearer) in [
        (
            "/metrics, wrong password",
            format!("http://{addr}/metrics"),
            Some(("prometheus", WRONG_PASSWORD)),
            None,
        ),
        (
            "/metrics, unknown user",
            format!("http://{addr}/metrics"),
            Some(("admin", BASIC_PASSWORD)),
            None,
        ),
        (
            "/stats, wrong token",
            admin_url("/stats"),
            None,
            Some(WRONG_TOKEN),
        ),
        ("/stats, no token", admin_url("/stats"), None, None),
    ] {
        let (status, body) = request("GET", &url, &[], basic, bearer);
        assert_eq!(status, 401, "{what}: {body}");
        answers.push((what, status, body));
    }
    for (path, _, body) in &answers {
        assert_no_secret(path, body, &secrets);
    }
    assert!(answers[0].2.contains("Hits"), "/alerts: {}", answers[0].2);

    drop(stdin);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "weir did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&stderr_path).expect("stderr");
    let stdout = std::fs::read_to_string(&stdout_path).expect("stdout");
    assert!(
        status.success() || status.code().is_none(),
        "{status}: {stderr}"
    );
    // The log really is at trace level, and saw the failures.
    assert!(stderr.contains("\"level\":\"TRACE\""), "no trace lines");
    assert!(stderr.contains("notifier"), "no notifier log line");
    assert_no_secret("stderr (WEIR_LOG=trace)", &stderr, &secrets);
    assert_no_secret("stdout", &stdout, &secrets);
    let files = files_under(&data);
    assert!(
        files.iter().any(|(p, _)| p.ends_with("es.jsonl")),
        "{files:?}"
    );
    for (path, text) in &files {
        assert_no_secret(&path.display().to_string(), text, &secrets);
    }
}

/// Issue 13 §4, panic messages: weir installs no panic hook, so what a panic could print is its
/// message, and messages that format a value use its `Debug`. Every built component that holds
/// a secret (sinks, notifiers, the web config, the HTTP options) shows none in `{:?}` or
/// `{:#?}`: tokens and passwords from the environment, nor a password written inline in a URL.
/// The pipeline config's own `Debug` holds only variable names, but quotes inline URLs as
/// written: it is never printed (reload compares sink configs by it, so it must keep the
/// password to notice a changed one), and is checked here for the environment's secrets only.
#[test]
fn debug_output_of_components_holding_secrets_shows_none() {
    use weir::alert::notify::NotifierConfig;
    use weir::sink::SinkConfig;

    const VARS: [(&str, &str); 7] = [
        ("WEIR_TEST_DBG_ES_PASSWORD", "dbg-es-password-S3CR3T-a"),
        ("WEIR_TEST_DBG_LOKI_TOKEN", "dbg-loki-token-S3CR3T-b"),
        ("WEIR_TEST_DBG_PD_KEY", "dbg-pd-key-S3CR3T-c"),
        (
            "WEIR_TEST_DBG_SLACK_URL",
            "https://hooks.slack.com/services/dbg-slack-S3CR3T-d",
        ),
        ("WEIR_TEST_DBG_SMTP_PASSWORD", "dbg-smtp-password-S3CR3T-e"),
        ("WEIR_TEST_DBG_HOOK_AUTH", "Bearer dbg-hook-S3CR3T-f"),
        (
            "WEIR_TEST_DBG_HOOK_URL",
            "https://hooks.example/dbg-hook-url-S3CR3T-g",
        ),
    ];
    for (var, value) in VARS {
        std::env::set_var(var, value);
    }
    let pipeline = r#"
[[sinks]]
type = "elasticsearch"
endpoint = "http://esuser:dbg-es-url-S3CR3T-h@127.0.0.1:9200"
username = "elastic"
password_env = "WEIR_TEST_DBG_ES_PASSWORD"

[[sinks]]
type = "loki"
endpoint = "http://lokiuser:dbg-loki-url-S3CR3T-i@127.0.0.1:3100"
bearer_token_env = "WEIR_TEST_DBG_LOKI_TOKEN"

[notifiers.slack]
type = "slack"
webhook_url_env = "WEIR_TEST_DBG_SLACK_URL"

[notifiers.pager]
type = "pagerduty"
routing_key_env = "WEIR_TEST_DBG_PD_KEY"

[notifiers.am]
type = "alertmanager"
url = "http://amuser:dbg-am-url-S3CR3T-j@127.0.0.1:9093"

[notifiers.mail]
type = "email"
smtp_host = "127.0.0.1"
username = "alerts"
password_env = "WEIR_TEST_DBG_SMTP_PASSWORD"
from = "weir <alerts@example.com>"
to = ["ops@example.com"]

[notifiers.hook]
type = "webhook"
url_env = "WEIR_TEST_DBG_HOOK_URL"
secret_headers_env = { Authorization = "WEIR_TEST_DBG_HOOK_AUTH" }
"#;
    let cfg = weir::PipelineConfig::parse("dbg.toml", pipeline).expect("parses");
    let config_debug = format!("{cfg:?}");
    for (_, value) in VARS {
        assert!(
            !config_debug.contains(value),
            "pipeline config shows {value}"
        );
    }
    let mut shown = Vec::new();
    for s in &cfg.sinks {
        let built = match s {
            SinkConfig::Elasticsearch(c) => format!("{:?}", c.build().expect("es builds")),
            SinkConfig::Loki(c) => format!("{:#?}", c.build().expect("loki builds")),
            other => panic!("unexpected sink {other:?}"),
        };
        shown.push((format!("sink {}", s.kind()), built));
    }
    for (name, n) in &cfg.notifiers {
        let built = NotifierConfig::build(n).expect("notifier builds");
        shown.push((format!("notifier {name}"), format!("{built:?} {built:#?}")));
    }
    let hash = bcrypt::hash("dbg-basic-S3CR3T-k", 4).expect("bcrypt");
    let dir = tempfile::tempdir().expect("tempdir");
    let web = temp_file(
        dir.path(),
        "web.yml",
        format!("basic_auth_users:\n  prometheus: '{hash}'\n").as_bytes(),
    );
    let web = weir::server::web_config::WebConfig::load(&web).expect("web config loads");
    shown.push(("web config".into(), format!("{web:?}")));
    let opts = weir::server::HttpOptions {
        web,
        admin_token: Some(std::sync::Arc::new(weir::server::auth::BearerToken::new(
            "dbg-admin-S3CR3T-l",
        ))),
        ..Default::default()
    };
    shown.push(("http options".into(), format!("{opts:?}")));
    let leaks: Vec<String> = shown
        .iter()
        .filter(|(_, text)| text.contains("S3CR3T") || text.contains(&hash))
        .map(|(what, text)| {
            let found: Vec<&str> = text
                .split(['"', ' ', '@', '/', ':'])
                .filter(|w| w.contains("S3CR3T"))
                .collect();
            format!("{what}: {found:?}")
        })
        .collect();
    assert!(
        leaks.is_empty(),
        "secrets in Debug output:\n{}",
        leaks.join("\n")
    );
}
