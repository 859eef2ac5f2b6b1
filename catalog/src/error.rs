//! The one error type of the catalog.

/// What can go wrong reading, checking or changing the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A request to the catalog stream failed (server down, timeout, missing permission).
    /// Usually transient: retrying can help.
    #[error("catalog stream {stream}: {operation} failed: {message}")]
    Broker { stream: String, operation: &'static str, message: String },
    /// A stored revision cannot be read back. Not retryable: the stream was changed by hand.
    #[error("catalog revision {revision} cannot be read: {message}")]
    Corrupt { revision: u64, message: String },
    /// A revision past the newest one was asked for (the catalog stream was re-created or
    /// points at another server).
    #[error("catalog revision {revision} does not exist: the catalog holds {latest} revisions")]
    NoSuchRevision { revision: u64, latest: u64 },
    /// Another change landed between the check of this one and its append. Apply it again: it
    /// is checked against the new revision.
    #[error(
        "the catalog moved to revision {found} while this change was checked against revision {expected}; \
         apply it again"
    )]
    Conflict { expected: u64, found: u64 },
    /// An import file cannot be read or does not have the expected shape. Fix the file.
    #[error("{path}: {message}")]
    File { path: String, message: String },
    /// A change breaks a rule of the catalog; `record` names the customer or plan. Nothing was
    /// applied: fix the record.
    #[error("{record}: {rule}")]
    Rule { record: String, rule: String },
    /// The change set, even compressed, is larger than the broker takes in one message. Split
    /// the file, or raise the server's `max_payload`.
    #[error(
        "the change is {size} bytes (compressed), more than the broker takes in one message ({limit}); split \
         the file into several applies, or raise the server's max_payload"
    )]
    TooLarge { size: usize, limit: String },
}
