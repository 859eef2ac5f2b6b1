//! `meterflow post`: sends the ERP documents of a period's finalized invoices to a target and
//! keeps the posting ledger (`postings` Delta table).
//!
//! ```text
//!   invoices (latest revisions) ─► documents (AR invoice + balanced journal entry each)
//!     ─► minus what the ledger says is posted to this target ─► batches ─► target
//!     ─► ledger rows: pending (before sending), then posted / failed (after each batch)
//! ```
//!
//! Exactly once: a document is sent until the ledger records it posted, always with the same
//! idempotency keys (per document in the body, per batch in the `Idempotency-Key` header), so
//! a crash between sending and recording costs one resend that the ERP recognises. Validation
//! failures (HTTP 4xx other than 429) are recorded `failed` and not resent unless asked.

use chrono::Utc;
use meterflow_sink::TableRoot;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::BillingConfig;
use crate::credits::{Entry, EntryKind, Source};
use crate::erp::{self, Batch, ErpDocument, JournalEntry};
use crate::invoice::Invoice;
use crate::invoicing::{finalized_invoices, write_atomically};
use crate::tables::{self, text, Cell, Session, POSTINGS};
use crate::BillingError;
use rust_decimal::Decimal;

/// Where documents go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A folder: one JSON Lines file per batch plus a CSV journal import.
    File(PathBuf),
    /// An HTTP(S) endpoint: one POST per batch.
    Http(url::Url),
    /// An hledger journal file (journal entries only).
    Hledger(PathBuf),
}

impl Target {
    /// Parses `file:DIR`, `http(s)://...` or `hledger:FILE`.
    pub fn parse(s: &str) -> Result<Target, BillingError> {
        let bad = |message: &str| BillingError::Target { target: s.into(), message: message.into() };
        if let Some(dir) = s.strip_prefix("file:") {
            if dir.is_empty() {
                return Err(bad("give a folder: file:DIR"));
            }
            return Ok(Target::File(PathBuf::from(dir)));
        }
        if let Some(file) = s.strip_prefix("hledger:") {
            if file.is_empty() {
                return Err(bad("give a journal file: hledger:FILE"));
            }
            return Ok(Target::Hledger(PathBuf::from(file)));
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            return url::Url::parse(s).map(Target::Http).map_err(|e| bad(&format!("not a URL: {e}")));
        }
        Err(bad("use file:DIR, http(s)://HOST/PATH or hledger:FILE"))
    }

    /// The label recorded in the ledger (absolute paths; URLs without credentials).
    pub fn label(&self) -> String {
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string();
        match self {
            Target::File(d) => format!("file:{}", abs(d)),
            Target::Hledger(f) => format!("hledger:{}", abs(f)),
            Target::Http(u) => {
                let mut u = u.clone();
                let _user = u.set_username("");
                let _pass = u.set_password(None);
                u.to_string()
            }
        }
    }

    /// Whether the target takes this kind of document (hledger takes journal entries only).
    fn accepts(&self, doc: &ErpDocument) -> bool {
        !(matches!(self, Target::Hledger(_)) && doc.is_receivable())
    }
}

/// Posting status of a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Recorded, not yet confirmed by the target.
    Pending,
    /// Confirmed by the target.
    Posted,
    /// Refused by the target (validation); not resent unless asked.
    Failed,
}

impl Status {
    /// Ledger value.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Posted => "posted",
            Status::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Status> {
        match s {
            "pending" => Some(Status::Pending),
            "posted" => Some(Status::Posted),
            "failed" => Some(Status::Failed),
            _ => None,
        }
    }
}

/// The outcome of a `post` run.
#[derive(Debug, Clone, Default)]
pub struct PostReport {
    /// Documents of the period for this target.
    pub documents: usize,
    /// Already posted before this run (skipped).
    pub already_posted: usize,
    /// Posted in this run.
    pub posted: usize,
    /// Refused by the target in this run, with the target's message.
    pub failed: Vec<(String, String)>,
    /// Refused earlier and not resent (use --retry-failed).
    pub previously_failed: usize,
    /// Still pending after this run (the target was unreachable), with the last error.
    pub pending: Vec<(String, String)>,
    /// Batches sent.
    pub batches: usize,
    /// HTTP requests made (including retries).
    pub requests: usize,
    /// Documents of earlier revisions of re-issued invoices that were still pending here, sent
    /// again alone this run: the next run reverses what the target took and posts the rest.
    pub settled_first: usize,
}

/// Per-document result of delivering one batch.
enum Delivery {
    Posted(String),
    Failed(String),
    Pending(String),
}

/// The posting ledger of target `$1`, in the order its rows were recorded.
pub const LEDGER_SQL: &str = "SELECT idempotency_key, status, attempts FROM postings WHERE target = $1 \
ORDER BY idempotency_key, recorded_at, attempts";

/// The latest ledger status of each document key for `target`: `(status, attempts)`.
pub async fn ledger(root: impl Into<TableRoot>, target: &str) -> Result<BTreeMap<String, (Status, u64)>, BillingError> {
    let root = &root.into();
    let session = Session::new();
    if !session.register(root, POSTINGS.name, "postings").await? {
        return Ok(BTreeMap::new());
    }
    let rows = session.rows(LEDGER_SQL, &[text(target)]).await?;
    let mut out = BTreeMap::new();
    for r in rows.iter() {
        let (key, status, attempts) = (r.text(0)?, r.text(1)?, r.count(2)?);
        let Some(s) = Status::parse(&status) else { continue };
        // A posted document stays posted whatever is recorded later.
        if out.get(&key).is_some_and(|(p, _): &(Status, u64)| *p == Status::Posted) {
            continue;
        }
        out.insert(key, (s, attempts));
    }
    Ok(out)
}

fn ledger_row(
    doc: &ErpDocument,
    target: &str,
    batch: &str,
    status: Status,
    attempts: u64,
    response: Option<String>,
) -> Vec<Cell> {
    let (invoice_id, revision, customer_id, period) = doc.invoice();
    let (amount, currency) = doc.amount();
    vec![
        Cell::Text(doc.key().to_string()),
        Cell::Text(doc.kind().to_string()),
        Cell::Text(invoice_id.to_string()),
        Cell::Int(i64::from(revision)),
        Cell::Text(period.to_string()),
        Cell::Text(customer_id.to_string()),
        Cell::Text(target.to_string()),
        Cell::Text(batch.to_string()),
        Cell::Text(status.as_str().to_string()),
        Cell::Int(i64::try_from(attempts).unwrap_or(i64::MAX)),
        Cell::OptText(response),
        Cell::Dec(amount),
        Cell::Text(currency.to_string()),
        Cell::Time(Utc::now()),
    ]
}

/// Posts the documents of `period`'s finalized invoices to `target`.
pub async fn post_period(
    root: impl Into<TableRoot>,
    period: &str,
    target: &Target,
    config: &BillingConfig,
    retry_failed: bool,
) -> Result<PostReport, BillingError> {
    let root = &root.into();
    let period = meterflow_rater::Period::parse(period).ok_or_else(|| BillingError::BadPeriod(period.into()))?.label();
    let period = period.as_str();
    let _lock = tables::lock_billing(root)?;
    let invoices = finalized_invoices(root, period).await?;
    if invoices.is_empty() {
        return Err(BillingError::Nothing(format!(
            "no finalized invoices for {period}: run `meterflow invoice --period {period}` first"
        )));
    }
    let label = target.label();
    let known = ledger(root, &label).await?;
    let revisions = crate::invoicing::all_revisions(root, period).await?;
    let customers: Vec<&str> = invoices.iter().map(|i| i.customer_id.as_str()).collect();
    let credit_ledger = crate::credits::ledger_of(root, &customers).await?;
    let breakage = |inv: &Invoice| {
        breakage_documents(inv, credit_ledger.get(&inv.customer_id).map_or(&[][..], Vec::as_slice), config)
    };
    let reversals = reversals_due(&invoices, &revisions, &known, &label, config, &breakage)?;
    let settled_first = reversals.resend.len();
    let mut docs = if reversals.resend.is_empty() {
        let mut docs = reversals.docs;
        for g in crate::credits::purchases_in(root, period).await? {
            docs.push(erp::credit_purchase_entry(&g, period, config)?);
        }
        for inv in &invoices {
            docs.extend(erp::documents(inv, config)?);
            docs.extend(breakage(inv)?);
        }
        for note in crate::credit_note::credit_notes(root.clone(), Some(period)).await? {
            docs.extend(erp::credit_note_documents(&note, config)?);
        }
        docs
    } else {
        // Settle first whether the target took the earlier revisions; the next run reverses
        // what it took and posts the rest.
        reversals.resend
    };
    docs.retain(|d| target.accepts(d));
    let mut report = PostReport { documents: docs.len(), settled_first, ..PostReport::default() };
    let mut todo = Vec::new();
    for d in docs {
        match known.get(d.key()) {
            Some((Status::Posted, _)) => report.already_posted += 1,
            Some((Status::Failed, _)) if !retry_failed => report.previously_failed += 1,
            _ => todo.push(d),
        }
    }
    if todo.is_empty() {
        return Ok(report);
    }
    let batches = erp::batches(todo, config.post_batch_size);
    // Record intent first: the ledger shows what is in flight even if the process dies.
    let pending: Vec<Vec<Cell>> = batches
        .iter()
        .flat_map(|b| b.documents.iter().map(move |d| (b, d)))
        .filter(|(_, d)| !known.contains_key(d.key()))
        .map(|(b, d)| ledger_row(d, &label, &b.id, Status::Pending, 0, None))
        .collect();
    tables::append(root, &POSTINGS, &pending).await?;

    deliver(root, target, config, &batches, &known, &label, &mut report).await?;
    Ok(report)
}

/// What earlier revisions of re-issued invoices need at this target.
#[derive(Debug, Default)]
struct Reversals {
    /// Credit memos and reversing entries of what the target took (posted).
    docs: Vec<ErpDocument>,
    /// Documents of earlier revisions still pending here (sent, unconfirmed): sent again, alone,
    /// until the target confirms or refuses them (it recognises their keys), since whether to
    /// reverse them is unknown until then.
    resend: Vec<ErpDocument>,
}

/// The documents reversing what this target took of earlier revisions of re-issued invoices:
/// for each earlier revision whose AR invoice or journal entry the ledger records as posted
/// here, a credit memo and a reversing entry (already-posted reversals are skipped by the
/// caller like any posted document).
fn reversals_due(
    invoices: &[Invoice],
    revisions: &BTreeMap<(String, u32), Invoice>,
    known: &BTreeMap<String, (Status, u64)>,
    label: &str,
    config: &BillingConfig,
    breakage: &dyn Fn(&Invoice) -> Result<Vec<ErpDocument>, BillingError>,
) -> Result<Reversals, BillingError> {
    let mut out = Reversals::default();
    let status_of = |d: &ErpDocument| known.get(d.key()).map(|(s, _)| *s);
    for inv in invoices {
        for k in 1..inv.revision {
            let status = |kind: &str| known.get(&format!("{}.r{k}.{kind}", inv.invoice_id)).map(|(s, _)| *s);
            let (ar, je) = (status("ar"), status("je"));
            if ar.is_none() && je.is_none() {
                continue;
            }
            let earlier = revisions.get(&(inv.invoice_id.clone(), k)).ok_or_else(|| {
                BillingError::Nothing(format!(
                    "{} r{k} is in the posting ledger of {label} but not in the invoices table: cannot reverse it",
                    inv.invoice_id
                ))
            })?;
            let mut taken = erp::documents(earlier, config)?;
            taken.extend(breakage(earlier)?);
            if taken.iter().any(|d| status_of(d) == Some(Status::Pending)) {
                out.resend.extend(taken.into_iter().filter(|d| status_of(d) == Some(Status::Pending)));
                continue;
            }
            let (ar, je) = (ar == Some(Status::Posted), je == Some(Status::Posted));
            if ar || je {
                out.docs.extend(erp::reversal(earlier, ar, je, &inv.issue_date, config)?);
            }
            for d in taken.into_iter().filter(|d| d.key().ends_with(".brk") && status_of(d) == Some(Status::Posted)) {
                if let ErpDocument::JournalEntry(e) = d {
                    let key = format!("{}.rev", e.idempotency_key);
                    out.docs.push(ErpDocument::JournalEntry(erp::reversing(e, key, &inv.issue_date)?));
                }
            }
        }
    }
    Ok(out)
}

/// The breakage entries of invoice revision `inv`: per purchased grant, what expired unused
/// when that revision was finalized (its `expiry` rows in `ledger`).
fn breakage_documents(
    inv: &Invoice,
    ledger: &[Entry],
    config: &BillingConfig,
) -> Result<Vec<ErpDocument>, BillingError> {
    let mut per_grant: BTreeMap<&str, Decimal> = BTreeMap::new();
    for e in ledger.iter().filter(|e| {
        e.invoice_id.as_deref() == Some(inv.invoice_id.as_str())
            && e.revision == inv.revision
            && e.kind == EntryKind::Expiry
            && e.source == Source::Purchase
    }) {
        *per_grant.entry(e.grant_id.as_str()).or_default() -= e.value;
    }
    per_grant
        .into_iter()
        .filter(|(_, amount)| *amount > Decimal::ZERO)
        .map(|(grant, amount)| erp::breakage_entry(inv, grant, amount, config))
        .collect()
}

/// Sends each batch to the target and records every document's outcome in the postings ledger.
async fn deliver(
    root: &TableRoot,
    target: &Target,
    config: &BillingConfig,
    batches: &[Batch],
    known: &BTreeMap<String, (Status, u64)>,
    label: &str,
    report: &mut PostReport,
) -> Result<(), BillingError> {
    let mut http = match target {
        Target::Http(url) => Some(HttpPoster::new(url.clone(), config)?),
        _ => None,
    };
    for batch in batches {
        report.batches += 1;
        let (results, attempts) = match target {
            Target::File(dir) => (deliver_file(dir, batch)?, 1),
            Target::Hledger(file) => (deliver_hledger(file, batch, config)?, 1),
            Target::Http(_) => match http.as_mut() {
                Some(h) => h.deliver(batch).await,
                None => continue,
            },
        };
        report.requests += usize::try_from(attempts).unwrap_or(usize::MAX);
        let mut rows = Vec::new();
        for (doc, result) in batch.documents.iter().zip(results) {
            let prior = known.get(doc.key()).map_or(0, |(_, a)| *a);
            let (status, response) = match result {
                Delivery::Posted(r) => {
                    report.posted += 1;
                    (Status::Posted, r)
                }
                Delivery::Failed(r) => {
                    report.failed.push((doc.key().to_string(), r.clone()));
                    (Status::Failed, r)
                }
                Delivery::Pending(r) => {
                    report.pending.push((doc.key().to_string(), r.clone()));
                    (Status::Pending, r)
                }
            };
            rows.push(ledger_row(doc, label, &batch.id, status, prior + attempts, Some(response)));
        }
        tables::append(root, &POSTINGS, &rows).await?;
    }
    Ok(())
}

fn deliver_file(dir: &Path, batch: &Batch) -> Result<Vec<Delivery>, BillingError> {
    let mut jsonl = String::new();
    for d in &batch.documents {
        let line = serde_json::to_string(d)
            .map_err(|e| BillingError::Document { what: d.key().to_string(), message: e.to_string() })?;
        jsonl.push_str(&line);
        jsonl.push('\n');
    }
    let docs = dir.join(format!("batch-{}.jsonl", batch.id));
    write_atomically(&docs, jsonl.as_bytes())?;
    let csv = dir.join(format!("journal-{}.csv", batch.id));
    write_atomically(&csv, erp::journal_csv(&batch.documents).as_bytes())?;
    let done = format!("written to {}", docs.display());
    Ok(batch.documents.iter().map(|_| Delivery::Posted(done.clone())).collect())
}

fn deliver_hledger(file: &Path, batch: &Batch, config: &BillingConfig) -> Result<Vec<Delivery>, BillingError> {
    // Entries already in the file (a crash after appending, before recording) are not
    // appended again: the file is its own idempotency record.
    let existing = match std::fs::read_to_string(file) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(BillingError::io(file, e)),
    };
    let present: BTreeSet<&str> =
        existing.lines().filter_map(|l| l.split("; key:").nth(1)).filter_map(|t| t.split(',').next()).collect();
    let entries: Vec<&JournalEntry> = batch
        .documents
        .iter()
        .filter_map(|d| match d {
            ErpDocument::JournalEntry(je) if !present.contains(je.idempotency_key.as_str()) => Some(je),
            _ => None,
        })
        .collect();
    if !entries.is_empty() {
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| BillingError::io(dir, e))?;
        }
        let mut text = existing.clone();
        if existing.is_empty() {
            text.push_str("; meterflow journal entries (one transaction per invoice revision)\n");
        }
        text.push('\n');
        text.push_str(&erp::hledger_journal(&entries, config));
        // The whole file is replaced atomically, so an entry is either complete or absent.
        write_atomically(file, text.as_bytes())?;
    }
    let done = format!("in {}", file.display());
    Ok(batch.documents.iter().map(|_| Delivery::Posted(done.clone())).collect())
}

/// Cuts a response body to a size fit for the ledger.
fn excerpt(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(1000) {
        Some((i, _)) => format!("{}...", &body[..i]),
        None => body.to_string(),
    }
}

/// HTTP posting with retries, backoff with jitter, and a client-side rate limit.
struct HttpPoster {
    client: reqwest::Client,
    url: url::Url,
    token: Option<String>,
    max_attempts: u32,
    backoff: Duration,
    backoff_max: Duration,
    interval: Duration,
    last_request: Option<Instant>,
}

impl HttpPoster {
    fn new(url: url::Url, config: &BillingConfig) -> Result<HttpPoster, BillingError> {
        let client = reqwest::Client::builder()
            // A redirect would turn the POST into a bodiless GET whose 200 proves nothing.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(config.http_timeout_s.max(1)))
            .build()
            .map_err(|e| BillingError::Target { target: url.to_string(), message: e.to_string() })?;
        Ok(HttpPoster {
            client,
            url,
            token: config.http_bearer_token.as_ref().filter(|s| !s.is_empty()).map(|s| s.expose().to_string()),
            max_attempts: config.http_max_attempts.max(1),
            backoff: Duration::from_millis(config.http_backoff_initial_ms),
            backoff_max: Duration::from_millis(config.http_backoff_max_ms.max(config.http_backoff_initial_ms)),
            interval: Duration::from_secs(1) / config.http_requests_per_second.max(1),
            last_request: None,
        })
    }

    /// Waits for the rate limit, then sends one request.
    async fn send(&mut self, batch: &Batch, body: &[u8]) -> Result<reqwest::Response, reqwest::Error> {
        if let Some(last) = self.last_request {
            let wait = self.interval.saturating_sub(last.elapsed());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        self.last_request = Some(Instant::now());
        let mut req = self
            .client
            .post(self.url.clone())
            .header("Idempotency-Key", &batch.id)
            .header("Content-Type", "application/json")
            .body(body.to_vec());
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req.send().await
    }

    /// Delay before attempt `attempt + 1`: exponential, capped, with jitter in [d/2, d].
    fn delay(&self, batch: &Batch, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self.backoff.saturating_mul(1u32 << attempt.min(20)).min(self.backoff_max);
        let seed = format!("{}:{attempt}:{:?}", batch.id, Instant::now());
        let frac = (xxhash_rust::xxh3::xxh3_64(seed.as_bytes()) % 1000) as u32;
        let jittered = exp / 2 + (exp / 2) * frac / 1000;
        retry_after.map_or(jittered, |r| r.min(self.backoff_max).max(jittered))
    }

    /// Delivers one batch: `(per-document results, requests made)`.
    async fn deliver(&mut self, batch: &Batch) -> (Vec<Delivery>, u64) {
        let all = |d: &dyn Fn() -> Delivery| batch.documents.iter().map(|_| d()).collect::<Vec<_>>();
        let body = serde_json::json!({ "batch_id": batch.id, "documents": batch.documents });
        let body = match serde_json::to_vec(&body) {
            Ok(b) => b,
            Err(e) => return (all(&|| Delivery::Failed(format!("cannot encode the batch: {e}"))), 0),
        };
        let mut last_error = String::new();
        for attempt in 0..self.max_attempts {
            let requests = u64::from(attempt) + 1;
            let retry_after = match self.send(batch, &body).await {
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let text = resp.text().await.unwrap_or_default();
                    if status.is_success() {
                        return (per_document(batch, &text, status.as_u16()), requests);
                    }
                    if status.as_u16() == 409 {
                        // The ERP already holds a document under this idempotency key.
                        let note = format!("HTTP 409, already booked under this key: {}", excerpt(&text));
                        return (all(&|| Delivery::Posted(note.clone())), requests);
                    }
                    if matches!(status.as_u16(), 408 | 425 | 429) || status.is_server_error() {
                        last_error = format!("HTTP {}: {}", status.as_u16(), excerpt(&text));
                        tracing::warn!(batch = %batch.id, attempt = requests, error = %last_error, "ERP busy; will retry");
                        retry_after
                    } else {
                        let message = format!("refused by the ERP (HTTP {}): {}", status.as_u16(), excerpt(&text));
                        return (all(&|| Delivery::Failed(message.clone())), requests);
                    }
                }
                Err(e) => {
                    last_error = format!("request failed: {e}");
                    tracing::warn!(batch = %batch.id, attempt = requests, error = %last_error, "ERP unreachable; will retry");
                    None
                }
            };
            if attempt + 1 < self.max_attempts {
                tokio::time::sleep(self.delay(batch, attempt, retry_after)).await;
            }
        }
        let message = format!("gave up after {} attempts, last: {last_error}", self.max_attempts);
        (all(&|| Delivery::Pending(message.clone())), u64::from(self.max_attempts))
    }
}

/// Reads the per-document results of a 2xx response: `{"results": [{"idempotency_key": ...,
/// "status": "posted" | "accepted" | "failed" | "rejected", "message": ...}]}`. A 2xx body
/// without results confirms the whole batch; with results, a document counts as posted only
/// when its entry says so (other statuses or a missing entry leave it pending).
fn per_document(batch: &Batch, body: &str, status: u16) -> Vec<Delivery> {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let results: BTreeMap<String, (String, String)> = parsed
        .as_ref()
        .and_then(|v| v.get("results"))
        .and_then(|r| r.as_array())
        .map(|items| {
            items
                .iter()
                .filter_map(|i| {
                    let key = i.get("idempotency_key")?.as_str()?.to_string();
                    let st = i.get("status").and_then(|s| s.as_str()).unwrap_or("posted").to_string();
                    let msg = i.get("message").and_then(|s| s.as_str()).unwrap_or_default().to_string();
                    Some((key, (st, msg)))
                })
                .collect()
        })
        .unwrap_or_default();
    batch
        .documents
        .iter()
        .map(|d| match results.get(d.key()) {
            Some((st, msg)) if st == "failed" || st == "rejected" => {
                Delivery::Failed(format!("refused by the ERP: {msg}"))
            }
            Some((st, _)) if st == "posted" || st == "accepted" => {
                Delivery::Posted(format!("HTTP {status}: {}", excerpt(body)))
            }
            // Anything else the ERP says about a document is not a confirmation.
            Some((st, msg)) => Delivery::Pending(format!("ERP status {st:?}: {msg}")),
            None if results.is_empty() => Delivery::Posted(format!("HTTP {status}: {}", excerpt(body))),
            None => Delivery::Pending("the ERP's results do not mention this document".into()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::erp::{ArInvoice, ErpDocument};

    fn doc(key: &str) -> ErpDocument {
        ErpDocument::ArInvoice(ArInvoice {
            idempotency_key: key.into(),
            invoice_id: "INV-1".into(),
            revision: 1,
            erp_customer_id: "C-1".into(),
            customer_id: "acme".into(),
            legal_entity: "us".into(),
            currency: "USD".into(),
            invoice_date: "2026-12-01".into(),
            due_date: "2026-12-31".into(),
            terms: "NET30".into(),
            period: "2026-11".into(),
            lines: vec![],
            total: Decimal::ONE,
        })
    }

    fn outcome(body: &str) -> Vec<&'static str> {
        let batch = Batch { id: "B-1".into(), documents: vec![doc("a"), doc("b"), doc("c")] };
        per_document(&batch, body, 200)
            .iter()
            .map(|d| match d {
                Delivery::Posted(_) => "posted",
                Delivery::Failed(_) => "failed",
                Delivery::Pending(_) => "pending",
            })
            .collect()
    }

    #[test]
    fn a_revision_reverses_exactly_what_the_target_took_of_the_earlier_one() {
        use crate::invoice::sample::{invoice, line};
        let r1 = invoice(vec![line(1, "10.00", "4010"), line(2, "5.00", "4100")]);
        let r2 = crate::invoice::Invoice { revision: 2, ..invoice(vec![line(1, "12.00", "4010")]) };
        let revisions = BTreeMap::from([(("INV-202611-1".to_string(), 1), r1.clone())]);
        let config = BillingConfig::default();
        let posted = |keys: &[(&str, Status)]| -> BTreeMap<String, (Status, u64)> {
            keys.iter().map(|(k, s)| (k.to_string(), (*s, 1))).collect()
        };
        let keys = |docs: &[ErpDocument]| docs.iter().map(|d| d.key().to_string()).collect::<Vec<_>>();
        let no_breakage = |_: &Invoice| Ok(Vec::new());

        let both = posted(&[("INV-202611-1.r1.ar", Status::Posted), ("INV-202611-1.r1.je", Status::Posted)]);
        let due = reversals_due(std::slice::from_ref(&r2), &revisions, &both, "erp", &config, &no_breakage).unwrap();
        assert_eq!(keys(&due.docs), ["INV-202611-1.r1.cm", "INV-202611-1.r1.rev"]);
        assert!(due.resend.is_empty());
        let (memo, entry) = (due.docs[0].amount().0, due.docs[1].amount().0);
        assert_eq!((memo, entry), (Decimal::new(-1500, 2), Decimal::new(-1500, 2)), "the whole of r1, taken off");

        let journal_only = posted(&[("INV-202611-1.r1.je", Status::Posted)]);
        let due = reversals_due(std::slice::from_ref(&r2), &revisions, &journal_only, "hledger", &config, &no_breakage)
            .unwrap();
        assert_eq!(keys(&due.docs), ["INV-202611-1.r1.rev"], "an hledger journal took no AR invoice");

        let unsure = posted(&[("INV-202611-1.r1.ar", Status::Posted), ("INV-202611-1.r1.je", Status::Pending)]);
        let due = reversals_due(std::slice::from_ref(&r2), &revisions, &unsure, "erp", &config, &no_breakage).unwrap();
        assert!(due.docs.is_empty(), "nothing reversed while r1's entry is unconfirmed");
        assert_eq!(keys(&due.resend), ["INV-202611-1.r1.je"], "r1's entry is sent again first");

        let none = reversals_due(&[r2], &revisions, &BTreeMap::new(), "erp", &config, &no_breakage).unwrap();
        assert!(none.docs.is_empty() && none.resend.is_empty(), "r1 never posted here: nothing to reverse");
    }

    #[test]
    fn only_an_explicit_confirmation_counts_as_posted_when_the_erp_lists_results() {
        assert_eq!(outcome(r#"{"ok":true}"#), ["posted", "posted", "posted"], "no results: the batch is confirmed");
        let body = r#"{"results":[{"idempotency_key":"a","status":"posted"},{"idempotency_key":"b","status":"failed","message":"bad item"}]}"#;
        assert_eq!(outcome(body), ["posted", "failed", "pending"]);
        let odd = r#"{"results":[{"idempotency_key":"a","status":"queued"}]}"#;
        assert_eq!(outcome(odd)[0], "pending");
    }

    #[test]
    fn targets_parse_with_a_clear_message_for_unknown_schemes() {
        assert_eq!(Target::parse("file:out").unwrap(), Target::File("out".into()));
        assert!(matches!(Target::parse("https://erp.example/api").unwrap(), Target::Http(_)));
        assert_eq!(Target::parse("hledger:b.journal").unwrap(), Target::Hledger("b.journal".into()));
        let e = Target::parse("ftp://x").unwrap_err().to_string();
        assert!(e.contains("file:DIR, http(s)://HOST/PATH or hledger:FILE"), "{e}");
        let u = Target::parse("https://user:secret@erp.example/api").unwrap().label();
        assert!(!u.contains("secret"), "credentials never reach the ledger: {u}");
    }
}
