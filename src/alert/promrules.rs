//! `weir generate prometheus-rules`: a pipeline's `[[alerts]]` as Prometheus alerting rules.
//!
//! Why: where Prometheus and Alertmanager already run, the same rules can be evaluated there,
//! over the metrics weir exports, with the same thresholds, `for`, labels and texts.
//!
//! A rule is translated only when the PromQL means what weir computes; otherwise it is left
//! out and listed as a comment with the reason. What does not translate: `absent()` (it reads
//! log events, not metrics), `count` of a counter that adds a value field (Prometheus sees only
//! the sum), `rate`/`min`/`max`/`last` of a histogram (Prometheus keeps buckets, sum and count
//! only) and `count`/`sum`/`rate` of a gauge (Prometheus samples its value, not each set).
//! Known approximations, as everywhere PromQL meets events: `increase`/`rate` extrapolate to
//! the window's edges, gauge `*_over_time` see the values scraped rather than every value set,
//! and a group with no series yet is absent in PromQL where weir counts 0.
//!
//! The YAML is written by hand (no YAML crate): every string is a JSON string, which is a valid
//! YAML double-quoted scalar once the few characters YAML reads as line breaks or forbids are
//! escaped too.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::expr::{format_duration, Arith, Cmp, Func, RuleExpr};
use super::notify::Severity;
use super::template::Template;
use crate::derive::MetricKind;

/// What the translation needs to know of a metric.
pub struct MetricInfo<'a> {
    pub name: &'a str,
    pub kind: MetricKind,
    /// A counter that adds 1 per matching event (no `value` field).
    pub counts_events: bool,
    pub label_names: &'a [String],
    /// Histogram bucket bounds (empty for other kinds).
    pub buckets: &'a [f64],
}

/// One alert rule, as [`render_rules`] writes it.
pub struct RuleInfo<'a> {
    pub name: &'a str,
    pub expr: &'a RuleExpr,
    pub severity: Severity,
    pub summary: Option<&'a Template>,
    pub description: Option<&'a Template>,
    pub link: Option<&'a Template>,
    /// Extra static labels of the rule.
    pub labels: &'a BTreeMap<String, String>,
}

/// How tightly a PromQL fragment binds, to add parentheses only where needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Prec {
    /// A call, an aggregation, a positive number.
    Atom,
    /// `a * b`, `a / b`.
    Mul,
    /// `a + b`, `a - b`.
    Add,
    /// A negative number: parenthesized as any operand, to keep `a - (-1)` readable.
    Neg,
}

/// PromQL for a value rule, or why Prometheus cannot express it. `metric` looks a metric up by
/// name; what it returns may borrow from anything that outlives the call (`'m`), so a closure
/// over the pipeline's metric list fits.
pub fn promql<'m>(
    expr: &RuleExpr,
    metric: &dyn Fn(&str) -> Option<MetricInfo<'m>>,
) -> Result<String, String> {
    let RuleExpr::Value {
        arith,
        by,
        over,
        cmp,
        threshold,
        ..
    } = expr
    else {
        return Err("absent() watches log events, which Prometheus does not see".into());
    };
    let cx = Cx {
        by: by.as_deref(),
        window: over.map(format_duration),
        metric,
    };
    let (body, _) = cx.arith(arith)?;
    let mut cmp = *cmp;
    // `histogram_quantile` answers at most the highest bucket bound, even when the quantile lies
    // beyond it (weir's own quantiles do not have this limit).
    if let Arith::Term {
        func: Func::Quantile(_),
        metric: name,
        ..
    } = arith
    {
        if let Some(top) = metric(name).and_then(|m| m.buckets.last().copied()) {
            match cmp {
                Cmp::Gt | Cmp::Ge if *threshold > top => {
                    return Err(format!(
                        "histogram_quantile never exceeds {name}'s highest bucket ({}); add a bucket above {}",
                        number(top),
                        number(*threshold)
                    ))
                }
                // At the highest bound: Prometheus answers exactly that bound when the quantile
                // lies in the +Inf bucket, so "over it" reads `>=`.
                Cmp::Gt if *threshold == top => cmp = Cmp::Ge,
                _ => {}
            }
        }
    }
    Ok(format!("{body} {} {}", cmp.as_str(), number(*threshold)))
}

struct Cx<'r, 'm> {
    by: Option<&'r [String]>,
    /// The window in Prometheus' syntax (`5m`, `1h30m`).
    window: Option<String>,
    metric: &'r dyn Fn(&str) -> Option<MetricInfo<'m>>,
}

fn number(n: f64) -> String {
    // Rust's shortest round-trip form (`0.2`, `100`, `0.0000001`) is valid PromQL.
    format!("{n}")
}

impl Cx<'_, '_> {
    fn arith(&self, a: &Arith) -> Result<(String, Prec), String> {
        let (op, x, y) = match a {
            Arith::Num(n) => {
                return Ok((number(*n), if *n < 0.0 { Prec::Neg } else { Prec::Atom }))
            }
            Arith::Term { func, metric, .. } => return self.term(*func, metric),
            Arith::Add(x, y) => ("+", x, y),
            Arith::Sub(x, y) => ("-", x, y),
            Arith::Mul(x, y) => ("*", x, y),
            Arith::Div(x, y) => ("/", x, y),
        };
        let prec = if matches!(op, "+" | "-") {
            Prec::Add
        } else {
            Prec::Mul
        };
        let (l, lp) = self.arith(x)?;
        let (r, rp) = self.arith(y)?;
        // Left-associative: the left operand may bind as loosely as the operator, the right
        // one must bind tighter (`a - (b - c)`, `a / (b * c)`).
        let l = if lp > prec { format!("({l})") } else { l };
        let r = if rp >= prec { format!("({r})") } else { r };
        Ok((format!("{l} {op} {r}"), prec))
    }

    /// `inner` aggregated with `op` over the rule's `by` labels (none without `by`).
    fn group(&self, op: &str, inner: String) -> String {
        match self.by {
            None => inner,
            Some([]) => format!("{op}({inner})"),
            Some(labels) => format!("{op} by ({}) ({inner})", labels.join(", ")),
        }
    }

    fn term(&self, func: Func, name: &str) -> Result<(String, Prec), String> {
        let m = (self.metric)(name).ok_or_else(|| format!("unknown metric {name}"))?;
        let w = || {
            self.window
                .as_deref()
                .ok_or_else(|| format!("{func}({name}) needs a window (`over`)"))
        };
        let atom = |s: String| Ok((s, Prec::Atom));
        match (m.kind, func) {
            (MetricKind::Counter, Func::Count) if !m.counts_events => Err(format!(
                "count({name}) counts the events of a counter that adds a value field, and Prometheus sees only the sum: use sum({name})"
            )),
            (MetricKind::Counter, Func::Count | Func::Sum) => {
                atom(self.group("sum", format!("increase({name}[{}])", w()?)))
            }
            (MetricKind::Counter, Func::Rate) => {
                atom(self.group("sum", format!("rate({name}[{}])", w()?)))
            }
            (MetricKind::Counter, f) => Err(format!(
                "{f}({name}): a counter has only count, sum and rate"
            )),
            (MetricKind::Histogram, Func::Count) => {
                atom(self.group("sum", format!("increase({name}_count[{}])", w()?)))
            }
            (MetricKind::Histogram, Func::Sum) => {
                atom(self.group("sum", format!("increase({name}_sum[{}])", w()?)))
            }
            (MetricKind::Histogram, Func::Avg) => {
                // Sum and count are aggregated apart, so a group's average weighs every
                // observation alike, as weir's does.
                let w = w()?;
                let sum = self.group("sum", format!("increase({name}_sum[{w}])"));
                let count = self.group("sum", format!("increase({name}_count[{w}])"));
                Ok((format!("{sum} / {count}"), Prec::Mul))
            }
            (MetricKind::Histogram, Func::Quantile(q)) => {
                // Buckets must be summed by `le`; without `by`, each series stays apart.
                let labels = self.by.unwrap_or(m.label_names);
                let mut by = String::from("le");
                for l in labels {
                    by.push_str(", ");
                    by.push_str(l);
                }
                atom(format!(
                    "histogram_quantile({q}, sum by ({by}) (rate({name}_bucket[{}])))",
                    w()?
                ))
            }
            (MetricKind::Histogram, f) => Err(format!(
                "{f}({name}): a Prometheus histogram keeps only buckets, a sum and a count (use count, sum, avg or a quantile)"
            )),
            (MetricKind::Gauge, Func::Last) => atom(match &self.window {
                // weir's `last` over a window is the last value set in it.
                Some(w) => self.group("max", format!("last_over_time({name}[{w}])")),
                None => self.group("max", name.to_string()),
            }),
            (MetricKind::Gauge, Func::Max) => {
                atom(self.group("max", format!("max_over_time({name}[{}])", w()?)))
            }
            (MetricKind::Gauge, Func::Min) => {
                atom(self.group("min", format!("min_over_time({name}[{}])", w()?)))
            }
            (MetricKind::Gauge, Func::Avg) => {
                atom(self.group("avg", format!("avg_over_time({name}[{}])", w()?)))
            }
            (MetricKind::Gauge, f) => Err(format!(
                "{f}({name}): Prometheus samples a gauge's value, not each time it is set (use {name}, max, min or avg)"
            )),
        }
    }
}

/// A YAML double-quoted scalar: JSON's escapes, plus `\u` escapes for what YAML forbids or
/// reads as a line break (C1 controls, NEL, LS, PS, BOM, U+FFFE/U+FFFF), which JSON leaves
/// as they are.
fn yaml_string(s: &str) -> String {
    let json = serde_json::to_string(s).expect("a str always serializes to JSON");
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if matches!(
            c,
            '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
        ) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// A mapping key: plain when it is a label name, quoted otherwise.
fn yaml_key(s: &str) -> String {
    let mut chars = s.chars();
    let plain = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        s.to_string()
    } else {
        yaml_string(s)
    }
}

/// Text for a `#` comment: on one line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// The whole rules file: `groups: [{name: group, rules: [...]}]`. Rules Prometheus cannot
/// express are listed as comments (`# AgentSilent: not expressible in Prometheus: <why>`).
///
/// `group` names the rule group and, in the header comment, the pipeline the rules come
/// from: pass the pipeline's name (such as `weir-agents`).
pub fn render_rules<'m>(
    group: &str,
    rules: &[RuleInfo<'_>],
    metric: &dyn Fn(&str) -> Option<MetricInfo<'m>>,
) -> String {
    let mut body = String::new();
    let mut translated = 0;
    for rule in rules {
        let expr = match promql(rule.expr, metric) {
            Ok(expr) => expr,
            Err(why) => {
                let _ = writeln!(
                    body,
                    "      # {}: not expressible in Prometheus: {}",
                    one_line(rule.name),
                    one_line(&why)
                );
                continue;
            }
        };
        translated += 1;
        let _ = writeln!(body, "      - alert: {}", yaml_string(rule.name));
        let _ = writeln!(body, "        expr: {}", yaml_string(&expr));
        if let Some(d) = rule.expr.for_duration() {
            let _ = writeln!(body, "        for: {}", format_duration(d));
        }
        body.push_str("        labels:\n");
        let _ = writeln!(
            body,
            "          severity: {}",
            yaml_string(rule.severity.as_str())
        );
        // `severity` is weir's to set (the config refuses it as an extra label).
        for (k, v) in rule.labels.iter().filter(|(k, _)| *k != "severity") {
            let _ = writeln!(body, "          {}: {}", yaml_key(k), yaml_string(v));
        }
        let threshold = match rule.expr {
            RuleExpr::Value { threshold, .. } => *threshold,
            RuleExpr::Absent { .. } => 0.0,
        };
        let annotations: Vec<(&str, &Template)> = [
            ("summary", rule.summary),
            ("description", rule.description),
            ("link", rule.link),
        ]
        .into_iter()
        .filter_map(|(k, t)| t.map(|t| (k, t)))
        .collect();
        if !annotations.is_empty() {
            body.push_str("        annotations:\n");
            for (k, t) in annotations {
                let _ = writeln!(
                    body,
                    "          {k}: {}",
                    yaml_string(&t.to_prometheus(threshold))
                );
            }
        }
    }
    let mut out = String::new();
    out.push_str("# Prometheus alerting rules, generated by `weir generate prometheus-rules`\n");
    let _ = writeln!(
        out,
        "# from the [[alerts]] of pipeline {}. Generate them again rather than edit them.",
        one_line(group)
    );
    out.push_str("groups:\n");
    let _ = writeln!(out, "  - name: {}", yaml_string(group));
    out.push_str(if translated == 0 {
        "    rules: []\n"
    } else {
        "    rules:\n"
    });
    out.push_str(&body);
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;
    use crate::alert::expr::parse;

    struct M {
        name: &'static str,
        kind: MetricKind,
        counts_events: bool,
        labels: Vec<String>,
    }

    fn table() -> Vec<M> {
        let m = |name, kind, counts_events, labels: &[&str]| M {
            name,
            kind,
            counts_events,
            labels: labels.iter().map(|s| s.to_string()).collect(),
        };
        vec![
            m(
                "agent_task_failure_total",
                MetricKind::Counter,
                true,
                &["agent_id", "error_type"],
            ),
            m(
                "agent_task_success_total",
                MetricKind::Counter,
                true,
                &["agent_id"],
            ),
            m("bytes_total", MetricKind::Counter, false, &["agent_id"]),
            m(
                "agent_queue_depth",
                MetricKind::Gauge,
                false,
                &["queue_name"],
            ),
            m(
                "agent_task_duration_seconds",
                MetricKind::Histogram,
                false,
                &["agent_id", "status"],
            ),
            // A gauge without labels, for the arithmetic.
            m("a_g", MetricKind::Gauge, false, &[]),
        ]
    }

    fn info<'a>(t: &'a [M], name: &str) -> Option<MetricInfo<'a>> {
        t.iter().find(|m| m.name == name).map(|m| MetricInfo {
            name: m.name,
            kind: m.kind,
            counts_events: m.counts_events,
            label_names: &m.labels,
            buckets: &[0.1, 1.0, 60.0],
        })
    }

    fn q(src: &str) -> Result<String, String> {
        let t = table();
        promql(&parse(src).expect(src), &|n| info(&t, n))
    }

    fn ok(src: &str) -> String {
        q(src).unwrap_or_else(|e| panic!("{src}: {e}"))
    }

    #[test]
    fn quantiles_at_or_past_the_highest_bucket() {
        // The test table's histogram tops out at 60.
        assert!(ok("p95(agent_task_duration_seconds) by () over 10m > 60").ends_with(") >= 60"));
        assert!(ok("p95(agent_task_duration_seconds) by () over 10m > 30").ends_with(") > 30"));
        let e = q("p95(agent_task_duration_seconds) by () over 10m > 90").unwrap_err();
        assert!(e.contains("highest bucket (60)"), "{e}");
    }

    #[test]
    fn counters() {
        assert_eq!(
            ok("count(agent_task_failure_total) by (agent_id) over 5m > 5"),
            "sum by (agent_id) (increase(agent_task_failure_total[5m])) > 5"
        );
        assert_eq!(
            ok("count(agent_task_failure_total) over 90s > 5"),
            "increase(agent_task_failure_total[1m30s]) > 5"
        );
        assert_eq!(
            ok("sum(bytes_total) by () over 1h30m >= 1e9"),
            "sum(increase(bytes_total[1h30m])) >= 1000000000"
        );
        assert_eq!(
            ok("rate(bytes_total) by (agent_id) over 10m > 0.5"),
            "sum by (agent_id) (rate(bytes_total[10m])) > 0.5"
        );
        assert_eq!(
            q("count(bytes_total) over 5m > 1"),
            Err("count(bytes_total) counts the events of a counter that adds a value field, and Prometheus sees only the sum: use sum(bytes_total)".into())
        );
        assert_eq!(
            q("max(bytes_total) over 5m > 1"),
            Err("max(bytes_total): a counter has only count, sum and rate".into())
        );
        assert_eq!(
            q("sum(bytes_total) > 1"),
            Err("sum(bytes_total) needs a window (`over`)".into())
        );
    }

    #[test]
    fn histograms() {
        let h = "agent_task_duration_seconds";
        assert_eq!(
            ok(&format!("count({h}) over 5m > 1")),
            format!("increase({h}_count[5m]) > 1")
        );
        assert_eq!(
            ok(&format!("sum({h}) by (agent_id) over 5m > 1")),
            format!("sum by (agent_id) (increase({h}_sum[5m])) > 1")
        );
        assert_eq!(
            ok(&format!("avg({h}) over 5m > 1")),
            format!("increase({h}_sum[5m]) / increase({h}_count[5m]) > 1")
        );
        assert_eq!(
            ok(&format!("avg({h}) by (agent_id) over 5m > 1")),
            format!("sum by (agent_id) (increase({h}_sum[5m])) / sum by (agent_id) (increase({h}_count[5m])) > 1")
        );
        // Without `by`, each series keeps its labels: the buckets are summed by all of them.
        assert_eq!(
            ok(&format!("p95({h}) over 10m > 50 for 10m")),
            format!("histogram_quantile(0.95, sum by (le, agent_id, status) (rate({h}_bucket[10m]))) > 50")
        );
        assert_eq!(
            ok(&format!("p99.9({h}) by (agent_id) over 10m > 50")),
            format!(
                "histogram_quantile(0.999, sum by (le, agent_id) (rate({h}_bucket[10m]))) > 50"
            )
        );
        assert_eq!(
            ok(&format!("p50({h}) by () over 1m > 1")),
            format!("histogram_quantile(0.5, sum by (le) (rate({h}_bucket[1m]))) > 1")
        );
        for f in ["rate", "min", "max", "last"] {
            assert_eq!(
                q(&format!("{f}({h}) over 5m > 1")),
                Err(format!("{f}({h}): a Prometheus histogram keeps only buckets, a sum and a count (use count, sum, avg or a quantile)"))
            );
        }
    }

    #[test]
    fn gauges() {
        assert_eq!(
            ok("agent_queue_depth > 100 for 2m"),
            "agent_queue_depth > 100"
        );
        assert_eq!(
            ok("agent_queue_depth by (queue_name) > 100"),
            "max by (queue_name) (agent_queue_depth) > 100"
        );
        assert_eq!(
            ok("last(agent_queue_depth) by () over 5m > 100"),
            "max(last_over_time(agent_queue_depth[5m])) > 100"
        );
        assert_eq!(
            ok("max(agent_queue_depth) by (queue_name) over 5m > 100"),
            "max by (queue_name) (max_over_time(agent_queue_depth[5m])) > 100"
        );
        assert_eq!(
            ok("min(agent_queue_depth) over 5m < 1"),
            "min_over_time(agent_queue_depth[5m]) < 1"
        );
        assert_eq!(
            ok("avg(agent_queue_depth) by (queue_name) over 5m > 10"),
            "avg by (queue_name) (avg_over_time(agent_queue_depth[5m])) > 10"
        );
        for f in ["count", "sum", "rate"] {
            assert_eq!(
                q(&format!("{f}(agent_queue_depth) over 5m > 1")),
                Err(format!("{f}(agent_queue_depth): Prometheus samples a gauge's value, not each time it is set (use agent_queue_depth, max, min or avg)"))
            );
        }
        assert_eq!(
            q("max(agent_queue_depth) > 1"),
            Err("max(agent_queue_depth) needs a window (`over`)".into())
        );
    }

    #[test]
    fn arithmetic_keeps_its_meaning() {
        assert_eq!(
            ok("count(agent_task_failure_total) / (count(agent_task_success_total) + count(agent_task_failure_total)) by (agent_id) over 10m > 0.2"),
            "sum by (agent_id) (increase(agent_task_failure_total[10m])) / (sum by (agent_id) (increase(agent_task_success_total[10m])) + sum by (agent_id) (increase(agent_task_failure_total[10m]))) > 0.2"
        );
        assert_eq!(ok("a_g * 2 + 1 > 0"), "a_g * 2 + 1 > 0");
        assert_eq!(ok("a_g - (a_g - 1) > 0"), "a_g - (a_g - 1) > 0");
        assert_eq!(ok("(a_g - a_g) - 1 > 0"), "a_g - a_g - 1 > 0");
        assert_eq!(ok("a_g / (a_g * 2) > 0"), "a_g / (a_g * 2) > 0");
        assert_eq!(ok("(a_g + 1) * -2 > -3"), "(a_g + 1) * (-2) > -3");
        // A histogram average is a division: it is parenthesized as a divisor.
        assert_eq!(
            ok("1 / avg(agent_task_duration_seconds) over 1m > 2"),
            "1 / (increase(agent_task_duration_seconds_sum[1m]) / increase(agent_task_duration_seconds_count[1m])) > 2"
        );
    }

    #[test]
    fn absent_and_unknown_metrics_are_refused() {
        assert_eq!(
            q(r#"absent(component == "Scheduler") for 5m"#),
            Err("absent() watches log events, which Prometheus does not see".into())
        );
        assert_eq!(q("nope > 1"), Err("unknown metric nope".into()));
    }

    #[test]
    fn yaml_strings() {
        assert_eq!(yaml_string("a \"b\" \\ c"), r#""a \"b\" \\ c""#);
        assert_eq!(yaml_string("x\ny\u{85}z\u{2028}"), r#""x\ny\u0085z\u2028""#);
        assert_eq!(yaml_key("team"), "team");
        assert_eq!(yaml_key("a-b"), r#""a-b""#);
    }

    struct Owned {
        name: &'static str,
        expr: RuleExpr,
        severity: Severity,
        summary: Option<Template>,
        description: Option<Template>,
        link: Option<Template>,
        labels: BTreeMap<String, String>,
    }

    fn rule(name: &'static str, expr: &str, summary: Option<&str>) -> Owned {
        Owned {
            name,
            expr: parse(expr).expect(expr),
            severity: Severity::Warning,
            summary: summary.map(|s| Template::parse(s).expect(s)),
            description: None,
            link: None,
            labels: BTreeMap::new(),
        }
    }

    fn infos(rules: &[Owned]) -> Vec<RuleInfo<'_>> {
        rules
            .iter()
            .map(|r| RuleInfo {
                name: r.name,
                expr: &r.expr,
                severity: r.severity,
                summary: r.summary.as_ref(),
                description: r.description.as_ref(),
                link: r.link.as_ref(),
                labels: &r.labels,
            })
            .collect()
    }

    #[test]
    fn rules_file_layout() {
        let t = table();
        let mut failures = rule(
            "AgentTaskFailures",
            "count(agent_task_failure_total) by (agent_id) over 5m > 5 for 1m",
            Some("{{ $labels.agent_id }}: {{ $value }} failures (> {{ $threshold }})"),
        );
        failures.severity = Severity::Critical;
        failures.labels.insert("team".into(), "agents".into());
        failures.labels.insert("odd-key".into(), "x".into());
        failures.link =
            Some(Template::parse("https://grafana/d/x?var-agent={{ $labels.agent_id }}").unwrap());
        let rules = [
            failures,
            rule(
                "SchedulerSilent",
                r#"absent(component == "Scheduler") for 5m"#,
                None,
            ),
        ];
        let text = render_rules("weir-agents", &infos(&rules), &|n| info(&t, n));
        assert_eq!(
            text,
            r#"# Prometheus alerting rules, generated by `weir generate prometheus-rules`
# from the [[alerts]] of pipeline weir-agents. Generate them again rather than edit them.
groups:
  - name: "weir-agents"
    rules:
      - alert: "AgentTaskFailures"
        expr: "sum by (agent_id) (increase(agent_task_failure_total[5m])) > 5"
        for: 1m
        labels:
          severity: "critical"
          "odd-key": "x"
          team: "agents"
        annotations:
          summary: "{{ $labels.agent_id }}: {{ $value }} failures (> 5)"
          link: "https://grafana/d/x?var-agent={{ $labels.agent_id }}"
      # SchedulerSilent: not expressible in Prometheus: absent() watches log events, which Prometheus does not see
"#
        );
        let none = render_rules("g", &infos(&rules[1..]), &|n| info(&t, n));
        assert!(
            none.contains("    rules: []\n      # SchedulerSilent"),
            "{none}"
        );
    }

    /// Skips (or, with `CI=true`, fails) a test whose tool is missing.
    fn missing(what: &str) {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{what} is missing, and CI=true requires it");
        }
        eprintln!("SKIPPED: {what} is missing");
    }

    /// The real `promtool check rules` accepts the file: YAML, PromQL and the annotation
    /// templates.
    #[test]
    fn promtool_accepts_the_rules_file() {
        if Command::new("promtool").arg("--version").output().is_err() {
            return missing("promtool");
        }
        let t = table();
        let mut rules = vec![
            rule(
                "AgentTaskFailures",
                "count(agent_task_failure_total) by (agent_id) over 5m > 5",
                Some("Agent {{ $labels.agent_id }} failed {{ $value }} tasks in 5m (threshold {{ $threshold }}); rule {{ $rule }}, {{ $severity }}"),
            ),
            rule(
                "AgentQueueBacklog",
                "agent_queue_depth > 100 for 2m",
                Some("Queue {{ $labels.queue_name }} holds {{ $value | printf \"%.0f\" }} tasks"),
            ),
            rule(
                "AgentTasksSlow",
                "p95(agent_task_duration_seconds) over 10m > 60 for 10m",
                Some("p95 of task durations is {{ $value | humanizeDuration }}, above {{ $threshold | humanizeDuration }}"),
            ),
            rule(
                "SchedulerSilent",
                r#"absent(component == "Scheduler") for 5m"#,
                Some("No scheduler events for 5m"),
            ),
            rule(
                "AgentFailureRatio",
                "count(agent_task_failure_total) / (count(agent_task_success_total) + count(agent_task_failure_total)) by (agent_id) over 10m > 0.2",
                Some("{{ printf \"%.1f\" $value }} of the tasks of {{ $labels.agent_id }} fail"),
            ),
            rule(
                "ComponentSilent",
                r#"absent(level != "DEBUG") by (component) for 2m"#,
                None,
            ),
            rule(
                "TaskDurationAverage",
                "avg(agent_task_duration_seconds) by () over 1h30m >= 0.5e1",
                None,
            ),
        ];
        rules[0].description =
            Some(Template::parse("multi\nline \"quoted\" \\ text\u{2028}").unwrap());
        rules[0].link = Some(
            Template::parse(
                "https://grafana.example/d/agents?var-agent={{ $labels.agent_id }}&from=now-1h",
            )
            .unwrap(),
        );
        rules[0].labels.insert("team".into(), "agents".into());
        let text = render_rules("weir agents: \"default\"", &infos(&rules), &|n| info(&t, n));
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("weir-rules.yml");
        std::fs::write(&path, &text).expect("the rules file is written");
        let out = check_rules(&path);
        assert!(
            out.status.success(),
            "promtool check rules failed:\n{}\n{}\n--- file:\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("SUCCESS: 5 rules found"),
            "{stdout}\n{text}"
        );
        assert!(text.contains("# SchedulerSilent: not expressible in Prometheus"));
        assert!(text.contains("# ComponentSilent: not expressible in Prometheus"));
    }

    fn check_rules(path: &Path) -> std::process::Output {
        Command::new("promtool")
            .arg("check")
            .arg("rules")
            .arg(path)
            .output()
            .expect("promtool runs")
    }
}
