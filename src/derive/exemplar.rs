//! Exemplars: the trace id of a recent event per counter series and per histogram bucket, for
//! the OpenMetrics exposition (`# {trace_id="..."} VALUE TIMESTAMP` after a sample).
//!
//! The `prometheus` crate keeps no exemplars, so weir keeps them beside its series. Each series
//! of a metric with `exemplars = true` owns one [`Slot`] per bucket (`+Inf` included; a counter
//! has one). The derive stage writes a slot on every update it makes, without a lock and without
//! allocation: a slot is a sequence lock over atomics (the trace id in a fixed 64-byte buffer).
//! A writer that finds the slot being written by another writer skips its exemplar (the slot
//! holds "a recent event", not necessarily the very last). A scrape reads the slot and retries
//! a few times when a write crossed its read; past that it leaves the exemplar out.
//!
//! The map from label values to a series' slots ([`FamilyExemplars`]) takes a lock only when a
//! series is created or expires, and when a scrape reads it: the update of an existing series
//! holds its `Arc<SeriesExemplars>` and never touches the map.
//!
//! Invariants: a trace id longer than [`MAX_TRACE_ID_BYTES`] (or empty) is not kept, so the
//! exemplar's labels (`trace_id` plus the value) stay under the OpenMetrics cap of 128 UTF-8
//! characters; a cut trace id would lead nowhere.

use std::collections::HashMap;
use std::sync::atomic::{fence, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::event::TimestampNs;

/// Longest trace id kept as an exemplar, in bytes (a UUID takes 36). With the label name
/// `trace_id` (8 characters) this stays well under OpenMetrics' 128-character cap.
pub const MAX_TRACE_ID_BYTES: usize = 64;
const WORDS: usize = MAX_TRACE_ID_BYTES / 8;
/// Reads of a slot tried before a scrape gives up on it (a write crossed each read).
const READ_TRIES: usize = 4;

/// One exemplar read from a slot.
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    pub trace_id: String,
    pub value: f64,
    /// The event's timestamp, nanoseconds since the epoch.
    pub timestamp_ns: TimestampNs,
}

/// The latest exemplar of one bucket (or counter), written without a lock. `seq` is even when
/// the slot is stable, odd while a writer fills it, 0 when it was never written.
#[derive(Default)]
pub struct Slot {
    seq: AtomicU64,
    len: AtomicUsize,
    id: [AtomicU64; WORDS],
    value: AtomicU64,
    ts: AtomicI64,
}

impl Slot {
    /// Stores an exemplar. An id that is empty or too long is not stored; a slot another
    /// writer is filling is left to it.
    pub fn write(&self, trace_id: &str, value: f64, ts: TimestampNs) {
        let bytes = trace_id.as_bytes();
        if bytes.is_empty() || bytes.len() > MAX_TRACE_ID_BYTES {
            return;
        }
        let s = self.seq.load(Ordering::Relaxed);
        if s & 1 == 1
            || self
                .seq
                .compare_exchange(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        fence(Ordering::Release);
        for (i, word) in self.id.iter().enumerate() {
            let mut w = [0u8; 8];
            let start = (i * 8).min(bytes.len());
            let end = (start + 8).min(bytes.len());
            w[..end - start].copy_from_slice(&bytes[start..end]);
            word.store(u64::from_le_bytes(w), Ordering::Relaxed);
            if end == bytes.len() {
                break;
            }
        }
        self.len.store(bytes.len(), Ordering::Relaxed);
        self.value.store(value.to_bits(), Ordering::Relaxed);
        self.ts.store(ts, Ordering::Relaxed);
        self.seq.store(s + 2, Ordering::Release);
    }

    /// The exemplar stored, if any and if a consistent read succeeds.
    pub fn read(&self) -> Option<Exemplar> {
        for _ in 0..READ_TRIES {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 == 0 {
                return None;
            }
            if s1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let len = self.len.load(Ordering::Relaxed).min(MAX_TRACE_ID_BYTES);
            let mut buf = [0u8; MAX_TRACE_ID_BYTES];
            for (i, word) in self.id.iter().enumerate() {
                buf[i * 8..i * 8 + 8].copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
            }
            let value = f64::from_bits(self.value.load(Ordering::Relaxed));
            let ts = self.ts.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) != s1 {
                continue;
            }
            // Written from a `&str` cut at its own length: valid UTF-8 unless torn, which
            // the sequence check rules out; a failure is still handled, by skipping.
            let trace_id = std::str::from_utf8(&buf[..len]).ok()?.to_string();
            return Some(Exemplar {
                trace_id,
                value,
                timestamp_ns: ts,
            });
        }
        None
    }
}

/// The slots of one series: one per bucket (the last is `+Inf`), or one for a counter.
pub struct SeriesExemplars {
    slots: Box<[Slot]>,
}

impl SeriesExemplars {
    fn new(n: usize) -> Self {
        SeriesExemplars {
            slots: (0..n.max(1)).map(|_| Slot::default()).collect(),
        }
    }

    /// Records an observation of `value` with the bucket bounds `bounds` (empty: a counter).
    pub fn record(&self, bounds: &[f64], value: f64, trace_id: &str, ts: TimestampNs) {
        let i = bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(bounds.len());
        if let Some(slot) = self.slots.get(i) {
            slot.write(trace_id, value, ts);
        }
    }

    /// The exemplar of slot `i` (bucket `i`, or 0 for a counter).
    pub fn get(&self, i: usize) -> Option<Exemplar> {
        self.slots.get(i).and_then(Slot::read)
    }
}

type Key = Box<[Box<str>]>;

/// The exemplars of one metric's series, by label values (in the metric's label order).
pub struct FamilyExemplars {
    label_names: Vec<String>,
    slots_per_series: usize,
    series: RwLock<HashMap<Key, Arc<SeriesExemplars>>>,
}

impl FamilyExemplars {
    /// A metric with these labels and `buckets` bounds (empty for a counter).
    pub fn new(label_names: Vec<String>, buckets: usize) -> Self {
        FamilyExemplars {
            label_names,
            slots_per_series: buckets + 1,
            series: RwLock::new(HashMap::new()),
        }
    }

    /// The slots of a new series (called when the series is created, not per event).
    pub fn add(&self, values: &[&str]) -> Arc<SeriesExemplars> {
        let s = Arc::new(SeriesExemplars::new(self.slots_per_series));
        let key: Key = values.iter().map(|v| Box::<str>::from(*v)).collect();
        if let Ok(mut map) = self.series.write() {
            map.insert(key, s.clone());
        }
        s
    }

    /// Forgets an expired series.
    pub fn remove(&self, values: &[Box<str>]) {
        if let Ok(mut map) = self.series.write() {
            map.remove(values);
        }
    }

    /// The slots of the series with these label pairs (any order), for a scrape.
    pub fn find<'a>(
        &self,
        labels: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    ) -> Option<Arc<SeriesExemplars>> {
        let key: Key = self
            .label_names
            .iter()
            .map(|n| {
                labels
                    .clone()
                    .find(|(name, _)| name == n)
                    .map_or("", |(_, v)| v)
                    .into()
            })
            .collect();
        self.series.read().ok()?.get(&key).cloned()
    }
}

/// Every metric's exemplars, by metric name: what the `/metrics` handler reads. Cloning shares.
#[derive(Clone, Default)]
pub struct ExemplarStore {
    families: Arc<Mutex<HashMap<String, Arc<FamilyExemplars>>>>,
}

impl ExemplarStore {
    /// Makes `family` the exemplars of metric `name` (compile, and a reload that keeps a
    /// metric's series).
    pub fn install(&self, name: &str, family: Arc<FamilyExemplars>) {
        if let Ok(mut m) = self.families.lock() {
            m.insert(name.to_string(), family);
        }
    }

    /// Forgets metric `name` if `family` is still what it serves (a removed metric).
    pub fn uninstall(&self, name: &str, family: &Arc<FamilyExemplars>) {
        if let Ok(mut m) = self.families.lock() {
            if m.get(name).is_some_and(|f| Arc::ptr_eq(f, family)) {
                m.remove(name);
            }
        }
    }

    /// The exemplars of metric `name`, if it keeps any.
    pub fn family(&self, name: &str) -> Option<Arc<FamilyExemplars>> {
        self.families.lock().ok()?.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_keeps_the_latest_exemplar_and_skips_bad_ids() {
        let s = Slot::default();
        assert_eq!(s.read(), None);
        s.write("5f0c3e9a-1b2c-4d5e-8f90-a1b2c3d4e5f6", 1.5, 7);
        s.write("short", 2.5, 8);
        assert_eq!(
            s.read(),
            Some(Exemplar {
                trace_id: "short".into(),
                value: 2.5,
                timestamp_ns: 8
            })
        );
        s.write(&"x".repeat(MAX_TRACE_ID_BYTES + 1), 3.0, 9);
        s.write("", 3.0, 9);
        assert_eq!(s.read().map(|e| e.trace_id), Some("short".into()));
        let exact = "é".repeat(MAX_TRACE_ID_BYTES / 2);
        s.write(&exact, 4.0, 10);
        assert_eq!(s.read().map(|e| e.trace_id), Some(exact));
    }

    #[test]
    fn observations_land_in_their_bucket() {
        let f = FamilyExemplars::new(vec!["a".into(), "b".into()], 2);
        let s = f.add(&["x", "y"]);
        let bounds = [1.0, 10.0];
        s.record(&bounds, 0.5, "t-low", 1);
        s.record(&bounds, 10.0, "t-mid", 2);
        s.record(&bounds, 99.0, "t-inf", 3);
        let found = f.find([("b", "y"), ("a", "x")].into_iter()).unwrap();
        let ids: Vec<_> = (0..3).map(|i| found.get(i).unwrap().trace_id).collect();
        assert_eq!(ids, ["t-low", "t-mid", "t-inf"]);
        assert!(f.find([("a", "x"), ("b", "z")].into_iter()).is_none());
        f.remove(&["x".into(), "y".into()]);
        assert!(f.find([("a", "x"), ("b", "y")].into_iter()).is_none());
    }

    #[test]
    fn concurrent_reads_never_see_a_torn_exemplar() {
        let s = Arc::new(Slot::default());
        let ids = ["a".repeat(36), "b".repeat(64), "c".repeat(5)];
        let writer = {
            let s = s.clone();
            let ids = ids.clone();
            std::thread::spawn(move || {
                for i in 0..200_000usize {
                    let id = &ids[i % 3];
                    s.write(id, id.len() as f64, id.len() as i64);
                }
            })
        };
        for _ in 0..200_000 {
            if let Some(e) = s.read() {
                assert!(ids.contains(&e.trace_id), "{e:?}");
                assert_eq!(e.value, e.trace_id.len() as f64);
                assert_eq!(e.timestamp_ns, e.trace_id.len() as i64);
            }
        }
        writer.join().unwrap();
    }
}
