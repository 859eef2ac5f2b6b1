//! The query benchmark: the monthly invoice query on a month of hourly summaries, timed with
//! meterflow's DataFusion path and with DuckDB on the same Parquet files, in the same run.
//!
//! ```text
//!  1. generate: customers x meters x hours rows of one billing period (2026-10) in the real
//!     usage_summaries schema, written by meterflow's own writer (SummaryTable::commit, one Delta
//!     commit per chunk of rows), then compacted as the running pipeline does
//!     (SummaryTable::compact); the expected totals (an oracle) are kept next to the table
//!  2. DataFusion: meterflow_billing::period_usage_totals, the code `meterflow invoice` runs for
//!     the usage lines (fresh session, table opened at the version, the customer list, the
//!     usage_totals_sql with the period bound, rows read typed into exact totals), timed end
//!     to end
//!  3. DuckDB: the same SQL text and parameter over a view on read_parquet([the files of the
//!     same Delta snapshot]) and the same customer list table, in a Python process started once
//!     (connect + view + list + query + Arrow fetch timed)
//!  4. the two engines must return the same totals, row by row, and their sums must equal the
//!     oracle; otherwise the run fails
//! ```
//!
//! Runs alternate between the engines after one untimed warm-up run of each, so both read from
//! a warm page cache and share the machine's noise alike.

use anyhow::{bail, Context, Result};
use meterflow_billing::invoice::UsageTotal;
use meterflow_sink::deltalake;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

mod duckdb;
mod generate;

use duckdb::DuckDb;
use generate::*;
pub use generate::{generate, layout};

/// The billing period every generated row belongs to.
pub const PERIOD: &str = "2026-10";
/// Hours in [`PERIOD`] (31 days): the most `hours` a run may ask for.
pub const PERIOD_HOURS: usize = 31 * 24;
/// Name of the file next to the table that records what was generated (and the oracle).
pub const MARKER_FILE: &str = "querybench.json";

/// The DuckDB runner (see the file for its line protocol).
const DUCKDB_SCRIPT: &str = include_str!("querybench_duckdb.py");

/// What one benchmark run does.
#[derive(Debug, Clone)]
pub struct QueryBenchOptions {
    /// Customers.
    pub customers: usize,
    /// Meters per customer (the first five have realistic names and prices).
    pub meters: usize,
    /// Hourly windows, from the start of the period (at most [`PERIOD_HOURS`]).
    pub hours: usize,
    /// Folder holding the `usage_summaries` table (created, or reused with `reuse`).
    pub data_dir: PathBuf,
    /// Timed runs per engine (after one untimed warm-up run each).
    pub runs: usize,
    /// Keep an existing table generated with the same sizes instead of generating it again.
    pub reuse: bool,
    /// Rows per Delta commit while generating (bounds the memory held).
    pub rows_per_commit: usize,
    /// Compact the table after generating it, as the running pipeline does.
    pub compact: bool,
    /// Python with the `duckdb` package (`DELTA_READER_PYTHON`).
    pub python: PathBuf,
    /// DuckDB threads (`None`: DuckDB's default, one per core).
    pub duckdb_threads: Option<usize>,
    /// Print progress to stderr.
    pub progress: bool,
}

/// What was generated, as recorded in [`MARKER_FILE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generated {
    /// Customers.
    pub customers: usize,
    /// Meters.
    pub meters: usize,
    /// Hours.
    pub hours: usize,
    /// Rows written.
    pub rows: u64,
    /// Delta commits that wrote them.
    pub commits: u64,
    /// Exact sum of `quantity` over all rows.
    pub sum_quantity: String,
    /// Exact sum of `amount` over all rows.
    pub sum_amount: String,
    /// Sum of `event_count` over all rows.
    pub sum_events: u64,
    /// Seconds the generation took (rows built, encoded and committed).
    pub generate_secs: f64,
    /// Compaction: `(files removed, files added, seconds)`, when done.
    pub compaction: Option<(u64, u64, f64)>,
}

/// The files of the Delta snapshot both engines read.
#[derive(Debug, Clone, Serialize)]
pub struct Layout {
    /// Table version read.
    pub version: u64,
    /// Data files.
    pub files: usize,
    /// Their total bytes.
    pub bytes: u64,
    /// Smallest and largest file, bytes.
    pub min_file_bytes: u64,
    /// Largest file, bytes.
    pub max_file_bytes: u64,
    /// Rows according to the Delta log's file statistics.
    pub rows: u64,
    /// Parquet row groups in all files.
    pub row_groups: usize,
    /// Most rows in one row group.
    pub max_rows_per_row_group: i64,
    /// Compression codec of the first column chunk of the first file.
    pub compression: String,
    /// Absolute paths of the files.
    #[serde(skip)]
    pub paths: Vec<PathBuf>,
}

/// Timings of one engine, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct EngineTimes {
    /// The untimed first run.
    pub warmup_ms: f64,
    /// Timed runs, in order.
    pub runs_ms: Vec<f64>,
    /// Fastest run.
    pub min_ms: f64,
    /// Median run.
    pub median_ms: f64,
}

impl EngineTimes {
    fn new(warmup_ms: f64, runs_ms: Vec<f64>) -> EngineTimes {
        let mut sorted = runs_ms.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let median_ms = match sorted.len() {
            0 => 0.0,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        EngineTimes { warmup_ms, min_ms: sorted.first().copied().unwrap_or(0.0), median_ms, runs_ms }
    }
}

/// Sums over a query result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResultSums {
    /// Result rows (one per customer, meter, plan version, ...).
    pub rows: usize,
    /// Sum of the `quantity` totals.
    pub quantity: String,
    /// Sum of the `amount` totals.
    pub amount: String,
    /// Sum of the `events` totals.
    pub events: u64,
}

/// The figures of one benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct QueryBenchReport {
    /// Command line that produced it.
    pub command: String,
    /// Customers, meters, hours.
    pub customers: usize,
    /// Meters.
    pub meters: usize,
    /// Hours.
    pub hours: usize,
    /// Billing period queried.
    pub period: String,
    /// What was generated (and whether it was generated in this run).
    pub generated: Generated,
    /// True when the table of an earlier run was reused.
    pub reused: bool,
    /// The files read.
    pub layout: Layout,
    /// The SQL both engines ran, with the customer list shortened.
    pub sql_shape: String,
    /// Length of the full SQL text, bytes.
    pub sql_bytes: usize,
    /// meterflow's DataFusion path (`meterflow_billing::period_usage_totals`).
    pub datafusion: EngineTimes,
    /// DuckDB over the same files.
    pub duckdb: EngineTimes,
    /// Median DataFusion time / median DuckDB time (at most 1.0 meets the target).
    pub ratio_median: f64,
    /// Fastest DataFusion time / fastest DuckDB time.
    pub ratio_min: f64,
    /// The result both engines returned.
    pub result: ResultSums,
    /// True when both engines returned the same totals row by row.
    pub engines_agree: bool,
    /// True when the result's sums equal the generation's oracle.
    pub oracle_agrees: bool,
    /// DataFusion version.
    pub datafusion_version: String,
    /// DuckDB version.
    pub duckdb_version: String,
    /// DuckDB threads.
    pub duckdb_threads: usize,
    /// Cores available to this process.
    pub cores: usize,
}

fn dec(s: &str) -> Result<Decimal> {
    if s.is_empty() {
        return Ok(Decimal::ZERO);
    }
    s.parse().with_context(|| format!("not a decimal: {s:?}"))
}

fn sums(totals: &[UsageTotal]) -> Result<ResultSums> {
    let (mut q, mut a, mut e) = (Decimal::ZERO, Decimal::ZERO, 0u64);
    for t in totals {
        q = q.checked_add(t.quantity).context("sum of quantities overflows")?;
        a = a.checked_add(t.amount).context("sum of amounts overflows")?;
        e += t.event_count;
    }
    Ok(ResultSums {
        rows: totals.len(),
        quantity: q.normalize().to_string(),
        amount: a.normalize().to_string(),
        events: e,
    })
}

fn sort_key(t: &UsageTotal) -> (&str, &str, &str, &str, &str, &str) {
    (&t.customer_id, &t.meter, &t.plan_id, &t.plan_version, &t.currency, &t.billing_period)
}

/// The first difference between two results (sorted by key), if any.
fn first_difference(mut a: Vec<UsageTotal>, mut b: Vec<UsageTotal>) -> Option<String> {
    a.sort_by(|x, y| sort_key(x).cmp(&sort_key(y)));
    b.sort_by(|x, y| sort_key(x).cmp(&sort_key(y)));
    if a.len() != b.len() {
        return Some(format!("{} rows from DataFusion, {} from DuckDB", a.len(), b.len()));
    }
    a.iter().zip(&b).find(|(x, y)| x != y).map(|(x, y)| format!("DataFusion {x:?}\n  DuckDB     {y:?}"))
}

/// Runs the benchmark: generates (or reuses) the table, times both engines, checks that they
/// agree with each other and with the oracle. Fails when they do not.
pub async fn run(o: &QueryBenchOptions, command: String, out_dir: &Path) -> Result<QueryBenchReport> {
    if o.customers == 0 || o.meters == 0 || o.hours == 0 {
        bail!("--customers, --meters and --hours must be at least 1");
    }
    if o.hours > PERIOD_HOURS {
        bail!("--hours {} is more than the {PERIOD_HOURS} hours of the billing period {PERIOD}", o.hours);
    }
    let expected = expected_rows(o)?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let (generated, reused) = generate_or_reuse(o, expected).await?;
    let layout = layout(&o.data_dir).await?;
    if layout.rows != expected {
        bail!("the table holds {} rows, {expected} expected", layout.rows);
    }

    let customers = customer_specs(o.customers)?;
    let ids: Vec<&str> = customers.iter().map(|c| c.id.as_str()).collect();
    let sql = meterflow_billing::usage_totals_sql(meterflow_billing::SUMMARIES_NOW);
    let shape =
        format!("{sql} -- $1 = '{PERIOD}', {} = {} customer ids", meterflow_billing::SELECTED_CUSTOMERS, ids.len());
    let request = out_dir.join("duckdb-request.json");
    let files: Vec<String> = layout.paths.iter().map(|p| p.display().to_string()).collect();
    let body = serde_json::json!({
        "files": files, "sql": sql, "view": meterflow_billing::SUMMARIES_NOW, "threads": o.duckdb_threads,
        "params": [PERIOD],
        "list": {"table": meterflow_billing::SELECTED_CUSTOMERS, "column": "customer_id", "values": ids},
    });
    std::fs::write(&request, serde_json::to_vec(&body)?).with_context(|| format!("writing {}", request.display()))?;
    let mut duck = DuckDb::start(&o.python, &request)?;

    let (df_warm, df_ms, df_result, duck_warm, duck_ms) = time_engines(o, &layout, &ids, &mut duck).await?;
    let duck_result = duck.result(&out_dir.join("duckdb-result.jsonl"))?;
    let (duckdb_version, duckdb_threads) = (duck.version.clone(), duck.threads);
    drop(duck);

    let result = sums(&df_result)?;
    let duck_sums = sums(&duck_result)?;
    let difference = first_difference(df_result, duck_result);
    let oracle = (dec(&generated.sum_quantity)?, dec(&generated.sum_amount)?, generated.sum_events);
    let oracle_agrees = (dec(&result.quantity)?, dec(&result.amount)?, result.events) == oracle && result == duck_sums;
    let datafusion = EngineTimes::new(df_warm, df_ms);
    let duckdb = EngineTimes::new(duck_warm, duck_ms);
    let report = QueryBenchReport {
        command,
        customers: o.customers,
        meters: o.meters,
        hours: o.hours,
        period: PERIOD.to_string(),
        generated,
        reused,
        sql_shape: shape,
        sql_bytes: sql.len(),
        ratio_median: datafusion.median_ms / duckdb.median_ms.max(1e-9),
        ratio_min: datafusion.min_ms / duckdb.min_ms.max(1e-9),
        datafusion,
        duckdb,
        layout,
        result,
        engines_agree: difference.is_none(),
        oracle_agrees,
        datafusion_version: deltalake::datafusion::DATAFUSION_VERSION.to_string(),
        duckdb_version,
        duckdb_threads,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if let Some(d) = difference {
        bail!("the engines disagree, so the timings compare different answers:\n  {d}");
    }
    if !report.oracle_agrees {
        bail!(
            "the result's sums ({:?}, DuckDB {:?}) differ from the generated totals ({oracle:?})",
            report.result,
            duck_sums
        );
    }
    Ok(report)
}

/// The table of the benchmark: the one left by an earlier run with the same shape (`--reuse`),
/// or a new one.
async fn generate_or_reuse(o: &QueryBenchOptions, expected: u64) -> Result<(Generated, bool)> {
    let previous = read_marker(&o.data_dir).filter(|g| {
        (g.customers, g.meters, g.hours, g.rows, g.compaction.is_some())
            == (o.customers, o.meters, o.hours, expected, o.compact)
    });
    Ok(match previous {
        Some(g) if o.reuse && layout(&o.data_dir).await.is_ok_and(|l| l.rows == expected) => {
            if o.progress {
                eprintln!("reusing the {expected}-row table in {}", o.data_dir.display());
            }
            (g, true)
        }
        _ => {
            if o.progress {
                eprintln!(
                    "generating {} customers x {} meters x {} hours = {expected} rows into {} ...",
                    o.customers,
                    o.meters,
                    o.hours,
                    o.data_dir.display()
                );
            }
            (generate(o).await?, false)
        }
    })
}

/// One warm-up and `o.runs` timed runs of the invoice query per engine, alternating; returns
/// DataFusion's warm-up and run times and last result, and DuckDB's warm-up and run times.
#[allow(clippy::type_complexity)] // the figures of two engines, taken apart at once by the caller
async fn time_engines(
    o: &QueryBenchOptions,
    layout: &Layout,
    ids: &[&str],
    duck: &mut DuckDb,
) -> Result<(f64, Vec<f64>, Vec<meterflow_billing::invoice::UsageTotal>, f64, Vec<f64>)> {
    let (data_dir, version) = (o.data_dir.as_path(), layout.version);
    let datafusion_run = || async move {
        let t = Instant::now();
        let totals = meterflow_billing::period_usage_totals(data_dir, version, PERIOD, ids).await?;
        anyhow::Ok((t.elapsed().as_secs_f64() * 1000.0, totals))
    };
    if o.progress {
        eprintln!(
            "timing the invoice query on {} files ({:.0} MB, version {version}): 1 warm-up + {} runs per \
                engine, alternating ...",
            layout.files,
            layout.bytes as f64 / 1e6,
            o.runs
        );
    }
    let (df_warm, mut df_result) = datafusion_run().await?;
    let (duck_warm, _) = duck.run()?;
    let (mut df_ms, mut duck_ms) = (Vec::new(), Vec::new());
    for i in 0..o.runs {
        let (ms, totals) = datafusion_run().await?;
        df_ms.push(ms);
        df_result = totals;
        let (dms, rows) = duck.run()?;
        duck_ms.push(dms);
        if o.progress {
            eprintln!(
                "  run {}: DataFusion {ms:.0} ms ({} rows), DuckDB {dms:.0} ms ({rows} rows)",
                i + 1,
                df_result.len()
            );
        }
    }
    Ok((df_warm, df_ms, df_result, duck_warm, duck_ms))
}

impl QueryBenchReport {
    /// Base name of the report files.
    pub fn file_stem(&self) -> String {
        format!("querybench-{}x{}x{}", self.customers, self.meters, self.hours)
    }

    /// Writes `<stem>.json` and `<stem>.md` into `out_dir`; returns their paths.
    pub fn write(&self, out_dir: &Path) -> Result<(PathBuf, PathBuf)> {
        let json = out_dir.join(format!("{}.json", self.file_stem()));
        let md = out_dir.join(format!("{}.md", self.file_stem()));
        std::fs::write(&json, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", json.display()))?;
        std::fs::write(&md, self.markdown()).with_context(|| format!("writing {}", md.display()))?;
        Ok((json, md))
    }

    /// The Markdown summary.
    pub fn markdown(&self) -> String {
        let l = &self.layout;
        let g = &self.generated;
        let mb = |b: u64| b as f64 / 1e6;
        let runs = |t: &EngineTimes| t.runs_ms.iter().map(|m| format!("{m:.0}")).collect::<Vec<_>>().join(", ");
        let compaction = match g.compaction {
            Some((removed, added, secs)) => format!("compacted {removed} files into {added} in {secs:.1} s"),
            None => "not compacted".to_string(),
        };
        format!(
            "# meterflow query benchmark: {c} customers x {m} meters x {h} hours\n\n\
             `{cmd}`\n\n\
             The monthly invoice query (usage lines of period {p}) over {rows} rows, timed end to end \
             (table open at the version, planning, execution, result fetched) with meterflow's DataFusion \
             path (`meterflow_billing::period_usage_totals`, DataFusion {dfv}) and with DuckDB {dv} \
             ({dt} threads) on the same {files} Parquet files, alternating, after one warm-up run each; \
             {cores} cores.\n\n\
             | engine | min ms | median ms | runs ms | warm-up ms |\n| --- | ---: | ---: | --- | ---: |\n\
             | meterflow (DataFusion) | {dmin:.0} | {dmed:.0} | {druns} | {dwarm:.0} |\n\
             | DuckDB | {kmin:.0} | {kmed:.0} | {kruns} | {kwarm:.0} |\n\n\
             **DataFusion / DuckDB: {ratio:.2} (median), {ratio_min:.2} (min)**; target: at most 1.00 ({met}).\n\n\
             Both engines returned the same {res} totals (row by row, exact decimals): quantity {q}, amount {a}, \
             {e} events, equal to the generated totals: {agree}.\n\n\
             | table | |\n| --- | --- |\n\
             | rows | {rows} |\n| version read | {ver} |\n| data files | {files} ({fmin:.1} to {fmax:.1} MB) |\n\
             | bytes | {bytes:.1} MB |\n| row groups | {rg} (at most {rgmax} rows each) |\n| compression | {comp} |\n\
             | generation | {reused}{gsecs:.1} s for {grows} rows in {commits} commits ({rate:.0} rows/s); {compaction} |\n\n\
             SQL ({sqlb} bytes): `{shape}`\n",
            c = self.customers,
            m = self.meters,
            h = self.hours,
            cmd = self.command,
            p = self.period,
            rows = l.rows,
            dfv = self.datafusion_version,
            dv = self.duckdb_version,
            dt = self.duckdb_threads,
            files = l.files,
            cores = self.cores,
            dmin = self.datafusion.min_ms,
            dmed = self.datafusion.median_ms,
            druns = runs(&self.datafusion),
            dwarm = self.datafusion.warmup_ms,
            kmin = self.duckdb.min_ms,
            kmed = self.duckdb.median_ms,
            kruns = runs(&self.duckdb),
            kwarm = self.duckdb.warmup_ms,
            ratio = self.ratio_median,
            ratio_min = self.ratio_min,
            met = if self.ratio_median <= 1.0 { "met" } else { "not met" },
            res = self.result.rows,
            q = self.result.quantity,
            a = self.result.amount,
            e = self.result.events,
            agree = if self.oracle_agrees { "yes" } else { "no" },
            ver = l.version,
            fmin = mb(l.min_file_bytes),
            fmax = mb(l.max_file_bytes),
            bytes = mb(l.bytes),
            rg = l.row_groups,
            rgmax = l.max_rows_per_row_group,
            comp = l.compression,
            reused = if self.reused { "reused from an earlier run; it took " } else { "" },
            gsecs = g.generate_secs,
            grows = g.rows,
            commits = g.commits,
            rate = g.rows as f64 / g.generate_secs.max(1e-9),
            sqlb = self.sql_bytes,
            shape = self.sql_shape,
        )
    }
}
