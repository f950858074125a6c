//! The admin dashboard: projects (create, settings, import, export, members, flags, numbers and charts)
//! and people (add, sign-in links, revoke). Every form posts the session's CSRF token.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use super::{
    AdminPage, CsrfForm, Nav, PageError, PageResult, charts, page, refused_form, training_panel,
    when,
};
use crate::domain::{Display, EntropyEstimator, LabelAggregation, LossKind, Schedule, Strategy};
use crate::http::AppState;
use crate::store::dashboard::project_overview;
use crate::store::flags::{FlagAction, list_flags, resolve_flag};
use crate::store::members::{add_member, list_members, remove_member};
use crate::store::projects::{
    Project, ProjectInput, create_project, get_project, list_projects, update_project,
};
use crate::store::quality::{BrowsedPair, PairFilter, browse_pairs, list_annotators};
use crate::store::sessions::{create_login_link, login_url};
use crate::store::stats::project_stats;
use crate::store::users::{self, Role, User, UserKind};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin", get(admin_home))
        .route("/admin/projects", post(new_project))
        .route("/admin/projects/{id}", get(dashboard))
        .route("/admin/projects/{id}/settings", post(save_settings))
        .route("/admin/projects/{id}/members", post(change_members))
        .route("/admin/projects/{id}/flags/{flag_id}", post(resolve))
        .route("/admin/projects/{id}/pairs", get(data_browser))
        .route(
            "/admin/projects/{id}/train",
            post(training_panel::train_now),
        )
        .route(
            "/admin/projects/{id}/loss-chart",
            get(training_panel::loss_chart_fragment),
        )
        .route("/admin/users", post(new_user))
        .route("/admin/users/{id}/link", post(new_link))
        .route("/admin/users/{id}/revoke", post(revoke))
}

struct ProjectRow {
    id: String,
    name: String,
    labels: i64,
    budget: String,
    pending: i64,
    annotators: i64,
    strategy: &'static str,
}

struct UserRow {
    id: String,
    name: String,
    role: &'static str,
    kind: &'static str,
    created: String,
    revoked: bool,
}

/// A sign-in link just made: shown once, on the page that answers the form.
struct NewLink {
    name: String,
    url: String,
}

/// The admin page's two forms as typed, with why the one just sent was refused; empty on a plain visit.
#[derive(Default)]
struct Typed {
    project_name: String,
    project_budget: String,
    project_error: Option<String>,
    user_name: String,
    user_role: String,
    user_error: Option<String>,
}

#[derive(Template)]
#[template(path = "admin.html")]
struct AdminHome {
    nav: Nav,
    projects: Vec<ProjectRow>,
    users: Vec<UserRow>,
    new_link: Option<NewLink>,
    typed: Typed,
}

async fn render_home(
    state: &AppState,
    session: &crate::store::sessions::Session,
    new_link: Option<NewLink>,
    typed: Typed,
) -> PageResult {
    let mut projects = Vec::new();
    for p in list_projects(&state.store).await? {
        let s = project_stats(&state.store, &p).await?;
        projects.push(ProjectRow {
            budget: p
                .label_budget
                .map_or_else(|| "no limit".into(), |b| b.to_string()),
            labels: s.labels,
            pending: s.pending_pairs,
            annotators: s.annotators,
            strategy: p.strategy.as_str(),
            id: p.id,
            name: p.name,
        });
    }
    let users = users::list_users(&state.store)
        .await?
        .into_iter()
        .map(|u| UserRow {
            role: u.role.as_str(),
            kind: u.kind.as_str(),
            created: when(u.created_at),
            revoked: u.revoked,
            id: u.id,
            name: u.name,
        })
        .collect();
    let refused = typed.project_error.is_some() || typed.user_error.is_some();
    refused_form(
        AdminHome {
            nav: Nav::of(session),
            projects,
            users,
            new_link,
            typed,
        },
        refused,
    )
}

async fn admin_home(State(state): State<AppState>, AdminPage(session): AdminPage) -> PageResult {
    render_home(&state, &session, None, Typed::default()).await
}

#[derive(Deserialize)]
struct NewProjectForm {
    csrf: String,
    name: String,
    #[serde(default)]
    label_budget: String,
}

/// An optional whole number typed in a form: blank means none.
fn optional_number(field: &str, text: &str) -> Result<Option<i64>, PageError> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse()
        .map(Some)
        .map_err(|_| PageError::Bad(format!("{field} must be a whole number or blank")))
}

fn number<T: std::str::FromStr>(field: &str, text: &str) -> Result<T, PageError> {
    text.trim()
        .parse()
        .map_err(|_| PageError::Bad(format!("{field} must be a number, not {text:?}")))
}

async fn new_project(
    State(state): State<AppState>,
    AdminPage(session): AdminPage,
    Form(form): Form<NewProjectForm>,
) -> PageResult {
    session.check_csrf(&form.csrf)?;
    let created: Result<Project, PageError> = async {
        let input = ProjectInput {
            name: Some(form.name.clone()),
            label_budget: Some(optional_number("label budget", &form.label_budget)?),
            ..ProjectInput::default()
        };
        Ok(create_project(&state.store, input).await?)
    }
    .await;
    match created {
        Ok(project) => Ok(Redirect::to(&format!("/admin/projects/{}", project.id)).into_response()),
        Err(PageError::Bad(why)) => {
            let typed = Typed {
                project_name: form.name,
                project_budget: form.label_budget,
                project_error: Some(why),
                ..Typed::default()
            };
            render_home(&state, &session, None, typed).await
        }
        Err(other) => Err(other),
    }
}

struct AnnotatorRow {
    name: String,
    kind: String,
    labels: i64,
    skips: i64,
    left_rate: String,
    /// Width of the left-rate bar, 0–100.
    left_pct: i64,
    biased: bool,
    median: String,
    agreement: String,
    /// "correct of answered" gold pairs, or "–".
    gold: String,
    /// Stopped by the project's `min_gold_accuracy`.
    stopped: bool,
}

struct FlagRow {
    id: String,
    annotator: String,
    note: String,
    prompt: String,
    when: String,
    /// "open", "kept" or "excluded".
    status: &'static str,
}

struct Choice {
    value: &'static str,
    selected: bool,
}

/// What the settings form shows: the project's values, or what was typed when saving failed, so a
/// mistake costs one correction rather than the whole form.
struct SettingsFields {
    guidelines: String,
    criterion: String,
    label_budget: String,
    lease_seconds: String,
    train_every: String,
    beta: String,
    learning_rate: String,
    epochs: String,
    batch_size: String,
    labels_per_pair: String,
    gold_rate: String,
    min_gold_accuracy: String,
    strategies: Vec<Choice>,
    losses: Vec<Choice>,
    schedules: Vec<Choice>,
    estimators: Vec<Choice>,
    aggregations: Vec<Choice>,
    displays: Vec<Choice>,
}

impl SettingsFields {
    fn of(p: &Project) -> Self {
        let s = &p.settings;
        SettingsFields {
            guidelines: p.guidelines.clone(),
            criterion: s.criterion.clone(),
            label_budget: p.label_budget.map(|b| b.to_string()).unwrap_or_default(),
            lease_seconds: p.lease_seconds.to_string(),
            train_every: s.train_every.to_string(),
            beta: s.beta.to_string(),
            learning_rate: s.learning_rate.to_string(),
            epochs: s.epochs.to_string(),
            batch_size: s.batch_size.to_string(),
            labels_per_pair: s.labels_per_pair.to_string(),
            gold_rate: s.gold_rate.map(|r| r.to_string()).unwrap_or_default(),
            min_gold_accuracy: s
                .min_gold_accuracy
                .map(|r| r.to_string())
                .unwrap_or_default(),
            strategies: choices(Strategy::ALL, p.strategy.as_str(), Strategy::as_str),
            losses: choices(LossKind::ALL, s.loss.as_str(), LossKind::as_str),
            schedules: choices(Schedule::ALL, s.schedule.as_str(), Schedule::as_str),
            estimators: choices(
                EntropyEstimator::ALL,
                s.entropy_estimator.as_str(),
                EntropyEstimator::as_str,
            ),
            aggregations: choices(
                LabelAggregation::ALL,
                s.label_aggregation.as_str(),
                LabelAggregation::as_str,
            ),
            displays: choices(Display::ALL, s.display.as_str(), Display::as_str),
        }
    }

    /// The form as typed; a field an older form did not send shows the project's value.
    fn typed(f: SettingsForm, p: &Project) -> Self {
        let stored = Self::of(p);
        let pick = |typed: Option<String>, stored: String| typed.unwrap_or(stored);
        let choose = |all: Vec<Choice>, typed: Option<&str>| match typed {
            None => all,
            Some(t) => all
                .into_iter()
                .map(|c| Choice {
                    selected: c.value == t,
                    value: c.value,
                })
                .collect(),
        };
        SettingsFields {
            strategies: choose(stored.strategies, Some(&f.strategy)),
            losses: choose(stored.losses, Some(&f.loss)),
            schedules: choose(stored.schedules, Some(&f.schedule)),
            estimators: choose(stored.estimators, f.entropy_estimator.as_deref()),
            aggregations: choose(stored.aggregations, f.label_aggregation.as_deref()),
            displays: choose(stored.displays, f.display.as_deref()),
            guidelines: f.guidelines.replace("\r\n", "\n"),
            criterion: pick(f.criterion, stored.criterion),
            label_budget: f.label_budget,
            lease_seconds: f.lease_seconds,
            train_every: f.train_every,
            beta: f.beta,
            learning_rate: f.learning_rate,
            epochs: f.epochs,
            batch_size: f.batch_size,
            labels_per_pair: pick(f.labels_per_pair, stored.labels_per_pair),
            gold_rate: pick(f.gold_rate, stored.gold_rate),
            min_gold_accuracy: pick(f.min_gold_accuracy, stored.min_gold_accuracy),
        }
    }
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    nav: Nav,
    project: Project,
    saved: bool,
    labels: i64,
    budget: String,
    remaining: String,
    /// Share of the budget spent, 0–100, when there is a budget.
    spent_pct: Option<i64>,
    last_hour: i64,
    per_active_hour: String,
    pending: i64,
    leased: i64,
    /// The supply: free pairs now, made and answered per minute, seconds annotators waited.
    ready: i64,
    made_per_minute: String,
    answered_per_minute: String,
    waited: String,
    prompts: i64,
    median_seconds: String,
    annotators: Vec<AnnotatorRow>,
    /// The project's agreement where several annotators answered one pair, in words.
    agreement: String,
    gold_pairs: i64,
    held: i64,
    excluded: i64,
    labels_chart: String,
    seconds_chart: String,
    sampled: usize,
    members: Vec<User>,
    candidates: Vec<User>,
    /// With no members yet: the annotators who answered here and would lose access to a first member.
    lose_active: Vec<String>,
    flags: Vec<FlagRow>,
    fields: SettingsFields,
    /// Why the settings just typed were not saved; the form shows them as typed.
    settings_error: Option<String>,
    training: training_panel::TrainingPanel,
    live: bool,
}

/// The agreement line under the annotators' table.
fn agreement_text(a: &crate::store::quality::Agreement) -> String {
    let Some(rate) = a.agreement_rate else {
        return "no pair has two decisive votes yet".into();
    };
    let alpha = a.krippendorff_alpha.map_or_else(
        || "undefined (every vote the same)".into(),
        |x| format!("{x:.2}"),
    );
    format!(
        "{} pairs with two or more decisive votes, {:.0}% unanimous; Krippendorff's α {alpha}",
        a.agreement_pairs,
        rate * 100.0
    )
}

/// Every value of a setting, the current one marked selected.
fn choices<T: Copy>(all: &[T], current: &str, name: fn(T) -> &'static str) -> Vec<Choice> {
    all.iter()
        .map(|v| Choice {
            value: name(*v),
            selected: name(*v) == current,
        })
        .collect()
}

#[derive(Deserialize)]
struct DashboardQuery {
    #[serde(default)]
    saved: Option<String>,
}

async fn dashboard(
    State(state): State<AppState>,
    AdminPage(session): AdminPage,
    Path(id): Path<String>,
    Query(q): Query<DashboardQuery>,
) -> PageResult {
    let project = get_project(&state.store, &id).await?;
    render_dashboard(&state, &session, project, q.saved.is_some(), None).await
}

/// The dashboard; with `typed`, the settings form shows what was typed and why it was not saved.
async fn render_dashboard(
    state: &AppState,
    session: &crate::store::sessions::Session,
    project: Project,
    saved: bool,
    typed: Option<(SettingsFields, String)>,
) -> PageResult {
    let stats = project_stats(&state.store, &project).await?;
    let o = project_overview(&state.store, &project.id).await?;
    let members = list_members(&state.store, &project.id).await?;
    let candidates: Vec<User> = users::list_users(&state.store)
        .await?
        .into_iter()
        .filter(|u| {
            !u.revoked && u.role == Role::Annotator && !members.iter().any(|m| m.id == u.id)
        })
        .collect();
    let flags = list_flags(&state.store, &project.id, 50, false)
        .await?
        .into_iter()
        .map(|f| FlagRow {
            status: match f.resolution {
                None => "open",
                Some(FlagAction::Keep) => "kept",
                Some(FlagAction::Exclude) => "excluded",
            },
            id: f.id,
            annotator: f.annotator,
            note: f.note,
            prompt: f.prompt.chars().take(160).collect(),
            when: when(f.created_at),
        })
        .collect();
    let quality = list_annotators(
        &state.store,
        &project.id,
        project.settings.min_gold_accuracy,
    )
    .await?;
    let lose_active: Vec<String> = if members.is_empty() {
        let answered: std::collections::HashSet<&str> =
            quality.iter().map(|a| a.user_id.as_str()).collect();
        candidates
            .iter()
            .filter(|u: &&User| answered.contains(u.id.as_str()))
            .map(|u| u.name.clone())
            .collect()
    } else {
        Vec::new()
    };
    let annotators = quality
        .into_iter()
        .map(|a| {
            AnnotatorRow {
                left_rate: a.left_rate.map_or_else(
                    || "–".into(),
                    |r| format!("{:.0}% of {}", r * 100.0, a.decisive),
                ),
                left_pct: a.left_rate.map_or(50, |r| (r * 100.0).round() as i64),
                // Flag a lean only once there are enough answers for it to mean something.
                biased: a.decisive >= 20
                    && a.left_rate.is_some_and(|r| !(0.35..=0.65).contains(&r)),
                median: a
                    .median_seconds
                    .map_or_else(|| "–".into(), |s| format!("{s:.1} s")),
                agreement: a
                    .agreement_rate
                    .map_or_else(|| "–".into(), |r| format!("{:.0}%", r * 100.0)),
                gold: if a.gold_answered == 0 {
                    "–".into()
                } else {
                    format!("{} of {}", a.gold_correct, a.gold_answered)
                },
                stopped: a.below_gold_bar,
                name: a.name,
                kind: a.kind,
                labels: a.labels,
                skips: a.skips,
            }
        })
        .collect();
    let active_hours = o.hourly.len() as i64;
    let training = training_panel::training_panel(state, &project.id).await?;
    let (fields, settings_error) = match typed {
        Some((fields, error)) => (fields, Some(error)),
        None => (SettingsFields::of(&project), None),
    };
    let refused = settings_error.is_some();
    refused_form(
        DashboardPage {
            nav: Nav::of(session),
            live: training_panel::any_live(&training.runs),
            training,
            saved,
            labels: stats.labels,
            budget: project
                .label_budget
                .map_or_else(|| "no limit".into(), |b| b.to_string()),
            remaining: stats
                .remaining
                .map_or_else(|| "unlimited".into(), |r| r.to_string()),
            spent_pct: project.label_budget.map(|b| {
                if b == 0 {
                    100
                } else {
                    (100 * stats.labels / b).min(100)
                }
            }),
            last_hour: o.labels_last_hour,
            per_active_hour: if active_hours == 0 {
                "–".into()
            } else {
                format!("{:.1}", stats.labels as f64 / active_hours as f64)
            },
            pending: stats.pending_pairs,
            leased: stats.leased_pairs,
            ready: stats.ready_pairs,
            made_per_minute: format!("{:.1}", stats.pairs_per_minute),
            answered_per_minute: format!("{:.1}", stats.answers_per_minute),
            waited: format!("{:.0}", state.metrics.waited(&project.id)),
            prompts: stats.prompts,
            median_seconds: o
                .median_seconds
                .map_or_else(|| "–".into(), |m| format!("{m:.1} s")),
            annotators,
            agreement: agreement_text(&stats.agreement),
            gold_pairs: stats.gold_pairs,
            held: stats.held_pairs,
            excluded: stats.excluded_pairs,
            labels_chart: charts::cumulative_labels(&o.hourly, project.label_budget),
            seconds_chart: charts::seconds_histogram(&o.seconds),
            sampled: o.seconds.len(),
            members,
            candidates,
            lose_active,
            flags,
            fields,
            settings_error,
            project,
        },
        refused,
    )
}

#[derive(Deserialize)]
struct SettingsForm {
    csrf: String,
    guidelines: String,
    label_budget: String,
    strategy: String,
    lease_seconds: String,
    train_every: String,
    loss: String,
    beta: String,
    learning_rate: String,
    epochs: String,
    batch_size: String,
    schedule: String,
    /// Absent from forms rendered before the field existed: keep the project's.
    #[serde(default)]
    entropy_estimator: Option<String>,
    #[serde(default)]
    labels_per_pair: Option<String>,
    #[serde(default)]
    label_aggregation: Option<String>,
    #[serde(default)]
    gold_rate: Option<String>,
    #[serde(default)]
    min_gold_accuracy: Option<String>,
    #[serde(default)]
    display: Option<String>,
    #[serde(default)]
    criterion: Option<String>,
}

/// A share (0–1) typed in a form, blank for none.
fn optional_share(field: &str, text: &str) -> Result<Option<f64>, PageError> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse()
        .map(Some)
        .map_err(|_| PageError::Bad(format!("{field} must be a number from 0 to 1, or blank")))
}

fn parse_enum<T: serde::de::DeserializeOwned>(field: &str, v: &str) -> Result<T, PageError> {
    serde_json::from_value(serde_json::Value::String(v.to_string()))
        .map_err(|_| PageError::Bad(format!("unknown {field} {v:?}")))
}

async fn save_settings(
    State(state): State<AppState>,
    AdminPage(session): AdminPage,
    Path(id): Path<String>,
    Form(f): Form<SettingsForm>,
) -> PageResult {
    session.check_csrf(&f.csrf)?;
    let saved: Result<Project, PageError> =
        async { Ok(update_project(&state.store, &id, settings_input(&f)?).await?) }.await;
    match saved {
        Ok(p) => Ok(Redirect::to(&format!("/admin/projects/{}?saved=1", p.id)).into_response()),
        Err(PageError::Bad(why)) => {
            // Only a refusal needs the stored project: the fields the form did not send, and the page.
            let project = get_project(&state.store, &id).await?;
            let typed = SettingsFields::typed(f, &project);
            render_dashboard(&state, &session, project, false, Some((typed, why))).await
        }
        Err(other) => Err(other),
    }
}

/// The settings form as a project update, or the first field that does not parse.
fn settings_input(f: &SettingsForm) -> Result<ProjectInput, PageError> {
    Ok(ProjectInput {
        // Browsers send CRLF line ends from a textarea; keep the Markdown as typed elsewhere.
        guidelines: Some(f.guidelines.replace("\r\n", "\n")),
        label_budget: Some(optional_number("label budget", &f.label_budget)?),
        strategy: Some(parse_enum("strategy", &f.strategy)?),
        lease_seconds: Some(number("lease seconds", &f.lease_seconds)?),
        train_every: Some(number("train every", &f.train_every)?),
        loss: Some(parse_enum("loss", &f.loss)?),
        beta: Some(number("beta", &f.beta)?),
        learning_rate: Some(number("learning rate", &f.learning_rate)?),
        epochs: Some(number("epochs", &f.epochs)?),
        batch_size: Some(number("batch size", &f.batch_size)?),
        schedule: Some(parse_enum("schedule", &f.schedule)?),
        entropy_estimator: f
            .entropy_estimator
            .as_deref()
            .map(|v| parse_enum("entropy estimator", v))
            .transpose()?,
        labels_per_pair: f
            .labels_per_pair
            .as_deref()
            .map(|v| number("labels per pair", v))
            .transpose()?,
        label_aggregation: f
            .label_aggregation
            .as_deref()
            .map(|v| parse_enum("label aggregation", v))
            .transpose()?,
        gold_rate: f
            .gold_rate
            .as_deref()
            .map(|v| optional_share("gold rate", v))
            .transpose()?,
        min_gold_accuracy: f
            .min_gold_accuracy
            .as_deref()
            .map(|v| optional_share("minimum gold accuracy", v))
            .transpose()?,
        display: f
            .display
            .as_deref()
            .map(|v| parse_enum("display", v))
            .transpose()?,
        criterion: f.criterion.as_deref().map(|c| c.trim().to_string()),
        ..ProjectInput::default()
    })
}

#[derive(Template)]
#[template(path = "pairs.html")]
struct PairsPage {
    nav: Nav,
    project: Project,
    pairs: Vec<BrowsedPair>,
    status: String,
    flagged: bool,
    disagreement: bool,
    gold: bool,
    /// Whether a page of older pairs follows, and its address.
    more: bool,
    next_page: String,
}

/// The data browser: a project's pairs by status, flags, disagreement and gold, with their votes.
async fn data_browser(
    State(state): State<AppState>,
    AdminPage(session): AdminPage,
    Path(id): Path<String>,
    Query(filter): Query<PairFilter>,
) -> PageResult {
    const PAGE: i64 = 50;
    let project = get_project(&state.store, &id).await?;
    let offset = filter.offset.unwrap_or(0).max(0);
    let mut pairs = browse_pairs(
        &state.store,
        &project.id,
        &PairFilter {
            limit: Some(PAGE + 1),
            offset: Some(offset),
            ..filter.clone()
        },
    )
    .await?;
    let more = pairs.len() as i64 > PAGE;
    pairs.truncate(PAGE as usize);
    let status = filter.status.clone().unwrap_or_else(|| "all".into());
    let next_page = format!(
        "/admin/projects/{}/pairs?status={status}&flagged={}&disagreement={}&gold={}&offset={}",
        project.id,
        filter.flagged,
        filter.disagreement,
        filter.gold,
        offset + PAGE
    );
    page(PairsPage {
        nav: Nav::of(&session),
        pairs,
        status,
        flagged: filter.flagged,
        disagreement: filter.disagreement,
        gold: filter.gold,
        more,
        next_page,
        project,
    })
}

#[derive(Deserialize)]
struct ResolveForm {
    csrf: String,
    action: String,
}

async fn resolve(
    State(state): State<AppState>,
    AdminPage(session): AdminPage,
    Path((id, flag_id)): Path<(String, String)>,
    Form(f): Form<ResolveForm>,
) -> PageResult {
    session.check_csrf(&f.csrf)?;
    let project = get_project(&state.store, &id).await?;
    let action: FlagAction = parse_enum("action", &f.action)?;
    resolve_flag(&state.store, &flag_id, &session.user, action).await?;
    Ok(Redirect::to(&format!("/admin/projects/{}#flags", project.id)).into_response())
}

#[derive(Deserialize)]
struct MemberForm {
    csrf: String,
    user_id: String,
    action: String,
}

async fn change_members(
    State(state): State<AppState>,
    AdminPage(session): AdminPage,
    Path(id): Path<String>,
    Form(f): Form<MemberForm>,
) -> PageResult {
    session.check_csrf(&f.csrf)?;
    let project = get_project(&state.store, &id).await?;
    match f.action.as_str() {
        "add" => add_member(&state.store, &project.id, &f.user_id).await?,
        "remove" => remove_member(&state.store, &project.id, &f.user_id).await?,
        other => return Err(PageError::Bad(format!("unknown action {other:?}"))),
    }
    Ok(Redirect::to(&format!("/admin/projects/{}#members", project.id)).into_response())
}

#[derive(Deserialize)]
struct NewUserForm {
    csrf: String,
    name: String,
    role: String,
}

async fn new_user(
    State(state): State<AppState>,
    AdminPage(session): AdminPage,
    Form(f): Form<NewUserForm>,
) -> PageResult {
    session.check_csrf(&f.csrf)?;
    let created: Result<_, PageError> = async {
        let role: Role = f.role.parse().map_err(|e| PageError::Bad(format!("{e}")))?;
        Ok(users::create_user(&state.store, &f.name, role, UserKind::Human).await?)
    }
    .await;
    let user = match created {
        Ok((user, _token)) => user,
        Err(PageError::Bad(why)) => {
            let typed = Typed {
                user_name: f.name,
                user_role: f.role,
                user_error: Some(why),
                ..Typed::default()
            };
            return render_home(&state, &session, None, typed).await;
        }
        Err(other) => return Err(other),
    };
    let code = create_login_link(&state.store, &user.id).await?;
    let link = NewLink {
        url: login_url(&state.config.public_url, &code),
        name: user.name,
    };
    render_home(&state, &session, Some(link), Typed::default()).await
}

async fn new_link(
    State(state): State<AppState>,
    AdminPage(session): AdminPage,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> PageResult {
    session.check_csrf(f.token())?;
    let user = users::get_user(&state.store, &id).await?;
    if user.revoked {
        return Err(PageError::Bad(format!("{} is revoked", user.name)));
    }
    let code = create_login_link(&state.store, &user.id).await?;
    let link = NewLink {
        url: login_url(&state.config.public_url, &code),
        name: user.name,
    };
    render_home(&state, &session, Some(link), Typed::default()).await
}

async fn revoke(
    State(state): State<AppState>,
    AdminPage(session): AdminPage,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> PageResult {
    session.check_csrf(f.token())?;
    if id == session.user.id {
        return Err(PageError::Bad("you cannot revoke yourself".into()));
    }
    users::revoke_user(&state.store, &id).await?;
    Ok(Redirect::to("/admin#users").into_response())
}
