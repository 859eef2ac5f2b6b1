//! The config file, environment overrides and reference data: everything `run`, `sql` and
//! `demo` are built from.
//!
//! Precedence, lowest first: built-in defaults, the TOML file, `METERFLOW_<SECTION>__<KEY>`
//! environment variables (for example `METERFLOW_NATS__URL`,
//! `METERFLOW_PIPELINE__COMMIT_INTERVAL_MS`), then command-line flags (`--nats-url`,
//! `--data-dir`). Relative paths in the file are resolved against the file's folder.

use anyhow::{bail, Context, Result};
use meterflow_aggregator::{MeterConfig, Meters};
use meterflow_ingest::{CustomerConfig, Directory, NatsConfig};
use meterflow_rater::{check_subscriptions, parse_instant, PlanConfig, PriceBook, Subscription};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "METERFLOW_";

const fn default_commit_interval_ms() -> u64 {
    1_000
}
const fn default_max_batch_events() -> usize {
    500_000
}
/// 37 days: the smallest horizon that covers the default 35-day backdating limit plus the
/// 5-minute skew bound, counted in whole publish days (see [`Config::load`]).
const fn default_dedup_horizon_days() -> u16 {
    37
}
fn default_dedup_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8)
}
const fn default_snapshot_every_commits() -> u64 {
    20
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
const fn default_compact_every_commits() -> u64 {
    100
}

/// `[pipeline]`: batching, commits and dedup.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Longest time between two commits, in milliseconds: bounds how stale SQL can be.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// Commit early once this many events are pending (bounds memory).
    #[serde(default = "default_max_batch_events")]
    pub max_batch_events: usize,
    /// How long an event identity `(source, id)` is remembered, in days.
    #[serde(default = "default_dedup_horizon_days")]
    pub dedup_horizon_days: u16,
    /// Dedup worker threads.
    #[serde(default = "default_dedup_shards")]
    pub dedup_shards: usize,
    /// Write a state snapshot every this many commits (restarts replay at most this many).
    #[serde(default = "default_snapshot_every_commits")]
    pub snapshot_every_commits: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            commit_interval_ms: default_commit_interval_ms(),
            max_batch_events: default_max_batch_events(),
            dedup_horizon_days: default_dedup_horizon_days(),
            dedup_shards: default_dedup_shards(),
            snapshot_every_commits: default_snapshot_every_commits(),
        }
    }
}

const fn default_max_backdating_days() -> u32 {
    35
}
const fn default_max_future_skew_s() -> u64 {
    300
}
const fn default_out_of_orderness_s() -> u64 {
    60
}
const fn default_idle_timeout_s() -> u64 {
    300
}
const fn default_period_grace_s() -> u64 {
    3_600
}

/// `[lateness]`: how late (and how early) usage may arrive.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatenessConfig {
    /// Events older than this many days (before their arrival at the broker) are rejected as
    /// `too_old`. The dedup horizon must cover it.
    #[serde(default = "default_max_backdating_days")]
    pub max_backdating_days: u32,
    /// Events more than this many seconds ahead of their arrival are rejected as `future_time`.
    #[serde(default = "default_max_future_skew_s")]
    pub max_future_skew_s: u64,
    /// The watermark trails the newest event time by this many seconds.
    #[serde(default = "default_out_of_orderness_s")]
    pub out_of_orderness_s: u64,
    /// A meter without events follows the stream clock after this many seconds.
    #[serde(default = "default_idle_timeout_s")]
    pub idle_timeout_s: u64,
    /// A billing period closes once every meter's watermark is this many seconds past its end.
    #[serde(default = "default_period_grace_s")]
    pub period_grace_s: u64,
}

impl Default for LatenessConfig {
    fn default() -> Self {
        LatenessConfig {
            max_backdating_days: default_max_backdating_days(),
            max_future_skew_s: default_max_future_skew_s(),
            out_of_orderness_s: default_out_of_orderness_s(),
            idle_timeout_s: default_idle_timeout_s(),
            period_grace_s: default_period_grace_s(),
        }
    }
}

fn secs(s: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 2_000))
}

impl LatenessConfig {
    /// The bounds as the aggregator checks them.
    pub fn bounds(&self) -> meterflow_aggregator::TimeBounds {
        meterflow_aggregator::TimeBounds {
            max_backdating: chrono::Duration::days(i64::from(self.max_backdating_days)),
            max_future_skew: secs(self.max_future_skew_s),
        }
    }

    /// The watermark policy.
    pub fn policy(&self) -> meterflow_aggregator::LatenessPolicy {
        meterflow_aggregator::LatenessPolicy {
            out_of_orderness: secs(self.out_of_orderness_s),
            idle_timeout: secs(self.idle_timeout_s),
        }
    }

    /// The grace period after a billing period's end.
    pub fn period_grace(&self) -> chrono::Duration {
        secs(self.period_grace_s)
    }
}

/// `[storage]`: where the tables and state live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Data directory: one folder per Delta table, plus `_state/` for snapshots, and the
    /// documents (invoices, ERP files); with `tables_url` set, only the documents.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The tables and state snapshots on S3-compatible object storage instead of `data_dir`:
    /// `s3://bucket/prefix`. Credentials come from the environment (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`; on AWS also the profile files), never from this file.
    #[serde(default)]
    pub tables_url: Option<String>,
    /// Connection settings of the object storage (none of them a secret).
    #[serde(default)]
    pub s3: S3Config,
    /// Compact the table's small files every this many commits (0 = never).
    #[serde(default = "default_compact_every_commits")]
    pub compact_every_commits: u64,
}

/// `[storage.s3]`: where the S3-compatible server is (absent: AWS, from the environment).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL of an S3-compatible server (`http://127.0.0.1:9000`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The bucket's region.
    #[serde(default)]
    pub region: Option<String>,
    /// Allow plain HTTP to the endpoint (a server on loopback; never across a network).
    #[serde(default)]
    pub allow_http: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: default_data_dir(),
            tables_url: None,
            s3: S3Config::default(),
            compact_every_commits: default_compact_every_commits(),
        }
    }
}

impl StorageConfig {
    /// Where the tables and snapshots live: `tables_url` when set, else `data_dir`.
    pub fn tables(&self) -> Result<meterflow_sink::TableRoot> {
        match &self.tables_url {
            None => Ok(meterflow_sink::TableRoot::local(&self.data_dir)),
            Some(url) => {
                let options = meterflow_sink::ObjectOptions {
                    endpoint: self.s3.endpoint.clone(),
                    region: self.s3.region.clone(),
                    allow_http: self.s3.allow_http,
                };
                meterflow_sink::TableRoot::object(url, &options).context("[storage] tables_url")
            }
        }
    }
}

/// `[reference]`: the reference data files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceConfig {
    /// TOML file with `[[customers]]`.
    pub customers: PathBuf,
    /// TOML file with `[[plans]]`.
    pub plans: PathBuf,
}

/// `[billing]`: invoices and ERP posting (defined by the billing crate).
pub use meterflow_billing::BillingConfig;

const fn default_memory_limit_mb() -> usize {
    1_024
}
const fn default_timeout_s() -> u64 {
    60
}
const fn default_max_rows() -> usize {
    10_000
}

/// `[sql]`: limits of `meterflow sql`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// Memory one query may hold, in MiB; operators that can spill to disk do so first.
    #[serde(default = "default_memory_limit_mb")]
    pub memory_limit_mb: usize,
    /// Longest a query may run, in seconds.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// Most rows printed; the output says when it was cut.
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            memory_limit_mb: default_memory_limit_mb(),
            timeout_s: default_timeout_s(),
            max_rows: default_max_rows(),
        }
    }
}

impl SqlConfig {
    /// The limits as the SQL session applies them.
    pub fn limits(&self) -> meterflow_sink::sql::SqlLimits {
        meterflow_sink::sql::SqlLimits {
            memory_limit_bytes: self.memory_limit_mb.saturating_mul(1 << 20),
            timeout: std::time::Duration::from_secs(self.timeout_s.max(1)),
            max_rows: self.max_rows.max(1),
        }
    }
}

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[nats]`
    #[serde(default)]
    pub nats: NatsConfig,
    /// `[pipeline]`
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// `[storage]`
    #[serde(default)]
    pub storage: StorageConfig,
    /// `[reference]`
    pub reference: ReferenceConfig,
    /// `[billing]`
    #[serde(default)]
    pub billing: BillingConfig,
    /// `[lateness]`
    #[serde(default)]
    pub lateness: LatenessConfig,
    /// `[sql]`
    #[serde(default)]
    pub sql: SqlConfig,
    /// `[[meters]]`
    #[serde(default)]
    pub meters: Vec<MeterConfig>,
    /// `[ops]`: metrics and the operations page of `meterflow run`.
    #[serde(default)]
    pub ops: OpsConfig,
    /// `[api]`: the HTTP API and the Postgres-protocol SQL endpoint (`meterflow serve`, and
    /// embedded in `meterflow run` on `[ops] listen`).
    #[serde(default)]
    pub api: ApiConfig,
    /// `[log]`: log format and level.
    #[serde(default)]
    pub log: LogConfig,
}

/// `[log]`: how `meterflow` logs. `RUST_LOG`, when set, overrides `level`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` (default) or `json` (one JSON object per line, with span fields).
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `info,meterflow::pipeline=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Human, level: "info".into() }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// JSON lines.
    Json,
}

/// Command-line overrides shared by `run`, `sql` and `demo`.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--nats-url`
    pub nats_url: Option<String>,
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
}

/// Applies `METERFLOW_<SECTION>__<KEY>=value` variables to the parsed TOML (a nested table's
/// key as `METERFLOW_<SECTION>__<TABLE>__<KEY>`, for example `METERFLOW_STORAGE__S3__ENDPOINT`).
/// Values are read as TOML when they parse (numbers, booleans, arrays), otherwise as plain
/// strings.
pub fn apply_env(doc: &mut toml::Table, vars: impl IntoIterator<Item = (String, String)>) -> Result<Vec<String>> {
    let mut applied = Vec::new();
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let [tables @ .., key] = path.as_slice() else { continue };
        if tables.is_empty() || path.iter().any(String::is_empty) {
            continue;
        }
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let mut table = &mut *doc;
        for (depth, section) in tables.iter().enumerate() {
            let entry = table.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(inner) = entry.as_table_mut() else {
                bail!("{name}: [{}] is not a table in the config file", tables[..=depth].join("."));
            };
            table = inner;
        }
        table.insert(key.clone(), parsed);
        applied.push(path.join("."));
    }
    Ok(applied)
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        normalize(&base.join(p))
    }
}

/// Removes `.` and `name/..` pairs without touching the file system (`examples/../.demo` is
/// shown as `.demo`).
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component<'_>> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.is_empty() {
        PathBuf::from(".")
    } else {
        out.iter().collect()
    }
}

impl Config {
    /// Loads the file, applies environment variables and overrides, and resolves paths.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut doc: toml::Table =
            toml::from_str(&text).with_context(|| format!("config file {} is not valid TOML", path.display()))?;
        apply_env(&mut doc, std::env::vars())?;
        let mut config: Config = toml::Value::Table(doc)
            .try_into()
            .with_context(|| format!("config file {}: invalid settings", path.display()))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.storage.data_dir = resolve(&base, &config.storage.data_dir);
        config.reference.customers = resolve(&base, &config.reference.customers);
        config.reference.plans = resolve(&base, &config.reference.plans);
        config.nats.resolve_paths(&base);
        if let Some(url) = &overrides.nats_url {
            config.nats.url = url.clone();
        }
        if let Some(dir) = &overrides.data_dir {
            config.storage.data_dir = dir.clone();
        }
        config.storage.tables().with_context(|| format!("config file {}", path.display()))?;
        if config.meters.is_empty() {
            bail!("config file {}: no [[meters]] defined", path.display());
        }
        // A retry of an accepted event is accepted again unless dedup still remembers it. The
        // event was first accepted no earlier than `time - skew`, and a retry is refused as
        // too_old after `time + backdating`; so retries arrive at most backdating + skew after
        // the first acceptance. Dedup counts whole publish days, which adds up to one more day.
        let reach_days =
            (u64::from(config.lateness.max_backdating_days) * 86_400 + config.lateness.max_future_skew_s) / 86_400 + 2;
        if u64::from(config.pipeline.dedup_horizon_days) < reach_days {
            bail!(
                "config file {}: [pipeline] dedup_horizon_days = {} does not cover [lateness] max_backdating_days = {} \
                 plus max_future_skew_s = {} (a late retry could be counted twice): raise dedup_horizon_days to at \
                 least {reach_days} or lower the backdating limit",
                path.display(),
                config.pipeline.dedup_horizon_days,
                config.lateness.max_backdating_days,
                config.lateness.max_future_skew_s,
            );
        }
        Ok(config)
    }

    /// Where the tables and state snapshots live (see [`StorageConfig::tables`]).
    pub fn tables(&self) -> Result<meterflow_sink::TableRoot> {
        self.storage.tables()
    }
}

/// Validated meters, customers and plans, cross-checked against each other.
#[derive(Debug, Clone)]
pub struct Reference {
    /// Meters from the config.
    pub meters: Meters,
    /// Subject → customer.
    pub directory: Directory,
    /// Plans.
    pub prices: PriceBook,
    /// Subscriptions of each customer, in `directory.customers()` order.
    pub subscriptions: Vec<Vec<Subscription>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomersFile {
    customers: Vec<CustomerConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlansFile {
    plans: Vec<PlanConfig>,
}

fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read reference data {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("reference data {} is invalid", path.display()))
}

/// A customer's subscriptions (the `plan` shorthand first), checked not to overlap.
fn subscriptions_of(c: &CustomerConfig, origin: &str) -> Result<Vec<Subscription>> {
    let mut subs: Vec<Subscription> =
        c.plan.iter().map(|p| Subscription { plan: p.clone(), start: None, end: None }).collect();
    for s in &c.subscriptions {
        let when = |v: &Option<String>| -> Result<Option<chrono::DateTime<chrono::Utc>>> {
            v.as_deref()
                .map(|t| {
                    parse_instant(t).with_context(|| {
                        format!("{origin}: customer `{}`: {t:?} is not YYYY-MM-DD or an RFC 3339 time", c.id)
                    })
                })
                .transpose()
        };
        subs.push(Subscription { plan: s.plan.clone(), start: when(&s.start)?, end: when(&s.end)? });
    }
    check_subscriptions(&subs).map_err(|e| anyhow::anyhow!("{origin}: customer `{}` {e}", c.id))?;
    Ok(subs)
}

impl Reference {
    /// Loads and validates the reference data in the files named by the config (the import
    /// format of the catalog; the fixtures and benches read them directly).
    pub fn load(config: &Config) -> Result<Reference> {
        let records = Reference::file_records(config)?;
        let origin = config.reference.customers.display().to_string();
        let plans = config.reference.plans.display().to_string();
        Reference::build(config, records.customers, records.plans, &origin, &plans)
    }

    /// The customers and plans of the reference files named by the config, unchecked.
    pub fn file_records(config: &Config) -> Result<meterflow_catalog::Records> {
        let customers: CustomersFile = read_toml(&config.reference.customers)?;
        let plans: PlansFile = read_toml(&config.reference.plans)?;
        Ok(meterflow_catalog::Records { customers: customers.customers, plans: plans.plans })
    }

    /// The reference data of a catalog revision, checked as the files are.
    pub fn of_catalog(config: &Config, catalog: &meterflow_catalog::Catalog, origin: &str) -> Result<Reference> {
        Reference::build(config, catalog.customers().to_vec(), catalog.plans().to_vec(), origin, origin)
    }

    /// Checks customers and plans against each other and the config's meters: every record's
    /// own rules, subscriptions that do not overlap, subscribed plans that exist, currencies
    /// that match. Errors name the record and the rule; `origin` and `plans_origin` say where
    /// the customers and the plans came from.
    pub fn build(
        config: &Config,
        customers: Vec<CustomerConfig>,
        plans: Vec<PlanConfig>,
        origin: &str,
        plans_origin: &str,
    ) -> Result<Reference> {
        let meters = Meters::new(config.meters.clone()).context("invalid [[meters]] in the config")?;
        let names: Vec<&str> = meters.configs().iter().map(|m| m.name.as_str()).collect();
        let prices = PriceBook::new(plans, &names).with_context(|| format!("reference data {plans_origin}"))?;
        let directory = Directory::new(customers, origin)?;
        let mut subscriptions = Vec::with_capacity(directory.customers().len());
        for c in directory.customers() {
            let subs = subscriptions_of(c, origin)?;
            for s in &subs {
                let Some(plan) = prices.plan(&s.plan) else {
                    bail!(
                        "{origin}: customer `{}` subscribes to plan `{}`, which {plans_origin} does not define",
                        c.id,
                        s.plan,
                    );
                };
                if plan.currency.code != c.currency {
                    bail!(
                        "{origin}: customer `{}` bills in {} but plan `{}` is priced in {}",
                        c.id,
                        c.currency,
                        plan.id,
                        plan.currency.code
                    );
                }
            }
            subscriptions.push(subs);
        }
        Ok(Reference { meters, directory, prices, subscriptions })
    }

    /// The customers as billing sees them.
    pub fn accounts(&self) -> Vec<meterflow_billing::Account> {
        self.directory
            .customers()
            .iter()
            .zip(&self.subscriptions)
            .map(|(c, subs)| meterflow_billing::Account {
                id: c.id.clone(),
                name: c.name.clone().unwrap_or_else(|| c.id.clone()),
                erp_customer_id: c.erp_customer_id.clone(),
                legal_entity: c.legal_entity.clone(),
                currency: c.currency.clone(),
                anchor_day: c.billing_anchor_day,
                subscriptions: subs.clone(),
            })
            .collect()
    }
}

/// The `[ops]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Address of the metrics and operations page endpoint; empty disables it.
    pub listen: String,
    /// How often the billing side of the page is re-read from the tables, in seconds.
    pub refresh_s: u64,
    /// Minutes of throughput and lag history kept for the charts.
    pub history_minutes: u64,
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig { listen: "127.0.0.1:9464".into(), refresh_s: 10, history_minutes: 10 }
    }
}

/// The `[api]` section: the HTTP API and the Postgres-protocol SQL endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// HTTP address of `meterflow serve` (`meterflow run` serves the API on `[ops] listen`).
    pub listen: String,
    /// Postgres-protocol address of `meterflow serve`; empty: off.
    pub pg_listen: String,
    /// Whether `meterflow run` serves the API next to the operations page on `[ops] listen`
    /// (it then also needs the API's broker permissions: the keys bucket, publishing usage);
    /// false: only the page, `/metrics` and `/api/status`, and the API runs as `meterflow serve`.
    pub in_run: bool,
    /// JetStream key-value bucket of the API keys.
    pub keys_bucket: String,
    /// Largest request body accepted, in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Ingest requests handled at once; more wait up to `publish_timeout_ms`, then get 503.
    pub max_concurrent_ingest: usize,
    /// Longest an ingest request waits for JetStream to acknowledge its messages, in
    /// milliseconds; then 503 with `Retry-After`.
    pub publish_timeout_ms: u64,
    /// Longest any other request may take, in seconds.
    pub request_timeout_s: u64,
    /// At most how old the tables a query reads may be, in milliseconds (the server re-reads the
    /// Delta logs when its copy is older).
    pub table_refresh_ms: u64,
    /// PEM certificate chain for TLS on the Postgres endpoint (with `pg_tls_key`); then keys
    /// are sent as cleartext passwords inside TLS, otherwise SCRAM-SHA-256 is used.
    pub pg_tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS #8) for `pg_tls_cert`.
    pub pg_tls_key: Option<PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8888".into(),
            pg_listen: String::new(),
            in_run: true,
            keys_bucket: "METERFLOW_API_KEYS".into(),
            max_body_bytes: 1 << 20,
            max_concurrent_ingest: 256,
            publish_timeout_ms: 5_000,
            request_timeout_s: 60,
            table_refresh_ms: 1_000,
            pg_tls_cert: None,
            pg_tls_key: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_variables_override_file_values_by_section_and_key() {
        let mut doc: toml::Table = toml::from_str("[nats]\nurl = \"nats://a:1\"\n").unwrap();
        let applied = apply_env(
            &mut doc,
            vec![
                ("METERFLOW_NATS__URL".to_string(), "nats://b:2".to_string()),
                ("METERFLOW_PIPELINE__COMMIT_INTERVAL_MS".to_string(), "250".to_string()),
                ("METERFLOW_NATS__SUBJECTS".to_string(), "[\"usage.a.>\"]".to_string()),
                ("OTHER".to_string(), "x".to_string()),
                ("METERFLOW_NOSECTION".to_string(), "x".to_string()),
            ],
        )
        .unwrap();
        assert_eq!(applied.len(), 3);
        assert_eq!(doc["nats"]["url"].as_str(), Some("nats://b:2"));
        assert_eq!(doc["pipeline"]["commit_interval_ms"].as_integer(), Some(250));
        assert_eq!(doc["nats"]["subjects"].as_array().map(|a| a.len()), Some(1));
    }

    #[test]
    fn a_nested_table_is_set_with_a_double_underscore_per_level() {
        let mut doc: toml::Table = toml::from_str("[storage]\ndata_dir = \"d\"\n").unwrap();
        let applied = apply_env(
            &mut doc,
            vec![
                ("METERFLOW_STORAGE__S3__ENDPOINT".to_string(), "http://127.0.0.1:9000".to_string()),
                ("METERFLOW_STORAGE__S3__ALLOW_HTTP".to_string(), "true".to_string()),
                ("METERFLOW_STORAGE____X".to_string(), "ignored".to_string()),
            ],
        )
        .unwrap();
        assert_eq!(applied, vec!["storage.s3.endpoint", "storage.s3.allow_http"]);
        assert_eq!(doc["storage"]["s3"]["endpoint"].as_str(), Some("http://127.0.0.1:9000"));
        assert_eq!(doc["storage"]["s3"]["allow_http"].as_bool(), Some(true));
        assert_eq!(doc["storage"]["data_dir"].as_str(), Some("d"));
    }

    #[test]
    fn a_tables_url_with_credentials_or_another_scheme_is_refused_with_what_to_do() {
        let storage = |url: &str| StorageConfig { tables_url: Some(url.into()), ..StorageConfig::default() };
        let err = |url: &str| format!("{:#}", storage(url).tables().err().unwrap());
        assert!(err("s3://key:secret@bucket/p").contains("AWS_ACCESS_KEY_ID"), "{}", err("s3://key:secret@bucket/p"));
        assert!(!err("s3://key:secret@bucket/p").contains("secret"));
        assert!(err("gs://bucket/p").contains("s3://bucket/prefix"));
        assert!(err("s3:///p").contains("no bucket"));
        let root = storage("s3://bucket/prod").tables().unwrap();
        assert_eq!(root.table_url("usage_summaries").unwrap().as_str(), "s3://bucket/prod/usage_summaries/");
        assert_eq!(root.local_dir(), None);
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder_without_dot_dot() {
        assert_eq!(resolve(Path::new("examples"), Path::new("../.demo/data")), PathBuf::from(".demo/data"));
        assert_eq!(resolve(Path::new("/etc/mf"), Path::new("./ref/c.toml")), PathBuf::from("/etc/mf/ref/c.toml"));
        assert_eq!(resolve(Path::new(""), Path::new("../x")), PathBuf::from("../x"));
        assert_eq!(resolve(Path::new("a"), Path::new("/abs")), PathBuf::from("/abs"));
    }

    #[test]
    fn the_example_config_and_reference_data_load_and_cross_check() {
        let path =
            Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()))
                .join("../examples/meterflow.toml");
        let config = Config::load(&path, &Overrides::default()).unwrap();
        let reference = Reference::load(&config).unwrap();
        assert!(reference.meters.index_of("api_calls").is_some());
        assert_eq!(reference.directory.lookup("globex-eu").unwrap().id, "globex");
    }
}
