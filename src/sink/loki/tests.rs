//! Unit tests of the Loki sink: config, labels, both encodings (decoded back), responses.

use std::sync::Arc;

use prost::Message as _;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

use std::time::Duration;

use base64::Engine as _;

use super::sink::{classify, render_labels};
use super::*;
use crate::event::Level;
use crate::sink::{BatchConfig, HttpSink, Outcome, Request, SinkEvent};

/// The example from the module's user docs, every field set.
const EXAMPLE: &str = r#"
endpoint = "http://loki:3100"
encoding = "json"
labels = { job = "weir", component = "{{ component }}", level = "{{level}}", namespace = "{{ namespace }}", env = "prod" }
structured_metadata = ["trace_id", "pod"]
tenant_id = "team-a"
basic_auth_user = "weir"
basic_auth_password_env = "WEIR_TEST_LOKI_EXAMPLE_PASSWORD"
dead_letter_path = "/var/lib/weir/loki.dead.jsonl"

[batch]
max_bytes = 524288
max_age_ms = 500

[buffer]
max_events = 5000

[request]
timeout_secs = 10
"#;

fn config(toml_text: &str) -> LokiConfig {
    toml::from_str(toml_text).expect("valid loki config")
}

fn build_err(toml_text: &str) -> String {
    config(toml_text).build().expect_err("build must fail")
}

fn event(ts: i64, line: &str, component: Option<&str>, level: Level, trace: &str) -> SinkEvent {
    SinkEvent {
        id: format!("id-{ts}"),
        line: line.to_string(),
        timestamp: ts,
        level,
        component: component.map(str::to_string),
        message: "m".to_string(),
        trace_id: trace.to_string(),
        is_json: true,
        attrs: Vec::new(),
        source: Arc::from("stdin"),
        ack: None,
        received: 0,
        span: None,
    }
}

fn sink(toml_text: &str) -> LokiSink {
    config(toml_text).build().expect("valid sink")
}

/// An entry as decoded: timestamp, line, structured metadata.
type Entry = (i64, String, Vec<(String, String)>);

fn decode_protobuf(body: &[u8]) -> proto::PushRequest {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .expect("snappy block format");
    proto::PushRequest::decode(raw.as_slice()).expect("logproto.PushRequest")
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[test]
fn example_config_parses_with_every_field() {
    std::env::set_var("WEIR_TEST_LOKI_EXAMPLE_PASSWORD", "s3cret");
    let c = config(EXAMPLE);
    assert_eq!(c.encoding, LokiEncoding::Json);
    assert_eq!(c.labels.len(), 5);
    assert_eq!(c.structured_metadata, ["trace_id", "pod"]);
    assert_eq!(c.tenant_id.as_deref(), Some("team-a"));
    assert_eq!(c.batch.max_bytes, 524_288);
    assert_eq!(c.batch.max_age_ms, 500);
    assert_eq!(c.buffer.max_events, 5000);
    assert_eq!(c.request.timeout_secs, 10);
    assert_eq!(
        c.dead_letter_path.as_deref(),
        Some(std::path::Path::new("/var/lib/weir/loki.dead.jsonl"))
    );
    let s = c.build().expect("example builds");
    assert_eq!(s.url, "http://loki:3100/loki/api/v1/push");
    let req = s
        .encode(&[event(1, "{}", Some("c"), Level::Info, "t")])
        .expect("encode");
    assert_eq!(header(&req, "X-Scope-OrgID"), Some("team-a"));
    // base64("weir:s3cret")
    assert_eq!(
        header(&req, "Authorization"),
        Some("Basic d2VpcjpzM2NyZXQ=")
    );
    assert_eq!(header(&req, "Content-Type"), Some("application/json"));
    assert_eq!(header(&req, "Content-Encoding"), None);
}

/// The example in the module's docs parses (without the `[[sinks]]`/`type` lines that the
/// pipeline's sink enum consumes).
#[test]
fn module_doc_example_parses() {
    let doc = include_str!("mod.rs");
    let block: String = doc
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .skip_while(|l| *l != "```toml")
        .skip(1)
        .take_while(|l| *l != "```")
        .filter(|l| *l != "[[sinks]]" && !l.starts_with("type = "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(block.contains("endpoint"), "the doc example was found");
    let c = config(&block);
    assert_eq!(c.labels["namespace"], "{{ namespace }}");
    assert_eq!(c.structured_metadata, ["trace_id", "pod"]);
}

#[test]
fn defaults_and_with_endpoint_agree() {
    let c = config(r#"endpoint = "http://loki:3100/""#);
    assert_eq!(c.encoding, LokiEncoding::Protobuf);
    assert_eq!(
        c.labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        [
            ("component", "{{ component }}"),
            ("job", "weir"),
            ("level", "{{ level }}")
        ]
    );
    assert_eq!(c.structured_metadata, ["trace_id"]);
    assert!(c.tenant_id.is_none() && c.dead_letter_path.is_none());
    assert_eq!(c.batch.max_bytes, BatchConfig::default().max_bytes);
    let s = c.build().expect("defaults build");
    assert_eq!(s.url, "http://loki:3100/loki/api/v1/push");
    let w = LokiConfig::with_endpoint("http://loki:3100")
        .build()
        .expect("builds");
    assert_eq!(format!("{s:?}"), format!("{w:?}"));
}

#[test]
fn unknown_keys_are_rejected() {
    let err = toml::from_str::<LokiConfig>("endpoint = \"http://l\"\nlabel = {}\n")
        .expect_err("unknown key");
    assert!(err.to_string().contains("unknown field `label`"), "{err}");
    let err = toml::from_str::<LokiConfig>("endpoint = \"http://l\"\n[batch]\nmax_events = 1\n")
        .expect_err("unknown nested key");
    assert!(
        err.to_string().contains("unknown field `max_events`"),
        "{err}"
    );
    let err = toml::from_str::<LokiConfig>("endpoint = \"http://l\"\nencoding = \"gzip\"\n")
        .expect_err("unknown encoding");
    assert!(err.to_string().contains("unknown variant `gzip`"), "{err}");
}

#[test]
fn invalid_labels_are_rejected_at_build() {
    let cases = [
        (
            r#"labels = { "1job" = "weir" }"#,
            r#"loki label name "1job" is invalid: use letters, digits and _, not starting with a digit"#,
        ),
        (
            r#"labels = { "app-name" = "weir" }"#,
            r#"loki label name "app-name" is invalid"#,
        ),
        (
            "labels = {}",
            r#"loki labels are empty; Loki needs at least one (such as job = "weir")"#,
        ),
        (
            r#"labels = { job = "weir", trace = "{{ trace_id }}" }"#,
            r#"loki label "trace" refers to trace_id, which is unique per line"#,
        ),
        (
            r#"labels = { job = "weir", msg = "{{message}}" }"#,
            r#"loki label "msg" refers to message, which is unique per line"#,
        ),
        (
            r#"labels = { job = "weir-{{ component }}" }"#,
            r#"a value is either one field reference such as "{{ component }}" or a static string"#,
        ),
        (
            r#"labels = { job = "{{ }}" }"#,
            "a value is either one field reference",
        ),
        (
            r#"labels = { component = "{{ component }}", pod = "{{ pod }}" }"#,
            "loki labels: at least one must always have a value",
        ),
    ];
    for (labels, expected) in cases {
        let err = build_err(&format!("endpoint = \"http://loki:3100\"\n{labels}\n"));
        assert!(err.contains(expected), "{labels}: {err}");
    }
}

#[test]
fn invalid_metadata_endpoint_and_auth_are_rejected_at_build() {
    let cases = [
        (
            r#"structured_metadata = ["trace-id"]"#,
            r#"loki structured_metadata name "trace-id" is invalid"#,
        ),
        (
            r#"structured_metadata = ["message"]"#,
            r#"loki structured_metadata "message": only trace_id or source attribute names"#,
        ),
        (
            r#"structured_metadata = ["trace_id", "trace_id"]"#,
            r#"loki structured_metadata lists "trace_id" twice"#,
        ),
        (
            r#"basic_auth_user = "u""#,
            "loki basic_auth_user needs basic_auth_password_env",
        ),
        (
            r#"basic_auth_password_env = "X""#,
            "loki basic_auth_password_env needs basic_auth_user",
        ),
        (
            "basic_auth_user = \"u\"\nbasic_auth_password_env = \"WEIR_TEST_LOKI_UNSET_1\"",
            "loki basic_auth_password_env: environment variable WEIR_TEST_LOKI_UNSET_1 is not set",
        ),
        (
            r#"bearer_token_env = "WEIR_TEST_LOKI_UNSET_2""#,
            "loki bearer_token_env: environment variable WEIR_TEST_LOKI_UNSET_2 is not set",
        ),
        (
            "bearer_token_env = \"A\"\nbasic_auth_user = \"u\"",
            "basic_auth_* and bearer_token_env are exclusive",
        ),
        (r#"tenant_id = """#, "loki tenant_id is empty"),
    ];
    for (extra, expected) in cases {
        let err = build_err(&format!("endpoint = \"http://loki:3100\"\n{extra}\n"));
        assert!(err.contains(expected), "{extra}: {err}");
    }
    let err = build_err(r#"endpoint = "loki:3100""#);
    assert_eq!(
        err,
        r#"loki endpoint "loki:3100" must start with http:// or https://"#
    );
    let err = build_err(r#"endpoint = "http://loki:3100/loki/api/v1/push""#);
    assert!(err.contains("is the base URL"), "{err}");
}

#[test]
fn labels_render_sorted_with_escapes() {
    assert_eq!(
        render_labels(
            [
                ("a", "plain"),
                ("b", r#"say "hi""#),
                ("c", r"C:\dir"),
                ("d", "two\nlines")
            ]
            .into_iter()
        ),
        r#"{a="plain", b="say \"hi\"", c="C:\\dir", d="two\nlines"}"#
    );
    assert_eq!(render_labels(std::iter::empty()), "{}");

    let s = sink(
        r#"endpoint = "http://l"
labels = { zone = "eu", job = "weir", component = "{{ component }}", level = "{{ level }}", stream = "{{ stream }}", src = "{{ source }}" }"#,
    );
    let mut e = event(1, "x", Some("api \"v2\""), Level::Warning, "t");
    e.attrs.push(("stream".into(), "stderr".into()));
    let labels = s.labels_of(&e);
    let rendered = render_labels(labels.iter().map(|(k, v)| (*k, v.as_ref())));
    assert_eq!(
        rendered,
        r#"{component="api \"v2\"", job="weir", level="WARNING", src="stdin", stream="stderr", zone="eu"}"#
    );
    // Missing component and attribute: those labels are left out, not sent empty.
    let e = event(1, "x", None, Level::Info, "t");
    let labels = s.labels_of(&e);
    let rendered = render_labels(labels.iter().map(|(k, v)| (*k, v.as_ref())));
    assert_eq!(
        rendered,
        r#"{job="weir", level="INFO", src="stdin", zone="eu"}"#
    );
}

#[test]
fn protobuf_body_round_trips_with_streams_order_and_metadata() {
    let s = sink(
        r#"endpoint = "http://loki:3100"
structured_metadata = ["trace_id", "pod"]"#,
    );
    let mut events = vec![
        event(3_000_000_001, "b3", Some("b"), Level::Info, "t-b3"),
        event(2_000_000_000, "a2", Some("a"), Level::Info, "t-a2"),
        event(1_000_000_000, "a1", Some("a"), Level::Info, "t-a1"),
        event(2_000_000_000, "a2-second", Some("a"), Level::Info, ""),
        event(-1, "before-1970", Some("a"), Level::Error, "t-old"),
        event(5, "no-component", None, Level::Info, "t-n"),
    ];
    events[0].attrs.push(("pod".into(), "web-1".into()));
    let req = s.encode(&events).expect("encode");
    assert_eq!(req.url, "http://loki:3100/loki/api/v1/push");
    assert_eq!(header(&req, "Content-Type"), Some("application/x-protobuf"));
    assert_eq!(header(&req, "Content-Encoding"), Some("snappy"));
    assert_eq!(header(&req, "Authorization"), None);
    assert_eq!(header(&req, "X-Scope-OrgID"), None);

    let push = decode_protobuf(&req.body);
    let got: Vec<(String, Vec<Entry>)> = push
        .streams
        .iter()
        .map(|st| {
            assert_eq!(st.hash, 0);
            let entries = st
                .entries
                .iter()
                .map(|e| {
                    let md = e
                        .structured_metadata
                        .iter()
                        .map(|p| (p.name.clone(), p.value.clone()))
                        .collect();
                    (
                        e.timestamp.expect("timestamp").as_nanos(),
                        e.line.clone(),
                        md,
                    )
                })
                .collect();
            (st.labels.clone(), entries)
        })
        .collect();
    let md = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        got,
        vec![
            (
                r#"{component="a", job="weir", level="ERROR"}"#.to_string(),
                vec![(-1, "before-1970".to_string(), md(&[("trace_id", "t-old")]))]
            ),
            (
                r#"{component="a", job="weir", level="INFO"}"#.to_string(),
                vec![
                    (1_000_000_000, "a1".to_string(), md(&[("trace_id", "t-a1")])),
                    (2_000_000_000, "a2".to_string(), md(&[("trace_id", "t-a2")])),
                    // Same timestamp: arrival order kept; empty trace_id left out.
                    (2_000_000_000, "a2-second".to_string(), md(&[])),
                ]
            ),
            (
                r#"{component="b", job="weir", level="INFO"}"#.to_string(),
                vec![(
                    3_000_000_001,
                    "b3".to_string(),
                    md(&[("trace_id", "t-b3"), ("pod", "web-1")])
                )]
            ),
            (
                r#"{job="weir", level="INFO"}"#.to_string(),
                vec![(5, "no-component".to_string(), md(&[("trace_id", "t-n")]))]
            ),
        ]
    );
    // Timestamps before 1970 keep nanos in 0..1e9, as google.protobuf.Timestamp requires.
    let ts = push.streams[0].entries[0].timestamp.expect("timestamp");
    assert_eq!((ts.seconds, ts.nanos), (-1, 999_999_999));
}

#[test]
fn protobuf_body_is_snappy_block_format_not_framed() {
    let s = sink(r#"endpoint = "http://l""#);
    let req = s
        .encode(&[event(1, "x", Some("c"), Level::Info, "t")])
        .expect("encode");
    // The framed format starts with the stream identifier chunk 0xff 06 00 00 "sNaPpY".
    assert_ne!(req.body.first(), Some(&0xff));
    assert!(snap::raw::decompress_len(&req.body).is_ok());
}

#[test]
fn json_body_has_loki_shape() {
    std::env::set_var("WEIR_TEST_LOKI_JSON_TOKEN", "tok");
    let s = sink(
        r#"endpoint = "https://logs.example.com"
encoding = "json"
bearer_token_env = "WEIR_TEST_LOKI_JSON_TOKEN"
labels = { job = "weir", component = "{{ component }}" }"#,
    );
    let events = [
        event(20, r#"{"seq":2}"#, Some("c1"), Level::Info, "t2"),
        event(10, r#"{"seq":1}"#, Some("c1"), Level::Info, ""),
        event(30, "plain \"text\"", Some("c2"), Level::Error, "t3"),
    ];
    let req = s.encode(&events).expect("encode");
    assert_eq!(req.url, "https://logs.example.com/loki/api/v1/push");
    assert_eq!(header(&req, "Content-Type"), Some("application/json"));
    assert_eq!(header(&req, "Authorization"), Some("Bearer tok"));
    let body: serde_json::Value = serde_json::from_slice(&req.body).expect("JSON body");
    assert_eq!(
        body,
        serde_json::json!({"streams": [
            {"stream": {"component": "c1", "job": "weir"},
             "values": [["10", r#"{"seq":1}"#], ["20", r#"{"seq":2}"#, {"trace_id": "t2"}]]},
            {"stream": {"component": "c2", "job": "weir"},
             "values": [["30", "plain \"text\"", {"trace_id": "t3"}]]},
        ]})
    );
}

fn retry_after(v: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(RETRY_AFTER, HeaderValue::from_str(v).expect("header value"));
    h
}

#[test]
fn responses_are_classified() {
    let none = HeaderMap::new();
    let now: jiff::Timestamp = "2015-10-21T07:27:00Z".parse().expect("timestamp");
    assert_eq!(classify(204, &none, b"", now), Outcome::Delivered);
    assert_eq!(classify(200, &none, b"", now), Outcome::Delivered);
    assert_eq!(
        classify(
            429,
            &retry_after("7"),
            b"Ingestion rate limit exceeded",
            now
        ),
        Outcome::Retry {
            reason: "http_429".into(),
            after: Some(Duration::from_secs(7))
        }
    );
    assert_eq!(
        classify(503, &retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), b"", now),
        Outcome::Retry {
            reason: "http_503".into(),
            after: Some(Duration::from_secs(60))
        }
    );
    // A date already past: retry now. Garbage: no hint, the driver's backoff decides.
    assert_eq!(
        classify(500, &retry_after("Wed, 21 Oct 2015 07:00:00 GMT"), b"", now),
        Outcome::Retry {
            reason: "http_500".into(),
            after: Some(Duration::ZERO)
        }
    );
    assert_eq!(
        classify(502, &retry_after("soon"), b"", now),
        Outcome::Retry {
            reason: "http_502".into(),
            after: None
        }
    );
    assert_eq!(
        classify(500, &none, b"", now),
        Outcome::Retry {
            reason: "http_500".into(),
            after: None
        }
    );
    let body = b"\nentry with timestamp 2024-01-01 00:00:00 +0000 UTC ignored, reason: 'entry out of order' for stream: {job=\"weir\"},\ntotal ignored: 1 out of 3\n";
    assert_eq!(
        classify(400, &none, body, now),
        Outcome::Reject {
            reason: "http_400: entry with timestamp 2024-01-01 00:00:00 +0000 UTC ignored, reason: 'entry out of order' for stream: {job=\"weir\"},".into()
        }
    );
    assert_eq!(
        classify(413, &none, b"", now),
        Outcome::Reject {
            reason: "http_413".into()
        }
    );
    let long = "é".repeat(500);
    match classify(400, &none, long.as_bytes(), now) {
        Outcome::Reject { reason } => {
            assert_eq!(reason, format!("http_400: {}", "é".repeat(200)));
        }
        other => panic!("expected a reject, got {other:?}"),
    }
    // Through the trait, with the real clock.
    let s = sink(r#"endpoint = "http://l""#);
    match s.outcome(429, &retry_after("1"), b"", &[]) {
        Outcome::Retry { after, .. } => assert_eq!(after, Some(Duration::from_secs(1))),
        other => panic!("expected a retry, got {other:?}"),
    }
}

#[test]
fn secrets_never_appear_in_debug_output() {
    std::env::set_var("WEIR_TEST_LOKI_DEBUG_PASSWORD", "hunter2-password");
    std::env::set_var("WEIR_TEST_LOKI_DEBUG_TOKEN", "bearer-token-xyz");
    let basic = sink(
        r#"endpoint = "http://l"
basic_auth_user = "weir"
basic_auth_password_env = "WEIR_TEST_LOKI_DEBUG_PASSWORD""#,
    );
    let bearer = sink(
        r#"endpoint = "http://l"
bearer_token_env = "WEIR_TEST_LOKI_DEBUG_TOKEN""#,
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode("weir:hunter2-password");
    for text in [
        format!("{basic:?}"),
        format!("{bearer:?}"),
        format!("{basic:#?}"),
    ] {
        assert!(text.contains("<redacted>"), "{text}");
        for secret in ["hunter2-password", "bearer-token-xyz", encoded.as_str()] {
            assert!(!text.contains(secret), "secret in Debug output: {text}");
        }
    }
}
