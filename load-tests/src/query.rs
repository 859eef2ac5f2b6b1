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
use chrono::{DateTime, Duration, NaiveDate, Utc};
use meterflow_billing::invoice::UsageTotal;
use meterflow_sink::deltalake;
use meterflow_sink::{RowKind, SummaryRow, SummaryTable, SUMMARIES_TABLE};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

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

/// Deterministic pseudo-random numbers (SplitMix64 of a key).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn key(c: usize, m: usize, h: usize, salt: u64) -> u64 {
    mix(((c as u64) << 32) ^ ((m as u64) << 20) ^ (h as u64) ^ (salt << 56))
}

/// One meter of the generated workload.
struct MeterSpec {
    name: String,
    /// Fractional digits of its quantities.
    scale: u32,
    /// Largest quantity in one hour, in units of 10^-scale.
    max_units: u64,
    /// List price per unit (at most 9 fractional digits, as the rater allows).
    price: Decimal,
    /// True when the quantity counts events (`event_count` = quantity).
    counts_events: bool,
}

fn meter_specs(n: usize) -> Result<Vec<MeterSpec>> {
    let known: [(&str, u32, u64, &str, bool); 5] = [
        ("api_calls", 0, 20_000, "0.00015", true),
        ("storage_gb_hours", 6, 500_000_000, "0.000137", false),
        ("compute_seconds", 3, 28_800_000, "0.000016667", false),
        ("egress_gb", 9, 50_000_000_000, "0.085", false),
        ("active_users", 0, 200, "0.012", true),
    ];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (name, scale, max_units, price, counts_events) = match known.get(i) {
            Some(&(name, scale, max, price, counts)) => (name.to_string(), scale, max, price, counts),
            None => (format!("meter_{}", i + 1), 2, 100_000, "0.001", false),
        };
        let price: Decimal = price.parse().with_context(|| format!("price of {name}"))?;
        out.push(MeterSpec { name, scale, max_units, price, counts_events });
    }
    Ok(out)
}

/// The plan of one customer: id, the version in force from the start of the month and, for
/// some customers, a new version from the 15th (the window key carries the version in force).
struct CustomerSpec {
    id: String,
    subject: String,
    dimensions: String,
    currency: String,
    plan_id: String,
    versions: [(String, Decimal); 2],
    /// Hour (from the period start) the second version starts at; `usize::MAX` when never.
    change_hour: usize,
}

fn customer_specs(n: usize) -> Result<Vec<CustomerSpec>> {
    let plans = [("starter", "1"), ("growth", "0.9"), ("scale", "0.75")];
    let regions = ["us-east-1", "eu-west-1", "ap-southeast-2"];
    let mut out = Vec::with_capacity(n);
    for c in 0..n {
        let (plan, discount) = plans[c % plans.len()];
        let discount: Decimal = discount.parse().context("plan discount")?;
        let id = format!("cust-{c:05}");
        out.push(CustomerSpec {
            subject: format!("usage.{id}"),
            dimensions: format!("{{\"region\":\"{}\"}}", regions[(c / 3) % regions.len()]),
            currency: if c % 10 == 9 { "EUR" } else { "USD" }.to_string(),
            plan_id: plan.to_string(),
            versions: [
                (format!("{plan}@2026-01-01"), discount),
                (format!("{plan}@2026-10-15"), discount * Decimal::new(95, 2)),
            ],
            change_hour: if c % 20 == 7 { 14 * 24 } else { usize::MAX },
            id,
        });
    }
    Ok(out)
}

fn period_start() -> Result<DateTime<Utc>> {
    NaiveDate::from_ymd_opt(2026, 10, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .context("period start")
}

/// Builds the rows in stream order (hour by hour) and keeps the oracle.
struct Generator {
    customers: Vec<CustomerSpec>,
    meters: Vec<MeterSpec>,
    start: DateTime<Utc>,
    /// Last stream sequence handed out.
    seq: u64,
    sum_quantity: Decimal,
    sum_amount: Decimal,
    sum_events: u64,
}

impl Generator {
    fn new(customers: usize, meters: usize) -> Result<Generator> {
        Ok(Generator {
            customers: customer_specs(customers)?,
            meters: meter_specs(meters)?,
            start: period_start()?,
            seq: 0,
            sum_quantity: Decimal::ZERO,
            sum_amount: Decimal::ZERO,
            sum_events: 0,
        })
    }

    /// The row of customer `c`, meter `m`, hour `h` (its `revision` is set at commit time).
    fn row(&mut self, c: usize, m: usize, h: usize) -> Result<SummaryRow> {
        let (customer, meter) = (&self.customers[c], &self.meters[m]);
        let units = key(c, m, h, 1) % meter.max_units + 1;
        let units = i64::try_from(units).context("quantity units")?;
        let quantity = Decimal::new(units, meter.scale);
        let events = if meter.counts_events { units.unsigned_abs() } else { key(c, m, h, 2) % 500 + 1 };
        let (version, discount) = &customer.versions[usize::from(h >= customer.change_hour)];
        let price = (meter.price * discount).round_dp(9);
        let amount = quantity.checked_mul(price).context("amount overflows")?;
        let window_start = self.start + Duration::hours(i64::try_from(h).context("hour")?);
        let window_end = window_start + Duration::hours(1);
        let lateness = i64::try_from(key(c, m, h, 3) % 120).context("lateness")?;
        let first_seq = self.seq + 1;
        self.seq += events;
        self.sum_quantity = self.sum_quantity.checked_add(quantity).context("sum of quantities overflows")?;
        self.sum_amount = self.sum_amount.checked_add(amount).context("sum of amounts overflows")?;
        self.sum_events += events;
        Ok(SummaryRow {
            customer_id: customer.id.clone(),
            subject: customer.subject.clone(),
            meter: meter.name.clone(),
            dimensions: customer.dimensions.clone(),
            window_start,
            window_end,
            revision: 0,
            quantity,
            amount,
            currency: customer.currency.clone(),
            plan_id: customer.plan_id.clone(),
            plan_version: version.clone(),
            billing_period: PERIOD.to_string(),
            event_count: events,
            first_seq,
            last_seq: self.seq,
            row_kind: RowKind::Usage,
            reason: None,
            arrived_at: Some(window_end + Duration::seconds(lateness)),
        })
    }
}

fn expected_rows(o: &QueryBenchOptions) -> Result<u64> {
    let rows = o.customers.checked_mul(o.meters).and_then(|r| r.checked_mul(o.hours)).context("too many rows")?;
    u64::try_from(rows).context("too many rows")
}

fn read_marker(data_dir: &Path) -> Option<Generated> {
    let text = std::fs::read_to_string(data_dir.join(MARKER_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Removes the table an earlier benchmark run generated (refusing one it did not generate).
fn remove_generated(o: &QueryBenchOptions) -> Result<()> {
    let table_dir = o.data_dir.join(SUMMARIES_TABLE);
    if table_dir.exists() {
        if read_marker(&o.data_dir).is_none() {
            bail!(
                "{} exists but was not generated by meterflow-querybench ({} missing): pass an empty --data-dir",
                table_dir.display(),
                MARKER_FILE
            );
        }
        std::fs::remove_file(o.data_dir.join(MARKER_FILE)).context("removing the old marker")?;
        std::fs::remove_dir_all(&table_dir).with_context(|| format!("removing {}", table_dir.display()))?;
    }
    Ok(())
}

/// Writes the table for `o` (replacing one an earlier benchmark run generated) and records it.
pub async fn generate(o: &QueryBenchOptions) -> Result<Generated> {
    remove_generated(o)?;
    std::fs::create_dir_all(&o.data_dir).with_context(|| format!("creating {}", o.data_dir.display()))?;
    let total = expected_rows(o)?;
    let mut generator = Generator::new(o.customers, o.meters)?;
    let mut table = SummaryTable::open_or_create(&o.data_dir).await?;
    let chunk = o.rows_per_commit.max(1);
    let mut rows: Vec<SummaryRow> = Vec::with_capacity(chunk.min(usize::try_from(total).unwrap_or(chunk)));
    let (mut written, mut commits) = (0u64, 0u64);
    let started = Instant::now();
    for h in 0..o.hours {
        for c in 0..o.customers {
            for m in 0..o.meters {
                rows.push(generator.row(c, m, h)?);
                if rows.len() >= chunk {
                    commit_chunk(&mut table, &mut rows, generator.seq).await?;
                    written += chunk as u64;
                    commits += 1;
                    if o.progress {
                        let secs = started.elapsed().as_secs_f64();
                        eprintln!(
                            "  generated {written} of {total} rows ({:.0}%), {commits} commits, {:.0} rows/s",
                            100.0 * written as f64 / total.max(1) as f64,
                            written as f64 / secs.max(1e-9)
                        );
                    }
                }
            }
        }
    }
    if !rows.is_empty() {
        written += rows.len() as u64;
        commit_chunk(&mut table, &mut rows, generator.seq).await?;
        commits += 1;
    }
    let generate_secs = started.elapsed().as_secs_f64();
    if o.progress {
        eprintln!("  generated {written} rows in {commits} commits in {generate_secs:.1} s");
    }
    let compaction = if o.compact { Some(compact(&mut table, o.progress).await?) } else { None };
    let generated = Generated {
        customers: o.customers,
        meters: o.meters,
        hours: o.hours,
        rows: written,
        commits,
        sum_quantity: generator.sum_quantity.to_string(),
        sum_amount: generator.sum_amount.to_string(),
        sum_events: generator.sum_events,
        generate_secs,
        compaction,
    };
    let marker = o.data_dir.join(MARKER_FILE);
    std::fs::write(&marker, serde_json::to_string_pretty(&generated)?)
        .with_context(|| format!("writing {}", marker.display()))?;
    Ok(generated)
}

/// Compacts the table as the pipeline does: `(files removed, files added, seconds)`.
async fn compact(table: &mut SummaryTable, progress: bool) -> Result<(u64, u64, f64)> {
    let t = Instant::now();
    if progress {
        eprintln!("  compacting (SummaryTable::compact, as the pipeline does every compact_every_commits) ...");
    }
    let (removed, added) = table.compact().await?;
    let secs = t.elapsed().as_secs_f64();
    if progress {
        eprintln!("  compacted {removed} files into {added} in {secs:.1} s");
    }
    Ok((removed, added, secs))
}

async fn commit_chunk(table: &mut SummaryTable, rows: &mut Vec<SummaryRow>, through_seq: u64) -> Result<()> {
    for r in rows.iter_mut() {
        r.revision = through_seq;
    }
    let after = table.committed_seq().await.context("reading the generated table's progress")?;
    let range = meterflow_sink::CommitRange { after, through: through_seq, stream: None };
    table.commit(rows, range).await.context("committing generated rows")?;
    rows.clear();
    Ok(())
}

/// The data files of the table's latest version, with their sizes and row groups.
pub async fn layout(data_dir: &Path) -> Result<Layout> {
    use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};
    let url = meterflow_sink::table_url(data_dir, SUMMARIES_TABLE)?;
    let table = deltalake::open_table(url).await.context("opening usage_summaries")?;
    let version = table.version().context("table without a version")?;
    let root = data_dir.join(SUMMARIES_TABLE).canonicalize().context("table folder")?;
    let snapshot = table.snapshot().context("table snapshot")?;
    let mut l = Layout {
        version,
        files: 0,
        bytes: 0,
        min_file_bytes: u64::MAX,
        max_file_bytes: 0,
        rows: 0,
        row_groups: 0,
        max_rows_per_row_group: 0,
        compression: String::new(),
        paths: Vec::new(),
    };
    for file in snapshot.log_data().iter() {
        let path = root.join(file.path().as_ref());
        let size = u64::try_from(file.size()).unwrap_or(0);
        l.files += 1;
        l.bytes += size;
        l.min_file_bytes = l.min_file_bytes.min(size);
        l.max_file_bytes = l.max_file_bytes.max(size);
        l.rows += file.num_records().map_or(0, |n| n as u64);
        let reader = std::fs::File::open(&path)
            .map_err(anyhow::Error::from)
            .and_then(|f| SerializedFileReader::new(f).map_err(anyhow::Error::from))
            .with_context(|| format!("reading the footer of {}", path.display()))?;
        let meta = reader.metadata();
        l.row_groups += meta.num_row_groups();
        for rg in meta.row_groups() {
            l.max_rows_per_row_group = l.max_rows_per_row_group.max(rg.num_rows());
            if l.compression.is_empty() {
                l.compression = rg.columns().first().map(|c| c.compression().to_string()).unwrap_or_default();
            }
        }
        l.paths.push(path);
    }
    l.paths.sort();
    if l.files == 0 {
        l.min_file_bytes = 0;
    }
    Ok(l)
}

/// The DuckDB runner process.
struct DuckDb {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    version: String,
    threads: usize,
}

impl DuckDb {
    /// Starts `python` with the runner script on `request` (files, SQL, view name).
    fn start(python: &Path, request: &Path) -> Result<DuckDb> {
        let hint = "DuckDB runs through Python: set DELTA_READER_PYTHON (or --python) to a Python with the `duckdb` \
                    package (`bash scripts/tools.sh` installs one and prints its path)";
        let mut child = Command::new(python)
            .arg("-c")
            .arg(DUCKDB_SCRIPT)
            .arg(request)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}. {hint}", python.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("no pipes to the DuckDB runner");
        };
        let mut d = DuckDb { child, stdin, stdout: BufReader::new(stdout), version: String::new(), threads: 0 };
        let ready = d.read().with_context(|| format!("the DuckDB runner did not start. {hint}"))?;
        d.version = ready.get("duckdb_version").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        d.threads = ready.get("threads").and_then(serde_json::Value::as_u64).unwrap_or(0) as usize;
        Ok(d)
    }

    fn read(&mut self) -> Result<serde_json::Value> {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).context("reading from the DuckDB runner")?;
        if n == 0 {
            bail!("the DuckDB runner exited (see its error above)");
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("DuckDB runner answered {line:?}"))?;
        if let Some(e) = v.get("error") {
            bail!("DuckDB runner: {e}");
        }
        Ok(v)
    }

    fn call(&mut self, command: &str) -> Result<serde_json::Value> {
        writeln!(self.stdin, "{command}").and_then(|()| self.stdin.flush()).context("writing to the DuckDB runner")?;
        self.read()
    }

    /// One timed run: milliseconds and result rows.
    fn run(&mut self) -> Result<(f64, usize)> {
        let v = self.call("run")?;
        let ms = v.get("ms").and_then(serde_json::Value::as_f64).context("no time from the DuckDB runner")?;
        let rows = v.get("rows").and_then(serde_json::Value::as_u64).context("no row count from DuckDB")?;
        Ok((ms, rows as usize))
    }

    /// The last result, parsed like meterflow parses its own.
    fn result(&mut self, dump: &Path) -> Result<Vec<UsageTotal>> {
        self.call(&format!("dump {}", dump.display()))?;
        let text = std::fs::read_to_string(dump).with_context(|| format!("reading {}", dump.display()))?;
        text.lines()
            .map(|line| {
                let cells: Vec<String> =
                    serde_json::from_str(line).with_context(|| format!("DuckDB result row {line:?}"))?;
                Ok(meterflow_billing::usage_total_of_row(&cells)?)
            })
            .collect()
    }
}

impl Drop for DuckDb {
    fn drop(&mut self) {
        // Best effort: the runner also exits when its stdin closes.
        writeln!(self.stdin, "quit").ok();
        self.child.wait().ok();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_amounts_fit_the_table_scale_and_sequences_increase() {
        let mut g = Generator::new(40, 7).unwrap_or_else(|e| panic!("{e}"));
        let mut last = 0;
        for h in [0, 1, 400, 743] {
            for c in 0..40 {
                for m in 0..7 {
                    let r = g.row(c, m, h).unwrap_or_else(|e| panic!("{e}"));
                    assert!(r.amount.normalize().scale() <= 18 && r.quantity.normalize().scale() <= 9);
                    assert!(r.first_seq > last && r.last_seq >= r.first_seq);
                    assert_eq!(r.last_seq - r.first_seq + 1, r.event_count);
                    last = r.last_seq;
                }
            }
        }
        let versions = customer_specs(40).unwrap_or_else(|e| panic!("{e}"));
        assert!(versions.iter().any(|c| c.change_hour < PERIOD_HOURS), "some customers change plan version");
    }
}
