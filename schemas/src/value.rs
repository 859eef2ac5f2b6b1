//! Exact reading of meter values and properties from an event's raw JSON `data`.

use rust_decimal::Decimal;
use serde_json::value::RawValue;
use std::borrow::Cow;

use crate::reject::RejectReason;

/// The largest number of fractional digits a meter value may carry. The tables store quantities
/// as DECIMAL(38, 9), so anything finer could not be stored exactly and is rejected instead of
/// being rounded silently.
pub const MAX_VALUE_SCALE: u32 = 9;

/// The largest meter value one event may carry: 10^15 (a quadrillion requests, tokens or
/// bytes). Larger values are rejected as [`RejectReason::ValueOutOfRange`]: with 9 fractional
/// digits they still fit the tables one by one, and the bound keeps the sums of many of them far
/// from what exact decimals (28 digits) and the DECIMAL(38, 9) column can hold.
pub const MAX_EVENT_VALUE: Decimal = Decimal::from_parts(2_764_472_320, 232_830, 0, false, 0);

/// Parses `YYYY-MM-DD` (midnight UTC) or an RFC 3339 time, as reference data writes instants.
pub fn parse_instant(value: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        return d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    }
    chrono::DateTime::parse_from_rfc3339(value).ok().map(|t| t.with_timezone(&chrono::Utc))
}

/// Reads an exact decimal from the raw JSON text of a value: a JSON number (`12`, `0.5`,
/// `1.5e3`) or a string holding a decimal (`"12.25"`). The text is parsed directly into a
/// [`Decimal`]; it never passes through a float.
///
/// Errors: [`RejectReason::InvalidValue`] for anything that is not an exact decimal (booleans,
/// objects, `"NaN"`, numbers beyond 28 significant digits), [`RejectReason::NegativeValue`] for
/// values below zero, [`RejectReason::ValueTooPrecise`] beyond [`MAX_VALUE_SCALE`] fractional digits,
/// [`RejectReason::ValueOutOfRange`] above [`MAX_EVENT_VALUE`].
pub fn parse_decimal(raw: &RawValue) -> Result<Decimal, (RejectReason, String)> {
    let text = raw.get().trim();
    let number_text: Cow<'_, str> = if text.starts_with('"') {
        match serde_json::from_str::<Cow<'_, str>>(text) {
            Ok(s) => s,
            Err(_) => return Err((RejectReason::InvalidValue, format!("unreadable string {text}"))),
        }
    } else {
        Cow::Borrowed(text)
    };
    let s = number_text.as_ref();
    let looks_numeric = !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
        && s.bytes().any(|b| b.is_ascii_digit());
    if !looks_numeric {
        return Err((RejectReason::InvalidValue, format!("{text} is not a decimal number")));
    }
    let parsed = if s.contains(['e', 'E']) { Decimal::from_scientific(s) } else { Decimal::from_str_exact(s) };
    let value = parsed.map_err(|e| (RejectReason::InvalidValue, format!("{text} is not an exact decimal: {e}")))?;
    if value.is_sign_negative() && !value.is_zero() {
        return Err((RejectReason::NegativeValue, format!("{text} is negative")));
    }
    let value = value.normalize();
    if value > MAX_EVENT_VALUE {
        return Err((
            RejectReason::ValueOutOfRange,
            format!("{text} is above the largest value one event may carry ({MAX_EVENT_VALUE})"),
        ));
    }
    if value.scale() > MAX_VALUE_SCALE {
        return Err((
            RejectReason::ValueTooPrecise,
            format!("{text} has more than {MAX_VALUE_SCALE} fractional digits"),
        ));
    }
    Ok(value)
}

/// Finds a property in an event's raw `data` object by a dotted path (`requests`,
/// `usage.tokens`; a leading `$.` is accepted as in OpenMeter's JSONPath). Returns `None` when
/// `data` is absent, not an object, or the path does not exist. When a name appears more than
/// once in an object, the last one counts. To read several properties of one event, parse its
/// `data` once with [`Properties::of`].
pub fn lookup_property<'a>(data: Option<&'a RawValue>, path: &str) -> Option<&'a RawValue> {
    Properties::of(data).get(path)
}

/// The top-level members of an event's `data` object, parsed once so that each meter value and
/// group-by dimension is a scan of a few members instead of a parse of the whole object.
#[derive(Debug, Default)]
pub struct Properties<'a> {
    members: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> Properties<'a> {
    /// The members of `data`; none when it is absent or not a JSON object.
    pub fn of(data: Option<&'a RawValue>) -> Properties<'a> {
        Properties { members: data.and_then(members).unwrap_or_default() }
    }

    /// The value at a dotted path (see [`lookup_property`]); nested objects are parsed on demand.
    pub fn get(&self, path: &str) -> Option<&'a RawValue> {
        let path = path.strip_prefix("$.").unwrap_or(path);
        let mut parts = path.split('.');
        let first = parts.next()?;
        let mut current = last_named(&self.members, first)?;
        for part in parts {
            current = last_named(&members(current)?, part)?;
        }
        Some(current)
    }
}

/// The members of a JSON object in order, or `None` when `raw` is not an object.
fn members(raw: &RawValue) -> Option<Vec<(Cow<'_, str>, &RawValue)>> {
    if !raw.get().trim_start().starts_with('{') {
        return None;
    }
    let object: ObjectMembers<'_> = serde_json::from_str(raw.get()).ok()?;
    Some(object.0)
}

fn last_named<'a>(members: &[(Cow<'a, str>, &'a RawValue)], name: &str) -> Option<&'a RawValue> {
    members.iter().rev().find(|(k, _)| k == name).map(|(_, v)| *v)
}

/// A JSON object's members, borrowed from its text, duplicates kept.
struct ObjectMembers<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for ObjectMembers<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> serde::de::Visitor<'de> for MembersVisitor {
            type Value = ObjectMembers<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(4));
                while let Some(entry) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    out.push(entry);
                }
                Ok(ObjectMembers(out))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

/// The text of a scalar property, for group-by dimensions and unique counting: strings as their
/// content, numbers and booleans as their JSON text, `null` as `None`. Objects and arrays are
/// returned as their compact JSON text so that they still group deterministically.
pub fn property_as_text(raw: &RawValue) -> Option<String> {
    let text = raw.get().trim();
    if text == "null" {
        return None;
    }
    if text.starts_with('"') {
        return serde_json::from_str::<String>(text).ok();
    }
    Some(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn a_value_at_the_per_event_bound_is_accepted_and_one_just_above_it_is_out_of_range() {
        assert_eq!(MAX_EVENT_VALUE.to_string(), "1000000000000000");
        assert_eq!(parse_decimal(&raw("1000000000000000")).unwrap(), MAX_EVENT_VALUE);
        assert_eq!(parse_decimal(&raw("\"1e15\"")).unwrap(), MAX_EVENT_VALUE);
        for above in ["1000000000000000.000000001", "\"1e26\"", "1e26", "79000000000000000000000000000"] {
            let (reason, detail) = parse_decimal(&raw(above)).unwrap_err();
            assert_eq!(reason, RejectReason::ValueOutOfRange, "{above}: {detail}");
        }
    }

    #[test]
    fn numbers_and_decimal_strings_parse_exactly() {
        assert_eq!(parse_decimal(&raw("3")).unwrap().to_string(), "3");
        assert_eq!(parse_decimal(&raw("\"0.1\"")).unwrap().to_string(), "0.1");
        assert_eq!(parse_decimal(&raw("0.30000000000000004")).unwrap_err().0, RejectReason::ValueTooPrecise);
        assert_eq!(parse_decimal(&raw("1.5e3")).unwrap().to_string(), "1500");
        assert_eq!(parse_decimal(&raw("123456789012345.000000001")).unwrap().to_string(), "123456789012345.000000001");
        // Beyond 28 significant digits a decimal cannot be held exactly: rejected, not rounded.
        assert_eq!(parse_decimal(&raw("99999999999999999999.000000001")).unwrap_err().0, RejectReason::InvalidValue);
    }

    #[test]
    fn a_float_round_trip_would_change_this_value_but_parsing_does_not() {
        // 0.1 + 0.2 in f64 is 0.30000000000000004; exact decimals add to 0.3.
        let a = parse_decimal(&raw("0.1")).unwrap();
        let b = parse_decimal(&raw("\"0.2\"")).unwrap();
        assert_eq!((a + b).to_string(), "0.3");
    }

    #[test]
    fn non_numbers_are_invalid_values() {
        for bad in ["true", "null", "{}", "[1]", "\"NaN\"", "\"\"", "\"12abc\"", "\"1,5\""] {
            assert_eq!(parse_decimal(&raw(bad)).unwrap_err().0, RejectReason::InvalidValue, "{bad}");
        }
    }

    #[test]
    fn negative_values_are_rejected_but_negative_zero_is_zero() {
        assert_eq!(parse_decimal(&raw("-1")).unwrap_err().0, RejectReason::NegativeValue);
        assert!(parse_decimal(&raw("-0")).unwrap().is_zero());
    }

    #[test]
    fn dotted_paths_reach_nested_properties() {
        let data = raw(r#"{"usage":{"tokens":"42"},"region":"eu"}"#);
        assert_eq!(lookup_property(Some(&data), "usage.tokens").unwrap().get(), "\"42\"");
        assert_eq!(lookup_property(Some(&data), "$.region").unwrap().get(), "\"eu\"");
        assert!(lookup_property(Some(&data), "usage.missing").is_none());
        assert!(lookup_property(None, "region").is_none());
    }

    #[test]
    fn the_last_of_repeated_names_counts_as_in_a_json_map() {
        let data = raw(r#"{"region":"us","usage":{"tokens":1,"tokens":2},"region":"eu"}"#);
        let props = Properties::of(Some(&data));
        assert_eq!(props.get("region").unwrap().get(), "\"eu\"");
        assert_eq!(props.get("usage.tokens").unwrap().get(), "2");
        assert!(props.get("region.inner").is_none());
        assert!(Properties::of(Some(&raw("[1,2]"))).get("0").is_none());
        assert!(Properties::of(Some(&raw("\"text\""))).get("text").is_none());
    }
}
