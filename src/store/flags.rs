//! Flags: an annotator's note that a pair is broken. A flagged pair is held from serving until an admin
//! resolves its flags: `keep` puts it back as it was, `exclude` takes it out for good (never served,
//! never trained, left out of the TRL export).

use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;

use super::users::User;
use super::{Dialect, Result, Store, StoreError, new_id, now_ms};

pub const MAX_NOTE_BYTES: usize = 4_000;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Flag {
    pub id: String,
    pub project_id: String,
    pub pair_id: String,
    pub annotator: String,
    pub note: String,
    pub prompt: String,
    pub created_at: i64,
    /// `keep` or `exclude` once resolved; absent while open.
    pub resolution: Option<FlagAction>,
    pub resolved_at: Option<i64>,
}

/// How an admin resolves a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlagAction {
    /// The pair is fine: served and trained as before (once no other flag on it is open).
    Keep,
    /// The pair is broken: never served again, never trained, not in the TRL export.
    Exclude,
}

impl FlagAction {
    pub fn as_str(self) -> &'static str {
        match self {
            FlagAction::Keep => "keep",
            FlagAction::Exclude => "exclude",
        }
    }
}

/// The body of `POST /api/v1/leases/{id}/flag`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagInput {
    /// What is wrong with the pair (1 to 4,000 bytes).
    pub note: String,
}

/// The body of `POST /api/v1/flags/{id}/resolve`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveInput {
    pub action: FlagAction,
}

/// Flags the pair behind `lease_id`, which must be the caller's lease.
pub async fn flag_leased_pair(
    store: &Store,
    lease_id: &str,
    user: &User,
    note: &str,
) -> Result<()> {
    let note = note.trim();
    if note.is_empty() || note.len() > MAX_NOTE_BYTES {
        return Err(StoreError::Invalid(format!(
            "a flag needs a note of 1 to {MAX_NOTE_BYTES} bytes"
        )));
    }
    let row = sqlx::query("SELECT pair_id, project_id, user_id FROM leases WHERE id = $1")
        .bind(lease_id)
        .fetch_optional(store.pool())
        .await?
        .ok_or(StoreError::NotFound("lease"))?;
    let owner: String = row.try_get("user_id")?;
    if owner != user.id {
        return Err(StoreError::Forbidden(
            "this lease belongs to another annotator".into(),
        ));
    }
    let pair_id: String = row.try_get("pair_id")?;
    let project_id: String = row.try_get("project_id")?;
    let mut tx = store.begin_write().await?;
    sqlx::query(
        "INSERT INTO flags (id, project_id, pair_id, user_id, note, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(new_id())
    .bind(project_id)
    .bind(&pair_id)
    .bind(&user.id)
    .bind(note)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    // Held from serving until an admin looks; the flagger's own lease runs on (they skip it next).
    sqlx::query("UPDATE pairs SET held = 1 WHERE id = $1")
        .bind(&pair_id)
        .execute(&mut **tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Resolves a flag (an admin's call). Resolving an already resolved flag the same way again changes
/// nothing; the other way is a conflict (`Exclude` cannot be taken back by a `Keep`). The pair is
/// served again once none of its flags is open, unless excluded.
pub async fn resolve_flag(
    store: &Store,
    flag_id: &str,
    admin: &User,
    action: FlagAction,
) -> Result<Flag> {
    let mut tx = store.begin_write().await?;
    // Locked on PostgreSQL, so two admins resolving one flag at once take turns (SQLite's write
    // transaction already serialises them): the second sees the first's resolution.
    let sql = match store.dialect() {
        Dialect::Sqlite => "SELECT pair_id, resolution FROM flags WHERE id = $1",
        Dialect::Postgres => "SELECT pair_id, resolution FROM flags WHERE id = $1 FOR UPDATE",
    };
    let row = sqlx::query(sql)
        .bind(flag_id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(StoreError::NotFound("flag"))?;
    let pair_id: String = row.try_get("pair_id")?;
    let resolution: Option<String> = row.try_get("resolution")?;
    match resolution {
        Some(r) if r == action.as_str() => {}
        Some(r) => {
            return Err(StoreError::Conflict(format!(
                "this flag was already resolved with \"{r}\""
            )));
        }
        None => {
            sqlx::query(
                "UPDATE flags SET resolution = $1, resolved_by = $2, resolved_at = $3 WHERE id = $4",
            )
            .bind(action.as_str())
            .bind(&admin.id)
            .bind(now_ms())
            .bind(flag_id)
            .execute(&mut **tx)
            .await?;
            if action == FlagAction::Exclude {
                sqlx::query("UPDATE pairs SET excluded = 1 WHERE id = $1")
                    .bind(&pair_id)
                    .execute(&mut **tx)
                    .await?;
            }
            sqlx::query(
                "UPDATE pairs SET held = 0 WHERE id = $1 AND NOT EXISTS \
                   (SELECT 1 FROM flags f WHERE f.pair_id = $1 AND f.resolution IS NULL)",
            )
            .bind(&pair_id)
            .execute(&mut **tx)
            .await?;
        }
    }
    let flag = flag_by_id(&mut tx, flag_id).await?;
    tx.commit().await?;
    Ok(flag)
}

/// A flag with its annotator's name and its pair's prompt, as SQL up to the WHERE.
macro_rules! flag_select {
    () => {
        "SELECT f.id, f.project_id, f.pair_id, f.note, f.created_at, f.resolution, f.resolved_at, \
         u.name AS annotator, q.text AS prompt \
         FROM flags f JOIN users u ON u.id = f.user_id JOIN pairs p ON p.id = f.pair_id \
           JOIN prompts q ON q.id = p.prompt_id"
    };
}

async fn flag_by_id(tx: &mut sqlx::Transaction<'static, sqlx::Any>, id: &str) -> Result<Flag> {
    let row = sqlx::query(concat!(flag_select!(), " WHERE f.id = $1"))
        .bind(id)
        .fetch_one(&mut **tx)
        .await?;
    flag_from_row(&row)
}

fn flag_from_row(r: &sqlx::any::AnyRow) -> Result<Flag> {
    let resolution: Option<String> = r.try_get("resolution")?;
    Ok(Flag {
        id: r.try_get("id")?,
        project_id: r.try_get("project_id")?,
        pair_id: r.try_get("pair_id")?,
        annotator: r.try_get("annotator")?,
        note: r.try_get("note")?,
        prompt: r.try_get("prompt")?,
        created_at: r.try_get("created_at")?,
        resolution: resolution.map(|r| {
            if r == "exclude" {
                FlagAction::Exclude
            } else {
                FlagAction::Keep
            }
        }),
        resolved_at: r.try_get("resolved_at")?,
    })
}

/// The newest flags of a project, with the flagged pair's prompt; open ones only when `open_only`.
pub async fn list_flags(
    store: &Store,
    project_id: &str,
    limit: i64,
    open_only: bool,
) -> Result<Vec<Flag>> {
    let rows = sqlx::query(concat!(
        flag_select!(),
        " WHERE f.project_id = $1 AND ($3 = 0 OR f.resolution IS NULL) \
         ORDER BY f.created_at DESC, f.id LIMIT $2"
    ))
    .bind(project_id)
    .bind(limit)
    .bind(open_only as i64)
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(flag_from_row).collect()
}

/// The project a flag belongs to (for the caller's permission check).
pub async fn flag_project(store: &Store, flag_id: &str) -> Result<String> {
    sqlx::query_scalar("SELECT project_id FROM flags WHERE id = $1")
        .bind(flag_id)
        .fetch_optional(store.pool())
        .await?
        .ok_or(StoreError::NotFound("flag"))
}
