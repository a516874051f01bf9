//! `type = "webhook"`: a generic JSON document POSTed to any HTTP endpoint.
//!
//! The document (one per notification, keys in this order):
//!
//! ```json
//! {"status": "firing", "rule": "AgentTaskFailures", "severity": "critical",
//!  "message": "<summary>", "description": "<description>",
//!  "triggered_at": "2024-05-01T12:00:00Z", "resolved_at": null,
//!  "metric_name": "agent_task_failure_total", "current_value": 7.0, "threshold_value": 5.0,
//!  "labels": {"agent_id": "agent-07"}, "fingerprint": "…", "link": null}
//! ```
//!
//! `resolved_at` is set on a resolve. The URL may carry a token: it can come from `url_env`
//! instead of the file, and is never shown by `Debug` or in errors; `secret_headers_env` does
//! the same for headers such as `Authorization`.

use std::collections::BTreeMap;

use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    check_http_url, post_json, required_secret, Notification, NotifyError, Secret, Status,
};

/// `type = "webhook"`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// URL the JSON document is POSTed to. Give this or `url_env`.
    #[serde(default = "default_url")]
    pub url: Option<String>,
    /// Name of the environment variable holding the URL, when it carries a token. Give this
    /// or `url`.
    #[serde(default = "default_url_env")]
    pub url_env: Option<String>,
    /// Headers sent with every request, as written (not secret). Default: none.
    #[serde(default = "default_headers")]
    pub headers: BTreeMap<String, String>,
    /// Headers whose values come from environment variables: header name = variable name,
    /// such as `{ Authorization = "ALERT_WEBHOOK_AUTH" }`. Default: none.
    #[serde(default = "default_headers")]
    pub secret_headers_env: BTreeMap<String, String>,
}

const fn default_url() -> Option<String> {
    None
}
const fn default_url_env() -> Option<String> {
    None
}
const fn default_headers() -> BTreeMap<String, String> {
    BTreeMap::new()
}

impl WebhookConfig {
    pub fn build(&self) -> Result<WebhookNotifier, String> {
        let url = match (&self.url, &self.url_env) {
            (Some(url), None) => {
                check_http_url("webhook", "url", url, false)?;
                Secret::new(url.clone())
            }
            (None, Some(var)) => {
                let url = required_secret("webhook", "url_env", var)?;
                check_http_url("webhook", &format!("URL (from {var})"), url.expose(), true)?;
                url
            }
            (Some(_), Some(_)) => {
                return Err("webhook: url and url_env are exclusive; choose one".into())
            }
            (None, None) => {
                return Err("webhook needs url (or url_env, the variable holding it)".into())
            }
        };
        let mut headers = Vec::new();
        for (name, value) in &self.headers {
            let v = HeaderValue::from_str(value).map_err(|_| {
                format!("webhook header {name:?}: its value is not a valid header value")
            })?;
            headers.push((header_name(name)?, v));
        }
        for (name, var) in &self.secret_headers_env {
            if self.headers.keys().any(|h| h.eq_ignore_ascii_case(name)) {
                return Err(format!(
                    "webhook header {name:?} is in both headers and secret_headers_env"
                ));
            }
            let secret = required_secret("webhook", &format!("secret_headers_env.{name}"), var)?;
            let mut v = HeaderValue::from_str(secret.expose()).map_err(|_| {
                format!("webhook secret_headers_env.{name}: the value of {var} is not a valid header value")
            })?;
            v.set_sensitive(true);
            headers.push((header_name(name)?, v));
        }
        let secret_headers = self.secret_headers_env.keys().cloned().collect();
        Ok(WebhookNotifier {
            url,
            headers,
            secret_headers,
        })
    }
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("webhook header {name:?} is not a valid header name"))
}

/// A built webhook notifier. Its `Debug` shows header names only, and no URL.
pub struct WebhookNotifier {
    url: Secret,
    headers: Vec<(HeaderName, HeaderValue)>,
    secret_headers: Vec<String>,
}

impl std::fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("WebhookNotifier")
            .field("url", &self.url)
            .field("headers", &names)
            .field("secret_headers", &self.secret_headers)
            .finish()
    }
}

impl WebhookNotifier {
    pub async fn send(
        &self,
        client: &reqwest::Client,
        n: &Notification,
    ) -> Result<(), NotifyError> {
        post_json(
            client,
            "webhook",
            self.url.expose(),
            &self.headers,
            &payload(n),
        )
        .await
    }
}

/// The JSON document for `n`.
pub fn payload(n: &Notification) -> Value {
    let resolved_at = match n.status {
        Status::Firing => Value::Null,
        Status::Resolved => n.resolved_at().to_string().into(),
    };
    json!({
        "status": n.status.as_str(),
        "rule": n.rule,
        "severity": n.severity.as_str(),
        "message": n.summary,
        "description": n.description,
        "triggered_at": n.starts_at.to_string(),
        "resolved_at": resolved_at,
        "metric_name": n.metric,
        "current_value": n.value,
        "threshold_value": n.threshold,
        "labels": n.labels,
        "fingerprint": n.fingerprint,
        "link": n.link,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::notify::{sample, NotifierConfig};

    #[test]
    fn firing_document_is_exact() {
        let n = sample::firing();
        assert_eq!(
            payload(&n),
            json!({
                "status": "firing",
                "rule": "AgentTaskFailures",
                "severity": "critical",
                "message": "7 task failures in 5m on agent-07",
                "description": "agent-07 failed more than 5 tasks in the last 5 minutes.",
                "triggered_at": "2024-05-01T12:00:00Z",
                "resolved_at": null,
                "metric_name": "agent_task_failure_total",
                "current_value": 7.0,
                "threshold_value": 5.0,
                "labels": {"agent_id": "agent-07"},
                "fingerprint": n.fingerprint,
                "link": "https://grafana.example.com/d/agents?var-agent_id=agent-07",
            })
        );
        // Key order as documented (serde_json keeps insertion order here).
        let text = serde_json::to_string(&payload(&n)).expect("encodes");
        assert!(
            text.starts_with(
                r#"{"status":"firing","rule":"AgentTaskFailures","severity":"critical","message":"#
            ),
            "{text}"
        );
    }

    #[test]
    fn resolved_document_has_its_end() {
        let mut n = sample::resolved();
        n.link = None;
        let p = payload(&n);
        assert_eq!(p["status"], "resolved");
        assert_eq!(p["resolved_at"], "2024-05-01T12:10:00Z");
        assert_eq!(p["current_value"], 2.0);
        assert_eq!(p["link"], Value::Null);
    }

    #[test]
    fn example_configs_parse_and_build() {
        std::env::set_var("WEIR_TEST_WEBHOOK_AUTH", "Bearer tok-very-secret");
        let c: NotifierConfig = toml::from_str(
            r#"
type = "webhook"
url = "https://ops.example.com/hooks/weir"
headers = { "X-Team" = "agents" }
secret_headers_env = { Authorization = "WEIR_TEST_WEBHOOK_AUTH" }
"#,
        )
        .expect("parses");
        let built = c.build().expect("builds");
        let debug = format!("{built:?}");
        assert!(!debug.contains("tok-very-secret"), "{debug}");
        assert!(
            debug.contains("x-team") && debug.contains("authorization"),
            "{debug}"
        );

        std::env::set_var(
            "WEIR_TEST_WEBHOOK_URL",
            "https://ops.example.com/hooks/weir?token=abc123",
        );
        let c: NotifierConfig =
            toml::from_str("type = \"webhook\"\nurl_env = \"WEIR_TEST_WEBHOOK_URL\"")
                .expect("parses");
        let debug = format!("{:?}", c.build().expect("builds"));
        assert!(!debug.contains("abc123"), "{debug}");
    }

    #[test]
    fn url_choice_and_headers_are_checked() {
        let build = |t: &str| {
            toml::from_str::<NotifierConfig>(t)
                .expect("parses")
                .build()
                .unwrap_err()
        };
        assert_eq!(
            build("type = \"webhook\""),
            "webhook needs url (or url_env, the variable holding it)"
        );
        assert_eq!(
            build("type = \"webhook\"\nurl = \"http://a\"\nurl_env = \"B\""),
            "webhook: url and url_env are exclusive; choose one"
        );
        assert_eq!(
            build("type = \"webhook\"\nurl = \"ftp://a/b\""),
            "webhook url \"ftp://a/b\" must be an http:// or https:// URL with a host"
        );
        assert_eq!(
            build("type = \"webhook\"\nurl = \"http://a\"\nheaders = { \"bad name\" = \"v\" }"),
            "webhook header \"bad name\" is not a valid header name"
        );
        assert_eq!(
            build("type = \"webhook\"\nurl = \"http://a\"\nheaders = { Authorization = \"x\" }\nsecret_headers_env = { authorization = \"Y\" }"),
            "webhook header \"authorization\" is in both headers and secret_headers_env"
        );
    }
}
