//! Every JetStream interaction of the pipeline.

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use meterflow_schemas::RejectReason;
use std::time::Duration;

use crate::config::{NatsAuth, NatsConfig};
use crate::{IngestError, Result};

/// One message pulled from the usage stream.
#[derive(Debug)]
pub struct Fetched {
    /// Stream sequence.
    pub seq: u64,
    /// The consumer's delivery sequence: consecutive for every delivery of one consumer
    /// (including redeliveries), from 1 after the consumer is (re)created. A jump means a
    /// delivery was lost on the way; on a partition's consumer (whose stream sequences are not
    /// consecutive) it is the gap check.
    pub delivery: u64,
    /// Publish time at the broker, seconds since the epoch (deterministic across redeliveries).
    pub published_unix: i64,
    /// The message subject.
    pub subject: String,
    /// The message bytes.
    pub payload: Bytes,
    /// The message itself, kept to acknowledge it after the commit.
    pub message: jetstream::Message,
}

/// A pull request sent to the server whose messages have not been collected yet.
pub struct PendingPull {
    batch: pull::Batch,
    /// Messages on `<prefix>.<subject>` are redriven DLQ entries (see [`crate::dlq`]).
    redrive_prefix: String,
    /// [`crate::partition::head`] of the partition the consumer reads (its subjects are read
    /// back as published).
    partition_head: Option<String>,
}

impl std::fmt::Debug for PendingPull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingPull")
    }
}

impl PendingPull {
    /// Sends a pull request on `consumer` for up to `max` messages, at most the configured
    /// bytes, waiting at most the configured fetch wait, and returns at once. The pipeline's
    /// pulls and the load generator's ceiling consumer both pull this way.
    pub async fn request(
        consumer: &jetstream::consumer::Consumer<pull::Config>,
        config: &NatsConfig,
        max: usize,
    ) -> Result<PendingPull> {
        PendingPull::request_bytes(consumer, config, max, config.fetch_max_bytes.max(64 * 1024)).await
    }

    async fn request_bytes(
        consumer: &jetstream::consumer::Consumer<pull::Config>,
        config: &NatsConfig,
        max: usize,
        max_bytes: usize,
    ) -> Result<PendingPull> {
        let fetch = consumer.fetch().max_messages(max.max(1)).expires(config.fetch_wait());
        // A replicated consumer (a stream with replicas on a cluster) answers a pull with a
        // byte cap by sending its end-of-pull status ("409 Batch Completed") ahead of the
        // messages (nats-server 2.15.1), and the client ends the pull there: every pull would
        // lose its messages. Such pulls go without the byte cap; a pull that outgrows the
        // client's buffer loses messages the gap check then fetches again.
        let replicated = consumer.cached_info().cluster.as_ref().is_some_and(|c| !c.replicas.is_empty());
        let fetch = if replicated { fetch } else { fetch.max_bytes(max_bytes) };
        let batch = fetch.messages().await.map_err(|e| js_err("fetch")(e.to_string()))?;
        Ok(PendingPull {
            batch,
            redrive_prefix: config.redrive_subject_prefix.clone(),
            partition_head: config.partition.map(crate::partition::head),
        })
    }

    /// The pull's messages as delivered, in stream order, once the pull is complete (full in
    /// messages or bytes, or expired).
    pub async fn messages(mut self) -> Result<Vec<jetstream::Message>> {
        let mut out = Vec::new();
        while let Some(m) = self.batch.next().await {
            match m {
                Ok(message) => out.push(message),
                // The pull is full in bytes (the next message would not fit): a normal end,
                // unless not even the first message fits (it is larger than fetch_max_bytes).
                Err(e) if e.to_string().contains("Exceeds MaxBytes") => {
                    if out.is_empty() {
                        return Err(IngestError::Oversized);
                    }
                    break;
                }
                Err(e) => return Err(js_err("fetch")(e.to_string())),
            }
        }
        Ok(out)
    }

    /// The pull's messages with their stream sequences and publish times.
    pub async fn collect(self) -> Result<Vec<Fetched>> {
        let prefix = self.redrive_prefix.clone();
        let head = self.partition_head.clone();
        let messages = self.messages().await?;
        let mut out = Vec::with_capacity(messages.len());
        for message in messages {
            if meterflow_faults::fires(meterflow_faults::Point::DropDelivery) {
                continue; // the test build loses this message on the way, as a slow consumer would
            }
            let (seq, delivery, published_unix) = match message.info() {
                Ok(info) => (info.stream_sequence, info.consumer_sequence, info.published.unix_timestamp()),
                Err(e) => return Err(js_err("message info")(e.to_string())),
            };
            let stored = match head.as_deref() {
                Some(h) => crate::partition::as_published(&message.subject, h, &prefix),
                None => message.subject.to_string(),
            };
            let (subject, published_unix) =
                crate::dlq::as_arrived(&stored, published_unix, &prefix, message.headers.as_ref());
            out.push(Fetched { seq, delivery, published_unix, subject, payload: message.payload.clone(), message });
        }
        Ok(out)
    }
}

/// Facts about the usage stream, read from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFacts {
    /// When the stream was created, Unix microseconds: its identity (a deleted and re-created
    /// stream has another).
    pub created_unix_micros: i64,
    /// The same, readable.
    pub created: String,
    /// First sequence still in the stream.
    pub first_seq: u64,
    /// Last sequence in the stream.
    pub last_seq: u64,
    /// How long the stream keeps messages (zero: no limit).
    pub max_age: Duration,
}

/// A reject on its way to the DLQ.
#[derive(Debug, Clone)]
pub struct RejectEnvelope {
    /// Stream sequence of the message it came from.
    pub seq: u64,
    /// Subject of that message.
    pub subject: String,
    /// When that message first arrived (Unix seconds; for a redriven one, its first arrival).
    pub arrival_unix: i64,
    /// Position in a batch-mode array, if any.
    pub index: Option<usize>,
    /// Reason code.
    pub reason: RejectReason,
    /// Human-readable detail.
    pub detail: String,
    /// Original bytes of the event (or of the whole message).
    pub original: Bytes,
}

/// The JetStream side of the pipeline.
#[derive(Debug)]
pub struct Broker {
    client: async_nats::Client,
    js: jetstream::Context,
    config: NatsConfig,
    consumer: Option<jetstream::consumer::Consumer<pull::Config>>,
}

fn js_err(operation: &'static str) -> impl Fn(String) -> IngestError {
    move |message| IngestError::JetStream { operation, message }
}

impl Broker {
    /// Connects to the server named in the config, with its authentication and TLS settings.
    /// Errors say which `[nats]` keys to check and never contain a secret.
    pub async fn connect(config: NatsConfig) -> Result<Self> {
        let auth = config.auth()?;
        for (key, path) in config.tls_files() {
            if !path.is_file() {
                return Err(IngestError::NatsConfig(format!("{key} {}: no such file", path.display())));
            }
        }
        let mut options = async_nats::ConnectOptions::new()
            .name("meterflow")
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(10)))
            // The client reconnects by itself; say so in the log, so an outage is visible.
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Disconnected => {
                        tracing::warn!(
                            "disconnected from the NATS server; reconnecting (nothing is acknowledged meanwhile)"
                        )
                    }
                    async_nats::Event::Connected => tracing::info!("connected to the NATS server"),
                    // This process closed the connection itself.
                    async_nats::Event::Closed => tracing::debug!("NATS connection closed"),
                    other => tracing::warn!(event = %other, "NATS connection event"),
                }
            });
        options = match &auth {
            NatsAuth::None => options,
            NatsAuth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.expose().to_string())
            }
            NatsAuth::Token(token) => options.token(token.expose().to_string()),
            NatsAuth::NKey(seed) => options.nkey(seed.expose().to_string()),
            NatsAuth::CredsFile(path) => options.credentials_file(path).await.map_err(|e| {
                // The messages of the creds parser name the part that is wrong, not its content.
                IngestError::NatsConfig(format!("creds_file {}: {e}", path.display()))
            })?,
        };
        if let Some(ca) = config.ca_file() {
            options = options.add_root_certificates(ca.to_path_buf());
        }
        if let Some((cert, key)) = config.client_certificate() {
            options = options.add_client_certificate(cert.to_path_buf(), key.to_path_buf());
        }
        if config.tls_enabled() {
            options = options.require_tls(true);
        }
        // rustls is built with both the ring and the aws-lc-rs providers in this workspace (the
        // HTTP client brings the second), so it cannot pick a process default by itself and
        // would panic on the first TLS connection. Choose ring, as async-nats is configured to
        // use, unless the process already chose one.
        if async_nats::rustls::crypto::CryptoProvider::get_default().is_none() {
            let _already_installed = async_nats::rustls::crypto::ring::default_provider().install_default();
        }
        if !(1..=5).contains(&config.replicas) {
            return Err(IngestError::NatsConfig(format!(
                "replicas = {}: JetStream keeps 1 to 5 replicas (3 on a cluster of three servers)",
                config.replicas
            )));
        }
        let servers = config.servers();
        if servers.is_empty() {
            return Err(IngestError::NatsConfig("url is empty: give nats://host:port".into()));
        }
        let client =
            async_nats::connect_with_options(servers, options).await.map_err(|e| connect_error(&config, &auth, &e))?;
        let js = jetstream::new(client.clone());
        Ok(Broker { client, js, config, consumer: None })
    }

    /// The JetStream context (for publishers such as the demo and tests).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The plain NATS client (for subscriptions outside JetStream, such as catalog notices).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The config this broker was built from.
    pub fn config(&self) -> &NatsConfig {
        &self.config
    }

    /// Creates the usage and dead-letter streams if absent and checks an existing usage stream
    /// keeps messages by limits (a work-queue stream would delete messages on ack, and the
    /// pipeline could not re-read from its committed sequence after a crash).
    pub async fn ensure_streams(&self) -> Result<()> {
        let c = &self.config;
        let redrive = c.redrive_stream_subject();
        if c.subjects.iter().any(|s| s.starts_with(&c.redrive_subject_prefix)) {
            return Err(IngestError::StreamConfig {
                stream: c.stream.clone(),
                message: format!("redrive_subject_prefix {:?} overlaps the usage subjects", c.redrive_subject_prefix),
            });
        }
        let (subjects, subject_transform) = if c.partitions > 0 {
            let transform = stream::SubjectTransform {
                source: crate::partition::TRANSFORM_SOURCE.into(),
                destination: crate::partition::transform_destination(c.partitions),
            };
            (vec![crate::partition::USAGE_SUBJECTS.to_string()], Some(transform))
        } else {
            (c.subjects.clone(), None)
        };
        let usage = stream::Config {
            name: c.stream.clone(),
            subjects: subjects.into_iter().chain([redrive]).collect(),
            subject_transform: subject_transform.clone(),
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: c.replicas,
            max_age: c.max_age(),
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        let mut s =
            self.js.get_or_create_stream(usage).await.map_err(|e| js_err("create usage stream")(e.to_string()))?;
        let info = s.info().await.map_err(|e| js_err("stream info")(e.to_string()))?;
        if info.config.retention != stream::RetentionPolicy::Limits {
            return Err(IngestError::StreamConfig {
                stream: c.stream.clone(),
                message: "retention must be `limits` so that committed ranges can be re-read after a crash".into(),
            });
        }
        let found = info.config.subject_transform.as_ref().map(|t| t.destination.as_str());
        let wanted = subject_transform.as_ref().map(|t| t.destination.as_str());
        if found != wanted {
            let describe = |d: Option<&str>| match d {
                Some(d) => format!("partitioned (subject transform to {d})"),
                None => "not partitioned".to_string(),
            };
            return Err(IngestError::StreamConfig {
                stream: c.stream.clone(),
                message: format!(
                    "the stream is {}, but [nats] partitions = {} wants it {}: partitions are fixed when the stream \
                     is created; set partitions to match, or create a new stream",
                    describe(found),
                    c.partitions,
                    describe(wanted)
                ),
            });
        }
        if c.subjects.iter().any(|s| s.starts_with(&c.dlq_subject_prefix)) {
            return Err(IngestError::StreamConfig {
                stream: c.dlq_stream.clone(),
                message: format!("dlq_subject_prefix {:?} overlaps the usage subjects", c.dlq_subject_prefix),
            });
        }
        let dlq = stream::Config {
            name: c.dlq_stream.clone(),
            subjects: vec![format!("{}.>", c.dlq_subject_prefix)],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: c.replicas,
            max_age: c.max_age(),
            // Re-publishing after a crash uses the same Nats-Msg-Id: a long window absorbs it.
            duplicate_window: Duration::from_secs(3_600),
            ..Default::default()
        };
        self.js.get_or_create_stream(dlq).await.map_err(|e| js_err("create DLQ stream")(e.to_string()))?;
        Ok(())
    }

    /// (Re)creates the durable pull consumer so that it delivers from `next_seq` on: the
    /// sequence after the last one the pipeline's committed state covers. The broker's own ack
    /// floor is deliberately not trusted (acks can be ahead of a commit lost to a power cut).
    pub async fn position_consumer(&mut self, next_seq: u64) -> Result<()> {
        let c = &self.config;
        let stream = self.js.get_stream(&c.stream).await.map_err(|e| js_err("get stream")(e.to_string()))?;
        // Absent consumers are fine: deletion only clears a stale position.
        let _deleted = stream.delete_consumer(&c.consumer).await;
        let deliver_policy = if next_seq <= 1 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence { start_sequence: next_seq }
        };
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(c.consumer.clone()),
                description: Some("meterflow pipeline: acked only after the Delta commit".into()),
                deliver_policy,
                ack_policy: AckPolicy::All,
                ack_wait: Duration::from_secs(c.ack_wait_s.max(1)),
                max_ack_pending: -1,
                filter_subject: c.partition.map(crate::partition::filter).unwrap_or_default(),
                ..Default::default()
            })
            .await
            .map_err(|e| js_err("create consumer")(e.to_string()))?;
        self.consumer = Some(consumer);
        Ok(())
    }

    /// Sends a pull request for up to `max` messages (and at most the configured bytes) and
    /// returns at once: the server delivers into the client's buffer while the caller works on
    /// the previous pull. Requests are served in order, so collecting them in the order they
    /// were sent yields the stream in order. A pull dropped uncollected loses nothing: its
    /// messages stay unacknowledged, and the next collected pull starts after them, which the
    /// pipeline detects as a gap and re-fetches.
    pub async fn request(&self, max: usize) -> Result<PendingPull> {
        let consumer = self.consumer.as_ref().ok_or_else(|| js_err("fetch")("consumer not positioned".into()))?;
        PendingPull::request(consumer, &self.config, max).await
    }

    /// Sends a pull request for the one next message, however large (up to what the server
    /// accepts from publishers): the way past a message larger than `fetch_max_bytes`.
    pub async fn request_large(&self) -> Result<PendingPull> {
        let consumer = self.consumer.as_ref().ok_or_else(|| js_err("fetch")("consumer not positioned".into()))?;
        let max_payload = self.client.server_info().max_payload.max(self.config.fetch_max_bytes);
        PendingPull::request_bytes(consumer, &self.config, 1, max_payload.saturating_add(1 << 20)).await
    }

    /// Facts about the usage stream now: its identity (creation time), sequences and limits.
    pub async fn stream_facts(&self) -> Result<StreamFacts> {
        let mut s = self.js.get_stream(&self.config.stream).await.map_err(|e| js_err("get stream")(e.to_string()))?;
        let info = s.info().await.map_err(|e| js_err("stream info")(e.to_string()))?;
        let created = info.created.unix_timestamp_nanos() / 1_000;
        Ok(StreamFacts {
            created_unix_micros: i64::try_from(created).unwrap_or(i64::MAX),
            created: info.created.to_string(),
            first_seq: info.state.first_sequence,
            last_seq: info.state.last_sequence,
            max_age: info.config.max_age,
        })
    }

    /// Whether the usage stream holds a message at `seq`, asked of the stream itself (a direct
    /// read of that sequence): `Ok(false)` only when the server says there is none.
    pub async fn sequence_exists(&self, seq: u64) -> Result<bool> {
        let stream = self.js.get_stream(&self.config.stream).await.map_err(|e| js_err("get stream")(e.to_string()))?;
        match stream.get_raw_message(seq).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(false),
            Err(e) => Err(js_err("get message")(e.to_string())),
        }
    }

    /// Publishes rejects to the DLQ and waits until the broker has stored every one. Each
    /// carries `Nats-Msg-Id` `<stream>:<seq>:<index>` so a replay after a crash is absorbed.
    pub async fn publish_rejects(&self, rejects: &[RejectEnvelope]) -> Result<()> {
        let mut acks = Vec::with_capacity(rejects.len());
        for r in rejects {
            let index = r.index.map_or_else(|| "m".to_string(), |i| i.to_string());
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{}:{}:{}", self.config.stream, r.seq, index).as_str());
            headers.insert("Meterflow-Reason", r.reason.code());
            headers.insert("Meterflow-Detail", header_safe(&r.detail).as_str());
            headers.insert("Meterflow-Stream", self.config.stream.as_str());
            headers.insert("Meterflow-Stream-Seq", r.seq.to_string().as_str());
            headers.insert("Meterflow-Subject", header_safe(&r.subject).as_str());
            headers.insert(crate::dlq::ARRIVAL_HEADER, r.arrival_unix.to_string().as_str());
            if let Some(i) = r.index {
                headers.insert("Meterflow-Event-Index", i.to_string().as_str());
            }
            let subject = format!("{}.{}", self.config.dlq_subject_prefix, r.reason.code());
            let ack = self
                .js
                .publish_with_headers(subject, headers, r.original.clone())
                .await
                .map_err(|e| js_err("DLQ publish")(e.to_string()))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(|e| js_err("DLQ publish ack")(e.to_string()))?;
        }
        Ok(())
    }

    /// Acknowledges every message up to and including `message` (ack-all consumer).
    pub async fn ack_through(&self, message: &jetstream::Message) -> Result<()> {
        message.ack().await.map_err(|e| js_err("ack")(e.to_string()))
    }

    /// Whether the pipeline's durable consumer still exists on the server (`Ok(false)` only when
    /// the server says it does not; unreachable servers are errors).
    pub async fn consumer_exists(&self) -> Result<bool> {
        let stream = self.js.get_stream(&self.config.stream).await.map_err(|e| js_err("get stream")(e.to_string()))?;
        match stream.consumer_info(&self.config.consumer).await {
            Ok(_) => Ok(true),
            Err(e) => match e.kind() {
                jetstream::context::ConsumerInfoErrorKind::NotFound => Ok(false),
                jetstream::context::ConsumerInfoErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND =>
                {
                    Ok(false)
                }
                _ => Err(js_err("consumer info")(e.to_string())),
            },
        }
    }

    /// The name of the pipeline's durable consumer and its stream.
    pub fn consumer_name(&self) -> (&str, &str) {
        (&self.config.consumer, &self.config.stream)
    }

    /// Last sequence currently in the usage stream; for a partition's reader, the last one of
    /// that partition (0 when it holds none).
    pub async fn last_sequence(&self) -> Result<u64> {
        if let Some(p) = self.config.partition {
            return self.last_sequence_of(p).await;
        }
        let mut s = self.js.get_stream(&self.config.stream).await.map_err(|e| js_err("get stream")(e.to_string()))?;
        let info = s.info().await.map_err(|e| js_err("stream info")(e.to_string()))?;
        Ok(info.state.last_sequence)
    }

    /// The last stream sequence of partition `p`'s subjects (0 when it holds none).
    pub async fn last_sequence_of(&self, p: u32) -> Result<u64> {
        let s = self.js.get_stream(&self.config.stream).await.map_err(|e| js_err("get stream")(e.to_string()))?;
        match s.get_last_raw_message_by_subject(&crate::partition::filter(p)).await {
            Ok(m) => Ok(m.sequence),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(js_err("last message of a partition")(e.to_string())),
        }
    }

    /// Where the usage stream lives on a cluster: its leader and each replica as `name` or
    /// `name (behind N)` / `name (offline)`; `None` on a single server.
    pub async fn stream_placement(&self) -> Result<Option<String>> {
        let mut s = self.js.get_stream(&self.config.stream).await.map_err(|e| js_err("get stream")(e.to_string()))?;
        let info = s.info().await.map_err(|e| js_err("stream info")(e.to_string()))?;
        let Some(cluster) = info.cluster.as_ref().filter(|c| !c.replicas.is_empty()) else { return Ok(None) };
        let leader = cluster.leader.clone().unwrap_or_else(|| "none (electing)".into());
        let replicas: Vec<String> = cluster
            .replicas
            .iter()
            .map(|r| match (r.current, r.offline) {
                (_, true) => format!("{} (offline)", r.name),
                (true, false) => r.name.clone(),
                (false, false) => format!("{} (behind {})", r.name, r.lag.unwrap_or_default()),
            })
            .collect();
        Ok(Some(format!("leader {leader}, replicas {}", replicas.join(", "))))
    }

    /// Messages currently in the dead-letter stream.
    pub async fn dlq_depth(&self) -> Result<u64> {
        let mut s =
            self.js.get_stream(&self.config.dlq_stream).await.map_err(|e| js_err("get DLQ stream")(e.to_string()))?;
        let info = s.info().await.map_err(|e| js_err("DLQ stream info")(e.to_string()))?;
        Ok(info.state.messages)
    }

    /// Flushes pending client writes (acks) to the server.
    pub async fn flush(&self) -> Result<()> {
        self.client.flush().await.map_err(|e| js_err("flush")(e.to_string()))
    }
}

/// A connection error with a hint at the `[nats]` keys to check. The client's own message holds
/// no secret (it names the failing step); the URL is shown without credentials.
fn connect_error(config: &NatsConfig, auth: &NatsAuth, e: &async_nats::ConnectError) -> IngestError {
    use async_nats::ConnectErrorKind as K;
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    let hint = match e.kind() {
        K::AuthorizationViolation => match auth {
            NatsAuth::None => "the server requires authentication: set [nats] user and password (or password_file), \
                               token (or token_file), nkey_seed (or nkey_seed_file) or creds_file"
                .to_string(),
            NatsAuth::UserPassword { user, .. } => format!(
                "the server refused user {user:?}: check [nats] user and password / password_file \
                 (METERFLOW_NATS__USER, METERFLOW_NATS__PASSWORD or METERFLOW_NATS__PASSWORD_FILE)"
            ),
            NatsAuth::Token(_) => "the server refused the token: check [nats] token / token_file \
                                   (METERFLOW_NATS__TOKEN or METERFLOW_NATS__TOKEN_FILE)"
                .to_string(),
            NatsAuth::NKey(_) => "the server refused the NKey: check [nats] nkey_seed / nkey_seed_file is the seed \
                                  of a user public key listed on the server"
                .to_string(),
            NatsAuth::CredsFile(_) => "the server refused the credentials: check [nats] creds_file (user JWT issued \
                                       by an account the server trusts, not expired or revoked)"
                .to_string(),
        },
        K::Authentication => format!(
            "cannot sign the server's nonce: check [nats] {} holds a valid NKey user seed (starting with SU)",
            auth.keys()
        ),
        _ if lower.contains("certificaterequired")
            || lower.contains("certificate required")
            || lower.contains("bad certificate")
            || lower.contains("badcertificate") =>
        {
            if config.client_certificate().is_none() {
                "the server requires a client certificate (mTLS): set [nats] tls_cert_file and tls_key_file".to_string()
            } else {
                "the server rejected the client certificate: check [nats] tls_cert_file is signed by a CA the \
                 server trusts and is valid for client authentication"
                    .to_string()
            }
        }
        _ if lower.contains("unknownissuer") || lower.contains("invalid peer certificate") => {
            if lower.contains("notvalidforname") {
                "the server certificate does not name the host of [nats] url: connect by a name or IP address \
                 the certificate lists"
                    .to_string()
            } else {
                "the server certificate is not trusted: set [nats] tls_ca_file to the CA that signed it".to_string()
            }
        }
        K::Tls => "TLS set-up failed: check [nats] tls_ca_file (PEM of the CA that signed the server certificate), \
                   tls_cert_file and tls_key_file (PEM client certificate and its private key)"
            .to_string(),
        _ if lower.contains("tls") || lower.contains("handshake") => {
            "TLS handshake failed: check [nats] tls_ca_file, tls_cert_file and tls_key_file, and whether the server \
             expects TLS (use a tls:// url or tls_required = true)"
                .to_string()
        }
        K::TimedOut if config.tls_enabled() => {
            "no answer in time: is the server up, and does it speak TLS on this port?".to_string()
        }
        _ if config.tls_enabled() && config.client_certificate().is_none() => {
            "is a nats-server listening there? If it verifies client certificates (mTLS), set [nats] tls_cert_file \
             and tls_key_file"
                .to_string()
        }
        _ => "is a nats-server listening there? check [nats] url (METERFLOW_NATS__URL or --nats-url)".to_string(),
    };
    IngestError::Connect { url: config.redacted_url(), message: format!("{text}; {hint}") }
}

/// Header values must be one line of printable text.
fn header_safe(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if out.len() > 512 {
        let mut cut = 512;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}
