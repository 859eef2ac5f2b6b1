//! A synthetic but realistic usage workload for the example config, with an exact oracle.
//!
//! The workload uses the four meters and two customers of `examples/meterflow.toml`. It mixes
//! single-event and batch-mode messages, decimal values sent as JSON numbers and as strings,
//! duplicates re-published much later without `Nats-Msg-Id` and with a changed `time`, quick
//! retries with the same `Nats-Msg-Id` (dropped by the broker), malformed events of several
//! kinds and an unknown subject. The [`Oracle`] is computed independently of the pipeline code,
//! straight from the generated events.

use anyhow::{Context, Result};
use async_nats::jetstream;
use chrono::{DateTime, Duration, Utc};
use meterflow_rater::{pricing_at, Period, PriceBook};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::config::Reference;

/// What to generate.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// Distinct valid events (before duplicates and bad ones are added).
    pub events: usize,
    /// Events per message (1 = one event per message, more = CloudEvents batch mode).
    pub batch_size: usize,
    /// Every n-th valid event is re-published later as a duplicate (0 = none).
    pub duplicate_every: usize,
    /// Every n-th message is followed by a malformed one (0 = none).
    pub bad_every: usize,
    /// Seed of the deterministic generator.
    pub seed: u64,
    /// Event times fall in the 48 hours from this instant (default: midnight UTC four days ago,
    /// so that the whole workload is in the past and well within the backdating limit).
    pub base_time: DateTime<Utc>,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            events: 2_000,
            batch_size: 1,
            duplicate_every: 10,
            bad_every: 50,
            seed: 42,
            base_time: days_ago(4),
        }
    }
}

/// Midnight UTC `n` days before today.
pub fn days_ago(n: i64) -> DateTime<Utc> {
    let today = Utc::now().timestamp().div_euclid(86_400) * 86_400;
    DateTime::from_timestamp(today - n * 86_400, 0).unwrap_or_default()
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct OutMessage {
    /// Subject (under `usage.`).
    pub subject: String,
    /// Bytes.
    pub payload: Vec<u8>,
    /// `Nats-Msg-Id`, when the publisher sets one.
    pub msg_id: Option<String>,
}

/// The exact expected outcome.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Oracle {
    /// (customer, meter) → total quantity (sum of window values).
    pub quantity: BTreeMap<(String, String), Decimal>,
    /// (customer, meter) → total amount (unrounded).
    pub amount: BTreeMap<(String, String), Decimal>,
    /// Distinct accepted events.
    pub accepted: u64,
    /// Duplicates the pipeline must drop.
    pub duplicates: u64,
    /// Retries the broker drops by `Nats-Msg-Id`.
    pub broker_retries: u64,
    /// Expected rejects by reason code.
    pub rejected: BTreeMap<String, u64>,
}

/// SplitMix64: small, deterministic, good enough for workloads.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

const SUBJECTS: [(&str, &str); 3] = [("acme", "acme"), ("globex", "globex"), ("globex-eu", "globex")];

struct Event {
    id: String,
    source: String,
    kind: &'static str,
    subject: &'static str,
    customer: &'static str,
    time: DateTime<Utc>,
    data: String,
    // for the oracle
    value: Decimal,
    text: String,
}

fn render(e: &Event, time: DateTime<Utc>) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{}","source":"{}","type":"{}","subject":"{}","time":"{}","datacontenttype":"application/json","data":{}}}"#,
        e.id,
        e.source,
        e.kind,
        e.subject,
        time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        e.data
    )
}

fn make_event(rng: &mut Rng, seed: u64, n: usize, base: DateTime<Utc>) -> Event {
    // A few heavy customers: acme gets half the traffic.
    let (subject, customer) = SUBJECTS[[0, 0, 0, 1, 2, 1][rng.below(6) as usize]];
    let time = base + Duration::milliseconds(rng.below(48 * 3_600_000) as i64);
    let source = format!(
        "svc-{}/{}",
        ["gateway", "llm", "auth", "storage"][rng.below(4) as usize],
        ["eu-1", "us-1"][rng.below(2) as usize]
    );
    let id = format!("evt-{seed}-{n:08}-{:04x}", rng.below(0x10000));
    let (kind, data, value, text) = match rng.below(10) {
        0..=4 => {
            let requests = 1 + rng.below(50);
            let region = ["eu-west-1", "us-east-1", "ap-south-1"][rng.below(3) as usize];
            // Decimal strings and JSON numbers are both valid.
            let v = if rng.below(2) == 0 { format!("\"{requests}\"") } else { requests.to_string() };
            (
                "api_calls",
                format!(r#"{{"requests":{v},"region":"{region}"}}"#),
                Decimal::from(requests),
                region.to_string(),
            )
        }
        5..=7 => {
            let tokens = 100 + rng.below(5_000);
            let model = ["small", "large"][rng.below(2) as usize];
            (
                "llm_tokens",
                format!(r#"{{"tokens":{tokens},"model":"{model}"}}"#),
                Decimal::from(tokens),
                model.to_string(),
            )
        }
        8 => {
            let user = format!("u-{}", rng.below(40));
            ("user_seen", format!(r#"{{"user_id":"{user}"}}"#), Decimal::ZERO, user)
        }
        _ => {
            let gb = Decimal::new(rng.below(10_000_000) as i64, 3);
            ("storage", format!(r#"{{"gigabytes":"{gb}"}}"#), gb, String::new())
        }
    };
    Event { id, source, kind, subject, customer, time, data, value, text }
}

/// Malformed messages, each with the reason the pipeline must give.
fn bad_message(rng: &mut Rng, base: DateTime<Utc>, n: usize) -> (String, &'static str) {
    let t = base.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    match rng.below(6) {
        0 => (r#"{"specversion":"1.0","id":"#.to_string(), "invalid_json"),
        1 => (
            format!(
                r#"{{"specversion":"1.0","id":"bad-{n}","source":"s","type":"api_calls","time":"{t}","data":{{"requests":1}}}}"#
            ),
            "missing_attribute",
        ),
        2 => (
            format!(
                r#"{{"specversion":"1.0","id":"bad-{n}","source":"s","type":"api_calls","subject":"acme","time":"last tuesday","data":{{"requests":1}}}}"#
            ),
            "invalid_time",
        ),
        3 => (
            format!(
                r#"{{"specversion":"1.0","id":"bad-{n}","source":"s","type":"api_calls","subject":"acme","time":"{t}","data":{{"requests":-4}}}}"#
            ),
            "negative_value",
        ),
        4 => (
            format!(
                r#"{{"specversion":"1.0","id":"bad-{n}","source":"s","type":"api_calls","subject":"initech","time":"{t}","data":{{"requests":1}}}}"#
            ),
            "unknown_subject",
        ),
        _ => (
            format!(
                r#"{{"specversion":"1.0","id":"bad-{n}","source":"s","type":"api_calls","subject":"acme","time":"{t}","data":{{"requests":"1.5.2"}}}}"#
            ),
            "invalid_value",
        ),
    }
}

/// Generates the messages and the oracle.
pub fn generate(spec: &WorkloadSpec, reference: &Reference) -> Result<(Vec<OutMessage>, Oracle)> {
    generate_all(std::slice::from_ref(spec), reference)
}

/// Generates several workloads (for example one-event and batch-mode parts) into one stream,
/// with one oracle over all of them: tiers apply to the combined period totals.
pub fn generate_all(specs: &[WorkloadSpec], reference: &Reference) -> Result<(Vec<OutMessage>, Oracle)> {
    let mut oracle = Oracle::default();
    let mut messages = Vec::new();
    let mut all = Vec::new();
    for spec in specs {
        let events = generate_part(spec, &mut messages, &mut oracle);
        all.extend(events);
    }
    compute_totals(&all, &reference.prices, reference, &mut oracle)?;
    oracle.accepted = all.len() as u64;
    Ok((messages, oracle))
}

fn generate_part(spec: &WorkloadSpec, messages: &mut Vec<OutMessage>, oracle: &mut Oracle) -> Vec<Event> {
    let mut rng = Rng::new(spec.seed);
    let events: Vec<Event> = (0..spec.events).map(|n| make_event(&mut rng, spec.seed, n, spec.base_time)).collect();
    let mut late_duplicates = Vec::new();
    let mut extra: Vec<Event> = Vec::new();
    let batch = spec.batch_size.max(1);
    for (m, chunk) in events.chunks(batch).enumerate() {
        let bodies: Vec<String> = chunk.iter().map(|e| render(e, e.time)).collect();
        let payload = if batch == 1 { bodies[0].clone() } else { format!("[{}]", bodies.join(",")) };
        let msg_id = format!("msg-{}-{m}", spec.seed);
        messages.push(OutMessage {
            subject: format!("usage.{}", chunk[0].kind),
            payload: payload.clone().into_bytes(),
            msg_id: Some(msg_id.clone()),
        });
        if spec.duplicate_every > 0 && m % (spec.duplicate_every * 3 + 1) == 1 {
            // A quick publisher retry with the same Nats-Msg-Id: the broker drops it.
            messages.push(OutMessage {
                subject: format!("usage.{}", chunk[0].kind),
                payload: payload.into_bytes(),
                msg_id: Some(msg_id),
            });
            oracle.broker_retries += 1;
        }
        for e in chunk {
            if spec.duplicate_every > 0 && rng.below(spec.duplicate_every as u64) == 0 {
                late_duplicates.push(e);
            }
        }
        if spec.bad_every > 0 && m % spec.bad_every == spec.bad_every - 1 {
            let (body, reason) = bad_message(&mut rng, spec.base_time, m);
            if batch > 1 && reason != "invalid_json" {
                // A bad event and a fresh good one in one batch: the good one must still count.
                let fresh = make_event(&mut rng, spec.seed, spec.events + m, spec.base_time);
                let good = render(&fresh, fresh.time);
                messages.push(OutMessage {
                    subject: "usage.mixed".into(),
                    payload: format!("[{body}, {good}]").into_bytes(),
                    msg_id: None,
                });
                extra.push(fresh);
            } else {
                messages.push(OutMessage { subject: "usage.bad".into(), payload: body.into_bytes(), msg_id: None });
            }
            *oracle.rejected.entry(reason.into()).or_default() += 1;
        }
    }
    // Late duplicates: the same (source, id), a different time, no Nats-Msg-Id, long after.
    for e in late_duplicates {
        let shifted = e.time + Duration::seconds(1 + rng.below(7_200) as i64);
        messages.push(OutMessage {
            subject: format!("usage.{}", e.kind),
            payload: render(e, shifted).into_bytes(),
            msg_id: None,
        });
        oracle.duplicates += 1;
    }
    let mut all = events;
    all.extend(extra);
    all
}

fn compute_totals(events: &[Event], prices: &PriceBook, reference: &Reference, oracle: &mut Oracle) -> Result<()> {
    // Period totals per (customer, meter, plan version, month), computed straight from the
    // events: SUM meters add values; UNIQUE and MAX meters add their per-day window values.
    type Key = (String, &'static str, String, String);
    let mut totals: BTreeMap<Key, Decimal> = BTreeMap::new();
    let mut uniques: HashMap<(Key, &str, i64), HashSet<&str>> = HashMap::new();
    let mut peaks: HashMap<(Key, &str, i64), Decimal> = HashMap::new();
    for e in events {
        let idx = reference.directory.customers().iter().position(|c| c.id == e.customer).context("customer")?;
        let (plan, version) = pricing_at(prices, &reference.subscriptions[idx], e.time).context("no plan in force")?;
        let anchor = reference.directory.customers()[idx].billing_anchor_day;
        let period = Period::containing(e.time, anchor).context("period")?.label();
        let meter = match e.kind {
            "api_calls" => "api_calls",
            "llm_tokens" => "llm_tokens",
            "user_seen" => "active_users",
            _ => "storage_peak",
        };
        let key: Key = (e.customer.to_string(), meter, plan.version_label(version), period);
        let day = e.time.timestamp().div_euclid(86_400);
        match meter {
            "active_users" => {
                uniques.entry((key, e.subject, day)).or_default().insert(&e.text);
            }
            "storage_peak" => {
                let p = peaks.entry((key, e.subject, day)).or_insert(e.value);
                *p = (*p).max(e.value);
            }
            _ => *totals.entry(key).or_default() += e.value,
        }
    }
    for ((key, _, _), set) in uniques {
        *totals.entry(key).or_default() += Decimal::from(set.len());
    }
    for ((key, _, _), peak) in peaks {
        *totals.entry(key).or_default() += peak;
    }
    for ((customer, meter, label, _), q) in totals {
        let (plan_id, _) = label.split_once('@').context("label")?;
        let charge = prices.charge_of(plan_id, &label, meter).with_context(|| format!("{label} {meter}"))?;
        let key = (customer, meter.to_string());
        *oracle.quantity.entry(key.clone()).or_default() += q;
        *oracle.amount.entry(key).or_default() += charge.price(q)?;
    }
    Ok(())
}

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

/// Compares the committed summaries with the oracle, exactly: quantity and amount per customer
/// and meter, and the number of accepted events. Returns every difference (empty = exact).
pub async fn differences(data_dir: &std::path::Path, oracle: &Oracle) -> Result<Vec<String>> {
    use meterflow_sink::sql::{cells, ReadOnlySql};
    let sql = ReadOnlySql::open(data_dir).await?;
    let q =
        "SELECT customer_id, meter, CAST(SUM(quantity) AS VARCHAR), CAST(SUM(amount) AS VARCHAR), SUM(event_count) \
             FROM usage_summaries GROUP BY customer_id, meter";
    let mut got: BTreeMap<(String, String), (Decimal, Decimal)> = BTreeMap::new();
    let mut events = 0u64;
    for b in sql.query(q).await? {
        for r in cells(&b)? {
            let f: Vec<String> = r.into_iter().map(Option::unwrap_or_default).collect();
            let (Some(c), Some(m), Some(q), Some(a), Some(n)) = (f.first(), f.get(1), f.get(2), f.get(3), f.get(4))
            else {
                continue;
            };
            got.insert((c.clone(), m.clone()), (q.parse()?, a.parse()?));
            events += n.parse::<u64>().unwrap_or(0);
        }
    }
    let mut out = Vec::new();
    for (key, q) in &oracle.quantity {
        let a = oracle.amount.get(key).copied().unwrap_or_default();
        match got.get(key) {
            Some((gq, ga)) if gq == q && ga == &a => {}
            other => out.push(format!("{key:?}: expected quantity {q} amount {a}, got {other:?}")),
        }
    }
    for key in got.keys().filter(|k| !oracle.quantity.contains_key(*k)) {
        out.push(format!("{key:?}: not in the oracle"));
    }
    if events != oracle.accepted {
        out.push(format!("accepted events: expected {}, got {events}", oracle.accepted));
    }
    Ok(out)
}
