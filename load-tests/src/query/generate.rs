//! Step 1 of the query benchmark: a month of hourly summaries for the generated customers and
//! meters, written and compacted by meterflow's own writer, with the oracle's totals.

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use meterflow_sink::deltalake;
use meterflow_sink::{RowKind, SummaryRow, SummaryTable, SUMMARIES_TABLE};
use rust_decimal::Decimal;
use std::path::Path;
use std::time::Instant;

use super::*;

/// Deterministic pseudo-random numbers (SplitMix64 of a key).
pub(super) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

pub(super) fn key(c: usize, m: usize, h: usize, salt: u64) -> u64 {
    mix(((c as u64) << 32) ^ ((m as u64) << 20) ^ (h as u64) ^ (salt << 56))
}

/// One meter of the generated workload.
pub(super) struct MeterSpec {
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

pub(super) fn meter_specs(n: usize) -> Result<Vec<MeterSpec>> {
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
pub(super) struct CustomerSpec {
    pub(super) id: String,
    subject: String,
    dimensions: String,
    currency: String,
    plan_id: String,
    versions: [(String, Decimal); 2],
    /// Hour (from the period start) the second version starts at; `usize::MAX` when never.
    change_hour: usize,
}

pub(super) fn customer_specs(n: usize) -> Result<Vec<CustomerSpec>> {
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

pub(super) fn period_start() -> Result<DateTime<Utc>> {
    NaiveDate::from_ymd_opt(2026, 10, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .context("period start")
}

/// Builds the rows in stream order (hour by hour) and keeps the oracle.
pub(super) struct Generator {
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

pub(super) fn expected_rows(o: &QueryBenchOptions) -> Result<u64> {
    let rows = o.customers.checked_mul(o.meters).and_then(|r| r.checked_mul(o.hours)).context("too many rows")?;
    u64::try_from(rows).context("too many rows")
}

pub(super) fn read_marker(data_dir: &Path) -> Option<Generated> {
    let text = std::fs::read_to_string(data_dir.join(MARKER_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Removes the table an earlier benchmark run generated (refusing one it did not generate).
pub(super) fn remove_generated(o: &QueryBenchOptions) -> Result<()> {
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
pub(super) async fn compact(table: &mut SummaryTable, progress: bool) -> Result<(u64, u64, f64)> {
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

pub(super) async fn commit_chunk(table: &mut SummaryTable, rows: &mut Vec<SummaryRow>, through_seq: u64) -> Result<()> {
    for r in rows.iter_mut() {
        r.revision = through_seq;
    }
    let after = table.committed_seq().await.context("reading the generated table's progress")?;
    let range = meterflow_sink::CommitRange { after, through: through_seq, stream: None, catalog: None };
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
