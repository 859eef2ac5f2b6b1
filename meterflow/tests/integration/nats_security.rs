//! NATS security end-to-end: a nats-server of its own with TLS (client certificates verified),
//! per-user permissions and JetStream; the real `meterflow` binary connects as a least-privilege
//! user, a tenant publisher is confined to its own subjects, and bad credentials fail with a
//! hint and without printing any secret.

use crate::common::{event, wait_until, NO_OPS_PAGE, WIDE_BOUNDS};
use meterflow_ingest::{Broker, NatsConfig, Secret};
use rust_decimal::Decimal;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const PIPELINE_PASSWORD: &str = "pipeline-S3cret-q8Zr";
const TENANT_A_PASSWORD: &str = "tenant-a-S3cret-w2Lp";
const WRONG_PASSWORD: &str = "not-the-password-K7vX";
const TOKEN: &str = "token-S3cret-m4Hd";
/// A test-only NKey user (seed bytes 1..=32), and its public key.
const NKEY_SEED: &str = "SUAACAQDAQCQMBYIBEFAWDANBYHRAEISCMKBKFQXDAMRUGY4DUPB6IC5CQ";
const NKEY_PUBLIC: &str = "UB43KVROR7TFJ6KAPCYRF2FJROTZAH4FHLTJLPWX4DRZCC5NASLGJBFE";

/// Everything `meterflow run` publishes to, with the default `[nats]` names (stream `USAGE`,
/// DLQ stream `USAGE_DLQ` on `usage_dlq.>`, durable consumer `meterflow`). The README lists the
/// same set. Found by experiment: without any one of them, except `CONSUMER.INFO` (only used to
/// re-create a consumer an operator deleted), a run fails or stalls. The two `STREAM.CREATE`
/// subjects are only used while the streams do not exist yet.
const PIPELINE_PUBLISH: &[&str] = &[
    "$JS.API.STREAM.INFO.USAGE",
    "$JS.API.STREAM.CREATE.USAGE",
    "$JS.API.STREAM.INFO.USAGE_DLQ",
    "$JS.API.STREAM.CREATE.USAGE_DLQ",
    "$JS.API.CONSUMER.CREATE.USAGE.meterflow",
    "$JS.API.CONSUMER.DELETE.USAGE.meterflow",
    "$JS.API.CONSUMER.INFO.USAGE.meterflow",
    "$JS.API.CONSUMER.MSG.NEXT.USAGE.meterflow",
    "$JS.ACK.USAGE.meterflow.>",
    "usage_dlq.>",
    // The writer lease (one pipeline per stream at a time) in the KV bucket meterflow_leases;
    // creating the bucket reads the account's JetStream limits.
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.KV_meterflow_leases",
    "$JS.API.STREAM.CREATE.KV_meterflow_leases",
    "$JS.API.DIRECT.GET.KV_meterflow_leases.>",
    "$KV.meterflow_leases.USAGE.meterflow",
    // Asking the stream whether skipped sequences exist (only after a gap).
    "$JS.API.STREAM.MSG.GET.USAGE",
    // The age of the oldest DLQ entry of each reason (metrics and the operations page).
    "$JS.API.STREAM.MSG.GET.USAGE_DLQ",
    // The catalog: reading its revisions; creating the stream and importing the reference
    // files as the first revision only while it does not exist yet.
    "$JS.API.STREAM.INFO.METERFLOW_CATALOG",
    "$JS.API.STREAM.MSG.GET.METERFLOW_CATALOG",
    "$JS.API.STREAM.CREATE.METERFLOW_CATALOG",
    "meterflow.catalog",
];
/// Replies to the pipeline's requests and pulled messages arrive on its inbox. (An empty allow
/// list would mean "everything" to nats-server, not "nothing".)
/// Catalog changes arrive as they are appended on the catalog subject.
const PIPELINE_SUBSCRIBE: &[&str] = &["_INBOX.>", "meterflow.catalog"];

fn quoted(subjects: &[&str]) -> String {
    subjects.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")
}

fn pipeline_permissions() -> String {
    format!(
        "{{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }} }}",
        quoted(PIPELINE_PUBLISH),
        quoted(PIPELINE_SUBSCRIBE)
    )
}

/// Users and permissions of the main server: the pipeline (user/password and an NKey user with
/// the same rights), and tenant A, which may publish to its own subjects only and read replies
/// on its own inbox prefix only (so it cannot read the pipeline's pulled messages).
fn users_authorization() -> String {
    format!(
        r#"authorization {{
  users = [
    {{ user: "pipeline", password: "{PIPELINE_PASSWORD}", permissions: {pipeline} }}
    {{ nkey: "{NKEY_PUBLIC}", permissions: {pipeline} }}
    {{ user: "tenant_a", password: "{TENANT_A_PASSWORD}", permissions: {{
        publish: {{ allow: ["usage.tenant-a.>"] }}, subscribe: {{ allow: ["_INBOX.tenant-a.>"] }} }} }}
  ]
}}"#,
        pipeline = pipeline_permissions()
    )
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command-line tool is needed to make the test certificates");
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A test CA and certificates signed by it: `server` (for 127.0.0.1), `pipeline` and
/// `tenant-a` (client authentication), each as `<name>.pem` and `<name>-key.pem`.
fn make_certificates(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=meterflow test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    for (name, usage) in [
        ("server", "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"),
        ("pipeline", "extendedKeyUsage=clientAuth\n"),
        ("tenant-a", "extendedKeyUsage=clientAuth\n"),
    ] {
        let (key, csr, cert, ext) =
            (format!("{name}-key.pem"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        std::fs::write(
            dir.join(&ext),
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{usage}"),
        )
        .unwrap();
        let subject = format!("/CN={name}");
        let mut req = vec!["req", "-new"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
}

/// A nats-server with JetStream, TLS that verifies client certificates, and the given
/// `authorization` block. Killed on drop.
struct SecureNats {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl SecureNats {
    fn start() -> SecureNats {
        SecureNats::start_with(&users_authorization())
    }

    fn start_with(authorization: &str) -> SecureNats {
        let dir = tempfile::tempdir().unwrap();
        make_certificates(dir.path());
        let binary =
            meterflow_testkit::local_nats::find_binary().expect("nats-server (run scripts/tools.sh to install it)");
        let port = meterflow_testkit::local_nats::free_port().unwrap();
        let p = |name: &str| dir.path().join(name).display().to_string();
        let conf = format!(
            r#"listen: "127.0.0.1:{port}"
jetstream {{ store_dir: "{store}" }}
tls {{
  cert_file: "{cert}"
  key_file: "{key}"
  ca_file: "{ca}"
  verify: true
  timeout: 5
}}
{authorization}
"#,
            store = p("store"),
            cert = p("server.pem"),
            key = p("server-key.pem"),
            ca = p("ca.pem"),
        );
        std::fs::write(dir.path().join("nats.conf"), conf).unwrap();
        let log = std::fs::File::create(dir.path().join("nats.log")).unwrap();
        let child = Command::new(&binary)
            .arg("-c")
            .arg(dir.path().join("nats.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        let mut s = SecureNats { child, port, dir };
        let up = wait_until(Duration::from_secs(15), || {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("nats-server exited with {status}: {}", s.log());
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "nats-server did not listen within 15 s: {}", s.log());
        // JetStream is ready shortly after the listener.
        std::thread::sleep(Duration::from_millis(200));
        s
    }

    fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("nats.log")).unwrap_or_default()
    }

    /// The pipeline's settings as `meterflow run` gets them: user and password over mTLS.
    fn pipeline_config(&self) -> NatsConfig {
        NatsConfig {
            url: self.url(),
            user: Some("pipeline".into()),
            password: Some(Secret::new(PIPELINE_PASSWORD)),
            tls_ca_file: Some(self.path("ca.pem")),
            tls_cert_file: Some(self.path("pipeline.pem")),
            tls_key_file: Some(self.path("pipeline-key.pem")),
            max_age_days: 0,
            ..Default::default()
        }
    }

    /// The TLS part of the pipeline's environment (CA and client certificate).
    fn pipeline_tls_env(&self) -> Vec<(String, String)> {
        let p = |name: &str| self.path(name).display().to_string();
        vec![
            ("METERFLOW_NATS__TLS_CA_FILE".into(), p("ca.pem")),
            ("METERFLOW_NATS__TLS_CERT_FILE".into(), p("pipeline.pem")),
            ("METERFLOW_NATS__TLS_KEY_FILE".into(), p("pipeline-key.pem")),
        ]
    }

    /// The pipeline's full environment: user and password over mTLS.
    fn pipeline_env(&self) -> Vec<(String, String)> {
        let mut env = self.pipeline_tls_env();
        env.push(("METERFLOW_NATS__USER".into(), "pipeline".into()));
        env.push(("METERFLOW_NATS__PASSWORD".into(), PIPELINE_PASSWORD.into()));
        env
    }

    /// `meterflow <sub>` against this server, with a data directory in `data`.
    fn meterflow(&self, sub: &str, data: &Path, env: &[(String, String)]) -> Command {
        let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
        let config = Path::new(&manifest).join("../examples/meterflow.toml");
        let mut c = Command::new(env!("CARGO_BIN_EXE_meterflow"));
        c.arg(sub).arg("--config").arg(config).arg("--data-dir").arg(data).arg("--nats-url").arg(self.url());
        // Only the settings given here: nothing from the environment of the test run.
        for (name, _) in std::env::vars() {
            if name.starts_with("METERFLOW_") {
                c.env_remove(name);
            }
        }
        c.env("RUST_LOG", "warn")
            .env(NO_OPS_PAGE.0, NO_OPS_PAGE.1)
            .envs(WIDE_BOUNDS)
            .envs(env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// `meterflow run --exit-when-idle 1s` to completion.
    fn run_until_idle(&self, data: &Path, env: &[(String, String)]) -> Output {
        self.meterflow("run", data, env).args(["--exit-when-idle", "1s"]).output().expect("meterflow runs")
    }

    /// (customer, events, quantity) of every customer in `usage_summaries`.
    fn counted(&self, data: &Path) -> Vec<(String, u64, Decimal)> {
        let out = self
            .meterflow("sql", data, &[])
            .args([
                "--format",
                "csv",
                "SELECT customer_id, SUM(event_count), SUM(quantity) FROM usage_summaries GROUP BY 1 ORDER BY 1",
            ])
            .output()
            .expect("meterflow sql runs");
        assert!(out.status.success(), "sql failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[0].to_string(), f[1].parse().unwrap(), f[2].parse().unwrap())
            })
            .collect()
    }

    /// Tenant A's client: its own user, client certificate and inbox prefix. Server errors
    /// (permission violations) are sent to `errors`.
    async fn tenant_a(&self, errors: tokio::sync::mpsc::UnboundedSender<String>) -> async_nats::Client {
        // Like `Broker::connect`: rustls has two providers in this build, so choose one.
        let _already_installed = async_nats::rustls::crypto::ring::default_provider().install_default();
        async_nats::ConnectOptions::new()
            .user_and_password("tenant_a".into(), TENANT_A_PASSWORD.into())
            .add_root_certificates(self.path("ca.pem"))
            .add_client_certificate(self.path("tenant-a.pem"), self.path("tenant-a-key.pem"))
            .require_tls(true)
            .custom_inbox_prefix("_INBOX.tenant-a")
            .request_timeout(Some(Duration::from_secs(2)))
            .event_callback(move |e| {
                let errors = errors.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = e {
                        let _sent = errors.send(e.to_string());
                    }
                }
            })
            .connect(self.url())
            .await
            .expect("tenant A connects")
    }
}

impl Drop for SecureNats {
    fn drop(&mut self) {
        let _killed = self.child.kill();
        let _waited = self.child.wait();
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn assert_no_secret(out: &Output) {
    let all = text(out);
    for secret in [PIPELINE_PASSWORD, TENANT_A_PASSWORD, WRONG_PASSWORD, TOKEN, NKEY_SEED] {
        assert!(!all.contains(secret), "a secret was printed:\n{all}");
    }
}

/// Waits for a server error that contains every one of `words`.
async fn expect_server_error(errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>, words: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let e = tokio::time::timeout_at(deadline, errors.recv())
            .await
            .unwrap_or_else(|_| panic!("no server error with {words:?}"))
            .expect("error channel open");
        if words.iter().all(|w| e.contains(w)) {
            return e;
        }
    }
}

/// Publishes an api_calls event for customer `acme` (3 requests) and waits for the stream's ack.
async fn publish_acme(js: &async_nats::jetstream::Context, nats_subject: &str, id: &str) -> u64 {
    let e = event(id, "acme", "api_calls", "2026-11-23T05:00:00Z", r#"{"requests":3,"region":"eu-west-1"}"#);
    js.publish(nats_subject.to_string(), e.into()).await.unwrap().await.expect("the stream stores the event").sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_counts_tenant_a_usage_over_mutual_tls_with_its_least_privilege_user() {
    let nats = SecureNats::start();
    // The pipeline's user creates the streams itself (as `meterflow run` does on first start).
    Broker::connect(nats.pipeline_config()).await.expect("pipeline connects").ensure_streams().await.unwrap();
    let (tx, _errors) = tokio::sync::mpsc::unbounded_channel();
    let js = async_nats::jetstream::new(nats.tenant_a(tx).await);
    for id in ["a1", "a2", "a3"] {
        publish_acme(&js, "usage.tenant-a.x", id).await;
    }
    // An event for a subject no customer owns: the pipeline publishes it to the DLQ.
    let stray = event("a4", "nobody", "api_calls", "2026-11-23T05:00:00Z", r#"{"requests":1}"#);
    js.publish("usage.tenant-a.x", stray.into()).await.unwrap().await.unwrap();

    let data = nats.dir.path().join("data");
    let out = nats.run_until_idle(&data, &nats.pipeline_env());
    assert!(out.status.success(), "meterflow run failed:\n{}\nserver log:\n{}", text(&out), nats.log());
    assert!(!text(&out).contains("Permissions Violation"), "the pipeline hit a permission it lacks:\n{}", text(&out));
    assert_no_secret(&out);
    assert_eq!(nats.counted(&data), vec![("acme".to_string(), 3, Decimal::from(9))]);
    let pipeline = Broker::connect(nats.pipeline_config()).await.unwrap();
    assert_eq!(pipeline.dlq_depth().await.unwrap(), 1, "the reject reached the DLQ");

    // A restart (consumer deleted and re-created at the committed position) works with the same
    // rights and counts nothing twice.
    publish_acme(&js, "usage.tenant-a.y", "a5").await;
    let out = nats.run_until_idle(&data, &nats.pipeline_env());
    assert!(out.status.success(), "second run failed:\n{}", text(&out));
    assert!(!text(&out).contains("Permissions Violation"), "{}", text(&out));
    assert_eq!(nats.counted(&data), vec![("acme".to_string(), 4, Decimal::from(12))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_a_publisher_cannot_publish_usage_for_tenant_b_nor_read_other_inboxes() {
    let nats = SecureNats::start();
    let pipeline = Broker::connect(nats.pipeline_config()).await.expect("pipeline connects");
    pipeline.ensure_streams().await.unwrap();
    let (tx, mut errors) = tokio::sync::mpsc::unbounded_channel();
    let client = nats.tenant_a(tx).await;
    let js = async_nats::jetstream::new(client.clone());

    let denied = event("b1", "acme", "api_calls", "2026-11-23T05:00:00Z", r#"{"requests":1000}"#);
    let ack = js.publish("usage.tenant-b.x", denied.into()).await.unwrap().await;
    assert!(ack.is_err(), "the publish to tenant B's subject must not be stored: {ack:?}");
    let e = expect_server_error(&mut errors, &["Permissions Violation", "usage.tenant-b.x"]).await;
    assert!(e.contains("Publish"), "{e}");

    // The connection still works for its own subjects, and the stream holds only that event.
    assert_eq!(publish_acme(&js, "usage.tenant-a.x", "a1").await, 1);
    assert_eq!(pipeline.last_sequence().await.unwrap(), 1, "tenant B's subject got nothing");

    // Nor can tenant A listen to others: not the usage subjects, not the shared inbox (where the
    // pipeline's pulled messages arrive).
    for subject in ["usage.>", "_INBOX.>"] {
        let _sub = client.subscribe(subject).await.unwrap();
        expect_server_error(&mut errors, &["Permissions Violation", "Subscription", subject]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_with_a_hint_and_no_secret_is_printed() {
    let nats = SecureNats::start();
    let mut env = nats.pipeline_tls_env();
    env.push(("METERFLOW_NATS__USER".into(), "pipeline".into()));
    env.push(("METERFLOW_NATS__PASSWORD".into(), WRONG_PASSWORD.into()));
    // Even the most verbose log level must not print it.
    env.push(("RUST_LOG".into(), "trace".into()));
    let out = nats.run_until_idle(&nats.dir.path().join("data"), &env);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("authorization violation"), "{stderr}");
    assert!(stderr.contains("check [nats] user and password"), "{stderr}");
    assert!(stderr.contains("METERFLOW_NATS__PASSWORD"), "{stderr}");
    assert_no_secret(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_client_certificate_fails_with_a_hint_about_tls_cert_file() {
    let nats = SecureNats::start();
    let env = vec![
        ("METERFLOW_NATS__TLS_CA_FILE".to_string(), nats.path("ca.pem").display().to_string()),
        ("METERFLOW_NATS__USER".into(), "pipeline".into()),
        ("METERFLOW_NATS__PASSWORD".into(), PIPELINE_PASSWORD.into()),
    ];
    let out = nats.run_until_idle(&nats.dir.path().join("data"), &env);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tls_cert_file") && stderr.contains("tls_key_file"), "{stderr}");
    assert_no_secret(&out);

    // Without the CA, the server's certificate is not trusted: the hint names tls_ca_file.
    let env = vec![("METERFLOW_NATS__TOKEN".to_string(), TOKEN.to_string())];
    let out = nats.run_until_idle(&nats.dir.path().join("data"), &env);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tls_ca_file"), "{stderr}");
    assert_no_secret(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_read_from_a_file_runs_the_pipeline() {
    let nats = SecureNats::start();
    Broker::connect(nats.pipeline_config()).await.unwrap().ensure_streams().await.unwrap();
    let (tx, _errors) = tokio::sync::mpsc::unbounded_channel();
    publish_acme(&async_nats::jetstream::new(nats.tenant_a(tx).await), "usage.tenant-a.x", "f1").await;
    let secret = nats.path("pipeline.password");
    std::fs::write(&secret, format!("{PIPELINE_PASSWORD}\n")).unwrap();
    let mut env = nats.pipeline_tls_env();
    env.push(("METERFLOW_NATS__USER".into(), "pipeline".into()));
    env.push(("METERFLOW_NATS__PASSWORD_FILE".into(), secret.display().to_string()));
    let data = nats.dir.path().join("data");
    let out = nats.run_until_idle(&data, &env);
    assert!(out.status.success(), "{}", text(&out));
    assert_no_secret(&out);
    assert_eq!(nats.counted(&data), vec![("acme".to_string(), 1, Decimal::from(3))]);

    // Both the password and the file: refused before connecting, naming the keys only.
    env.push(("METERFLOW_NATS__PASSWORD".into(), PIPELINE_PASSWORD.into()));
    let out = nats.run_until_idle(&data, &env);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password and password_file are both set"), "{}", text(&out));
    assert_no_secret(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nkey_seed_file_user_with_the_same_permissions_runs_the_pipeline() {
    let nats = SecureNats::start();
    let (tx, _errors) = tokio::sync::mpsc::unbounded_channel();
    let tenant = async_nats::jetstream::new(nats.tenant_a(tx).await);
    let seed = nats.path("pipeline.nk");
    std::fs::write(&seed, format!("{NKEY_SEED}\n")).unwrap();
    let mut env = nats.pipeline_tls_env();
    env.push(("METERFLOW_NATS__NKEY_SEED_FILE".into(), seed.display().to_string()));
    let data = nats.dir.path().join("data");
    // The first run creates the streams; then tenant A publishes and the second run counts.
    let out = nats.run_until_idle(&data, &env);
    assert!(out.status.success(), "{}\nserver log:\n{}", text(&out), nats.log());
    publish_acme(&tenant, "usage.tenant-a.x", "n1").await;
    let out = nats.run_until_idle(&data, &env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("Permissions Violation"), "{}", text(&out));
    assert_no_secret(&out);
    assert_eq!(nats.counted(&data), vec![("acme".to_string(), 1, Decimal::from(3))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_read_from_a_file_connects_and_a_wrong_one_is_refused_with_a_hint() {
    let nats = SecureNats::start_with(&format!("authorization {{ token: \"{TOKEN}\" }}"));
    let file = nats.path("token");
    std::fs::write(&file, TOKEN).unwrap();
    let config = NatsConfig {
        token_file: Some(file),
        tls_cert_file: Some(nats.path("pipeline.pem")),
        tls_key_file: Some(nats.path("pipeline-key.pem")),
        tls_ca_file: Some(nats.path("ca.pem")),
        url: nats.url(),
        ..Default::default()
    };
    Broker::connect(config.clone()).await.expect("token connects").ensure_streams().await.unwrap();

    let wrong = NatsConfig { token_file: None, token: Some(Secret::new(WRONG_PASSWORD)), ..config };
    let e = Broker::connect(wrong).await.expect_err("a wrong token is refused").to_string();
    assert!(e.contains("check [nats] token"), "{e}");
    assert!(!e.contains(WRONG_PASSWORD) && !e.contains(TOKEN), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_bill_another_tenants_customer_from_its_own_subject() {
    let nats = SecureNats::start();
    Broker::connect(nats.pipeline_config()).await.unwrap().ensure_streams().await.unwrap();
    // Reference data binding each customer to its tenant's NATS subjects.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let customers = std::fs::read_to_string(Path::new(&manifest).join("../examples/reference/customers.toml")).unwrap();
    let customers = customers
        .replacen("id = \"acme\"\n", "id = \"acme\"\npublish_subjects = [\"usage.tenant-a.>\"]\n", 1)
        .replacen("id = \"globex\"\n", "id = \"globex\"\npublish_subjects = [\"usage.tenant-b.>\"]\n", 1);
    assert_eq!(customers.matches("publish_subjects").count(), 2, "the example customers changed shape");
    let path = nats.dir.path().join("customers.toml");
    std::fs::write(&path, customers).unwrap();

    let (tx, _errors) = tokio::sync::mpsc::unbounded_channel();
    let js = async_nats::jetstream::new(nats.tenant_a(tx).await);
    publish_acme(&js, "usage.tenant-a.x", "own").await;
    // Tenant A may publish on its own subject, but not usage naming tenant B's customer.
    let forged =
        event("forged", "globex", "api_calls", "2026-11-23T05:00:00Z", r#"{"requests":1000,"region":"eu-west-1"}"#);
    js.publish("usage.tenant-a.x", forged.into()).await.unwrap().await.unwrap();

    let data = nats.dir.path().join("data");
    let mut env = nats.pipeline_env();
    env.push(("METERFLOW_REFERENCE__CUSTOMERS".into(), path.display().to_string()));
    let out = nats.run_until_idle(&data, &env);
    assert!(out.status.success(), "meterflow run failed:\n{}", text(&out));
    assert_eq!(nats.counted(&data), vec![("acme".to_string(), 1, Decimal::from(3))], "the forged usage was counted");
    let rejects = nats
        .meterflow("sql", &data, &[])
        .args(["--format", "csv", "SELECT reason, detail FROM rejections"])
        .output()
        .unwrap();
    let rejects = String::from_utf8_lossy(&rejects.stdout).to_string();
    assert!(rejects.contains("subject_not_allowed") && rejects.contains("usage.tenant-b.>"), "{rejects}");
}
