//! Test doubles of the backends weir ships to, each written from the backend's public API
//! documentation (not the real server), bound to `127.0.0.1:0`.

// A shared test API: not every test binary or module uses every method.
#![allow(dead_code)]

pub mod elasticsearch;
pub mod loki;
pub mod otlp;
pub mod server;
pub mod webhook;
