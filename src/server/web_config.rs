//! `--web-config-file`: TLS and basic authentication configured as the Prometheus
//! exporter-toolkit does, so a Prometheus scrape config written for node_exporter
//! (`scheme: https`, `tls_config`, `basic_auth`) works against weir unchanged.
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt          # relative paths are relative to this file
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert   # optional
//!   client_ca_file: clients-ca.crt
//!   min_version: TLS12             # TLS12 (default) or TLS13
//! http_server_config:
//!   headers: { Strict-Transport-Security: max-age=31536000 }
//! basic_auth_users:
//!   prometheus: $2y$10$...         # bcrypt (htpasswd -nBC 10 prometheus)
//! ```
//!
//! # Decisions
//! - Unknown keys are errors, like everywhere in weir. Keys the exporter-toolkit knows but
//!   rustls cannot honour (`cipher_suites`, `curve_preferences`, TLS 1.0/1.1, client
//!   certificates that are requested but not verified) are errors that say so, never ignored:
//!   a security setting that silently does nothing is worse than a refusal.
//! - The file is read once, when weir starts (a certificate renewal needs a restart).
//! - Loading reads files and builds the rustls config; what it returns ([`WebConfig`]) is used
//!   by [`super::listener`] as it is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use super::auth::BasicAuth;

/// Why a web configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("cannot read web config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The YAML is invalid or has an unknown key (serde_norway says where).
    #[error("web config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("web config {path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("web config {path}: cannot read {kind} from {file}: {message}")]
    Pem {
        path: PathBuf,
        kind: &'static str,
        file: String,
        message: String,
    },
    #[error("web config {path}: TLS settings rejected by rustls: {source}")]
    Tls {
        path: PathBuf,
        source: rustls::Error,
    },
}

/// The file as written (the exporter-toolkit's schema, the parts weir supports).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebConfigFile {
    tls_server_config: Option<TlsServerConfig>,
    http_server_config: Option<HttpServerConfig>,
    /// User name → bcrypt hash of the password.
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsServerConfig {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    /// The certificate chain inline (PEM), instead of `cert_file`.
    cert: Option<String>,
    /// The key inline (PEM), instead of `key_file`.
    key: Option<String>,
    /// NoClientCert (default), VerifyClientCertIfGiven, RequireAndVerifyClientCert.
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    /// TLS12 (default) or TLS13.
    min_version: Option<String>,
    /// TLS12 or TLS13 (default).
    max_version: Option<String>,
    /// Accepted for compatibility: rustls always picks the cipher suite in its own order.
    prefer_server_cipher_suites: Option<bool>,
    cipher_suites: Option<Vec<String>>,
    curve_preferences: Option<Vec<String>>,
    client_allowed_sans: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpServerConfig {
    /// Accepted for compatibility; weir serves HTTP/1.1 only (ALPN offers `http/1.1`).
    http2: Option<bool>,
    /// Headers added to every response.
    headers: Option<BTreeMap<String, String>>,
}

/// A loaded web configuration: what the listener applies.
#[derive(Clone, Default)]
pub struct WebConfig {
    /// `None`: plain HTTP.
    pub tls: Option<Arc<ServerConfig>>,
    /// `None`: no authentication.
    pub basic_auth: Option<Arc<BasicAuth>>,
    /// Added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("basic_auth", &self.basic_auth.is_some())
            .field("headers", &self.headers.len())
            .finish()
    }
}

impl WebConfig {
    /// Reads and checks `path`, the certificate and key files it names and the password hashes.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_text(path, base, &text)
    }

    /// As [`load`](Self::load), from text; relative file names are resolved against `base`.
    pub fn from_text(path: &Path, base: &Path, text: &str) -> Result<WebConfig, WebConfigError> {
        let invalid = |what: String| WebConfigError::Invalid {
            path: path.to_path_buf(),
            what,
        };
        // An empty file is valid and changes nothing, as with the exporter-toolkit.
        let file: WebConfigFile = if text.trim().is_empty() {
            WebConfigFile::default()
        } else {
            serde_norway::from_str(text).map_err(|e| WebConfigError::Parse {
                path: path.to_path_buf(),
                message: located(&e, text),
            })?
        };
        let tls = match &file.tls_server_config {
            Some(t) => Some(Arc::new(tls_config(path, base, t)?)),
            None => None,
        };
        let basic_auth = match &file.basic_auth_users {
            Some(users) if !users.is_empty() => {
                Some(Arc::new(BasicAuth::new(users).map_err(invalid)?))
            }
            _ => None,
        };
        let mut headers = Vec::new();
        if let Some(h) = &file.http_server_config {
            let _ = h.http2;
            for (name, value) in h.headers.iter().flatten() {
                let n = HeaderName::try_from(name.as_str())
                    .map_err(|_| invalid(format!("header name {name:?} is not valid")))?;
                if n == axum::http::header::CONTENT_TYPE
                    || n == axum::http::header::CONTENT_LENGTH
                    || n == axum::http::header::WWW_AUTHENTICATE
                {
                    return Err(invalid(format!("header {name} is set by weir itself")));
                }
                let v = HeaderValue::try_from(value.as_str())
                    .map_err(|_| invalid(format!("header {name}: value {value:?} is not valid")))?;
                headers.push((n, v));
            }
        }
        Ok(WebConfig {
            tls,
            basic_auth,
            headers,
        })
    }
}

/// The YAML error with its line: serde_norway places errors inside a mapping, not an unknown
/// key of the top-level one, which is then found in the text.
fn located(e: &serde_norway::Error, text: &str) -> String {
    let message = e.to_string();
    if message.contains(" at line ") {
        return message;
    }
    if let Some(loc) = e.location() {
        return format!("{message} at line {} column {}", loc.line(), loc.column());
    }
    let key = message
        .split_once("unknown field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(k, _)| k);
    let line = key.and_then(|k| {
        text.lines().position(|l| {
            l.trim_start()
                .strip_prefix(k)
                .is_some_and(|r| r.starts_with(':'))
        })
    });
    match line {
        Some(i) => format!("{message} at line {}", i + 1),
        None => message,
    }
}

fn tls_config(
    path: &Path,
    base: &Path,
    t: &TlsServerConfig,
) -> Result<ServerConfig, WebConfigError> {
    let invalid = |what: &str| WebConfigError::Invalid {
        path: path.to_path_buf(),
        what: what.to_string(),
    };
    for (key, set) in [
        ("cipher_suites", t.cipher_suites.is_some()),
        ("curve_preferences", t.curve_preferences.is_some()),
        ("client_allowed_sans", t.client_allowed_sans.is_some()),
    ] {
        if set {
            return Err(invalid(&format!(
                "tls_server_config.{key} is not supported: rustls uses its own safe defaults \
                 (remove the key)"
            )));
        }
    }
    let _ = t.prefer_server_cipher_suites;
    let pem_err =
        |kind: &'static str, file: String, e: rustls_pki_types::pem::Error| WebConfigError::Pem {
            path: path.to_path_buf(),
            kind,
            file,
            message: e.to_string(),
        };
    let certs: Vec<CertificateDer<'static>> = match (&t.cert_file, &t.cert) {
        (Some(f), None) => {
            let f = base.join(f);
            CertificateDer::pem_file_iter(&f)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| pem_err("certificates", f.display().to_string(), e))?
        }
        (None, Some(text)) => CertificateDer::pem_slice_iter(text.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err("certificates", "cert".into(), e))?,
        (Some(_), Some(_)) => {
            return Err(invalid("tls_server_config: cert and cert_file both set"))
        }
        (None, None) => return Err(invalid("tls_server_config needs cert_file (or cert)")),
    };
    if certs.is_empty() {
        return Err(invalid("tls_server_config: no certificate in the PEM"));
    }
    let key: PrivateKeyDer<'static> = match (&t.key_file, &t.key) {
        (Some(f), None) => {
            let f = base.join(f);
            PrivateKeyDer::from_pem_file(&f)
                .map_err(|e| pem_err("a private key", f.display().to_string(), e))?
        }
        (None, Some(text)) => PrivateKeyDer::from_pem_slice(text.as_bytes())
            .map_err(|e| pem_err("a private key", "key".into(), e))?,
        (Some(_), Some(_)) => return Err(invalid("tls_server_config: key and key_file both set")),
        (None, None) => return Err(invalid("tls_server_config needs key_file (or key)")),
    };
    let version = |v: &Option<String>, default: u8| -> Result<u8, WebConfigError> {
        match v.as_deref() {
            None | Some("") => Ok(default),
            Some("TLS12") => Ok(12),
            Some("TLS13") => Ok(13),
            Some(v @ ("TLS10" | "TLS11")) => Err(invalid(&format!(
                "{v} is not supported: rustls speaks TLS 1.2 and 1.3 (use TLS12 or TLS13)"
            ))),
            Some(v) => Err(invalid(&format!(
                "unknown TLS version {v:?}: expected TLS12 or TLS13"
            ))),
        }
    };
    let (min, max) = (version(&t.min_version, 12)?, version(&t.max_version, 13)?);
    if min > max {
        return Err(invalid(
            "tls_server_config: min_version is above max_version",
        ));
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, p)| p)
            .collect();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_err = |source| WebConfigError::Tls {
        path: path.to_path_buf(),
        source,
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(tls_err)?;
    let verify = match t.client_auth_type.as_deref() {
        None | Some("") | Some("NoClientCert") => None,
        Some("VerifyClientCertIfGiven") => Some(true),
        Some("RequireAndVerifyClientCert") => Some(false),
        Some(v @ ("RequestClientCert" | "RequireAnyClientCert")) => {
            return Err(invalid(&format!(
                "client_auth_type {v} is not supported (a client certificate weir does not \
                 verify proves nothing): use VerifyClientCertIfGiven or RequireAndVerifyClientCert"
            )))
        }
        Some(v) => {
            return Err(invalid(&format!(
                "unknown client_auth_type {v:?}: expected NoClientCert, VerifyClientCertIfGiven \
                 or RequireAndVerifyClientCert"
            )))
        }
    };
    let builder = match verify {
        None => {
            if t.client_ca_file.is_some() {
                return Err(invalid(
                    "client_ca_file is set but client_auth_type is NoClientCert: set \
                     client_auth_type: RequireAndVerifyClientCert",
                ));
            }
            builder.with_no_client_auth()
        }
        Some(optional) => {
            let Some(ca) = &t.client_ca_file else {
                return Err(invalid(
                    "client_auth_type verifies client certificates: client_ca_file is required",
                ));
            };
            let ca = base.join(ca);
            let mut roots = RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(&ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| pem_err("CA certificates", ca.display().to_string(), e))?;
            for c in cas {
                roots.add(c).map_err(tls_err)?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            let v = v.build().map_err(|e| WebConfigError::Invalid {
                path: path.to_path_buf(),
                what: format!("client_ca_file {}: {e}", ca.display()),
            })?;
            builder.with_client_cert_verifier(v)
        }
    };
    let mut cfg = builder.with_single_cert(certs, key).map_err(tls_err)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<WebConfig, WebConfigError> {
        WebConfig::from_text(Path::new("web.yml"), Path::new("."), text)
    }

    fn err(text: &str) -> String {
        load(text).expect_err("invalid").to_string()
    }

    #[test]
    fn empty_file_is_plain_http_without_auth() {
        let c = load("").unwrap();
        assert!(c.tls.is_none() && c.basic_auth.is_none() && c.headers.is_empty());
    }

    #[test]
    fn unknown_keys_are_refused_where_they_are() {
        let e = err("tls_server_config:\n  cert_file: a\n  certfile: b\n");
        assert!(e.starts_with("web config web.yml: "), "{e}");
        assert!(e.contains("unknown field `certfile`"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        let e = err("http_server_config: {}\nbasic_auth: {}\n");
        assert!(e.contains("unknown field `basic_auth`"), "{e}");
        assert!(e.contains("at line 2"), "{e}");
    }

    #[test]
    fn settings_rustls_cannot_honour_are_refused_not_ignored() {
        let e = err("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [X]\n");
        assert!(e.contains("cipher_suites is not supported"), "{e}");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let inline = format!(
            "tls_server_config:\n  cert: |\n{}\n  key: |\n{}\n",
            indent(&cert.cert.pem()),
            indent(&cert.signing_key.serialize_pem())
        );
        assert!(load(&inline).unwrap().tls.is_some());
        let e = err(&format!("{inline}  min_version: TLS10\n"));
        assert!(e.contains("TLS10 is not supported"), "{e}");
        let e = err(&format!(
            "{inline}  client_auth_type: RequireAnyClientCert\n"
        ));
        assert!(e.contains("RequireAnyClientCert is not supported"), "{e}");
        let e = err(&format!(
            "{inline}  client_auth_type: RequireAndVerifyClientCert\n"
        ));
        assert!(e.contains("client_ca_file is required"), "{e}");
    }

    fn indent(pem: &str) -> String {
        pem.lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn missing_files_and_bad_hashes_are_named() {
        let e = err("tls_server_config:\n  cert_file: /nonexistent/c.pem\n  key_file: k.pem\n");
        assert!(
            e.contains("cannot read certificates from /nonexistent/c.pem"),
            "{e}"
        );
        let e = err("basic_auth_users:\n  alice: hunter2\n");
        assert!(
            e.contains("user alice: the password must be a bcrypt hash"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "the value is not echoed: {e}");
        let e = err("http_server_config:\n  headers:\n    Content-Type: x\n");
        assert!(
            e.contains("header Content-Type is set by weir itself"),
            "{e}"
        );
    }
}
