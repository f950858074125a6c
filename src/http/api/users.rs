//! Users, for admins: add (the token is shown once), list, revoke.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::http::AppState;
use crate::http::auth::Admin;
use crate::http::error::ApiResult;
use crate::http::extract::{ApiJson, Path};
use crate::store::users::{self, Role, User, UserKind};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users", get(list_users).post(create_user))
        .route("/api/v1/users/{id}/revoke", post(revoke_user))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedUser {
    pub user: User,
    /// The API token: shown this once, stored only hashed.
    pub token: String,
}

#[utoipa::path(post, path = "/api/v1/users", request_body = NewUser,
    responses((status = 201, body = CreatedUser), (status = 409), (status = 422)))]
pub async fn create_user(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(input): ApiJson<NewUser>,
) -> ApiResult<(StatusCode, Json<CreatedUser>)> {
    let (user, token) =
        users::create_user(&state.store, &input.name, input.role, UserKind::Human).await?;
    Ok((StatusCode::CREATED, Json(CreatedUser { user, token })))
}

#[utoipa::path(get, path = "/api/v1/users", responses((status = 200, body = [User])))]
pub async fn list_users(State(state): State<AppState>, _: Admin) -> ApiResult<Json<Vec<User>>> {
    Ok(Json(users::list_users(&state.store).await?))
}

#[utoipa::path(post, path = "/api/v1/users/{id}/revoke",
    params(("id" = String, Path, description = "user id")), responses((status = 204), (status = 404)))]
pub async fn revoke_user(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    users::revoke_user(&state.store, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
