//! Metric expectations: series keys (`name{label="value"}`), checked against the pipeline's
//! metrics, and the samples of a registry they select.
//!
//! A key selects every sample of its name that carries the labels it gives (others any) and
//! the values are summed, so a name alone is the sum over its series and an absent series is
//! 0. `le` of a `_bucket` series compares as a number (`le="1"` is `le="1.0"`).

use std::fmt;

use crate::derive::{CompiledMetric, MetricKind};

/// A series as written in `[tests.expect.metrics]`: `name{label="value",...}`.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesKey {
    pub name: String,
    /// In the order written.
    pub labels: Vec<(String, String)>,
}

/// A syntax error in a series key: the 1-based column (in characters) and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at column {column}: expected {expected}")]
pub struct KeyError {
    pub column: usize,
    pub expected: String,
}

impl SeriesKey {
    /// Parses `name` or `name{a="x", b="y"}`; label values take Prometheus' escapes (`\\`,
    /// `\"`, `\n`).
    pub fn parse(src: &str) -> Result<SeriesKey, KeyError> {
        let chars: Vec<char> = src.chars().collect();
        let mut i = 0;
        let fail = |at: usize, expected: &str| KeyError {
            column: at + 1,
            expected: expected.to_string(),
        };
        let ident = |i: &mut usize, colon: bool| {
            let start = *i;
            while *i < chars.len() {
                let c = chars[*i];
                let ok = c.is_ascii_alphabetic()
                    || c == '_'
                    || (colon && c == ':')
                    || (*i > start && c.is_ascii_digit());
                if !ok {
                    break;
                }
                *i += 1;
            }
            chars[start..*i].iter().collect::<String>()
        };
        let skip_ws = |i: &mut usize| {
            while *i < chars.len() && chars[*i].is_whitespace() {
                *i += 1;
            }
        };
        let name = ident(&mut i, true);
        if name.is_empty() {
            return Err(fail(i, "a metric name"));
        }
        let mut labels: Vec<(String, String)> = Vec::new();
        if i == chars.len() {
            return Ok(SeriesKey { name, labels });
        }
        if chars[i] != '{' {
            return Err(fail(i, "`{` or the end of the series"));
        }
        i += 1;
        loop {
            skip_ws(&mut i);
            if chars.get(i) == Some(&'}') {
                i += 1;
                break;
            }
            let at = i;
            let label = ident(&mut i, false);
            if label.is_empty() {
                return Err(fail(i, "a label name or `}`"));
            }
            if labels.iter().any(|(l, _)| *l == label) {
                return Err(fail(at, "each label once"));
            }
            skip_ws(&mut i);
            if chars.get(i) != Some(&'=') {
                return Err(fail(i, "`=`"));
            }
            i += 1;
            skip_ws(&mut i);
            if chars.get(i) != Some(&'"') {
                return Err(fail(i, "a label value in double quotes"));
            }
            i += 1;
            let mut value = String::new();
            loop {
                match chars.get(i) {
                    None => return Err(fail(i, "a closing `\"`")),
                    Some('"') => break,
                    Some('\\') => {
                        match chars.get(i + 1) {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            _ => return Err(fail(i + 1, "`\\\\`, `\\\"` or `n` after `\\`")),
                        }
                        i += 1;
                    }
                    Some(&c) => value.push(c),
                }
                i += 1;
            }
            i += 1;
            labels.push((label, value));
            skip_ws(&mut i);
            match chars.get(i) {
                Some(',') => i += 1,
                Some('}') => {
                    i += 1;
                    break;
                }
                _ => return Err(fail(i, "`,` or `}`")),
            }
        }
        if i != chars.len() {
            return Err(fail(i, "the end of the series"));
        }
        Ok(SeriesKey { name, labels })
    }
}

impl fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_series(
            f,
            &self.name,
            self.labels.iter().map(|(k, v)| (&**k, &**v)),
            false,
        )
    }
}

/// `name{a="x",b="y"}` with Prometheus' escapes; `name` alone when there are no labels, unless
/// `braces`.
fn write_series<'a>(
    f: &mut impl fmt::Write,
    name: &str,
    labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    braces: bool,
) -> fmt::Result {
    f.write_str(name)?;
    let mut first = true;
    for (k, v) in labels {
        f.write_str(if first { "{" } else { "," })?;
        first = false;
        write!(f, "{k}=\"")?;
        for c in v.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        f.write_str("\"")?;
    }
    if !first {
        f.write_str("}")?;
    } else if braces {
        f.write_str("{}")?;
    }
    Ok(())
}

pub(super) fn series_text<'a>(
    name: &str,
    labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    braces: bool,
) -> String {
    let mut s = String::new();
    let _ = write_series(&mut s, name, labels, braces);
    s
}

/// A number as Prometheus writes it: `3`, `2.5`, `+Inf`.
pub(super) fn number(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Equal, up to the rounding of float sums (a histogram's `_sum`).
pub(super) fn same_number(a: f64, b: f64) -> bool {
    a == b
        || (a.is_finite() && b.is_finite() && (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0))
}

pub(super) fn parse_le(s: &str) -> Option<f64> {
    match s.trim() {
        "+Inf" | "Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        t => t.parse::<f64>().ok().filter(|v| v.is_finite()),
    }
}

/// A series expected in the metrics, checked against the pipeline.
#[derive(Debug, Clone)]
pub(super) struct MetricCheck {
    pub(super) key: SeriesKey,
    /// The `le` of a `_bucket` series, as a number (it is compared as one).
    pub(super) le: Option<f64>,
    pub(super) expected: f64,
}

/// Checks that `key` names a series the pipeline can have; returns its `le`, if any.
pub(super) fn check_series(
    key: &SeriesKey,
    metrics: &[CompiledMetric],
) -> Result<Option<f64>, String> {
    let found = metrics
        .iter()
        .find(|m| m.name == key.name)
        .map(|m| (m, ""))
        .or_else(|| {
            ["_bucket", "_sum", "_count"]
                .into_iter()
                .find_map(|suffix| {
                    let base = key.name.strip_suffix(suffix)?;
                    metrics
                        .iter()
                        .find(|m| m.name == base && m.kind == MetricKind::Histogram)
                        .map(|m| (m, suffix))
                })
        });
    let Some((metric, suffix)) = found else {
        let names: Vec<String> = metrics
            .iter()
            .map(|m| match m.kind {
                MetricKind::Histogram => format!("{}_count/_sum/_bucket", m.name),
                _ => m.name.clone(),
            })
            .collect();
        return Err(format!(
            "no metric {:?} in this pipeline (its series: {})",
            key.name,
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        ));
    };
    if metric.kind == MetricKind::Histogram && suffix.is_empty() {
        return Err(format!(
            "{0:?} is a histogram: name one of its series, {0}_count, {0}_sum or {0}_bucket{{le=\"...\"}}",
            metric.name
        ));
    }
    let mut le = None;
    for (label, value) in &key.labels {
        if label == "le" && suffix == "_bucket" {
            let bounds: Vec<String> = metric
                .buckets
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .map(number)
                .collect();
            let v = parse_le(value)
                .filter(|v| v.is_infinite() || metric.buckets.iter().any(|b| same_number(*b, *v)));
            match v {
                Some(v) => le = Some(v),
                None => {
                    return Err(format!(
                        "le=\"{value}\" is not a bucket of {:?}; its buckets: {}",
                        metric.name,
                        bounds.join(", ")
                    ))
                }
            }
        } else if !metric.label_names.iter().any(|l| l == label) {
            let mut names = metric.label_names.clone();
            if suffix == "_bucket" {
                names.push("le".into());
            }
            return Err(format!(
                "metric {:?} has no label {label:?} (its labels: {})",
                metric.name,
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            ));
        }
    }
    Ok(le)
}

/// One sample of the exposition.
#[derive(Debug, Clone)]
pub(super) struct Sample {
    name: String,
    /// Sorted by name; `le` included (as Prometheus writes it) for buckets.
    labels: Vec<(String, String)>,
    le: Option<f64>,
    value: f64,
}

/// The samples of a registry, as the exposition would show them.
pub(super) fn samples(registry: &prometheus::Registry) -> Vec<Sample> {
    use prometheus::proto::MetricType;
    let mut out = Vec::new();
    for family in registry.gather() {
        let name = family.name();
        for m in family.get_metric() {
            let mut labels: Vec<(String, String)> = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect();
            labels.sort();
            let mut push = |suffix: &str, labels: Vec<(String, String)>, le, value| {
                out.push(Sample {
                    name: format!("{name}{suffix}"),
                    labels,
                    le,
                    value,
                })
            };
            match family.get_field_type() {
                MetricType::COUNTER => push("", labels, None, m.get_counter().get_value()),
                MetricType::GAUGE => push("", labels, None, m.get_gauge().get_value()),
                MetricType::HISTOGRAM => {
                    let h = m.get_histogram();
                    let buckets = h
                        .get_bucket()
                        .iter()
                        .map(|b| (b.upper_bound(), b.cumulative_count()))
                        .chain([(f64::INFINITY, h.get_sample_count())]);
                    for (bound, count) in buckets {
                        let mut l = labels.clone();
                        l.push(("le".into(), number(bound)));
                        l.sort();
                        push("_bucket", l, Some(bound), count as f64);
                    }
                    push("_sum", labels.clone(), None, h.get_sample_sum());
                    push("_count", labels, None, h.get_sample_count() as f64);
                }
                _ => {}
            }
        }
    }
    out
}

impl MetricCheck {
    fn selects(&self, s: &Sample) -> bool {
        s.name == self.key.name
            && self.key.labels.iter().all(|(k, v)| {
                s.labels.iter().any(|(sk, sv)| {
                    sk == k
                        && match (k.as_str(), self.le, s.le) {
                            ("le", Some(want), Some(got)) => same_number(want, got),
                            _ => sv == v,
                        }
                })
            })
    }

    /// `None` when the value matches; else the failure line.
    pub(super) fn compare(&self, samples: &[Sample]) -> Option<String> {
        let chosen: Vec<&Sample> = samples.iter().filter(|s| self.selects(s)).collect();
        let got: f64 = chosen.iter().map(|s| s.value).sum();
        if same_number(got, self.expected) {
            return None;
        }
        let mut line = format!("metric {}: expected {}, ", self.key, number(self.expected));
        if !chosen.is_empty() {
            line.push_str(&format!("got {}", number(got)));
            return Some(line);
        }
        line.push_str("got no such series");
        let others: Vec<String> = samples
            .iter()
            .filter(|s| s.name == self.key.name)
            .map(|s| {
                let labels = s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
                format!(
                    "{} = {}",
                    series_text(&s.name, labels, false),
                    number(s.value)
                )
            })
            .collect();
        if !others.is_empty() {
            let more = others.len().saturating_sub(3);
            line.push_str(&format!(
                " (has: {}",
                others[..others.len().min(3)].join(", ")
            ));
            if more > 0 {
                line.push_str(&format!(" and {more} more"));
            }
            line.push(')');
        }
        Some(line)
    }
}
