//! Unit tests of the Elasticsearch sink: config, index names, the bulk body, responses.

use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

use super::config::IndexName;
use super::sink::classify;
use super::*;
use crate::event::Level;
use crate::sink::parse_retry_after;
use crate::sink::{HttpSink, Outcome, Request, SinkEvent};

/// The example of the user docs with every field set.
const EXAMPLE: &str = r#"
endpoint = "https://es.example.com:9200/"
index = "weir-%Y.%m.%d"
mode = "index"
compression = "gzip"
api_key_env = "WEIR_TEST_ES_EXAMPLE_API_KEY"
dead_letter_path = "/var/lib/weir/elasticsearch.dead.jsonl"

[batch]
max_bytes = 5242880
max_age_ms = 500

[buffer]
max_events = 5000

[request]
timeout_secs = 60
"#;

/// 2024-03-09T23:59:59Z in nanoseconds.
const LAST_SECOND_OF_MARCH_9: i64 = 1_710_028_799_000_000_000;

fn config(toml_text: &str) -> ElasticsearchConfig {
    toml::from_str(toml_text).expect("valid elasticsearch config")
}

fn sink(toml_text: &str) -> ElasticsearchSink {
    config(toml_text).build().expect("valid sink")
}

fn build_err(toml_text: &str) -> String {
    config(toml_text).build().expect_err("build must fail")
}

fn event(id: &str, ts: i64, line: &str) -> SinkEvent {
    SinkEvent {
        id: id.to_string(),
        line: line.to_string(),
        timestamp: ts,
        level: Level::Info,
        component: Some("api".to_string()),
        message: "m".to_string(),
        trace_id: "t".to_string(),
        is_json: true,
        attrs: Vec::new(),
        source: Arc::from("stdin"),
        ack: None,
        received: 0,
        span: None,
    }
}

fn events(n: usize) -> Vec<SinkEvent> {
    (0..n)
        .map(|i| event(&format!("id-{i}"), LAST_SECOND_OF_MARCH_9, "{}"))
        .collect()
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn text(req: &Request) -> String {
    String::from_utf8(req.body.clone()).expect("an uncompressed body is UTF-8")
}

/// The action lines of a body: (index, id).
fn actions(body: &str) -> Vec<(String, String)> {
    body.lines()
        .step_by(2)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("action line is JSON");
            (
                v["create"]["_index"].as_str().expect("_index").to_string(),
                v["create"]["_id"].as_str().expect("_id").to_string(),
            )
        })
        .collect()
}

#[test]
fn example_config_parses_with_every_field() {
    std::env::set_var(
        "WEIR_TEST_ES_EXAMPLE_API_KEY",
        "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==",
    );
    let c = config(EXAMPLE);
    assert_eq!(c.index, "weir-%Y.%m.%d");
    assert_eq!(c.mode, EsMode::Index);
    assert_eq!(c.compression, EsCompression::Gzip);
    assert_eq!(
        c.api_key_env.as_deref(),
        Some("WEIR_TEST_ES_EXAMPLE_API_KEY")
    );
    assert_eq!(c.batch.max_bytes, 5_242_880);
    assert_eq!(c.batch.max_age_ms, 500);
    assert_eq!(c.buffer.max_events, 5000);
    assert_eq!(c.request.timeout_secs, 60);
    assert_eq!(
        c.dead_letter_path.as_deref(),
        Some(std::path::Path::new(
            "/var/lib/weir/elasticsearch.dead.jsonl"
        ))
    );
    let s = c.build().expect("example builds");
    assert_eq!(s.url, "https://es.example.com:9200/_bulk");
    let req = s.encode(&events(1)).expect("encode");
    assert_eq!(req.url, "https://es.example.com:9200/_bulk");
    assert_eq!(header(&req, "Content-Type"), Some("application/x-ndjson"));
    assert_eq!(header(&req, "Content-Encoding"), Some("gzip"));
    assert_eq!(
        header(&req, "Authorization"),
        Some("ApiKey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==")
    );
}

/// The example in the module's docs parses (without the `[[sinks]]`/`type` lines that the
/// pipeline's sink enum consumes, and with its `[sinks.x]` tables as `[x]`).
#[test]
fn module_doc_example_parses_and_builds() {
    std::env::set_var("WEIR_ES_PASSWORD", "from-the-doc-example");
    let doc = include_str!("mod.rs");
    let block: String = doc
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .skip_while(|l| *l != "```toml")
        .skip(1)
        .take_while(|l| *l != "```")
        .filter(|l| *l != "[[sinks]]" && !l.starts_with("type = "))
        .map(|l| format!("{}\n", l.replace("[sinks.", "[")))
        .collect();
    assert!(block.contains("endpoint"), "the doc example was found");
    let c = config(&block);
    assert_eq!(c.index, "weir-%Y.%m.%d");
    assert_eq!(c.username.as_deref(), Some("weir"));
    assert_eq!(c.request.timeout_secs, 60);
    c.build().expect("the doc example builds");
}

#[test]
fn defaults_and_with_endpoint_agree() {
    let c = config(r#"endpoint = "http://es:9200""#);
    assert_eq!(c.index, "logs-weir-%Y.%m.%d");
    assert_eq!(c.mode, EsMode::Index);
    assert_eq!(c.compression, EsCompression::None);
    assert_eq!(
        (&c.username, &c.password_env, &c.api_key_env),
        (&None, &None, &None)
    );
    assert_eq!(c.dead_letter_path, None);
    assert_eq!(c.request.timeout_secs, 30);
    let w = ElasticsearchConfig::with_endpoint("http://es:9200");
    assert_eq!(format!("{c:?}"), format!("{w:?}"));

    let s = c.build().expect("defaults build");
    assert_eq!(s.url, "http://es:9200/_bulk");
    let req = s.encode(&events(1)).expect("encode");
    assert_eq!(header(&req, "Content-Encoding"), None);
    assert_eq!(header(&req, "Authorization"), None);
}

#[test]
fn unknown_keys_and_values_are_rejected() {
    let err =
        toml::from_str::<ElasticsearchConfig>("endpoint = \"http://es:9200\"\nindx = \"logs\"\n")
            .expect_err("unknown key");
    assert!(err.to_string().contains("unknown field `indx`"), "{err}");
    let err = toml::from_str::<ElasticsearchConfig>(
        "endpoint = \"http://es:9200\"\n[request]\ntimeout = 3\n",
    )
    .expect_err("unknown key in [request]");
    assert!(err.to_string().contains("unknown field `timeout`"), "{err}");
    let err =
        toml::from_str::<ElasticsearchConfig>("endpoint = \"http://es:9200\"\nmode = \"alias\"\n")
            .expect_err("unknown mode");
    assert!(
        err.to_string()
            .contains("unknown variant `alias`, expected `index` or `data_stream`"),
        "{err}"
    );
    let err = toml::from_str::<ElasticsearchConfig>(
        "endpoint = \"http://es:9200\"\ncompression = \"zstd\"\n",
    )
    .expect_err("unknown compression");
    assert!(err.to_string().contains("unknown variant `zstd`"), "{err}");
    let err = toml::from_str::<ElasticsearchConfig>("index = \"x\"\n").expect_err("no endpoint");
    assert!(
        err.to_string().contains("missing field `endpoint`"),
        "{err}"
    );
}

#[test]
fn endpoints_and_index_names_are_checked_at_build() {
    let ep = |e: &str| build_err(&format!("endpoint = {e:?}"));
    assert_eq!(
        ep("es:9200"),
        "elasticsearch endpoint \"es:9200\" must start with http:// or https://"
    );
    assert_eq!(
        ep("http://es:9200/_bulk"),
        "elasticsearch endpoint \"http://es:9200/_bulk\" is the base URL (such as http://es:9200); weir adds /_bulk"
    );
    assert!(ep("http://es:9200/?pretty").contains("without query"));
    // A path prefix (a proxy) is fine.
    let s = sink(r#"endpoint = "http://proxy/es/""#);
    assert_eq!(s.url, "http://proxy/es/_bulk");

    let idx = |i: &str| build_err(&format!("endpoint = \"http://es:9200\"\nindex = {i:?}"));
    assert_eq!(
        idx("logs-%Q"),
        "elasticsearch index \"logs-%Q\": %Q is not a date part; use %Y %y %m %d %H %j %G %V"
    );
    assert_eq!(
        idx("logs-%"),
        "elasticsearch index \"logs-%\": a lone % is not a date part; use %Y %y %m %d %H %j %G %V"
    );
    assert_eq!(
        idx("Logs-%Y"),
        "elasticsearch index \"Logs-%Y\" (such as \"Logs-2024\") must be lowercase"
    );
    assert!(idx("logs weir").contains("must not contain ' '"));
    assert!(idx("logs,weir").contains("must not contain ','"));
    assert!(idx("logs/%Y").contains("must not contain '/'"));
    assert!(idx("logs:%Y").contains("must not contain ':'"));
    assert!(idx("_logs").contains("must not start with"));
    assert!(idx("-logs").contains("must not start with"));
    assert!(idx("").contains("is empty"));
    assert!(idx("..").contains("cannot be . or .."));
    assert!(idx(&format!("{}-%Y", "a".repeat(251))).contains("is 256 bytes long"));
    assert!(config(&format!(
        "endpoint = \"http://es:9200\"\nindex = \"{}-%Y\"",
        "a".repeat(250)
    ))
    .build()
    .is_ok());

    let ds = |i: &str| {
        build_err(&format!(
            "endpoint = \"http://es:9200\"\nmode = \"data_stream\"\nindex = {i:?}"
        ))
    };
    assert!(
        build_err("endpoint = \"http://es:9200\"\nmode = \"data_stream\"")
            .contains("in data_stream mode the index is the data stream's name, used verbatim"),
        "the default template is refused in data_stream mode"
    );
    assert!(ds(".ds-logs-weir-default").contains("must not start with .ds-"));
    assert!(ds("Logs-weir-default").contains("must be lowercase"));
}

#[test]
fn auth_is_checked_at_build() {
    let base = "endpoint = \"http://es:9200\"\n";
    let err = |extra: &str| build_err(&format!("{base}{extra}"));
    assert_eq!(
        err("username = \"weir\""),
        "elasticsearch username needs password_env (the variable holding the password)"
    );
    assert_eq!(
        err("password_env = \"X\""),
        "elasticsearch password_env needs username"
    );
    assert_eq!(
        err("username = \"weir\"\npassword_env = \"X\"\napi_key_env = \"Y\""),
        "elasticsearch: username/password_env and api_key_env are exclusive; choose one"
    );
    assert_eq!(
        err("username = \"weir\"\npassword_env = \"WEIR_TEST_ES_UNSET_VARIABLE\""),
        "elasticsearch password_env: environment variable WEIR_TEST_ES_UNSET_VARIABLE is not set"
    );
    std::env::set_var("WEIR_TEST_ES_EMPTY", "");
    assert_eq!(
        err("api_key_env = \"WEIR_TEST_ES_EMPTY\""),
        "elasticsearch api_key_env: environment variable WEIR_TEST_ES_EMPTY is empty"
    );
    std::env::set_var("WEIR_TEST_ES_NEWLINE", "abc\ndef");
    assert_eq!(
        err("api_key_env = \"WEIR_TEST_ES_NEWLINE\""),
        "elasticsearch: the secret holds characters not allowed in an HTTP header"
    );
    std::env::set_var("WEIR_TEST_ES_PW", "p");
    assert!(err("username = \"a:b\"\npassword_env = \"WEIR_TEST_ES_PW\"").contains("without ':'"));
}

#[test]
fn index_names_come_from_each_events_own_time_in_utc() {
    let name = |template: &str, ts: i64| {
        IndexName::parse(template)
            .expect("valid template")
            .render(ts)
    };
    let before_midnight = LAST_SECOND_OF_MARCH_9 + 999_999_999;
    let midnight = LAST_SECOND_OF_MARCH_9 + 1_000_000_000;
    assert_eq!(
        name("logs-weir-%Y.%m.%d", before_midnight),
        "logs-weir-2024.03.09"
    );
    assert_eq!(name("logs-weir-%Y.%m.%d", midnight), "logs-weir-2024.03.10");
    assert_eq!(name("h-%Y%m%d%H", before_midnight), "h-2024030923");
    assert_eq!(name("h-%Y%m%d%H", midnight), "h-2024031000");
    // 2021-01-03T05:00:00Z: day 3 of 2021, ISO week 53 of 2020.
    let jan3 = 1_609_650_000 * 1_000_000_000;
    assert_eq!(name("d-%y-%j", jan3), "d-21-003");
    assert_eq!(name("w-%G.%V", jan3), "w-2020.53");
}

#[test]
fn percent_percent_is_refused() {
    // Kept out on purpose: `%` has no place in an index name.
    assert!(IndexName::parse("a-%%").is_err());
}

#[test]
fn bulk_body_names_the_index_of_each_event_and_data_streams_verbatim() {
    let s = sink("endpoint = \"http://es:9200\"");
    let evs = vec![
        event("a", LAST_SECOND_OF_MARCH_9, "{}"),
        event("b", LAST_SECOND_OF_MARCH_9 + 1_000_000_000, "{}"),
        event("c", LAST_SECOND_OF_MARCH_9 - 3_600_000_000_000, "{}"),
        event("d", LAST_SECOND_OF_MARCH_9, "{}"),
    ];
    let body = text(&s.encode(&evs).expect("encode"));
    assert_eq!(
        actions(&body),
        [
            ("logs-weir-2024.03.09", "a"),
            ("logs-weir-2024.03.10", "b"),
            ("logs-weir-2024.03.09", "c"),
            ("logs-weir-2024.03.09", "d"),
        ]
        .map(|(i, d)| (i.to_string(), d.to_string()))
    );

    let ds = sink(
        "endpoint = \"http://es:9200\"\nmode = \"data_stream\"\nindex = \"logs-weir-default\"",
    );
    let body = text(&ds.encode(&evs).expect("encode"));
    assert!(actions(&body)
        .iter()
        .all(|(index, _)| index == "logs-weir-default"));
    assert!(body.starts_with(r#"{"create":{"_index":"logs-weir-default","_id":"a"}}"#));

    // A fixed name in index mode is used as written too.
    let fixed = sink("endpoint = \"http://es:9200\"\nindex = \"weir\"");
    assert!(actions(&text(&fixed.encode(&evs).expect("encode")))
        .iter()
        .all(|(index, _)| index == "weir"));
}

/// The exact bulk body for a fixed event: an action line, the document with the line's own
/// normalised fields first, then the line's other fields (nested objects, arrays, escapes kept as
/// written), then the source's attributes; a trailing newline.
#[test]
fn bulk_body_has_the_exact_ndjson_shape() {
    let s = sink("endpoint = \"http://es:9200\"");
    let mut ev = event(
        "0123456789abcdef0123456789abcdef",
        LAST_SECOND_OF_MARCH_9 + 500_000_000,
        r#"{"timestamp":"2024-03-09T23:59:59.5Z","level":"warn","msg":"disk \"full\"\nretry","metadata":{"agent":{"id":"a-1"},"n":3},"tags":["x","y"]}"#,
    );
    ev.level = Level::Warning;
    ev.component = Some("disk".to_string());
    ev.message = "disk full".to_string();
    ev.trace_id = "t-1".to_string();
    ev.attrs = vec![("pod".to_string(), "web-1".to_string())];
    let mut plain = event(
        "fedcba9876543210fedcba9876543210",
        LAST_SECOND_OF_MARCH_9,
        "not json",
    );
    plain.is_json = false;
    plain.component = None;
    plain.message = "not json".to_string();
    let req = s.encode(&[ev, plain]).expect("encode");
    let expected = concat!(
        r#"{"create":{"_index":"logs-weir-2024.03.09","_id":"0123456789abcdef0123456789abcdef"}}"#,
        "\n",
        r#"{"@timestamp":"2024-03-09T23:59:59.5Z","level":"WARNING","component":"disk","message":"disk full","trace_id":"t-1","timestamp":"2024-03-09T23:59:59.5Z","msg":"disk \"full\"\nretry","metadata":{"agent":{"id":"a-1"},"n":3},"tags":["x","y"],"pod":"web-1"}"#,
        "\n",
        r#"{"create":{"_index":"logs-weir-2024.03.09","_id":"fedcba9876543210fedcba9876543210"}}"#,
        "\n",
        r#"{"@timestamp":"2024-03-09T23:59:59Z","level":"INFO","message":"not json","trace_id":"t"}"#,
        "\n",
    );
    assert_eq!(text(&req), expected);
    assert_eq!(header(&req, "Content-Type"), Some("application/x-ndjson"));
}

#[test]
fn gzip_body_round_trips() {
    let plain = sink("endpoint = \"http://es:9200\"");
    let gz = sink("endpoint = \"http://es:9200\"\ncompression = \"gzip\"");
    let evs: Vec<SinkEvent> = (0..200)
        .map(|i| {
            event(
                &format!("{i:032x}"),
                LAST_SECOND_OF_MARCH_9 + i,
                &format!(r#"{{"seq":{i},"nested":{{"k":"v{i}"}}}}"#),
            )
        })
        .collect();
    let raw = plain.encode(&evs).expect("encode").body;
    let req = gz.encode(&evs).expect("encode");
    assert_eq!(header(&req, "Content-Encoding"), Some("gzip"));
    assert_eq!(&req.body[..2], [0x1f, 0x8b], "gzip magic");
    assert!(req.body.len() < raw.len() / 3, "compresses");
    let mut back = Vec::new();
    flate2::read::GzDecoder::new(req.body.as_slice())
        .read_to_end(&mut back)
        .expect("valid gzip");
    assert_eq!(back, raw);
}

/// One item of a bulk response: `_id`, status, and the error's type and reason.
type Item<'a> = (&'a str, u16, Option<(&'a str, &'a str)>);

/// A bulk response as Elasticsearch writes it: one `create` item per (id, status, error).
fn bulk_response(items: &[Item<'_>]) -> Vec<u8> {
    let errors = items.iter().any(|(_, _, e)| e.is_some());
    let items: Vec<serde_json::Value> = items
        .iter()
        .map(|(id, status, error)| {
            let mut item = serde_json::json!({"_index": "logs-weir-2024.03.09", "_id": id});
            match error {
                None => {
                    item["_version"] = 1.into();
                    item["result"] = "created".into();
                    item["_shards"] = serde_json::json!({"total": 2, "successful": 1, "failed": 0});
                    item["_seq_no"] = 0.into();
                    item["_primary_term"] = 1.into();
                    item["status"] = (*status).into();
                }
                Some((kind, reason)) => {
                    item["status"] = (*status).into();
                    item["error"] = serde_json::json!({
                        "type": kind, "reason": reason,
                        "index_uuid": "aAsFqTI0Tc2W0LCWgPNrOA", "shard": "0",
                        "index": "logs-weir-2024.03.09"
                    });
                }
            }
            serde_json::json!({ "create": item })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"took": 30, "errors": errors, "items": items}))
        .expect("json")
}

fn ok_items(n: usize) -> Vec<u8> {
    let ids: Vec<String> = (0..n).map(|i| format!("id-{i}")).collect();
    bulk_response(
        &ids.iter()
            .map(|id| (id.as_str(), 201, None))
            .collect::<Vec<_>>(),
    )
}

fn retry_after(v: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(RETRY_AFTER, HeaderValue::from_str(v).expect("header value"));
    h
}

fn now() -> jiff::Timestamp {
    "2024-03-10T12:00:00Z".parse().expect("timestamp")
}

#[test]
fn a_bulk_response_without_errors_is_delivered() {
    let evs = events(3);
    let none = HeaderMap::new();
    assert_eq!(
        classify(200, &none, &ok_items(3), &evs, now()),
        (Outcome::Delivered, 0)
    );
}

/// 201 delivered, 409 already there (delivered, counted), 429 and 503 retried, 400 dead with
/// `<type>: <reason>` (and its cause).
#[test]
fn a_bulk_response_with_mixed_items_is_classified_per_document() {
    let evs = events(6);
    let body = bulk_response(&[
        ("id-0", 201, None),
        ("id-1", 409, Some(("version_conflict_engine_exception", "[id-1]: version conflict, document already exists (current version [1])"))),
        ("id-2", 429, Some(("es_rejected_execution_exception", "rejected execution of coordinating operation"))),
        ("id-3", 400, Some(("mapper_parsing_exception", "failed to parse field [seq] of type [long] in document with id 'id-3'. Preview of field's value: 'x'"))),
        ("id-4", 503, Some(("unavailable_shards_exception", "[logs][0] primary shard is not active"))),
        ("id-5", 200, None),
    ]);
    let (outcome, conflicts) = classify(200, &HeaderMap::new(), &body, &evs, now());
    assert_eq!(
        outcome,
        Outcome::Partial {
            retry: vec![2, 4],
            dead: vec![(
                3,
                "mapper_parsing_exception: failed to parse field [seq] of type [long] in document with id 'id-3'. Preview of field's value: 'x'".to_string()
            )],
        }
    );
    assert_eq!(conflicts, 1);

    // The cause is kept in the reason.
    let mut v: serde_json::Value = serde_json::from_slice(&bulk_response(&[(
        "id-0",
        400,
        Some(("mapper_parsing_exception", "failed to parse")),
    )]))
    .expect("json");
    v["items"][0]["create"]["error"]["caused_by"] =
        serde_json::json!({"type": "json_parse_exception", "reason": "Unexpected character"});
    let (outcome, _) = classify(
        200,
        &HeaderMap::new(),
        v.to_string().as_bytes(),
        &evs[..1],
        now(),
    );
    assert_eq!(
        outcome,
        Outcome::Partial {
            retry: vec![],
            dead: vec![(
                0,
                "mapper_parsing_exception: failed to parse (caused by json_parse_exception: Unexpected character)".to_string()
            )],
        }
    );
}

#[test]
fn only_conflicts_are_delivered_and_counted() {
    let evs = events(2);
    let conflict = Some((
        "version_conflict_engine_exception",
        "version conflict, document already exists (current version [1])",
    ));
    let body = bulk_response(&[("id-0", 409, conflict), ("id-1", 409, conflict)]);
    let s = sink("endpoint = \"http://es:9200\"");
    assert_eq!(
        s.outcome(200, &HeaderMap::new(), &body, &evs),
        Outcome::Delivered
    );
    assert_eq!(
        s.outcome(200, &HeaderMap::new(), &body, &evs),
        Outcome::Delivered
    );
    assert_eq!(s.conflicts(), 4);
}

#[test]
fn the_errors_flag_is_not_trusted() {
    let evs = events(2);
    let mut v: serde_json::Value = serde_json::from_slice(&bulk_response(&[
        ("id-0", 201, None),
        ("id-1", 400, Some(("illegal_argument_exception", "bad"))),
    ]))
    .expect("json");
    v["errors"] = false.into();
    assert_eq!(
        classify(
            200,
            &HeaderMap::new(),
            v.to_string().as_bytes(),
            &evs,
            now()
        )
        .0,
        Outcome::Partial {
            retry: vec![],
            dead: vec![(1, "illegal_argument_exception: bad".to_string())]
        }
    );
}

#[test]
fn a_bulk_response_that_does_not_match_the_request_is_retried_whole() {
    let bad = (
        Outcome::Retry {
            reason: "bad_bulk_response".to_string(),
            after: None,
        },
        0,
    );
    let none = HeaderMap::new();
    let evs = events(3);
    assert_eq!(
        classify(200, &none, &ok_items(2), &evs, now()),
        bad,
        "fewer items"
    );
    assert_eq!(
        classify(200, &none, &ok_items(4), &evs, now()),
        bad,
        "more items"
    );
    assert_eq!(classify(200, &none, b"", &evs, now()), bad, "empty body");
    assert_eq!(
        classify(200, &none, b"<html>ok</html>", &evs, now()),
        bad,
        "not JSON"
    );
    assert_eq!(
        classify(200, &none, br#"{"took":1,"errors":false}"#, &evs, now()),
        bad,
        "no items"
    );
    assert_eq!(
        classify(
            200,
            &none,
            br#"{"items":[{"create":{"_id":"id-0"}}]}"#,
            &evs[..1],
            now()
        ),
        bad,
        "an item without status"
    );
    let swapped = bulk_response(&[
        ("id-1", 201, None),
        ("id-0", 201, None),
        ("id-2", 201, None),
    ]);
    assert_eq!(
        classify(200, &none, &swapped, &evs, now()),
        bad,
        "ids out of place"
    );
}

#[test]
fn whole_request_statuses_are_classified() {
    let evs = events(1);
    let none = HeaderMap::new();
    let retry = |status: u16, after: Option<Duration>| Outcome::Retry {
        reason: format!("http_{status}"),
        after,
    };
    assert_eq!(classify(429, &none, b"", &evs, now()).0, retry(429, None));
    assert_eq!(classify(503, &none, b"", &evs, now()).0, retry(503, None));
    assert_eq!(classify(500, &none, b"", &evs, now()).0, retry(500, None));
    assert_eq!(classify(408, &none, b"", &evs, now()).0, retry(408, None));
    assert_eq!(
        classify(429, &retry_after("7"), b"", &evs, now()).0,
        retry(429, Some(Duration::from_secs(7)))
    );
    assert_eq!(
        classify(
            503,
            &retry_after("Sun, 10 Mar 2024 12:00:30 GMT"),
            b"",
            &evs,
            now()
        )
        .0,
        retry(503, Some(Duration::from_secs(30)))
    );

    let es_error = br#"{"error":{"root_cause":[{"type":"illegal_argument_exception","reason":"The bulk request must be terminated by a newline [\\n]"}],"type":"illegal_argument_exception","reason":"The bulk request must be terminated by a newline [\\n]"},"status":400}"#;
    assert_eq!(
        classify(400, &none, es_error, &evs, now()).0,
        Outcome::Reject {
            reason: "http_400: illegal_argument_exception: The bulk request must be terminated by a newline [\\n]".to_string()
        }
    );
    assert_eq!(
        classify(
            406,
            &none,
            br#"{"error":"Content-Type header [text/plain] is not supported","status":406}"#,
            &evs,
            now()
        )
        .0,
        Outcome::Reject {
            reason: "http_406: Content-Type header [text/plain] is not supported".to_string()
        }
    );
    let html = format!("<html>\n  <body>{}</body>\n</html>", "x".repeat(300));
    let Outcome::Reject { reason } = classify(404, &none, html.as_bytes(), &evs, now()).0 else {
        panic!("404 is rejected");
    };
    assert_eq!(
        reason,
        format!("http_404: <html> <body>{}", "x".repeat(187))
    );
    assert_eq!(
        classify(401, &none, b"", &evs, now()).0,
        Outcome::Reject {
            reason: "http_401".to_string()
        }
    );
}

#[test]
fn retry_after_takes_seconds_or_an_http_date() {
    let now = now();
    assert_eq!(
        parse_retry_after("120", now),
        Some(Duration::from_secs(120))
    );
    assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
    assert_eq!(
        parse_retry_after("Sun, 10 Mar 2024 12:01:00 GMT", now),
        Some(Duration::from_secs(60))
    );
    assert_eq!(
        parse_retry_after("Sun, 10 Mar 2024 11:00:00 GMT", now),
        Some(Duration::ZERO),
        "a date in the past"
    );
    assert_eq!(parse_retry_after("soon", now), None);
    assert_eq!(parse_retry_after("-5", now), None);
}

#[test]
fn secrets_never_appear_in_debug_output() {
    std::env::set_var("WEIR_TEST_ES_DEBUG_PASSWORD", "hunter2-password");
    std::env::set_var("WEIR_TEST_ES_DEBUG_KEY", "c2VjcmV0LWFwaS1rZXk=");
    let basic = config(
        "endpoint = \"http://es:9200\"\nusername = \"weir\"\npassword_env = \"WEIR_TEST_ES_DEBUG_PASSWORD\"",
    );
    let key = config("endpoint = \"http://es:9200\"\napi_key_env = \"WEIR_TEST_ES_DEBUG_KEY\"");
    for c in [basic, key] {
        let s = c.build().expect("builds");
        let req = s.encode(&events(1)).expect("encode");
        let auth = header(&req, "Authorization")
            .expect("auth header")
            .to_string();
        let token = auth
            .split_once(' ')
            .expect("scheme and value")
            .1
            .to_string();
        for shown in [format!("{c:?}"), format!("{s:?}"), format!("{s:#?}")] {
            for secret in ["hunter2-password", "c2VjcmV0LWFwaS1rZXk=", &token] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
        assert!(format!("{s:?}").contains("<redacted>"));
    }
    // base64("weir:hunter2-password")
    let s = config(
        "endpoint = \"http://es:9200\"\nusername = \"weir\"\npassword_env = \"WEIR_TEST_ES_DEBUG_PASSWORD\"",
    )
    .build()
    .expect("builds");
    let req = s.encode(&events(1)).expect("encode");
    assert_eq!(
        header(&req, "Authorization"),
        Some("Basic d2VpcjpodW50ZXIyLXBhc3N3b3Jk")
    );
}
