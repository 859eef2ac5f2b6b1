//! Publishing a workload to JetStream.

use anyhow::{Context, Result};
use async_nats::jetstream;

use super::OutMessage;

/// Publishes messages, keeping up to `window` acknowledgements in flight. Returns how many the
/// broker reported as duplicates (dropped by `Nats-Msg-Id`).
pub async fn publish_all(js: &jetstream::Context, messages: &[OutMessage], window: usize) -> Result<u64> {
    let mut in_flight = std::collections::VecDeque::new();
    let mut broker_duplicates = 0;
    for m in messages {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = &m.msg_id {
            headers.insert("Nats-Msg-Id", id.as_str());
        }
        let ack =
            js.publish_with_headers(m.subject.clone(), headers, m.payload.clone().into()).await.context("publish")?;
        in_flight.push_back(ack);
        if in_flight.len() >= window.max(1) {
            if let Some(a) = in_flight.pop_front() {
                if a.await.context("publish ack")?.duplicate {
                    broker_duplicates += 1;
                }
            }
        }
    }
    for a in in_flight {
        if a.await.context("publish ack")?.duplicate {
            broker_duplicates += 1;
        }
    }
    Ok(broker_duplicates)
}
