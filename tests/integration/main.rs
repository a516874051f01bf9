//! Integration tests: the real `weir` binary, fed generated agent-system logs.

mod container;
mod core;
mod file;
mod tcp;
mod util;
