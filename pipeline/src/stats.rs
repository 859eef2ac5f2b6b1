//! What a run counts, and how it ends.

use std::collections::BTreeMap;
use std::time::Duration;

/// Counters of one run, printed at exit.
#[derive(Debug, Default, Clone)]
pub struct RunStats {
    /// Messages processed live (not replayed).
    pub messages: u64,
    /// Messages replayed to rebuild state after a restart.
    pub replayed_messages: u64,
    /// Messages delivered again while already in hand or committed, and dropped.
    pub redeliveries: u64,
    /// Times the durable consumer had vanished from the server and was re-created.
    pub consumers_recreated: u64,
    /// Times a pull skipped sequences and they were asked for again.
    pub gaps_refetched: u64,
    /// Events decoded from live messages.
    pub events_received: u64,
    /// Events accepted (first sightings).
    pub events_accepted: u64,
    /// Events dropped as duplicates.
    pub duplicates: u64,
    /// Rejects by reason code.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Delta commits.
    pub commits: u64,
    /// Summary rows written.
    pub rows_written: u64,
    /// Last committed stream sequence.
    pub committed_seq: u64,
    /// Seconds from the first live message to the last commit (the busy time, without idling).
    pub busy_secs: f64,
    /// Where the busy time went: seconds waiting for pulls that brought messages...
    pub pull_wait_secs: f64,
    /// ...in the core stages (decode to aggregate)...
    pub process_secs: f64,
    /// ...and in commits (rating, DLQ publish, Delta commits, ack).
    pub commit_secs: f64,
}

impl RunStats {
    /// Total rejects.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// How a run ends.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Stop once nothing new arrived for this long and everything is committed.
    pub exit_when_idle: Option<Duration>,
}
