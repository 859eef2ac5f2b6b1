//! Step 3 of the query benchmark, DuckDB: the invoice SQL exactly as meterflow runs it (DuckDB
//! reads the same dialect, `$1` included) over `read_parquet([the snapshot's files])`, in the
//! runner querybench_duckdb.py.

use anyhow::{Context, Result};
use std::path::Path;

use super::runner::Runner;
use super::{Engine, QueryBenchOptions, PERIOD};

/// The DuckDB runner (see the file for its line protocol).
const SCRIPT: &str = include_str!("querybench_duckdb.py");

/// Writes the request into `out_dir` and starts the runner on it: `files` to read, the invoice
/// `sql` (meterflow's text) and the customer `ids` to select.
pub(super) fn start(
    o: &QueryBenchOptions,
    out_dir: &Path,
    files: &[String],
    sql: &str,
    ids: &[&str],
) -> Result<Runner> {
    let request = out_dir.join("duckdb-request.json");
    let body = serde_json::json!({
        "files": files, "sql": sql, "view": meterflow_billing::SUMMARIES_NOW, "threads": o.duckdb_threads,
        "params": [PERIOD],
        "list": {"table": meterflow_billing::SELECTED_CUSTOMERS, "column": "customer_id", "values": ids},
    });
    std::fs::write(&request, serde_json::to_vec(&body)?).with_context(|| format!("writing {}", request.display()))?;
    let hint = "DuckDB runs through Python: set DELTA_READER_PYTHON (or --python) to a Python with the `duckdb` \
                package (`bash scripts/tools.sh` installs one and prints its path), or leave it out with \
                --engines";
    Runner::start(Engine::DuckDb, &o.python, SCRIPT, &request, hint)
}
