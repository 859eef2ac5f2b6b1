//! A synthetic but realistic usage workload for the example config, with an exact oracle.
//!
//! By default the workload uses the four meters and two customers of `examples/meterflow.toml`. It
//! mixes single-event and batch-mode messages, decimal values sent as JSON numbers and as strings,
//! duplicates re-published much later without `Nats-Msg-Id` and with a changed `time`, quick
//! retries with the same `Nats-Msg-Id` (dropped by the broker), malformed events of several
//! kinds and an unknown subject. The [`Oracle`] is computed independently of the pipeline code,
//! straight from the generated events.
//!
//! A [`Traffic`] widens it (the load generator's `--customers`, `--skew`, `--late-fraction`):
//!
//! ```text
//!   Population::Example   acme 1/2, globex 1/3, globex-eu 1/6 (the example reference)
//!   Population::Skewed     every subject of the reference data, rank k (file order) chosen with
//!                          weight 1/k^skew: a few heavy customers, a long tail
//!                          (synthetic_customers writes N customers cust-00000 ... for it)
//!
//!   EventTimes::Shuffled   uniform over the 48 h from base_time, unrelated to publish order
//!   EventTimes::InOrder    stream time runs from base_time to base_time + span in publish order
//!                          (up to 10 s of disorder); a late_fraction of the events lies an
//!                          exponentially distributed lateness (capped) behind it
//! ```
//!
//! `Traffic::default()` (`Example` + `Shuffled`) generates exactly what this module generated
//! before these knobs existed, byte for byte.

use anyhow::{bail, Result};
use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;

use meterflow_pipeline::config::Reference;

mod oracle;
mod publish;
mod reference;
use oracle::compute_totals;
pub use oracle::{differences, Oracle};
pub use publish::{publish_all, publish_retrying};
pub use reference::{synthetic_customers, use_synthetic_reference};

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
    /// so that the whole workload is in the past and well within the backdating limit). With
    /// [`EventTimes::InOrder`], the stream time starts here instead.
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

/// Who sends the events and when they happen: the knobs on top of a [`WorkloadSpec`]. The
/// default reproduces the original workload exactly.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Traffic {
    /// Which subjects the events name.
    pub population: Population,
    /// Which event times they carry.
    pub times: EventTimes,
}

/// Which customers send the events.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Population {
    /// The example reference data's subjects in a fixed mix: `acme` half the events, `globex`
    /// a third, `globex-eu` a sixth (needs `examples/reference/customers.toml` or a superset).
    #[default]
    Example,
    /// Every subject of the reference data, in file order: the subject of rank k (from 1) is
    /// chosen with weight `1 / k^skew` (Zipf-like; 0 = uniform, 1 = classic Zipf, larger = a
    /// few customers send almost everything).
    Skewed {
        /// The Zipf exponent (finite, at least 0).
        skew: f64,
    },
}

/// Which event times the events carry.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum EventTimes {
    /// Uniform over the 48 hours from [`WorkloadSpec::base_time`], in an order unrelated to the
    /// publish order.
    #[default]
    Shuffled,
    /// Event times follow the publish order (the stream's event time), with late events.
    InOrder(Lateness),
}

/// The event-time progression of [`EventTimes::InOrder`].
#[derive(Debug, Clone, PartialEq)]
pub struct Lateness {
    /// Seconds of stream time the `events` of one [`WorkloadSpec`] cover: event `n` of `N`
    /// happens at `base_time + span * n / N`, minus up to [`ON_TIME_JITTER_MS`] of disorder.
    pub span_s: u64,
    /// Fraction of the events (0 to 1) that lie behind the stream time instead.
    pub late_fraction: f64,
    /// Mean of their lateness, in seconds (exponentially distributed).
    pub mean_lateness_s: f64,
    /// Cap of the lateness, in seconds: keep `base_time - max_lateness` within the pipeline's
    /// backdating limit so that no late event is rejected as `too_old`.
    pub max_lateness_s: u64,
}

/// Disorder of on-time events under [`EventTimes::InOrder`]: up to this many milliseconds before
/// the stream time (well inside the default 60 s out-of-orderness bound).
pub const ON_TIME_JITTER_MS: u64 = 10_000;

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
    /// Uniform in `[0, 1)`, from the top 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The example population's subjects and owners, and its fixed mix (indices into it).
const SUBJECTS: [(&str, &str); 3] = [("acme", "acme"), ("globex", "globex"), ("globex-eu", "globex")];
const EXAMPLE_MIX: [usize; 6] = [0, 0, 0, 1, 2, 1];

/// The subject (and customer id) of synthetic customer `i`: `cust-00042`.
pub fn synthetic_subject(i: usize) -> String {
    format!("cust-{i:05}")
}

/// The subjects events may name, their owners, and how one is chosen.
struct Subjects {
    /// (subject, customer id).
    table: Vec<(String, String)>,
    /// Skewed: cumulative weights, one per subject. Empty: the example's fixed mix.
    cumulative: Vec<f64>,
    /// The subject malformed-but-attributable messages name.
    valid: String,
}

impl Subjects {
    fn new(population: &Population, reference: &Reference) -> Result<Subjects> {
        match population {
            Population::Example => Ok(Subjects {
                table: SUBJECTS.iter().map(|(s, c)| (s.to_string(), c.to_string())).collect(),
                cumulative: Vec::new(),
                valid: SUBJECTS[0].0.to_string(),
            }),
            Population::Skewed { skew } => {
                if !skew.is_finite() || *skew < 0.0 {
                    bail!("skew must be a finite number of at least 0, not {skew}");
                }
                let table: Vec<(String, String)> = reference
                    .directory
                    .customers()
                    .iter()
                    .flat_map(|c| c.subjects.iter().map(|s| (s.name().to_string(), c.id.clone())))
                    .collect();
                let Some(first) = table.first() else { bail!("the reference data has no customers") };
                let valid = first.0.clone();
                let mut total = 0.0;
                let cumulative = (1..=table.len())
                    .map(|rank| {
                        total += (rank as f64).powf(-skew);
                        total
                    })
                    .collect();
                Ok(Subjects { table, cumulative, valid })
            }
        }
    }

    /// Index into `table` of the next event's subject.
    fn pick(&self, rng: &mut Rng) -> usize {
        match self.cumulative.last() {
            None => EXAMPLE_MIX[rng.below(6) as usize],
            Some(total) => {
                let u = rng.unit() * total;
                self.cumulative.partition_point(|&c| c <= u).min(self.table.len() - 1)
            }
        }
    }
}

struct Event {
    id: String,
    source: String,
    kind: &'static str,
    /// Index into [`Subjects::table`].
    who: usize,
    time: DateTime<Utc>,
    data: String,
    // for the oracle
    value: Decimal,
    text: String,
    late: bool,
}

/// What one part's events are generated from.
struct Part<'a> {
    spec: &'a WorkloadSpec,
    subjects: &'a Subjects,
    times: &'a EventTimes,
}

impl Part<'_> {
    /// The stream time at position `pos` of this part (InOrder).
    fn stream_time(&self, l: &Lateness, pos: usize) -> DateTime<Utc> {
        let n = self.spec.events.max(1) as u128;
        let pos = (pos as u128).min(n);
        let offset = u128::from(l.span_s) * 1_000 * pos / n;
        self.spec.base_time + Duration::milliseconds(i64::try_from(offset).unwrap_or(i64::MAX / 4))
    }

    /// The event time of the event at stream position `pos`, and whether it is late.
    fn event_time(&self, rng: &mut Rng, pos: usize) -> (DateTime<Utc>, bool) {
        match self.times {
            EventTimes::Shuffled => {
                (self.spec.base_time + Duration::milliseconds(rng.below(48 * 3_600_000) as i64), false)
            }
            EventTimes::InOrder(l) => {
                let at = self.stream_time(l, pos);
                let jitter = rng.below(ON_TIME_JITTER_MS) as i64;
                if rng.unit() < l.late_fraction {
                    let max_ms = l.max_lateness_s.saturating_mul(1_000) as f64;
                    let lateness_ms = (-(l.mean_lateness_s * 1_000.0) * (1.0 - rng.unit()).ln()).min(max_ms);
                    (at - Duration::milliseconds(lateness_ms as i64), true)
                } else {
                    (at - Duration::milliseconds(jitter), false)
                }
            }
        }
    }

    /// Earliest event time this part may carry (InOrder: base time minus the lateness cap).
    fn earliest(&self) -> DateTime<Utc> {
        match self.times {
            EventTimes::Shuffled => self.spec.base_time,
            EventTimes::InOrder(l) => {
                self.spec.base_time - Duration::seconds(i64::try_from(l.max_lateness_s).unwrap_or(i64::MAX / 2_000))
            }
        }
    }

    fn render(&self, e: &Event, time: DateTime<Utc>) -> String {
        format!(
            r#"{{"specversion":"1.0","id":"{}","source":"{}","type":"{}","subject":"{}","time":"{}","datacontenttype":"application/json","data":{}}}"#,
            e.id,
            e.source,
            e.kind,
            self.subjects.table[e.who].0,
            time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            e.data
        )
    }

    /// Event `n` (its id), at stream position `pos` (its time under InOrder).
    fn make_event(&self, rng: &mut Rng, n: usize, pos: usize) -> Event {
        let seed = self.spec.seed;
        // A few heavy customers (the example: acme gets half the traffic).
        let who = self.subjects.pick(rng);
        let (time, late) = self.event_time(rng, pos);
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
        Event { id, source, kind, who, time, data, value, text, late }
    }
}

/// Malformed messages, each with the reason the pipeline must give. `subject` is a known one.
fn bad_message(rng: &mut Rng, base: DateTime<Utc>, n: usize, subject: &str) -> (String, &'static str) {
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
                r#"{{"specversion":"1.0","id":"bad-{n}","source":"s","type":"api_calls","subject":"{subject}","time":"last tuesday","data":{{"requests":1}}}}"#
            ),
            "invalid_time",
        ),
        3 => (
            format!(
                r#"{{"specversion":"1.0","id":"bad-{n}","source":"s","type":"api_calls","subject":"{subject}","time":"{t}","data":{{"requests":-4}}}}"#
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
                r#"{{"specversion":"1.0","id":"bad-{n}","source":"s","type":"api_calls","subject":"{subject}","time":"{t}","data":{{"requests":"1.5.2"}}}}"#
            ),
            "invalid_value",
        ),
    }
}

/// The same messages, each on its customer's own subject, `usage.<customer token>.<kind>`, as
/// the HTTP API publishes them (a partitioned stream files usage by that token): the customer
/// owning the first event's subject at its time; `usage.unassigned.<kind>` when the message
/// holds no such event (undecodable bytes, an unknown subject).
pub fn on_customer_subjects(messages: &[OutMessage], reference: &Reference) -> Vec<OutMessage> {
    let customer_of = |payload: &[u8]| -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
        let first = if v.is_array() { v.get(0)? } else { &v };
        let subject = first.get("subject")?.as_str()?;
        let time: DateTime<Utc> = first.get("time")?.as_str()?.parse().ok()?;
        reference.directory.lookup_at(subject, time).map(|c| meterflow_ingest::partition::token(&c.id))
    };
    messages
        .iter()
        .map(|m| {
            let kind = m.subject.strip_prefix("usage.").unwrap_or(&m.subject);
            let customer = customer_of(&m.payload).unwrap_or_else(|| "unassigned".into());
            OutMessage {
                subject: format!("usage.{customer}.{kind}"),
                payload: m.payload.clone(),
                msg_id: m.msg_id.clone(),
            }
        })
        .collect()
}

/// Generates the messages and the oracle.
pub fn generate(spec: &WorkloadSpec, reference: &Reference) -> Result<(Vec<OutMessage>, Oracle)> {
    generate_all(std::slice::from_ref(spec), reference)
}

/// Generates several workloads (for example one-event and batch-mode parts) into one stream,
/// with one oracle over all of them: tiers apply to the combined period totals.
pub fn generate_all(specs: &[WorkloadSpec], reference: &Reference) -> Result<(Vec<OutMessage>, Oracle)> {
    generate_with(specs, &Traffic::default(), reference)
}

/// [`generate_all`] with a [`Traffic`]: a skewed population over the reference data's customers,
/// event times in publish order with late events. Every part uses the same traffic.
pub fn generate_with(
    specs: &[WorkloadSpec],
    traffic: &Traffic,
    reference: &Reference,
) -> Result<(Vec<OutMessage>, Oracle)> {
    if let EventTimes::InOrder(l) = &traffic.times {
        if !(0.0..=1.0).contains(&l.late_fraction) {
            bail!("the late fraction must be between 0 and 1, not {}", l.late_fraction);
        }
        if !l.mean_lateness_s.is_finite() || l.mean_lateness_s < 0.0 {
            bail!("the mean lateness must be a finite number of seconds of at least 0, not {}", l.mean_lateness_s);
        }
    }
    let subjects = Subjects::new(&traffic.population, reference)?;
    let mut oracle = Oracle::default();
    let mut messages = Vec::new();
    let mut all = Vec::new();
    for spec in specs {
        let part = Part { spec, subjects: &subjects, times: &traffic.times };
        let events = generate_part(&part, &mut messages, &mut oracle);
        all.extend(events);
    }
    compute_totals(&all, &subjects, reference, &mut oracle)?;
    oracle.accepted = all.len() as u64;
    oracle.late = all.iter().filter(|e| e.late).count() as u64;
    Ok((messages, oracle))
}

fn generate_part(part: &Part<'_>, messages: &mut Vec<OutMessage>, oracle: &mut Oracle) -> Vec<Event> {
    let spec = part.spec;
    let mut rng = Rng::new(spec.seed);
    let events: Vec<Event> = (0..spec.events).map(|n| part.make_event(&mut rng, n, n)).collect();
    let mut late_duplicates = Vec::new();
    let mut extra: Vec<Event> = Vec::new();
    let batch = spec.batch_size.max(1);
    for (m, chunk) in events.chunks(batch).enumerate() {
        let bodies: Vec<String> = chunk.iter().map(|e| part.render(e, e.time)).collect();
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
            let (body, reason) = bad_message(&mut rng, spec.base_time, m, &part.subjects.valid);
            if batch > 1 && reason != "invalid_json" {
                // A bad event and a fresh good one in one batch: the good one must still count.
                let fresh = part.make_event(&mut rng, spec.events + m, m * batch);
                let good = part.render(&fresh, fresh.time);
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
    // In order, the changed time moves back (never into the future, never below the cap).
    for e in late_duplicates {
        let shift = Duration::seconds(1 + rng.below(7_200) as i64);
        let shifted = match part.times {
            EventTimes::Shuffled => e.time + shift,
            EventTimes::InOrder(_) => (e.time - shift).max(part.earliest()),
        };
        messages.push(OutMessage {
            subject: format!("usage.{}", e.kind),
            payload: part.render(e, shifted).into_bytes(),
            msg_id: None,
        });
        oracle.duplicates += 1;
    }
    let mut all = events;
    all.extend(extra);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_pipeline::config::{Config, Overrides};
    use std::collections::HashSet;
    use std::path::Path;

    fn example_config() -> Config {
        let path =
            Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()))
                .join("../examples/meterflow.toml");
        Config::load(&path, &Overrides::default()).unwrap()
    }

    /// 2026-11-23T00:00:00Z: fixed, so the digests below do not depend on the day the test runs.
    fn base() -> DateTime<Utc> {
        DateTime::from_timestamp(1_795_392_000, 0).unwrap()
    }

    /// FNV-1a over every message (subject, payload, msg id) and the oracle's figures.
    fn digest(messages: &[OutMessage], oracle: &Oracle) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let mut feed = |bytes: &[u8]| {
            for b in bytes.iter().chain(&[0xff]) {
                h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
        };
        for m in messages {
            feed(m.subject.as_bytes());
            feed(&m.payload);
            feed(m.msg_id.as_deref().unwrap_or("-").as_bytes());
        }
        let figures = format!(
            "{:?} {:?} {} {} {} {:?}",
            oracle.quantity, oracle.amount, oracle.accepted, oracle.duplicates, oracle.broker_retries, oracle.rejected
        );
        feed(figures.as_bytes());
        h
    }

    fn in_order(late_fraction: f64, mean_lateness_s: f64, max_lateness_s: u64) -> EventTimes {
        EventTimes::InOrder(Lateness { span_s: 1_800, late_fraction, mean_lateness_s, max_lateness_s })
    }

    #[test]
    fn the_default_traffic_generates_the_original_workload_byte_for_byte() {
        let reference = Reference::load(&example_config()).unwrap();
        let single = WorkloadSpec { events: 3_000, base_time: base(), ..Default::default() };
        let batched = WorkloadSpec {
            events: 2_000,
            batch_size: 20,
            duplicate_every: 7,
            bad_every: 5,
            seed: 9,
            base_time: base() + Duration::days(2),
        };
        let (messages, oracle) = generate_all(&[single.clone(), batched.clone()], &reference).unwrap();
        // Digest of what the generator produced before `Traffic` existed: tests, the demo and
        // the benchmarks' inputs stay the same.
        assert_eq!(digest(&messages, &oracle), 3_927_512_277_764_043_317, "the default workload changed");
        assert_eq!(oracle.late, 0);
        let (again, _) = generate_with(&[single, batched], &Traffic::default(), &reference).unwrap();
        assert_eq!(again.len(), messages.len());
        assert!(again.iter().zip(&messages).all(|(a, b)| a.payload == b.payload && a.msg_id == b.msg_id));
    }

    #[test]
    fn skewed_customers_are_chosen_by_zipf_rank_and_the_same_seed_gives_the_same_workload() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = example_config();
        let reference = use_synthetic_reference(&mut config, &dir.path().join("reference"), 100).unwrap();
        assert_eq!(reference.directory.customers().len(), 100);
        let spec = WorkloadSpec { events: 20_000, base_time: base(), seed: 5, ..Default::default() };
        let shares = |skew: f64| {
            let subjects = Subjects::new(&Population::Skewed { skew }, &reference).unwrap();
            let part = Part { spec: &spec, subjects: &subjects, times: &EventTimes::Shuffled };
            let mut rng = Rng::new(spec.seed);
            let mut counts = vec![0usize; 100];
            for n in 0..spec.events {
                counts[part.make_event(&mut rng, n, n).who] += 1;
            }
            counts
        };
        // Zipf with exponent 1 over 100 ranks: the first gets 1/H(100) ≈ 19.3 %, the tenth a
        // tenth of that, the hundredth a hundredth.
        let zipf = shares(1.0);
        let top = zipf[0] as f64 / 20_000.0;
        assert!((0.173..0.213).contains(&top), "top customer share {top}");
        assert!(zipf[0] > 5 * zipf[9] && zipf[9] > 3 * zipf[99], "{zipf:?}");
        let uniform = shares(0.0);
        assert!(uniform.iter().all(|&c| (120..280).contains(&c)), "{uniform:?}");

        let traffic = Traffic { population: Population::Skewed { skew: 1.2 }, times: EventTimes::Shuffled };
        let (a, oracle) = generate_with(std::slice::from_ref(&spec), &traffic, &reference).unwrap();
        let (b, _) = generate_with(std::slice::from_ref(&spec), &traffic, &reference).unwrap();
        assert!(a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x.payload == y.payload));
        let other = WorkloadSpec { seed: 6, ..spec.clone() };
        let (c, _) = generate_with(&[other], &traffic, &reference).unwrap();
        assert!(a.iter().zip(&c).any(|(x, y)| x.payload != y.payload));
        // Every billed customer is a synthetic one, and the heaviest is billed the most calls.
        assert!(oracle.quantity.keys().all(|(customer, _)| customer.starts_with("cust-")));
        let calls = |c: &str| oracle.quantity.get(&(c.to_string(), "api_calls".to_string())).copied();
        assert!(calls("cust-00000") > calls("cust-00050"));
        assert!(Subjects::new(&Population::Skewed { skew: -1.0 }, &reference).is_err());
    }

    #[test]
    fn late_events_lie_an_exponential_lateness_behind_the_stream_time_and_every_one_is_in_the_oracle() {
        let reference = Reference::load(&example_config()).unwrap();
        let spec = WorkloadSpec { events: 20_000, base_time: base(), seed: 11, ..Default::default() };
        let subjects = Subjects::new(&Population::Example, &reference).unwrap();
        let (mut late, mut sum_ms, mut max_ms) = (0usize, 0i64, 0i64);
        for (times, cap_s) in [(in_order(0.1, 600.0, 36_000), 36_000), (in_order(0.5, 600.0, 900), 900)] {
            let EventTimes::InOrder(l) = &times else { unreachable!() };
            let part = Part { spec: &spec, subjects: &subjects, times: &times };
            let mut rng = Rng::new(spec.seed);
            let (mut n_late, mut sum, mut max) = (0usize, 0i64, 0i64);
            for n in 0..spec.events {
                let e = part.make_event(&mut rng, n, n);
                let behind = (part.stream_time(l, n) - e.time).num_milliseconds();
                if e.late {
                    assert!((0..=cap_s * 1_000).contains(&behind), "lateness {behind} ms beyond the cap");
                    n_late += 1;
                    sum += behind;
                    max = max.max(behind);
                } else {
                    assert!((0..ON_TIME_JITTER_MS as i64).contains(&behind), "on-time event {behind} ms behind");
                }
            }
            if cap_s == 900 {
                assert_eq!(max, 900_000, "the cap is reached and holds");
            } else {
                (late, sum_ms, max_ms) = (n_late, sum, max);
            }
        }
        // 10 % late (binomial sd 0.2 %), mean lateness 600 s (sd of the mean ≈ 2.2 %).
        let fraction = late as f64 / 20_000.0;
        assert!((0.09..0.11).contains(&fraction), "late fraction {fraction}");
        let mean_s = sum_ms as f64 / late as f64 / 1_000.0;
        assert!((550.0..650.0).contains(&mean_s), "mean lateness {mean_s} s");
        assert!(max_ms > 3 * 600_000, "an exponential tail reaches several means ({max_ms} ms)");

        // The whole workload: every late event is accepted and billed, none before the cap, the
        // stream time stays within the span, the same seed gives the same bytes.
        let traffic = Traffic { population: Population::Example, times: in_order(0.1, 600.0, 3_600) };
        let specs =
            [spec.clone(), WorkloadSpec { events: 500, batch_size: 10, bad_every: 7, seed: 12, ..spec.clone() }];
        let (messages, oracle) = generate_with(&specs, &traffic, &reference).unwrap();
        let (again, _) = generate_with(&specs, &traffic, &reference).unwrap();
        assert!(messages.iter().zip(&again).all(|(a, b)| a.payload == b.payload));
        assert!((1_900..2_200).contains(&oracle.late), "{} late events", oracle.late);
        let decoded: Vec<_> =
            messages.iter().flat_map(|m| meterflow_schemas::decode_message(&m.payload).events.into_iter()).collect();
        let earliest = base() - Duration::seconds(3_600);
        assert!(decoded.iter().all(|e| e.time >= earliest && e.time <= base() + Duration::seconds(1_800)));
        let api_calls: Decimal = oracle.quantity.iter().filter(|((_, m), _)| m == "api_calls").map(|(_, q)| *q).sum();
        assert!(api_calls > Decimal::ZERO);
        let distinct: HashSet<(&str, &str)> =
            decoded.iter().filter(|e| !e.id.starts_with("bad-")).map(|e| (e.source.as_str(), e.id.as_str())).collect();
        assert_eq!(oracle.accepted, distinct.len() as u64);
        assert!(oracle.accepted > 20_500 && oracle.duplicates > 0);
        let bad = Traffic { population: Population::Example, times: in_order(1.5, 600.0, 3_600) };
        assert!(generate_with(&specs, &bad, &reference).is_err());
    }

    #[test]
    fn synthetic_customers_load_as_reference_data_billed_like_the_template() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = example_config();
        let template = Reference::load(&config).unwrap();
        let text = synthetic_customers(&template, 3).unwrap();
        assert!(text.contains("cust-00002") && !text.contains("cust-00003"), "{text}");
        let reference = use_synthetic_reference(&mut config, dir.path(), 1_000).unwrap();
        let customers = reference.directory.customers();
        assert_eq!(customers.len(), 1_000);
        assert_eq!(reference.directory.lookup("cust-00999").map(|c| c.id.as_str()), Some("cust-00999"));
        // Alternating like the template: acme's USD plan, globex's EUR subscription and anchor day.
        assert_eq!((customers[0].currency.as_str(), customers[0].billing_anchor_day), ("USD", 1));
        assert_eq!((customers[1].currency.as_str(), customers[1].billing_anchor_day), ("EUR", 15));
        assert_eq!(reference.subscriptions[1], template.subscriptions[1]);
        assert!(config.reference.customers.starts_with(dir.path()) && config.reference.plans.starts_with(dir.path()));
    }
}
