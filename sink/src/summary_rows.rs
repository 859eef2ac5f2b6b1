//! A row of `usage_summaries` and its encoding: the Arrow schema, the Delta columns, and the
//! exact conversion of decimals to the table's scaled integers.

use chrono::{DateTime, Utc};
use deltalake::arrow::array::{ArrayRef, Decimal128Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use deltalake::arrow::datatypes::{DataType as ArrowType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::{DataType, StructField};
use rust_decimal::Decimal;
use std::sync::Arc;

use crate::table::SUMMARIES_TABLE;
use crate::{Result, SinkError};

/// Fractional digits of `quantity` (DECIMAL(38, 9)).
pub const QUANTITY_SCALE: u32 = 9;
/// Fractional digits of `amount` (DECIMAL(38, 18)): unrounded, see the rater.
pub const AMOUNT_SCALE: u32 = 18;

/// One rated summary row: the change of one window's value in one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryRow {
    /// Customer id.
    pub customer_id: String,
    /// Event subject.
    pub subject: String,
    /// Meter name.
    pub meter: String,
    /// Canonical JSON of the group-by values.
    pub dimensions: String,
    /// Window start (UTC).
    pub window_start: DateTime<Utc>,
    /// Window end, exclusive (UTC).
    pub window_end: DateTime<Utc>,
    /// The stream sequence the writing commit covers through; orders a window's rows.
    pub revision: u64,
    /// Change of the window's quantity (rows of a window sum to its value).
    pub quantity: Decimal,
    /// Change of the window's rated amount, unrounded.
    pub amount: Decimal,
    /// ISO 4217 currency of `amount`.
    pub currency: String,
    /// Plan that rated the row.
    pub plan_id: String,
    /// Plan version that rated the row (`plan@effective_from`).
    pub plan_version: String,
    /// The customer's billing period holding the window (`YYYY-MM`, or `YYYY-MM-DD` when the
    /// customer's periods start on another day than the 1st).
    pub billing_period: String,
    /// Accepted events folded into this row.
    pub event_count: u64,
    /// Lowest stream sequence among those events.
    pub first_seq: u64,
    /// Highest stream sequence among those events.
    pub last_seq: u64,
    /// `usage` for rows the pipeline rates from events, `rerate` for price corrections.
    pub row_kind: RowKind,
    /// Why the row exists, for rows that are not plain usage.
    pub reason: Option<String>,
    /// Newest broker arrival time among the row's events (None for rerate rows).
    pub arrived_at: Option<DateTime<Utc>>,
}

/// What kind of row a summary row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    /// A window delta rated from events.
    Usage,
    /// Usage that arrived after its window had closed (the watermark passed the window's end
    /// plus the meter's allowed lateness) while its billing period was still open.
    Late,
    /// Usage for a billing period that was already closed: an adjustment for the next invoice.
    Adjustment,
    /// An adjustment written by `meterflow rerate`: quantity 0, amount = the price difference.
    Rerate,
}

impl RowKind {
    /// The value stored in the `row_kind` column.
    pub const fn as_str(self) -> &'static str {
        match self {
            RowKind::Usage => "usage",
            RowKind::Late => "late",
            RowKind::Adjustment => "adjustment",
            RowKind::Rerate => "rerate",
        }
    }
}

fn ts_type() -> ArrowType {
    ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Arrow schema of `usage_summaries`.
pub fn summaries_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("customer_id", ArrowType::Utf8, false),
        Field::new("subject", ArrowType::Utf8, false),
        Field::new("meter", ArrowType::Utf8, false),
        Field::new("dimensions", ArrowType::Utf8, false),
        Field::new("window_start", ts_type(), false),
        Field::new("window_end", ts_type(), false),
        Field::new("revision", ArrowType::Int64, false),
        Field::new("quantity", ArrowType::Decimal128(38, QUANTITY_SCALE as i8), false),
        Field::new("amount", ArrowType::Decimal128(38, AMOUNT_SCALE as i8), false),
        Field::new("currency", ArrowType::Utf8, false),
        Field::new("plan_id", ArrowType::Utf8, false),
        Field::new("plan_version", ArrowType::Utf8, false),
        Field::new("billing_period", ArrowType::Utf8, false),
        Field::new("event_count", ArrowType::Int64, false),
        Field::new("first_seq", ArrowType::Int64, false),
        Field::new("last_seq", ArrowType::Int64, false),
        Field::new("committed_at", ts_type(), false),
        Field::new("row_kind", ArrowType::Utf8, false),
        Field::new("reason", ArrowType::Utf8, true),
        Field::new("arrived_at", ts_type(), true),
    ]))
}

pub(crate) fn delta_columns() -> Result<Vec<StructField>> {
    let dec = |p, s| {
        DataType::decimal(p, s).map_err(|e| SinkError::Encode { table: SUMMARIES_TABLE.into(), message: e.to_string() })
    };
    Ok(vec![
        StructField::new("customer_id", DataType::STRING, false),
        StructField::new("subject", DataType::STRING, false),
        StructField::new("meter", DataType::STRING, false),
        StructField::new("dimensions", DataType::STRING, false),
        StructField::new("window_start", DataType::TIMESTAMP, false),
        StructField::new("window_end", DataType::TIMESTAMP, false),
        StructField::new("revision", DataType::LONG, false),
        StructField::new("quantity", dec(38, QUANTITY_SCALE as u8)?, false),
        StructField::new("amount", dec(38, AMOUNT_SCALE as u8)?, false),
        StructField::new("currency", DataType::STRING, false),
        StructField::new("plan_id", DataType::STRING, false),
        StructField::new("plan_version", DataType::STRING, false),
        StructField::new("billing_period", DataType::STRING, false),
        StructField::new("event_count", DataType::LONG, false),
        StructField::new("first_seq", DataType::LONG, false),
        StructField::new("last_seq", DataType::LONG, false),
        StructField::new("committed_at", DataType::TIMESTAMP, false),
        StructField::new("row_kind", DataType::STRING, false),
        StructField::new("reason", DataType::STRING, true),
        StructField::new("arrived_at", DataType::TIMESTAMP, true),
    ])
}

/// The unscaled i128 of `d` in a decimal column with `scale` fractional digits, exactly: `None`
/// when `d` has more fractional digits than the column or does not fit 128 bits. Every
/// Decimal128 column written by meterflow goes through here.
pub fn unscaled(d: Decimal, scale: u32) -> Option<i128> {
    let d = d.normalize();
    if d.scale() > scale {
        return None;
    }
    d.mantissa().checked_mul(10i128.checked_pow(scale - d.scale())?)
}

/// [`unscaled`] for a column of `usage_summaries`, with an error naming the column.
pub(crate) fn to_unscaled(d: Decimal, scale: u32, column: &str) -> Result<i128> {
    unscaled(d, scale).ok_or_else(|| SinkError::Encode {
        table: SUMMARIES_TABLE.into(),
        message: if d.normalize().scale() > scale {
            format!("{column} {d} has more than {scale} fractional digits")
        } else {
            format!("{column} {d} overflows DECIMAL(38, {scale})")
        },
    })
}

pub(crate) fn seq_i64(v: u64, column: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| SinkError::Encode {
        table: SUMMARIES_TABLE.into(),
        message: format!("{column} {v} exceeds Int64"),
    })
}

/// Builds the Arrow batch for `rows`, stamped with `committed_at`.
pub fn encode_rows(rows: &[SummaryRow], committed_at: DateTime<Utc>) -> Result<RecordBatch> {
    let n = rows.len();
    let mut customer = StringBuilder::with_capacity(n, n * 8);
    let mut subject = StringBuilder::with_capacity(n, n * 8);
    let mut meter = StringBuilder::with_capacity(n, n * 8);
    let mut dims = StringBuilder::with_capacity(n, n * 16);
    let mut wstart = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut wend = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut revision = Int64Builder::with_capacity(n);
    let mut quantity = Decimal128Builder::with_capacity(n);
    let mut amount = Decimal128Builder::with_capacity(n);
    let mut currency = StringBuilder::with_capacity(n, n * 3);
    let mut plan = StringBuilder::with_capacity(n, n * 8);
    let mut plan_version = StringBuilder::with_capacity(n, n * 16);
    let mut billing_period = StringBuilder::with_capacity(n, n * 7);
    let mut events = Int64Builder::with_capacity(n);
    let mut first = Int64Builder::with_capacity(n);
    let mut last = Int64Builder::with_capacity(n);
    let mut committed = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut kind = StringBuilder::with_capacity(n, n * 5);
    let mut reason = StringBuilder::with_capacity(n, 0);
    let mut arrived = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    for r in rows {
        customer.append_value(&r.customer_id);
        subject.append_value(&r.subject);
        meter.append_value(&r.meter);
        dims.append_value(&r.dimensions);
        wstart.append_value(r.window_start.timestamp_micros());
        wend.append_value(r.window_end.timestamp_micros());
        revision.append_value(seq_i64(r.revision, "revision")?);
        quantity.append_value(to_unscaled(r.quantity, QUANTITY_SCALE, "quantity")?);
        amount.append_value(to_unscaled(r.amount, AMOUNT_SCALE, "amount")?);
        currency.append_value(&r.currency);
        plan.append_value(&r.plan_id);
        plan_version.append_value(&r.plan_version);
        billing_period.append_value(&r.billing_period);
        events.append_value(seq_i64(r.event_count, "event_count")?);
        first.append_value(seq_i64(r.first_seq, "first_seq")?);
        last.append_value(seq_i64(r.last_seq, "last_seq")?);
        committed.append_value(committed_at.timestamp_micros());
        kind.append_value(r.row_kind.as_str());
        reason.append_option(r.reason.as_deref());
        arrived.append_option(r.arrived_at.map(|t| t.timestamp_micros()));
    }
    let enc = |e: deltalake::arrow::error::ArrowError| SinkError::Encode {
        table: SUMMARIES_TABLE.into(),
        message: e.to_string(),
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(customer.finish()),
        Arc::new(subject.finish()),
        Arc::new(meter.finish()),
        Arc::new(dims.finish()),
        Arc::new(wstart.finish()),
        Arc::new(wend.finish()),
        Arc::new(revision.finish()),
        Arc::new(quantity.finish().with_precision_and_scale(38, QUANTITY_SCALE as i8).map_err(enc)?),
        Arc::new(amount.finish().with_precision_and_scale(38, AMOUNT_SCALE as i8).map_err(enc)?),
        Arc::new(currency.finish()),
        Arc::new(plan.finish()),
        Arc::new(plan_version.finish()),
        Arc::new(billing_period.finish()),
        Arc::new(events.finish()),
        Arc::new(first.finish()),
        Arc::new(last.finish()),
        Arc::new(committed.finish()),
        Arc::new(kind.finish()),
        Arc::new(reason.finish()),
        Arc::new(arrived.finish()),
    ];
    RecordBatch::try_new(summaries_schema(), columns).map_err(enc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unscaled_values_are_exact_or_refused_never_rounded_or_wrapped() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(unscaled(d("1.5"), 9), Some(1_500_000_000));
        assert_eq!(unscaled(d("-0.000000001"), 9), Some(-1));
        assert_eq!(unscaled(d("1.50000000000"), 9), Some(1_500_000_000), "trailing zeros are not digits");
        assert_eq!(unscaled(d("0.0000000001"), 9), None, "more fractional digits than the column");
        assert_eq!(unscaled(d("79228162514264337593543950335"), 18), None, "past 128 bits");
        assert_eq!(unscaled(d("1"), 40), None, "10^40 does not fit: refused, not a panic");
        let e = to_unscaled(d("0.0000000001"), 9, "quantity").unwrap_err().to_string();
        assert!(e.contains("more than 9 fractional digits"), "{e}");
        let e = to_unscaled(d("79228162514264337593543950335"), 18, "amount").unwrap_err().to_string();
        assert!(e.contains("overflows DECIMAL(38, 18)"), "{e}");
    }

    #[test]
    fn decimals_convert_exactly_to_the_column_scale() {
        assert_eq!(to_unscaled("1.5".parse().unwrap(), 12, "q").unwrap(), 1_500_000_000_000);
        assert_eq!(to_unscaled("0.000000000001".parse().unwrap(), 12, "q").unwrap(), 1);
        assert!(to_unscaled("0.0000000000001".parse().unwrap(), 12, "q").is_err());
    }
}
