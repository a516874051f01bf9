//! How the Loki sink reads the server's answer (status, `Retry-After`, body): any answer gives an
//! outcome, never a panic. Input: 2 bytes of status, a `Retry-After` line, then the body.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use weir::sink::loki::{LokiConfig, LokiSink};
use weir::sink::HttpSink;

fn sink() -> &'static LokiSink {
    static S: OnceLock<LokiSink> = OnceLock::new();
    S.get_or_init(|| {
        LokiConfig::with_endpoint("http://127.0.0.1:9")
            .build()
            .expect("a valid Loki config")
    })
}

/// Status, headers and body from the fuzzer's bytes.
fn answer(data: &[u8]) -> Option<(u16, HeaderMap, &[u8])> {
    let (status, rest) = data.split_at_checked(2)?;
    let status = 100 + u16::from_le_bytes([status[0], status[1]]) % 500;
    let mut headers = HeaderMap::new();
    let (line, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&rest[..0], rest),
    };
    if let Ok(v) = HeaderValue::from_bytes(line) {
        headers.insert(RETRY_AFTER, v);
    }
    Some((status, headers, body))
}

fuzz_target!(|data: &[u8]| {
    let Some((status, headers, body)) = answer(data) else {
        return;
    };
    let _ = sink().outcome(status, &headers, body, &[]);
});
