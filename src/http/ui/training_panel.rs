//! The dashboard's training panel: the version serving the project, its training runs with live progress
//! and loss curves, a "train now" button, the win rate of each version against labels, and the
//! acquisition scores of the pending pool. It reads the same typed run metrics the REST API returns.

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Redirect};

use super::{AdminPage, CsrfForm, PageError, PageResult, charts};
use crate::engine::active_loop::current_policy;
use crate::http::AppState;
use crate::store::projects::get_project;
use crate::store::queue::pending_scores;
use crate::store::training::{
    ModelVersion, RunStatus, TrainingRun, latest_loss_curve, list_project_versions,
    list_training_runs,
};

/// One training run as the dashboard lists it.
pub struct RunRow {
    pub id: String,
    pub status: &'static str,
    pub live: bool,
    pub progress: String,
    pub loss: String,
    pub margin: String,
    pub accuracy: String,
    pub error: String,
    /// Why the run's version does not serve, when it did not beat the one serving.
    pub not_installed: String,
    pub when: String,
}

pub struct TrainingPanel {
    /// Whether this server runs a model at all.
    pub attached: bool,
    /// The version serving the project (short id) and the labels it was trained on.
    pub version: String,
    pub version_labels: i64,
    pub version_decisive: i64,
    pub runs: Vec<RunRow>,
    /// The latest run's loss curve (SVG), when it has steps.
    pub loss_chart: String,
    pub win_chart: String,
    pub versions_evaluated: usize,
    pub score_chart: String,
    pub scored_pending: usize,
}

fn metric(value: Option<f64>) -> String {
    value.map_or_else(|| "–".into(), |v| format!("{v:.3}"))
}

fn run_row(run: &TrainingRun, versions: &[ModelVersion]) -> RunRow {
    let last = run.metrics.trained.last_step.as_ref();
    let not_installed = versions
        .iter()
        .find(|v| Some(&v.id) == run.model_version.as_ref())
        .and_then(|v| v.not_installed_reason.clone())
        .unwrap_or_default();
    RunRow {
        id: run.id.clone(),
        status: run.status.as_str(),
        live: !run.status.is_finished(),
        progress: if run.total_steps > 0 {
            format!("{} / {}", run.step, run.total_steps)
        } else {
            "–".into()
        },
        loss: metric(last.map(|m| m.loss)),
        margin: metric(last.map(|m| m.rewards.margins)),
        accuracy: metric(last.map(|m| m.rewards.accuracies)),
        error: run.error.clone().unwrap_or_default(),
        not_installed,
        when: run.created_at.replace('T', " ").chars().take(16).collect(),
    }
}

pub async fn training_panel(
    state: &AppState,
    project_id: &str,
) -> Result<TrainingPanel, PageError> {
    let engine = state.active.as_ref().and_then(|l| l.engine());
    let policy = current_policy(&state.store, engine, project_id).await?;
    let versions = list_project_versions(&state.store, project_id).await?;
    let runs = list_training_runs(&state.store, project_id).await?;
    let win_points: Vec<charts::WinPoint> = versions
        .iter()
        .filter_map(|v| {
            let w = v.metrics.win?;
            let band = w.win_rate_low.zip(w.win_rate_high);
            Some((v.labels_seen as f64, w.win_rate, band))
        })
        .collect();
    let scores = pending_scores(&state.store, project_id).await?;
    // Uncertainty stores negated certainty; the histogram shows magnitudes.
    let magnitudes: Vec<f64> = scores.iter().map(|s| s.abs()).collect();
    let current = versions
        .iter()
        .rev()
        .find(|v| Some(&v.id) == policy.as_ref().map(|p| &p.version_id));
    Ok(TrainingPanel {
        attached: engine.is_some(),
        version: policy.map_or_else(|| "–".into(), |p| p.version_id.chars().take(8).collect()),
        version_labels: current.map_or(0, |v| v.labels_seen),
        version_decisive: current.map_or(0, |v| v.decisive_seen),
        runs: runs
            .iter()
            .take(10)
            .map(|r| run_row(r, &versions))
            .collect(),
        loss_chart: loss_chart(state, project_id).await?,
        win_chart: charts::win_rate_chart(&win_points, "win rate against the reference"),
        versions_evaluated: win_points.len(),
        score_chart: charts::histogram(&magnitudes, "acquisition scores of pending pairs", "score"),
        scored_pending: magnitudes.len(),
    })
}

/// The loss per step of the newest run that has taken a step.
async fn loss_chart(state: &AppState, project_id: &str) -> Result<String, PageError> {
    let points: Vec<(f64, f64)> = latest_loss_curve(&state.store, project_id)
        .await?
        .iter()
        .filter(|p| p.loss.is_finite())
        .map(|p| (p.step as f64, p.loss))
        .collect();
    Ok(charts::line_chart(&points, None, "training loss", "steps"))
}

/// The loss chart alone, for the dashboard to redraw while a run is in progress.
pub async fn loss_chart_fragment(
    State(state): State<AppState>,
    AdminPage(_session): AdminPage,
    Path(id): Path<String>,
) -> PageResult {
    let project = get_project(&state.store, &id).await?;
    Ok(Html(loss_chart(&state, &project.id).await?).into_response())
}

/// "Train now": queues a DPO update of the project.
pub async fn train_now(
    State(state): State<AppState>,
    AdminPage(session): AdminPage,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> PageResult {
    session.check_csrf(f.token())?;
    let project = get_project(&state.store, &id).await?;
    let active = state
        .active
        .as_ref()
        .filter(|l| l.has_model())
        .ok_or_else(|| {
            PageError::Bad("no model is loaded: start the server with --model PATH".into())
        })?;
    active.request_training(&project.id).await?;
    Ok(Redirect::to(&format!("/admin/projects/{}#model", project.id)).into_response())
}

/// Whether any listed run is still going (the page then polls for progress).
pub fn any_live(runs: &[RunRow]) -> bool {
    runs.iter().any(|r| r.live)
}

impl RunRow {
    pub fn is_failed(&self) -> bool {
        self.status == RunStatus::Failed.as_str()
    }
}
