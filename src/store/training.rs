//! Model versions and training runs: which policy a project is served by, and the DPO runs that made it.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::{Result, Store, StoreError, new_id, now_ms, rfc3339};

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
    #[schema(value_type = Object)]
    pub metrics: serde_json::Value,
    pub created_at: String,
}

fn version_from_row(row: &AnyRow) -> Result<ModelVersion> {
    let metrics: String = row.try_get("metrics")?;
    Ok(ModelVersion {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        parent_id: row.try_get("parent_id")?,
        path: row.try_get("path")?,
        labels_seen: row.try_get("labels_seen")?,
        metrics: serde_json::from_str(&metrics).unwrap_or_default(),
        created_at: rfc3339(row.try_get("created_at")?),
    })
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
    create_model_version(store, &new_id(), None, None, path, 0, serde_json::json!({})).await
}

/// Records a version under `id` (the engine names a version before its weights are saved).
pub async fn create_model_version(
    store: &Store,
    id: &str,
    project_id: Option<&str>,
    parent_id: Option<&str>,
    path: &str,
    labels_seen: i64,
    metrics: serde_json::Value,
) -> Result<ModelVersion> {
    sqlx::query(
        "INSERT INTO model_versions (id, project_id, parent_id, path, labels_seen, metrics, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(project_id)
    .bind(parent_id)
    .bind(path)
    .bind(labels_seen)
    .bind(metrics.to_string())
    .bind(now_ms())
    .execute(store.pool())
    .await?;
    get_model_version(store, id).await
}

pub async fn get_model_version(store: &Store, id: &str) -> Result<ModelVersion> {
    let row = sqlx::query("SELECT * FROM model_versions WHERE id = $1")
        .bind(id)
        .fetch_optional(store.pool())
        .await?
        .ok_or(StoreError::NotFound("model version"))?;
    version_from_row(&row)
}

/// The newest version trained for the project, if any (otherwise the project is served by the reference).
pub async fn latest_project_version(
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> RunStatus {
        match s {
            "queued" => RunStatus::Queued,
            "running" => RunStatus::Running,
            "succeeded" => RunStatus::Succeeded,
            "cancelled" => RunStatus::Cancelled,
            _ => RunStatus::Failed,
        }
    }

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
    /// rewards/accuracies) and, at the end, held-out accuracy.
    #[schema(value_type = Object)]
    pub metrics: serde_json::Value,
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
        status: RunStatus::parse(&status),
        step: row.try_get("step")?,
        total_steps: row.try_get("total_steps")?,
        metrics: serde_json::from_str(&metrics).unwrap_or_default(),
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

pub async fn get_training_run(store: &Store, id: &str) -> Result<TrainingRun> {
    let row = sqlx::query("SELECT * FROM training_runs WHERE id = $1")
        .bind(id)
        .fetch_optional(store.pool())
        .await?
        .ok_or(StoreError::NotFound("training run"))?;
    run_from_row(&row)
}

pub async fn list_training_runs(store: &Store, project_id: &str) -> Result<Vec<TrainingRun>> {
    let rows = sqlx::query(
        "SELECT * FROM training_runs WHERE project_id = $1 ORDER BY created_at DESC, id",
    )
    .bind(project_id)
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(run_from_row).collect()
}

pub async fn latest_training_run(store: &Store, project_id: &str) -> Result<Option<TrainingRun>> {
    Ok(list_training_runs(store, project_id)
        .await?
        .into_iter()
        .next())
}

/// Marks a run running (first call) and records its progress.
pub async fn record_run_progress(
    store: &Store,
    id: &str,
    step: i64,
    total_steps: i64,
    metrics: &serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "UPDATE training_runs SET status = 'running', step = $1, total_steps = $2, metrics = $3, \
         started_at = COALESCE(started_at, $4) WHERE id = $5 AND status IN ('queued', 'running')",
    )
    .bind(step)
    .bind(total_steps)
    .bind(metrics.to_string())
    .bind(now_ms())
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

/// Merges `extra` into a version's metrics (the evaluation arrives after the version is recorded).
pub async fn add_version_metrics(
    store: &Store,
    id: &str,
    extra: &serde_json::Value,
) -> Result<ModelVersion> {
    let mut version = get_model_version(store, id).await?;
    if let (Some(m), Some(e)) = (version.metrics.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            m.insert(k.clone(), v.clone());
        }
    } else {
        version.metrics = extra.clone();
    }
    sqlx::query("UPDATE model_versions SET metrics = $1 WHERE id = $2")
        .bind(version.metrics.to_string())
        .bind(id)
        .execute(store.pool())
        .await?;
    Ok(version)
}
