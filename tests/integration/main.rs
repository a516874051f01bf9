//! Integration tests: the real `weir` binary, fed generated agent-system logs.

mod agent_shapes;
mod alerts;
mod config_habits;
mod container;
mod core;
mod delivery;
mod deploy;
mod elasticsearch;
mod exemplars;
mod file;
mod first_hour;
mod hostile;
mod http;
mod loki;
mod multiline;
mod order;
mod otlp;
mod parse_report;
mod pipeline_tests;
mod reference;
mod reload;
mod state;
mod status_page;
#[path = "../support/mod.rs"]
mod support;
mod tap;
mod tcp;
mod text_formats;
mod top;
mod util;
