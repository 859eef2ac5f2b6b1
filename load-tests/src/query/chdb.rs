//! Step 3 of the query benchmark, chdb (ClickHouse's engine in process): the invoice SQL in
//! ClickHouse's dialect over `file('<folder>/{<the snapshot's files>}', Parquet)`, in the runner
//! querybench_chdb.py.
//!
//! DataFusion and DuckDB run one text, [`meterflow_billing::usage_totals_sql`]; ClickHouse
//! runs [`CLICKHOUSE_SQL`], that text with two changes, each forced by the dialect:
//!
//! 1. The parameter `$1` is written `{period:String}`: ClickHouse has no positional
//!    parameters, only named, typed ones (bound by chdb's `params`, like `$1` by the others).
//! 2. `SETTINGS prefer_column_name_to_alias = 1` at the end. ClickHouse lets an alias shadow a
//!    column everywhere in the query, so in `MIN(CASE ... THEN first_seq END) AS first_seq`
//!    (and `SUM(quantity) AS quantity`, `MAX(last_seq) AS last_seq`) the inner name may mean
//!    the aggregate itself: ClickHouse's old analyzer refuses that as an aggregate inside an
//!    aggregate; the current one (the default in the pinned chdb) falls back to the column
//!    (tried: same result with and without the setting). The setting states standard SQL's
//!    rule (a name that is a column means the column, as in DataFusion and DuckDB) instead of
//!    relying on that fallback.
//!
//! Everything else means the same in both dialects: `SUM` of `Decimal(38, s)` is
//! `Decimal(38, s)` (exact, as DataFusion's `Decimal128(38, s)`), `SUM` of `Int64` is `Int64`,
//! `CASE` without `ELSE` yields `NULL` and `MIN` skips it, `IN (SELECT ...)` is a semi-join,
//! `GROUP BY 1, ...` / `ORDER BY 1, ...` are positions (`enable_positional_arguments`, on by
//! default). [`clickhouse_sql`] checks at every run that meterflow's text is still the one
//! these changes were made to, so the engines never time different queries unnoticed.

use anyhow::{bail, Context, Result};
use std::path::Path;

use super::runner::Runner;
use super::{Engine, QueryBenchOptions, PERIOD};

/// The chdb runner (see the file for its line protocol).
const SCRIPT: &str = include_str!("querybench_chdb.py");

/// The invoice query in ClickHouse's dialect (see the module doc for the two differences from
/// [`meterflow_billing::usage_totals_sql`]); it reads the view `summaries_now` and the list
/// table `selected_customers`, and binds the period as the named parameter `period`.
pub const CLICKHOUSE_SQL: &str = "SELECT customer_id, meter, plan_id, plan_version, currency, billing_period, \
SUM(quantity) AS quantity, SUM(amount) AS amount, SUM(event_count) AS events, \
MIN(CASE WHEN event_count > 0 THEN first_seq END) AS first_seq, MAX(last_seq) AS last_seq \
FROM summaries_now WHERE billing_period = {period:String} \
AND customer_id IN (SELECT customer_id FROM selected_customers) \
GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 4, 6 \
SETTINGS prefer_column_name_to_alias = 1";

/// The named parameter that stands for DataFusion's `$1`.
const PERIOD_PARAM: &str = "{period:String}";
/// What ends the ClickHouse text after meterflow's.
const SETTINGS: &str = " SETTINGS prefer_column_name_to_alias = 1";

/// [`CLICKHOUSE_SQL`], after checking that it is `sql` (meterflow's text) with exactly the
/// documented changes; fails when meterflow's query changed and this translation did not.
pub fn clickhouse_sql(sql: &str) -> Result<&'static str> {
    let translated = match sql.split("$1").collect::<Vec<_>>()[..] {
        [head, tail] if !sql.contains("$2") => format!("{head}{PERIOD_PARAM}{tail}{SETTINGS}"),
        _ => bail!("the invoice SQL no longer has exactly one parameter $1: {sql}"),
    };
    if translated != CLICKHOUSE_SQL {
        bail!(
            "the invoice SQL changed, and its ClickHouse translation (CLICKHOUSE_SQL in \
             load-tests/src/query/chdb.rs) no longer matches it:\n  meterflow  {sql}\n  translated {translated}\n  \
             held       {CLICKHOUSE_SQL}"
        );
    }
    Ok(CLICKHOUSE_SQL)
}

/// Writes the request into `out_dir` and starts the runner on it: `files` to read, meterflow's
/// invoice `sql` (translated here) and the customer `ids` to select.
pub(super) fn start(
    o: &QueryBenchOptions,
    out_dir: &Path,
    files: &[String],
    sql: &str,
    ids: &[&str],
) -> Result<Runner> {
    let request = out_dir.join("chdb-request.json");
    let body = serde_json::json!({
        "files": files, "sql": clickhouse_sql(sql)?, "view": meterflow_billing::SUMMARIES_NOW,
        "threads": o.chdb_threads, "params": {"period": PERIOD},
        "list": {"table": meterflow_billing::SELECTED_CUSTOMERS, "column": "customer_id", "values": ids},
    });
    std::fs::write(&request, serde_json::to_vec(&body)?).with_context(|| format!("writing {}", request.display()))?;
    let hint = "chdb runs through Python: set DELTA_READER_PYTHON (or --python) to a Python with the `chdb` \
                package (`bash scripts/tools.sh` installs one and prints its path), or leave it out with \
                --engines";
    Runner::start(Engine::Chdb, &o.python, SCRIPT, &request, hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clickhouse_text_is_meterflows_invoice_sql_with_only_the_documented_changes() {
        let sql = meterflow_billing::usage_totals_sql(meterflow_billing::SUMMARIES_NOW);
        assert_eq!(clickhouse_sql(&sql).unwrap_or_else(|e| panic!("{e}")), CLICKHOUSE_SQL);
    }

    #[test]
    fn a_changed_invoice_sql_is_refused_rather_than_translated_blindly() {
        let sql = meterflow_billing::usage_totals_sql(meterflow_billing::SUMMARIES_NOW);
        assert!(clickhouse_sql(&sql.replace("MAX(last_seq)", "MIN(last_seq)")).is_err());
        assert!(clickhouse_sql(&sql.replace("$1", "'2026-10'")).is_err());
        assert!(clickhouse_sql(&format!("{sql} AND meter = $2")).is_err());
    }
}
