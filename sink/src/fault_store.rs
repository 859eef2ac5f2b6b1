//! The object store of the test build: the durable local store ([`SyncStore`]), with the fault
//! points of the Parquet write (`during_parquet_write`, `before_delta_commit`) on data-file
//! uploads. Used only when `meterflow_faults::ENABLED`; normal builds write tables through
//! [`SyncStore`] alone.

use deltalake::logstore::object_store::{
    self, path::Path, CopyOptions, MultipartUpload, PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};
use meterflow_faults::Point;
use std::sync::Arc;

use crate::sync_store::SyncStore;

/// Durable local files with fault points on Parquet uploads.
#[derive(Debug)]
pub(crate) struct FaultStore {
    inner: Arc<SyncStore>,
}

impl FaultStore {
    pub(crate) fn new() -> Self {
        FaultStore { inner: Arc::new(SyncStore::new()) }
    }
}

impl std::fmt::Display for FaultStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaultStore({})", self.inner)
    }
}

/// True for a checkpoint file of a Delta log.
fn is_checkpoint(location: &Path) -> bool {
    location.as_ref().contains("_delta_log/") && location.as_ref().contains(".checkpoint")
}

/// The error a `fail@N` fault point returns.
fn injected(point: Point, location: &Path) -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultStore",
        source: format!("fault point {point} failed the write of {location}").into(),
    }
}

/// Passes `after_log_entry` once a Delta log entry (`_delta_log/<version>.json`) is in place: a
/// `fail@N` there makes the commit call fail although the commit exists, as a failed post-commit
/// step (checkpoint, log clean-up, snapshot refresh) does.
fn after_log_entry(to: &Path) -> object_store::Result<()> {
    let name = to.filename().unwrap_or_default();
    let is_entry = to.as_ref().contains("_delta_log/")
        && name.len() == 25
        && name.ends_with(".json")
        && name.as_bytes()[..20].iter().all(u8::is_ascii_digit);
    if is_entry && meterflow_faults::fires(Point::AfterLogEntry) {
        return Err(injected(Point::AfterLogEntry, to));
    }
    Ok(())
}

/// A Parquet upload: the first part reaches the staging file before `during_parquet_write`
/// fires; `before_delta_commit` fires once the file is complete.
#[derive(Debug)]
struct FaultUpload {
    inner: Box<dyn MultipartUpload>,
    parts: usize,
}

#[async_trait::async_trait]
impl MultipartUpload for FaultUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.parts += 1;
        let first = self.parts == 1;
        let upload = self.inner.put_part(data);
        Box::pin(async move {
            upload.await?;
            if first {
                meterflow_faults::hit(Point::DuringParquetWrite);
            }
            Ok(())
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let result = self.inner.complete().await?;
        meterflow_faults::hit(Point::BeforeDeltaCommit);
        Ok(result)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

crate::storage::object_store_reading_through! {
impl ObjectStore for FaultStore {
    /// Small Parquet files arrive here in one piece. They are written the way a large one is
    /// (two parts through a staging file, renamed on completion), so that a kill at
    /// `during_parquet_write` leaves a real torn staging file behind.
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if is_checkpoint(location) && meterflow_faults::fires(Point::CheckpointWrite) {
            return Err(injected(Point::CheckpointWrite, location));
        }
        if !location.as_ref().ends_with(".parquet") || is_checkpoint(location) {
            let put = self.inner.put_opts(location, payload, opts).await?;
            after_log_entry(location)?;
            return Ok(put);
        }
        let mut bytes = bytes::Bytes::from(payload);
        let first = bytes.split_to(bytes.len() / 2);
        let mut upload = self.put_multipart_opts(location, PutMultipartOptions::default()).await?;
        upload.put_part(first.into()).await?;
        upload.put_part(bytes.into()).await?;
        upload.complete().await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        if is_checkpoint(location) && meterflow_faults::fires(Point::CheckpointWrite) {
            return Err(injected(Point::CheckpointWrite, location));
        }
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        if location.as_ref().ends_with(".parquet") && !is_checkpoint(location) {
            Ok(Box::new(FaultUpload { inner, parts: 0 }))
        } else {
            Ok(inner)
        }
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        after_log_entry(to)
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        after_log_entry(to)
    }
}
}
