//! Label quality over REST: each annotator's record, and the review of flagged pairs.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::http::AppState;
use crate::http::auth::Admin;
use crate::http::error::ApiResult;
use crate::http::extract::{ApiJson, ApiQuery, Path};
use crate::store::flags::{self, Flag, ResolveInput};
use crate::store::projects::get_project;
use crate::store::quality::{
    AnnotatorQuality, BrowsedPair, PairFilter, browse_pairs, list_annotators,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/projects/{id}/annotators", get(annotators))
        .route("/api/v1/projects/{id}/flags", get(list_flags))
        .route("/api/v1/flags/{id}/resolve", post(resolve_flag))
        .route("/api/v1/projects/{id}/pairs", get(browse))
}

/// The project's pairs, newest first, with every current vote: filter by `status`, `flagged`,
/// `disagreement` (decisive votes both ways) and `gold`; page with `limit` and `offset`.
#[utoipa::path(get, path = "/api/v1/projects/{id}/pairs",
    params(("id" = String, Path, description = "project id"), PairFilter),
    responses((status = 200, body = [BrowsedPair]), (status = 404), (status = 422)))]
pub async fn browse(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    ApiQuery(filter): ApiQuery<PairFilter>,
) -> ApiResult<Json<Vec<BrowsedPair>>> {
    let project = get_project(&state.store, &id).await?;
    Ok(Json(
        browse_pairs(&state.store, &project.id, &filter).await?,
    ))
}

/// Every annotator who answered in the project: labels, skips, side bias, median seconds, gold answers
/// and agreement with the others, and whether the project's gold bar stopped them.
#[utoipa::path(get, path = "/api/v1/projects/{id}/annotators",
    params(("id" = String, Path, description = "project id")),
    responses((status = 200, body = [AnnotatorQuality]), (status = 404)))]
pub async fn annotators(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<AnnotatorQuality>>> {
    let project = get_project(&state.store, &id).await?;
    Ok(Json(
        list_annotators(
            &state.store,
            &project.id,
            project.settings.min_gold_accuracy,
        )
        .await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FlagQuery {
    /// Only flags still open (default false: every flag, newest first).
    #[serde(default)]
    pub open: bool,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
}

/// The project's flags, newest first: what annotators said was wrong with a pair, and how each was
/// resolved. A pair is held from serving while a flag on it is open.
#[utoipa::path(get, path = "/api/v1/projects/{id}/flags",
    params(("id" = String, Path, description = "project id"), FlagQuery),
    responses((status = 200, body = [Flag]), (status = 404)))]
pub async fn list_flags(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FlagQuery>,
) -> ApiResult<Json<Vec<Flag>>> {
    let project = get_project(&state.store, &id).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(
        flags::list_flags(&state.store, &project.id, limit, q.open).await?,
    ))
}

/// Resolve a flag: `keep` serves and trains the pair as before (once none of its flags is open),
/// `exclude` takes it out for good: never served, never trained, not in the TRL export.
#[utoipa::path(post, path = "/api/v1/flags/{id}/resolve", request_body = ResolveInput,
    params(("id" = String, Path, description = "flag id")),
    responses((status = 200, body = Flag), (status = 404), (status = 409, description = "resolved the other way already"),
              (status = 422)))]
pub async fn resolve_flag(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<ResolveInput>,
) -> ApiResult<Json<Flag>> {
    Ok(Json(
        flags::resolve_flag(&state.store, &id, &admin, input.action).await?,
    ))
}
