//! The label sets of one metric: a cap on their number and expiry of those left idle.
//!
//! The derive stage keeps its own map from label values to the prometheus handle of the series,
//! so an update is one hash lookup with borrowed label values (no allocation, no lock) and an
//! atomic add. The map is also what enforces the series limit (past it, updates go to a single
//! overflow series and are counted) and what finds series idle for longer than their TTL, which
//! are then removed from the exposition. Time here is in whole seconds since the stage started
//! ("ticks"), read once per batch, not per event.
//!
//! A metric with exemplars gives each series its slots ([`super::exemplar`]) when the series is
//! created; the update of an existing series writes its slot through the `Arc` it holds.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use hashbrown::{Equivalent, HashMap};
use prometheus::Counter;
use prometheus::{CounterVec, Gauge, GaugeVec, Histogram, HistogramVec, IntCounter};

use super::exemplar::{FamilyExemplars, SeriesExemplars};
use crate::event::TimestampNs;

/// Label value used for every label of the overflow series.
pub const OVERFLOW_VALUE: &str = "__weir_overflow__";

/// The prometheus family behind a metric.
#[derive(Clone)]
pub enum Family {
    Counter(CounterVec),
    Gauge(GaugeVec),
    Histogram(HistogramVec),
}

/// One series' handle: cloning shares the same atomic value.
#[derive(Clone)]
pub enum Handle {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

impl Handle {
    /// Applies a derived value: counters add, gauges set, histograms observe.
    pub fn apply(&self, v: f64) {
        match self {
            Handle::Counter(c) => c.inc_by(v),
            Handle::Gauge(g) => g.set(v),
            Handle::Histogram(h) => h.observe(v),
        }
    }
}

impl Family {
    fn handle(&self, values: &[&str]) -> Handle {
        match self {
            Family::Counter(v) => Handle::Counter(v.with_label_values(values)),
            Family::Gauge(v) => Handle::Gauge(v.with_label_values(values)),
            Family::Histogram(v) => Handle::Histogram(v.with_label_values(values)),
        }
    }

    fn remove(&self, values: &[&str]) {
        // The series exists (we created it); an error would only mean it is already gone.
        let _ = match self {
            Family::Counter(v) => v.remove_label_values(values),
            Family::Gauge(v) => v.remove_label_values(values),
            Family::Histogram(v) => v.remove_label_values(values),
        };
    }
}

#[derive(PartialEq, Eq)]
struct LabelKey(Box<[Box<str>]>);

struct LabelRef<'a, 'b>(&'a [Cow<'b, str>]);

fn hash_parts<'s, H: Hasher>(parts: impl Iterator<Item = &'s str>, h: &mut H) {
    for p in parts {
        h.write(p.as_bytes());
        h.write_u8(0xff);
    }
}

impl Hash for LabelKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        hash_parts(self.0.iter().map(|s| &**s), h);
    }
}

impl Hash for LabelRef<'_, '_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        hash_parts(self.0.iter().map(|s| s.as_ref()), h);
    }
}

impl Equivalent<LabelKey> for LabelRef<'_, '_> {
    fn equivalent(&self, key: &LabelKey) -> bool {
        self.0.len() == key.0.len() && self.0.iter().zip(key.0.iter()).all(|(a, b)| a == &**b)
    }
}

struct Series {
    handle: Handle,
    last_tick: u32,
    exemplars: Option<Arc<SeriesExemplars>>,
}

/// The trace id and timestamp of the event behind an update, for its exemplar.
#[derive(Clone, Copy)]
pub struct ExemplarOf<'a> {
    pub trace_id: &'a str,
    pub timestamp: TimestampNs,
}

/// The series of one metric.
pub struct SeriesTable {
    family: Family,
    label_count: usize,
    map: HashMap<LabelKey, Series>,
    max_series: usize,
    /// Idle time after which a series is removed; `None` keeps series forever.
    ttl_ticks: Option<u32>,
    overflow: Option<Handle>,
    dropped: IntCounter,
    expired: IntCounter,
    active: prometheus::IntGauge,
    /// The metric's exemplars (`exemplars = true`) and its bucket bounds (empty: a counter).
    exemplars: Option<(Arc<FamilyExemplars>, Box<[f64]>)>,
}

impl Family {
    /// The family as a collector, to register in (or remove from) a registry.
    pub fn collector(&self) -> Box<dyn prometheus::core::Collector> {
        match self {
            Family::Counter(v) => Box::new(v.clone()),
            Family::Gauge(v) => Box::new(v.clone()),
            Family::Histogram(v) => Box::new(v.clone()),
        }
    }
}

impl SeriesTable {
    /// The prometheus family the series belong to.
    pub fn family(&self) -> &Family {
        &self.family
    }

    pub fn new(
        family: Family,
        label_count: usize,
        max_series: usize,
        ttl_secs: Option<u32>,
        dropped: IntCounter,
        expired: IntCounter,
        active: prometheus::IntGauge,
    ) -> Self {
        SeriesTable {
            family,
            label_count,
            map: HashMap::new(),
            max_series: max_series.max(1),
            ttl_ticks: ttl_secs,
            overflow: None,
            dropped,
            expired,
            active,
            exemplars: None,
        }
    }

    /// Keeps exemplars for the series, in `family` (histograms: per bucket of `buckets`).
    pub fn with_exemplars(mut self, family: Arc<FamilyExemplars>, buckets: &[f64]) -> Self {
        self.exemplars = Some((family, buckets.into()));
        self
    }

    /// The metric's exemplars, if it keeps them.
    pub fn exemplars(&self) -> Option<&Arc<FamilyExemplars>> {
        self.exemplars.as_ref().map(|(f, _)| f)
    }

    /// Applies `v` to the series of `labels` (one value per label, in label order); `ex` is
    /// the event's exemplar, kept if the metric keeps exemplars (not for the overflow series).
    pub fn update(
        &mut self,
        labels: &[Cow<'_, str>],
        tick: u32,
        v: f64,
        ex: Option<ExemplarOf<'_>>,
    ) {
        if let Some(s) = self.map.get_mut(&LabelRef(labels)) {
            s.last_tick = tick;
            s.handle.apply(v);
            if let (Some(slots), Some(ex), Some((_, bounds))) = (&s.exemplars, ex, &self.exemplars)
            {
                slots.record(bounds, v, ex.trace_id, ex.timestamp);
            }
            return;
        }
        if self.map.len() >= self.max_series {
            self.dropped.inc();
            let overflow = self.overflow.get_or_insert_with(|| {
                let values = vec![OVERFLOW_VALUE; self.label_count];
                self.family.handle(&values)
            });
            overflow.apply(v);
            return;
        }
        let values: Vec<&str> = labels.iter().map(|c| c.as_ref()).collect();
        let handle = self.family.handle(&values);
        handle.apply(v);
        let exemplars = self.exemplars.as_ref().map(|(family, bounds)| {
            let slots = family.add(&values);
            if let Some(ex) = ex {
                slots.record(bounds, v, ex.trace_id, ex.timestamp);
            }
            slots
        });
        self.map.insert(
            LabelKey(values.iter().map(|s| Box::<str>::from(*s)).collect()),
            Series {
                handle,
                last_tick: tick,
                exemplars,
            },
        );
        self.active.set(self.map.len() as i64);
    }

    /// Removes the series not updated for longer than the TTL. Returns how many went.
    pub fn expire(&mut self, tick: u32) -> usize {
        let Some(ttl) = self.ttl_ticks else { return 0 };
        let before = self.map.len();
        let family = &self.family;
        let exemplars = &self.exemplars;
        self.map.retain(|key, s| {
            let keep = tick.saturating_sub(s.last_tick) <= ttl;
            if !keep {
                let values: Vec<&str> = key.0.iter().map(|s| &**s).collect();
                family.remove(&values);
                if let Some((e, _)) = exemplars {
                    e.remove(&key.0);
                }
            }
            keep
        });
        let gone = before - self.map.len();
        if gone > 0 {
            self.expired.inc_by(gone as u64);
            self.active.set(self.map.len() as i64);
        }
        gone
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Opts, Registry};

    fn table(max: usize, ttl: Option<u32>) -> (SeriesTable, Registry, IntCounter, IntCounter) {
        let reg = Registry::new();
        let vec = CounterVec::new(Opts::new("c_total", "h"), &["a"]).unwrap();
        reg.register(Box::new(vec.clone())).unwrap();
        let dropped = IntCounter::new("d", "d").unwrap();
        let expired = IntCounter::new("e", "e").unwrap();
        let active = prometheus::IntGauge::new("s", "s").unwrap();
        let t = SeriesTable::new(
            Family::Counter(vec),
            1,
            max,
            ttl,
            dropped.clone(),
            expired.clone(),
            active,
        );
        (t, reg, dropped, expired)
    }

    fn values(reg: &Registry) -> Vec<(String, f64)> {
        let mut out: Vec<_> = reg.gather()[0]
            .get_metric()
            .iter()
            .map(|m| {
                (
                    m.get_label()[0].value().to_string(),
                    m.get_counter().get_value(),
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn limit_sends_new_label_sets_to_the_overflow_series() {
        let (mut t, reg, dropped, _) = table(2, None);
        for v in ["x", "y", "x", "z", "w", "y"] {
            t.update(&[Cow::Borrowed(v)], 0, 1.0, None);
        }
        assert_eq!(
            values(&reg),
            vec![
                (OVERFLOW_VALUE.to_string(), 2.0),
                ("x".to_string(), 2.0),
                ("y".to_string(), 2.0)
            ]
        );
        assert_eq!(dropped.get(), 2);
    }

    #[test]
    fn idle_series_expire_and_come_back_from_zero() {
        let (mut t, reg, _, expired) = table(10, Some(60));
        t.update(&[Cow::Borrowed("old")], 0, 5.0, None);
        t.update(&[Cow::Borrowed("busy")], 0, 1.0, None);
        t.update(&[Cow::Borrowed("busy")], 50, 1.0, None);
        assert_eq!(t.expire(100), 1);
        assert_eq!(expired.get(), 1);
        assert_eq!(values(&reg), vec![("busy".to_string(), 2.0)]);
        t.update(&[Cow::Borrowed("old")], 101, 1.0, None);
        assert_eq!(values(&reg)[1], ("old".to_string(), 1.0));
        let (mut keep, _, _, _) = table(10, None);
        keep.update(&[Cow::Borrowed("x")], 0, 1.0, None);
        assert_eq!(keep.expire(1_000_000), 0);
    }
}
