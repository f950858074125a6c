//! The annotation queue: lease the next pair, answer it, keep it alive, give it back, undo.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::{IntoParams, ToSchema};

use crate::engine::active_loop::Outlook;
use crate::http::AppState;
use crate::http::auth::AuthUser;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, ApiQuery, OptionalJson, Path};
use crate::store::flags::{FlagInput, flag_leased_pair};
use crate::store::leases::{self, Judgment, JudgmentInput, LeasedPair};
use crate::store::members::ensure_access;
use crate::store::projects::{Project, get_project};
use crate::store::stats::{ProjectStats, project_stats};
use crate::store::undo::{Undo, undo_last_judgment};
use crate::store::users::User;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/projects/{id}/next", post(next_pair))
        .route("/api/v1/projects/{id}/undo", post(undo))
        .route("/api/v1/leases/{id}/judgment", post(record_judgment))
        .route("/api/v1/leases/{id}/heartbeat", post(heartbeat))
        .route("/api/v1/leases/{id}/release", post(release))
        .route("/api/v1/leases/{id}/flag", post(flag))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NextRequest {
    /// Leases the caller already holds and does not want back: lets a client keep the next pair ready.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// The longest a `/next` may wait for a pair.
pub const MAX_WAIT_SECONDS: u64 = 30;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NextQuery {
    /// Seconds to wait for a pair when none is free now (0 to 30, default 0).
    #[serde(default)]
    pub wait: u64,
}

impl NextQuery {
    pub fn wait(&self) -> ApiResult<Duration> {
        if self.wait > MAX_WAIT_SECONDS {
            return Err(ApiError::Unprocessable(format!(
                "wait must be 0 to {MAX_WAIT_SECONDS} seconds, got {}",
                self.wait
            )));
        }
        Ok(Duration::from_secs(self.wait))
    }
}

/// What a `/next` found: a pair, or why there is none and what is coming.
pub enum NextOutcome {
    Leased(LeasedPair),
    Nothing {
        stats: ProjectStats,
        /// What the model is preparing; absent when the server runs no model.
        outlook: Option<Outlook>,
        /// Seconds to wait before asking again while more is coming; `None` when the project is
        /// finished for now.
        retry_after: Option<u64>,
    },
}

/// When to ask again, or `None` when nothing more will come: without a model, pairs only come back
/// from leases others hold (`own` are the caller's), while budget is left.
fn retry_after(stats: &ProjectStats, outlook: Option<&Outlook>, own: usize) -> Option<u64> {
    match outlook {
        Some(o) => o.retry_after(stats.pairs_per_minute),
        None => {
            let others = stats.leased_pairs.saturating_sub(own as i64) > 0;
            (stats.remaining != Some(0) && others).then_some(5)
        }
    }
}

/// How long a waiting `/next` sleeps between looks when nothing wakes it: pairs can also come back
/// by a release or an expired lease, which send no signal.
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// Leases the caller the best free pair, waiting up to `wait` for one while more are coming.
pub async fn lease_or_wait(
    state: &AppState,
    project: &Project,
    user: &User,
    exclude: &[String],
    wait: Duration,
) -> ApiResult<NextOutcome> {
    let started = Instant::now();
    let deadline = started + wait;
    let outcome = loop {
        let stored = state.active.as_ref().map(|l| l.pairs_stored());
        let mut stored = std::pin::pin!(stored);
        if let Some(n) = stored.as_mut().as_pin_mut() {
            n.enable();
        }
        if let Some(leased) = leases::lease_next_pair(&state.store, project, user, exclude).await? {
            break NextOutcome::Leased(leased);
        }
        let stats = project_stats(&state.store, project).await?;
        let outlook = state.active.as_ref().map(|l| l.outlook(project, &stats));
        let retry = retry_after(&stats, outlook.as_ref(), exclude.len());
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || retry.is_none() {
            break NextOutcome::Nothing {
                stats,
                outlook,
                retry_after: retry,
            };
        }
        let _waiting = state.active.as_ref().map(|l| l.waiting());
        let nap = tokio::time::sleep(left.min(LOOK_AGAIN));
        match stored.as_mut().as_pin_mut() {
            Some(n) => {
                tokio::select! {
                    _ = n => {}
                    _ = nap => {}
                }
            }
            None => nap.await,
        }
    };
    // Time spent here is time an annotator waited (the first look is not waiting).
    let waited = started.elapsed().as_secs_f64();
    if !wait.is_zero() && waited > 0.05 {
        state.metrics.add_wait(&project.id, waited);
    }
    Ok(outcome)
}

/// Lease the most informative free pair to the caller (200), or 204 when there is none. With `wait`,
/// waits that many seconds for a pair first. A 204 carries `Retry-After` (seconds) while more pairs are
/// coming (the model is producing and budget remains, or pairs held by others may come back) and none
/// when the project is finished (budget spent, or no prompts and no pairs left). Asking again before
/// answering returns the same lease.
#[utoipa::path(post, path = "/api/v1/projects/{id}/next", params(("id" = String, Path, description = "project id"), NextQuery),
    request_body(content = Option<NextRequest>),
    responses((status = 200, body = LeasedPair),
              (status = 204, description = "nothing to label now; Retry-After when more is coming"),
              (status = 404), (status = 422, description = "wait out of range")))]
pub async fn next_pair(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<NextQuery>,
    OptionalJson(req): OptionalJson<NextRequest>,
) -> ApiResult<Response> {
    let wait = query.wait()?;
    let project = get_project(&state.store, &id).await?;
    ensure_access(&state.store, &project.id, &user).await?;
    match lease_or_wait(&state, &project, &user, &req.exclude, wait).await? {
        NextOutcome::Leased(leased) => Ok(Json(leased).into_response()),
        NextOutcome::Nothing { retry_after, .. } => {
            let mut resp = StatusCode::NO_CONTENT.into_response();
            if let Some(secs) = retry_after {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            Ok(resp)
        }
    }
}

/// Answer a lease. 201 with the new judgment; the same request again is a 200 with the same judgment.
/// Send an `Idempotency-Key` header to make retries safe even across a changed choice.
#[utoipa::path(post, path = "/api/v1/leases/{id}/judgment",
    params(("id" = String, Path, description = "lease id")), request_body = JudgmentInput,
    responses((status = 201, body = Judgment), (status = 200, body = Judgment, description = "repeat"),
              (status = 403), (status = 404), (status = 409)))]
pub async fn record_judgment(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(lease_id): Path<String>,
    headers: HeaderMap,
    ApiJson(input): ApiJson<JudgmentInput>,
) -> ApiResult<(StatusCode, Json<Judgment>)> {
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 200)
                .ok_or_else(|| {
                    ApiError::BadRequest(
                        "Idempotency-Key must be 1 to 200 visible characters".into(),
                    )
                })?,
        ),
        None => None,
    };
    leases::ensure_lease_access(&state.store, &lease_id, &user).await?;
    let (judgment, created) =
        leases::record_judgment(&state.store, &lease_id, &user, &input, key).await?;
    if let (true, Some(active)) = (created, &state.active) {
        active.wake(); // a label may make a training run due
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(judgment)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseExpiry {
    pub lease_id: String,
    /// RFC 3339.
    pub expires_at: String,
}

/// Keep a lease alive for another lease period (the workbench calls this while the page is open).
#[utoipa::path(post, path = "/api/v1/leases/{id}/heartbeat",
    params(("id" = String, Path, description = "lease id")),
    responses((status = 200, body = LeaseExpiry), (status = 403), (status = 404), (status = 409)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(lease_id): Path<String>,
) -> ApiResult<Json<LeaseExpiry>> {
    leases::ensure_lease_access(&state.store, &lease_id, &user).await?;
    let leased = leases::extend_lease(&state.store, &lease_id, &user).await?;
    Ok(Json(LeaseExpiry {
        lease_id: leased.lease_id,
        expires_at: leased.expires_at,
    }))
}

/// Give a lease back unanswered: the pair is free for others at once.
#[utoipa::path(post, path = "/api/v1/leases/{id}/release",
    params(("id" = String, Path, description = "lease id")),
    responses((status = 204), (status = 403), (status = 404)))]
pub async fn release(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(lease_id): Path<String>,
) -> ApiResult<StatusCode> {
    leases::release_lease(&state.store, &lease_id, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Flag the pair behind the caller's lease as broken, with a note for the admins. The pair is held from
/// serving until an admin resolves the flag (`POST /api/v1/flags/{id}/resolve`); the lease runs on,
/// so the caller still answers or skips it.
#[utoipa::path(post, path = "/api/v1/leases/{id}/flag", request_body = FlagInput,
    params(("id" = String, Path, description = "lease id")),
    responses((status = 204), (status = 403), (status = 404), (status = 422)))]
pub async fn flag(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(lease_id): Path<String>,
    ApiJson(req): ApiJson<FlagInput>,
) -> ApiResult<StatusCode> {
    leases::ensure_lease_access(&state.store, &lease_id, &user).await?;
    flag_leased_pair(&state.store, &lease_id, &user, &req.note).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Take back the caller's last answer in this project: it is kept but superseded, and the pair is leased
/// to the caller again.
#[utoipa::path(post, path = "/api/v1/projects/{id}/undo",
    params(("id" = String, Path, description = "project id")),
    responses((status = 200, body = Undo), (status = 404, description = "nothing to undo")))]
pub async fn undo(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Undo>> {
    let project = get_project(&state.store, &id).await?;
    ensure_access(&state.store, &project.id, &user).await?;
    Ok(Json(
        undo_last_judgment(&state.store, &project, &user).await?,
    ))
}
