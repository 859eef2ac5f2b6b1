//! The query benchmark: the monthly invoice query on a month of hourly summaries, timed with
//! meterflow's DataFusion path and with other engines (DuckDB, chdb) on the same Parquet files,
//! in the same run.
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
//!  3. the other engines (`--engines`), each in a Python process started once, over a view on
//!     the files of the same Delta snapshot and the same customer list table, connect + view +
//!     list + query + Arrow fetch timed:
//!     - DuckDB (duckdb.rs): the same SQL text and parameter, over read_parquet([the files]);
//!     - chdb, ClickHouse's engine in process (chdb.rs): the SQL in ClickHouse's dialect (two
//!       documented changes), over file('<folder>/{the files}', Parquet)
//!  4. every engine must return DataFusion's totals, row by row, and their sums must equal the
//!     oracle; otherwise the run fails
//! ```
//!
//! Runs alternate between the engines after one untimed warm-up run of each, so all read from
//! a warm page cache and share the machine's noise alike.

use anyhow::{bail, Context, Result};
use meterflow_billing::invoice::UsageTotal;
use meterflow_sink::deltalake;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub mod chdb;
mod duckdb;
mod generate;
mod runner;

use generate::*;
pub use generate::{generate, layout};
use runner::Runner;

/// The billing period every generated row belongs to.
pub const PERIOD: &str = "2026-10";
/// Hours in [`PERIOD`] (31 days): the most `hours` a run may ask for.
pub const PERIOD_HOURS: usize = 31 * 24;
/// Name of the file next to the table that records what was generated (and the oracle).
pub const MARKER_FILE: &str = "querybench.json";

/// An engine timed against meterflow's DataFusion path, on the same files, in the same run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// DuckDB (Python package `duckdb`): meterflow's SQL text as it is.
    #[value(name = "duckdb")]
    DuckDb,
    /// chdb, ClickHouse's engine in process (Python package `chdb`): the SQL in ClickHouse's
    /// dialect ([`chdb::CLICKHOUSE_SQL`]).
    Chdb,
}

impl Engine {
    /// Every engine, in the order they are timed and reported.
    pub const ALL: [Engine; 2] = [Engine::DuckDb, Engine::Chdb];

    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Engine::DuckDb => "DuckDB",
            Engine::Chdb => "chdb",
        }
    }

    /// Name in file names.
    fn slug(self) -> &'static str {
        match self {
            Engine::DuckDb => "duckdb",
            Engine::Chdb => "chdb",
        }
    }
}

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
    /// The engines timed against DataFusion, in this order (duplicates are timed once).
    pub engines: Vec<Engine>,
    /// Python with the engines' packages, `duckdb` and `chdb` (`DELTA_READER_PYTHON`).
    pub python: PathBuf,
    /// DuckDB threads (`None`: DuckDB's default, one per core).
    pub duckdb_threads: Option<usize>,
    /// chdb threads (`None`: ClickHouse's default `max_threads`).
    pub chdb_threads: Option<usize>,
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
    /// Slowest run.
    pub max_ms: f64,
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
        EngineTimes {
            warmup_ms,
            min_ms: sorted.first().copied().unwrap_or(0.0),
            median_ms,
            max_ms: sorted.last().copied().unwrap_or(0.0),
            runs_ms,
        }
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
    /// The other engines over the same files, in the order timed.
    pub engines: Vec<EngineReport>,
    /// The result every engine returned.
    pub result: ResultSums,
    /// True when every engine returned DataFusion's totals row by row.
    pub engines_agree: bool,
    /// True when the result's sums equal the generation's oracle.
    pub oracle_agrees: bool,
    /// DataFusion version.
    pub datafusion_version: String,
    /// Cores available to this process.
    pub cores: usize,
}

/// The figures of one engine timed against DataFusion.
#[derive(Debug, Clone, Serialize)]
pub struct EngineReport {
    /// Which engine.
    pub engine: Engine,
    /// Its version, as its runner reports it.
    pub version: String,
    /// Threads it used.
    pub threads: usize,
    /// The SQL text it ran (with the customer list in a table).
    pub sql: String,
    /// Its timings.
    pub times: EngineTimes,
    /// Median DataFusion time / median time of this engine (for DuckDB, at most 1.0 meets the
    /// target).
    pub ratio_median: f64,
    /// Fastest DataFusion time / fastest time of this engine.
    pub ratio_min: f64,
    /// True when it returned DataFusion's totals row by row.
    pub agrees: bool,
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

/// The first difference between DataFusion's result `a` and `engine`'s result `b` (both
/// sorted by key), if any.
fn first_difference(mut a: Vec<UsageTotal>, mut b: Vec<UsageTotal>, engine: &str) -> Option<String> {
    a.sort_by(|x, y| sort_key(x).cmp(&sort_key(y)));
    b.sort_by(|x, y| sort_key(x).cmp(&sort_key(y)));
    if a.len() != b.len() {
        return Some(format!("{} rows from DataFusion, {} from {engine}", a.len(), b.len()));
    }
    a.iter().zip(&b).find(|(x, y)| x != y).map(|(x, y)| format!("DataFusion {x:?}\n  {engine:<10} {y:?}"))
}

/// Runs the benchmark: generates (or reuses) the table, times DataFusion and the other engines,
/// checks that they agree with each other and with the oracle. Fails when they do not.
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
    let files: Vec<String> = layout.paths.iter().map(|p| p.display().to_string()).collect();
    let mut runners = Vec::new();
    for &engine in &o.engines {
        if runners.iter().any(|r: &Runner| r.engine == engine) {
            continue;
        }
        let runner = match engine {
            Engine::DuckDb => duckdb::start(o, out_dir, &files, &sql, &ids)?,
            Engine::Chdb => chdb::start(o, out_dir, &files, &sql, &ids)?,
        };
        // The runner's own count of the rows its file list reads, where it reports one.
        if let Some(rows) = runner.ready.get("rows").and_then(serde_json::Value::as_u64) {
            if rows != layout.rows {
                bail!(
                    "{} reads {rows} rows from the snapshot's files, the Delta log says {}",
                    engine.name(),
                    layout.rows
                );
            }
        }
        runners.push(runner);
    }

    let (datafusion, df_result, timed) = time_engines(o, &layout, &ids, &mut runners).await?;
    let result = sums(&df_result)?;
    let mut engines = Vec::new();
    let mut problems = Vec::new();
    for (runner, times) in runners.iter_mut().zip(timed) {
        let name = runner.engine.name();
        let rows = runner.result(&out_dir.join(format!("{}-result.jsonl", runner.engine.slug())))?;
        let engine_sums = sums(&rows)?;
        let difference = first_difference(df_result.clone(), rows, name);
        if let Some(d) = &difference {
            problems
                .push(format!("{name} disagrees with DataFusion, so the timings compare different answers:\n  {d}"));
        } else if engine_sums != result {
            problems.push(format!("{name}'s sums {engine_sums:?} differ from DataFusion's {result:?}"));
        }
        engines.push(EngineReport {
            engine: runner.engine,
            version: runner.version.clone(),
            threads: runner.threads,
            sql: match runner.engine {
                Engine::DuckDb => sql.clone(),
                Engine::Chdb => chdb::clickhouse_sql(&sql)?.to_string(),
            },
            ratio_median: datafusion.median_ms / times.median_ms.max(1e-9),
            ratio_min: datafusion.min_ms / times.min_ms.max(1e-9),
            times,
            agrees: difference.is_none() && engine_sums == result,
        });
    }
    drop(runners);

    let oracle = (dec(&generated.sum_quantity)?, dec(&generated.sum_amount)?, generated.sum_events);
    let oracle_agrees = (dec(&result.quantity)?, dec(&result.amount)?, result.events) == oracle;
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
        datafusion,
        engines_agree: engines.iter().all(|e| e.agrees),
        engines,
        layout,
        result,
        oracle_agrees,
        datafusion_version: deltalake::datafusion::DATAFUSION_VERSION.to_string(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    if !report.oracle_agrees {
        bail!("the result's sums ({:?}) differ from the generated totals ({oracle:?})", report.result);
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

/// One warm-up and `o.runs` timed runs of the invoice query per engine, alternating (DataFusion,
/// then each runner in order); returns DataFusion's times and last result, and each runner's
/// times.
async fn time_engines(
    o: &QueryBenchOptions,
    layout: &Layout,
    ids: &[&str],
    runners: &mut [Runner],
) -> Result<(EngineTimes, Vec<UsageTotal>, Vec<EngineTimes>)> {
    let (data_dir, version) = (o.data_dir.as_path(), layout.version);
    let datafusion_run = || async move {
        let t = Instant::now();
        let totals = meterflow_billing::period_usage_totals(data_dir, version, PERIOD, ids).await?;
        anyhow::Ok((t.elapsed().as_secs_f64() * 1000.0, totals))
    };
    if o.progress {
        let names: Vec<&str> = std::iter::once("DataFusion").chain(runners.iter().map(|r| r.engine.name())).collect();
        eprintln!(
            "timing the invoice query on {} files ({:.0} MB, version {version}) with {}: 1 warm-up + {} runs \
                per engine, alternating ...",
            layout.files,
            layout.bytes as f64 / 1e6,
            names.join(", "),
            o.runs
        );
    }
    let (df_warm, mut df_result) = datafusion_run().await?;
    let mut timed = Vec::new();
    for r in runners.iter_mut() {
        timed.push((r.run()?.0, Vec::new()));
    }
    let mut df_ms = Vec::new();
    for i in 0..o.runs {
        let (ms, totals) = datafusion_run().await?;
        df_ms.push(ms);
        df_result = totals;
        let mut line = format!("  run {}: DataFusion {ms:.0} ms ({} rows)", i + 1, df_result.len());
        for (r, (_, runs)) in runners.iter_mut().zip(timed.iter_mut()) {
            let (ems, rows) = r.run()?;
            runs.push(ems);
            line.push_str(&format!(", {} {ems:.0} ms ({rows} rows)", r.engine.name()));
        }
        if o.progress {
            eprintln!("{line}");
        }
    }
    let timed = timed.into_iter().map(|(warm, runs)| EngineTimes::new(warm, runs)).collect();
    Ok((EngineTimes::new(df_warm, df_ms), df_result, timed))
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
        let row = |name: &str, t: &EngineTimes| {
            format!(
                "| {name} | {:.0} | {:.0} | {:.0} | {} | {:.0} |\n",
                t.min_ms,
                t.median_ms,
                t.max_ms,
                runs(t),
                t.warmup_ms
            )
        };
        let compaction = match g.compaction {
            Some((removed, added, secs)) => format!("compacted {removed} files into {added} in {secs:.1} s"),
            None => "not compacted".to_string(),
        };
        let names: Vec<String> =
            self.engines.iter().map(|e| format!("{} {} ({} threads)", e.engine.name(), e.version, e.threads)).collect();
        let mut table = String::from(
            "| engine | min ms | median ms | max ms | runs ms | warm-up ms |\n| --- | ---: | ---: | ---: | --- | ---: |\n",
        );
        table.push_str(&row("meterflow (DataFusion)", &self.datafusion));
        let mut ratios = String::new();
        for e in &self.engines {
            table.push_str(&row(e.engine.name(), &e.times));
            let target = match e.engine {
                Engine::DuckDb => {
                    format!("target: at most 1.00 ({})", if e.ratio_median <= 1.0 { "met" } else { "not met" })
                }
                Engine::Chdb => "reported, no target".to_string(),
            };
            ratios.push_str(&format!(
                "**DataFusion / {}: {:.2} (median), {:.2} (min)**; {target}.\n\n",
                e.engine.name(),
                e.ratio_median,
                e.ratio_min
            ));
        }
        let dialect = if self.engines.iter().any(|e| e.engine == Engine::Chdb) {
            " (chdb in ClickHouse's dialect: `$1` as `{period:String}` and \
             `SETTINGS prefer_column_name_to_alias = 1`, see load-tests/src/query/chdb.rs)"
        } else {
            ""
        };
        format!(
            "# meterflow query benchmark: {c} customers x {m} meters x {h} hours\n\n\
             `{cmd}`\n\n\
             The monthly invoice query (usage lines of period {p}) over {rows} rows, timed end to end \
             (table open at the version, planning, execution, result fetched) with meterflow's DataFusion \
             path (`meterflow_billing::period_usage_totals`, DataFusion {dfv}) and with {others} on the same \
             {files} Parquet files, alternating, after one warm-up run each; {cores} cores.\n\n\
             {table}\n\
             {ratios}\
             Every engine returned the same {res} totals (row by row, exact decimals): quantity {q}, amount {a}, \
             {e} events, equal to the generated totals: {agree}.\n\n\
             | table | |\n| --- | --- |\n\
             | rows | {rows} |\n| version read | {ver} |\n| data files | {files} ({fmin:.1} to {fmax:.1} MB) |\n\
             | bytes | {bytes:.1} MB |\n| row groups | {rg} (at most {rgmax} rows each) |\n| compression | {comp} |\n\
             | generation | {reused}{gsecs:.1} s for {grows} rows in {commits} commits ({rate:.0} rows/s); {compaction} |\n\n\
             SQL ({sqlb} bytes){dialect}: `{shape}`\n",
            c = self.customers,
            m = self.meters,
            h = self.hours,
            cmd = self.command,
            p = self.period,
            rows = l.rows,
            dfv = self.datafusion_version,
            others = if names.is_empty() { "no other engine".to_string() } else { names.join(" and ") },
            files = l.files,
            cores = self.cores,
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
