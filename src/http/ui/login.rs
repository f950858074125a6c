//! Signing in and out, and the start page listing the signed-in person's projects.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use super::{CsrfForm, Nav, PageResult, SignedIn, page};
use crate::http::AppState;
use crate::http::auth::{SESSION_COOKIE, cookie};
use crate::store::members::projects_for_user;
use crate::store::sessions::{self, SESSION_MS};
use crate::store::stats::project_stats;
use crate::store::users::{User, find_user_by_token};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_form).post(login))
        .route("/login/link/{code}", get(show_login_link).post(login_link))
        .route("/logout", post(logout))
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    error: Option<&'a str>,
}

async fn login_form() -> PageResult {
    page(LoginPage { error: None })
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// Whether this response travels over HTTPS: the config says so, or the proxy in front does.
fn secure(state: &AppState, headers: &HeaderMap) -> bool {
    state.config.secure_cookies
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

fn session_cookie(value: &str, max_age_s: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
    ))
    .expect("cookie value is hex")
}

async fn start_session(state: &AppState, headers: &HeaderMap, user: &User) -> PageResult {
    let (secret, _) = sessions::create_session(&state.store, user).await?;
    let mut resp = Redirect::to(if user.role == crate::store::users::Role::Admin {
        "/admin"
    } else {
        "/"
    })
    .into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&secret, SESSION_MS / 1000, secure(state, headers)),
    );
    Ok(resp)
}

/// No session exists yet to carry a CSRF token when signing in; refuse what the browser says came from
/// another site, so no page elsewhere can sign a visitor in as someone else.
fn refuse_cross_site(headers: &HeaderMap) -> Result<(), super::PageError> {
    let cross_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "cross-site");
    if cross_site {
        return Err(super::PageError::Forbidden(
            "Sign in from this site's own sign-in page.".into(),
        ));
    }
    Ok(())
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> PageResult {
    refuse_cross_site(&headers)?;
    match find_user_by_token(&state.store, form.token.trim()).await? {
        Some(user) => start_session(&state, &headers, &user).await,
        None => {
            let mut resp = page(LoginPage {
                error: Some("That token is unknown or was revoked."),
            })?;
            *resp.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
            Ok(resp)
        }
    }
}

#[derive(Template)]
#[template(path = "login_link.html")]
struct LoginLinkPage<'a> {
    name: &'a str,
    code: &'a str,
}

fn link_spent() -> PageResult {
    let mut resp = page(LoginPage {
        error: Some(
            "This sign-in link was already used or has expired. Ask an admin for a new one, or sign in with your token.",
        ),
    })?;
    *resp.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
    Ok(resp)
}

/// Opening a sign-in link only shows whom it signs in, with a button that posts it. A GET never spends
/// the link: chat apps fetch links to preview them, and an image or frame elsewhere could otherwise sign
/// a visitor in as someone else.
async fn show_login_link(State(state): State<AppState>, Path(code): Path<String>) -> PageResult {
    match sessions::peek_login_link(&state.store, &code).await? {
        Some(user) => page(LoginLinkPage {
            name: &user.name,
            code: &code,
        }),
        None => link_spent(),
    }
}

/// The button on that page: spends the link and signs in, unless the post came from another site.
async fn login_link(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> PageResult {
    refuse_cross_site(&headers)?;
    match sessions::redeem_login_link(&state.store, &code).await? {
        Some(user) => start_session(&state, &headers, &user).await,
        None => link_spent(),
    }
}

async fn logout(
    State(state): State<AppState>,
    SignedIn(session): SignedIn,
    headers: HeaderMap,
    parts: axum::http::request::Parts,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    session.check_csrf(form.token())?;
    if let Some(secret) = cookie(&parts, SESSION_COOKIE) {
        sessions::delete_session(&state.store, secret).await?;
    }
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie("", 0, secure(&state, &headers)),
    );
    Ok(resp)
}

struct ProjectCard {
    id: String,
    name: String,
    labels: i64,
    budget: String,
    pending: i64,
    done: bool,
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage {
    nav: Nav,
    projects: Vec<ProjectCard>,
}

async fn home(State(state): State<AppState>, SignedIn(session): SignedIn) -> PageResult {
    let mut projects = Vec::new();
    for p in projects_for_user(&state.store, &session.user).await? {
        let stats = project_stats(&state.store, &p).await?;
        projects.push(ProjectCard {
            done: stats.remaining == Some(0) || stats.pending_pairs == 0,
            budget: p
                .label_budget
                .map_or_else(|| "no limit".to_string(), |b| b.to_string()),
            labels: stats.labels,
            pending: stats.pending_pairs,
            id: p.id,
            name: p.name,
        });
    }
    page(HomePage {
        nav: Nav::of(&session),
        projects,
    })
}
