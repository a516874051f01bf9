//! `[[sinks]] type = "elasticsearch"`: the config, and its checks at build time (endpoint,
//! index template, auth). Secrets are read here, from the environment, and kept in [`Secret`].

use std::fmt;
use std::path::PathBuf;

use base64::Engine as _;
use serde::Deserialize;

use super::sink::ElasticsearchSink;
use crate::sink::{secret_from_env, BatchConfig, BufferConfig, RequestConfig};

/// The bulk path, appended to `endpoint`.
pub(super) const BULK_PATH: &str = "/_bulk";

/// Elasticsearch's longest index name, in bytes.
const MAX_INDEX_BYTES: usize = 255;

/// `[[sinks]] type = "elasticsearch"`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchConfig {
    /// The sink's name: in `weir_sink_*{sink}`, logs, its disk buffer's directory, and in
    /// reloads, which keep a sink whose name and settings are unchanged. Letters, digits, `_`
    /// and `-`. Default: its type, or `type_i` (i: its place among the sinks) when several
    /// sinks share a type — name them, so that adding one does not rename the others.
    #[serde(default)]
    pub name: Option<String>,
    /// Base URL of Elasticsearch, such as `http://es:9200`; batches are sent to
    /// `{endpoint}/_bulk`. Required.
    pub endpoint: String,
    /// Where documents go. In `index` mode, a name template: the date parts `%Y` (year), `%y`
    /// (two-digit year), `%m`, `%d`, `%H` (hour), `%j` (day of the year), `%G` and `%V` (ISO
    /// week-year and week) are taken from each event's own timestamp, in UTC. In `data_stream`
    /// mode, the data stream's name, used verbatim (no date parts). Default:
    /// `logs-weir-%Y.%m.%d`.
    #[serde(default = "default_index")]
    pub index: String,
    /// `index` (default: dated indices from the template) or `data_stream`. Both write every
    /// document with `create` and the event's id as `_id`, so a resent batch cannot duplicate.
    #[serde(default)]
    pub mode: EsMode,
    /// `none` (default) or `gzip` (the request body, `Content-Encoding: gzip`).
    #[serde(default)]
    pub compression: EsCompression,
    /// User for HTTP basic auth; needs `password_env`. Default: none.
    #[serde(default = "default_username")]
    pub username: Option<String>,
    /// Name of the environment variable holding the basic auth password. Default: none.
    #[serde(default = "default_password_env")]
    pub password_env: Option<String>,
    /// Name of the environment variable holding an API key, in the base64 "encoded" form
    /// Elasticsearch returns, sent as `Authorization: ApiKey <value>` (instead of basic auth).
    /// Default: none.
    #[serde(default = "default_api_key_env")]
    pub api_key_env: Option<String>,
    /// When batches are sent.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Where waiting events are kept.
    #[serde(default)]
    pub buffer: BufferConfig,
    /// Timeouts and retries.
    #[serde(default)]
    pub request: RequestConfig,
    /// File that receives, one JSON object per line, each event Elasticsearch rejected (such
    /// as a `mapper_parsing_exception`) and why. Default: none (rejected events are counted and
    /// logged, then dropped).
    #[serde(default = "default_dead_letter_path")]
    pub dead_letter_path: Option<PathBuf>,
}

/// Where documents are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EsMode {
    /// Into indices named by the `index` template, dated by each event's timestamp.
    #[default]
    Index,
    /// Into the data stream named by `index`, verbatim.
    DataStream,
}

/// How a bulk request body is compressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EsCompression {
    #[default]
    None,
    Gzip,
}

fn default_index() -> String {
    "logs-weir-%Y.%m.%d".to_string()
}
const fn default_username() -> Option<String> {
    None
}
const fn default_password_env() -> Option<String> {
    None
}
const fn default_api_key_env() -> Option<String> {
    None
}
const fn default_dead_letter_path() -> Option<PathBuf> {
    None
}

impl ElasticsearchConfig {
    /// A config with the defaults for everything but the endpoint (for `weir run
    /// --elasticsearch URL`).
    pub fn with_endpoint(endpoint: impl Into<String>) -> ElasticsearchConfig {
        ElasticsearchConfig {
            name: None,
            endpoint: endpoint.into(),
            index: default_index(),
            mode: EsMode::default(),
            compression: EsCompression::default(),
            username: default_username(),
            password_env: default_password_env(),
            api_key_env: default_api_key_env(),
            batch: BatchConfig::default(),
            buffer: BufferConfig::default(),
            request: RequestConfig::default(),
            dead_letter_path: default_dead_letter_path(),
        }
    }

    /// Checks the endpoint, the index and auth, reads the secrets, and returns the sink.
    pub fn build(&self) -> Result<ElasticsearchSink, String> {
        let endpoint = self.endpoint.trim().trim_end_matches('/');
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(format!(
                "elasticsearch endpoint {:?} must start with http:// or https://",
                crate::redact::urls(&self.endpoint)
            ));
        }
        if endpoint.contains(['?', '#']) {
            return Err(format!(
                "elasticsearch endpoint {:?} must be a base URL without query or fragment",
                crate::redact::urls(&self.endpoint)
            ));
        }
        if endpoint.ends_with(BULK_PATH) {
            return Err(format!(
                "elasticsearch endpoint {:?} is the base URL (such as http://es:9200); weir adds {BULK_PATH}",
                crate::redact::urls(&self.endpoint)
            ));
        }

        let index = match self.mode {
            EsMode::Index => IndexName::parse(&self.index)?,
            EsMode::DataStream => IndexName::data_stream(&self.index)?,
        };

        let mut headers = vec![(
            "Content-Type".to_string(),
            "application/x-ndjson".to_string(),
        )];
        if self.compression == EsCompression::Gzip {
            headers.push(("Content-Encoding".to_string(), "gzip".to_string()));
        }

        Ok(ElasticsearchSink::new(
            format!("{endpoint}{BULK_PATH}"),
            index,
            self.compression,
            headers,
            self.auth()?,
        ))
    }

    /// The `Authorization` value, from the secrets in the environment.
    fn auth(&self) -> Result<Option<Secret>, String> {
        let value = match (&self.username, &self.password_env, &self.api_key_env) {
            (None, None, None) => return Ok(None),
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => return Err(
                "elasticsearch: username/password_env and api_key_env are exclusive; choose one"
                    .to_string(),
            ),
            (Some(_), None, None) => {
                return Err(
                    "elasticsearch username needs password_env (the variable holding the password)"
                        .to_string(),
                )
            }
            (None, Some(_), None) => {
                return Err("elasticsearch password_env needs username".to_string())
            }
            (Some(user), Some(var), None) => {
                if user.is_empty() || user.contains(':') {
                    return Err(format!(
                        "elasticsearch username {user:?} must be non-empty and without ':' (basic auth)"
                    ));
                }
                let password = read_secret("password_env", var)?;
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                format!("Basic {token}")
            }
            (None, None, Some(var)) => {
                let key = read_secret("api_key_env", var)?;
                format!("ApiKey {key}")
            }
        };
        // reqwest refuses such a header when sending, which would look like a connection
        // error retried forever: refuse it here, without showing the value.
        if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(
                "elasticsearch: the secret holds characters not allowed in an HTTP header"
                    .to_string(),
            );
        }
        Ok(Some(Secret(value)))
    }
}

/// A secret from the variable `var`, named in the config key `key`: set and not empty.
fn read_secret(key: &str, var: &str) -> Result<String, String> {
    let value = secret_from_env(Some(var))
        .map_err(|e| format!("elasticsearch {key}: {e}"))?
        .unwrap_or_default();
    if value.is_empty() {
        return Err(format!(
            "elasticsearch {key}: environment variable {var} is empty"
        ));
    }
    Ok(value)
}

/// A date part of an index template, from the event's timestamp in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DatePart {
    /// `%Y`, four digits.
    Year,
    /// `%y`, two digits.
    Year2,
    /// `%m`, 01–12.
    Month,
    /// `%d`, 01–31.
    Day,
    /// `%H`, 00–23.
    Hour,
    /// `%j`, 001–366.
    DayOfYear,
    /// `%G`, the ISO 8601 week-based year.
    IsoYear,
    /// `%V`, the ISO 8601 week, 01–53.
    IsoWeek,
}

/// One piece of an index template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Piece {
    Literal(String),
    Date(DatePart),
}

/// The index (or data stream) name: fixed, or a template rendered from each event's time.
/// Every date part is an hour or coarser, so a rendered name depends only on the hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum IndexName {
    Fixed(String),
    Template(Vec<Piece>),
}

pub(super) const NANOS_PER_HOUR: i64 = 3_600_000_000_000;

impl IndexName {
    /// An `index` mode template: date parts parsed, and a sample rendering checked against
    /// Elasticsearch's index name rules (date parts only add digits, so one sample stands for
    /// all).
    pub(super) fn parse(template: &str) -> Result<IndexName, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = template.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                literal.push(c);
                continue;
            }
            let part = match chars.next() {
                Some('Y') => DatePart::Year,
                Some('y') => DatePart::Year2,
                Some('m') => DatePart::Month,
                Some('d') => DatePart::Day,
                Some('H') => DatePart::Hour,
                Some('j') => DatePart::DayOfYear,
                Some('G') => DatePart::IsoYear,
                Some('V') => DatePart::IsoWeek,
                other => {
                    let got = other.map_or_else(|| "a lone %".to_string(), |c| format!("%{c}"));
                    return Err(format!(
                        "elasticsearch index {template:?}: {got} is not a date part; use %Y %y %m %d %H %j %G %V"
                    ));
                }
            };
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Date(part));
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        let name = if pieces.iter().all(|p| matches!(p, Piece::Literal(_))) {
            IndexName::Fixed(template.to_string())
        } else {
            IndexName::Template(pieces)
        };
        // 2024-12-30T00:00:00Z: ISO year 2025, so every part renders at full width.
        let sample = name.render(1_735_516_800_000_000_000);
        check_index_name(&sample).map_err(|why| {
            format!("elasticsearch index {template:?} (such as {sample:?}) {why}")
        })?;
        Ok(name)
    }

    /// A `data_stream` mode name: verbatim, checked against the index name rules and the data
    /// stream ones.
    pub(super) fn data_stream(name: &str) -> Result<IndexName, String> {
        if name.contains('%') {
            return Err(format!(
                "elasticsearch data stream {name:?}: in data_stream mode the index is the data \
                 stream's name, used verbatim; remove the date parts (Elasticsearch rolls a data \
                 stream's backing indices itself), such as index = \"logs-weir-default\""
            ));
        }
        check_index_name(name)
            .map_err(|why| format!("elasticsearch data stream {name:?} {why}"))?;
        if name.starts_with(".ds-") {
            return Err(format!(
                "elasticsearch data stream {name:?} must not start with .ds- (the prefix of backing indices)"
            ));
        }
        Ok(IndexName::Fixed(name.to_string()))
    }

    /// The fixed name, if the name does not depend on time.
    pub(super) fn fixed(&self) -> Option<&str> {
        match self {
            IndexName::Fixed(n) => Some(n),
            IndexName::Template(_) => None,
        }
    }

    /// The name for an event at `ts_ns` (nanoseconds since the epoch).
    pub(super) fn render(&self, ts_ns: i64) -> String {
        let pieces = match self {
            IndexName::Fixed(n) => return n.clone(),
            IndexName::Template(p) => p,
        };
        // Every i64 of nanoseconds (years 1677–2262) is within jiff's range.
        let ts = jiff::Timestamp::from_nanosecond(i128::from(ts_ns))
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let dt = jiff::tz::TimeZone::UTC.to_datetime(ts);
        let mut out = String::with_capacity(32);
        for piece in pieces {
            use std::fmt::Write as _;
            // Writing to a String cannot fail.
            let _ = match piece {
                Piece::Literal(s) => {
                    out.push_str(s);
                    Ok(())
                }
                Piece::Date(DatePart::Year) => write!(out, "{:04}", dt.year()),
                Piece::Date(DatePart::Year2) => write!(out, "{:02}", dt.year().rem_euclid(100)),
                Piece::Date(DatePart::Month) => write!(out, "{:02}", dt.month()),
                Piece::Date(DatePart::Day) => write!(out, "{:02}", dt.day()),
                Piece::Date(DatePart::Hour) => write!(out, "{:02}", dt.hour()),
                Piece::Date(DatePart::DayOfYear) => write!(out, "{:03}", dt.day_of_year()),
                Piece::Date(DatePart::IsoYear) => write!(out, "{:04}", dt.iso_week_date().year()),
                Piece::Date(DatePart::IsoWeek) => write!(out, "{:02}", dt.iso_week_date().week()),
            };
        }
        out
    }
}

/// Elasticsearch's index name rules; the error completes "index X ...".
fn check_index_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".to_string());
    }
    if name == "." || name == ".." {
        return Err("cannot be . or ..".to_string());
    }
    if name.starts_with(['-', '_', '+']) {
        return Err("must not start with '-', '_' or '+'".to_string());
    }
    if name.chars().any(char::is_uppercase) {
        return Err("must be lowercase".to_string());
    }
    if let Some(c) = name.chars().find(|c| {
        matches!(
            c,
            '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ' ' | ',' | '#' | ':'
        ) || c.is_control()
    }) {
        return Err(format!(
            "must not contain {c:?} (nor any of \\ / * ? \" < > | , # : or a space)"
        ));
    }
    if name.len() > MAX_INDEX_BYTES {
        return Err(format!(
            "is {} bytes long; Elasticsearch allows at most {MAX_INDEX_BYTES}",
            name.len()
        ));
    }
    Ok(())
}

/// A secret header value; `Debug` never shows it.
#[derive(Clone)]
pub(super) struct Secret(pub(super) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}
