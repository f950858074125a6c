//! The browser pages: sign-in, the annotator workbench, the admin dashboard. Server-rendered askama
//! templates (templates/), with the CSS and JavaScript of static/ embedded in the binary so a deployed
//! server needs no files beside it.
//!
//! Pages sign in by session cookie (`SignedIn`, `AdminPage`); the workbench's JSON calls go through the
//! REST API's `AuthUser`, which accepts the same cookie plus the session's CSRF token.

mod admin;
mod annotate;
pub mod charts;
mod login;
pub mod markdown;
mod training_panel;

use askama::Template;
use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;

use super::AppState;
use super::auth::{same_secret, session_from_cookie};
use crate::store::StoreError;
use crate::store::sessions::Session;
use crate::store::users::Role;

/// A form that carries nothing but the session's CSRF token (sign-out, Train now, the people table's
/// buttons).
#[derive(serde::Deserialize)]
struct CsrfForm {
    csrf: String,
}

impl CsrfForm {
    fn token(&self) -> &str {
        &self.csrf
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/static/app.css", get(app_css))
        .route("/static/annotate.js", get(annotate_js))
        .route("/static/admin.js", get(admin_js))
        // Browsers ask for /favicon.ico on every page unless told otherwise: answer both names.
        .route("/static/favicon.svg", get(favicon))
        .route("/favicon.ico", get(favicon))
        .merge(login::router())
        .merge(annotate::router())
        .merge(admin::router())
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn app_css() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../../../static/app.css"),
    )
}

async fn annotate_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../../static/annotate.js"),
    )
}

async fn admin_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../../static/admin.js"),
    )
}

async fn favicon() -> Response {
    asset("image/svg+xml", include_str!("../../../static/favicon.svg"))
}

/// What a page can fail with; answered as an HTML page (or a redirect to sign in).
#[derive(Debug)]
pub enum PageError {
    SignIn,
    Forbidden(String),
    NotFound(String),
    MethodNotAllowed(String),
    Bad(String),
    Internal(String),
}

impl From<StoreError> for PageError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(what) => PageError::NotFound(format!("{what} not found")),
            StoreError::Forbidden(m) => PageError::Forbidden(m),
            StoreError::Invalid(m) | StoreError::Conflict(m) => PageError::Bad(m),
            other => PageError::Internal(other.to_string()),
        }
    }
}

impl From<super::error::ApiError> for PageError {
    fn from(err: super::error::ApiError) -> Self {
        PageError::Internal(err.to_string())
    }
}

impl From<askama::Error> for PageError {
    fn from(err: askama::Error) -> Self {
        PageError::Internal(format!("template: {err}"))
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    message: &'a str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, message) = match &self {
            PageError::SignIn => return Redirect::to("/login").into_response(),
            PageError::Forbidden(m) => (StatusCode::FORBIDDEN, "Not for you", m.as_str()),
            PageError::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m.as_str()),
            PageError::MethodNotAllowed(m) => {
                (StatusCode::METHOD_NOT_ALLOWED, "Not like this", m.as_str())
            }
            PageError::Bad(m) => (StatusCode::BAD_REQUEST, "That did not work", m.as_str()),
            PageError::Internal(detail) => {
                tracing::error!(%detail, "page failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something broke",
                    "The server could not build this page; the details are in its log.",
                )
            }
        };
        let body = ErrorPage { title, message }
            .render()
            .unwrap_or_else(|_| message.to_string());
        (status, Html(body)).into_response()
    }
}

pub type PageResult<T = Response> = Result<T, PageError>;

/// Renders a template into a response.
pub fn page<T: Template>(t: T) -> PageResult {
    Ok(Html(t.render()?).into_response())
}

/// A page that answers a refused form: the form again, as typed, with status 400 so scripts see the refusal.
pub fn refused_form<T: Template>(t: T, refused: bool) -> PageResult {
    let mut response = page(t)?;
    if refused {
        *response.status_mut() = StatusCode::BAD_REQUEST;
    }
    Ok(response)
}

/// A browser signed in by session cookie; anyone else is sent to /login.
pub struct SignedIn(pub Session);

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, PageError> {
        session_from_cookie(parts, state)
            .await?
            .map(SignedIn)
            .ok_or(PageError::SignIn)
    }
}

/// A signed-in admin; a signed-in annotator gets 403.
pub struct AdminPage(pub Session);

impl FromRequestParts<AppState> for AdminPage {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, PageError> {
        let SignedIn(session) = SignedIn::from_request_parts(parts, state).await?;
        if session.user.role != Role::Admin {
            return Err(PageError::Forbidden(
                "The admin pages are for admins. Your projects are on the start page.".into(),
            ));
        }
        Ok(AdminPage(session))
    }
}

impl Session {
    /// Every form carries the session's CSRF token; a mismatch is a 403 (a cross-site post).
    pub fn check_csrf(&self, sent: &str) -> Result<(), PageError> {
        if same_secret(sent, &self.csrf_token) {
            Ok(())
        } else {
            Err(PageError::Forbidden(
                "This form is stale or came from another site; reload the page and try again."
                    .into(),
            ))
        }
    }
}

/// The header bar every signed-in page shows.
pub struct Nav {
    pub user: String,
    pub is_admin: bool,
    pub csrf: String,
}

impl Nav {
    pub fn of(session: &Session) -> Nav {
        Nav {
            user: session.user.name.clone(),
            is_admin: session.user.role == Role::Admin,
            csrf: session.csrf_token.clone(),
        }
    }
}

/// Unix ms as "2026-11-28 04:12 UTC".
pub fn when(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute()
    )
}
