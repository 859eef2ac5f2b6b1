//! Publishing a workload to JetStream.

use anyhow::{Context, Result};
use async_nats::jetstream;
use std::time::Duration;

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

/// Publishes `messages` one at a time, `pace` apart, each retried until the stream
/// acknowledges it (a broker restarting, or a cluster electing a new stream leader, answers
/// with errors or not at all for a few seconds). A retry of a message whose first attempt
/// landed is a duplicate the broker drops (same `Nats-Msg-Id`) or the pipeline drops (same
/// event id), so the oracle still holds. Returns how many attempts failed and were retried;
/// fails when one message goes unacknowledged for `give_up_after`.
pub async fn publish_retrying(
    js: &jetstream::Context,
    messages: &[OutMessage],
    pace: Duration,
    give_up_after: Duration,
) -> Result<u64> {
    let mut retried = 0;
    for m in messages {
        tokio::time::sleep(pace).await;
        let started = std::time::Instant::now();
        loop {
            let mut headers = async_nats::HeaderMap::new();
            if let Some(id) = &m.msg_id {
                headers.insert("Nats-Msg-Id", id.as_str());
            }
            let attempt = js.publish_with_headers(m.subject.clone(), headers, m.payload.clone().into()).await;
            let acked = match attempt {
                Ok(ack) => tokio::time::timeout(Duration::from_secs(2), ack).await.is_ok_and(|a| a.is_ok()),
                Err(_) => false,
            };
            if acked {
                break;
            }
            retried += 1;
            if started.elapsed() > give_up_after {
                anyhow::bail!("no acknowledgement for a message on {} within {give_up_after:?}", m.subject);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(retried)
}
