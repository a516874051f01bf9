use std::io::Read as _;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
use prost::Message as _;

use super::sink::classify;
use super::*;
use crate::derive::span::{AttrValue, Span, SpanKind, SpanStatus};
use crate::event::Level;
use crate::sink::{HttpSink, Outcome, SinkConfig};

fn config(toml: &str) -> OtlpConfig {
    match toml::from_str::<SinkConfig>(toml).unwrap() {
        SinkConfig::Otlp(c) => c,
        other => panic!("not otlp: {other:?}"),
    }
}

fn event(line: &str, span: Option<Span>) -> SinkEvent {
    SinkEvent {
        id: "i".into(),
        line: line.into(),
        timestamp: 1_704_067_200_123_000_000,
        level: Level::Warning,
        component: Some("bus".into()),
        message: "Task completed".into(),
        trace_id: "5f0c3e9a-1b2c-4d5e-8f90-a1b2c3d4e5f6".into(),
        is_json: true,
        attrs: vec![("pod".into(), "p-1".into())],
        source: Arc::from("stdin"),
        ack: None,
        received: 1_704_067_201_000_000_000,
        span: span.map(Arc::new),
    }
}

fn span() -> Span {
    Span {
        trace_id: [7; 16],
        span_id: [1, 2, 3, 4, 5, 6, 7, 8],
        parent_span_id: Some([9; 8]),
        name: "agent.task".into(),
        kind: SpanKind::Internal,
        start_ns: 1_000,
        end_ns: 2_000,
        status: SpanStatus::Error,
        status_message: "failure".into(),
        attributes: vec![
            ("agent.id".into(), AttrValue::Str("a-7".into())),
            ("n".into(), AttrValue::Int(3)),
        ],
    }
}

fn s(v: &str) -> Option<V> {
    Some(V::StringValue(v.into()))
}

#[test]
fn the_example_config_parses_and_builds_both_signals() {
    std::env::set_var("WEIR_TEST_OTLP_KEY", "sekrit");
    let c = config(
        r#"
type = "otlp"
endpoint = "http://collector:4318/"
signals = ["traces", "logs"]
service_name = "agents"
resource = { "deployment.environment" = "prod" }
compression = "gzip"
headers = { "x-tenant" = "a" }
headers_env = { "x-api-key" = "WEIR_TEST_OTLP_KEY" }
"#,
    );
    let sinks = c.build().unwrap();
    let t = sinks.traces.expect("traces");
    let l = sinks.logs.expect("logs");
    assert_eq!(t.url, "http://collector:4318/v1/traces");
    assert_eq!(l.url, "http://collector:4318/v1/logs");
    let req = l.encode(&[event("{}", None)]).unwrap();
    let h = |n: &str| {
        req.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(h("Content-Type"), Some("application/x-protobuf"));
    assert_eq!(h("Content-Encoding"), Some("gzip"));
    assert_eq!(h("x-api-key"), Some("sekrit"));
    assert_eq!(h("x-tenant"), Some("a"));
    // Secrets stay out of Debug output.
    assert!(!format!("{l:?}").contains("sekrit"), "{l:?}");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&req.body[..])
        .read_to_end(&mut raw)
        .unwrap();
    let decoded = ExportLogsServiceRequest::decode(&raw[..]).unwrap();
    let res = decoded.resource_logs[0].resource.as_ref().unwrap();
    let attrs: Vec<(&str, Option<V>)> = res
        .attributes
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.clone().and_then(|v| v.value)))
        .collect();
    assert_eq!(
        attrs,
        vec![
            ("service.name", s("agents")),
            ("deployment.environment", s("prod"))
        ]
    );
}

#[test]
fn endpoints_and_signals_are_checked() {
    let err = |t: &str| config(t).build().unwrap_err();
    assert!(err("type = \"otlp\"\n").contains("needs `endpoint`"));
    assert!(
        err("type = \"otlp\"\nendpoint = \"collector:4318\"\n").contains("must start with http")
    );
    assert!(err("type = \"otlp\"\nendpoint = \"http://c:4318/v1/traces\"\n").contains("base URL"));
    assert!(err("type = \"otlp\"\nendpoint = \"http://c\"\nsignals = []\n").contains("empty"));
    assert!(err(
        "type = \"otlp\"\nendpoint = \"http://c\"\nheaders_env = { a = \"WEIR_NO_SUCH_VAR_X\" }\n"
    )
    .contains("WEIR_NO_SUCH_VAR_X is not set"));
    assert!(err(
        "type = \"otlp\"\nendpoint = \"http://c\"\nresource = { \"service.name\" = \"x\" }\n"
    )
    .contains("service_name"));
    // Own endpoints are used as they are; one signal only.
    let c = config(
        "type = \"otlp\"\nsignals = [\"logs\"]\nlogs_endpoint = \"http://loki:3100/otlp/v1/logs\"\n",
    );
    let b = c.build().unwrap();
    assert!(b.traces.is_none());
    assert_eq!(b.logs.unwrap().url, "http://loki:3100/otlp/v1/logs");
    let e = toml::from_str::<SinkConfig>(
        "type = \"otlp\"\nendpoint = \"http://c\"\nsignals = [\"metrics\"]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown variant `metrics`"), "{e}");
}

#[test]
fn a_log_record_on_the_wire() {
    let c = config("type = \"otlp\"\nendpoint = \"http://c\"\n");
    let l = c.build().unwrap().logs.unwrap();
    let line = "{\"timestamp\":\"x\",\"level\":\"WARNING\",\"message\":\"Task completed\",\"trace_id\":\"t\",\"metadata\":{\"agent_id\":\"a-7\",\"duration\":1.5,\"retries\":2,\"ok\":true,\"tags\":[\"x\",1],\"nothing\":null}}\nTraceback (most recent call last):";
    let req = l.encode(&[event(line, Some(span()))]).unwrap();
    let d = ExportLogsServiceRequest::decode(&req.body[..]).unwrap();
    let r = &d.resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(r.time_unix_nano, 1_704_067_200_123_000_000);
    assert_eq!(r.observed_time_unix_nano, 1_704_067_201_000_000_000);
    assert_eq!(
        (r.severity_number, r.severity_text.as_str()),
        (13, "WARNING")
    );
    assert_eq!(
        r.body.as_ref().and_then(|b| b.value.clone()),
        s("Task completed")
    );
    assert_eq!(
        r.trace_id,
        [
            0x5f, 0x0c, 0x3e, 0x9a, 0x1b, 0x2c, 0x4d, 0x5e, 0x8f, 0x90, 0xa1, 0xb2, 0xc3, 0xd4,
            0xe5, 0xf6
        ]
    );
    assert_eq!(r.span_id, [1, 2, 3, 4, 5, 6, 7, 8]);
    let attrs: Vec<(&str, Option<V>)> = r
        .attributes
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.clone().and_then(|v| v.value)))
        .collect();
    let tags = V::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
        values: vec![
            opentelemetry_proto::tonic::common::v1::AnyValue { value: s("x") },
            opentelemetry_proto::tonic::common::v1::AnyValue {
                value: Some(V::IntValue(1)),
            },
        ],
    });
    assert_eq!(
        attrs,
        vec![
            ("component", s("bus")),
            ("metadata.agent_id", s("a-7")),
            ("metadata.duration", Some(V::DoubleValue(1.5))),
            ("metadata.retries", Some(V::IntValue(2))),
            ("metadata.ok", Some(V::BoolValue(true))),
            ("metadata.tags", Some(tags)),
            (
                "exception.stacktrace",
                s("Traceback (most recent call last):")
            ),
            ("pod", s("p-1")),
        ]
    );
}

#[test]
fn severity_numbers_follow_the_otlp_mapping() {
    let got: Vec<i32> = Level::ALL.iter().map(|l| severity(*l).0).collect();
    assert_eq!(got, [0, 1, 5, 9, 10, 13, 17, 21]);
}

#[test]
fn spans_on_the_wire_only_events_with_one() {
    let c = config("type = \"otlp\"\nendpoint = \"http://c\"\n");
    let t = c.build().unwrap().traces.unwrap();
    let req = t
        .encode(&[event("{}", Some(span())), event("{}", None)])
        .unwrap();
    let d = ExportTraceServiceRequest::decode(&req.body[..]).unwrap();
    let spans = &d.resource_spans[0].scope_spans[0].spans;
    assert_eq!(spans.len(), 1);
    let p = &spans[0];
    assert_eq!(p.trace_id, vec![7; 16]);
    assert_eq!(p.span_id, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(p.parent_span_id, vec![9; 8]);
    assert_eq!(
        (p.start_time_unix_nano, p.end_time_unix_nano),
        (1_000, 2_000)
    );
    assert_eq!(p.kind, 1);
    let st = p.status.as_ref().unwrap();
    assert_eq!((st.code, st.message.as_str()), (2, "failure"));
    assert_eq!(
        p.attributes[1].value.clone().and_then(|v| v.value),
        Some(V::IntValue(3))
    );
    assert_eq!(
        d.resource_spans[0].scope_spans[0]
            .scope
            .as_ref()
            .unwrap()
            .name,
        "weir"
    );
}

#[test]
fn responses_per_the_otlp_http_spec() {
    let now = jiff::Timestamp::now();
    let none = reqwest::header::HeaderMap::new();
    assert_eq!(classify(200, &none, b"", now), Outcome::Delivered);
    for st in [429, 502, 503, 504] {
        assert!(
            matches!(classify(st, &none, b"", now), Outcome::Retry { .. }),
            "{st}"
        );
    }
    let mut ra = reqwest::header::HeaderMap::new();
    ra.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
    assert_eq!(
        classify(503, &ra, b"", now),
        Outcome::Retry {
            reason: "http_503".into(),
            after: Some(std::time::Duration::from_secs(7))
        }
    );
    // Not retryable: the google.rpc.Status message is the reason.
    #[derive(Clone, PartialEq, prost::Message)]
    struct St {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
    }
    let mut pb = reqwest::header::HeaderMap::new();
    pb.insert(
        reqwest::header::CONTENT_TYPE,
        "application/x-protobuf".parse().unwrap(),
    );
    let body = St {
        code: 3,
        message: "invalid trace id".into(),
    }
    .encode_to_vec();
    assert_eq!(
        classify(400, &pb, &body, now),
        Outcome::Reject {
            reason: "http_400: invalid trace id".into()
        }
    );
    assert!(matches!(
        classify(500, &none, b"oops", now),
        Outcome::Reject { .. }
    ));
}

#[test]
fn partial_success_is_counted_and_delivered() {
    let selfm = crate::telemetry::SelfMetrics::new();
    let m = driver::SinkMetrics::new(&selfm, "otlp/logs");
    let c = config("type = \"otlp\"\nendpoint = \"http://c\"\n");
    let l = c.build().unwrap().logs.unwrap().with_metrics(m.clone());
    let body = ExportLogsServiceResponse {
        partial_success: Some(ExportLogsPartialSuccess {
            rejected_log_records: 2,
            error_message: "2 records too old".into(),
        }),
    }
    .encode_to_vec();
    let out = l.outcome(200, &reqwest::header::HeaderMap::new(), &body, &[]);
    assert_eq!(out, Outcome::Delivered);
    assert_eq!(
        m.dropped
            .with_label_values(&["otlp/logs", "partial_success"])
            .get(),
        2
    );
}

#[test]
fn the_traces_dead_letter_file_sits_beside_the_logs_one() {
    assert_eq!(
        traces_path(std::path::Path::new("/d/otlp.ndjson")),
        std::path::PathBuf::from("/d/otlp-traces.ndjson")
    );
    assert_eq!(
        traces_path(std::path::Path::new("/d/dead")),
        std::path::PathBuf::from("/d/dead-traces")
    );
}
