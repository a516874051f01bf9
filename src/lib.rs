//! weir: a log-pipeline processor. Structured JSON logs in; Prometheus metrics out (and, in
//! later stages, log shipping and alerts).
//!
//! # Layout, in data-flow order
//! - [`source`]: stdin, files (tailed through rotation, checkpointed), TCP; Docker/CRI
//!   envelopes unwrapped; multi-line events (tracebacks) joined; lines cut into batches; the
//!   bounded channel is the backpressure.
//! - [`parse`]: line to [`event::Event`]: selective JSON capture, timestamps, levels, trace ids.
//! - [`derive`]: `[[metrics]]` of a pipeline: conditions, labels, series limits and expiry.
//! - [`processor`]: the hot path: parse workers on every core, then derive on one thread, in
//!   order. [`topology`]: wires sources, processor, sinks and server; [`shutdown`]: signals and drain.
//! - [`sink`]: Loki, Elasticsearch, stdout, file: batching, retries, dead letters, disk buffer.
//! - [`alert`]: notifiers (Slack, webhook, PagerDuty, Alertmanager, email); rules to come.
//! - [`server`]: `/metrics`, `/health`, `/ready`. [`telemetry`]: weir's own logs and metrics.
//! - [`top`]: `weir top`, a running weir's own numbers (`GET /stats`), refreshed.
//! - [`tap`]: `weir tap`, the live events of a running weir (filtered, rate-limited).
//! - [`progress`]: stderr shared by the logs and the `--oneshot` progress bar.
//! - [`config`]: pipeline files, loaded and compiled; [`cli`]: the command line.
//! - [`interpolate`]: `${VAR}` and `${VAR:-default}` in pipeline files, mapped back for errors.
//! - [`located`]: file:line:column errors and "did you mean", shared by every compiler (a leaf).
//! - [`pipeline_test`]: `weir test`, the unit tests carried in pipeline files (`[[tests]]`).
//! - [`generate`]: deterministic demo logs of the agent system.
//! - [`dashboard`]: `weir generate grafana-dashboard`, a Grafana dashboard for a pipeline's metrics.

pub mod additions;
pub mod alert;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod derive;
pub mod event;
pub mod explain;
pub mod generate;
pub mod interpolate;
pub mod located;
pub mod parse;
pub mod pipeline_test;
pub mod processor;
pub mod progress;
pub mod redact;
pub mod reference;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod tap;
pub mod telemetry;
pub mod top;
pub mod topology;

pub use config::{CompiledPipeline, PipelineConfig};
pub use event::{Event, Level};
