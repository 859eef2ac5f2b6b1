//! The CI smoke version of the query benchmark: a tiny table, correctness only (the timings it
//! prints are not benchmarks; BENCHMARKS.md has the real ones). Needs the Python with duckdb and
//! chdb (`DELTA_READER_PYTHON`, set by scripts/env.sh; .tools/venv/bin/python otherwise; both
//! installed by scripts/tools.sh).

use meterflow_load_tests::query::{self, Engine, QueryBenchOptions};
use std::path::PathBuf;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("DELTA_READER_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/python");
    assert!(
        venv.exists(),
        "no DELTA_READER_PYTHON and no {}: run `bash scripts/test.sh` (it installs the \
        Python readers) or set DELTA_READER_PYTHON",
        venv.display()
    );
    venv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meterflow_duckdb_and_chdb_return_the_same_invoice_totals_on_a_small_month() {
    let dir = tempfile::tempdir().unwrap();
    let options = QueryBenchOptions {
        customers: 20,
        meters: 5,
        hours: 24,
        data_dir: dir.path().join("data"),
        runs: 1,
        reuse: true,
        rows_per_commit: 700,
        compact: true,
        engines: Engine::ALL.to_vec(),
        python: python(),
        duckdb_threads: None,
        chdb_threads: None,
        progress: false,
    };
    let out = dir.path().join("report");
    let report = query::run(&options, "smoke".into(), &out).await.unwrap();
    assert!(report.engines_agree && report.oracle_agrees);
    let engines: Vec<Engine> = report.engines.iter().map(|e| e.engine).collect();
    assert_eq!(engines, [Engine::DuckDb, Engine::Chdb]);
    assert!(report.engines.iter().all(|e| e.agrees && e.times.runs_ms.len() == 1));
    // chdb ran the ClickHouse text, the others meterflow's own.
    assert!(report.engines[1].sql.contains("{period:String}") && report.engines[0].sql.contains("$1"));
    assert_eq!(report.layout.rows, 20 * 5 * 24);
    assert!(!report.reused);
    // One total per customer and meter: no plan version changes in the first day (they start on
    // the 15th, which the full-size run covers).
    assert_eq!(report.result.rows, 100);
    assert_eq!(report.generated.commits, 4, "2400 rows in commits of 700");
    let (removed, added, _) = report.generated.compaction.unwrap();
    assert_eq!((removed, added), (4, 1));

    // A second run reuses the table, and still agrees.
    let again = query::run(&options, "smoke".into(), &out).await.unwrap();
    assert!(again.reused && again.engines_agree && again.oracle_agrees);
    let (json, md) = again.write(&out).unwrap();
    let md = std::fs::read_to_string(md).unwrap();
    assert!(json.exists() && md.contains("DataFusion / DuckDB") && md.contains("DataFusion / chdb"));
}
