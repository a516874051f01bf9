//! `type = "pagerduty"`: PagerDuty's Events API v2.
//!
//! A firing alert is a `trigger`, its resolve a `resolve`, both under `dedup_key` = the
//! notification's fingerprint, so a resolve closes the incident its trigger opened and a
//! repeated trigger joins it instead of opening another. A trigger carries the payload
//! (summary, `source`, severity, timestamp, custom details: labels, value, threshold,
//! description) and the link; a resolve carries only what the API needs (routing key, action,
//! dedup key), as PagerDuty ignores the rest. PagerDuty answers 202 when it accepts an event.
//!
//! The routing key (the integration key of a service) is the secret: it comes from
//! `routing_key_env` and never appears in `Debug` or in errors.

use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    check_http_url, post_json, required_secret, truncate, Notification, NotifyError, Secret,
    Severity, Status,
};

/// `type = "pagerduty"`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PagerdutyConfig {
    /// Name of the environment variable holding the routing key (the Events API v2
    /// integration key of a PagerDuty service). Required.
    pub routing_key_env: String,
    /// The Events API endpoint. Default: `https://events.pagerduty.com/v2/enqueue` (EU
    /// accounts may use `https://events.eu.pagerduty.com/v2/enqueue`).
    #[serde(default = "default_url")]
    pub url: String,
    /// The event's `source`: where the problem is (a host, a service). Default: `weir`.
    #[serde(default = "default_source")]
    pub source: String,
}

fn default_url() -> String {
    "https://events.pagerduty.com/v2/enqueue".to_string()
}
fn default_source() -> String {
    "weir".to_string()
}

/// PagerDuty's limits: a summary of 1024 characters, a dedup key of 255.
const SUMMARY_MAX: usize = 1024;
const DEDUP_KEY_MAX: usize = 255;

impl PagerdutyConfig {
    pub fn build(&self) -> Result<PagerdutyNotifier, String> {
        check_http_url("pagerduty", "url", &self.url, false)?;
        if self.source.trim().is_empty() {
            return Err("pagerduty source is empty".into());
        }
        let routing_key = required_secret("pagerduty", "routing_key_env", &self.routing_key_env)?;
        Ok(PagerdutyNotifier {
            url: self.url.clone(),
            source: self.source.clone(),
            routing_key,
        })
    }
}

/// A built PagerDuty notifier.
#[derive(Debug)]
pub struct PagerdutyNotifier {
    url: String,
    source: String,
    routing_key: Secret,
}

/// PagerDuty's severities are critical, error, warning, info; ours map onto the same names.
pub fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

impl PagerdutyNotifier {
    pub async fn send(
        &self,
        client: &reqwest::Client,
        n: &Notification,
    ) -> Result<(), NotifyError> {
        post_json(client, "pagerduty", &self.url, &[], &self.payload(n)).await
    }

    /// The event for `n`.
    pub fn payload(&self, n: &Notification) -> Value {
        let dedup_key = truncate(&n.fingerprint, DEDUP_KEY_MAX);
        if n.status == Status::Resolved {
            return json!({
                "routing_key": self.routing_key.expose(),
                "event_action": "resolve",
                "dedup_key": dedup_key,
            });
        }
        let summary = if n.summary.trim().is_empty() {
            n.title()
        } else {
            n.summary.clone()
        };
        let links: Vec<Value> = n
            .link
            .iter()
            .map(|href| json!({"href": href, "text": format!("{} details", n.rule)}))
            .collect();
        json!({
            "routing_key": self.routing_key.expose(),
            "event_action": "trigger",
            "dedup_key": dedup_key,
            "payload": {
                "summary": truncate(&summary, SUMMARY_MAX),
                "source": self.source,
                "severity": severity(n.severity),
                "timestamp": n.starts_at.to_string(),
                "component": n.metric,
                "class": n.rule,
                "custom_details": {
                    "labels": n.labels,
                    "value": n.value,
                    "threshold": n.threshold,
                    "description": n.description,
                },
            },
            "links": links,
            "client": "weir",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::notify::{sample, NotifierConfig};

    fn notifier() -> PagerdutyNotifier {
        PagerdutyNotifier {
            url: default_url(),
            source: default_source(),
            routing_key: Secret::new("R0UT1NGKEY".into()),
        }
    }

    #[test]
    fn trigger_is_exact() {
        let n = sample::firing();
        assert_eq!(
            notifier().payload(&n),
            json!({
                "routing_key": "R0UT1NGKEY",
                "event_action": "trigger",
                "dedup_key": n.fingerprint,
                "payload": {
                    "summary": "7 task failures in 5m on agent-07",
                    "source": "weir",
                    "severity": "critical",
                    "timestamp": "2024-05-01T12:00:00Z",
                    "component": "agent_task_failure_total",
                    "class": "AgentTaskFailures",
                    "custom_details": {
                        "labels": {"agent_id": "agent-07"},
                        "value": 7.0,
                        "threshold": 5.0,
                        "description": "agent-07 failed more than 5 tasks in the last 5 minutes.",
                    },
                },
                "links": [{"href": "https://grafana.example.com/d/agents?var-agent_id=agent-07",
                           "text": "AgentTaskFailures details"}],
                "client": "weir",
            })
        );
    }

    #[test]
    fn resolve_has_the_same_dedup_key_and_nothing_else() {
        let f = notifier().payload(&sample::firing());
        let r = notifier().payload(&sample::resolved());
        assert_eq!(
            r,
            json!({"routing_key": "R0UT1NGKEY", "event_action": "resolve", "dedup_key": f["dedup_key"]})
        );
    }

    #[test]
    fn severities_map_and_empty_summary_falls_back_to_the_title() {
        assert_eq!(severity(Severity::Critical), "critical");
        assert_eq!(severity(Severity::Warning), "warning");
        assert_eq!(severity(Severity::Info), "info");
        let mut n = sample::firing();
        n.severity = Severity::Warning;
        n.summary = String::new();
        n.link = None;
        let p = notifier().payload(&n);
        assert_eq!(p["payload"]["severity"], "warning");
        assert_eq!(
            p["payload"]["summary"],
            "[FIRING:warning] AgentTaskFailures agent_id=agent-07"
        );
        assert_eq!(p["links"], json!([]));
        n.summary = "x".repeat(2000);
        let p = notifier().payload(&n);
        assert_eq!(
            p["payload"]["summary"].as_str().expect("s").chars().count(),
            1024
        );
    }

    #[test]
    fn example_config_parses_with_defaults_and_hides_the_key() {
        std::env::set_var(
            "WEIR_TEST_PD_ROUTING_KEY",
            "e93facc04764012d7bfb002500d5d1a6",
        );
        let c: NotifierConfig =
            toml::from_str("type = \"pagerduty\"\nrouting_key_env = \"WEIR_TEST_PD_ROUTING_KEY\"")
                .expect("parses");
        let NotifierConfig::Pagerduty(pd) = &c else {
            panic!("not pagerduty: {c:?}")
        };
        assert_eq!(pd.url, "https://events.pagerduty.com/v2/enqueue");
        assert_eq!(pd.source, "weir");
        let built = c.build().expect("builds");
        let debug = format!("{built:?}");
        assert!(!debug.contains("e93facc0"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }
}
