//! `type = "email"`: a plain-text email over SMTP (lettre).
//!
//! The subject is the alert's title, `[FIRING:critical] AgentTaskFailures agent_id=agent-07`
//! (`[RESOLVED:...]` when it resolves); the body has the summary, the description and a table
//! of rule, severity, metric, value against threshold, labels, times, link and fingerprint.
//! Every message of one alert carries `References: <weir.FINGERPRINT.START@weir>`, so mail
//! clients thread a resolve under its trigger.
//!
//! # Transport
//! `starttls = true` (the default) upgrades the connection with STARTTLS and fails if the
//! server does not offer it, verifying the certificate against the public roots (plus
//! `ca_file`, for a relay with a private CA). `starttls = false` speaks plain SMTP, for a local
//! relay; credentials are then refused, as they would cross the network in the clear. One
//! connection per message (alerts are few); `timeout_secs` bounds each SMTP step.
//!
//! The password comes from `password_env` and never appears in `Debug` or in errors.

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;

use super::{format_value, required_secret, Notification, NotifyError, Secret, Status};

/// `type = "email"`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The SMTP server (relay) to hand messages to, such as `smtp.example.com`; with
    /// STARTTLS, its certificate must be valid for this name. Required.
    pub smtp_host: String,
    /// Its port. Default: 587 (submission).
    #[serde(default = "default_smtp_port")]
    pub smtp_port: u16,
    /// Upgrade the connection with STARTTLS (required: a server not offering it is an error).
    /// `false` sends in the clear, for a relay on the same host or network. Default: true.
    #[serde(default = "default_starttls")]
    pub starttls: bool,
    /// PEM file of CA certificates to trust besides the public roots, for a relay whose
    /// certificate a private CA signed. Read when the notifier is built. Default: none.
    #[serde(default = "default_ca_file")]
    pub ca_file: Option<PathBuf>,
    /// User to authenticate as (PLAIN or LOGIN); needs `password_env` and `starttls`.
    /// Default: none (no authentication).
    #[serde(default = "default_username")]
    pub username: Option<String>,
    /// Name of the environment variable holding the password. Default: none.
    #[serde(default = "default_password_env")]
    pub password_env: Option<String>,
    /// Sender, such as `"weir <alerts@example.com>"`. Required.
    pub from: String,
    /// Recipients, at least one. Required.
    pub to: Vec<String>,
    /// Longest wait for each step of the SMTP conversation. Default: 30.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

const fn default_smtp_port() -> u16 {
    587
}
const fn default_starttls() -> bool {
    true
}
const fn default_ca_file() -> Option<PathBuf> {
    None
}
const fn default_username() -> Option<String> {
    None
}
const fn default_password_env() -> Option<String> {
    None
}
const fn default_timeout_secs() -> u64 {
    30
}

impl EmailConfig {
    pub fn build(&self) -> Result<EmailNotifier, String> {
        let host = self.smtp_host.trim();
        if host.is_empty() {
            return Err("email smtp_host is empty".into());
        }
        if self.smtp_port == 0 {
            return Err("email smtp_port must be 1 to 65535".into());
        }
        let from: Mailbox = self
            .from
            .parse()
            .map_err(|e| format!("email from {:?} is not an address: {e}", self.from))?;
        if self.to.is_empty() {
            return Err("email to is empty; give at least one recipient".into());
        }
        let to = self
            .to
            .iter()
            .map(|t| {
                t.parse::<Mailbox>()
                    .map_err(|e| format!("email to {t:?} is not an address: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let credentials = match (&self.username, &self.password_env) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(
                    "email username needs password_env (the variable holding the password)".into(),
                )
            }
            (None, Some(_)) => return Err("email password_env needs username".into()),
            (Some(user), Some(var)) => {
                Some((user.clone(), required_secret("email", "password_env", var)?))
            }
        };
        if credentials.is_some() && !self.starttls {
            return Err(
                "email username/password_env need starttls = true (the password would cross the network in the clear)"
                    .into(),
            );
        }
        if self.ca_file.is_some() && !self.starttls {
            return Err("email ca_file needs starttls = true".into());
        }

        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(self.smtp_port)
            .timeout(Some(Duration::from_secs(self.timeout_secs.max(1))));
        if self.starttls {
            let mut tls = TlsParameters::builder(host.to_string());
            if let Some(path) = &self.ca_file {
                let pem = std::fs::read(path).map_err(|e| {
                    format!("email ca_file {}: cannot read it: {e}", path.display())
                })?;
                let cert = Certificate::from_pem(&pem).map_err(|e| {
                    format!(
                        "email ca_file {}: not PEM certificates: {e}",
                        path.display()
                    )
                })?;
                tls = tls.add_root_certificate(cert);
            }
            let params = tls
                .build_rustls()
                .map_err(|e| format!("email: cannot set up TLS for {host}: {e}"))?;
            builder = builder.tls(Tls::Required(params));
        }
        if let Some((user, password)) = &credentials {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose().to_string(),
            ));
        }
        Ok(EmailNotifier {
            transport: builder.build(),
            host: host.to_string(),
            port: self.smtp_port,
            starttls: self.starttls,
            username: credentials.as_ref().map(|(u, _)| u.clone()),
            password: credentials.map(|(_, p)| p),
            from,
            to,
        })
    }
}

/// A built email notifier: the SMTP transport (no connection yet) and the addresses.
pub struct EmailNotifier {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    host: String,
    port: u16,
    starttls: bool,
    username: Option<String>,
    /// Only for `Debug` (redacted); the transport holds the credentials.
    password: Option<Secret>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

impl std::fmt::Debug for EmailNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailNotifier")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("starttls", &self.starttls)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("from", &self.from.to_string())
            .field(
                "to",
                &self.to.iter().map(ToString::to_string).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl EmailNotifier {
    pub async fn send(&self, n: &Notification) -> Result<(), NotifyError> {
        let message = self.message(n)?;
        self.transport
            .send(message)
            .await
            .map(drop)
            .map_err(smtp_error)
    }

    /// The message for `n`.
    pub fn message(&self, n: &Notification) -> Result<Message, NotifyError> {
        let thread = format!("<weir.{}.{}@weir>", n.fingerprint, n.starts_at.as_second());
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(subject(n))
            .references(thread.clone())
            .in_reply_to(thread)
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            b = b.to(to.clone());
        }
        b.body(body(n)).map_err(|e| NotifyError::Permanent {
            notifier: "email",
            reason: format!("cannot build the message: {e}"),
        })
    }
}

/// `[FIRING:critical] AgentTaskFailures agent_id=agent-07`, on one line.
pub fn subject(n: &Notification) -> String {
    n.title().replace(['\r', '\n'], " ")
}

/// The plain-text body.
pub fn body(n: &Notification) -> String {
    let mut out = String::new();
    if !n.summary.is_empty() {
        out.push_str(&n.summary);
        out.push_str("\n\n");
    }
    if !n.description.is_empty() {
        out.push_str(&n.description);
        out.push_str("\n\n");
    }
    let labels = n.labels_text();
    let mut rows: Vec<(&str, String)> = vec![
        ("Rule", n.rule.clone()),
        ("Severity", n.severity.to_string()),
        ("Status", n.status.to_string()),
        ("Metric", n.metric.clone()),
        (
            if n.status == Status::Resolved {
                "Last value"
            } else {
                "Value"
            },
            format!(
                "{} (threshold {})",
                format_value(n.value),
                format_value(n.threshold)
            ),
        ),
        (
            "Labels",
            if labels.is_empty() {
                "none".into()
            } else {
                labels
            },
        ),
        ("Started", n.starts_at.to_string()),
    ];
    if n.status == Status::Resolved {
        rows.push(("Resolved", n.resolved_at().to_string()));
    }
    if let Some(link) = &n.link {
        rows.push(("Link", link.clone()));
    }
    rows.push(("Fingerprint", n.fingerprint.clone()));
    for (k, v) in rows {
        out.push_str(&format!("{:<12} {v}\n", format!("{k}:")));
    }
    out.push_str("\n-- \nSent by weir.\n");
    out
}

/// SMTP 4xx, timeouts and connection trouble may pass; SMTP 5xx, client errors and a failed
/// TLS handshake (a certificate not trusted or not for `smtp_host`) will not.
fn smtp_error(e: lettre::transport::smtp::Error) -> NotifyError {
    let reason = if e.is_timeout() {
        format!("timeout: {e}")
    } else {
        e.to_string()
    };
    let permanent = e.is_permanent() || e.is_tls() || e.is_client() || tls_rejected(&e);
    if permanent {
        NotifyError::Permanent {
            notifier: "email",
            reason,
        }
    } else {
        NotifyError::Retryable {
            notifier: "email",
            reason,
            retry_after: None,
        }
    }
}

/// Whether the TLS handshake failed on what the peer sent: lettre reports it as a connection
/// error whose cause is an `io::Error` of kind `InvalidData` (tokio-rustls' wrapping of a
/// rustls error), unlike refused or reset connections.
fn tls_rejected(e: &lettre::transport::smtp::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::InvalidData;
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::notify::{sample, NotifierConfig};

    fn parse(t: &str) -> EmailConfig {
        match toml::from_str::<NotifierConfig>(t).expect("parses") {
            NotifierConfig::Email(c) => c,
            other => panic!("not email: {other:?}"),
        }
    }

    #[test]
    fn subject_and_body_read_well() {
        let n = sample::firing();
        assert_eq!(
            subject(&n),
            "[FIRING:critical] AgentTaskFailures agent_id=agent-07"
        );
        assert_eq!(
            body(&n),
            format!(
                "7 task failures in 5m on agent-07\n\n\
                 agent-07 failed more than 5 tasks in the last 5 minutes.\n\n\
                 Rule:        AgentTaskFailures\n\
                 Severity:    critical\n\
                 Status:      firing\n\
                 Metric:      agent_task_failure_total\n\
                 Value:       7 (threshold 5)\n\
                 Labels:      agent_id=agent-07\n\
                 Started:     2024-05-01T12:00:00Z\n\
                 Link:        https://grafana.example.com/d/agents?var-agent_id=agent-07\n\
                 Fingerprint: {}\n\
                 \n-- \nSent by weir.\n",
                n.fingerprint
            )
        );
        let r = sample::resolved();
        assert_eq!(
            subject(&r),
            "[RESOLVED:critical] AgentTaskFailures agent_id=agent-07"
        );
        let b = body(&r);
        assert!(b.contains("Last value:  2 (threshold 5)\n"), "{b}");
        assert!(b.contains("Resolved:    2024-05-01T12:10:00Z\n"), "{b}");
        let mut n = sample::firing();
        n.rule = "Bad\r\nBcc: x@y.z".into();
        assert!(!subject(&n).contains('\n'));
    }

    #[test]
    fn example_config_parses_with_defaults() {
        let c = parse(
            r#"
type = "email"
smtp_host = "smtp.example.com"
from = "weir <alerts@example.com>"
to = ["oncall@example.com", "Team Agents <agents@example.com>"]
"#,
        );
        assert_eq!(c.smtp_port, 587);
        assert!(c.starttls);
        assert_eq!(c.timeout_secs, 30);
        assert!(c.username.is_none() && c.password_env.is_none() && c.ca_file.is_none());
        let built = c.build().expect("builds");
        let m = built.message(&sample::firing()).expect("message");
        let text = String::from_utf8(m.formatted()).expect("utf-8");
        assert!(
            text.contains("Subject: [FIRING:critical] AgentTaskFailures agent_id=agent-07\r\n"),
            "{text}"
        );
        assert!(
            text.contains("To: oncall@example.com, \"Team Agents\" <agents@example.com>\r\n"),
            "{text}"
        );
        assert!(text.contains("References: <weir."), "{text}");
    }

    #[test]
    fn credentials_are_redacted_and_need_starttls() {
        std::env::set_var("WEIR_TEST_SMTP_PASSWORD", "correct-horse-battery");
        let c = parse(
            r#"
type = "email"
smtp_host = "smtp.example.com"
smtp_port = 2525
username = "weir"
password_env = "WEIR_TEST_SMTP_PASSWORD"
from = "alerts@example.com"
to = ["oncall@example.com"]
"#,
        );
        let built = c.build().expect("builds");
        let debug = format!("{built:?}");
        assert!(!debug.contains("correct-horse"), "{debug}");
        assert!(debug.contains("password: Some(<redacted>)"), "{debug}");

        let mut plain = c.clone();
        plain.starttls = false;
        assert_eq!(
            plain.build().unwrap_err(),
            "email username/password_env need starttls = true (the password would cross the network in the clear)"
        );
        let mut no_pw = c.clone();
        no_pw.password_env = None;
        assert_eq!(
            no_pw.build().unwrap_err(),
            "email username needs password_env (the variable holding the password)"
        );
    }

    #[test]
    fn bad_addresses_and_files_are_config_errors() {
        let base = r#"
type = "email"
smtp_host = "smtp.example.com"
from = "alerts@example.com"
to = ["oncall@example.com"]
"#;
        let mut c = parse(base);
        c.from = "not an address".into();
        let e = c.build().unwrap_err();
        assert!(
            e.starts_with("email from \"not an address\" is not an address"),
            "{e}"
        );
        let mut c = parse(base);
        c.to = vec![];
        assert_eq!(
            c.build().unwrap_err(),
            "email to is empty; give at least one recipient"
        );
        let mut c = parse(base);
        c.to.push("@nope".into());
        assert!(c
            .build()
            .unwrap_err()
            .starts_with("email to \"@nope\" is not an address"));
        let mut c = parse(base);
        c.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(c
            .build()
            .unwrap_err()
            .starts_with("email ca_file /nonexistent/ca.pem: cannot read it"));
    }
}
