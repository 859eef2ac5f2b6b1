//! The bad-input catalogue: every class of malformed usage lands in USAGE_DLQ with its reason
//! and original bytes, and the good events around it are all counted.

use crate::common;
use crate::common::TestEnv;
use async_nats::HeaderMap;
use std::collections::BTreeMap;

fn event_with(fields: &[(&str, &str)]) -> String {
    let now = chrono::Utc::now() - chrono::Duration::minutes(5);
    let mut base: Vec<(String, String)> = vec![
        ("specversion".into(), "\"1.0\"".into()),
        ("id".into(), format!("\"{}\"", uuidish())),
        ("source".into(), "\"catalogue\"".into()),
        ("type".into(), "\"api_calls\"".into()),
        ("subject".into(), "\"acme\"".into()),
        ("time".into(), format!("\"{}\"", now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))),
        ("data".into(), r#"{"requests":"1","region":"eu-west-1"}"#.into()),
    ];
    for (k, v) in fields {
        base.retain(|(name, _)| name != k);
        if *v != "<absent>" {
            base.push((k.to_string(), v.to_string()));
        }
    }
    let body: Vec<String> = base.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}

fn uuidish() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("cat-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn good() -> String {
    event_with(&[])
}

/// (class, message bytes, expected reasons in order, good events inside the message)
fn catalogue() -> Vec<(&'static str, Vec<u8>, Vec<&'static str>, u64)> {
    let data = |d: &str| event_with(&[("data", d)]);
    let mut c: Vec<(&'static str, Vec<u8>, Vec<&'static str>, u64)> = vec![
        (
            "invalid UTF-8",
            [b"{\"specversion\":\"1.0\",\"id\":\"".as_slice(), &[0xff, 0xfe], b"\"}"].concat(),
            vec!["invalid_json"],
            0,
        ),
        ("truncated JSON", br#"{"specversion":"1.0","id":"x","sou"#.to_vec(), vec!["invalid_json"], 0),
        ("empty message", Vec::new(), vec!["invalid_json"], 0),
        ("a bare JSON string", br#""usage""#.to_vec(), vec!["not_an_event"], 0),
        ("a bare JSON number", b"42".to_vec(), vec!["not_an_event"], 0),
        ("an empty batch", b"[]".to_vec(), vec!["empty_batch"], 0),
        (
            "a nesting bomb",
            format!("{}{}", "[".repeat(50_000), "]".repeat(50_000)).into_bytes(),
            vec!["not_an_event"],
            0,
        ),
        (
            "a 1 MB string as id",
            event_with(&[("id", &format!("\"{}\"", "x".repeat(1_000_000)))]).into_bytes(),
            vec!["attribute_too_long"],
            0,
        ),
        ("missing id", event_with(&[("id", "<absent>")]).into_bytes(), vec!["missing_attribute"], 0),
        ("missing time", event_with(&[("time", "<absent>")]).into_bytes(), vec!["missing_attribute"], 0),
        ("empty subject", event_with(&[("subject", "\"\"")]).into_bytes(), vec!["empty_attribute"], 0),
        ("id of the wrong JSON type", event_with(&[("id", "17")]).into_bytes(), vec!["invalid_attribute_type"], 0),
        (
            "time of the wrong JSON type",
            event_with(&[("time", "1795392000")]).into_bytes(),
            vec!["invalid_attribute_type"],
            0,
        ),
        ("duplicate keys", format!("{{\"id\":\"a\",{}", &good()[1..]).into_bytes(), vec!["duplicate_attribute"], 0),
        (
            "wrong specversion",
            event_with(&[("specversion", "\"0.3\"")]).into_bytes(),
            vec!["unsupported_specversion"],
            0,
        ),
        ("unparsable time", event_with(&[("time", "\"yesterday at noon\"")]).into_bytes(), vec!["invalid_time"], 0),
        (
            "time without a zone",
            event_with(&[("time", "\"2026-11-23T05:00:00\"")]).into_bytes(),
            vec!["invalid_time"],
            0,
        ),
        ("absurd time", event_with(&[("time", "\"99999-01-01T00:00:00Z\"")]).into_bytes(), vec!["invalid_time"], 0),
        ("time from 1970", event_with(&[("time", "\"1970-01-01T00:00:00Z\"")]).into_bytes(), vec!["too_old"], 0),
        ("time in 2999", event_with(&[("time", "\"2999-01-01T00:00:00Z\"")]).into_bytes(), vec!["future_time"], 0),
        (
            "control characters in subject",
            event_with(&[("subject", "\"ac\\u0000me\"")]).into_bytes(),
            vec!["control_characters"],
            0,
        ),
        (
            "non-JSON content type",
            event_with(&[("datacontenttype", "\"text/plain\"")]).into_bytes(),
            vec!["unsupported_data"],
            0,
        ),
        ("data_base64", event_with(&[("data_base64", "\"AAAA\"")]).into_bytes(), vec!["unsupported_data"], 0),
        ("unknown type", event_with(&[("type", "\"teleports\"")]).into_bytes(), vec!["unknown_type"], 0),
        ("unknown subject", event_with(&[("subject", "\"initech\"")]).into_bytes(), vec!["unknown_subject"], 0),
        ("value missing", data(r#"{"region":"eu-west-1"}"#).into_bytes(), vec!["missing_value"], 0),
        ("NaN value", data(r#"{"requests":"NaN"}"#).into_bytes(), vec!["invalid_value"], 0),
        ("exponent overflow", data(r#"{"requests":1e400}"#).into_bytes(), vec!["invalid_value"], 0),
        ("boolean value", data(r#"{"requests":true}"#).into_bytes(), vec!["invalid_value"], 0),
        ("value at a non-numeric path", data(r#"{"requests":{"n":1}}"#).into_bytes(), vec!["invalid_value"], 0),
        ("negative value", data(r#"{"requests":-3}"#).into_bytes(), vec!["negative_value"], 0),
        ("over-precise value", data(r#"{"requests":"0.0000000001"}"#).into_bytes(), vec!["value_too_precise"], 0),
    ];
    let mixed = format!(
        "[{}, {}, 7, {}, {}]",
        good(),
        event_with(&[("time", "\"not a time\"")]),
        event_with(&[("subject", "\"initech\"")]),
        good()
    );
    c.push((
        "a batch mixing good and bad events",
        mixed.into_bytes(),
        vec!["invalid_time", "not_an_event", "unknown_subject"],
        2,
    ));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_class_of_bad_input_lands_in_the_dlq_with_its_reason_and_nothing_else_is_lost() {
    let env = TestEnv::start_with_default_bounds();
    env.ensure_streams().await;
    let js = env.jetstream().await;
    let cases = catalogue();
    assert!(cases.len() >= 25);
    let mut expected_good = 0;
    let mut by_seq = BTreeMap::new();
    for (name, bytes, reasons, good_inside) in &cases {
        // A good event before and after each bad one.
        for _ in 0..2 {
            js.publish("usage.good", good().into()).await.unwrap().await.unwrap();
        }
        let ack =
            js.publish_with_headers("usage.bad", HeaderMap::new(), bytes.clone().into()).await.unwrap().await.unwrap();
        by_seq.insert(ack.sequence, (*name, bytes.clone(), reasons.clone()));
        expected_good += 2 + good_inside;
    }
    env.run_until_idle(&[]);
    let counted: u64 = env.sql("SELECT SUM(event_count) FROM usage_summaries")[1][0].parse().unwrap();
    assert_eq!(counted, expected_good, "every good event is counted");

    let mut dlq = js.get_stream("USAGE_DLQ").await.unwrap();
    let n = dlq.info().await.unwrap().state.messages;
    let mut got: BTreeMap<u64, Vec<(String, Vec<u8>)>> = BTreeMap::new();
    for seq in 1..=n {
        let m = dlq.get_raw_message(seq).await.unwrap();
        let src: u64 = m.headers.get("Meterflow-Stream-Seq").unwrap().as_str().parse().unwrap();
        got.entry(src).or_default().push((m.headers.get("Meterflow-Reason").unwrap().to_string(), m.payload.to_vec()));
    }
    for (seq, (name, bytes, reasons)) in &by_seq {
        let entries = got.get(seq).unwrap_or_else(|| panic!("{name}: nothing in the DLQ"));
        let found: Vec<&str> = entries.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(found, *reasons, "{name}");
        // A batch array is quoted element by element; any other message whole.
        if !bytes.starts_with(b"[") {
            assert!(entries[0].1 == *bytes, "{name}: the DLQ must keep the original bytes");
        }
    }
    assert_eq!(got.len(), by_seq.len(), "only the bad messages produced DLQ entries");
}

/// A copy of the example config whose EUR plan prices api_calls at 1000 per request: its
/// period totals can hold 10^15 requests before their price passes the amount bound (10^18).
fn dear_config(dir: &std::path::Path) -> std::path::PathBuf {
    let examples = common::examples_dir();
    std::fs::create_dir_all(dir.join("reference")).unwrap();
    let customers = "reference/customers.toml";
    std::fs::copy(examples.join(customers), dir.join(customers)).unwrap();
    let plans = std::fs::read_to_string(examples.join("reference/plans.toml")).unwrap();
    assert!(plans.contains(r#"unit_price = "0.00018""#));
    std::fs::write(
        dir.join("reference/plans.toml"),
        plans.replace(r#"unit_price = "0.00018""#, r#"unit_price = "1000""#),
    )
    .unwrap();
    let config = dir.join("meterflow.toml");
    std::fs::copy(examples.join("meterflow.toml"), &config).unwrap();
    config
}

// Found in review: values up to ~7.9e28 were accepted, and the unchecked sums of a window or a
// period total panicked (or an amount beyond DECIMAL(38, 18) failed inside the commit, retried
// forever): one oversized value stopped metering for every tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_too_large_to_rate_exactly_are_rejected_with_a_reason_and_everything_else_flows() {
    let mut env = TestEnv::start();
    env.config = dear_config(&env.dir.path().join("config"));
    env.ensure_streams().await;
    let js = env.jetstream().await;
    let ev = |id: &str, subject: &str, kind: &str, time: &str, data: &str| common::event(id, subject, kind, time, data);
    let sent = [
        // globex's period total of api_calls can hold 10^15 requests at 1000 EUR each.
        ev("g-full", "globex", "api_calls", "2026-09-20T10:00:00Z", r#"{"requests":"1000000000000000","region":"eu"}"#),
        ev("g-over", "globex", "api_calls", "2026-09-21T10:00:00Z", r#"{"requests":1,"region":"eu"}"#),
        ev("g-next", "globex", "api_calls", "2026-10-20T10:00:00Z", r#"{"requests":5,"region":"eu"}"#),
        // Per event: 10^15 at most.
        ev("a-1e26", "acme", "llm_tokens", "2026-09-20T10:00:00Z", r#"{"tokens":"1e26","model":"large"}"#),
        ev(
            "a-5e28-1",
            "acme",
            "llm_tokens",
            "2026-09-20T11:00:00Z",
            r#"{"tokens":50000000000000000000000000000,"model":"large"}"#,
        ),
        ev("a-5e28-2", "acme", "llm_tokens", "2026-09-20T11:00:00Z", r#"{"tokens":"5e28","model":"large"}"#),
        ev("a-at-bound", "acme", "api_calls", "2026-09-20T10:00:00Z", r#"{"requests":1000000000000000,"region":"us"}"#),
        ev(
            "a-above",
            "acme",
            "api_calls",
            "2026-09-20T10:00:00Z",
            r#"{"requests":"1000000000000000.000000001","region":"us"}"#,
        ),
        ev("a-small", "acme", "api_calls", "2026-09-20T10:00:00Z", r#"{"requests":7,"region":"us"}"#),
    ];
    for body in &sent {
        common::publish(&js, "usage.big", body.clone(), None).await;
    }
    let no_close = [("METERFLOW_LATENESS__PERIOD_GRACE_S", "315360000")];
    env.run_until_idle(&no_close);
    let totals = env.sql(
        "SELECT customer_id, meter, billing_period, CAST(SUM(quantity) AS VARCHAR), SUM(event_count) FROM \
            usage_summaries \
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    );
    let expect = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        totals[1..],
        [
            expect(&["acme", "api_calls", "2026-09", "1000000000000007.000000000", "2"]),
            expect(&["globex", "api_calls", "2026-09-15", "1000000000000000.000000000", "1"]),
            expect(&["globex", "api_calls", "2026-10-15", "5.000000000", "1"]),
        ],
        "{totals:?}"
    );
    let reasons = env.sql("SELECT reason, COUNT(*) FROM rejections GROUP BY 1 ORDER BY 1");
    assert_eq!(reasons[1..], [expect(&["value_out_of_range", "5"])], "{reasons:?}");
    let detail = env.sql("SELECT detail FROM rejections WHERE stream_seq = 2");
    assert!(detail[1][0].contains("past 1000000000000000"), "{detail:?}");

    // The same decisions on a replay from the start of the stream (state set aside).
    std::fs::remove_dir_all(env.data_dir().join("_state")).unwrap();
    env.run_until_idle(&no_close);
    assert_eq!(env.sql("SELECT reason, COUNT(*) FROM rejections GROUP BY 1 ORDER BY 1"), reasons);
    // The full period rates and invoices exactly: 10^15 requests at 1000 EUR.
    let amount = env.sql(
        "SELECT CAST(SUM(amount) AS VARCHAR) FROM usage_summaries WHERE customer_id = 'globex' AND \
            billing_period = '2026-09-15'",
    );
    assert_eq!(amount[1][0], "1000000000000000000.000000000000000000", "{amount:?}");
}

// Found in review: a message larger than `fetch_max_bytes` stalled the pipeline in endless empty
// pulls (the server answers such a pull with "Exceeds MaxBytes" and no message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_a_pull_may_bring_is_read_on_its_own_and_the_stream_flows_on() {
    let env = TestEnv::start_with_default_bounds();
    env.ensure_streams().await;
    let js = env.jetstream().await;
    let padding = "x".repeat(200_000);
    let big = event_with(&[("data", &format!(r#"{{"requests":"3","region":"eu-west-1","note":"{padding}"}}"#))]);
    for body in [good(), big, good()] {
        js.publish("usage.good", body.into()).await.unwrap().await.unwrap();
    }
    let mut child = env
        .command("run")
        .args(["--exit-when-idle", "1s"])
        .env("METERFLOW_NATS__FETCH_MAX_BYTES", "65536")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = None;
    let done = common::wait_until(std::time::Duration::from_secs(60), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !done {
        child.kill().unwrap();
    }
    assert!(done, "the pipeline stalled on a message larger than fetch_max_bytes");
    assert!(status.unwrap().success());
    let counted: u64 = env.sql("SELECT SUM(event_count) FROM usage_summaries")[1][0].parse().unwrap();
    assert_eq!(counted, 3, "the large message was read and counted with the others");
}
