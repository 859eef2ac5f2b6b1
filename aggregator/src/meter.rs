//! Meter definitions and the extraction of measurements from events.

use chrono::{DateTime, TimeZone, Utc};
use meterflow_schemas::{parse_decimal, property_as_text, Properties, RejectReason, UsageEvent};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// How a meter folds the values of a window's events into one quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Aggregation {
    /// Sum of the value property.
    Sum,
    /// Number of events (no value property).
    Count,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Value of the latest event by event time (ties broken by source, then id).
    Latest,
    /// Number of distinct values of the value property.
    UniqueCount,
}

/// Length of a tumbling event-time window, aligned to UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WindowSize {
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One UTC day.
    Day,
}

impl WindowSize {
    /// Window length in seconds.
    pub const fn seconds(self) -> i64 {
        match self {
            WindowSize::Minute => 60,
            WindowSize::Hour => 3_600,
            WindowSize::Day => 86_400,
        }
    }

    /// Start of the window holding `t` (UTC, aligned to the epoch).
    pub fn start_of(self, t: DateTime<Utc>) -> i64 {
        t.timestamp().div_euclid(self.seconds()) * self.seconds()
    }
}

/// One meter, as written in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterConfig {
    /// Meter name, used in tables and price plans (for example `api_calls`).
    pub name: String,
    /// The CloudEvents `type` this meter consumes.
    pub event_type: String,
    /// How values are folded.
    pub aggregation: Aggregation,
    /// Dotted path of the value in `data`; required for all aggregations except COUNT.
    #[serde(default)]
    pub value_property: Option<String>,
    /// Dotted paths in `data` whose values split the meter into dimensions.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Window length.
    pub window: WindowSize,
    /// How long after its end a window still takes events as on time, in seconds (default one
    /// hour). Later events still count, in rows flagged `late`.
    #[serde(default = "default_allowed_lateness_s")]
    pub allowed_lateness_s: u64,
}

const fn default_allowed_lateness_s() -> u64 {
    3_600
}

impl MeterConfig {
    /// The allowed lateness as a duration.
    pub fn allowed_lateness(&self) -> chrono::Duration {
        chrono::Duration::seconds(i64::try_from(self.allowed_lateness_s).unwrap_or(i64::MAX / 2_000))
    }
}

/// A meter definition that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MeterError {
    /// Two meters share a name. Fix the config; retrying cannot help.
    #[error("meter `{0}` is defined twice")]
    DuplicateName(String),
    /// A meter needs a `value_property` for its aggregation.
    #[error("meter `{0}` needs `value_property` for its aggregation")]
    MissingValueProperty(String),
    /// COUNT meters count events and take no value property.
    #[error("meter `{0}` is a COUNT meter and must not set `value_property`")]
    UnexpectedValueProperty(String),
    /// A name or path is empty.
    #[error("meter `{0}` has an empty name, event_type or property path")]
    Empty(String),
}

/// The value an event contributes to a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeasureValue {
    /// A decimal (SUM, MIN, MAX, LATEST).
    Number(Decimal),
    /// A distinct value's text (UNIQUE_COUNT).
    Text(String),
    /// Just the event (COUNT).
    Event,
}

/// What one event contributes to one meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurement {
    /// Index of the meter in [`Meters::configs`].
    pub meter: usize,
    /// Canonical JSON object of the group-by values (keys in config order; missing values null).
    pub dimensions: String,
    /// Window start, seconds since the epoch (UTC).
    pub window_start: i64,
    /// The value.
    pub value: MeasureValue,
}

/// The validated set of meters, indexed by event type.
#[derive(Debug, Clone)]
pub struct Meters {
    configs: Vec<MeterConfig>,
    by_type: HashMap<String, Vec<usize>>,
    /// Per meter, its distinct group-by paths in the order the canonical dimensions object
    /// lists them (the order of a `serde_json` object), each with its JSON-quoted name.
    dimension_keys: Vec<Vec<(String, String)>>,
}

impl Meters {
    /// Validates the meter definitions.
    pub fn new(configs: Vec<MeterConfig>) -> Result<Self, MeterError> {
        let mut by_type: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, m) in configs.iter().enumerate() {
            if m.name.trim().is_empty()
                || m.event_type.trim().is_empty()
                || m.group_by.iter().any(|g| g.trim().is_empty())
            {
                return Err(MeterError::Empty(m.name.clone()));
            }
            if configs[..i].iter().any(|o| o.name == m.name) {
                return Err(MeterError::DuplicateName(m.name.clone()));
            }
            match (m.aggregation, &m.value_property) {
                (Aggregation::Count, Some(_)) => return Err(MeterError::UnexpectedValueProperty(m.name.clone())),
                (Aggregation::Count, None) => {}
                (_, None) => return Err(MeterError::MissingValueProperty(m.name.clone())),
                (_, Some(p)) if p.trim().is_empty() => return Err(MeterError::Empty(m.name.clone())),
                (_, Some(_)) => {}
            }
            by_type.entry(m.event_type.clone()).or_default().push(i);
        }
        let dimension_keys = configs.iter().map(dimension_keys).collect();
        Ok(Meters { configs, by_type, dimension_keys })
    }

    /// The meter definitions, in config order.
    pub fn configs(&self) -> &[MeterConfig] {
        &self.configs
    }

    /// Index of the meter called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.configs.iter().position(|m| m.name == name)
    }

    /// The measurements `event` contributes, one per meter consuming its type. Fails (and the
    /// whole event is rejected) when no meter consumes the type or any meter cannot read its value.
    pub fn extract(&self, event: &UsageEvent) -> Result<Vec<Measurement>, (RejectReason, String)> {
        let Some(indices) = self.by_type.get(&event.event_type) else {
            return Err((
                RejectReason::UnknownType,
                format!("no meter consumes events of type {:?}", event.event_type),
            ));
        };
        let data = Properties::of(event.data.as_deref());
        let mut out = Vec::with_capacity(indices.len());
        for &i in indices {
            let m = &self.configs[i];
            let value = match (m.aggregation, &m.value_property) {
                (Aggregation::Count, _) | (_, None) => MeasureValue::Event,
                (agg, Some(path)) => {
                    let raw = data.get(path).ok_or_else(|| {
                        (RejectReason::MissingValue, format!("meter `{}` needs data.{path}, which is missing", m.name))
                    })?;
                    if agg == Aggregation::UniqueCount {
                        match property_as_text(raw) {
                            Some(t) => MeasureValue::Text(t),
                            None => {
                                return Err((
                                    RejectReason::MissingValue,
                                    format!("meter `{}` needs data.{path}, which is null", m.name),
                                ))
                            }
                        }
                    } else {
                        let d = parse_decimal(raw)
                            .map_err(|(r, detail)| (r, format!("meter `{}`, data.{path}: {detail}", m.name)))?;
                        MeasureValue::Number(d)
                    }
                }
            };
            let dimensions = self.dimensions(i, &data);
            out.push(Measurement { meter: i, dimensions, window_start: m.window.start_of(event.time), value });
        }
        Ok(out)
    }
}

impl Meters {
    /// The canonical JSON object of meter `i`'s group-by values in `data`: the text
    /// `serde_json` writes for an object of path → value text (or null when missing).
    fn dimensions(&self, i: usize, data: &Properties<'_>) -> String {
        let Some(keys) = self.dimension_keys.get(i).filter(|k| !k.is_empty()) else {
            return "{}".to_string();
        };
        let mut out = String::with_capacity(32);
        out.push('{');
        for (n, (path, quoted)) in keys.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            out.push_str(quoted);
            out.push(':');
            match data.get(path).and_then(property_as_text) {
                Some(text) => out.push_str(&serde_json::Value::String(text).to_string()),
                None => out.push_str("null"),
            }
        }
        out.push('}');
        out
    }
}

/// A meter's distinct group-by paths in `serde_json` object order, with their quoted names.
fn dimension_keys(m: &MeterConfig) -> Vec<(String, String)> {
    let object: serde_json::Map<String, serde_json::Value> =
        m.group_by.iter().map(|g| (g.clone(), serde_json::Value::Null)).collect();
    object.keys().map(|k| (k.clone(), serde_json::Value::String(k.clone()).to_string())).collect()
}

/// Converts a window start in seconds to a UTC time (None only for absurd values).
pub(crate) fn to_utc(seconds: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(seconds, 0).single()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_schemas::decode_message;
    use serde_json::value::RawValue;

    fn meters() -> Meters {
        Meters::new(vec![
            MeterConfig {
                name: "api_calls".into(),
                event_type: "api_calls".into(),
                aggregation: Aggregation::Sum,
                value_property: Some("requests".into()),
                group_by: vec!["region".into()],
                window: WindowSize::Hour,
                allowed_lateness_s: 3600,
            },
            MeterConfig {
                name: "api_call_count".into(),
                event_type: "api_calls".into(),
                aggregation: Aggregation::Count,
                value_property: None,
                group_by: vec![],
                window: WindowSize::Day,
                allowed_lateness_s: 3600,
            },
        ])
        .unwrap()
    }

    fn event(data: &str) -> UsageEvent {
        let msg = format!(
            r#"{{"specversion":"1.0","id":"1","source":"s","type":"api_calls","subject":"acme","time":"2026-11-23T05:59:59.999Z","data":{data}}}"#
        );
        decode_message(msg.as_bytes()).events.remove(0)
    }

    #[test]
    fn one_event_feeds_every_meter_of_its_type_in_the_right_window() {
        let ms = meters().extract(&event(r#"{"requests":"2.5","region":"eu"}"#)).unwrap();
        assert_eq!(ms.len(), 2);
        assert_eq!(ms[0].value, MeasureValue::Number("2.5".parse().unwrap()));
        assert_eq!(ms[0].dimensions, r#"{"region":"eu"}"#);
        assert_eq!(to_utc(ms[0].window_start).unwrap().to_rfc3339(), "2026-11-23T05:00:00+00:00");
        assert_eq!(to_utc(ms[1].window_start).unwrap().to_rfc3339(), "2026-11-23T00:00:00+00:00");
        assert_eq!(ms[1].value, MeasureValue::Event);
    }

    #[test]
    fn dimensions_are_the_json_object_serde_json_writes_for_the_group_by_values() {
        let mut configs = meters().configs().to_vec();
        configs[0].group_by = vec!["zone".into(), "region".into(), "a\"b".into(), "region".into(), "n".into()];
        let meters = Meters::new(configs.clone()).unwrap();
        let data = r#"{"requests":1,"zone":"z\u00e9\"q","region":"eu","a\"b":true,"n":null}"#;
        let ms = meters.extract(&event(data)).unwrap();
        let raw = RawValue::from_string(data.to_string()).unwrap();
        let mut expected = serde_json::Map::new();
        for g in &configs[0].group_by {
            let v = meterflow_schemas::lookup_property(Some(&raw), g).and_then(property_as_text);
            expected.insert(g.clone(), v.map_or(serde_json::Value::Null, serde_json::Value::String));
        }
        assert_eq!(ms[0].dimensions, serde_json::Value::Object(expected).to_string());
        assert_eq!(ms[1].dimensions, "{}");
    }

    #[test]
    fn a_missing_group_by_value_is_a_null_dimension() {
        let ms = meters().extract(&event(r#"{"requests":1}"#)).unwrap();
        assert_eq!(ms[0].dimensions, r#"{"region":null}"#);
    }

    #[test]
    fn events_without_their_value_or_with_a_bad_value_are_rejected() {
        assert_eq!(meters().extract(&event(r#"{"region":"eu"}"#)).unwrap_err().0, RejectReason::MissingValue);
        assert_eq!(meters().extract(&event(r#"{"requests":"lots"}"#)).unwrap_err().0, RejectReason::InvalidValue);
        assert_eq!(meters().extract(&event(r#"{"requests":-1}"#)).unwrap_err().0, RejectReason::NegativeValue);
    }

    #[test]
    fn an_event_type_no_meter_consumes_is_rejected_as_unknown_type() {
        let mut e = event("{}");
        e.event_type = "nope".into();
        assert_eq!(meters().extract(&e).unwrap_err().0, RejectReason::UnknownType);
    }

    #[test]
    fn invalid_meter_definitions_are_refused() {
        let mut m = meters().configs().to_vec();
        m[1].name = "api_calls".into();
        assert_eq!(Meters::new(m).unwrap_err(), MeterError::DuplicateName("api_calls".into()));
        let mut m = meters().configs().to_vec();
        m[0].value_property = None;
        assert!(matches!(Meters::new(m).unwrap_err(), MeterError::MissingValueProperty(_)));
    }

    #[test]
    fn windows_before_the_epoch_align_downwards() {
        let t = Utc.timestamp_opt(-1, 0).unwrap();
        assert_eq!(WindowSize::Hour.start_of(t), -3600);
    }
}
