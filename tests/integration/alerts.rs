//! Alerting end to end: the real binary on generated logs; a real Alertmanager (Debian's
//! `prometheus-alertmanager`, started here on 127.0.0.1); webhook notifications caught by a
//! local receiver; the generated Prometheus rules checked by the real `promtool`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::server::wait_for;
use crate::support::webhook;
use crate::util::{free_port, have_tool, http_get, weir};

/// 2024-01-01T00:00:00Z, where `weir generate demo-logs` starts its clock.
const START: i64 = 1_704_067_200;

fn default_pipeline() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/agents.toml"))
        .expect("the shipped default pipeline")
}

/// `weir generate demo-logs --incidents` into a file.
fn incidents_file(dir: &Path, count: u64) -> std::path::PathBuf {
    let path = dir.join("incidents.log");
    let out = weir()
        .args(["generate", "demo-logs", "--incidents", "--seed", "42", "-n"])
        .arg(count.to_string())
        .arg("-o")
        .arg(&path)
        .output()
        .expect("runs weir generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// An alert transition as weir logs it: (rule, state, labels, seconds after START, value).
type Logged = (String, String, String, i64, f64);

fn transitions(stderr: &str) -> Vec<Logged> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("alert "))
        })
        .map(|v| {
            let f = &v["fields"];
            let at: jiff::Timestamp = f["at"].as_str().expect("at").parse().expect("RFC 3339");
            (
                f["rule"].as_str().expect("rule").to_string(),
                f["state"].as_str().expect("state").to_string(),
                f["labels"].as_str().expect("labels").to_string(),
                at.as_second() - START,
                f["value"].as_f64().expect("value"),
            )
        })
        .collect()
}

/// The incident schedule of `--incidents` (src/generate.rs) against the default pipeline's
/// four rules: each fires once, inside its incident, and resolves after it.
fn assert_incident_alerts(got: &[Logged]) {
    let fired: Vec<(&str, &str)> = got
        .iter()
        .filter(|t| t.1 == "firing")
        .map(|t| (t.0.as_str(), t.2.as_str()))
        .collect();
    let resolved: BTreeSet<(&str, &str)> = got
        .iter()
        .filter(|t| t.1 == "resolved")
        .map(|t| (t.0.as_str(), t.2.as_str()))
        .collect();
    let expected = [
        ("AgentTaskFailures", "agent_id=agent-07"),
        ("QueueBacklog", "queue_name=retries"),
        ("ComponentSilent", "component=SlackGateway"),
        ("SlowTasks", ""),
    ];
    assert_eq!(
        fired, expected,
        "exactly these alerts fire, in this order: {got:#?}"
    );
    assert_eq!(resolved, expected.into_iter().collect(), "{got:#?}");
    let when = |rule: &str, state: &str| {
        got.iter()
            .find(|t| t.0 == rule && t.1 == state)
            .map(|t| t.3)
            .expect("logged")
    };
    let within = |rule: &str, state: &str, from: i64, to: i64| {
        let at = when(rule, state);
        assert!(
            (from..=to).contains(&at),
            "{rule} {state} at {at} s, expected within {from}..={to}: {got:#?}"
        );
    };
    // agent-07 fails everything from 120 s: its 6th failure comes within a minute; the
    // failures leave the 5-minute window from 420 s.
    within("AgentTaskFailures", "firing", 120, 180);
    within("AgentTaskFailures", "resolved", 420, 480);
    // `retries` above 100 from its first report after 240 s, for 2 minutes; back under at 420.
    within("QueueBacklog", "firing", 360, 370);
    within("QueueBacklog", "resolved", 420, 425);
    // Tasks over 60 s from 600 s: p95 over the 10-minute window passes 60 within a minute,
    // then must hold 10 minutes; after 1500 s it takes most of a window to drop.
    within("SlowTasks", "firing", 1200, 1260);
    within("SlowTasks", "resolved", 2000, 2100);
    // SlackGateway writes nothing from 900 s to 1300 s: 5 minutes after its last line.
    within("ComponentSilent", "firing", 1195, 1200);
    within("ComponentSilent", "resolved", 1300, 1305);
    assert!(
        got.iter()
            .filter(|t| t.1 == "firing" || t.1 == "repeat")
            .all(|t| t.4.is_finite()),
        "{got:#?}"
    );
}

/// A backfill over an old file reports the alerts that would have fired, on the events' time,
/// and sends them with `--notify`: the webhook receives exactly one firing and one resolved
/// document per alert, matching the log.
#[test]
fn oneshot_backfill_reports_and_notifies_the_incident_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let log = incidents_file(dir.path(), 115_000);
    let hook = webhook::start();
    let config = dir.path().join("agents.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[notifiers.hook]\ntype = \"webhook\"\nurl = \"{}/hook\"\n",
            default_pipeline(),
            hook.url()
        ),
    )
    .unwrap();

    // Without --notify: reported, not sent.
    let out = weir()
        .args(["run", "--oneshot", "--config"])
        .arg(&config)
        .arg(&log)
        .output()
        .expect("runs weir");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = transitions(&String::from_utf8_lossy(&out.stderr));
    assert_incident_alerts(&got);
    assert!(hook.received().is_empty());
    let exposition = String::from_utf8_lossy(&out.stdout);
    for rule in [
        "AgentTaskFailures",
        "QueueBacklog",
        "SlowTasks",
        "ComponentSilent",
    ] {
        assert!(
            exposition.contains(&format!(
                "weir_alert_transitions_total{{rule=\"{rule}\",state=\"firing\"}} 1"
            )),
            "{rule}: {exposition}"
        );
    }

    // With --notify: the same alerts, sent.
    let out = weir()
        .args(["run", "--oneshot", "--notify", "--config"])
        .arg(&config)
        .arg(&log)
        .output()
        .expect("runs weir");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logged = transitions(&String::from_utf8_lossy(&out.stderr));
    assert_eq!(logged, got, "a backfill is deterministic");
    let docs = hook.received();
    let sent: Vec<(String, String)> = docs
        .iter()
        .map(|d| {
            (
                d["rule"].as_str().unwrap().to_string(),
                d["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = got
        .iter()
        .filter(|t| t.1 == "firing" || t.1 == "resolved")
        .map(|t| (t.0.clone(), t.1.clone()))
        .collect();
    assert_eq!(sent, expected);
    // One document in full: the failure burst's alert.
    let (_, _, _, fired_at, value) = got
        .iter()
        .find(|t| t.0 == "AgentTaskFailures" && t.1 == "firing")
        .unwrap()
        .clone();
    let doc = docs
        .iter()
        .find(|d| d["rule"] == "AgentTaskFailures" && d["status"] == "firing")
        .unwrap();
    let triggered = jiff::Timestamp::from_second(START + fired_at)
        .unwrap()
        .to_string();
    let mut expected = json!({
        "status": "firing",
        "rule": "AgentTaskFailures",
        "severity": "critical",
        "message": format!("agent-07: {value} failed tasks in the last 5 minutes"),
        "description": "More than 5 tasks of agent-07 failed within 5 minutes.",
        "triggered_at": triggered,
        "resolved_at": null,
        "metric_name": "agent_task_failure_total",
        "current_value": value,
        "threshold_value": 5.0,
        "labels": {"agent_id": "agent-07"},
        "link": null,
    });
    expected["fingerprint"] = doc["fingerprint"].clone();
    assert_eq!(doc, &expected);
    assert_eq!(doc["fingerprint"].as_str().unwrap().len(), 16);
    let resolved = docs
        .iter()
        .find(|d| d["rule"] == "AgentTaskFailures" && d["status"] == "resolved")
        .unwrap();
    assert_eq!(resolved["fingerprint"], doc["fingerprint"]);
    assert_eq!(resolved["triggered_at"], doc["triggered_at"]);
}

/// A notifier that never answers holds up nothing: every line is processed, and weir exits
/// after its shutdown timeout with the notifications counted as not sent.
#[test]
fn a_hung_notifier_does_not_hold_up_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let log = incidents_file(dir.path(), 115_000);
    let hook = webhook::start();
    hook.hang();
    let config = dir.path().join("agents.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[notifiers.hook]\ntype = \"webhook\"\nurl = \"{}/hook\"\n",
            default_pipeline(),
            hook.url()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = weir()
        .args([
            "run",
            "--oneshot",
            "--notify",
            "--shutdown-timeout-secs",
            "2",
            "--config",
        ])
        .arg(&config)
        .arg(&log)
        .output()
        .expect("runs weir");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not a timing target: only that weir does not wait on the notifier's 30 s timeout (or
    // forever) once its shutdown timeout has passed.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let exposition = String::from_utf8_lossy(&out.stdout);
    assert!(
        exposition.contains("weir_events_total{source=\""),
        "{exposition}"
    );
    let events: f64 = exposition
        .lines()
        .filter(|l| l.starts_with("weir_events_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(events, 115_000.0);
    assert!(
        exposition
            .contains("weir_alert_notifications_total{notifier=\"hook\",result=\"dropped\"} 8"),
        "{exposition}"
    );
    assert!(!exposition.contains("result=\"sent\"} 1"), "{exposition}");
}

const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GETs `url`: the status, and the body as JSON (`Null` if it is not).
fn get_json(url: &str) -> Option<(u16, Value)> {
    let (status, body) = http_get(url, &[])?;
    Some((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

/// Starts Alertmanager on 127.0.0.1 with a receiver that drops everything.
fn start_alertmanager(dir: &Path) -> Option<(Killed, String)> {
    if !Path::new(ALERTMANAGER).exists() {
        assert!(
            std::env::var("CI").is_err(),
            "prometheus-alertmanager is required in CI (apt-get install -y prometheus-alertmanager)"
        );
        // Past libtest's capture, so the skip shows in `cargo test`'s output.
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "SKIPPED: {ALERTMANAGER} not installed");
        return None;
    }
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        "route:\n  receiver: 'null'\n  group_wait: 1s\nreceivers:\n  - name: 'null'\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("am-data")).unwrap();
    let port = free_port();
    let child = Command::new(ALERTMANAGER)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("am-data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("alertmanager.log")).unwrap())
        .spawn()
        .expect("starts alertmanager");
    let am = Killed(child);
    let base = format!("http://127.0.0.1:{port}");
    wait_for(
        Duration::from_secs(30),
        || get_json(&format!("{base}/-/ready")).filter(|(status, _)| *status == 200),
        || "alertmanager not ready after 30 s".into(),
    );
    Some((am, base))
}

/// The pipeline of the live test: the default pipeline's metrics and its four alerts, with
/// windows and durations in seconds instead of minutes so a test can watch them.
fn live_pipeline(am: &str) -> String {
    let metrics = default_pipeline();
    let metrics = &metrics[..metrics
        .find("[[alerts]]")
        .expect("the default pipeline has alerts")];
    format!(
        r#"{metrics}
[[alerts]]
name = "AgentTaskFailures"
expr = "count(agent_task_failure_total) by (agent_id) over 10s > 5"
severity = "critical"

[[alerts]]
name = "QueueBacklog"
expr = "agent_queue_depth > 100 for 2s"

[[alerts]]
name = "SlowTasks"
expr = "p95(agent_task_duration_seconds) by () over 10s > 60 for 2s"

[[alerts]]
name = "ComponentSilent"
expr = "absent(exists(component)) by (component) for 3s"
severity = "critical"

[notifiers.am]
type = "alertmanager"
url = "{am}"
"#
    )
}

fn line(component: &str, message: &str, level: &str, metadata: Value) -> String {
    json!({
        "timestamp": jiff::Timestamp::now().to_string(),
        "level": level, "component": component, "message": message,
        "trace_id": uuid::Uuid::new_v4().to_string(), "metadata": metadata,
    })
    .to_string()
}

/// Alert names Alertmanager lists as active, with their identifying label.
fn active(base: &str) -> BTreeSet<(String, String)> {
    let (_, v) = get_json(&format!("{base}/api/v2/alerts")).expect("alertmanager answers");
    v.as_array()
        .expect("an array")
        .iter()
        .filter(|a| a["status"]["state"] == "active")
        .map(|a| {
            let labels = &a["labels"];
            let id = ["agent_id", "queue_name", "component"]
                .iter()
                .find_map(|k| labels[*k].as_str().map(|v| format!("{k}={v}")))
                .unwrap_or_default();
            (labels["alertname"].as_str().unwrap_or("").to_string(), id)
        })
        .collect()
}

/// Live, on the wall clock: logs of an incident make weir fire the seed system's four alerts
/// into a real Alertmanager (`GET /api/v2/alerts`) and list them on `/alerts`; quiet logs
/// resolve them there.
#[test]
fn live_alerts_reach_a_real_alertmanager_and_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_am, base)) = start_alertmanager(dir.path()) else {
        return;
    };
    let config = dir.path().join("live.toml");
    std::fs::write(&config, live_pipeline(&base)).unwrap();
    let mut child = weir()
        .args(["run", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let addr = loop {
        let l = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("weir starts");
        let v: Value = serde_json::from_str(&l).unwrap_or_default();
        if v["fields"]["message"] == "serving /metrics" {
            break v["fields"]["addr"].as_str().unwrap().to_string();
        }
    };
    let mut input = child.stdin.take().unwrap();
    let mut weir_proc = Killed(child);
    let expected: BTreeSet<(String, String)> = [
        ("AgentTaskFailures", "agent_id=agent-07"),
        ("ComponentSilent", "component=SlackGateway"),
        ("QueueBacklog", "queue_name=retries"),
        ("SlowTasks", ""),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();

    // The incident: agent-07 fails slow tasks, `retries` backs up, SlackGateway says one
    // thing and then nothing.
    let mut write = |lines: &[String]| {
        for l in lines {
            writeln!(input, "{l}").unwrap();
        }
        input.flush().unwrap();
    };
    write(&[line(
        "SlackGateway",
        "Slack message sent",
        "INFO",
        json!({"channel": "#ops"}),
    )]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        write(&[
            line(
                "AgentOrchestrator",
                "Task completed",
                "ERROR",
                json!({"agent_id": "agent-07", "status": "failure", "duration": 90.0, "error_type": "TimeoutError"}),
            ),
            line(
                "SchedulerService",
                "Queue depth",
                "DEBUG",
                json!({"queue_name": "retries", "depth": 180}),
            ),
        ]);
        if active(&base) == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Alertmanager lists {:?}, expected {expected:?}",
            active(&base)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // weir's own view agrees.
    let (_, view) = get_json(&format!("http://{addr}/alerts")).expect("weir answers");
    let firing: BTreeSet<String> = view["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] == "firing")
        .map(|a| a["rule"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(firing.len(), 4, "{view:#}");

    // Quiet again: successes, short tasks, a short queue, SlackGateway back.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut batch = vec![
            line(
                "SlackGateway",
                "Slack message sent",
                "INFO",
                json!({"channel": "#ops"}),
            ),
            line(
                "SchedulerService",
                "Queue depth",
                "DEBUG",
                json!({"queue_name": "retries", "depth": 3}),
            ),
        ];
        for _ in 0..20 {
            batch.push(line(
                "AgentOrchestrator",
                "Task completed",
                "INFO",
                json!({"agent_id": "agent-01", "status": "success", "duration": 0.5}),
            ));
        }
        write(&batch);
        if active(&base).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still active in Alertmanager: {:?}",
            active(&base)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(input);
    let status = weir_proc.0.wait().unwrap();
    assert!(status.success());
    let resolved: Vec<String> = rx
        .try_iter()
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .filter(|v| v["fields"]["message"] == "alert resolved")
        .map(|v| v["fields"]["rule"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(resolved.len(), 4, "{resolved:?}");
}

/// `weir generate prometheus-rules` on the default pipeline: Prometheus accepts the file, and
/// it holds the three rules Prometheus can express (absence of log events it cannot).
#[test]
fn generated_prometheus_rules_pass_promtool() {
    if !have_tool("promtool") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("alerts.yml");
    let out = weir()
        .args(["generate", "prometheus-rules", "-o"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{said}");
    assert!(said.contains("SUCCESS: 3 rules found"), "{said}");
    let text = std::fs::read_to_string(&rules).unwrap();
    assert!(text.contains("ComponentSilent"), "{text}");
}

/// `weir validate` counts the alerts, and refuses a bad one with its place.
#[test]
fn validate_checks_alert_rules() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, default_pipeline()).unwrap();
    let out = weir()
        .args(["validate", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(4 metrics, 4 alerts, 0 notifiers)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        default_pipeline().replace(
            "count(agent_task_failure_total) by (agent_id) over 5m > 5",
            "count(agent_task_failures_total) by (agent_id) over 5m > 5",
        ),
    )
    .unwrap();
    let out = weir()
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown metric \"agent_task_failures_total\""),
        "{err}"
    );
    assert!(
        err.contains("did you mean \"agent_task_failure_total\"?"),
        "{err}"
    );
}

/// Live state survives a restart (`--data-dir`): the firing alert is listed again at once and
/// not notified a second time; the restored window still resolves it later.
#[test]
fn a_firing_alert_survives_a_restart_without_a_second_notification() {
    let dir = tempfile::tempdir().unwrap();
    let hook = webhook::start();
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[metrics]]
name = "fail_total"
kind = "counter"
when = 'message == "fail"'
labels = {{ agent = "agent" }}

[[alerts]]
name = "Failures"
expr = "count(fail_total) by (agent) over 8s > 2"

[notifiers.hook]
type = "webhook"
url = "{}/hook"
"#,
            hook.url()
        ),
    )
    .unwrap();
    let data = dir.path().join("data").display().to_string();
    let config_arg = config.display().to_string();
    let args = ["--config", config_arg.as_str(), "--data-dir", data.as_str()];
    let firing = |h: &webhook::WebhookReceiver| {
        h.received()
            .iter()
            .filter(|d| d["status"] == "firing")
            .count()
    };
    let mut first = crate::util::spawn_weir(&args);
    {
        let input = first.child.stdin.as_mut().unwrap();
        for _ in 0..3 {
            writeln!(input, "{}", json!({"message": "fail", "agent": "a"})).unwrap();
        }
        input.flush().unwrap();
    }
    wait_for(
        Duration::from_secs(20),
        || (firing(&hook) == 1).then_some(()),
        || format!("never notified: {:?}", hook.received()),
    );
    // SIGTERM: the state is saved on the way out.
    assert!(Command::new("kill")
        .args(["-TERM", &first.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(first.child.wait().unwrap().success());
    assert!(dir.path().join("data/alerts/state.json").exists());

    let second = crate::util::spawn_weir(&args);
    let (_, view) = get_json(&format!("http://{}/alerts", second.addr)).unwrap();
    let listed = || {
        get_json(&format!("http://{}/alerts", second.addr))
            .map(|(_, v)| v["alerts"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default()
    };
    // Listed as firing once the first second is evaluated, with the original start.
    let alerts = wait_for(
        Duration::from_secs(10),
        || Some(listed()).filter(|a| !a.is_empty()),
        || format!("not restored: {view}"),
    );
    assert_eq!(alerts[0]["state"], "firing", "{alerts:?}");
    assert_eq!(alerts[0]["labels"]["agent"], "a");
    // Not notified again; and once the 8 s window has passed, resolved (the window came back
    // with the state: without it the count would be 0 at once).
    wait_for(
        Duration::from_secs(30),
        || {
            hook.received()
                .iter()
                .any(|d| d["status"] == "resolved")
                .then_some(())
        },
        || format!("never resolved: {:?}", hook.received()),
    );
    assert_eq!(firing(&hook), 1, "{:?}", hook.received());
}

/// A reload that points the notifier elsewhere: the alert that fires after it goes to the new
/// receiver; the old one hears nothing; the reload says the notifiers were replaced.
#[test]
fn a_reload_sends_later_alerts_to_the_changed_notifier() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (webhook::start(), webhook::start());
    let config = dir.path().join("p.toml");
    let pipeline = |url: String| {
        format!(
            r#"
[[metrics]]
name = "fail_total"
kind = "counter"
when = 'message == "fail"'

[[alerts]]
name = "Failures"
expr = "count(fail_total) over 1m > 2"

[notifiers.hook]
type = "webhook"
url = "{url}/hook"
"#
        )
    };
    std::fs::write(&config, pipeline(old.url())).unwrap();
    let config_arg = config.display().to_string();
    let mut w = crate::util::spawn_weir(&["--config", config_arg.as_str()]);
    std::fs::write(&config, pipeline(new.url())).unwrap();
    let (status, body) = crate::util::post(&w.admin, "/-/reload");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("notifiers replaced"), "{body}");
    {
        let input = w.child.stdin.as_mut().unwrap();
        for _ in 0..3 {
            writeln!(input, "{}", json!({"message": "fail"})).unwrap();
        }
        input.flush().unwrap();
    }
    let got = wait_for(
        Duration::from_secs(20),
        || {
            let r = new.received();
            (!r.is_empty()).then_some(r)
        },
        || "the new receiver was never notified".into(),
    );
    assert_eq!(got[0]["status"], "firing");
    assert_eq!(got[0]["rule"], "Failures", "{got:?}");
    drop(w.child.stdin.take());
    assert!(w.child.wait().unwrap().success());
    assert!(old.received().is_empty(), "{:?}", old.received());
}
