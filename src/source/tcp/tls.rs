//! TLS on the TCP source: `tls = { cert_file, key_file, client_ca_file, handshake_timeout_secs }`.
//!
//! rustls with the ring provider (no OpenSSL), TLS 1.2 and 1.3, rustls' own cipher order. With
//! `client_ca_file`, every client must present a certificate signed by one of its CAs (mutual
//! TLS); without it, no client certificate is asked for.
//!
//! # Decisions
//! - `weir validate` checks the block ([`TlsConfig::check`]: unknown keys, empty paths, a zero
//!   timeout) without reading files: compile is pure. The files are read when the source
//!   starts ([`TlsConfig::acceptor`]); an unreadable or empty file is an error that names it,
//!   and the source does not start. Relative paths are relative to weir's working directory,
//!   as a file source's `paths` are. A certificate renewal needs a restart (or a reload that
//!   changes the source).
//! - Everything before the handshake completes is bounded the way a plaintext client is, and
//!   more tightly: the connection holds one of `max_connections` slots from `accept`, and must
//!   finish the handshake within `handshake_timeout_secs` (a client that opens TCP and never
//!   sends a ClientHello is dropped then, counted `reason="handshake_timeout"`). A failed
//!   handshake (a plaintext client, no or an untrusted client certificate) is counted
//!   `reason="tls_error"`; none of its bytes becomes an event. rustls caps handshake messages
//!   itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;

/// `tls = { ... }` on a `type = "tcp"` source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server's certificate chain, leaf first. Required.
    pub cert_file: PathBuf,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1). Required.
    pub key_file: PathBuf,
    /// PEM file with the CAs that sign client certificates. Set: every client must present a
    /// certificate signed by one of them. Default: none (no client certificate is asked for).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// A client must complete the TLS handshake within this many seconds of connecting, or it
    /// is disconnected (`reason="handshake_timeout"`). Default: 10.
    #[serde(default = "default_handshake_timeout_secs")]
    pub handshake_timeout_secs: u64,
}

const fn default_handshake_timeout_secs() -> u64 {
    10
}

/// Longest handshake timeout honoured (larger values would overflow the clock).
const MAX_HANDSHAKE: Duration = Duration::from_secs(24 * 3600);

/// Why the TLS settings of a TCP source cannot be used (at start, after `weir validate`).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} file {} (tls.{key}): {message}", file.display())]
    Pem {
        what: &'static str,
        key: &'static str,
        file: PathBuf,
        message: String,
    },
    #[error("no {what} in {} (tls.{key}): expected a PEM file", file.display())]
    Empty {
        what: &'static str,
        key: &'static str,
        file: PathBuf,
    },
    #[error("tls.client_ca_file {}: {message}", file.display())]
    ClientCa { file: PathBuf, message: String },
    #[error("tls.cert_file and tls.key_file rejected by rustls (does the key match the certificate?): {0}")]
    Rustls(rustls::Error),
}

impl TlsConfig {
    /// What serde cannot check, without touching the files. The message names the key.
    pub fn check(&self) -> Result<(), String> {
        for (key, p) in [
            ("cert_file", Some(&self.cert_file)),
            ("key_file", Some(&self.key_file)),
            ("client_ca_file", self.client_ca_file.as_ref()),
        ] {
            if p.is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(format!("tls.{key} is empty: give the path of a PEM file"));
            }
        }
        if self.handshake_timeout_secs == 0 {
            return Err(
                "tls.handshake_timeout_secs must be at least 1: a client that never completes \
                 its handshake would hold its slot forever"
                    .into(),
            );
        }
        Ok(())
    }

    /// How long a client has to complete its handshake.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs).min(MAX_HANDSHAKE)
    }

    /// Reads the files and builds the acceptor.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let certs = read_certs(&self.cert_file, "certificate", "cert_file")?;
        let key = PrivateKeyDer::from_pem_file(&self.key_file)
            .map_err(|e| pem_error("private key", "key_file", &self.key_file, e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Rustls)?;
        let builder = match &self.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in read_certs(ca, "CA certificate", "client_ca_file")? {
                    roots.add(c).map_err(|e| TlsError::ClientCa {
                        file: ca.clone(),
                        message: e.to_string(),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsError::ClientCa {
                            file: ca.clone(),
                            message: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(TlsError::Rustls)?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

fn pem_error(
    what: &'static str,
    key: &'static str,
    file: &Path,
    e: rustls_pki_types::pem::Error,
) -> TlsError {
    match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what,
            key,
            file: file.to_path_buf(),
        },
        e => TlsError::Pem {
            what,
            key,
            file: file.to_path_buf(),
            message: e.to_string(),
        },
    }
}

fn read_certs(
    file: &Path,
    what: &'static str,
    key: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(what, key, file, e))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            key,
            file: file.to_path_buf(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<TlsConfig, String> {
        toml::from_str::<TlsConfig>(toml).map_err(|e| e.to_string())
    }

    #[test]
    fn the_example_parses_and_defaults_apply() {
        let t = parse("cert_file = \"s.crt\"\nkey_file = \"s.key\"\n").unwrap();
        assert_eq!(t.handshake_timeout_secs, 10);
        assert_eq!(t.client_ca_file, None);
        t.check().unwrap();
        let e = parse("cert_file = \"s.crt\"\nkey_file = \"s.key\"\nca = \"x\"\n").unwrap_err();
        assert!(e.contains("unknown field `ca`"), "{e}");
    }

    #[test]
    fn empty_paths_and_a_zero_timeout_are_refused() {
        let t = parse("cert_file = \"s.crt\"\nkey_file = \"\"\n").unwrap();
        assert_eq!(
            t.check().unwrap_err(),
            "tls.key_file is empty: give the path of a PEM file"
        );
        let t = parse("cert_file = \"a\"\nkey_file = \"b\"\nhandshake_timeout_secs = 0\n").unwrap();
        assert!(t.check().unwrap_err().contains("handshake_timeout_secs"));
    }

    #[test]
    fn unreadable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.crt");
        let t = TlsConfig {
            cert_file: missing.clone(),
            key_file: missing.clone(),
            client_ca_file: None,
            handshake_timeout_secs: 10,
        };
        let e = t.acceptor().err().unwrap().to_string();
        assert!(e.contains(&missing.display().to_string()), "{e}");
        assert!(e.contains("tls.cert_file"), "{e}");
        let empty = dir.path().join("empty.crt");
        std::fs::write(&empty, "not pem\n").unwrap();
        let t = TlsConfig {
            cert_file: empty.clone(),
            ..t
        };
        let e = t.acceptor().err().unwrap().to_string();
        assert!(e.starts_with("no certificate in "), "{e}");
        assert!(e.contains(&empty.display().to_string()), "{e}");
    }

    #[test]
    fn a_matching_certificate_and_key_make_an_acceptor() {
        let dir = tempfile::tempdir().unwrap();
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (dir.path().join("s.crt"), dir.path().join("s.key"));
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        let t = TlsConfig {
            cert_file: cert.clone(),
            key_file: key,
            client_ca_file: Some(cert),
            handshake_timeout_secs: 10,
        };
        assert!(t.acceptor().is_ok());
    }
}
