//! Stage: the Delta sink's encoding, inside every `SummaryTable::commit`: rated summary rows to
//! an Arrow `RecordBatch` (`meterflow_sink::encode_rows`), and that batch to Parquet bytes in
//! memory with the `parquet` crate's `ArrowWriter` (as re-exported by deltalake, the version the
//! tables are written with). No object store, no Delta log: the commit's I/O is not measured.
//!
//! Inputs: 10,000 `usage_summaries` rows as one commit writes them (`meterflow_benches::
//! summary_rows`: window deltas of the workload over tenant copies of the example customers,
//! rated under the example plans).
//!
//! * `encode_rows`: SummaryRow → RecordBatch;
//! * `parquet/zstd3`: the batch to Parquet with DataFusion's default writer options, which the
//!   Delta write of the sink uses (ZSTD level 3, page statistics);
//! * `parquet/uncompressed`: the same without compression, to separate encoding from ZSTD.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use chrono::{DateTime, Utc};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meterflow_benches::{base_time, reference, summary_rows};
use meterflow_sink::deltalake::arrow::record_batch::RecordBatch;
use meterflow_sink::deltalake::datafusion::config::ParquetOptions;
use meterflow_sink::deltalake::parquet::arrow::ArrowWriter;
use meterflow_sink::deltalake::parquet::basic::Compression;
use meterflow_sink::deltalake::parquet::file::properties::WriterProperties;
use meterflow_sink::encode_rows;
use std::hint::black_box;

/// The allocator the `meterflow` binary runs with: decode, enrich and the aggregator allocate per
/// event, so their figures depend on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rows per commit.
const ROWS: usize = 10_000;

fn to_parquet(batch: &RecordBatch, props: &WriterProperties) -> Vec<u8> {
    let mut writer = ArrowWriter::try_new(Vec::with_capacity(1 << 20), batch.schema(), Some(props.clone()))
        .expect("a writer for the summaries schema");
    writer.write(batch).expect("the batch encodes");
    writer.into_inner().expect("the file closes")
}

fn parquet_encode(c: &mut Criterion) {
    let reference = reference();
    let rows = summary_rows(&reference, ROWS);
    assert_eq!(rows.len(), ROWS);
    let committed_at: DateTime<Utc> = base_time() + chrono::Duration::days(2);
    let batch = encode_rows(&rows, committed_at).expect("rows encode");
    // What delta-rs writes with when the sink passes no writer properties: the session's
    // DataFusion Parquet options.
    let zstd = ParquetOptions::default().into_writer_properties_builder().expect("default options").build();
    let plain = ParquetOptions::default()
        .into_writer_properties_builder()
        .expect("default options")
        .set_compression(Compression::UNCOMPRESSED)
        .build();
    eprintln!(
        "parquet_encode: {} rows, Arrow {} KiB, Parquet zstd(3) {} KiB, uncompressed {} KiB",
        batch.num_rows(),
        batch.get_array_memory_size() / 1024,
        to_parquet(&batch, &zstd).len() / 1024,
        to_parquet(&batch, &plain).len() / 1024
    );

    let mut group = c.benchmark_group("parquet_encode");
    group.sample_size(20);
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("encode_rows", |b| {
        b.iter(|| encode_rows(black_box(&rows), committed_at).expect("rows encode"));
    });
    group.bench_function("parquet/zstd3", |b| b.iter(|| to_parquet(black_box(&batch), &zstd)));
    group.bench_function("parquet/uncompressed", |b| b.iter(|| to_parquet(black_box(&batch), &plain)));
    group.finish();
}

criterion_group!(benches, parquet_encode);
criterion_main!(benches);
