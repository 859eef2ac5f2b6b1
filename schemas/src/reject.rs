//! Reject reasons: the stable codes that label every message or event sent to the DLQ.

use std::fmt;

/// Why an event (or a whole message) was not accepted. The [`RejectReason::code`] strings are a
/// public contract: they appear in the `Meterflow-Reason` DLQ header, the DLQ subject and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// The message is not valid JSON (includes invalid UTF-8, truncation, nesting too deep).
    InvalidJson,
    /// Valid JSON, but neither an object nor an array of objects.
    NotAnEvent,
    /// A batch-mode message holding an empty array.
    EmptyBatch,
    /// The same attribute name appears twice in one event object.
    DuplicateAttribute,
    /// A required attribute (`specversion`, `id`, `source`, `type`, `subject`, `time`) is absent.
    MissingAttribute,
    /// A required attribute is present but empty.
    EmptyAttribute,
    /// An attribute has the wrong JSON type (for example a number where a string is required).
    InvalidAttributeType,
    /// An attribute exceeds its size bound.
    AttributeTooLong,
    /// An attribute contains control characters.
    ControlCharacters,
    /// `specversion` is not "1.0".
    UnsupportedSpecVersion,
    /// `time` is not an RFC 3339 timestamp.
    InvalidTime,
    /// `datacontenttype` is not JSON, or `data_base64` was used: meter values cannot be read.
    UnsupportedData,
    /// No configured meter consumes events of this `type`.
    UnknownType,
    /// A meter needs a value property the event does not carry.
    MissingValue,
    /// The meter's value property is not an exact decimal (number or decimal string).
    InvalidValue,
    /// The meter value is negative: usage is never negative.
    NegativeValue,
    /// The meter value has more fractional digits than the tables store exactly.
    ValueTooPrecise,
    /// The meter value is beyond the per-event bound ([`crate::MAX_EVENT_VALUE`]), or adding it
    /// would take its billing-period total, or that total's price, beyond what the tables hold
    /// exactly (DECIMAL(38, 9) quantities, DECIMAL(38, 18) amounts).
    ValueOutOfRange,
    /// The event's `subject` maps to no customer in the reference data.
    UnknownSubject,
    /// The customer's usage may only arrive on its own NATS subjects (`publish_subjects` in the
    /// reference data) and this message came on another: one tenant cannot bill another.
    SubjectNotAllowed,
    /// The customer has no subscription (or no plan version) in force at the event's time.
    NoSubscription,
    /// The event time is older than the maximum backdating allowed (relative to its arrival).
    TooOld,
    /// The event time is further in the future than the clock-skew bound allows.
    FutureTime,
}

impl RejectReason {
    /// Every reason, in code order (for metrics and documentation).
    pub const ALL: [RejectReason; 23] = [
        RejectReason::InvalidJson,
        RejectReason::NotAnEvent,
        RejectReason::EmptyBatch,
        RejectReason::DuplicateAttribute,
        RejectReason::MissingAttribute,
        RejectReason::EmptyAttribute,
        RejectReason::InvalidAttributeType,
        RejectReason::AttributeTooLong,
        RejectReason::ControlCharacters,
        RejectReason::UnsupportedSpecVersion,
        RejectReason::InvalidTime,
        RejectReason::UnsupportedData,
        RejectReason::UnknownType,
        RejectReason::MissingValue,
        RejectReason::InvalidValue,
        RejectReason::NegativeValue,
        RejectReason::ValueTooPrecise,
        RejectReason::ValueOutOfRange,
        RejectReason::UnknownSubject,
        RejectReason::SubjectNotAllowed,
        RejectReason::NoSubscription,
        RejectReason::TooOld,
        RejectReason::FutureTime,
    ];

    /// The reason with this code.
    pub fn parse(code: &str) -> Option<RejectReason> {
        RejectReason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// Whether a catalog change can cure it (a customer, a subject's owner or a subscription
    /// added): the exception queue that `meterflow dlq replay` redrives by default. The other
    /// reasons are in the bytes and need the publisher to send a corrected event.
    pub const fn is_business(self) -> bool {
        matches!(self, RejectReason::UnknownSubject | RejectReason::SubjectNotAllowed | RejectReason::NoSubscription)
    }

    /// The stable snake_case code of this reason.
    pub const fn code(self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::NotAnEvent => "not_an_event",
            RejectReason::EmptyBatch => "empty_batch",
            RejectReason::DuplicateAttribute => "duplicate_attribute",
            RejectReason::MissingAttribute => "missing_attribute",
            RejectReason::EmptyAttribute => "empty_attribute",
            RejectReason::InvalidAttributeType => "invalid_attribute_type",
            RejectReason::AttributeTooLong => "attribute_too_long",
            RejectReason::ControlCharacters => "control_characters",
            RejectReason::UnsupportedSpecVersion => "unsupported_specversion",
            RejectReason::InvalidTime => "invalid_time",
            RejectReason::UnsupportedData => "unsupported_data",
            RejectReason::UnknownType => "unknown_type",
            RejectReason::MissingValue => "missing_value",
            RejectReason::InvalidValue => "invalid_value",
            RejectReason::NegativeValue => "negative_value",
            RejectReason::ValueTooPrecise => "value_too_precise",
            RejectReason::ValueOutOfRange => "value_out_of_range",
            RejectReason::UnknownSubject => "unknown_subject",
            RejectReason::SubjectNotAllowed => "subject_not_allowed",
            RejectReason::NoSubscription => "no_subscription",
            RejectReason::TooOld => "too_old",
            RejectReason::FutureTime => "future_time",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One rejected event or message: the reason, a human-readable detail, and where it sat.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Reject {
    /// The stable reason code.
    pub reason: RejectReason,
    /// What exactly was wrong, for the person reading the DLQ.
    pub detail: String,
    /// Position of the event in a batch-mode array; `None` when the whole message is rejected
    /// or the message held a single event.
    pub index: Option<usize>,
    /// The original bytes of the rejected event (the whole message when `index` is `None`).
    pub original: Vec<u8>,
}

impl Reject {
    /// A reject for `original` with the given reason and detail.
    pub fn new(reason: RejectReason, detail: impl Into<String>, original: &[u8]) -> Self {
        Reject { reason, detail: detail.into(), index: None, original: original.to_vec() }
    }
}
