//! AI judges: attach one to a project (it then answers pairs by itself), list them, detach one.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::ToSchema;

use super::TAG;
use crate::domain::{JudgeKind, JudgeRole};
use crate::http::AppState;
use crate::http::auth::Admin;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, Path};
use crate::judge::http::HttpJudgeSettings;
use crate::judge::{DEFAULT_RATE_PER_MINUTE, JudgeSettings};
use crate::store::judges::{self, Judge};
use crate::store::projects::get_project;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/projects/{id}/judges",
            get(list_judges).post(attach_judge),
        )
        .route(
            "/api/v1/projects/{id}/judges/{judge_id}",
            delete(detach_judge),
        )
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct JudgeInput {
    /// "sentiment": prefers the more positive completion (VADER, built in). "http": an
    /// OpenAI-compatible chat-completions endpoint; then also "url", "model", and optionally
    /// "api_key_env" (the NAME of the server's environment variable holding the key),
    /// "prompt_template", "max_retries", "timeout_seconds".
    pub kind: JudgeKind,
    /// "label" (default): answers pairs from the label budget. "evaluate": only judges each new model
    /// version against the reference on the held-out prompts (a win rate with its 95% interval) and
    /// answers no pair; sentiment judges only.
    pub role: Option<JudgeRole>,
    /// Answers per minute (default 60).
    pub rate_per_minute: Option<f64>,
    /// The kind's own settings.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

/// Attach an AI judge that answers this project's pairs by itself (its judgments are marked as an AI's),
/// or, with `"role": "evaluate"`, one that only measures each new version's win rate.
#[utoipa::path(post, tag = TAG, path = "/api/v1/projects/{id}/judges",
    params(("id" = String, Path, description = "project id")), request_body = JudgeInput,
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
    let role = input.role.unwrap_or_default();
    if role == JudgeRole::Evaluate && input.kind != JudgeKind::Sentiment {
        return Err(ApiError::Unprocessable(
            "role \"evaluate\" is for sentiment judges: the win rate is judged in the server, \
             without calls to an endpoint"
                .into(),
        ));
    }
    let settings = JudgeSettings {
        role,
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

#[utoipa::path(get, tag = TAG, path = "/api/v1/projects/{id}/judges",
    params(("id" = String, Path, description = "project id")), responses((status = 200, body = [Judge])))]
pub async fn list_judges(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<Judge>>> {
    let project = get_project(&state.store, &id).await?;
    Ok(Json(judges::list_judges(&state.store, &project.id).await?))
}

#[utoipa::path(delete, tag = TAG, path = "/api/v1/projects/{id}/judges/{judge_id}",
    params(("id" = String, Path, description = "project id"), ("judge_id" = String, Path, description = "judge id")), responses((status = 204), (status = 404)))]
pub async fn detach_judge(
    State(state): State<AppState>,
    _: Admin,
    Path((id, judge_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    judges::detach_judge(&state.store, &id, &judge_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
