//! The catalog on the broker: a JetStream stream with one message per revision (the change set
//! as JSON), kept forever, deletes and purges refused. A change set over [`COMPRESS_FROM`] bytes
//! is stored zstd-compressed (header `Meterflow-Encoding: zstd`), so a revision that onboards
//! tens of thousands of customers still fits the broker's message size (1 MiB by default).

use std::io::Read;

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage, stream};
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::model::{Catalog, ChangeSet, Revision};
use crate::{CatalogError, Result};

/// Change sets from this many bytes of JSON on are stored compressed; smaller ones stay plain
/// JSON, readable with `nats stream get`.
pub const COMPRESS_FROM: usize = 64 * 1024;

/// The header naming how a revision's payload is encoded (absent: plain JSON).
pub const ENCODING_HEADER: &str = "Meterflow-Encoding";

/// Largest change set a stored revision may decompress to (a guard against a payload that
/// was not written by meterflow).
pub const MAX_DECODED_BYTES: u64 = 1 << 30;

/// The stored form of `changes`: its JSON, compressed when large, and the encoding header value.
pub fn encode(changes: &ChangeSet) -> std::result::Result<(Vec<u8>, Option<&'static str>), String> {
    let json = serde_json::to_vec(changes).map_err(|e| e.to_string())?;
    if json.len() < COMPRESS_FROM {
        return Ok((json, None));
    }
    let packed = zstd::bulk::compress(&json, 3).map_err(|e| format!("cannot compress the change: {e}"))?;
    Ok((packed, Some("zstd")))
}

/// The change set stored as `payload` with `encoding` (see [`encode`]).
pub fn decode(payload: &[u8], encoding: Option<&str>) -> std::result::Result<ChangeSet, String> {
    decode_at_most(payload, encoding, MAX_DECODED_BYTES)
}

fn decode_at_most(payload: &[u8], encoding: Option<&str>, max: u64) -> std::result::Result<ChangeSet, String> {
    match encoding {
        None => serde_json::from_slice(payload).map_err(|e| format!("not a change set: {e}")),
        Some("zstd") => {
            let mut json = Vec::new();
            zstd::stream::read::Decoder::new(payload)
                .map_err(|e| format!("not zstd: {e}"))?
                .take(max.saturating_add(1))
                .read_to_end(&mut json)
                .map_err(|e| format!("not zstd: {e}"))?;
            if json.len() as u64 > max {
                return Err(format!("decompresses to more than {max} bytes"));
            }
            serde_json::from_slice(&json).map_err(|e| format!("not a change set: {e}"))
        }
        Some(other) => Err(format!("unknown encoding {other:?} (this meterflow reads plain JSON and zstd)")),
    }
}

fn encoding_of(headers: &HeaderMap) -> Option<&str> {
    headers.get(ENCODING_HEADER).map(|v| v.as_str())
}

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
    /// `replicas`: the stream's replicas when it is created (3 on a cluster).
    pub async fn open(js: jetstream::Context, stream: &str, subject: &str, replicas: usize) -> Result<CatalogStore> {
        let store = CatalogStore { js, stream: stream.to_string(), subject: subject.to_string() };
        store
            .js
            .get_or_create_stream(stream::Config {
                name: stream.to_string(),
                description: Some("meterflow catalog: one change set per revision".into()),
                subjects: vec![subject.to_string()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                num_replicas: replicas,
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
            let changes = decode(&message.payload, encoding_of(&message.headers))
                .map_err(|message| CatalogError::Corrupt { revision, message })?;
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
        let (payload, encoding) = encode(changes)
            .map_err(|message| CatalogError::Corrupt { revision: expected.saturating_add(1), message })?;
        let size = payload.len();
        let mut message = PublishMessage::build().payload(Bytes::from(payload)).expected_last_sequence(expected);
        if let Some(encoding) = encoding {
            message = message.header(ENCODING_HEADER, encoding);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::records;
    use crate::Records;

    fn customers(n: usize) -> ChangeSet {
        let mut text = String::new();
        for i in 0..n {
            text.push_str(&format!(
                "[[customers]]\nid = \"cust-{i:05}\"\nsubjects = [\"cust-{i:05}\"]\ncurrency = \"USD\"\n\
                 legal_entity = \"us\"\nerp_customer_id = \"C{i}\"\nplan = \"std\"\n\n"
            ));
        }
        let records: Records = records(&text);
        ChangeSet {
            author: "test".into(),
            at: chrono::DateTime::UNIX_EPOCH,
            source: "test".into(),
            comment: None,
            records,
        }
    }

    #[test]
    fn a_small_change_is_stored_as_plain_json() {
        let change = customers(2);
        let (payload, encoding) = encode(&change).unwrap();
        assert_eq!(encoding, None);
        assert_eq!(payload, serde_json::to_vec(&change).unwrap());
        assert_eq!(decode(&payload, None).unwrap(), change);
    }

    #[test]
    fn twenty_thousand_customers_fit_one_broker_message_compressed_and_read_back_equal() {
        let change = customers(20_000);
        let (payload, encoding) = encode(&change).unwrap();
        assert_eq!(encoding, Some("zstd"));
        assert!(serde_json::to_vec(&change).unwrap().len() > 1 << 20, "the JSON alone would not fit");
        assert!(payload.len() < 1 << 20, "{} bytes compressed", payload.len());
        assert_eq!(decode(&payload, encoding).unwrap(), change);
    }

    #[test]
    fn an_unknown_encoding_or_a_broken_payload_is_named() {
        assert!(decode(b"{}", Some("br")).unwrap_err().contains("unknown encoding \"br\""));
        assert!(decode(b"not zstd at all", Some("zstd")).unwrap_err().contains("not zstd"));
    }

    #[test]
    fn a_payload_that_decompresses_past_the_limit_is_refused_not_read_whole() {
        let (payload, encoding) = encode(&customers(2_000)).unwrap();
        assert_eq!(encoding, Some("zstd"));
        let err = decode_at_most(&payload, encoding, 4096).unwrap_err();
        assert_eq!(err, "decompresses to more than 4096 bytes");
    }
}
