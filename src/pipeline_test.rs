//! `weir test`: unit tests carried in pipeline files (`[[tests]]`).
//!
//! A test gives input lines (inline, or a file beside the pipeline) and what they must produce:
//! metric values after the last line, fields of the parsed events, alerts that fire. A test runs
//! the backfill path of `weir run --oneshot` with no network, no server and no I/O but reading
//! `input_file`: a fresh compile of the pipeline (a fresh registry, so tests are independent),
//! the real processor (parse → derive → alert windows) with the alert engine on the events'
//! clock, recording every transition; then the outcome is compared with the expectations.
//!
//! Invariants:
//! - Every expectation is checked against the pipeline before any test runs: a series of a
//!   metric the pipeline does not have, a label it does not carry, a rule it does not define, a
//!   `line` past the input, are config errors placed at file:line:column (exit 2), never tests
//!   that pass or fail by accident.
//! - The report is stable (snapshot-tested): tests and expectations in file order, values in
//!   Prometheus' spelling (`1`, `2.5`), labels sorted.
//! - Warnings teach and never fail: a field path a metric or an `absent()` rule reads that no
//!   test input of the file has means that part of the pipeline is untested.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::Path;

use toml::Spanned;

use crate::alert::engine::{Clock, Engine, Rule};
use crate::alert::expr::{self, RuleExpr};
use crate::config::{CompiledPipeline, ConfigError, PipelineConfig};
use crate::derive::condition::Ast;
use crate::located::{self, CompileError};
use crate::processor::Processor;
use crate::source::LineBatch;
use crate::telemetry::SelfMetrics;

mod expect;
pub mod schema;
mod series;
#[cfg(test)]
mod tests;

use expect::{expected_field, lookup, tracks, AlertCheck, EventCheck, Parsed};
pub use schema::{AlertExpect, EventExpect, ExpectConfig, ExpectedState, TestConfig};
use series::{check_series, samples, MetricCheck, SeriesKey};

/// A test checked against its pipeline, ready to run.
#[derive(Debug, Clone)]
struct Case {
    name: String,
    lines: Vec<String>,
    parsed: Vec<Parsed>,
    metrics: Vec<MetricCheck>,
    events: Vec<EventCheck>,
    alerts: Vec<AlertCheck>,
}

/// The span of a character column of a TOML string (a value or a quoted key).
fn span_in(text: &str, s: &Spanned<String>, column: usize) -> Range<usize> {
    let start = s.span().start;
    let quoted = matches!(text.as_bytes().get(start), Some(b'"' | b'\''));
    let offset = s
        .get_ref()
        .char_indices()
        .nth(column.saturating_sub(1))
        .map_or(s.get_ref().len(), |(i, _)| i);
    let at = start + usize::from(quoted) + offset;
    at..at + 1
}

/// The leaves of an expected value: a non-empty table is a set of paths below `path`.
fn flatten<'v>(path: String, v: &'v toml::Value, out: &mut Vec<(String, &'v toml::Value)>) {
    match v {
        toml::Value::Table(t) if !t.is_empty() => {
            for (k, v) in t {
                flatten(format!("{path}.{k}"), v, out);
            }
        }
        _ => out.push((path, v)),
    }
}

/// Input lines of a file: `\n` ends a line, a `\r` before it is dropped, as sources do.
fn split_lines(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    if text.is_empty() {
        return Vec::new();
    }
    text.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect()
}

/// Input lines joined into events as the pipeline's source would (its top-level `multiline`,
/// else the first source's that has one), so a traceback in `input_file` is one event; with
/// joining, `line` in `[[tests.expect.events]]` counts events. Unchanged without `multiline`.
fn join_lines(p: &CompiledPipeline, lines: Vec<String>) -> Vec<String> {
    let cfg = p
        .multiline
        .as_ref()
        .or_else(|| p.sources.iter().find_map(|s| s.multiline()));
    let Some(Ok(m)) = cfg.map(|c| c.compile()) else {
        return lines;
    };
    let mut joiner = m.joiner_uncounted(p.parser.max_line_bytes());
    let mut batch = LineBatch::new("test".into());
    for l in &lines {
        batch.push(l.as_bytes(), false, None);
    }
    let source = batch.source.clone();
    let joined = [Some(joiner.join(batch)), joiner.flush(&source)];
    joined
        .iter()
        .flatten()
        .flat_map(|b| {
            b.lines
                .iter()
                .map(|s| String::from_utf8_lossy(b.line(s)).into_owned())
        })
        .collect()
}

impl Case {
    /// Reads the input and checks every expectation against the compiled pipeline. `text` is
    /// the pipeline file, to place errors; `dir` resolves `input_file`.
    fn check(
        t: &TestConfig,
        p: &CompiledPipeline,
        text: &str,
        dir: &Path,
    ) -> Result<Case, CompileError> {
        let name = t.name.get_ref();
        let err = |span: Range<usize>, msg: String| {
            CompileError::at(span, format!("test {name:?}: {msg}"))
        };
        let lines = match (&t.input, &t.input_file) {
            (Some(_), Some(f)) => {
                return Err(err(f.span(), "give `input` or `input_file`, not both".into()))
            }
            (None, None) => {
                return Err(err(
                    t.name.span(),
                    "no input: give `input = [...]` (lines) or `input_file = \"...\"` (relative to this file)".into(),
                ))
            }
            (Some(i), None) => i.get_ref().clone(),
            (None, Some(f)) => {
                let path = dir.join(f.get_ref());
                let bytes = std::fs::read(&path).map_err(|e| {
                    err(f.span(), format!("cannot read input_file {}: {e}", path.display()))
                })?;
                split_lines(&bytes)
            }
        };
        let lines = join_lines(p, lines);
        let parsed = lines
            .iter()
            .map(|l| {
                let mut repaired = String::new();
                let ev = p.parser.parse_line(l, &mut repaired, &[], 0, &mut |_| {});
                Parsed {
                    json: ev.to_json(),
                    timestamp: ev.timestamp,
                    level: ev.level,
                }
            })
            .collect();

        let mut keys: Vec<_> = t.expect.metrics.iter().collect();
        keys.sort_by_key(|(k, _)| k.span().start);
        let mut metrics = Vec::with_capacity(keys.len());
        for (k, v) in keys {
            let key = SeriesKey::parse(k.get_ref()).map_err(|e| {
                err(
                    span_in(text, k, e.column),
                    format!("invalid series {:?}: expected {}", k.get_ref(), e.expected),
                )
            })?;
            let le =
                check_series(&key, p.deriver.metrics()).map_err(|m| err(span_in(text, k, 1), m))?;
            if !v.get_ref().is_finite() {
                return Err(err(v.span(), "expected a finite number".into()));
            }
            metrics.push(MetricCheck {
                key,
                le,
                expected: *v.get_ref(),
            });
        }

        let mut events = Vec::new();
        for e in &t.expect.events {
            let line = *e.line.get_ref();
            if line >= lines.len() {
                return Err(err(
                    e.line.span(),
                    format!(
                        "line {line} is past the input, which has {} line{} (`line` counts from 0)",
                        lines.len(),
                        if lines.len() == 1 { "" } else { "s" }
                    ),
                ));
            }
            for (field, value) in &e.fields {
                // `metadata.agent_id = "a"` without quotes is a TOML table: one check per leaf.
                let mut leaves = Vec::new();
                flatten(field.get_ref().clone(), value.get_ref(), &mut leaves);
                for (path, v) in leaves {
                    let expected = expected_field(&path, v).map_err(|want| {
                        err(value.span(), format!("event field {path}: expected {want}"))
                    })?;
                    events.push(EventCheck {
                        line,
                        field: path,
                        expected,
                    });
                }
            }
        }

        let mut alerts = Vec::new();
        for a in &t.expect.alerts {
            let rule: &Rule = p
                .rules
                .iter()
                .find(|r| r.name == *a.rule.get_ref())
                .ok_or_else(|| {
                    let names: Vec<&str> = p.rules.iter().map(|r| r.name.as_str()).collect();
                    err(
                        a.rule.span(),
                        format!(
                            "no alert rule {:?} in this pipeline (its rules: {})",
                            a.rule.get_ref(),
                            if names.is_empty() {
                                "none".into()
                            } else {
                                names.join(", ")
                            }
                        ),
                    )
                })?;
            if let Some(labels) = &a.labels {
                let given: BTreeSet<&str> = labels.get_ref().keys().map(String::as_str).collect();
                let group: BTreeSet<&str> = rule.group_labels.iter().map(String::as_str).collect();
                if given != group {
                    return Err(err(
                        labels.span(),
                        format!(
                            "rule {:?} groups its alerts by ({}): `labels` must give exactly these",
                            rule.name,
                            rule.group_labels.join(", ")
                        ),
                    ));
                }
            }
            alerts.push(AlertCheck {
                rule: rule.name.clone(),
                labels: a.labels.as_ref().map(|l| l.get_ref().clone()),
                ungrouped: rule.group_labels.is_empty(),
                state: a.state,
            });
        }
        Ok(Case {
            name: name.clone(),
            lines,
            parsed,
            metrics,
            events,
            alerts,
        })
    }

    /// Runs the input through a fresh compile of the pipeline and compares.
    fn run(&self, p: CompiledPipeline, selfm: SelfMetrics) -> TestResult {
        let groups: BTreeMap<String, Vec<String>> = p
            .rules
            .iter()
            .map(|r| (r.name.clone(), r.group_labels.clone()))
            .collect();
        let engine = Engine::new(p.rules, &selfm)
            .with_clock(Clock::Event)
            .recording();
        let mut proc = Processor::new(p.parser, p.deriver, selfm).with_alerts(engine);
        let mut batch = LineBatch::new("test".into());
        for l in &self.lines {
            batch.push(l.as_bytes(), false, None);
        }
        proc.process(&batch);
        proc.finish_alerts();
        let history = proc
            .into_alerts()
            .map(|e| e.history().to_vec())
            .unwrap_or_default();
        let samples = samples(&p.registry);
        let tracks = tracks(&history, &groups);
        let failures = self
            .metrics
            .iter()
            .filter_map(|m| m.compare(&samples))
            .chain(self.events.iter().filter_map(|e| e.compare(&self.parsed)))
            .chain(self.alerts.iter().filter_map(|a| a.compare(&tracks)))
            .collect();
        TestResult {
            name: self.name.clone(),
            failures,
        }
    }
}

/// The outcome of one test.
#[derive(Debug, Clone, PartialEq)]
pub struct TestResult {
    pub name: String,
    /// One line per unmet expectation; empty: passed.
    pub failures: Vec<String>,
}

/// The outcome of a pipeline file's tests; `Display` is the report `weir test` prints.
#[derive(Debug, Clone, PartialEq)]
pub struct FileReport {
    pub path: String,
    pub results: Vec<TestResult>,
    pub warnings: Vec<String>,
}

impl FileReport {
    pub fn failed(&self) -> usize {
        self.results
            .iter()
            .filter(|r| !r.failures.is_empty())
            .count()
    }
}

impl fmt::Display for FileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.results.len();
        if n == 0 {
            return writeln!(f, "{}: no tests", self.path);
        }
        writeln!(
            f,
            "{}: {n} test{}",
            self.path,
            if n == 1 { "" } else { "s" }
        )?;
        for r in &self.results {
            if r.failures.is_empty() {
                writeln!(f, "  ok    {}", r.name)?;
            } else {
                writeln!(f, "  FAIL  {}", r.name)?;
                for line in &r.failures {
                    writeln!(f, "        {line}")?;
                }
            }
        }
        writeln!(f, "{} passed, {} failed", n - self.failed(), self.failed())?;
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

/// Field paths the pipeline reads (besides the event's own fields) that no test input has.
fn warnings(cfg: &PipelineConfig, cases: &[Case]) -> Vec<String> {
    let e = &cfg.event;
    let builtin: BTreeSet<&str> = ["timestamp", "level", "component", "message", "trace_id"]
        .into_iter()
        .chain(
            [
                &e.timestamp,
                &e.level,
                &e.component,
                &e.message,
                &e.trace_id,
            ]
            .into_iter()
            .flatten()
            .map(String::as_str),
        )
        .collect();
    let condition_paths = |text: &str| -> Vec<String> {
        Ast::parse(text).map_or_else(
            |_| Vec::new(),
            |a| a.paths().into_iter().map(String::from).collect(),
        )
    };
    let mut uses: Vec<(String, Vec<String>)> = Vec::new();
    for m in &cfg.metrics {
        let mut paths = Vec::new();
        if let Some(w) = &m.when {
            paths.extend(condition_paths(w.get_ref()));
        }
        if let Some(v) = &m.value {
            paths.extend(v.get_ref().0.iter().cloned());
        }
        if let Some(labels) = &m.labels {
            paths.extend(
                labels
                    .get_ref()
                    .values()
                    .flat_map(|l| l.from.0.iter().cloned()),
            );
        }
        if let Some(pair) = &m.pair {
            paths.extend(condition_paths(pair.start.get_ref()));
            paths.push(pair.key.clone());
        }
        uses.push((format!("metric {:?}", m.name.get_ref()), paths));
    }
    for a in &cfg.alerts {
        if let Ok(RuleExpr::Absent { condition, by, .. }) = expr::parse(a.expr.get_ref()) {
            let mut paths = condition_paths(&condition);
            paths.extend(by);
            uses.push((format!("alert {:?}", a.name.get_ref()), paths));
        }
    }
    // Every field path the inputs have, for "did you mean".
    let mut known = BTreeSet::new();
    for p in cases.iter().flat_map(|c| &c.parsed) {
        collect_paths(&p.json, "", &mut known);
    }
    let mut out = Vec::new();
    for (what, paths) in uses {
        let mut seen = BTreeSet::new();
        for path in paths {
            if builtin.contains(path.as_str()) || !seen.insert(path.clone()) {
                continue;
            }
            let present = cases
                .iter()
                .flat_map(|c| &c.parsed)
                .any(|p| lookup(&p.json, &path).is_some_and(|v| !v.is_null()));
            if !present {
                let hint = located::closest(&path, known.iter().map(String::as_str))
                    .map(|c| format!(" (did you mean {c}?)"))
                    .unwrap_or_default();
                out.push(format!(
                    "{what} uses field {path}, which no test input has{hint}"
                ));
            }
        }
    }
    out
}

/// Every dotted path to a value in `v` (objects walked, arrays not).
fn collect_paths(v: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let serde_json::Value::Object(map) = v {
        for (k, v) in map {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            collect_paths(v, &path, out);
            out.insert(path);
        }
    }
}

/// Runs the tests of the pipeline file at `path`. Errors: the file cannot be read, or it (or a
/// test of it) is invalid — located.
pub fn run_file(path: &Path) -> Result<FileReport, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let dir = path.parent().unwrap_or(Path::new(""));
    run_text(&path.display().to_string(), &text, dir)
}

/// Runs the tests of pipeline `text`; `name` names it in the report and errors, `dir`
/// resolves `input_file`.
pub fn run_text(name: &str, text: &str, dir: &Path) -> Result<FileReport, ConfigError> {
    let cfg = PipelineConfig::parse(name, text)?;
    let compile = || {
        let selfm = SelfMetrics::new();
        cfg.compile(name, text, &selfm).map(|p| (p, selfm))
    };
    let (base, _) = compile()?;
    let cases = cfg
        .tests
        .iter()
        .map(|t| Case::check(t, &base, cfg.interpolation.text(text), dir))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ConfigError::Invalid(
                cfg.interpolation
                    .locate(name, text, e.span.start, &e.message),
            )
        })?;
    let mut results = Vec::with_capacity(cases.len());
    for case in &cases {
        let (p, selfm) = compile()?;
        results.push(case.run(p, selfm));
    }
    let warnings = if cases.is_empty() {
        Vec::new()
    } else {
        warnings(&cfg, &cases)
    };
    Ok(FileReport {
        path: name.to_string(),
        results,
        warnings,
    })
}
