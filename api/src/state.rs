//! What the handlers share: the broker connection they publish on, the key store, and two
//! caches: the catalog's reference data (re-read when the catalog's revision moves, checked at
//! most once a second) and read-only SQL sessions over the tables, per customer scope
//! (re-opened when older than `[api] table_refresh_ms`). Nothing here is the only copy of
//! anything: any number of `meterflow serve` replicas can run side by side.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use axum::http::HeaderMap;
use meterflow_catalog::{CatalogStore, Revision};
use meterflow_ingest::Broker;
use meterflow_pipeline::config::{Config, Reference};
use meterflow_pipeline::ops::Ops;
use meterflow_sink::sql::ReadOnlySql;
use tokio::sync::{Mutex, Semaphore};

use crate::keys::{ApiKey, KeyStore, Refusal, Scope};
use crate::problem::Problem;
use crate::{ApiError, Result};

/// A catalog revision and its reference data.
pub type CatalogView = Arc<(Revision, Reference)>;

/// How often the catalog's revision is looked at, at most.
const CATALOG_CHECK: Duration = Duration::from_secs(1);

/// A read-only SQL session over the tables and when its tables were read.
#[derive(Debug, Clone)]
pub struct Tables {
    /// The session.
    pub sql: Arc<ReadOnlySql>,
    /// When the Delta logs were read: everything committed before is in the answers.
    pub read_at: chrono::DateTime<chrono::Utc>,
}

impl Tables {
    /// The version of `usage_summaries` read (0 when the table does not exist yet).
    pub fn summaries_version(&self) -> u64 {
        self.sql.versions.get("usage_summaries").copied().unwrap_or(0)
    }
}

/// The state of one API server.
pub struct Api {
    /// The configuration it was started with.
    pub config: Config,
    js: jetstream::Context,
    /// The API keys.
    pub keys: KeyStore,
    catalog_store: CatalogStore,
    catalog: Mutex<Option<(Instant, CatalogView)>>,
    tables: Mutex<HashMap<Vec<String>, (Instant, Tables)>>,
    /// The operations page's state, when embedded in `meterflow run`.
    pub ops: Option<Arc<Ops>>,
    /// Ingest requests in progress, at most `[api] max_concurrent_ingest`.
    pub ingest_permits: Semaphore,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").finish_non_exhaustive()
    }
}

impl Api {
    /// Connects to the broker named in `config` and opens the key store and the catalog.
    pub async fn connect(config: Config, ops: Option<Arc<Ops>>) -> Result<Arc<Api>> {
        let broker = Broker::connect(config.nats.clone()).await.map_err(|e| ApiError::Broker(e.to_string()))?;
        let js = broker.jetstream().clone();
        let keys = KeyStore::open(&js, &config.api.keys_bucket, config.nats.replicas).await?;
        let catalog_store = meterflow_pipeline::catalog::open_store(&broker, &config)
            .await
            .map_err(|e| ApiError::Broker(format!("{e:#}")))?;
        let permits = config.api.max_concurrent_ingest.max(1);
        Ok(Arc::new(Api {
            config,
            js,
            keys,
            catalog_store,
            catalog: Mutex::new(None),
            tables: Mutex::new(HashMap::new()),
            ops,
            ingest_permits: Semaphore::new(permits),
        }))
    }

    /// The JetStream context events are published on.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The key presented in `headers` (`Authorization: Bearer <key>`), or the 401 to answer.
    pub async fn authenticate(&self, headers: &HeaderMap) -> std::result::Result<ApiKey, Problem> {
        let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(Problem::unauthorized(
                "no API key: send `Authorization: Bearer <key>` (create one with `meterflow api-key create`)",
            ));
        };
        let token = value.to_str().ok().and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        let Some(token) = token else {
            return Err(Problem::unauthorized("the Authorization header must be `Bearer <key>`"));
        };
        match self.keys.authenticate(token).await {
            Ok(Ok(key)) => Ok(key),
            Ok(Err(Refusal::Malformed)) => {
                Err(Problem::unauthorized("that is not a meterflow API key (they look like mf_<id>_<secret>)"))
            }
            Ok(Err(Refusal::Unknown)) => Err(Problem::unauthorized("unknown or revoked API key")),
            Err(e) => Err(Problem::unavailable(format!("cannot check the API key now: {e}"), 2)),
        }
    }

    /// The reference data of the catalog's newest revision.
    pub async fn reference(&self) -> std::result::Result<CatalogView, Problem> {
        let mut cached = self.catalog.lock().await;
        if let Some((at, r)) = cached.as_ref() {
            if at.elapsed() < CATALOG_CHECK {
                return Ok(r.clone());
            }
        }
        let unavailable = |e: &dyn std::fmt::Display| Problem::unavailable(format!("cannot read the catalog: {e}"), 2);
        let revision = self.catalog_store.revision().await.map_err(|e| unavailable(&e))?;
        if let Some((at, r)) = cached.as_mut() {
            if r.0 == revision {
                *at = Instant::now();
                return Ok(r.clone());
            }
        }
        let reference = if revision == 0 {
            Reference::load(&self.config).map_err(|e| Problem::internal(format!("{e:#}")))?
        } else {
            let catalog = self.catalog_store.catalog_at(revision).await.map_err(|e| unavailable(&e))?;
            meterflow_pipeline::catalog::reference_at(&self.config, &catalog, revision)
                .map_err(|e| Problem::internal(format!("{e:#}")))?
        };
        let r = Arc::new((revision, reference));
        *cached = Some((Instant::now(), r.clone()));
        Ok(r)
    }

    /// A read-only SQL session over the committed tables as `scope` may see them, at most
    /// `[api] table_refresh_ms` old.
    pub async fn sql(&self, scope: &Scope) -> std::result::Result<Tables, Problem> {
        let key: Vec<String> = scope.customers().map(|c| c.iter().cloned().collect()).unwrap_or_default();
        let fresh_for = Duration::from_millis(self.config.api.table_refresh_ms);
        let mut tables = self.tables.lock().await;
        if let Some((at, t)) = tables.get(&key) {
            if at.elapsed() < fresh_for {
                return Ok(t.clone());
            }
        }
        let data_dir = &self.config.tables().map_err(|e| Problem::unavailable(format!("{e:#}"), 1))?;
        let customers = scope.customers().map(|_| key.as_slice());
        let read_at = chrono::Utc::now();
        let sql = ReadOnlySql::open_for(data_dir, self.config.sql.limits(), customers)
            .await
            .map_err(|e| Problem::unavailable(format!("cannot read the tables: {e}"), 1))?;
        let t = Tables { sql: Arc::new(sql), read_at };
        if tables.len() > 1_000 {
            tables.retain(|_, (at, _)| at.elapsed() < fresh_for);
        }
        tables.insert(key, (Instant::now(), t.clone()));
        Ok(t)
    }
}
