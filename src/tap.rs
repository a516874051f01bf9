//! `weir tap`: watch the events flowing through a running weir, live.
//!
//! # How
//! `GET /tap?filter=EXPR&source=NAME&rate=N` subscribes; the answer is a stream of JSON lines
//! (`application/x-ndjson`), one per event that passes (`{"source": "...", "event": {...}}`,
//! the event as [`Event::to_json`](crate::event::Event::to_json) gives it, plus
//! `"parse_problems": ["invalid_json", ...]` for a line with any, the reasons
//! `weir_parse_errors_total` counted it under), and, once a second
//! while some were lost, a note (`{"tap": {"dropped": n, "skipped": m}}`, counts since the last
//! note). `weir tap` (in `cli.rs`) is the client. The filter is the `[[metrics]]` condition
//! language ([`Condition`]); `source` is a source's name: `stdin`, a file source's path or glob
//! as configured, `tcp:ADDR` with the bound address.
//!
//! # Why it cannot hurt the pipeline
//! - Free when nobody taps: the processor reads one atomic per batch ([`TapHub::offer`]).
//! - A filter may name any field, also one the pipeline never captures (the parser captures only
//!   the paths the pipeline uses, see [`PathTrie`]), so each subscription has its own
//!   [`LineParser`], built from the pipeline's `[event]` plus the filter's paths, and parses the
//!   lines again while it is open — but at most `rate × 20` lines a second (the rest are
//!   skipped, counted), so a tap on a busy pipeline adds a bounded amount of work. A tap
//!   without a filter parses only the lines it sends (at most `rate` a second); the lines
//!   over its rate are dropped unparsed.
//! - At most `rate` events a second go out (a token bucket; `rate` at most [`MAX_RATE`], at most
//!   [`MAX_TAPS`] taps), into a bounded channel written with `try_send`: a slow client loses
//!   events (counted as dropped), the processor never waits for it.
//!
//! - `/tap` is served on the admin listener only (127.0.0.1 by default, see [`crate::server`]):
//!   it carries raw log lines. A client that stops reading is cut off once its socket has not
//!   drained for the write timeout (`--http-write-timeout-secs`), which frees its tap slot.
//!
//! A subscription ends when its client goes away (the [`Subscription`] is dropped with the
//! response body) or when the pipeline ends ([`TapHub::close`], so the server can stop). An
//! `[event]` changed by a reload applies to the taps opened after it.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use tokio::sync::mpsc;

use crate::derive::condition::Condition;
use crate::event::{ParseIssue, TimestampNs};
use crate::parse::{line_text, EventConfig, FieldRef, LineParser, PathTrie};
use crate::source::LineBatch;

/// Default events a second per tap.
pub const DEFAULT_RATE: f64 = 100.0;
/// The highest rate a tap may ask for (it examines up to 20 times as many lines a second).
pub const MAX_RATE: f64 = 1000.0;
/// Taps open at once, at most.
pub const MAX_TAPS: usize = 16;
/// Lines a tap may be behind before it loses events.
const CHANNEL: usize = 256;
/// Lines examined per second per tap, as a multiple of its rate.
const EXAMINE_PER_EVENT: f64 = 20.0;
/// How often a tap that lost events says so.
const NOTE_EVERY: Duration = Duration::from_secs(1);

/// Why a tap was refused.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The filter is not a condition; the caret points at the column.
    #[error(
        "invalid filter at column {column}: expected {expected}\n  {filter}\n  {}^",
        " ".repeat(.column.saturating_sub(1))
    )]
    Filter {
        filter: String,
        /// 1-based, in characters.
        column: usize,
        expected: String,
    },
    #[error("rate must be a number of events a second above 0 and at most {MAX_RATE}, not {0}")]
    Rate(f64),
    #[error("{MAX_TAPS} taps are open already; close one first")]
    TooMany,
    #[error("this weir has no tap (it serves no pipeline)")]
    Off,
    /// `source=` names no source of this pipeline; the names it has are listed.
    #[error("no source named {name:?}; this weir's sources: {}", .known.join(", "))]
    NoSuchSource { name: String, known: Vec<String> },
}

/// Most source names a hub remembers (a pipeline has a handful; reloads add more).
const MAX_SOURCE_NAMES: usize = 256;

/// The names the batches of source `s` carry, as `source=` of a tap must give them: `stdin`,
/// each configured path or glob of a file source, `tcp:ADDR` for a TCP source (the address as
/// configured; the bound one when the port is 0 is accepted as any `tcp:` name).
pub fn source_names(s: &crate::source::SourceConfig) -> Vec<String> {
    use crate::source::SourceConfig;
    match s {
        SourceConfig::Stdin(_) => vec!["stdin".to_string()],
        SourceConfig::File(f) => f.paths.clone(),
        SourceConfig::Tcp(t) => vec![format!("tcp:{}", t.address)],
    }
}

impl IntoResponse for TapError {
    fn into_response(self) -> Response {
        let status = match self {
            TapError::Filter { .. } | TapError::Rate(_) => StatusCode::BAD_REQUEST,
            TapError::TooMany => StatusCode::TOO_MANY_REQUESTS,
            TapError::Off => StatusCode::SERVICE_UNAVAILABLE,
            TapError::NoSuchSource { .. } => StatusCode::NOT_FOUND,
        };
        (status, format!("{self}\n")).into_response()
    }
}

/// A token bucket: `rate` tokens a second, bursts of up to `rate` (at least 1).
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Full at `now`.
    pub fn new(rate: f64, now: Instant) -> Self {
        Bucket {
            rate,
            tokens: rate.max(1.0),
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        self.take_up_to(1, now) == 1
    }

    /// Takes as many whole tokens as there are, up to `n`; returns how many.
    pub fn take_up_to(&mut self, n: usize, now: Instant) -> usize {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.rate.max(1.0));
        let k = (self.tokens.floor() as usize).min(n);
        self.tokens -= k as f64;
        k
    }
}

/// One open tap, as the processor sees it.
struct Sub {
    id: u64,
    source: Option<String>,
    parser: LineParser,
    filter: Option<Condition>,
    tx: mpsc::Sender<String>,
    send: Bucket,
    examine: Bucket,
    /// Lines that passed the filter, and of those the ones sent (totals, for the log).
    matched: u64,
    sent: u64,
    /// Since the last note: events that passed but were not sent, lines not examined.
    dropped: u64,
    skipped: u64,
}

impl Sub {
    fn offer(&mut self, batch: &LineBatch, now: Instant, received: TimestampNs) {
        if self.source.as_deref().is_some_and(|n| n != &*batch.source) {
            return;
        }
        // Without a filter every line matches: the lines over the rate are dropped unparsed,
        // counted at once.
        let lines = match self.filter {
            Some(_) => &batch.lines[..],
            None => {
                let k = self.send.take_up_to(batch.lines.len(), now);
                self.dropped += (batch.lines.len() - k) as u64;
                &batch.lines[..k]
            }
        };
        for span in lines {
            if self.filter.is_some() && !self.examine.take(now) {
                self.skipped += 1;
                continue;
            }
            // The pipeline counts the parse issues; a tap shows them with the event.
            let mut problems: smallvec::SmallVec<[ParseIssue; 4]> = smallvec::SmallVec::new();
            let mut note = |i: ParseIssue| {
                if !problems.contains(&i) {
                    problems.push(i);
                }
            };
            if span.truncated {
                note(ParseIssue::Truncated);
            }
            let text = line_text(batch.line(span), span.truncated, &mut note);
            let mut repaired = String::new();
            let ev = self.parser.parse_line(
                &text,
                &mut repaired,
                batch.attrs_of(span),
                received,
                &mut note,
            );
            if self.filter.as_ref().is_some_and(|f| !f.matches(&ev)) {
                continue;
            }
            self.matched += 1;
            if self.filter.is_some() && !self.send.take(now) {
                self.dropped += 1;
                continue;
            }
            let mut line = serde_json::json!({"source": &*batch.source, "event": ev.to_json()});
            if !problems.is_empty() {
                // What the pipeline counted for this line (weir_parse_errors_total's reasons).
                line["parse_problems"] = problems.iter().map(|i| i.reason()).collect();
            }
            match self.tx.try_send(line.to_string()) {
                Ok(()) => self.sent += 1,
                Err(_) => self.dropped += 1,
            }
        }
    }

    /// The note on what was lost since the last one, if anything was (the counts restart).
    fn take_note(&mut self) -> Option<String> {
        if self.dropped == 0 && self.skipped == 0 {
            return None;
        }
        let note = serde_json::json!({"tap": {"dropped": self.dropped, "skipped": self.skipped}});
        self.dropped = 0;
        self.skipped = 0;
        Some(note.to_string())
    }
}

struct Inner {
    subs: Vec<Sub>,
    next_id: u64,
    /// The pipeline's `[event]`, for the parsers of new taps.
    event: EventConfig,
    /// The names of the sources started (see [`source_names`]); empty: not told, any name.
    sources: Vec<String>,
}

/// The open taps, shared by the processor (which offers them every batch) and the server (which
/// opens them).
pub struct TapHub {
    /// `subs.len()`, read without the lock on the hot path.
    active: AtomicUsize,
    inner: Mutex<Inner>,
    /// `weir_taps_active`.
    gauge: prometheus::IntGauge,
}

impl TapHub {
    /// `event` is the pipeline's `[event]`; `gauge` shows the taps open.
    pub fn new(event: EventConfig, gauge: prometheus::IntGauge) -> Self {
        TapHub {
            active: AtomicUsize::new(0),
            inner: Mutex::new(Inner {
                subs: Vec::new(),
                next_id: 0,
                event,
                sources: Vec::new(),
            }),
            gauge,
        }
    }

    /// Adds the names of sources started (at start, and those a reload starts), so a tap on a
    /// name no source has is refused instead of waiting forever.
    pub fn add_sources(&self, names: impl IntoIterator<Item = String>) {
        let mut inner = self.lock();
        for n in names {
            if inner.sources.len() < MAX_SOURCE_NAMES && !inner.sources.contains(&n) {
                inner.sources.push(n);
            }
        }
    }

    /// `Ok` when `name` is a source's name, or when the hub was told no names.
    fn check_source(&self, name: &str) -> Result<(), TapError> {
        let inner = self.lock();
        let tcp_any_port = name.starts_with("tcp:")
            && inner
                .sources
                .iter()
                .any(|s| s.starts_with("tcp:") && s.ends_with(":0"));
        if inner.sources.is_empty() || tcp_any_port || inner.sources.iter().any(|s| s == name) {
            return Ok(());
        }
        Err(TapError::NoSuchSource {
            name: name.to_string(),
            known: inner.sources.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the list usable: each entry is whole.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count(&self, inner: &Inner) {
        self.active.store(inner.subs.len(), Ordering::Relaxed);
        self.gauge.set(inner.subs.len() as i64);
    }

    /// Opens a tap: events matching `filter` (all when `None` or blank), of the source named
    /// `source` (all when `None`), at most `rate` a second.
    pub fn subscribe(
        self: &Arc<Self>,
        filter: Option<&str>,
        source: Option<String>,
        rate: f64,
    ) -> Result<Subscription, TapError> {
        if !(rate > 0.0 && rate <= MAX_RATE) {
            return Err(TapError::Rate(rate));
        }
        if let Some(name) = &source {
            self.check_source(name)?;
        }
        // The filter compiles (regexes, perhaps) without the lock the processor takes.
        let event = self.lock().event.clone();
        let mut trie = PathTrie::new();
        let paths = event.intern(&mut trie);
        let filter_src = filter.filter(|f| !f.trim().is_empty());
        let filter = match filter_src {
            None => None,
            Some(f) => Some(
                Condition::new(f, &mut |p| FieldRef::resolve(p, &mut trie)).map_err(|e| {
                    TapError::Filter {
                        filter: f.to_string(),
                        column: e.column,
                        expected: e.expected,
                    }
                })?,
            ),
        };
        let mut inner = self.lock();
        if inner.subs.len() >= MAX_TAPS {
            return Err(TapError::TooMany);
        }
        let (tx, rx) = mpsc::channel(CHANNEL);
        let now = Instant::now();
        let id = inner.next_id;
        inner.next_id += 1;
        tracing::info!(
            tap = id,
            filter = filter_src,
            source = source.as_deref(),
            rate,
            "tap opened"
        );
        inner.subs.push(Sub {
            id,
            source,
            parser: paths.into_parser(trie),
            filter,
            tx,
            send: Bucket::new(rate, now),
            examine: Bucket::new(rate * EXAMINE_PER_EVENT, now),
            matched: 0,
            sent: 0,
            dropped: 0,
            skipped: 0,
        });
        self.count(&inner);
        Ok(Subscription {
            hub: self.clone(),
            id,
            rx,
            noted: tokio::time::Instant::now(),
        })
    }

    /// Whether a tap is open (one relaxed load).
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// Offers a batch to every open tap; does nothing more than one atomic load when none is.
    /// Called by the processor after it handled the batch.
    #[inline]
    pub fn offer(&self, batch: &LineBatch) {
        if self.is_active() {
            self.offer_at(batch, Instant::now());
        }
    }

    fn offer_at(&self, batch: &LineBatch, now: Instant) {
        // As the processor does: a line without a usable timestamp gets the time of receipt.
        let received = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let mut inner = self.lock();
        let open = inner.subs.len();
        inner.subs.retain(|s| !s.tx.is_closed());
        for s in &mut inner.subs {
            s.offer(batch, now, received);
        }
        if inner.subs.len() != open {
            self.count(&inner);
        }
    }

    /// The note of tap `id` if it lost anything since the last one (the counts restart).
    fn note(&self, id: u64) -> Option<String> {
        let mut inner = self.lock();
        inner.subs.iter_mut().find(|s| s.id == id)?.take_note()
    }

    fn remove(&self, id: u64) {
        let mut inner = self.lock();
        if let Some(i) = inner.subs.iter().position(|s| s.id == id) {
            let s = inner.subs.swap_remove(i);
            tracing::info!(tap = id, matched = s.matched, sent = s.sent, "tap closed");
            self.count(&inner);
        }
    }

    /// A reload's `[event]`, for the taps opened from now on.
    pub fn set_event(&self, event: EventConfig) {
        self.lock().event = event;
    }

    /// Ends every tap (their streams finish after a last note on what they lost): the
    /// pipeline is over.
    pub fn close(&self) {
        let mut inner = self.lock();
        for mut s in inner.subs.drain(..) {
            if let Some(note) = s.take_note() {
                let _ = s.tx.try_send(note);
            }
        }
        self.count(&inner);
    }
}

/// An open tap, held by the response that streams it; dropping it closes the tap.
pub struct Subscription {
    hub: Arc<TapHub>,
    id: u64,
    rx: mpsc::Receiver<String>,
    noted: tokio::time::Instant,
}

impl Subscription {
    /// The next line to send (without newline): an event, or a note at most once a second
    /// while events are lost. `None` once the pipeline has ended.
    pub async fn next(&mut self) -> Option<String> {
        loop {
            let due = self.noted + NOTE_EVERY;
            if tokio::time::Instant::now() >= due {
                self.noted = tokio::time::Instant::now();
                if let Some(note) = self.hub.note(self.id) {
                    return Some(note);
                }
                continue;
            }
            if let Ok(line) = tokio::time::timeout_at(due, self.rx.recv()).await {
                return line;
            }
        }
    }

    /// The lines as a response body stream, each ending in a newline.
    pub fn into_stream(self) -> impl Stream<Item = Result<String, Infallible>> + Send {
        futures_util::stream::unfold(self, |mut sub| async move {
            let line = sub.next().await?;
            Some((Ok(line + "\n"), sub))
        })
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Arc<TapHub> {
        Arc::new(TapHub::new(
            EventConfig::default(),
            prometheus::IntGauge::new("t", "t").unwrap(),
        ))
    }

    fn batch(source: &str, lines: &[&str]) -> LineBatch {
        let mut b = LineBatch::new(source.into());
        for l in lines {
            b.push(l.as_bytes(), false, None);
        }
        b
    }

    fn drain(sub: &mut Subscription) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| sub.rx.try_recv().ok())
            .map(|l| serde_json::from_str(&l).unwrap())
            .collect()
    }

    #[test]
    fn bucket_refills_at_its_rate_and_caps_bursts() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2.0, t0);
        assert!(b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(500)));
        assert!(!b.take(t0 + Duration::from_millis(500)));
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        assert!(b.take(later) && b.take(later));
        assert!(!b.take(later));
        // Below one a second, one token at a time.
        let mut slow = Bucket::new(0.5, t0);
        assert!(slow.take(t0));
        assert!(!slow.take(t0 + Duration::from_secs(1)));
        assert!(slow.take(t0 + Duration::from_secs(2)));
    }

    #[test]
    fn filters_on_fields_the_pipeline_does_not_capture() {
        let h = hub();
        let mut sub = h
            .subscribe(
                Some(r#"metadata.region == "eu" && level == "ERROR""#),
                None,
                100.0,
            )
            .unwrap();
        assert!(h.is_active());
        h.offer(&batch(
            "stdin",
            &[
                r#"{"level":"ERROR","message":"a","metadata":{"region":"us"}}"#,
                r#"{"level":"ERROR","message":"b","metadata":{"region":"eu"}}"#,
                r#"{"level":"INFO","message":"c","metadata":{"region":"eu"}}"#,
                "not json",
            ],
        ));
        let got = drain(&mut sub);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["source"], "stdin");
        assert_eq!(got[0]["event"]["message"], "b");
        assert_eq!(got[0]["event"]["level"], "ERROR");
        assert_eq!(got[0]["event"]["metadata"]["region"], "eu");
    }

    #[test]
    fn events_show_their_parse_problems() {
        let h = hub();
        let mut sub = h.subscribe(None, None, 100.0).unwrap();
        h.offer(&batch(
            "stdin",
            &[
                "not json",
                r#"{"timestamp":"2024-01-01T00:00:00Z","message":"fine"}"#,
                r#"{"message":"no time"}"#,
            ],
        ));
        let got = drain(&mut sub);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(
            got[0]["parse_problems"],
            serde_json::json!(["invalid_json"])
        );
        assert_eq!(got[0]["event"]["message"], "not json");
        assert!(got[1].get("parse_problems").is_none(), "{}", got[1]);
        assert_eq!(
            got[2]["parse_problems"],
            serde_json::json!(["timestamp_missing"])
        );
    }

    #[test]
    fn only_the_named_source() {
        let h = hub();
        let mut sub = h
            .subscribe(None, Some("tcp:127.0.0.1:5170".into()), 100.0)
            .unwrap();
        h.offer(&batch("stdin", &[r#"{"message":"a"}"#]));
        h.offer(&batch("tcp:127.0.0.1:5170", &[r#"{"message":"b"}"#]));
        let got = drain(&mut sub);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["event"]["message"], "b");
        assert_eq!(got[0]["source"], "tcp:127.0.0.1:5170");
    }

    #[test]
    fn a_source_no_one_has_is_refused_with_the_names() {
        let h = hub();
        h.add_sources(["stdin".to_string(), "/var/log/*.log".to_string()]);
        assert!(h
            .subscribe(None, Some("/var/log/*.log".into()), 100.0)
            .is_ok());
        let err = h
            .subscribe(None, Some("nosuch".into()), 100.0)
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "no source named \"nosuch\"; this weir's sources: stdin, /var/log/*.log"
        );
        assert_eq!(err.into_response().status(), StatusCode::NOT_FOUND);
        // A listener on port 0 binds elsewhere: any tcp: name passes.
        h.add_sources(["tcp:127.0.0.1:0".to_string()]);
        assert!(h
            .subscribe(None, Some("tcp:127.0.0.1:5170".into()), 100.0)
            .is_ok());
    }

    #[test]
    fn a_gone_client_is_forgotten() {
        let h = hub();
        let gauge = h.gauge.clone();
        let a = h.subscribe(None, None, 10.0).unwrap();
        let b = h.subscribe(None, None, 10.0).unwrap();
        assert_eq!(gauge.get(), 2);
        // Dropped with its response: removed at once.
        drop(a);
        assert_eq!(gauge.get(), 1);
        assert!(h.is_active());
        // Only the receiver closed (a stream not yet dropped): noticed at the next batch.
        let mut b = b;
        b.rx.close();
        h.offer(&batch("stdin", &["{}"]));
        assert!(!h.is_active());
        assert_eq!(gauge.get(), 0);
        drop(b);
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn bad_filters_and_rates_are_refused() {
        let h = hub();
        let e = h.subscribe(Some("level == "), None, 10.0).err().unwrap();
        let text = e.to_string();
        assert!(
            text.starts_with("invalid filter at column 10: expected "),
            "{text}"
        );
        assert!(text.ends_with("\n  level == \n           ^"), "{text:?}");
        assert!(matches!(
            h.subscribe(None, None, 0.0),
            Err(TapError::Rate(_))
        ));
        assert!(matches!(
            h.subscribe(None, None, f64::NAN),
            Err(TapError::Rate(_))
        ));
        assert!(matches!(
            h.subscribe(None, None, MAX_RATE + 1.0),
            Err(TapError::Rate(_))
        ));
        assert!(!h.is_active());
        let open: Vec<_> = (0..MAX_TAPS)
            .map(|_| h.subscribe(None, None, 1.0).unwrap())
            .collect();
        assert!(matches!(
            h.subscribe(None, None, 1.0),
            Err(TapError::TooMany)
        ));
        drop(open);
        assert!(!h.is_active());
    }

    #[test]
    fn rate_limited_and_examination_bounded_with_the_loss_counted() {
        let h = hub();
        let mut sub = h.subscribe(None, None, 5.0).unwrap();
        let lines: Vec<String> = (0..150).map(|i| format!(r#"{{"n":{i}}}"#)).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let t0 = Instant::now();
        h.offer_at(&batch("stdin", &refs), t0);
        let got = drain(&mut sub);
        // The first five sent, the other 145 dropped unparsed: without a filter every line
        // matches, nothing needs examining.
        let ns: Vec<_> = got
            .iter()
            .map(|v| v["event"]["n"].as_i64().unwrap())
            .collect();
        assert_eq!(ns, [0, 1, 2, 3, 4]);
        assert_eq!(
            h.note(sub.id).unwrap(),
            r#"{"tap":{"dropped":145,"skipped":0}}"#
        );
        // Counts restart after a note; nothing lost, no note.
        assert_eq!(h.note(sub.id), None);
    }

    #[test]
    fn a_filtered_tap_examines_at_most_twenty_times_its_rate() {
        let h = hub();
        let mut sub = h.subscribe(Some("n >= 0"), None, 5.0).unwrap();
        let lines: Vec<String> = (0..150).map(|i| format!(r#"{{"n":{i}}}"#)).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        h.offer_at(&batch("stdin", &refs), Instant::now());
        // The first five sent; of the 100 examined (5 × 20) 95 matched but were over the
        // rate; the last 50 were not examined.
        assert_eq!(drain(&mut sub).len(), 5);
        assert_eq!(
            h.note(sub.id).unwrap(),
            r#"{"tap":{"dropped":95,"skipped":50}}"#
        );
    }

    #[test]
    fn a_full_channel_drops_instead_of_waiting() {
        let h = hub();
        let mut sub = h.subscribe(None, None, MAX_RATE).unwrap();
        let lines: Vec<String> = (0..CHANNEL + 10)
            .map(|i| format!(r#"{{"n":{i}}}"#))
            .collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        h.offer(&batch("stdin", &refs));
        assert_eq!(drain(&mut sub).len(), CHANNEL);
        assert_eq!(
            h.note(sub.id).unwrap(),
            r#"{"tap":{"dropped":10,"skipped":0}}"#
        );
    }

    #[tokio::test]
    async fn over_http_a_bad_filter_is_a_400_and_a_good_one_a_stream() {
        use axum::body::{to_bytes, Body};
        use axum::http::{header, Request};
        use tower::ServiceExt;

        let selfm = crate::telemetry::SelfMetrics::new();
        let h = Arc::new(TapHub::new(
            EventConfig::default(),
            selfm.taps_active.clone(),
        ));
        let app = crate::server::admin_router(
            crate::server::AppState {
                tap: Some(h.clone()),
                ..crate::server::AppState::new(prometheus::Registry::new(), selfm.clone())
            },
            None,
            crate::server::Limits::default(),
        );
        let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
        let res = app
            .clone()
            .oneshot(get("/tap?filter=level%20%3D%3D%20%22ERROR%22%20%26%26"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let text = to_bytes(res.into_body(), 1 << 16).await.unwrap();
        let text = String::from_utf8_lossy(&text);
        assert!(
            text.starts_with("invalid filter at column 20: expected "),
            "{text}"
        );
        // The attacker's filters: 2,000 nested `(` (a 4 KB URL) and 5,000 `!` overflowed the
        // stack and aborted weir. Now a 400 with the column, and the server answers on.
        for filter in [
            format!("{}a%3D%3D1{}", "(".repeat(2_000), ")".repeat(2_000)),
            format!("{}a%3D%3D1", "!".repeat(5_000)),
        ] {
            let res = app
                .clone()
                .oneshot(get(&format!("/tap?filter={filter}")))
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::BAD_REQUEST);
            let text = to_bytes(res.into_body(), 1 << 16).await.unwrap();
            let text = String::from_utf8_lossy(&text);
            assert!(
                text.starts_with(
                    "invalid filter at column 65: expected at most 64 nested `(` or `!`"
                ),
                "{text}"
            );
        }
        let res = app.clone().oneshot(get("/health")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let res = app.clone().oneshot(get("/tap?rate=0")).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert_eq!(selfm.taps_active.get(), 0);

        let res = app
            .oneshot(get("/tap?filter=message%20%3D%3D%20%22b%22&source=stdin"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/x-ndjson");
        assert_eq!(selfm.taps_active.get(), 1);
        h.offer(&batch(
            "stdin",
            &[r#"{"message":"a"}"#, r#"{"message":"b","n":1}"#],
        ));
        h.close();
        let body = to_bytes(res.into_body(), 1 << 16).await.unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&body)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["source"], "stdin");
        assert_eq!(lines[0]["event"]["message"], "b");
        assert_eq!(lines[0]["event"]["n"], 1);
        assert_eq!(selfm.taps_active.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_stream_carries_events_then_notes_and_ends_with_the_pipeline() {
        let h = hub();
        let mut sub = h.subscribe(None, None, 1.0).unwrap();
        h.offer(&batch(
            "stdin",
            &[r#"{"message":"a"}"#, r#"{"message":"b"}"#],
        ));
        let first: serde_json::Value = serde_json::from_str(&sub.next().await.unwrap()).unwrap();
        assert_eq!(first["event"]["message"], "a");
        // Nothing more to send: a second later, the note on what was dropped.
        let note = sub.next().await.unwrap();
        assert_eq!(note, r#"{"tap":{"dropped":1,"skipped":0}}"#);
        // What is lost after the last note is said when the pipeline ends.
        h.offer(&batch("stdin", &[r#"{"message":"c"}"#]));
        h.close();
        let last = sub.next().await.unwrap();
        assert_eq!(last, r#"{"tap":{"dropped":1,"skipped":0}}"#);
        assert_eq!(sub.next().await, None);
        assert!(!h.is_active());
    }
}
