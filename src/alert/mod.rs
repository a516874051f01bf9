//! Alerting: threshold rules over the derived metrics and the events, notified to Slack,
//! webhooks, PagerDuty, Alertmanager and email.
//!
//! The data flow, beside the pipeline's:
//! - [`expr`] parses a rule's expression; [`rule`] checks it against the pipeline's metrics
//!   and compiles it (`weir validate` runs exactly this);
//! - [`window`]: the hot path records each update of a watched metric (and each event an
//!   `absent()` rule matches) in per-second windows, owned by the deriver;
//! - [`engine`] evaluates the rules once per second of the pipeline's clock (wall clock live,
//!   event time in backfills): inactive → pending → firing → resolved, state under `data_dir`;
//! - [`dispatch`] sends the rendered [`notify::Notification`]s from its own tasks with retries,
//!   so notifying never stalls log processing; [`notify`] holds one sender per kind;
//! - [`template`] renders summaries; [`promrules`] writes the equivalent Prometheus rules.

pub mod dispatch;
pub mod engine;
pub mod expr;
pub mod notify;
pub mod promrules;
pub mod rule;
pub mod template;
#[cfg(test)]
mod tests;
pub mod window;
