//! Counts: one project's labelling progress (`project_stats`), and whole-database gauges for `/metrics`.

use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;

use super::projects::Project;
use super::{Result, Store};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProjectStats {
    pub labels: i64,
    pub label_budget: Option<i64>,
    /// Labels left to spend; absent when the budget is unlimited.
    pub remaining: Option<i64>,
    pub pending_pairs: i64,
    pub leased_pairs: i64,
    pub labelled_pairs: i64,
    pub prompts: i64,
    /// People and judges who have given at least one current judgment.
    pub annotators: i64,
    pub skips: i64,
    pub ties: i64,
    pub both_bad: i64,
}

/// A project's labelling progress: labels against the budget, pairs by state, and how the current
/// judgments split. What `/stats`, the dashboard and the workbench show.
pub async fn project_stats(store: &Store, project: &Project) -> Result<ProjectStats> {
    let counts = super::items::count_pairs(store, &project.id).await?;
    let row = sqlx::query(
        "SELECT \
           COALESCE(SUM(CASE WHEN choice <> 'skip' THEN 1 ELSE 0 END), 0) AS labels, \
           COALESCE(SUM(CASE WHEN choice = 'skip' THEN 1 ELSE 0 END), 0) AS skips, \
           COALESCE(SUM(CASE WHEN choice = 'tie' THEN 1 ELSE 0 END), 0) AS ties, \
           COALESCE(SUM(CASE WHEN choice = 'both_bad' THEN 1 ELSE 0 END), 0) AS both_bad, \
           COUNT(DISTINCT user_id) AS annotators \
         FROM judgments WHERE project_id = $1 AND superseded_at IS NULL",
    )
    .bind(&project.id)
    .fetch_one(store.pool())
    .await?;
    let labels = super::int(&row, "labels")?;
    Ok(ProjectStats {
        labels,
        label_budget: project.label_budget,
        remaining: project.label_budget.map(|b| (b - labels).max(0)),
        pending_pairs: counts.pending,
        leased_pairs: counts.leased,
        labelled_pairs: counts.labelled,
        prompts: counts.prompts,
        annotators: super::int(&row, "annotators")?,
        skips: super::int(&row, "skips")?,
        ties: super::int(&row, "ties")?,
        both_bad: super::int(&row, "both_bad")?,
    })
}

#[derive(Debug)]
pub struct DatabaseGauges {
    pub projects: i64,
    pub users: i64,
    pub judgments_by_choice: Vec<(String, i64)>,
    pub pairs_by_status: Vec<(String, i64)>,
}

async fn grouped(store: &Store, sql: &'static str) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query(sql).fetch_all(store.pool()).await?;
    rows.iter()
        .map(|r| Ok((r.try_get::<String, _>("k")?, super::int(r, "n")?)))
        .collect()
}

pub async fn database_gauges(store: &Store) -> Result<DatabaseGauges> {
    let counts = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM projects) AS projects, (SELECT COUNT(*) FROM users) AS users",
    )
    .fetch_one(store.pool())
    .await?;
    Ok(DatabaseGauges {
        projects: super::int(&counts, "projects")?,
        users: super::int(&counts, "users")?,
        judgments_by_choice: grouped(
            store,
            "SELECT choice AS k, COUNT(*) AS n FROM judgments GROUP BY choice ORDER BY choice",
        )
        .await?,
        pairs_by_status: grouped(
            store,
            "SELECT status AS k, COUNT(*) AS n FROM pairs GROUP BY status ORDER BY status",
        )
        .await?,
    })
}
