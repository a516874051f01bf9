//! Durations from a start event paired with its end event on a key.
//!
//! When the end event carries no duration, `[metrics.pair]` derives one: a start event (matching
//! `start`) records its timestamp under the value of `key`; the metric's own `when` is the end
//! event, whose value becomes `end.timestamp - start.timestamp` in seconds. The table of open
//! starts is bounded twice: entries older than `timeout_secs` (in event time) and, past
//! `max_open`, the oldest entries are evicted, each counted in
//! `weir_pair_evicted_total{metric,reason}`. An end without a start is counted in
//! `weir_pair_unmatched_total{metric}`.

use std::collections::VecDeque;

use hashbrown::HashMap;
use prometheus::IntCounter;
use serde::Deserialize;

use crate::derive::condition::Condition;
use crate::event::{Event, TimestampNs};
use crate::parse::FieldRef;

/// `[metrics.pair]`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PairConfig {
    /// Condition that marks a start event.
    #[schemars(with = "String")]
    pub start: toml::Spanned<String>,
    /// Field whose value links a start to its end. Default: trace_id.
    #[serde(default = "default_key")]
    pub key: String,
    /// Starts older than this (event time) are evicted. Default: 3600.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Most open starts kept; the oldest is evicted past it. Default: 100000.
    #[serde(default = "default_max_open")]
    pub max_open: usize,
}

fn default_key() -> String {
    "trace_id".into()
}
const fn default_timeout_secs() -> u64 {
    3600
}
const fn default_max_open() -> usize {
    100_000
}

pub struct PairCounters {
    pub evicted_timeout: IntCounter,
    pub evicted_capacity: IntCounter,
    pub unmatched: IntCounter,
}

pub struct Pairing {
    pub start: Condition,
    key: FieldRef,
    timeout_ns: i64,
    max_open: usize,
    open: HashMap<Box<str>, (TimestampNs, u64)>,
    /// Insertion order for eviction; entries whose seq no longer matches `open` are stale.
    order: VecDeque<(u64, Box<str>)>,
    seq: u64,
    counters: PairCounters,
}

impl Pairing {
    pub fn new(start: Condition, key: FieldRef, cfg: &PairConfig, counters: PairCounters) -> Self {
        Pairing {
            start,
            key,
            timeout_ns: i64::try_from(cfg.timeout_secs.saturating_mul(1_000_000_000))
                .unwrap_or(i64::MAX),
            max_open: cfg.max_open.max(1),
            open: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
            counters,
        }
    }

    /// Records `ev` if it is a start event.
    pub fn observe_start(&mut self, ev: &Event<'_>) {
        if !self.start.matches(ev) {
            return;
        }
        let Some(key) = self.key.text(ev) else { return };
        self.evict(ev.timestamp);
        if self.open.len() >= self.max_open {
            self.pop_oldest();
            self.counters.evicted_capacity.inc();
        }
        self.seq += 1;
        let key: Box<str> = key.as_ref().into();
        self.open.insert(key.clone(), (ev.timestamp, self.seq));
        self.order.push_back((self.seq, key));
        // Re-started keys leave stale entries behind; keep the queue from growing without bound.
        if self.order.len() > 2 * self.max_open {
            let open = &self.open;
            self.order
                .retain(|(seq, k)| open.get(k).is_some_and(|&(_, s)| s == *seq));
        }
    }

    /// For an end event: the seconds since its start, removing the start. `None` if unmatched.
    pub fn take(&mut self, ev: &Event<'_>) -> Option<f64> {
        let key = self.key.text(ev)?;
        match self.open.remove(key.as_ref()) {
            Some((start, _)) => Some((ev.timestamp.saturating_sub(start)).max(0) as f64 / 1e9),
            None => {
                self.counters.unmatched.inc();
                None
            }
        }
    }

    /// For an end event: the timestamp of its start, removing the start (spans, see
    /// `derive::span`). `None` if unmatched (counted as [`Pairing::take`] does).
    pub fn take_start(&mut self, ev: &Event<'_>) -> Option<TimestampNs> {
        let key = self.key.text(ev)?;
        match self.open.remove(key.as_ref()) {
            Some((start, _)) => Some(start),
            None => {
                self.counters.unmatched.inc();
                None
            }
        }
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    fn evict(&mut self, now: TimestampNs) {
        while let Some((seq, key)) = self.order.front() {
            match self.open.get(key) {
                Some(&(ts, s)) if s == *seq => {
                    if now.saturating_sub(ts) <= self.timeout_ns {
                        break;
                    }
                    self.open.remove(key);
                    self.counters.evicted_timeout.inc();
                }
                _ => {}
            }
            self.order.pop_front();
        }
    }

    fn pop_oldest(&mut self) {
        while let Some((seq, key)) = self.order.pop_front() {
            if self.open.get(&key).is_some_and(|&(_, s)| s == seq) {
                self.open.remove(&key);
                return;
            }
        }
    }
}
