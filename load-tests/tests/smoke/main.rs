//! The CI smoke versions of the load test and the query benchmark, in one test binary: tiny
//! workloads, correctness only. The figures they print are not benchmarks; BENCHMARKS.md has the
//! real ones.
//!
//! * [`load`]: `meterflow-loadgen` over a few thousand events, every phase measured, totals exact;
//! * [`querybench`]: `meterflow-querybench` on a small month, meterflow, DuckDB and chdb agree.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly by design

mod load;
mod querybench;
