//! The admin dashboard's numbers: pace, time per label, and each annotator's counts, position bias and
//! agreement. Counts come from SQL aggregates; medians and histograms from the newest `SAMPLE` labels so a
//! dashboard view costs the same for a project of a million judgments.

use std::collections::HashMap;

use sqlx::Row;

use super::{Result, Store, now_ms};

/// Newest labels read for medians and the seconds histogram.
pub const SAMPLE: i64 = 20_000;
const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Clone)]
pub struct AnnotatorSummary {
    pub name: String,
    pub kind: String,
    /// Current answers that spend the budget (all but skips).
    pub labels: i64,
    pub skips: i64,
    /// Share of "left" among left/right answers: 0.5 is unbiased. `None` before any such answer.
    pub left_rate: Option<f64>,
    pub left_right: i64,
    pub median_seconds: Option<f64>,
    /// (agreeing, compared) against other annotators on pairs both labelled.
    pub agreement: Option<(i64, i64)>,
}

#[derive(Debug, Clone)]
pub struct ProjectOverview {
    pub labels_last_hour: i64,
    /// (start of the hour in Unix ms, labels in it), oldest first, hours without labels left out.
    pub hourly: Vec<(i64, i64)>,
    /// Seconds from lease to answer of the sampled labels.
    pub seconds: Vec<f64>,
    pub median_seconds: Option<f64>,
    pub annotators: Vec<AnnotatorSummary>,
    /// Pairs with current answers from two or more annotators (skips aside).
    pub pairs_labelled_twice: i64,
    /// (agreeing, compared) over every two annotators' answers to the same pair.
    pub agreement: Option<(i64, i64)>,
}

pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The answer in terms of the completions, whatever side they were shown on: "a", "b", "tie", "both_bad".
fn outcome(choice: &str, left_is_a: bool) -> &str {
    match (choice, left_is_a) {
        ("left", true) | ("right", false) => "a",
        ("left", false) | ("right", true) => "b",
        (other, _) => other,
    }
}

pub async fn project_overview(store: &Store, project_id: &str) -> Result<ProjectOverview> {
    let pool = store.pool();
    let hourly_rows = sqlx::query(
        "SELECT created_at / 3600000 AS h, COUNT(*) AS n FROM judgments \
         WHERE project_id = $1 AND superseded_at IS NULL AND choice <> 'skip' GROUP BY h ORDER BY h",
    )
    .bind(project_id)
    .fetch_all(pool)
    .await?;
    let mut hourly = Vec::with_capacity(hourly_rows.len());
    for r in &hourly_rows {
        hourly.push((super::int(r, "h")? * HOUR_MS, super::int(r, "n")?));
    }
    let since = now_ms() - HOUR_MS;
    let last_hour = super::int(
        &sqlx::query(
            "SELECT COUNT(*) AS n FROM judgments WHERE project_id = $1 AND superseded_at IS NULL \
             AND choice <> 'skip' AND created_at > $2",
        )
        .bind(project_id)
        .bind(since)
        .fetch_one(pool)
        .await?,
        "n",
    )?;

    let per_user = sqlx::query(
        "SELECT u.id, u.name, u.kind, \
           COALESCE(SUM(CASE WHEN j.choice <> 'skip' THEN 1 ELSE 0 END), 0) AS labels, \
           COALESCE(SUM(CASE WHEN j.choice = 'skip' THEN 1 ELSE 0 END), 0) AS skips, \
           COALESCE(SUM(CASE WHEN j.choice = 'left' THEN 1 ELSE 0 END), 0) AS lefts, \
           COALESCE(SUM(CASE WHEN j.choice IN ('left', 'right') THEN 1 ELSE 0 END), 0) AS sided \
         FROM judgments j JOIN users u ON u.id = j.user_id \
         WHERE j.project_id = $1 AND j.superseded_at IS NULL \
         GROUP BY u.id, u.name, u.kind ORDER BY u.name",
    )
    .bind(project_id)
    .fetch_all(pool)
    .await?;

    let sample = sqlx::query(
        "SELECT user_id, seconds FROM judgments WHERE project_id = $1 AND superseded_at IS NULL \
         AND choice <> 'skip' ORDER BY created_at DESC LIMIT $2",
    )
    .bind(project_id)
    .bind(SAMPLE)
    .fetch_all(pool)
    .await?;
    let mut seconds = Vec::with_capacity(sample.len());
    let mut seconds_by_user: HashMap<String, Vec<f64>> = HashMap::new();
    for r in &sample {
        let s: f64 = r.try_get("seconds")?;
        seconds.push(s);
        seconds_by_user
            .entry(r.try_get("user_id")?)
            .or_default()
            .push(s);
    }

    // Agreement: every two annotators' current decisive-or-not answers to the same pair.
    let doubles = sqlx::query(
        "SELECT pair_id, user_id, choice, left_is_a FROM judgments \
         WHERE project_id = $1 AND superseded_at IS NULL AND choice <> 'skip' AND pair_id IN ( \
           SELECT pair_id FROM judgments WHERE project_id = $1 AND superseded_at IS NULL \
           AND choice <> 'skip' GROUP BY pair_id HAVING COUNT(DISTINCT user_id) > 1) \
         ORDER BY pair_id",
    )
    .bind(project_id)
    .fetch_all(pool)
    .await?;
    let mut by_pair: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for r in &doubles {
        let choice: String = r.try_get("choice")?;
        let o = outcome(&choice, super::flag(r, "left_is_a")?).to_string();
        by_pair
            .entry(r.try_get("pair_id")?)
            .or_default()
            .push((r.try_get("user_id")?, o));
    }
    let mut user_agree: HashMap<String, (i64, i64)> = HashMap::new();
    let (mut agree, mut compared) = (0, 0);
    for answers in by_pair.values() {
        for (i, (u1, o1)) in answers.iter().enumerate() {
            for (u2, o2) in &answers[i + 1..] {
                if u1 == u2 {
                    continue;
                }
                let same = (o1 == o2) as i64;
                agree += same;
                compared += 1;
                for u in [u1, u2] {
                    let e = user_agree.entry(u.clone()).or_default();
                    e.0 += same;
                    e.1 += 1;
                }
            }
        }
    }

    let mut annotators = Vec::with_capacity(per_user.len());
    for r in &per_user {
        let id: String = r.try_get("id")?;
        let sided = super::int(r, "sided")?;
        annotators.push(AnnotatorSummary {
            name: r.try_get("name")?,
            kind: r.try_get("kind")?,
            labels: super::int(r, "labels")?,
            skips: super::int(r, "skips")?,
            left_rate: (sided > 0)
                .then(|| super::int(r, "lefts").unwrap_or(0) as f64 / sided as f64),
            left_right: sided,
            median_seconds: seconds_by_user.get(&id).and_then(|s| median(s)),
            agreement: user_agree.get(&id).copied(),
        });
    }
    Ok(ProjectOverview {
        labels_last_hour: last_hour,
        hourly,
        median_seconds: median(&seconds),
        seconds,
        annotators,
        pairs_labelled_twice: by_pair.len() as i64,
        agreement: (compared > 0).then_some((agree, compared)),
    })
}
