//! Steps 3 and 4 of the query benchmark: an engine runner, a Python process started once and
//! driven line by line over its stdin and stdout. The engine's script (querybench_duckdb.py,
//! querybench_chdb.py) describes the protocol: `run`, `dump <path>`, `quit`, one JSON answer per
//! line, `{"error": ...}` on failure.

use anyhow::{bail, Context, Result};
use meterflow_billing::invoice::UsageTotal;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use super::Engine;

/// One engine's runner process.
pub(super) struct Runner {
    pub(super) engine: Engine,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Engine version, as the runner reports it.
    pub(super) version: String,
    /// Threads the engine uses.
    pub(super) threads: usize,
    /// The runner's first answer, with what its untimed checks found (engine-specific keys).
    pub(super) ready: serde_json::Value,
}

impl Runner {
    /// Starts `python` with `script` on `request` and waits for its first answer. `hint` says
    /// how to get a Python with the engine's package.
    pub(super) fn start(engine: Engine, python: &Path, script: &str, request: &Path, hint: &str) -> Result<Runner> {
        let name = engine.name();
        let mut child = Command::new(python)
            .arg("-c")
            .arg(script)
            .arg(request)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}. {hint}", python.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("no pipes to the {name} runner");
        };
        let mut r = Runner {
            engine,
            child,
            stdin,
            stdout: BufReader::new(stdout),
            version: String::new(),
            threads: 0,
            ready: serde_json::Value::Null,
        };
        let ready = r.read().with_context(|| format!("the {name} runner did not start. {hint}"))?;
        r.version = ready.get("version").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        r.threads = ready.get("threads").and_then(serde_json::Value::as_u64).unwrap_or(0) as usize;
        r.ready = ready;
        Ok(r)
    }

    fn read(&mut self) -> Result<serde_json::Value> {
        let name = self.engine.name();
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).with_context(|| format!("reading from the {name} runner"))?;
        if n == 0 {
            bail!("the {name} runner exited (see its error above)");
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("the {name} runner answered {line:?}"))?;
        if let Some(e) = v.get("error") {
            bail!("{name} runner: {e}");
        }
        Ok(v)
    }

    fn call(&mut self, command: &str) -> Result<serde_json::Value> {
        writeln!(self.stdin, "{command}")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("writing to the {} runner", self.engine.name()))?;
        self.read()
    }

    /// One timed run: milliseconds and result rows.
    pub(super) fn run(&mut self) -> Result<(f64, usize)> {
        let name = self.engine.name();
        let v = self.call("run")?;
        let ms = v.get("ms").and_then(serde_json::Value::as_f64).with_context(|| format!("no time from {name}"))?;
        let rows =
            v.get("rows").and_then(serde_json::Value::as_u64).with_context(|| format!("no row count from {name}"))?;
        Ok((ms, rows as usize))
    }

    /// The last result, parsed like meterflow parses its own.
    pub(super) fn result(&mut self, dump: &Path) -> Result<Vec<UsageTotal>> {
        let name = self.engine.name();
        self.call(&format!("dump {}", dump.display()))?;
        let text = std::fs::read_to_string(dump).with_context(|| format!("reading {}", dump.display()))?;
        text.lines()
            .map(|line| {
                let cells: Vec<String> =
                    serde_json::from_str(line).with_context(|| format!("{name} result row {line:?}"))?;
                Ok(meterflow_billing::usage_total_of_row(&cells)?)
            })
            .collect()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        // Best effort: the runner also exits when its stdin closes.
        writeln!(self.stdin, "quit").ok();
        self.child.wait().ok();
    }
}
