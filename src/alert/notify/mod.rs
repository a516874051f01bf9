//! Notifiers: how an alert that fires or resolves reaches people.
//!
//! # What
//! A [`Notification`] is one alert of one rule and one label set, already rendered (summary,
//! description, link). A [`NotifierConfig`] (`type = "slack" | "webhook" | "pagerduty" |
//! "alertmanager" | "email"`) is built once into a [`Notifier`], whose [`Notifier::send`]
//! delivers one notification with one attempt:
//!
//! - [`slack`]: an incoming webhook; a readable message (severity, summary, labels, value
//!   against threshold, link), resolved messages marked as such.
//! - [`webhook`]: a generic JSON document for any HTTP endpoint.
//! - [`pagerduty`]: Events API v2, `trigger` and `resolve` under a stable `dedup_key`.
//! - [`alertmanager`]: Alertmanager's API v2 (`POST /api/v2/alerts`), so Alertmanager's routing
//!   reaches email, OpsGenie and the rest.
//! - [`email`]: SMTP with STARTTLS and authentication (lettre).
//!
//! # Why one attempt
//! Retrying is the caller's job: [`NotifyError`] says whether an attempt may succeed later
//! (connection errors, timeouts, 408, 429, 5xx, SMTP 4xx; with the server's `Retry-After`) or
//! never will as it is (other 4xx, a rejected address, SMTP 5xx). The alert engine calls the
//! notifiers from its own task, retrying with [`crate::sink::driver::backoff`], so a slow or
//! failing notifier never stalls log processing: sending is off the pipeline's path.
//!
//! # Invariants
//! - Secrets (Slack webhook URLs, PagerDuty routing keys, SMTP passwords, secret headers) come
//!   from environment variables named in the config, never from the file. They are read once,
//!   by [`NotifierConfig::build`], kept in [`Secret`] (whose `Debug` is `<redacted>`), and never
//!   logged: errors carry no URL (`reqwest::Error::without_url`) and no header value.
//! - [`Notification::fingerprint`] is the dedup key: stable for a rule and a label set, so
//!   the resolve of an alert meets its trigger (PagerDuty) and repeats are one alert.
//! - Building is pure but for reading those variables (and an email `ca_file`): no connection
//!   is made before the first `send`.

pub mod alertmanager;
pub mod email;
pub mod pagerduty;
pub mod slack;
pub mod webhook;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How urgent an alert is.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a notification opens or closes an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Firing,
    Resolved,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One alert (a rule and one of its label sets) as notified: everything is already rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The rule's name, such as `AgentTaskFailures` (Alertmanager's `alertname`).
    pub rule: String,
    pub severity: Severity,
    pub status: Status,
    /// The label set the alert is about (such as `agent_id`), without `alertname`/`severity`.
    pub labels: BTreeMap<String, String>,
    /// One line, rendered from the rule's summary template.
    pub summary: String,
    /// Longer text, rendered from the rule's description template; may be empty.
    pub description: String,
    /// The metric the rule watches.
    pub metric: String,
    /// The value that crossed the threshold (for a resolve: the value that ended it, else the
    /// last one seen).
    pub value: f64,
    pub threshold: f64,
    /// When the alert started firing.
    pub starts_at: jiff::Timestamp,
    /// When it resolved. On a firing notification: until when it holds unless sent again
    /// (Alertmanager's `endsAt`); `None` lets Alertmanager apply its `resolve_timeout`.
    pub ends_at: Option<jiff::Timestamp>,
    /// Stable per rule and label set; see [`Notification::fingerprint`].
    pub fingerprint: String,
    /// The rule's rendered link template (a dashboard, a runbook).
    pub link: Option<String>,
}

impl Notification {
    /// The dedup key of `rule` with `labels`: 16 hex digits of XXH3-64 over the rule's name and
    /// the sorted label pairs. Stable across restarts and versions (XXH3 is a fixed algorithm).
    pub fn fingerprint(rule: &str, labels: &BTreeMap<String, String>) -> String {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(rule.as_bytes());
        for (k, v) in labels {
            // The separators cannot occur in the parts' lengths, so no two label sets collide
            // by concatenation (`a=bc` vs `ab=c`).
            h.update(&[0xff]);
            h.update(&(k.len() as u64).to_le_bytes());
            h.update(k.as_bytes());
            h.update(&(v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
        format!("{:016x}", h.digest())
    }

    /// `agent_id=agent-07 error_type=timeout`: the label set in one line (empty when none).
    pub fn labels_text(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.labels {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(k);
            out.push('=');
            out.push_str(v);
        }
        out
    }

    /// `[FIRING:critical] AgentTaskFailures agent_id=agent-07`: the email subject, the Slack
    /// fallback text.
    pub fn title(&self) -> String {
        let mut t = format!(
            "[{}:{}] {}",
            self.status.as_str().to_ascii_uppercase(),
            self.severity,
            self.rule
        );
        let labels = self.labels_text();
        if !labels.is_empty() {
            t.push(' ');
            t.push_str(&labels);
        }
        t
    }

    /// When it ended: `ends_at`, or now for a resolve that carries none.
    fn resolved_at(&self) -> jiff::Timestamp {
        self.ends_at.unwrap_or_else(jiff::Timestamp::now)
    }
}

/// A value for people: integers without a fraction (`7`), others as Rust prints them
/// (`0.95`, `61.5`), `NaN`/`inf` as such.
pub fn format_value(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// A secret read from the environment. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    /// The secret itself, for the request that needs it: never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Reads a required secret from the environment variable `var`; `what` names the config key
/// in the error. An empty value is an error too (it would fail every send).
fn required_secret(kind: &str, what: &str, var: &str) -> Result<Secret, String> {
    let value = crate::sink::secret_from_env(Some(var))
        .map_err(|e| format!("{kind} {what}: {e}"))?
        .unwrap_or_default();
    if value.trim().is_empty() {
        return Err(format!(
            "{kind} {what}: environment variable {var} is empty"
        ));
    }
    Ok(Secret(value))
}

/// Checks that `url` is an absolute http(s) URL; `what` names it in the error, which never
/// quotes a URL that came from a secret (`secret = true`).
fn check_http_url(kind: &str, what: &str, url: &str, secret: bool) -> Result<(), String> {
    let shown = if secret {
        String::new()
    } else {
        format!(" {:?}", crate::redact::urls(url))
    };
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| format!("{kind} {what}{shown} is not a valid URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
        return Err(format!(
            "{kind} {what}{shown} must be an http:// or https:// URL with a host"
        ));
    }
    Ok(())
}

/// `[notifiers.NAME]`: where alerts are sent. The kind comes from `type`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum NotifierConfig {
    /// A Slack incoming webhook.
    Slack(slack::SlackConfig),
    /// Any HTTP endpoint that takes a JSON document.
    Webhook(webhook::WebhookConfig),
    /// PagerDuty's Events API v2.
    Pagerduty(pagerduty::PagerdutyConfig),
    /// Prometheus Alertmanager's API v2.
    Alertmanager(alertmanager::AlertmanagerConfig),
    /// Email over SMTP.
    Email(email::EmailConfig),
}

impl NotifierConfig {
    /// The `type`, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            NotifierConfig::Slack(_) => "slack",
            NotifierConfig::Webhook(_) => "webhook",
            NotifierConfig::Pagerduty(_) => "pagerduty",
            NotifierConfig::Alertmanager(_) => "alertmanager",
            NotifierConfig::Email(_) => "email",
        }
    }

    /// Checks the config and reads its secrets from the environment (and an email `ca_file`).
    /// No connection is made. The error names the key at fault, never a secret's value.
    pub fn build(&self) -> Result<Notifier, String> {
        Ok(match self {
            NotifierConfig::Slack(c) => Notifier::Slack(c.build()?),
            NotifierConfig::Webhook(c) => Notifier::Webhook(c.build()?),
            NotifierConfig::Pagerduty(c) => Notifier::Pagerduty(c.build()?),
            NotifierConfig::Alertmanager(c) => Notifier::Alertmanager(c.build()?),
            NotifierConfig::Email(c) => Notifier::Email(Box::new(c.build()?)),
        })
    }
}

/// A built notifier, ready to send. Its `Debug` shows no secret.
#[derive(Debug)]
pub enum Notifier {
    Slack(slack::SlackNotifier),
    Webhook(webhook::WebhookNotifier),
    Pagerduty(pagerduty::PagerdutyNotifier),
    Alertmanager(alertmanager::AlertmanagerNotifier),
    /// Boxed: the SMTP transport is several times larger than the other notifiers.
    Email(Box<email::EmailNotifier>),
}

impl Notifier {
    /// The `type`, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Notifier::Slack(_) => "slack",
            Notifier::Webhook(_) => "webhook",
            Notifier::Pagerduty(_) => "pagerduty",
            Notifier::Alertmanager(_) => "alertmanager",
            Notifier::Email(_) => "email",
        }
    }

    /// Sends `n` once. HTTP notifiers use `client` (its timeout bounds the attempt); email
    /// opens its own SMTP connection. Retrying is the caller's: see [`NotifyError`].
    pub async fn send(
        &self,
        client: &reqwest::Client,
        n: &Notification,
    ) -> Result<(), NotifyError> {
        match self {
            Notifier::Slack(s) => s.send(client, n).await,
            Notifier::Webhook(s) => s.send(client, n).await,
            Notifier::Pagerduty(s) => s.send(client, n).await,
            Notifier::Alertmanager(s) => s.send(client, n).await,
            Notifier::Email(s) => s.send(n).await,
        }
    }
}

/// Why a notification was not delivered, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NotifyError {
    /// May succeed later: connection refused or reset, timeout, HTTP 408, 429 or 5xx, an SMTP
    /// 4xx reply. `retry_after` is the server's `Retry-After`, when it sent one.
    #[error("{notifier}: {reason} (temporary; will be retried)")]
    Retryable {
        notifier: &'static str,
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Will not succeed as it is: another HTTP 4xx (bad payload, unknown key), a bad URL or
    /// address, an SMTP 5xx reply, a TLS certificate the server's name does not match.
    #[error("{notifier}: {reason} (permanent; not retried)")]
    Permanent {
        notifier: &'static str,
        reason: String,
    },
}

impl NotifyError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, NotifyError::Retryable { .. })
    }

    /// The delay the server asked for (`Retry-After`), for
    /// [`crate::sink::driver::backoff`]'s `after`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            NotifyError::Retryable { retry_after, .. } => *retry_after,
            NotifyError::Permanent { .. } => None,
        }
    }

    pub fn notifier(&self) -> &'static str {
        match self {
            NotifyError::Retryable { notifier, .. } | NotifyError::Permanent { notifier, .. } => {
                notifier
            }
        }
    }
}

/// At most this much of an error response's body goes into the error message.
const MAX_ERROR_BODY: usize = 300;

/// POSTs `body` as JSON to `url` with `headers`; a 2xx answer is success. Errors never include
/// the URL (it may be the secret) nor the header values.
async fn post_json(
    client: &reqwest::Client,
    notifier: &'static str,
    url: &str,
    headers: &[(reqwest::header::HeaderName, reqwest::header::HeaderValue)],
    body: &serde_json::Value,
) -> Result<(), NotifyError> {
    let bytes = serde_json::to_vec(body).map_err(|e| NotifyError::Permanent {
        notifier,
        reason: format!("cannot encode the payload: {e}"),
    })?;
    let mut req = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(bytes);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = req.send().await.map_err(|e| request_error(notifier, e))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = crate::sink::retry_after(resp.headers(), jiff::Timestamp::now());
    // The body explains a rejection (Slack's `invalid_payload`, PagerDuty's `errors`); a body
    // that cannot be read leaves the status alone.
    let text = resp
        .bytes()
        .await
        .map(|b| body_excerpt(&b))
        .unwrap_or_default();
    let reason = if text.is_empty() {
        format!("HTTP {}", status.as_u16())
    } else {
        format!("HTTP {}: {text}", status.as_u16())
    };
    Err(classify_status(
        notifier,
        status.as_u16(),
        reason,
        retry_after,
    ))
}

/// 408, 429 and 5xx may pass later; any other status will not.
fn classify_status(
    notifier: &'static str,
    status: u16,
    reason: String,
    retry_after: Option<Duration>,
) -> NotifyError {
    if status == 408 || status == 429 || status >= 500 {
        NotifyError::Retryable {
            notifier,
            reason,
            retry_after,
        }
    } else {
        NotifyError::Permanent { notifier, reason }
    }
}

/// A request that got no response: a bad URL is permanent, the rest (refused, reset, timeout,
/// DNS) may pass later. The message has the error's causes but not the URL.
fn request_error(notifier: &'static str, e: reqwest::Error) -> NotifyError {
    let e = e.without_url();
    let permanent = e.is_builder() || e.is_redirect();
    let mut reason = if e.is_timeout() {
        "timeout".to_string()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    if permanent {
        NotifyError::Permanent { notifier, reason }
    } else {
        NotifyError::Retryable {
            notifier,
            reason,
            retry_after: None,
        }
    }
}

/// The start of a response body, on one line.
fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate(&text, MAX_ERROR_BODY)
}

/// `s` cut to at most `max` characters (not bytes), with `…` when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A `{{ name }}` template for links: `name` is a label of the alert, or `rule`, `metric`,
/// `severity`, `status`, `fingerprint` (a label of that name wins). Values are percent-encoded
/// (the template is a URL); a name the alert lacks renders empty.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkTemplate {
    parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone, PartialEq)]
enum TemplatePart {
    Text(String),
    Var(String),
}

impl LinkTemplate {
    /// Parses `template`; an unclosed `{{` or a name that is not `[A-Za-z_][A-Za-z0-9_]*` is an
    /// error.
    pub fn parse(template: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(TemplatePart::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("link template {template:?}: `{{{{` without `}}}}`"))?;
            let name = after[..end].trim();
            let mut chars = name.chars();
            let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "link template {template:?}: {name:?} is not a label name (such as agent_id)"
                ));
            }
            parts.push(TemplatePart::Var(name.to_string()));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Text(rest.to_string()));
        }
        Ok(LinkTemplate { parts })
    }

    /// The link for `n`.
    pub fn render(&self, n: &Notification) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Text(t) => out.push_str(t),
                TemplatePart::Var(name) => {
                    let value = match n.labels.get(name) {
                        Some(v) => v.as_str(),
                        None => match name.as_str() {
                            "rule" => n.rule.as_str(),
                            "metric" => n.metric.as_str(),
                            "severity" => n.severity.as_str(),
                            "status" => n.status.as_str(),
                            "fingerprint" => n.fingerprint.as_str(),
                            _ => "",
                        },
                    };
                    percent_encode(value, &mut out);
                }
            }
        }
        out
    }
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn percent_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

#[cfg(test)]
pub(crate) mod sample {
    //! Notifications for the tests of every notifier.
    use super::*;

    pub fn firing() -> Notification {
        let labels: BTreeMap<String, String> =
            [("agent_id".to_string(), "agent-07".to_string())].into();
        Notification {
            rule: "AgentTaskFailures".into(),
            severity: Severity::Critical,
            status: Status::Firing,
            fingerprint: Notification::fingerprint("AgentTaskFailures", &labels),
            labels,
            summary: "7 task failures in 5m on agent-07".into(),
            description: "agent-07 failed more than 5 tasks in the last 5 minutes.".into(),
            metric: "agent_task_failure_total".into(),
            value: 7.0,
            threshold: 5.0,
            starts_at: "2024-05-01T12:00:00Z".parse().expect("a valid timestamp"),
            ends_at: None,
            link: Some("https://grafana.example.com/d/agents?var-agent_id=agent-07".into()),
        }
    }

    pub fn resolved() -> Notification {
        Notification {
            status: Status::Resolved,
            value: 2.0,
            ends_at: Some("2024-05-01T12:10:00Z".parse().expect("a valid timestamp")),
            ..firing()
        }
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<NotifierConfig, String> {
        toml::from_str::<NotifierConfig>(toml_text).map_err(|e| e.message().to_string())
    }

    #[test]
    fn severity_and_status_spell_snake_case() {
        for (s, text) in [
            (Severity::Info, "info"),
            (Severity::Warning, "warning"),
            (Severity::Critical, "critical"),
        ] {
            assert_eq!(s.as_str(), text);
            assert_eq!(serde_json::to_value(s).expect("serializes"), text);
            assert_eq!(
                serde_json::from_value::<Severity>(text.into()).expect("parses"),
                s
            );
        }
        assert!(Severity::Critical > Severity::Warning && Severity::Warning > Severity::Info);
        assert_eq!(
            serde_json::to_value(Status::Resolved).expect("ok"),
            "resolved"
        );
        assert!(serde_json::from_value::<Severity>("error".into()).is_err());
    }

    #[test]
    fn fingerprint_is_stable_and_tells_label_sets_apart() {
        let a: BTreeMap<String, String> = [("agent_id".into(), "agent-07".into())].into();
        let b: BTreeMap<String, String> = [("agent_id".into(), "agent-08".into())].into();
        let f = Notification::fingerprint("R", &a);
        assert_eq!(f.len(), 16);
        assert_eq!(f, Notification::fingerprint("R", &a.clone()));
        assert_ne!(f, Notification::fingerprint("R", &b));
        assert_ne!(f, Notification::fingerprint("S", &a));
        let split1: BTreeMap<String, String> = [("a".into(), "bc".into())].into();
        let split2: BTreeMap<String, String> = [("ab".into(), "c".into())].into();
        assert_ne!(
            Notification::fingerprint("R", &split1),
            Notification::fingerprint("R", &split2)
        );
        // Pinned: a change would orphan open PagerDuty incidents across an upgrade.
        assert_eq!(
            Notification::fingerprint("AgentTaskFailures", &a),
            "58ea0c8443b6639d"
        );
    }

    #[test]
    fn title_and_values_read_well() {
        assert_eq!(
            sample::firing().title(),
            "[FIRING:critical] AgentTaskFailures agent_id=agent-07"
        );
        assert_eq!(
            sample::resolved().title(),
            "[RESOLVED:critical] AgentTaskFailures agent_id=agent-07"
        );
        let mut n = sample::firing();
        n.labels.clear();
        assert_eq!(n.title(), "[FIRING:critical] AgentTaskFailures");
        assert_eq!(format_value(7.0), "7");
        assert_eq!(format_value(-3.0), "-3");
        assert_eq!(format_value(0.95), "0.95");
        assert_eq!(format_value(61.5), "61.5");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "inf");
    }

    #[test]
    fn link_template_renders_labels_and_builtins_encoded() {
        let t = LinkTemplate::parse(
            "https://g.example.com/d/x?var-agent={{ agent_id }}&rule={{rule}}&q={{ missing }}&s={{ severity }}",
        )
        .expect("valid");
        let mut n = sample::firing();
        n.labels.insert("agent_id".into(), "a b/&c".into());
        assert_eq!(
            t.render(&n),
            "https://g.example.com/d/x?var-agent=a%20b%2F%26c&rule=AgentTaskFailures&q=&s=critical"
        );
        assert_eq!(
            LinkTemplate::parse("https://x/{{ agent_id").unwrap_err(),
            "link template \"https://x/{{ agent_id\": `{{` without `}}`"
        );
        assert_eq!(
            LinkTemplate::parse("https://x/{{ a-b }}").unwrap_err(),
            "link template \"https://x/{{ a-b }}\": \"a-b\" is not a label name (such as agent_id)"
        );
        assert_eq!(
            LinkTemplate::parse("no vars").expect("valid").render(&n),
            "no vars"
        );
    }

    #[test]
    fn error_classes() {
        let r = classify_status("webhook", 503, "HTTP 503".into(), None);
        assert!(r.is_retryable());
        assert!(
            classify_status("webhook", 429, "x".into(), Some(Duration::from_secs(3)))
                .retry_after()
                .is_some()
        );
        assert!(classify_status("webhook", 408, "x".into(), None).is_retryable());
        let p = classify_status("webhook", 400, "HTTP 400: bad".into(), None);
        assert!(!p.is_retryable());
        assert_eq!(
            p.to_string(),
            "webhook: HTTP 400: bad (permanent; not retried)"
        );
        assert_eq!(
            r.to_string(),
            "webhook: HTTP 503 (temporary; will be retried)"
        );
        assert!(!classify_status("webhook", 404, "x".into(), None).is_retryable());
        assert_eq!(body_excerpt(b"  invalid_payload\n "), "invalid_payload");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }

    #[test]
    fn unknown_type_and_keys_are_rejected() {
        let e = parse("type = \"sms\"\nnumber = \"1\"").unwrap_err();
        assert!(e.contains("unknown variant `sms`"), "{e}");
        assert!(e.contains("slack"), "{e}");
        for (toml_text, key) in [
            ("type = \"slack\"\nwebhook_url_env = \"X\"\nwebhook_url = \"https://hooks\"", "webhook_url"),
            ("type = \"webhook\"\nurl = \"http://x\"\nmethod = \"PUT\"", "method"),
            ("type = \"pagerduty\"\nrouting_key_env = \"X\"\nrouting_key = \"k\"", "routing_key"),
            ("type = \"alertmanager\"\nurl = \"http://am:9093\"\napi = \"v1\"", "api"),
            ("type = \"email\"\nsmtp_host = \"h\"\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]\npassword = \"p\"", "password"),
        ] {
            let e = parse(toml_text).unwrap_err();
            assert!(e.contains(&format!("unknown field `{key}`")), "{toml_text}: {e}");
        }
        let e = parse("type = \"alertmanager\"").unwrap_err();
        assert!(e.contains("missing field `url`"), "{e}");
    }

    #[test]
    fn secrets_must_be_set_and_non_empty() {
        let c = parse("type = \"slack\"\nwebhook_url_env = \"WEIR_TEST_NOTIFY_UNSET_VAR\"")
            .expect("parses");
        assert_eq!(
            c.build().unwrap_err(),
            "slack webhook_url_env: environment variable WEIR_TEST_NOTIFY_UNSET_VAR is not set"
        );
        std::env::set_var("WEIR_TEST_NOTIFY_EMPTY_VAR", " ");
        let c = parse("type = \"pagerduty\"\nrouting_key_env = \"WEIR_TEST_NOTIFY_EMPTY_VAR\"")
            .expect("parses");
        assert_eq!(
            c.build().unwrap_err(),
            "pagerduty routing_key_env: environment variable WEIR_TEST_NOTIFY_EMPTY_VAR is empty"
        );
    }

    #[test]
    fn secret_debug_is_redacted() {
        assert_eq!(format!("{:?}", Secret::new("hunter2".into())), "<redacted>");
    }
}
