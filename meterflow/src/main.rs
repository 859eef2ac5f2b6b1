//! The `meterflow` command line: a thin CLI over the pipeline library (`meterflow-pipeline`),
//! the finance and lineage commands ([`commands`]) and the demo.

mod commands;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use commands::demo::{self, DemoOptions};
use commands::{api, catalog, dlq, finance, rerate, trace};
use meterflow_pipeline::config::{Config, LogFormat, Overrides};
use meterflow_pipeline::ops::Ops;
use meterflow_pipeline::{status, Pipeline, RunOptions, StartOptions};
use meterflow_sink::sql::{render, Format, ReadOnlySql};
use std::path::PathBuf;
use std::time::Duration;

/// mimalloc: the pipeline allocates per event; glibc malloc's free-list work cost ~20% of a profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// meterflow: streaming usage metering from NATS JetStream to Delta Lake tables.
///
/// Every config key can also be set with an environment variable METERFLOW_<SECTION>__<KEY>
/// (for example METERFLOW_NATS__URL or METERFLOW_PIPELINE__COMMIT_INTERVAL_MS); command-line
/// flags win over both.
#[derive(Debug, Parser)]
#[command(name = "meterflow", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags shared by the commands that read the config.
#[derive(Debug, clap::Args)]
struct Common {
    /// Config file (TOML). See examples/meterflow.toml.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// NATS server URL, overriding [nats].url.
    #[arg(long, value_name = "URL")]
    nats_url: Option<String>,
    /// Data directory of the tables, overriding [storage].data_dir.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

impl Common {
    /// The config file with the environment and these flags applied.
    fn load(&self) -> Result<Config> {
        Config::load(&self.config, &Overrides { nats_url: self.nats_url.clone(), data_dir: self.data_dir.clone() })
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OutputFormat {
    /// Aligned text table.
    Table,
    /// CSV with a header row.
    Csv,
    /// One JSON object per line (decimals as exact strings).
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StatusFormat {
    /// For people.
    Text,
    /// One JSON object.
    Json,
}

impl From<OutputFormat> for Format {
    fn from(f: OutputFormat) -> Format {
        match f {
            OutputFormat::Table => Format::Table,
            OutputFormat::Csv => Format::Csv,
            OutputFormat::Json => Format::Json,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pipeline: consume the USAGE stream, commit rated summaries to the Delta tables,
    /// acknowledge the broker after each commit. Stops on SIGINT/SIGTERM after committing what
    /// is in hand (exit 0).
    Run {
        #[command(flatten)]
        common: Common,
        /// Stop by itself once the stream is drained and nothing arrived for this long
        /// (for example 5s, 500ms, 2m).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        exit_when_idle: Option<Duration>,
        /// Start over on a usage stream that is not the one the tables' progress came from (it
        /// was deleted and re-created, or lost its tail): count it from its first message. The
        /// old state snapshots are set aside; rows already in the tables stay. Without this flag
        /// such a stream is refused at start.
        #[arg(long)]
        adopt_stream: bool,
    },
    /// Run a read-only SQL query over the committed tables (usage_summaries, window_totals).
    /// Statements that write, create, set options or read other files are refused.
    Sql {
        #[command(flatten)]
        common: Common,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        /// The query, for example "SELECT meter, SUM(quantity) FROM usage_summaries GROUP BY meter".
        query: String,
    },
    /// Recompute a billing period from its summaries under the current plans (after a price
    /// correction) and append the differences as adjustment rows (row_kind = 'rerate', with a
    /// reason). History is never rewritten; running it again writes nothing new.
    Rerate {
        #[command(flatten)]
        common: Common,
        /// The billing period: YYYY-MM (calendar month), or YYYY-MM-DD for customers whose
        /// periods start on an anchor day.
        #[arg(long, value_name = "PERIOD")]
        period: String,
    },
    /// Close a billing period now (periods also close by themselves once every meter's
    /// watermark has passed the period's end plus the grace period). The close is recorded in
    /// the billing_periods table with the usage_summaries version it seals; usage that arrives
    /// for a closed period later is written as adjustment rows. Closed periods never reopen.
    Close {
        #[command(flatten)]
        common: Common,
        /// The billing period: YYYY-MM (calendar month), or YYYY-MM-DD for customers whose
        /// periods start on an anchor day.
        #[arg(long, value_name = "PERIOD")]
        period: String,
    },
    /// Compute the invoices of a closed billing period with SQL over the tables and finalize
    /// them: Delta tables invoices and invoice_lines plus one JSON document per invoice. One
    /// invoice per customer, legal entity and currency; usage lines per meter with tier
    /// breakdowns, recurring fees, minimum true-ups, and adjustments for late usage of earlier
    /// closed periods. Running it again changes nothing (same ids, same bytes).
    Invoice {
        #[command(flatten)]
        common: Common,
        /// The billing period: YYYY-MM, or YYYY-MM-DD for customers billed from an anchor day.
        #[arg(long, value_name = "PERIOD")]
        period: String,
        /// Only this customer id.
        #[arg(long, value_name = "ID")]
        customer: Option<String>,
        /// Compute a draft (also of an open period) and write nothing.
        #[arg(long)]
        preview: bool,
        /// Issue a new revision of finalized invoices whose content changed (for example after
        /// a reference data fix). Without it, a change is refused and nothing is written.
        #[arg(long)]
        revise: bool,
        /// Folder for the JSON documents (default <data-dir>/documents/invoices).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Print the JSON documents instead of the text form.
        #[arg(long)]
        json: bool,
    },
    /// Post the finalized invoices of a period to the ERP as AR invoices and balanced journal
    /// entries, in batches, recording each document in the postings ledger. Documents already
    /// posted to the target are never sent again. Exits 1 when a document failed or is pending.
    Post {
        #[command(flatten)]
        common: Common,
        /// The billing period: YYYY-MM or YYYY-MM-DD.
        #[arg(long, value_name = "PERIOD")]
        period: String,
        /// file:DIR (JSON Lines per batch + CSV journal import; default
        /// file:<data-dir>/documents/erp), http(s)://... (POST per batch with an
        /// Idempotency-Key header), or hledger:FILE (an hledger journal).
        #[arg(long, value_name = "TARGET")]
        target: Option<String>,
        /// Also resend documents the target refused before.
        #[arg(long)]
        retry_failed: bool,
    },
    /// Credit notes: money taken off a line of a finalized invoice (goodwill, a dispute)
    /// without re-issuing it. `post` sends each as an AR credit memo and a journal entry;
    /// `reconcile` expects the invoice total less its notes.
    CreditNote {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        action: CreditNoteAction,
    },
    /// Prepaid credits: grants in money or in units of a meter that pay invoices in priority
    /// then expiry order; every movement is a row of the `credit_ledger` table.
    Credits {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        action: CreditsAction,
    },
    /// Compare, per customer and meter, the summarized usage of a period with the invoice lines
    /// that bill it, and each invoice with its posted documents. Prints the variances; exits 1
    /// when any is not zero.
    Reconcile {
        #[command(flatten)]
        common: Common,
        /// The billing period: YYYY-MM or YYYY-MM-DD.
        #[arg(long, value_name = "PERIOD")]
        period: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Show where things stand: stream position and lag, DLQ depth, accepted, late and rejected
    /// events, billing periods with their invoices and posting status. Read-only; works while
    /// `meterflow run` runs.
    Status {
        #[command(flatten)]
        common: Common,
        /// `text` or `json` (for scripts).
        #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
        format: StatusFormat,
    },
    /// Follows one event from its message to the summary rows that count it, the invoice lines
    /// that bill it and the ERP documents that post them (or says why it was not counted).
    Trace {
        #[command(flatten)]
        common: Common,
        /// Stream sequence of the message (publishers get it in the publish acknowledgement).
        #[arg(long)]
        seq: Option<u64>,
        /// Position of the event in a batch message (default: every event of the message).
        #[arg(long)]
        index: Option<usize>,
        /// CloudEvents `source` (with `--id`: scans the stream for the event).
        #[arg(long, requires = "id")]
        source: Option<String>,
        /// CloudEvents `id`.
        #[arg(long, requires = "source")]
        id: Option<String>,
        /// `text` or `json`.
        #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
        format: StatusFormat,
    },
    /// Delete the data files no retained table version needs (Delta VACUUM) in every table of
    /// the data directory. Each table keeps removed files for the longer of its
    /// delta.deletedFileRetentionDuration and delta.logRetentionDuration (400 days for
    /// usage_summaries), so every sealed version stays readable and finalized invoices stay
    /// reproducible. Prints the files deleted (or, with --dry-run, that would be). Safe while
    /// `meterflow run` runs.
    Vacuum {
        #[command(flatten)]
        common: Common,
        /// List what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The live catalog: customers, the subjects they own, subscriptions and plans, kept as
    /// revisions on the broker. `meterflow run` picks a new revision up within seconds, without
    /// a restart; the reference files of the config are imported into an empty catalog.
    Catalog {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        action: CatalogAction,
    },
    /// The DLQ as an exception queue: rejected events by reason, and their redrive after the
    /// catalog has been fixed.
    Dlq {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Serve the HTTP API (OpenMeter-compatible events and meters, customer usage and invoice
    /// previews, the OpenAPI document at /api/v1/openapi.yaml) and, with --pg-listen, SQL over
    /// the Postgres protocol. Stateless: run as many as needed in front of the same broker and
    /// tables. `meterflow run` serves the same HTTP API on [ops] listen.
    Serve {
        #[command(flatten)]
        common: Common,
        /// HTTP address (default [api] listen, 127.0.0.1:8888).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Postgres-protocol address (default [api] pg_listen; off when empty).
        #[arg(long, value_name = "ADDR")]
        pg_listen: Option<String>,
    },
    /// API keys of the HTTP API and the Postgres endpoint: bound to customers, or admin keys.
    ApiKey {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        action: ApiKeyAction,
    },
    /// Start a local nats-server with JetStream (unless --nats-url is given), publish a
    /// realistic workload with duplicates and bad events, run the pipeline until drained,
    /// check the totals against the workload's oracle and print them.
    Demo {
        /// Config file.
        #[arg(long, short, value_name = "FILE", default_value = "examples/meterflow.toml")]
        config: PathBuf,
        /// Use this NATS server instead of starting one.
        #[arg(long, value_name = "URL")]
        nats_url: Option<String>,
        /// Data directory (default: [storage].data_dir of the config; cleared at start if the
        /// demo created it).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Distinct events in the one-event-per-message part of the workload.
        #[arg(long, default_value_t = 5_000)]
        events: usize,
        /// Distinct events in the batch-mode part (0 skips it).
        #[arg(long, default_value_t = 20_000)]
        batch_events: usize,
        /// Events per batch-mode message.
        #[arg(long, default_value_t = 50)]
        batch_size: usize,
        /// Keep the demo's HTTP API and Postgres endpoint up this many seconds after its API
        /// step, to try the printed curl and psql lines.
        #[arg(long, default_value_t = 0, value_name = "SECONDS")]
        serve_for: u64,
    },
}

#[derive(Debug, Subcommand)]
enum ApiKeyAction {
    /// Create a key and print it (once). With --customer (repeatable), the key publishes and
    /// reads only those customers' usage; without, it is an admin key for every customer.
    Create {
        /// A customer the key is bound to.
        #[arg(long = "customer", value_name = "ID")]
        customers: Vec<String>,
        /// A label.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the keys (ids, scope, state; never the keys).
    List,
    /// Revoke a key by id.
    Revoke {
        /// The key's id (the 12 hex digits after `mf_`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum CatalogAction {
    /// Add or replace customers and plans from a file: `.toml` or `.json` in the reference-data
    /// format ([[customers]], [[plans]]), or a `.csv` export of accounts (columns id, name,
    /// currency, legal_entity, erp_customer_id, subjects, plan, billing_anchor_day,
    /// publish_subjects; map other headers with --column). The change is checked against the
    /// newest revision first (no overlapping subscriptions or subject ownership, every plan
    /// known, currencies consistent, plan versions and billing anchors kept); a refused change
    /// names the record and the rule, and nothing is applied.
    Apply {
        /// The file.
        file: PathBuf,
        /// Print what would change; apply nothing.
        #[arg(long)]
        dry_run: bool,
        /// Who makes the change (default: $USER).
        #[arg(long)]
        author: Option<String>,
        /// Why, recorded with the revision.
        #[arg(long)]
        comment: Option<String>,
        /// CSV column mapping, for example --column "id=Account ID" (repeatable).
        #[arg(long = "column", value_name = "FIELD=HEADER")]
        columns: Vec<String>,
    },
    /// Print the catalog (default: the newest revision) in the format `apply` reads.
    Show {
        /// The revision to print.
        #[arg(long)]
        revision: Option<u64>,
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
    /// List every revision: when, by whom, from where, and what it changed.
    History,
}

#[derive(Debug, Subcommand)]
enum CreditsAction {
    /// Grant credits to a customer. They pay the invoices of periods closed from now on.
    Grant {
        /// The customer id.
        #[arg(long)]
        customer: String,
        /// Amount: money in the customer's currency (at most its minor units), or units of
        /// `--meter`.
        #[arg(long)]
        amount: String,
        /// Grant units of this meter instead of money.
        #[arg(long)]
        meter: Option<String>,
        /// Burn order: 1 burns first.
        #[arg(long, default_value_t = 10)]
        priority: u32,
        /// In force from (RFC 3339 or YYYY-MM-DD; default now).
        #[arg(long, value_name = "TIME")]
        effective_from: Option<String>,
        /// Expiry (RFC 3339 or YYYY-MM-DD); the unused balance then expires.
        #[arg(long, value_name = "TIME")]
        expires: Option<String>,
        /// Grant the amount again every billing period.
        #[arg(long)]
        recurring: bool,
        /// With --recurring: carry at most this much unused into the next period.
        #[arg(long)]
        rollover_cap: Option<String>,
        /// purchase (deferred revenue until used), promotion or goodwill.
        #[arg(long, default_value = "purchase")]
        source: String,
        /// Why (shown on the invoice and in the ledger).
        #[arg(long)]
        reason: String,
    },
    /// A customer's grants.
    List {
        /// The customer id.
        #[arg(long)]
        customer: String,
    },
    /// A customer's balance per grant (the SUM of its ledger rows).
    Balance {
        /// The customer id.
        #[arg(long)]
        customer: String,
    },
    /// A customer's credit ledger: every grant, burn, expiry, rollover and reversal row.
    Ledger {
        /// The customer id.
        #[arg(long)]
        customer: String,
    },
}

#[derive(Debug, Subcommand)]
enum CreditNoteAction {
    /// Issue a credit note against one line of an invoice's latest revision.
    Issue {
        /// The invoice id (`meterflow sql "SELECT invoice_id, customer_id, period, total FROM
        /// latest_invoices"` lists them).
        #[arg(long)]
        invoice: String,
        /// The line number on the invoice.
        #[arg(long)]
        line: u32,
        /// Amount to credit, in the invoice's currency (at most what is left of the line);
        /// without it, all that is left of the line.
        #[arg(long)]
        amount: Option<String>,
        /// Why (shown on the credit memo and in the journal).
        #[arg(long)]
        reason: String,
    },
    /// The credit notes issued, of one period or of all.
    List {
        /// Only the invoices of this billing period.
        #[arg(long, value_name = "PERIOD")]
        period: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DlqAction {
    /// Entries by reason: count, oldest, and the usage subjects of the redrivable ones.
    List,
    /// One entry: why, where it came from, and its original bytes.
    Show {
        /// Its sequence in the DLQ stream (from `list`, `replay --dry-run` or the rejections
        /// table's stream_seq).
        #[arg(long)]
        seq: u64,
    },
    /// Put entries back through the pipeline after the catalog has been fixed: each is judged
    /// as of its first arrival (time bounds, dedup day) under the catalog in force, counted
    /// once however often it is replayed, and put back with its new reason if it still fails.
    /// Only reasons a catalog fix cures (unknown_subject, subject_not_allowed, no_subscription)
    /// unless --technical.
    Replay {
        /// Only this reason.
        #[arg(long)]
        reason: Option<String>,
        /// Only events naming this usage subject.
        #[arg(long)]
        subject: Option<String>,
        /// Only entries queued at or after this time (YYYY-MM-DD or RFC 3339).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Also technical rejects (malformed events, bad values).
        #[arg(long)]
        technical: bool,
        /// List what would be redriven; redrive nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Parses `500ms`, `5s`, `2m`, `1h` (a bare number is seconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration; use e.g. 500ms, 5s, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}; use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

fn init_logging(default: &str) {
    init_logging_as(default, LogFormat::Human);
}

/// Logs to stderr at `RUST_LOG` if set, else `default`, as readable lines or JSON lines.
fn init_logging_as(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ignored = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).try_init(),
    };
}

/// Flips the shutdown flag on SIGINT or SIGTERM.
fn shutdown_on_signals() -> Result<tokio::sync::watch::Receiver<bool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: committing what is in hand, then stopping"),
            _ = int.recv() => tracing::info!("SIGINT: committing what is in hand, then stopping"),
        }
        let _sent = tx.send(true);
    });
    Ok(rx)
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run { common, exit_when_idle, adopt_stream } => {
            run_pipeline(common, exit_when_idle, adopt_stream).await
        }
        Command::Sql { common, format, query } => sql(common, format, &query).await,
        Command::Close { common, period } => {
            init_logging("warn");
            println!("{}", finance::close(&common.load()?, &period).await?);
            Ok(())
        }
        Command::Invoice { common, period, customer, preview, revise, out, json } => {
            init_logging("warn");
            let opts = finance::InvoiceOptions { period, customer, preview, revise, out, json };
            print!("{}", finance::invoice(&common.load()?, &opts).await?);
            Ok(())
        }
        Command::Post { common, period, target, retry_failed } => {
            init_logging("warn");
            let (text, ok) = finance::post(&common.load()?, &period, target.as_deref(), retry_failed).await?;
            print!("{text}");
            if !ok {
                bail!("some documents were not posted (listed above)");
            }
            Ok(())
        }
        Command::CreditNote { common, action } => credit_note_command(common, action).await,
        Command::Credits { common, action } => credits_command(common, action).await,
        Command::Reconcile { common, period, format } => {
            init_logging("warn");
            let (text, clean) = finance::reconcile(&common.load()?, &period, format.into()).await?;
            print!("{text}");
            if !clean {
                bail!("{period} does not reconcile: see the non-zero variances above");
            }
            Ok(())
        }
        Command::Rerate { common, period } => rerate_period(common, &period).await,
        Command::Status { common, format } => {
            init_logging("error");
            let s = status::status(&common.load()?).await?;
            match format {
                StatusFormat::Text => print!("{}", status::render(&s)),
                StatusFormat::Json => println!("{}", serde_json::to_string_pretty(&s)?),
            }
            Ok(())
        }
        Command::Trace { common, seq, index, source, id, format } => {
            init_logging("error");
            let query = trace::TraceQuery { seq, index, source, id };
            let traces = trace::trace(&common.load()?, &query).await?;
            match format {
                StatusFormat::Text => print!("{}", trace::render(&traces)),
                StatusFormat::Json => println!("{}", serde_json::to_string_pretty(&traces)?),
            }
            Ok(())
        }
        Command::Vacuum { common, dry_run } => vacuum(common, dry_run).await,
        Command::Dlq { common, action } => dlq_command(common, action).await,
        Command::Catalog { common, action } => catalog_command(common, action).await,
        Command::Serve { common, listen, pg_listen } => {
            let config = common.load()?;
            init_logging_as(&config.log.level, config.log.format);
            api::serve(config, listen, pg_listen, shutdown_on_signals()?).await
        }
        Command::ApiKey { common, action } => {
            init_logging("warn");
            let config = common.load()?;
            let out = match action {
                ApiKeyAction::Create { customers, name } => api::create(&config, customers, name).await?,
                ApiKeyAction::List => api::list(&config).await?,
                ApiKeyAction::Revoke { id } => api::revoke(&config, &id).await?,
            };
            print!("{out}");
            Ok(())
        }
        Command::Demo { config, nats_url, data_dir, events, batch_events, batch_size, serve_for } => {
            init_logging("warn");
            let overrides = Overrides { nats_url, data_dir };
            let serve_for = Duration::from_secs(serve_for);
            demo::run(DemoOptions { config, overrides, events, batch_events, batch_size, serve_for }).await
        }
    }
}

/// `meterflow dlq`: the exception queue.
/// `meterflow credit-note`.
async fn credit_note_command(common: Common, action: CreditNoteAction) -> Result<()> {
    init_logging("warn");
    let config = common.load()?;
    let out = match action {
        CreditNoteAction::Issue { invoice, line, amount, reason } => {
            let amount = amount.map(|a| finance::decimal_arg("--amount", &a)).transpose()?;
            let request = meterflow_billing::CreditNoteRequest { invoice_id: invoice, line_no: line, amount, reason };
            finance::credit_note_issue(&config, &request).await?
        }
        CreditNoteAction::List { period } => finance::credit_note_list(&config, period.as_deref()).await?,
    };
    print!("{out}");
    Ok(())
}

/// `meterflow credits`.
async fn credits_command(common: Common, action: CreditsAction) -> Result<()> {
    init_logging("warn");
    let config = common.load()?;
    let out = match action {
        CreditsAction::Grant {
            customer,
            amount,
            meter,
            priority,
            effective_from,
            expires,
            recurring,
            rollover_cap,
            source,
            reason,
        } => {
            let time = |option: &str, t: Option<String>| t.map(|t| finance::time_arg(option, &t)).transpose();
            let request = meterflow_billing::GrantRequest {
                customer_id: customer,
                amount: finance::decimal_arg("--amount", &amount)?,
                meter,
                priority,
                effective_from: time("--effective-from", effective_from)?,
                expires_at: time("--expires", expires)?,
                recurring,
                rollover_cap: rollover_cap.map(|c| finance::decimal_arg("--rollover-cap", &c)).transpose()?,
                source: meterflow_billing::Source::parse(&source)
                    .with_context(|| format!("--source {source:?}: use purchase, promotion or goodwill"))?,
                reason,
            };
            finance::credits_grant(&config, &request).await?
        }
        CreditsAction::List { customer } => finance::credits_list(&config, &customer).await?,
        CreditsAction::Balance { customer } => finance::credits_balance(&config, &customer).await?,
        CreditsAction::Ledger { customer } => finance::credits_ledger(&config, &customer).await?,
    };
    print!("{out}");
    Ok(())
}

async fn dlq_command(common: Common, action: DlqAction) -> Result<()> {
    init_logging("warn");
    let config = common.load()?;
    let out = match action {
        DlqAction::List => dlq::list(&config).await?,
        DlqAction::Show { seq } => dlq::show(&config, seq).await?,
        DlqAction::Replay { reason, subject, since, technical, dry_run } => {
            if let Some(r) = reason.as_deref() {
                if meterflow_schemas::RejectReason::parse(r).is_none() {
                    bail!("--reason {r:?} is not a reject reason; `meterflow dlq list` shows the ones queued");
                }
            }
            let since = since
                .map(|t| {
                    meterflow_rater::parse_instant(&t)
                        .with_context(|| format!("--since {t:?} is not YYYY-MM-DD or an RFC 3339 time"))
                })
                .transpose()?;
            let selection = meterflow_ingest::Selection { reason, subject, since, technical };
            dlq::replay(&config, &dlq::ReplayOptions { selection, dry_run }).await?
        }
    };
    print!("{out}");
    Ok(())
}

/// `meterflow catalog`: the live catalog.
async fn catalog_command(common: Common, action: CatalogAction) -> Result<()> {
    init_logging("warn");
    let config = common.load()?;
    let out = match action {
        CatalogAction::Apply { file, dry_run, author, comment, columns } => {
            let opts = catalog::ApplyOptions { file, dry_run, author, comment, columns };
            catalog::apply(&config, &opts).await?
        }
        CatalogAction::Show { revision, json } => {
            let format = if json { catalog::ShowFormat::Json } else { catalog::ShowFormat::Toml };
            catalog::show(&config, revision, format).await?
        }
        CatalogAction::History => catalog::history(&config).await?,
    };
    print!("{out}");
    Ok(())
}

/// `meterflow run`: the pipeline until a signal (or idle, with `--exit-when-idle`).
async fn run_pipeline(common: Common, exit_when_idle: Option<Duration>, adopt_stream: bool) -> Result<()> {
    let config = common.load()?;
    init_logging_as(&config.log.level, config.log.format);
    let armed = meterflow_faults::arm()?;
    if armed > 0 {
        tracing::warn!(armed, "fault injection armed from METERFLOW_FAULTS (test build)");
    }
    let shutdown = shutdown_on_signals()?;
    let ops = std::sync::Arc::new(Ops::new(&config));
    ops.start(&config).await;
    api::embed(&config, ops.clone(), shutdown.clone()).await;
    if config.nats.partitions > 0 {
        if adopt_stream {
            bail!("--adopt-stream is not available on a partitioned stream ([nats] partitions > 0)");
        }
        let stats = meterflow_pipeline::run_worker(config, ops, shutdown, RunOptions { exit_when_idle }).await?;
        for (p, s) in &stats.partitions {
            println!(
                "partition {p}: committed through stream sequence {}: {} messages ({} replayed, {} redeliveries \
                    dropped, {} gaps re-fetched), {} events accepted, {} duplicates, {} rejected, {} commits",
                s.committed_seq,
                s.messages,
                s.replayed_messages,
                s.redeliveries,
                s.gaps_refetched,
                s.events_accepted,
                s.duplicates,
                s.rejected_total(),
                s.commits
            );
        }
        return Ok(());
    }
    let options = StartOptions { adopt_stream, shutdown: Some(shutdown.clone()) };
    let Some(pipeline) = Pipeline::start_with(config, ops, options).await? else {
        println!("stopped while waiting as a standby for the writer lease; nothing was committed");
        return Ok(());
    };
    let stats = pipeline.run(shutdown, RunOptions { exit_when_idle }).await?;
    tracing::info!(?stats, "stopped");
    println!(
        "committed through stream sequence {}: {} messages ({} replayed, {} redeliveries dropped, {} \
            gaps re-fetched), {} events received, {} accepted, {} duplicates, {} rejected, {} commits",
        stats.committed_seq,
        stats.messages,
        stats.replayed_messages,
        stats.redeliveries,
        stats.gaps_refetched,
        stats.events_received,
        stats.events_accepted,
        stats.duplicates,
        stats.rejected_total(),
        stats.commits
    );
    Ok(())
}

/// `meterflow sql`: one read-only query over the tables, bounded by `[sql]`.
async fn sql(common: Common, format: OutputFormat, query: &str) -> Result<()> {
    init_logging("warn");
    let config = common.load()?;
    let tables = config.tables()?;
    let sql = ReadOnlySql::open_with_limits(&tables, config.sql.limits()).await?;
    if sql.tables.is_empty() {
        bail!("no tables in {tables} yet: run the pipeline first (or pass the right --data-dir)");
    }
    let (batches, cut) = sql.query_limited(query).await?;
    let format: Format = format.into();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if rows == 0 && format == Format::Table {
        println!("(no rows)");
        return Ok(());
    }
    let out = render(&batches, format)?;
    print!("{out}");
    if format == Format::Table && !out.ends_with('\n') {
        println!();
    }
    if cut {
        eprintln!(
            "note: output cut at {} rows ([sql] max_rows); add LIMIT or aggregate, or raise the limit",
            config.sql.max_rows
        );
    }
    Ok(())
}

/// `meterflow rerate`: appends price corrections for a period and lists them.
async fn rerate_period(common: Common, period: &str) -> Result<()> {
    init_logging("warn");
    let config = common.load()?;
    let adjustments = rerate::rerate(&config, period).await?;
    if adjustments.is_empty() {
        println!("{period}: every amount already matches the current plans; nothing written");
    }
    for a in &adjustments {
        println!(
            "{period} {} {} {}: quantity {} rated {} now {} -> adjustment {}",
            a.customer_id,
            a.meter,
            a.plan_version,
            a.quantity,
            a.rated,
            a.expected,
            a.expected - a.rated
        );
    }
    Ok(())
}

/// `meterflow vacuum`: deletes files the tables no longer need, older than their retention.
async fn vacuum(common: Common, dry_run: bool) -> Result<()> {
    init_logging("warn");
    let config = common.load()?;
    let done = meterflow_sink::vacuum_tables(&config.tables()?, dry_run).await?;
    for table in &done {
        let verb = if table.dry_run { "would delete" } else { "deleted" };
        let secs = table.retention.as_secs();
        let age = if secs % 86_400 == 0 { format!("{} days", secs / 86_400) } else { format!("{secs} s") };
        println!("{}: {verb} {} files (removed more than {age} ago)", table.table, table.files.len());
        for file in &table.files {
            println!("  {file}");
        }
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
