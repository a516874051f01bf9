//! Lines that are not JSON, through the real binary: per-source `parser`s on file sources
//! (regex for an nginx access log, logfmt for logrus, the pipeline's JSON for the rest), and a
//! Python text log with tracebacks joined by `--multiline python`. Expected values are
//! computed here from the fixtures, independently of weir's parsers.

use std::collections::BTreeMap;
use std::path::Path;

use crate::util::{key, parse_exposition, temp_file, weir};

fn fixture(rel: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines/examples/fixtures")
        .join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn each_source_is_read_with_its_own_parser() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nginx = fixture("nginx/access.log");
    let logrus = fixture("logfmt/app.log");
    let access = temp_file(dir.path(), "access.log", &nginx);
    let api = temp_file(dir.path(), "api.log", &logrus);
    let json = temp_file(
        dir.path(),
        "app.json.log",
        b"{\"time\":\"2024-01-01T00:00:00Z\",\"status\":503,\"method\":\"GET\"}\nlevel=info status=200\n",
    );
    let pipeline = format!(
        r#"
[[sources]]
type = "file"
paths = ["{access}"]
parser = {{ format = "regex", pattern = '^\S+ \S+ \S+ \[(?P<timestamp>[^\]]+)\] "(?P<method>[A-Z]+) [^"]*" (?P<status>\d{{3}}) ', types = {{ status = "int" }} }}

[[sources]]
type = "file"
paths = ["{api}"]
parser = {{ format = "logfmt" }}

[[sources]]
type = "file"
paths = ["{json}"]

[[metrics]]
name = "http_requests_total"
kind = "counter"
when = 'exists(status)'
labels = {{ status = "status", method = "method" }}
"#,
        access = access.display(),
        api = api.display(),
        json = json.display(),
    );
    let cfg = temp_file(dir.path(), "p.toml", pipeline.as_bytes());
    let out = weir()
        .args(["run", "--oneshot", "--progress", "never", "--config"])
        .arg(&cfg)
        .output()
        .expect("run weir");
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Independently: nginx lines with a METHOD (the garbage request line has none), logrus
    // lines with a status, and the one JSON line (its logfmt-looking neighbour is not JSON).
    let mut want: BTreeMap<(String, String), f64> = BTreeMap::new();
    let request = regex::Regex::new(r#"\] "([A-Z]+) [^"]*" (\d{3}) "#).expect("regex");
    let mut nginx_unmatched = 0.0;
    for l in text(&nginx).lines() {
        match request.captures(l) {
            Some(c) => {
                *want
                    .entry((c[2].to_string(), c[1].to_string()))
                    .or_default() += 1.0
            }
            None => nginx_unmatched += 1.0,
        }
    }
    for l in text(&logrus).lines() {
        let field = |k: &str| {
            l.split(' ')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
        };
        if let Some(s) = field("status") {
            *want
                .entry((s, field("method").unwrap_or_default()))
                .or_default() += 1.0;
        }
    }
    *want.entry(("503".into(), "GET".into())).or_default() += 1.0;
    assert_eq!(
        nginx_unmatched, 1.0,
        "the fixture has one garbage request line"
    );

    let got = parse_exposition(&text(&out.stdout));
    let derived: BTreeMap<(String, String), f64> = got
        .iter()
        .filter(|((name, _), _)| name == "http_requests_total")
        .map(|((_, l), v)| ((l["status"].clone(), l["method"].clone()), *v))
        .collect();
    assert_eq!(derived, want);
    let reason = |r: &str| got[&key("weir_parse_errors_total", &[("reason", r)])];
    assert_eq!(reason("regex_no_match"), nginx_unmatched);
    assert_eq!(reason("invalid_logfmt"), 0.0);
    assert_eq!(
        reason("invalid_json"),
        1.0,
        "the logfmt line in the JSON source"
    );
}

#[test]
fn python_text_logs_with_tracebacks_joined() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = weir()
        .current_dir(root)
        .args([
            "run",
            "--oneshot",
            "--progress",
            "never",
            "--multiline",
            "python",
        ])
        .args(["--config", "pipelines/examples/python-text.toml"])
        .arg("pipelines/examples/fixtures/python-text/app.log")
        .output()
        .expect("run weir");
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    // 18 lines, of which the 5 after `payment failed` are its traceback.
    let log = text(&fixture("python-text/app.log"));
    let heads = log
        .lines()
        .filter(|l| l.as_bytes().first().is_some_and(u8::is_ascii_digit))
        .count();
    assert_eq!((log.lines().count(), heads), (18, 13));
    assert!(
        err.lines()
            .any(|l| l == "weir: 18 lines, 13 events; no parse problems"),
        "{err}"
    );
    let got = parse_exposition(&text(&out.stdout));
    let lines = |level: &str, logger: &str| {
        got[&key(
            "app_log_lines_total",
            &[("level", level), ("logger", logger)],
        )]
    };
    assert_eq!(lines("ERROR", "billing"), 1.0, "the exception, joined");
    assert_eq!(lines("INFO", "billing.http"), 5.0);
}
