//! `meterflow demo`: a local nats-server, a realistic workload, the pipeline until drained, and
//! the results checked against the workload's oracle.

use anyhow::{bail, Context, Result};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::finance;
use meterflow_pipeline::config::{Config, Overrides, Reference};
use meterflow_pipeline::{Pipeline, RunOptions, RunStats};
use meterflow_sink::sql::{render, Format, ReadOnlySql};
use meterflow_testkit::local_nats::LocalNats;
use meterflow_testkit::workload::{self, Oracle, WorkloadSpec};

/// Marker file that lets the demo wipe its own data directory on the next run.
const DEMO_MARKER: &str = ".meterflow-demo";

/// Demo settings from the command line.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Config file.
    pub config: PathBuf,
    /// Overrides (`--nats-url` uses an existing server instead of starting one).
    pub overrides: Overrides,
    /// Distinct events in the one-event-per-message part of the workload.
    pub events: usize,
    /// Distinct events in the batch-mode part (0 skips it).
    pub batch_events: usize,
    /// Events per batch-mode message.
    pub batch_size: usize,
    /// How long the API stays up after the demo's API step (0: not at all).
    pub serve_for: Duration,
}

fn prepare_data_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !empty && !dir.join(DEMO_MARKER).exists() {
            bail!("{} holds data the demo did not create; pass --data-dir with a new folder", dir.display());
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(DEMO_MARKER), "created by `meterflow demo`; the next demo run clears this folder\n")?;
    Ok(())
}

/// Runs the demo and prints what happened.
pub async fn run(options: DemoOptions) -> Result<()> {
    if !options.config.is_file() {
        bail!(
            "config file {} not found: run the demo from the repository root, or pass --config",
            options.config.display()
        );
    }
    let mut config = Config::load(&options.config, &options.overrides)?;
    let reference = Reference::load(&config)?;
    prepare_data_dir(&config.storage.data_dir)?;
    let nats_dir = tempfile::tempdir()?;
    let _server = match &options.overrides.nats_url {
        Some(url) => {
            println!("Using the NATS server at {url}");
            None
        }
        None => {
            let s = LocalNats::start(nats_dir.path())?;
            println!("Started nats-server with JetStream on {} (store: {})", s.url(), nats_dir.path().display());
            config.nats.url = s.url();
            Some(s)
        }
    };
    let oracle = publish(&options, &config, &reference).await?;
    let stats = run_pipeline(&config).await?;
    let sql = ReadOnlySql::open(&config.tables()?).await?;
    verify(&sql, &oracle, &stats).await?;
    super::demo_onboard::run(&config, WorkloadSpec::default().base_time).await?;
    super::demo_api::run(&config, WorkloadSpec::default().base_time, options.serve_for).await?;
    period_close(&config, &sql).await?;
    print_next_steps(&config, &options.config);
    Ok(())
}

/// Generates the demo workload and publishes it; returns its oracle.
async fn publish(options: &DemoOptions, config: &Config, reference: &Reference) -> Result<Oracle> {
    // Part one: one event per message. Part two: CloudEvents batch mode, on the following two
    // days (across globex's plan change on 24 November).
    let single = WorkloadSpec { events: options.events, batch_size: 1, seed: 1, ..Default::default() };
    let batched = WorkloadSpec {
        events: options.batch_events,
        batch_size: options.batch_size.max(1),
        bad_every: 5,
        seed: 2,
        base_time: single.base_time + chrono::Duration::days(2),
        ..Default::default()
    };
    let parts: Vec<WorkloadSpec> = if options.batch_events > 0 { vec![single, batched] } else { vec![single] };
    let (messages, oracle) = workload::generate_all(&parts, reference)?;

    let client = async_nats::connect(config.nats.servers())
        .await
        .with_context(|| format!("cannot connect to {}", config.nats.url))?;
    let js = async_nats::jetstream::new(client);
    // The pipeline creates the streams too; create them first so the publish lands.
    meterflow_ingest::Broker::connect(config.nats.clone()).await?.ensure_streams().await?;
    let started = Instant::now();
    let broker_dups = workload::publish_all(&js, &messages, 512).await?;
    println!(
        "Published {} messages ({} distinct events, {} late duplicates, {} quick retries with Nats-Msg-Id, {} \
            malformed) in {:.2} s",
        messages.len(),
        oracle.accepted,
        oracle.duplicates,
        broker_dups,
        oracle.rejected.values().sum::<u64>(),
        started.elapsed().as_secs_f64()
    );

    Ok(oracle)
}

/// Runs the pipeline until the stream is drained and idle.
async fn run_pipeline(config: &Config) -> Result<RunStats> {
    let started = Instant::now();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let pipeline = Pipeline::start(config.clone()).await?;
    let stats = pipeline.run(rx, RunOptions { exit_when_idle: Some(Duration::from_millis(1500)) }).await?;
    let secs = started.elapsed().as_secs_f64();
    let busy = stats.busy_secs.max(1e-9);
    println!(
        "Pipeline processed the stream in {busy:.2} s from first message to last commit ({:.0} events/s, {:.0} \
            messages/s; \
         {secs:.2} s with start-up and the idle wait): {} events received, {} accepted, {} duplicates dropped, {} rejected to {}, {} commits",
        stats.events_received as f64 / busy,
        stats.messages as f64 / busy,
        stats.events_received,
        stats.events_accepted,
        stats.duplicates,
        stats.rejected_total(),
        config.nats.dlq_stream,
        stats.commits
    );
    for (reason, n) in &stats.rejected {
        println!("  DLQ reason {reason:<20} {n}");
    }

    Ok(stats)
}

/// Shows usage and amounts per customer and checks every figure against the oracle, exactly.
async fn verify(sql: &ReadOnlySql, oracle: &Oracle, stats: &RunStats) -> Result<()> {
    let per_customer = "SELECT customer_id, meter, currency, SUM(quantity) AS quantity, SUM(amount) AS amount, \
        SUM(event_count) AS events \
         FROM usage_summaries GROUP BY customer_id, meter, currency ORDER BY customer_id, meter";
    let batches = sql.query(per_customer).await?;
    println!(
        "\nUsage and amounts per customer (unrounded; invoices round once per line):\n{}",
        render(&batches, Format::Table)?
    );

    // Check every figure against the oracle, exactly.
    let csv = render(&batches, Format::Csv)?;
    let mut got: BTreeMap<(String, String), (Decimal, Decimal)> = BTreeMap::new();
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() >= 5 {
            got.insert((f[0].to_string(), f[1].to_string()), (f[3].parse()?, f[4].parse()?));
        }
    }
    let mut mismatches = Vec::new();
    for (key, q) in &oracle.quantity {
        let a = oracle.amount.get(key).copied().unwrap_or_default();
        match got.get(key) {
            Some((gq, ga)) if gq == q && ga == &a => {}
            other => mismatches.push(format!("{key:?}: expected quantity {q} amount {a}, got {other:?}")),
        }
    }
    let accepted_ok = stats.events_accepted == oracle.accepted && stats.duplicates == oracle.duplicates;
    if mismatches.is_empty() && accepted_ok && got.len() == oracle.quantity.len() {
        println!(
            "Verified: every total equals the workload's oracle exactly ({} accepted events, {} duplicates dropped).",
            oracle.accepted, oracle.duplicates
        );
    } else {
        for m in &mismatches {
            eprintln!("MISMATCH {m}");
        }
        bail!(
            "demo totals differ from the oracle (accepted {} vs {}, duplicates {} vs {})",
            stats.events_accepted,
            oracle.accepted,
            stats.duplicates,
            oracle.duplicates
        );
    }

    Ok(())
}

/// Where to go from here: the tables, and commands to explore them.
fn print_next_steps(config: &Config, config_path: &Path) {
    let dir = config.storage.data_dir.display();
    let cfg = config_path.display();
    println!("\nThe tables stay in {dir}. Explore them with SQL, for example:");
    println!(
        "  cargo run -q -p meterflow -- sql --config {cfg} --data-dir {dir} \"SELECT * FROM window_totals \
        ORDER BY window_start LIMIT 10\""
    );
    println!("  cargo run -q -p meterflow -- sql --config {cfg} --data-dir {dir} --format csv \"SELECT \
        customer_id, date_trunc('day', window_start) AS day, meter, SUM(quantity) AS quantity, SUM(amount) AS amount FROM usage_summaries GROUP BY 1, 2, 3 ORDER BY 1, 2, 3\"");
    println!(
        "  cargo run -q -p meterflow -- sql --config {cfg} --data-dir {dir} \"SELECT invoice_id, \
        customer_id, period, total, currency FROM invoices\""
    );
    println!(
        "The same table from Python's deltalake and DuckDB (`bash scripts/tools.sh` installs both into .tools/venv):"
    );
    println!(
        "  .tools/venv/bin/python -c \"import deltalake, duckdb; ds = \
            deltalake.DeltaTable('{dir}/usage_summaries').to_pyarrow_dataset(); \
         print(duckdb.sql('SELECT customer_id, meter, SUM(quantity), SUM(amount) FROM ds GROUP BY ALL ORDER BY ALL'))\""
    );
}

/// Grants prepaid credits to the first customer before its first period closes: 20.00 bought
/// (burns first, expires at the period's end) and 5.00 of promotion. Returns the customer.
async fn grant_demo_credits(config: &Config, periods: &[String]) -> Result<Option<String>> {
    let (_, reference) = meterflow_pipeline::catalog::current_reference(config).await?;
    let Some(account) = reference.accounts().into_iter().next() else { return Ok(None) };
    let theirs = periods.iter().filter_map(|p| meterflow_rater::Period::parse(p)).find(|p| account.bills_on(p));
    let Some(p) = theirs else { return Ok(None) };
    let period = p.label();
    let grants = [
        (Decimal::new(2000, 2), 1, Some(p.end), meterflow_billing::Source::Purchase, "prepaid top-up"),
        (Decimal::new(500, 2), 2, None, meterflow_billing::Source::Promotion, "welcome offer"),
    ];
    println!("\nPrepaid credits for {} before {period} closes:", account.id);
    for (amount, priority, expires_at, source, reason) in grants {
        let request = meterflow_billing::GrantRequest {
            customer_id: account.id.clone(),
            amount,
            meter: None,
            priority,
            effective_from: Some(p.start),
            expires_at,
            recurring: false,
            rollover_cap: None,
            source,
            reason: reason.into(),
        };
        print!("  {}", finance::credits_grant(config, &request).await?.lines().next().unwrap_or_default());
        println!();
    }
    Ok(Some(account.id))
}

/// The month-end close, run now on the demo's periods: close, invoice, post to a folder,
/// reconcile; prints each step.
async fn period_close(config: &Config, sql: &ReadOnlySql) -> Result<()> {
    let periods =
        render(&sql.query("SELECT DISTINCT billing_period FROM usage_summaries ORDER BY 1").await?, Format::Csv)?;
    let periods: Vec<String> = periods.lines().skip(1).map(str::to_string).collect();
    println!(
        "\nPeriod close (the demo closes its periods now; in production the watermark closes them after \
        the period ends):"
    );
    let credited = grant_demo_credits(config, &periods).await?;
    for p in &periods {
        println!("  {}", finance::close(config, p).await?);
    }
    for p in &periods {
        let opts = finance::InvoiceOptions {
            period: p.clone(),
            customer: None,
            preview: false,
            revise: false,
            out: None,
            json: false,
        };
        println!("\n{}", finance::invoice(config, &opts).await?);
    }
    if let Some(customer) = &credited {
        println!("Prepaid credits of {customer} after invoicing (`meterflow credits balance` and `ledger`):");
        print!("{}", finance::credits_balance(config, customer).await?);
        println!("{}", finance::credits_ledger(config, customer).await?);
    }
    for p in &periods {
        let (text, ok) = finance::post(config, p, None, false).await?;
        print!("{text}");
        if !ok {
            bail!("posting {p} failed");
        }
    }
    for p in &periods {
        let (text, clean) = finance::reconcile(config, p, Format::Table).await?;
        println!("\n{text}");
        if !clean {
            bail!("{p} does not reconcile");
        }
    }
    Ok(())
}
