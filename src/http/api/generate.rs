//! Generation: what a model version of a project (current, reference, or a given one) writes now.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{TAG, active_loop};
use crate::engine::active_loop::current_policy;
use crate::engine::{GenerateRequest, PolicyRef};
use crate::http::AppState;
use crate::http::auth::Admin;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, Path};
use crate::store::projects::get_project;
use crate::store::training;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/projects/{id}/generate", post(generate))
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
#[utoipa::path(post, tag = TAG, path = "/api/v1/projects/{id}/generate",
    params(("id" = String, Path, description = "project id")), request_body = GenerateInput,
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
            full_precision: false,
            first_prompt: 0,
        })
        .await?;
    Ok(Json(Generated {
        completions,
        model_version: policy.version_id,
    }))
}
