//! The object store of every table *writer* on a local data directory: object_store's
//! `LocalFileSystem`, made durable.
//!
//! Neither delta-rs nor `LocalFileSystem` calls fsync. Without it a power cut shortly after a
//! commit returned (and the pipeline acknowledged the broker) can leave a log entry that names
//! a torn Parquet file, or an empty log entry that no reader can parse. `SyncStore` makes every
//! write durable before it returns:
//!
//! * `put` (log entries, checkpoints, `_last_checkpoint`, small data files): the bytes go to a
//!   staging file `<name>#<n>` (`LocalFileSystem`'s own naming, which its listings hide), which
//!   is fsynced *before* it is linked (put-if-absent, how delta-rs writes `<version>.json`) or
//!   renamed (overwrite) to its name; then the folder is fsynced. A log entry is therefore never
//!   visible with content that is not on disk, and it is on disk before the commit returns.
//! * multipart uploads (large data files): `LocalFileSystem` completes them (a rename of its
//!   staging file), then the file and its folder are fsynced before `complete` returns. Until
//!   then no log entry names the file: a crash leaves at most an unreferenced file.
//! * renames and copies (stores without put-if-absent commit through a temporary file moved to
//!   `_delta_log/<version>.json`): the target file and its folder are fsynced.
//! * deletes are not synced: a deleted file that reappears after a power cut is either no
//!   longer referenced (vacuum removes it again) or an expired log entry (removed again at the
//!   next checkpoint).
//!
//! delta-rs writes every data file of a commit before the commit's log entry, so with each
//! write durable when it returns, the data a log entry references is on disk before the entry
//! exists, and the entry is on disk before the commit returns. Creating a folder syncs its
//! parent too, so a new table's `_delta_log` cannot vanish with its first commit.
//!
//! Readers (SQL, invoice queries) open tables on the plain store: fsync is a write-side concern.
//! The cost per commit is measured in BENCHMARKS.md ("Durability: the cost of fsync").

use deltalake::logstore::object_store::{
    self, local::LocalFileSystem, path::Path, CopyOptions, MultipartUpload, PutMode, PutMultipartOptions, PutOptions,
    PutPayload, PutResult, UploadPart,
};
use std::io::Write;
use std::path::PathBuf;

const STORE: &str = "SyncStore";

/// Local files, fsynced before each write returns.
#[derive(Debug, Default)]
pub struct SyncStore {
    inner: LocalFileSystem,
}

impl SyncStore {
    /// The whole local file system (tables address it by absolute path).
    pub fn new() -> Self {
        SyncStore { inner: LocalFileSystem::new() }
    }

    fn path(&self, location: &Path) -> object_store::Result<PathBuf> {
        self.inner.path_to_filesystem(location)
    }
}

impl std::fmt::Display for SyncStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SyncStore({})", self.inner)
    }
}

fn generic(e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic { store: STORE, source: Box::new(e) }
}

/// fsync of a folder: makes the names created, renamed or linked in it durable.
pub(crate) fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// fsync of `file`, then of its folder.
fn sync_file_and_dir(file: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(file)?.sync_all()?;
    match file.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// Creates `dir` and any missing ancestors, syncing the parent of each folder created.
fn create_dirs_durably(dir: &std::path::Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.is_dir() {
            break;
        }
        missing.push(d);
        at = d.parent();
    }
    std::fs::create_dir_all(dir)?;
    for d in missing.iter().rev() {
        if let Some(parent) = d.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// `LocalFileSystem`'s e-tag (inode, modification time and size), so a head after a put agrees.
fn e_tag(meta: &std::fs::Metadata) -> String {
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(meta);
    #[cfg(not(unix))]
    let inode = 0u64;
    let mtime =
        meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default().as_micros();
    format!("{inode:x}-{mtime:x}-{:x}", meta.len())
}

/// Opens a new staging file `<dest>#<n>` next to `dest`, creating the folder when missing.
fn new_staging_file(dest: &std::path::Path) -> std::io::Result<(std::fs::File, PathBuf)> {
    let mut n = 1u32;
    loop {
        let mut staging = dest.as_os_str().to_owned();
        staging.push(format!("#{n}"));
        let staging = PathBuf::from(staging);
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&staging) {
            Ok(f) => return Ok((f, staging)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match dest.parent() {
                Some(dir) if !dir.is_dir() => create_dirs_durably(dir)?,
                _ => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
}

/// Writes `payload` to `dest` durably: staging file, fsync, link or rename, fsync of the folder.
fn put_durably(dest: &std::path::Path, payload: &PutPayload, create: bool) -> object_store::Result<PutResult> {
    let (mut file, staging) = new_staging_file(dest).map_err(generic)?;
    let written = payload.iter().try_for_each(|chunk| file.write_all(chunk)).and_then(|()| file.sync_all());
    let meta = written.and_then(|()| file.metadata());
    drop(file);
    let meta = match meta {
        Ok(m) => m,
        Err(e) => {
            let _cleanup = std::fs::remove_file(&staging);
            return Err(generic(e));
        }
    };
    let placed = if create {
        // Put-if-absent: a hard link fails when the name exists (another writer's commit).
        let linked = std::fs::hard_link(&staging, dest);
        let _cleanup = std::fs::remove_file(&staging);
        linked.map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                object_store::Error::AlreadyExists { path: dest.display().to_string(), source: Box::new(e) }
            }
            _ => generic(e),
        })
    } else {
        std::fs::rename(&staging, dest).map_err(|e| {
            let _cleanup = std::fs::remove_file(&staging);
            generic(e)
        })
    };
    placed?;
    if let Some(dir) = dest.parent() {
        sync_dir(dir).map_err(generic)?;
    }
    Ok(PutResult { e_tag: Some(e_tag(&meta)), version: None })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> object_store::Result<T> + Send + 'static,
) -> object_store::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| object_store::Error::Generic { store: STORE, source: Box::new(e) })?
}

/// A multipart upload whose completion returns once the file and its folder are on disk.
#[derive(Debug)]
struct SyncUpload {
    inner: Box<dyn MultipartUpload>,
    dest: PathBuf,
}

#[async_trait::async_trait]
impl MultipartUpload for SyncUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let result = self.inner.complete().await?;
        let dest = self.dest.clone();
        blocking(move || sync_file_and_dir(&dest).map_err(generic)).await?;
        Ok(result)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

crate::storage::object_store_reading_through! {
impl ObjectStore for SyncStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let create = match opts.mode {
            PutMode::Overwrite => false,
            PutMode::Create => true,
            // Not supported by the local store either: let it say so.
            PutMode::Update(_) => return self.inner.put_opts(location, payload, opts).await,
        };
        if !opts.attributes.is_empty() {
            return self.inner.put_opts(location, payload, opts).await;
        }
        let dest = self.path(location)?;
        blocking(move || put_durably(&dest, &payload, create)).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let dest = self.path(location)?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(SyncUpload { inner, dest }))
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        let target = self.path(to)?;
        blocking(move || sync_file_and_dir(&target).map_err(generic)).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        let target = self.path(to)?;
        blocking(move || sync_file_and_dir(&target).map_err(generic)).await
    }
}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{open_for_write, table_url};
    use deltalake::logstore::object_store::{ObjectStore, ObjectStoreExt as _, RenameOptions, RenameTargetMode};
    use deltalake::DeltaTable;

    fn store_path(p: &std::path::Path) -> Path {
        Path::from_absolute_path(p).unwrap()
    }

    #[tokio::test]
    async fn a_put_if_absent_writes_once_and_refuses_an_existing_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = SyncStore::new();
        let log = store_path(&dir.path().join("t/_delta_log/00000000000000000000.json"));
        let create = PutOptions { mode: PutMode::Create, ..Default::default() };
        store.put_opts(&log, "first".into(), create.clone()).await.unwrap();
        let again = store.put_opts(&log, "second".into(), create).await;
        assert!(matches!(again, Err(object_store::Error::AlreadyExists { .. })), "{again:?}");
        let read = store.get(&log).await.unwrap().bytes().await.unwrap();
        assert_eq!(&read[..], b"first");
        // No staging file is left behind, whatever the outcome.
        let names: Vec<String> = std::fs::read_dir(dir.path().join("t/_delta_log"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(names, ["00000000000000000000.json"]);
    }

    #[tokio::test]
    async fn overwrites_multipart_uploads_and_renames_land_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = SyncStore::new();
        let last = store_path(&dir.path().join("_last_checkpoint"));
        store.put(&last, "a".into()).await.unwrap();
        let put = store.put(&last, "b".into()).await.unwrap();
        let head = store.head(&last).await.unwrap();
        assert_eq!(put.e_tag, head.e_tag, "the e-tag is LocalFileSystem's");
        assert_eq!(&store.get(&last).await.unwrap().bytes().await.unwrap()[..], b"b");

        let data = store_path(&dir.path().join("part-0.parquet"));
        let mut upload = store.put_multipart(&data).await.unwrap();
        upload.put_part("12".into()).await.unwrap();
        upload.put_part("34".into()).await.unwrap();
        upload.complete().await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("part-0.parquet")).unwrap(), b"1234");

        let tmp = store_path(&dir.path().join("_delta_log/_commit_x.json.tmp"));
        store.put(&tmp, "commit".into()).await.unwrap();
        let entry = store_path(&dir.path().join("_delta_log/00000000000000000001.json"));
        let if_absent = RenameOptions { target_mode: RenameTargetMode::Create, ..Default::default() };
        store.rename_opts(&tmp, &entry, if_absent).await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("_delta_log/00000000000000000001.json")).unwrap(), b"commit");
        assert!(!dir.path().join("_delta_log/_commit_x.json.tmp").exists());
    }

    /// 1,000 summary rows of 100 customers, stamped with the commit's sequence.
    fn summary_rows(seq: u64) -> Vec<crate::SummaryRow> {
        (0..1_000)
            .map(|i| {
                let mut r = crate::table::tests::row("3", "0.0006", seq);
                r.customer_id = format!("cust-{:05}", i % 100);
                r.subject = r.customer_id.clone();
                r.dimensions = format!(r#"{{"region":"r{}"}}"#, i % 10);
                r
            })
            .collect()
    }

    async fn bench_open(url: &url::Url, durable: bool) -> DeltaTable {
        if durable {
            open_for_write(url.clone()).await.unwrap()
        } else {
            deltalake::open_table(url.clone()).await.unwrap()
        }
    }

    fn median(mut xs: Vec<f64>) -> f64 {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    }

    /// The cost of fsync per commit (BENCHMARKS.md, "Durability: the cost of fsync"): commits of
    /// 1,000 summary rows (one Parquet file + a log entry carrying the application transaction,
    /// a checkpoint every 50 versions, the handle reopened every 100 commits, as
    /// `SummaryTable::commit` does) on the plain `LocalFileSystem` and on `SyncStore`, three
    /// runs each, alternating, each on a fresh `usage_summaries`. A measurement, not a test:
    ///
    /// `cargo test -p meterflow-sink --lib -- --ignored --nocapture the_cost_of_fsync`
    ///
    /// `METERFLOW_BENCH_COMMITS` (default 200) and `METERFLOW_BENCH_DIR` (default the temp dir:
    /// it must be on the disk being measured; fsync on tmpfs costs nothing) change the set-up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement: run by hand, see BENCHMARKS.md"]
    async fn the_cost_of_fsync_per_commit() {
        use deltalake::kernel::transaction::CommitProperties;
        use deltalake::kernel::Transaction;
        let commits: u64 = std::env::var("METERFLOW_BENCH_COMMITS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
        let base = std::env::var_os("METERFLOW_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
        let mut medians: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
        for run in 1..=3 {
            for (label, durable) in [("LocalFileSystem (no fsync)", false), ("SyncStore (fsync)", true)] {
                let dir = tempfile::tempdir_in(&base).unwrap();
                crate::SummaryTable::open_or_create(dir.path()).await.unwrap();
                let url = table_url(dir.path(), crate::SUMMARIES_TABLE).unwrap();
                let mut table = bench_open(&url, durable).await;
                let mut per_commit = Vec::new();
                let started = std::time::Instant::now();
                for seq in 1..=commits {
                    if seq % 100 == 0 {
                        table = bench_open(&url, durable).await;
                    }
                    let batch = crate::encode_rows(&summary_rows(seq), chrono::Utc::now()).unwrap();
                    let txn = Transaction::new(crate::APP_ID, i64::try_from(seq).unwrap());
                    let t = std::time::Instant::now();
                    table = table
                        .write(vec![batch])
                        .with_save_mode(deltalake::protocol::SaveMode::Append)
                        .with_commit_properties(CommitProperties::default().with_application_transaction(txn))
                        .await
                        .unwrap();
                    per_commit.push(t.elapsed().as_secs_f64() * 1e3);
                }
                let total = started.elapsed().as_secs_f64();
                let p90 = {
                    let mut xs = per_commit.clone();
                    xs.sort_by(f64::total_cmp);
                    xs[xs.len() * 9 / 10]
                };
                let m = median(per_commit);
                println!(
                    "run {run} {label}: {commits} commits in {total:.2} s, per commit median {m:.2} ms, p90 {p90:.2} ms"
                );
                medians.entry(label).or_default().push(m);
            }
        }
        for (label, ms) in medians {
            println!("{label}: medians {ms:.2?} ms; median of 3: {:.2} ms per commit", median(ms.clone()));
        }
    }
}
