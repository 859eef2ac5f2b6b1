//! The Postgres wire protocol for BI tools (`meterflow serve --pg-listen ADDR`).
//!
//! The protocol is `pgwire`; the sessions are `datafusion-postgres`'s DataFusion service
//! (pgwire's maintainers, the same DataFusion as our tables), which brings what clients send
//! besides queries (`SET`, `SHOW`, `BEGIN`/`COMMIT`, cursors) and typed results via `arrow-pg`
//! (`numeric` for decimals, `timestamp` for times). meterflow adds:
//!
//! * **Authentication by API key**: user name = the key's id (the 12 hex digits after `mf_`),
//!   password = the key; the session is the user name's key, so both methods check the key
//!   against that name. Without TLS the exchange is SCRAM-SHA-256 (the key never crosses the
//!   wire); with `[api] pg_tls_cert`/`pg_tls_key`, connections are TLS and the key is sent as a
//!   cleartext password inside it and checked against its SHA-256.
//! * **Scope**: a customer-bound key's session sees each table with a `customer_id` column
//!   filtered to its customers (under the table's own name), and no other table.
//! * **Read-only, bounded**: [`ReadOnlyHook`] lets through queries (and `EXPLAIN`), the session
//!   statements above, and refuses everything else (SQLSTATE 25006) before it is planned; query
//!   results are cut at `[sql] max_rows`; memory is bounded by `[sql] memory_limit_mb`; every
//!   query stops at `[sql] timeout_s` (57014): simple-protocol queries are collected within it,
//!   extended-protocol queries stream their rows and the stream ends with 57014 at the deadline.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion_postgres::arrow_pg::datatypes::df::encode_dataframe;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::{DfSessionService, QueryHook};
use deltalake::datafusion::common::ParamValues;
use deltalake::datafusion::execution::context::{SQLOptions, SessionContext};
use deltalake::datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use deltalake::datafusion::sql::sqlparser::ast::Statement;
use futures::{Sink, StreamExt};
use meterflow_sink::sql::SqlLimits;
use pgwire::api::auth::sasl::scram::ScramAuth;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata, AuthSource,
    DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{Response, SendableRowStream, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireConnectionState, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::types::format::FormatOptions;
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use crate::keys::SCRAM_ITERATIONS;
use crate::state::Api;
use crate::{ApiError, Result};

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), message)))
}

/// Whether `statement` may run in a read-only session: queries and EXPLAIN run (bounded), the
/// session statements go to datafusion-postgres's hooks, the rest is refused.
fn classify(statement: &Statement) -> Verdict {
    match statement {
        Statement::Query(_) | Statement::Explain { .. } => Verdict::Query,
        Statement::Set(_)
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Declare { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. } => Verdict::Session,
        // There are no SQL-level prepared statements or session state to drop (the protocol's
        // own statements are closed by the protocol): clients that send these get an answer.
        Statement::Discard { .. } => Verdict::NoOp("DISCARD ALL"),
        Statement::Deallocate { .. } => Verdict::NoOp("DEALLOCATE"),
        _ => Verdict::Refused,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Query,
    Session,
    NoOp(&'static str),
    Refused,
}

fn refused(statement: &Statement) -> PgWireError {
    let text = statement.to_string();
    let head: String = text.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    user_error(
        "25006",
        format!(
            "refused: meterflow SQL is read-only (queries only); `{head} ...` would change or read outside the tables"
        ),
    )
}

/// 57014 (query_canceled): the query ran past `[sql] timeout_s`.
fn stopped_after(limit: std::time::Duration) -> PgWireError {
    user_error(
        "57014",
        format!("query stopped after the {} s limit ([sql] timeout_s): narrow it with WHERE or LIMIT", limit.as_secs()),
    )
}

/// `rows` until `deadline`; then one 57014 error and the end (the rows are produced lazily, as
/// the client reads them, so the limit must hold while they stream).
fn within(
    rows: SendableRowStream,
    deadline: tokio::time::Instant,
    limit: std::time::Duration,
) -> impl futures::Stream<Item = PgWireResult<DataRow>> + Send {
    futures::stream::unfold(Some(rows), move |state| async move {
        let mut rows = state?;
        match tokio::time::timeout_at(deadline, rows.next()).await {
            Ok(Some(row)) => Some((row, Some(rows))),
            Ok(None) => None,
            Err(_) => Some((Err(stopped_after(limit)), None)),
        }
    })
}

/// The hook that keeps sessions read-only and bounded.
#[derive(Debug, Clone)]
pub struct ReadOnlyHook {
    options: SQLOptions,
    limits: SqlLimits,
}

impl ReadOnlyHook {
    fn limit(&self, plan: LogicalPlan) -> PgWireResult<LogicalPlan> {
        self.options.verify_plan(&plan).map_err(|e| user_error("25006", format!("refused: {e}")))?;
        LogicalPlanBuilder::from(plan)
            .limit(0, Some(self.limits.max_rows))
            .and_then(|b| b.build())
            .map_err(|e| PgWireError::ApiError(Box::new(e)))
    }
}

#[async_trait]
impl QueryHook for ReadOnlyHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        match classify(statement) {
            Verdict::Session => None,
            Verdict::NoOp(tag) => Some(Ok(Response::Execution(Tag::new(tag)))),
            Verdict::Refused => Some(Err(refused(statement))),
            Verdict::Query => Some(self.run(statement, ctx, client).await),
        }
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        match classify(statement) {
            Verdict::Session => None,
            Verdict::NoOp(_) => {
                Some(LogicalPlanBuilder::empty(false).build().map_err(|e| PgWireError::ApiError(Box::new(e))))
            }
            Verdict::Refused => Some(Err(refused(statement))),
            Verdict::Query => {
                let planned = ctx
                    .state()
                    .statement_to_plan(deltalake::datafusion::sql::parser::Statement::Statement(Box::new(
                        statement.clone(),
                    )))
                    .await
                    .map_err(|e| PgWireError::ApiError(Box::new(e)));
                Some(planned.and_then(|p| self.limit(p)))
            }
        }
    }

    async fn handle_extended_query(
        &self,
        _statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        None
    }
}

impl ReadOnlyHook {
    async fn run(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &dyn HookClient,
    ) -> PgWireResult<Response> {
        let api_err = |e: deltalake::datafusion::error::DataFusionError| PgWireError::ApiError(Box::new(e));
        let df = ctx.sql_with_options(&statement.to_string(), self.options).await.map_err(api_err)?;
        let df = df.limit(0, Some(self.limits.max_rows)).map_err(api_err)?;
        let batches = match tokio::time::timeout(self.limits.timeout, df.collect()).await {
            Err(_) => return Err(stopped_after(self.limits.timeout)),
            Ok(r) => r.map_err(api_err)?,
        };
        let df = ctx.read_batches(batches).map_err(api_err)?;
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        Ok(Response::Query(encode_dataframe(df, &Format::UnifiedText, Some(options)).await?))
    }
}

/// A session service and when its tables were read.
type ServiceAt = (chrono::DateTime<chrono::Utc>, Arc<DfSessionService>);

/// The DataFusion services, one per key scope and table read.
pub struct Services {
    api: Arc<Api>,
    cache: Mutex<HashMap<Vec<String>, ServiceAt>>,
    /// Parameter and result types of a planned statement (they need no session).
    typing: Arc<DfSessionService>,
}

impl Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").finish_non_exhaustive()
    }
}

impl Services {
    /// Services over `api`'s tables.
    pub fn new(api: Arc<Api>) -> Services {
        let typing = Arc::new(DfSessionService::new(Arc::new(SessionContext::new())));
        Services { api, cache: Mutex::new(HashMap::new()), typing }
    }

    async fn service<C: ClientInfo + ?Sized>(&self, client: &C) -> PgWireResult<Arc<DfSessionService>> {
        // The user name is the key's id; both authentications check the key against it.
        let id = client.metadata().get("user").cloned();
        let denied = || user_error("28000", "not authenticated with a meterflow API key".into());
        let id = id.ok_or_else(denied)?;
        let key = self.api.keys.get(&id).await.map_err(|e| user_error("58000", e.to_string()))?;
        let key = key.filter(|k| k.revoked_at.is_none()).ok_or_else(denied)?;
        let scope = key.scope();
        let tables = self.api.sql(&scope).await.map_err(|p| user_error("58000", p.detail))?;
        let cache_key: Vec<String> = scope.customers().map(|c| c.iter().cloned().collect()).unwrap_or_default();
        let mut cache = self.cache.lock().await;
        if let Some((read_at, s)) = cache.get(&cache_key) {
            if *read_at == tables.read_at {
                return Ok(s.clone());
            }
        }
        let hook = ReadOnlyHook { options: tables.sql.options(), limits: tables.sql.limits() };
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(hook),
            Arc::new(CursorStatementHook),
            Arc::new(SetShowHook),
            Arc::new(TransactionStatementHook),
        ];
        let ctx = Arc::new(tables.sql.context().clone());
        let service = Arc::new(DfSessionService::new_with_hooks(ctx, hooks));
        cache.insert(cache_key, (tables.read_at, service.clone()));
        Ok(service)
    }
}

#[async_trait]
impl SimpleQueryHandler for Services {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let service = self.service(client).await?;
        SimpleQueryHandler::do_query(service.as_ref(), client, query).await
    }
}

type DfStatement = <DfSessionService as ExtendedQueryHandler>::Statement;

/// Parses with the session of the client's key.
pub struct ScopedParser {
    services: Arc<Services>,
}

#[async_trait]
impl QueryParser for ScopedParser {
    type Statement = DfStatement;

    async fn parse_sql<C>(&self, client: &C, sql: &str, types: &[Option<Type>]) -> PgWireResult<Option<DfStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let service = self.services.service(client).await?;
        service.query_parser().parse_sql(client, sql, types).await
    }

    fn get_parameter_types(&self, stmt: &DfStatement) -> PgWireResult<Vec<Type>> {
        self.services.typing.query_parser().get_parameter_types(stmt)
    }

    fn get_result_schema(
        &self,
        stmt: &DfStatement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<pgwire::api::results::FieldInfo>> {
        self.services.typing.query_parser().get_result_schema(stmt, column_format)
    }
}

/// The extended-protocol handler: parses and runs with the session of the client's key.
pub struct Extended {
    services: Arc<Services>,
    parser: Arc<ScopedParser>,
}

#[async_trait]
impl ExtendedQueryHandler for Extended {
    type Statement = DfStatement;
    type QueryParser = ScopedParser;

    fn query_parser(&self) -> Arc<ScopedParser> {
        self.parser.clone()
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<DfStatement>, max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = DfStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let service = self.services.service(client).await?;
        let limit = self.services.api.config.sql.limits().timeout;
        let deadline = tokio::time::Instant::now() + limit;
        let response = tokio::time::timeout_at(
            deadline,
            ExtendedQueryHandler::do_query(service.as_ref(), client, portal, max_rows),
        )
        .await
        .map_err(|_| stopped_after(limit))??;
        Ok(match response {
            Response::Query(mut query) => {
                let rows = std::mem::replace(&mut query.data_rows, Box::pin(futures::stream::empty()));
                query.data_rows = Box::pin(within(rows, deadline, limit));
                Response::Query(query)
            }
            other => other,
        })
    }
}

/// SCRAM's source of salted passwords: the key named by the user name.
#[derive(Debug)]
struct KeySource {
    api: Arc<Api>,
}

#[async_trait]
impl AuthSource for KeySource {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default().to_string();
        let key = self.api.keys.get(&user).await.map_err(|e| user_error("58000", e.to_string()))?;
        match key.filter(|k| k.revoked_at.is_none()).and_then(|k| k.scram()) {
            Some((salt, salted)) => Ok(Password::new(Some(salt), salted)),
            None => Err(PgWireError::InvalidPassword(user)),
        }
    }
}

/// Cleartext password authentication inside TLS, checked against the key's SHA-256.
pub struct CleartextKey {
    api: Arc<Api>,
    parameters: DefaultServerParameterProvider,
}

/// The startup handler of a connection: SCRAM without TLS, a cleartext key inside TLS.
pub enum KeyAuth {
    /// SCRAM-SHA-256.
    Scram(Box<SASLAuthStartupHandler<DefaultServerParameterProvider>>),
    /// Cleartext inside TLS.
    Cleartext(Box<CleartextKey>),
}

#[async_trait]
impl StartupHandler for KeyAuth {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self {
            KeyAuth::Scram(h) => h.on_startup(client, message).await,
            KeyAuth::Cleartext(h) => h.on_startup(client, message).await,
        }
    }
}

impl CleartextKey {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use futures::SinkExt;
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                // A key is never asked for in the clear: without TLS the connection ends here.
                if !client.is_secure() {
                    return Err(user_error(
                        "28000",
                        "this endpoint requires TLS: connect with sslmode=require (or verify-full)".into(),
                    ));
                }
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client.send(PgWireBackendMessage::Authentication(Authentication::CleartextPassword)).await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let pwd = pwd.into_password()?;
                let user = client.metadata().get("user").cloned().unwrap_or_default();
                let key =
                    self.api.keys.authenticate(&pwd.password).await.map_err(|e| user_error("58000", e.to_string()))?;
                match key {
                    // The session's identity is the user name: it must name the key presented.
                    Ok(key) if key.id == user => finish_authentication(client, &self.parameters).await?,
                    _ => return Err(PgWireError::InvalidPassword(user)),
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The handlers of one connection.
pub struct Connection {
    api: Arc<Api>,
    tls: bool,
    services: Arc<Services>,
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.services.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        let parser = Arc::new(ScopedParser { services: self.services.clone() });
        Arc::new(Extended { services: self.services.clone(), parser })
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        let parameters = DefaultServerParameterProvider::default();
        Arc::new(if self.tls {
            KeyAuth::Cleartext(Box::new(CleartextKey { api: self.api.clone(), parameters }))
        } else {
            let mut scram = ScramAuth::new(Arc::new(KeySource { api: self.api.clone() }));
            scram.set_iterations(SCRAM_ITERATIONS);
            KeyAuth::Scram(Box::new(SASLAuthStartupHandler::new(Arc::new(parameters)).with_scram(scram)))
        })
    }
}

fn tls_acceptor(api: &Api) -> Result<Option<pgwire::tokio::TlsAcceptor>> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&api.config.api.pg_tls_cert, &api.config.api.pg_tls_key) else {
        return Ok(None);
    };
    let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<std::result::Result<_, _>>())
        .map_err(|e| ApiError::Tls(format!("[api] pg_tls_cert {}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ApiError::Tls(format!("[api] pg_tls_key {}: {e}", key.display())))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| ApiError::Tls(e.to_string()))?;
    Ok(Some(pgwire::tokio::TlsAcceptor::from(Arc::new(config))))
}

/// Serves the Postgres protocol on `listener` until the process ends.
pub async fn serve(listener: TcpListener, api: Arc<Api>) -> Result<()> {
    let tls = tls_acceptor(&api)?;
    let services = Arc::new(Services::new(api.clone()));
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "Postgres endpoint: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let handlers = Connection { api: api.clone(), tls: tls.is_some(), services: services.clone() };
        let tls = tls.clone();
        tokio::spawn(async move {
            if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                tracing::debug!(%peer, error = %e, "Postgres connection ended with an error");
            }
        });
    }
}
