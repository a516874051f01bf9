//! Container log formats through the file source: the Docker json-file and CRI fixtures (with
//! lines the runtime split, and one broken envelope each), read with `--format docker|cri|auto`.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::*;

const DOCKER_ID: &str = "4f2a9c1e7b3d5f608a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef";

fn docker_fixture() -> String {
    format!(
        "{}/tests/fixtures/docker/{DOCKER_ID}/{DOCKER_ID}-json.log",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn cri_fixture() -> String {
    format!(
        "{}/tests/fixtures/cri/default_web-7d4b9c_0f1e2d3c-aaaa-bbbb-cccc-111122223333/app/0.log",
        env!("CARGO_MANIFEST_DIR")
    )
}

const PIPELINE: &str = r#"
[[metrics]]
name = "lines_total"
kind = "counter"
include_unparsed = true   # every application line, text ones too
labels = { level = "level", stream = "stream", container_id = "container_id", namespace = "namespace", pod = "pod", container = "container" }
"#;

/// Runs `weir run --oneshot --format FORMAT FILE` and returns the exposition.
fn oneshot(format: &str, file: &str) -> std::collections::BTreeMap<Key, f64> {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = temp_file(dir.path(), "p.toml", PIPELINE.as_bytes());
    let out = weir()
        .args(["run", "--oneshot", "--format", format, "--config"])
        .arg(&p)
        .arg(file)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_exposition(&String::from_utf8(out.stdout).expect("utf-8"))
}

/// The application lines weir passes through (`--stdout`) when tailing the file.
fn passthrough(format: &str, file: &str, want: usize) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = weir()
        .args([
            "run",
            "--stdout",
            "--listen",
            "127.0.0.1:0",
            "--format",
            format,
            "--data-dir",
        ])
        .arg(dir.path())
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    while lines.len() < want && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            lines.push(l);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

fn sum(m: &std::collections::BTreeMap<Key, f64>, name: &str, label: &str, value: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.0 == name && k.1.get(label).map(String::as_str) == Some(value))
        .map(|(_, v)| v)
        .sum()
}

/// Docker json-file: 11 entries are 8 application lines (one of 40,000 bytes joined from three
/// 16 KiB parts, with a stderr entry between them) plus one broken envelope, kept and counted.
/// `stream` and the container id from the path become fields; levels come from the inner JSON.
#[test]
fn docker_json_file_lines_are_unwrapped_and_joined() {
    for format in ["docker", "auto"] {
        let m = oneshot(format, &docker_fixture());
        assert_eq!(
            m[&key("weir_events_total", &[("source", &docker_fixture())])],
            9.0,
            "{format}"
        );
        assert_eq!(
            m[&key("weir_parse_errors_total", &[("reason", "invalid_envelope")])],
            1.0
        );
        assert_eq!(sum(&m, "lines_total", "stream", "stdout"), 6.0, "{format}");
        assert_eq!(sum(&m, "lines_total", "stream", "stderr"), 2.0, "{format}");
        assert_eq!(
            sum(&m, "lines_total", "container_id", DOCKER_ID),
            8.0,
            "{format}"
        );
        assert_eq!(sum(&m, "lines_total", "level", "INFO"), 4.0, "{format}");
        assert_eq!(sum(&m, "lines_total", "level", "ERROR"), 1.0, "{format}");
    }
    let lines = passthrough("docker", &docker_fixture(), 9);
    assert_eq!(lines.len(), 9);
    let joined = lines
        .iter()
        .find(|l| l.contains("ContextBuilder"))
        .expect("the split line");
    assert_eq!(joined.len(), 40_000, "the three parts joined back exactly");
    let v: serde_json::Value = serde_json::from_str(joined).expect("the joined line is JSON again");
    assert_eq!(v["level"], "INFO");
}

/// CRI: `P` partials joined until `F`; namespace, pod and container from the pod log path.
#[test]
fn cri_lines_are_unwrapped_and_partials_joined() {
    let m = oneshot("cri", &cri_fixture());
    assert_eq!(
        m[&key("weir_events_total", &[("source", &cri_fixture())])],
        8.0
    );
    assert_eq!(
        m[&key("weir_parse_errors_total", &[("reason", "invalid_envelope")])],
        1.0
    );
    assert_eq!(sum(&m, "lines_total", "stream", "stdout"), 5.0);
    assert_eq!(sum(&m, "lines_total", "stream", "stderr"), 2.0);
    assert_eq!(sum(&m, "lines_total", "namespace", "default"), 7.0);
    assert_eq!(sum(&m, "lines_total", "pod", "web-7d4b9c"), 7.0);
    assert_eq!(sum(&m, "lines_total", "container", "app"), 7.0);
    assert_eq!(sum(&m, "lines_total", "level", "INFO"), 4.0);
    let lines = passthrough("cri", &cri_fixture(), 8);
    let joined = lines
        .iter()
        .find(|l| l.contains("ContextBuilder"))
        .expect("the split line");
    assert_eq!(joined.len(), 40_000);
    serde_json::from_str::<serde_json::Value>(joined).expect("the joined line is JSON again");
}
