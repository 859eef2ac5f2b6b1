//! Decoding one JetStream message into validated usage events.

use chrono::{DateTime, Utc};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use crate::reject::{Reject, RejectReason};

/// Upper bound, in bytes, of `id`, `source`, `subject` and `type`.
pub const MAX_ATTRIBUTE_BYTES: usize = 256;

/// A validated CloudEvents usage event. Strings are owned; `data` keeps the exact JSON text of
/// the event's `data` member so meter values can be read without a float round trip.
#[derive(Debug, Clone)]
pub struct UsageEvent {
    /// CloudEvents `id`: with `source`, the identity used for dedup.
    pub id: String,
    /// CloudEvents `source`.
    pub source: String,
    /// CloudEvents `type`: selects the meters.
    pub event_type: String,
    /// CloudEvents `subject`: the customer's usage key.
    pub subject: String,
    /// CloudEvents `time`: the event time, in UTC.
    pub time: DateTime<Utc>,
    /// The raw JSON of `data`, when present.
    pub data: Option<Box<RawValue>>,
    /// Position in a batch-mode array (`None` for a single-event message).
    pub index: Option<usize>,
    /// Byte range of this event inside the message, to quote it in a later reject.
    pub span: Range<usize>,
}

/// The outcome of decoding one message: accepted events and rejects, in message order.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Events that passed validation.
    pub events: Vec<UsageEvent>,
    /// Events (or the whole message) that did not.
    pub rejects: Vec<Reject>,
}

/// Decodes a message holding one CloudEvent (a JSON object) or a batch (a JSON array of
/// objects). Each invalid event becomes a [`Reject`]; valid events in the same batch still flow.
/// A message that is not JSON at all is one reject for the whole message.
pub fn decode_message(bytes: &[u8]) -> Decoded {
    let mut out = Decoded::default();
    let first = bytes.iter().copied().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'[') if decode_batch_in_one_pass(bytes, &mut out) => {}
        Some(b'[') => decode_batch(bytes, &mut out),
        // One pass for the common case: the object's members straight from the message (whose
        // bytes are the event's own); anything unreadable goes the general way for its exact reject.
        Some(b'{') => {
            let decoded = match serde_json::from_slice::<Members<'_>>(bytes) {
                Ok(members) => decode_members(&members, bytes, None, 0..bytes.len()),
                Err(_) => match serde_json::from_slice::<&RawValue>(bytes) {
                    Ok(item) => decode_event(item, None, 0..bytes.len()),
                    Err(e) => Err(Reject::new(RejectReason::InvalidJson, e.to_string(), bytes)),
                },
            };
            match decoded {
                Ok(event) => out.events.push(event),
                // The whole message, exactly as published (with any surrounding whitespace).
                Err(mut reject) => {
                    reject.original = bytes.to_vec();
                    out.rejects.push(reject);
                }
            }
        }
        _ => {
            // Distinguish "valid JSON of the wrong shape" from "not JSON".
            let reject = match serde_json::from_slice::<&RawValue>(bytes) {
                Ok(_) => Reject::new(
                    RejectReason::NotAnEvent,
                    "message is neither an event object nor an array of events",
                    bytes,
                ),
                Err(e) => Reject::new(RejectReason::InvalidJson, e.to_string(), bytes),
            };
            out.rejects.push(reject);
        }
    }
    out
}

/// Any batch, in two passes: the array's elements as raw JSON, then each element on its own.
fn decode_batch(bytes: &[u8], out: &mut Decoded) {
    match serde_json::from_slice::<Vec<&RawValue>>(bytes) {
        Ok(items) if items.is_empty() => {
            out.rejects.push(Reject::new(RejectReason::EmptyBatch, "batch array holds no events", bytes));
        }
        Ok(items) => {
            for (index, item) in items.into_iter().enumerate() {
                let span = span_of(bytes, item.get().as_bytes());
                out.push_element(index, decode_event(item, Some(index), span));
            }
        }
        Err(e) => out.rejects.push(Reject::new(RejectReason::InvalidJson, e.to_string(), bytes)),
    }
}

/// The common batch in one pass: every element an object, read as members straight from the
/// message, each event's span found from its members. Returns false, having added nothing, for
/// anything else (an element that is not an object, an empty batch, invalid JSON, an escaped
/// first name), which the general path then decodes to its exact outcome.
fn decode_batch_in_one_pass(bytes: &[u8], out: &mut Decoded) -> bool {
    let Ok(objects) = serde_json::from_slice::<Vec<Members<'_>>>(bytes) else {
        return false;
    };
    let Some(spans) = objects.iter().map(|m| m.span_in(bytes)).collect::<Option<Vec<_>>>() else {
        return false;
    };
    if objects.is_empty() {
        return false;
    }
    for (index, (members, span)) in objects.iter().zip(spans).enumerate() {
        let item = bytes.get(span.clone()).unwrap_or(bytes);
        out.push_element(index, decode_members(members, item, Some(index), span));
    }
    true
}

impl Decoded {
    /// Records the outcome of batch element `index`.
    fn push_element(&mut self, index: usize, outcome: Result<UsageEvent, Reject>) {
        match outcome {
            Ok(event) => self.events.push(event),
            Err(mut reject) => {
                reject.index = Some(index);
                self.rejects.push(reject);
            }
        }
    }
}

/// Checks what the decoder promises for any input, however hostile: every message yields at
/// least one outcome; a batch yields exactly one outcome per array element, in order; a single
/// event yields exactly one; spans lie inside the message and quote the event's own bytes;
/// rejected originals are bytes of the message; attributes respect their size limit. Used by
/// the property tests and by the fuzz target (`fuzz/`); returns what was broken.
pub fn check_decode_invariants(bytes: &[u8]) -> Result<Decoded, String> {
    let d = decode_message(bytes);
    if d.events.is_empty() && d.rejects.is_empty() {
        return Err("no outcome at all".into());
    }
    let mut indexes: Vec<Option<usize>> =
        d.events.iter().map(|e| e.index).chain(d.rejects.iter().map(|r| r.index)).collect();
    indexes.sort_unstable();
    let batch = indexes.iter().any(Option::is_some);
    if batch {
        if indexes.iter().enumerate().any(|(i, x)| *x != Some(i)) {
            return Err(format!("batch outcomes are not one per element: {indexes:?}"));
        }
    } else if indexes.len() != 1 {
        return Err(format!("{} outcomes for a message without a batch", indexes.len()));
    }
    for e in &d.events {
        let quoted = bytes.get(e.span.clone()).ok_or_else(|| format!("span {:?} outside the message", e.span))?;
        let quoted = quoted.trim_ascii();
        if quoted.first() != Some(&b'{') || quoted.last() != Some(&b'}') {
            return Err(format!("span {:?} does not quote an event object", e.span));
        }
        for (name, v) in [("id", &e.id), ("source", &e.source), ("type", &e.event_type), ("subject", &e.subject)] {
            if v.is_empty() || v.len() > MAX_ATTRIBUTE_BYTES {
                return Err(format!("accepted {name} of {} bytes", v.len()));
            }
        }
    }
    for r in &d.rejects {
        let inside = r.original.is_empty() || bytes.windows(r.original.len()).any(|w| w == r.original.as_slice());
        if !inside || (r.index.is_none() && r.original != bytes) {
            return Err(format!("reject {} does not carry the original bytes", r.reason.code()));
        }
    }
    Ok(d)
}

/// Byte range of `inner` (a sub-slice of `outer`) within `outer`.
fn span_of(outer: &[u8], inner: &[u8]) -> Range<usize> {
    let start = (inner.as_ptr() as usize).saturating_sub(outer.as_ptr() as usize);
    let start = start.min(outer.len());
    start..(start + inner.len()).min(outer.len())
}

/// The members of one event object, in order, with duplicate names detected.
struct Members<'a> {
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
    duplicate: Option<String>,
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a CloudEvents JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::with_capacity(8);
                let mut duplicate = None;
                while let Some((Key(key), value)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    if duplicate.is_none() && fields.iter().any(|(k, _)| *k == key) {
                        duplicate = Some(key.to_string());
                    }
                    fields.push((key, value));
                }
                Ok(Members { fields, duplicate })
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

/// A member name, borrowed from the message unless it holds escapes (`Cow<str>`'s own
/// `Deserialize` always allocates).
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'a> Members<'a> {
    /// The byte range of the object these members were read from, inside `message`, found from
    /// the first name (borrowed, so a slice of `message`) and the last value: `{`, whitespace
    /// and the name's quote before; whitespace and `}` after. `None` when that cannot be shown
    /// (no members, an escaped first name).
    fn span_in(&self, message: &[u8]) -> Option<Range<usize>> {
        let (Cow::Borrowed(first), _) = &self.fields.first()? else {
            return None;
        };
        let last = self.fields.last()?.1.get().as_bytes();
        let base = message.as_ptr() as usize;
        let name_at = (first.as_ptr() as usize).checked_sub(base)?;
        let before = message.get(..name_at.checked_sub(1)?)?;
        let open = before.iter().rposition(|b| !b.is_ascii_whitespace())?;
        let value_end = ((last.as_ptr() as usize).checked_sub(base)?).checked_add(last.len())?;
        let after = message.get(value_end..)?;
        let close = after.iter().position(|b| !b.is_ascii_whitespace())?;
        (message.get(name_at - 1) == Some(&b'"') && before[open] == b'{' && after[close] == b'}')
            .then_some(open..value_end + close + 1)
    }

    fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }
}

fn reject(reason: RejectReason, detail: impl Into<String>, item: &[u8]) -> Reject {
    Reject::new(reason, detail, item)
}

/// Reads a required string attribute, enforcing presence, type, non-emptiness and size.
fn required_string<'a>(
    members: &Members<'a>,
    name: &str,
    max_len: Option<usize>,
    item: &[u8],
) -> Result<Cow<'a, str>, Reject> {
    let raw = members.get(name).ok_or_else(|| {
        reject(RejectReason::MissingAttribute, format!("required attribute `{name}` is missing"), item)
    })?;
    let text = raw.get();
    if !text.starts_with('"') {
        return Err(reject(
            RejectReason::InvalidAttributeType,
            format!("attribute `{name}` must be a string, got {}", truncate(text, 40)),
            item,
        ));
    }
    let value = string_content(raw)
        .map_err(|e| reject(RejectReason::InvalidAttributeType, format!("attribute `{name}`: {e}"), item))?;
    if value.trim().is_empty() {
        return Err(reject(RejectReason::EmptyAttribute, format!("required attribute `{name}` is empty"), item));
    }
    if let Some(max) = max_len {
        if value.len() > max {
            return Err(reject(
                RejectReason::AttributeTooLong,
                format!("attribute `{name}` is {} bytes, the limit is {max}", value.len()),
                item,
            ));
        }
        // Printable ASCII (the usual case) has no control characters; anything else is checked
        // character by character (C0, DEL and C1 controls).
        if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) && value.chars().any(char::is_control) {
            return Err(reject(
                RejectReason::ControlCharacters,
                format!("attribute `{name}` contains control characters"),
                item,
            ));
        }
    }
    Ok(value)
}

/// The content of a JSON string value. Without escapes it is the text between the quotes (the
/// parser that produced `raw` has already refused control characters and unterminated strings);
/// with escapes it is unescaped by serde_json.
fn string_content(raw: &RawValue) -> Result<Cow<'_, str>, serde_json::Error> {
    let text = raw.get();
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) if !inner.contains(['\\', '"']) => Ok(Cow::Borrowed(inner)),
        _ => serde_json::from_str::<String>(text).map(Cow::Owned),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn decode_event(raw: &RawValue, index: Option<usize>, span: Range<usize>) -> Result<UsageEvent, Reject> {
    let text = raw.get();
    let item = text.as_bytes();
    if !text.starts_with('{') {
        return Err(reject(RejectReason::NotAnEvent, "batch element is not a JSON object", item));
    }
    let members: Members<'_> =
        serde_json::from_str(text).map_err(|e| reject(RejectReason::InvalidJson, e.to_string(), item))?;
    decode_members(&members, item, index, span)
}

/// Validates the members of one event object (`item`: the object's bytes, quoted in rejects).
fn decode_members(
    members: &Members<'_>,
    item: &[u8],
    index: Option<usize>,
    span: Range<usize>,
) -> Result<UsageEvent, Reject> {
    if let Some(name) = &members.duplicate {
        return Err(reject(
            RejectReason::DuplicateAttribute,
            format!("attribute `{name}` appears more than once"),
            item,
        ));
    }
    let specversion = required_string(members, "specversion", Some(16), item)?;
    if specversion != "1.0" {
        return Err(reject(
            RejectReason::UnsupportedSpecVersion,
            format!("specversion must be \"1.0\", got {specversion:?}"),
            item,
        ));
    }
    let id = required_string(members, "id", Some(MAX_ATTRIBUTE_BYTES), item)?.into_owned();
    let source = required_string(members, "source", Some(MAX_ATTRIBUTE_BYTES), item)?.into_owned();
    let event_type = required_string(members, "type", Some(MAX_ATTRIBUTE_BYTES), item)?.into_owned();
    let subject = required_string(members, "subject", Some(MAX_ATTRIBUTE_BYTES), item)?.into_owned();
    let time_text = required_string(members, "time", Some(64), item)?;
    let time = DateTime::parse_from_rfc3339(&time_text)
        .map_err(|e| reject(RejectReason::InvalidTime, format!("time {time_text:?} is not RFC 3339: {e}"), item))?
        .with_timezone(&Utc);
    if members.get("data_base64").is_some() {
        return Err(reject(RejectReason::UnsupportedData, "data_base64 is not supported: send `data` as JSON", item));
    }
    if let Some(ct) = members.get("datacontenttype") {
        let ct: String = serde_json::from_str(ct.get()).unwrap_or_default();
        let media = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        if !(media == "application/json" || media.ends_with("+json") || media == "text/json") {
            return Err(reject(RejectReason::UnsupportedData, format!("datacontenttype {ct:?} is not JSON"), item));
        }
    }
    let data = match members.get("data") {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(raw) => Some(raw.to_owned()),
    };
    Ok(UsageEvent { id, source, event_type, subject, time, data, index, span })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"specversion":"1.0","id":"evt-1","source":"api-gateway/eu-1","type":"api_calls","subject":"cust-42","time":"2026-11-23T05:00:00.123Z","data":{"requests":"3","region":"eu-west-1"}}"#;

    fn with(field: &str, value: &str) -> String {
        let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(GOOD).unwrap();
        if value == "<remove>" {
            v.remove(field);
        } else {
            v.insert(field.to_string(), serde_json::from_str(value).unwrap());
        }
        serde_json::to_string(&v).unwrap()
    }

    fn reason_of(message: &str) -> RejectReason {
        let d = decode_message(message.as_bytes());
        assert!(d.events.is_empty(), "expected a reject for {message}");
        d.rejects[0].reason
    }

    #[test]
    fn a_valid_single_event_decodes_with_its_exact_time_and_data() {
        let d = decode_message(GOOD.as_bytes());
        assert!(d.rejects.is_empty());
        let e = &d.events[0];
        assert_eq!((e.id.as_str(), e.source.as_str(), e.subject.as_str()), ("evt-1", "api-gateway/eu-1", "cust-42"));
        assert_eq!(e.time.to_rfc3339(), "2026-11-23T05:00:00.123+00:00");
        assert_eq!(e.index, None);
        assert_eq!(e.span, 0..GOOD.len());
    }

    #[test]
    fn good_events_in_a_batch_flow_while_bad_ones_are_rejected_with_their_bytes() {
        let bad = with("time", "\"yesterday\"");
        let msg = format!("[{GOOD}, {bad}, 42, {GOOD}]");
        let d = decode_message(msg.as_bytes());
        assert_eq!(d.events.len(), 2);
        assert_eq!(d.events[1].index, Some(3));
        assert_eq!(&msg.as_bytes()[d.events[1].span.clone()], GOOD.as_bytes());
        let reasons: Vec<_> = d.rejects.iter().map(|r| (r.index, r.reason)).collect();
        assert_eq!(reasons, vec![(Some(1), RejectReason::InvalidTime), (Some(2), RejectReason::NotAnEvent)]);
        assert_eq!(d.rejects[0].original, bad.as_bytes());
    }

    #[test]
    fn each_kind_of_malformed_message_has_its_own_reason() {
        assert_eq!(reason_of("{\"specversion\":"), RejectReason::InvalidJson);
        assert_eq!(reason_of("\u{0}garbage"), RejectReason::InvalidJson);
        assert_eq!(reason_of("\"just a string\""), RejectReason::NotAnEvent);
        assert_eq!(reason_of("[]"), RejectReason::EmptyBatch);
        assert_eq!(reason_of(&with("id", "<remove>")), RejectReason::MissingAttribute);
        assert_eq!(reason_of(&with("subject", "\"  \"")), RejectReason::EmptyAttribute);
        assert_eq!(reason_of(&with("id", "7")), RejectReason::InvalidAttributeType);
        assert_eq!(reason_of(&with("specversion", "\"0.3\"")), RejectReason::UnsupportedSpecVersion);
        assert_eq!(reason_of(&with("time", "\"2026-13-45T99:00:00Z\"")), RejectReason::InvalidTime);
        assert_eq!(reason_of(&with("id", &format!("\"{}\"", "x".repeat(257)))), RejectReason::AttributeTooLong);
        assert_eq!(reason_of(&with("source", "\"a\\u0007b\"")), RejectReason::ControlCharacters);
        assert_eq!(reason_of(&with("datacontenttype", "\"text/plain\"")), RejectReason::UnsupportedData);
        assert_eq!(reason_of(r#"{"id":"a","id":"b"}"#), RejectReason::DuplicateAttribute);
        assert_eq!(
            reason_of(&[0xff_u8, 0xfe].iter().map(|&b| b as char).collect::<String>()),
            RejectReason::InvalidJson
        );
    }

    #[test]
    fn invalid_utf8_inside_a_string_is_invalid_json() {
        let mut bytes = GOOD.as_bytes().to_vec();
        let pos = GOOD.find("evt-1").unwrap();
        bytes[pos] = 0xff;
        let d = decode_message(&bytes);
        assert_eq!(d.rejects[0].reason, RejectReason::InvalidJson);
        assert_eq!(d.rejects[0].original, bytes);
    }

    #[test]
    fn an_id_of_exactly_256_bytes_is_accepted() {
        let d = decode_message(with("id", &format!("\"{}\"", "x".repeat(256))).as_bytes());
        assert_eq!(d.events.len(), 1);
    }

    #[test]
    fn a_nesting_bomb_is_rejected_not_crashed_on() {
        let bomb = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let d = decode_message(bomb.as_bytes());
        assert!(d.events.is_empty());
        assert!(matches!(d.rejects[0].reason, RejectReason::InvalidJson | RejectReason::NotAnEvent));
        let object_bomb = format!("{}{}", r#"{"a":"#.repeat(100_000), "}".repeat(100_000));
        assert!(decode_message(object_bomb.as_bytes()).events.is_empty());
        // Deep nesting inside `data` is kept raw and never walked recursively.
        let deep_data = with("data", "{}")
            .replace("\"data\":{}", &format!("\"data\":{}1{}", "[".repeat(50_000), "]".repeat(50_000)));
        assert_eq!(decode_message(deep_data.as_bytes()).events.len(), 1);
    }

    #[test]
    fn a_rejected_single_event_carries_the_message_exactly_as_published() {
        // Found by the fuzz target: surrounding whitespace was dropped from the DLQ copy.
        let msg = b"\t{\"specversion\":\"1.0\",\"id\":\"b\"}\n";
        let d = decode_message(msg);
        assert_eq!(d.rejects.len(), 1);
        assert_eq!(d.rejects[0].original, msg.to_vec());
        assert!(check_decode_invariants(msg).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_every_byte_is_accounted_for(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Err(broken) = check_decode_invariants(&bytes) {
                proptest::prop_assert!(false, "{broken} for {:?}", String::from_utf8_lossy(&bytes));
            }
        }

        // Random bytes are rarely JSON: mutating valid single and batch messages reaches the
        // validation paths (the same smoke the fuzz target runs for longer).
        #[test]
        fn mutated_valid_messages_keep_the_decoder_promises(
            batch in proptest::bool::ANY,
            edits in proptest::collection::vec((0usize..1000, proptest::num::u8::ANY, 0u8..3), 1..6),
        ) {
            let mut bytes = if batch { format!("[{GOOD},{GOOD}, {{\"specversion\":\"1.0\"}}]") } else { GOOD.to_string() }.into_bytes();
            for (at, byte, kind) in edits {
                let at = at % (bytes.len() + 1);
                match kind {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ => bytes.truncate(at.max(1)),
                }
            }
            if let Err(broken) = check_decode_invariants(&bytes) {
                proptest::prop_assert!(false, "{broken} for {:?}", String::from_utf8_lossy(&bytes));
            }
        }

        // The one-pass batch reading is an optimisation only: whatever it accepts, it decodes
        // exactly as the two-pass reading does (events, spans, rejects, reasons, bytes).
        #[test]
        fn a_batch_read_in_one_pass_decodes_exactly_as_in_two(
            elements in proptest::collection::vec(0u8..6, 1..6),
            spaces in proptest::collection::vec(proptest::sample::select(vec!["", " ", "\n\t ", "\r\n"]), 12),
            edits in proptest::collection::vec((0usize..2000, proptest::num::u8::ANY), 0..3),
        ) {
            let s = |i: usize| spaces[i % spaces.len()];
            let pretty = GOOD.replacen("{", &format!("{{{}", s(0)), 1).replacen("\"data\"", &format!("{}\"data\"{}", s(1), s(2)), 1);
            let element = |kind: u8, i: usize| match kind {
                0 => GOOD.replace("evt-1", &format!("evt-{i}")),
                1 => pretty.clone(),
                2 => GOOD.replacen("\"specversion\"", "\"spec\\u0076ersion\"", 1),
                3 => with("time", "\"yesterday\""),
                4 => "{}".to_string(),
                _ => format!("{{{}\"specversion\":\"1.0\", \"id\":\"x\"{}}}", s(3), s(4)),
            };
            let body: Vec<String> = elements.iter().enumerate().map(|(i, k)| format!("{}{}{}", s(i + 5), element(*k, i), s(i + 6))).collect();
            let mut bytes = format!("{}[{}]{}", s(7), body.join(","), s(8)).into_bytes();
            for (at, byte) in edits {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            let mut two = Decoded::default();
            decode_batch(&bytes, &mut two);
            let mut one = Decoded::default();
            if decode_batch_in_one_pass(&bytes, &mut one) {
                proptest::prop_assert_eq!(format!("{one:?}"), format!("{two:?}"));
            } else {
                proptest::prop_assert!(one.events.is_empty() && one.rejects.is_empty());
            }
            if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
                proptest::prop_assert_eq!(format!("{:?}", decode_message(&bytes)), format!("{two:?}"));
            }
        }
    }

    #[test]
    fn the_usual_batch_is_read_in_one_pass() {
        let msg = format!("[{GOOD},\n  {GOOD} ]");
        let mut out = Decoded::default();
        assert!(decode_batch_in_one_pass(msg.as_bytes(), &mut out));
        assert_eq!(out.events.len(), 2);
        assert_eq!(&msg.as_bytes()[out.events[1].span.clone()], GOOD.as_bytes());
    }
}
