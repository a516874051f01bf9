//! `remember_by`: a label value carried from one event to a later one with the same key.
//!
//! Some systems log the facts of one task on several lines: Python's agent system logs the
//! exception (`log_error`, with `error_type`) and then `Task completed: failure` (with the
//! duration, but no `error_type`), both with the task's `trace_id`. A label with
//! `remember_by = "trace_id"` takes, for an event that lacks its field, the value last seen on
//! an earlier event with the same trace id; the failure is then counted under its real
//! `error_type` instead of the default.
//!
//! Bounded: two generations of at most `max_entries / 2` keys each. Inserting into a full young
//! generation makes it the old one (dropping the previous old one), so memory stays under
//! `max_entries` keys while every key lives for at least `max_entries / 2` insertions; entries
//! older than the TTL (in the deriver's ticks, whole seconds) are not used. Values are kept at
//! most `max_value_bytes` long, as labels are cut to that anyway. No per-event allocation for
//! events that carry neither the field nor a key seen before.

use std::borrow::Cow;

use hashbrown::HashMap;

use crate::event::Event;
use crate::parse::FieldRef;

/// Keys remembered per label at most.
pub const DEFAULT_MAX_ENTRIES: usize = 20_000;
/// Seconds a remembered value is used for.
pub const DEFAULT_TTL_SECS: u32 = 3600;

pub struct Memory {
    by: FieldRef,
    young: HashMap<Box<str>, (Box<str>, u32)>,
    old: HashMap<Box<str>, (Box<str>, u32)>,
    generation: usize,
    ttl: u32,
}

impl Memory {
    pub fn new(by: FieldRef, max_entries: usize, ttl_secs: u32) -> Self {
        Memory {
            by,
            young: HashMap::new(),
            old: HashMap::new(),
            generation: (max_entries / 2).max(1),
            ttl: ttl_secs,
        }
    }

    /// Records `value` (the label's field on `ev`) under the event's key.
    pub fn record(&mut self, ev: &Event<'_>, value: &str, max_value_bytes: usize, tick: u32) {
        let Some(key) = self.by.text(ev) else {
            return;
        };
        if key.is_empty() {
            return;
        }
        let mut n = value.len().min(max_value_bytes);
        while !value.is_char_boundary(n) {
            n -= 1;
        }
        let value = &value[..n];
        if let Some(slot) = self.young.get_mut(key.as_ref()) {
            if &*slot.0 != value {
                slot.0 = value.into();
            }
            slot.1 = tick;
            return;
        }
        if self.young.len() >= self.generation {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key.as_ref().into(), (value.into(), tick));
    }

    /// The value remembered for the event's key, if any and not older than the TTL.
    pub fn recall<'m>(&'m self, ev: &Event<'_>, tick: u32) -> Option<Cow<'m, str>> {
        let key = self.by.text(ev)?;
        let (v, at) = self
            .young
            .get(key.as_ref())
            .or_else(|| self.old.get(key.as_ref()))?;
        (tick.saturating_sub(*at) <= self.ttl).then_some(Cow::Borrowed(&**v))
    }

    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{EventConfig, PathTrie};

    fn parser() -> crate::parse::LineParser {
        let mut trie = PathTrie::new();
        EventConfig::default().intern(&mut trie).into_parser(trie)
    }

    #[test]
    fn a_value_is_recalled_by_key_and_bounded() {
        let p = parser();
        let mut m = Memory::new(FieldRef::TraceId, 4, 10);
        let line = |t: &str| format!(r#"{{"message":"m","trace_id":"{t}"}}"#);
        let (a, b) = (line("a"), line("b"));
        let ev_a = p.parse(&a, 0, &mut |_| {});
        let ev_b = p.parse(&b, 0, &mut |_| {});
        m.record(&ev_a, "KeyError", 1024, 0);
        assert_eq!(m.recall(&ev_a, 5).as_deref(), Some("KeyError"));
        assert_eq!(m.recall(&ev_b, 5), None);
        assert_eq!(m.recall(&ev_a, 11), None, "past the TTL");
        // Many other keys push "a" out: at most 4 are kept.
        let others: Vec<String> = (0..10).map(|i| line(&format!("k{i}"))).collect();
        for o in &others {
            let ev = p.parse(o, 0, &mut |_| {});
            m.record(&ev, "ValueError", 1024, 1);
            assert!(m.len() <= 4);
        }
        assert_eq!(m.recall(&ev_a, 1), None);
        // Values are cut at a character boundary.
        m.record(&ev_b, "éé", 3, 1);
        assert_eq!(m.recall(&ev_b, 1).as_deref(), Some("é"));
    }
}
