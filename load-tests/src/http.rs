//! The HTTP mode of the load generator: the same payloads posted in batches through the HTTP
//! API (an in-process `meterflow serve` on a loopback port, an admin key), timed side by side
//! with the raw JetStream publish of the run; and the latency of a month-to-date meter query
//! for one customer.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use meterflow_pipeline::config::Config;
use meterflow_testkit::workload::OutMessage;
use serde::Serialize;

use crate::Rate;

/// Requests in flight at once.
pub const CONCURRENCY: usize = 64;

/// A running API server of the run.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// An admin key.
    pub key: String,
}

/// Starts the API on a free loopback port with a new admin key.
pub async fn start(config: &Config) -> Result<Server> {
    let api = meterflow_api::Api::connect(config.clone(), None).await?;
    let (_, key) = api.keys.create(vec![], Some("loadgen".into())).await?;
    let listener = meterflow_api::server::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let router = meterflow_api::router(api);
    tokio::spawn(meterflow_api::serve(listener, router, std::future::pending()));
    Ok(Server { base, key })
}

/// Posts `messages` (each one request; JSON arrays as `application/cloudevents-batch+json`),
/// `CONCURRENCY` at a time, each answered only once JetStream acknowledged it.
pub async fn ingest(server: &Server, messages: &[OutMessage], events: u64) -> Result<Rate> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(CONCURRENCY).build()?;
    let url = format!("{}/api/v1/events", server.base);
    let started = Instant::now();
    let mut answers = futures::stream::iter(messages.iter().map(|m| {
        let batch = m.payload.first() == Some(&b'[');
        let kind = if batch { "application/cloudevents-batch+json" } else { "application/cloudevents+json" };
        client.post(&url).bearer_auth(&server.key).header("content-type", kind).body(m.payload.clone()).send()
    }))
    .buffer_unordered(CONCURRENCY);
    while let Some(r) = answers.next().await {
        let r = r.context("an ingest request failed")?;
        if r.status().as_u16() != 204 {
            let status = r.status();
            bail!("the API answered {status}: {}", r.text().await.unwrap_or_default());
        }
    }
    Ok(Rate::new(messages.len() as u64, events, started.elapsed().as_secs_f64()))
}

/// Latency of a month-to-date meter query for one customer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueryLatency {
    /// Queries timed.
    pub samples: usize,
    /// Customers in the reference data.
    pub customers: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

/// Times `samples` queries of `meter` for subjects picked round-robin from `subjects`, from the
/// first of the month of `month` on.
pub async fn query_latency(
    server: &Server,
    meter: &str,
    subjects: &[String],
    month: chrono::DateTime<chrono::Utc>,
    samples: usize,
) -> Result<QueryLatency> {
    let client = reqwest::Client::new();
    let from = format!("{}-01T00:00:00Z", month.format("%Y-%m"));
    let mut took = Vec::with_capacity(samples);
    let step = (subjects.len() / samples.max(1)).max(1);
    for i in 0..samples {
        let Some(subject) = subjects.get((i * step) % subjects.len().max(1)) else { break };
        let url = format!("{}/api/v1/meters/{meter}/query?subject={subject}&from={from}", server.base);
        let started = Instant::now();
        let r = client.get(&url).bearer_auth(&server.key).timeout(Duration::from_secs(60)).send().await?;
        if !r.status().is_success() {
            bail!("the meter query answered {}: {}", r.status(), r.text().await.unwrap_or_default());
        }
        let _body = r.bytes().await?;
        took.push(started.elapsed().as_secs_f64() * 1e3);
    }
    took.sort_by(f64::total_cmp);
    let at = |q: f64| took.get(((took.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
    Ok(QueryLatency { samples: took.len(), customers: subjects.len(), p50_ms: at(0.5), p99_ms: at(0.99) })
}
