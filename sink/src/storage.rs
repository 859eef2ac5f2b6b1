//! Where the tables live and which object store writes them: every table opens through a
//! [`TableRoot`], a local directory (the default) or a prefix in an S3-compatible bucket.
//! On a local directory every write is durable ([`SyncStore`]) and, in the test build, the
//! summaries' Parquet writes pass the fault points ([`FaultStore`]). On object storage a commit
//! is a conditional put of the log entry (`If-None-Match: *`): of two writers racing for one
//! version exactly one wins, and delta-rs's conflict check decides what the other may do.

use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::fault_store::FaultStore;
use crate::sync_store::SyncStore;
use crate::{Result, SinkError};

/// The root every table (and the state snapshots) lives under.
///
/// Object storage is configured by URL (`s3://bucket/prefix`) and options without secrets
/// (endpoint, region, plain HTTP for a local server); credentials come from the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`; on AWS without an endpoint
/// also the AWS profile files), never from this value, so printing it never shows one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRoot {
    kind: RootKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum RootKind {
    Local(PathBuf),
    Object { url: url::Url, options: Vec<(String, String)> },
}

/// Options of an object-storage root: none of them is a secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectOptions {
    /// The S3 endpoint (`http://127.0.0.1:9000` for a local server); AWS when absent.
    pub endpoint: Option<String>,
    /// The bucket's region.
    pub region: Option<String>,
    /// Allow plain HTTP to the endpoint (a server on loopback).
    pub allow_http: bool,
}

impl TableRoot {
    /// Tables under a local directory.
    pub fn local(dir: impl Into<PathBuf>) -> TableRoot {
        TableRoot { kind: RootKind::Local(dir.into()) }
    }

    /// Tables under `url` (`s3://bucket/prefix`, or `s3a://`). Refused: another scheme, a URL
    /// without a bucket, and a URL carrying credentials (they belong in the environment).
    pub fn object(url: &str, options: &ObjectOptions) -> Result<TableRoot> {
        // Never repeat credentials given in the URL, not even in the error that refuses them:
        // show it rebuilt from its parts without the user information, or not at all.
        let shown = match url::Url::parse(url) {
            Ok(u) if u.host_str().is_some() => {
                format!("{}://{}{}", u.scheme(), u.host_str().unwrap_or_default(), u.path())
            }
            _ => "[storage] tables_url".to_string(),
        };
        let refuse = |message: String| SinkError::DataDir { path: shown.clone(), message };
        let mut parsed = url::Url::parse(url).map_err(|e| refuse(format!("not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "s3" | "s3a") {
            return Err(refuse(format!("the scheme {:?} is not supported (use s3://bucket/prefix)", parsed.scheme())));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(refuse("no bucket (use s3://bucket/prefix)".into()));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(refuse(
                "credentials in the URL are refused; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the \
                 environment or use an AWS profile"
                    .into(),
            ));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(refuse("a query or fragment is not part of a table location".into()));
        }
        if !parsed.path().ends_with('/') {
            let path = format!("{}/", parsed.path());
            parsed.set_path(&path);
        }
        let mut opts = Vec::new();
        if let Some(endpoint) = &options.endpoint {
            opts.push(("AWS_ENDPOINT_URL".to_string(), endpoint.clone()));
        }
        if let Some(region) = &options.region {
            opts.push(("AWS_REGION".to_string(), region.clone()));
        }
        if options.allow_http {
            opts.push(("AWS_ALLOW_HTTP".to_string(), "true".to_string()));
        }
        Ok(TableRoot { kind: RootKind::Object { url: parsed, options: opts } })
    }

    /// The local directory, when the tables are local.
    pub fn local_dir(&self) -> Option<&Path> {
        match &self.kind {
            RootKind::Local(dir) => Some(dir),
            RootKind::Object { .. } => None,
        }
    }

    /// Location of the table `name` (a local table's folder is created if missing).
    pub fn table_url(&self, name: &str) -> Result<url::Url> {
        self.url_of(&format!("{name}/"))
    }

    /// Location of `rel` (a folder ends with `/`) under the root.
    pub fn url_of(&self, rel: &str) -> Result<url::Url> {
        match &self.kind {
            RootKind::Local(dir) => local_url(&dir.join(rel.trim_end_matches('/'))),
            RootKind::Object { url, .. } => {
                url.join(rel).map_err(|e| SinkError::DataDir { path: format!("{url}{rel}"), message: e.to_string() })
            }
        }
    }

    /// A builder for the table `name` with the root's storage options.
    pub fn builder(&self, name: &str) -> Result<DeltaTableBuilder> {
        self.builder_at(self.table_url(name)?).map_err(|e| delta(name, e))
    }

    fn builder_at(&self, url: url::Url) -> Result<DeltaTableBuilder, DeltaTableError> {
        let builder = DeltaTableBuilder::from_url(url)?;
        Ok(match &self.kind {
            RootKind::Local(_) => builder,
            RootKind::Object { options, .. } => builder.with_storage_options(options.iter().cloned().collect()),
        })
    }

    /// The object store at `rel` under the root (a folder, ending with `/`): state snapshots.
    pub(crate) fn store_at(&self, rel: &str) -> Result<Arc<dyn deltalake::logstore::object_store::ObjectStore>> {
        let url = self.url_of(rel)?;
        let shown = url.to_string();
        let store = self
            .builder_at(url)
            .and_then(|b| b.build_storage())
            .map_err(|e| SinkError::State { path: shown, message: e.to_string() })?;
        Ok(store.object_store(None))
    }

    /// Opens the existing table `name` for reading.
    pub async fn open(&self, name: &str) -> Result<DeltaTable> {
        self.builder(name)?.load().await.map_err(|e| delta(name, e))
    }

    /// Opens the existing table `name` for reading as of `version` (time travel).
    pub async fn open_at(&self, name: &str, version: u64) -> Result<DeltaTable> {
        self.builder(name)?.with_version(version).load().await.map_err(|e| delta(name, e))
    }

    /// Whether the table `name` has a Delta log (it was created).
    pub async fn exists(&self, name: &str) -> Result<bool> {
        match &self.kind {
            RootKind::Local(dir) => Ok(dir.join(name).join("_delta_log").is_dir()),
            RootKind::Object { .. } => {
                let store = self.builder(name)?.build_storage().map_err(|e| delta(name, e))?;
                store.is_delta_table_location().await.map_err(|e| delta(name, e))
            }
        }
    }

    /// The newest version of the table `name` from a listing of its log (commits and
    /// checkpoints; old entries may have been cleaned up), `None` when it has none yet: a cheap
    /// change marker.
    pub async fn latest_version(&self, name: &str) -> Option<u64> {
        use crate::table::log_entry_version as version;
        match &self.kind {
            RootKind::Local(dir) => std::fs::read_dir(dir.join(name).join("_delta_log"))
                .ok()?
                .flatten()
                .filter_map(|e| version(&e.file_name().to_string_lossy()))
                .max(),
            RootKind::Object { .. } => {
                let store = self.store_at(&format!("{name}/_delta_log/")).ok()?;
                let listing = store.list_with_delimiter(None).await.ok()?;
                listing.objects.iter().filter_map(|o| o.location.filename().and_then(version)).max()
            }
        }
    }

    /// The Delta tables under the root (folders whose log holds a commit, named as plain SQL
    /// identifiers), sorted. A table another process is still creating (a log folder without
    /// its first commit) is not one yet. A missing local directory is an error that says to
    /// run the pipeline first.
    pub async fn table_names(&self) -> Result<Vec<String>> {
        let plain = |name: &str| {
            name.starts_with(|c: char| c.is_ascii_lowercase())
                && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        let mut names = Vec::new();
        match &self.kind {
            RootKind::Local(dir) => {
                let err = |e: std::io::Error| SinkError::DataDir {
                    path: dir.display().to_string(),
                    message: if e.kind() == std::io::ErrorKind::NotFound {
                        "does not exist: run the pipeline first, or pass the right --data-dir".into()
                    } else {
                        e.to_string()
                    },
                };
                for entry in std::fs::read_dir(dir).map_err(err)? {
                    let entry = entry.map_err(err)?;
                    let name = entry.file_name().to_string_lossy().to_string();
                    if plain(&name) && crate::table::has_commit(&entry.path().join("_delta_log")) {
                        names.push(name);
                    }
                }
            }
            RootKind::Object { url, .. } => {
                let store = self.store_at("")?;
                let listing = store
                    .list_with_delimiter(None)
                    .await
                    .map_err(|e| SinkError::DataDir { path: url.to_string(), message: e.to_string() })?;
                for prefix in listing.common_prefixes {
                    let Some(name) = prefix.filename().map(str::to_string) else { continue };
                    if plain(&name) && self.exists(&name).await? {
                        names.push(name);
                    }
                }
            }
        }
        names.sort();
        Ok(names)
    }
}

impl std::fmt::Display for TableRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            RootKind::Local(dir) => write!(f, "{}", dir.display()),
            RootKind::Object { url, .. } => write!(f, "{url}"),
        }
    }
}

impl From<&Path> for TableRoot {
    fn from(dir: &Path) -> TableRoot {
        TableRoot::local(dir)
    }
}

impl From<&PathBuf> for TableRoot {
    fn from(dir: &PathBuf) -> TableRoot {
        TableRoot::local(dir)
    }
}

impl From<PathBuf> for TableRoot {
    fn from(dir: PathBuf) -> TableRoot {
        TableRoot::local(dir)
    }
}

impl From<&TableRoot> for TableRoot {
    fn from(root: &TableRoot) -> TableRoot {
        root.clone()
    }
}

fn delta(table: &str, source: DeltaTableError) -> SinkError {
    SinkError::Delta { table: table.to_string(), source }
}

/// The URL of a local folder, created if missing.
fn local_url(path: &Path) -> Result<url::Url> {
    std::fs::create_dir_all(path)
        .map_err(|e| SinkError::DataDir { path: path.display().to_string(), message: e.to_string() })?;
    let abs = path
        .canonicalize()
        .map_err(|e| SinkError::DataDir { path: path.display().to_string(), message: e.to_string() })?;
    url::Url::from_directory_path(&abs)
        .map_err(|_| SinkError::DataDir { path: abs.display().to_string(), message: "not an absolute path".into() })
}

/// Location of a table under a local data directory.
pub fn table_url(data_dir: &Path, name: &str) -> Result<url::Url> {
    TableRoot::local(data_dir).table_url(name)
}

/// A table builder whose handle writes through [`SyncStore`] when `url` is a local path (other
/// schemes keep their own store).
pub(crate) fn writer_builder(url: url::Url) -> Result<DeltaTableBuilder, DeltaTableError> {
    let builder = DeltaTableBuilder::from_url(url.clone())?;
    Ok(if url.scheme() == "file" { builder.with_storage_backend(Arc::new(SyncStore::new()), url) } else { builder })
}

/// [`writer_builder`] for the table `name` under `root` (with the root's storage options).
pub(crate) fn root_writer_builder(root: &TableRoot, name: &str) -> Result<DeltaTableBuilder> {
    let url = root.table_url(name)?;
    if url.scheme() == "file" {
        return writer_builder(url).map_err(|e| delta(name, e));
    }
    root.builder(name)
}

/// Opens the existing Delta table at `url` for writing: on a local path every write of the
/// handle is on disk before it returns (data files before the log entry naming them, the log
/// entry before the commit returns). Table writers open through here; readers use
/// `deltalake::open_table`.
pub async fn open_for_write(url: url::Url) -> Result<DeltaTable, DeltaTableError> {
    writer_builder(url)?.load().await
}

/// [`open_for_write`] for the table `name` under `root`.
pub async fn open_table_for_write(root: impl Into<TableRoot>, name: &str) -> crate::Result<DeltaTable> {
    root_writer_builder(&root.into(), name)?.load().await.map_err(|e| delta(name, e))
}

/// Opens the table `name` under `root` for writing: through [`SyncStore`], or in the test build
/// through [`FaultStore`] (the same durable store, with the Parquet fault points).
pub(crate) async fn open_summaries_for_write(root: &TableRoot, name: &str) -> Result<DeltaTable> {
    let url = root.table_url(name)?;
    if meterflow_faults::ENABLED && url.scheme() == "file" {
        DeltaTableBuilder::from_url(url.clone())
            .map_err(|e| delta(name, e))?
            .with_storage_backend(Arc::new(FaultStore::new()), url)
            .load()
            .await
            .map_err(|e| delta(name, e))
    } else {
        root_writer_builder(root, name)?.load().await.map_err(|e| delta(name, e))
    }
}

/// Implements `ObjectStore` for a wrapper store with an `inner` store: the methods given (the
/// writes the wrapper changes) plus every read, list and delete passed through to `inner`
/// unchanged. (`#[async_trait]` is applied to the whole generated impl, so the passed-through
/// methods are rewritten like the given ones.)
macro_rules! object_store_reading_through {
    (impl ObjectStore for $store:ty { $($methods:tt)* }) => {
        #[async_trait::async_trait]
        impl deltalake::logstore::object_store::ObjectStore for $store {
            $($methods)*

            async fn get_opts(
                &self,
                location: &deltalake::logstore::object_store::path::Path,
                options: deltalake::logstore::object_store::GetOptions,
            ) -> deltalake::logstore::object_store::Result<deltalake::logstore::object_store::GetResult> {
                self.inner.get_opts(location, options).await
            }

            async fn get_ranges(
                &self,
                location: &deltalake::logstore::object_store::path::Path,
                ranges: &[std::ops::Range<u64>],
            ) -> deltalake::logstore::object_store::Result<Vec<bytes::Bytes>> {
                self.inner.get_ranges(location, ranges).await
            }

            fn delete_stream(
                &self,
                locations: futures::stream::BoxStream<
                    'static,
                    deltalake::logstore::object_store::Result<deltalake::logstore::object_store::path::Path>,
                >,
            ) -> futures::stream::BoxStream<
                'static,
                deltalake::logstore::object_store::Result<deltalake::logstore::object_store::path::Path>,
            > {
                self.inner.delete_stream(locations)
            }

            fn list(
                &self,
                prefix: Option<&deltalake::logstore::object_store::path::Path>,
            ) -> futures::stream::BoxStream<
                'static,
                deltalake::logstore::object_store::Result<deltalake::logstore::object_store::ObjectMeta>,
            > {
                self.inner.list(prefix)
            }

            fn list_with_offset(
                &self,
                prefix: Option<&deltalake::logstore::object_store::path::Path>,
                offset: &deltalake::logstore::object_store::path::Path,
            ) -> futures::stream::BoxStream<
                'static,
                deltalake::logstore::object_store::Result<deltalake::logstore::object_store::ObjectMeta>,
            > {
                self.inner.list_with_offset(prefix, offset)
            }

            async fn list_with_delimiter(
                &self,
                prefix: Option<&deltalake::logstore::object_store::path::Path>,
            ) -> deltalake::logstore::object_store::Result<deltalake::logstore::object_store::ListResult> {
                self.inner.list_with_delimiter(prefix).await
            }
        }
    };
}
pub(crate) use object_store_reading_through;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_latest_version_is_read_from_the_log_listing_even_after_old_entries_were_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let root = TableRoot::local(dir.path());
        assert_eq!(root.latest_version("t").await, None);
        let log = dir.path().join("t").join("_delta_log");
        std::fs::create_dir_all(&log).unwrap();
        for name in [
            "00000000000000000005.json",
            "00000000000000000010.checkpoint.parquet",
            "00000000000000000011.json#1",
            "_last_checkpoint",
        ] {
            std::fs::write(log.join(name), b"").unwrap();
        }
        assert_eq!(root.latest_version("t").await, Some(10));
    }

    #[test]
    fn credentials_in_a_refused_table_url_are_never_repeated() {
        for url in ["s3://key:p@ss@bucket/p", "s3:key:secret@bucket", "gs://key:secret@bucket/p", "s3://user:pw@/x"] {
            let e = TableRoot::object(url, &ObjectOptions::default()).err().unwrap().to_string();
            for secret in ["p@ss", "secret", "key:", "user:pw"] {
                assert!(!e.contains(secret), "{url}: {e}");
            }
        }
    }
}
