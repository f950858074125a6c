//! Model versions and training runs: which policy a project is served by, and the DPO runs that made it.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::{Result, Store, StoreError, new_id, now_ms, rfc3339};
use crate::domain::{
    LossPoint, RunMetrics, StepMetrics, TrainedMetrics, VersionMetrics, WinRate, named_enum,
};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelVersion {
    pub id: String,
    /// `None` for the reference model the server was started with.
    pub project_id: Option<String>,
    pub parent_id: Option<String>,
    /// Where the weights are: the model path given at start, or a checkpoint directory.
    pub path: String,
    /// Labels the version was trained on.
    pub labels_seen: i64,
    /// Of those, the decisive ones (left or right): what a round of `train_every` counts.
    pub decisive_seen: i64,
    /// Whether the version serves (or served) its project. A run that did not beat the version then
    /// serving is kept, with the reason, but never installed.
    pub installed: bool,
    pub not_installed_reason: Option<String>,
    pub metrics: VersionMetrics,
    pub created_at: String,
}

/// A version about to be recorded.
#[derive(Debug, Clone)]
pub struct NewVersion<'a> {
    /// The engine names a version before its weights are saved.
    pub id: &'a str,
    pub project_id: Option<&'a str>,
    pub parent_id: Option<&'a str>,
    pub path: &'a str,
    pub labels_seen: i64,
    pub decisive_seen: i64,
    /// The metrics of the run that trained it.
    pub trained: TrainedMetrics,
    /// False for a trained version until its evaluation decides whether it serves.
    pub installed: bool,
}

fn version_from_row(row: &AnyRow) -> Result<ModelVersion> {
    let metrics: String = row.try_get("metrics")?;
    Ok(ModelVersion {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        parent_id: row.try_get("parent_id")?,
        path: row.try_get("path")?,
        labels_seen: row.try_get("labels_seen")?,
        decisive_seen: row.try_get("decisive_seen")?,
        installed: super::flag(row, "installed")?,
        not_installed_reason: row.try_get("not_installed_reason")?,
        metrics: serde_json::from_str(&metrics).unwrap_or_default(),
        created_at: rfc3339(row.try_get("created_at")?),
    })
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("metrics serialise")
}

/// The reference version for a model path, created on first use so that every generated pair can name
/// the version that made it.
pub async fn ensure_reference_version(store: &Store, path: &str) -> Result<ModelVersion> {
    let row = sqlx::query(
        "SELECT * FROM model_versions WHERE project_id IS NULL AND parent_id IS NULL AND path = $1 \
         ORDER BY created_at LIMIT 1",
    )
    .bind(path)
    .fetch_optional(store.pool())
    .await?;
    if let Some(row) = row {
        return version_from_row(&row);
    }
    let id = new_id();
    create_model_version(
        store,
        &NewVersion {
            id: &id,
            project_id: None,
            parent_id: None,
            path,
            labels_seen: 0,
            decisive_seen: 0,
            trained: TrainedMetrics::default(),
            installed: true,
        },
    )
    .await
}

/// Records a version.
pub async fn create_model_version(store: &Store, v: &NewVersion<'_>) -> Result<ModelVersion> {
    let metrics = VersionMetrics {
        trained: v.trained,
        win: None,
    };
    sqlx::query(
        "INSERT INTO model_versions (id, project_id, parent_id, path, labels_seen, decisive_seen, \
         installed, metrics, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(v.id)
    .bind(v.project_id)
    .bind(v.parent_id)
    .bind(v.path)
    .bind(v.labels_seen)
    .bind(v.decisive_seen)
    .bind(v.installed as i64)
    .bind(to_json(&metrics))
    .bind(now_ms())
    .execute(store.pool())
    .await?;
    get_model_version(store, v.id).await
}

/// Makes a trained version serve its project.
pub async fn install_version(store: &Store, id: &str) -> Result<()> {
    sqlx::query(
        "UPDATE model_versions SET installed = 1, not_installed_reason = NULL WHERE id = $1",
    )
    .bind(id)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// Keeps a trained version out of service, saying why.
pub async fn reject_version(store: &Store, id: &str, reason: &str) -> Result<()> {
    sqlx::query("UPDATE model_versions SET installed = 0, not_installed_reason = $1 WHERE id = $2")
        .bind(reason)
        .bind(id)
        .execute(store.pool())
        .await?;
    Ok(())
}

pub async fn get_model_version(store: &Store, id: &str) -> Result<ModelVersion> {
    let row = sqlx::query("SELECT * FROM model_versions WHERE id = $1")
        .bind(id)
        .fetch_optional(store.pool())
        .await?
        .ok_or(StoreError::NotFound("model version"))?;
    version_from_row(&row)
}

/// The version serving the project: its newest installed one, if any (otherwise the reference serves).
pub async fn latest_project_version(
    store: &Store,
    project_id: &str,
) -> Result<Option<ModelVersion>> {
    let row = sqlx::query(
        "SELECT * FROM model_versions WHERE project_id = $1 AND installed = 1 \
         ORDER BY created_at DESC, id DESC LIMIT 1",
    )
    .bind(project_id)
    .fetch_optional(store.pool())
    .await?;
    row.as_ref().map(version_from_row).transpose()
}

/// The newest version trained for the project, installed or not: what the last run saw.
pub async fn latest_trained_version(
    store: &Store,
    project_id: &str,
) -> Result<Option<ModelVersion>> {
    let row = sqlx::query(
        "SELECT * FROM model_versions WHERE project_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1",
    )
    .bind(project_id)
    .fetch_optional(store.pool())
    .await?;
    row.as_ref().map(version_from_row).transpose()
}

pub async fn list_project_versions(store: &Store, project_id: &str) -> Result<Vec<ModelVersion>> {
    let rows =
        sqlx::query("SELECT * FROM model_versions WHERE project_id = $1 ORDER BY created_at")
            .bind(project_id)
            .fetch_all(store.pool())
            .await?;
    rows.iter().map(version_from_row).collect()
}

named_enum! {
    /// Where a training run is: queued, running, or ended one of three ways.
    pub enum RunStatus ("run status") {
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

impl RunStatus {
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TrainingRun {
    pub id: String,
    pub project_id: String,
    pub status: RunStatus,
    pub step: i64,
    pub total_steps: i64,
    /// The latest step's metrics (loss, rewards/chosen, rewards/rejected, rewards/margins,
    /// rewards/accuracies), every step's loss, margin and accuracy under `history`, and at the end the
    /// held-out metrics under `eval`.
    pub metrics: RunMetrics,
    pub error: Option<String>,
    pub base_version_id: Option<String>,
    /// The version the run produced, once it succeeded.
    pub model_version: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

fn run_from_row(row: &AnyRow) -> Result<TrainingRun> {
    let status: String = row.try_get("status")?;
    let metrics: String = row.try_get("metrics")?;
    let started: Option<i64> = row.try_get("started_at")?;
    let finished: Option<i64> = row.try_get("finished_at")?;
    Ok(TrainingRun {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        // The column's CHECK allows only these names; anything else would be a run that cannot go on.
        status: status.parse().unwrap_or(RunStatus::Failed),
        step: row.try_get("step")?,
        total_steps: row.try_get("total_steps")?,
        metrics: RunMetrics {
            trained: serde_json::from_str(&metrics).unwrap_or_default(),
            history: Vec::new(),
        },
        error: row.try_get("error")?,
        base_version_id: row.try_get("base_version_id")?,
        model_version: row.try_get("model_version_id")?,
        created_at: rfc3339(row.try_get("created_at")?),
        started_at: started.map(rfc3339),
        finished_at: finished.map(rfc3339),
    })
}

pub async fn create_training_run(
    store: &Store,
    project_id: &str,
    base_version_id: Option<&str>,
) -> Result<TrainingRun> {
    let id = new_id();
    sqlx::query(
        "INSERT INTO training_runs (id, project_id, status, base_version_id, created_at) \
         VALUES ($1, $2, 'queued', $3, $4)",
    )
    .bind(&id)
    .bind(project_id)
    .bind(base_version_id)
    .bind(now_ms())
    .execute(store.pool())
    .await?;
    get_training_run(store, &id).await
}

/// A run with its loss curve.
pub async fn get_training_run(store: &Store, id: &str) -> Result<TrainingRun> {
    let row = sqlx::query("SELECT * FROM training_runs WHERE id = $1")
        .bind(id)
        .fetch_optional(store.pool())
        .await?
        .ok_or(StoreError::NotFound("training run"))?;
    let mut run = run_from_row(&row)?;
    let steps = sqlx::query(
        "SELECT run_id, step, loss, margins, accuracies FROM training_steps WHERE run_id = $1 \
         ORDER BY step",
    )
    .bind(id)
    .fetch_all(store.pool())
    .await?;
    run.metrics.history = steps.iter().map(loss_point).collect::<Result<_>>()?;
    Ok(run)
}

/// A project's runs, newest first, each with its loss curve.
pub async fn list_training_runs(store: &Store, project_id: &str) -> Result<Vec<TrainingRun>> {
    let rows = sqlx::query(
        "SELECT * FROM training_runs WHERE project_id = $1 ORDER BY created_at DESC, id",
    )
    .bind(project_id)
    .fetch_all(store.pool())
    .await?;
    let mut runs: Vec<TrainingRun> = rows.iter().map(run_from_row).collect::<Result<_>>()?;
    let steps = sqlx::query(
        "SELECT s.run_id, s.step, s.loss, s.margins, s.accuracies FROM training_steps s \
         JOIN training_runs r ON r.id = s.run_id WHERE r.project_id = $1 ORDER BY s.run_id, s.step",
    )
    .bind(project_id)
    .fetch_all(store.pool())
    .await?;
    let mut by_run: std::collections::HashMap<String, Vec<LossPoint>> = Default::default();
    for row in &steps {
        let run_id: String = row.try_get("run_id")?;
        by_run.entry(run_id).or_default().push(loss_point(row)?);
    }
    for run in &mut runs {
        run.metrics.history = by_run.remove(&run.id).unwrap_or_default();
    }
    Ok(runs)
}

fn loss_point(row: &AnyRow) -> Result<LossPoint> {
    let value = |name: &str| -> Result<f64> {
        Ok(row.try_get::<Option<f64>, _>(name)?.unwrap_or(f64::NAN))
    };
    Ok(LossPoint {
        step: row.try_get::<i64, _>("step")? as usize,
        loss: value("loss")?,
        margins: value("margins")?,
        accuracies: value("accuracies")?,
    })
}

/// The loss curve of the project's newest run that has recorded a step (runs ordered as
/// `list_training_runs` orders them): one run's steps, for the dashboard's chart and its redraws.
pub async fn latest_loss_curve(store: &Store, project_id: &str) -> Result<Vec<LossPoint>> {
    let rows = sqlx::query(
        "SELECT step, loss, margins, accuracies FROM training_steps WHERE run_id = ( \
           SELECT r.id FROM training_runs r WHERE r.project_id = $1 \
           AND EXISTS (SELECT 1 FROM training_steps t WHERE t.run_id = r.id) \
           ORDER BY r.created_at DESC, r.id LIMIT 1) \
         ORDER BY step",
    )
    .bind(project_id)
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(loss_point).collect()
}

pub async fn latest_training_run(store: &Store, project_id: &str) -> Result<Option<TrainingRun>> {
    Ok(list_training_runs(store, project_id)
        .await?
        .into_iter()
        .next())
}

/// Marks a queued run running: it has its models and is about to compute or train.
pub async fn mark_run_started(store: &Store, id: &str) -> Result<()> {
    sqlx::query(
        "UPDATE training_runs SET status = 'running', started_at = COALESCE(started_at, $1) \
         WHERE id = $2 AND status IN ('queued', 'running')",
    )
    .bind(now_ms())
    .bind(id)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// Records one optimizer step: the run's latest metrics, and a point of its loss curve.
pub async fn record_run_step(store: &Store, id: &str, step: &StepMetrics) -> Result<()> {
    let finite = |v: f64| v.is_finite().then_some(v);
    let latest = TrainedMetrics {
        last_step: Some(*step),
        eval: None,
    };
    let mut tx = store.begin_write().await?;
    let updated = sqlx::query(
        "UPDATE training_runs SET status = 'running', step = $1, total_steps = $2, metrics = $3, \
         started_at = COALESCE(started_at, $4) WHERE id = $5 AND status IN ('queued', 'running')",
    )
    .bind(step.step as i64)
    .bind(step.total_steps as i64)
    .bind(to_json(&latest))
    .bind(now_ms())
    .bind(id)
    .execute(&mut **tx)
    .await?;
    if updated.rows_affected() > 0 {
        sqlx::query(
            "INSERT INTO training_steps (run_id, step, loss, margins, accuracies) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(step.step as i64)
        .bind(finite(step.loss))
        .bind(finite(step.rewards.margins))
        .bind(finite(step.rewards.accuracies))
        .execute(&mut **tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Records what a finished run reports: its step count, last step and held-out metrics.
pub async fn record_run_result(
    store: &Store,
    id: &str,
    steps: usize,
    trained: &TrainedMetrics,
) -> Result<()> {
    sqlx::query("UPDATE training_runs SET step = $1, total_steps = $1, metrics = $2 WHERE id = $3")
        .bind(steps as i64)
        .bind(to_json(trained))
        .bind(id)
        .execute(store.pool())
        .await?;
    Ok(())
}

/// Ends a run: its final status, the error that ended it, or the version it made.
pub async fn finish_training_run(
    store: &Store,
    id: &str,
    status: RunStatus,
    error: Option<&str>,
    model_version_id: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE training_runs SET status = $1, error = $2, model_version_id = $3, finished_at = $4 \
         WHERE id = $5",
    )
    .bind(status.as_str())
    .bind(error)
    .bind(model_version_id)
    .bind(now_ms())
    .bind(id)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// Runs a stopped server left queued or running are marked failed; returns them so they can be retried.
pub async fn fail_interrupted_runs(store: &Store) -> Result<Vec<TrainingRun>> {
    let rows = sqlx::query("SELECT * FROM training_runs WHERE status IN ('queued', 'running')")
        .fetch_all(store.pool())
        .await?;
    let runs: Vec<TrainingRun> = rows.iter().map(run_from_row).collect::<Result<_>>()?;
    for run in &runs {
        finish_training_run(
            store,
            &run.id,
            RunStatus::Failed,
            Some("interrupted: the server stopped during the run"),
            None,
        )
        .await?;
    }
    Ok(runs)
}

/// Queued runs of a project, oldest first.
pub async fn queued_training_runs(store: &Store, project_id: &str) -> Result<Vec<TrainingRun>> {
    let rows = sqlx::query(
        "SELECT * FROM training_runs WHERE project_id = $1 AND status = 'queued' ORDER BY created_at, id",
    )
    .bind(project_id)
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(run_from_row).collect()
}

/// Stores a version's win rate against the reference (the evaluation comes after the version is recorded).
pub async fn set_version_win_rate(store: &Store, id: &str, win: &WinRate) -> Result<ModelVersion> {
    let mut version = get_model_version(store, id).await?;
    version.metrics.win = Some(*win);
    sqlx::query("UPDATE model_versions SET metrics = $1 WHERE id = $2")
        .bind(to_json(&version.metrics))
        .bind(id)
        .execute(store.pool())
        .await?;
    Ok(version)
}
