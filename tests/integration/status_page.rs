//! The status page `/` in a real headless browser (Debian's `chromium`): weir is fed a known
//! stream, and once `/metrics` counts all of it the page, run by the browser, shows the same
//! numbers — events and lines per source, parse problems per reason, series of a derived
//! histogram, the Loki sink's deliveries, the alerts `/alerts` lists (one fires). The public
//! listener's page holds no raw input line; the admin one shows each parse problem's first line.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{get, have_tool, key, scrape_when_processed, spawn_weir, weir};

/// The DOM after the page's scripts ran, as chromium dumps it.
fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=5000", "--dump-dom", url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chromium");
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().expect("wait chromium").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s on {url}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("chromium output");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium on {url}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// The text of the element with this id (a table cell: no markup inside).
fn text_of(dom: &str, id: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let rest = &dom[at..];
    let start = rest.find('>')? + 1;
    let end = rest[start..].find('<')?;
    Some(rest[start..start + end].to_string())
}

fn shown(dom: &str, id: &str) -> String {
    text_of(dom, id).unwrap_or_else(|| panic!("no element #{id} in the page:\n{dom}"))
}

#[test]
fn status_page_shows_what_metrics_says() {
    if !have_tool("chromium") {
        return;
    }
    // 3 minutes of the log's clock: agent-07's failures (from 2:00) fire AgentTaskFailures,
    // which stays firing for the 5 minutes of its window on weir's clock.
    const LINES: usize = 10_000;
    let out = weir()
        .args(["generate", "demo-logs", "--incidents", "--seed", "16"])
        .args(["--malformed-rate", "0.02", "-n", &LINES.to_string()])
        .output()
        .expect("run weir generate");
    assert!(out.status.success(), "{out:?}");
    let corpus = out.stdout;
    // A sink, so that the page's sinks table has a row to check (the receiver is written from
    // Loki's push API spec, tests/support/loki.rs).
    // The demo lines are of 2024: accept any age.
    let rx = crate::support::loki::LokiReceiver::start_with(crate::support::loki::LokiLimits {
        reject_old_samples_max_age: None,
        unordered_writes: true,
        ..Default::default()
    });
    let mut w = spawn_weir(&["--loki", &rx.url()]);
    let input = w.child.stdin.as_mut().expect("stdin");
    input.write_all(&corpus).expect("write");
    input.flush().expect("flush");
    // stdin stays open: weir keeps running, and nothing more comes in, so the numbers hold.
    let mut metrics = scrape_when_processed(&w.addr, LINES as f64);
    // And every event delivered.
    let events = metrics[&key("weir_events_total", &[("source", "stdin")])];
    let delivered = key("weir_sink_events_total", &[("sink", "loki")]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics.get(&delivered) != Some(&events) {
        assert!(
            Instant::now() < deadline,
            "loki delivered {:?} of {events}",
            metrics.get(&delivered)
        );
        std::thread::sleep(Duration::from_millis(100));
        metrics = crate::util::parse_exposition(&get(&w.addr, "/metrics").1);
    }
    // Alerts are evaluated on a timer: wait for the firing one.
    let deadline = Instant::now() + Duration::from_secs(30);
    let alerts = loop {
        let (_, body) = get(&w.addr, "/alerts");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let firing = v["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["rule"] == "AgentTaskFailures" && a["state"] == "firing");
        if firing {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "AgentTaskFailures does not fire: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (status, doc) = get(&w.addr, "/status.json");
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc).expect("JSON");
    assert_eq!(doc["listener"], "public");
    assert_eq!(
        doc["samples"],
        serde_json::json!({}),
        "samples on the public listener"
    );
    let (status, doc) = get(&w.admin, "/status.json");
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc).expect("JSON");
    assert_eq!(doc["listener"], "admin");
    let samples = doc["samples"].as_object().expect("samples").clone();

    let n = |v: f64| format!("{}", v as u64);
    // Loki stores an entry once per stream, timestamp and line (the demo repeats a few).
    assert_eq!(
        (rx.entries().len() + rx.duplicates()) as f64,
        events,
        "entries the Loki receiver got"
    );
    let lines = metrics[&key("weir_lines_total", &[("source", "stdin")])];
    let problems: BTreeMap<String, f64> = metrics
        .iter()
        .filter(|(k, v)| k.0 == "weir_parse_errors_total" && **v > 0.0)
        .map(|(k, v)| (k.1["reason"].clone(), *v))
        .collect();
    assert!(!problems.is_empty(), "the corpus has malformed lines");
    let duration_series: BTreeSet<&BTreeMap<String, String>> = metrics
        .keys()
        .filter(|k| k.0 == "agent_task_duration_seconds_count")
        .map(|k| &k.1)
        .collect();
    assert!(!duration_series.is_empty());
    let rules: BTreeSet<String> = alerts["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|a| a["rule"].as_str().expect("rule").to_string())
        .collect();
    assert!(rules.contains("AgentTaskFailures"), "{alerts}");

    let public = dump_dom(&format!("http://{}/", w.addr));
    let admin = dump_dom(&format!("http://{}/", w.admin));
    for (name, dom) in [("public", &public), ("admin", &admin)] {
        assert_eq!(shown(dom, "source-events-stdin"), n(events), "{name}");
        assert_eq!(shown(dom, "source-lines-stdin"), n(lines), "{name}");
        // Several polls within the browser's time budget, nothing new in between: a rate of 0.
        assert_eq!(shown(dom, "source-events-rate-stdin"), "0.0", "{name}");
        for (reason, count) in &problems {
            assert_eq!(
                shown(dom, &format!("problem-{reason}")),
                n(*count),
                "{name}"
            );
        }
        assert_eq!(
            shown(dom, "series-agent_task_duration_seconds"),
            duration_series.len().to_string(),
            "{name}"
        );
        // The sink: delivered as /metrics says, none retried, held, dead-lettered or dropped.
        assert_eq!(shown(dom, "sink-events-loki"), n(events), "{name}");
        for id in ["retries", "buffered", "dead", "dropped"] {
            assert_eq!(shown(dom, &format!("sink-{id}-loki")), "0", "{name}: {id}");
        }
        for rule in &rules {
            assert!(
                dom.contains(&format!("<td class=\"alert-rule\">{rule}</td>")),
                "{name}: alert {rule} not shown"
            );
        }
        assert!(
            dom.contains("<td class=\"left\">agent_id=agent-07</td>"),
            "{name}"
        );
        assert_eq!(
            dom.matches("<td class=\"firing left\">firing</td>").count(),
            alerts["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["state"] == "firing")
                .count(),
            "{name}"
        );
        assert!(dom.contains("href=\"metrics\""), "{name}");
        assert!(dom.contains("href=\"alerts\""), "{name}");
    }
    // /stats is linked only where it is served.
    assert!(public.contains("id=\"stats-link\" href=\"stats\" hidden"));
    assert!(admin.contains("id=\"stats-link\" href=\"stats\">"));
    assert!(public.contains("sample lines: admin listener only"));
    assert!(
        !public.contains("id=\"sample-"),
        "sample lines on the public page"
    );

    // The admin page shows each parse problem's first line, a line of the input.
    let corpus_text = String::from_utf8_lossy(&corpus).to_string();
    assert!(
        samples.contains_key("invalid_json"),
        "no invalid_json sample: {samples:?}"
    );
    for (reason, sample) in &samples {
        assert!(
            problems.contains_key(reason),
            "a sample for {reason}, not counted"
        );
        let shown = shown(&admin, &format!("sample-{reason}"))
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&");
        assert_eq!(shown, sample["line"].as_str().expect("line"), "{reason}");
        let head = shown.trim_end_matches('…');
        assert!(
            corpus_text.lines().any(|l| l.starts_with(head)),
            "the {reason} sample is not an input line: {shown}"
        );
    }

    // No raw input line on the public listener (malformed ones included).
    for line in String::from_utf8_lossy(&corpus).lines() {
        let line = line.trim();
        if line.len() >= 16 {
            assert!(
                !public.contains(line),
                "a raw line on the public page: {line}"
            );
        }
    }

    drop(w.child.stdin.take());
    assert!(w.child.wait().expect("wait").success());
}
