//! The demo's onboarding step: usage of a company that is not a customer yet is rejected, the
//! company is added to the live catalog while the pipeline keeps running, its new usage is
//! accepted at once, and its rejected usage is redriven from the DLQ and counted exactly once.

use anyhow::{bail, Result};
use meterflow_catalog::{ChangeSet, Records};
use meterflow_ingest::{Broker, CustomerConfig, Selection};
use meterflow_pipeline::config::Config;
use meterflow_pipeline::{catalog, Pipeline, RunOptions};
use meterflow_sink::deltalake::datafusion::scalar::ScalarValue;
use meterflow_sink::sql::ReadOnlySql;
use std::time::{Duration, Instant};

use super::dlq;

/// The company onboarded live.
const NEW_CUSTOMER: &str = "hooli";

fn usage(id: &str, time: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"demo/onboarding","type":"api_calls","subject":"{NEW_CUSTOMER}","time":"{}","data":{{"requests":250,"region":"us-east-1"}}}}"#,
        time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

async fn events_counted(config: &Config) -> Result<u64> {
    let sql = ReadOnlySql::open(&config.tables()?).await?;
    let rows = sql
        .rows(
            "SELECT COALESCE(SUM(event_count), 0) FROM usage_summaries WHERE customer_id = $1",
            &[ScalarValue::Utf8(Some(NEW_CUSTOMER.into()))],
        )
        .await?;
    let counted = match rows.iter().next() {
        Some(r) => r.count(0)?,
        None => 0,
    };
    Ok(counted)
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> Result<bool>) -> Result<()> {
    let started = Instant::now();
    while !done().await? {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the demo waited 30 s for {what}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

/// Runs the onboarding step against a running pipeline; `at` is an event time inside the
/// workload's billing period.
pub async fn run(config: &Config, at: chrono::DateTime<chrono::Utc>) -> Result<()> {
    println!("\nOnboarding a customer live ({NEW_CUSTOMER}), with the pipeline running:");
    let broker = Broker::connect(config.nats.clone()).await?;
    let js = broker.jetstream().clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let pipeline = Pipeline::start(config.clone()).await?;
    let running = tokio::spawn(pipeline.run(stopped, RunOptions { exit_when_idle: None }));

    for i in 0..3 {
        js.publish("usage.api", usage(&format!("early-{i}"), at).into()).await?.await?;
    }
    wait_for("the early usage to reach the DLQ", async || {
        let entries = broker.dlq_entries().await?;
        Ok(entries.iter().filter(|e| e.usage_subject().as_deref() == Some(NEW_CUSTOMER)).count() >= 3)
    })
    .await?;
    println!("  3 events of {NEW_CUSTOMER} rejected as unknown_subject: they wait in the DLQ");

    let customer = CustomerConfig {
        id: NEW_CUSTOMER.into(),
        name: Some("Hooli".into()),
        subjects: vec![NEW_CUSTOMER.into()],
        currency: "USD".into(),
        legal_entity: "meterflow-inc-us".into(),
        erp_customer_id: "C-30003".into(),
        plan: Some("growth-usd".into()),
        subscriptions: Vec::new(),
        billing_anchor_day: 1,
        publish_subjects: Vec::new(),
        attributes: [("segment".to_string(), "mid-market".to_string())].into(),
    };
    let change = ChangeSet {
        author: "meterflow demo".into(),
        at: chrono::Utc::now(),
        source: "demo onboarding".into(),
        comment: Some("contract signed".into()),
        records: Records { customers: vec![customer], plans: Vec::new() },
    };
    let store = catalog::open_store(&broker, config).await?;
    let applied = catalog::apply(&store, config, change, false).await?;
    for c in &applied.changes {
        println!("  catalog: {c} (revision {})", applied.revision.unwrap_or(applied.base));
    }
    js.publish("usage.api", usage("after-onboarding", at).into()).await?.await?;
    wait_for("the new customer's usage to be counted", async || Ok(events_counted(config).await? >= 1)).await?;
    println!("  a new event of {NEW_CUSTOMER} is accepted at once, without a restart");

    let selection =
        Selection { reason: Some("unknown_subject".into()), subject: Some(NEW_CUSTOMER.into()), ..Default::default() };
    let redriven = dlq::replay(config, &dlq::ReplayOptions { selection, dry_run: false }).await?;
    print!("{}", redriven.lines().map(|l| format!("  {l}\n")).collect::<String>());
    wait_for("the redriven usage to be counted", async || Ok(events_counted(config).await? >= 4)).await?;
    let _sent = stop.send(true);
    running.await??;
    let counted = events_counted(config).await?;
    if counted != 4 {
        bail!("{NEW_CUSTOMER}: {counted} events counted, expected 4 (3 redriven + 1 live)");
    }
    println!("Verified: {NEW_CUSTOMER} has exactly 4 events counted (3 redriven from the DLQ, 1 live).");
    Ok(())
}
