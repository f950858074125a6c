//! The model side of a project: DPO runs (start, watch, cancel), generation with any version, AI judges.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::JudgeKind;
use crate::engine::active_loop::{ActiveLoop, current_policy};
use crate::engine::{EngineError, GenerateRequest, PolicyRef};
use crate::http::AppState;
use crate::http::auth::Admin;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::ApiJson;
use crate::judge::http::HttpJudgeSettings;
use crate::judge::{DEFAULT_RATE_PER_MINUTE, JudgeSettings};
use crate::store::judges::{self, Judge};
use crate::store::projects::get_project;
use crate::store::training::{self, ModelVersion, TrainingRun};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/projects/{id}/train", post(start_training))
        .route("/api/v1/projects/{id}/training-runs", get(list_runs))
        .route("/api/v1/projects/{id}/model-versions", get(list_versions))
        .route("/api/v1/training-runs/{id}", get(get_run))
        .route("/api/v1/training-runs/{id}/cancel", post(cancel_run))
        .route("/api/v1/projects/{id}/generate", post(generate))
        .route(
            "/api/v1/projects/{id}/judges",
            get(list_judges).post(attach_judge),
        )
        .route(
            "/api/v1/projects/{id}/judges/{judge_id}",
            delete(detach_judge),
        )
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Busy => ApiError::TooManyRequests(e.to_string()),
            EngineError::Cancelled => ApiError::Conflict(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

fn active_loop(state: &AppState) -> ApiResult<&ActiveLoop> {
    state
        .active
        .as_ref()
        .filter(|l| l.has_model())
        .ok_or_else(|| {
            ApiError::Conflict("no model is loaded: start the server with --model PATH".into())
        })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunStarted {
    pub run_id: String,
}

/// Queue a DPO update of the project now (it runs in the background).
#[utoipa::path(post, path = "/api/v1/projects/{id}/train",
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

#[utoipa::path(get, path = "/api/v1/training-runs/{id}", responses((status = 200, body = TrainingRun), (status = 404)))]
pub async fn get_run(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<TrainingRun>> {
    Ok(Json(training::get_training_run(&state.store, &id).await?))
}

#[utoipa::path(get, path = "/api/v1/projects/{id}/training-runs", responses((status = 200, body = [TrainingRun])))]
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
#[utoipa::path(get, path = "/api/v1/projects/{id}/model-versions", responses((status = 200, body = [ModelVersion])))]
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
#[utoipa::path(post, path = "/api/v1/training-runs/{id}/cancel",
    responses((status = 200, body = TrainingRun), (status = 404), (status = 409, description = "already finished")))]
pub async fn cancel_run(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<TrainingRun>> {
    training::get_training_run(&state.store, &id).await?;
    Ok(Json(active_loop(&state)?.cancel_run(&id).await?))
}

/// Upper bounds that keep one request from holding the model for minutes.
pub const MAX_GENERATE_PROMPTS: usize = 16;
pub const MAX_GENERATE_TOKENS: usize = 256;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateInput {
    pub prompts: Vec<String>,
    /// "current" (default), "reference", or a model version id of this project.
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub max_new_tokens: Option<usize>,
    pub seed: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Generated {
    /// One completion per prompt, in order.
    pub completions: Vec<String>,
    pub model_version: String,
}

/// See what a model version writes now.
#[utoipa::path(post, path = "/api/v1/projects/{id}/generate", request_body = GenerateInput,
    responses((status = 200, body = Generated), (status = 409), (status = 422), (status = 429)))]
pub async fn generate(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<GenerateInput>,
) -> ApiResult<Json<Generated>> {
    let project = get_project(&state.store, &id).await?;
    let engine = active_loop(&state)?.engine().expect("has_model checked");
    if input.prompts.is_empty() || input.prompts.len() > MAX_GENERATE_PROMPTS {
        return Err(ApiError::Unprocessable(format!(
            "prompts must hold 1 to {MAX_GENERATE_PROMPTS} strings"
        )));
    }
    let max_new_tokens = input.max_new_tokens.unwrap_or(32);
    if max_new_tokens == 0 || max_new_tokens > MAX_GENERATE_TOKENS {
        return Err(ApiError::Unprocessable(format!(
            "max_new_tokens must be 1 to {MAX_GENERATE_TOKENS}"
        )));
    }
    let temperature = input.temperature.unwrap_or(0.25);
    if !(0.0..=5.0).contains(&temperature) {
        return Err(ApiError::Unprocessable(
            "temperature must be in [0, 5]".into(),
        ));
    }
    let policy = match input.model.as_deref().unwrap_or("current") {
        "current" => current_policy(&state.store, Some(engine), &project.id)
            .await?
            .expect("engine present"),
        "reference" => engine.reference().clone(),
        version => {
            let v = training::get_model_version(&state.store, version).await?;
            if v.project_id.as_deref() != Some(project.id.as_str())
                && v.id != engine.reference().version_id
            {
                return Err(ApiError::NotFound(
                    "model version not found in this project".into(),
                ));
            }
            PolicyRef {
                version_id: v.id,
                path: v.path,
            }
        }
    };
    let completions = engine
        .generate(GenerateRequest {
            policy: policy.clone(),
            prompts: input.prompts,
            temperature,
            top_p: 1.0,
            max_new_tokens,
            seed: input.seed.unwrap_or(project.settings.seed),
            chat_template: project.settings.chat_template,
        })
        .await?;
    Ok(Json(Generated {
        completions,
        model_version: policy.version_id,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct JudgeInput {
    /// "sentiment": prefers the more positive completion (VADER, built in). "http": an
    /// OpenAI-compatible chat-completions endpoint; then also "url", "model", and optionally
    /// "api_key_env" (the NAME of the server's environment variable holding the key),
    /// "prompt_template", "max_retries", "timeout_seconds".
    pub kind: JudgeKind,
    /// Answers per minute (default 60).
    pub rate_per_minute: Option<f64>,
    /// The kind's own settings.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

/// Attach an AI judge that answers this project's pairs by itself; its judgments are marked as an AI's.
#[utoipa::path(post, path = "/api/v1/projects/{id}/judges", request_body = JudgeInput,
    responses((status = 201, body = Judge), (status = 404), (status = 422)))]
pub async fn attach_judge(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<JudgeInput>,
) -> ApiResult<(StatusCode, Json<Judge>)> {
    let project = get_project(&state.store, &id).await?;
    let rate = input.rate_per_minute.unwrap_or(DEFAULT_RATE_PER_MINUTE);
    if !(rate > 0.0 && rate <= 6000.0) {
        return Err(ApiError::Unprocessable(
            "rate_per_minute must be in (0, 6000]".into(),
        ));
    }
    let http = match input.kind {
        JudgeKind::Sentiment => {
            if let Some(field) = input.settings.keys().next() {
                return Err(ApiError::Unprocessable(format!(
                    "unknown field `{field}` for a sentiment judge"
                )));
            }
            None
        }
        JudgeKind::Http => {
            let http: HttpJudgeSettings =
                serde_json::from_value(serde_json::Value::Object(input.settings))
                    .map_err(|e| ApiError::Unprocessable(format!("http judge: {e}")))?;
            http.validate()
                .map_err(|e| ApiError::Unprocessable(format!("http judge: {e}")))?;
            Some(http)
        }
    };
    let settings = JudgeSettings {
        rate_per_minute: rate,
        http,
    };
    let judge =
        judges::create_judge(&state.store, &project.id, input.kind, &settings.to_json()).await?;
    if let Some(l) = &state.active {
        l.wake();
    }
    Ok((StatusCode::CREATED, Json(judge)))
}

#[utoipa::path(get, path = "/api/v1/projects/{id}/judges", responses((status = 200, body = [Judge])))]
pub async fn list_judges(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<Judge>>> {
    let project = get_project(&state.store, &id).await?;
    Ok(Json(judges::list_judges(&state.store, &project.id).await?))
}

#[utoipa::path(delete, path = "/api/v1/projects/{id}/judges/{judge_id}", responses((status = 204), (status = 404)))]
pub async fn detach_judge(
    State(state): State<AppState>,
    _: Admin,
    Path((id, judge_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    judges::detach_judge(&state.store, &id, &judge_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
