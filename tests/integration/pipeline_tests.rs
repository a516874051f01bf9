//! `weir test`: the tests carried in pipeline files, run by the real binary.

use std::path::Path;
use std::process::Output;

use crate::util::{temp_file, weir};

/// Runs `weir test --config FILES...` in `dir`, so the report names files as given.
fn weir_test(dir: &Path, files: &[&str]) -> Output {
    weir()
        .current_dir(dir)
        .arg("test")
        .arg("--config")
        .args(files)
        .output()
        .expect("run weir test")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn the_shipped_pipelines_pass_their_tests() {
    let out = weir_test(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &["pipelines/agents.toml", "pipelines/paired.toml"],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.starts_with("pipelines/agents.toml: "), "{text}");
    assert!(text.contains("\npipelines/paired.toml: 1 test\n"), "{text}");
    let results: Vec<&str> = text.lines().filter(|l| l.starts_with("  ")).collect();
    assert!(results.len() >= 8, "{text}");
    for line in results {
        assert!(line.starts_with("  ok    "), "{line}\n\n{text}");
    }
    assert!(!text.contains("warning:"), "{text}");
}

const FAILING: &str = r#"
[[metrics]]
name = "jobs_failed_total"
kind = "counter"
when = 'message == "job failed"'
labels = { queue = "queue" }

[[metrics]]
name = "job_seconds"
kind = "histogram"
when = 'exists(seconds)'
value = "seconds"
buckets = [1, 10]

[[alerts]]
name = "JobFailures"
expr = "count(jobs_failed_total) by (queue) over 1m > 1"

[[alerts]]
name = "SlowJobs"
expr = "p95(job_seconds) by () over 1m > 5"

[[tests]]
name = "failures are counted per queue"
input = [
  '{"timestamp":"2024-01-01T00:00:00Z","level":"error","message":"job failed","queue":"mail"}',
  '{"timestamp":"2024-01-01T00:00:10Z","level":"error","message":"job failed","queue":"mail"}',
]
[tests.expect.metrics]
'jobs_failed_total{queue="mail"}' = 2
[[tests.expect.alerts]]
rule = "JobFailures"
labels = { queue = "mail" }
state = "fired"

[[tests]]
name = "wrong on purpose"
input_file = "fixtures/jobs.log"
[tests.expect.metrics]
'jobs_failed_total{queue="mail"}' = 3
'job_seconds_count' = 2
[[tests.expect.events]]
line = 0
level = "ERROR"
seconds = 2
[[tests.expect.alerts]]
rule = "SlowJobs"
state = "fired"
"#;

const JOBS_LOG: &str = concat!(
    r#"{"timestamp":"2024-01-01T00:00:00Z","level":"info","message":"job done","seconds":1.5}"#,
    "\n",
    r#"{"timestamp":"2024-01-01T00:00:05Z","level":"error","message":"job failed","queue":"sms"}"#,
    "\n",
    r#"{"timestamp":"2024-01-01T00:00:06Z","level":"error","message":"job failed","queue":"sms"}"#,
    "\n",
);

#[test]
fn a_failing_test_prints_what_differs_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("fixtures")).unwrap();
    temp_file(dir.path(), "fixtures/jobs.log", JOBS_LOG.as_bytes());
    temp_file(dir.path(), "failing.toml", FAILING.as_bytes());
    let out = weir_test(dir.path(), &["failing.toml"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        r#"failing.toml: 2 tests
  ok    failures are counted per queue
  FAIL  wrong on purpose
        metric jobs_failed_total{queue="mail"}: expected 3, got no such series (has: jobs_failed_total{queue="sms"} = 2)
        metric job_seconds_count: expected 2, got 1
        event 0 level: expected "ERROR", got "INFO"
        event 0 seconds: expected 2, got 1.5
        alert SlowJobs{}: expected fired, got not fired (fired: JobFailures{queue="sms"})
1 passed, 1 failed
"#
    );
    assert_eq!(stderr(&out), "");
}

#[test]
fn an_invalid_test_is_a_located_config_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("fixtures")).unwrap();
    temp_file(dir.path(), "fixtures/jobs.log", JOBS_LOG.as_bytes());
    let bad = FAILING.replace("rule = \"SlowJobs\"", "rule = \"SlowJob\"");
    temp_file(dir.path(), "bad.toml", bad.as_bytes());
    let out = weir_test(dir.path(), &["bad.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with(
            "error: bad.toml:47:8: test \"wrong on purpose\": no alert rule \"SlowJob\" in this pipeline (its rules: JobFailures, SlowJobs)\n"
        ),
        "{err}"
    );
    assert!(err.contains("47 | rule = \"SlowJob\"\n"), "{err}");

    // A series of a metric the pipeline lacks; a file that is not there.
    let bad = FAILING.replace("'job_seconds_count' = 2", "'job_second_count' = 2");
    temp_file(dir.path(), "bad.toml", bad.as_bytes());
    let err = stderr(&weir_test(dir.path(), &["bad.toml"]));
    assert!(
        err.starts_with("error: bad.toml:41:2: test \"wrong on purpose\": no metric \"job_second_count\" in this pipeline"),
        "{err}"
    );
    let out = weir_test(dir.path(), &["missing.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("error: cannot read pipeline file missing.toml: "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_field_no_test_input_has_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[[metrics]]
name = "bytes_sent_total"
kind = "counter"
when = 'message == "sent"'
value = "metadata.bytes"
labels = { peer = "metadata.peer" }

[[tests]]
name = "a send is counted"
input = ['{"message":"sent","metadata":{"bytes":10,"peers":"a"}}']
[tests.expect.metrics]
bytes_sent_total = 10
"#;
    temp_file(dir.path(), "warn.toml", text.as_bytes());
    let out = weir_test(dir.path(), &["warn.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "warn.toml: 1 test\n  ok    a send is counted\n1 passed, 0 failed\n\
         warning: metric \"bytes_sent_total\" uses field metadata.peer, which no test input has (did you mean metadata.peers?)\n"
    );
}

#[test]
fn a_pipeline_without_tests() {
    let dir = tempfile::tempdir().unwrap();
    temp_file(
        dir.path(),
        "none.toml",
        b"[[metrics]]\nname = \"a_total\"\nkind = \"counter\"\n",
    );
    let out = weir_test(dir.path(), &["none.toml"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "none.toml: no tests\n");
}
