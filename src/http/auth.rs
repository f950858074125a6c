//! Who is asking: a bearer token on every API request. `AuthUser` is anyone signed in, `Admin` an admin.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use crate::store::users::{Role, User, find_user_by_token};

/// Any live user: a token that exists and is not revoked.
pub struct AuthUser(pub User);

/// An admin; anyone else is a 403.
pub struct Admin(pub User);

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(user) = parts.extensions.get::<User>() {
            return Ok(AuthUser(user.clone()));
        }
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
        let user = find_user_by_token(&state.store, token)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        parts.extensions.insert(user.clone());
        Ok(AuthUser(user))
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let AuthUser(user) = AuthUser::from_request_parts(parts, state).await?;
        if user.role != Role::Admin {
            return Err(ApiError::Forbidden("this needs an admin".into()));
        }
        Ok(Admin(user))
    }
}
