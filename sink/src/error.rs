//! The sink's error type.

/// Errors of the sink: table I/O, state snapshots and SQL.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A Delta operation (create, open, write, commit) failed. Often transient (disk full,
    /// concurrent writer); the pipeline retries the same commit and does not ack meanwhile.
    #[error("Delta table {table}: {source}")]
    Delta {
        table: String,
        #[source]
        source: deltalake::DeltaTableError,
    },
    /// Building the Arrow batch for a commit failed (a value that does not fit its column).
    /// Not retryable: a bug or an out-of-range value.
    #[error("cannot encode rows for {table}: {message}")]
    Encode { table: String, message: String },
    /// Reading or writing a state snapshot failed. Retryable for I/O errors.
    #[error("state snapshot {path}: {message}")]
    State { path: String, message: String },
    /// A SQL statement was refused or failed. Not retryable: fix the query.
    #[error("{0}")]
    Sql(String),
    /// The data directory does not exist or is not usable.
    #[error("data directory {path}: {message}")]
    DataDir { path: String, message: String },
    /// The table's recorded stream progress moved by another writer's hand since this writer's
    /// last commit (a second pipeline on the same data directory and stream, or a stale worker
    /// after a failover). Not retryable: this writer must stop without acknowledging anything.
    #[error(
        "{table}: fenced out: the table records stream sequence {recorded} but this writer last committed {expected} \
         (another meterflow run committed this stream's progress); stopping without acknowledging"
    )]
    Fenced { table: String, recorded: u64, expected: u64 },
    /// The tables were written from another incarnation of the stream than the one the broker
    /// holds now (it was deleted and re-created, or lost its tail). Not retryable: an operator
    /// decides.
    #[error("{0}")]
    StreamChanged(String),
}
