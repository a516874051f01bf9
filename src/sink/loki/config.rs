//! `[[sinks]] type = "loki"`: the config, and its checks at build time (labels, metadata,
//! auth). Secrets are read here, from the environment, and kept in [`Secret`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use base64::Engine as _;
use serde::Deserialize;

use super::sink::LokiSink;
use crate::sink::{secret_from_env, BatchConfig, BufferConfig, RequestConfig};

/// The push path, appended to `endpoint`.
const PUSH_PATH: &str = "/loki/api/v1/push";

/// `[[sinks]] type = "loki"`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LokiConfig {
    /// The sink's name: in `weir_sink_*{sink}`, logs, its disk buffer's directory, and in
    /// reloads, which keep a sink whose name and settings are unchanged. Letters, digits, `_`
    /// and `-`. Default: its type, or `type_i` (i: its place among the sinks) when several
    /// sinks share a type — name them, so that adding one does not rename the others.
    #[serde(default)]
    pub name: Option<String>,
    /// Base URL of Loki, such as `http://loki:3100`; lines are pushed to
    /// `{endpoint}/loki/api/v1/push`. Required.
    pub endpoint: String,
    /// `protobuf` (snappy-compressed, the default) or `json`.
    #[serde(default = "default_encoding")]
    pub encoding: LokiEncoding,
    /// Stream labels. A value is either a field reference, `"{{ component }}"`, `"{{ level }}"`,
    /// `"{{ source }}"` or a source attribute such as `"{{ namespace }}"`, or a static string.
    /// `{{ level }}` is weir's normalised level (`INFO`, `WARNING`, ...; `UNKNOWN` when the
    /// line has none). A label whose field an event lacks is left out. `trace_id` and `message` cannot be labels
    /// (one stream per value); send them as structured metadata. Default: `job = "weir"`,
    /// `component = "{{ component }}"`, `level = "{{ level }}"`.
    #[serde(default = "default_labels")]
    pub labels: BTreeMap<String, String>,
    /// Fields sent as Loki 3 structured metadata with each line: `trace_id` or source attribute
    /// names. Empty values are left out. Default: `["trace_id"]`.
    #[serde(default = "default_structured_metadata")]
    pub structured_metadata: Vec<String>,
    /// Tenant, sent as `X-Scope-OrgID` (Loki with `auth_enabled`). Default: none.
    #[serde(default = "default_tenant_id")]
    pub tenant_id: Option<String>,
    /// User for HTTP basic auth; needs `basic_auth_password_env`. Default: none.
    #[serde(default = "default_basic_auth_user")]
    pub basic_auth_user: Option<String>,
    /// Name of the environment variable holding the basic auth password. Default: none.
    #[serde(default = "default_basic_auth_password_env")]
    pub basic_auth_password_env: Option<String>,
    /// Name of the environment variable holding a bearer token (instead of basic auth).
    /// Default: none.
    #[serde(default = "default_bearer_token_env")]
    pub bearer_token_env: Option<String>,
    /// When batches are sent.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Where waiting events are kept.
    #[serde(default)]
    pub buffer: BufferConfig,
    /// Timeouts and retries.
    #[serde(default)]
    pub request: RequestConfig,
    /// File that receives, one JSON object per line, each event Loki rejected and why.
    /// Default: none (rejected events are counted and logged, then dropped).
    #[serde(default = "default_dead_letter_path")]
    pub dead_letter_path: Option<PathBuf>,
}

/// How a push request is encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LokiEncoding {
    /// `logproto.PushRequest`, snappy block-compressed.
    #[default]
    Protobuf,
    /// Loki's JSON push body.
    Json,
}

const fn default_encoding() -> LokiEncoding {
    LokiEncoding::Protobuf
}
fn default_labels() -> BTreeMap<String, String> {
    [
        ("job", "weir"),
        ("component", "{{ component }}"),
        ("level", "{{ level }}"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}
fn default_structured_metadata() -> Vec<String> {
    vec!["trace_id".to_string()]
}
const fn default_tenant_id() -> Option<String> {
    None
}
const fn default_basic_auth_user() -> Option<String> {
    None
}
const fn default_basic_auth_password_env() -> Option<String> {
    None
}
const fn default_bearer_token_env() -> Option<String> {
    None
}
const fn default_dead_letter_path() -> Option<PathBuf> {
    None
}

impl LokiConfig {
    /// A config with the defaults for everything but the endpoint (for `weir run --loki URL`).
    pub fn with_endpoint(endpoint: impl Into<String>) -> LokiConfig {
        LokiConfig {
            name: None,
            endpoint: endpoint.into(),
            encoding: default_encoding(),
            labels: default_labels(),
            structured_metadata: default_structured_metadata(),
            tenant_id: default_tenant_id(),
            basic_auth_user: default_basic_auth_user(),
            basic_auth_password_env: default_basic_auth_password_env(),
            bearer_token_env: default_bearer_token_env(),
            batch: BatchConfig::default(),
            buffer: BufferConfig::default(),
            request: RequestConfig::default(),
            dead_letter_path: default_dead_letter_path(),
        }
    }

    /// Checks labels, metadata and auth, reads the secrets, and returns the sink.
    pub fn build(&self) -> Result<LokiSink, String> {
        let endpoint = self.endpoint.trim().trim_end_matches('/');
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(format!(
                "loki endpoint {:?} must start with http:// or https://",
                crate::redact::urls(&self.endpoint)
            ));
        }
        if endpoint.ends_with(PUSH_PATH) {
            return Err(format!(
                "loki endpoint {:?} is the base URL (such as http://loki:3100); weir adds {PUSH_PATH}",
                crate::redact::urls(&self.endpoint)
            ));
        }

        let labels = compile_labels(&self.labels)?;
        let metadata = compile_metadata(&self.structured_metadata)?;

        let mut headers = match self.encoding {
            LokiEncoding::Protobuf => vec![
                (
                    "Content-Type".to_string(),
                    "application/x-protobuf".to_string(),
                ),
                ("Content-Encoding".to_string(), "snappy".to_string()),
            ],
            LokiEncoding::Json => {
                vec![("Content-Type".to_string(), "application/json".to_string())]
            }
        };
        if let Some(tenant) = &self.tenant_id {
            if tenant.is_empty() {
                return Err("loki tenant_id is empty; leave it out for no tenant".to_string());
            }
            headers.push(("X-Scope-OrgID".to_string(), tenant.clone()));
        }

        let auth = match (
            &self.basic_auth_user,
            &self.basic_auth_password_env,
            &self.bearer_token_env,
        ) {
            (None, None, None) => None,
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                return Err(
                    "loki: basic_auth_* and bearer_token_env are exclusive; choose one".to_string(),
                )
            }
            (Some(user), Some(var), None) => {
                let password = secret_from_env(Some(var))
                    .map_err(|e| format!("loki basic_auth_password_env: {e}"))?
                    .unwrap_or_default();
                let token = base64::engine::general_purpose::STANDARD
                    .encode(format!("{user}:{password}"));
                Some(Secret(format!("Basic {token}")))
            }
            (Some(_), None, None) => {
                return Err(
                    "loki basic_auth_user needs basic_auth_password_env (the variable holding the password)"
                        .to_string(),
                )
            }
            (None, Some(_), None) => {
                return Err("loki basic_auth_password_env needs basic_auth_user".to_string())
            }
            (None, None, Some(var)) => {
                let token = secret_from_env(Some(var))
                    .map_err(|e| format!("loki bearer_token_env: {e}"))?
                    .unwrap_or_default();
                Some(Secret(format!("Bearer {token}")))
            }
        };

        Ok(LokiSink {
            url: format!("{endpoint}{PUSH_PATH}"),
            encoding: self.encoding,
            labels,
            metadata,
            headers,
            auth,
        })
    }
}

/// A label's value: a field of the event, or a fixed string.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum LabelValue {
    Static(String),
    Component,
    Level,
    Source,
    /// A source attribute (`stream`, `namespace`, `pod`, ...).
    Attr(String),
}

/// Loki's (and Prometheus') label name syntax: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Fields that would make one stream per line.
fn is_high_cardinality(field: &str) -> bool {
    matches!(field, "trace_id" | "message")
}

fn compile_labels(labels: &BTreeMap<String, String>) -> Result<Vec<(String, LabelValue)>, String> {
    if labels.is_empty() {
        return Err(
            "loki labels are empty; Loki needs at least one (such as job = \"weir\")".to_string(),
        );
    }
    let mut out = Vec::with_capacity(labels.len());
    for (name, raw) in labels {
        if !is_label_name(name) {
            return Err(format!(
                "loki label name {name:?} is invalid: use letters, digits and _, not starting with a digit"
            ));
        }
        let value = match parse_reference(raw) {
            Ok(None) => LabelValue::Static(raw.clone()),
            Ok(Some(field)) if is_high_cardinality(field) => {
                return Err(format!(
                    "loki label {name:?} refers to {field}, which is unique per line: every value would \
                     be a stream of its own; send trace_id as structured_metadata instead"
                ))
            }
            Ok(Some("component")) => LabelValue::Component,
            Ok(Some("level")) => LabelValue::Level,
            Ok(Some("source")) => LabelValue::Source,
            Ok(Some(field)) => LabelValue::Attr(field.to_string()),
            Err(()) => {
                return Err(format!(
                    "loki label {name:?} = {raw:?}: a value is either one field reference such as \
                     \"{{{{ component }}}}\" or a static string without braces"
                ))
            }
        };
        out.push((name.clone(), value));
    }
    // An event lacking every referenced field would make a stream without labels, which Loki
    // rejects (400): keep at least one label that always has a value.
    let always = out.iter().any(|(_, v)| {
        matches!(v, LabelValue::Static(s) if !s.is_empty())
            || matches!(v, LabelValue::Level | LabelValue::Source)
    });
    if !always {
        return Err(
            "loki labels: at least one must always have a value (a static string, {{ level }} or \
             {{ source }}), such as job = \"weir\"; Loki rejects a stream without labels"
                .to_string(),
        );
    }
    Ok(out)
}

/// `Ok(Some(field))` for `"{{ field }}"`, `Ok(None)` for a static string, `Err` for a string
/// that holds braces but is not one whole reference.
fn parse_reference(raw: &str) -> Result<Option<&str>, ()> {
    let t = raw.trim();
    if let Some(inner) = t.strip_prefix("{{").and_then(|r| r.strip_suffix("}}")) {
        let field = inner.trim();
        let valid = !field.is_empty()
            && field
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        return if valid { Ok(Some(field)) } else { Err(()) };
    }
    if raw.contains("{{") || raw.contains("}}") {
        return Err(());
    }
    Ok(None)
}

fn compile_metadata(names: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        if !is_label_name(name) {
            return Err(format!(
                "loki structured_metadata name {name:?} is invalid: use letters, digits and _, not starting with a digit"
            ));
        }
        if matches!(
            name.as_str(),
            "message" | "level" | "component" | "source" | "timestamp"
        ) {
            return Err(format!(
                "loki structured_metadata {name:?}: only trace_id or source attribute names \
                 (the line itself is sent unchanged; component and level belong in labels)"
            ));
        }
        if out.contains(name) {
            return Err(format!("loki structured_metadata lists {name:?} twice"));
        }
        out.push(name.clone());
    }
    Ok(out)
}

/// A secret header value; `Debug` never shows it.
#[derive(Clone)]
pub(super) struct Secret(pub(super) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}
