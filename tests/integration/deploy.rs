//! The deployment kit, checked by real tools (no Docker engine, no cluster):
//! - `promtool` and `amtool` on the shipped Prometheus and Alertmanager files, and
//!   `config/prometheus/alerts.yml` equal to what `weir generate prometheus-rules` writes;
//! - every PromQL expression of every dashboard (the shipped ones and `weir generate
//!   grafana-dashboard`) parsed by `promtool` as a recording rule, and every metric it names
//!   present in a live weir's `/metrics`;
//! - a real Prometheus (Debian's package, on 127.0.0.1) scraping a weir fed with generated logs:
//!   its query API agrees with the counts computed here from the corpus, and the shipped rules
//!   fire in `/api/v1/alerts`;
//! - docker-compose.yml, the Dockerfile and the Kubernetes manifests parsed and checked for the
//!   structure the stack relies on; every weir command line in them parsed by weir's own CLI.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use crate::support::loki::LokiReceiver;
use crate::support::server::wait_for;
use crate::util::{
    expected_agent_metrics, free_port, get, have_tool, http_get, parse_exposition,
    scrape_when_processed, spawn_weir, weir,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn yaml_docs(rel: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"))
}

/// Runs a command to its end; panics with its output unless it succeeds.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// Asserts that weir's command line accepts `args` (a `command:` or `args:` of the kit).
fn assert_weir_parses(args: &[String], whence: &str) {
    let argv = std::iter::once("weir".to_string()).chain(args.iter().cloned());
    if let Err(e) = weir::cli::Cli::try_parse_from(argv) {
        panic!("{whence}: weir rejects {args:?}:\n{e}");
    }
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .unwrap_or_else(|| panic!("expected a list, got {y:?}"))
        .iter()
        .map(|v| match v {
            Yaml::String(s) | Yaml::Real(s) => s.clone(),
            Yaml::Integer(i) => i.to_string(),
            other => panic!("expected a string, got {other:?}"),
        })
        .collect()
}

// ------------------------------------------------------------------ Prometheus, Alertmanager

#[test]
fn promtool_accepts_the_shipped_config_and_rules() {
    if !have_tool("promtool") {
        return;
    }
    let out = run_ok(Command::new("promtool").current_dir(repo()).args([
        "check",
        "config",
        "config/prometheus/prometheus.yml",
    ]));
    // The config names its rule file; promtool checks that one too.
    assert!(out.contains("alerts.yml"), "{out}");
    run_ok(Command::new("promtool").current_dir(repo()).args([
        "check",
        "rules",
        "config/prometheus/alerts.yml",
    ]));
    let prom = &yaml_docs("config/prometheus/prometheus.yml")[0];
    assert_eq!(prom["global"]["scrape_interval"].as_str(), Some("15s"));
    assert_eq!(prom["global"]["evaluation_interval"].as_str(), Some("15s"));
    let weir_job = prom["scrape_configs"]
        .as_vec()
        .expect("scrape_configs")
        .iter()
        .find(|j| j["job_name"].as_str() == Some("weir"))
        .expect("a weir job");
    assert_eq!(
        strings(&weir_job["static_configs"][0]["targets"]),
        ["weir:9090"]
    );
}

#[test]
fn alerts_yml_is_what_weir_generates_from_the_default_pipeline() {
    let out = weir()
        .args(["generate", "prometheus-rules"])
        .output()
        .expect("run weir");
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout) == read("config/prometheus/alerts.yml"),
        "config/prometheus/alerts.yml is out of date: run \
         `weir generate prometheus-rules -o config/prometheus/alerts.yml`"
    );
}

#[test]
fn amtool_accepts_the_alertmanager_config_and_its_commented_example() {
    if !have_tool("amtool") {
        return;
    }
    run_ok(
        Command::new("amtool")
            .current_dir(repo())
            .args(["check-config", "config/alertmanager/alertmanager.yml"]),
    );
    // The receivers shown in comments are valid once uncommented.
    let text = read("config/alertmanager/alertmanager.yml");
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("    # ") {
            Some(rest) if rest.ends_with("_configs:") => format!("    {rest}"),
            _ => match l.strip_prefix("    #   ") {
                Some(rest) => format!("      {rest}"),
                None => l.to_string(),
            },
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        uncommented.contains("\n    webhook_configs:"),
        "{uncommented}"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("alertmanager.yml");
    std::fs::write(&path, uncommented).expect("write");
    run_ok(Command::new("amtool").arg("check-config").arg(&path));
}

// ------------------------------------------------------------------ dashboards

/// A PromQL expression of a dashboard, and where it is.
struct Query {
    whence: String,
    expr: String,
}

/// The Prometheus expressions of a dashboard (panel targets) and its `label_values` selectors.
fn dashboard_queries(name: &str, d: &Value) -> (Vec<Query>, Vec<Query>) {
    let (mut exprs, mut selectors) = (Vec::new(), Vec::new());
    for p in d["panels"].as_array().expect("panels") {
        let panel_ds = p["datasource"]["type"].as_str().unwrap_or_default();
        for t in p["targets"].as_array().into_iter().flatten() {
            let ds = t["datasource"]["type"].as_str().unwrap_or(panel_ds);
            if ds != "prometheus" {
                continue;
            }
            exprs.push(Query {
                whence: format!("{name}: panel {:?} ({})", p["title"], t["refId"]),
                expr: t["expr"]
                    .as_str()
                    .expect("a Prometheus target has expr")
                    .into(),
            });
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .expect("query");
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{name}: variable {}: {q}", v["name"]));
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        assert!(!label.trim().is_empty());
        assert_eq!(v["definition"].as_str(), Some(q), "{name}: {}", v["name"]);
        selectors.push(Query {
            whence: format!("{name}: variable {}", v["name"]),
            expr: selector.trim().to_string(),
        });
    }
    (exprs, selectors)
}

/// Grafana's variables replaced by what they stand for at query time: intervals by `5m`,
/// everything else (label values picked in the UI) by `.*`.
fn substitute_variables(expr: &str) -> String {
    let re = regex::Regex::new(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]").expect("regex");
    re.replace_all(expr, |c: &regex::Captures<'_>| {
        let name = c
            .get(1)
            .or(c.get(2))
            .or(c.get(3))
            .expect("one group matches")
            .as_str();
        match name {
            "__rate_interval" | "__interval" | "__range" => "5m",
            "__range_s" => "300",
            "__interval_ms" | "__range_ms" => "300000",
            _ => ".*",
        }
        .to_string()
    })
    .into_owned()
}

/// The metric names an expression reads: identifiers outside strings, label matchers and
/// ranges that are neither functions, aggregations, keywords nor grouping labels; plus the
/// names a `{__name__=~"a|b"}` matcher lists.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "atan2",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let b: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let (mut i, mut skip_list) = (0, false);
    let name_matcher = regex::Regex::new(r#"__name__\s*(=~|=)\s*"([^"]*)""#).expect("regex");
    let skip_string = |i: &mut usize| {
        let quote = b[*i];
        *i += 1;
        while *i < b.len() && b[*i] != quote {
            if b[*i] == '\\' {
                *i += 1;
            }
            *i += 1;
        }
        *i += 1;
    };
    while i < b.len() {
        let c = b[i];
        if c == '"' || c == '\'' || c == '`' {
            skip_string(&mut i);
        } else if c == '{' {
            // Label matchers: only `__name__` names metrics.
            let end = i + b[i..].iter().position(|&c| c == '}').expect("closing }");
            let inner: String = b[i + 1..end].iter().collect();
            for c in name_matcher.captures_iter(&inner) {
                out.extend(c[2].split('|').map(str::to_string));
            }
            i = end + 1;
        } else if c == '[' {
            i += b[i..].iter().position(|&c| c == ']').expect("closing ]") + 1;
        } else if c == '(' && skip_list {
            i += b[i..].iter().position(|&c| c == ')').expect("closing )") + 1;
            skip_list = false;
        } else if c.is_ascii_digit() || (c == '.' && b.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '.' || b[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '_' || b[i] == ':') {
                i += 1;
            }
            let word: String = b[start..i].iter().collect();
            let next = b[i..].iter().find(|c| !c.is_whitespace());
            if GROUPING.contains(&word.as_str()) {
                skip_list = true;
            } else if next != Some(&'(') && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                out.insert(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.95, sum by (le, agent_id) (rate(a_bucket{agent_id=~".*"}[5m])))"#
        ),
        ["a_bucket"]
    );
    assert_eq!(
        names(r#"(sum(increase(f_total[5m])) or vector(0)) / sum without (x) (c_count) > 1e3"#),
        ["c_count", "f_total"]
    );
    assert_eq!(
        names(r#"count by (alertname) (ALERTS{alertstate="firing"}) + on (a) group_left (b) up"#),
        ["ALERTS", "up"]
    );
    assert_eq!(
        names(r#"{__name__=~"x_count|y_total", a!=""}"#),
        ["x_count", "y_total"]
    );
}

/// The shipped dashboards and those weir generates, by name.
fn all_dashboards(dir: &Path) -> Vec<(String, Value, bool)> {
    let mut out = Vec::new();
    let shipped = repo().join("config/grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&shipped)
        .expect("config/grafana/dashboards")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for f in files {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&f).expect("read"))
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        out.push((format!("{}", f.display()), v, true));
    }
    // Generated: for the default pipeline (its metrics are checked against a live weir) and
    // for another shipped pipeline (parsed only); stdout and -o write the same.
    let file = dir.join("generated.json");
    run_ok(
        weir()
            .args(["generate", "grafana-dashboard", "-o"])
            .arg(&file),
    );
    let stdout = run_ok(weir().args(["generate", "grafana-dashboard"]));
    assert_eq!(stdout, std::fs::read_to_string(&file).expect("read"));
    out.push((
        "weir generate grafana-dashboard".into(),
        serde_json::from_str(&stdout).expect("JSON"),
        true,
    ));
    let paired = run_ok(
        weir()
            .args(["generate", "grafana-dashboard", "--config"])
            .arg(repo().join("pipelines/paired.toml")),
    );
    out.push((
        "weir generate grafana-dashboard --config pipelines/paired.toml".into(),
        serde_json::from_str(&paired).expect("JSON"),
        false,
    ));
    out
}

/// Starts a weir that exercises every kind of self-metric the dashboards show: it tails a file
/// with a data dir (files, checkpoints), forwards to a Loki that rejects the first push (dead
/// letters) and to an Elasticsearch that refuses connections (retries, errors) with small
/// batches, so it is stuck on its first while its small drop_newest buffer overflows (drops),
/// and it has a notifier (notification counters). Returns the names of
/// every metric family in its exposition once all of that has been counted.
fn live_metric_names(dir: &Path) -> BTreeSet<String> {
    // With `--incidents`: the normal mode has almost no failures, and the failure counter must
    // have series. 10,000 lines span about 205 s of log time, past agent-07's burst (120 s).
    let out = crate::util::weir()
        .args(["generate", "demo-logs", "--incidents", "--count", "10000"])
        .args(["--seed", "5", "--malformed-rate", "0.02"])
        .output()
        .expect("run weir generate");
    assert!(out.status.success(), "{out:?}");
    let corpus = out.stdout;
    let log = dir.join("app.log");
    std::fs::write(&log, &corpus).expect("write log");
    let loki = LokiReceiver::start();
    loki.fail_next_with(1, 400);
    let pipeline = format!(
        "{}\n\
         [[sinks]]\ntype = \"loki\"\nendpoint = \"{}\"\ndead_letter_path = \"{}\"\n\n\
         [[sinks]]\ntype = \"elasticsearch\"\nendpoint = \"http://127.0.0.1:1\"\n\
         [sinks.batch]\nmax_bytes = 1024\n\
         [sinks.buffer]\nmax_events = 100\nwhen_full = \"drop_newest\"\n\n\
         [notifiers.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:1/hook\"\n",
        read("pipelines/agents.toml"),
        loki.url(),
        dir.join("loki.dead.ndjson").display()
    );
    let config = dir.join("pipeline.toml");
    std::fs::write(&config, pipeline).expect("write pipeline");
    let w = spawn_weir(&[
        "--config",
        config.to_str().expect("utf-8"),
        "--data-dir",
        dir.join("data").to_str().expect("utf-8"),
        log.to_str().expect("utf-8"),
    ]);
    scrape_when_processed(&w.addr, 10_000.0);
    let wanted = [
        "weir_sink_dead_lettered_total",
        "weir_sink_dropped_total",
        "weir_sink_retries_total",
        "weir_checkpoint_writes_total",
    ];
    let last = std::cell::RefCell::new(BTreeSet::new());
    wait_for(
        Duration::from_secs(30),
        || {
            let names: BTreeSet<String> = parse_exposition(&get(&w.addr, "/metrics").1)
                .into_keys()
                .map(|(name, _)| name)
                .collect();
            *last.borrow_mut() = names.clone();
            wanted.iter().all(|w| names.contains(*w)).then_some(names)
        },
        || {
            let names = last.borrow();
            let missing: Vec<&&str> = wanted.iter().filter(|w| !names.contains(**w)).collect();
            format!("weir did not count {missing:?} within 30 s")
        },
    )
}

#[test]
fn dashboard_queries_parse_and_name_metrics_weir_exports() {
    if !have_tool("promtool") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let dashboards = all_dashboards(dir.path());
    let live = live_metric_names(dir.path());
    // Series Prometheus makes itself, not weir.
    let prometheus_own = ["ALERTS", "ALERTS_FOR_STATE", "up"];

    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    let mut all = Vec::new();
    let mut uids = BTreeSet::new();
    for (name, d, check_names) in &dashboards {
        assert!(d["schemaVersion"].as_u64().unwrap_or(0) >= 39, "{name}");
        assert!(
            uids.insert(d["uid"].as_str().expect("uid").to_string()),
            "{name}: uid"
        );
        for p in d["panels"].as_array().expect("panels") {
            let t = p["type"].as_str().expect("type");
            assert!(["timeseries", "stat", "logs"].contains(&t), "{name}: {t}");
        }
        let (exprs, selectors) = dashboard_queries(name, d);
        assert!(!exprs.is_empty(), "{name}: no Prometheus queries");
        for q in exprs.iter().chain(&selectors) {
            let expr = substitute_variables(&q.expr);
            assert!(!expr.contains('$'), "{}: {expr}", q.whence);
            if *check_names {
                for m in metric_names(&expr) {
                    assert!(
                        live.contains(&m) || prometheus_own.contains(&m.as_str()),
                        "{}: {m} is not in a live weir's /metrics ({expr})",
                        q.whence
                    );
                }
            } else {
                assert!(!metric_names(&expr).is_empty(), "{}: {expr}", q.whence);
            }
            rules.push_str(&format!(
                "      - record: dashboard_query_{}\n        expr: {}\n",
                all.len(),
                serde_json::to_string(&expr).expect("string")
            ));
            all.push(format!("{} {}: {expr}", all.len(), q.whence));
        }
    }
    let path = dir.path().join("dashboard-rules.yml");
    std::fs::write(&path, &rules).expect("write rules");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool rejects a dashboard query:\n{}{}\nqueries:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        all.join("\n")
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{} rules found", all.len())));

    // What each shipped dashboard is for: the metrics it must show.
    let shipped = |file: &str| {
        &dashboards
            .iter()
            .find(|(n, _, _)| n.ends_with(file))
            .unwrap_or_else(|| panic!("{file}"))
            .1
    };
    let exprs_of = |file: &str| -> Vec<String> {
        dashboard_queries(file, shipped(file))
            .0
            .into_iter()
            .map(|q| q.expr)
            .collect()
    };
    for (file, must) in [
        (
            "agents.json",
            &[
                "agent_task_success_total",
                "agent_task_failure_total",
                "agent_task_duration_seconds_bucket",
                "agent_queue_depth",
                "weir_alerts_firing",
                "ALERTS",
            ][..],
        ),
        (
            "weir.json",
            &[
                "weir_events_total",
                "weir_sink_events_total",
                "weir_parse_errors_total",
                "weir_sink_retries_total",
                "weir_sink_buffer_events",
                "weir_channel_fill",
                "weir_sink_dead_lettered_total",
                "weir_alert_notifications_total",
                "process_cpu_seconds_total",
                "process_resident_memory_bytes",
                "process_open_fds",
                "process_max_fds",
                "process_threads",
                "process_start_time_seconds",
            ][..],
        ),
    ] {
        let used: BTreeSet<String> = exprs_of(file)
            .iter()
            .flat_map(|e| metric_names(&substitute_variables(e)))
            .collect();
        for m in must {
            assert!(used.contains(*m), "{file} shows no {m}");
        }
    }
    let agent_exprs = exprs_of("agents.json");
    for q in ["0.5", "0.95", "0.99"] {
        let p =
            format!("histogram_quantile({q}, sum by (le) (rate(agent_task_duration_seconds_bucket");
        assert!(
            agent_exprs.iter().any(|e| e.starts_with(&p)),
            "agents.json: no {p}"
        );
    }

    // The agent dashboard: the variables and the Loki panel the issue asks for.
    let agents = shipped("agents.json");
    let vars: Vec<&str> = agents["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .map(|v| v["name"].as_str().expect("name"))
        .collect();
    for v in ["agent_id", "queue_name", "trace_id"] {
        assert!(
            vars.contains(&v),
            "agents.json lacks variable {v}: {vars:?}"
        );
    }
    let logs = agents["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .find(|p| p["type"] == "logs")
        .expect("a logs panel");
    assert_eq!(logs["datasource"]["type"], "loki");
    let expr = logs["targets"][0]["expr"].as_str().expect("expr");
    // The Loki sink's default labels and structured metadata.
    assert!(
        expr.starts_with(r#"{job="weir"}"#) && expr.contains("| trace_id=~\"$trace_id"),
        "{expr}"
    );
}

#[test]
fn grafana_provisioning_names_the_stack() {
    let ds = &yaml_docs("config/grafana/provisioning/datasources/datasources.yml")[0];
    let by_type: BTreeMap<String, &Yaml> = ds["datasources"]
        .as_vec()
        .expect("datasources")
        .iter()
        .map(|d| (d["type"].as_str().expect("type").to_string(), d))
        .collect();
    assert_eq!(
        by_type["prometheus"]["url"].as_str(),
        Some("http://prometheus:9090")
    );
    assert_eq!(by_type["loki"]["url"].as_str(), Some("http://loki:3100"));
    let es = by_type["elasticsearch"];
    assert_eq!(es["url"].as_str(), Some("http://elasticsearch:9200"));
    // The Elasticsearch sink's default index (logs-weir-%Y.%m.%d) and timestamp field.
    assert_eq!(es["jsonData"]["index"].as_str(), Some("logs-weir-*"));
    assert_eq!(es["jsonData"]["timeField"].as_str(), Some("@timestamp"));
    // The dashboards pick their datasources by these uids by default.
    for (t, uid) in [("prometheus", "prometheus"), ("loki", "loki")] {
        assert_eq!(by_type[t]["uid"].as_str(), Some(uid));
    }
    // Tempo, linked from a span to its trace's lines in Loki and to the task metrics.
    let tempo = by_type["tempo"];
    assert_eq!(tempo["url"].as_str(), Some("http://tempo:3200"));
    let to_logs = &tempo["jsonData"]["tracesToLogsV2"];
    assert_eq!(to_logs["datasourceUid"].as_str(), Some("loki"));
    let q = to_logs["query"].as_str().expect("tracesToLogsV2 query");
    // `$$` is a literal `$` in Grafana's provisioning (a lone `$` is an environment variable);
    // the Loki sink's label and structured metadata.
    assert!(q.starts_with(r#"{job="weir"}"#), "{q}");
    assert!(
        q.contains(".trace_id") && q.contains("$${__trace.traceId}"),
        "{q}"
    );
    assert_eq!(
        tempo["jsonData"]["tracesToMetrics"]["datasourceUid"].as_str(),
        Some("prometheus")
    );
    let dash = &yaml_docs("config/grafana/provisioning/dashboards/dashboards.yml")[0];
    assert_eq!(
        dash["providers"][0]["options"]["path"].as_str(),
        Some("/etc/grafana/dashboards")
    );
}

// ------------------------------------------------------------------ a real Prometheus

/// A Prometheus started for a test; killed when dropped.
struct Prometheus {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts `prometheus` on a free loopback port, scraping `target` every second and
    /// evaluating `rules` every second; returns once it is ready.
    fn start(dir: &Path, target: &str, rules: &Path) -> Prometheus {
        let port = free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules:?}\n\
                 scrape_configs:\n  - job_name: weir\n    static_configs:\n      - targets: [{target:?}]\n",
            ),
        )
        .expect("write config");
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn prometheus");
        let p = Prometheus {
            child,
            addr: format!("127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http_get(&format!("http://{}/-/ready", p.addr), &[]).is_some_and(|(s, _)| s == 200) {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                p.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `/api/v1/query`: the result vector (empty if the query failed).
    fn query(&self, q: &str) -> Vec<Value> {
        let url = format!("http://{}/api/v1/query", self.addr);
        match http_get(&url, &[("query", q)]) {
            Some((200, body)) => {
                let v: Value = serde_json::from_str(&body).expect("JSON");
                v["data"]["result"].as_array().cloned().unwrap_or_default()
            }
            other => panic!("{q}: {other:?}"),
        }
    }

    /// The single value of an instant query, if it has one series.
    fn value(&self, q: &str) -> Option<f64> {
        match self.query(q).as_slice() {
            [one] => one["value"][1].as_str().and_then(|s| s.parse().ok()),
            _ => None,
        }
    }
}

/// `histogram_quantile` as Prometheus computes it from cumulative buckets `(le, count)`,
/// sorted by `le`, the last one `+Inf`.
fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    let total = buckets.last().expect("+Inf bucket").1;
    let rank = q * total;
    let b = buckets[..buckets.len() - 1]
        .iter()
        .position(|&(_, c)| c >= rank)
        .unwrap_or(buckets.len() - 1);
    if b == buckets.len() - 1 {
        return buckets[buckets.len() - 2].0;
    }
    let (start, prev) = if b == 0 { (0.0, 0.0) } else { buckets[b - 1] };
    let (end, count) = buckets[b];
    start + (end - start) * ((rank - prev) / (count - prev))
}

#[test]
fn prometheus_scrapes_weir_and_the_shipped_rules_fire() {
    if !have_tool("prometheus") {
        return;
    }
    const LINES: usize = 20_000;
    const CHUNKS: usize = 8;
    // The demo's normal mode is healthy (no alert fires), so the shipped rules are shown
    // firing on `--incidents`: 20,000 lines span about 410 s of log time, which hold the
    // failure burst of agent-07 (120-180 s) and end inside the backlog of queue `retries`
    // (240-420 s, depths 150-250).
    let out = crate::util::weir()
        .args(["generate", "demo-logs", "--incidents", "--seed", "11"])
        .args(["--count", &LINES.to_string()])
        .output()
        .expect("run weir generate");
    assert!(out.status.success(), "{out:?}");
    let corpus = out.stdout;
    let expected = expected_agent_metrics(&corpus);

    let mut w = spawn_weir(&[]);
    let mut stdin = w.child.stdin.take().expect("stdin piped");
    let dir = tempfile::tempdir().expect("temp dir");
    let prom = Prometheus::start(
        dir.path(),
        &w.addr,
        &repo().join("config/prometheus/alerts.yml"),
    );

    // Prometheus applies new targets every 5 s: wait for its first scrape of weir, so that what
    // follows is seen growing.
    wait_for(
        Duration::from_secs(30),
        || (prom.value(r#"up{job="weir"}"#) == Some(1.0)).then_some(()),
        || format!("Prometheus never scraped weir:\n{}", prom.log_tail()),
    );
    // Written in chunks over several seconds, so counters grow between scrapes and increase()
    // sees it. stdin stays open: weir keeps serving until the end of the test.
    let lines: Vec<&[u8]> = corpus.split_inclusive(|&b| b == b'\n').collect();
    for chunk in lines.chunks(LINES.div_ceil(CHUNKS)) {
        for l in chunk {
            stdin.write_all(l).expect("write to weir");
        }
        stdin.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(700));
    }
    scrape_when_processed(&w.addr, LINES as f64);
    // Prometheus has scraped everything once it sees every line counted.
    wait_for(
        Duration::from_secs(30),
        || (prom.value("sum(weir_events_total)") == Some(LINES as f64)).then_some(()),
        || format!("Prometheus never saw {LINES} events:\n{}", prom.log_tail()),
    );

    let sum_of = |name: &str| -> f64 {
        expected
            .iter()
            .filter(|(k, _)| k.0 == name)
            .map(|(_, v)| v)
            .sum()
    };
    let successes = sum_of("agent_task_success_total");
    assert!(successes > 1000.0, "{successes}");
    assert_eq!(prom.value("sum(agent_task_success_total)"), Some(successes));

    // A gauge: the last depth the corpus reported for the queue.
    let depth = expected[&crate::util::key("agent_queue_depth", &[("queue_name", "tasks")])];
    assert_eq!(
        prom.value(r#"agent_queue_depth{queue_name="tasks"}"#),
        Some(depth)
    );

    // p95 over every series: Prometheus interpolates inside the bucket the rank falls in.
    let mut buckets: BTreeMap<String, f64> = BTreeMap::new();
    for ((name, labels), v) in &expected {
        if name == "agent_task_duration_seconds_bucket" {
            *buckets.entry(labels["le"].clone()).or_default() += v;
        }
    }
    let mut buckets: Vec<(f64, f64)> = buckets
        .into_iter()
        .map(|(le, c)| (le.parse().expect("le"), c))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let want = histogram_quantile(0.95, &buckets);
    let got = prom
        .value("histogram_quantile(0.95, sum by (le) (agent_task_duration_seconds_bucket))")
        .expect("a p95");
    let rank = 0.95 * buckets.last().expect("+Inf").1;
    let i = buckets
        .iter()
        .position(|&(_, c)| c >= rank)
        .expect("bucket");
    let lower = if i == 0 { 0.0 } else { buckets[i - 1].0 };
    assert!(
        lower <= got && got <= buckets[i].0,
        "p95 {got} outside its bucket ({lower}, {}]",
        buckets[i].0
    );
    assert!(
        (got - want).abs() < 1e-9 * want,
        "p95 {got}, expected {want}"
    );

    // The shipped rules on that data: every agent with more than 5 failures in the corpus
    // fires AgentTaskFailures; queues now above 100 are pending QueueBacklog (for: 2m).
    let mut failures: BTreeMap<String, f64> = BTreeMap::new();
    for ((name, labels), v) in &expected {
        if name == "agent_task_failure_total" {
            *failures.entry(labels["agent_id"].clone()).or_default() += v;
        }
    }
    let backlog: BTreeSet<String> = expected
        .iter()
        .filter(|((name, _), v)| name == "agent_queue_depth" && **v > 100.0)
        .map(|((_, labels), _)| labels["queue_name"].clone())
        .collect();
    let alerts_url = format!("http://{}/api/v1/alerts", prom.addr);
    let last = std::cell::RefCell::new(String::new());
    let alerts = wait_for(
        Duration::from_secs(30),
        || {
            let (_, body) = http_get(&alerts_url, &[])?;
            let v: Value = serde_json::from_str(&body).ok()?;
            *last.borrow_mut() = body;
            let alerts = v["data"]["alerts"].as_array()?.clone();
            let firing: BTreeSet<String> = alerts
                .iter()
                .filter(|a| {
                    a["labels"]["alertname"] == "AgentTaskFailures" && a["state"] == "firing"
                })
                .filter_map(|a| a["labels"]["agent_id"].as_str().map(str::to_string))
                .collect();
            let pending: BTreeSet<String> = alerts
                .iter()
                .filter(|a| a["labels"]["alertname"] == "QueueBacklog")
                .filter_map(|a| a["labels"]["queue_name"].as_str().map(str::to_string))
                .collect();
            let heavy: BTreeSet<String> = failures
                .iter()
                .filter(|(_, n)| **n > 5.0)
                .map(|(a, _)| a.clone())
                .collect();
            (firing == heavy && pending == backlog).then_some(alerts)
        },
        || {
            format!("alerts never matched the corpus (failures {failures:?}, backlog {backlog:?}); last /api/v1/alerts:\n{}", last.borrow())
        },
    );
    assert!(!failures.is_empty() && !backlog.is_empty());
    for a in &alerts {
        match a["labels"]["alertname"].as_str() {
            Some("AgentTaskFailures") => assert_eq!(a["labels"]["severity"], "critical"),
            Some("QueueBacklog") => assert_eq!(a["state"], "pending", "{a}"),
            other => panic!("unexpected alert {other:?}: {a}"),
        }
    }
    drop(stdin);
    let _ = w.child.wait();
}

// ------------------------------------------------------------------ compose, image, kubernetes

const STACK: [&str; 9] = [
    "app",
    "weir",
    "prometheus",
    "grafana",
    "loki",
    "tempo",
    "elasticsearch",
    "kibana",
    "alertmanager",
];

#[test]
fn compose_file_describes_the_stack() {
    let doc = &yaml_docs("docker-compose.yml")[0];
    let services = doc["services"].as_hash().expect("services");
    let service = |name: &str| &doc["services"][name];
    for s in STACK {
        assert!(!service(s).is_badvalue(), "service {s} missing");
    }
    let declared: BTreeSet<&str> = doc["volumes"]
        .as_hash()
        .expect("top-level volumes")
        .keys()
        .map(|k| k.as_str().expect("volume name"))
        .collect();
    for (name, s) in services {
        let name = name.as_str().expect("service name");
        // Pinned images: a tag, never latest. Locally built ones are weir's, from the Dockerfile.
        let image = s["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: image"));
        let tag = image
            .rsplit('/')
            .next()
            .and_then(|last| last.split_once(':'))
            .map(|(_, tag)| tag)
            .unwrap_or_else(|| panic!("{name}: image {image} has no tag"));
        assert!(!tag.is_empty() && tag != "latest", "{name}: {image}");
        if !s["build"].is_badvalue() {
            assert_eq!(s["build"].as_str(), Some("."), "{name}: build");
            assert_eq!(image, "weir:local", "{name}");
        }
        // Volumes: named ones declared; bind mounts point into the repository.
        for v in s["volumes"].as_vec().into_iter().flatten() {
            let v = v.as_str().expect("short volume syntax");
            let source = v.split(':').next().expect("source");
            if let Some(rel) = source.strip_prefix("./") {
                assert!(repo().join(rel).exists(), "{name}: {v}: no {rel}");
            } else {
                assert!(
                    declared.contains(source),
                    "{name}: volume {source} not declared"
                );
            }
        }
        // Published ports on loopback only: security is off in several services.
        let ports = if s["ports"].is_badvalue() {
            Vec::new()
        } else {
            strings(&s["ports"])
        };
        for p in ports {
            assert!(
                p.starts_with("127.0.0.1:"),
                "{name}: port {p} not on 127.0.0.1"
            );
        }
        // Health checks on every long-running service; one-shot jobs and the generator
        // (which serves no HTTP) say so.
        let hc = &s["healthcheck"];
        let one_shot = s["restart"].as_str() == Some("no");
        if name == "app" {
            assert_eq!(hc["disable"].as_bool(), Some(true), "app: healthcheck");
        } else if !one_shot {
            assert!(!hc["test"].is_badvalue(), "{name}: no healthcheck");
        }
        // No secret in the file: anything secret-like comes from the environment.
        if let Some(env) = s["environment"].as_hash() {
            for (k, v) in env {
                let k = k.as_str().expect("env name");
                if ["PASSWORD", "TOKEN", "SECRET", "API_KEY"]
                    .iter()
                    .any(|s| k.contains(s))
                {
                    let v = v.as_str().unwrap_or_default();
                    assert!(v.starts_with("${") && v.ends_with('}'), "{name}: {k}={v}");
                }
            }
        }
    }
    for stateful in [
        "weir",
        "prometheus",
        "grafana",
        "loki",
        "tempo",
        "elasticsearch",
        "alertmanager",
    ] {
        let named = strings(&service(stateful)["volumes"])
            .iter()
            .any(|v| declared.contains(v.split(':').next().unwrap_or_default()));
        assert!(named, "{stateful} keeps its data in a named volume");
    }

    // The app writes its log where weir follows it, on a volume they share.
    let app = strings(&service("app")["command"]);
    let weir_cmd = strings(&service("weir")["command"]);
    assert_weir_parses(&app, "docker-compose.yml app");
    assert_weir_parses(&weir_cmd, "docker-compose.yml weir");
    for a in ["demo-logs", "--live", "--incidents"] {
        assert!(app.contains(&a.to_string()), "app: {app:?}");
    }
    let out = &app[app.iter().position(|a| a == "-o").expect("app -o") + 1];
    let glob = weir_cmd.last().expect("weir's file glob");
    assert!(
        glob::Pattern::new(glob).expect("glob").matches(out),
        "weir follows {glob}, the app writes {out}"
    );
    let mount_of = |s: &str, path: &str| {
        strings(&service(s)["volumes"])
            .into_iter()
            .find(|v| path.starts_with(v.split(':').nth(1).unwrap_or("-")))
            .and_then(|v| v.split(':').next().map(str::to_string))
    };
    assert_eq!(
        mount_of("app", out),
        mount_of("weir", out),
        "shared log volume"
    );
    let pairs = |args: &[String]| -> BTreeMap<String, String> {
        args.windows(2)
            .filter(|w| w[0].starts_with("--"))
            .map(|w| (w[0].clone(), w[1].clone()))
            .collect()
    };
    let flags = pairs(&weir_cmd);
    assert_eq!(flags["--loki"], "http://loki:3100");
    assert_eq!(flags["--elasticsearch"], "http://elasticsearch:9200");
    assert_eq!(flags["--config"], "/etc/weir/pipeline.toml");
    assert_eq!(
        mount_of("weir", "/etc/weir/pipeline.toml").as_deref(),
        Some("./config/weir/pipeline.toml")
    );
    assert!(
        mount_of("weir", &flags["--data-dir"]).is_some(),
        "weir's data dir on a volume"
    );
    let ports = strings(&service("weir")["ports"]);
    assert!(ports.iter().any(|p| p.ends_with(":9090")), "{ports:?}");
    assert_eq!(
        strings(&service("weir")["healthcheck"]["test"]),
        ["CMD", "/usr/local/bin/weir", "health"]
    );

    // Prometheus keeps 15 days, reads the shipped files; Kibana matches Elasticsearch.
    let prom = strings(&service("prometheus")["command"]);
    assert!(
        prom.contains(&"--storage.tsdb.retention.time=15d".to_string()),
        "{prom:?}"
    );
    assert!(prom.contains(&"--config.file=/etc/prometheus/prometheus.yml".to_string()));
    assert_eq!(
        mount_of("prometheus", "/etc/prometheus/prometheus.yml").as_deref(),
        Some("./config/prometheus")
    );
    let version = |s: &str| {
        let image = service(s)["image"].as_str().expect("image").to_string();
        image.rsplit_once(':').expect("tag").1.to_string()
    };
    assert_eq!(version("kibana"), version("elasticsearch"));
    // Exemplars (the trace ids on weir's OpenMetrics samples) are kept.
    assert!(
        prom.contains(&"--enable-feature=exemplar-storage".to_string()),
        "{prom:?}"
    );

    // Tempo: its config from the repository, its data in its volume, OTLP and its API published.
    let tempo = strings(&service("tempo")["command"]);
    assert_eq!(tempo, ["-config.file=/etc/tempo/tempo.yml"]);
    assert_eq!(
        mount_of("tempo", "/etc/tempo/tempo.yml").as_deref(),
        Some("./config/tempo")
    );
    let tempo_ports = strings(&service("tempo")["ports"]);
    for port in ["3200", "4317", "4318"] {
        assert!(
            tempo_ports.iter().any(|p| p.ends_with(&format!(":{port}"))),
            "tempo publishes no {port}: {tempo_ports:?}"
        );
    }
    let tempo_cfg = &yaml_docs("config/tempo/tempo.yml")[0];
    assert_eq!(tempo_cfg["server"]["http_listen_port"].as_i64(), Some(3200));
    let otlp = &tempo_cfg["distributor"]["receivers"]["otlp"]["protocols"];
    // Reachable from the other containers, not only on Tempo's own localhost.
    assert_eq!(otlp["http"]["endpoint"].as_str(), Some("0.0.0.0:4318"));
    assert_eq!(otlp["grpc"]["endpoint"].as_str(), Some("0.0.0.0:4317"));
    let tempo_volume = mount_of("tempo", "/var/tempo/wal").expect("tempo's data on a volume");
    assert!(declared.contains(tempo_volume.as_str()), "{tempo_volume}");
    for path in [
        &tempo_cfg["storage"]["trace"]["wal"]["path"],
        &tempo_cfg["storage"]["trace"]["local"]["path"],
    ] {
        let path = path.as_str().expect("tempo storage path");
        assert_eq!(
            mount_of("tempo", path).as_deref(),
            Some(tempo_volume.as_str()),
            "{path}"
        );
    }
    // weir's stack pipeline sends its spans there, and waits for Tempo to start.
    let pipeline: toml::Table = read("config/weir/pipeline.toml").parse().expect("TOML");
    let sinks = pipeline["sinks"].as_array().expect("[[sinks]]");
    let to_tempo = sinks
        .iter()
        .find(|s| s["type"].as_str() == Some("otlp"))
        .expect("an otlp sink in config/weir/pipeline.toml");
    assert_eq!(to_tempo["endpoint"].as_str(), Some("http://tempo:4318"));
    assert!(
        !pipeline["spans"].as_array().expect("[[spans]]").is_empty(),
        "the stack pipeline makes no spans"
    );
    assert!(!service("weir")["depends_on"]["tempo"].is_badvalue());
    let es = &service("elasticsearch")["environment"];
    assert_eq!(es["discovery.type"].as_str(), Some("single-node"));
    assert_eq!(es["xpack.security.enabled"].as_str(), Some("false"));
}

#[test]
fn stack_pipeline_is_the_default_one_with_alertmanager() {
    run_ok(
        weir()
            .args(["validate", "--config"])
            .arg(repo().join("config/weir/pipeline.toml")),
    );
    let stack: toml::Table = read("config/weir/pipeline.toml").parse().expect("TOML");
    let default: toml::Table = read("pipelines/agents.toml").parse().expect("TOML");
    for key in ["event", "metrics", "alerts"] {
        assert_eq!(
            stack.get(key),
            default.get(key),
            "[{key}] differs from pipelines/agents.toml"
        );
    }
    let am = &stack["notifiers"]["alertmanager"];
    assert_eq!(am["type"].as_str(), Some("alertmanager"));
    assert_eq!(am["url"].as_str(), Some("http://alertmanager:9093"));
}

#[test]
fn dockerfile_builds_the_release_binary() {
    // Instructions, with continued lines joined and comments left out.
    let mut instructions: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines().map(str::trim) {
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    let find = |prefix: &str| -> Vec<&str> {
        instructions
            .iter()
            .map(String::as_str)
            .filter(|i| i.starts_with(prefix))
            .collect()
    };
    let froms = find("FROM ");
    assert_eq!(
        froms,
        [
            "FROM rust:1.95-bookworm AS builder",
            "FROM gcr.io/distroless/cc-debian12:nonroot"
        ],
        "multi-stage"
    );
    // The build is exactly `cargo build --release --locked` (the binary `cargo build --release`
    // makes, from Cargo.lock), and the final image gets that build's binary.
    let builds: Vec<&str> = instructions
        .iter()
        .filter(|i| i.contains("cargo "))
        .map(String::as_str)
        .collect();
    assert_eq!(builds.len(), 1, "{builds:?}");
    assert!(
        builds[0].starts_with("RUN ") && builds[0].ends_with(" cargo build --release --locked"),
        "{builds:?}"
    );
    assert!(find("COPY --from=builder /src/target/release/weir /usr/local/bin/weir").len() == 1);
    let user = find("USER ");
    assert_eq!(user.len(), 1);
    assert!(
        !user[0].starts_with("USER 0") && !user[0].starts_with("USER root"),
        "{user:?}"
    );
    assert_eq!(find("EXPOSE "), ["EXPOSE 9090"]);
    assert_eq!(
        find("ENTRYPOINT "),
        [r#"ENTRYPOINT ["/usr/local/bin/weir"]"#]
    );
    assert_eq!(find("CMD "), [r#"CMD ["run"]"#]);
    let health = find("HEALTHCHECK ");
    assert!(
        health.len() == 1 && health[0].ends_with(r#" CMD ["/usr/local/bin/weir", "health"]"#),
        "{health:?}"
    );
    assert_weir_parses(&["run".into()], "Dockerfile CMD");
    assert_weir_parses(&["health".into()], "Dockerfile HEALTHCHECK");

    // The build context leaves out the build output and history, nothing the build reads.
    let dockerignore = read(".dockerignore");
    let ignore: Vec<&str> = dockerignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    assert_eq!(ignore, ["target", ".git"]);
}

#[test]
fn kubernetes_manifests_name_their_metrics_port() {
    let dir = tempfile::tempdir().expect("temp dir");
    for file in [
        "deploy/kubernetes/sidecar.yaml",
        "deploy/kubernetes/daemonset.yaml",
    ] {
        let docs = yaml_docs(file);
        let of_kind = |kind: &str| -> Vec<&Yaml> {
            docs.iter()
                .filter(|d| d["kind"].as_str() == Some(kind))
                .collect()
        };
        let workloads: Vec<&Yaml> = of_kind("Deployment")
            .into_iter()
            .chain(of_kind("DaemonSet"))
            .collect();
        assert_eq!(workloads.len(), 1, "{file}");
        let spec = &workloads[0]["spec"]["template"]["spec"];
        let pod_labels = &workloads[0]["spec"]["template"]["metadata"]["labels"];
        let weir_c = spec["containers"]
            .as_vec()
            .expect("containers")
            .iter()
            .find(|c| c["name"].as_str() == Some("weir"))
            .unwrap_or_else(|| panic!("{file}: a weir container"));
        let args = strings(&weir_c["args"]);
        assert_weir_parses(&args, file);
        assert_eq!(
            weir_c["ports"][0]["name"].as_str(),
            Some("metrics"),
            "{file}"
        );
        assert_eq!(
            weir_c["ports"][0]["containerPort"].as_i64(),
            Some(9090),
            "{file}"
        );
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(
                weir_c[probe]["httpGet"]["port"].as_str(),
                Some("metrics"),
                "{file}"
            );
        }
        // The Service selects the pods and exposes the named port (ServiceMonitor-compatible).
        let svc = of_kind("Service");
        assert_eq!(svc.len(), 1, "{file}");
        let selector = svc[0]["spec"]["selector"].as_hash().expect("selector");
        for (k, v) in selector {
            assert_eq!(&pod_labels[k.as_str().expect("key")], v, "{file}: selector");
        }
        assert_eq!(svc[0]["spec"]["ports"][0]["name"].as_str(), Some("metrics"));
        assert_eq!(
            svc[0]["spec"]["ports"][0]["targetPort"].as_str(),
            Some("metrics")
        );
        // Every mount names a volume of the pod.
        let volumes: BTreeSet<&str> = spec["volumes"]
            .as_vec()
            .expect("volumes")
            .iter()
            .map(|v| v["name"].as_str().expect("name"))
            .collect();
        for c in spec["containers"].as_vec().expect("containers") {
            for m in c["volumeMounts"].as_vec().into_iter().flatten() {
                assert!(
                    volumes.contains(m["name"].as_str().expect("name")),
                    "{file}: {m:?}"
                );
            }
            if c["name"].as_str() == Some("app") {
                assert_weir_parses(&strings(&c["args"]), file);
            }
        }

        if file.ends_with("daemonset.yaml") {
            let flags: Vec<&str> = args.iter().map(String::as_str).collect();
            assert!(
                flags.windows(2).any(|w| w == ["--format", "cri"]),
                "{flags:?}"
            );
            assert_eq!(flags.last(), Some(&"/var/log/pods/*/*/*.log"));
            let host_paths: BTreeSet<&str> = spec["volumes"]
                .as_vec()
                .expect("volumes")
                .iter()
                .filter_map(|v| v["hostPath"]["path"].as_str())
                .collect();
            assert_eq!(
                host_paths,
                BTreeSet::from(["/var/lib/weir", "/var/log/pods"])
            );
            // The ConfigMap's pipeline is one weir accepts.
            let cm = of_kind("ConfigMap");
            let pipeline = cm[0]["data"]["pipeline.toml"]
                .as_str()
                .expect("pipeline.toml");
            let path = dir.path().join("pipeline.toml");
            std::fs::write(&path, pipeline).expect("write");
            run_ok(weir().args(["validate", "--config"]).arg(&path));
        } else {
            let kinds: Vec<&str> = spec["volumes"]
                .as_vec()
                .expect("volumes")
                .iter()
                .filter_map(|v| v.as_hash())
                .filter_map(|h| h.keys().find(|k| k.as_str() != Some("name")))
                .filter_map(Yaml::as_str)
                .collect();
            assert!(kinds.iter().all(|k| *k == "emptyDir"), "{kinds:?}");
        }
    }
}

#[test]
fn weir_health_says_whether_weir_answers() {
    let w = spawn_weir(&[]);
    let ok = weir()
        .args(["health", "--addr", &w.addr])
        .output()
        .expect("run weir health");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    drop(w);
    // Nothing listens there any more.
    let closed = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let down = weir()
        .args([
            "health",
            "--timeout-secs",
            "2",
            "--addr",
            &closed.to_string(),
        ])
        .output()
        .expect("run weir health");
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("unhealthy"));
}
