//! Shared set-up for the integration tests: a real nats-server on a free port with a temporary
//! store, a temporary data directory, and the real `meterflow` binary.
#![allow(dead_code)]

use async_nats::HeaderMap;
use meterflow_pipeline::config::{Config, Overrides, Reference};
use meterflow_testkit::local_nats::LocalNats;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Event-time bounds wide enough for tests that publish usage at fixed dates (for example
/// around the example plan change on 2026-11-24), whatever day the tests run on.
/// The streams keep messages without an age limit, as the dedup horizon needs.
pub const WIDE_BOUNDS: [(&str, &str); 4] = [
    ("METERFLOW_LATENESS__MAX_BACKDATING_DAYS", "30000"),
    ("METERFLOW_LATENESS__MAX_FUTURE_SKEW_S", "31536000"),
    ("METERFLOW_PIPELINE__DEDUP_HORIZON_DAYS", "30400"),
    ("METERFLOW_NATS__MAX_AGE_DAYS", "0"),
];

/// Turns the operations page of `meterflow run` off (an empty `[ops] listen`).
pub const NO_OPS_PAGE: (&str, &str) = ("METERFLOW_OPS__LISTEN", "");

pub struct TestEnv {
    pub nats: LocalNats,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// Environment given to every `meterflow` command.
    pub envs: Vec<(&'static str, &'static str)>,
}

impl TestEnv {
    pub fn start() -> TestEnv {
        let dir = tempfile::tempdir().expect("tempdir");
        let nats = LocalNats::start(&dir.path().join("nats"))
            .expect("nats-server starts (run scripts/tools.sh to install it)");
        let config = examples_dir().join("meterflow.toml");
        TestEnv { nats, dir, config, envs: WIDE_BOUNDS.to_vec() }
    }

    /// Like [`TestEnv::start`], with the default event-time bounds of the example config.
    pub fn start_with_default_bounds() -> TestEnv {
        let mut env = TestEnv::start();
        env.envs.clear();
        env
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `meterflow <sub>` against this environment's server and data directory.
    pub fn command(&self, sub: &str) -> Command {
        self.command_with_config(sub, &self.config)
    }

    /// Like [`TestEnv::command`], with another config file.
    pub fn command_with_config(&self, sub: &str, config: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_meterflow"));
        c.arg(sub).arg("--config").arg(config).arg("--data-dir").arg(self.data_dir());
        c.arg("--nats-url").arg(self.nats.url());
        // No operations page unless a test serves it on a free port itself (its own
        // `METERFLOW_OPS__LISTEN`, given after these): the default port is shared by every test.
        c.env("RUST_LOG", "warn").env(NO_OPS_PAGE.0, NO_OPS_PAGE.1).envs(self.envs.iter().copied());
        c
    }

    /// `meterflow run --exit-when-idle 1s` to completion.
    pub fn run_until_idle(&self, envs: &[(&str, &str)]) -> Output {
        let mut c = self.command("run");
        c.args(["--exit-when-idle", "1s"]).envs(envs.iter().copied());
        let out = c.output().expect("meterflow runs");
        assert!(out.status.success(), "meterflow run failed: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    /// `meterflow run` in the background.
    pub fn spawn_run(&self, envs: &[(&str, &str)]) -> Child {
        let mut c = self.command("run");
        c.envs(envs.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped());
        c.spawn().expect("meterflow starts")
    }

    /// Runs a query and returns the CSV rows (header first).
    pub fn sql(&self, query: &str) -> Vec<Vec<String>> {
        let out = self.command("sql").args(["--format", "csv", query]).output().expect("meterflow sql runs");
        assert!(out.status.success(), "sql failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| l.split(',').map(str::to_string).collect()).collect()
    }

    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(self.nats.url()).await.expect("connect");
        async_nats::jetstream::new(client)
    }

    /// Creates the streams exactly as the pipeline does, so publishes land before it starts.
    pub async fn ensure_streams(&self) {
        // No age limit: the wide event-time bounds need a dedup horizon beyond any max_age.
        let config = meterflow_ingest::NatsConfig { url: self.nats.url(), max_age_days: 0, ..Default::default() };
        meterflow_ingest::Broker::connect(config).await.expect("connect").ensure_streams().await.expect("streams");
    }

    /// Number of Delta commits written so far.
    pub fn commit_files(&self) -> usize {
        std::fs::read_dir(self.data_dir().join("usage_summaries/_delta_log"))
            .map(|d| d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().ends_with(".json")).count())
            .unwrap_or(0)
    }
}

/// Polls `f` until it is true or the timeout passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

pub fn sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
}

/// A CloudEvents JSON event.
pub fn event(id: &str, subject: &str, kind: &str, time: &str, data: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"gw/eu-1","type":"{kind}","subject":"{subject}","time":"{time}","data":{data}}}"#
    )
}

/// Publishes and waits for the stream's ack; returns the stream sequence.
pub async fn publish(js: &async_nats::jetstream::Context, subject: &str, payload: String, msg_id: Option<&str>) -> u64 {
    let mut headers = HeaderMap::new();
    if let Some(id) = msg_id {
        headers.insert("Nats-Msg-Id", id);
    }
    js.publish_with_headers(subject.to_string(), headers, payload.into()).await.unwrap().await.unwrap().sequence
}

/// The repository's `examples/` folder, found at run time (a test binary built from another
/// checkout must not read the old one).
pub fn examples_dir() -> PathBuf {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    Path::new(&manifest).join("../examples")
}

/// The reference data of the example config (for workload oracles).
pub fn reference() -> Reference {
    let path = examples_dir().join("meterflow.toml");
    Reference::load(&Config::load(&path, &Overrides::default()).expect("example config")).expect("reference data")
}

/// (customer, meter) -> (quantity, amount, events) from SQL; empty while no table exists.
pub fn totals(env: &TestEnv) -> BTreeMap<(String, String), (Decimal, Decimal, u64)> {
    totals_with(env.command("sql"))
}

/// [`totals`] read by `sql`, a `meterflow sql` command set up for another environment.
pub fn totals_with(mut sql: Command) -> BTreeMap<(String, String), (Decimal, Decimal, u64)> {
    let out = sql
        .args([
            "--format",
            "csv",
            "SELECT customer_id, meter, CAST(SUM(quantity) AS VARCHAR), CAST(SUM(amount) AS VARCHAR), \
             SUM(event_count) FROM usage_summaries GROUP BY customer_id, meter",
        ])
        .output()
        .expect("meterflow sql runs");
    if !out.status.success() {
        return BTreeMap::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>())
        .map(|r| {
            let n = |i: usize| r.get(i).cloned().unwrap_or_default();
            (
                (n(0), n(1)),
                (n(2).parse().unwrap_or_default(), n(3).parse().unwrap_or_default(), n(4).parse().unwrap_or(0)),
            )
        })
        .collect()
}

/// The test tools' Python (the OpenMeter SDK, psycopg, schemathesis, deltalake, duckdb):
/// `$DELTA_READER_PYTHON` (set by scripts/tools.sh) or the project's `.tools/venv`.
pub fn tools_python() -> PathBuf {
    if let Some(p) = std::env::var_os("DELTA_READER_PYTHON") {
        return p.into();
    }
    let local = examples_dir().join("../.tools/venv/bin/python");
    assert!(local.is_file(), "no test-tools Python: run `bash scripts/tools.sh` first");
    local
}

/// A key made with `meterflow api-key create` (the key line it prints first).
pub fn api_key(env: &TestEnv, customers: &[&str]) -> String {
    let mut c = env.command("api-key");
    c.arg("create");
    for customer in customers {
        c.args(["--customer", customer]);
    }
    let out = c.output().expect("meterflow api-key runs");
    assert!(out.status.success(), "api-key create failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().trim().to_string()
}
