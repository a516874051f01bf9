//! Integration tests: the real `weir` binary, fed generated agent-system logs.

mod alerts;
mod container;
mod core;
mod delivery;
mod deploy;
mod elasticsearch;
mod file;
mod hostile;
mod loki;
mod pipeline_tests;
mod reload;
#[path = "../support/mod.rs"]
mod support;
mod tap;
mod tcp;
mod top;
mod util;
