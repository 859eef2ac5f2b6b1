//! The writer lease: one `meterflow run` commits a stream's progress at a time.
//!
//! ```text
//!   KV bucket [nats] lease_bucket (max_age = lease_ttl_s)
//!     key  <stream>.<consumer>  value  owner id      create() wins the lease, update(rev) renews
//!
//!   writer:   acquire ─► renew every ttl/3 ─► check() before every commit ─► release on exit
//!   standby:  create() fails (key held) ─► wait, retry every second ─► acquire once it expires
//! ```
//!
//! The lease keeps a second process (a rolling deploy's overlap, a restart racing an instance
//! still shutting down) from running the pipeline at the same time; the Delta transaction
//! version is the fence behind it: a writer whose lease lapsed (paused, cut off) and that commits
//! anyway finds the recorded progress moved and is refused (`SinkError::Fenced`). A lease is
//! held from the moment a renewal was *sent* until `ttl` later at most; [`Lease::check`] counts
//! only three quarters of that, so the server's expiry is never reached while a commit starts.

use async_nats::jetstream::{self, kv};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{IngestError, NatsConfig, Result};

/// What the renewal task and the pipeline share.
#[derive(Debug)]
struct Held {
    /// The KV revision of the last successful create or renewal.
    revision: AtomicU64,
    /// When that create or renewal was sent.
    renewed_at: Mutex<Instant>,
    /// Set when a renewal found the key taken over (never cleared).
    lost: AtomicBool,
}

/// A held writer lease; renewed in the background until dropped or released.
#[derive(Debug)]
pub struct Lease {
    store: kv::Store,
    key: String,
    owner: String,
    ttl: Duration,
    held: Arc<Held>,
    renewer: tokio::task::JoinHandle<()>,
}

fn lease_err(operation: &'static str) -> impl Fn(String) -> IngestError {
    move |message| IngestError::JetStream { operation, message }
}

/// The lease bucket, created when absent.
pub(crate) async fn bucket(js: &jetstream::Context, config: &NatsConfig, ttl: Duration) -> Result<kv::Store> {
    if let Ok(store) = js.get_key_value(&config.lease_bucket).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: config.lease_bucket.clone(),
        description: "meterflow writer leases: one pipeline per (stream, consumer) at a time".into(),
        history: 1,
        max_age: ttl,
        storage: jetstream::stream::StorageType::File,
        num_replicas: config.replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| lease_err("create lease bucket")(e.to_string()))
}

/// The lease key of the pipeline's (stream, consumer).
pub fn lease_key(config: &NatsConfig) -> String {
    format!("{}.{}", config.stream, config.consumer)
}

impl Lease {
    /// Waits until this process holds the writer lease of `config`'s stream and consumer, as
    /// `owner` (a readable id: host, process). While another process holds it, logs once that
    /// this one is a standby and tries again every second; `stop()` returning true gives up
    /// (`Ok(None)`).
    pub async fn acquire(
        js: &jetstream::Context,
        config: &NatsConfig,
        owner: String,
        stop: impl Fn() -> bool,
    ) -> Result<Option<Lease>> {
        let ttl = Duration::from_secs(config.lease_ttl_s.max(2));
        let store = bucket(js, config, ttl).await?;
        let key = lease_key(config);
        let mut told = false;
        loop {
            let sent = Instant::now();
            match store.create(&key, owner.clone().into()).await {
                Ok(revision) => {
                    if told {
                        // A warning: an operator wants to see a failover in a quiet log.
                        tracing::warn!(key, "writer lease acquired; the standby takes over");
                    }
                    return Ok(Some(Lease::held(store, key, owner, ttl, revision, sent)));
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    if !told {
                        let holder = store
                            .get(&key)
                            .await
                            .ok()
                            .flatten()
                            .map(|v| String::from_utf8_lossy(&v).to_string())
                            .unwrap_or_else(|| "another process".into());
                        tracing::warn!(
                            key,
                            holder,
                            ttl_s = ttl.as_secs(),
                            "another meterflow run holds the writer lease of this stream; waiting as a standby \
                             (it takes over when that run stops or fails to renew for {} s)",
                            ttl.as_secs()
                        );
                        told = true;
                    }
                }
                Err(e) => return Err(lease_err("acquire writer lease")(e.to_string())),
            }
            for _ in 0..10 {
                if stop() {
                    return Ok(None);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The lease just created at KV revision `revision` (the create sent at `sent`), renewed
    /// from now on in the background.
    fn held(store: kv::Store, key: String, owner: String, ttl: Duration, revision: u64, sent: Instant) -> Lease {
        let held = Arc::new(Held {
            revision: AtomicU64::new(revision),
            renewed_at: Mutex::new(sent),
            lost: AtomicBool::new(false),
        });
        let renewer = tokio::spawn(renew(store.clone(), key.clone(), owner.clone(), ttl, held.clone()));
        Lease { store, key, owner, ttl, held, renewer }
    }

    /// One attempt at the writer lease of `config`'s stream and consumer: `Ok(None)` when
    /// another process holds it (a worker then tries another partition).
    pub async fn try_acquire(js: &jetstream::Context, config: &NatsConfig, owner: String) -> Result<Option<Lease>> {
        let ttl = Duration::from_secs(config.lease_ttl_s.max(2));
        let store = bucket(js, config, ttl).await?;
        let key = lease_key(config);
        let sent = Instant::now();
        match store.create(&key, owner.clone().into()).await {
            Ok(revision) => Ok(Some(Lease::held(store, key, owner, ttl, revision, sent))),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(lease_err("acquire writer lease")(e.to_string())),
        }
    }

    /// `Ok` while the lease is certainly held: renewed less than three quarters of its time to
    /// live ago and never taken over. A writer calls it before every commit: `LeaseLost` means
    /// stop, `LeaseStale` means wait and try again.
    pub fn check(&self) -> Result<()> {
        let age = self.held.renewed_at.lock().map(|t| t.elapsed()).unwrap_or(Duration::MAX);
        if self.held.lost.load(Ordering::SeqCst) {
            return Err(IngestError::LeaseLost(format!(
                "another process took over the writer lease {} (this one could not renew it in time)",
                self.key
            )));
        }
        if age >= self.ttl * 3 / 4 {
            // Not (yet) lost: a late renewal (a slow or restarting broker). Retryable: no commit
            // until a renewal succeeds; if a standby took over meanwhile, that renewal says so.
            return Err(IngestError::LeaseStale(format!(
                "the writer lease {} was last renewed {:.1} s ago (time to live {} s): it may have passed to a standby",
                self.key,
                age.as_secs_f64(),
                self.ttl.as_secs()
            )));
        }
        Ok(())
    }

    /// True once a renewal found the lease taken over by another process (final).
    pub fn is_lost(&self) -> bool {
        self.held.lost.load(Ordering::SeqCst)
    }

    /// The owner id this lease was taken as.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Gives the lease up (a standby takes over at once) if it is still this process's.
    pub async fn release(self) {
        self.renewer.abort();
        let revision = self.held.revision.load(Ordering::SeqCst);
        if !self.held.lost.load(Ordering::SeqCst) {
            if let Err(e) = self.store.delete_expect_revision(&self.key, Some(revision)).await {
                tracing::debug!(error = %e, "writer lease not released; it expires by itself");
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// Renews the lease every third of its time to live until it is lost.
async fn renew(store: kv::Store, key: String, owner: String, ttl: Duration, held: Arc<Held>) {
    let every = ttl / 3;
    loop {
        tokio::time::sleep(every).await;
        let sent = Instant::now();
        let revision = held.revision.load(Ordering::SeqCst);
        match store.update(&key, owner.clone().into(), revision).await {
            Ok(next) => {
                tracing::debug!(key, revision = next, "writer lease renewed");
                held.revision.store(next, Ordering::SeqCst);
                if let Ok(mut t) = held.renewed_at.lock() {
                    *t = sent;
                }
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                tracing::error!(key, "the writer lease was taken over by another process; this run stops committing");
                held.lost.store(true, Ordering::SeqCst);
                return;
            }
            // Transient (server restart, timeout): try again; check() fails if it lasts.
            Err(e) => tracing::warn!(key, error = %e, "cannot renew the writer lease; retrying"),
        }
    }
}
