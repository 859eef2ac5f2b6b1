//! API keys: who may call the API and for which customers.
//!
//! A key is `mf_<id>_<secret>`: `id` (12 hex digits) names it in listings, logs and as the
//! Postgres user name; the secret (64 hex digits, 256 random bits) is shown once, when the key
//! is created. The store keeps, per key, in the JetStream key-value bucket `[api] keys_bucket`
//! (shared by every `meterflow serve` replica and `meterflow run`):
//!
//! * the SHA-256 of the whole key, checked on every HTTP request (a fast hash is right for a
//!   256-bit random secret: there is nothing to guess by brute force);
//! * a SCRAM-SHA-256 salted password (PBKDF2, 4096 rounds, its own salt) for the Postgres
//!   endpoint's SCRAM authentication, which needs it to verify a client proof without the key
//!   ever crossing the wire;
//! * the customers it is bound to (none: an admin key for every customer), its name, and when
//!   it was created and revoked.
//!
//! Looked-up keys are cached for [`CACHE_FOR`]: a revocation takes effect within that time on
//! every replica.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::{ApiError, Result};

/// How long a looked-up key is trusted before it is read again.
pub const CACHE_FOR: Duration = Duration::from_secs(5);
/// PBKDF2 rounds of the SCRAM salted password.
pub const SCRAM_ITERATIONS: usize = 4096;
const PREFIX: &str = "mf_";
const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 32;

/// What a key may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every customer (and usage not yet owned by any).
    Admin,
    /// Only these customers' usage.
    Customers(BTreeSet<String>),
}

impl Scope {
    /// Whether this scope covers customer `id`.
    pub fn allows(&self, id: &str) -> bool {
        match self {
            Scope::Admin => true,
            Scope::Customers(c) => c.contains(id),
        }
    }

    /// The customers of a bound key; `None` for an admin key.
    pub fn customers(&self) -> Option<&BTreeSet<String>> {
        match self {
            Scope::Admin => None,
            Scope::Customers(c) => Some(c),
        }
    }
}

/// A stored key (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Public id: the 12 hex digits after `mf_`.
    pub id: String,
    /// A label for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Customers it is bound to; empty: an admin key.
    #[serde(default)]
    pub customers: Vec<String>,
    /// SHA-256 of the whole key, hex.
    pub sha256: String,
    /// Salt of the SCRAM salted password, hex.
    pub scram_salt: String,
    /// SCRAM-SHA-256 salted password (PBKDF2 of the key), hex.
    pub scram_salted_password: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// What the key reaches.
    pub fn scope(&self) -> Scope {
        if self.customers.is_empty() {
            Scope::Admin
        } else {
            Scope::Customers(self.customers.iter().cloned().collect())
        }
    }

    /// Whether `token` is this key and the key is in force.
    pub fn accepts(&self, token: &str) -> bool {
        self.revoked_at.is_none() && constant_time_eq(sha256_hex(token).as_bytes(), self.sha256.as_bytes())
    }
}

/// Why a presented key is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not of the form `mf_<id>_<secret>`.
    Malformed,
    /// No such key, a wrong secret, or revoked (not told apart, on purpose).
    Unknown,
}

/// Splits `mf_<id>_<secret>` into its id; `None` when the form is wrong.
pub fn key_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, ID_BYTES * 2) && hex(secret, SECRET_BYTES * 2)).then_some(id)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// SHA-256 of `text`, hex.
pub fn sha256_hex(text: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The SCRAM-SHA-256 salted password of `key` (RFC 5802 `Hi`, PBKDF2-HMAC-SHA-256).
pub fn scram_salted_password(key: &str, salt: &[u8]) -> Vec<u8> {
    let mut out = [0u8; 32];
    let rounds = std::num::NonZeroU32::new(SCRAM_ITERATIONS as u32).unwrap_or(std::num::NonZeroU32::MIN);
    ring::pbkdf2::derive(ring::pbkdf2::PBKDF2_HMAC_SHA256, rounds, salt, key.as_bytes(), &mut out);
    out.to_vec()
}

impl ApiKey {
    /// The SCRAM salt and salted password, decoded.
    pub fn scram(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        Some((unhex(&self.scram_salt)?, unhex(&self.scram_salted_password)?))
    }
}

/// Makes a new key bound to `customers` (none: admin). Returns the record to store and the
/// key, which is shown once and never stored.
pub fn new_key(customers: Vec<String>, name: Option<String>, now: DateTime<Utc>) -> Result<(ApiKey, String)> {
    let rng = SystemRandom::new();
    let mut id = [0u8; ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    let mut salt = [0u8; 16];
    for buf in [&mut id[..], &mut secret[..], &mut salt[..]] {
        rng.fill(buf).map_err(|_| ApiError::Keys("no system randomness to make a key from".into()))?;
    }
    let token = format!("{PREFIX}{}_{}", hex(&id), hex(&secret));
    let key = ApiKey {
        id: hex(&id),
        name,
        customers,
        sha256: sha256_hex(&token),
        scram_salt: hex(&salt),
        scram_salted_password: hex(&scram_salted_password(&token, &salt)),
        created_at: now,
        revoked_at: None,
    };
    Ok((key, token))
}

type Cached = (Instant, Option<ApiKey>);

/// The keys, in a JetStream key-value bucket, with a short cache of lookups.
pub struct KeyStore {
    kv: jetstream::kv::Store,
    cache: Mutex<HashMap<String, Cached>>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore").finish_non_exhaustive()
    }
}

fn kv_err(e: impl std::fmt::Display) -> ApiError {
    ApiError::Keys(format!("key store: {e}"))
}

impl KeyStore {
    /// Opens bucket `bucket`, creating it when absent (with `replicas` replicas).
    pub async fn open(js: &jetstream::Context, bucket: &str, replicas: usize) -> Result<KeyStore> {
        let kv = match js.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(jetstream::kv::Config {
                    bucket: bucket.to_string(),
                    description: "meterflow API keys (hashes, never the keys)".into(),
                    history: 5,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| kv_err(format!("cannot open or create bucket {bucket}: {e}")))?,
        };
        Ok(KeyStore { kv, cache: Mutex::new(HashMap::new()) })
    }

    /// Stores a new key; returns its record and the key (shown once).
    pub async fn create(&self, customers: Vec<String>, name: Option<String>) -> Result<(ApiKey, String)> {
        let (key, token) = new_key(customers, name, Utc::now())?;
        let body = serde_json::to_vec(&key).map_err(kv_err)?;
        self.kv.create(&key.id, body.into()).await.map_err(kv_err)?;
        Ok((key, token))
    }

    /// Every key, revoked ones included, oldest first.
    pub async fn list(&self) -> Result<Vec<ApiKey>> {
        let ids: Vec<String> = match self.kv.keys().await {
            Ok(keys) => keys.try_collect().await.map_err(kv_err)?,
            Err(e) => return Err(kv_err(e)),
        };
        let mut keys = Vec::new();
        for id in ids {
            if let Some(k) = self.read(&id).await? {
                keys.push(k);
            }
        }
        keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
        Ok(keys)
    }

    async fn read(&self, id: &str) -> Result<Option<ApiKey>> {
        match self.kv.get(id).await.map_err(kv_err)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ApiError::Keys(format!("key {id}: unreadable record: {e}"))),
        }
    }

    /// Revokes key `id` (kept, marked revoked). Errors when there is no such key.
    pub async fn revoke(&self, id: &str) -> Result<ApiKey> {
        let Some(mut key) = self.read(id).await? else {
            return Err(ApiError::Keys(format!("no API key `{id}` (see `meterflow api-key list`)")));
        };
        if key.revoked_at.is_none() {
            key.revoked_at = Some(Utc::now());
            let body = serde_json::to_vec(&key).map_err(kv_err)?;
            self.kv.put(id, body.into()).await.map_err(kv_err)?;
        }
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(id);
        }
        Ok(key)
    }

    /// Key `id`, read through the cache.
    pub async fn get(&self, id: &str) -> Result<Option<ApiKey>> {
        if let Ok(cache) = self.cache.lock() {
            if let Some((at, key)) = cache.get(id) {
                if at.elapsed() < CACHE_FOR {
                    return Ok(key.clone());
                }
            }
        }
        let key = self.read(id).await?;
        if let Ok(mut cache) = self.cache.lock() {
            // Bounded: a flood of made-up ids cannot grow the cache without end.
            if cache.len() > 10_000 {
                cache.retain(|_, (at, _)| at.elapsed() < CACHE_FOR);
            }
            cache.insert(id.to_string(), (Instant::now(), key.clone()));
        }
        Ok(key)
    }

    /// The key `token` presents, when it is valid and in force.
    pub async fn authenticate(&self, token: &str) -> Result<std::result::Result<ApiKey, Refusal>> {
        let Some(id) = key_id(token) else { return Ok(Err(Refusal::Malformed)) };
        Ok(match self.get(id).await? {
            Some(key) if key.accepts(token) => Ok(key),
            _ => Err(Refusal::Unknown),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_accepted_and_a_changed_one_is_not() {
        let (key, token) = new_key(vec!["acme".into()], None, Utc::now()).unwrap();
        assert_eq!(key_id(&token), Some(key.id.as_str()));
        assert!(key.accepts(&token));
        let mut other = token.clone();
        other.pop();
        other.push(if token.ends_with('0') { '1' } else { '0' });
        assert!(!key.accepts(&other));
        assert!(!token.contains(&key.sha256), "the stored hash is not the key");
    }

    #[test]
    fn a_revoked_key_is_refused() {
        let (mut key, token) = new_key(vec![], None, Utc::now()).unwrap();
        key.revoked_at = Some(Utc::now());
        assert!(!key.accepts(&token));
    }

    #[test]
    fn malformed_keys_have_no_id() {
        for bad in ["", "mf_", "mf_abc_def", "xx_0123456789ab_00", "mf_0123456789ab_zz"] {
            assert_eq!(key_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_key_without_customers_is_an_admin_key_and_a_bound_one_reaches_only_its_customers() {
        let (admin, _) = new_key(vec![], None, Utc::now()).unwrap();
        assert_eq!(admin.scope(), Scope::Admin);
        let (bound, _) = new_key(vec!["acme".into()], None, Utc::now()).unwrap();
        assert!(bound.scope().allows("acme"));
        assert!(!bound.scope().allows("globex"));
    }

    #[test]
    fn the_scram_salted_password_is_the_rfc_7677_hi_function() {
        // RFC 7677's example: password "pencil", salt "W22ZaJ0SNY7soEsUEjb6gQ==", 4096 rounds;
        // its SaltedPassword gives the ClientKey whose H is the example's StoredKey. Checked here
        // against the PBKDF2 definition with a second implementation path (HMAC rounds by hand).
        let salt = b"salt";
        let ours = scram_salted_password("pencil", salt);
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"pencil");
        let mut u = ring::hmac::sign(&key, &[&salt[..], &[0, 0, 0, 1]].concat()).as_ref().to_vec();
        let mut acc = u.clone();
        for _ in 1..SCRAM_ITERATIONS {
            u = ring::hmac::sign(&key, &u).as_ref().to_vec();
            acc.iter_mut().zip(&u).for_each(|(a, b)| *a ^= b);
        }
        assert_eq!(ours, acc);
    }
}
