//! The router and how it is served: axum on hyper, with tower middleware:
//!
//! * a timeout on every request but ingest (which has its own, `[api] publish_timeout_ms`,
//!   answered as 503 with `Retry-After`): `[api] request_timeout_s`, answered as a 503 problem;
//! * request tracing (`tower_http::trace`, at debug level) and per-route request counters and
//!   durations in `/metrics` (`meterflow_api_requests_total{route,status}`);
//! * problem documents for unknown paths (404) and methods (405).
//!
//! Routes: the operations routes (`/`, `/metrics`, `/api/status`, unauthenticated like before:
//! bind them to a private address), `/api/v1/openapi.yaml`, and the API under `/api/v1`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

use meterflow_pipeline::config::Config;
use meterflow_pipeline::ops::Ops;

use crate::problem::Problem;
use crate::state::Api;
use crate::{customers, ingest, meters, ApiError, Result, OPENAPI_YAML};

/// Labels of the request counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matched route (`/api/v1/meters/{meterIdOrSlug}`), or `unmatched`.
    pub route: String,
    /// The HTTP status code.
    pub status: String,
}

/// The HTTP API's metrics.
#[derive(Debug)]
pub struct ApiMetrics {
    /// Their registry (prefix `meterflow_api`).
    pub registry: Registry,
    /// Requests by route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Request durations, in seconds.
    pub duration: Histogram,
}

impl ApiMetrics {
    /// Registers the API's metrics.
    pub fn new() -> ApiMetrics {
        let mut registry = Registry::with_prefix("meterflow_api");
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]);
        registry.register("requests", "HTTP requests by route and status", requests.clone());
        registry.register("request_duration_seconds", "HTTP request durations", duration.clone());
        ApiMetrics { registry, requests, duration }
    }
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics::new()
    }
}

/// Counts each request by route and status.
async fn count(State(metrics): State<Arc<ApiMetrics>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    metrics.duration.observe(started.elapsed().as_secs_f64());
    let labels = RequestLabels { route, status: response.status().as_u16().to_string() };
    metrics.requests.get_or_create(&labels).inc();
    response
}

/// Answers requests that outlive `[api] request_timeout_s` with a 503 problem.
async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => Problem::unavailable(
            format!("the request took longer than {} s ([api] request_timeout_s): narrow it", limit.as_secs()),
            1,
        )
        .into_response(),
    }
}

async fn not_found() -> Response {
    Problem::not_found("no such endpoint: the API is described at /api/v1/openapi.yaml").into_response()
}

async fn method_not_allowed(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let response = next.run(req).await;
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        let mut p = Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
            format!("{method} is not allowed here: see /api/v1/openapi.yaml"),
        )
        .into_response();
        if let Some(allow) = response.headers().get(header::ALLOW) {
            p.headers_mut().insert(header::ALLOW, allow.clone());
        }
        return p;
    }
    response
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/yaml"))], OPENAPI_YAML).into_response()
}

/// Everything `/metrics`, `/` and `/api/status` need.
#[derive(Debug, Clone)]
struct OpsState {
    config: Arc<Config>,
    ops: Option<Arc<Ops>>,
    metrics: Arc<ApiMetrics>,
}

async fn metrics_text(State(s): State<OpsState>) -> Response {
    let text = match &s.ops {
        Some(ops) => ops.metrics.encode_with(&s.metrics.registry),
        None => meterflow_pipeline::ops::metrics::encode_registries(&[&s.metrics.registry]),
    };
    let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-store")], text).into_response()
}

async fn page(State(s): State<OpsState>) -> Response {
    match &s.ops {
        Some(ops) => ([(header::CACHE_CONTROL, "no-store")], Html(ops.page())).into_response(),
        None => Html(
            "<!doctype html><title>meterflow API</title><h1>meterflow API</h1>\
             <p>The API is described at <a href=\"/api/v1/openapi.yaml\">/api/v1/openapi.yaml</a>; \
             metrics are at <a href=\"/metrics\">/metrics</a>. The operations page is served by \
             <code>meterflow run</code>.</p>",
        )
        .into_response(),
    }
}

async fn status(State(s): State<OpsState>) -> Response {
    match &s.ops {
        Some(ops) => ([(header::CACHE_CONTROL, "no-store")], axum::Json(ops.view())).into_response(),
        None => match meterflow_pipeline::status::status(&s.config).await {
            Ok(st) => axum::Json(st).into_response(),
            Err(e) => Problem::unavailable(format!("cannot gather the status: {e:#}"), 2).into_response(),
        },
    }
}

/// The operations routes (`/`, `/metrics`, `/api/status`, `/api/v1/openapi.yaml`).
fn ops_routes(config: Arc<Config>, ops: Option<Arc<Ops>>, metrics: Arc<ApiMetrics>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/metrics", get(metrics_text))
        .route("/api/status", get(status))
        .route("/api/v1/openapi.yaml", get(openapi))
        .with_state(OpsState { config, ops, metrics })
}

/// The layers every route gets: problem documents for unknown paths and methods, request
/// counters, tracing.
fn finish(router: Router, metrics: Arc<ApiMetrics>) -> Router {
    router
        .fallback(not_found)
        .layer(middleware::from_fn(method_not_allowed))
        .layer(middleware::from_fn_with_state(metrics, count))
        .layer(TraceLayer::new_for_http())
}

/// The whole router over `api`.
pub fn router(api: Arc<Api>) -> Router {
    let metrics = Arc::new(ApiMetrics::new());
    let limit = Duration::from_secs(api.config.api.request_timeout_s.max(1));
    let queries = Router::new()
        .route("/api/v1/meters", get(meters::list))
        .route("/api/v1/meters/{meterIdOrSlug}", get(meters::get))
        .route("/api/v1/meters/{meterIdOrSlug}/query", get(meters::query))
        .route("/api/v1/meters/{meterIdOrSlug}/subjects", get(meters::subjects))
        .route("/api/v1/customers/{customerId}/usage", get(customers::usage))
        .route("/api/v1/customers/{customerId}/invoice-preview", get(customers::invoice_preview))
        .route("/api/v1/customers/{customerId}/credits", get(customers::credits))
        .route("/api/v1/customers/{customerId}/credits/ledger", get(customers::credit_ledger))
        .layer(middleware::from_fn_with_state(limit, deadline))
        .with_state(api.clone());
    let ingest = Router::new().route("/api/v1/events", post(ingest::post_events)).with_state(api.clone());
    let ops = ops_routes(Arc::new(api.config.clone()), api.ops.clone(), metrics.clone());
    finish(Router::new().merge(queries).merge(ingest).merge(ops), metrics)
}

/// The operations routes alone, for a `meterflow run` whose API could not start (`why`): every
/// other `/api/v1` path answers 503 with the reason, so the page and metrics stay up.
pub fn ops_router(config: Config, ops: Arc<Ops>, why: String) -> Router {
    let metrics = Arc::new(ApiMetrics::new());
    let why = Arc::new(why);
    let unavailable = move || {
        let why = why.clone();
        async move { Problem::unavailable(format!("the API is not available in this process: {why}"), 30) }
    };
    let api = Router::new().route("/api/v1/{*rest}", axum::routing::any(unavailable));
    finish(Router::new().merge(api).merge(ops_routes(Arc::new(config), Some(ops), metrics.clone())), metrics)
}

/// Binds `addr`.
pub async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr.trim()).await.map_err(|e| ApiError::Listen(format!("cannot listen on {addr}: {e}")))
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| ApiError::Listen(format!("HTTP server stopped: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn get(router: &Router, path: &str) -> (StatusCode, String) {
        let req = Request::builder().uri(path).body(Body::empty()).unwrap();
        let res = router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn without_the_api_the_page_and_metrics_are_served_and_api_paths_say_why_they_are_unavailable() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/meterflow.toml");
        let config = Config::load(&path, &Default::default()).unwrap();
        let ops = Arc::new(Ops::new(&config));
        let router = ops_router(config, ops, "[api] in_run is false".into());
        let (status, page) = get(&router, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("meterflow"), "{page}");
        let (status, metrics) = get(&router, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(metrics.contains("meterflow_api_requests"), "{metrics}");
        let (status, problem) = get(&router, "/api/v1/meters").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(problem.contains("[api] in_run is false"), "{problem}");
        let (status, spec) = get(&router, "/api/v1/openapi.yaml").await;
        assert_eq!(status, StatusCode::OK);
        assert!(spec.starts_with("openapi: 3.1"), "{}", &spec[..spec.len().min(40)]);
        let (status, _) = get(&router, "/nowhere").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
