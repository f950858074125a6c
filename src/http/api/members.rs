//! Who may annotate a project, and one-time sign-in links, for admins.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::http::AppState;
use crate::http::auth::Admin;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, Path};
use crate::store::members::{add_member, list_members, remove_member};
use crate::store::projects::get_project;
use crate::store::sessions::{LOGIN_LINK_MS, create_login_link, login_url};
use crate::store::users::{User, get_user};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/projects/{id}/members", get(members).post(add))
        .route("/api/v1/projects/{id}/members/{user_id}", delete(remove))
        .route("/api/v1/users/{id}/login-link", post(login_link))
}

/// The project's members. A project without members is open to every annotator; once it has one, only
/// its members (and admins) may work on it.
#[utoipa::path(get, path = "/api/v1/projects/{id}/members",
    params(("id" = String, Path, description = "project id")),
    responses((status = 200, body = [User]), (status = 404)))]
pub async fn members(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<User>>> {
    let project = get_project(&state.store, &id).await?;
    Ok(Json(list_members(&state.store, &project.id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    pub user_id: String,
}

/// Assign a user to the project (assigning twice changes nothing). The first member closes the project
/// to every annotator who is not a member.
#[utoipa::path(post, path = "/api/v1/projects/{id}/members", request_body = NewMember,
    params(("id" = String, Path, description = "project id")),
    responses((status = 200, body = [User], description = "the members now"), (status = 404), (status = 422)))]
pub async fn add(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<NewMember>,
) -> ApiResult<Json<Vec<User>>> {
    let project = get_project(&state.store, &id).await?;
    add_member(&state.store, &project.id, &input.user_id).await?;
    Ok(Json(list_members(&state.store, &project.id).await?))
}

/// Remove a member; their open leases go back to the pool at their next call.
#[utoipa::path(delete, path = "/api/v1/projects/{id}/members/{user_id}",
    params(("id" = String, Path, description = "project id"), ("user_id" = String, Path, description = "user id")),
    responses((status = 204), (status = 404)))]
pub async fn remove(
    State(state): State<AppState>,
    _: Admin,
    Path((id, user_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let project = get_project(&state.store, &id).await?;
    get_user(&state.store, &user_id).await?;
    remove_member(&state.store, &project.id, &user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginLink {
    /// Signs the user in once, within `expires_in_seconds`.
    pub url: String,
    pub expires_in_seconds: i64,
}

/// Make a one-time sign-in link for a user (the base URL is the server's `--public-url`).
#[utoipa::path(post, path = "/api/v1/users/{id}/login-link",
    params(("id" = String, Path, description = "user id")),
    responses((status = 201, body = LoginLink), (status = 404), (status = 409, description = "revoked")))]
pub async fn login_link(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<LoginLink>)> {
    let user = get_user(&state.store, &id).await?;
    if user.revoked {
        return Err(ApiError::Conflict(format!("{} is revoked", user.name)));
    }
    let code = create_login_link(&state.store, &user.id).await?;
    Ok((
        StatusCode::CREATED,
        Json(LoginLink {
            url: login_url(&state.config.public_url, &code),
            expires_in_seconds: LOGIN_LINK_MS / 1000,
        }),
    ))
}
