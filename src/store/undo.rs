//! Undo: an annotator takes back their latest answer in a project, and (where it is still theirs to
//! answer) gets its pair leased back.

use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;

use super::leases::{
    BudgetLock, Judgment, LeasedPair, budget_room, get_leased_pair, judgment_from_row, lock_budget,
};
use super::projects::Project;
use super::users::User;
use super::{Result, Store, StoreError, new_id};
use crate::domain::Choice;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Undo {
    /// The judgment taken back; it stays stored, marked superseded.
    pub undone: Judgment,
    /// The same pair, leased again to the same annotator; absent when it is no longer theirs to answer
    /// (see `undo_last_judgment`).
    pub lease: Option<LeasedPair>,
}

/// Takes back the caller's latest current judgment in the project and leases its pair to them again.
///
/// An undo only ever reopens the caller's own work. A skip put its pair back in the pool, so by the time
/// it is undone another annotator may have leased or labelled the pair: then the skip is still taken
/// back (superseded, so the caller may be offered the pair again should it come free) but the pair stays
/// where it is and the answer has no lease. Refusing with a 409 instead would leave the caller unable to
/// take back a mistaken skip at all, and a second label on one pair is what must never happen. Reopening
/// a skip also needs room in the label budget, as a fresh lease would; an undone label frees its own.
pub async fn undo_last_judgment(store: &Store, project: &Project, user: &User) -> Result<Undo> {
    let now = store.clock().now_ms();
    let mut tx = store.begin_write().await?;
    lock_budget(&mut tx, store, project, BudgetLock::Exclusive).await?;
    let row = sqlx::query(
        "SELECT * FROM judgments WHERE project_id = $1 AND user_id = $2 AND superseded_at IS NULL \
         ORDER BY seq DESC LIMIT 1",
    )
    .bind(&project.id)
    .bind(&user.id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(StoreError::NotFound("judgment to undo"))?;
    let mut undone = judgment_from_row(&row)?;
    let answered_at: i64 = row.try_get("created_at")?;
    sqlx::query("UPDATE judgments SET superseded_at = $1 WHERE id = $2")
        .bind(now)
        .bind(&undone.id)
        .execute(&mut **tx)
        .await?;
    undone.superseded_at = Some(super::rfc3339(now));

    if undone.choice == Choice::Skip && budget_room(&mut tx, project, now).await? <= 0 {
        tx.commit().await?;
        return Ok(Undo {
            undone,
            lease: None,
        });
    }
    let lease_id = new_id();
    let expires = now + project.lease_seconds * 1000;
    // Not while anyone holds a live lease on it, nor once another annotator has leased it since the
    // undone answer, nor while the pair has all the current labels it needs (`labels_per_pair`; one
    // by default, so no label may stand on it). A gold pair is everyone's to answer once.
    let labels_per_pair = project.settings.labels_per_pair.max(1) as i64;
    let claimed = sqlx::query(
        "UPDATE pairs SET status = 'pending', lease_id = $1, leased_until = $2 \
         WHERE id = $3 AND (status = 'labelled' OR lease_id IS NULL OR leased_until <= $4) \
           AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.pair_id = pairs.id AND l.user_id <> $5 \
                           AND l.created_at >= $6) \
           AND (gold IS NOT NULL OR $7 > (SELECT COUNT(*) FROM judgments j WHERE j.pair_id = pairs.id \
                     AND j.superseded_at IS NULL AND j.choice <> 'skip'))",
    )
    .bind(&lease_id)
    .bind(expires)
    .bind(&undone.pair_id)
    .bind(now)
    .bind(&user.id)
    .bind(answered_at)
    .bind(labels_per_pair)
    .execute(&mut **tx)
    .await?;
    if claimed.rows_affected() == 0 {
        // Not the caller's to answer again, but one vote short now: back to the pool for anyone.
        sqlx::query(
            "UPDATE pairs SET status = 'pending' WHERE id = $1 AND status = 'labelled' \
               AND $2 > (SELECT COUNT(*) FROM judgments j WHERE j.pair_id = pairs.id \
                         AND j.superseded_at IS NULL AND j.choice <> 'skip')",
        )
        .bind(&undone.pair_id)
        .bind(labels_per_pair)
        .execute(&mut **tx)
        .await?;
    }
    let lease = if claimed.rows_affected() == 1 {
        sqlx::query(
            "INSERT INTO leases (id, pair_id, project_id, user_id, left_is_a, status, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, 'active', $6, $7)",
        )
        .bind(&lease_id)
        .bind(&undone.pair_id)
        .bind(&project.id)
        .bind(&user.id)
        .bind(undone.left_is_a as i64)
        .bind(now)
        .bind(expires)
        .execute(&mut **tx)
        .await?;
        Some(get_leased_pair(&mut tx, &lease_id).await?)
    } else {
        None
    };
    tx.commit().await?;
    Ok(Undo { undone, lease })
}
