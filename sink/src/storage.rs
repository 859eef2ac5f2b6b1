//! Where a table lives and which object store writes it: every table writer opens its handle
//! here, so every local write is durable ([`SyncStore`]) and, in the test build, passes the fault
//! points of the Parquet write ([`FaultStore`], summaries only). Readers use
//! `deltalake::open_table`.

use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use std::path::Path;
use std::sync::Arc;

use crate::fault_store::FaultStore;
use crate::sync_store::SyncStore;
use crate::{Result, SinkError};

/// Location of a table under the data directory.
pub fn table_url(data_dir: &Path, name: &str) -> Result<url::Url> {
    let path = data_dir.join(name);
    std::fs::create_dir_all(&path)
        .map_err(|e| SinkError::DataDir { path: path.display().to_string(), message: e.to_string() })?;
    let abs = path
        .canonicalize()
        .map_err(|e| SinkError::DataDir { path: path.display().to_string(), message: e.to_string() })?;
    url::Url::from_directory_path(&abs)
        .map_err(|_| SinkError::DataDir { path: abs.display().to_string(), message: "not an absolute path".into() })
}

/// A table builder whose handle writes through [`SyncStore`] when `url` is a local path (other
/// schemes keep their own store).
pub(crate) fn writer_builder(url: url::Url) -> Result<DeltaTableBuilder, DeltaTableError> {
    let builder = DeltaTableBuilder::from_url(url.clone())?;
    Ok(if url.scheme() == "file" { builder.with_storage_backend(Arc::new(SyncStore::new()), url) } else { builder })
}

/// Opens the existing Delta table at `url` for writing: on a local path every write of the
/// handle is on disk before it returns (data files before the log entry naming them, the log
/// entry before the commit returns). Table writers open through here; readers use
/// `deltalake::open_table`.
pub async fn open_for_write(url: url::Url) -> Result<DeltaTable, DeltaTableError> {
    writer_builder(url)?.load().await
}

/// [`open_for_write`] for the table `name` under `data_dir`.
pub async fn open_table_for_write(data_dir: &std::path::Path, name: &str) -> crate::Result<DeltaTable> {
    let url = table_url(data_dir, name)?;
    open_for_write(url).await.map_err(|e| SinkError::Delta { table: name.to_string(), source: e })
}

/// Opens `usage_summaries` at `url` for writing: through [`SyncStore`], or in the test build
/// through [`FaultStore`] (the same durable store, with the Parquet fault points).
pub(crate) async fn open_summaries_for_write(url: url::Url) -> std::result::Result<DeltaTable, DeltaTableError> {
    if meterflow_faults::ENABLED && url.scheme() == "file" {
        DeltaTableBuilder::from_url(url.clone())?.with_storage_backend(Arc::new(FaultStore::new()), url).load().await
    } else {
        open_for_write(url).await
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
