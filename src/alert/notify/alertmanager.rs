//! `type = "alertmanager"`: Prometheus Alertmanager's API v2, `POST {url}/api/v2/alerts`.
//!
//! weir acts as Prometheus does towards Alertmanager, so Alertmanager's routing, grouping,
//! silences and receivers (email, OpsGenie, ...) apply. Each notification is a one-element
//! array:
//!
//! ```json
//! [{"labels": {"alertname": "AgentTaskFailures", "severity": "critical", "agent_id": "agent-07"},
//!   "annotations": {"summary": "...", "description": "...", "metric": "...", "value": "7",
//!                   "threshold": "5"},
//!   "startsAt": "2024-05-01T12:00:00Z", "generatorURL": "https://..."}]
//! ```
//!
//! # endsAt
//! Alertmanager treats an alert whose `endsAt` has passed as resolved. A resolve sends
//! `endsAt` = the time it resolved. A firing alert sends `endsAt` only when the notification
//! has `ends_at` (the time until which it holds unless sent again); without it Alertmanager
//! uses now + its `resolve_timeout` (default 5m). Like Prometheus, the caller must therefore
//! send a firing alert again well within that time (Prometheus resends every minute) or
//! Alertmanager resolves it by itself.
//!
//! Labels: `alertname` is the rule and `severity` the severity; a rule label of either name
//! is overridden by them. Labels with an empty value are left out (empty means absent there).

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{check_http_url, format_value, post_json, Notification, NotifyError, Status};

/// `type = "alertmanager"`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// Base URL of Alertmanager, such as `http://alertmanager:9093`; alerts are POSTed to
    /// `{url}/api/v2/alerts`. Required.
    pub url: String,
}

const ALERTS_PATH: &str = "/api/v2/alerts";

impl AlertmanagerConfig {
    pub fn build(&self) -> Result<AlertmanagerNotifier, String> {
        check_http_url("alertmanager", "url", &self.url, false)?;
        Ok(AlertmanagerNotifier {
            url: format!("{}{ALERTS_PATH}", self.url.trim_end_matches('/')),
        })
    }
}

/// A built Alertmanager notifier. Its `Debug` redacts the URL's userinfo (a password may be
/// written inline).
pub struct AlertmanagerNotifier {
    url: String,
}

impl std::fmt::Debug for AlertmanagerNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertmanagerNotifier")
            .field("url", &crate::redact::urls(&self.url))
            .finish()
    }
}

impl AlertmanagerNotifier {
    pub async fn send(
        &self,
        client: &reqwest::Client,
        n: &Notification,
    ) -> Result<(), NotifyError> {
        post_json(client, "alertmanager", &self.url, &[], &payload(n)).await
    }

    /// Where alerts are POSTed.
    pub fn endpoint(&self) -> &str {
        &self.url
    }
}

/// The request body for `n`: an array of one alert.
pub fn payload(n: &Notification) -> Value {
    let mut labels = Map::new();
    for (k, v) in &n.labels {
        if !v.is_empty() {
            labels.insert(k.clone(), v.clone().into());
        }
    }
    labels.insert("alertname".into(), n.rule.clone().into());
    labels.insert("severity".into(), n.severity.as_str().into());

    let mut annotations = Map::new();
    for (k, v) in [
        ("summary", n.summary.clone()),
        ("description", n.description.clone()),
        ("metric", n.metric.clone()),
        ("value", format_value(n.value)),
        ("threshold", format_value(n.threshold)),
    ] {
        if !v.is_empty() {
            annotations.insert(k.into(), v.into());
        }
    }

    let mut alert = Map::new();
    alert.insert("labels".into(), labels.into());
    alert.insert("annotations".into(), annotations.into());
    alert.insert("startsAt".into(), n.starts_at.to_string().into());
    let ends_at = match n.status {
        Status::Resolved => Some(n.resolved_at()),
        Status::Firing => n.ends_at,
    };
    if let Some(t) = ends_at {
        alert.insert("endsAt".into(), t.to_string().into());
    }
    if let Some(link) = &n.link {
        alert.insert("generatorURL".into(), link.clone().into());
    }
    json!([alert])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::notify::{sample, NotifierConfig};

    #[test]
    fn firing_alert_is_exact_and_has_no_end() {
        assert_eq!(
            payload(&sample::firing()),
            json!([{
                "labels": {"agent_id": "agent-07", "alertname": "AgentTaskFailures", "severity": "critical"},
                "annotations": {
                    "summary": "7 task failures in 5m on agent-07",
                    "description": "agent-07 failed more than 5 tasks in the last 5 minutes.",
                    "metric": "agent_task_failure_total",
                    "value": "7",
                    "threshold": "5",
                },
                "startsAt": "2024-05-01T12:00:00Z",
                "generatorURL": "https://grafana.example.com/d/agents?var-agent_id=agent-07",
            }])
        );
    }

    #[test]
    fn resolved_alert_ends_and_firing_may_carry_a_validity() {
        let r = payload(&sample::resolved());
        assert_eq!(r[0]["endsAt"], "2024-05-01T12:10:00Z");
        assert_eq!(r[0]["startsAt"], "2024-05-01T12:00:00Z");
        assert_eq!(r[0]["annotations"]["value"], "2");
        let mut f = sample::firing();
        f.ends_at = Some("2024-05-01T12:04:00Z".parse().expect("valid"));
        assert_eq!(payload(&f)[0]["endsAt"], "2024-05-01T12:04:00Z");
    }

    #[test]
    fn reserved_labels_win_and_empty_values_are_left_out() {
        let mut n = sample::firing();
        n.labels.insert("alertname".into(), "Other".into());
        n.labels.insert("severity".into(), "low".into());
        n.labels.insert("queue".into(), String::new());
        n.description = String::new();
        n.link = None;
        let p = payload(&n);
        assert_eq!(
            p[0]["labels"],
            json!({"agent_id": "agent-07", "alertname": "AgentTaskFailures", "severity": "critical"})
        );
        assert!(p[0]["annotations"].get("description").is_none());
        assert!(p[0].get("generatorURL").is_none());
    }

    #[test]
    fn example_config_parses_and_builds_the_endpoint() {
        let c: NotifierConfig =
            toml::from_str("type = \"alertmanager\"\nurl = \"http://alertmanager:9093/\"")
                .expect("parses");
        let Ok(crate::alert::notify::Notifier::Alertmanager(am)) = c.build() else {
            panic!("does not build an alertmanager notifier")
        };
        assert_eq!(am.endpoint(), "http://alertmanager:9093/api/v2/alerts");
        let c: NotifierConfig =
            toml::from_str("type = \"alertmanager\"\nurl = \"alertmanager:9093\"").expect("parses");
        assert_eq!(
            c.build().unwrap_err(),
            "alertmanager url \"alertmanager:9093\" must be an http:// or https:// URL with a host"
        );
    }
}
