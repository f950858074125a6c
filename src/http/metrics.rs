//! `/metrics` in the Prometheus text format: request counters kept here, gauges read from the database.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{ApiError, ApiResult};

#[derive(Debug, Default)]
pub struct Metrics {
    /// Responses by status class: 1xx..5xx at indexes 0..4.
    responses: [AtomicU64; 5],
    request_micros: AtomicU64,
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

pub async fn render(State(state): State<AppState>) -> ApiResult<Response> {
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

    let gauges = crate::store::stats::database_gauges(&state.store).await?;
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
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        out,
    )
        .into_response())
}
