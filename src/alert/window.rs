//! What alert rules remember between evaluations: sliding windows of metric updates per label
//! group, and when each group of an `absent()` rule last matched.
//!
//! # Why its own copy of the data
//! The Prometheus registry holds totals since start; a rule asks about the last five minutes.
//! So every update of a metric that a rule watches is also recorded here, at the update's time
//! (the event's time in backfills, the wall clock live), in per-second slots.
//!
//! # Invariants
//! - Bounded: a window holds at most one slot per second of its length, each a few numbers
//!   (plus, for quantile terms, a sketch of at most one count per 2% band of values); a term holds at most `max_groups` groups, new ones
//!   past it are counted in `weir_alert_groups_dropped_total` and not tracked.
//! - Exact at one-second resolution: a window of `W` seconds evaluated at second `T` covers the
//!   updates of seconds `T-W+1 ..= T`.
//! - The hot path ([`Feed::observe`], [`AbsentGroups::observe`]) allocates only for a new group.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

use hashbrown::{Equivalent, HashMap};
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::expr::Func;
use crate::derive::condition::Condition;
use crate::event::Event;
use crate::parse::FieldRef;

/// A group's label values, in the rule's `by` order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupKey(pub Box<[String]>);

struct Probe<'a, 'b>(&'a [&'b str]);

fn hash_parts<'s, H: Hasher>(parts: impl Iterator<Item = &'s str>, h: &mut H) {
    for p in parts {
        h.write(p.as_bytes());
        h.write_u8(0xff);
    }
}

impl Hash for GroupKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        hash_parts(self.0.iter().map(String::as_str), h);
    }
}

impl Hash for Probe<'_, '_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        hash_parts(self.0.iter().copied(), h);
    }
}

impl Equivalent<GroupKey> for Probe<'_, '_> {
    fn equivalent(&self, key: &GroupKey) -> bool {
        self.0.len() == key.0.len() && self.0.iter().zip(key.0.iter()).all(|(a, b)| *a == b)
    }
}

impl GroupKey {
    fn of(values: &[&str]) -> Self {
        GroupKey(values.iter().map(|s| s.to_string()).collect())
    }
}

/// One second's updates of one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    pub sec: i64,
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub last: f64,
    /// For quantile terms: (sketch bucket, count), sorted by bucket; see [`sketch_index`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sketch: Vec<(i16, u32)>,
}

/// The updates of one group within a term's window (or, for `last` without a window, its last
/// value).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub slots: VecDeque<Slot>,
    /// The last value set and its second (for `last`).
    pub last: Option<(f64, i64)>,
    /// Count, sum and sketch over every slot, kept as slots come and go, so a rule over a long
    /// window costs the same to evaluate as over a short one. Rebuilt from the slots when
    /// state is read back.
    #[serde(skip)]
    pub total: Total,
}

/// Running totals of a window's slots.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Total {
    pub count: u64,
    pub sum: f64,
    pub sketch: std::collections::BTreeMap<i16, u64>,
}

impl Window {
    /// Recomputes [`Window::total`] from the slots.
    pub fn rebuild(&mut self) {
        let mut t = Total::default();
        // Saturating: the slots may come from a state file someone edited.
        for s in &self.slots {
            t.count = t.count.saturating_add(s.count);
            t.sum += s.sum;
            for &(i, n) in &s.sketch {
                let e = t.sketch.entry(i).or_default();
                *e = e.saturating_add(u64::from(n));
            }
        }
        self.total = t;
    }
}

/// A metric term of a rule (`count(agent_task_failure_total)`), with its groups' windows.
pub struct Term {
    pub metric: String,
    pub func: Func,
    /// Window length in seconds; `None` for a bare gauge (`last` without `over`).
    pub window: Option<i64>,
    /// For `last` without a window: seconds after which a value is stale (the metric's
    /// `expire_after_secs`); `None` never.
    pub stale: Option<i64>,
    /// Which of the metric's label values make the group key, in the rule's `by` order.
    pub positions: Vec<usize>,
    /// Whether values are kept in a sketch, for quantiles.
    pub sketch: bool,
    pub groups: HashMap<GroupKey, Window>,
    pub max_groups: usize,
    pub dropped: IntCounter,
}

impl Term {
    fn observe(&mut self, labels: &[Cow<'_, str>], value: f64, sec: i64) {
        let key: SmallVec<[&str; 8]> = self
            .positions
            .iter()
            .map(|&i| labels.get(i).map_or("", |c| c.as_ref()))
            .collect();
        let probe = Probe(&key);
        let w = match self.groups.get_mut(&probe) {
            Some(w) => w,
            None => {
                if self.groups.len() >= self.max_groups {
                    self.dropped.inc();
                    return;
                }
                self.groups.entry(GroupKey::of(&key)).or_default()
            }
        };
        if self.window.is_none() {
            if w.last.is_none_or(|(_, s)| s <= sec) {
                w.last = Some((value, sec));
            }
            return;
        }
        let bucket = self.sketch.then(|| sketch_index(value));
        let new_slot = |sec| Slot {
            sec,
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            last: value,
            sketch: Vec::new(),
        };
        let idx = match w.slots.back() {
            Some(b) if b.sec == sec => w.slots.len() - 1,
            Some(b) if b.sec > sec => {
                // An event older than the newest slot (out of order): merge into its second.
                match w.slots.binary_search_by_key(&sec, |s| s.sec) {
                    Ok(i) => i,
                    Err(i) => {
                        w.slots.insert(i, new_slot(sec));
                        i
                    }
                }
            }
            _ => {
                w.slots.push_back(new_slot(sec));
                w.slots.len() - 1
            }
        };
        let s = &mut w.slots[idx];
        s.count += 1;
        s.sum += value;
        s.min = s.min.min(value);
        s.max = s.max.max(value);
        if sec >= s.sec {
            s.last = value;
        }
        if let Some(b) = bucket {
            match s.sketch.binary_search_by_key(&b, |(i, _)| *i) {
                Ok(i) => s.sketch[i].1 += 1,
                Err(i) => s.sketch.insert(i, (b, 1)),
            }
            *w.total.sketch.entry(b).or_default() += 1;
        }
        w.total.count += 1;
        w.total.sum += value;
        if w.last.is_none_or(|(_, s)| s <= sec) {
            w.last = Some((value, sec));
        }
    }

    /// Drops what fell out of the window at `now`, and groups left empty.
    pub fn trim(&mut self, now: i64) {
        match self.window {
            Some(w) => {
                let from = now - w + 1;
                self.groups.retain(|_, g| {
                    while g.slots.front().is_some_and(|s| s.sec < from) {
                        let Some(s) = g.slots.pop_front() else { break };
                        g.total.count -= s.count;
                        g.total.sum -= s.sum;
                        for (i, n) in s.sketch {
                            if let Some(c) = g.total.sketch.get_mut(&i) {
                                *c -= u64::from(n);
                                if *c == 0 {
                                    g.total.sketch.remove(&i);
                                }
                            }
                        }
                    }
                    !g.slots.is_empty()
                });
            }
            None => {
                if let Some(stale) = self.stale {
                    self.groups
                        .retain(|_, g| g.last.is_some_and(|(_, s)| now - s <= stale));
                }
            }
        }
    }

    /// The term's value for `key` at `now`, or `None` when it has none (no update in the
    /// window for an average, a minimum, a quantile...). Count, sum and rate of a group without
    /// updates are 0. [`Term::trim`] at `now` must come first.
    pub fn value(&self, key: &GroupKey, now: i64) -> Option<f64> {
        let g = self.groups.get(key);
        let Some(w) = self.window else {
            return g
                .and_then(|g| g.last)
                .filter(|(_, s)| self.stale.is_none_or(|st| now - s <= st))
                .map(|(v, _)| v);
        };
        let from = now - w + 1;
        let mut slots = g
            .into_iter()
            .flat_map(|g| g.slots.iter())
            .filter(move |s| s.sec >= from && s.sec <= now);
        let total = g.map(|g| &g.total);
        let (count, sum) = total.map_or((0, 0.0), |t| (t.count, t.sum));
        match self.func {
            Func::Count => Some(count as f64),
            Func::Sum => Some(sum),
            Func::Rate => Some(sum / w as f64),
            Func::Avg => (count > 0).then(|| sum / count as f64),
            Func::Min => slots.map(|s| s.min).reduce(f64::min),
            Func::Max => slots.map(|s| s.max).reduce(f64::max),
            Func::Last => slots.next_back().map(|s| s.last),
            Func::Quantile(q) => total.and_then(|t| quantile(q, &t.sketch)),
        }
    }
}

/// Relative accuracy of quantiles: a value is known within ±1%.
const GAMMA: f64 = 1.02;
/// Sketch index of values at or below zero (and below the smallest positive bucket).
const ZERO: i16 = i16::MIN;

/// The sketch bucket of `v`: `ceil(log_γ v)`, so bucket `i` holds `(γ^(i-1), γ^i]` (the
/// DDSketch layout). Any positive f64 fits in an i16 at γ = 1.02.
pub fn sketch_index(v: f64) -> i16 {
    if v.is_nan() || v <= 1e-9 {
        return ZERO;
    }
    let i = (v.ln() / GAMMA.ln()).ceil();
    i.clamp(f64::from(i16::MIN + 1), f64::from(i16::MAX)) as i16
}

/// The value a bucket stands for: the point within ±1% of every value in it.
fn sketch_value(i: i16) -> f64 {
    if i == ZERO {
        return 0.0;
    }
    2.0 * GAMMA.powi(i32::from(i)) / (GAMMA + 1.0)
}

/// The `q`-quantile (nearest rank) of the values counted in `counts`, within ±1%.
///
/// Why a sketch and not the metric's histogram buckets: a rule such as `p95(...) > 60` must see
/// values past the highest bucket (60 in the default pipeline), where Prometheus'
/// `histogram_quantile` can only answer "60".
pub fn quantile(q: f64, counts: &std::collections::BTreeMap<i16, u64>) -> Option<f64> {
    let total: u64 = counts.values().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (&i, &n) in counts {
        seen += n;
        if seen >= rank {
            return Some(sketch_value(i));
        }
    }
    None
}

/// The groups of one `absent()` rule: when each last saw a matching event.
pub struct AbsentGroups {
    pub condition: Condition,
    pub by: Vec<FieldRef>,
    pub seen: HashMap<GroupKey, i64>,
    pub max_groups: usize,
    pub dropped: IntCounter,
}

impl AbsentGroups {
    pub fn observe(&mut self, ev: &Event<'_>, sec: i64) {
        if !self.condition.matches(ev) {
            return;
        }
        if let [field] = self.by.as_slice() {
            // The common case (`by (component)`): one value, probed as a one-element slice.
            let value = field.text(ev).unwrap_or(Cow::Borrowed(""));
            self.seen_at(&[value.as_ref()], sec);
            return;
        }
        let values: SmallVec<[Cow<'_, str>; 4]> = self
            .by
            .iter()
            .map(|f| f.text(ev).unwrap_or(Cow::Borrowed("")))
            .collect();
        let key: SmallVec<[&str; 4]> = values.iter().map(|c| c.as_ref()).collect();
        self.seen_at(&key, sec);
    }

    fn seen_at(&mut self, key: &[&str], sec: i64) {
        if let Some(s) = self.seen.get_mut(&Probe(key)) {
            *s = (*s).max(sec);
        } else if self.seen.len() >= self.max_groups {
            self.dropped.inc();
        } else {
            self.seen.insert(GroupKey::of(key), sec);
        }
    }
}

/// Everything the hot path records for the alert rules; owned by the
/// [`crate::derive::Deriver`], read by the [`super::engine::Engine`] when it evaluates.
#[derive(Default)]
pub struct Feed {
    /// The time, in whole seconds since the epoch, that updates are recorded at: the wall clock
    /// live, the event's own time in backfills. Set by the processor.
    pub now: i64,
    pub terms: Vec<Term>,
    pub absent: Vec<AbsentGroups>,
}

impl Feed {
    /// Records an update of a metric that terms `watchers` watch. `labels` are the metric's
    /// label values in its label order.
    pub fn observe(&mut self, watchers: &[usize], labels: &[Cow<'_, str>], value: f64) {
        let now = self.now;
        for &t in watchers {
            self.terms[t].observe(labels, value, now);
        }
    }

    /// Records an event for the `absent()` rules.
    pub fn observe_event(&mut self, ev: &Event<'_>) {
        let now = self.now;
        for a in &mut self.absent {
            a.observe(ev, now);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty() && self.absent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term(func: Func, window: Option<i64>, _unused: Vec<f64>) -> Term {
        Term {
            metric: "m".into(),
            func,
            window,
            stale: None,
            positions: vec![0],
            sketch: false,
            groups: HashMap::new(),
            max_groups: 2,
            dropped: IntCounter::new("d", "d").unwrap(),
        }
    }

    fn key(s: &str) -> GroupKey {
        GroupKey(vec![s.to_string()].into())
    }

    fn obs(t: &mut Term, label: &str, v: f64, sec: i64) {
        t.observe(&[Cow::Borrowed(label)], v, sec);
    }

    #[test]
    fn count_covers_exactly_the_last_w_seconds() {
        let mut t = term(Func::Count, Some(300), vec![]);
        obs(&mut t, "a", 1.0, 1000);
        obs(&mut t, "a", 1.0, 1000);
        obs(&mut t, "a", 1.0, 1100);
        assert_eq!(t.value(&key("a"), 1100), Some(3.0));
        // 1000 is inside (1000 + 300 - 1 = 1299), outside at 1300.
        t.trim(1299);
        assert_eq!(t.value(&key("a"), 1299), Some(3.0));
        t.trim(1300);
        assert_eq!(t.value(&key("a"), 1300), Some(1.0));
        assert_eq!(t.value(&key("b"), 1300), Some(0.0));
        t.trim(1400);
        assert!(t.groups.is_empty());
    }

    #[test]
    fn out_of_order_updates_land_in_their_second() {
        let mut t = term(Func::Sum, Some(10), vec![]);
        obs(&mut t, "a", 1.0, 100);
        obs(&mut t, "a", 2.0, 105);
        obs(&mut t, "a", 4.0, 102);
        let secs: Vec<i64> = t.groups[&key("a")].slots.iter().map(|s| s.sec).collect();
        assert_eq!(secs, [100, 102, 105]);
        t.trim(109);
        assert_eq!(t.value(&key("a"), 109), Some(7.0));
        t.trim(110);
        assert_eq!(t.value(&key("a"), 110), Some(6.0));
        let mut rebuilt = t.groups[&key("a")].clone();
        rebuilt.rebuild();
        assert_eq!(rebuilt.total, t.groups[&key("a")].total);
    }

    #[test]
    fn groups_past_the_limit_are_counted_not_kept() {
        let mut t = term(Func::Count, Some(10), vec![]);
        obs(&mut t, "a", 1.0, 1);
        obs(&mut t, "b", 1.0, 1);
        obs(&mut t, "c", 1.0, 1);
        assert_eq!(t.groups.len(), 2);
        assert_eq!(t.dropped.get(), 1);
    }

    #[test]
    fn last_without_window_goes_stale() {
        let mut t = term(Func::Last, None, vec![]);
        t.stale = Some(60);
        obs(&mut t, "q", 150.0, 10);
        obs(&mut t, "q", 120.0, 20);
        assert_eq!(t.value(&key("q"), 30), Some(120.0));
        assert_eq!(t.value(&key("q"), 80), Some(120.0));
        assert_eq!(t.value(&key("q"), 81), None);
    }

    #[test]
    fn min_max_avg_and_empty_windows() {
        let mut t = term(Func::Avg, Some(60), vec![]);
        assert_eq!(t.value(&key("a"), 0), None);
        obs(&mut t, "a", 2.0, 1);
        obs(&mut t, "a", 4.0, 2);
        assert_eq!(t.value(&key("a"), 2), Some(3.0));
        t.func = Func::Min;
        assert_eq!(t.value(&key("a"), 2), Some(2.0));
        t.func = Func::Max;
        assert_eq!(t.value(&key("a"), 2), Some(4.0));
    }

    #[test]
    fn quantiles_are_within_one_percent() {
        let mut t = term(Func::Quantile(0.95), Some(600), vec![]);
        t.sketch = true;
        // 1..=100 seconds, one per second: p95 is 95 (nearest rank), p50 is 50.
        for i in 1..=100 {
            obs(&mut t, "a", i as f64, 1000 + i);
        }
        let p95 = t.value(&key("a"), 1100).unwrap();
        assert!((p95 - 95.0).abs() <= 0.95, "{p95}");
        t.func = Func::Quantile(0.5);
        let p50 = t.value(&key("a"), 1100).unwrap();
        assert!((p50 - 50.0).abs() <= 0.5, "{p50}");
        // Past a histogram's highest bucket too.
        t.func = Func::Quantile(0.99);
        obs(&mut t, "a", 250.0, 1100);
        obs(&mut t, "a", 250.0, 1100);
        let p99 = t.value(&key("a"), 1100).unwrap();
        assert!((p99 - 250.0).abs() <= 2.5, "{p99}");
        assert_eq!(t.value(&key("none"), 1100), None);
        assert_eq!(sketch_index(0.0), ZERO);
        assert_eq!(sketch_value(sketch_index(-3.0)), 0.0);
    }
}
