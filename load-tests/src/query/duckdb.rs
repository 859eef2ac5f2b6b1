//! Step 3 of the query benchmark: the DuckDB runner, a Python process started once and driven
//! line by line over its stdin and stdout.

use anyhow::{bail, Context, Result};
use meterflow_billing::invoice::UsageTotal;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use super::*;

/// The DuckDB runner process.
pub(super) struct DuckDb {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub(super) version: String,
    pub(super) threads: usize,
}

impl DuckDb {
    /// Starts `python` with the runner script on `request` (files, SQL, view name).
    pub(super) fn start(python: &Path, request: &Path) -> Result<DuckDb> {
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

    pub(super) fn read(&mut self) -> Result<serde_json::Value> {
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

    pub(super) fn call(&mut self, command: &str) -> Result<serde_json::Value> {
        writeln!(self.stdin, "{command}").and_then(|()| self.stdin.flush()).context("writing to the DuckDB runner")?;
        self.read()
    }

    /// One timed run: milliseconds and result rows.
    pub(super) fn run(&mut self) -> Result<(f64, usize)> {
        let v = self.call("run")?;
        let ms = v.get("ms").and_then(serde_json::Value::as_f64).context("no time from the DuckDB runner")?;
        let rows = v.get("rows").and_then(serde_json::Value::as_u64).context("no row count from DuckDB")?;
        Ok((ms, rows as usize))
    }

    /// The last result, parsed like meterflow parses its own.
    pub(super) fn result(&mut self, dump: &Path) -> Result<Vec<UsageTotal>> {
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
