//! Rule evaluation with a controlled clock: event streams with chosen timestamps go through the
//! real processor (parse → derive → windows) on the event clock, and each rule kind must fire
//! and resolve at exactly the second its definition says.

use std::collections::BTreeMap;

use serde_json::json;

use super::engine::{Clock, Engine, Transition};
use crate::config::PipelineConfig;
use crate::processor::Processor;
use crate::source::LineBatch;
use crate::telemetry::SelfMetrics;

/// 2024-01-01T00:00:00Z.
const T0: i64 = 1_704_067_200;

const METRICS: &str = r#"
[[metrics]]
name = "fail_total"
kind = "counter"
when = 'message == "fail"'
labels = { agent = "agent" }

[[metrics]]
name = "ok_total"
kind = "counter"
when = 'message == "ok"'
labels = { agent = "agent" }

[[metrics]]
name = "depth"
kind = "gauge"
when = 'exists(depth)'
value = "depth"
labels = { queue = "queue" }

[[metrics]]
name = "dur_seconds"
kind = "histogram"
when = 'exists(dur)'
value = "dur"
buckets = [1, 5, 10]
"#;

fn at(sec: i64, fields: serde_json::Value) -> String {
    let mut v = fields;
    let ts = jiff::Timestamp::from_second(T0 + sec).unwrap().to_string();
    v["timestamp"] = ts.into();
    v.to_string()
}

fn pipeline(alerts: &str) -> String {
    format!("{METRICS}\n{alerts}")
}

/// Runs `lines` through a backfill (event clock) and returns the transitions, with `at` made
/// relative to T0.
fn backfill(text: &str, lines: &[String]) -> Vec<(String, &'static str, String, i64)> {
    let selfm = SelfMetrics::new();
    let p = PipelineConfig::parse("t.toml", text)
        .unwrap()
        .compile("t.toml", text, &selfm)
        .unwrap_or_else(|e| panic!("{e}"));
    let engine = Engine::new(p.rules, &selfm)
        .with_clock(Clock::Event)
        .recording();
    let mut proc = Processor::new(p.parser, p.deriver, selfm).with_alerts(engine);
    let mut batch = LineBatch::new("test".into());
    for l in lines {
        batch.push(l.as_bytes(), false, None);
    }
    proc.process(&batch);
    proc.finish_alerts();
    let engine = proc.into_alerts().unwrap();
    engine
        .history()
        .iter()
        .map(|t: &Transition| {
            let labels: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            (t.rule.clone(), t.state, labels.join(","), t.at - T0)
        })
        .collect()
}

fn tr(
    rule: &str,
    state: &'static str,
    labels: &str,
    at: i64,
) -> (String, &'static str, String, i64) {
    (rule.to_string(), state, labels.to_string(), at)
}

#[test]
fn count_over_a_window_fires_and_resolves_on_the_exact_seconds() {
    let text = pipeline(
        r#"
[[alerts]]
name = "Failures"
expr = "count(fail_total) by (agent) over 60s > 2"
"#,
    );
    // b fails twice only: never over 2.
    let lines: Vec<String> = [(0, "a"), (5, "b"), (10, "a"), (20, "a"), (25, "b")]
        .into_iter()
        .map(|(t, agent)| at(t, json!({"message": "fail", "agent": agent})))
        .chain([at(200, json!({"message": "tick"}))])
        .collect();
    // The third failure (second 20) makes 3 > 2; the first leaves the 60 s window
    // (seconds 1..=60) at second 60.
    assert_eq!(
        backfill(&text, &lines),
        [
            tr("Failures", "firing", "agent=a", 20),
            tr("Failures", "resolved", "agent=a", 60)
        ]
    );
}

#[test]
fn gauge_held_for_a_duration() {
    let text = pipeline(
        r#"
[[alerts]]
name = "Backlog"
expr = "depth > 100 for 2m"
"#,
    );
    let lines = vec![
        at(0, json!({"depth": 150, "queue": "a"})),
        at(0, json!({"depth": 150, "queue": "b"})),
        at(30, json!({"depth": 160, "queue": "a"})),
        at(60, json!({"depth": 50, "queue": "b"})),
        at(100, json!({"depth": 170, "queue": "a"})),
        at(119, json!({"depth": 150, "queue": "a"})),
        at(125, json!({"depth": 150, "queue": "a"})),
        at(200, json!({"depth": 50, "queue": "a"})),
        at(201, json!({"message": "tick"})),
    ];
    assert_eq!(
        backfill(&text, &lines),
        [
            tr("Backlog", "pending", "queue=a", 0),
            tr("Backlog", "pending", "queue=b", 0),
            // b dropped back before its 2 minutes: never fired, never notified.
            tr("Backlog", "inactive", "queue=b", 60),
            tr("Backlog", "firing", "queue=a", 120),
            tr("Backlog", "resolved", "queue=a", 200),
        ]
    );
}

#[test]
fn quantile_over_a_window_held_for_a_duration() {
    let text = pipeline(
        r#"
[[alerts]]
name = "Slow"
expr = "p95(dur_seconds) by () over 60s > 10 for 30s"
"#,
    );
    // One task per second: 1 s until 99, 20 s from 100 to 199, 1 s again until 400.
    let lines: Vec<String> = (0..400)
        .map(|t| {
            at(
                t,
                json!({"dur": if (100..200).contains(&t) { 20.0 } else { 1.0 }}),
            )
        })
        .collect();
    // p95 of 60 values is the 57th smallest: over 10 once 4 slow values are in the window
    // (second 103); held 30 s → fires at 133. After 199 slow values leave; fewer than 4 remain
    // from second 256.
    assert_eq!(
        backfill(&text, &lines),
        [
            tr("Slow", "pending", "", 103),
            tr("Slow", "firing", "", 133),
            tr("Slow", "resolved", "", 256),
        ]
    );
}

#[test]
fn absence_of_matching_events() {
    let text = pipeline(
        r#"
[[alerts]]
name = "SchedulerSilent"
expr = 'absent(component == "Sched") for 60s'

[[alerts]]
name = "ComponentSilent"
expr = "absent(exists(component)) by (component) for 100s"
"#,
    );
    let mut lines = vec![];
    for t in (0..=300).step_by(10) {
        lines.push(at(t, json!({"component": "Bus"})));
        if t <= 30 || t >= 150 {
            lines.push(at(t, json!({"component": "Sched"})));
        }
    }
    // Sched last seen at 30: silent for 60 s at 90; back at 150. The grouped rule needs 100 s:
    // 30 + 100 = 130, resolved at 150 too. Bus never stops.
    assert_eq!(
        backfill(&text, &lines),
        [
            tr("SchedulerSilent", "firing", "", 90),
            tr("ComponentSilent", "firing", "component=Sched", 130),
            tr("SchedulerSilent", "resolved", "", 150),
            tr("ComponentSilent", "resolved", "component=Sched", 150),
        ]
    );
}

#[test]
fn absence_without_any_event_counts_from_the_start() {
    let text = pipeline(
        r#"
[[alerts]]
name = "SchedulerSilent"
expr = 'absent(component == "Sched") for 60s'
"#,
    );
    let lines: Vec<String> = (0..=100)
        .step_by(20)
        .map(|t| at(t, json!({"component": "Bus"})))
        .collect();
    assert_eq!(
        backfill(&text, &lines),
        [tr("SchedulerSilent", "firing", "", 60)]
    );
}

#[test]
fn ratio_of_failures_over_a_window() {
    let text = pipeline(
        r#"
[[alerts]]
name = "FailureRatio"
expr = "count(fail_total) / (count(ok_total) + count(fail_total)) by (agent) over 60s > 0.5"
"#,
    );
    let mut lines = vec![];
    // a: ok at 0 and 1, then fails at 10, 11, 12 → 3/5 > 0.5 at 12. The oks leave the window
    // at 60 and 61 (then 3/3): still over. The fails leave at 70..72: at 70, 2/2 = 1.0; at 72
    // nothing is left: 0/0 has no value → resolved at 72.
    for t in [0, 1] {
        lines.push(at(t, json!({"message": "ok", "agent": "a"})));
    }
    for t in [10, 11, 12] {
        lines.push(at(t, json!({"message": "fail", "agent": "a"})));
    }
    // b: one failure among successes before and after it: at most 1/3, never.
    for t in 20..25 {
        lines.push(at(t, json!({"message": "ok", "agent": "b"})));
    }
    lines.push(at(25, json!({"message": "fail", "agent": "b"})));
    for t in [26, 27] {
        lines.push(at(t, json!({"message": "ok", "agent": "b"})));
    }
    lines.push(at(500, json!({"message": "tick"})));
    assert_eq!(
        backfill(&text, &lines),
        [
            tr("FailureRatio", "firing", "agent=a", 12),
            tr("FailureRatio", "resolved", "agent=a", 72),
        ]
    );
}

#[test]
fn repeat_interval_while_firing() {
    let text = pipeline(
        r#"
[[alerts]]
name = "Backlog"
expr = "depth > 100"
repeat_interval = "30s"
"#,
    );
    let mut lines: Vec<String> = (0..=70)
        .step_by(5)
        .map(|t| at(t, json!({"depth": 150, "queue": "a"})))
        .collect();
    lines.push(at(80, json!({"depth": 10, "queue": "a"})));
    assert_eq!(
        backfill(&text, &lines),
        [
            tr("Backlog", "firing", "queue=a", 0),
            tr("Backlog", "repeat", "queue=a", 30),
            tr("Backlog", "repeat", "queue=a", 60),
            tr("Backlog", "resolved", "queue=a", 80),
        ]
    );
}

#[test]
fn a_gap_in_the_events_is_evaluated_second_by_second() {
    // Failures at 0..=2, then nothing until an hour later: the window empties at 60 even though
    // no event arrives then.
    let text = pipeline(
        r#"
[[alerts]]
name = "Failures"
expr = "count(fail_total) by (agent) over 60s > 2"
"#,
    );
    let mut lines: Vec<String> = (0..=2)
        .map(|t| at(t, json!({"message": "fail", "agent": "a"})))
        .collect();
    lines.push(at(3600, json!({"message": "fail", "agent": "a"})));
    assert_eq!(
        backfill(&text, &lines),
        [
            tr("Failures", "firing", "agent=a", 2),
            tr("Failures", "resolved", "agent=a", 60)
        ]
    );
}

#[test]
fn lines_without_a_timestamp_do_not_move_the_clock() {
    let text = pipeline(
        r#"
[[alerts]]
name = "Failures"
expr = "count(fail_total) by (agent) over 60s > 2"
"#,
    );
    let mut lines: Vec<String> = (0..=2)
        .map(|t| at(t, json!({"message": "fail", "agent": "a"})))
        .collect();
    // Today's arrival time would jump the clock years ahead and resolve at once.
    lines.push(json!({"message": "no time here"}).to_string());
    lines.push("not json".into());
    lines.push(at(10, json!({"message": "tick"})));
    assert_eq!(
        backfill(&text, &lines),
        [tr("Failures", "firing", "agent=a", 2)]
    );
}

/// Live state survives a restart: the restored firing alert is not announced again, and the
/// window keeps its counts.
#[test]
fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerts").join("state.json");
    let text = pipeline(
        r#"
[[alerts]]
name = "Failures"
expr = "count(fail_total) by (agent) over 60s > 2"
"#,
    );
    let now = T0 + 1000;
    let start = |feed_events: &[i64]| {
        let selfm = SelfMetrics::new();
        let mut p = PipelineConfig::parse("t.toml", &text)
            .unwrap()
            .compile("t.toml", &text, &selfm)
            .unwrap();
        let mut engine = Engine::new(p.rules, &selfm)
            .recording()
            .with_state(path.clone(), &mut p.deriver.feed);
        engine.start(&mut p.deriver.feed, now);
        for &t in feed_events {
            let line = json!({"message": "fail", "agent": "a"}).to_string();
            let ev = p.parser.parse(&line, 0, &mut |_| {});
            p.deriver.feed.now = t;
            p.deriver.apply(&ev, 0);
        }
        (engine, p.deriver, selfm)
    };
    let (mut e1, mut d1, _) = start(&[now - 10, now - 5, now]);
    e1.evaluate(&mut d1.feed, now);
    assert_eq!(e1.history().len(), 1, "{:?}", e1.history());
    e1.save(&d1.feed);
    drop(e1);

    let (mut e2, mut d2, selfm) = start(&[]);
    e2.evaluate(&mut d2.feed, now + 1);
    assert!(e2.history().is_empty(), "{:?}", e2.history());
    let firing = selfm
        .alerts_firing
        .with_label_values(&["Failures", "warning"])
        .get();
    assert_eq!(firing, 1);
    // The restored window: the failure at now-10 leaves at now+50.
    e2.evaluate(&mut d2.feed, now + 50);
    assert_eq!(e2.history().len(), 1);
    assert_eq!(e2.history()[0].state, "resolved");
    assert_eq!(e2.history()[0].at, now + 50);
    assert!(e2.view().read().unwrap().is_empty());
}

/// A damaged state file (garbage, or cut in half by a full disk) does not stop the engine: it
/// starts with every alert inactive, the file is moved aside and counted, never a panic.
#[test]
fn a_corrupt_state_file_starts_afresh_and_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerts").join("state.json");
    let text = pipeline(
        r#"
[[alerts]]
name = "Failures"
expr = "count(fail_total) by (agent) over 60s > 2"
"#,
    );
    let now = T0 + 1000;
    let start = || {
        let selfm = SelfMetrics::new();
        let mut p = PipelineConfig::parse("t.toml", &text)
            .unwrap()
            .compile("t.toml", &text, &selfm)
            .unwrap();
        let mut engine = Engine::new(p.rules, &selfm)
            .recording()
            .with_state(path.clone(), &mut p.deriver.feed);
        engine.start(&mut p.deriver.feed, now);
        (engine, p.deriver, p.parser, selfm)
    };
    // A real state file to damage.
    let (mut e1, mut d1, parser, _) = start();
    for t in [now - 10, now - 5, now] {
        let line = json!({"message": "fail", "agent": "a"}).to_string();
        let ev = parser.parse(&line, 0, &mut |_| {});
        d1.feed.now = t;
        d1.apply(&ev, 0);
    }
    e1.evaluate(&mut d1.feed, now);
    e1.save(&d1.feed);
    let good = std::fs::read(&path).unwrap();
    assert!(good.len() > 10);
    let counter = crate::telemetry::state_metrics()
        .state_unreadable
        .with_label_values(&["alert_state"]);
    for damaged in [
        b"\x00\xffgarbage{".to_vec(),
        good[..good.len() / 2].to_vec(),
        Vec::new(),
    ] {
        std::fs::write(&path, &damaged).unwrap();
        let before = counter.get();
        let (mut e2, mut d2, _, selfm) = start();
        e2.evaluate(&mut d2.feed, now + 1);
        assert!(e2.history().is_empty(), "{:?}", e2.history());
        let firing = selfm
            .alerts_firing
            .with_label_values(&["Failures", "warning"])
            .get();
        assert_eq!(firing, 0, "started afresh");
        assert_eq!(counter.get(), before + 1);
        assert_eq!(
            std::fs::read(path.with_extension("json.corrupt")).unwrap(),
            damaged
        );
    }
    // Well-formed but hostile: counts at u64::MAX in slots given twice. No overflow panic.
    fn hostile(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if k == "count" {
                        *x = json!(u64::MAX);
                    } else {
                        hostile(x);
                    }
                }
                if let Some(serde_json::Value::Array(a)) = m.get_mut("slots") {
                    let copy = a.clone();
                    a.extend(copy);
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(hostile),
            _ => {}
        }
    }
    let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
    hostile(&mut v);
    assert!(v.to_string().contains(&u64::MAX.to_string()), "{v}");
    std::fs::write(&path, v.to_string()).unwrap();
    let (mut e3, mut d3, _, _) = start();
    e3.evaluate(&mut d3.feed, now + 1);
}

#[test]
fn alerts_view_lists_pending_and_firing() {
    let text = pipeline(
        r#"
[[alerts]]
name = "Backlog"
expr = "depth > 100 for 1m"
severity = "critical"
summary = "{{ $labels.queue }} at {{ $value }}"
labels = { team = "agents" }
"#,
    );
    let selfm = SelfMetrics::new();
    let mut p = PipelineConfig::parse("t.toml", &text)
        .unwrap()
        .compile("t.toml", &text, &selfm)
        .unwrap();
    let mut engine = Engine::new(p.rules, &selfm);
    let view = engine.view();
    engine.start(&mut p.deriver.feed, T0);
    let line = json!({"depth": 130, "queue": "q1"}).to_string();
    let ev = p.parser.parse(&line, 0, &mut |_| {});
    p.deriver.feed.now = T0;
    p.deriver.apply(&ev, 0);
    engine.evaluate(&mut p.deriver.feed, T0);
    let v = view.read().unwrap().clone();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].state, "pending");
    assert_eq!(v[0].summary, "q1 at 130");
    assert_eq!(
        v[0].labels,
        BTreeMap::from([
            ("queue".to_string(), "q1".to_string()),
            ("team".to_string(), "agents".to_string())
        ])
    );
    engine.evaluate(&mut p.deriver.feed, T0 + 60);
    let v = view.read().unwrap().clone();
    assert_eq!(v[0].state, "firing");
    assert_eq!(v[0].firing_since.as_deref(), Some("2024-01-01T00:01:00Z"));
    assert_eq!(
        selfm
            .alerts_firing
            .with_label_values(&["Backlog", "critical"])
            .get(),
        1
    );
}

/// A bad rule is refused with the file, line, column and what was expected.
#[test]
fn bad_rules_are_rejected_with_their_place() {
    let cases = [
        (
            r#"expr = "count(fail_totl) by (agent) over 5m > 5""#,
            "unknown metric \"fail_totl\"",
            "did you mean \"fail_total\"?",
        ),
        (
            r#"expr = "p95(depth) over 5m > 5""#,
            "quantiles need a histogram",
            "depth is a gauge",
        ),
        (
            r#"expr = "count(fail_total) by (queue) over 5m > 5""#,
            "has no label \"queue\"",
            "its labels: agent",
        ),
        (
            r#"expr = "count(fail_total) > 5""#,
            "needs a window",
            "over 5m",
        ),
        (
            r#"expr = "fail_total > 5""#,
            "is a counter",
            "count(fail_total)",
        ),
        (
            "expr = \"depth > 5\"\nnotify = [\"slak\"]",
            "unknown notifier \"slak\"",
            "did you mean \"slack\"?",
        ),
        (
            "expr = \"depth > 5\"\nsummary = \"{{ $labels.agent }}\"",
            "uses $labels.agent",
            "labels are: queue",
        ),
        (
            "expr = \"depth > 5\"\nrepeat_interval = \"often\"",
            "repeat_interval",
            "",
        ),
    ];
    for (body, want1, want2) in cases {
        let text = format!(
            "{METRICS}\n[notifiers.slack]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\n\n[[alerts]]\nname = \"X\"\n{body}\n"
        );
        let selfm = SelfMetrics::new();
        let err = match PipelineConfig::parse("p.toml", &text)
            .and_then(|c| c.compile("p.toml", &text, &selfm))
        {
            Ok(_) => panic!("accepted: {body}"),
            Err(e) => e.to_string(),
        };
        assert!(err.starts_with("p.toml:"), "{err}");
        assert!(err.contains(want1), "{body}\n→ {err}");
        assert!(err.contains(want2), "{body}\n→ {err}");
    }
}

#[test]
fn expression_syntax_errors_point_at_the_column() {
    let text =
        format!("{METRICS}\n[[alerts]]\nname = \"X\"\nexpr = \"count(fail_total) over 5 > 1\"\n");
    let selfm = SelfMetrics::new();
    let err = PipelineConfig::parse("p.toml", &text)
        .unwrap()
        .compile("p.toml", &text, &selfm)
        .err()
        .unwrap()
        .to_string();
    let line = text.lines().position(|l| l.starts_with("expr")).unwrap() + 1;
    // `5` is at column 32 of the TOML line: 8 for `expr = "`, 23 for `count(fail_total) over `.
    assert!(
        err.starts_with(&format!(
            "p.toml:{line}:32: invalid alert expression: expected a duration"
        )),
        "{err}"
    );
}

#[test]
fn the_default_pipeline_compiles_its_four_alerts() {
    let selfm = SelfMetrics::new();
    let p = crate::config::load(None, &selfm).unwrap();
    let names: Vec<&str> = p.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "AgentTaskFailures",
            "QueueBacklog",
            "SlowTasks",
            "ComponentSilent"
        ]
    );
}
