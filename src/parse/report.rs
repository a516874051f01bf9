//! What the parsers made of the input, said to the person running weir: the `--oneshot`
//! summary on stderr, and a live run's warnings.
//!
//! Why: `weir_parse_errors_total` counts every parse problem, but nobody reads a counter during
//! a first try. A logfmt file fed to a JSON pipeline used to give an exposition of zeros and
//! exit 0. Now a backfill ends with what it read and what went wrong, and a run in which no line
//! could be used says so and exits [`EXIT_NOTHING_USABLE`].
//!
//! Invariants:
//! - "Unusable" is decided by the parser: a line whose event is not `parsed` (its parser could
//!   not read it; [`ParseIssue::unusable`] names the reasons that cause it). Such a line is
//!   still shipped and counted; it only feeds no metric unless `include_unparsed`.
//! - The per-line cost is an array increment and a compare (the processor's tally); a sample
//!   line is copied only the first time a reason is seen (once per reason per run, in
//!   [`ParseReport`]) and when the warnings' period has passed ([`LiveWarnings`]).
//! - Samples are cut to [`SAMPLE_CHARS`] characters and printed escaped (`{:?}`), so a hostile
//!   line cannot write terminal escape sequences to stderr.
//! - A live run warns once when a reason first appears, then at most once per
//!   [`WARN_EVERY`] with the counts since the last warning: bad input cannot flood the log.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::event::ParseIssue;

/// Characters of a sample line shown in warnings and the summary.
pub const SAMPLE_CHARS: usize = 200;
/// A live run's period between two summaries of parse problems.
pub const WARN_EVERY: Duration = Duration::from_secs(60);
/// `weir run --oneshot`'s exit code when lines were read but none could be used.
pub const EXIT_NOTHING_USABLE: u8 = 3;

const N: usize = ParseIssue::ALL.len();

/// A line cut to [`SAMPLE_CHARS`] characters (`…` marks the cut).
pub fn cut(line: &str) -> String {
    let mut chars = line.char_indices();
    match chars.nth(SAMPLE_CHARS) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line.to_string(),
    }
}

/// One sample line and where it came from.
#[derive(Debug, Clone)]
pub struct Sample {
    pub source: String,
    pub line: String,
}

/// One batch's parse problems, gathered by the processor line by line.
pub struct BatchTally {
    /// Lines with each problem, indexed by `ParseIssue as usize`.
    pub counts: [u64; N],
    /// The index in the batch of the first line with each problem (`u32::MAX`: none).
    pub first: [u32; N],
    /// Lines read for the batch's events (a joined multi-line event counts each of its lines):
    /// set from the batch (`lines.len() + joined_lines`), not counted per line.
    pub lines: u64,
    /// Events whose parser could not read their line.
    pub unusable: u64,
    pub first_unusable: Option<u32>,
}

impl Default for BatchTally {
    fn default() -> Self {
        BatchTally {
            counts: [0; N],
            first: [u32::MAX; N],
            lines: 0,
            unusable: 0,
            first_unusable: None,
        }
    }
}

impl BatchTally {
    /// Line `line` of the batch had problem `i`.
    #[inline]
    pub fn issue(&mut self, i: ParseIssue, line: u32) {
        let k = i as usize;
        self.counts[k] += 1;
        if self.first[k] == u32::MAX {
            self.first[k] = line;
        }
    }

    /// Event `line` of the batch was parsed, and its parser could use its line or not.
    #[inline]
    pub fn line(&mut self, parsed: bool, line: u32) {
        if !parsed {
            self.unusable += 1;
            self.first_unusable.get_or_insert(line);
        }
    }
}

/// A run's totals, shared by the processor (which adds a batch at a time) and the command
/// line (which prints the summary at the end of a `--oneshot`).
#[derive(Default)]
pub struct ParseReport {
    lines: AtomicU64,
    events: AtomicU64,
    unusable: AtomicU64,
    by_reason: [AtomicU64; N],
    samples: [OnceLock<Sample>; N],
    unusable_sample: OnceLock<Sample>,
}

impl ParseReport {
    /// Adds a batch of `events` events from `source`; `line(i)` is the text of its line `i`,
    /// asked for only when a sample is wanted.
    pub fn add(&self, source: &str, events: u64, tally: &BatchTally, line: impl Fn(u32) -> String) {
        self.events.fetch_add(events, Ordering::Relaxed);
        self.lines.fetch_add(tally.lines, Ordering::Relaxed);
        if tally.unusable > 0 {
            self.unusable.fetch_add(tally.unusable, Ordering::Relaxed);
            if let (None, Some(i)) = (self.unusable_sample.get(), tally.first_unusable) {
                let _ = self.unusable_sample.set(sample(source, &line(i)));
            }
        }
        for &i in ParseIssue::ALL {
            let k = i as usize;
            if tally.counts[k] == 0 {
                continue;
            }
            self.by_reason[k].fetch_add(tally.counts[k], Ordering::Relaxed);
            if self.samples[k].get().is_none() && tally.first[k] != u32::MAX {
                let _ = self.samples[k].set(sample(source, &line(tally.first[k])));
            }
        }
    }

    pub fn lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Lines were read and none could be used.
    pub fn nothing_usable(&self) -> bool {
        let events = self.events();
        events > 0 && self.unusable.load(Ordering::Relaxed) == events
    }

    /// The first sample of a reason (for tests and tools).
    pub fn sample(&self, i: ParseIssue) -> Option<&Sample> {
        self.samples[i as usize].get()
    }

    /// The summary a `--oneshot` prints on stderr: one line, and when no line could be used,
    /// what the pipeline expected, a sample line and a hint.
    pub fn summary(&self) -> String {
        let (lines, events) = (self.lines(), self.events());
        let mut out = format!(
            "weir: {} {}, {} {}",
            thousands(lines),
            plural(lines, "line", "lines"),
            thousands(events),
            plural(events, "event", "events")
        );
        let problems: Vec<(ParseIssue, u64)> = ParseIssue::ALL
            .iter()
            .map(|&i| (i, self.by_reason[i as usize].load(Ordering::Relaxed)))
            .filter(|&(_, n)| n > 0)
            .collect();
        if problems.is_empty() {
            out.push_str("; no parse problems");
        } else {
            out.push_str("; parse problems:");
            for (k, (i, n)) in problems.iter().enumerate() {
                let sep = if k == 0 { " " } else { ", " };
                let _ = write!(
                    out,
                    "{sep}{} {} ({})",
                    i.reason(),
                    thousands(*n),
                    share(*n, events)
                );
            }
        }
        out.push('\n');
        if self.nothing_usable() {
            let reasons: Vec<&str> = problems
                .iter()
                .filter(|(i, _)| i.unusable())
                .map(|(i, _)| i.reason())
                .collect();
            let expected = reasons
                .iter()
                .map(|r| expectation(r))
                .find(|e| !e.is_empty())
                .unwrap_or("lines its parser can read");
            let _ = writeln!(
                out,
                "weir: no line could be used: this pipeline expects {expected}, and all {} {} \
                 were unusable ({}); they were counted and kept, but no metric saw them",
                thousands(events),
                plural(events, "event", "events"),
                if reasons.is_empty() {
                    "not parsed".to_string()
                } else {
                    reasons.join(", ")
                }
            );
            if let Some(s) = self.unusable_sample.get() {
                let _ = writeln!(out, "weir: first line (from {}): {:?}", s.source, s.line);
            }
            let _ = writeln!(
                out,
                "weir: hint: is the input in another format? `--format docker|cri|auto` unwraps \
                 container logs; a pipeline's `[parser]` reads other line formats (logfmt, regex); \
                 exit code {EXIT_NOTHING_USABLE}"
            );
        }
        out
    }
}

fn sample(source: &str, line: &str) -> Sample {
    Sample {
        source: source.to_string(),
        line: cut(line),
    }
}

/// What a pipeline whose lines fail with `reason` expected, in words ("" if unknown).
fn expectation(reason: &str) -> &'static str {
    match reason {
        "invalid_json" | "not_an_object" => "one JSON object a line",
        "regex_no_match" => "lines that match its regex",
        "invalid_logfmt" => "logfmt lines (key=value ...)",
        _ => "",
    }
}

fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `n` of `total` as a percentage with one decimal; `<0.1%` rather than a misleading `0.0%`.
fn share(n: u64, total: u64) -> String {
    if total == 0 {
        return "-".to_string();
    }
    let p = n as f64 * 100.0 / total as f64;
    if p < 0.05 {
        "<0.1%".to_string()
    } else {
        format!("{p:.1}%")
    }
}

/// A live run's warnings about parse problems: once when a reason first appears (with a
/// sample), then at most once per period with the counts since the last warning.
pub struct LiveWarnings {
    seen: [bool; N],
    since: [u64; N],
    last: Instant,
    every: Duration,
}

impl LiveWarnings {
    pub fn new(every: Duration) -> Self {
        LiveWarnings {
            seen: [false; N],
            since: [0; N],
            last: Instant::now(),
            every,
        }
    }

    /// After a batch of `source`: warns of reasons never seen before; `line(i)` is the text of
    /// the batch's line `i`, asked for only then.
    pub fn after_batch(&mut self, source: &str, tally: &BatchTally, line: impl Fn(u32) -> String) {
        for &i in ParseIssue::ALL {
            let k = i as usize;
            let n = tally.counts[k];
            if n == 0 {
                continue;
            }
            if self.seen[k] {
                self.since[k] += n;
                continue;
            }
            self.seen[k] = true;
            let sample = match tally.first[k] {
                u32::MAX => String::new(),
                at => cut(&line(at)),
            };
            tracing::warn!(
                source = %source,
                reason = i.reason(),
                lines = n,
                sample = %sample,
                unusable = i.unusable(),
                every_secs = self.every.as_secs(),
                "parse problem seen for the first time (lines are kept and counted in \
                 weir_parse_errors_total; later ones are summarised periodically)"
            );
        }
        self.tick(Instant::now());
    }

    /// Warns with the counts since the last warning, if the period has passed and there are
    /// any.
    pub fn tick(&mut self, now: Instant) {
        if now.duration_since(self.last) < self.every {
            return;
        }
        self.last = now;
        if self.since.iter().all(|&n| n == 0) {
            return;
        }
        let mut counts = String::new();
        for &i in ParseIssue::ALL {
            let n = std::mem::take(&mut self.since[i as usize]);
            if n > 0 {
                let sep = if counts.is_empty() { "" } else { ", " };
                let _ = write!(counts, "{sep}{} {}", i.reason(), n);
            }
        }
        tracing::warn!(
            counts = %counts,
            secs = self.every.as_secs(),
            "lines with parse problems since the last warning (kept; see weir_parse_errors_total)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(issues: &[(ParseIssue, u32)], lines: &[(&str, bool)]) -> BatchTally {
        let mut t = BatchTally::default();
        for &(i, at) in issues {
            t.issue(i, at);
        }
        for (at, (text, parsed)) in lines.iter().enumerate() {
            t.lines += 1 + text.matches('\n').count() as u64;
            t.line(*parsed, at as u32);
        }
        t
    }

    #[test]
    fn summary_counts_reasons_with_their_share() {
        let r = ParseReport::default();
        let lines: Vec<(&str, bool)> = (0..1000).map(|_| ("{}", true)).collect();
        let mut t = batch(&[], &lines);
        for at in 0..10 {
            t.issue(ParseIssue::InvalidJson, at);
            t.line(false, at);
        }
        r.add("stdin", 1000, &t, |_| "x".into());
        assert_eq!(
            r.summary(),
            "weir: 1,000 lines, 1,000 events; parse problems: invalid_json 10 (1.0%)\n"
        );
        assert!(!r.nothing_usable());
    }

    #[test]
    fn nothing_usable_says_what_was_expected_with_a_sample() {
        let r = ParseReport::default();
        let long = format!("level=info msg=\"{}\"", "y".repeat(300));
        let t = batch(
            &[(ParseIssue::InvalidJson, 0), (ParseIssue::InvalidJson, 1)],
            &[(&long, false), ("level=warn", false)],
        );
        r.add("app.log", 2, &t, |i| {
            [long.clone(), "level=warn".into()][i as usize].clone()
        });
        assert!(r.nothing_usable());
        let s = r.summary();
        let sample = format!("{}…", &long[..SAMPLE_CHARS]);
        assert_eq!(
            s,
            format!(
                "weir: 2 lines, 2 events; parse problems: invalid_json 2 (100.0%)\n\
                 weir: no line could be used: this pipeline expects one JSON object a line, and \
                 all 2 events were unusable (invalid_json); they were counted and kept, but no \
                 metric saw them\n\
                 weir: first line (from app.log): {sample:?}\n\
                 weir: hint: is the input in another format? `--format docker|cri|auto` unwraps \
                 container logs; a pipeline's `[parser]` reads other line formats (logfmt, \
                 regex); exit code 3\n"
            )
        );
    }

    #[test]
    fn joined_lines_count_each_physical_line() {
        let r = ParseReport::default();
        r.add("s", 1, &batch(&[], &[("a\n  b\n  c", true)]), |_| {
            String::new()
        });
        assert_eq!((r.lines(), r.events()), (3, 1));
        assert_eq!(r.summary(), "weir: 3 lines, 1 event; no parse problems\n");
    }

    #[test]
    fn numbers_and_cuts() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(12_345), "12,345");
        assert_eq!(share(1, 1_000_000), "<0.1%");
        assert_eq!(
            cut("é".repeat(201).as_str()),
            format!("{}…", "é".repeat(200))
        );
        assert_eq!(cut("short"), "short");
    }

    #[test]
    fn live_warnings_count_after_the_first_and_summarise_per_period() {
        let mut w = LiveWarnings::new(WARN_EVERY);
        let start = w.last;
        let t = batch(&[(ParseIssue::InvalidJson, 0)], &[("x", false)]);
        w.after_batch("s", &t, |_| "x".into());
        assert!(w.seen[ParseIssue::InvalidJson as usize]);
        // The first batch warned; later ones are only counted until the period ends.
        assert_eq!(w.since[ParseIssue::InvalidJson as usize], 0);
        w.after_batch("s", &t, |_| "x".into());
        w.after_batch("s", &t, |_| "x".into());
        assert_eq!(w.since[ParseIssue::InvalidJson as usize], 2);
        w.tick(start + WARN_EVERY / 2);
        assert_eq!(w.since[ParseIssue::InvalidJson as usize], 2);
        w.tick(start + WARN_EVERY);
        assert_eq!(w.since[ParseIssue::InvalidJson as usize], 0);
        assert_eq!(w.last, start + WARN_EVERY);
    }

    #[test]
    fn first_sample_per_reason_is_kept() {
        let r = ParseReport::default();
        let t = batch(
            &[(ParseIssue::NotAnObject, 1)],
            &[("{}", true), ("[1]", false)],
        );
        r.add("s", 2, &t, |i| ["{}", "[1]"][i as usize].to_string());
        let t = batch(&[(ParseIssue::NotAnObject, 0)], &[("42", false)]);
        r.add("s", 1, &t, |_| "42".to_string());
        assert_eq!(
            r.sample(ParseIssue::NotAnObject).map(|s| s.line.as_str()),
            Some("[1]")
        );
        assert!(r.sample(ParseIssue::InvalidJson).is_none());
    }
}
