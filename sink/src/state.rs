//! State snapshots: the in-memory pipeline state (dedup index, open windows) as of a committed
//! stream sequence, so a restart replays only the messages after the snapshot.
//!
//! A snapshot is written only *after* the Delta commit covering its sequence. On start, the
//! newest snapshot whose sequence is at most the table's committed sequence is used; newer ones
//! (possible only if a commit vanished in a power cut) are ignored. Each snapshot ends with an
//! xxh3 checksum; a damaged one is skipped.
//!
//! Snapshots live beside the tables: in `<data_dir>/_state` (temp file, fsync, rename, fsync of
//! the directory) or, when the tables are on object storage, under `<prefix>/_state/` (one put:
//! an object appears whole or not at all), so a worker on another machine resumes from them.

use deltalake::logstore::object_store::{path::Path as ObjectPath, ObjectStore, ObjectStoreExt as _, PutPayload};
use futures::TryStreamExt as _;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_64;

use crate::storage::TableRoot;
use crate::{Result, SinkError};

/// Snapshots kept (older ones are removed after each save).
const KEEP: usize = 3;

/// The folder of state snapshots under a table root.
pub const STATE_FOLDER: &str = "_state";

/// A folder of state snapshots named `state-<seq>.bin`, local or on object storage.
#[derive(Debug, Clone)]
pub struct StateStore {
    at: Backend,
}

#[derive(Clone)]
enum Backend {
    Local(PathBuf),
    Object { store: Arc<dyn ObjectStore>, shown: String },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Local(dir) => write!(f, "{}", dir.display()),
            Backend::Object { shown, .. } => write!(f, "{shown}"),
        }
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> SinkError + '_ {
    move |e| SinkError::State { path: path.display().to_string(), message: e.to_string() }
}

fn file_name(seq: u64) -> String {
    format!("state-{seq:020}.bin")
}

fn seq_of(name: &str) -> Option<u64> {
    name.strip_prefix("state-").and_then(|s| s.strip_suffix(".bin")).and_then(|s| s.parse().ok())
}

/// The body of a stored snapshot whose checksum holds.
fn verified(bytes: &[u8], shown: &dyn std::fmt::Display) -> Option<Vec<u8>> {
    if bytes.len() < 8 {
        tracing::warn!(snapshot = %shown, "state snapshot truncated; skipping it");
        return None;
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    let mut s = [0u8; 8];
    s.copy_from_slice(sum);
    if xxh3_64(body) != u64::from_le_bytes(s) {
        tracing::warn!(snapshot = %shown, "state snapshot checksum mismatch; skipping it");
        return None;
    }
    Some(body.to_vec())
}

impl StateStore {
    /// Uses (and creates) the local folder `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        // A crash while saving leaves a temporary file that was never renamed: never read, but
        // it would pile up over many crashes.
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("state-") && name.ends_with(".tmp") {
                let path = entry.path();
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        Ok(StateStore { at: Backend::Local(dir) })
    }

    /// The snapshots beside the tables of `root`: `<dir>/_state` or `<prefix>/_state/`.
    pub fn open_at(root: &TableRoot) -> Result<Self> {
        StateStore::open_for(root, None)
    }

    /// The snapshots of the reader of the whole stream (`None`, as [`StateStore::open_at`]) or
    /// of partition `p` of it: `<dir>/_state/p<p>` or `<prefix>/_state/p<p>/`. Partitions move
    /// between workers with their snapshots.
    pub fn open_for(root: &TableRoot, partition: Option<u32>) -> Result<Self> {
        let folder = match partition {
            None => STATE_FOLDER.to_string(),
            Some(p) => format!("{STATE_FOLDER}/p{p}"),
        };
        match root.local_dir() {
            Some(dir) => StateStore::open(dir.join(&folder)),
            None => {
                let rel = format!("{folder}/");
                let shown = root.url_of(&rel)?.to_string();
                Ok(StateStore::on_store(root.store_at(&rel)?, shown))
            }
        }
    }

    /// Snapshots at the root of `store` (object storage).
    pub(crate) fn on_store(store: Arc<dyn ObjectStore>, shown: String) -> Self {
        StateStore { at: Backend::Object { store, shown } }
    }

    fn object_err(shown: &str) -> impl Fn(deltalake::logstore::object_store::Error) -> SinkError + '_ {
        move |e| SinkError::State { path: shown.to_string(), message: e.to_string() }
    }

    /// Sequences of the stored snapshots, ascending.
    pub async fn list(&self) -> Result<Vec<u64>> {
        let mut seqs = Vec::new();
        match &self.at {
            Backend::Local(dir) => {
                for entry in fs::read_dir(dir).map_err(io_err(dir))? {
                    let entry = entry.map_err(io_err(dir))?;
                    if let Some(seq) = seq_of(&entry.file_name().to_string_lossy()) {
                        seqs.push(seq);
                    }
                }
            }
            Backend::Object { store, shown } => {
                let listing = store.list_with_delimiter(None).await.map_err(Self::object_err(shown))?;
                seqs.extend(listing.objects.iter().filter_map(|o| o.location.filename().and_then(seq_of)));
            }
        }
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// Saves `state` as the snapshot of `seq`, durably, then removes all but the newest few.
    pub async fn save(&self, seq: u64, state: &[u8]) -> Result<()> {
        let mut body = Vec::with_capacity(state.len() + 8);
        body.extend_from_slice(state);
        body.extend_from_slice(&xxh3_64(state).to_le_bytes());
        match &self.at {
            Backend::Local(dir) => {
                let path = dir.join(file_name(seq));
                let tmp = path.with_extension("tmp");
                {
                    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
                    f.write_all(&body).map_err(io_err(&tmp))?;
                    f.sync_all().map_err(io_err(&tmp))?;
                }
                meterflow_faults::hit(meterflow_faults::Point::DuringSnapshot);
                fs::rename(&tmp, &path).map_err(io_err(&path))?;
                fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
            }
            Backend::Object { store, shown } => {
                meterflow_faults::hit(meterflow_faults::Point::DuringSnapshot);
                store
                    .put(&ObjectPath::from(file_name(seq)), PutPayload::from(body))
                    .await
                    .map_err(Self::object_err(shown))?;
            }
        }
        let seqs = self.list().await?;
        if seqs.len() > KEEP {
            for old in &seqs[..seqs.len() - KEEP] {
                self.remove(*old).await?;
            }
        }
        Ok(())
    }

    async fn remove(&self, seq: u64) -> Result<()> {
        match &self.at {
            Backend::Local(dir) => {
                let p = dir.join(file_name(seq));
                fs::remove_file(&p).map_err(io_err(&p))
            }
            Backend::Object { store, shown } => {
                store.delete(&ObjectPath::from(file_name(seq))).await.map_err(Self::object_err(shown))
            }
        }
    }

    /// Moves every snapshot into a new `set-aside-<n>` folder beside them (kept for an
    /// operator, never read again): a stream adopted anew starts from no state. Returns how many.
    pub async fn set_aside_all(&self) -> Result<usize> {
        let seqs = self.list().await?;
        if seqs.is_empty() {
            return Ok(0);
        }
        match &self.at {
            Backend::Local(dir) => {
                let mut n = 0;
                let aside = loop {
                    let candidate = dir.join(format!("set-aside-{n}"));
                    if !candidate.exists() {
                        break candidate;
                    }
                    n += 1;
                };
                fs::create_dir_all(&aside).map_err(io_err(&aside))?;
                for seq in &seqs {
                    let from = dir.join(file_name(*seq));
                    fs::rename(&from, aside.join(file_name(*seq))).map_err(io_err(&from))?;
                }
                fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
            }
            Backend::Object { store, shown } => {
                let listing = store.list_with_delimiter(None).await.map_err(Self::object_err(shown))?;
                let taken: std::collections::BTreeSet<String> =
                    listing.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect();
                let aside = (0..).map(|n| format!("set-aside-{n}")).find(|c| !taken.contains(c)).unwrap_or_default();
                for seq in &seqs {
                    let from = ObjectPath::from(file_name(*seq));
                    let to = ObjectPath::from(format!("{aside}/{}", file_name(*seq)));
                    store.copy(&from, &to).await.map_err(Self::object_err(shown))?;
                    store.delete(&from).await.map_err(Self::object_err(shown))?;
                }
            }
        }
        Ok(seqs.len())
    }

    /// The newest intact snapshot whose sequence is at most `max_seq`.
    pub async fn latest_at_or_below(&self, max_seq: u64) -> Result<Option<(u64, Vec<u8>)>> {
        for seq in self.list().await?.into_iter().rev().filter(|s| *s <= max_seq) {
            let bytes = match &self.at {
                Backend::Local(dir) => {
                    let path = dir.join(file_name(seq));
                    fs::read(&path).map_err(io_err(&path))?
                }
                Backend::Object { store, shown } => {
                    let got = match store.get(&ObjectPath::from(file_name(seq))).await {
                        Ok(got) => got,
                        // Removed since the listing (another writer pruning): try an older one.
                        Err(deltalake::logstore::object_store::Error::NotFound { .. }) => continue,
                        Err(e) => return Err(Self::object_err(shown)(e)),
                    };
                    got.into_stream()
                        .try_fold(Vec::new(), |mut acc, chunk| async move {
                            acc.extend_from_slice(&chunk);
                            Ok(acc)
                        })
                        .await
                        .map_err(Self::object_err(shown))?
                }
            };
            let shown = format!("{:?}/{}", self.at, file_name(seq));
            if let Some(body) = verified(&bytes, &shown) {
                return Ok(Some((seq, body)));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::logstore::object_store::memory::InMemory;

    /// The same store on both backends: a local folder and an in-memory object store.
    fn both() -> Vec<(StateStore, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        vec![
            (StateStore::open(dir.path()).unwrap(), Some(dir)),
            (StateStore::on_store(Arc::new(InMemory::new()), "memory://state/".into()), None),
        ]
    }

    async fn damage(store: &StateStore, seq: u64) {
        match &store.at {
            Backend::Local(dir) => fs::write(dir.join(file_name(seq)), b"twenty-corrupted").unwrap(),
            Backend::Object { store, .. } => {
                store
                    .put(&ObjectPath::from(file_name(seq)), PutPayload::from_static(b"twenty-corrupted"))
                    .await
                    .unwrap();
            }
        }
    }

    #[tokio::test]
    async fn the_newest_snapshot_not_beyond_the_committed_sequence_is_chosen() {
        for (store, _dir) in both() {
            store.save(10, b"ten").await.unwrap();
            store.save(20, b"twenty").await.unwrap();
            assert_eq!(store.latest_at_or_below(15).await.unwrap(), Some((10, b"ten".to_vec())));
            assert_eq!(store.latest_at_or_below(25).await.unwrap(), Some((20, b"twenty".to_vec())));
            assert_eq!(store.latest_at_or_below(5).await.unwrap(), None);
        }
    }

    #[tokio::test]
    async fn a_damaged_snapshot_is_skipped_for_an_older_intact_one() {
        for (store, _dir) in both() {
            store.save(10, b"ten").await.unwrap();
            store.save(20, b"twenty").await.unwrap();
            damage(&store, 20).await;
            assert_eq!(store.latest_at_or_below(25).await.unwrap(), Some((10, b"ten".to_vec())));
        }
    }

    #[tokio::test]
    async fn only_the_newest_snapshots_are_kept() {
        for (store, _dir) in both() {
            for s in 1..=6 {
                store.save(s, b"x").await.unwrap();
            }
            assert_eq!(store.list().await.unwrap(), vec![4, 5, 6]);
        }
    }

    #[tokio::test]
    async fn snapshots_set_aside_are_never_read_again_and_a_second_set_aside_gets_its_own_folder() {
        for (store, _dir) in both() {
            store.save(10, b"ten").await.unwrap();
            assert_eq!(store.set_aside_all().await.unwrap(), 1);
            assert_eq!(store.latest_at_or_below(100).await.unwrap(), None);
            store.save(20, b"twenty").await.unwrap();
            assert_eq!(store.set_aside_all().await.unwrap(), 1);
            assert_eq!(store.list().await.unwrap(), Vec::<u64>::new());
        }
    }

    #[tokio::test]
    async fn a_temporary_file_left_by_a_crash_is_removed_at_open_and_never_read() {
        let dir = tempfile::tempdir().unwrap();
        StateStore::open(dir.path()).unwrap().save(10, b"ten").await.unwrap();
        let torn = dir.path().join(format!("state-{:020}.tmp", 30));
        fs::write(&torn, b"half a snap").unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert!(!torn.exists());
        assert_eq!(store.latest_at_or_below(40).await.unwrap(), Some((10, b"ten".to_vec())));
    }
}
