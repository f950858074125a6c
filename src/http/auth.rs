//! Who is asking: a bearer token, or a browser's session cookie. `AuthUser` is anyone signed in, `Admin` an
//! admin. A request signed in by cookie that changes anything (any method but GET/HEAD) must also carry the
//! session's CSRF token, in the `X-CSRF-Token` header or (for `navigator.sendBeacon`, which cannot set
//! headers) the `csrf` query parameter.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use crate::store::sessions::{Session, find_session};
use crate::store::users::{Role, User, find_user_by_token};

/// The cookie that holds a browser's session secret.
pub const SESSION_COOKIE: &str = "prefloop_session";

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
        let user = match bearer(parts) {
            Some(token) => find_user_by_token(&state.store, token)
                .await?
                .ok_or(ApiError::Unauthorized)?,
            None => {
                let session = session_from_cookie(parts, state)
                    .await?
                    .ok_or(ApiError::Unauthorized)?;
                if !parts.method.is_safe() && !csrf_matches(parts, &session) {
                    return Err(ApiError::Forbidden(
                        "missing or wrong CSRF token: send X-CSRF-Token with the session's token"
                            .into(),
                    ));
                }
                session.user
            }
        };
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

/// The value of cookie `name`, if the request carries it.
pub fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The live session behind the request's cookie, cached in the request's extensions.
pub async fn session_from_cookie(
    parts: &mut Parts,
    state: &AppState,
) -> Result<Option<Session>, ApiError> {
    if let Some(session) = parts.extensions.get::<Session>() {
        return Ok(Some(session.clone()));
    }
    let Some(secret) = cookie(parts, SESSION_COOKIE).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let session = find_session(&state.store, secret).await?;
    if let Some(s) = &session {
        parts.extensions.insert(s.clone());
    }
    Ok(session)
}

/// Compares in time independent of where the strings differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn csrf_matches(parts: &Parts, session: &Session) -> bool {
    let header = parts
        .headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok());
    let query = parts.uri.query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "csrf")
            .map(|(_, v)| v)
    });
    header
        .or(query)
        .is_some_and(|t| same_secret(t, &session.csrf_token))
}
