//! An Elasticsearch `_bulk` receiver for tests, written from Elasticsearch's public REST API
//! documentation (the bulk API, its response body, index name rules, dynamic mapping, data
//! streams, `http.max_content_length`) — **not a real Elasticsearch**. It shares no code with
//! `src/`, so a mistake in weir's sink is not mirrored here.
//!
//! # What it does, as Elasticsearch does
//! - `POST`/`PUT` `/_bulk` and `/{index}/_bulk` (the path's index is the default `_index`);
//!   `GET /` answers the cluster banner.
//! - The body: `Content-Type` `application/x-ndjson` or `application/json` (or the
//!   `vnd.elasticsearch+` compatible forms), else `406`; `Content-Encoding: gzip` decoded;
//!   larger than [`ElasticsearchOptions::max_content_length`] (decompressed): `413`.
//! - NDJSON: the body must end with a newline; each action line is `{"create"|"index":{...}}`
//!   with known parameters only (`_index`, `_id`, `routing`, `pipeline`, ...), followed by its
//!   source line. A malformed action line, an unknown action or parameter, a missing index or
//!   an empty or over-long `_id` fail the whole request with `400` and Elasticsearch's error
//!   JSON. (`delete` and `update` are answered 400 too: weir sends neither.)
//! - Per item, in order: an invalid index name (`invalid_index_name_exception`), a source that
//!   is not a JSON object (`mapper_parsing_exception`), dynamic mapping (the first value of a
//!   field fixes its type — object, text, long, float, boolean, or date for strings that look
//!   like dates — and a later value that cannot be coerced to it is a `400
//!   mapper_parsing_exception`, as is a concrete value where an object is mapped), the total
//!   fields limit, then the write: `create` of an id already there is `409
//!   version_conflict_engine_exception`, `index` overwrites (`_version` + 1, `result:
//!   "updated"`, 200). Documents are kept per index by `_id`.
//! - Data streams: names matching [`ElasticsearchOptions::data_streams`] (by default
//!   `logs-*-*`, Elasticsearch 8's built-in template) accept only `create` and documents with
//!   `@timestamp`; their items name the backing index `.ds-<name>-<date>-000001`.
//! - The answer is always `200` with `took`, `errors` and one item per action (`_index`,
//!   `_id`, `_version`, `result`, `_shards`, `_seq_no`, `_primary_term`, `status`, or
//!   `status` and `error{type,reason,...}`), whether or not items failed.
//!
//! # Fault injection, programmable while it runs
//! The receiver is a [`FaultyServer`]. Whole requests:
//! [`FaultyServer::fail_next`] (500 `status_exception`, or any status),
//! [`FaultyServer::throttle_next`] (429 `es_rejected_execution_exception` with `Retry-After`,
//! as a proxy in front of Elasticsearch sends it). Items:
//! [`ElasticsearchReceiver::fail_every_kth_item`] (429 `es_rejected_execution_exception`, each
//! id at most once so a resend succeeds), [`ElasticsearchReceiver::reject_messages_containing`]
//! (400 `mapper_parsing_exception`). Timing: [`FaultyServer::delay_next`] and
//! [`FaultyServer::set_delay`] answer late *after* indexing (a client timing out resends
//! documents that are already there), and [`FaultyServer::refuse_connections_for`] closes the
//! port and every open connection, and listens on the same port again later.
//! [`FaultyServer::clear_faults`] forgets all of them.
//!
//! # Use
//! [`ElasticsearchReceiver::start`] binds `127.0.0.1:0` and returns at once; the server runs on
//! its own thread with its own tokio runtime, so plain `#[test]` functions can use it.
//! Dropping the receiver stops it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Map, Value};

use super::server::{self, Answer, Fault, FaultyServer};

/// How the receiver is set up, as an Elasticsearch cluster would be.
#[derive(Debug, Clone)]
pub struct ElasticsearchOptions {
    /// Index name patterns (`*` matches any run of characters) that are data streams, as an
    /// index template with `data_stream` enabled makes them. Default: `["logs-*-*"]`, the
    /// pattern of Elasticsearch 8's built-in `logs` template.
    pub data_streams: Vec<String>,
    /// `http.max_content_length`: a larger body (after decompression) is answered 413.
    /// Default: 100 MiB.
    pub max_content_length: usize,
    /// `index.mapping.total_fields.limit`. Default: 1000.
    pub total_fields_limit: usize,
    /// With security enabled: the exact `Authorization` value a request must carry, else 401.
    /// Default: none (security disabled).
    pub required_authorization: Option<String>,
}

impl Default for ElasticsearchOptions {
    fn default() -> Self {
        ElasticsearchOptions {
            data_streams: vec!["logs-*-*".to_string()],
            max_content_length: 100 << 20,
            total_fields_limit: 1000,
            required_authorization: None,
        }
    }
}

/// One stored document (its latest version).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDoc {
    /// The index or data stream name the action named.
    pub index: String,
    pub id: String,
    pub version: u64,
    pub seq_no: u64,
    /// The document as sent.
    pub source: Value,
}

/// One item of a bulk request and how it was answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRecord {
    /// `create` or `index`.
    pub action: String,
    /// The name the action named (not the backing index).
    pub index: String,
    /// The `_id` sent, or the one generated.
    pub id: String,
    pub status: u16,
    /// `created`/`updated` on success.
    pub result: Option<String>,
    pub error_type: Option<String>,
    pub error_reason: Option<String>,
}

/// One bulk request, whatever its answer.
#[derive(Debug, Clone)]
pub struct BulkRecord {
    /// When it arrived.
    pub at: Instant,
    /// The request path (`/_bulk` or `/{index}/_bulk`), with its query.
    pub path: String,
    /// The status answered.
    pub status: u16,
    /// The body answered (JSON; empty for a 413).
    pub response: String,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub authorization: Option<String>,
    /// The items answered (empty when the whole request failed).
    pub items: Vec<ItemRecord>,
}

/// Every `k`th item (counted over items whose id never failed) answers 429.
#[derive(Debug)]
struct EveryKth {
    k: usize,
    seen: usize,
    failed: HashSet<String>,
}

/// A field type of the dynamic mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldType {
    Object,
    Text,
    Long,
    Float,
    Boolean,
    Date,
}

impl FieldType {
    fn name(self) -> &'static str {
        match self {
            FieldType::Object => "object",
            FieldType::Text => "text",
            FieldType::Long => "long",
            FieldType::Float => "float",
            FieldType::Boolean => "boolean",
            FieldType::Date => "date",
        }
    }
}

#[derive(Default)]
struct IndexState {
    /// Field path → type.
    mappings: BTreeMap<String, FieldType>,
    next_seq_no: u64,
    /// For a data stream: its backing index.
    backing: Option<String>,
}

/// What the receiver stored and recorded (its fields are private to this module).
#[derive(Default)]
pub struct Inner {
    docs: Vec<StoredDoc>,
    /// (index, id) → position in `docs`.
    by_key: HashMap<(String, String), usize>,
    indices: HashMap<String, IndexState>,
    requests: Vec<BulkRecord>,
    /// Items received per `_id`, whatever their answer.
    attempts: HashMap<String, usize>,
    conflicts: usize,
    next_auto_id: u64,
    every_kth: Option<EveryKth>,
    reject_marker: Option<String>,
}

impl server::Store for Inner {
    /// [`FaultyServer::clear_faults`] forgets the item faults too.
    fn clear_faults(&mut self) {
        self.every_kth = None;
        self.reject_marker = None;
    }
}

type Shared = server::Shared<ElasticsearchOptions, Inner>;

/// A running receiver; dropping it stops the server. `addr`, `url` and the fault controls are
/// [`FaultyServer`]'s.
pub type ElasticsearchReceiver = FaultyServer<ElasticsearchOptions, Inner>;

impl ElasticsearchReceiver {
    /// Starts a receiver with the default options on `127.0.0.1:0`.
    pub fn start() -> ElasticsearchReceiver {
        ElasticsearchReceiver::start_with(ElasticsearchOptions::default())
    }

    /// Starts a receiver with these options on `127.0.0.1:0`; returns at once (the port is
    /// bound, so connections wait in the backlog until the server thread accepts them).
    pub fn start_with(options: ElasticsearchOptions) -> ElasticsearchReceiver {
        let routes = Router::new()
            .route("/", get(banner))
            .route("/_bulk", post(bulk).put(bulk))
            .route("/{index}/_bulk", post(bulk_in).put(bulk_in));
        FaultyServer::serve("elasticsearch-receiver", options, routes)
    }

    /// Every stored document (latest version), in the order first stored.
    pub fn documents(&self) -> Vec<StoredDoc> {
        self.lock().docs.clone()
    }

    /// The documents of one index or data stream.
    pub fn documents_in(&self, index: &str) -> Vec<StoredDoc> {
        self.documents()
            .into_iter()
            .filter(|d| d.index == index)
            .collect()
    }

    /// The names of the indices and data streams holding documents, sorted.
    pub fn indices(&self) -> Vec<String> {
        let inner = self.lock();
        let mut names: Vec<String> = inner
            .docs
            .iter()
            .map(|d| d.index.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        names.sort();
        names
    }

    /// Every bulk request received, in arrival order, with its answer.
    pub fn requests(&self) -> Vec<BulkRecord> {
        self.lock().requests.clone()
    }

    /// How many items named each `_id`, across every request that parsed (whatever its
    /// answer, injected 500s and 429s included).
    pub fn id_attempts(&self) -> HashMap<String, usize> {
        self.lock().attempts.clone()
    }

    /// Items answered `409 version_conflict_engine_exception` (a `create` of an id already
    /// there).
    pub fn conflicts(&self) -> usize {
        self.lock().conflicts
    }

    /// From now on, every `k`th item (counted over items whose id has never failed) answers
    /// 429 `es_rejected_execution_exception` and is not indexed. An id fails at most once, so
    /// its resend is indexed. [`ElasticsearchReceiver::failed_item_ids`] lists the ids failed.
    pub fn fail_every_kth_item(&self, k: usize) {
        assert!(k > 0, "k must be at least 1");
        self.lock().every_kth = Some(EveryKth {
            k,
            seen: 0,
            failed: HashSet::new(),
        });
    }

    /// The ids [`ElasticsearchReceiver::fail_every_kth_item`] failed.
    pub fn failed_item_ids(&self) -> HashSet<String> {
        self.lock()
            .every_kth
            .as_ref()
            .map(|f| f.failed.clone())
            .unwrap_or_default()
    }

    /// From now on, documents whose `message` contains `marker` answer 400
    /// `mapper_parsing_exception` (as if `message` were mapped `long`) and are not indexed.
    pub fn reject_messages_containing(&self, marker: &str) {
        self.lock().reject_marker = Some(marker.to_string());
    }

    /// Waits until at least `n` documents are stored (panics after `timeout`) and returns
    /// them.
    pub fn wait_for_docs(&self, n: usize, timeout: Duration) -> Vec<StoredDoc> {
        server::wait_for(
            timeout,
            || Some(self.documents()).filter(|d| d.len() >= n),
            || {
                format!(
                    "the Elasticsearch receiver stored {} of {n} documents within {timeout:?}; requests: {:?}",
                    self.documents().len(),
                    self.summary()
                )
            },
        )
    }

    /// Waits for a request matching `pred` (panics after `timeout`) and returns it.
    pub fn wait_for_request(
        &self,
        pred: impl Fn(&BulkRecord) -> bool,
        timeout: Duration,
    ) -> BulkRecord {
        server::wait_for(
            timeout,
            || self.requests().into_iter().find(|r| pred(r)),
            || {
                format!(
                    "no matching request within {timeout:?}; requests: {:?}",
                    self.summary()
                )
            },
        )
    }

    /// (status, items, items stored) per request, for failure messages.
    pub fn summary(&self) -> Vec<(u16, usize, usize)> {
        self.requests()
            .iter()
            .map(|r| {
                let ok = r.items.iter().filter(|i| i.result.is_some()).count();
                (r.status, r.items.len(), ok)
            })
            .collect()
    }
}

/// `GET /`: the banner a client may probe.
async fn banner() -> Response {
    axum::Json(json!({
        "name": "weir-spec-receiver",
        "cluster_name": "weir-test",
        "version": {"number": "8.13.0", "build_flavor": "default", "lucene_version": "9.10.0"},
        "tagline": "You Know, for Search"
    }))
    .into_response()
}

/// `POST /_bulk`
async fn bulk(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(shared, None, uri, headers, body).await
}

/// `POST /{index}/_bulk`
async fn bulk_in(
    State(shared): State<Arc<Shared>>,
    Path(index): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(shared, Some(index), uri, headers, body).await
}

async fn answer(
    shared: Arc<Shared>,
    path_index: Option<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let text = |name| server::header_text(&headers, name);
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string());
    let mut record = BulkRecord {
        at: started,
        path,
        status: 200,
        response: String::new(),
        content_type: text(header::CONTENT_TYPE),
        content_encoding: text(header::CONTENT_ENCODING),
        authorization: text(header::AUTHORIZATION),
        items: Vec::new(),
    };
    let answer = handle(&shared, path_index.as_deref(), &mut record, &body, started);
    record.status = answer.0.as_u16();
    record.response = answer.2.clone();
    // Indexed (and recorded) before any delay: a client that gives up meanwhile finds its
    // documents there when it resends.
    shared.lock().requests.push(record);
    server::respond(answer, "application/json", shared.next_delay()).await
}

/// Elasticsearch's error response: `{"error":{"root_cause":[..],"type":..,"reason":..},"status":N}`.
fn es_error(status: StatusCode, kind: &str, reason: &str) -> Answer {
    let body = json!({
        "error": {
            "root_cause": [{"type": kind, "reason": reason}],
            "type": kind,
            "reason": reason
        },
        "status": status.as_u16()
    });
    (status, Vec::new(), body.to_string())
}

fn bad_request(kind: &str, reason: &str) -> Answer {
    es_error(StatusCode::BAD_REQUEST, kind, reason)
}

/// One action of a bulk request, as parsed.
struct Op {
    action: &'static str,
    index: String,
    id: Option<String>,
    /// The source line, parsed later per item (a bad source fails only its item).
    source: String,
}

/// Action parameters Elasticsearch accepts on a `create`/`index` line.
const KNOWN_PARAMS: [&str; 12] = [
    "_index",
    "_id",
    "routing",
    "pipeline",
    "require_alias",
    "require_data_stream",
    "dynamic_templates",
    "if_seq_no",
    "if_primary_term",
    "version",
    "version_type",
    "list_executed_pipelines",
];

fn handle(
    shared: &Shared,
    path_index: Option<&str>,
    record: &mut BulkRecord,
    body: &[u8],
    started: Instant,
) -> Answer {
    let options = &shared.options;
    if let Some(required) = &options.required_authorization {
        if record.authorization.as_deref() != Some(required.as_str()) {
            let reason = match &record.authorization {
                None => format!("missing authentication credentials for REST request [{}]", record.path),
                Some(_) => "unable to authenticate with provided credentials and anonymous access is not allowed for this request".to_string(),
            };
            let (status, mut headers, body) =
                es_error(StatusCode::UNAUTHORIZED, "security_exception", &reason);
            headers.push((
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"security\", charset=\"UTF-8\""),
            ));
            headers.push((
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("ApiKey"),
            ));
            return (status, headers, body);
        }
    }

    let media = server::media_type(record.content_type.as_deref());
    let supported = matches!(
        media.as_deref(),
        Some(
            "application/x-ndjson"
                | "application/json"
                | "application/vnd.elasticsearch+x-ndjson"
                | "application/vnd.elasticsearch+json"
        )
    );
    if !supported {
        let shown = record.content_type.clone().unwrap_or_default();
        let body = json!({
            "error": format!("Content-Type header [{shown}] is not supported"),
            "status": 406
        });
        return (StatusCode::NOT_ACCEPTABLE, Vec::new(), body.to_string());
    }

    let max = options.max_content_length;
    let body: Vec<u8> = match record
        .content_encoding
        .as_deref()
        .map(|e| e.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => body.to_vec(),
        Some("gzip") => match server::gunzip(body, max) {
            Ok(out) => out,
            Err(e) => {
                return bad_request(
                    "parse_exception",
                    &format!("failed to decompress the request body: {e}"),
                )
            }
        },
        Some(other) => {
            return bad_request(
                "illegal_argument_exception",
                &format!("unsupported Content-Encoding [{other}]"),
            )
        }
    };
    if body.len() > max {
        // Elasticsearch's HTTP layer answers an over-long body without a body.
        return (StatusCode::PAYLOAD_TOO_LARGE, Vec::new(), String::new());
    }

    let ops = match parse_bulk(&body, path_index) {
        Ok(ops) => ops,
        Err(answer) => return answer,
    };

    let mut inner = shared.lock();
    for op in &ops {
        if let Some(id) = &op.id {
            *inner.attempts.entry(id.clone()).or_default() += 1;
        }
    }
    match shared.next_fault() {
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).expect("a valid injected status");
            return es_error(
                status,
                "status_exception",
                "injected failure (weir's spec receiver)",
            );
        }
        Some(Fault::Throttle { retry_after }) => {
            let bytes = body.len();
            let answer = es_error(
                StatusCode::TOO_MANY_REQUESTS,
                "es_rejected_execution_exception",
                &format!(
                    "rejected execution of coordinating operation [coordinating_and_primary_bytes=0, \
                     replica_bytes=0, all_bytes=0, coordinating_operation_bytes={bytes}, \
                     max_coordinating_and_primary_bytes=0]"
                ),
            );
            return server::with_retry_after(answer, &retry_after);
        }
        None => {}
    }

    let mut items = Vec::with_capacity(ops.len());
    let mut errors = false;
    for op in ops {
        let (item, rec) = apply(&mut inner, options, op);
        errors |= rec.error_type.is_some();
        items.push(item);
        record.items.push(rec);
    }
    let took = started.elapsed().as_millis() as u64;
    let body = json!({"took": took, "errors": errors, "items": items});
    (StatusCode::OK, Vec::new(), body.to_string())
}

/// Splits an NDJSON bulk body into actions, or fails the whole request as Elasticsearch does.
fn parse_bulk(body: &[u8], path_index: Option<&str>) -> Result<Vec<Op>, Answer> {
    if body.is_empty() {
        return Err(bad_request(
            "action_request_validation_exception",
            "Validation Failed: 1: no requests added;",
        ));
    }
    if body.last() != Some(&b'\n') {
        return Err(bad_request(
            "illegal_argument_exception",
            "The bulk request must be terminated by a newline [\\n]",
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| bad_request("x_content_parse_exception", &format!("invalid UTF-8: {e}")))?;
    let lines: Vec<&str> = text[..text.len() - 1].split('\n').collect();
    let mut ops = Vec::new();
    let mut n = 0;
    while n < lines.len() {
        let line_no = n + 1;
        let malformed = |found: &str| {
            bad_request(
                "illegal_argument_exception",
                &format!(
                    "Malformed action/metadata line [{line_no}], expected START_OBJECT but found [{found}]"
                ),
            )
        };
        let action_line: Value = serde_json::from_str(lines[n]).map_err(|_| {
            malformed(if lines[n].trim().is_empty() {
                "null"
            } else {
                "VALUE_STRING"
            })
        })?;
        let obj = action_line
            .as_object()
            .ok_or_else(|| malformed("VALUE_STRING"))?;
        let mut entries = obj.iter();
        let Some((action, params)) = entries.next() else {
            return Err(malformed("END_OBJECT"));
        };
        if entries.next().is_some() {
            return Err(bad_request(
                "illegal_argument_exception",
                &format!("Malformed action/metadata line [{line_no}], expected END_OBJECT but found [FIELD_NAME]"),
            ));
        }
        let action: &'static str = match action.as_str() {
            "create" => "create",
            "index" => "index",
            "delete" | "update" => {
                return Err(bad_request(
                    "illegal_argument_exception",
                    &format!(
                        "action [{action}] on line [{line_no}]: weir's spec receiver supports only create and index"
                    ),
                ))
            }
            other => {
                return Err(bad_request(
                    "illegal_argument_exception",
                    &format!(
                        "Malformed action/metadata line [{line_no}], expected field [create], [delete], [index] or [update] but found [{other}]"
                    ),
                ))
            }
        };
        let params = params
            .as_object()
            .ok_or_else(|| malformed("VALUE_STRING"))?;
        for key in params.keys() {
            if !KNOWN_PARAMS.contains(&key.as_str()) {
                return Err(bad_request(
                    "illegal_argument_exception",
                    &format!(
                        "Action/metadata line [{line_no}] contains an unknown parameter [{key}]"
                    ),
                ));
            }
        }
        let string_param = |key: &str| -> Result<Option<String>, Answer> {
            match params.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad_request(
                    "illegal_argument_exception",
                    &format!(
                        "Malformed action/metadata line [{line_no}], [{key}] must be a string"
                    ),
                )),
            }
        };
        let index = string_param("_index")?.or_else(|| path_index.map(str::to_string));
        let id = string_param("_id")?;
        let Some(index) = index else {
            return Err(bad_request(
                "action_request_validation_exception",
                "Validation Failed: 1: index is missing;",
            ));
        };
        if let Some(id) = &id {
            if id.is_empty() {
                return Err(bad_request(
                    "action_request_validation_exception",
                    "Validation Failed: 1: if _id is specified it must not be empty;",
                ));
            }
            if id.len() > 512 {
                return Err(bad_request(
                    "action_request_validation_exception",
                    &format!(
                        "Validation Failed: 1: id [{id}] is too long, must be no longer than 512 bytes but was: {};",
                        id.len()
                    ),
                ));
            }
        }
        let Some(source) = lines.get(n + 1) else {
            return Err(bad_request(
                "illegal_argument_exception",
                &format!("Malformed action/metadata line [{line_no}]: the {action} action has no source line"),
            ));
        };
        ops.push(Op {
            action,
            index,
            id,
            source: source.to_string(),
        });
        n += 2;
    }
    Ok(ops)
}

/// An item's error: type, reason, and an optional cause.
struct ItemError {
    status: u16,
    kind: &'static str,
    reason: String,
    caused_by: Option<(&'static str, String)>,
}

impl ItemError {
    fn new(status: u16, kind: &'static str, reason: impl Into<String>) -> ItemError {
        ItemError {
            status,
            kind,
            reason: reason.into(),
            caused_by: None,
        }
    }

    fn caused_by(mut self, kind: &'static str, reason: impl Into<String>) -> ItemError {
        self.caused_by = Some((kind, reason.into()));
        self
    }
}

/// Indexes one action; returns its response item and its record.
fn apply(inner: &mut Inner, options: &ElasticsearchOptions, op: Op) -> (Value, ItemRecord) {
    let id = op.id.clone().unwrap_or_else(|| {
        inner.next_auto_id += 1;
        format!("auto{:016x}", inner.next_auto_id)
    });
    let is_stream = options
        .data_streams
        .iter()
        .any(|p| glob_match(p, &op.index));
    let shown_index = |inner: &mut Inner| -> String {
        if !is_stream {
            return op.index.clone();
        }
        let state = inner.indices.entry(op.index.clone()).or_default();
        state
            .backing
            .get_or_insert_with(|| {
                let today = jiff::Timestamp::now().strftime("%Y.%m.%d");
                format!(".ds-{}-{today}-000001", op.index)
            })
            .clone()
    };
    let result = write(inner, options, &op, &id, is_stream);
    let index_name = match &result {
        Err(e) if e.kind == "invalid_index_name_exception" => op.index.clone(),
        _ => shown_index(inner),
    };
    let mut record = ItemRecord {
        action: op.action.to_string(),
        index: op.index.clone(),
        id: id.clone(),
        status: 0,
        result: None,
        error_type: None,
        error_reason: None,
    };
    let item = match result {
        Ok((version, seq_no, created)) => {
            let (result, status) = if created {
                ("created", 201)
            } else {
                ("updated", 200)
            };
            record.status = status;
            record.result = Some(result.to_string());
            json!({
                "_index": index_name, "_id": id, "_version": version, "result": result,
                "_shards": {"total": 2, "successful": 1, "failed": 0},
                "_seq_no": seq_no, "_primary_term": 1, "status": status
            })
        }
        Err(e) => {
            record.status = e.status;
            record.error_type = Some(e.kind.to_string());
            record.error_reason = Some(e.reason.clone());
            let mut error = json!({"type": e.kind, "reason": e.reason});
            if e.kind != "es_rejected_execution_exception" {
                let uuid = if e.kind == "invalid_index_name_exception" {
                    "_na_".to_string()
                } else {
                    index_uuid(&op.index)
                };
                error["index_uuid"] = uuid.into();
                if e.kind != "invalid_index_name_exception" {
                    error["shard"] = "0".into();
                }
                error["index"] = index_name.clone().into();
            }
            if let Some((kind, reason)) = e.caused_by {
                error["caused_by"] = json!({"type": kind, "reason": reason});
            }
            json!({"_index": index_name, "_id": id, "status": e.status, "error": error})
        }
    };
    let mut wrapped = Map::new();
    wrapped.insert(op.action.to_string(), item);
    (Value::Object(wrapped), record)
}

/// The checks and the write of one action: `(version, seq_no, created)`.
fn write(
    inner: &mut Inner,
    options: &ElasticsearchOptions,
    op: &Op,
    id: &str,
    is_stream: bool,
) -> Result<(u64, u64, bool), ItemError> {
    if let Err(why) = index_name_error(&op.index) {
        return Err(ItemError::new(
            400,
            "invalid_index_name_exception",
            format!("Invalid index name [{}], {why}", op.index),
        ));
    }

    if let Some(f) = &mut inner.every_kth {
        if !f.failed.contains(id) {
            f.seen += 1;
            if f.seen % f.k == 0 {
                f.failed.insert(id.to_string());
                return Err(ItemError::new(
                    429,
                    "es_rejected_execution_exception",
                    format!(
                        "rejected execution of primary operation [coordinating_and_primary_bytes=0, \
                         replica_bytes=0, all_bytes=0, primary_operation_bytes={}, \
                         max_coordinating_and_primary_bytes=0]",
                        op.source.len()
                    ),
                ));
            }
        }
    }

    let doc = match serde_json::from_str::<Value>(&op.source) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            return Err(
                ItemError::new(400, "mapper_parsing_exception", "failed to parse").caused_by(
                    "illegal_argument_exception",
                    "Malformed content, must start with an object",
                ),
            )
        }
        Err(e) => {
            return Err(
                ItemError::new(400, "mapper_parsing_exception", "failed to parse")
                    .caused_by("json_parse_exception", e.to_string()),
            )
        }
    };

    if let Some(marker) = &inner.reject_marker {
        if let Some(msg) = doc.get("message").and_then(Value::as_str) {
            if msg.contains(marker.as_str()) {
                return Err(ItemError::new(
                    400,
                    "mapper_parsing_exception",
                    format!(
                        "failed to parse field [message] of type [long] in document with id '{id}'. \
                         Preview of field's value: '{}'",
                        preview(msg)
                    ),
                )
                .caused_by(
                    "illegal_argument_exception",
                    format!("For input string: \"{}\"", preview(msg)),
                ));
            }
        }
    }

    if is_stream {
        if op.action != "create" {
            return Err(ItemError::new(
                400,
                "illegal_argument_exception",
                "only write ops with an op_type of create are allowed in data streams",
            ));
        }
        if !doc.contains_key("@timestamp") {
            return Err(ItemError::new(
                400,
                "mapper_parsing_exception",
                "data stream timestamp field [@timestamp] is missing",
            ));
        }
    }

    // Dynamic mapping: checked against what the index has, committed only if the document
    // is indexed (and before the version check, as Elasticsearch parses before it writes).
    let state = inner.indices.entry(op.index.clone()).or_default();
    let mut added = BTreeMap::new();
    if is_stream && !state.mappings.contains_key("@timestamp") {
        // The data stream's template maps it.
        added.insert("@timestamp".to_string(), FieldType::Date);
    }
    map_object("", &doc, &state.mappings, &mut added, id)?;
    if state.mappings.len() + added.len() > options.total_fields_limit {
        return Err(ItemError::new(
            400,
            "illegal_argument_exception",
            format!(
                "Limit of total fields [{}] has been exceeded while adding new fields [{}]",
                options.total_fields_limit,
                added.len()
            ),
        ));
    }

    let key = (op.index.clone(), id.to_string());
    if let Some(&at) = inner.by_key.get(&key) {
        if op.action == "create" {
            inner.conflicts += 1;
            let current = inner.docs[at].version;
            return Err(ItemError::new(
                409,
                "version_conflict_engine_exception",
                format!("[{id}]: version conflict, document already exists (current version [{current}])"),
            ));
        }
    }
    let state = inner.indices.entry(op.index.clone()).or_default();
    state.mappings.extend(added);
    let seq_no = state.next_seq_no;
    state.next_seq_no += 1;
    let source = Value::Object(doc);
    match inner.by_key.get(&key) {
        Some(&at) => {
            let d = &mut inner.docs[at];
            d.version += 1;
            d.seq_no = seq_no;
            d.source = source;
            Ok((d.version, seq_no, false))
        }
        None => {
            inner.by_key.insert(key, inner.docs.len());
            inner.docs.push(StoredDoc {
                index: op.index.clone(),
                id: id.to_string(),
                version: 1,
                seq_no,
                source,
            });
            Ok((1, seq_no, true))
        }
    }
}

/// Maps the fields of an object at `prefix` (empty at the root), adding new fields to `added`.
fn map_object(
    prefix: &str,
    obj: &Map<String, Value>,
    mappings: &BTreeMap<String, FieldType>,
    added: &mut BTreeMap<String, FieldType>,
    id: &str,
) -> Result<(), ItemError> {
    for (key, value) in obj {
        // A dotted name is a path of objects: `{"log.level": x}` is `{"log": {"level": x}}`.
        let mut path = prefix.to_string();
        let segments: Vec<&str> = key.split('.').collect();
        for (i, seg) in segments.iter().enumerate() {
            if seg.trim().is_empty() {
                return Err(
                    ItemError::new(400, "mapper_parsing_exception", "failed to parse").caused_by(
                        "illegal_argument_exception",
                        format!("field name cannot be an empty string or contain only whitespace: [{key}]"),
                    ),
                );
            }
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(seg);
            if i + 1 < segments.len() {
                match mappings.get(&path).or_else(|| added.get(&path)) {
                    None => {
                        added.insert(path.clone(), FieldType::Object);
                    }
                    Some(FieldType::Object) => {}
                    Some(other) => {
                        return Err(ItemError::new(
                            400,
                            "mapper_parsing_exception",
                            format!(
                                "Could not dynamically add mapping for field [{key}]. Existing mapping for [{path}] must be of type object but found [{}].",
                                other.name()
                            ),
                        ))
                    }
                }
            }
        }
        map_value(&path, value, mappings, added, id)?;
    }
    Ok(())
}

fn map_value(
    path: &str,
    value: &Value,
    mappings: &BTreeMap<String, FieldType>,
    added: &mut BTreeMap<String, FieldType>,
    id: &str,
) -> Result<(), ItemError> {
    let mapped = mappings.get(path).or_else(|| added.get(path)).copied();
    match value {
        Value::Null => Ok(()),
        Value::Array(items) => {
            for v in items {
                map_value(path, v, mappings, added, id)?;
            }
            Ok(())
        }
        Value::Object(obj) => {
            match mapped {
                None => {
                    added.insert(path.to_string(), FieldType::Object);
                }
                Some(FieldType::Object) => {}
                Some(t) => {
                    return Err(ItemError::new(
                        400,
                        "mapper_parsing_exception",
                        format!(
                            "failed to parse field [{path}] of type [{}] in document with id '{id}'. Preview of field's value: '{}'",
                            t.name(),
                            preview(&value.to_string())
                        ),
                    )
                    .caused_by(
                        "illegal_state_exception",
                        "Can't get text on a START_OBJECT",
                    ))
                }
            }
            map_object(path, obj, mappings, added, id)
        }
        scalar => match mapped {
            None => {
                added.insert(path.to_string(), dynamic_type(scalar));
                Ok(())
            }
            Some(FieldType::Object) => Err(ItemError::new(
                400,
                "mapper_parsing_exception",
                format!(
                    "object mapping for [{path}] tried to parse field [{path}] as object, but found a concrete value"
                ),
            )),
            Some(t) => coerce(t, scalar).map_err(|cause| {
                let shown = match scalar {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                ItemError::new(
                    400,
                    "mapper_parsing_exception",
                    format!(
                        "failed to parse field [{path}] of type [{}] in document with id '{id}'. Preview of field's value: '{}'",
                        t.name(),
                        preview(&shown)
                    ),
                )
                .caused_by("illegal_argument_exception", cause)
            }),
        },
    }
}

/// The type dynamic mapping gives a field's first value.
fn dynamic_type(v: &Value) -> FieldType {
    match v {
        Value::Bool(_) => FieldType::Boolean,
        Value::Number(n) if n.is_i64() || n.is_u64() => FieldType::Long,
        Value::Number(_) => FieldType::Float,
        Value::String(s) if looks_like_date(s) => FieldType::Date,
        _ => FieldType::Text,
    }
}

/// Whether a value fits a mapped type (with Elasticsearch's coercion); else the cause.
fn coerce(t: FieldType, v: &Value) -> Result<(), String> {
    let numeric = |v: &Value| match v {
        Value::Number(_) => true,
        Value::String(s) => s.trim().parse::<f64>().is_ok_and(f64::is_finite),
        _ => false,
    };
    match t {
        FieldType::Object => Err("not an object".to_string()),
        FieldType::Text => Ok(()),
        FieldType::Long | FieldType::Float => {
            if numeric(v) {
                Ok(())
            } else {
                Err(match v {
                    Value::String(s) => format!("For input string: \"{}\"", preview(s)),
                    other => format!("Current token ({}) not numeric, can not use numeric value accessors", token(other)),
                })
            }
        }
        FieldType::Boolean => match v {
            Value::Bool(_) => Ok(()),
            Value::String(s) if matches!(s.as_str(), "true" | "false" | "") => Ok(()),
            other => Err(format!(
                "Failed to parse value [{}] as only [true] or [false] are allowed.",
                match other {
                    Value::String(s) => preview(s),
                    o => o.to_string(),
                }
            )),
        },
        FieldType::Date => match v {
            Value::String(s) if looks_like_date(s) => Ok(()),
            Value::String(s) if s.parse::<i64>().is_ok() => Ok(()),
            Value::Number(n) if n.is_i64() => Ok(()),
            other => Err(format!(
                "failed to parse date field [{}] with format [strict_date_optional_time||epoch_millis]",
                match other {
                    Value::String(s) => preview(s),
                    o => o.to_string(),
                }
            )),
        },
    }
}

fn token(v: &Value) -> &'static str {
    match v {
        Value::Bool(true) => "VALUE_TRUE",
        Value::Bool(false) => "VALUE_FALSE",
        Value::String(_) => "VALUE_STRING",
        Value::Number(_) => "VALUE_NUMBER_INT",
        Value::Null => "VALUE_NULL",
        Value::Array(_) => "START_ARRAY",
        Value::Object(_) => "START_OBJECT",
    }
}

/// `strict_date_optional_time`, roughly: `yyyy-MM-dd`, optionally `THH:mm[:ss[.f]]` and an
/// offset.
fn looks_like_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' || !(b.len() == 10 || b[10] == b'T') {
        return false;
    }
    s.parse::<jiff::Timestamp>().is_ok()
        || s.parse::<jiff::civil::DateTime>().is_ok()
        || s.parse::<jiff::civil::Date>().is_ok()
}

/// Elasticsearch's preview of a value: its first 20 characters, then `...`.
fn preview(s: &str) -> String {
    match s.char_indices().nth(20) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_string(),
    }
}

/// Elasticsearch's index name rules; the error completes "Invalid index name [X], ...".
fn index_name_error(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_string());
    }
    if name == "." || name == ".." {
        return Err("must not be '.' or '..'".to_string());
    }
    if name.starts_with(['-', '_', '+']) {
        return Err("must not start with '_', '-', or '+'".to_string());
    }
    if name.chars().any(char::is_uppercase) {
        return Err("must be lowercase".to_string());
    }
    if name.contains(['\\', '/', '*', '?', '"', '<', '>', '|', ' ', ',', '#', ':']) {
        return Err(
            "must not contain the following characters [ , \", *, \\, <, |, ,, >, /, ?, :, #]"
                .to_string(),
        );
    }
    if name.len() > 255 {
        return Err(format!("index name is too long, ({} > 255)", name.len()));
    }
    Ok(())
}

/// `*` matches any run of characters; everything else matches itself.
fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// A stable, index-unique stand-in for Elasticsearch's index UUID.
fn index_uuid(index: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    index.hash(&mut h);
    let a = h.finish();
    a.hash(&mut h);
    format!("{a:016x}{:06x}", h.finish() & 0xff_ffff)
}
