//! weir's own `process_*` metrics, named and typed as every Prometheus exporter serves them
//! (client_golang's process collector), so the usual CPU, memory and file-descriptor panels and
//! alerts work on weir unchanged.
//!
//! Why our own reader rather than the `prometheus` crate's `process` feature: that feature pulls
//! `procfs` (with `procfs-core`, `hex` and a second `rustix`), and its `process_cpu_seconds_total`
//! counts whole seconds only, so `rate()` over a lightly loaded weir shows steps of 0 and 1 core.
//! Reading four small files under `/proc/self` is short, and gives the CPU time at the kernel's
//! clock-tick resolution.
//!
//! Every read happens at scrape time (nothing runs between scrapes). A file that cannot be read
//! or parsed leaves its metrics out of that scrape (logged at debug), never a panic and never a
//! made-up value. Linux only: elsewhere [`ProcessCollector::new`] returns `None`.

use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGauge, Opts};

/// The fields of `/proc/self/stat` that the metrics use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    pub num_threads: i64,
    /// Start time after boot, in clock ticks.
    pub start_ticks: u64,
    pub vsize_bytes: u64,
    pub rss_pages: i64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may itself hold
/// spaces and `)`, so the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0, so field n is index n - 3.
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let inum = |n: usize| f.get(n - 3).and_then(|v| v.parse::<i64>().ok());
    Some(Stat {
        cpu_ticks: num(14)?.checked_add(num(15)?)?,
        num_threads: inum(20)?,
        start_ticks: num(22)?,
        vsize_bytes: num(23)?,
        rss_pages: inum(24)?,
    })
}

/// The soft "Max open files" limit from `/proc/<pid>/limits`; `None` when unlimited or absent.
pub fn parse_max_open_files(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The boot time (`btime`, seconds since the epoch) from `/proc/stat`.
pub fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// A [`Collector`] for the `process_*` metrics of this process.
pub struct ProcessCollector {
    descs: Vec<Desc>,
    clock_ticks: f64,
    page_bytes: i64,
    cpu: Counter,
    rss: IntGauge,
    vsize: Gauge,
    threads: IntGauge,
    open_fds: IntGauge,
    max_fds: Gauge,
    start_time: Gauge,
    /// Serialises the read-then-increment of `cpu` between concurrent scrapes.
    cpu_lock: Mutex<()>,
}

impl ProcessCollector {
    /// The collector, or `None` where `/proc/self` is not there (not Linux, or no procfs
    /// mounted): weir then serves no `process_*` metrics rather than zeros.
    pub fn new() -> Option<Self> {
        if !cfg!(target_os = "linux") || !std::path::Path::new("/proc/self/stat").exists() {
            return None;
        }
        // SAFETY: sysconf reads a constant of the running system; it has no preconditions.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if ticks <= 0 || page <= 0 {
            return None;
        }
        let cpu = Counter::with_opts(Opts::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        ))
        .expect("valid constant name");
        let rss = IntGauge::new(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        )
        .expect("valid constant name");
        let vsize = Gauge::new(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
        )
        .expect("valid constant name");
        let threads = IntGauge::new("process_threads", "Number of OS threads in the process.")
            .expect("valid constant name");
        let open_fds = IntGauge::new("process_open_fds", "Number of open file descriptors.")
            .expect("valid constant name");
        let max_fds = Gauge::new(
            "process_max_fds",
            "Maximum number of open file descriptors.",
        )
        .expect("valid constant name");
        let start_time = Gauge::new(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        )
        .expect("valid constant name");
        let mut descs = Vec::new();
        for c in [
            cpu.desc(),
            rss.desc(),
            vsize.desc(),
            threads.desc(),
            open_fds.desc(),
            max_fds.desc(),
            start_time.desc(),
        ] {
            descs.extend(c.into_iter().cloned());
        }
        let this = ProcessCollector {
            descs,
            clock_ticks: ticks as f64,
            page_bytes: page,
            cpu,
            rss,
            vsize,
            threads,
            open_fds,
            max_fds,
            start_time,
            cpu_lock: Mutex::new(()),
        };
        // The start time does not change: computed once.
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .as_deref()
            .and_then(parse_boot_time);
        let stat = read_stat();
        if let (Some(boot), Some(stat)) = (boot, stat) {
            this.start_time
                .set(boot as f64 + stat.start_ticks as f64 / this.clock_ticks);
        }
        Some(this)
    }
}

fn read_stat() -> Option<Stat> {
    match std::fs::read_to_string("/proc/self/stat") {
        Ok(t) => {
            let s = parse_stat(&t);
            if s.is_none() {
                tracing::debug!("/proc/self/stat not understood; process_* metrics left out");
            }
            s
        }
        Err(e) => {
            tracing::debug!(error = %e, "reading /proc/self/stat");
            None
        }
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = Vec::with_capacity(7);
        if let Some(stat) = read_stat() {
            {
                // A poisoned lock only means another scrape panicked mid-update; the counter
                // itself is still consistent.
                let _guard = self.cpu_lock.lock().unwrap_or_else(|p| p.into_inner());
                let now = stat.cpu_ticks as f64 / self.clock_ticks;
                let delta = now - self.cpu.get();
                if delta > 0.0 {
                    self.cpu.inc_by(delta);
                }
            }
            self.rss.set(stat.rss_pages.saturating_mul(self.page_bytes));
            self.vsize.set(stat.vsize_bytes as f64);
            self.threads.set(stat.num_threads);
            out.extend(self.cpu.collect());
            out.extend(self.rss.collect());
            out.extend(self.vsize.collect());
            out.extend(self.threads.collect());
        }
        // Counting the entries also counts the descriptor read_dir holds open, as other
        // exporters do.
        match std::fs::read_dir("/proc/self/fd") {
            Ok(dir) => {
                self.open_fds.set(dir.count() as i64);
                out.extend(self.open_fds.collect());
            }
            Err(e) => tracing::debug!(error = %e, "reading /proc/self/fd"),
        }
        if let Some(max) = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .as_deref()
            .and_then(parse_max_open_files)
        {
            self.max_fds.set(max as f64);
            out.extend(self.max_fds.collect());
        }
        if self.start_time.get() > 0.0 {
            out.extend(self.start_time.collect());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a user checks on /metrics: each process_* metric is there, typed, with a value
    /// that fits this very process.
    #[cfg(target_os = "linux")]
    #[test]
    fn self_metrics_serve_plausible_process_metrics() {
        let selfm = crate::telemetry::SelfMetrics::new();
        // Some CPU work and an open file, so the values have something to show.
        let _held = std::fs::File::open("/proc/self/stat").unwrap();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let mut text = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&selfm.registry.gather(), &mut text)
            .unwrap();
        let value = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.split(' ').next() == Some(name))
                .unwrap_or_else(|| panic!("{name} missing from:\n{text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        for (name, kind) in [
            ("process_cpu_seconds_total", "counter"),
            ("process_resident_memory_bytes", "gauge"),
            ("process_virtual_memory_bytes", "gauge"),
            ("process_open_fds", "gauge"),
            ("process_max_fds", "gauge"),
            ("process_start_time_seconds", "gauge"),
            ("process_threads", "gauge"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}: {text}"
            );
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = value("process_start_time_seconds");
        assert!(
            start <= now + 1.0 && start > now - 3600.0,
            "start {start}, now {now}"
        );
        assert!(value("process_cpu_seconds_total") > 0.0);
        assert!(value("process_resident_memory_bytes") > 1_000_000.0);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        // stdin, stdout, stderr and the file held above at least.
        assert!(value("process_open_fds") >= 4.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_threads") >= 1.0);
    }

    #[test]
    fn stat_fields_are_counted_from_the_last_paren() {
        // A command name with spaces and a ')' must not shift the fields.
        let line = "4242 (we ir) x) S 1 4242 4242 0 -1 4194560 1500 0 0 0 250 75 0 0 20 0 \
                    9 0 123456 104857600 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 \
                    0 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                cpu_ticks: 325,
                num_threads: 9,
                start_ticks: 123456,
                vsize_bytes: 104857600,
                rss_pages: 2048,
            })
        );
    }

    #[test]
    fn hostile_stat_text_is_none_not_a_panic() {
        for t in [
            "",
            ")",
            "1 (x",
            "1 (x) S 1 2",
            "1 (x) S a b c d e f g h i j k l m n o p q r s t u",
        ] {
            assert_eq!(parse_stat(t), None, "{t:?}");
        }
    }

    #[test]
    fn limits_and_boot_time_are_read() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_open_files(limits), Some(1024));
        assert_eq!(
            parse_max_open_files(&limits.replace("1024 ", "unlimited ")),
            None
        );
        assert_eq!(
            parse_boot_time("cpu 1 2 3\nbtime 1764650000\nprocesses 9\n"),
            Some(1764650000)
        );
        assert_eq!(parse_boot_time("cpu 1 2 3\n"), None);
    }
}
