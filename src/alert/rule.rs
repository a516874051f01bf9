//! `[[alerts]]` and `[notifiers.NAME]` of a pipeline file: the config types and their
//! compilation into [`Rule`]s and the [`Feed`] the hot path records into.
//!
//! Compilation checks what the expression parser cannot: that every metric a rule names is
//! declared, that the function suits the metric's kind (a quantile needs a histogram, a bare
//! name a gauge), that `by` labels exist on every metric of the rule, that templates only name
//! labels the alert has, and that `notify` names declared notifiers. Errors point into the
//! expression (file, line, column).

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::engine::{Calc, Rule, RuleKind};
use super::expr::{self, Arith, Func, RuleExpr};
use super::notify::{NotifierConfig, Severity};
use super::template::Template;
use super::window::{AbsentGroups, Feed, Term};
use crate::derive::condition::Condition;
use crate::derive::{CompiledMetric, MetricKind};
use crate::located::CompileError;
use crate::parse::{FieldRef, PathTrie};
use crate::telemetry::SelfMetrics;

/// `[[alerts]]`: one alert rule.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// The alert's name (Alertmanager's `alertname`), such as `AgentTaskFailures`.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// The rule: `count(agent_task_failure_total) by (agent_id) over 5m > 5`,
    /// `agent_queue_depth > 100 for 2m`, `absent(component == "Scheduler") for 5m`...
    #[schemars(with = "String")]
    pub expr: Spanned<String>,
    /// info, warning or critical. Default: warning.
    #[serde(default)]
    pub severity: Option<Severity>,
    /// One line for people; `{{ $labels.agent_id }}`, `{{ $value }}`, `{{ $threshold }}`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub summary: Option<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub description: Option<Spanned<String>>,
    /// A dashboard or runbook URL template.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub link: Option<Spanned<String>>,
    /// Static labels added to every alert of the rule (`team = "agents"`).
    #[serde(default)]
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    pub labels: Option<Spanned<BTreeMap<String, String>>>,
    /// Notifier names. Default: every notifier of the file.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub notify: Option<Spanned<Vec<String>>>,
    /// How often a firing alert is notified again. Default: 4h.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub repeat_interval: Option<Spanned<String>>,
    /// Most label sets tracked; more are counted in `weir_alert_groups_dropped_total`.
    /// Default: 10000.
    #[serde(default = "default_max_groups")]
    pub max_groups: usize,
}

const fn default_max_groups() -> usize {
    10_000
}

const DEFAULT_REPEAT_SECS: i64 = 4 * 3600;

/// Maps a 1-based character column of `text` (a TOML string) to a span in the file.
fn span_in(text: &Spanned<String>, column: usize) -> Range<usize> {
    let s = text.get_ref();
    // +1 skips the opening quote; exact for strings without escapes.
    let at = text.span().start
        + 1
        + s.char_indices()
            .nth(column.saturating_sub(1))
            .map_or(s.len(), |(i, _)| i);
    at..at + 1
}

fn at_byte(text: &Spanned<String>, offset: usize) -> Range<usize> {
    let at = text.span().start + 1 + offset.min(text.get_ref().len());
    at..at + 1
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs().max(1)).unwrap_or(i64::MAX)
}

fn parse_template(
    t: &Option<Spanned<String>>,
    what: &str,
) -> Result<Option<Template>, CompileError> {
    t.as_ref()
        .map(|t| {
            Template::parse(t.get_ref()).map_err(|e| {
                CompileError::at(
                    span_in(t, e.column),
                    format!("invalid {what} template: expected {}", e.expected),
                )
            })
        })
        .transpose()
}

impl AlertConfig {
    /// Compiles the rule; records its terms in `feed` and tells the watched metrics (by index
    /// in `metrics`) which terms to update.
    pub fn compile(
        &self,
        metrics: &mut [CompiledMetric],
        notifiers: &BTreeMap<String, NotifierConfig>,
        trie: &mut PathTrie,
        feed: &mut Feed,
        selfm: &SelfMetrics,
    ) -> Result<Rule, CompileError> {
        let name = self.name.get_ref().clone();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == ':')
        {
            return Err(CompileError::at(
                self.name.span(),
                format!("invalid alert name {name:?}: expected letters, digits, `_`, `-` and `:`"),
            ));
        }
        let parsed = expr::parse(self.expr.get_ref()).map_err(|e| {
            CompileError::at(
                span_in(&self.expr, e.column),
                format!("invalid alert expression: expected {}", e.expected),
            )
        })?;
        let severity = self.severity.unwrap_or(Severity::Warning);
        let summary = parse_template(&self.summary, "summary")?;
        let description = parse_template(&self.description, "description")?;
        let link = parse_template(&self.link, "link")?;
        let labels = self
            .labels
            .as_ref()
            .map(|l| l.get_ref().clone())
            .unwrap_or_default();
        if let Some(l) = &self.labels {
            for k in l.get_ref().keys() {
                if !crate::derive::valid_label_name(k)
                    || k.starts_with("__")
                    || k == "alertname"
                    || k == "severity"
                {
                    return Err(CompileError::at(
                        l.span(),
                        format!("alert {name:?}: invalid label name {k:?} (letters, digits and `_`; `alertname`, `severity` and `__*` are set by weir)"),
                    ));
                }
            }
        }
        let notify = match &self.notify {
            Some(n) => {
                for target in n.get_ref() {
                    if !notifiers.contains_key(target) {
                        let hint =
                            crate::located::closest(target, notifiers.keys().map(String::as_str))
                                .map(|c| format!("; did you mean {c:?}?"))
                                .unwrap_or_default();
                        let declared = if notifiers.is_empty() {
                            "none is declared (add a [notifiers.NAME] table)".to_string()
                        } else {
                            format!(
                                "declared: {}",
                                notifiers.keys().cloned().collect::<Vec<_>>().join(", ")
                            )
                        };
                        return Err(CompileError::at(
                            n.span(),
                            format!(
                                "alert {name:?}: unknown notifier {target:?} ({declared}){hint}"
                            ),
                        ));
                    }
                }
                n.get_ref().clone()
            }
            None => notifiers.keys().cloned().collect(),
        };
        let repeat = match &self.repeat_interval {
            Some(r) => secs(expr::parse_duration(r.get_ref()).map_err(|e| {
                CompileError::at(r.span(), format!("alert {name:?}: repeat_interval: {e}"))
            })?),
            None => DEFAULT_REPEAT_SECS,
        };
        if self.max_groups == 0 {
            return Err(CompileError::at(
                self.name.span(),
                format!("alert {name:?}: max_groups must be at least 1"),
            ));
        }
        let dropped = selfm.alert_groups_dropped.with_label_values(&[&name]);
        let (kind, group_labels) = match &parsed {
            RuleExpr::Absent {
                condition,
                condition_offset,
                by,
                for_,
            } => {
                let cond = Condition::new(condition, &mut |p| FieldRef::resolve(p, trie)).map_err(
                    |e| {
                        let byte = condition
                            .char_indices()
                            .nth(e.column - 1)
                            .map_or(condition.len(), |(i, _)| i);
                        CompileError::at(
                            at_byte(&self.expr, condition_offset + byte),
                            format!("invalid condition in absent(): expected {}", e.expected),
                        )
                    },
                )?;
                let mut names: Vec<String> = Vec::new();
                for path in by {
                    let label = path.rsplit('.').next().unwrap_or(path).replace('-', "_");
                    if names.contains(&label) {
                        return Err(CompileError::at(
                            self.expr.span(),
                            format!("alert {name:?}: two `by` fields end in {label:?}; the last part of each path names its label"),
                        ));
                    }
                    names.push(label);
                }
                feed.absent.push(AbsentGroups {
                    condition: cond,
                    by: by.iter().map(|p| FieldRef::resolve(p, trie)).collect(),
                    seen: Default::default(),
                    max_groups: self.max_groups,
                    dropped,
                });
                (
                    RuleKind::Absent {
                        index: feed.absent.len() - 1,
                        for_secs: secs(*for_),
                        condition: condition.clone(),
                    },
                    names,
                )
            }
            RuleExpr::Value {
                arith,
                by,
                over,
                cmp,
                threshold,
                for_,
            } => {
                if !threshold.is_finite() {
                    return Err(CompileError::at(
                        self.expr.span(),
                        format!("alert {name:?}: the threshold must be a finite number"),
                    ));
                }
                // Which labels make a group: `by`, or (no `by`) every label of the metrics,
                // which must then agree.
                let mut group_labels: Option<Vec<String>> = by.clone();
                let mut first_metric = None;
                let mut check_terms = Vec::new();
                collect_terms(arith, &mut check_terms);
                for (metric, func, offset) in &check_terms {
                    let here = at_byte(&self.expr, *offset);
                    let Some(mi) = metrics.iter().position(|m| &m.name == metric) else {
                        let hint = crate::located::closest(
                            metric,
                            metrics.iter().map(|m| m.name.as_str()),
                        )
                        .map(|c| format!("; did you mean {c:?}?"))
                        .unwrap_or_default();
                        return Err(CompileError::at(
                            here,
                            format!("alert {name:?}: unknown metric {metric:?}: rules watch metrics declared in [[metrics]]{hint}"),
                        ));
                    };
                    let m = &metrics[mi];
                    check_func(m, *func, over.is_some()).map_err(|why| {
                        CompileError::at(here.clone(), format!("alert {name:?}: {why}"))
                    })?;
                    match &group_labels {
                        Some(g) => {
                            if let Some(missing) = g.iter().find(|l| !m.label_names.contains(l)) {
                                return Err(CompileError::at(
                                    here,
                                    format!(
                                        "alert {name:?}: metric {metric:?} has no label {missing:?} to group by (its labels: {})",
                                        m.label_names.join(", ")
                                    ),
                                ));
                            }
                        }
                        None => group_labels = Some(m.label_names.clone()),
                    }
                    if by.is_none() {
                        let mut a = m.label_names.clone();
                        let mut b = group_labels.clone().unwrap_or_default();
                        a.sort();
                        b.sort();
                        if a != b {
                            return Err(CompileError::at(
                                here,
                                format!("alert {name:?}: the metrics of this rule have different labels; say which to match on with `by (...)`"),
                            ));
                        }
                    }
                    first_metric.get_or_insert_with(|| metric.clone());
                }
                let group_labels = group_labels.unwrap_or_default();
                let window = over.map(secs);
                let mut term_ids = Vec::new();
                let calc = build_calc(arith, &mut |metric, func| {
                    let mi = metrics
                        .iter()
                        .position(|m| m.name == metric)
                        .expect("checked above");
                    let m = &mut metrics[mi];
                    let positions = group_labels
                        .iter()
                        .map(|l| {
                            m.label_names
                                .iter()
                                .position(|n| n == l)
                                .expect("checked above")
                        })
                        .collect();
                    feed.terms.push(Term {
                        metric: metric.to_string(),
                        func,
                        window: if func == Func::Last && window.is_none() {
                            None
                        } else {
                            window
                        },
                        stale: (m.expire_after_secs > 0)
                            .then(|| i64::try_from(m.expire_after_secs).unwrap_or(i64::MAX)),
                        positions,
                        sketch: matches!(func, Func::Quantile(_)),
                        groups: Default::default(),
                        max_groups: self.max_groups,
                        dropped: dropped.clone(),
                    });
                    let id = feed.terms.len() - 1;
                    m.watchers.push(id);
                    term_ids.push(id);
                    id
                });
                (
                    RuleKind::Value {
                        calc,
                        cmp: *cmp,
                        threshold: *threshold,
                        for_secs: for_.map_or(0, secs),
                        terms: term_ids,
                        metric: first_metric.unwrap_or_default(),
                    },
                    group_labels,
                )
            }
        };
        for (t, what) in [
            (&summary, "summary"),
            (&description, "description"),
            (&link, "link"),
        ] {
            if let Some(t) = t {
                if let Some(l) = t
                    .label_names()
                    .into_iter()
                    .find(|l| !group_labels.iter().any(|g| g == l) && !labels.contains_key(*l))
                {
                    let span = match what {
                        "summary" => self.summary.as_ref(),
                        "description" => self.description.as_ref(),
                        _ => self.link.as_ref(),
                    }
                    .map_or(self.name.span(), Spanned::span);
                    return Err(CompileError::at(
                        span,
                        format!(
                            "alert {name:?}: the {what} uses $labels.{l}, but the alert's labels are: {}",
                            group_labels
                                .iter()
                                .chain(labels.keys())
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(Rule {
            name,
            expr_text: self.expr.get_ref().clone(),
            expr: parsed,
            severity,
            summary,
            description,
            link,
            labels,
            notify,
            repeat,
            group_labels,
            kind,
            states: BTreeMap::new(),
        })
    }
}

fn collect_terms(a: &Arith, out: &mut Vec<(String, Func, usize)>) {
    match a {
        Arith::Num(_) => {}
        Arith::Term {
            func,
            metric,
            offset,
        } => out.push((metric.clone(), *func, *offset)),
        Arith::Add(x, y) | Arith::Sub(x, y) | Arith::Mul(x, y) | Arith::Div(x, y) => {
            collect_terms(x, out);
            collect_terms(y, out);
        }
    }
}

fn build_calc(a: &Arith, term: &mut dyn FnMut(&str, Func) -> usize) -> Calc {
    let bin = |op, x: &Arith, y: &Arith, term: &mut dyn FnMut(&str, Func) -> usize| {
        let l = build_calc(x, term);
        let r = build_calc(y, term);
        Calc::Bin(op, Box::new(l), Box::new(r))
    };
    match a {
        Arith::Num(n) => Calc::Num(*n),
        Arith::Term { func, metric, .. } => Calc::Term(term(metric, *func)),
        Arith::Add(x, y) => bin('+', x, y, term),
        Arith::Sub(x, y) => bin('-', x, y, term),
        Arith::Mul(x, y) => bin('*', x, y, term),
        Arith::Div(x, y) => bin('/', x, y, term),
    }
}

/// Whether `func` suits the metric's kind (and has the window it needs).
fn check_func(m: &CompiledMetric, func: Func, windowed: bool) -> Result<(), String> {
    let name = &m.name;
    let ok = match (m.kind, func) {
        (MetricKind::Counter, Func::Count | Func::Sum | Func::Rate) => true,
        (MetricKind::Counter, _) => {
            return Err(format!(
                "{name} is a counter: use count({name}), sum({name}) or rate({name}) over a window"
            ))
        }
        (MetricKind::Histogram, Func::Rate | Func::Last) => {
            return Err(format!(
                "{name} is a histogram: use count, sum, avg, min, max or a quantile such as p95({name}) over a window"
            ))
        }
        (MetricKind::Histogram, _) => true,
        (MetricKind::Gauge, Func::Quantile(_)) => {
            return Err(format!(
                "quantiles need a histogram, and {name} is a gauge: use max({name}), avg({name}) or {name}"
            ))
        }
        (MetricKind::Gauge, Func::Rate) => {
            return Err(format!(
                "{name} is a gauge: rate() is for counters; use max, min, avg or {name}"
            ))
        }
        (MetricKind::Gauge, _) => true,
    };
    if ok && func != Func::Last && !windowed {
        return Err("this function needs a window: add `over 5m` (or another duration) before the comparison".into());
    }
    Ok(())
}
