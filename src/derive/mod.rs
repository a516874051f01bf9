//! Deriving metrics from events: `[[metrics]]` of a pipeline file, compiled, then applied to
//! every event on the hot path.
//!
//! Each metric is a counter (adds 1, or a field's value), a gauge (set to a field's value) or a
//! histogram (observes a field's value, or a duration from a start/end pair, see [`pair`]), updated
//! when its `when` condition ([`condition`]) matches. Labels come from fields, with a default for
//! events that lack one. Each metric's label sets are capped and expire when idle ([`series`]).
//!
//! Invariants: [`Deriver::apply`] never allocates for an existing series and takes no lock; a
//! matching event that cannot update its metric (no value, a value that is not a number or not
//! finite, a negative counter increment) is counted in `weir_derive_errors_total{metric,reason}`.
//!
//! Label values come from the lines, so an attacker chooses their length: each is cut to
//! `max_label_value_bytes` (at a UTF-8 boundary) and the event counted under
//! `reason="label_value_truncated"`. Cutting rather than rejecting keeps every event in the
//! metric's totals (nothing is lost, sums stay right); values that share their first KiB share
//! a series, and `max_series` still caps how many there are. With both caps, a metric's
//! exposition is bounded by `max_series` × labels × `max_label_value_bytes` (Prometheus'
//! `label_value_length_limit` guards the same thing by failing the whole scrape).

pub mod condition;
pub mod exemplar;
pub mod live;
pub mod pair;
pub mod remember;
pub mod series;
pub mod span;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use prometheus::{CounterVec, GaugeVec, HistogramOpts, HistogramVec, IntCounter, Opts, Registry};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use smallvec::SmallVec;
use toml::Spanned;

use crate::alert::window::Feed;
use crate::event::Event;
use crate::located::CompileError;
use crate::parse::{FieldRef, PathTrie};
use crate::telemetry::SelfMetrics;
use condition::Condition;
use pair::{PairConfig, PairCounters, Pairing};
use series::{Family, SeriesTable};

/// Kind of a derived metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// `[[metrics]]`: one derived metric.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricConfig {
    /// Prometheus metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`; `weir_` is reserved).
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// counter, gauge or histogram.
    pub kind: MetricKind,
    /// HELP text. Default: "Derived by weir from log events."
    #[serde(default)]
    pub help: Option<String>,
    /// Condition an event must match to update the metric. Default: every event.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub when: Option<Spanned<String>>,
    /// Field holding the value, or a list of fields: the first one an event has is used
    /// (`value = ["metadata.depth", "metadata.current_depth"]`). Counters default to adding 1;
    /// gauges and histograms need it (histograms may use `pair` instead).
    #[serde(default)]
    #[schemars(with = "Option<PathList>")]
    pub value: Option<Spanned<PathList>>,
    /// The value is multiplied by this before it is used: `scale = 0.001` turns a
    /// `duration_ms` field into the seconds of a `_seconds` histogram. Default: 1.
    #[serde(default)]
    #[schemars(with = "Option<f64>")]
    pub scale: Option<Spanned<f64>>,
    /// Label name to field path (`agent_id = "metadata.agent_id"`), or to
    /// `{ from = "path" | ["path", ...], default = "value", remember_by = "field" }`. A missing
    /// field gives the default, else "". With `remember_by`, an event that lacks the field
    /// takes the value last seen on an earlier event with the same `remember_by` value (e.g.
    /// the `error_type` of the error logged for the same `trace_id`).
    #[serde(default)]
    #[schemars(with = "Option<BTreeMap<String, LabelSpec>>")]
    pub labels: Option<Spanned<BTreeMap<String, LabelSpec>>>,
    /// Also derive from lines the parser could not read (invalid JSON, no regex match),
    /// whose message is then the raw line. Default: false: such lines are counted in
    /// `weir_parse_errors_total` and shipped, but feed no metric.
    #[serde(default)]
    pub include_unparsed: bool,
    /// Histogram bucket upper bounds, increasing. Default: Prometheus' default buckets.
    #[serde(default)]
    #[schemars(with = "Option<Vec<f64>>")]
    pub buckets: Option<Spanned<Vec<f64>>>,
    /// Most label sets kept; new ones past it go to one overflow series. Default: 10000.
    #[serde(default = "default_max_series")]
    pub max_series: usize,
    /// Seconds without an update after which a series is removed; 0 keeps series forever.
    /// Default: 900.
    #[serde(default = "default_expire_after_secs")]
    pub expire_after_secs: u64,
    /// Derive a duration from a start event paired with this end event.
    #[serde(default)]
    pub pair: Option<PairConfig>,
    /// Longest label value kept, in bytes; longer values are cut (at a UTF-8 boundary) and
    /// counted in `weir_derive_errors_total{reason="label_value_truncated"}`. Default: 1024.
    #[serde(default = "default_max_label_value_bytes")]
    pub max_label_value_bytes: usize,
    /// Keep the trace id of a recent event per series (counters) and per bucket (histograms),
    /// served as OpenMetrics exemplars when Prometheus scrapes in that format. Default: true
    /// for counters and histograms; gauges cannot have exemplars.
    #[serde(default)]
    #[schemars(with = "Option<bool>")]
    pub exemplars: Option<Spanned<bool>>,
}

const fn default_max_label_value_bytes() -> usize {
    1024
}

const fn default_max_series() -> usize {
    10_000
}
const fn default_expire_after_secs() -> u64 {
    900
}

/// One field path, or a list of them tried in order (`"a.b"` or `["a.b", "c"]`).
#[derive(Debug, Clone, PartialEq)]
pub struct PathList(pub Vec<String>);

impl fmt::Display for PathList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(", else "))
    }
}

impl<'de> Deserialize<'de> for PathList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PathList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field path, or a non-empty list of field paths")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<PathList, E> {
                Ok(PathList(vec![s.to_string()]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<PathList, A::Error> {
                let mut v = Vec::new();
                while let Some(p) = seq.next_element::<String>()? {
                    v.push(p);
                }
                if v.is_empty() {
                    return Err(de::Error::invalid_length(0, &self));
                }
                Ok(PathList(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl PathList {
    fn resolve(&self, trie: &mut PathTrie) -> SmallVec<[FieldRef; 2]> {
        self.0.iter().map(|p| FieldRef::resolve(p, trie)).collect()
    }
}

/// Where a label's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSpec {
    pub from: PathList,
    pub default: Option<String>,
    pub remember_by: Option<String>,
}

impl<'de> Deserialize<'de> for LabelSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            from: PathList,
            default: Option<String>,
            remember_by: Option<String>,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LabelSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field path, or a table { from = \"path\", default = \"value\", remember_by = \"field\" }")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<LabelSpec, E> {
                Ok(LabelSpec {
                    from: PathList(vec![s.to_string()]),
                    default: None,
                    remember_by: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LabelSpec, A::Error> {
                let full = Full::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(LabelSpec {
                    from: full.from,
                    default: full.default,
                    remember_by: full.remember_by,
                })
            }
        }
        d.deserialize_any(V)
    }
}

struct Label {
    fields: SmallVec<[FieldRef; 2]>,
    default: Option<String>,
    remember: Option<remember::Memory>,
}

impl Label {
    /// The first of the label's fields the event has.
    fn text<'e>(&self, ev: &'e Event<'_>) -> Option<Cow<'e, str>> {
        self.fields.iter().find_map(|f| f.text(ev))
    }
}

enum ValueFrom {
    One,
    Field(SmallVec<[FieldRef; 2]>),
    Pair(Box<Pairing>),
}

/// Only the reasons a metric can hit are created, so the exposition lists no impossible series.
struct ErrorCounters {
    value_missing: Option<IntCounter>,
    value_not_numeric: Option<IntCounter>,
    negative_increment: Option<IntCounter>,
    value_not_finite: Option<IntCounter>,
    label_value_truncated: Option<IntCounter>,
}

/// `v` cut to at most `max` bytes, at a character boundary; whether it was cut.
fn cut_label(v: Cow<'_, str>, max: usize) -> (Cow<'_, str>, bool) {
    if v.len() <= max {
        return (v, false);
    }
    let mut n = max;
    while !v.is_char_boundary(n) {
        n -= 1;
    }
    let cut = match v {
        Cow::Borrowed(s) => Cow::Borrowed(&s[..n]),
        Cow::Owned(mut s) => {
            s.truncate(n);
            Cow::Owned(s)
        }
    };
    (cut, true)
}

fn inc(c: &Option<IntCounter>) {
    if let Some(c) = c {
        c.inc();
    }
}

/// A compiled metric.
pub struct CompiledMetric {
    pub name: String,
    pub kind: MetricKind,
    /// The `help` of its config, if it has one.
    pub help: Option<String>,
    pub label_names: Vec<String>,
    pub buckets: Vec<f64>,
    when: Option<Condition>,
    value: ValueFrom,
    /// Multiplier of the value (`scale`).
    scale: f64,
    include_unparsed: bool,
    labels: Vec<Label>,
    series: SeriesTable,
    errors: ErrorCounters,
    /// Seconds idle before a series expires (0: never).
    pub expire_after_secs: u64,
    /// Longest label value kept, in bytes.
    pub max_label_value_bytes: usize,
    /// Alert terms (indexes in [`Feed::terms`]) that record this metric's updates.
    pub watchers: Vec<usize>,
    /// [`MetricConfig::definition`], to match metrics across a reload.
    pub definition: String,
    /// Where `/metrics` finds the exemplars of the series (installed by [`Deriver::new`]).
    exemplar_store: exemplar::ExemplarStore,
}

fn valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

pub fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Compiles a condition in a TOML string, mapping its column to a span in the file.
pub fn compile_condition(
    text: &Spanned<String>,
    trie: &mut PathTrie,
) -> Result<Condition, CompileError> {
    Condition::new(text.get_ref(), &mut |p| FieldRef::resolve(p, trie)).map_err(|e| {
        // +1 skips the opening quote; exact for strings without escapes.
        let at = text.span().start
            + 1
            + text
                .get_ref()
                .char_indices()
                .nth(e.column - 1)
                .map_or(text.get_ref().len(), |(i, _)| i);
        CompileError::at(
            at..at + 1,
            format!("invalid condition: expected {}", e.expected),
        )
    })
}

impl MetricConfig {
    /// What the metric is, without where it is written: a reload keeps the series (and their
    /// counts) of a metric whose definition did not change.
    pub fn definition(&self) -> String {
        let pair = self.pair.as_ref().map(|p| {
            (
                p.start.get_ref().clone(),
                p.key.clone(),
                p.timeout_secs,
                p.max_open,
            )
        });
        format!(
            "{:?}",
            (
                self.name.get_ref(),
                self.kind,
                &self.help,
                self.when.as_ref().map(|w| w.get_ref()),
                (
                    self.value.as_ref().map(|v| v.get_ref()),
                    self.scale.as_ref().map(|v| v.get_ref()),
                    self.include_unparsed,
                ),
                self.labels.as_ref().map(|l| l.get_ref()),
                self.buckets.as_ref().map(|b| b.get_ref()),
                self.max_series,
                self.expire_after_secs,
                pair,
                self.max_label_value_bytes,
                self.exemplars.as_ref().map(|e| *e.get_ref()),
            )
        )
    }

    /// Checks the metric and builds it, registering its family in `registry`. Pure: no I/O.
    pub fn compile(
        &self,
        trie: &mut PathTrie,
        registry: &Registry,
        selfm: &SelfMetrics,
    ) -> Result<CompiledMetric, CompileError> {
        let name = self.name.get_ref().clone();
        let name_span = self.name.span();
        if !valid_metric_name(&name) {
            return Err(CompileError::at(
                name_span,
                format!("invalid metric name {name:?}: expected letters, digits, `_` and `:`, not starting with a digit"),
            ));
        }
        if name.starts_with("weir_") {
            return Err(CompileError::at(
                name_span,
                format!("metric name {name:?} uses the prefix `weir_`, which is reserved for weir's own metrics"),
            ));
        }
        if self.max_label_value_bytes == 0 {
            return Err(CompileError::at(
                name_span,
                format!("metric {name:?}: max_label_value_bytes must be at least 1"),
            ));
        }
        let when = self
            .when
            .as_ref()
            .map(|w| compile_condition(w, trie))
            .transpose()?;
        let mut label_names = Vec::new();
        let mut labels = Vec::new();
        if let Some(spec) = &self.labels {
            for (lname, l) in spec.get_ref() {
                let bad = if !valid_label_name(lname) {
                    Some("expected letters, digits and `_`, not starting with a digit")
                } else if lname.starts_with("__") {
                    Some("names starting with `__` are reserved by Prometheus")
                } else if self.kind == MetricKind::Histogram && lname == "le" {
                    Some("`le` is the bucket label of histograms")
                } else {
                    None
                };
                if let Some(why) = bad {
                    return Err(CompileError::at(
                        spec.span(),
                        format!("metric {name:?}: invalid label name {lname:?}: {why}"),
                    ));
                }
                label_names.push(lname.clone());
                let remember = l.remember_by.as_ref().map(|by| {
                    remember::Memory::new(
                        FieldRef::resolve(by, trie),
                        remember::DEFAULT_MAX_ENTRIES,
                        remember::DEFAULT_TTL_SECS,
                    )
                });
                labels.push(Label {
                    fields: l.from.resolve(trie),
                    default: l.default.clone(),
                    remember,
                });
            }
        }
        let buckets = match (&self.buckets, self.kind) {
            (Some(b), MetricKind::Histogram) => {
                let v = b.get_ref();
                if v.is_empty()
                    || v.iter().any(|x| !x.is_finite())
                    || v.windows(2).any(|w| w[0] >= w[1])
                {
                    return Err(CompileError::at(
                        b.span(),
                        format!("metric {name:?}: buckets must be finite numbers in strictly increasing order"),
                    ));
                }
                v.clone()
            }
            (Some(b), _) => {
                return Err(CompileError::at(
                    b.span(),
                    format!("metric {name:?}: buckets are only for histograms"),
                ))
            }
            (None, _) => prometheus::DEFAULT_BUCKETS.to_vec(),
        };
        let pair_counters = || PairCounters {
            evicted_timeout: selfm.pair_evicted.with_label_values(&[&name, "timeout"]),
            evicted_capacity: selfm.pair_evicted.with_label_values(&[&name, "capacity"]),
            unmatched: selfm.pair_unmatched.with_label_values(&[&name]),
        };
        let value = match (&self.value, &self.pair, self.kind) {
            (Some(_), Some(_), _) => {
                return Err(CompileError::at(
                    name_span,
                    format!("metric {name:?}: give either `value` or `pair`, not both"),
                ))
            }
            (Some(v), None, _) => ValueFrom::Field(v.get_ref().resolve(trie)),
            (None, Some(p), MetricKind::Histogram) => {
                let start = compile_condition(&p.start, trie)?;
                let key = FieldRef::resolve(&p.key, trie);
                ValueFrom::Pair(Box::new(Pairing::new(start, key, p, pair_counters())))
            }
            (None, Some(_), _) => {
                return Err(CompileError::at(
                    name_span,
                    format!("metric {name:?}: `pair` derives durations and is only for histograms"),
                ))
            }
            (None, None, MetricKind::Counter) => ValueFrom::One,
            (None, None, kind) => {
                return Err(CompileError::at(
                    name_span,
                    format!("metric {name:?}: a {kind:?} needs `value = \"field.path\"`")
                        .to_lowercase(),
                ))
            }
        };
        let scale = match &self.scale {
            None => 1.0,
            Some(sc) if !sc.get_ref().is_finite() || *sc.get_ref() == 0.0 => {
                return Err(CompileError::at(
                    sc.span(),
                    format!("metric {name:?}: scale must be a finite number other than 0"),
                ))
            }
            Some(_) if matches!(value, ValueFrom::Field(_)) => {
                self.scale.as_ref().map_or(1.0, |sc| *sc.get_ref())
            }
            Some(sc) => {
                return Err(CompileError::at(
                    sc.span(),
                    format!(
                        "metric {name:?}: scale applies to a `value` field; this metric has none"
                    ),
                ))
            }
        };
        let help = self
            .help
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "Derived by weir from log events.".into());
        let lnames: Vec<&str> = label_names.iter().map(String::as_str).collect();
        let reg_err = |e: prometheus::Error| {
            CompileError::at(name_span.clone(), format!("metric {name:?}: {e}"))
        };
        let family = match self.kind {
            MetricKind::Counter => {
                let v = CounterVec::new(Opts::new(&name, &help), &lnames).map_err(reg_err)?;
                registry.register(Box::new(v.clone())).map_err(reg_err)?;
                Family::Counter(v)
            }
            MetricKind::Gauge => {
                let v = GaugeVec::new(Opts::new(&name, &help), &lnames).map_err(reg_err)?;
                registry.register(Box::new(v.clone())).map_err(reg_err)?;
                Family::Gauge(v)
            }
            MetricKind::Histogram => {
                let v = HistogramVec::new(
                    HistogramOpts::new(&name, &help).buckets(buckets.clone()),
                    &lnames,
                )
                .map_err(reg_err)?;
                registry.register(Box::new(v.clone())).map_err(reg_err)?;
                Family::Histogram(v)
            }
        };
        let ttl = match self.expire_after_secs {
            0 => None,
            s => Some(u32::try_from(s).unwrap_or(u32::MAX)),
        };
        let mut series = SeriesTable::new(
            family,
            labels.len(),
            self.max_series,
            ttl,
            selfm.series_dropped.with_label_values(&[&name]),
            selfm.series_expired.with_label_values(&[&name]),
            selfm.series_active.with_label_values(&[&name]),
        );
        let exemplars = match (&self.exemplars, self.kind) {
            (Some(e), MetricKind::Gauge) if *e.get_ref() => {
                return Err(CompileError::at(
                    e.span(),
                    format!("metric {name:?}: exemplars are only for counters and histograms (OpenMetrics has none on gauges)"),
                ));
            }
            (_, MetricKind::Gauge) => false,
            (Some(e), _) => *e.get_ref(),
            (None, _) => true,
        };
        if exemplars {
            let bounds: &[f64] = if self.kind == MetricKind::Histogram {
                &buckets
            } else {
                &[]
            };
            let family = std::sync::Arc::new(exemplar::FamilyExemplars::new(
                label_names.clone(),
                bounds.len(),
            ));
            series = series.with_exemplars(family, bounds);
        }
        let from_field = matches!(value, ValueFrom::Field(_));
        let err = |reason: &str, possible: bool| {
            possible.then(|| selfm.derive_errors.with_label_values(&[&name, reason]))
        };
        let errors = ErrorCounters {
            value_missing: err("value_missing", from_field),
            value_not_numeric: err("value_not_numeric", from_field),
            negative_increment: err(
                "negative_increment",
                from_field && self.kind == MetricKind::Counter,
            ),
            value_not_finite: err("value_not_finite", from_field),
            label_value_truncated: err("label_value_truncated", !labels.is_empty()),
        };
        Ok(CompiledMetric {
            name,
            kind: self.kind,
            help: self.help.clone().filter(|h| !h.is_empty()),
            label_names,
            buckets: if self.kind == MetricKind::Histogram {
                buckets
            } else {
                Vec::new()
            },
            when,
            value,
            scale,
            include_unparsed: self.include_unparsed,
            labels,
            series,
            errors,
            expire_after_secs: self.expire_after_secs,
            max_label_value_bytes: self.max_label_value_bytes,
            watchers: Vec::new(),
            definition: self.definition(),
            exemplar_store: selfm.exemplars.clone(),
        })
    }
}

impl CompiledMetric {
    /// A counter that adds 1 per matching event (no `value`): `count()` of it counts events.
    pub fn counts_events(&self) -> bool {
        self.kind == MetricKind::Counter && matches!(self.value, ValueFrom::One)
    }

    /// Makes this metric's series' exemplars the ones `/metrics` serves under its name.
    fn install_exemplars(&self) {
        if let Some(f) = self.series.exemplars() {
            self.exemplar_store.install(&self.name, f.clone());
        }
    }

    /// Stops serving this metric's exemplars (unless another table took the name over).
    fn uninstall_exemplars(&self) {
        if let Some(f) = self.series.exemplars() {
            self.exemplar_store.uninstall(&self.name, f);
        }
    }

    fn apply(&mut self, ev: &Event<'_>, tick: u32, feed: &mut Feed) {
        if !ev.parsed && !self.include_unparsed {
            return;
        }
        let max = self.max_label_value_bytes;
        for l in &mut self.labels {
            if let Some(m) = &mut l.remember {
                if let Some(v) = l.fields.iter().find_map(|f| f.text(ev)) {
                    m.record(ev, &v, max, tick);
                }
            }
        }
        if let ValueFrom::Pair(p) = &mut self.value {
            if self.when.as_ref().is_none_or(|w| !w.matches(ev)) {
                p.observe_start(ev);
                return;
            }
        } else if let Some(w) = &self.when {
            if !w.matches(ev) {
                return;
            }
        }
        let v = match &mut self.value {
            ValueFrom::One => 1.0,
            ValueFrom::Field(fields) => {
                // The first of the fields the event has (a list: `value = ["a", "b"]`).
                let found = fields.iter().find(|f| f.exists(ev)).or(fields.first());
                let scale = self.scale;
                match found.map(|f| (f.exists(ev), f.number(ev).map(|v| v * scale))) {
                    // `1e999999` reads as infinity: observed, it would make `_sum` +Inf, or
                    // NaN for good once a `-1e999999` follows.
                    Some((_, Some(v))) if !v.is_finite() => {
                        inc(&self.errors.value_not_finite);
                        return;
                    }
                    Some((_, Some(v))) => v,
                    Some((true, None)) => {
                        inc(&self.errors.value_not_numeric);
                        return;
                    }
                    _ => {
                        inc(&self.errors.value_missing);
                        return;
                    }
                }
            }
            ValueFrom::Pair(p) => match p.take(ev) {
                Some(v) => v,
                None => return,
            },
        };
        if self.kind == MetricKind::Counter && v < 0.0 {
            inc(&self.errors.negative_increment);
            return;
        }
        // Up to 8 labels stay on the stack: no allocation per event.
        let mut truncated = false;
        let values: SmallVec<[Cow<'_, str>; 8]> = self
            .labels
            .iter()
            .map(|l| {
                let v = l
                    .text(ev)
                    .or_else(|| l.remember.as_ref().and_then(|m| m.recall(ev, tick)))
                    .or_else(|| l.default.as_deref().map(Cow::Borrowed))
                    .unwrap_or(Cow::Borrowed(""));
                let (v, cut) = cut_label(v, max);
                truncated |= cut;
                v
            })
            .collect();
        if truncated {
            inc(&self.errors.label_value_truncated);
        }
        // A made-up trace id leads to no trace: no exemplar from it.
        let ex = (!ev.trace_generated).then_some(series::ExemplarOf {
            trace_id: &ev.trace_id,
            timestamp: ev.timestamp,
        });
        self.series.update(&values, tick, v, ex);
        if !self.watchers.is_empty() {
            feed.observe(&self.watchers, &values, v);
        }
    }
}

/// All metrics of a pipeline, applied in file order to each event, and what the alert rules
/// record of them ([`Feed`]).
pub struct Deriver {
    metrics: Vec<CompiledMetric>,
    /// Windows and last-seen times of the alert rules, updated on the same pass.
    pub feed: Feed,
    /// `[[spans]]`: the span an event ends, for the OTLP sink (see [`span`]).
    pub spans: span::Spans,
}

impl Deriver {
    pub fn new(metrics: Vec<CompiledMetric>) -> Self {
        for m in &metrics {
            m.install_exemplars();
        }
        Deriver {
            metrics,
            feed: Feed::default(),
            spans: span::Spans::default(),
        }
    }

    /// Derives these spans too.
    pub fn with_spans(mut self, spans: span::Spans) -> Self {
        self.spans = spans;
        self
    }

    pub fn with_feed(mut self, feed: Feed) -> Self {
        self.feed = feed;
        self
    }

    pub fn metrics(&self) -> &[CompiledMetric] {
        &self.metrics
    }

    /// Takes over from `old` after a reload: each metric whose definition did not change keeps
    /// `old`'s series (so its counters continue); the others start afresh. A fresh registry
    /// with every metric of this pipeline replaces the one `live` serves (see [`live`] for why
    /// not the same registry). Returns (kept, replaced or added, removed) metric names.
    pub fn take_over(
        &mut self,
        old: Deriver,
        live: &live::Live,
    ) -> (Vec<String>, Vec<String>, Vec<String>) {
        let mut old_metrics = old.metrics;
        let (mut kept, mut changed) = (Vec::new(), Vec::new());
        let next = Registry::new();
        for m in &mut self.metrics {
            match old_metrics.iter().position(|o| o.name == m.name) {
                Some(i) if old_metrics[i].definition == m.definition => {
                    let o = old_metrics.swap_remove(i);
                    m.series = o.series;
                    m.install_exemplars();
                    kept.push(m.name.clone());
                }
                found => {
                    if let Some(i) = found {
                        old_metrics.swap_remove(i).uninstall_exemplars();
                    }
                    changed.push(m.name.clone());
                }
            }
            // Names are unique within a pipeline and clear of weir's own: compile checked.
            if let Err(e) = next.register(m.series.family().collector()) {
                tracing::error!(metric = %m.name, error = %e, "cannot register reloaded metric");
            }
        }
        let removed = old_metrics
            .into_iter()
            .map(|o| {
                o.uninstall_exemplars();
                o.name
            })
            .collect();
        live.replace(next);
        (kept, changed, removed)
    }

    /// Updates every metric whose condition `ev` matches. `tick` is whole seconds since start.
    pub fn apply(&mut self, ev: &Event<'_>, tick: u32) {
        for m in &mut self.metrics {
            m.apply(ev, tick, &mut self.feed);
        }
        if !self.feed.absent.is_empty() {
            self.feed.observe_event(ev);
        }
    }

    /// Removes series idle past their metric's TTL.
    pub fn expire(&mut self, tick: u32) -> usize {
        self.metrics.iter_mut().map(|m| m.series.expire(tick)).sum()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::PipelineConfig;
    use crate::telemetry::SelfMetrics;

    /// Runs `lines` through `pipeline`; the exposition of the derived metrics and weir's own.
    fn run(pipeline: &str, lines: &[String]) -> String {
        let selfm = SelfMetrics::new();
        let mut p = PipelineConfig::parse("t.toml", pipeline)
            .unwrap()
            .compile("t.toml", pipeline, &selfm)
            .unwrap();
        for line in lines {
            let ev = p.parser.parse(line, 0, &mut |_| {});
            p.deriver.apply(&ev, 0);
        }
        crate::server::exposition(&p.registry, &selfm).unwrap()
    }

    /// The attacker's numbers: `1e999999` (+Inf), `-1e999999` (then NaN in `_sum` for good),
    /// `1e400` for a gauge. None is observed; each is counted as `value_not_finite`.
    #[test]
    fn non_finite_values_are_counted_not_observed() {
        let pipeline = r#"
[[metrics]]
name = "d_seconds"
kind = "histogram"
value = "d"
buckets = [1, 10]
[[metrics]]
name = "q"
kind = "gauge"
value = "q"
[[metrics]]
name = "n_total"
kind = "counter"
value = "n"
"#;
        let lines: Vec<String> = [
            r#"{"d":1e999999}"#,
            r#"{"d":-1e999999}"#,
            r#"{"d":"1e999999"}"#,
            r#"{"d":2}"#,
            r#"{"q":5}"#,
            r#"{"q":1e400}"#,
            r#"{"n":1e999999}"#,
            r#"{"n":3}"#,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let text = run(pipeline, &lines);
        for want in [
            "d_seconds_sum 2\n",
            "d_seconds_count 1\n",
            "d_seconds_bucket{le=\"+Inf\"} 1\n",
            "q 5\n",
            "n_total 3\n",
            "weir_derive_errors_total{metric=\"n_total\",reason=\"value_not_finite\"} 1\n",
            "weir_derive_errors_total{metric=\"q\",reason=\"value_not_finite\"} 1\n",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
        // The quoted "1e999999" is text that reads as no finite number.
        for want in [
            "weir_derive_errors_total{metric=\"d_seconds\",reason=\"value_not_finite\"} 2\n",
            "weir_derive_errors_total{metric=\"d_seconds\",reason=\"value_not_numeric\"} 1\n",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
        assert!(!text.contains("NaN") && !text.contains("+Inf\n"), "{text}");
    }

    /// 20 KB label values are cut to `max_label_value_bytes` at a character boundary and
    /// counted; the event still counts.
    #[test]
    fn long_label_values_are_cut_and_counted() {
        let pipeline = r#"
[[metrics]]
name = "t_total"
kind = "counter"
labels = { agent_id = "agent_id" }
max_label_value_bytes = 10
"#;
        let lines: Vec<String> = vec![
            format!(r#"{{"agent_id":"{}"}}"#, "a".repeat(20_000)),
            format!(r#"{{"agent_id":"{}"}}"#, "a".repeat(20_000)),
            // 9 ASCII bytes, then a 3-byte character across the limit.
            format!(r#"{{"agent_id":"{}€€"}}"#, "b".repeat(9)),
            r#"{"agent_id":"short"}"#.to_string(),
        ];
        let text = run(pipeline, &lines);
        for want in [
            "t_total{agent_id=\"aaaaaaaaaa\"} 2\n",
            "t_total{agent_id=\"bbbbbbbbb\"} 1\n",
            "t_total{agent_id=\"short\"} 1\n",
            "weir_derive_errors_total{metric=\"t_total\",reason=\"label_value_truncated\"} 3\n",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
        assert!(text.len() < 20_000, "{}", text.len());
    }

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn compile_error(pipeline: &str) -> String {
        let selfm = SelfMetrics::new();
        match PipelineConfig::parse("t.toml", pipeline)
            .and_then(|c| c.compile("t.toml", pipeline, &selfm))
        {
            Ok(_) => panic!("compiled"),
            Err(e) => e.to_string(),
        }
    }

    /// `value` may list fields (the first present is used), `scale` multiplies the value.
    #[test]
    fn value_lists_and_scale() {
        let pipeline = r#"
[[metrics]]
name = "depth"
kind = "gauge"
value = ["depth", "current_depth"]
labels = { q = "q" }
[[metrics]]
name = "req_seconds"
kind = "histogram"
value = "duration_ms"
scale = 0.001
buckets = [0.1, 1]
"#;
        let text = run(
            pipeline,
            &lines(&[
                r#"{"q":"a","depth":3}"#,
                r#"{"q":"b","current_depth":7}"#,
                r#"{"q":"c","depth":1,"current_depth":9}"#,
                r#"{"q":"d"}"#,
                r#"{"duration_ms":50}"#,
                r#"{"duration_ms":"500"}"#,
            ]),
        );
        for want in [
            "depth{q=\"a\"} 3\n",
            "depth{q=\"b\"} 7\n",
            "depth{q=\"c\"} 1\n",
            "req_seconds_bucket{le=\"0.1\"} 1\n",
            "req_seconds_bucket{le=\"1\"} 2\n",
            "req_seconds_sum 0.55\n",
            // Every line lacking both fields (no `when` here): q=d and the two durations.
            "weir_derive_errors_total{metric=\"depth\",reason=\"value_missing\"} 3\n",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
        for (bad, want) in [
            (
                "value = \"d\"\nscale = 0",
                "scale must be a finite number other than 0",
            ),
            (
                "scale = 2",
                "scale applies to a `value` field; this metric has none",
            ),
            ("value = []", "a non-empty list of field paths"),
        ] {
            let p = format!("[[metrics]]\nname = \"m_total\"\nkind = \"counter\"\n{bad}\n");
            let e = compile_error(&p);
            assert!(e.contains(want), "{e}");
        }
    }

    /// `remember_by`: a label missing on an event takes the value seen on an earlier event
    /// with the same key; its own value wins; no earlier event: the default.
    #[test]
    fn labels_remembered_by_trace_id() {
        let pipeline = r#"
[[metrics]]
name = "failed_total"
kind = "counter"
when = 'message == "done" && status == "failure"'
labels = { error_type = { from = ["error_type", "err.type"], default = "unknown", remember_by = "trace_id" } }
"#;
        let text = run(
            pipeline,
            &lines(&[
                r#"{"message":"error","trace_id":"t1","error_type":"KeyError"}"#,
                r#"{"message":"error","trace_id":"t2","err":{"type":"OSError"}}"#,
                r#"{"message":"done","trace_id":"t1","status":"failure"}"#,
                r#"{"message":"done","trace_id":"t2","status":"failure"}"#,
                r#"{"message":"done","trace_id":"t3","status":"failure"}"#,
                r#"{"message":"done","trace_id":"t1","status":"failure","error_type":"ValueError"}"#,
            ]),
        );
        for want in [
            "failed_total{error_type=\"KeyError\"} 1\n",
            "failed_total{error_type=\"OSError\"} 1\n",
            "failed_total{error_type=\"unknown\"} 1\n",
            "failed_total{error_type=\"ValueError\"} 1\n",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }

    /// Lines the parser could not read feed no metric, unless the metric asks for them.
    #[test]
    fn unparsed_lines_feed_only_metrics_that_include_them() {
        let pipeline = r#"
[[metrics]]
name = "all_total"
kind = "counter"
[[metrics]]
name = "panics_total"
kind = "counter"
when = 'message =~ "panic"'
[[metrics]]
name = "raw_panics_total"
kind = "counter"
when = 'message =~ "panic"'
include_unparsed = true
"#;
        let text = run(
            pipeline,
            &lines(&[
                r#"{"message":"panic averted"}"#,
                "panic: runtime error: index out of range",
                r#"{"message":"cut"#,
            ]),
        );
        for want in ["all_total 1\n", "panics_total 1\n", "raw_panics_total 2\n"] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }

    /// An exemplar carries a trace id from the line; one weir generated (the line had none)
    /// leads to no trace and makes no exemplar.
    #[test]
    fn generated_trace_ids_make_no_exemplar() {
        let pipeline = "[[metrics]]\nname = \"jobs_total\"\nkind = \"counter\"\n";
        let selfm = SelfMetrics::new();
        let p = PipelineConfig::parse("t.toml", pipeline)
            .unwrap()
            .compile("t.toml", pipeline, &selfm)
            .unwrap();
        let mut deriver = p.deriver;
        let om = |reg: &prometheus::Registry| {
            crate::server::openmetrics::encode(reg.gather(), &selfm.exemplars)
        };
        let ev = p.parser.parse(r#"{"message":"no trace"}"#, 0, &mut |_| {});
        assert!(ev.trace_generated && !ev.trace_id.is_empty());
        deriver.apply(&ev, 0);
        let text = om(&p.registry);
        assert!(text.contains("jobs_total 1\n"), "{text}");
        let ev = p
            .parser
            .parse(r#"{"message":"traced","trace_id":"t-42"}"#, 0, &mut |_| {});
        assert!(!ev.trace_generated);
        deriver.apply(&ev, 0);
        let text = om(&p.registry);
        assert!(
            text.contains("jobs_total 2 # {trace_id=\"t-42\"} 1"),
            "{text}"
        );
    }

    use proptest::strategy::Strategy as _;

    /// Found by `benches/soak.sh` (its reloads change a metric's `help`): prometheus'
    /// `Registry::unregister` keeps the name's help and label names (`dim_hashes_by_name`), so
    /// registering the changed metric in the same registry failed ("cannot register reloaded
    /// metric" in the log) and the metric was gone from `/metrics` until a restart. Now a
    /// registry is built per reload and swapped where `/metrics` reads it ([`super::live`]).
    #[test]
    fn a_metric_changed_by_a_reload_stays_exposed() {
        let text = |help: &str| {
            format!("[[metrics]]\nname = \"d_seconds\"\nkind = \"histogram\"\nhelp = \"{help}\"\nvalue = \"n\"\nbuckets = [1]\n")
        };
        let selfm = SelfMetrics::new();
        let compile = |t: &str| {
            PipelineConfig::parse("t.toml", t)
                .and_then(|c| c.compile("t.toml", t, &selfm))
                .expect("compiles")
        };
        let first = compile(&text("before"));
        let live = super::live::Live::new(first.registry);
        let (served, mut deriver) = (live.served(), first.deriver);
        let ev = first.parser.parse(r#"{"n":0.5}"#, 0, &mut |_| {});
        deriver.apply(&ev, 0);
        let reloaded = compile(&text("after")).deriver;
        let old = std::mem::replace(&mut deriver, reloaded);
        let (_, changed, _) = deriver.take_over(old, &live);
        assert_eq!(changed, ["d_seconds"]);
        deriver.apply(&ev, 0);
        let families = served.gather();
        let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
        assert_eq!(names, ["d_seconds"], "the reloaded metric is not exposed");
        assert_eq!(families[0].help(), "after");
    }

    /// What a scrape sees that may only grow: counters, and histograms' `_count` (keyed by
    /// metric name and labels).
    fn monotonic(registry: &prometheus::Registry) -> std::collections::BTreeMap<String, f64> {
        use prometheus::proto::MetricType;
        let mut out = std::collections::BTreeMap::new();
        for family in registry.gather() {
            for m in family.get_metric() {
                let labels: Vec<String> = m
                    .get_label()
                    .iter()
                    .map(|l| format!("{}={}", l.name(), l.value()))
                    .collect();
                let key = format!("{}{{{}}}", family.name(), labels.join(","));
                let value = match family.get_field_type() {
                    MetricType::COUNTER => m.get_counter().get_value(),
                    MetricType::HISTOGRAM => m.get_histogram().get_sample_count() as f64,
                    _ => continue,
                };
                out.insert(key, value);
            }
        }
        out
    }

    const RELOADED: &str = r#"
[[metrics]]
name = "lines_total"
kind = "counter"
labels = { agent = "agent" }
[[metrics]]
name = "bytes_total"
kind = "counter"
value = "n"
labels = { agent = "agent" }
[[metrics]]
name = "d_seconds"
kind = "histogram"
value = "n"
buckets = [1, 10]
[[metrics]]
name = "depth"
kind = "gauge"
value = "n"
"#;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Lines (values negative, huge, non-finite, text) and reloads of the same pipeline in
        /// any order: no counter or histogram count seen by a scrape ever goes down, and no
        /// series that was there disappears across a reload (`Deriver::take_over`).
        #[test]
        fn counters_never_decrease_across_reloads(
            ops in proptest::collection::vec(
                proptest::prop_oneof![
                    1 => proptest::strategy::Just(None),
                    6 => (
                        "[abc]",
                        proptest::prop_oneof![
                            proptest::prelude::any::<f64>().prop_map(|v| format!("{v:?}")),
                            proptest::strategy::Just("1e999999".to_string()),
                            proptest::strategy::Just("-1e999999".to_string()),
                            proptest::strategy::Just("\"12\"".to_string()),
                            (-5i64..100).prop_map(|v| v.to_string()),
                        ],
                    ).prop_map(Some),
                ],
                0..60,
            ),
        ) {
            let selfm = SelfMetrics::new();
            let compile = || {
                PipelineConfig::parse("t.toml", RELOADED)
                    .and_then(|c| c.compile("t.toml", RELOADED, &selfm))
                    .map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))
            };
            let first = compile()?;
            let live = super::live::Live::new(first.registry);
            let (parser, served, mut deriver) = (first.parser, live.served(), first.deriver);
            let mut seen = monotonic(&served);
            for op in ops {
                match op {
                    None => {
                        let fresh = compile()?.deriver;
                        let old = std::mem::replace(&mut deriver, fresh);
                        let (kept, changed, removed) = deriver.take_over(old, &live);
                        proptest::prop_assert_eq!(kept.len(), 4);
                        proptest::prop_assert!(changed.is_empty() && removed.is_empty());
                    }
                    Some((agent, n)) => {
                        let line = format!(r#"{{"agent":"{agent}","n":{n}}}"#);
                        let ev = parser.parse(&line, 0, &mut |_| {});
                        deriver.apply(&ev, 0);
                    }
                }
                let now = monotonic(&served);
                for (series, before) in &seen {
                    let after = now.get(series).copied();
                    proptest::prop_assert!(
                        after.is_some_and(|a| a >= *before),
                        "{} went from {} to {:?}", series, before, after
                    );
                }
                seen = now;
            }
        }
    }
}
