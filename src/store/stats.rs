//! Counts: one project's labelling progress (`project_stats`), and whole-database gauges for `/metrics`.

use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;

use super::projects::Project;
use super::{Result, Store};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProjectStats {
    pub labels: i64,
    /// Labels that teach DPO a preference (left or right): what a round of `train_every` counts.
    pub decisive_labels: i64,
    pub label_budget: Option<i64>,
    /// Labels left to spend; absent when the budget is unlimited.
    pub remaining: Option<i64>,
    pub pending_pairs: i64,
    /// Pending pairs nobody holds: what `/next` can hand out now.
    pub ready_pairs: i64,
    pub leased_pairs: i64,
    pub labelled_pairs: i64,
    pub prompts: i64,
    /// Prompts in the train split: what the model draws new pairs from.
    pub train_prompts: i64,
    /// People and judges who have given at least one current judgment.
    pub annotators: i64,
    pub skips: i64,
    pub ties: i64,
    pub both_bad: i64,
    /// Pairs the model made per minute, over the last ten minutes.
    pub pairs_per_minute: f64,
    /// Answers per minute (skips included), over the last ten minutes.
    pub answers_per_minute: f64,
    /// Gold pairs (known answer), mixed into what is served.
    pub gold_pairs: i64,
    /// Pairs held from serving while a flag on them is open.
    pub held_pairs: i64,
    /// Pairs excluded on review.
    pub excluded_pairs: i64,
    /// Where several annotators answered one pair.
    #[serde(flatten)]
    pub agreement: super::quality::Agreement,
}

/// The window `pairs_per_minute` is measured over.
const PRODUCTION_WINDOW_MS: i64 = 10 * 60 * 1000;

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
    let since = store.clock().now_ms() - PRODUCTION_WINDOW_MS;
    let made: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pairs WHERE project_id = $1 AND source = 'generated' AND created_at >= $2",
    )
    .bind(&project.id)
    .bind(since)
    .fetch_one(store.pool())
    .await?;
    let answered = answering_since(store, &project.id, since).await?.answers;
    let minutes = (PRODUCTION_WINDOW_MS / 60_000) as f64;
    Ok(ProjectStats {
        labels,
        decisive_labels: count_decisive_labels(store, &project.id).await?,
        label_budget: project.label_budget,
        remaining: project.label_budget.map(|b| (b - labels).max(0)),
        pending_pairs: counts.pending,
        ready_pairs: super::queue::count_free_pending(store, &project.id).await?,
        leased_pairs: counts.leased,
        labelled_pairs: counts.labelled,
        prompts: counts.prompts,
        train_prompts: counts.train_prompts,
        annotators: super::int(&row, "annotators")?,
        skips: super::int(&row, "skips")?,
        ties: super::int(&row, "ties")?,
        both_bad: super::int(&row, "both_bad")?,
        pairs_per_minute: made as f64 / minutes,
        answers_per_minute: answered as f64 / minutes,
        gold_pairs: counts.gold,
        held_pairs: counts.held,
        excluded_pairs: counts.excluded,
        agreement: super::quality::project_agreement(store, &project.id).await?,
    })
}

/// Answering in the project since `since_ms`, in one read of the judgments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Answering {
    /// Answers of any kind, skips included.
    pub answers: i64,
    /// Distinct people and judges who gave them.
    pub annotators: i64,
    /// Of those, people (users of kind human): who would wait for a pair.
    pub people: i64,
    /// Mean seconds from lease to answer: the pace annotators would keep if they never waited.
    pub mean_seconds: f64,
}

pub async fn answering_since(store: &Store, project_id: &str, since_ms: i64) -> Result<Answering> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n, COUNT(DISTINCT j.user_id) AS who, \
         COUNT(DISTINCT CASE WHEN u.kind = 'human' THEN j.user_id END) AS people, \
         COALESCE(AVG(j.seconds), 0.0) AS secs \
         FROM judgments j JOIN users u ON u.id = j.user_id \
         WHERE j.project_id = $1 AND j.created_at >= $2",
    )
    .bind(project_id)
    .bind(since_ms)
    .fetch_one(store.pool())
    .await?;
    Ok(Answering {
        answers: super::int(&row, "n")?,
        annotators: super::int(&row, "who")?,
        people: super::int(&row, "people")?,
        mean_seconds: row.try_get::<f64, _>("secs")?,
    })
}

/// Decisive labels (left or right, not undone) of a project: what rounds of `train_every` count.
/// Answers to gold pairs measure annotators and train nothing, so they do not count.
pub async fn count_decisive_labels(store: &Store, project_id: &str) -> Result<i64> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM judgments j JOIN pairs p ON p.id = j.pair_id \
         WHERE j.project_id = $1 AND j.superseded_at IS NULL AND j.choice IN ('left', 'right') \
           AND p.gold IS NULL AND p.excluded = 0",
    )
    .bind(project_id)
    .fetch_one(store.pool())
    .await?;
    Ok(n)
}

#[derive(Debug)]
pub struct DatabaseGauges {
    pub projects: i64,
    pub users: i64,
    pub judgments_by_choice: Vec<(String, i64)>,
    pub pairs_by_status: Vec<(String, i64)>,
    pub supply: Vec<ProjectSupply>,
}

/// How well a project is supplied with pairs: ready now, and made and answered per minute over the
/// last ten minutes.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectSupply {
    pub project_id: String,
    pub ready_pairs: i64,
    pub made_per_minute: f64,
    pub answered_per_minute: f64,
}

/// Every project's supply, in one query.
pub async fn project_supply(store: &Store) -> Result<Vec<ProjectSupply>> {
    let now = store.clock().now_ms();
    let rows = sqlx::query(
        concat!(
            "SELECT p.id AS id, \
           (SELECT COUNT(*) FROM pairs WHERE project_id = p.id AND ",
            servable_sql!(),
            " AND (lease_id IS NULL OR leased_until <= $1)) AS ready, \
           (SELECT COUNT(*) FROM pairs WHERE project_id = p.id AND source = 'generated' \
              AND created_at >= $2) AS made, \
           (SELECT COUNT(*) FROM judgments WHERE project_id = p.id AND created_at >= $2) AS answered \
         FROM projects p ORDER BY p.created_at, p.id"
        ),
    )
    .bind(now)
    .bind(now - PRODUCTION_WINDOW_MS)
    .fetch_all(store.pool())
    .await?;
    let minutes = (PRODUCTION_WINDOW_MS / 60_000) as f64;
    rows.iter()
        .map(|r| {
            Ok(ProjectSupply {
                project_id: r.try_get("id")?,
                ready_pairs: super::int(r, "ready")?,
                made_per_minute: super::int(r, "made")? as f64 / minutes,
                answered_per_minute: super::int(r, "answered")? as f64 / minutes,
            })
        })
        .collect()
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
        supply: project_supply(store).await?,
    })
}
