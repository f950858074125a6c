//! The admin dashboard's numbers: pace and time per label (each annotator's record and agreement are in
//! `quality`). Counts come from SQL aggregates; medians and histograms from the newest `SAMPLE` labels so
//! a dashboard view costs the same for a project of a million judgments.

use sqlx::Row;

use super::{Result, Store, now_ms};

/// Newest labels read for medians and the seconds histogram.
pub const SAMPLE: i64 = 20_000;
const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Clone)]
pub struct ProjectOverview {
    pub labels_last_hour: i64,
    /// (start of the hour in Unix ms, labels in it), oldest first, hours without labels left out.
    pub hourly: Vec<(i64, i64)>,
    /// Seconds from lease to answer of the sampled labels.
    pub seconds: Vec<f64>,
    pub median_seconds: Option<f64>,
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

    let sample = sqlx::query(
        "SELECT seconds FROM judgments WHERE project_id = $1 AND superseded_at IS NULL \
         AND choice <> 'skip' ORDER BY created_at DESC LIMIT $2",
    )
    .bind(project_id)
    .bind(SAMPLE)
    .fetch_all(pool)
    .await?;
    let mut seconds = Vec::with_capacity(sample.len());
    for r in &sample {
        seconds.push(r.try_get("seconds")?);
    }

    Ok(ProjectOverview {
        labels_last_hour: last_hour,
        hourly,
        median_seconds: median(&seconds),
        seconds,
    })
}
