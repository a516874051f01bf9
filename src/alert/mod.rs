//! Alerting (issue 5): threshold rules over the derived metrics and the events, notified to
//! Slack, webhooks, PagerDuty, Alertmanager and email.
//!
//! # State
//! Being built. What exists: [`notify`], the notifiers — the alert as it is sent
//! ([`notify::Notification`]), their configs (`type = "slack" | "webhook" | "pagerduty" |
//! "alertmanager" | "email"`) and one `send` per notification. Still to come: the rules
//! (`rule.rs`: parse, checked by `weir validate`) and their evaluation (`eval.rs`: windows,
//! `for`, inactive → pending → firing → resolved, state under `data_dir`), which will render
//! notifications and hand them to the notifiers from their own task, off the pipeline's path.

pub mod notify;
