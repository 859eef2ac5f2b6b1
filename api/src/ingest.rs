//! `POST /api/v1/events`: OpenMeter-compatible ingestion.
//!
//! A request is all or nothing: every event is decoded with the pipeline's own decoder, its
//! values read by the meters and its time checked against `[lateness]`'s bounds at the time of
//! the request (so what the API accepts, the pipeline accepts), its subject is
//! checked against the key's customers (the catalog's owner at the event's time), and only
//! then are its events published, grouped by NATS subject into batch-mode messages. The answer
//! is 204 only once JetStream has acknowledged every message (stored, replicated); a failed or
//! slow publish is a 503 with `Retry-After`, and a retry of the same request is safe: each
//! message carries a `Nats-Msg-Id` derived from its events' (source, id) pairs, so the broker
//! drops a quick retry, and the pipeline's dedup a late one.
//!
//! The NATS subject of an event is `usage.<customer>.<type>` (tokens made safe), or, for a
//! customer bound to `publish_subjects`, its first pattern with the wildcards filled with the
//! event type, so the pipeline's publish-subject rule holds for API traffic too. Usage for a
//! subject no customer owns (admin keys only) goes to `usage.unassigned.<type>` and lands in the
//! exception queue (`unknown_subject`) until the customer is onboarded and it is redriven.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use meterflow_aggregator::TimeBounds;
use meterflow_ingest::Customer;
use meterflow_schemas::{decode_message, Reject, RejectReason, UsageEvent};

use crate::keys::Scope;
use crate::problem::{EventError, Problem};
use crate::state::Api;

/// Most events in one published message.
const MAX_EVENTS_PER_MESSAGE: usize = 500;
/// Most bytes of events in one published message (the broker's default payload limit is 1 MiB).
const MAX_MESSAGE_BYTES: usize = 512 * 1024;

/// What the body's content type promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/cloudevents+json`: one event object.
    Single,
    /// `application/cloudevents-batch+json`: an array of events.
    Batch,
    /// `application/json`: either.
    Either,
}

/// The body kind of a `Content-Type` value, or the 415 to answer.
pub fn body_kind(content_type: Option<&str>) -> Result<BodyKind, Problem> {
    let essence = content_type.and_then(|v| v.split(';').next()).map(|v| v.trim().to_ascii_lowercase());
    match essence.as_deref() {
        Some("application/cloudevents+json") => Ok(BodyKind::Single),
        Some("application/cloudevents-batch+json") => Ok(BodyKind::Batch),
        Some("application/json") => Ok(BodyKind::Either),
        other => Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type",
            format!(
                "content type {:?} is not accepted: send application/cloudevents+json (one event), \
                 application/cloudevents-batch+json (an array) or application/json",
                other.unwrap_or("(none)")
            ),
        )),
    }
}

pub use meterflow_ingest::partition::token;

/// The NATS subject an event of `event_type` owned by `customer` is published on.
pub fn publish_subject(customer: Option<&Customer>, event_type: &str) -> String {
    let kind = token(event_type);
    match customer {
        Some(c) if !c.publish_subjects.is_empty() => c.publish_subjects[0]
            .split('.')
            .map(|t| if t == "*" || t == ">" { kind.as_str() } else { t })
            .collect::<Vec<_>>()
            .join("."),
        Some(c) => format!("usage.{}.{kind}", token(&c.id)),
        None => format!("usage.unassigned.{kind}"),
    }
}

/// The `Nats-Msg-Id` of a message holding `events`: a 128-bit hash of their (source, id)
/// pairs in order.
pub fn message_id(events: &[&UsageEvent]) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for e in events {
        h.update(e.source.as_bytes());
        h.update(&[0]);
        h.update(e.id.as_bytes());
        h.update(&[0]);
    }
    format!("mf-{:032x}", h.digest128())
}

/// The field a reject is about, read from its reason and detail.
fn field_of(reason: RejectReason, detail: &str) -> Option<String> {
    let quoted = detail.split('`').nth(1).map(str::to_string);
    match reason {
        RejectReason::InvalidTime | RejectReason::TooOld | RejectReason::FutureTime => Some("time".into()),
        RejectReason::UnknownType => Some("type".into()),
        RejectReason::UnknownSubject | RejectReason::SubjectNotAllowed | RejectReason::NoSubscription => {
            Some("subject".into())
        }
        RejectReason::MissingValue
        | RejectReason::InvalidValue
        | RejectReason::NegativeValue
        | RejectReason::ValueTooPrecise
        | RejectReason::ValueOutOfRange => detail.split("data.").nth(1).map(|rest| {
            let path: String = rest.chars().take_while(|c| !c.is_whitespace() && *c != ',' && *c != ':').collect();
            format!("data.{path}")
        }),
        RejectReason::UnsupportedData => Some("data".into()),
        _ => quoted,
    }
}

fn event_error(index: Option<usize>, reason: RejectReason, detail: String) -> EventError {
    EventError { event: index, field: field_of(reason, &detail), reason: reason.code().to_string(), detail }
}

fn reject_error(r: &Reject) -> EventError {
    event_error(r.index, r.reason, r.detail.clone())
}

/// One message to publish: subject, payload, message id, and how many events it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// NATS subject.
    pub subject: String,
    /// The events' original bytes: one object, or a JSON array of them.
    pub payload: Vec<u8>,
    /// `Nats-Msg-Id`.
    pub msg_id: String,
    /// Events in it.
    pub events: usize,
}

/// The checked request: the messages to publish, or the problem to answer. Pure: the
/// reference data and the key's scope are passed in.
pub fn plan(
    body: &[u8],
    kind: BodyKind,
    reference: &meterflow_pipeline::config::Reference,
    scope: &Scope,
    bounds: TimeBounds,
    now: DateTime<Utc>,
) -> Result<Vec<Outgoing>, Problem> {
    let first = body.iter().copied().find(|b| !b.is_ascii_whitespace());
    match (kind, first) {
        (BodyKind::Single, Some(b'[')) => {
            return Err(Problem::bad_request(
                "wrong_content_type",
                "the body is an array but the content type says one event: send arrays as \
                 application/cloudevents-batch+json",
            ))
        }
        (BodyKind::Batch, Some(b'{')) => {
            return Err(Problem::bad_request(
                "wrong_content_type",
                "the body is one event but the content type says a batch: send it as \
                 application/cloudevents+json, or wrap it in an array",
            ))
        }
        _ => {}
    }
    let decoded = decode_message(body);
    let mut errors: Vec<EventError> = decoded.rejects.iter().map(reject_error).collect();
    let mut forbidden = Vec::new();
    let mut routed: Vec<(String, &UsageEvent)> = Vec::with_capacity(decoded.events.len());
    for event in &decoded.events {
        if let Err((reason, detail)) =
            reference.meters.extract(event).map(|_| ()).and_then(|()| bounds.check(event.time, now))
        {
            errors.push(event_error(event.index, reason, detail));
            continue;
        }
        let owner = reference.directory.lookup_at(&event.subject, event.time);
        match (owner, scope) {
            (Some(c), _) if scope.allows(&c.id) => {}
            (None, Scope::Admin) => {}
            _ => {
                forbidden.push(EventError {
                    event: event.index,
                    field: Some("subject".into()),
                    reason: "forbidden_subject".into(),
                    detail: format!(
                        "subject {:?} at {} is not usage of a customer this key may publish for",
                        event.subject,
                        event.time.to_rfc3339()
                    ),
                });
                continue;
            }
        }
        routed.push((publish_subject(owner, &event.event_type), event));
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.event);
        let n = errors.len();
        return Err(Problem::bad_request(
            "invalid_events",
            format!("{n} event(s) are invalid; nothing was published: fix them and send the request again"),
        )
        .with_errors(errors));
    }
    if !forbidden.is_empty() {
        return Err(Problem::forbidden(format!(
            "{} event(s) are for subjects this key may not publish for; nothing was published",
            forbidden.len()
        ))
        .with_errors(forbidden));
    }
    Ok(group(body, routed))
}

/// Groups routed events by subject (in first-seen order) into messages within the size limits.
fn group(body: &[u8], routed: Vec<(String, &UsageEvent)>) -> Vec<Outgoing> {
    let mut by_subject: BTreeMap<&str, (usize, Vec<&UsageEvent>)> = BTreeMap::new();
    for (i, (subject, e)) in routed.iter().enumerate() {
        by_subject.entry(subject.as_str()).or_insert((i, Vec::new())).1.push(e);
    }
    let mut groups: Vec<(usize, &str, Vec<&UsageEvent>)> =
        by_subject.into_iter().map(|(s, (first, events))| (first, s, events)).collect();
    groups.sort_by_key(|g| g.0);
    let mut out = Vec::new();
    for (_, subject, events) in groups {
        let mut chunk: Vec<&UsageEvent> = Vec::new();
        let mut bytes = 0usize;
        for e in events {
            let len = e.span.len();
            if !chunk.is_empty() && (chunk.len() >= MAX_EVENTS_PER_MESSAGE || bytes + len > MAX_MESSAGE_BYTES) {
                out.push(message(body, subject, &chunk));
                chunk.clear();
                bytes = 0;
            }
            bytes += len + 1;
            chunk.push(e);
        }
        if !chunk.is_empty() {
            out.push(message(body, subject, &chunk));
        }
    }
    out
}

fn message(body: &[u8], subject: &str, events: &[&UsageEvent]) -> Outgoing {
    let bytes_of = |e: &UsageEvent| body.get(e.span.clone()).unwrap_or_default();
    let payload = match events {
        [one] => bytes_of(one).to_vec(),
        many => {
            let mut p = Vec::with_capacity(many.iter().map(|e| e.span.len() + 1).sum::<usize>() + 2);
            p.push(b'[');
            for (i, e) in many.iter().enumerate() {
                if i > 0 {
                    p.push(b',');
                }
                p.extend_from_slice(bytes_of(e));
            }
            p.push(b']');
            p
        }
    };
    Outgoing { subject: subject.to_string(), payload, msg_id: message_id(events), events: events.len() }
}

/// Publishes `messages` and waits for every acknowledgement, within `timeout`.
async fn publish(api: &Api, messages: Vec<Outgoing>, timeout: Duration) -> Result<(), Problem> {
    let total = messages.len();
    let js = api.jetstream();
    let sent = async {
        let mut acks = Vec::with_capacity(total);
        for m in messages {
            let publish = PublishMessage::build().payload(Bytes::from(m.payload)).message_id(m.msg_id);
            acks.push(js.send_publish(m.subject, publish).await.map_err(|e| e.to_string())?);
        }
        let mut acked = 0usize;
        for ack in acks {
            match ack.await {
                Ok(_) => acked += 1,
                Err(e) => return Err(format!("{acked} of {total} messages acknowledged, then: {e}")),
            }
        }
        Ok(())
    };
    let retry = "; retrying the whole request is safe (acknowledged events are dropped as duplicates)";
    match tokio::time::timeout(timeout, sent).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Problem::unavailable(format!("the broker did not store the events: {e}{retry}"), 1)),
        Err(_) => Err(Problem::unavailable(
            format!("the broker did not acknowledge within {} ms{retry}", timeout.as_millis()),
            2,
        )),
    }
}

/// The handler.
pub async fn post_events(State(api): State<Arc<Api>>, headers: HeaderMap, body: Body) -> Response {
    match handle(&api, &headers, body).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(p) => p.into_response(),
    }
}

async fn handle(api: &Api, headers: &HeaderMap, body: Body) -> Result<(), Problem> {
    let key = api.authenticate(headers).await?;
    let kind = body_kind(headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()))?;
    // At most `max_concurrent_ingest` bodies are read and held at once; the rest wait a while,
    // then get 503: memory stays bounded.
    let timeout = Duration::from_millis(api.config.api.publish_timeout_ms.max(1));
    let _permit = match tokio::time::timeout(timeout, api.ingest_permits.acquire()).await {
        Ok(Ok(p)) => p,
        _ => {
            return Err(Problem::unavailable(
                "too many ingest requests in progress ([api] max_concurrent_ingest): retry shortly",
                1,
            ))
        }
    };
    let limit = api.config.api.max_body_bytes;
    let body = axum::body::to_bytes(body, limit).await.map_err(|_| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "Payload too large",
            format!("the body is over the {limit}-byte limit ([api] max_body_bytes): send fewer events per request"),
        )
    })?;
    let reference = api.reference().await?;
    let bounds = api.config.lateness.bounds();
    let messages = plan(&body, kind, &reference.1, &key.scope(), bounds, Utc::now())?;
    let events: usize = messages.iter().map(|m| m.events).sum();
    publish(api, messages, timeout).await?;
    tracing::debug!(key = %key.id, events, "events ingested");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_ingest::CustomerConfig;

    fn customer(id: &str, publish: &[&str]) -> Customer {
        Arc::new(CustomerConfig {
            id: id.into(),
            name: None,
            subjects: vec![],
            currency: "EUR".into(),
            legal_entity: "x".into(),
            erp_customer_id: "x".into(),
            plan: None,
            subscriptions: vec![],
            billing_anchor_day: 1,
            publish_subjects: publish.iter().map(|s| s.to_string()).collect(),
            attributes: Default::default(),
        })
    }

    #[test]
    fn an_event_is_published_on_its_customers_subject_or_the_first_allowed_pattern() {
        assert_eq!(publish_subject(Some(&customer("acme", &[])), "api_calls"), "usage.acme.api_calls");
        assert_eq!(publish_subject(Some(&customer("a.b c", &[])), "x>y"), "usage.a_b_c.x_y");
        assert_eq!(publish_subject(Some(&customer("globex", &["usage.globex.>"])), "tokens"), "usage.globex.tokens");
        assert_eq!(publish_subject(None, "tokens"), "usage.unassigned.tokens");
    }

    #[test]
    fn the_content_type_decides_what_the_body_may_be() {
        assert_eq!(body_kind(Some("application/cloudevents+json; charset=utf-8")).unwrap(), BodyKind::Single);
        assert_eq!(body_kind(Some("application/cloudevents-batch+json")).unwrap(), BodyKind::Batch);
        assert_eq!(body_kind(Some("Application/JSON")).unwrap(), BodyKind::Either);
        assert_eq!(body_kind(Some("text/plain")).unwrap_err().status, 415);
        assert_eq!(body_kind(None).unwrap_err().status, 415);
    }

    #[test]
    fn the_message_id_depends_on_every_source_and_id_in_order() {
        let e = |s: &str, i: &str| UsageEvent {
            id: i.into(),
            source: s.into(),
            event_type: "t".into(),
            subject: "s".into(),
            time: chrono::Utc::now(),
            data: None,
            index: None,
            span: 0..0,
        };
        let (a, b) = (e("src", "1"), e("src", "2"));
        assert_eq!(message_id(&[&a]), message_id(&[&a]));
        assert_ne!(message_id(&[&a]), message_id(&[&b]));
        assert_ne!(message_id(&[&a, &b]), message_id(&[&b, &a]));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(message_id(&[&e("ab", "c")]), message_id(&[&e("a", "bc")]));
    }

    fn example() -> (meterflow_pipeline::config::Config, meterflow_pipeline::config::Reference) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/meterflow.toml");
        let config = meterflow_pipeline::config::Config::load(&dir, &Default::default()).unwrap();
        let reference = meterflow_pipeline::config::Reference::load(&config).unwrap();
        (config, reference)
    }

    fn tokens(id: &str, subject: &str, time: &str) -> String {
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"s","type":"llm_tokens","subject":"{subject}","time":"{time}","data":{{"tokens":"1.5","model":"m"}}}}"#
        )
    }

    fn plan_of(body: &str, scope: &Scope) -> Result<Vec<Outgoing>, Problem> {
        let (config, reference) = example();
        let now = DateTime::parse_from_rfc3339("2026-11-20T12:00:00Z").unwrap().with_timezone(&Utc);
        plan(body.as_bytes(), BodyKind::Either, &reference, scope, config.lateness.bounds(), now)
    }

    fn acme() -> Scope {
        Scope::Customers(["acme".to_string()].into())
    }

    #[test]
    fn a_batch_for_one_customer_is_one_message_of_its_original_bytes() {
        let (a, b) = (tokens("1", "acme", "2026-11-20T10:00:00Z"), tokens("2", "acme", "2026-11-20T10:30:00Z"));
        let out = plan_of(&format!("[ {a} ,\n{b}]"), &acme()).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].subject, "usage.acme.llm_tokens");
        assert_eq!(out[0].payload, format!("[{a},{b}]").into_bytes());
        assert_eq!(out[0].events, 2);
    }

    #[test]
    fn events_of_two_customers_go_out_as_two_messages_in_first_seen_order() {
        let body = format!(
            "[{},{},{}]",
            tokens("1", "globex", "2026-11-20T10:00:00Z"),
            tokens("2", "acme", "2026-11-20T10:00:00Z"),
            tokens("3", "globex", "2026-11-20T10:00:00Z")
        );
        let out = plan_of(&body, &Scope::Admin).unwrap();
        assert_eq!(
            out.iter().map(|m| (m.subject.as_str(), m.events)).collect::<Vec<_>>(),
            vec![("usage.globex.llm_tokens", 2), ("usage.acme.llm_tokens", 1)]
        );
    }

    #[test]
    fn another_tenants_subject_refuses_the_whole_request_with_403() {
        let body = format!(
            "[{},{}]",
            tokens("1", "acme", "2026-11-20T10:00:00Z"),
            tokens("2", "globex", "2026-11-20T10:00:00Z")
        );
        let p = plan_of(&body, &acme()).unwrap_err();
        assert_eq!(p.status, 403);
        assert_eq!(p.errors.len(), 1);
        assert_eq!(p.errors[0].event, Some(1));
    }

    #[test]
    fn an_unknown_subject_is_refused_to_a_bound_key_and_parked_for_an_admin_key() {
        let body = tokens("1", "newco", "2026-11-20T10:00:00Z");
        assert_eq!(plan_of(&body, &acme()).unwrap_err().status, 403);
        assert_eq!(plan_of(&body, &Scope::Admin).unwrap()[0].subject, "usage.unassigned.llm_tokens");
    }

    #[test]
    fn bad_events_are_named_by_position_field_and_reason_and_nothing_goes_out() {
        let body = format!(
            "[{},{},{}]",
            tokens("1", "acme", "2026-11-20T10:00:00Z"),
            tokens("2", "acme", "not a time"),
            tokens("3", "acme", "2025-01-01T00:00:00Z")
        );
        let p = plan_of(&body, &acme()).unwrap_err();
        assert_eq!(p.status, 400);
        let got: Vec<_> = p.errors.iter().map(|e| (e.event, e.field.as_deref(), e.reason.as_str())).collect();
        assert_eq!(got, vec![(Some(1), Some("time"), "invalid_time"), (Some(2), Some("time"), "too_old")]);
    }

    #[test]
    fn an_array_under_the_single_event_content_type_is_refused() {
        let (_, reference) = example();
        let body = format!("[{}]", tokens("1", "acme", "2026-11-20T10:00:00Z"));
        let now = Utc::now();
        let bounds = example().0.lateness.bounds();
        let p = plan(body.as_bytes(), BodyKind::Single, &reference, &Scope::Admin, bounds, now).unwrap_err();
        assert_eq!(p.status, 400);
    }

    #[test]
    fn a_value_reject_names_the_data_field() {
        let f = field_of(RejectReason::MissingValue, "meter `tokens` needs data.tokens, which is missing");
        assert_eq!(f.as_deref(), Some("data.tokens"));
        let f = field_of(RejectReason::MissingAttribute, "required attribute `time` is missing");
        assert_eq!(f.as_deref(), Some("time"));
    }
}
