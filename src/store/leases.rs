//! Leases and judgments: who is looking at which pair until when, and what they answered.
//!
//! A pair carries its current lease (`pairs.lease_id`, `pairs.leased_until`), so claiming the best free
//! pair is one conditional UPDATE; the `leases` rows keep the history. Judgments are never deleted: an undo
//! marks the judgment superseded and hands the pair back to the same annotator, unless another annotator
//! has leased or labelled it since (`undo_last_judgment`).

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use utoipa::ToSchema;

use super::members::may_access;
use super::projects::Project;
use super::text::check_storable;
use super::users::User;
use super::{Dialect, Result, Store, StoreError, new_id};
use crate::domain::{Choice, DEFAULT_GOLD_RATE};

/// A pair handed to one annotator, with the order its completions are shown in.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LeasedPair {
    pub lease_id: String,
    pub pair_id: String,
    pub project_id: String,
    pub prompt: String,
    pub left: String,
    pub right: String,
    /// RFC 3339.
    pub expires_at: String,
    #[serde(skip)]
    pub expires_at_ms: i64,
    #[serde(skip)]
    pub left_is_a: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Judgment {
    pub id: String,
    pub project_id: String,
    pub pair_id: String,
    pub lease_id: String,
    pub user_id: String,
    pub choice: Choice,
    /// Whether completion A was the one shown on the left.
    pub left_is_a: bool,
    pub rationale: Option<String>,
    /// Seconds from the lease to the answer.
    pub seconds: f64,
    pub idempotency_key: Option<String>,
    pub created_at: String,
    pub superseded_at: Option<String>,
}

pub(super) fn judgment_from_row(row: &AnyRow) -> Result<Judgment> {
    let choice: String = row.try_get("choice")?;
    let superseded: Option<i64> = row.try_get("superseded_at")?;
    Ok(Judgment {
        id: row.try_get("id")?,
        project_id: row.try_get("project_id")?,
        pair_id: row.try_get("pair_id")?,
        lease_id: row.try_get("lease_id")?,
        user_id: row.try_get("user_id")?,
        choice: choice.parse()?,
        left_is_a: super::flag(row, "left_is_a")?,
        rationale: row.try_get("rationale")?,
        seconds: row.try_get("seconds")?,
        idempotency_key: row.try_get("idempotency_key")?,
        created_at: super::rfc3339(row.try_get("created_at")?),
        superseded_at: superseded.map(super::rfc3339),
    })
}

/// The lease row joined with its pair and prompt, as `LeasedPair`.
const LEASE_BY_ID: &str = "SELECT l.id AS lease_id, l.pair_id, l.project_id, l.left_is_a, \
     l.expires_at, p.completion_a, p.completion_b, q.text AS prompt \
     FROM leases l JOIN pairs p ON p.id = l.pair_id JOIN prompts q ON q.id = p.prompt_id \
     WHERE l.id = $1";

fn leased_pair_from_row(row: &AnyRow) -> Result<LeasedPair> {
    let left_is_a = super::flag(row, "left_is_a")?;
    let a: String = row.try_get("completion_a")?;
    let b: String = row.try_get("completion_b")?;
    let (left, right) = if left_is_a { (a, b) } else { (b, a) };
    let expires_at_ms: i64 = row.try_get("expires_at")?;
    Ok(LeasedPair {
        lease_id: row.try_get("lease_id")?,
        pair_id: row.try_get("pair_id")?,
        project_id: row.try_get("project_id")?,
        prompt: row.try_get("prompt")?,
        left,
        right,
        expires_at: super::rfc3339(expires_at_ms),
        expires_at_ms,
        left_is_a,
    })
}

pub(super) async fn get_leased_pair(
    tx: &mut Transaction<'static, Any>,
    lease_id: &str,
) -> Result<LeasedPair> {
    let row = sqlx::query(LEASE_BY_ID)
        .bind(lease_id)
        .fetch_one(&mut **tx)
        .await?;
    leased_pair_from_row(&row)
}

/// How a lease transaction of a project with a label budget holds the project's lock on PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BudgetLock {
    /// Beside other claims: while the budget has more room left than claims can be in flight at once,
    /// they cannot overrun it even all together.
    Shared,
    /// Alone: near the end of the budget every claim must see the ones before it.
    Exclusive,
}

/// Takes the budget lock of a project that has a budget, on PostgreSQL (SQLite's `BEGIN IMMEDIATE`
/// already serialises every writer), so that the labels spent, the leases open and the new claim are
/// counted from a consistent state. Without a budget there is nothing to count and no lock: a claim is
/// one conditional UPDATE over a `SKIP LOCKED` pick, whose conditions on the pair row itself keep two
/// transactions from ever holding one pair, so claims of one project run side by side.
pub(super) async fn lock_budget(
    tx: &mut Transaction<'static, Any>,
    store: &Store,
    project: &Project,
    how: BudgetLock,
) -> Result<()> {
    if store.dialect() == Dialect::Postgres && project.label_budget.is_some() {
        let sql = match how {
            BudgetLock::Shared => "SELECT pg_advisory_xact_lock_shared(hashtext($1))::TEXT",
            BudgetLock::Exclusive => "SELECT pg_advisory_xact_lock(hashtext($1))::TEXT",
        };
        sqlx::query(sql)
            .bind(&project.id)
            .fetch_one(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Whether a claim under a shared budget lock must start again under the exclusive one: when fewer
/// labels are left than claims of this process can be in flight at once (one per pooled connection),
/// those claims together could pass the budget. One server process per database is assumed, as the
/// active loop already does.
fn needs_exclusive(store: &Store, how: BudgetLock, room: i64) -> bool {
    store.dialect() == Dialect::Postgres
        && how == BudgetLock::Shared
        && room <= super::POSTGRES_POOL as i64
}

/// The count of a project's ($1) labels spent, as SQL: one text for `count_labels` and `budget_room`,
/// matching the predicate of the partial index `judgments_labels`.
macro_rules! labels_spent_sql {
    () => {
        "SELECT COUNT(*) FROM judgments \
         WHERE project_id = $1 AND superseded_at IS NULL AND choice <> 'skip'"
    };
}

/// Labels spent in a project: current (not superseded) judgments other than skips, read from the
/// partial index `judgments_labels`. Takes a pool or a transaction (leasing counts inside its own).
pub async fn count_labels<'e, E>(executor: E, project_id: &str) -> Result<i64>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    let row = sqlx::query(concat!("SELECT (", labels_spent_sql!(), ") AS n"))
        .bind(project_id)
        .fetch_one(executor)
        .await?;
    super::int(&row, "n")
}

/// Labels the project's budget still has room for: the budget less the labels spent and the labels
/// promised to open leases (`i64::MAX` without a budget). Run under `lock_budget`. A lease is open while
/// it is active and unexpired (index `leases_open`): its pair waits for its answer, since every way a pair
/// leaves a lease (answer, release, a new lease after expiry) also ends the lease row's `active` status.
pub(super) async fn budget_room(
    tx: &mut Transaction<'static, Any>,
    project: &Project,
    now: i64,
) -> Result<i64> {
    let Some(budget) = project.label_budget else {
        return Ok(i64::MAX);
    };
    // One statement, so one snapshot: an answer committing between two separate counts would move
    // its pair from "open" to "labelled" unseen by both, and the budget would be passed by one.
    let spent: i64 = super::int(
        &sqlx::query(concat!(
            "SELECT (",
            labels_spent_sql!(),
            ") + (SELECT COUNT(*) FROM leases WHERE project_id = $1 AND status = 'active' \
             AND expires_at > $2) AS n"
        ))
        .bind(&project.id)
        .bind(now)
        .fetch_one(&mut **tx)
        .await?,
        "n",
    )?;
    Ok(budget - spent)
}

/// Leases the best free pair of `project` to `user`, or gives back the lease they already hold.
/// `None` when nothing is free or the label budget is spent (counting labels promised to open leases).
/// Leases listed in `exclude` are not given back, so a client can hold a second pair ready.
pub async fn lease_next_pair(
    store: &Store,
    project: &Project,
    user: &User,
    exclude: &[String],
) -> Result<Option<LeasedPair>> {
    let mut how = BudgetLock::Shared;
    loop {
        match try_lease(store, project, user, exclude, how).await? {
            Attempt::Done(leased) => return Ok(leased),
            Attempt::Again(stricter) => how = stricter,
        }
    }
}

/// What one lease transaction came to.
enum Attempt {
    Done(Option<LeasedPair>),
    /// Start again under this lock (nothing was written).
    Again(BudgetLock),
}

async fn try_lease(
    store: &Store,
    project: &Project,
    user: &User,
    exclude: &[String],
    how: BudgetLock,
) -> Result<Attempt> {
    let now = store.clock().now_ms();
    let mut tx = store.begin_write().await?;
    lock_budget(&mut tx, store, project, how).await?;

    let held: Vec<String> = sqlx::query_scalar(
        "SELECT l.id FROM leases l JOIN pairs p ON p.id = l.pair_id \
         WHERE l.user_id = $1 AND l.project_id = $2 AND l.status = 'active' AND l.expires_at > $3 \
           AND p.lease_id = l.id AND p.status = 'pending' \
         ORDER BY l.created_at DESC",
    )
    .bind(&user.id)
    .bind(&project.id)
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    if let Some(id) = held.iter().find(|id| !exclude.contains(id)) {
        let leased = get_leased_pair(&mut tx, id).await?;
        tx.commit().await?;
        return Ok(Attempt::Done(Some(leased)));
    }

    let room = budget_room(&mut tx, project, now).await?;
    if room <= 0 {
        tx.commit().await?;
        return Ok(Attempt::Done(None));
    }
    if needs_exclusive(store, how, room) {
        tx.rollback().await?;
        return Ok(Attempt::Again(BudgetLock::Exclusive));
    }

    if let Some(bar) = project.settings.min_gold_accuracy {
        let (answered, correct) = gold_record(&mut tx, &project.id, &user.id).await?;
        if super::quality::below_gold_bar(Some(bar), answered, correct) {
            tx.rollback().await?;
            return Err(StoreError::Forbidden(format!(
                "your answers to this project's check pairs ({correct} of {answered} as expected) are below \
                 its bar of {:.0}%: no more pairs are served to you; ask the project's admin",
                bar * 100.0
            )));
        }
    }

    let lease_id = new_id();
    let expires = now + project.lease_seconds * 1000;
    let mut claimed = None;
    let gold_rate = project.settings.gold_rate.unwrap_or(DEFAULT_GOLD_RATE);
    // The claims below all take (lease, expiry, project, now, user).
    let claim = async |tx: &mut Transaction<'static, Any>, sql: &'static str| {
        sqlx::query(sql)
            .bind(&lease_id)
            .bind(expires)
            .bind(&project.id)
            .bind(now)
            .bind(&user.id)
            .fetch_optional(&mut **tx)
            .await
    };
    if gold_rate > 0.0 && rand::random::<f64>() < gold_rate {
        claimed = claim(&mut tx, CLAIM_GOLD).await?;
    }
    if claimed.is_none() && store.dialect() == Dialect::Postgres {
        claimed = claim_among_candidates(&mut tx, project, user, &lease_id, expires, now).await?;
    }
    if claimed.is_none() {
        let sql = match store.dialect() {
            Dialect::Sqlite => CLAIM_SQLITE,
            Dialect::Postgres => CLAIM_POSTGRES,
        };
        claimed = claim(&mut tx, sql).await?;
    }
    let Some(claimed) = claimed else {
        tx.commit().await?;
        return Ok(Attempt::Done(None));
    };
    let pair_id: String = claimed.try_get("id")?;
    // The pair's earlier lease, if any, ran out: record that in its history.
    sqlx::query("UPDATE leases SET status = 'expired' WHERE pair_id = $1 AND status = 'active'")
        .bind(&pair_id)
        .execute(&mut **tx)
        .await?;
    let left_is_a = rand::random::<bool>();
    sqlx::query(
        "INSERT INTO leases (id, pair_id, project_id, user_id, left_is_a, status, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, 'active', $6, $7)",
    )
    .bind(&lease_id)
    .bind(&pair_id)
    .bind(&project.id)
    .bind(&user.id)
    .bind(left_is_a as i64)
    .bind(now)
    .bind(expires)
    .execute(&mut **tx)
    .await?;
    tx.commit().await?;
    let (a, b): (String, String) = (
        claimed.try_get("completion_a")?,
        claimed.try_get("completion_b")?,
    );
    let (left, right) = if left_is_a { (a, b) } else { (b, a) };
    Ok(Attempt::Done(Some(LeasedPair {
        lease_id,
        pair_id,
        project_id: project.id.clone(),
        prompt: claimed.try_get("prompt")?,
        left,
        right,
        expires_at: super::rfc3339(expires),
        expires_at_ms: expires,
        left_is_a,
    })))
}

/// Claims the best free pair the user has not already answered: highest score first, then the random
/// key fixed at insert. The outer conditions repeat the inner ones so that a concurrent claim of the same
/// row can never succeed twice. It returns what the annotator is shown, so the lease needs no second
/// read of the pair.
const CLAIM_SQLITE: &str = concat!(
    "UPDATE pairs SET lease_id = $1, leased_until = $2 WHERE id = ( \
       SELECT id FROM pairs WHERE project_id = $3 AND ",
    servable_sql!(),
    " AND (leased_until IS NULL OR leased_until <= $4) \
         AND NOT EXISTS (SELECT 1 FROM judgments j WHERE j.pair_id = pairs.id AND j.user_id = $5 \
                         AND j.superseded_at IS NULL) \
       ORDER BY score DESC NULLS LAST, random_key LIMIT 1) \
     AND status = 'pending' AND (leased_until IS NULL OR leased_until <= $4) \
     RETURNING id, completion_a, completion_b, \
       (SELECT text FROM prompts q WHERE q.id = pairs.prompt_id) AS prompt"
);

const CLAIM_POSTGRES: &str = concat!(
    "UPDATE pairs SET lease_id = $1, leased_until = $2 WHERE id = ( \
       SELECT id FROM pairs WHERE project_id = $3 AND ",
    servable_sql!(),
    " AND (leased_until IS NULL OR leased_until <= $4) \
         AND NOT EXISTS (SELECT 1 FROM judgments j WHERE j.pair_id = pairs.id AND j.user_id = $5 \
                         AND j.superseded_at IS NULL) \
       ORDER BY score DESC NULLS LAST, random_key LIMIT 1 FOR UPDATE SKIP LOCKED) \
     AND status = 'pending' AND (leased_until IS NULL OR leased_until <= $4) \
     RETURNING id, completion_a, completion_b, \
       (SELECT text FROM prompts q WHERE q.id = pairs.prompt_id) AS prompt"
);

/// Claims a gold pair the user has not answered, in the order fixed at import. Gold pairs stay pending
/// for good: every annotator answers each one once.
const CLAIM_GOLD: &str = "UPDATE pairs SET lease_id = $1, leased_until = $2 WHERE id = ( \
       SELECT id FROM pairs WHERE project_id = $3 AND status = 'pending' AND gold IS NOT NULL \
         AND held = 0 AND excluded = 0 AND (leased_until IS NULL OR leased_until <= $4) \
         AND NOT EXISTS (SELECT 1 FROM judgments j WHERE j.pair_id = pairs.id AND j.user_id = $5 \
                         AND j.superseded_at IS NULL) \
       ORDER BY random_key LIMIT 1) \
     AND status = 'pending' AND (leased_until IS NULL OR leased_until <= $4) \
     RETURNING id, completion_a, completion_b, \
       (SELECT text FROM prompts q WHERE q.id = pairs.prompt_id) AS prompt";

/// How many of the best free pairs a PostgreSQL claim reads before locking one.
const CANDIDATES: usize = 32;

/// PostgreSQL's claim in two steps. Locking while scanning the queue (`FOR UPDATE` in the scan) costs,
/// for every row version another claim or answer replaced since the last vacuum, a lock attempt that
/// follows the row to its newest version and checks it again; at the head of the queue, where every
/// claim starts, such versions pile up by the thousand within a minute (bench-api: p99 from 8 ms to
/// seconds over a 60 s run). So the best `CANDIDATES` free pairs are read first from the snapshot, with
/// no lock, and one of them is then locked by primary key, skipping those another claim holds. `None`
/// when all of them were taken meanwhile (or none is free): the caller falls back to the scanning claim.
async fn claim_among_candidates(
    tx: &mut Transaction<'static, Any>,
    project: &Project,
    user: &User,
    lease_id: &str,
    expires: i64,
    now: i64,
) -> Result<Option<AnyRow>> {
    let candidates: Vec<String> = sqlx::query_scalar(PICK_POSTGRES)
        .bind(&project.id)
        .bind(now)
        .bind(&user.id)
        .bind(CANDIDATES as i64)
        .fetch_all(&mut **tx)
        .await?;
    let Some(last) = candidates.last().cloned() else {
        return Ok(None);
    };
    // Always CANDIDATES bound ids (the last one repeated), so that one prepared statement serves.
    let mut query = sqlx::query(CLAIM_AMONG_POSTGRES.as_str())
        .bind(lease_id)
        .bind(expires)
        .bind(now);
    for i in 0..CANDIDATES {
        query = query.bind(candidates.get(i).cloned().unwrap_or_else(|| last.clone()));
    }
    Ok(query.fetch_optional(&mut **tx).await?)
}

/// The best free pairs the user has not answered, read without locking.
const PICK_POSTGRES: &str = concat!(
    "SELECT id FROM pairs WHERE project_id = $1 AND ",
    servable_sql!(),
    " AND (leased_until IS NULL OR leased_until <= $2) \
       AND NOT EXISTS (SELECT 1 FROM judgments j WHERE j.pair_id = pairs.id AND j.user_id = $3 \
                       AND j.superseded_at IS NULL) \
     ORDER BY score DESC NULLS LAST, random_key LIMIT $4"
);

/// Locks the best of the candidates ($4 …) still free, skipping those locked by another claim.
static CLAIM_AMONG_POSTGRES: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let ids: Vec<String> = (0..CANDIDATES).map(|i| format!("${}", i + 4)).collect();
    format!(
        "UPDATE pairs SET lease_id = $1, leased_until = $2 WHERE id = ( \
           SELECT id FROM pairs WHERE id IN ({}) AND status = 'pending' AND held = 0 \
             AND (leased_until IS NULL OR leased_until <= $3) \
           ORDER BY score DESC NULLS LAST, random_key LIMIT 1 FOR UPDATE SKIP LOCKED) \
         AND status = 'pending' AND (leased_until IS NULL OR leased_until <= $3) \
         RETURNING id, completion_a, completion_b, \
           (SELECT text FROM prompts q WHERE q.id = pairs.prompt_id) AS prompt",
        ids.join(", ")
    )
});

/// An annotator's gold answers in a project: (answered, as expected). Skips are not answers.
pub(super) async fn gold_record(
    tx: &mut Transaction<'static, Any>,
    project_id: &str,
    user_id: &str,
) -> Result<(i64, i64)> {
    let row = sqlx::query(concat!(
        "SELECT COUNT(*) AS answered, \
           COALESCE(SUM(CASE WHEN ",
        preferred_side_sql!(),
        " = p.gold THEN 1 ELSE 0 END), 0) AS correct \
         FROM judgments j JOIN pairs p ON p.id = j.pair_id \
         WHERE j.user_id = $1 AND j.project_id = $2 AND j.superseded_at IS NULL \
           AND j.choice <> 'skip' AND p.gold IS NOT NULL"
    ))
    .bind(user_id)
    .bind(project_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok((super::int(&row, "answered")?, super::int(&row, "correct")?))
}

/// What a judgment request asks for.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JudgmentInput {
    pub choice: Choice,
    pub rationale: Option<String>,
    /// Seconds the pair was on the annotator's screen before the answer, as the client measured it: a
    /// client that leases the next pair ahead sends it, so time per label counts from when the pair was
    /// shown, not from the lease. At most the lease's age; without it, the lease's age.
    #[serde(default)]
    pub seconds: Option<f64>,
}

pub const MAX_RATIONALE_BYTES: usize = 20_000;

struct LeaseRow {
    id: String,
    pair_id: String,
    project_id: String,
    user_id: String,
    left_is_a: bool,
    created_at: i64,
}

/// The lease row, locked until the transaction ends: every later call on one lease (answer, heartbeat,
/// release) runs after the one before it has committed. SQLite's `BEGIN IMMEDIATE` already serialises
/// every writer; PostgreSQL's READ COMMITTED would let two identical answers both find no judgment and
/// both insert one, the second failing on the unique `lease_id`.
async fn get_lease(
    tx: &mut Transaction<'static, Any>,
    store: &Store,
    lease_id: &str,
) -> Result<LeaseRow> {
    let query = match store.dialect() {
        Dialect::Sqlite => "SELECT * FROM leases WHERE id = $1",
        Dialect::Postgres => "SELECT * FROM leases WHERE id = $1 FOR UPDATE",
    };
    let row = sqlx::query(query)
        .bind(lease_id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(StoreError::NotFound("lease"))?;
    Ok(LeaseRow {
        id: row.try_get("id")?,
        pair_id: row.try_get("pair_id")?,
        project_id: row.try_get("project_id")?,
        user_id: row.try_get("user_id")?,
        left_is_a: super::flag(&row, "left_is_a")?,
        created_at: row.try_get("created_at")?,
    })
}

/// The lease of `user`, or `Forbidden` when it is someone else's.
async fn own_lease(
    tx: &mut Transaction<'static, Any>,
    store: &Store,
    lease_id: &str,
    user: &User,
) -> Result<LeaseRow> {
    let lease = get_lease(tx, store, lease_id).await?;
    if lease.user_id != user.id {
        return Err(not_yours());
    }
    Ok(lease)
}

fn not_yours() -> StoreError {
    StoreError::Forbidden("this lease belongs to another annotator".into())
}

/// Whether the pair still waits for this lease's answer (not re-leased, not labelled, not released).
async fn pair_held_by(tx: &mut Transaction<'static, Any>, lease: &LeaseRow) -> Result<bool> {
    let held: Option<String> = sqlx::query_scalar(
        "SELECT id FROM pairs WHERE id = $1 AND lease_id = $2 AND status = 'pending'",
    )
    .bind(&lease.pair_id)
    .bind(&lease.id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(held.is_some())
}

/// Records the answer to a lease. Answering the same lease again with the same choice returns the stored
/// judgment and `false` (nothing new is written); a different answer to an answered lease is a conflict.
pub async fn record_judgment(
    store: &Store,
    lease_id: &str,
    user: &User,
    input: &JudgmentInput,
    idempotency_key: Option<&str>,
) -> Result<(Judgment, bool)> {
    if input
        .rationale
        .as_ref()
        .is_some_and(|r| r.len() > MAX_RATIONALE_BYTES)
    {
        return Err(StoreError::Invalid(format!(
            "rationale is over the limit of {MAX_RATIONALE_BYTES} bytes"
        )));
    }
    // AI judges' rationales come from another server, not through a JSON body's check.
    if let Some(r) = &input.rationale {
        check_storable("rationale", r)?;
    }
    let mut tx = store.begin_write().await?;
    let lease = own_lease(&mut tx, store, lease_id, user).await?;

    let existing = sqlx::query("SELECT * FROM judgments WHERE lease_id = $1")
        .bind(lease_id)
        .fetch_optional(&mut **tx)
        .await?;
    if let Some(row) = existing {
        let judgment = judgment_from_row(&row)?;
        tx.commit().await?;
        let same_key =
            idempotency_key.is_none() || judgment.idempotency_key.as_deref() == idempotency_key;
        if judgment.choice == input.choice && same_key {
            return Ok((judgment, false));
        }
        return Err(StoreError::Conflict(format!(
            "this lease was already answered with \"{}\"",
            judgment.choice.as_str()
        )));
    }
    // A skip puts the pair back for others (this annotator is not offered it again); any other answer
    // labels it once it makes the project's `labels_per_pair` current votes, and until then the pair
    // goes back to be answered by someone else. A gold pair stays pending: everyone answers it once.
    // Only while the pair still waits for this lease: the update is the check.
    let per_pair: Option<String> =
        sqlx::query_scalar("SELECT settings FROM projects WHERE id = $1")
            .bind(&lease.project_id)
            .fetch_optional(&mut **tx)
            .await?;
    let labels_per_pair = per_pair
        .and_then(|s| serde_json::from_str::<crate::domain::LoopSettings>(&s).ok())
        .map_or(1, |s| s.labels_per_pair.max(1)) as i64;
    let held = sqlx::query(
        "UPDATE pairs SET lease_id = NULL, leased_until = NULL, status = CASE \
           WHEN $1 = 'skip' OR gold IS NOT NULL THEN 'pending' \
           WHEN $4 > 1 + (SELECT COUNT(*) FROM judgments j WHERE j.pair_id = pairs.id \
                          AND j.superseded_at IS NULL AND j.choice <> 'skip') THEN 'pending' \
           ELSE 'labelled' END \
         WHERE id = $2 AND lease_id = $3 AND status = 'pending'",
    )
    .bind(input.choice.as_str())
    .bind(&lease.pair_id)
    .bind(&lease.id)
    .bind(labels_per_pair)
    .execute(&mut **tx)
    .await?;
    if held.rows_affected() == 0 {
        return Err(StoreError::Conflict(
            "this lease has ended and its pair was handed on; ask /next for another".into(),
        ));
    }

    let now = store.clock().now_ms();
    let judgment = Judgment {
        id: new_id(),
        project_id: lease.project_id,
        pair_id: lease.pair_id,
        lease_id: lease.id,
        user_id: user.id.clone(),
        choice: input.choice,
        left_is_a: lease.left_is_a,
        rationale: input.rationale.clone(),
        seconds: answer_seconds(input.seconds, now - lease.created_at),
        idempotency_key: idempotency_key.map(str::to_string),
        created_at: super::rfc3339(now),
        superseded_at: None,
    };
    sqlx::query(
        "INSERT INTO judgments (id, project_id, pair_id, lease_id, user_id, choice, left_is_a, rationale, \
         seconds, idempotency_key, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&judgment.id)
    .bind(&judgment.project_id)
    .bind(&judgment.pair_id)
    .bind(&judgment.lease_id)
    .bind(&judgment.user_id)
    .bind(judgment.choice.as_str())
    .bind(judgment.left_is_a as i64)
    .bind(judgment.rationale.as_deref())
    .bind(judgment.seconds)
    .bind(judgment.idempotency_key.as_deref())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE leases SET status = 'answered' WHERE id = $1")
        .bind(&judgment.lease_id)
        .execute(&mut **tx)
        .await?;
    tx.commit().await?;
    Ok((judgment, true))
}

/// The seconds a judgment records: the client's measure of how long the pair was shown when it gives a
/// sane one, never more than the lease has existed (`lease_age_ms`).
fn answer_seconds(client: Option<f64>, lease_age_ms: i64) -> f64 {
    let age = lease_age_ms.max(0) as f64 / 1000.0;
    match client {
        Some(s) if s.is_finite() && s >= 0.0 => s.min(age),
        _ => age,
    }
}

/// Keeps a lease alive for another lease period; returns the new expiry (ms).
pub async fn extend_lease(store: &Store, lease_id: &str, user: &User) -> Result<LeasedPair> {
    let mut tx = store.begin_write().await?;
    let lease = own_lease(&mut tx, store, lease_id, user).await?;
    if !pair_held_by(&mut tx, &lease).await? {
        return Err(StoreError::Conflict("this lease has ended".into()));
    }
    let seconds: i64 = sqlx::query_scalar("SELECT lease_seconds FROM projects WHERE id = $1")
        .bind(&lease.project_id)
        .fetch_one(&mut **tx)
        .await?;
    let expires = store.clock().now_ms() + seconds * 1000;
    sqlx::query("UPDATE leases SET expires_at = $1, status = 'active' WHERE id = $2")
        .bind(expires)
        .bind(&lease.id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE pairs SET leased_until = $1 WHERE id = $2")
        .bind(expires)
        .bind(&lease.pair_id)
        .execute(&mut **tx)
        .await?;
    let leased = get_leased_pair(&mut tx, &lease.id).await?;
    tx.commit().await?;
    Ok(leased)
}

/// Gives a lease up unanswered (the page was closed): its pair is free for anyone at once.
pub async fn release_lease(store: &Store, lease_id: &str, user: &User) -> Result<()> {
    let mut tx = store.begin_write().await?;
    let lease = own_lease(&mut tx, store, lease_id, user).await?;
    release_held(&mut tx, &lease).await?;
    tx.commit().await?;
    Ok(())
}

/// Frees the lease's pair for anyone, when the pair still waits for this lease.
async fn release_held(tx: &mut Transaction<'static, Any>, lease: &LeaseRow) -> Result<()> {
    if pair_held_by(tx, lease).await? {
        sqlx::query("UPDATE pairs SET lease_id = NULL, leased_until = NULL WHERE id = $1")
            .bind(&lease.pair_id)
            .execute(&mut **tx)
            .await?;
        sqlx::query("UPDATE leases SET status = 'released' WHERE id = $1")
            .bind(&lease.id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// `Forbidden` unless `user` may still work on the project of their lease, by the rule `/next` applies
/// (`members::can_access`): someone removed from a project since taking a lease may not answer or keep
/// it, and its pair goes back to the pool at once instead of waiting for the lease to run out. The HTTP
/// layer asks this before an annotator's answer or heartbeat; AI judges work on the projects they are
/// attached to and are not members.
pub async fn ensure_lease_access(store: &Store, lease_id: &str, user: &User) -> Result<()> {
    // The usual answer, yes, is read without a write transaction: on SQLite every write transaction
    // waits its turn for the one writer, and an answer already takes one.
    let row = sqlx::query("SELECT project_id, user_id FROM leases WHERE id = $1")
        .bind(lease_id)
        .fetch_optional(store.pool())
        .await?
        .ok_or(StoreError::NotFound("lease"))?;
    let (project_id, holder): (String, String) =
        (row.try_get("project_id")?, row.try_get("user_id")?);
    if holder != user.id {
        return Err(not_yours());
    }
    if may_access(store.pool(), &project_id, user).await? {
        return Ok(());
    }
    let mut tx = store.begin_write().await?;
    let lease = own_lease(&mut tx, store, lease_id, user).await?;
    release_held(&mut tx, &lease).await?;
    tx.commit().await?;
    Err(StoreError::Forbidden(
        "you are no longer assigned to this project: this lease was handed back".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::answer_seconds;

    #[test]
    fn time_per_label_counts_from_when_the_pair_was_shown() {
        assert_eq!(answer_seconds(Some(4.5), 30_000), 4.5);
        // Never more than the lease has existed, and nonsense falls back to the lease's age.
        assert_eq!(answer_seconds(Some(99.0), 30_000), 30.0);
        assert_eq!(answer_seconds(Some(-1.0), 30_000), 30.0);
        assert_eq!(answer_seconds(Some(f64::NAN), 2_000), 2.0);
        assert_eq!(answer_seconds(None, 2_500), 2.5);
    }
}
