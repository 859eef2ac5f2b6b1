//! The catalog on the broker: a JetStream stream with one message per revision (the change set
//! as JSON), kept forever, deletes and purges refused.

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage, stream};
use bytes::Bytes;

use crate::model::{Catalog, ChangeSet, Revision};
use crate::{CatalogError, Result};

/// The catalog stream.
#[derive(Debug, Clone)]
pub struct CatalogStore {
    js: jetstream::Context,
    stream: String,
    subject: String,
}

impl CatalogStore {
    /// Opens the catalog stream `stream` (revisions published on `subject`), creating it when
    /// absent: limits retention without limits, file storage, no deletes, no purges.
    pub async fn open(js: jetstream::Context, stream: &str, subject: &str) -> Result<CatalogStore> {
        let store = CatalogStore { js, stream: stream.to_string(), subject: subject.to_string() };
        store
            .js
            .get_or_create_stream(stream::Config {
                name: stream.to_string(),
                description: Some("meterflow catalog: one change set per revision".into()),
                subjects: vec![subject.to_string()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                deny_delete: true,
                deny_purge: true,
                ..Default::default()
            })
            .await
            .map_err(|e| store.broker("open", e))?;
        Ok(store)
    }

    fn broker(&self, operation: &'static str, e: impl std::fmt::Display) -> CatalogError {
        CatalogError::Broker { stream: self.stream.clone(), operation, message: e.to_string() }
    }

    /// The newest revision (0 while the catalog is empty).
    pub async fn revision(&self) -> Result<Revision> {
        let stream = self.js.get_stream(&self.stream).await.map_err(|e| self.broker("read the revision", e))?;
        Ok(stream.cached_info().state.last_sequence)
    }

    /// The change sets of revisions `after + 1 ..= through`, in order.
    pub async fn change_sets(&self, after: Revision, through: Revision) -> Result<Vec<(Revision, ChangeSet)>> {
        let stream = self.js.get_stream(&self.stream).await.map_err(|e| self.broker("read a revision", e))?;
        let latest = stream.cached_info().state.last_sequence;
        if through > latest {
            return Err(CatalogError::NoSuchRevision { revision: through, latest });
        }
        let mut out = Vec::with_capacity(usize::try_from(through.saturating_sub(after)).unwrap_or(0));
        for revision in after.saturating_add(1)..=through {
            let message = stream.get_raw_message(revision).await.map_err(|e| CatalogError::Corrupt {
                revision,
                message: format!("the stream does not return it: {e}"),
            })?;
            let changes: ChangeSet = serde_json::from_slice(&message.payload)
                .map_err(|e| CatalogError::Corrupt { revision, message: format!("not a change set: {e}") })?;
            out.push((revision, changes));
        }
        Ok(out)
    }

    /// The catalog as of `revision`.
    pub async fn catalog_at(&self, revision: Revision) -> Result<Catalog> {
        let changes = self.change_sets(0, revision).await?;
        Ok(Catalog::fold(changes.iter().map(|(_, c)| c)))
    }

    /// The newest revision and the catalog as of it.
    pub async fn latest(&self) -> Result<(Revision, Catalog)> {
        let revision = self.revision().await?;
        Ok((revision, self.catalog_at(revision).await?))
    }

    /// Appends `changes` as the next revision, only if the catalog is still at `expected` (the
    /// revision it was checked against); returns the new revision.
    pub async fn append(&self, changes: &ChangeSet, expected: Revision) -> Result<Revision> {
        let payload = serde_json::to_vec(changes)
            .map_err(|e| CatalogError::Corrupt { revision: expected + 1, message: e.to_string() })?;
        let size = payload.len();
        let message = PublishMessage::build().payload(Bytes::from(payload)).expected_last_sequence(expected);
        let ack = match self.js.send_publish(self.subject.clone(), message).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                Err(CatalogError::Conflict { expected, found: self.revision().await.unwrap_or(expected) })
            }
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                Err(CatalogError::TooLarge { size, limit: e.to_string() })
            }
            Err(e) => Err(self.broker("append a revision", e)),
        }
    }
}
