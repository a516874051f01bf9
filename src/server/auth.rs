//! Authentication of HTTP requests: basic auth with bcrypt hashes (the public listener, from
//! `--web-config-file`) and a bearer token (the admin listener, `--admin-token-env`).
//!
//! # Decisions
//! - bcrypt is slow on purpose (tens of milliseconds at cost 10), so a success is cached,
//!   keyed by the user and the SHA-256 of the password (never the password itself), as the
//!   exporter-toolkit does; a scrape every 15 s then costs one hash lookup. The cache is
//!   bounded ([`CACHE_ENTRIES`], emptied when full).
//! - At most [`VERIFYING`] bcrypt verifications run at once, on the blocking pool: a flood of
//!   wrong passwords costs those threads, not every core, and never the async workers.
//! - An unknown user is checked against a fixed hash too, so the answer's timing does not tell
//!   which users exist. The bearer token is compared through SHA-256 digests in constant time,
//!   so neither its bytes nor its length leak.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use axum::http::{header, HeaderMap};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// Successful verifications remembered.
const CACHE_ENTRIES: usize = 256;
/// bcrypt verifications running at once.
const VERIFYING: usize = 2;

/// `basic_auth_users` of a web config.
pub struct BasicAuth {
    users: HashMap<String, String>,
    /// What an unknown user's password is checked against: a hash of the users' cost.
    dummy: String,
    cache: Mutex<HashMap<(String, [u8; 32]), ()>>,
    verifying: Semaphore,
}

impl BasicAuth {
    /// Checks that each password is a bcrypt hash; the error names the user, not the value.
    pub fn new(users: &BTreeMap<String, String>) -> Result<BasicAuth, String> {
        let mut cost = bcrypt::DEFAULT_COST;
        for (user, hash) in users {
            match hash.parse::<bcrypt::HashParts>() {
                Ok(parts) => cost = parts.get_cost(),
                Err(_) => {
                    return Err(format!(
                        "basic_auth_users: user {user}: the password must be a bcrypt hash \
                         (htpasswd -nBC 10 {user})"
                    ))
                }
            }
        }
        let dummy = bcrypt::hash(uuid::Uuid::new_v4().to_string(), cost)
            .map_err(|e| format!("basic_auth_users: {e}"))?;
        Ok(BasicAuth {
            users: users.clone().into_iter().collect(),
            dummy,
            cache: Mutex::new(HashMap::new()),
            verifying: Semaphore::new(VERIFYING),
        })
    }

    /// Whether the request's `Authorization: Basic ...` names a user with the right password.
    pub async fn allows(&self, headers: &HeaderMap) -> bool {
        let Some((user, password)) = basic_credentials(headers) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        let key = (user, digest);
        if self.lock().contains_key(&key) {
            return true;
        }
        let (known, hash) = match self.users.get(&key.0) {
            Some(h) => (true, h.clone()),
            None => (false, self.dummy.clone()),
        };
        let Ok(_permit) = self.verifying.acquire().await else {
            return false;
        };
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .is_ok_and(|r| r.unwrap_or(false));
        if ok && known {
            let mut cache = self.lock();
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key, ());
        }
        ok && known
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, [u8; 32]), ()>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// User and password of an `Authorization: Basic` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// The admin listener's bearer token.
pub struct BearerToken {
    digest: [u8; 32],
}

impl BearerToken {
    pub fn new(token: &str) -> BearerToken {
        BearerToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Whether the request carries `Authorization: Bearer TOKEN` with this token.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let Some((scheme, token)) = value.split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return false;
        }
        let got: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        got.ct_eq(&self.digest).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn basic(user: &str, password: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {v}")).unwrap(),
        );
        h
    }

    #[tokio::test]
    async fn right_password_only_and_cached() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let users = BTreeMap::from([("prom".to_string(), hash)]);
        let auth = BasicAuth::new(&users).unwrap();
        assert!(!auth.allows(&HeaderMap::new()).await);
        assert!(!auth.allows(&basic("prom", "wrong")).await);
        assert!(!auth.allows(&basic("nobody", "s3cret")).await);
        assert!(auth.lock().is_empty(), "failures are not cached");
        assert!(auth.allows(&basic("prom", "s3cret")).await);
        assert_eq!(auth.lock().len(), 1);
        assert!(auth.allows(&basic("prom", "s3cret")).await);
        assert!(!auth.allows(&basic("prom", "s3cret2")).await);
    }

    #[test]
    fn bearer_token_compared_whole() {
        let t = BearerToken::new("tok-123");
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(t.allows(&with("Bearer tok-123")));
        assert!(t.allows(&with("bearer tok-123")));
        assert!(!t.allows(&with("Bearer tok-12")));
        assert!(!t.allows(&with("Bearer tok-1234")));
        assert!(!t.allows(&with("Basic tok-123")));
        assert!(!t.allows(&HeaderMap::new()));
    }
}
