//! `type = "slack"`: a Slack incoming webhook.
//!
//! The message is readable in a notification and in the channel: a fallback `text` (the title,
//! shown in push notifications), then blocks in an attachment whose colour is the severity
//! (green when resolved): a header, the summary and description, the severity, the value
//! against the threshold, the labels, the start (and end) time, and a link. Slack's mrkdwn
//! control characters (`&`, `<`, `>`) in rendered text are escaped, and texts are cut to
//! Slack's limits so a long description cannot get the message rejected.
//!
//! The webhook URL is the secret (whoever has it can post): it comes from `webhook_url_env`
//! and never appears in `Debug` or in errors.

use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    check_http_url, format_value, post_json, required_secret, truncate, LinkTemplate, Notification,
    NotifyError, Secret, Severity, Status,
};

/// `type = "slack"`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// Name of the environment variable holding the incoming webhook URL
    /// (`https://hooks.slack.com/services/...`). Required.
    pub webhook_url_env: String,
    /// Channel to post to (`#alerts`), for legacy webhooks that may choose; a webhook made by a
    /// Slack app posts to its own channel and ignores this. Default: none.
    #[serde(default = "default_channel")]
    pub channel: Option<String>,
    /// Link shown under the message, with `{{ label }}` placeholders (also `rule`, `metric`,
    /// `severity`, `status`, `fingerprint`), such as
    /// `"https://grafana.example.com/d/agents?var-agent_id={{ agent_id }}"`. Default: none
    /// (the rule's own link, when it has one).
    #[serde(default = "default_link_template")]
    pub link_template: Option<String>,
}

const fn default_channel() -> Option<String> {
    None
}
const fn default_link_template() -> Option<String> {
    None
}

impl SlackConfig {
    pub fn build(&self) -> Result<SlackNotifier, String> {
        let url = required_secret("slack", "webhook_url_env", &self.webhook_url_env)?;
        check_http_url(
            "slack",
            &format!("webhook URL (from {})", self.webhook_url_env),
            url.expose(),
            true,
        )?;
        if let Some(c) = &self.channel {
            if c.trim().is_empty() {
                return Err("slack channel is empty; leave it out for the webhook's own".into());
            }
        }
        let link_template = self
            .link_template
            .as_deref()
            .map(LinkTemplate::parse)
            .transpose()
            .map_err(|e| format!("slack {e}"))?;
        Ok(SlackNotifier {
            url,
            channel: self.channel.clone(),
            link_template,
        })
    }
}

/// A built Slack notifier.
#[derive(Debug)]
pub struct SlackNotifier {
    url: Secret,
    channel: Option<String>,
    link_template: Option<LinkTemplate>,
}

/// Slack's limits: header text 150 characters, section text 3000, a field 2000.
const HEADER_MAX: usize = 150;
const SECTION_MAX: usize = 3000;
const FIELD_MAX: usize = 2000;

impl SlackNotifier {
    pub async fn send(
        &self,
        client: &reqwest::Client,
        n: &Notification,
    ) -> Result<(), NotifyError> {
        post_json(client, "slack", self.url.expose(), &[], &self.payload(n)).await
    }

    /// The link under the message: the template's, else the rule's.
    fn link(&self, n: &Notification) -> Option<String> {
        match &self.link_template {
            Some(t) => Some(t.render(n)),
            None => n.link.clone(),
        }
    }

    /// The webhook's JSON body.
    pub fn payload(&self, n: &Notification) -> Value {
        let resolved = n.status == Status::Resolved;
        let (emoji, color) = match (n.status, n.severity) {
            (Status::Resolved, _) => (":white_check_mark:", "#2eb886"),
            (Status::Firing, Severity::Critical) => (":red_circle:", "#d40e0d"),
            (Status::Firing, Severity::Warning) => (":large_orange_circle:", "#f2a60f"),
            (Status::Firing, Severity::Info) => (":large_blue_circle:", "#439fe0"),
        };
        let mut text = format!("{emoji} {}", escape(&n.title()));
        if !n.summary.is_empty() {
            text.push_str(": ");
            text.push_str(&escape(&n.summary));
        }
        let header = if resolved {
            format!("Resolved: {}", n.rule)
        } else {
            format!("{} {}", n.severity.as_str().to_ascii_uppercase(), n.rule)
        };

        let mut summary = format!("*{}*", escape(&n.summary));
        if n.summary.is_empty() {
            summary = format!("*{}*", escape(&n.rule));
        }
        if !n.description.is_empty() {
            summary.push('\n');
            summary.push_str(&escape(&n.description));
        }

        let labels = if n.labels.is_empty() {
            "none".to_string()
        } else {
            n.labels
                .iter()
                .map(|(k, v)| format!("`{}={}`", escape(k), escape(v)))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let value_label = if resolved { "Last value" } else { "Value" };
        let mut fields = vec![
            field(&format!("*Severity*\n{}", n.severity)),
            field(&format!(
                "*{value_label}*\n{} (threshold {})\n`{}`",
                format_value(n.value),
                format_value(n.threshold),
                escape(&n.metric)
            )),
            field(&format!("*Labels*\n{labels}")),
            field(&format!("*Started*\n{}", n.starts_at)),
        ];
        if resolved {
            fields.push(field(&format!("*Resolved*\n{}", n.resolved_at())));
        }

        let mut blocks = vec![
            json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&header, HEADER_MAX)}}),
            json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&summary, SECTION_MAX)}}),
            json!({"type": "section", "fields": fields}),
        ];
        if let Some(link) = self.link(n) {
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn",
                "text": format!("<{}|View details>", escape(&link))}}));
        }
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn",
            "text": format!("weir · rule `{}` · fingerprint `{}`", escape(&n.rule), escape(&n.fingerprint))}]}));

        let mut body = json!({
            "text": truncate(&text, SECTION_MAX),
            "attachments": [{"color": color, "blocks": blocks}],
        });
        if let (Some(channel), Some(obj)) = (&self.channel, body.as_object_mut()) {
            obj.insert("channel".into(), channel.clone().into());
        }
        body
    }
}

fn field(text: &str) -> Value {
    json!({"type": "mrkdwn", "text": truncate(text, FIELD_MAX)})
}

/// Slack's escaping for text: `&`, `<` and `>` are its control characters.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::notify::{sample, NotifierConfig};

    fn notifier(link_template: Option<&str>, channel: Option<&str>) -> SlackNotifier {
        SlackNotifier {
            url: Secret::new("https://hooks.slack.com/services/T0/B0/secret".into()),
            channel: channel.map(str::to_string),
            link_template: link_template.map(|t| LinkTemplate::parse(t).expect("valid")),
        }
    }

    #[test]
    fn firing_message_is_exact() {
        let n = sample::firing();
        let body = notifier(None, Some("#alerts")).payload(&n);
        let expected = json!({
            "text": ":red_circle: [FIRING:critical] AgentTaskFailures agent_id=agent-07: 7 task failures in 5m on agent-07",
            "attachments": [{
                "color": "#d40e0d",
                "blocks": [
                    {"type": "header", "text": {"type": "plain_text", "text": "CRITICAL AgentTaskFailures"}},
                    {"type": "section", "text": {"type": "mrkdwn",
                        "text": "*7 task failures in 5m on agent-07*\nagent-07 failed more than 5 tasks in the last 5 minutes."}},
                    {"type": "section", "fields": [
                        {"type": "mrkdwn", "text": "*Severity*\ncritical"},
                        {"type": "mrkdwn", "text": "*Value*\n7 (threshold 5)\n`agent_task_failure_total`"},
                        {"type": "mrkdwn", "text": "*Labels*\n`agent_id=agent-07`"},
                        {"type": "mrkdwn", "text": "*Started*\n2024-05-01T12:00:00Z"},
                    ]},
                    {"type": "section", "text": {"type": "mrkdwn",
                        "text": "<https://grafana.example.com/d/agents?var-agent_id=agent-07|View details>"}},
                    {"type": "context", "elements": [{"type": "mrkdwn",
                        "text": format!("weir · rule `AgentTaskFailures` · fingerprint `{}`", n.fingerprint)}]},
                ],
            }],
            "channel": "#alerts",
        });
        assert_eq!(body, expected);
    }

    #[test]
    fn resolved_message_is_marked_green_with_its_end() {
        let body = notifier(None, None).payload(&sample::resolved());
        assert_eq!(
            body["text"],
            ":white_check_mark: [RESOLVED:critical] AgentTaskFailures agent_id=agent-07: 7 task failures in 5m on agent-07"
        );
        let att = &body["attachments"][0];
        assert_eq!(att["color"], "#2eb886");
        assert_eq!(
            att["blocks"][0]["text"]["text"],
            "Resolved: AgentTaskFailures"
        );
        let fields = &att["blocks"][2]["fields"];
        assert_eq!(
            fields[1]["text"],
            "*Last value*\n2 (threshold 5)\n`agent_task_failure_total`"
        );
        assert_eq!(fields[4]["text"], "*Resolved*\n2024-05-01T12:10:00Z");
        assert!(body.get("channel").is_none());
    }

    #[test]
    fn severity_colours_and_escaping() {
        let mut n = sample::firing();
        n.severity = Severity::Warning;
        n.summary = "queue <main> & co".into();
        n.link = None;
        let body = notifier(None, None).payload(&n);
        assert_eq!(body["attachments"][0]["color"], "#f2a60f");
        assert!(body["text"]
            .as_str()
            .expect("text")
            .starts_with(":large_orange_circle: [FIRING:warning]"));
        assert_eq!(
            body["attachments"][0]["blocks"][1]["text"]["text"]
                .as_str()
                .expect("text")
                .lines()
                .next(),
            Some("*queue &lt;main&gt; &amp; co*")
        );
        // No link: the context block follows the fields.
        assert_eq!(body["attachments"][0]["blocks"][3]["type"], "context");
        n.severity = Severity::Info;
        assert_eq!(
            notifier(None, None).payload(&n)["attachments"][0]["color"],
            "#439fe0"
        );
    }

    #[test]
    fn link_template_overrides_the_rules_link() {
        let body = notifier(
            Some("https://g.example.com/d/a?var-agent_id={{ agent_id }}&from={{ rule }}"),
            None,
        )
        .payload(&sample::firing());
        assert_eq!(
            body["attachments"][0]["blocks"][3]["text"]["text"],
            "<https://g.example.com/d/a?var-agent_id=agent-07&amp;from=AgentTaskFailures|View details>"
        );
    }

    #[test]
    fn long_texts_are_cut_to_slacks_limits() {
        let mut n = sample::firing();
        n.rule = "R".repeat(400);
        n.description = "d".repeat(5000);
        let body = notifier(None, None).payload(&n);
        let blocks = &body["attachments"][0]["blocks"];
        assert_eq!(
            blocks[0]["text"]["text"]
                .as_str()
                .expect("s")
                .chars()
                .count(),
            150
        );
        assert_eq!(
            blocks[1]["text"]["text"]
                .as_str()
                .expect("s")
                .chars()
                .count(),
            3000
        );
    }

    #[test]
    fn example_config_parses_builds_and_hides_the_url() {
        std::env::set_var(
            "WEIR_TEST_SLACK_EXAMPLE_URL",
            "https://hooks.slack.com/services/T000/B000/XXXXsecretXXXX",
        );
        let c: NotifierConfig = toml::from_str(
            r##"
type = "slack"
webhook_url_env = "WEIR_TEST_SLACK_EXAMPLE_URL"
channel = "#agents-alerts"
link_template = "https://grafana.example.com/d/agents?var-agent_id={{ agent_id }}"
"##,
        )
        .expect("parses");
        let built = c.build().expect("builds");
        let debug = format!("{built:?} {c:?}");
        assert!(!debug.contains("XXXXsecretXXXX"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert_eq!(built.kind(), "slack");
    }

    #[test]
    fn bad_url_and_template_are_config_errors_without_the_secret() {
        std::env::set_var(
            "WEIR_TEST_SLACK_BAD_URL",
            "hooks.slack.com/services/secretpath",
        );
        let c = SlackConfig {
            webhook_url_env: "WEIR_TEST_SLACK_BAD_URL".into(),
            channel: None,
            link_template: None,
        };
        let e = c.build().unwrap_err();
        assert!(
            e.starts_with("slack webhook URL (from WEIR_TEST_SLACK_BAD_URL) is not a valid URL"),
            "{e}"
        );
        assert!(!e.contains("secretpath"), "{e}");
        std::env::set_var("WEIR_TEST_SLACK_GOOD_URL", "https://hooks.slack.com/x");
        let c = SlackConfig {
            webhook_url_env: "WEIR_TEST_SLACK_GOOD_URL".into(),
            channel: None,
            link_template: Some("https://x/{{ oops".into()),
        };
        assert_eq!(
            c.build().unwrap_err(),
            "slack link template \"https://x/{{ oops\": `{{` without `}}`"
        );
    }
}
