//! Query results read back typed: text stays text, integers are read as integers and
//! `Decimal128` columns as exact [`Decimal`]s, so no result is printed and parsed back.

use deltalake::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Int64Type};
use deltalake::arrow::util::display::{ArrayFormatter, FormatOptions};
use rust_decimal::Decimal;

use crate::{Result, SinkError};

/// The rows of a query result.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    batches: Vec<RecordBatch>,
}

impl Rows {
    /// The result held in `batches`.
    pub fn new(batches: Vec<RecordBatch>) -> Rows {
        Rows { batches }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// True when the result has no row.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rows in order.
    pub fn iter(&self) -> impl Iterator<Item = Row<'_>> {
        self.batches.iter().flat_map(|batch| (0..batch.num_rows()).map(move |i| Row { batch, i }))
    }

    /// The result as Arrow batches (for rendering).
    pub fn batches(&self) -> &[RecordBatch] {
        &self.batches
    }

    /// The result as Arrow batches, owned.
    pub fn into_batches(self) -> Vec<RecordBatch> {
        self.batches
    }
}

/// One row of a [`Rows`]; its cells are read by column position.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    batch: &'a RecordBatch,
    i: usize,
}

impl Row<'_> {
    fn column(&self, col: usize) -> Result<&ArrayRef> {
        self.batch.columns().get(col).ok_or_else(|| {
            SinkError::Sql(format!("the query returned {} columns; column {col} was read", self.batch.num_columns()))
        })
    }

    /// The column's name, for errors only (reading a cell allocates nothing for it).
    fn name(&self, col: usize) -> String {
        self.batch.schema().fields().get(col).map(|f| f.name().clone()).unwrap_or_default()
    }

    fn type_err(&self, col: usize, wanted: &str, found: &DataType) -> SinkError {
        SinkError::Sql(format!("column {} is {found}, read as {wanted}", self.name(col)))
    }

    /// A text cell (a string column, or any other column as its display text); null reads as
    /// `None`.
    pub fn opt_text(&self, col: usize) -> Result<Option<String>> {
        let a = self.column(col)?;
        if a.is_null(self.i) {
            return Ok(None);
        }
        let s = match a.data_type() {
            DataType::Utf8 => a.as_string::<i32>().value(self.i).to_string(),
            DataType::LargeUtf8 => a.as_string::<i64>().value(self.i).to_string(),
            DataType::Utf8View => a.as_string_view().value(self.i).to_string(),
            other => {
                let f = ArrayFormatter::try_new(a.as_ref(), &FormatOptions::default())
                    .map_err(|_| self.type_err(col, "text", other))?;
                f.value(self.i).to_string()
            }
        };
        Ok(Some(s))
    }

    /// A text cell; null reads as the empty string.
    pub fn text(&self, col: usize) -> Result<String> {
        Ok(self.opt_text(col)?.unwrap_or_default())
    }

    /// An integer cell (any integer column); null reads as `None`.
    pub fn opt_int(&self, col: usize) -> Result<Option<i64>> {
        let a = self.column(col)?;
        if a.is_null(self.i) {
            return Ok(None);
        }
        match a.data_type() {
            // COUNT, SUM of BIGINT and every integer column meterflow writes: read directly.
            DataType::Int64 => return Ok(Some(a.as_primitive::<Int64Type>().value(self.i))),
            t if t.is_integer() => {}
            other => return Err(self.type_err(col, "an integer", other)),
        }
        let one = cast(&a.slice(self.i, 1), &DataType::Int64)
            .map_err(|e| SinkError::Sql(format!("column {}: {e}", self.name(col))))?;
        let v = one.as_primitive::<Int64Type>();
        if v.is_null(0) {
            return Err(SinkError::Sql(format!("column {}: value past the 64-bit integer range", self.name(col))));
        }
        Ok(Some(v.value(0)))
    }

    /// An integer cell; null (an empty `SUM` or `COUNT`) reads as 0.
    pub fn int(&self, col: usize) -> Result<i64> {
        Ok(self.opt_int(col)?.unwrap_or(0))
    }

    /// A non-negative integer cell (a count, a version, a sequence); null reads as 0.
    pub fn count(&self, col: usize) -> Result<u64> {
        let v = self.int(col)?;
        u64::try_from(v).map_err(|_| {
            SinkError::Sql(format!("column {}: {v} is negative where a count was expected", self.name(col)))
        })
    }

    /// An exact decimal cell (a `Decimal128` or integer column); null reads as `None`.
    pub fn opt_dec(&self, col: usize) -> Result<Option<Decimal>> {
        let a = self.column(col)?;
        if a.is_null(self.i) {
            return Ok(None);
        }
        match a.data_type() {
            DataType::Decimal128(_, scale) => {
                let v = a.as_primitive::<deltalake::arrow::datatypes::Decimal128Type>().value(self.i);
                let scale = u32::try_from(*scale).map_err(|_| self.type_err(col, "a decimal", a.data_type()))?;
                Decimal::try_from_i128_with_scale(v, scale).map(Some).map_err(|e| {
                    SinkError::Sql(format!(
                        "column {}: {v}e-{scale} does not fit a 96-bit decimal ({e})",
                        self.name(col)
                    ))
                })
            }
            t if t.is_integer() => Ok(self.opt_int(col)?.map(Decimal::from)),
            other => Err(self.type_err(col, "a decimal", other)),
        }
    }

    /// An exact decimal cell; null (an empty `SUM`) reads as zero.
    pub fn dec(&self, col: usize) -> Result<Decimal> {
        Ok(self.opt_dec(col)?.unwrap_or(Decimal::ZERO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Decimal128Array, Int32Array, StringArray, StringViewArray};
    use deltalake::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn batch() -> RecordBatch {
        let dec = Decimal128Array::from(vec![Some(1_500_000_000_000_000_001), None])
            .with_precision_and_scale(38, 18)
            .unwrap();
        let schema = Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("view", DataType::Utf8View, true),
            Field::new("n", DataType::Int32, true),
            Field::new("amount", DataType::Decimal128(38, 18), true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(vec![Some("acme"), None])),
                Arc::new(StringViewArray::from(vec![Some("v"), Some("w")])),
                Arc::new(Int32Array::from(vec![Some(-3), None])),
                Arc::new(dec),
            ],
        )
        .unwrap()
    }

    #[test]
    fn cells_read_typed_with_decimals_exact_and_nulls_as_zero_or_empty() {
        let rows = Rows::new(vec![batch()]);
        let all: Vec<Row<'_>> = rows.iter().collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].text(0).unwrap(), "acme");
        assert_eq!(all[0].text(1).unwrap(), "v");
        assert_eq!(all[0].int(2).unwrap(), -3);
        assert_eq!(all[0].dec(3).unwrap().to_string(), "1.500000000000000001");
        assert_eq!(all[1].opt_text(0).unwrap(), None);
        assert_eq!(all[1].text(0).unwrap(), "");
        assert_eq!(all[1].int(2).unwrap(), 0);
        assert_eq!(all[1].dec(3).unwrap(), Decimal::ZERO);
    }

    #[test]
    fn a_cell_read_as_the_wrong_type_or_out_of_range_is_an_error_not_zero() {
        let rows = Rows::new(vec![batch()]);
        let first = rows.iter().next().unwrap();
        let e = first.int(0).unwrap_err().to_string();
        assert!(e.contains("column name is Utf8, read as an integer"), "{e}");
        assert!(first.dec(1).unwrap_err().to_string().contains("read as a decimal"));
        assert!(first.count(2).unwrap_err().to_string().contains("-3 is negative"));
        assert!(first.text(9).unwrap_err().to_string().contains("returned 4 columns"));
        let big = Decimal128Array::from(vec![Some(10i128.pow(37))]).with_precision_and_scale(38, 0).unwrap();
        let schema = Schema::new(vec![Field::new("big", DataType::Decimal128(38, 0), false)]);
        let b = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(big)]).unwrap();
        let rows = Rows::new(vec![b]);
        let e = rows.iter().next().unwrap().dec(0).unwrap_err().to_string();
        assert!(e.contains("does not fit a 96-bit decimal"), "{e}");
    }
}
