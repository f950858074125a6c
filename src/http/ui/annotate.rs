//! The annotator workbench: the page, and the JSON calls its script makes that need rendered Markdown
//! (next pair, undo) or a place to put a flag. Answers, heartbeats and releases go straight to the REST API.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{Nav, PageResult, SignedIn, markdown, page};
use crate::http::AppState;
use crate::http::api::leases::{NextOutcome, NextQuery, NextRequest, lease_or_wait};
use crate::http::auth::AuthUser;
use crate::http::error::ApiResult;
use crate::http::extract::{ApiJson, ApiQuery, OptionalJson};
use crate::store::flags::flag_leased_pair;
use crate::store::leases::{self, LeasedPair};
use crate::store::members::ensure_access;
use crate::store::projects::get_project;
use crate::store::stats::project_stats;
use crate::store::undo::undo_last_judgment;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/projects/{id}/annotate", get(workbench))
        .route("/ui/api/projects/{id}/next", post(next_pair))
        .route("/ui/api/projects/{id}/undo", post(undo))
        .route("/ui/api/leases/{id}/flag", post(flag))
}

#[derive(Template)]
#[template(path = "annotate.html")]
struct WorkbenchPage {
    nav: Nav,
    project_id: String,
    project_name: String,
    guidelines_html: String,
    has_guidelines: bool,
    lease_seconds: i64,
}

async fn workbench(
    State(state): State<AppState>,
    SignedIn(session): SignedIn,
    Path(id): Path<String>,
) -> PageResult {
    let project = get_project(&state.store, &id).await?;
    ensure_access(&state.store, &project.id, &session.user).await?;
    page(WorkbenchPage {
        nav: Nav::of(&session),
        guidelines_html: markdown::render(&project.guidelines),
        has_guidelines: !project.guidelines.trim().is_empty(),
        project_id: project.id,
        project_name: project.name,
        lease_seconds: project.lease_seconds,
    })
}

/// A lease as the workbench shows it: Markdown already rendered (safely) on the server.
#[derive(Serialize)]
struct ShownPair {
    lease_id: String,
    pair_id: String,
    expires_at: String,
    prompt_html: String,
    left_html: String,
    right_html: String,
}

impl From<LeasedPair> for ShownPair {
    fn from(l: LeasedPair) -> Self {
        ShownPair {
            prompt_html: markdown::render(&l.prompt),
            left_html: markdown::render(&l.left),
            right_html: markdown::render(&l.right),
            lease_id: l.lease_id,
            pair_id: l.pair_id,
            expires_at: l.expires_at,
        }
    }
}

#[derive(Serialize)]
struct NextAnswer {
    lease: Option<ShownPair>,
    remaining: Option<i64>,
    /// Why there is no lease: "budget" (spent), "coming" (the model is preparing pairs, or others'
    /// leases may come back: ask again) or "empty" (nothing left for you).
    reason: Option<&'static str>,
    /// While "coming": pairs the round in the making brings, and how long it has taken so far.
    pairs_coming: usize,
    round_seconds: Option<f64>,
    /// Whether the model is making pairs (else what comes back comes from others' leases).
    generating: bool,
}

async fn next_pair(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<NextQuery>,
    OptionalJson(req): OptionalJson<NextRequest>,
) -> ApiResult<Json<NextAnswer>> {
    let wait = query.wait()?;
    let project = get_project(&state.store, &id).await?;
    ensure_access(&state.store, &project.id, &user).await?;
    let answer = match lease_or_wait(&state, &project, &user, &req.exclude, wait).await? {
        NextOutcome::Leased(lease) => {
            let stats = project_stats(&state.store, &project).await?;
            NextAnswer {
                lease: Some(ShownPair::from(lease)),
                remaining: stats.remaining,
                reason: None,
                pairs_coming: 0,
                round_seconds: None,
                generating: false,
            }
        }
        NextOutcome::Nothing {
            stats,
            outlook,
            retry_after,
        } => NextAnswer {
            lease: None,
            remaining: stats.remaining,
            reason: Some(match (stats.remaining, retry_after) {
                (Some(0), _) => "budget",
                (_, Some(_)) => "coming",
                (_, None) => "empty",
            }),
            pairs_coming: outlook.map_or(0, |o| o.pairs_coming),
            round_seconds: outlook.and_then(|o| o.round_seconds),
            generating: outlook.is_some_and(|o| o.generating),
        },
    };
    Ok(Json(answer))
}

#[derive(Serialize)]
struct UndoAnswer {
    /// The pair taken back, leased to the caller again (absent when someone else holds it now).
    lease: Option<ShownPair>,
    undone_choice: &'static str,
}

async fn undo(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<UndoAnswer>> {
    let project = get_project(&state.store, &id).await?;
    ensure_access(&state.store, &project.id, &user).await?;
    let undo = undo_last_judgment(&state.store, &project, &user).await?;
    Ok(Json(UndoAnswer {
        lease: undo.lease.map(ShownPair::from),
        undone_choice: undo.undone.choice.as_str(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlagRequest {
    note: String,
}

async fn flag(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(lease_id): Path<String>,
    ApiJson(req): ApiJson<FlagRequest>,
) -> ApiResult<StatusCode> {
    leases::ensure_lease_access(&state.store, &lease_id, &user).await?;
    flag_leased_pair(&state.store, &lease_id, &user, &req.note).await?;
    Ok(StatusCode::NO_CONTENT)
}
