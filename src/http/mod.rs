//! The HTTP layer: routers, extractors, errors. It talks to `store` and never to candle.

pub mod api;
pub mod auth;
pub mod error;
pub mod extract;
pub mod headers;
pub mod metrics;
pub mod openapi;
pub mod server;
pub mod ui;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::store::Store;
use error::ApiError;

/// Limits and defaults the HTTP layer enforces.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest accepted import body, in bytes; larger is a 413 and nothing is stored.
    pub max_import_bytes: usize,
    /// Mark the session cookie `Secure` (set behind HTTPS; `X-Forwarded-Proto: https` does it per request).
    pub secure_cookies: bool,
    /// Base of the sign-in links shown to admins, e.g. https://labels.example.org.
    pub public_url: String,
    /// When set, `/metrics` answers only `Authorization: Bearer <token>`; otherwise it is open.
    pub metrics_token: Option<String>,
    /// How long `/metrics` reuses the database gauges it read, so scrapes cost the database at most
    /// one count per window however many scrapers loop.
    pub metrics_cache: std::time::Duration,
    /// Exports that may stream at once; more is a 503 with Retry-After. Each running export holds a
    /// database connection for as long as its client reads, so this stays well below the pool size
    /// (8 on SQLite, 16 on PostgreSQL) and stalled downloads cannot starve `/next`.
    pub max_exports: usize,
    /// A client must send a request's whole header within this; also how long a kept-alive connection
    /// may wait for its next request.
    pub header_timeout: std::time::Duration,
    /// A request's whole body must arrive within this, counted from its header (a 64 MiB import at
    /// 1 MB/s fits in the default).
    pub body_timeout: std::time::Duration,
    /// A connection on which no byte moves either way for this long, while no handler is working on
    /// it, is closed: a client that stopped reading a response no longer holds it (or its export).
    pub idle_timeout: std::time::Duration,
    /// Connections served at once; more wait in the listen backlog until one closes, so a flood of
    /// idle connections cannot run the process out of file descriptors.
    pub max_connections: usize,
}

pub const DEFAULT_PUBLIC_URL: &str = "http://127.0.0.1:3000";

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_import_bytes: 64 << 20,
            secure_cookies: false,
            public_url: DEFAULT_PUBLIC_URL.to_string(),
            metrics_token: None,
            metrics_cache: std::time::Duration::from_secs(5),
            max_exports: 2,
            header_timeout: std::time::Duration::from_secs(30),
            body_timeout: std::time::Duration::from_secs(120),
            idle_timeout: std::time::Duration::from_secs(60),
            max_connections: 512,
        }
    }
}

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub config: Arc<HttpConfig>,
    pub metrics: Arc<metrics::Metrics>,
    /// The export budget: one permit per streaming export (`HttpConfig::max_exports`).
    pub exports: Arc<tokio::sync::Semaphore>,
    /// The active-learning loop (and through it the model), when the server runs one.
    pub active: Option<crate::engine::active_loop::ActiveLoop>,
}

impl AppState {
    pub fn new(store: Store, config: HttpConfig) -> AppState {
        AppState {
            store,
            exports: Arc::new(tokio::sync::Semaphore::new(config.max_exports.max(1))),
            config: Arc::new(config),
            metrics: Arc::new(metrics::Metrics::default()),
            active: None,
        }
    }

    /// The same, with the active-learning loop running beside the server.
    pub fn with_loop(mut self, active: crate::engine::active_loop::ActiveLoop) -> AppState {
        self.active = Some(active);
        self
    }
}

/// The whole application as a router, separate from serving so tests can drive it directly.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::render))
        .route("/api/openapi.json", get(openapi::document))
        .merge(api::router(&state))
        .merge(ui::router())
        .fallback(not_found)
        // After every route is in place: it applies to the routes registered before it.
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(refuse_nul_in_uri))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::count_requests,
        ))
        .layer(CatchPanicLayer::custom(metrics::panic_response))
        .layer(axum::middleware::from_fn(headers::security_headers))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// A path or query holding `%00` would reach the database as U+0000, which it cannot store or compare
/// (`store::text`): refused before any handler binds it.
async fn refuse_nul_in_uri(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let uri = req.uri().path_and_query().map_or("", |p| p.as_str());
    if uri.contains("%00") {
        return ApiError::BadRequest(
            "the request path or query contains a NUL character (%00), which no name or id holds"
                .into(),
        )
        .into_response();
    }
    next.run(req).await
}

/// Under /api a client reads our JSON error; anywhere else a person reads a page.
fn is_api(uri: &Uri) -> bool {
    uri.path() == "/api" || uri.path().starts_with("/api/")
}

async fn not_found(uri: Uri) -> Response {
    if is_api(&uri) {
        ApiError::NotFound(format!("no such endpoint: {}", uri.path())).into_response()
    } else {
        ui::PageError::NotFound("There is no page at this address.".into()).into_response()
    }
}

/// A known path asked with a method it does not have; axum adds the `Allow` header.
async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let message = format!("{} does not answer {method}", uri.path());
    if is_api(&uri) {
        ApiError::MethodNotAllowed(message).into_response()
    } else {
        ui::PageError::MethodNotAllowed(message).into_response()
    }
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Serves `app` on an already-bound listener until ctrl-c or SIGTERM.
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    serve_with_shutdown(listener, state, shutdown_signal()).await
}

/// Serves `app` until `shutdown` completes, then finishes the requests in flight.
pub async fn serve_with_shutdown(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, "prefloop listening on http://{addr}");
    let config = state.config.clone();
    server::serve_connections(listener, app(state), &config, shutdown).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
