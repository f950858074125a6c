//! Whole-database counts for `/metrics`.

use sqlx::Row;

use super::{Result, Store};

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
