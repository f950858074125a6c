//! Flags: an annotator's note that a pair is broken, kept for the admins to read.

use serde::Serialize;
use sqlx::Row;

use super::users::User;
use super::{Result, Store, StoreError, new_id, now_ms};

pub const MAX_NOTE_BYTES: usize = 4_000;

#[derive(Debug, Clone, Serialize)]
pub struct Flag {
    pub id: String,
    pub pair_id: String,
    pub annotator: String,
    pub note: String,
    pub prompt: String,
    pub created_at: i64,
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
    sqlx::query(
        "INSERT INTO flags (id, project_id, pair_id, user_id, note, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(new_id())
    .bind(project_id)
    .bind(pair_id)
    .bind(&user.id)
    .bind(note)
    .bind(now_ms())
    .execute(store.pool())
    .await?;
    Ok(())
}

/// The newest flags of a project, with the flagged pair's prompt.
pub async fn list_flags(store: &Store, project_id: &str, limit: i64) -> Result<Vec<Flag>> {
    let rows = sqlx::query(
        "SELECT f.id, f.pair_id, f.note, f.created_at, u.name AS annotator, q.text AS prompt \
         FROM flags f JOIN users u ON u.id = f.user_id JOIN pairs p ON p.id = f.pair_id \
           JOIN prompts q ON q.id = p.prompt_id \
         WHERE f.project_id = $1 ORDER BY f.created_at DESC, f.id LIMIT $2",
    )
    .bind(project_id)
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Flag {
                id: r.try_get("id")?,
                pair_id: r.try_get("pair_id")?,
                annotator: r.try_get("annotator")?,
                note: r.try_get("note")?,
                prompt: r.try_get("prompt")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}
