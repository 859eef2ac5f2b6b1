//! OpenMeter-compatible meters: `GET /api/v1/meters`, `/meters/{meterIdOrSlug}`,
//! `/meters/{meterIdOrSlug}/query` and `/meters/{meterIdOrSlug}/subjects`.
//!
//! Meters are the config's `[[meters]]` (id and slug are the meter's name). A query reads the
//! committed `usage_summaries` (window values: the sum of a window's usage, late and adjustment
//! rows, as `window_totals` and the invoices count them) and folds the meter's windows into
//! the requested ones with [`fold`], a pure function:
//!
//! * SUM and COUNT add up; MIN and MAX take the smallest and largest window value; LATEST the
//!   value of the latest window; UNIQUE_COUNT cannot be combined (distinct values of two windows
//!   may overlap), so it is answered only where no two windows or groups fall together;
//! * a requested window must be made of whole meter windows (no finer `windowSize` than the
//!   meter's; a `windowTimeZone` whose day or hour boundaries cut a meter window is refused);
//! * a meter window counts when it starts inside `[from, to)`.
//!
//! Values are exact decimals written as JSON numbers with their exact decimal text (never
//! through a float): `0.3` is sent as `0.3`. Freshness: the answer reads the tables as of
//! `X-Meterflow-Fresh-As-Of` (at most `[api] table_refresh_ms` old), at the `usage_summaries`
//! version in `X-Meterflow-Table-Version`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Duration, LocalResult, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use meterflow_aggregator::{Aggregation, MeterConfig, WindowSize};
use meterflow_sink::sql::ScalarValue;
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::problem::Problem;
use crate::state::{Api, Tables};

/// A meter as OpenMeter describes one.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Meter {
    /// The meter's name.
    pub id: String,
    /// The meter's name.
    pub slug: String,
    /// Not kept by meterflow.
    pub description: Option<String>,
    /// SUM, COUNT, MIN, MAX, LATEST or UNIQUE_COUNT.
    pub aggregation: Aggregation,
    /// The CloudEvents type it consumes.
    pub event_type: String,
    /// JSONPath of the value in `data` (`$.tokens`).
    pub value_property: Option<String>,
    /// Dimension name → JSONPath in `data`.
    pub group_by: BTreeMap<String, String>,
    /// Its window.
    pub window_size: WindowSize,
}

impl Meter {
    /// The description of a configured meter.
    pub fn of(m: &MeterConfig) -> Meter {
        Meter {
            id: m.name.clone(),
            slug: m.name.clone(),
            description: None,
            aggregation: m.aggregation,
            event_type: m.event_type.clone(),
            value_property: m.value_property.as_ref().map(|p| format!("$.{p}")),
            group_by: m.group_by.iter().map(|g| (g.clone(), format!("$.{g}"))).collect(),
            window_size: m.window,
        }
    }
}

/// One window value read from the tables.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowValue {
    /// Usage subject.
    pub subject: String,
    /// Dimension values.
    pub dimensions: BTreeMap<String, String>,
    /// Window start.
    pub start: DateTime<Utc>,
    /// Window end.
    pub end: DateTime<Utc>,
    /// The window's value.
    pub value: Decimal,
}

/// What a query asks, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct QuerySpec {
    /// From (inclusive), when given.
    pub from: Option<DateTime<Utc>>,
    /// To (exclusive), when given.
    pub to: Option<DateTime<Utc>>,
    /// Requested window; `None`: one value over the whole range.
    pub window: Option<WindowSize>,
    /// The time zone windows are cut in.
    pub tz: Tz,
    /// Subjects to keep; empty: all.
    pub subjects: BTreeSet<String>,
    /// Dimensions to group by (`subject` among them groups by subject).
    pub group_by: Vec<String>,
    /// Dimension values to keep.
    pub filter: BTreeMap<String, String>,
}

impl QuerySpec {
    /// Whether rows are split by subject.
    fn by_subject(&self) -> bool {
        !self.subjects.is_empty() || self.group_by.iter().any(|g| g == "subject")
    }
}

/// One answered window.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// The value, as an exact JSON number.
    #[serde(serialize_with = "exact_number")]
    pub value: Decimal,
    /// Window start.
    pub window_start: DateTime<Utc>,
    /// Window end.
    pub window_end: DateTime<Utc>,
    /// The subject, when split by subject.
    pub subject: Option<String>,
    /// The grouped dimensions' values.
    pub group_by: BTreeMap<String, Option<String>>,
}

/// Writes a decimal as a JSON number with its exact decimal text.
fn exact_number<S: serde::Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    let raw = RawValue::from_string(d.normalize().to_string()).map_err(serde::ser::Error::custom)?;
    raw.serialize(s)
}

/// The answer of a meter query.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryResult {
    /// The `from` asked.
    pub from: Option<DateTime<Utc>>,
    /// The `to` asked.
    pub to: Option<DateTime<Utc>>,
    /// The window asked.
    pub window_size: Option<WindowSize>,
    /// The windows.
    pub data: Vec<Row>,
}

/// The requested window (in `tz`) holding meter window `[start, end)`, or why none does.
pub fn target_window(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    size: WindowSize,
    tz: Tz,
) -> Result<(DateTime<Utc>, DateTime<Utc>), String> {
    let local = start.with_timezone(&tz);
    let naive = local.naive_local();
    let (first, next) = match size {
        WindowSize::Day => {
            let day = naive.date();
            let next = day.succ_opt().ok_or("date out of range")?;
            (day.and_time(NaiveTime::MIN), next.and_time(NaiveTime::MIN))
        }
        WindowSize::Hour | WindowSize::Minute => {
            let step = size.seconds();
            let secs = naive.and_utc().timestamp();
            let s = secs.div_euclid(step) * step;
            let f = DateTime::from_timestamp(s, 0).ok_or("time out of range")?.naive_utc();
            (f, f + Duration::seconds(step))
        }
    };
    let resolve = |n: chrono::NaiveDateTime| match tz.from_local_datetime(&n) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, _) => Some(a.with_timezone(&Utc)),
        // A local midnight skipped by a DST change: the day starts at the first instant after.
        LocalResult::None => {
            tz.from_local_datetime(&(n + Duration::hours(1))).earliest().map(|t| t.with_timezone(&Utc))
        }
    };
    let (ws, we) = (resolve(first).ok_or("time out of range")?, resolve(next).ok_or("time out of range")?);
    if start < ws || end > we {
        return Err(format!(
            "the meter window {}..{} is cut by a {} boundary in {tz}: query in a time zone whose boundaries \
             fall on the meter's windows",
            start.to_rfc3339(),
            end.to_rfc3339(),
            window_name(size)
        ));
    }
    Ok((ws, we))
}

fn window_name(w: WindowSize) -> &'static str {
    match w {
        WindowSize::Minute => "MINUTE",
        WindowSize::Hour => "HOUR",
        WindowSize::Day => "DAY",
    }
}

type GroupKey = (Option<(DateTime<Utc>, DateTime<Utc>)>, Option<String>, Vec<Option<String>>);

/// Folds the meter's window values into the requested windows and groups.
pub fn fold(values: &[WindowValue], meter: &MeterConfig, spec: &QuerySpec) -> Result<Vec<Row>, String> {
    let by_subject = spec.by_subject();
    let dims: Vec<&String> = spec.group_by.iter().filter(|g| g.as_str() != "subject").collect();
    // Per group: (value, latest window start, windows combined).
    let mut groups: BTreeMap<GroupKey, (Decimal, DateTime<Utc>, usize)> = BTreeMap::new();
    let mut span: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    for v in values {
        if spec.from.is_some_and(|f| v.start < f) || spec.to.is_some_and(|t| v.start >= t) {
            continue;
        }
        if !spec.subjects.is_empty() && !spec.subjects.contains(&v.subject) {
            continue;
        }
        if spec.filter.iter().any(|(k, want)| v.dimensions.get(k) != Some(want)) {
            continue;
        }
        let window = match spec.window {
            Some(size) => Some(target_window(v.start, v.end, size, spec.tz)?),
            None => None,
        };
        span = Some(span.map_or((v.start, v.end), |(a, b)| (a.min(v.start), b.max(v.end))));
        let key: GroupKey = (
            window,
            by_subject.then(|| v.subject.clone()),
            dims.iter().map(|d| v.dimensions.get(*d).cloned()).collect(),
        );
        match groups.get_mut(&key) {
            None => {
                groups.insert(key, (v.value, v.start, 1));
            }
            Some((acc, latest, n)) => {
                *n += 1;
                match meter.aggregation {
                    Aggregation::Sum | Aggregation::Count => {
                        *acc = acc.checked_add(v.value).ok_or("the total is too large to add up exactly")?
                    }
                    Aggregation::Min => *acc = (*acc).min(v.value),
                    Aggregation::Max => *acc = (*acc).max(v.value),
                    Aggregation::Latest => {
                        if v.start > *latest {
                            *acc = v.value;
                            *latest = v.start;
                        }
                    }
                    Aggregation::UniqueCount => {
                        return Err(format!(
                            "meter `{}` counts distinct values, which cannot be combined across windows or \
                             groups: query it with windowSize={} and groupBy every dimension ({})",
                            meter.name,
                            window_name(meter.window),
                            meter.group_by.join(", ")
                        ))
                    }
                }
            }
        }
    }
    let mut rows: Vec<Row> = groups
        .into_iter()
        .map(|((window, subject, values), (value, _, _))| {
            let (ws, we) = window.unwrap_or_else(|| {
                let (a, b) = span.unwrap_or((Utc::now(), Utc::now()));
                (spec.from.unwrap_or(a), spec.to.unwrap_or(b))
            });
            Row {
                value,
                window_start: ws,
                window_end: we,
                subject,
                group_by: dims.iter().map(|d| d.to_string()).zip(values).collect(),
            }
        })
        .collect();
    rows.sort_by(|a, b| (a.window_start, &a.subject, &a.group_by).cmp(&(b.window_start, &b.subject, &b.group_by)));
    Ok(rows)
}

fn parse_time(name: &str, v: &str) -> Result<DateTime<Utc>, Problem> {
    DateTime::parse_from_rfc3339(v).map(|t| t.with_timezone(&Utc)).map_err(|e| {
        Problem::bad_request("invalid_parameter", format!("{name}={v:?} is not an RFC 3339 date-time: {e}"))
    })
}

/// Reads a query string into a [`QuerySpec`] for `meter`.
pub fn parse_query(raw: Option<&str>, meter: &MeterConfig) -> Result<QuerySpec, Problem> {
    let mut spec = QuerySpec {
        from: None,
        to: None,
        window: None,
        tz: Tz::UTC,
        subjects: BTreeSet::new(),
        group_by: Vec::new(),
        filter: BTreeMap::new(),
    };
    let bad = |d: String| Problem::bad_request("invalid_parameter", d);
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "from" => spec.from = Some(parse_time("from", &v)?),
            "to" => spec.to = Some(parse_time("to", &v)?),
            "windowSize" => {
                spec.window = Some(match v.as_ref() {
                    "MINUTE" => WindowSize::Minute,
                    "HOUR" => WindowSize::Hour,
                    "DAY" => WindowSize::Day,
                    other => return Err(bad(format!("windowSize={other:?}: use MINUTE, HOUR or DAY"))),
                })
            }
            "windowTimeZone" => {
                spec.tz = v.parse::<Tz>().map_err(|_| {
                    bad(format!("windowTimeZone={v:?} is not an IANA time zone name (like Europe/Berlin)"))
                })?
            }
            "subject" => {
                spec.subjects.insert(v.into_owned());
            }
            "groupBy" => spec.group_by.push(v.into_owned()),
            "clientId" => {}
            k if k.starts_with("filterGroupBy[") && k.ends_with(']') => {
                let name = &k["filterGroupBy[".len()..k.len() - 1];
                spec.filter.insert(name.to_string(), v.into_owned());
            }
            other => {
                return Err(bad(format!(
                    "unknown query parameter {other:?}: the parameters are from, to, windowSize, \
                     windowTimeZone, subject, groupBy and filterGroupBy[name]"
                )))
            }
        }
    }
    let known = |g: &str| meter.group_by.iter().any(|m| m == g);
    for g in spec.group_by.iter().chain(spec.filter.keys()) {
        if g != "subject" && !known(g) {
            return Err(bad(format!(
                "meter `{}` has no dimension {g:?}; its dimensions: {}",
                meter.name,
                if meter.group_by.is_empty() { "(none)".into() } else { meter.group_by.join(", ") }
            )));
        }
    }
    if let (Some(f), Some(t)) = (spec.from, spec.to) {
        if f >= t {
            return Err(bad(format!("from ({}) must be before to ({})", f.to_rfc3339(), t.to_rfc3339())));
        }
    }
    if let Some(w) = spec.window {
        if w.seconds() < meter.window.seconds() {
            return Err(bad(format!(
                "windowSize={} is finer than meter `{}`'s {} windows: use {} or coarser",
                window_name(w),
                meter.name,
                window_name(meter.window),
                window_name(meter.window)
            )));
        }
    }
    Ok(spec)
}

fn find_meter<'a>(api: &'a Api, id: &str) -> Result<&'a MeterConfig, Problem> {
    api.config.meters.iter().find(|m| m.name == id).ok_or_else(|| {
        let names: Vec<&str> = api.config.meters.iter().map(|m| m.name.as_str()).collect();
        Problem::not_found(format!("no meter {id:?}; the meters: {}", names.join(", ")))
    })
}

fn freshness(t: &Tables) -> [(&'static str, HeaderValue); 2] {
    let version = HeaderValue::from(t.summaries_version());
    let at = HeaderValue::from_str(&t.read_at.to_rfc3339()).unwrap_or(HeaderValue::from_static(""));
    [("x-meterflow-table-version", version), ("x-meterflow-fresh-as-of", at)]
}

/// `GET /api/v1/meters`
pub async fn list(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    match api.authenticate(&headers).await {
        Ok(_) => Json(api.config.meters.iter().map(Meter::of).collect::<Vec<_>>()).into_response(),
        Err(p) => p.into_response(),
    }
}

/// `GET /api/v1/meters/{meterIdOrSlug}`
pub async fn get(State(api): State<Arc<Api>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let found = async {
        api.authenticate(&headers).await?;
        find_meter(&api, &id).map(Meter::of)
    };
    match found.await {
        Ok(m) => Json(m).into_response(),
        Err(p) => p.into_response(),
    }
}

/// The window values of `meter` from the tables (only what `scope` reaches).
async fn window_values(t: &Tables, meter: &str, spec: &QuerySpec) -> Result<Vec<WindowValue>, Problem> {
    if !t.sql.tables.iter().any(|n| n == "usage_summaries") {
        return Ok(Vec::new());
    }
    let mut sql = String::from(
        "SELECT subject, dimensions, CAST(window_start AS BIGINT), CAST(window_end AS BIGINT), SUM(quantity) \
         FROM usage_summaries WHERE meter = $1 AND row_kind IN ('usage', 'late', 'adjustment')",
    );
    let mut params = vec![ScalarValue::Utf8(Some(meter.to_string()))];
    let mut param = |sql: &mut String, clause: &str, v: ScalarValue| {
        params.push(v);
        sql.push_str(&clause.replace('?', &format!("${}", params.len())));
    };
    // Instants as typed timestamp parameters (no text to parse, any year chrono accepts).
    let instant = |t: DateTime<Utc>| ScalarValue::TimestampMicrosecond(Some(t.timestamp_micros()), Some("UTC".into()));
    if let Some(f) = spec.from {
        param(&mut sql, " AND window_start >= ?", instant(f));
    }
    if let Some(to) = spec.to {
        param(&mut sql, " AND window_start < ?", instant(to));
    }
    if !spec.subjects.is_empty() {
        let mut list = Vec::new();
        for s in &spec.subjects {
            params.push(ScalarValue::Utf8(Some(s.clone())));
            list.push(format!("${}", params.len()));
        }
        sql.push_str(&format!(" AND subject IN ({})", list.join(", ")));
    }
    sql.push_str(" GROUP BY subject, dimensions, window_start, window_end");
    let rows = t.sql.rows(&sql, &params).await.map_err(Problem::internal)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows.iter() {
        let micros = |c: usize| -> Result<DateTime<Utc>, Problem> {
            let v = r.int(c).map_err(Problem::internal)?;
            DateTime::from_timestamp_micros(v).ok_or_else(|| Problem::internal("window time out of range"))
        };
        let dims_text = r.text(1).map_err(Problem::internal)?;
        let dims: BTreeMap<String, serde_json::Value> = serde_json::from_str(&dims_text).unwrap_or_default();
        let dimensions =
            dims.into_iter().map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_string))).collect();
        out.push(WindowValue {
            subject: r.text(0).map_err(Problem::internal)?,
            dimensions,
            start: micros(2)?,
            end: micros(3)?,
            value: r.dec(4).map_err(Problem::internal)?,
        });
    }
    Ok(out)
}

/// `GET /api/v1/meters/{meterIdOrSlug}/query`
pub async fn query(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let answer = async {
        let key = api.authenticate(&headers).await?;
        let meter = find_meter(&api, &id)?;
        let spec = parse_query(raw.as_deref(), meter)?;
        let tables = api.sql(&key.scope()).await?;
        let values = window_values(&tables, &meter.name, &spec).await?;
        let data = fold(&values, meter, &spec).map_err(|e| Problem::bad_request("invalid_query", e))?;
        let result = QueryResult { from: spec.from, to: spec.to, window_size: spec.window, data };
        Ok::<_, Problem>((freshness(&tables), Json(result)))
    };
    match answer.await {
        Ok((h, body)) => {
            let mut r = body.into_response();
            for (k, v) in h {
                r.headers_mut().insert(k, v);
            }
            r
        }
        Err(p) => p.into_response(),
    }
}

/// `GET /api/v1/meters/{meterIdOrSlug}/subjects`
pub async fn subjects(State(api): State<Arc<Api>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let answer = async {
        let key = api.authenticate(&headers).await?;
        let meter = find_meter(&api, &id)?;
        let tables = api.sql(&key.scope()).await?;
        if !tables.sql.tables.iter().any(|n| n == "usage_summaries") {
            return Ok(Vec::new());
        }
        let sql = "SELECT DISTINCT subject FROM usage_summaries WHERE meter = $1 ORDER BY subject";
        let rows =
            tables.sql.rows(sql, &[ScalarValue::Utf8(Some(meter.name.clone()))]).await.map_err(Problem::internal)?;
        rows.iter().map(|r| r.text(0).map_err(Problem::internal)).collect::<Result<Vec<String>, Problem>>()
    };
    match answer.await {
        Ok(s) => Json(s).into_response(),
        Err(p) => p.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter(aggregation: Aggregation, window: WindowSize) -> MeterConfig {
        MeterConfig {
            name: "tokens".into(),
            event_type: "llm".into(),
            aggregation,
            value_property: Some("tokens".into()),
            group_by: vec!["model".into()],
            window,
            allowed_lateness_s: 3600,
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn hour(subject: &str, model: &str, start: &str, value: &str) -> WindowValue {
        let start = t(start);
        WindowValue {
            subject: subject.into(),
            dimensions: [("model".to_string(), model.to_string())].into(),
            start,
            end: start + Duration::hours(1),
            value: value.parse().unwrap(),
        }
    }

    fn spec(raw: &str, m: &MeterConfig) -> QuerySpec {
        parse_query(Some(raw), m).unwrap()
    }

    #[test]
    fn hours_add_up_into_days_exactly() {
        let m = meter(Aggregation::Sum, WindowSize::Hour);
        let values = [
            hour("a", "x", "2026-11-02T00:00:00Z", "0.1"),
            hour("a", "y", "2026-11-02T05:00:00Z", "0.2"),
            hour("a", "x", "2026-11-03T00:00:00Z", "1"),
        ];
        let rows = fold(&values, &m, &spec("windowSize=DAY", &m)).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].value, "0.3".parse::<Decimal>().unwrap());
        assert_eq!(rows[0].window_start, t("2026-11-02T00:00:00Z"));
        assert_eq!(rows[0].window_end, t("2026-11-03T00:00:00Z"));
        let json = serde_json::to_string(&rows[0]).unwrap();
        assert!(json.starts_with(r#"{"value":0.3,"#), "{json}");
    }

    #[test]
    fn days_are_cut_in_the_requested_time_zone() {
        let m = meter(Aggregation::Sum, WindowSize::Hour);
        // 23:00 UTC on Nov 1 is Nov 2 in Berlin (UTC+1).
        let values = [hour("a", "x", "2026-11-01T23:00:00Z", "2"), hour("a", "x", "2026-11-02T10:00:00Z", "3")];
        let rows = fold(&values, &m, &spec("windowSize=DAY&windowTimeZone=Europe/Berlin", &m)).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].value, Decimal::from(5));
        assert_eq!(rows[0].window_start, t("2026-11-01T23:00:00Z"));
    }

    #[test]
    fn a_time_zone_that_cuts_meter_windows_is_refused() {
        let m = meter(Aggregation::Sum, WindowSize::Hour);
        let values = [hour("a", "x", "2026-11-02T10:00:00Z", "3")];
        let err = fold(&values, &m, &spec("windowSize=HOUR&windowTimeZone=Asia/Kolkata", &m)).unwrap_err();
        assert!(err.contains("cut"), "{err}");
    }

    #[test]
    fn grouping_filtering_and_subjects_split_the_answer() {
        let m = meter(Aggregation::Sum, WindowSize::Hour);
        let values = [
            hour("a", "x", "2026-11-02T00:00:00Z", "1"),
            hour("b", "x", "2026-11-02T00:00:00Z", "2"),
            hour("a", "y", "2026-11-02T01:00:00Z", "4"),
        ];
        let rows = fold(&values, &m, &spec("groupBy=model", &m)).unwrap();
        assert_eq!(rows.iter().map(|r| r.value).collect::<Vec<_>>(), vec![Decimal::from(3), Decimal::from(4)]);
        assert_eq!(rows[0].subject, None);
        let rows = fold(&values, &m, &spec("subject=a&filterGroupBy%5Bmodel%5D=x", &m)).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].value, Decimal::from(1));
        assert_eq!(rows[0].subject.as_deref(), Some("a"));
    }

    #[test]
    fn max_and_latest_combine_windows_by_their_rules() {
        let values = [hour("a", "x", "2026-11-02T00:00:00Z", "7"), hour("a", "x", "2026-11-02T01:00:00Z", "3")];
        let max = meter(Aggregation::Max, WindowSize::Hour);
        assert_eq!(fold(&values, &max, &spec("windowSize=DAY", &max)).unwrap()[0].value, Decimal::from(7));
        let latest = meter(Aggregation::Latest, WindowSize::Hour);
        assert_eq!(fold(&values, &latest, &spec("windowSize=DAY", &latest)).unwrap()[0].value, Decimal::from(3));
    }

    #[test]
    fn unique_counts_are_never_added_up() {
        let m = meter(Aggregation::UniqueCount, WindowSize::Hour);
        let values = [hour("a", "x", "2026-11-02T00:00:00Z", "7"), hour("a", "x", "2026-11-02T01:00:00Z", "3")];
        assert!(fold(&values, &m, &spec("windowSize=DAY", &m)).is_err());
        assert_eq!(fold(&values, &m, &spec("windowSize=HOUR&groupBy=model", &m)).unwrap().len(), 2);
    }

    #[test]
    fn bad_parameters_are_named() {
        let m = meter(Aggregation::Sum, WindowSize::Hour);
        for (raw, says) in [
            ("windowSize=MINUTE", "finer"),
            ("groupBy=region", "no dimension"),
            ("from=yesterday", "RFC 3339"),
            ("from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z", "before"),
            ("windowTimeZone=Mars/Olympus", "IANA"),
            ("limit=3", "unknown query parameter"),
        ] {
            let p = parse_query(Some(raw), &m).unwrap_err();
            assert_eq!(p.status, 400);
            assert!(p.detail.contains(says), "{raw}: {}", p.detail);
        }
    }

    #[test]
    fn windows_count_when_they_start_inside_from_to() {
        let m = meter(Aggregation::Sum, WindowSize::Hour);
        let values = [hour("a", "x", "2026-11-02T00:00:00Z", "1"), hour("a", "x", "2026-11-02T01:00:00Z", "2")];
        let rows = fold(&values, &m, &spec("from=2026-11-02T00:30:00Z&to=2026-11-03T00:00:00Z", &m)).unwrap();
        assert_eq!(rows[0].value, Decimal::from(2));
        assert_eq!(rows[0].window_start, t("2026-11-02T00:30:00Z"));
    }
}
