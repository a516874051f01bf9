//! Evaluating alert rules: per rule and label group, inactive → pending → firing → resolved.
//!
//! # When
//! Once per second of the pipeline's clock. Live, that clock is the wall clock (the processor
//! calls [`Engine::tick_wall`] after each batch and from a 1 s timer). In backfills
//! (`--oneshot`) it is the events' own time: [`Engine::advance_to`] runs before an event of a
//! later second is recorded and evaluates every second in between, so an old file yields the
//! alerts, and the times, that would have fired. Seconds past the longest rule's reach
//! (window + `for`) are skipped: nothing can change in them.
//!
//! # Lifecycle
//! A value rule's condition holding makes a group pending; held for `for`, it fires (at once
//! without `for`). Firing sends one notification, again every `repeat_interval`, and one when
//! the condition stops holding (resolved). An `absent()` group fires when it has been silent
//! for its duration. Every transition is logged (`alert firing`, JSON on stderr), counted, and
//! reflected in `weir_alerts_firing{rule,severity}`, `weir_alerts_pending{rule}` and the
//! `/alerts` view.
//!
//! # State
//! With a `data_dir`, live state (alerts and the windows' contents) is saved to
//! `data_dir/alerts/state.json` every few seconds and at shutdown (temp file, fsync, rename),
//! and read at start for rules whose name and expression are unchanged: a firing alert is not
//! notified again after a restart, and a count over 5 minutes keeps its last minutes.
//!
//! # Off the path
//! Notifications go to a [`DispatchHandle`], which never blocks; the sending (and its retries)
//! happens on the dispatcher's tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounter, IntGauge};
use serde::{Deserialize, Serialize};

use super::dispatch::DispatchHandle;
use super::expr::{Cmp, RuleExpr};
use super::notify::{format_value, Notification, Severity, Status};
use super::template::{Template, TemplateContext};
use super::window::{Feed, GroupKey, Window};
use crate::telemetry::SelfMetrics;

/// Arithmetic over term values.
#[derive(Debug, Clone)]
pub enum Calc {
    Num(f64),
    /// Index of a term in [`Feed::terms`].
    Term(usize),
    Bin(char, Box<Calc>, Box<Calc>),
}

impl Calc {
    fn eval(&self, feed: &Feed, key: &GroupKey, now: i64) -> Option<f64> {
        Some(match self {
            Calc::Num(n) => *n,
            Calc::Term(t) => feed.terms[*t].value(key, now)?,
            Calc::Bin(op, a, b) => {
                let (a, b) = (a.eval(feed, key, now)?, b.eval(feed, key, now)?);
                match op {
                    '+' => a + b,
                    '-' => a - b,
                    '*' => a * b,
                    _ => a / b,
                }
            }
        })
    }
}

/// What a rule watches.
#[derive(Debug, Clone)]
pub enum RuleKind {
    Value {
        calc: Calc,
        cmp: Cmp,
        threshold: f64,
        for_secs: i64,
        /// Its terms' indexes in [`Feed::terms`].
        terms: Vec<usize>,
        /// The first metric it names (the notification's `metric`).
        metric: String,
    },
    Absent {
        /// Index in [`Feed::absent`].
        index: usize,
        for_secs: i64,
        condition: String,
    },
}

/// An alert of one rule and one label group that is pending or firing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertState {
    /// When the condition started holding (seconds since the epoch).
    pub active_since: i64,
    /// When it started firing; `None` while pending.
    pub firing_since: Option<i64>,
    /// When the last firing notification was sent.
    pub last_sent: i64,
    pub value: f64,
}

/// A compiled rule and its alerts.
pub struct Rule {
    pub name: String,
    pub expr_text: String,
    pub expr: RuleExpr,
    pub severity: Severity,
    pub summary: Option<Template>,
    pub description: Option<Template>,
    pub link: Option<Template>,
    /// Static labels.
    pub labels: BTreeMap<String, String>,
    /// Notifier names.
    pub notify: Vec<String>,
    pub repeat: i64,
    /// Names of the group key's parts.
    pub group_labels: Vec<String>,
    pub kind: RuleKind,
    pub states: BTreeMap<GroupKey, AlertState>,
}

impl Rule {
    fn threshold(&self) -> f64 {
        match &self.kind {
            RuleKind::Value { threshold, .. } => *threshold,
            RuleKind::Absent { for_secs, .. } => *for_secs as f64,
        }
    }

    /// Seconds after the last event within which this rule can still change state.
    fn reach(&self, feed: &Feed) -> i64 {
        match &self.kind {
            RuleKind::Value {
                for_secs, terms, ..
            } => {
                let window = terms
                    .iter()
                    .map(|&t| {
                        let t = &feed.terms[t];
                        t.window.or(t.stale).unwrap_or(0)
                    })
                    .max()
                    .unwrap_or(0);
                window + for_secs + 2
            }
            RuleKind::Absent { for_secs, .. } => for_secs + 2,
        }
    }

    fn labels_of(&self, key: &GroupKey) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        for (k, v) in self.group_labels.iter().zip(key.0.iter()) {
            labels.insert(k.clone(), v.clone());
        }
        labels
    }

    /// The alert as notified.
    fn notification(
        &self,
        key: &GroupKey,
        st: &AlertState,
        status: Status,
        now: i64,
    ) -> Notification {
        let labels = self.labels_of(key);
        let threshold = self.threshold();
        let cx = TemplateContext {
            rule: &self.name,
            severity: self.severity.as_str(),
            labels: &labels,
            value: st.value,
            threshold,
        };
        let render = |t: &Option<Template>| t.as_ref().map(|t| t.render(&cx));
        let summary =
            render(&self.summary).unwrap_or_else(|| self.default_summary(&labels, st.value));
        let metric = match &self.kind {
            RuleKind::Value { metric, .. } => metric.clone(),
            RuleKind::Absent { condition, .. } => format!("absent({condition})"),
        };
        let description = render(&self.description).unwrap_or_default();
        let link = render(&self.link);
        Notification {
            rule: self.name.clone(),
            severity: self.severity,
            status,
            fingerprint: Notification::fingerprint(&self.name, &labels),
            labels,
            summary,
            description,
            metric,
            value: st.value,
            threshold,
            starts_at: timestamp(st.firing_since.unwrap_or(st.active_since)),
            ends_at: (status == Status::Resolved).then(|| timestamp(now)),
            link,
        }
    }

    fn default_summary(&self, labels: &BTreeMap<String, String>, value: f64) -> String {
        let set: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let set = if set.is_empty() {
            String::new()
        } else {
            format!(" {{{}}}", set.join(", "))
        };
        match &self.kind {
            RuleKind::Value { cmp, threshold, .. } => format!(
                "{}{set}: {} {} {}",
                self.name,
                format_value(value),
                cmp.as_str(),
                format_value(*threshold)
            ),
            RuleKind::Absent { condition, .. } => format!(
                "{}{set}: no event matching `{condition}` for {}s",
                self.name,
                format_value(value)
            ),
        }
    }
}

fn timestamp(sec: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(sec).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

fn rfc3339(sec: i64) -> String {
    timestamp(sec).to_string()
}

/// Seconds since the epoch now.
pub fn wall_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Which clock rules are evaluated on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// Live: updates are recorded at, and rules evaluated on, the wall clock.
    Wall,
    /// Backfill: the events' own timestamps.
    Event,
}

/// One pending or firing alert, as `GET /alerts` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertView {
    pub rule: String,
    /// `pending` or `firing`.
    pub state: String,
    pub severity: Severity,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    pub threshold: f64,
    pub summary: String,
    pub active_since: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firing_since: Option<String>,
    pub expr: String,
}

/// The alerts view shared with the HTTP server.
pub type SharedView = Arc<RwLock<Vec<AlertView>>>;

/// What a notification or log line says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Pending,
    Firing,
    Repeat,
    Resolved,
    Inactive,
}

struct RuleMetrics {
    firing: IntGauge,
    pending: IntGauge,
    to_pending: IntCounter,
    to_firing: IntCounter,
    to_resolved: IntCounter,
    to_inactive: IntCounter,
}

/// The rules of a pipeline and their alerts.
pub struct Engine {
    rules: Vec<Rule>,
    metrics: Vec<RuleMetrics>,
    clock: Clock,
    /// The second being collected (event clock) or last evaluated (wall clock).
    current: Option<i64>,
    horizon: i64,
    dispatch: Option<DispatchHandle>,
    view: SharedView,
    /// Whether anyone reads `view` (a server runs): otherwise it is not kept up to date.
    view_shared: bool,
    /// The view must be rebuilt at the next evaluation even if nothing changes (restored state).
    stale_view: bool,
    state_path: Option<PathBuf>,
    saved: Instant,
    /// Transitions so far (for the end-of-backfill report and tests).
    fired: u64,
    resolved: u64,
    /// Every transition, when recording (`weir test`, tests).
    history: Option<Vec<Transition>>,
}

/// One state change of one alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    pub rule: String,
    /// pending, firing, repeat, resolved or inactive.
    pub state: &'static str,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    /// Seconds since the epoch.
    pub at: i64,
}

impl Engine {
    pub fn new(rules: Vec<Rule>, selfm: &SelfMetrics) -> Self {
        let metrics = rules
            .iter()
            .map(|r| {
                let t = |s: &str| selfm.alert_transitions.with_label_values(&[&r.name, s]);
                RuleMetrics {
                    firing: selfm
                        .alerts_firing
                        .with_label_values(&[&r.name, r.severity.as_str()]),
                    pending: selfm.alerts_pending.with_label_values(&[&r.name]),
                    to_pending: t("pending"),
                    to_firing: t("firing"),
                    to_resolved: t("resolved"),
                    to_inactive: t("inactive"),
                }
            })
            .collect();
        Engine {
            rules,
            metrics,
            clock: Clock::Wall,
            current: None,
            horizon: 0,
            dispatch: None,
            view: SharedView::default(),
            view_shared: false,
            stale_view: true,
            state_path: None,
            saved: Instant::now(),
            fired: 0,
            resolved: 0,
            history: None,
        }
    }

    /// Keeps every transition (see [`Engine::history`]).
    pub fn recording(mut self) -> Self {
        self.history = Some(Vec::new());
        self
    }

    /// The transitions so far, when recording.
    pub fn history(&self) -> &[Transition] {
        self.history.as_deref().unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    pub fn with_dispatch(mut self, handle: DispatchHandle) -> Self {
        self.dispatch = Some(handle);
        self
    }

    /// Sends notifications here from now on (a reload that changed the notifiers); `None`:
    /// to nobody.
    pub fn set_dispatch(&mut self, handle: Option<DispatchHandle>) {
        self.dispatch = handle;
    }

    /// The view `/alerts` serves; kept up to date from now on.
    pub fn view(&mut self) -> SharedView {
        self.view_shared = true;
        self.view.clone()
    }

    /// How many alerts fired and resolved so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.fired, self.resolved)
    }

    /// Keeps state in `path` (wall clock only): reads it now into the rules and `feed`.
    pub fn with_state(mut self, path: PathBuf, feed: &mut Feed) -> Self {
        if self.clock == Clock::Wall {
            match std::fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice::<SavedState>(&bytes) {
                    Ok(saved) => {
                        let n = self.restore(saved, feed);
                        tracing::info!(path = %path.display(), alerts = n, "alert state restored");
                    }
                    Err(e) => {
                        // Kept beside it for a look; the next save writes a fresh one.
                        crate::telemetry::state_metrics()
                            .state_unreadable
                            .with_label_values(&["alert_state"])
                            .inc();
                        let aside = path.with_extension("json.corrupt");
                        let moved = std::fs::rename(&path, &aside).is_ok();
                        tracing::warn!(path = %path.display(), error = %e, moved_aside = moved, moved_to = %aside.display(), "alert state unreadable: every alert starts inactive, `for` timers and windows start empty")
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    crate::telemetry::state_metrics()
                        .disk_errors
                        .with_label_values(&["alert_state", crate::telemetry::io_error_kind(&e)])
                        .inc();
                    tracing::warn!(path = %path.display(), error = %e, "cannot read alert state: every alert starts inactive, `for` timers and windows start empty")
                }
            }
            self.state_path = Some(path);
        }
        self
    }

    /// Starts the clock at `now` (seconds): the origin of `absent()` rules without `by`.
    pub fn start(&mut self, feed: &mut Feed, now: i64) {
        self.horizon = self.rules.iter().map(|r| r.reach(feed)).max().unwrap_or(0);
        for r in &self.rules {
            if let RuleKind::Absent { index, .. } = r.kind {
                if r.group_labels.is_empty() {
                    feed.absent[index]
                        .seen
                        .entry(GroupKey(Box::new([])))
                        .or_insert(now);
                }
            }
        }
        self.current = Some(now);
    }

    /// Event clock: called before recording an event of second `sec`. Evaluates every second
    /// that ended before it. (An event older than the clock is recorded at its own second, where
    /// the windows place it, without evaluating the past again.)
    pub fn advance_to(&mut self, feed: &mut Feed, sec: i64) {
        let Some(cur) = self.current else {
            self.start(feed, sec);
            return;
        };
        if sec <= cur {
            return;
        }
        self.evaluate(feed, cur);
        let mut t = cur + 1;
        while t < sec {
            self.evaluate(feed, t);
            t += 1;
            if t - cur > self.horizon {
                // Nothing can change any more until the next event.
                t = sec;
            }
        }
        self.current = Some(sec);
    }

    /// Event clock: the input ended; evaluates its last second.
    pub fn finish(&mut self, feed: &mut Feed) {
        if let Some(cur) = self.current {
            self.evaluate(feed, cur);
        }
    }

    /// Wall clock: evaluates the current second if not done yet, and saves state now and then.
    pub fn tick_wall(&mut self, feed: &mut Feed) {
        let now = wall_now();
        if self.current.is_none() {
            self.start(feed, now);
        }
        if self.current.is_some_and(|c| now > c) {
            self.evaluate(feed, now);
            self.current = Some(now);
        }
        if self.saved.elapsed().as_secs() >= 10 {
            self.save(feed);
        }
    }

    /// Evaluates every rule at second `now`.
    pub fn evaluate(&mut self, feed: &mut Feed, now: i64) {
        let mut changed = false;
        for i in 0..self.rules.len() {
            changed |= self.evaluate_rule(i, feed, now);
        }
        if (changed || self.stale_view) && self.view_shared {
            self.publish(now);
            self.stale_view = false;
        }
    }

    fn evaluate_rule(&mut self, i: usize, feed: &mut Feed, now: i64) -> bool {
        let rule = &self.rules[i];
        // (key, current value if any, whether the condition holds)
        let mut results: Vec<(GroupKey, Option<f64>, bool)> = Vec::new();
        let mut for_secs = 0;
        match &rule.kind {
            RuleKind::Value {
                calc,
                cmp,
                threshold,
                for_secs: f,
                terms,
                ..
            } => {
                for_secs = *f;
                for &t in terms {
                    feed.terms[t].trim(now);
                }
                let mut keys: BTreeSet<&GroupKey> = rule.states.keys().collect();
                for &t in terms {
                    keys.extend(feed.terms[t].groups.keys());
                }
                for key in keys {
                    let v = calc.eval(feed, key, now).filter(|v| !v.is_nan());
                    let holds = v.is_some_and(|v| cmp.holds(v, *threshold));
                    results.push((key.clone(), v, holds));
                }
            }
            RuleKind::Absent {
                index, for_secs: f, ..
            } => {
                let seen = &feed.absent[*index].seen;
                for (key, last) in seen {
                    let silent = now - last;
                    results.push((key.clone(), Some(silent as f64), silent >= *f));
                }
                for key in rule.states.keys() {
                    if !seen.contains_key(key) {
                        results.push((key.clone(), None, false));
                    }
                }
            }
        }
        let mut changed = false;
        let mut sends = Vec::new();
        let rule = &mut self.rules[i];
        let m = &self.metrics[i];
        for (key, value, holds) in results {
            let holds = if holds { value } else { None };
            let change = match (rule.states.get_mut(&key), holds) {
                (None, None) => None,
                (None, Some(v)) => {
                    let firing = for_secs == 0;
                    rule.states.insert(
                        key.clone(),
                        AlertState {
                            active_since: now,
                            firing_since: firing.then_some(now),
                            last_sent: now,
                            value: v,
                        },
                    );
                    Some(if firing {
                        Change::Firing
                    } else {
                        Change::Pending
                    })
                }
                (Some(st), Some(v)) => {
                    let before = st.value;
                    st.value = v;
                    if before != v {
                        changed = true;
                    }
                    match st.firing_since {
                        None if now - st.active_since >= for_secs => {
                            st.firing_since = Some(now);
                            st.last_sent = now;
                            Some(Change::Firing)
                        }
                        None => None,
                        Some(_) if now - st.last_sent >= rule.repeat => {
                            st.last_sent = now;
                            Some(Change::Repeat)
                        }
                        Some(_) => None,
                    }
                }
                (Some(st), None) => {
                    // The value that ended it, when there is one (none: the window emptied).
                    if let Some(v) = value {
                        st.value = v;
                    }
                    Some(if st.firing_since.is_some() {
                        Change::Resolved
                    } else {
                        Change::Inactive
                    })
                }
            };
            let Some(change) = change else { continue };
            changed = true;
            let st = rule.states[&key].clone();
            if matches!(change, Change::Resolved | Change::Inactive) {
                rule.states.remove(&key);
            }
            match change {
                Change::Pending => m.to_pending.inc(),
                Change::Firing => m.to_firing.inc(),
                Change::Resolved => m.to_resolved.inc(),
                Change::Inactive => m.to_inactive.inc(),
                Change::Repeat => {}
            }
            let labels = rule.labels_of(&key);
            if let Some(h) = &mut self.history {
                h.push(Transition {
                    rule: rule.name.clone(),
                    state: match change {
                        Change::Pending => "pending",
                        Change::Firing => "firing",
                        Change::Repeat => "repeat",
                        Change::Resolved => "resolved",
                        Change::Inactive => "inactive",
                    },
                    labels: labels.clone(),
                    value: st.value,
                    at: now,
                });
            }
            let labels_text: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let state = match change {
                Change::Pending => "pending",
                Change::Firing => "firing",
                Change::Repeat => "firing (repeat)",
                Change::Resolved => "resolved",
                Change::Inactive => "inactive",
            };
            // Firing and resolved are what an operator acts on; pending and inactive can flip
            // every evaluation near a threshold, so they stay at debug (issue 16).
            let at = rfc3339(now);
            let labels_text = labels_text.join(",");
            match change {
                Change::Pending | Change::Inactive => tracing::debug!(
                    rule = %rule.name,
                    state,
                    severity = rule.severity.as_str(),
                    labels = %labels_text,
                    value = st.value,
                    threshold = rule.threshold(),
                    at = %at,
                    "alert {state}"
                ),
                _ => tracing::info!(
                    rule = %rule.name,
                    state,
                    severity = rule.severity.as_str(),
                    labels = %labels_text,
                    value = st.value,
                    threshold = rule.threshold(),
                    at = %at,
                    "alert {state}"
                ),
            }
            match change {
                Change::Firing | Change::Repeat => {
                    if change == Change::Firing {
                        self.fired += 1;
                    }
                    sends.push(rule.notification(&key, &st, Status::Firing, now));
                }
                Change::Resolved => {
                    self.resolved += 1;
                    sends.push(rule.notification(&key, &st, Status::Resolved, now));
                }
                Change::Pending | Change::Inactive => {}
            }
        }
        let firing = rule
            .states
            .values()
            .filter(|s| s.firing_since.is_some())
            .count();
        m.firing.set(firing as i64);
        m.pending.set((rule.states.len() - firing) as i64);
        if let Some(d) = &self.dispatch {
            for n in sends {
                d.send(&rule.notify, n);
            }
        }
        changed
    }

    /// Rebuilds the `/alerts` view.
    fn publish(&self, now: i64) {
        let mut out = Vec::new();
        for r in &self.rules {
            for (key, st) in &r.states {
                let n = r.notification(key, st, Status::Firing, now);
                out.push(AlertView {
                    rule: r.name.clone(),
                    state: if st.firing_since.is_some() {
                        "firing"
                    } else {
                        "pending"
                    }
                    .into(),
                    severity: r.severity,
                    labels: n.labels,
                    value: st.value,
                    threshold: n.threshold,
                    summary: n.summary,
                    active_since: rfc3339(st.active_since),
                    firing_since: st.firing_since.map(rfc3339),
                    expr: r.expr_text.clone(),
                });
            }
        }
        if let Ok(mut v) = self.view.write() {
            *v = out;
        }
    }

    /// Takes over from `old` after a reload: its clock, notifier handle, `/alerts` view and
    /// state file, and the alerts and windows of every rule whose name and expression did not
    /// change (so they neither fire again nor forget their window). `old_feed` is the old
    /// deriver's feed, `feed` the new one.
    pub fn take_over(&mut self, mut old: Engine, old_feed: &Feed, feed: &mut Feed) {
        let saved = old.snapshot(old_feed);
        self.restore(saved, feed);
        for m in &old.metrics {
            m.firing.set(0);
            m.pending.set(0);
        }
        self.clock = old.clock;
        self.current = old.current;
        self.horizon = self.rules.iter().map(|r| r.reach(feed)).max().unwrap_or(0);
        self.dispatch = old.dispatch.take();
        self.view = old.view.clone();
        self.view_shared = old.view_shared;
        self.state_path = old.state_path.take();
        self.fired = old.fired;
        self.resolved = old.resolved;
        self.history = old.history.take();
        for r in &self.rules {
            if let RuleKind::Absent { index, .. } = r.kind {
                if r.group_labels.is_empty() {
                    if let Some(now) = self.current {
                        feed.absent[index]
                            .seen
                            .entry(GroupKey(Box::new([])))
                            .or_insert(now);
                    }
                }
            }
        }
        if let Some(now) = self.current {
            for i in 0..self.rules.len() {
                let r = &self.rules[i];
                let firing = r
                    .states
                    .values()
                    .filter(|s| s.firing_since.is_some())
                    .count();
                self.metrics[i].firing.set(firing as i64);
                self.metrics[i]
                    .pending
                    .set((r.states.len() - firing) as i64);
            }
            if self.view_shared {
                self.publish(now);
            }
        }
    }

    fn snapshot(&self, feed: &Feed) -> SavedState {
        SavedState {
            version: 1,
            rules: self
                .rules
                .iter()
                .map(|r| SavedRule {
                    name: r.name.clone(),
                    expr: r.expr_text.clone(),
                    alerts: r
                        .states
                        .iter()
                        .map(|(k, s)| (k.clone(), s.clone()))
                        .collect(),
                    terms: match &r.kind {
                        RuleKind::Value { terms, .. } => terms
                            .iter()
                            .map(|&t| {
                                feed.terms[t]
                                    .groups
                                    .iter()
                                    .map(|(k, w)| (k.clone(), w.clone()))
                                    .collect()
                            })
                            .collect(),
                        RuleKind::Absent { .. } => Vec::new(),
                    },
                    seen: match &r.kind {
                        RuleKind::Absent { index, .. } => feed.absent[*index]
                            .seen
                            .iter()
                            .map(|(k, s)| (k.clone(), *s))
                            .collect(),
                        RuleKind::Value { .. } => Vec::new(),
                    },
                })
                .collect(),
        }
    }

    /// Writes the state file (wall clock with a data_dir only).
    pub fn save(&mut self, feed: &Feed) {
        self.saved = Instant::now();
        let Some(path) = &self.state_path else { return };
        let state = self.snapshot(feed);
        if let Err(e) = write_atomic(path, &state) {
            tracing::warn!(path = %path.display(), error = %e, "cannot save alert state");
        }
    }

    fn restore(&mut self, saved: SavedState, feed: &mut Feed) -> usize {
        let mut n = 0;
        for s in saved.rules {
            let Some(r) = self
                .rules
                .iter_mut()
                .find(|r| r.name == s.name && r.expr_text == s.expr)
            else {
                continue;
            };
            n += s.alerts.len();
            r.states = s.alerts.into_iter().collect();
            match &r.kind {
                RuleKind::Value { terms, .. } => {
                    for (&t, groups) in terms.iter().zip(s.terms) {
                        let term = &mut feed.terms[t];
                        for (k, mut w) in groups.into_iter().take(term.max_groups) {
                            w.rebuild();
                            term.groups.insert(k, w);
                        }
                    }
                }
                RuleKind::Absent { index, .. } => {
                    let a = &mut feed.absent[*index];
                    for (k, sec) in s.seen.into_iter().take(a.max_groups) {
                        a.seen.insert(k, sec);
                    }
                }
            }
        }
        n
    }
}

#[derive(Serialize, Deserialize)]
struct SavedState {
    version: u32,
    rules: Vec<SavedRule>,
}

#[derive(Serialize, Deserialize)]
struct SavedRule {
    name: String,
    expr: String,
    alerts: Vec<(GroupKey, AlertState)>,
    terms: Vec<Vec<(GroupKey, Window)>>,
    seen: Vec<(GroupKey, i64)>,
}

fn write_atomic(path: &std::path::Path, state: &SavedState) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    serde_json::to_writer(&mut f, state)?;
    f.flush()?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
