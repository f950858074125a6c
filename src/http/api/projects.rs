//! Projects: create, list, read, edit, and their label statistics.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use serde::Serialize;
use utoipa::ToSchema;

use crate::engine::active_loop::current_policy;
use crate::http::AppState;
use crate::http::auth::{Admin, AuthUser};
use crate::http::error::ApiResult;
use crate::http::extract::{ApiJson, Path};
use crate::store::projects::{self, Project, ProjectInput};
use crate::store::stats::{ProjectStats, project_stats};
use crate::store::training::{TrainingRun, latest_training_run};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/projects", get(list_projects).post(create_project))
        .route(
            "/api/v1/projects/{id}",
            get(get_project).patch(update_project),
        )
        .route("/api/v1/projects/{id}/stats", get(get_stats))
}

/// Create a project. Only `name` is required; every loop setting has a default.
#[utoipa::path(post, path = "/api/v1/projects", request_body = ProjectInput,
    responses((status = 201, body = Project), (status = 409, description = "name taken"),
              (status = 422, description = "invalid or unknown field")))]
pub async fn create_project(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(input): ApiJson<ProjectInput>,
) -> ApiResult<(StatusCode, Json<Project>)> {
    let project = projects::create_project(&state.store, input).await?;
    Ok((StatusCode::CREATED, Json(project)))
}

#[utoipa::path(get, path = "/api/v1/projects", responses((status = 200, body = [Project])))]
pub async fn list_projects(
    State(state): State<AppState>,
    _: Admin,
) -> ApiResult<Json<Vec<Project>>> {
    Ok(Json(projects::list_projects(&state.store).await?))
}

#[utoipa::path(get, path = "/api/v1/projects/{id}",
    params(("id" = String, Path, description = "project id")), responses((status = 200, body = Project), (status = 404)))]
pub async fn get_project(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Project>> {
    Ok(Json(projects::get_project(&state.store, &id).await?))
}

/// Change any of the fields given; absent fields keep their value, `"label_budget": null` lifts the budget.
#[utoipa::path(patch, path = "/api/v1/projects/{id}",
    params(("id" = String, Path, description = "project id")), request_body = ProjectInput,
    responses((status = 200, body = Project), (status = 404), (status = 422)))]
pub async fn update_project(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<ProjectInput>,
) -> ApiResult<Json<Project>> {
    Ok(Json(
        projects::update_project(&state.store, &id, input).await?,
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatsResponse {
    #[serde(flatten)]
    pub stats: ProjectStats,
    /// The id of the model version now serving the project (absent without a model).
    pub model_version: Option<String>,
    /// The project's latest training run.
    pub training: Option<TrainingRun>,
    /// Whether the model is making pairs for the project (it has a model, budget left, prompts).
    pub generating: bool,
    /// Pairs the round in the making will bring (0 when none is).
    pub pairs_coming: usize,
}

/// Labels spent and left, pairs pending, annotators, the current model version and the latest training
/// run. Open to annotators too: the workbench shows the budget.
#[utoipa::path(get, path = "/api/v1/projects/{id}/stats",
    params(("id" = String, Path, description = "project id")), responses((status = 200, body = StatsResponse), (status = 404)))]
pub async fn get_stats(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<StatsResponse>> {
    let project = projects::get_project(&state.store, &id).await?;
    crate::store::members::ensure_access(&state.store, &project.id, &user).await?;
    let engine = state.active.as_ref().and_then(|l| l.engine());
    let model_version = current_policy(&state.store, engine, &project.id)
        .await?
        .map(|p| p.version_id);
    let stats = project_stats(&state.store, &project).await?;
    let outlook = state.active.as_ref().map(|l| l.outlook(&project, &stats));
    Ok(Json(StatsResponse {
        generating: outlook.is_some_and(|o| o.generating),
        pairs_coming: outlook.map_or(0, |o| o.pairs_coming),
        stats,
        model_version,
        training: latest_training_run(&state.store, &project.id).await?,
    }))
}
