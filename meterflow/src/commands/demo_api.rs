//! The demo's API step: `meterflow serve`'s HTTP API and Postgres endpoint started in process,
//! a key bound to one customer, events posted over HTTP (acknowledged by JetStream before the
//! 204), counted by the running pipeline, then read back with an OpenMeter-style meter query
//! and over the Postgres protocol; prints the `curl` and `psql` lines that do the same.

use anyhow::{bail, Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use meterflow_api::Api;
use meterflow_pipeline::config::Config;
use meterflow_pipeline::{Pipeline, RunOptions};
use rust_decimal::Decimal;
use std::time::{Duration, Instant};

/// The customer the demo's key is bound to.
const CUSTOMER: &str = "acme";

fn event(i: usize, tokens: &str, at: DateTime<Utc>) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"demo-api-{i}","source":"demo/http","type":"llm_tokens","subject":"{CUSTOMER}","time":"{}","data":{{"tokens":"{tokens}","model":"large"}}}}"#,
        at.to_rfc3339_opts(SecondsFormat::Secs, true)
    )
}

/// The day's value in a meter query's answer (0 when it has no row), read exactly from the
/// JSON number's text, and the answer.
async fn day_value(client: &reqwest::Client, url: &str, token: &str) -> Result<(Decimal, String)> {
    let r = client.get(url).bearer_auth(token).send().await?;
    let status = r.status().as_u16();
    let body = r.text().await?;
    if status != 200 {
        bail!("the meter query failed: {status} {body}");
    }
    let Some(rest) = body.split("\"value\":").nth(1) else { return Ok((Decimal::ZERO, body)) };
    let text = rest.split([',', '}']).next().unwrap_or_default();
    let value = text.parse::<Decimal>().with_context(|| format!("not an exact number: {text}"))?;
    Ok((value, body))
}

/// Runs the step; `at` is an event time inside the workload's billing period; the API stays up
/// for `hold` afterwards so the printed lines can be tried.
pub async fn run(config: &Config, at: DateTime<Utc>, hold: Duration) -> Result<()> {
    println!("\nThe HTTP API and the Postgres endpoint (what `meterflow serve --pg-listen` runs):");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let pipeline = Pipeline::start(config.clone()).await?;
    let running = tokio::spawn(pipeline.run(stopped.clone(), RunOptions { exit_when_idle: None }));
    let api = Api::connect(config.clone(), None).await?;
    let (key, token) = api.keys.create(vec![CUSTOMER.into()], Some("demo".into())).await?;
    let http = meterflow_api::server::bind("127.0.0.1:0").await?;
    let pg = meterflow_api::server::bind("127.0.0.1:0").await?;
    let (http_addr, pg_addr) = (http.local_addr()?, pg.local_addr()?);
    let mut shutdown = stopped.clone();
    let server = tokio::spawn(meterflow_api::serve(http, meterflow_api::router(api.clone()), async move {
        let _changed = shutdown.changed().await;
    }));
    let pg_server = tokio::spawn(meterflow_api::pg::serve(pg, api));
    let base = format!("http://{http_addr}");
    println!("  key {} bound to {CUSTOMER} (created with `meterflow api-key create --customer {CUSTOMER}`)", key.id);

    let day = at.format("%Y-%m-%d").to_string();
    let query = format!(
        "/api/v1/meters/llm_tokens/query?subject={CUSTOMER}&windowSize=DAY&filterGroupBy%5Bmodel%5D=large\
         &from={day}T00:00:00Z&to={day}T23:59:59Z"
    );
    let client = reqwest::Client::new();
    let (before, _) = day_value(&client, &format!("{base}{query}"), &token).await?;

    let batch = format!("[{},{},{}]", event(1, "1200.5", at), event(2, "800.25", at), event(3, "0.25", at));
    let posted = client
        .post(format!("{base}/api/v1/events"))
        .bearer_auth(&token)
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch)
        .send()
        .await
        .context("posting events to the API")?;
    if posted.status().as_u16() != 204 {
        bail!("the API refused the demo's events: {} {}", posted.status(), posted.text().await.unwrap_or_default());
    }
    println!("  POST /api/v1/events (3 events, 2001.00 tokens, one batch) -> 204 once JetStream acknowledged them");

    let want = before + Decimal::new(200_100, 2);
    let started = Instant::now();
    let answer = loop {
        let (value, body) = day_value(&client, &format!("{base}{query}"), &token).await?;
        if value == want {
            break body;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the demo waited 30 s for {want} in the meter query (was {before}); last answer: {body}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    println!("  GET {query}\n    -> {answer}");
    println!("\nTry them (while the demo's API is up):");
    println!("  curl -s -H 'Authorization: Bearer {token}' '{base}{query}'");
    let psql_line = format!(
        "PGPASSWORD={token} psql 'host={} port={} user={} dbname=meterflow sslmode=disable' -c \"SELECT meter, \
         SUM(quantity) AS quantity, SUM(amount) AS amount FROM usage_summaries GROUP BY meter ORDER BY meter\"",
        pg_addr.ip(),
        pg_addr.port(),
        key.id
    );
    println!("  {psql_line}");
    if let Ok(out) = std::process::Command::new("sh").arg("-c").arg(&psql_line).output() {
        if out.status.success() {
            println!("  (psql, as {CUSTOMER}'s key sees the tables:)");
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                println!("    {line}");
            }
        } else if !String::from_utf8_lossy(&out.stderr).contains("not found") {
            bail!("the printed psql line failed: {}", String::from_utf8_lossy(&out.stderr));
        } else {
            println!("  (psql is not installed here: `apt install postgresql-client`)");
        }
    }
    if !hold.is_zero() {
        println!("\nServing for {} s (--serve-for); Ctrl-C ends the demo.", hold.as_secs());
        tokio::select! {
            _ = tokio::time::sleep(hold) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    } else {
        println!("  (pass --serve-for 600 to keep the API up and try them)");
    }
    let _sent = stop.send(true);
    pg_server.abort();
    server.await??;
    running.await??;
    Ok(())
}
