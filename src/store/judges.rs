//! AI judges attached to projects. Each acts through a user of its own (kind `ai`), so its judgments sit
//! beside people's, marked by who gave them.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

use super::users::{Role, UserKind, create_user};
use super::{Result, Store, StoreError, new_id, now_ms, rfc3339};
use crate::domain::JudgeKind;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Judge {
    pub id: String,
    pub project_id: String,
    /// The user the judge answers as.
    pub user_id: String,
    pub kind: JudgeKind,
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
    pub created_at: String,
}

fn judge_from_row(row: &AnyRow) -> Result<Judge> {
    let settings: String = row.try_get("settings")?;
    Ok(Judge {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        user_id: row.try_get("user_id")?,
        kind: row.try_get::<String, _>("kind")?.parse()?,
        settings: serde_json::from_str(&settings).unwrap_or_default(),
        created_at: rfc3339(row.try_get("created_at")?),
    })
}

pub async fn create_judge(
    store: &Store,
    project_id: &str,
    kind: JudgeKind,
    settings: &serde_json::Value,
) -> Result<Judge> {
    let id = new_id();
    let name = format!("judge-{kind}-{}", &id[..8]);
    let (user, _token) = create_user(store, &name, Role::Annotator, UserKind::Ai).await?;
    sqlx::query(
        "INSERT INTO judges (id, project_id, user_id, kind, settings, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(project_id)
    .bind(&user.id)
    .bind(kind.as_str())
    .bind(settings.to_string())
    .bind(now_ms())
    .execute(store.pool())
    .await?;
    let row = sqlx::query("SELECT * FROM judges WHERE id = $1")
        .bind(&id)
        .fetch_one(store.pool())
        .await?;
    judge_from_row(&row)
}

/// The judges still attached to a project.
pub async fn list_judges(store: &Store, project_id: &str) -> Result<Vec<Judge>> {
    let rows = sqlx::query(
        "SELECT * FROM judges WHERE project_id = $1 AND detached_at IS NULL ORDER BY created_at, id",
    )
    .bind(project_id)
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(judge_from_row).collect()
}

/// Detaches a judge: it answers nothing more; its judgments stay.
pub async fn detach_judge(store: &Store, project_id: &str, judge_id: &str) -> Result<()> {
    let done = sqlx::query(
        "UPDATE judges SET detached_at = $1 WHERE id = $2 AND project_id = $3 AND detached_at IS NULL",
    )
    .bind(now_ms())
    .bind(judge_id)
    .bind(project_id)
    .execute(store.pool())
    .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound("judge"));
    }
    Ok(())
}
