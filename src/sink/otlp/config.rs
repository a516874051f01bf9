//! `[[sinks]] type = "otlp"`: the config and its checks at build time (endpoints, signals,
//! resource, headers). Secrets are read here, from the environment, and kept in [`Secret`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use super::sink::{OtlpSink, Signal};
use crate::sink::{secret_from_env, BatchConfig, BufferConfig, RequestConfig};

/// `[[sinks]] type = "otlp"`
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The sink's name: in `weir_sink_*{sink}`, logs, its disk buffer's directory, and in
    /// reloads, which keep a sink whose name and settings are unchanged. Letters, digits, `_`
    /// and `-`. Default: its type, or `type_i` (i: its place among the sinks) when several
    /// sinks share a type — name them, so that adding one does not rename the others.
    /// Each signal's delivery is counted under `NAME/traces` and `NAME/logs`.
    #[serde(default)]
    pub name: Option<String>,
    /// Base URL of the OTLP/HTTP receiver, such as `http://collector:4318`: spans go to
    /// `{endpoint}/v1/traces`, log records to `{endpoint}/v1/logs`, as the OTLP/HTTP
    /// specification says. Required unless both `traces_endpoint` and `logs_endpoint` are given.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Full URL for spans, used as is (no path added). Default: `{endpoint}/v1/traces`.
    #[serde(default)]
    pub traces_endpoint: Option<String>,
    /// Full URL for log records, used as is. Default: `{endpoint}/v1/logs`.
    #[serde(default)]
    pub logs_endpoint: Option<String>,
    /// What is sent: `traces` (the pipeline's `[[spans]]`) and/or `logs` (every line as a log
    /// record). Default: `["traces", "logs"]`.
    #[serde(default = "default_signals")]
    pub signals: Vec<Signal>,
    /// The `service.name` resource attribute. Default: `weir`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// More resource attributes (`"deployment.environment" = "prod"`). Default: none.
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
    /// `none` (default) or `gzip` (the request body, `Content-Encoding: gzip`).
    #[serde(default)]
    pub compression: OtlpCompression,
    /// Extra request headers with values in the file (not secrets). Default: none.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Extra request headers whose values come from environment variables, header name to
    /// variable name (`"x-honeycomb-team" = "HONEYCOMB_KEY"`): read at start, never logged.
    /// Default: none.
    #[serde(default)]
    pub headers_env: BTreeMap<String, String>,
    /// Name of the environment variable holding a bearer token (`Authorization: Bearer ...`).
    /// Default: none.
    #[serde(default)]
    pub bearer_token_env: Option<String>,
    /// When batches are sent (each signal batches on its own).
    #[serde(default)]
    pub batch: BatchConfig,
    /// Where waiting events are kept.
    #[serde(default)]
    pub buffer: BufferConfig,
    /// Timeouts and retries.
    #[serde(default)]
    pub request: RequestConfig,
    /// File that receives, one JSON object per line, each line whose log record was rejected
    /// and why; rejected spans go beside it, to the same name with `-traces` before the
    /// extension (the record holds the span's end line). Default: under `data_dir`
    /// (`dead-letter/NAME.ndjson` and `dead-letter/NAME-traces.ndjson`), else none.
    #[serde(default)]
    pub dead_letter_path: Option<PathBuf>,
}

/// How request bodies are compressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OtlpCompression {
    #[default]
    None,
    Gzip,
}

fn default_signals() -> Vec<Signal> {
    vec![Signal::Traces, Signal::Logs]
}
fn default_service_name() -> String {
    "weir".to_string()
}

/// The built sinks, one per signal sent.
#[derive(Debug, Clone)]
pub struct OtlpSinks {
    pub traces: Option<OtlpSink>,
    pub logs: Option<OtlpSink>,
}

/// A secret header value; `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(pub(super) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

fn check_url(what: &str, url: &str) -> Result<String, String> {
    let url = url.trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "otlp {what} {:?} must start with http:// or https://",
            crate::redact::urls(url)
        ));
    }
    Ok(url.to_string())
}

/// An HTTP header name: RFC 9110 token characters.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl OtlpConfig {
    /// What `weir validate --explain` shows: the endpoint (userinfo redacted) and the signals.
    pub fn describe(&self) -> String {
        let signals: Vec<&str> = self.signals.iter().map(|s| s.as_str()).collect();
        let at = self
            .endpoint
            .as_deref()
            .or(self.traces_endpoint.as_deref())
            .or(self.logs_endpoint.as_deref())
            .unwrap_or("");
        format!("{} ({})", crate::redact::urls(at), signals.join(", "))
    }

    /// Checks endpoints, signals, resource and headers, reads the secrets, and returns the
    /// sinks.
    pub fn build(&self) -> Result<OtlpSinks, String> {
        if self.signals.is_empty() {
            return Err("otlp signals is empty; send `traces`, `logs` or both".to_string());
        }
        if self
            .signals
            .iter()
            .filter(|s| **s == Signal::Traces)
            .count()
            > 1
            || self.signals.iter().filter(|s| **s == Signal::Logs).count() > 1
        {
            return Err("otlp signals lists a signal twice".to_string());
        }
        let base = self
            .endpoint
            .as_deref()
            .map(|e| check_url("endpoint", e))
            .transpose()?
            .map(|e| e.trim_end_matches('/').to_string());
        if let Some(b) = &base {
            for path in ["/v1/traces", "/v1/logs"] {
                if b.ends_with(path) {
                    return Err(format!(
                        "otlp endpoint {:?} is the base URL (such as http://collector:4318); weir adds {path}, or give traces_endpoint / logs_endpoint in full",
                        crate::redact::urls(b)
                    ));
                }
            }
        }
        let url_of = |signal: Signal, own: &Option<String>| -> Result<String, String> {
            match (own, &base) {
                (Some(u), _) => check_url(&format!("{}_endpoint", signal.as_str()), u),
                (None, Some(b)) => Ok(format!("{b}{}", signal.path())),
                (None, None) => Err(format!(
                    "otlp needs `endpoint` (such as http://collector:4318) or `{}_endpoint`",
                    signal.as_str()
                )),
            }
        };
        if self.service_name.trim().is_empty() {
            return Err("otlp service_name is empty".to_string());
        }
        for k in self.resource.keys() {
            if k.is_empty() {
                return Err("otlp resource: an attribute name is empty".to_string());
            }
            if k == "service.name" {
                return Err(
                    "otlp resource sets service.name; use `service_name` instead".to_string(),
                );
            }
        }
        let mut plain = Vec::new();
        for (k, v) in &self.headers {
            if !is_header_name(k) {
                return Err(format!("otlp header name {k:?} is invalid"));
            }
            if reqwest::header::HeaderValue::from_str(v).is_err() {
                return Err(format!(
                    "otlp header {k:?}: the value holds characters a header cannot"
                ));
            }
            plain.push((k.clone(), v.clone()));
        }
        let mut secrets = Vec::new();
        for (k, var) in &self.headers_env {
            if !is_header_name(k) {
                return Err(format!("otlp headers_env name {k:?} is invalid"));
            }
            if self.headers.contains_key(k) {
                return Err(format!(
                    "otlp header {k:?} is in both headers and headers_env"
                ));
            }
            let value = secret_from_env(Some(var))
                .map_err(|e| format!("otlp headers_env {k:?}: {e}"))?
                .unwrap_or_default();
            if reqwest::header::HeaderValue::from_str(&value).is_err() {
                return Err(format!(
                    "otlp headers_env {k:?}: the value of {var} holds characters a header cannot"
                ));
            }
            secrets.push((k.clone(), Secret(value)));
        }
        if let Some(var) = &self.bearer_token_env {
            if self
                .headers
                .keys()
                .chain(self.headers_env.keys())
                .any(|k| k.eq_ignore_ascii_case("authorization"))
            {
                return Err(
                    "otlp: bearer_token_env and an Authorization header are exclusive".to_string(),
                );
            }
            let token = secret_from_env(Some(var))
                .map_err(|e| format!("otlp bearer_token_env: {e}"))?
                .unwrap_or_default();
            secrets.push((
                "Authorization".to_string(),
                Secret(format!("Bearer {token}")),
            ));
        }
        let make = |signal: Signal, own: &Option<String>| -> Result<Option<OtlpSink>, String> {
            if !self.signals.contains(&signal) {
                return Ok(None);
            }
            Ok(Some(OtlpSink::new(
                signal,
                url_of(signal, own)?,
                self.compression,
                plain.clone(),
                secrets.clone(),
                &self.service_name,
                &self.resource,
            )))
        };
        Ok(OtlpSinks {
            traces: make(Signal::Traces, &self.traces_endpoint)?,
            logs: make(Signal::Logs, &self.logs_endpoint)?,
        })
    }
}
