//! Prompt and pair imports: NDJSON bodies, answered line by line.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use axum::{Json, Router};

use crate::http::AppState;
use crate::http::auth::Admin;
use crate::http::error::ApiResult;
use crate::http::extract::{Path, body_error};
use crate::store::items::{ImportKind, ImportReport, import_ndjson};
use crate::store::projects::get_project;

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/api/v1/projects/{id}/prompts", post(import_prompts))
        .route("/api/v1/projects/{id}/pairs", post(import_pairs))
        .layer(DefaultBodyLimit::max(state.config.max_import_bytes))
}

/// Import prompts, one JSON object per line: {"prompt"} with optional "id", "meta", "split".
#[utoipa::path(post, path = "/api/v1/projects/{id}/prompts",
    params(("id" = String, Path, description = "project id")), request_body(content = String, content_type = "application/x-ndjson"),
    responses((status = 200, body = ImportReport), (status = 404), (status = 413)))]
pub async fn import_prompts(
    state: State<AppState>,
    admin: Admin,
    id: Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<ImportReport>> {
    import(state, admin, id, body, ImportKind::Prompts).await
}

/// Import ready-made pairs, one JSON object per line: {"prompt", "completion_a", "completion_b"} with
/// optional "id" and "meta".
#[utoipa::path(post, path = "/api/v1/projects/{id}/pairs",
    params(("id" = String, Path, description = "project id")), request_body(content = String, content_type = "application/x-ndjson"),
    responses((status = 200, body = ImportReport), (status = 404), (status = 413)))]
pub async fn import_pairs(
    state: State<AppState>,
    admin: Admin,
    id: Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<ImportReport>> {
    import(state, admin, id, body, ImportKind::Pairs).await
}

async fn import(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
    kind: ImportKind,
) -> ApiResult<Json<ImportReport>> {
    let project = get_project(&state.store, &id).await?;
    let body = body.map_err(body_error)?;
    Ok(Json(
        import_ndjson(&state.store, &project.id, kind, &body).await?,
    ))
}
