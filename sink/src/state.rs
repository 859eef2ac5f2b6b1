//! State snapshots: the in-memory pipeline state (dedup index, open windows) as of a committed
//! stream sequence, so a restart replays only the messages after the snapshot.
//!
//! A snapshot file is written (temp file, fsync, rename, fsync of the directory) only *after*
//! the Delta commit covering its sequence. On start, the newest snapshot whose sequence is at
//! most the table's committed sequence is used; newer ones (possible only if a commit vanished
//! in a power cut) are ignored. Each file ends with an xxh3 checksum; a damaged file is skipped.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::xxh3_64;

use crate::{Result, SinkError};

/// Snapshots kept on disk (older ones are removed after each save).
const KEEP: usize = 3;

/// A directory of state snapshots named `state-<seq>.bin`.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> SinkError + '_ {
    move |e| SinkError::State { path: path.display().to_string(), message: e.to_string() }
}

impl StateStore {
    /// Uses (and creates) `dir`.
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
        Ok(StateStore { dir })
    }

    fn path_for(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("state-{seq:020}.bin"))
    }

    /// Sequences of the snapshots on disk, ascending.
    pub fn list(&self) -> Result<Vec<u64>> {
        let mut seqs = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) =
                name.strip_prefix("state-").and_then(|s| s.strip_suffix(".bin")).and_then(|s| s.parse().ok())
            {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// Durably stores `state` as the snapshot covering `seq`, then prunes old snapshots.
    pub fn save(&self, seq: u64, state: &[u8]) -> Result<()> {
        let path = self.path_for(seq);
        let tmp = path.with_extension("tmp");
        {
            let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(state).map_err(io_err(&tmp))?;
            f.write_all(&xxh3_64(state).to_le_bytes()).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
        }
        meterflow_faults::hit(meterflow_faults::Point::DuringSnapshot);
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))?;
        let seqs = self.list()?;
        if seqs.len() > KEEP {
            for old in &seqs[..seqs.len() - KEEP] {
                let p = self.path_for(*old);
                fs::remove_file(&p).map_err(io_err(&p))?;
            }
        }
        Ok(())
    }

    /// Moves every snapshot into `set-aside-<n>/` beside them (kept for inspection, never read
    /// again): the state of a stream the pipeline no longer reads. Returns how many.
    pub fn set_aside_all(&self) -> Result<usize> {
        let seqs = self.list()?;
        if seqs.is_empty() {
            return Ok(0);
        }
        let mut n = 0;
        let aside = loop {
            let candidate = self.dir.join(format!("set-aside-{n}"));
            if !candidate.exists() {
                break candidate;
            }
            n += 1;
        };
        fs::create_dir_all(&aside).map_err(io_err(&aside))?;
        for seq in &seqs {
            let from = self.path_for(*seq);
            let to = aside.join(from.file_name().unwrap_or_default());
            fs::rename(&from, &to).map_err(io_err(&from))?;
        }
        fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))?;
        Ok(seqs.len())
    }

    /// The newest intact snapshot covering at most `max_seq`: `(seq, state bytes)`.
    pub fn latest_at_or_below(&self, max_seq: u64) -> Result<Option<(u64, Vec<u8>)>> {
        for seq in self.list()?.into_iter().rev().filter(|s| *s <= max_seq) {
            let path = self.path_for(seq);
            let bytes = fs::read(&path).map_err(io_err(&path))?;
            if bytes.len() < 8 {
                tracing::warn!(path = %path.display(), "state snapshot truncated; skipping it");
                continue;
            }
            let (body, sum) = bytes.split_at(bytes.len() - 8);
            let mut s = [0u8; 8];
            s.copy_from_slice(sum);
            if xxh3_64(body) != u64::from_le_bytes(s) {
                tracing::warn!(path = %path.display(), "state snapshot checksum mismatch; skipping it");
                continue;
            }
            return Ok(Some((seq, body.to_vec())));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_snapshot_not_beyond_the_committed_sequence_is_chosen() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        store.save(10, b"ten").unwrap();
        store.save(20, b"twenty").unwrap();
        assert_eq!(store.latest_at_or_below(15).unwrap(), Some((10, b"ten".to_vec())));
        assert_eq!(store.latest_at_or_below(25).unwrap(), Some((20, b"twenty".to_vec())));
        assert_eq!(store.latest_at_or_below(5).unwrap(), None);
    }

    #[test]
    fn a_damaged_snapshot_is_skipped_for_an_older_intact_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        store.save(10, b"ten").unwrap();
        store.save(20, b"twenty").unwrap();
        fs::write(dir.path().join(format!("state-{:020}.bin", 20)), b"twenty-corrupted").unwrap();
        assert_eq!(store.latest_at_or_below(25).unwrap(), Some((10, b"ten".to_vec())));
    }

    #[test]
    fn only_the_newest_snapshots_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        for s in 1..=6 {
            store.save(s, b"x").unwrap();
        }
        assert_eq!(store.list().unwrap(), vec![4, 5, 6]);
    }

    #[test]
    fn a_temporary_file_left_by_a_crash_is_removed_at_open_and_never_read() {
        let dir = tempfile::tempdir().unwrap();
        StateStore::open(dir.path()).unwrap().save(10, b"ten").unwrap();
        let torn = dir.path().join(format!("state-{:020}.tmp", 30));
        fs::write(&torn, b"half a snap").unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert!(!torn.exists());
        assert_eq!(store.latest_at_or_below(40).unwrap(), Some((10, b"ten".to_vec())));
    }
}
