//! # meterflow-schemas: the event contract
//!
//! Product services publish usage as CloudEvents 1.0 in JSON structured mode: one event per
//! message, or a JSON array of events per message (CloudEvents batch mode). This crate turns the
//! bytes of one JetStream message into validated [`UsageEvent`]s and, for every event that cannot
//! be accepted, a [`Reject`] carrying a stable [`RejectReason`] code and the event's original bytes.
//!
//! ```text
//!   message bytes ──decode_message──► [Ok(UsageEvent) | Err(Reject)] per event
//!                                         │                  │
//!                                 flows on to dedup      goes to USAGE_DLQ
//! ```
//!
//! Meter values are exact decimals: [`parse_decimal`] reads the JSON source text of a number or
//! a decimal string straight into a [`rust_decimal::Decimal`], never through `f64`.
//!
//! Nothing in this crate panics on input: every malformed shape has a reason code.

mod event;
mod reject;
mod value;

pub use event::{check_decode_invariants, decode_message, Decoded, UsageEvent, MAX_ATTRIBUTE_BYTES};
pub use reject::{Reject, RejectReason};
pub use value::{
    lookup_property, parse_decimal, parse_instant, property_as_text, Properties, MAX_EVENT_VALUE, MAX_VALUE_SCALE,
};
