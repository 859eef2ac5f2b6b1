//! The `[nats]` section of the config file.
//!
//! Authentication (at most one method) and TLS are optional. Secrets (`password`, `token`,
//! `nkey_seed`) are held in [`Secret`], whose `Debug` and `Display` print `***`, so logging the
//! config never shows them. Each secret can also be read from a file (`password_file`,
//! `token_file`, `nkey_seed_file`), and every key can be set from the environment as
//! `METERFLOW_NATS__<KEY>` (for example `METERFLOW_NATS__PASSWORD`): the generic config loader
//! maps those variables onto `[nats]`.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{IngestError, Result};

/// Default name of the usage stream.
pub const DEFAULT_STREAM: &str = "USAGE";
/// Default name of the dead-letter stream.
pub const DEFAULT_DLQ_STREAM: &str = "USAGE_DLQ";

const fn default_fetch_batch() -> usize {
    10_000
}
const fn default_fetch_max_bytes() -> usize {
    8 * 1024 * 1024
}
const fn default_fetch_wait_ms() -> u64 {
    100
}
fn default_catalog_stream() -> String {
    "METERFLOW_CATALOG".into()
}
fn default_catalog_subject() -> String {
    "meterflow.catalog".into()
}
fn default_redrive_subject_prefix() -> String {
    "usage_redrive".into()
}
const fn default_ack_wait_s() -> u64 {
    60
}
const fn default_max_age_days() -> u64 {
    90
}
fn default_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_replicas() -> usize {
    1
}
fn default_stream() -> String {
    DEFAULT_STREAM.into()
}
fn default_subjects() -> Vec<String> {
    vec!["usage.>".into()]
}
fn default_dlq_stream() -> String {
    DEFAULT_DLQ_STREAM.into()
}
fn default_dlq_subject_prefix() -> String {
    "usage_dlq".into()
}
fn default_consumer() -> String {
    "meterflow".into()
}
fn default_lease_bucket() -> String {
    "meterflow_leases".into()
}
const fn default_lease_ttl_s() -> u64 {
    10
}

/// How meterflow reaches JetStream and which streams it uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL (`nats://host:port`), or the URLs of a cluster's servers separated by commas
    /// (`nats://a:4222,nats://b:4222,nats://c:4222`): the client connects to one and moves to
    /// another when it fails (it also learns the cluster's other servers from the one it reached).
    #[serde(default = "default_url")]
    pub url: String,
    /// Replicas of every stream and key-value bucket meterflow creates (usage, DLQ, catalog,
    /// leases, API keys): 1 on a single server; 3 on a cluster of three or more, so the loss of
    /// one server loses nothing and stops nothing. Streams that exist keep their own setting.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// Partitions of the usage stream (0: not partitioned, one worker reads it all). With P > 0
    /// the stream is created with a subject transform filing `usage.<customer>.<type>` under
    /// `usage.<p>.<customer>.<type>` (p: FNV-1a of the customer token, modulo P), each
    /// partition has its own consumer, lease and progress, and any number of `meterflow run`
    /// workers share the partitions. Fixed when the stream is created: choose more partitions
    /// than the most workers you will run (for example 32).
    #[serde(default)]
    pub partitions: u32,
    /// The one partition this configuration reads (set by a worker for each partition it owns;
    /// not read from the config file).
    #[serde(skip)]
    pub partition: Option<u32>,
    /// Usage stream name; created if absent.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Subjects of the usage stream when meterflow creates it.
    #[serde(default = "default_subjects")]
    pub subjects: Vec<String>,
    /// Retention of the usage and DLQ streams when meterflow creates them, in days; 0 keeps
    /// messages without an age limit. It must cover the dedup horizon and the time between two
    /// state snapshots (checked at start); the default leaves ample room for replays and audits.
    #[serde(default = "default_max_age_days")]
    pub max_age_days: u64,
    /// Dead-letter stream name; created if absent.
    #[serde(default = "default_dlq_stream")]
    pub dlq_stream: String,
    /// Rejects are published to `<prefix>.<reason>`; must not overlap the usage subjects.
    #[serde(default = "default_dlq_subject_prefix")]
    pub dlq_subject_prefix: String,
    /// Durable consumer name.
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// Most messages asked for in one pull.
    #[serde(default = "default_fetch_batch")]
    pub fetch_batch: usize,
    /// JetStream key-value bucket holding the writer lease of each (stream, consumer): one
    /// `meterflow run` writes a stream's progress at a time; others wait as standbys.
    #[serde(default = "default_lease_bucket")]
    pub lease_bucket: String,
    /// Seconds a writer lease lives without renewal (renewed every third of it). A writer that
    /// cannot renew in time stops committing; a standby takes over after at most this long.
    #[serde(default = "default_lease_ttl_s")]
    pub lease_ttl_s: u64,
    /// How long one pull waits for messages, in milliseconds.
    #[serde(default = "default_fetch_wait_ms")]
    pub fetch_wait_ms: u64,
    /// Upper bound of the bytes one pull may bring. It keeps every pull inside what the client
    /// and the server buffer for a connection: a pull larger than that makes the server drop
    /// messages as a "slow consumer", which an ack-all consumer would then acknowledge unseen.
    #[serde(default = "default_fetch_max_bytes")]
    pub fetch_max_bytes: usize,
    /// Consumer ack wait, in seconds: must exceed the longest commit.
    #[serde(default = "default_ack_wait_s")]
    pub ack_wait_s: u64,
    /// Stream holding the catalog (customers, subject ownership, subscriptions, plans): one
    /// message per revision, kept forever; created if absent.
    #[serde(default = "default_catalog_stream")]
    pub catalog_stream: String,
    /// Subject the catalog's revisions are published on.
    #[serde(default = "default_catalog_subject")]
    pub catalog_subject: String,
    /// DLQ entries redriven into the usage stream (`meterflow dlq replay`) are published on
    /// `<prefix>.<original subject>`, a subject of the usage stream that only operators may
    /// publish to: the pipeline reads them as arrived on the original subject at the original
    /// time. Must not overlap the usage subjects.
    #[serde(default = "default_redrive_subject_prefix")]
    pub redrive_subject_prefix: String,

    // Authentication: at most one of user/password, token, NKey seed, creds file. An empty value
    // counts as unset (so an empty environment variable does not switch a method on).
    /// User name (with `password` or `password_file`).
    #[serde(default)]
    pub user: Option<String>,
    /// Password of `user`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// File holding the password of `user` (trailing line breaks are ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Authentication token.
    #[serde(default)]
    pub token: Option<Secret>,
    /// File holding the authentication token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// NKey user seed (`SU...`).
    #[serde(default)]
    pub nkey_seed: Option<Secret>,
    /// File holding the NKey user seed.
    #[serde(default)]
    pub nkey_seed_file: Option<PathBuf>,
    /// `.creds` file (user JWT and NKey seed, decentralised auth).
    #[serde(default)]
    pub creds_file: Option<PathBuf>,

    // TLS.
    /// Refuse to talk to the server without TLS. Implied by any `tls_*_file` and by a `tls://`
    /// URL.
    #[serde(default)]
    pub tls_required: bool,
    /// PEM file of the CA(s) that signed the server certificate (default: the system roots).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that verify clients (mTLS).
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
}

/// A secret from the config file, the environment or a file. `Debug` and `Display` print
/// `***`; only [`Secret::expose`] gives the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself: pass it on, never print it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty (counts as unset).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// Strings, and also integers and booleans: an environment variable whose value reads as
    /// TOML (`METERFLOW_NATS__PASSWORD=123456`) arrives as a number, not a string.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> std::result::Result<Secret, E> {
                Ok(Secret(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> std::result::Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            // Floats are refused: their text could have changed on the way (`1.50` -> `1.5`).
            // The error must not echo the value, as serde's default one would.
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> std::result::Result<Secret, E> {
                Err(E::custom("a secret that reads as a number with a fraction must be quoted as a string"))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// How the client authenticates, once `*_file` secrets are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials.
    None,
    /// `user` and `password` (or `password_file`).
    UserPassword {
        /// User name.
        user: String,
        /// Its password.
        password: Secret,
    },
    /// `token` (or `token_file`).
    Token(Secret),
    /// `nkey_seed` (or `nkey_seed_file`).
    NKey(Secret),
    /// `creds_file`.
    CredsFile(PathBuf),
}

impl NatsAuth {
    /// The config keys of this method, for error messages.
    pub fn keys(&self) -> &'static str {
        match self {
            NatsAuth::None => "(no credentials)",
            NatsAuth::UserPassword { .. } => "user and password / password_file",
            NatsAuth::Token(_) => "token / token_file",
            NatsAuth::NKey(_) => "nkey_seed / nkey_seed_file",
            NatsAuth::CredsFile(_) => "creds_file",
        }
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: default_url(),
            replicas: default_replicas(),
            partitions: 0,
            partition: None,
            stream: default_stream(),
            subjects: default_subjects(),
            max_age_days: default_max_age_days(),
            dlq_stream: default_dlq_stream(),
            dlq_subject_prefix: default_dlq_subject_prefix(),
            consumer: default_consumer(),
            fetch_batch: default_fetch_batch(),
            lease_bucket: default_lease_bucket(),
            lease_ttl_s: default_lease_ttl_s(),
            fetch_wait_ms: default_fetch_wait_ms(),
            fetch_max_bytes: default_fetch_max_bytes(),
            ack_wait_s: default_ack_wait_s(),
            catalog_stream: default_catalog_stream(),
            catalog_subject: default_catalog_subject(),
            redrive_subject_prefix: default_redrive_subject_prefix(),
            user: None,
            password: None,
            password_file: None,
            token: None,
            token_file: None,
            nkey_seed: None,
            nkey_seed_file: None,
            creds_file: None,
            tls_required: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

fn config_err(message: impl Into<String>) -> IngestError {
    IngestError::NatsConfig(message.into())
}

fn some_text(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}
fn some_secret(v: &Option<Secret>) -> Option<&Secret> {
    v.as_ref().filter(|s| !s.is_empty())
}
fn some_path(v: &Option<PathBuf>) -> Option<&Path> {
    v.as_deref().filter(|p| !p.as_os_str().is_empty())
}

/// Reads a secret from a file; trailing line breaks (as most editors and secret mounts leave
/// them) are dropped. Errors name the key and the path, never the content.
fn read_secret(key: &str, path: &Path) -> Result<Secret> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_err(format!("{key} {}: cannot read the file: {e}", path.display())))?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(config_err(format!("{key} {} is empty", path.display())));
    }
    Ok(Secret(value.to_string()))
}

impl NatsConfig {
    /// The server URLs of `url` (one, or a cluster's, separated by commas).
    pub fn servers(&self) -> Vec<&str> {
        self.url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect()
    }

    /// Stream retention as a duration (zero: no age limit).
    pub fn max_age(&self) -> Duration {
        Duration::from_secs(self.max_age_days.saturating_mul(86_400))
    }

    /// Pull wait as a duration.
    pub fn fetch_wait(&self) -> Duration {
        Duration::from_millis(self.fetch_wait_ms.max(1))
    }

    /// The configuration of partition `p`'s reader: its own durable consumer
    /// (`<consumer>-p<p>`), hence its own writer lease.
    pub fn for_partition(&self, p: u32) -> NatsConfig {
        NatsConfig { partition: Some(p), consumer: format!("{}-p{p}", self.consumer), ..self.clone() }
    }

    /// The usage stream's subjects for DLQ entries redriven into it: on a partitioned stream,
    /// `<prefix>.<customer>.<original subject>` (the stream partitions them by the customer).
    pub fn redrive_stream_subject(&self) -> String {
        if self.partitions > 0 {
            format!("{}.*.>", self.redrive_subject_prefix)
        } else {
            format!("{}.>", self.redrive_subject_prefix)
        }
    }

    /// Checks the partitioning, authentication and TLS settings fit together (no file is read).
    pub fn validate(&self) -> Result<()> {
        if self.partitions > crate::partition::MAX_PARTITIONS {
            return Err(config_err(format!(
                "partitions = {} is more than {}: a partition is a consumer and a lease each",
                self.partitions,
                crate::partition::MAX_PARTITIONS
            )));
        }
        if self.partitions > 0 && !self.subjects.iter().all(|s| s == "usage.>" || s == crate::partition::USAGE_SUBJECTS)
        {
            return Err(config_err(format!(
                "with partitions = {}, the usage stream's subjects are {} (usage.<customer>.<type>, the \
                 customer token deciding the partition); remove `subjects` = {:?}",
                self.partitions,
                crate::partition::USAGE_SUBJECTS,
                self.subjects
            )));
        }
        if self.partitions > 0 && (self.redrive_subject_prefix.contains('.') || self.redrive_subject_prefix == "usage")
        {
            return Err(config_err(format!(
                "with partitions = {}, redrive_subject_prefix must be one subject token other than `usage` (the \
                 stream partitions redrives by the token after it); {:?} is not",
                self.partitions, self.redrive_subject_prefix
            )));
        }
        for (key, inline, file) in [
            ("password", some_secret(&self.password).is_some(), some_path(&self.password_file).is_some()),
            ("token", some_secret(&self.token).is_some(), some_path(&self.token_file).is_some()),
            ("nkey_seed", some_secret(&self.nkey_seed).is_some(), some_path(&self.nkey_seed_file).is_some()),
        ] {
            if inline && file {
                return Err(config_err(format!("{key} and {key}_file are both set: keep one")));
            }
        }
        let user = some_text(&self.user).is_some();
        let password = some_secret(&self.password).is_some() || some_path(&self.password_file).is_some();
        if user && !password {
            return Err(config_err("user is set without password or password_file"));
        }
        if password && !user {
            return Err(config_err("password is set without user"));
        }
        let methods: Vec<&str> = [
            (user, "user/password"),
            (some_secret(&self.token).is_some() || some_path(&self.token_file).is_some(), "token"),
            (some_secret(&self.nkey_seed).is_some() || some_path(&self.nkey_seed_file).is_some(), "nkey_seed"),
            (some_path(&self.creds_file).is_some(), "creds_file"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if methods.len() > 1 {
            return Err(config_err(format!(
                "more than one authentication method is set ({}): keep one",
                methods.join(", ")
            )));
        }
        match (some_path(&self.tls_cert_file), some_path(&self.tls_key_file)) {
            (Some(_), None) => {
                Err(config_err("tls_cert_file is set without tls_key_file (the client certificate's private key)"))
            }
            (None, Some(_)) => Err(config_err("tls_key_file is set without tls_cert_file (the client certificate)")),
            _ => Ok(()),
        }
    }

    /// The authentication method, with `*_file` secrets read. Validates first.
    pub fn auth(&self) -> Result<NatsAuth> {
        self.validate()?;
        if let Some(user) = some_text(&self.user) {
            let password = match (some_secret(&self.password), some_path(&self.password_file)) {
                (Some(p), _) => p.clone(),
                (None, Some(path)) => read_secret("password_file", path)?,
                (None, None) => return Err(config_err("user is set without password or password_file")),
            };
            return Ok(NatsAuth::UserPassword { user: user.to_string(), password });
        }
        if let Some(t) = some_secret(&self.token) {
            return Ok(NatsAuth::Token(t.clone()));
        }
        if let Some(path) = some_path(&self.token_file) {
            return Ok(NatsAuth::Token(read_secret("token_file", path)?));
        }
        if let Some(s) = some_secret(&self.nkey_seed) {
            return Ok(NatsAuth::NKey(s.clone()));
        }
        if let Some(path) = some_path(&self.nkey_seed_file) {
            return Ok(NatsAuth::NKey(read_secret("nkey_seed_file", path)?));
        }
        if let Some(path) = some_path(&self.creds_file) {
            if !path.is_file() {
                return Err(config_err(format!("creds_file {}: no such file", path.display())));
            }
            return Ok(NatsAuth::CredsFile(path.to_path_buf()));
        }
        Ok(NatsAuth::None)
    }

    /// Whether the connection must use TLS: `tls_required`, any `tls_*_file`, or a `tls://` URL.
    pub fn tls_enabled(&self) -> bool {
        self.tls_required
            || self.tls_files().next().is_some()
            || self.url.split(',').any(|u| u.trim().to_ascii_lowercase().starts_with("tls://"))
    }

    /// The TLS files that are set, with their keys.
    pub fn tls_files(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        [
            ("tls_ca_file", some_path(&self.tls_ca_file)),
            ("tls_cert_file", some_path(&self.tls_cert_file)),
            ("tls_key_file", some_path(&self.tls_key_file)),
        ]
        .into_iter()
        .filter_map(|(k, p)| p.map(|p| (k, p)))
    }

    /// The client certificate and its key, when both are set.
    pub fn client_certificate(&self) -> Option<(&Path, &Path)> {
        some_path(&self.tls_cert_file).zip(some_path(&self.tls_key_file))
    }

    /// The CA file, if set.
    pub fn ca_file(&self) -> Option<&Path> {
        some_path(&self.tls_ca_file)
    }

    /// The URL with any `user:password@` replaced by `***@`, for messages and logs.
    pub fn redacted_url(&self) -> String {
        self.url
            .split(',')
            .map(|u| {
                let (scheme, rest) = match u.find("://") {
                    Some(i) => u.split_at(i + 3),
                    None => ("", u),
                };
                let authority_end = rest.find('/').unwrap_or(rest.len());
                match rest[..authority_end].rfind('@') {
                    Some(at) => format!("{scheme}***{}", &rest[at..]),
                    None => u.to_string(),
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Resolves relative paths of the `*_file` keys against `base` (the config file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [
            &mut self.password_file,
            &mut self.token_file,
            &mut self.nkey_seed_file,
            &mut self.creds_file,
            &mut self.tls_ca_file,
            &mut self.tls_cert_file,
            &mut self.tls_key_file,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Parses like the config loader does: through a TOML table (errors carry no source line).
    fn try_parse(toml_text: &str) -> std::result::Result<NatsConfig, toml::de::Error> {
        toml::Value::Table(toml::from_str(toml_text).unwrap()).try_into()
    }

    fn parse(toml_text: &str) -> NatsConfig {
        try_parse(toml_text).unwrap()
    }

    #[test]
    fn partitions_are_refused_with_other_subjects_or_past_the_maximum_and_each_gets_its_own_consumer() {
        assert!(parse("partitions = 8").validate().is_ok());
        let e = parse("partitions = 8\nsubjects = [\"events.>\"]").validate().unwrap_err().to_string();
        assert!(e.contains("usage.*.>") && e.contains("events.>"), "{e}");
        let e = parse("partitions = 5000").validate().unwrap_err().to_string();
        assert!(e.contains("5000") && e.contains("1024"), "{e}");
        let p3 = parse("partitions = 8").for_partition(3);
        assert_eq!((p3.consumer.as_str(), p3.partition), ("meterflow-p3", Some(3)));
        assert_eq!(p3.redrive_stream_subject(), "usage_redrive.*.>");
        let e = parse("partitions = 8\nredrive_subject_prefix = \"ops.redrive\"").validate().unwrap_err().to_string();
        assert!(e.contains("one subject token"), "{e}");
    }

    fn invalid(toml_text: &str) -> String {
        match parse(toml_text).validate() {
            Err(IngestError::NatsConfig(m)) => m,
            other => panic!("expected a [nats] settings error, got {other:?}"),
        }
    }

    #[test]
    fn a_password_never_appears_in_debug_output() {
        let c = parse(
            "user = \"pipeline\"\npassword = \"hunter2-very-secret\"\ntoken = \
            \"tok-secret\"\nnkey_seed = \"SUseed-secret\"",
        );
        let shown = format!("{c:?} {c:#?}");
        for secret in ["hunter2-very-secret", "tok-secret", "SUseed-secret"] {
            assert!(!shown.contains(secret), "{secret} printed in {shown}");
        }
        assert!(shown.contains("***"));
        assert!(shown.contains("pipeline"), "the user name is not secret");
    }

    #[test]
    fn a_secret_prints_stars_in_display_and_debug_and_gives_its_value_only_on_expose() {
        let s = Secret::new("p@ss");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(s.expose(), "p@ss");
    }

    #[test]
    fn resolved_credentials_do_not_print_the_secret_either() {
        let c = parse("user = \"u\"\npassword = \"hunter2-very-secret\"");
        let auth = c.auth().unwrap();
        assert!(!format!("{auth:?}").contains("hunter2"));
        assert_eq!(auth, NatsAuth::UserPassword { user: "u".into(), password: Secret::new("hunter2-very-secret") });
    }

    #[test]
    fn a_numeric_or_boolean_secret_from_the_environment_is_read_as_text() {
        assert_eq!(parse("user = \"u\"\npassword = 123456").password, Some(Secret::new("123456")));
        assert_eq!(parse("token = true").token, Some(Secret::new("true")));
        let err = try_parse("token = 1.50").unwrap_err().to_string();
        assert!(!err.contains("1.5"), "the value is not echoed: {err}");
    }

    #[test]
    fn defaults_have_no_credentials_and_no_tls() {
        let c = NatsConfig::default();
        assert_eq!(c.auth().unwrap(), NatsAuth::None);
        assert!(!c.tls_enabled());
        assert_eq!(parse("").auth().unwrap(), NatsAuth::None);
    }

    #[test]
    fn a_password_and_a_password_file_together_are_refused() {
        let m = invalid("user = \"u\"\npassword = \"p\"\npassword_file = \"/run/secrets/p\"");
        assert!(m.contains("password and password_file"), "{m}");
        let m = invalid("token = \"t\"\ntoken_file = \"/t\"");
        assert!(m.contains("token and token_file"), "{m}");
        let m = invalid("nkey_seed = \"SU\"\nnkey_seed_file = \"/s\"");
        assert!(m.contains("nkey_seed and nkey_seed_file"), "{m}");
    }

    #[test]
    fn a_user_without_a_password_is_refused_and_so_is_a_password_without_a_user() {
        assert!(invalid("user = \"u\"").contains("without password"));
        assert!(invalid("password = \"p\"").contains("without user"));
        assert!(invalid("password_file = \"/p\"").contains("without user"));
    }

    #[test]
    fn more_than_one_authentication_method_is_refused_with_their_names() {
        let m = invalid("user = \"u\"\npassword = \"p\"\ntoken = \"t\"");
        assert!(m.contains("more than one") && m.contains("user/password") && m.contains("token"), "{m}");
        let m = invalid("nkey_seed_file = \"/s\"\ncreds_file = \"/c.creds\"");
        assert!(m.contains("nkey_seed") && m.contains("creds_file"), "{m}");
        assert!(!m.contains("\"p\""));
    }

    #[test]
    fn a_client_certificate_without_its_key_is_refused_and_the_reverse_too() {
        assert!(invalid("tls_cert_file = \"/c.pem\"").contains("without tls_key_file"));
        assert!(invalid("tls_key_file = \"/k.pem\"").contains("without tls_cert_file"));
        let c = parse("tls_cert_file = \"/c.pem\"\ntls_key_file = \"/k.pem\"");
        c.validate().unwrap();
        assert!(c.tls_enabled());
    }

    #[test]
    fn empty_values_count_as_unset() {
        let c = parse("user = \"\"\npassword = \"\"\ntoken = \"\"\ntls_cert_file = \"\"");
        assert_eq!(c.auth().unwrap(), NatsAuth::None);
        assert!(!c.tls_enabled());
    }

    #[test]
    fn secrets_are_read_from_files_without_the_trailing_line_break() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("password");
        std::fs::write(&p, "from-file-secret\n").unwrap();
        let mut c = parse("user = \"u\"\npassword_file = \"password\"");
        c.resolve_paths(dir.path());
        assert_eq!(
            c.auth().unwrap(),
            NatsAuth::UserPassword { user: "u".into(), password: Secret::new("from-file-secret") }
        );
        let t = dir.path().join("token");
        std::fs::write(&t, "tok\r\n").unwrap();
        let c = NatsConfig { token_file: Some(t), ..Default::default() };
        assert_eq!(c.auth().unwrap(), NatsAuth::Token(Secret::new("tok")));
    }

    #[test]
    fn a_missing_or_empty_secret_file_is_an_error_naming_the_key_and_path_but_not_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let missing = NatsConfig { nkey_seed_file: Some(dir.path().join("nope")), ..Default::default() };
        match missing.auth() {
            Err(IngestError::NatsConfig(m)) => assert!(m.contains("nkey_seed_file") && m.contains("nope"), "{m}"),
            other => panic!("{other:?}"),
        }
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let c = NatsConfig { token_file: Some(empty), ..Default::default() };
        assert!(matches!(c.auth(), Err(IngestError::NatsConfig(m)) if m.contains("is empty")));
        let c = NatsConfig { creds_file: Some(dir.path().join("x.creds")), ..Default::default() };
        assert!(matches!(c.auth(), Err(IngestError::NatsConfig(m)) if m.contains("creds_file")));
    }

    #[test]
    fn a_tls_url_or_tls_required_turns_tls_on() {
        assert!(parse("url = \"tls://127.0.0.1:4222\"").tls_enabled());
        assert!(parse("tls_required = true").tls_enabled());
        assert!(parse("tls_ca_file = \"/ca.pem\"").tls_enabled());
        assert!(!parse("url = \"nats://127.0.0.1:4222\"").tls_enabled());
    }

    #[test]
    fn credentials_in_the_url_are_hidden_in_messages() {
        let c = parse("url = \"nats://u:hunter2@10.0.0.1:4222,tls://tok@h:1,nats://plain:4222\"");
        assert_eq!(c.redacted_url(), "nats://***@10.0.0.1:4222,tls://***@h:1,nats://plain:4222");
    }

    #[test]
    fn unknown_keys_are_still_refused() {
        assert!(try_parse("passwrd = \"x\"").is_err());
    }

    #[test]
    fn relative_secret_and_certificate_paths_resolve_against_a_base_folder() {
        let mut c = parse("tls_ca_file = \"certs/ca.pem\"\ncreds_file = \"/abs/u.creds\"");
        c.resolve_paths(Path::new("/etc/meterflow"));
        assert_eq!(c.tls_ca_file, Some(PathBuf::from("/etc/meterflow/certs/ca.pem")));
        assert_eq!(c.creds_file, Some(PathBuf::from("/abs/u.creds")));
    }
}
