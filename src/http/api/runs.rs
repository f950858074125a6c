//! DPO runs and the model versions they make: start one, watch it, cancel it, list what was trained.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use super::{TAG, active_loop};
use crate::http::AppState;
use crate::http::auth::Admin;
use crate::http::error::ApiResult;
use crate::http::extract::Path;
use crate::store::projects::get_project;
use crate::store::training::{self, ModelVersion, TrainingRun};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/projects/{id}/train", post(start_training))
        .route("/api/v1/projects/{id}/training-runs", get(list_runs))
        .route("/api/v1/projects/{id}/model-versions", get(list_versions))
        .route("/api/v1/training-runs/{id}", get(get_run))
        .route("/api/v1/training-runs/{id}/cancel", post(cancel_run))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunStarted {
    pub run_id: String,
}

/// Queue a DPO update of the project now (it runs in the background).
#[utoipa::path(post, tag = TAG, path = "/api/v1/projects/{id}/train",
    params(("id" = String, Path, description = "project id")),
    responses((status = 202, body = RunStarted), (status = 404), (status = 409, description = "no model loaded")))]
pub async fn start_training(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<RunStarted>)> {
    let project = get_project(&state.store, &id).await?;
    let run = active_loop(&state)?.request_training(&project.id).await?;
    Ok((StatusCode::ACCEPTED, Json(RunStarted { run_id: run.id })))
}

#[utoipa::path(get, tag = TAG, path = "/api/v1/training-runs/{id}",
    params(("id" = String, Path, description = "training run id")), responses((status = 200, body = TrainingRun), (status = 404)))]
pub async fn get_run(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<TrainingRun>> {
    Ok(Json(training::get_training_run(&state.store, &id).await?))
}

#[utoipa::path(get, tag = TAG, path = "/api/v1/projects/{id}/training-runs",
    params(("id" = String, Path, description = "project id")), responses((status = 200, body = [TrainingRun])))]
pub async fn list_runs(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<TrainingRun>>> {
    let project = get_project(&state.store, &id).await?;
    Ok(Json(
        training::list_training_runs(&state.store, &project.id).await?,
    ))
}

/// The versions trained for the project, oldest first, each with the labels it saw and its metrics
/// (the training run's last step, and the win rate on eval prompts when the project has them and a judge).
#[utoipa::path(get, tag = TAG, path = "/api/v1/projects/{id}/model-versions",
    params(("id" = String, Path, description = "project id")), responses((status = 200, body = [ModelVersion])))]
pub async fn list_versions(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<ModelVersion>>> {
    let project = get_project(&state.store, &id).await?;
    Ok(Json(
        training::list_project_versions(&state.store, &project.id).await?,
    ))
}

/// Cancel a queued run at once, or a running one between two steps; the served model is untouched.
#[utoipa::path(post, tag = TAG, path = "/api/v1/training-runs/{id}/cancel",
    params(("id" = String, Path, description = "training run id")),
    responses((status = 200, body = TrainingRun), (status = 404), (status = 409, description = "already finished")))]
pub async fn cancel_run(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<TrainingRun>> {
    training::get_training_run(&state.store, &id).await?;
    Ok(Json(active_loop(&state)?.cancel_run(&id).await?))
}
