//! The HTTP API against real components: `meterflow run` serving it (with the operations page),
//! real HTTP requests, the OpenMeter Python SDK unchanged, schemathesis over the OpenAPI
//! document; and `meterflow serve --pg-listen` read by `psql` and psycopg.

use crate::common::{api_key, event, sigterm, tools_python, wait_until, TestEnv};
use chrono::{DateTime, Duration as Span, DurationRound, Utc};
use meterflow_testkit::local_nats::free_port;
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn an_hour_ago() -> DateTime<Utc> {
    (Utc::now() - Span::hours(1)).duration_trunc(Span::hours(1)).unwrap()
}

/// Waits until something answers HTTP on `port`.
fn wait_for_port(port: u16, what: &mut Child) {
    let up = wait_until(Duration::from_secs(60), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    if !up {
        what.kill().ok();
        panic!("nothing listens on {port}");
    }
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let r = req.send().await.expect("the server answers");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    Answer { status, headers, body: r.text().await.unwrap() }
}

async fn post(base: &str, key: Option<&str>, content_type: &str, body: String) -> Answer {
    let mut req = reqwest::Client::new().post(format!("{base}/api/v1/events")).header("content-type", content_type);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    send(req.body(body)).await
}

async fn get(base: &str, key: &str, path: &str) -> Answer {
    send(reqwest::Client::new().get(format!("{base}{path}")).bearer_auth(key)).await
}

fn tokens(id: &str, subject: &str, time: &str, value: &str) -> String {
    event(id, subject, "llm_tokens", time, &format!(r#"{{"tokens":"{value}","model":"small"}}"#))
}

/// The hour-window value of `llm_tokens` for `subject`, as the API answers it (raw text).
async fn hourly(base: &str, key: &str, subject: &str, hour: DateTime<Utc>) -> Option<String> {
    let from = hour.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let path = format!("/api/v1/meters/llm_tokens/query?windowSize=HOUR&subject={subject}&from={from}");
    let a = get(base, key, &path.replace('+', "%2B")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let data = a.json()["data"].as_array().cloned().unwrap_or_default();
    data.first().map(|row| {
        // The exact number text as sent, not a float round trip.
        let text = a.body.split("\"value\":").nth(1).unwrap_or_default();
        let _ = row;
        text.split([',', '}']).next().unwrap_or_default().to_string()
    })
}

/// Polls [`hourly`] until it answers `want` (the pipeline commits within seconds) or 60 s pass.
async fn hourly_once(base: &str, key: &str, subject: &str, hour: DateTime<Utc>, want: &str) -> Option<String> {
    let mut last = None;
    for _ in 0..120 {
        last = hourly(base, key, subject, hour).await;
        if last.as_deref() == Some(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_ingests_durably_answers_meter_queries_exactly_and_keeps_tenants_apart() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let admin = api_key(&env, &[]);
    let acme = api_key(&env, &["acme"]);
    let port = free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut run = env.spawn_run(&[("METERFLOW_OPS__LISTEN", listen.as_str())]);
    wait_for_port(port, &mut run);
    let base = format!("http://{listen}");
    let hour = an_hour_ago();
    let t = hour.to_rfc3339();

    // One event, then a batch, with a customer-bound key for its own subject: 204 each.
    let a = post(&base, Some(&acme), "application/cloudevents+json", tokens("h-1", "acme", &t, "0.1")).await;
    assert_eq!(a.status, 204, "{}", a.body);
    let batch = format!("[{},{}]", tokens("h-2", "acme", &t, "0.2"), tokens("h-3", "acme", &t, "1.000"));
    let a = post(&base, Some(&acme), "application/cloudevents-batch+json", batch.clone()).await;
    assert_eq!(a.status, 204, "{}", a.body);
    // A client retry of the same batch: accepted, counted once.
    assert_eq!(post(&base, Some(&acme), "application/json", batch).await.status, 204);

    // Another tenant's subject with acme's key: 403, naming the event; nothing published.
    let mixed = format!("[{},{}]", tokens("h-4", "acme", &t, "5"), tokens("h-5", "globex", &t, "7"));
    let a = post(&base, Some(&acme), "application/cloudevents-batch+json", mixed).await;
    assert_eq!(a.status, 403, "{}", a.body);
    let p = a.json();
    assert_eq!(p["errors"][0]["event"], 1);
    assert_eq!(p["errors"][0]["reason"], "forbidden_subject");
    assert_eq!(a.headers["content-type"], "application/problem+json");

    // Malformed events: 400 naming each bad event and field.
    let bad = format!(
        "[{},{},{}]",
        tokens("h-6", "acme", &t, "1"),
        tokens("h-7", "acme", "yesterday", "1"),
        event("h-8", "acme", "llm_tokens", &t, r#"{"model":"small"}"#)
    );
    let a = post(&base, Some(&acme), "application/cloudevents-batch+json", bad).await;
    assert_eq!(a.status, 400, "{}", a.body);
    let errors = a.json()["errors"].as_array().cloned().unwrap();
    assert_eq!(errors.len(), 2, "{}", a.body);
    assert_eq!((errors[0]["event"].as_u64(), errors[0]["field"].as_str()), (Some(1), Some("time")));
    assert_eq!((errors[1]["event"].as_u64(), errors[1]["field"].as_str()), (Some(2), Some("data.tokens")));

    // Wrong content type, too large, no key, a revoked key.
    assert_eq!(post(&base, Some(&acme), "text/plain", "x".into()).await.status, 415);
    let huge = format!("[{}]", vec![tokens("h-9", "acme", &t, "1"); 8_000].join(","));
    assert_eq!(post(&base, Some(&acme), "application/json", huge).await.status, 413);
    let a = post(&base, None, "application/json", tokens("h-10", "acme", &t, "1")).await;
    assert_eq!(a.status, 401);
    assert!(a.headers.contains_key("www-authenticate"));
    let revoked = api_key(&env, &["acme"]);
    let id = revoked.split('_').nth(1).unwrap().to_string();
    let out = env.command("api-key").args(["revoke", &id]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let a = post(&base, Some(&revoked), "application/json", tokens("h-11", "acme", &t, "1")).await;
    assert_eq!(a.status, 401, "{}", a.body);
    let listed = env.command("api-key").arg("list").output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.contains(&format!("{id}  revoked")), "{listed}");
    assert!(!listed.contains(&revoked), "the list never shows a key");

    // The meter query answers from the committed tables, exactly: 0.1 + 0.2 + 1.000 = 1.3.
    assert_eq!(hourly_once(&base, &acme, "acme", hour, "1.3").await.as_deref(), Some("1.3"));
    let a = get(&base, &acme, "/api/v1/meters/llm_tokens/query?windowSize=DAY&groupBy=model").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.headers.contains_key("x-meterflow-table-version"));
    assert_eq!(a.json()["data"][0]["groupBy"]["model"], "small");
    // Scope: acme's key sees no other customer's rows.
    let a = get(&base, &admin, "/api/v1/meters/llm_tokens/subjects").await;
    assert_eq!(a.json(), serde_json::json!(["acme"]));
    let a = post(&base, Some(&admin), "application/json", tokens("h-12", "globex", &t, "9")).await;
    assert_eq!(a.status, 204, "{}", a.body);
    assert_eq!(hourly_once(&base, &admin, "globex", hour, "9").await.as_deref(), Some("9"));
    assert_eq!(hourly(&base, &acme, "globex", hour).await, None, "acme's key reads no globex rows");
    let a = get(&base, &acme, "/api/v1/meters/llm_tokens/query?windowSize=MINUTE").await;
    assert_eq!(a.status, 400);
    assert!(a.json()["detail"].as_str().unwrap().contains("finer"), "{}", a.body);
    assert_eq!(get(&base, &acme, "/api/v1/meters/nope").await.status, 404);

    // meterflow's own: usage so far and the invoice preview, per customer.
    let period = hour.format("%Y-%m").to_string();
    let a = get(&base, &acme, &format!("/api/v1/customers/acme/usage?period={period}")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let usage = a.json();
    let tokens_line = usage["meters"].as_array().unwrap().iter().find(|m| m["meter"] == "llm_tokens").cloned();
    assert_eq!(tokens_line.map(|m| m["quantity"].clone()), Some(Value::from("1.3")), "{usage}");
    let a = get(&base, &acme, &format!("/api/v1/customers/acme/invoice-preview?period={period}")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["customer_id"], "acme");
    assert_eq!(get(&base, &acme, "/api/v1/customers/globex/usage").await.status, 403);
    assert_eq!(get(&base, &admin, "/api/v1/customers/nobody/usage").await.status, 404);

    // Prepaid credits: a grant made with the CLI, its balance and ledger over HTTP.
    let out =
        env.command("credits").args(["grant", "--customer", "acme", "--amount", "5", "--reason", "trial"]).output();
    let out = out.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let a = get(&base, &acme, "/api/v1/customers/acme/credits").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let credits = a.json();
    assert_eq!(
        (credits["totals"]["USD"].as_str(), credits["grants"][0]["grant_id"].as_str()),
        (Some("5.00"), Some("G-acme-1"))
    );
    let a = get(&base, &acme, "/api/v1/customers/acme/credits/ledger").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        (a.json()["entries"][0]["entry_kind"].as_str(), a.json()["entries"][0]["amount"].as_str()),
        (Some("grant"), Some("5.00"))
    );
    assert_eq!(get(&base, &acme, "/api/v1/customers/globex/credits").await.status, 403);
    assert_eq!(get(&base, &acme, "/api/v1/customers/acme/credits?x=1").await.status, 400);

    // The operations page and metrics moved onto the same server.
    let a = send(reqwest::Client::new().get(format!("{base}/metrics"))).await;
    assert_eq!(a.status, 200);
    assert!(a.body.contains("meterflow_committed_sequence"), "pipeline metrics");
    assert!(a.body.contains("meterflow_api_requests_total{route=\"/api/v1/events\",status=\"204\"}"), "{}", a.body);
    assert_eq!(a.body.matches("# EOF").count(), 1);
    let a = send(reqwest::Client::new().get(format!("{base}/nowhere"))).await;
    assert_eq!((a.status, a.headers["content-type"].to_str().unwrap()), (404, "application/problem+json"));
    let a = send(reqwest::Client::new().delete(format!("{base}/api/v1/meters"))).await;
    assert_eq!(a.status, 405);

    // The OpenMeter Python SDK, unchanged, against meterflow.
    let sdk = crate::common::examples_dir().join("../meterflow/tests/clients/openmeter_sdk.py");
    let out = Command::new(tools_python())
        .arg(&sdk)
        .args(["--url", &base, "--key", &admin, "--subject", "globex-eu", "--type", "llm_tokens"])
        .args(["--meter", "llm_tokens", "--value-property", "tokens"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "OpenMeter SDK: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The described API, tested against the running server: no 500s, every answer matches.
    let work = tempfile::tempdir().unwrap();
    std::fs::write(
        work.path().join("st.toml"),
        "[parameters]\n\"path.meterIdOrSlug\" = \"llm_tokens\"\n\"path.customerId\" = \"acme\"\n",
    )
    .unwrap();
    let schemathesis = tools_python().with_file_name("schemathesis");
    let out = Command::new(schemathesis)
        .current_dir(work.path())
        .args(["--config-file", "st.toml", "run", &format!("{base}/api/v1/openapi.yaml")])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--max-examples", "25", "--workers", "2", "--seed", "1", "--request-timeout", "10"])
        .args(["--generation-database", "none", "--no-color"])
        .args(["-H", &format!("Authorization: Bearer {acme}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("schemathesis runs (scripts/tools.sh installs it)");
    if !out.status.success() {
        run.kill().ok();
        let logs = run.wait_with_output().map(|o| String::from_utf8_lossy(&o.stderr).to_string()).unwrap_or_default();
        panic!(
            "schemathesis: {}{}\nserver log:\n{logs}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The broker down: 503 with Retry-After, never a false success.
    let mut env = env;
    env.nats.stop();
    let a = post(&base, Some(&acme), "application/json", tokens("h-13", "acme", &t, "1")).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.headers.contains_key("retry-after"));
    run.kill().ok();
    run.wait().ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bi_tools_read_the_tables_over_the_postgres_protocol_with_a_key_as_password() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let js = env.jetstream().await;
    let t = an_hour_ago().to_rfc3339();
    for (i, (subject, value)) in [("acme", "2.5"), ("acme", "0.25"), ("globex", "7")].iter().enumerate() {
        crate::common::publish(&js, "usage.x", tokens(&format!("pg-{i}"), subject, &t, value), None).await;
    }
    env.run_until_idle(&[]);
    let admin = api_key(&env, &[]);
    let acme = api_key(&env, &["acme"]);
    let (http, pg) = (free_port().unwrap(), free_port().unwrap());
    let mut serve = env
        .command("serve")
        .args(["--listen", &format!("127.0.0.1:{http}"), "--pg-listen", &format!("127.0.0.1:{pg}")])
        .env("METERFLOW_SQL__TIMEOUT_S", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_port(pg, &mut serve);
    let user = |key: &str| key.split('_').nth(1).unwrap().to_string();
    let psql = |key: &str, sql: &str| {
        Command::new("psql")
            .arg(format!("host=127.0.0.1 port={pg} user={} dbname=meterflow sslmode=disable", user(key)))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", key)
            .output()
            .expect("psql runs (Debian postgresql-client: scripts/tools.sh installs it)")
    };
    let out = psql(&admin, "SELECT customer_id, SUM(quantity) FROM usage_summaries GROUP BY customer_id ORDER BY 1");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("acme|2.75") && text.contains("globex|7"), "{text}");
    // A customer-bound key sees only its customers' rows, whatever the query says.
    let out = psql(&acme, "SELECT DISTINCT customer_id FROM usage_summaries");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "acme");
    // Writes are refused before anything runs.
    let out = psql(&admin, "CREATE TABLE x (a INT)");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only"), "{}", String::from_utf8_lossy(&out.stderr));
    // A query past `[sql] timeout_s` stops with query_canceled (simple protocol here; the
    // psycopg script checks the extended protocol).
    let out = psql(&admin, "SELECT COUNT(*) FROM generate_series(1, 10000000000)");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() && err.contains("query stopped after the 3 s limit"), "{err}");
    // A wrong key is refused.
    let mut wrong = admin.clone();
    wrong.replace_range(wrong.len() - 4.., "0000");
    assert!(!psql(&wrong, "SELECT 1").status.success());

    // psycopg: simple and extended protocol, parameters, decimal and timestamp types.
    let script = crate::common::examples_dir().join("../meterflow/tests/clients/pg_clients.py");
    let dsn = format!("host=127.0.0.1 port={pg} user={} password={acme} dbname=meterflow sslmode=disable", user(&acme));
    let out = Command::new(tools_python())
        .arg(&script)
        .args(["--dsn", &dsn, "--customer", "acme", "--expect-quantity", "2.75", "--meter", "llm_tokens"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psycopg: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    sigterm(&serve);
    serve.wait().ok();

    // With TLS configured: the key travels as a cleartext password inside TLS, and a
    // connection that will not use TLS is refused.
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs (scripts/tools.sh installs it)");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let tls_port = free_port().unwrap();
    let mut tls_serve = env
        .command("serve")
        .args(["--listen", &format!("127.0.0.1:{}", free_port().unwrap()), "--pg-listen"])
        .arg(format!("127.0.0.1:{tls_port}"))
        .env("METERFLOW_API__PG_TLS_CERT", &cert)
        .env("METERFLOW_API__PG_TLS_KEY", &key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_port(tls_port, &mut tls_serve);
    let psql_tls = |sslmode: &str| {
        Command::new("psql")
            .arg(format!("host=127.0.0.1 port={tls_port} user={} dbname=meterflow sslmode={sslmode}", user(&acme)))
            .args(["-X", "-A", "-t", "-c", "SELECT COUNT(DISTINCT customer_id) FROM usage_summaries"])
            .env("PGPASSWORD", &acme)
            .output()
            .unwrap()
    };
    let out = psql_tls("require");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    assert!(!psql_tls("disable").status.success(), "without TLS the TLS endpoint refuses the key");
    sigterm(&tls_serve);
    tls_serve.wait().ok();
}
