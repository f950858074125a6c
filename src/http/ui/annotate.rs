//! The annotator workbench: the page, and the JSON calls its script makes that need rendered Markdown
//! (next pair, undo) or a place to put a flag. Answers, heartbeats and releases go straight to the REST API.

use askama::Template;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use super::{Nav, PageResult, SignedIn, markdown, page};
use crate::domain::Display;
use crate::http::AppState;
use crate::http::api::leases::{NextOutcome, NextQuery, NextRequest, lease_or_wait};
use crate::http::auth::AuthUser;
use crate::http::error::ApiResult;
use crate::http::extract::{ApiQuery, OptionalJson};
use crate::store::leases::LeasedPair;
use crate::store::members::ensure_access;
use crate::store::projects::get_project;
use crate::store::stats::project_stats;
use crate::store::undo::undo_last_judgment;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/projects/{id}/annotate", get(workbench))
        .route("/ui/api/projects/{id}/next", post(next_pair))
        .route("/ui/api/projects/{id}/undo", post(undo))
        .route(
            "/ui/api/leases/{id}/flag",
            post(crate::http::api::leases::flag),
        )
}

#[derive(Template)]
#[template(path = "annotate.html")]
struct WorkbenchPage {
    nav: Nav,
    project_id: String,
    project_name: String,
    guidelines_html: String,
    has_guidelines: bool,
    /// One line on what decides an answer, shown above every pair (empty: none).
    criterion: String,
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
        criterion: criterion_line(&project.settings.criterion, &project.guidelines),
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

impl ShownPair {
    /// The pair as the project shows it: each text rendered as Markdown, or raw, where each side is the
    /// prompt in grey with the continuation after it, exactly as the model wrote it (an indented line
    /// stays a line, not a code box).
    fn new(l: LeasedPair, display: Display) -> Self {
        let (prompt_html, left_html, right_html) = match display {
            Display::Markdown => (
                markdown::render(&l.prompt),
                markdown::render(&l.left),
                markdown::render(&l.right),
            ),
            Display::Raw => {
                let prompt = escape(&l.prompt);
                let side = |c: &str| {
                    format!(
                        "<pre class=\"raw\"><span class=\"raw-prompt\">{prompt}</span>{}</pre>",
                        escape(c)
                    )
                };
                (
                    format!("<pre class=\"raw\">{prompt}</pre>"),
                    side(&l.left),
                    side(&l.right),
                )
            }
        };
        ShownPair {
            prompt_html,
            left_html,
            right_html,
            lease_id: l.lease_id,
            pair_id: l.pair_id,
            expires_at: l.expires_at,
        }
    }
}

/// Text as HTML text: the five characters that mean something in HTML, escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The line the workbench shows above every pair: the project's criterion, else the first line of its
/// guidelines (without Markdown's heading marks), else none.
fn criterion_line(criterion: &str, guidelines: &str) -> String {
    let c = criterion.trim();
    if !c.is_empty() {
        return c.to_string();
    }
    guidelines
        .lines()
        .map(|l| l.trim().trim_start_matches('#').trim())
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
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
                lease: Some(ShownPair::new(lease, project.settings.display)),
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
        lease: undo
            .lease
            .map(|l| ShownPair::new(l, project.settings.display)),
        undone_choice: undo.undone.choice.as_str(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_criterion_is_the_setting_else_the_guidelines_first_line() {
        assert_eq!(
            criterion_line("Which is kinder?", "# Other"),
            "Which is kinder?"
        );
        assert_eq!(
            criterion_line("", "\n## Pick the more positive one\nmore"),
            "Pick the more positive one"
        );
        assert_eq!(criterion_line("  ", ""), "");
    }

    #[test]
    fn raw_display_escapes_and_keeps_the_prompt_before_each_side() {
        let lease = LeasedPair {
            lease_id: "l".into(),
            pair_id: "p".into(),
            project_id: "x".into(),
            prompt: "The <b>film</b>".into(),
            left: "\n    was fine".into(),
            right: " & dull".into(),
            expires_at: String::new(),
            expires_at_ms: 0,
            left_is_a: true,
        };
        let shown = ShownPair::new(lease, Display::Raw);
        assert_eq!(
            shown.left_html,
            "<pre class=\"raw\"><span class=\"raw-prompt\">The &lt;b&gt;film&lt;/b&gt;</span>\n    was fine</pre>"
        );
        assert!(shown.right_html.ends_with(" &amp; dull</pre>"));
    }
}
