//! Unit tests of `weir test`: series keys, comparisons, reports, located errors, warnings.

use std::path::Path;

use super::expect::*;
use super::series::*;
use super::*;
use crate::event::Level;
use serde_json::Value as Json;

fn key(name: &str, labels: &[(&str, &str)]) -> SeriesKey {
    SeriesKey {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn key_err(src: &str) -> String {
    SeriesKey::parse(src).unwrap_err().to_string()
}

#[test]
fn series_keys_parse() {
    assert_eq!(SeriesKey::parse("up").unwrap(), key("up", &[]));
    assert_eq!(SeriesKey::parse("a:b_c{}").unwrap(), key("a:b_c", &[]));
    assert_eq!(
        SeriesKey::parse(r#"x_total{agent_id="agent-07", error_type="TimeoutError",}"#).unwrap(),
        key(
            "x_total",
            &[("agent_id", "agent-07"), ("error_type", "TimeoutError")]
        )
    );
    assert_eq!(
        SeriesKey::parse(r#"x{a="q\"uo\\te\nnl",b=""}"#).unwrap(),
        key("x", &[("a", "q\"uo\\te\nnl"), ("b", "")])
    );
    // Values may hold anything but an unescaped quote, including `}` and `,`.
    assert_eq!(
        SeriesKey::parse(r#"x{a="},{é"}"#).unwrap(),
        key("x", &[("a", "},{é")])
    );
}

#[test]
fn series_keys_round_trip_through_display() {
    for src in [
        "up",
        r#"x_total{agent_id="agent-07",error_type="TimeoutError"}"#,
        r#"x{a="q\"uo\\te\nnl"}"#,
    ] {
        assert_eq!(SeriesKey::parse(src).unwrap().to_string(), src);
    }
    assert_eq!(
        SeriesKey::parse("x{ a = \"1\" }").unwrap().to_string(),
        "x{a=\"1\"}"
    );
    assert_eq!(SeriesKey::parse("x{}").unwrap().to_string(), "x");
}

#[test]
fn series_key_errors_point_at_the_column() {
    assert_eq!(key_err(""), "at column 1: expected a metric name");
    assert_eq!(key_err("9x"), "at column 1: expected a metric name");
    assert_eq!(
        key_err("x y"),
        "at column 2: expected `{` or the end of the series"
    );
    assert_eq!(
        key_err("x{a=1}"),
        "at column 5: expected a label value in double quotes"
    );
    assert_eq!(key_err("x{a}"), "at column 4: expected `=`");
    assert_eq!(
        key_err("x{=\"1\"}"),
        "at column 3: expected a label name or `}`"
    );
    assert_eq!(key_err("x{a=\"1"), "at column 7: expected a closing `\"`");
    assert_eq!(
        key_err("x{a=\"1\" b=\"2\"}"),
        "at column 9: expected `,` or `}`"
    );
    assert_eq!(
        key_err("x{a=\"1\",a=\"2\"}"),
        "at column 9: expected each label once"
    );
    assert_eq!(
        key_err("x{a=\"\\t\"}"),
        "at column 7: expected `\\\\`, `\\\"` or `n` after `\\`"
    );
    assert_eq!(
        key_err("x{a=\"1\"}z"),
        "at column 9: expected the end of the series"
    );
    assert_eq!(key_err("é{a=\"1\"}"), "at column 1: expected a metric name");
}

#[test]
fn numbers_are_written_as_prometheus_does() {
    assert_eq!(number(3.0), "3");
    assert_eq!(number(0.0), "0");
    assert_eq!(number(-2.0), "-2");
    assert_eq!(number(2.5), "2.5");
    assert_eq!(number(0.1), "0.1");
    assert_eq!(number(f64::INFINITY), "+Inf");
    assert!(same_number(0.1 + 0.2, 0.3));
    assert!(!same_number(1.0, 1.001));
    assert!(same_number(1e12 + 1e-4, 1e12));
    assert_eq!(parse_le("+Inf"), Some(f64::INFINITY));
    assert_eq!(parse_le("2.5"), Some(2.5));
    assert_eq!(parse_le("x"), None);
}

#[test]
fn json_values_compare_numbers_as_numbers() {
    use serde_json::json;
    assert!(json_eq(&json!(1), &json!(1.0)));
    assert!(json_eq(&json!({"a": [1, "x"]}), &json!({"a": [1.0, "x"]})));
    assert!(!json_eq(&json!("1"), &json!(1)));
    assert!(!json_eq(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
    let v = json!({"metadata": {"agent_id": "a"}, "log.level": "warn", "n": null});
    assert_eq!(lookup(&v, "metadata.agent_id"), Some(&json!("a")));
    assert_eq!(lookup(&v, "log.level"), Some(&json!("warn")));
    assert_eq!(lookup(&v, "metadata.nope"), None);
    assert_eq!(lookup(&v, "n"), Some(&Json::Null));
}

#[test]
fn expected_fields_are_checked() {
    assert_eq!(
        expected_field(
            "timestamp",
            &toml::Value::String("2024-01-01T00:00:01Z".into())
        ),
        Ok(Expected::Timestamp(1_704_067_201_000_000_000))
    );
    assert!(expected_field("timestamp", &toml::Value::String("soon".into())).is_err());
    assert_eq!(
        expected_field("level", &toml::Value::String("warn".into())),
        Ok(Expected::Level(Level::Warning))
    );
    assert_eq!(
        expected_field("level", &toml::Value::String("loud".into())),
        Err("a level: one of UNKNOWN, TRACE, DEBUG, INFO, NOTICE, WARNING, ERROR, CRITICAL".into())
    );
    assert_eq!(
        expected_field("metadata.n", &toml::Value::Integer(3)),
        Ok(Expected::Json(serde_json::json!(3)))
    );
}

const PIPELINE: &str = r#"
[[metrics]]
name = "fail_total"
kind = "counter"
when = 'message == "fail"'
labels = { agent = "agent" }

[[metrics]]
name = "dur_seconds"
kind = "histogram"
when = 'exists(dur)'
value = "dur"
labels = { agent = "agent" }
buckets = [1, 5]

[[alerts]]
name = "Failures"
expr = "count(fail_total) by (agent) over 60s > 1"
labels = { team = "agents" }
"#;

fn run(tests: &str) -> Result<String, String> {
    let text = format!("{PIPELINE}\n{tests}");
    run_text("p.toml", &text, Path::new(""))
        .map(|r| r.to_string())
        .map_err(|e| e.to_string())
}

#[test]
fn a_file_without_tests() {
    assert_eq!(run("").unwrap(), "p.toml: no tests\n");
}

#[test]
fn passing_and_failing_expectations_are_reported_in_file_order() {
    let report = run(r#"
[[tests]]
name = "all good"
input = [
  '{"timestamp":"2024-01-01T00:00:00Z","message":"fail","agent":"a","dur":2}',
  '{"timestamp":"2024-01-01T00:00:10Z","message":"fail","agent":"a","dur":0.5,"trace_id":"t-2"}',
]
[tests.expect.metrics]
'fail_total{agent="a"}' = 2
fail_total = 2
'dur_seconds_bucket{agent="a",le="1.0"}' = 1
'dur_seconds_bucket{le="+Inf"}' = 2
dur_seconds_sum = 2.5
[[tests.expect.events]]
line = 1
timestamp = 2024-01-01T00:00:10Z
level = "unknown"
trace_id = "t-2"
dur = 0.5
[[tests.expect.alerts]]
rule = "Failures"
labels = { agent = "a" }
state = "firing"

[[tests]]
name = "all wrong"
input = ['{"timestamp":"2024-01-01T00:00:00Z","message":"fail","agent":"a","level":"warn"}']
[tests.expect.metrics]
'fail_total{agent="b"}' = 1
'fail_total{agent="a"}' = 3
[[tests.expect.events]]
line = 0
level = "ERROR"
metadata.x = "y"
[[tests.expect.alerts]]
rule = "Failures"
state = "fired"
"#)
    .unwrap();
    assert_eq!(
        report,
        "p.toml: 2 tests\n\
         \x20 ok    all good\n\
         \x20 FAIL  all wrong\n\
         \x20       metric fail_total{agent=\"b\"}: expected 1, got no such series (has: fail_total{agent=\"a\"} = 1)\n\
         \x20       metric fail_total{agent=\"a\"}: expected 3, got 1\n\
         \x20       event 0 level: expected \"ERROR\", got \"WARNING\"\n\
         \x20       event 0 metadata.x: expected \"y\", got nothing\n\
         \x20       alert Failures: expected fired, got not fired\n\
         1 passed, 1 failed\n"
    );
}

#[test]
fn alert_failures_list_what_fired() {
    let report = run(r#"
[[tests]]
name = "a burst of b"
input = [
  '{"timestamp":"2024-01-01T00:00:00Z","message":"fail","agent":"b"}',
  '{"timestamp":"2024-01-01T00:00:01Z","message":"fail","agent":"b"}',
]
[[tests.expect.alerts]]
rule = "Failures"
labels = { agent = "a" }
state = "fired"
[[tests.expect.alerts]]
rule = "Failures"
state = "not_fired"
"#)
    .unwrap();
    assert!(
        report.contains(
            "        alert Failures{agent=\"a\"}: expected fired, got not fired (fired: Failures{agent=\"b\"})\n\
             \x20       alert Failures: expected not fired, got fired (fired: Failures{agent=\"b\"})\n"
        ),
        "{report}"
    );
}

#[test]
fn invalid_tests_are_located() {
    let e = |tests: &str| run(tests).unwrap_err();
    let err = e("[[tests]]\nname = \"t\"\n");
    assert!(
        err.starts_with("p.toml:22:8: test \"t\": no input"),
        "{err}"
    );
    let err = e("[[tests]]\nname = \"t\"\ninput = []\ninput_file = \"x.log\"\n");
    assert!(
        err.starts_with("p.toml:24:14: test \"t\": give `input` or `input_file`, not both"),
        "{err}"
    );
    let err = e("[[tests]]\nname = \"t\"\ninput_file = \"no/such.log\"\n");
    assert!(
        err.starts_with("p.toml:23:14: test \"t\": cannot read input_file no/such.log"),
        "{err}"
    );
    let err = e("[[tests]]\nname = \"t\"\ninput = []\n[tests.expect.metrics]\n'fail_total{agent=\"a\" x=\"\"}' = 1\n");
    assert!(
        err.starts_with("p.toml:25:23: test \"t\": invalid series \"fail_total{agent=\\\"a\\\" x=\\\"\\\"}\": expected `,` or `}`"),
        "{err}"
    );
    let err = e("[[tests]]\nname = \"t\"\ninput = []\n[tests.expect.metrics]\nnope = 1\n");
    assert!(
        err.starts_with("p.toml:25:1: test \"t\": no metric \"nope\" in this pipeline (its series: fail_total, dur_seconds_count/_sum/_bucket)"),
        "{err}"
    );
    let err = e("[[tests]]\nname = \"t\"\ninput = []\n[tests.expect.metrics]\n'fail_total{agnt=\"a\"}' = 1\n");
    assert!(
        err.contains("metric \"fail_total\" has no label \"agnt\" (its labels: agent)"),
        "{err}"
    );
    let err = e("[[tests]]\nname = \"t\"\ninput = []\n[tests.expect.metrics]\ndur_seconds = 1\n");
    assert!(
        err.contains("\"dur_seconds\" is a histogram: name one of its series, dur_seconds_count"),
        "{err}"
    );
    let err = e("[[tests]]\nname = \"t\"\ninput = []\n[tests.expect.metrics]\n'dur_seconds_bucket{le=\"2\"}' = 1\n");
    assert!(
        err.contains("le=\"2\" is not a bucket of \"dur_seconds\"; its buckets: 1, 5, +Inf"),
        "{err}"
    );
    let err = e("[[tests]]\nname = \"t\"\ninput = ['{}']\n[[tests.expect.events]]\nline = 1\n");
    assert!(
        err.starts_with("p.toml:25:8: test \"t\": line 1 is past the input, which has 1 line (`line` counts from 0)"),
        "{err}"
    );
    let err = e("[[tests]]\nname = \"t\"\ninput = []\n[[tests.expect.alerts]]\nrule = \"Failure\"\nstate = \"fired\"\n");
    assert!(
        err.starts_with("p.toml:25:8: test \"t\": no alert rule \"Failure\" in this pipeline (its rules: Failures)"),
        "{err}"
    );
    let err = e("[[tests]]\nname = \"t\"\ninput = []\n[[tests.expect.alerts]]\nrule = \"Failures\"\nlabels = { team = \"agents\" }\nstate = \"fired\"\n");
    assert!(
        err.contains(
            "rule \"Failures\" groups its alerts by (agent): `labels` must give exactly these"
        ),
        "{err}"
    );
    let err = e("[[tests]]\nname = \"t\"\ninput = []\n[[tests.expect.alerts]]\nrule = \"Failures\"\nstate = \"fird\"\n");
    assert!(
        err.contains("unknown variant `fird`, expected one of `fired`, `firing`, `not_fired`"),
        "{err}"
    );
    let err = e("[[tests]]\nname = \"t\"\ninput = []\nexpct = {}\n");
    assert!(
        err.starts_with("p.toml:24:1: unknown field `expct`"),
        "{err}"
    );
}

#[test]
fn fields_no_test_input_has_are_warned_about() {
    let report = run(r#"
[[tests]]
name = "no agent, no duration"
input = ['{"message":"fail"}']
"#)
    .unwrap();
    assert!(
        report.ends_with(
            "1 passed, 0 failed\n\
             warning: metric \"fail_total\" uses field agent, which no test input has\n\
             warning: metric \"dur_seconds\" uses field dur, which no test input has\n\
             warning: metric \"dur_seconds\" uses field agent, which no test input has\n"
        ),
        "{report}"
    );
}
