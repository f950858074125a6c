//! `/metrics` in the Prometheus text format: request counters kept here, gauges read from the database
//! at most once per `HttpConfig::metrics_cache` window (counting whole tables per scrape let a few
//! looping scrapers slow every annotator), behind `HttpConfig::metrics_token` when one is set.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::store::stats::{DatabaseGauges, ProjectSupply, database_gauges};

#[derive(Debug, Default)]
pub struct Metrics {
    /// Responses by status class: 1xx..5xx at indexes 0..4.
    responses: [AtomicU64; 5],
    request_micros: AtomicU64,
    /// The gauges last read and when. A tokio mutex held across the read, so scrapes that arrive
    /// together wait for one query instead of each running their own.
    gauges: tokio::sync::Mutex<Option<(Instant, Arc<DatabaseGauges>)>>,
    /// Per project: seconds `/next` callers spent waiting for a pair (`?wait=`), since start.
    waited: std::sync::Mutex<HashMap<String, f64>>,
}

impl Metrics {
    /// Counts time an annotator's `/next` spent waiting for a pair.
    pub fn add_wait(&self, project_id: &str, seconds: f64) {
        *self
            .waited
            .lock()
            .expect("lock")
            .entry(project_id.to_string())
            .or_default() += seconds;
    }

    /// Seconds annotators of the project spent waiting since start.
    pub fn waited(&self, project_id: &str) -> f64 {
        self.waited
            .lock()
            .expect("lock")
            .get(project_id)
            .copied()
            .unwrap_or(0.0)
    }

    async fn gauges(&self, state: &AppState) -> ApiResult<Arc<DatabaseGauges>> {
        let mut cached = self.gauges.lock().await;
        if let Some((read_at, gauges)) = cached.as_ref()
            && read_at.elapsed() < state.config.metrics_cache
        {
            return Ok(gauges.clone());
        }
        let gauges = Arc::new(database_gauges(&state.store).await?);
        *cached = Some((Instant::now(), gauges.clone()));
        Ok(gauges)
    }
}

/// With a token configured, the scrape must bring it as a bearer token (compared in constant time).
fn check_token(state: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    let Some(want) = &state.config.metrics_token else {
        return Ok(());
    };
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match sent {
        Some(sent) if super::auth::same_secret(sent, want) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

/// Handlers that panicked since start (the panic hook has no state to reach).
static PANICS: AtomicU64 = AtomicU64::new(0);

pub async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    let class = (response.status().as_u16() / 100).clamp(1, 5) as usize - 1;
    state.metrics.responses[class].fetch_add(1, Ordering::Relaxed);
    state
        .metrics
        .request_micros
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    response
}

/// A handler that panicked answers like any other internal error (and is counted).
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    PANICS.fetch_add(1, Ordering::Relaxed);
    ApiError::Internal("handler panicked".into()).into_response()
}

pub async fn render(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    check_token(&state, &headers)?;
    let m = &state.metrics;
    let mut out = String::new();
    out.push_str("# HELP prefloop_http_responses_total HTTP responses by status class.\n");
    out.push_str("# TYPE prefloop_http_responses_total counter\n");
    for (i, n) in m.responses.iter().enumerate() {
        let _ = writeln!(
            out,
            "prefloop_http_responses_total{{class=\"{}xx\"}} {}",
            i + 1,
            n.load(Ordering::Relaxed)
        );
    }
    out.push_str("# HELP prefloop_http_request_seconds_total Time spent answering requests.\n");
    out.push_str("# TYPE prefloop_http_request_seconds_total counter\n");
    let _ = writeln!(
        out,
        "prefloop_http_request_seconds_total {}",
        m.request_micros.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(out, "# TYPE prefloop_http_panics_total counter");
    let _ = writeln!(
        out,
        "prefloop_http_panics_total {}",
        PANICS.load(Ordering::Relaxed)
    );

    let gauges = m.gauges(&state).await?;
    out.push_str(
        "# HELP prefloop_judgments Judgments stored, by choice (superseded ones included).\n",
    );
    out.push_str("# TYPE prefloop_judgments gauge\n");
    for (choice, n) in &gauges.judgments_by_choice {
        let _ = writeln!(out, "prefloop_judgments{{choice=\"{choice}\"}} {n}");
    }
    out.push_str("# HELP prefloop_pairs Pairs stored, by status.\n# TYPE prefloop_pairs gauge\n");
    for (status, n) in &gauges.pairs_by_status {
        let _ = writeln!(out, "prefloop_pairs{{status=\"{status}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# TYPE prefloop_projects gauge\nprefloop_projects {}",
        gauges.projects
    );
    let _ = writeln!(
        out,
        "# TYPE prefloop_users gauge\nprefloop_users {}",
        gauges.users
    );
    let projects = |name: &str, kind: &str, help: &str, value: &dyn Fn(&ProjectSupply) -> f64| {
        let mut block = format!("# HELP {name} {help}\n# TYPE {name} {kind}\n");
        for s in &gauges.supply {
            let _ = writeln!(block, "{name}{{project=\"{}\"}} {}", s.project_id, value(s));
        }
        block
    };
    if let Some(active) = &state.active {
        let _ = writeln!(
            out,
            "# HELP prefloop_training_held_seconds_total Seconds training held for waiting annotators.\n\
             # TYPE prefloop_training_held_seconds_total counter\n\
             prefloop_training_held_seconds_total {}",
            active.training_held_seconds()
        );
    }
    out += &projects(
        "prefloop_ready_pairs",
        "gauge",
        "Free pending pairs per project: what /next can hand out.",
        &|s| s.ready_pairs as f64,
    );
    out += &projects(
        "prefloop_pairs_made_per_minute",
        "gauge",
        "Pairs the model made per minute, last 10 minutes.",
        &|s| s.made_per_minute,
    );
    out += &projects(
        "prefloop_answers_per_minute",
        "gauge",
        "Answers per minute, last 10 minutes.",
        &|s| s.answered_per_minute,
    );
    out += &projects(
        "prefloop_wait_seconds_total",
        "counter",
        "Seconds /next callers waited for a pair, since start.",
        &|s| m.waited(&s.project_id),
    );
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        out,
    )
        .into_response())
}
