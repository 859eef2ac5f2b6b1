//! The partition board: what every worker of a partitioned stream tells the others, in the
//! lease bucket (entries live as long as a lease: a worker that stops renewing them vanishes).
//!
//! ```text
//!   <stream>.board.workers.<worker id>   a live worker (heartbeat every second)
//!   <stream>.board.partitions.p<p>       partition p's owner, committed sequence, lowest
//!                                        watermark and open billing periods (after each
//!                                        commit, and when idle)
//! ```
//!
//! Workers size their share of the partitions from the live workers; the owner of partition 0
//! closes a billing period only when every partition's record shows its watermark past the
//! period's end plus grace; `meterflow status` and the operations page show the records.

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::{IngestError, NatsConfig, Result};

/// What the owner of one partition last published about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    /// The partition.
    pub partition: u32,
    /// The owner (host, process, worker id).
    pub owner: String,
    /// The last stream sequence of the partition committed.
    pub committed_seq: u64,
    /// The lowest watermark over all meters, Unix microseconds (`None`: nothing seen yet).
    pub watermark_micros: Option<i64>,
    /// Billing periods holding this partition's usage that are not closed.
    pub open_periods: Vec<String>,
    /// When it was published, Unix seconds.
    pub at_unix: i64,
}

/// The board of one partitioned stream.
#[derive(Clone)]
pub struct Board {
    store: kv::Store,
    prefix: String,
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Board").field("prefix", &self.prefix).finish()
    }
}

fn board_err(operation: &'static str) -> impl Fn(String) -> IngestError {
    move |message| IngestError::JetStream { operation, message }
}

impl Board {
    /// The board of `config`'s stream (in the lease bucket, created when absent).
    pub async fn open(js: &jetstream::Context, config: &NatsConfig) -> Result<Board> {
        let ttl = Duration::from_secs(config.lease_ttl_s.max(2));
        let store = crate::lease::bucket(js, config, ttl).await?;
        // The stream's name alone: the readers of every partition (each with its own consumer)
        // and the workers share one board.
        Ok(Board { store, prefix: format!("{}.board", config.stream) })
    }

    /// Says worker `id` is alive (a key-safe id: letters, digits, `-`, `_`).
    pub async fn heartbeat(&self, id: &str) -> Result<()> {
        let key = format!("{}.workers.{id}", self.prefix);
        self.store.put(key, id.to_string().into()).await.map_err(|e| board_err("worker heartbeat")(e.to_string()))?;
        Ok(())
    }

    /// Says worker `id` stopped (its share goes to the others at once).
    pub async fn leave(&self, id: &str) {
        let _gone = self.store.purge(format!("{}.workers.{id}", self.prefix)).await;
    }

    /// The ids of the live workers.
    pub async fn live_workers(&self) -> Result<Vec<String>> {
        let head = format!("{}.workers.", self.prefix);
        let mut keys = self.store.keys().await.map_err(|e| board_err("list workers")(e.to_string()))?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| board_err("list workers")(e.to_string()))?;
            if let Some(id) = key.strip_prefix(&head) {
                out.push(id.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Publishes partition `record.partition`'s record.
    pub async fn publish(&self, record: &PartitionRecord) -> Result<()> {
        let key = format!("{}.partitions.p{}", self.prefix, record.partition);
        let body = serde_json::to_vec(record).map_err(|e| board_err("encode partition record")(e.to_string()))?;
        self.store.put(key, body.into()).await.map_err(|e| board_err("publish partition record")(e.to_string()))?;
        Ok(())
    }

    /// The record of every partition `0..partitions` (`None` where no owner published one
    /// within a lease's time to live, or it cannot be read).
    pub async fn records(&self, partitions: u32) -> Result<Vec<Option<PartitionRecord>>> {
        let mut out = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let key = format!("{}.partitions.p{p}", self.prefix);
            let entry = self.store.get(key).await.map_err(|e| board_err("read partition record")(e.to_string()))?;
            out.push(entry.and_then(|v| serde_json::from_slice(&v).ok()));
        }
        Ok(out)
    }
}
