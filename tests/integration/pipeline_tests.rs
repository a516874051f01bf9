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

/// Every pipeline in `pipelines/examples/`, in name order (paths relative to the crate).
fn example_pipelines() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/examples");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".toml"))
        .map(|n| format!("pipelines/examples/{n}"))
        .collect();
    names.sort();
    names
}

#[test]
fn the_example_pipelines_pass_their_tests() {
    let files = example_pipelines();
    assert!(
        files.len() >= 8,
        "pipelines/examples/ should hold the example pipelines, has {files:?}"
    );
    let refs: Vec<&str> = files.iter().map(String::as_str).collect();
    let out = weir_test(Path::new(env!("CARGO_MANIFEST_DIR")), &refs);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    // Each file reports its tests; an example without tests, or whose fixture is empty, fails.
    for f in &files {
        let header = text
            .lines()
            .find(|l| l.starts_with(&format!("{f}: ")))
            .unwrap_or_else(|| panic!("no report for {f}:\n{text}"));
        assert!(
            header.ends_with(" test") || header.ends_with(" tests"),
            "{header}\n\n{text}"
        );
    }
    let results: Vec<&str> = text.lines().filter(|l| l.starts_with("  ")).collect();
    assert!(results.len() >= files.len(), "{text}");
    for line in results {
        assert!(line.starts_with("  ok    "), "{line}\n\n{text}");
    }
}

/// `weir test` feeds the parser lines without a source, so the CRI framing of the Kubernetes
/// example (P partials, the path's namespace/pod/container) is checked here, through the file
/// source, on the fixture conmon wrote.
#[test]
fn the_kubernetes_cri_example_reads_its_fixture() {
    use crate::util::{key, parse_exposition};
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixture = "pipelines/examples/fixtures/kubernetes-cri/\
                   shop_api-7c9d8f6b5-x2k4q_3f2b1c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d/api/0.log";
    let out = weir()
        .current_dir(root)
        .args([
            "run",
            "--oneshot",
            "--progress",
            "never",
            "--format",
            "cri",
            "--config",
        ])
        .arg("pipelines/examples/kubernetes-cri.toml")
        .arg(fixture)
        .output()
        .expect("run weir");
    assert!(out.status.success(), "{}", stderr(&out));
    let m = parse_exposition(&stdout(&out));
    let pod = [
        ("container", "api"),
        ("namespace", "shop"),
        ("pod", "api-7c9d8f6b5-x2k4q"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut l = pod.to_vec();
        l.extend_from_slice(extra);
        l
    };
    let ns = [("container", "api"), ("namespace", "shop")];
    let mut want = vec![
        (
            key(
                "http_requests_total",
                &with(&[("method", "GET"), ("status", "200")]),
            ),
            3.0,
        ),
        (
            key(
                "http_requests_total",
                &with(&[("method", "GET"), ("status", "500")]),
            ),
            1.0,
        ),
        (
            key(
                "http_requests_total",
                &with(&[("method", "POST"), ("status", "201")]),
            ),
            1.0,
        ),
        (
            key(
                "http_requests_total",
                &with(&[("method", "POST"), ("status", "422")]),
            ),
            1.0,
        ),
        (key("http_request_duration_seconds_count", &ns), 6.0),
        // The 9 KB warning came as a P entry and an F entry: counted once, as one JSON line.
        (
            key(
                "container_log_problems_total",
                &with(&[("level", "WARNING")]),
            ),
            1.0,
        ),
        (
            key("container_log_problems_total", &with(&[("level", "ERROR")])),
            1.0,
        ),
        // The two lines of a Python warning on stderr are joined (multiline python) into one
        // event; it is not JSON: kept, counted, seen only by the metric with include_unparsed.
        (key("container_stderr_events_total", &pod), 1.0),
        (
            key("weir_parse_errors_total", &[("reason", "invalid_json")]),
            1.0,
        ),
        (
            key("weir_parse_errors_total", &[("reason", "invalid_envelope")]),
            0.0,
        ),
        // 12 entries: one P joined to its F, the warning's two lines joined.
        (key("weir_events_total", &[("source", fixture)]), 10.0),
    ];
    for (le, n) in [
        ("0.01", 1.0),
        ("0.05", 4.0),
        ("0.25", 5.0),
        ("0.5", 5.0),
        ("1", 6.0),
    ] {
        let mut l = ns.to_vec();
        l.push(("le", le));
        want.push((key("http_request_duration_seconds_bucket", &l), n));
    }
    for (k, v) in &want {
        assert_eq!(m.get(k), Some(v), "{k:?}\n\n{}", stdout(&out));
    }
    let sum = m[&key("http_request_duration_seconds_sum", &ns)];
    assert!((sum - 0.757).abs() < 1e-9, "sum {sum}");
    let series = |name: &str| m.keys().filter(|(n, _)| n == name).count();
    assert_eq!(series("http_requests_total"), 4);
    assert_eq!(series("container_log_problems_total"), 2);
}
