//! The annotation queue: lease the next pair, answer it, keep it alive, give it back, undo.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::http::AppState;
use crate::http::auth::AuthUser;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, OptionalJson, Path};
use crate::store::leases::{self, Judgment, JudgmentInput, LeasedPair, Undo};
use crate::store::members::ensure_access;
use crate::store::projects::get_project;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/projects/{id}/next", post(next_pair))
        .route("/api/v1/projects/{id}/undo", post(undo))
        .route("/api/v1/leases/{id}/judgment", post(record_judgment))
        .route("/api/v1/leases/{id}/heartbeat", post(heartbeat))
        .route("/api/v1/leases/{id}/release", post(release))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NextRequest {
    /// Leases the caller already holds and does not want back: lets a client keep the next pair ready.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// Lease the most informative free pair to the caller (200), or 204 when nothing is left or the label
/// budget is spent. Asking again before answering returns the same lease.
#[utoipa::path(post, path = "/api/v1/projects/{id}/next", request_body(content = Option<NextRequest>),
    responses((status = 200, body = LeasedPair), (status = 204, description = "nothing to label"), (status = 404)))]
pub async fn next_pair(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    OptionalJson(req): OptionalJson<NextRequest>,
) -> ApiResult<Response> {
    let project = get_project(&state.store, &id).await?;
    ensure_access(&state.store, &project.id, &user).await?;
    match leases::lease_next_pair(&state.store, &project, &user, &req.exclude).await? {
        Some(leased) => Ok(Json(leased).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// Answer a lease. 201 with the new judgment; the same request again is a 200 with the same judgment.
/// Send an `Idempotency-Key` header to make retries safe even across a changed choice.
#[utoipa::path(post, path = "/api/v1/leases/{id}/judgment", request_body = JudgmentInput,
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
    responses((status = 200, body = LeaseExpiry), (status = 403), (status = 404), (status = 409)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(lease_id): Path<String>,
) -> ApiResult<Json<LeaseExpiry>> {
    let leased = leases::extend_lease(&state.store, &lease_id, &user).await?;
    Ok(Json(LeaseExpiry {
        lease_id: leased.lease_id,
        expires_at: leased.expires_at,
    }))
}

/// Give a lease back unanswered: the pair is free for others at once.
#[utoipa::path(post, path = "/api/v1/leases/{id}/release",
    responses((status = 204), (status = 403), (status = 404)))]
pub async fn release(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(lease_id): Path<String>,
) -> ApiResult<StatusCode> {
    leases::release_lease(&state.store, &lease_id, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Take back the caller's last answer in this project: it is kept but superseded, and the pair is leased
/// to the caller again.
#[utoipa::path(post, path = "/api/v1/projects/{id}/undo",
    responses((status = 200, body = Undo), (status = 404, description = "nothing to undo")))]
pub async fn undo(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Undo>> {
    let project = get_project(&state.store, &id).await?;
    ensure_access(&state.store, &project.id, &user).await?;
    Ok(Json(
        leases::undo_last_judgment(&state.store, &project, &user).await?,
    ))
}
