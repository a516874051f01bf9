//! The registry `/metrics` serves the derived metrics from, swapped whole on a reload.
//!
//! # Why
//! The `prometheus` crate's registry remembers, for the life of the registry, each name's help
//! text and label names, even after the metric is unregistered: a reload that changes a
//! metric's `help` or labels could not register the new definition in the same registry, and
//! the metric would leave `/metrics` until a restart. So a reload builds a fresh registry with
//! every metric of the new pipeline (the kept ones carry their series over, so counters
//! continue) and swaps it in here. `/metrics` reads through [`Live::served`], a registry
//! holding one collector that delegates to whichever registry is current; a scrape takes a
//! read lock for the time of one `gather`, and the pipeline takes the write lock only at a
//! reload, never per event.

use std::sync::{Arc, RwLock};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::Registry;

/// The current registry of derived metrics; clones share it.
#[derive(Clone, Debug)]
pub struct Live {
    current: Arc<RwLock<Registry>>,
}

impl Live {
    /// Starts with `initial` (the registry the pipeline was compiled with).
    pub fn new(initial: Registry) -> Live {
        Live {
            current: Arc::new(RwLock::new(initial)),
        }
    }

    /// The registry to serve: it always gathers whatever registry is current.
    pub fn served(&self) -> Registry {
        let served = Registry::new();
        // A collector without descriptors always registers (its id is 0 in an empty registry).
        if let Err(e) = served.register(Box::new(Delegate(self.clone()))) {
            tracing::error!(error = %e, "cannot serve the derived metrics");
        }
        served
    }

    /// Makes `next` the current registry.
    pub fn replace(&self, next: Registry) {
        match self.current.write() {
            Ok(mut g) => *g = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }

    /// The current registry's families.
    pub fn gather(&self) -> Vec<MetricFamily> {
        match self.current.read() {
            Ok(g) => g.gather(),
            Err(poisoned) => poisoned.into_inner().gather(),
        }
    }
}

/// Gathers the current registry. It declares no descriptors: the registry it sits in checks
/// nothing about the names it returns, and the current registry has checked them already.
struct Delegate(Live);

impl Collector for Delegate {
    fn desc(&self) -> Vec<&Desc> {
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.0.gather()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_registry_follows_a_replacement() {
        let first = Registry::new();
        let a = prometheus::IntCounter::new("a_total", "first").unwrap();
        a.inc();
        first.register(Box::new(a)).unwrap();
        let live = Live::new(first);
        let served = live.served();
        let names = |r: &Registry| -> Vec<String> {
            r.gather().iter().map(|f| f.name().to_string()).collect()
        };
        assert_eq!(names(&served), ["a_total"]);
        let next = Registry::new();
        let b = prometheus::IntCounter::new("a_total", "help changed").unwrap();
        b.inc_by(2);
        next.register(Box::new(b)).unwrap();
        live.replace(next);
        let families = served.gather();
        assert_eq!(families.len(), 1);
        assert_eq!(families[0].help(), "help changed");
        assert_eq!(families[0].get_metric()[0].get_counter().get_value(), 2.0);
    }
}
