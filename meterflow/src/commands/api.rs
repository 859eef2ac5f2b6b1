//! `meterflow serve` (the HTTP API and the Postgres-protocol endpoint as their own process) and
//! `meterflow api-key` (the keys they accept), plus the API embedded in `meterflow run`.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use meterflow_api::{Api, ApiKey};
use meterflow_pipeline::config::Config;
use meterflow_pipeline::ops::Ops;
use tokio::sync::watch;

/// Resolves when `shutdown` turns true.
async fn stopped(mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// `meterflow serve`: serves the HTTP API on `listen` (default `[api] listen`) and, when set,
/// the Postgres protocol on `pg_listen` (default `[api] pg_listen`), until `shutdown`.
pub async fn serve(
    config: Config,
    listen: Option<String>,
    pg_listen: Option<String>,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let listen = listen.unwrap_or_else(|| config.api.listen.clone());
    let pg_listen = pg_listen.unwrap_or_else(|| config.api.pg_listen.clone());
    let api = Api::connect(config, None).await.context("the API publishes to and reads from the broker")?;
    let listener = meterflow_api::server::bind(&listen).await?;
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or(listen);
    if !pg_listen.trim().is_empty() {
        let pg = meterflow_api::server::bind(&pg_listen).await?;
        let pg_addr = pg.local_addr().map(|a| a.to_string()).unwrap_or(pg_listen);
        tracing::info!(addr = %pg_addr, "Postgres-protocol SQL on {pg_addr} (user: key id, password: the key)");
        let api = api.clone();
        tokio::spawn(async move {
            if let Err(e) = meterflow_api::pg::serve(pg, api).await {
                tracing::error!(error = %e, "the Postgres endpoint stopped");
            }
        });
    }
    tracing::info!(%addr, "HTTP API on http://{addr}/api/v1 (described at /api/v1/openapi.yaml)");
    println!("serving the API on http://{addr}");
    meterflow_api::serve(listener, meterflow_api::router(api), stopped(shutdown)).await?;
    Ok(())
}

/// Starts the API with the operations page on `[ops] listen` inside `meterflow run`. A failure
/// (no address, broker unreachable) is logged, not fatal: metering goes on without it.
pub async fn embed(config: &Config, ops: Arc<Ops>, shutdown: watch::Receiver<bool>) {
    let listen = config.ops.listen.trim().to_string();
    if listen.is_empty() {
        return;
    }
    let listener = match meterflow_api::server::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(
                error = %e,
                "cannot serve the operations page, metrics and API; set [ops] listen (METERFLOW_OPS__LISTEN) to a \
                 free address, or empty to turn it off. Metering continues"
            );
            return;
        }
    };
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let router = if !config.api.in_run {
        tracing::info!(%addr, "operations page on http://{addr}/, metrics on http://{addr}/metrics ([api] in_run = false: no API)");
        meterflow_api::server::ops_router(
            config.clone(),
            ops,
            "[api] in_run is false: the API is served by `meterflow serve`".into(),
        )
    } else {
        match Api::connect(config.clone(), Some(ops.clone())).await {
            Ok(api) => {
                tracing::info!(%addr, "operations page on http://{addr}/, metrics on http://{addr}/metrics, API on http://{addr}/api/v1");
                meterflow_api::router(api)
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "cannot start the HTTP API (the operations page and metrics are served without it; set [api] \
                     in_run = false if the API runs as `meterflow serve`); metering continues"
                );
                meterflow_api::server::ops_router(config.clone(), ops, e.to_string())
            }
        }
    };
    tokio::spawn(async move {
        if let Err(e) = meterflow_api::serve(listener, router, stopped(shutdown)).await {
            tracing::error!(error = %e, "the HTTP endpoint stopped");
        }
    });
}

async fn store(config: &Config) -> Result<meterflow_api::KeyStore> {
    let broker =
        meterflow_ingest::Broker::connect(config.nats.clone()).await.context("API keys are kept on the broker")?;
    Ok(meterflow_api::KeyStore::open(broker.jetstream(), &config.api.keys_bucket, config.nats.replicas).await?)
}

fn describe(k: &ApiKey) -> String {
    let scope = if k.customers.is_empty() { "admin (every customer)".to_string() } else { k.customers.join(", ") };
    let state = match k.revoked_at {
        Some(t) => format!("revoked {}", t.format("%Y-%m-%d %H:%M:%S UTC")),
        None => "active".into(),
    };
    format!(
        "{}  {}  created {}  {}{}",
        k.id,
        state,
        k.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
        scope,
        k.name.as_ref().map(|n| format!("  ({n})")).unwrap_or_default()
    )
}

/// `meterflow api-key create`: a new key for `customers` (none: admin); prints it once.
pub async fn create(config: &Config, customers: Vec<String>, name: Option<String>) -> Result<String> {
    if !customers.is_empty() {
        let (revision, reference) = meterflow_pipeline::catalog::current_reference(config).await?;
        let known: Vec<String> = reference.accounts().into_iter().map(|a| a.id).collect();
        for c in &customers {
            if !known.contains(c) {
                bail!("no customer `{c}` in catalog revision {revision}: onboard it first (`meterflow catalog apply`)");
            }
        }
    }
    let (key, token) = store(config).await?.create(customers, name).await?;
    Ok(format!(
        "{token}\n\nkey {}: {}\nThe key is shown only now; meterflow keeps its hash. Use it as \
         `Authorization: Bearer <key>`, or as the password of Postgres user `{}`.\n",
        key.id,
        describe(&key),
        key.id
    ))
}

/// `meterflow api-key list`
pub async fn list(config: &Config) -> Result<String> {
    let keys = store(config).await?.list().await?;
    if keys.is_empty() {
        return Ok("no API keys yet: `meterflow api-key create [--customer ID]...`\n".into());
    }
    Ok(keys.iter().map(|k| describe(k) + "\n").collect())
}

/// `meterflow api-key revoke ID`
pub async fn revoke(config: &Config, id: &str) -> Result<String> {
    let key = store(config).await?.revoke(id).await?;
    Ok(format!("{}\n(every server refuses it within {} s)\n", describe(&key), meterflow_api::keys::CACHE_FOR.as_secs()))
}
