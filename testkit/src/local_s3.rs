//! Starting a local S3-compatible server (moto's server mode) with one bucket: for the tests of
//! tables on object storage.
//!
//! The binary is `$MOTO_SERVER_BIN`, or `.tools/venv/bin/moto_server` in the current folder or
//! any parent (where `scripts/tools.sh` installs `moto[server]` from PyPI). It answers
//! conditional puts (`If-None-Match: *` → 412 when the object exists), which Delta commits on
//! object storage rely on.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::local_nats::free_port;

/// Locates moto's server.
pub fn find_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MOTO_SERVER_BIN") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("MOTO_SERVER_BIN={} does not exist", p.display());
    }
    let mut starts = vec![std::env::current_dir().unwrap_or_default()];
    starts.push(PathBuf::from(
        &std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()),
    ));
    for start in starts {
        for dir in start.ancestors() {
            let candidate = dir.join(".tools/venv/bin/moto_server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!("no moto_server found: run `bash scripts/tools.sh` (installs moto[server] into .tools/), or set MOTO_SERVER_BIN")
}

/// A moto server child process on a free loopback port with the bucket `bucket`, stopped on
/// drop. Its state lives in memory: a restart starts empty.
#[derive(Debug)]
pub struct LocalS3 {
    child: Option<Child>,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// The bucket created at start.
    pub bucket: String,
}

impl LocalS3 {
    /// Starts the server and creates `bucket`.
    pub fn start(bucket: &str) -> Result<LocalS3> {
        let binary = find_binary()?;
        let port = free_port()?;
        let child = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut s = LocalS3 { child: Some(child), port, bucket: bucket.to_string() };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                // Listening, unless another process took the port first and this one exited.
                std::thread::sleep(Duration::from_millis(100));
                if let Some(Ok(Some(status))) = s.child.as_mut().map(Child::try_wait) {
                    bail!("moto_server exited at start-up with {status} (port {port} taken?)");
                }
                break;
            }
            if let Some(c) = s.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!("moto_server exited at start-up with {status}");
                }
            }
            if Instant::now() > deadline {
                bail!("moto_server did not listen on port {port} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        s.create_bucket()?;
        Ok(s)
    }

    /// `PUT /<bucket>` (moto creates buckets for unsigned requests).
    fn create_bucket(&self) -> Result<()> {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            conn,
            "PUT /{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.bucket, self.port
        )?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer)?;
        let status = answer.split_whitespace().nth(1).unwrap_or_default();
        if status != "200" {
            bail!("creating bucket {} answered {:?}", self.bucket, answer.lines().next().unwrap_or_default());
        }
        Ok(())
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A table location in the bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The table root at `prefix` with this server's options (credentials: any, from the
    /// environment; moto does not check them).
    pub fn root(&self, prefix: &str) -> Result<meterflow_sink::TableRoot> {
        let options = meterflow_sink::ObjectOptions {
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            allow_http: true,
        };
        Ok(meterflow_sink::TableRoot::object(&self.url(prefix), &options)?)
    }

    /// The `meterflow` environment settings that put the tables at `prefix` on this server,
    /// with throwaway credentials.
    pub fn envs(&self, prefix: &str) -> Vec<(String, String)> {
        vec![
            ("METERFLOW_STORAGE__TABLES_URL".into(), self.url(prefix)),
            ("METERFLOW_STORAGE__S3__ENDPOINT".into(), self.endpoint()),
            ("METERFLOW_STORAGE__S3__REGION".into(), "us-east-1".into()),
            ("METERFLOW_STORAGE__S3__ALLOW_HTTP".into(), "true".into()),
            ("AWS_ACCESS_KEY_ID".into(), "meterflow-test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "meterflow-test".into()),
        ]
    }
}

impl Drop for LocalS3 {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _killed = c.kill();
            let _waited = c.wait();
        }
    }
}
