//! The rater's one error enum.

/// Errors of plan loading and rating.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RaterError {
    /// Two plans share an id. Fix the reference data.
    #[error("plan `{0}` is defined twice")]
    DuplicatePlan(String),
    /// The plan's currency is not an ISO 4217 code meterflow knows.
    #[error("plan `{plan}`: unknown currency {currency:?} (use an ISO 4217 code such as USD, EUR, JPY)")]
    UnknownCurrency { plan: String, currency: String },
    /// A plan has no versions, or two versions start at the same time.
    #[error("plan `{plan}`: {reason}")]
    InvalidVersions { plan: String, reason: String },
    /// A date or time that cannot be read.
    #[error("plan `{plan}`: effective_from {value:?} is not YYYY-MM-DD or an RFC 3339 time")]
    InvalidDate { plan: String, value: String },
    /// A charge names a meter the config does not define.
    #[error("plan `{plan}` prices meter `{meter}`, which is not defined in the config")]
    UnknownMeter { plan: String, meter: String },
    /// A plan version leaves a configured meter unpriced.
    #[error(
        "plan `{plan}` has no charge for meter `{meter}`: every meter must be priced (use model = \
        \"per_unit\", unit_price = \"0\" for free)"
    )]
    UnpricedMeter { plan: String, meter: String },
    /// Two charges for one meter in one version.
    #[error("plan `{plan}` prices meter `{meter}` twice in one version")]
    DuplicateCharge { plan: String, meter: String },
    /// A charge that cannot work: negative or over-precise prices, tiers out of order, a
    /// non-positive package size.
    #[error("plan `{plan}`, meter `{meter}`: {reason}")]
    InvalidCharge { plan: String, meter: String, reason: String },
    /// A negative or over-precise recurring fee or minimum.
    #[error("plan `{plan}`: {reason}")]
    InvalidFee { plan: String, reason: String },
    /// Rating asked for a meter the plan version does not price (cannot happen after validation).
    #[error("plan `{plan}` does not price meter `{meter}`")]
    NoCharge { plan: String, meter: String },
    /// A product that does not fit exact decimal arithmetic.
    #[error("amount overflow rating meter `{meter}` on plan `{plan}`")]
    Overflow { plan: String, meter: String },
}
