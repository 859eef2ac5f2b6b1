//! `meterflow-querybench`: the monthly invoice query on a month of hourly summaries, timed with
//! meterflow's DataFusion path and with DuckDB and chdb (ClickHouse's engine in process) on the
//! same Parquet files in the same run; fails when an engine does not return DataFusion's totals.
//! Writes JSON and Markdown reports.
//!
//! ```sh
//! . scripts/env.sh && need_test_tools   # DELTA_READER_PYTHON: a Python with duckdb and chdb
//! cargo build --release -p meterflow-load-tests
//! $CARGO_TARGET_DIR/release/meterflow-querybench --customers 10000 --meters 5 --hours 720 \
//!     --data-dir /tmp/querybench/data --runs 5 --out /tmp/querybench/report --reuse
//! ```

use anyhow::Result;
use clap::Parser;
use meterflow_load_tests::query::{self, Engine, QueryBenchOptions};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "meterflow-querybench",
    about = "Time the monthly invoice query with meterflow (DataFusion), DuckDB and chdb on the same Delta table"
)]
struct Cli {
    /// Customers.
    #[arg(long, default_value_t = 10_000)]
    customers: usize,
    /// Meters per customer.
    #[arg(long, default_value_t = 5)]
    meters: usize,
    /// Hourly windows of billing period 2026-10 (at most 744).
    #[arg(long, default_value_t = 720)]
    hours: usize,
    /// Folder of the generated usage_summaries table (keep it outside the repository).
    #[arg(long, default_value = "/tmp/querybench/data")]
    data_dir: PathBuf,
    /// Timed runs per engine, after one warm-up run each.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Folder of the reports (querybench-<c>x<m>x<h>.json / .md).
    #[arg(long, default_value = "/tmp/querybench/report")]
    out: PathBuf,
    /// Reuse the table of an earlier run with the same sizes instead of generating it again.
    #[arg(long)]
    reuse: bool,
    /// Rows per Delta commit while generating.
    #[arg(long, default_value_t = 1_000_000)]
    rows_per_commit: usize,
    /// Leave the generated files as written (skip the compaction the pipeline does).
    #[arg(long)]
    no_compact: bool,
    /// Engines timed against DataFusion, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Engine::ALL)]
    engines: Vec<Engine>,
    /// DuckDB threads (default: DuckDB's own, one per core).
    #[arg(long)]
    duckdb_threads: Option<usize>,
    /// chdb threads, ClickHouse's max_threads (default: ClickHouse's own).
    #[arg(long)]
    chdb_threads: Option<usize>,
    /// Python with the engines' packages (duckdb, chdb).
    #[arg(long, env = "DELTA_READER_PYTHON")]
    python: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    meterflow_load_tests::init_logging();
    let cli = Cli::parse();
    let python = match (cli.python.clone(), cli.engines.is_empty()) {
        (Some(python), _) => python,
        // DataFusion alone needs no Python.
        (None, true) => PathBuf::new(),
        (None, false) => anyhow::bail!(
            "no Python for DuckDB and chdb: set DELTA_READER_PYTHON (`bash scripts/tools.sh` installs one and \
                prints its path) or pass --python"
        ),
    };
    let options = QueryBenchOptions {
        customers: cli.customers,
        meters: cli.meters,
        hours: cli.hours,
        data_dir: cli.data_dir.clone(),
        runs: cli.runs.max(1),
        reuse: cli.reuse,
        rows_per_commit: cli.rows_per_commit,
        compact: !cli.no_compact,
        engines: cli.engines.clone(),
        python,
        duckdb_threads: cli.duckdb_threads,
        chdb_threads: cli.chdb_threads,
        progress: true,
    };
    let command = std::env::args()
        .enumerate()
        .map(|(i, a)| if i == 0 { "meterflow-querybench".to_string() } else { a })
        .collect::<Vec<_>>()
        .join(" ");
    let report = query::run(&options, command, &cli.out).await?;
    let (json, md) = report.write(&cli.out)?;
    println!("{}", report.markdown());
    eprintln!("reports: {} and {}", json.display(), md.display());
    Ok(())
}
