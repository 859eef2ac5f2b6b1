//! `meterflow-loadgen`: one or more load runs with the raw JetStream ceiling measured in the same
//! run, end-to-end freshness, exact totals; writes JSON, Markdown and HTML reports.
//!
//! ```sh
//! cargo run --release -p meterflow-load-tests -- --events 500000 --batch-size 1 --runs 3
//! cargo run --release -p meterflow-load-tests -- --events 2000000 --batch-size 100 --runs 3
//! cargo run --release -p meterflow-load-tests -- --events 200000 --customers 1000 --skew 1.1 --late-fraction 0.05
//! ```

use anyhow::{bail, Result};
use clap::Parser;
use meterflow_load_tests::{report::Summary, run_once, LoadOptions, RunReport};
use std::path::PathBuf;

/// mimalloc: the pipeline allocates per event; glibc malloc's free-list work cost ~20% of a profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "meterflow-loadgen",
    about = "Load-test meterflow against the broker's own ceiling, with exact totals"
)]
struct Cli {
    /// Config file (reference data, meters, plans).
    #[arg(long, default_value = "examples/meterflow.toml")]
    config: PathBuf,
    /// Distinct valid events per run (duplicates and malformed messages come on top).
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Events per message: 1, or N for CloudEvents batch mode.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Every n-th event is published again later (0 = no duplicates).
    #[arg(long, default_value_t = 10)]
    duplicate_every: usize,
    /// Every n-th message is followed by a malformed one (0 = none).
    #[arg(long, default_value_t = 100)]
    bad_every: usize,
    /// Seconds of the freshness phase (0 skips it).
    #[arg(long, default_value_t = 10)]
    freshness_secs: u64,
    /// Freshness publish rate as a fraction of the measured pipeline rate.
    #[arg(long, default_value_t = 0.5)]
    freshness_fraction: f64,
    /// Commit interval of the pipeline (ms).
    #[arg(long, default_value_t = 1000)]
    commit_interval_ms: u64,
    /// Runs (the report gives medians).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Seed of the workload.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Synthetic customers cust-00000, ... (one subject each, billed like the config's customers
    /// in turn) in a reference folder written into the run's temporary directory. Default: the
    /// config's own reference data (the example: two customers, one sending half the events).
    #[arg(long)]
    customers: Option<usize>,
    /// With --customers: Zipf exponent of customer activity; the customer of rank k sends in
    /// proportion to 1/k^skew (0 = uniform; default 1).
    #[arg(long)]
    skew: Option<f64>,
    /// Fraction of events (0 to 1) whose time lies behind the stream's event time; turns on event
    /// times in publish order. Default: event times spread over 48 hours four days back, in an
    /// order unrelated to the publish order.
    #[arg(long)]
    late_fraction: Option<f64>,
    /// With --late-fraction: mean lateness in seconds (exponential, capped one day inside the
    /// config's max_backdating_days; default 3600).
    #[arg(long)]
    lateness_mean_s: Option<f64>,
    /// Post the throughput phase through the HTTP API (in process, loopback) instead of
    /// publishing to JetStream directly; report its rate against the raw publish of the same
    /// payloads, and the latency of month-to-date meter queries for one customer. Needs
    /// --bad-every 0 (the API refuses malformed events with 400; they never reach the DLQ).
    #[arg(long)]
    http: bool,
    /// Keep the tables and state snapshots on a local S3-compatible server (moto, from
    /// `scripts/tools.sh`) instead of a local directory.
    #[arg(long)]
    object_storage: bool,
    /// Run against a cluster of three local nats-servers with three replicas of every stream,
    /// instead of one server.
    #[arg(long)]
    cluster: bool,
    /// Run N workers over a partitioned stream (`--partitions`) instead of the single
    /// pipeline: the time from the first event received to every partition committed (one
    /// event per message, each on its customer's subject). 0: the single pipeline.
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Partitions of the stream with `--workers`.
    #[arg(long, default_value_t = 12)]
    partitions: u32,
    /// Folder for loadgen-<batch>.json / .md / .html.
    #[arg(long, default_value = "target/loadgen")]
    out: PathBuf,
}

/// The run's options from the command line, refusing combinations and values that make no sense.
fn options(cli: &Cli) -> Result<LoadOptions> {
    if cli.http && cli.bad_every != 0 {
        bail!("--http needs --bad-every 0: the API refuses malformed events (400), so they never reach the DLQ");
    }
    if cli.skew.is_some() && cli.customers.is_none() {
        bail!("--skew applies to synthetic customers: give --customers too");
    }
    if cli.lateness_mean_s.is_some() && cli.late_fraction.is_none() {
        bail!("--lateness-mean-s applies to late events: give --late-fraction too");
    }
    if let Some(s) = cli.skew.filter(|s| !s.is_finite() || *s < 0.0) {
        bail!("--skew must be a number of at least 0, not {s}");
    }
    if let Some(f) = cli.late_fraction.filter(|f| !(0.0..=1.0).contains(f)) {
        bail!("--late-fraction must be between 0 and 1, not {f}");
    }
    if let Some(m) = cli.lateness_mean_s.filter(|m| !m.is_finite() || *m < 0.0) {
        bail!("--lateness-mean-s must be a number of seconds of at least 0, not {m}");
    }
    Ok(LoadOptions {
        config: cli.config.clone(),
        events: cli.events,
        batch_size: cli.batch_size,
        duplicate_every: cli.duplicate_every,
        bad_every: cli.bad_every,
        freshness_secs: cli.freshness_secs,
        freshness_fraction: cli.freshness_fraction,
        commit_interval_ms: cli.commit_interval_ms,
        seed: cli.seed,
        customers: cli.customers,
        skew: cli.skew.unwrap_or(1.0),
        late_fraction: cli.late_fraction,
        lateness_mean_s: cli.lateness_mean_s.unwrap_or(3_600.0),
        http: cli.http,
        object_storage: cli.object_storage,
        cluster: cli.cluster,
    })
}

/// The workload's shape in words.
fn shape(o: &LoadOptions) -> String {
    let mut shape = format!("{} events, {} per message", o.events, o.batch_size);
    if let Some(n) = o.customers {
        shape += &format!(", {n} customers (skew {})", o.skew);
    }
    if let Some(f) = o.late_fraction {
        shape += &format!(", {f} late (mean {} s)", o.lateness_mean_s);
    }
    if o.object_storage {
        shape += ", tables on S3 (moto)";
    }
    if o.cluster {
        shape += ", 3-server cluster, R3";
    }
    shape
}

/// One run's figures, on stderr while the runs go on.
fn print_run(r: &RunReport) {
    eprintln!(
        "  raw publish {:.0} ev/s, raw consume {:.0} ev/s, pipeline {:.0} ev/s (ratio {:.2}), exact: {}",
        r.raw_publish.events_per_s,
        r.raw_consume.events_per_s,
        r.pipeline.events_per_s,
        r.ratio_to_consume_ceiling,
        r.exact
    );
    if let (Some(h), Some(ratio)) = (&r.http_ingest, r.http_ratio_to_publish) {
        eprintln!(
            "  HTTP ingest {:.0} ev/s ({:.0} requests/s), ratio to raw publish {ratio:.2}",
            h.events_per_s, h.messages_per_s
        );
    }
    if let Some(q) = &r.query_latency {
        eprintln!(
            "  month-to-date meter query, one customer of {}: p50 {:.1} ms, p99 {:.1} ms ({} queries)",
            q.customers, q.p50_ms, q.p99_ms, q.samples
        );
    }
    let t = &r.time_split;
    eprintln!(
        "  pipeline busy {:.2} s: waiting for pulls {:.2} s, core stages {:.2} s, commits {:.2} s",
        t.busy_secs, t.pull_wait_secs, t.process_secs, t.commit_secs
    );
    if r.workload.late_fraction.is_some() {
        eprintln!(
            "  late: {} events generated behind the stream time, {} in rows the pipeline flagged late",
            r.late_generated, r.late_flagged
        );
    }
}

/// `--workers N`: runs of N workers over a partitioned stream, as JSON lines on stdout.
async fn workers_main(cli: &Cli, options: &LoadOptions) -> Result<()> {
    let mut rates = Vec::new();
    for i in 0..cli.runs.max(1) {
        eprintln!(
            "run {} of {}: {} workers over {} partitions, {} ...",
            i + 1,
            cli.runs.max(1),
            cli.workers,
            cli.partitions,
            shape(options)
        );
        let run = LoadOptions { seed: options.seed + 10 * i as u64, ..options.clone() };
        let r = meterflow_load_tests::workers::workers_once(&run, cli.workers, cli.partitions).await?;
        eprintln!(
            "  {:.0} events/s ({} events in {:.2} s, {} commits), exact: {}",
            r.events_per_s, r.events, r.secs, r.commits, r.exact
        );
        println!("{}", serde_json::to_string(&r)?);
        if !r.exact {
            bail!("the tables differ from the oracle");
        }
        rates.push(r.events_per_s);
    }
    rates.sort_by(f64::total_cmp);
    eprintln!("median {:.0} events/s over {} runs", rates[rates.len() / 2], rates.len());
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    meterflow_load_tests::init_logging();
    let cli = Cli::parse();
    let options = options(&cli)?;
    if cli.workers > 0 {
        return workers_main(&cli, &options).await;
    }
    let mut runs = Vec::new();
    for i in 0..cli.runs.max(1) {
        eprintln!("run {} of {}: {} ...", i + 1, cli.runs.max(1), shape(&options));
        let r = run_once(&LoadOptions { seed: options.seed + 10 * i as u64, ..options.clone() }).await?;
        print_run(&r);
        runs.push(r);
    }
    let command = format!("meterflow-loadgen {}", std::env::args().skip(1).collect::<Vec<_>>().join(" "));
    let summary = Summary::new(command, runs);
    std::fs::create_dir_all(&cli.out)?;
    let mode = if cli.http { "-http" } else { "" };
    let base = cli.out.join(format!("loadgen-{}{mode}", cli.batch_size));
    std::fs::write(base.with_extension("json"), serde_json::to_vec_pretty(&summary)?)?;
    std::fs::write(base.with_extension("md"), summary.markdown())?;
    std::fs::write(base.with_extension("html"), summary.html())?;
    print!("{}", summary.markdown());
    println!("\nreports: {}.json / .md / .html", base.display());
    if !summary.exact {
        bail!("totals differ from the oracle: see the MISMATCH lines above");
    }
    Ok(())
}
