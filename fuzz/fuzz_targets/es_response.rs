//! How the Elasticsearch sink reads a `_bulk` answer (item by item, ids matched, error JSON for
//! rejects, `Retry-After`): any answer gives an outcome, never a panic, and a partial outcome
//! only names positions of the request. Input: 2 bytes of status, a byte of event count, a
//! `Retry-After` line, then the body. The events' ids are "0", "1", ...
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use weir::sink::elasticsearch::{ElasticsearchConfig, ElasticsearchSink};
use weir::sink::{HttpSink, Outcome, SinkEvent};
use weir::Level;

fn sink() -> &'static ElasticsearchSink {
    static S: OnceLock<ElasticsearchSink> = OnceLock::new();
    S.get_or_init(|| {
        ElasticsearchConfig::with_endpoint("http://127.0.0.1:9")
            .build()
            .expect("a valid Elasticsearch config")
    })
}

fn event(i: usize) -> SinkEvent {
    SinkEvent {
        id: i.to_string(),
        line: "{}".into(),
        timestamp: 0,
        level: Level::Info,
        component: None,
        message: String::new(),
        trace_id: String::new(),
        is_json: true,
        attrs: Vec::new(),
        source: Arc::from("fuzz"),
        ack: None,
        received: 0,
        span: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_at_checked(3) else {
        return;
    };
    let status = 100 + u16::from_le_bytes([head[0], head[1]]) % 500;
    let events: Vec<SinkEvent> = (0..usize::from(head[2] % 8)).map(event).collect();
    let mut headers = HeaderMap::new();
    let (line, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&rest[..0], rest),
    };
    if let Ok(v) = HeaderValue::from_bytes(line) {
        headers.insert(RETRY_AFTER, v);
    }
    if let Outcome::Partial { retry, dead } = sink().outcome(status, &headers, body, &events) {
        assert!(retry.iter().all(|&i| i < events.len()));
        assert!(dead.iter().all(|(i, _)| *i < events.len()));
    }
});
