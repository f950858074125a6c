//! What the active-learning loop reads and writes: the free pool, prompts to draw from, generated pairs
//! with their acquisition scores, re-scoring, and the labelled preferences to train on.

use serde::Serialize;
use sqlx::Row;

use super::export::preference_of;
use super::text::without_nul;
use super::{Result, Store, new_id, now_ms};
use crate::domain::{Choice, PairScores, ScoreParts, Strategy};

/// Pending pairs nobody holds: what `/next` can still hand out.
pub async fn count_free_pending(store: &Store, project_id: &str) -> Result<i64> {
    let row = sqlx::query(concat!(
        "SELECT COUNT(*) AS n FROM pairs WHERE project_id = $1 AND ",
        servable_sql!(),
        " AND (lease_id IS NULL OR leased_until <= $2)"
    ))
    .bind(project_id)
    .bind(store.clock().now_ms())
    .fetch_one(store.pool())
    .await?;
    super::int(&row, "n")
}

#[derive(Debug, Clone)]
pub struct PoolPrompt {
    pub id: String,
    pub text: String,
}

/// Up to `n` distinct training prompts for a round, without replacement: the least-drawn first, so no
/// prompt comes back before every other one has been drawn as often; among equals, an order fixed by
/// `seed` and each prompt's text, so the same seed over the same prompts draws the same rounds.
/// The drawn prompts' count goes up by one.
pub async fn draw_prompts(
    store: &Store,
    project_id: &str,
    n: i64,
    seed: u64,
) -> Result<Vec<PoolPrompt>> {
    let rows = sqlx::query(
        "SELECT id, text_hash, draws FROM prompts WHERE project_id = $1 AND split = 'train'",
    )
    .bind(project_id)
    .fetch_all(store.pool())
    .await?;
    let mut order = Vec::with_capacity(rows.len());
    for r in &rows {
        let hash: String = r.try_get("text_hash")?;
        let draws: i64 = r.try_get("draws")?;
        order.push((draws, draw_key(seed, &hash), r.try_get::<String, _>("id")?));
    }
    order.sort_unstable();
    order.truncate(n.max(0) as usize);
    let mut tx = store.begin_write().await?;
    let mut out = Vec::with_capacity(order.len());
    for (_, _, id) in order {
        let text: String =
            sqlx::query_scalar("UPDATE prompts SET draws = draws + 1 WHERE id = $1 RETURNING text")
                .bind(&id)
                .fetch_one(&mut **tx)
                .await?;
        out.push(PoolPrompt { id, text });
    }
    tx.commit().await?;
    Ok(out)
}

/// A prompt's place among equally drawn ones: FNV-1a over its text hash, mixed with the seed.
fn draw_key(seed: u64, text_hash: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in text_hash.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A pair the model made and the strategy chose, with every score that chose it.
#[derive(Debug, Clone)]
pub struct GeneratedPair {
    pub prompt_id: String,
    pub completion_a: String,
    pub completion_b: String,
    /// Whether each completion stopped at EOS (not at the length limit).
    pub ends_a: bool,
    pub ends_b: bool,
    pub model_version_id: String,
    /// The strategy, every score and the rank that chose the pair; the strategy's serve score orders
    /// the queue (higher first, `None`, the random strategy's, after every score).
    pub score_parts: ScoreParts,
    /// Orders pairs of equal score: the acquisition's seeded rank, so ties are not broken by insertion.
    pub tie_key: f64,
}

pub async fn insert_generated_pairs(
    store: &Store,
    project_id: &str,
    pairs: &[GeneratedPair],
) -> Result<()> {
    let mut tx = store.begin_write().await?;
    for p in pairs {
        sqlx::query(
            "INSERT INTO pairs (id, project_id, prompt_id, completion_a, completion_b, ends_a, ends_b, meta, \
             source, model_version_id, strategy, score, score_parts, random_key, status, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, '{}', 'generated', $8, $9, $10, $11, $12, 'pending', $13)",
        )
        .bind(new_id())
        .bind(project_id)
        .bind(&p.prompt_id)
        .bind(without_nul(&p.completion_a).into_owned())
        .bind(without_nul(&p.completion_b).into_owned())
        .bind(p.ends_a as i64)
        .bind(p.ends_b as i64)
        .bind(&p.model_version_id)
        .bind(p.score_parts.strategy.as_str())
        .bind(p.score_parts.strategy.serve_score(&p.score_parts.scores))
        .bind(serde_json::to_string(&p.score_parts).expect("scores serialise"))
        .bind(p.tie_key)
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A pending pair nobody holds, to be scored again by a new model version.
#[derive(Debug, Clone)]
pub struct OpenPair {
    pub id: String,
    pub prompt: String,
    pub completion_a: String,
    pub completion_b: String,
    pub ends_a: bool,
    pub ends_b: bool,
}

pub async fn open_pairs(store: &Store, project_id: &str) -> Result<Vec<OpenPair>> {
    let rows = sqlx::query(
        "SELECT p.id, q.text AS prompt, p.completion_a, p.completion_b, p.ends_a, p.ends_b FROM pairs p \
         JOIN prompts q ON q.id = p.prompt_id \
         WHERE p.project_id = $1 AND p.status = 'pending' AND p.gold IS NULL AND p.held = 0 \
           AND p.excluded = 0 AND (p.lease_id IS NULL OR p.leased_until <= $2) \
         ORDER BY p.created_at",
    )
    .bind(project_id)
    .bind(store.clock().now_ms())
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(OpenPair {
                id: r.try_get("id")?,
                prompt: r.try_get("prompt")?,
                completion_a: r.try_get("completion_a")?,
                completion_b: r.try_get("completion_b")?,
                ends_a: super::flag(r, "ends_a")?,
                ends_b: super::flag(r, "ends_b")?,
            })
        })
        .collect()
}

/// New scores for pairs scored again. A pair leased in the meantime keeps its old score: the person
/// holding it sees what they were given.
pub async fn rescore_pairs(
    store: &Store,
    model_version_id: &str,
    strategy: Strategy,
    scores: &[(String, PairScores)],
) -> Result<u64> {
    let now = store.clock().now_ms();
    let mut tx = store.begin_write().await?;
    let mut changed = 0;
    for (id, scores) in scores {
        let parts = ScoreParts {
            strategy,
            scores: *scores,
            rank: None,
        };
        let done = sqlx::query(
            "UPDATE pairs SET score = $1, score_parts = $2, model_version_id = $3, strategy = $4 \
             WHERE id = $5 AND status = 'pending' AND (lease_id IS NULL OR leased_until <= $6)",
        )
        .bind(strategy.serve_score(scores))
        .bind(serde_json::to_string(&parts).expect("scores serialise"))
        .bind(model_version_id)
        .bind(strategy.as_str())
        .bind(id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        changed += done.rows_affected();
    }
    tx.commit().await?;
    Ok(changed)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Preference {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// Whether each completion stopped at EOS: training then appends EOS to it.
    pub chosen_ends: bool,
    pub rejected_ends: bool,
    /// Whether the prompt is in the eval split.
    pub eval: bool,
    /// Decisive votes for `chosen` and for `rejected` (the minority; 0 with one vote per pair).
    pub votes_for: u32,
    pub votes_against: u32,
}

/// What DPO trains on: one preference per pair that has current decisive votes, by their majority (a
/// tie of votes gives none), oldest first by each pair's first vote. Gold pairs (they measure
/// annotators) and pairs excluded on review never train.
pub async fn training_preferences(store: &Store, project_id: &str) -> Result<Vec<Preference>> {
    let rows = sqlx::query(
        "SELECT j.pair_id, j.choice, j.left_is_a, p.completion_a, p.completion_b, p.ends_a, p.ends_b, \
         q.text AS prompt, q.split \
         FROM judgments j JOIN pairs p ON p.id = j.pair_id JOIN prompts q ON q.id = p.prompt_id \
         WHERE j.project_id = $1 AND j.superseded_at IS NULL AND j.choice IN ('left', 'right') \
           AND p.gold IS NULL AND p.excluded = 0 \
         ORDER BY j.seq",
    )
    .bind(project_id)
    .fetch_all(store.pool())
    .await?;
    // Per pair, in order of its first vote: the row of that vote and the votes for A and for B.
    let mut order: Vec<String> = Vec::new();
    let mut votes: std::collections::HashMap<String, (usize, u32, u32)> =
        std::collections::HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        let pair: String = r.try_get("pair_id")?;
        let choice: String = r.try_get("choice")?;
        let Ok(choice) = choice.parse::<Choice>() else {
            continue;
        };
        let Some((a_wins, _)) = preference_of(choice, super::flag(r, "left_is_a")?, true, false)
        else {
            continue;
        };
        let e = votes.entry(pair.clone()).or_insert_with(|| {
            order.push(pair);
            (i, 0, 0)
        });
        if a_wins {
            e.1 += 1;
        } else {
            e.2 += 1;
        }
    }
    let mut out = Vec::with_capacity(order.len());
    for pair in &order {
        let (row, for_a, for_b) = votes[pair];
        if for_a == for_b {
            continue;
        }
        let r = &rows[row];
        let split: String = r.try_get("split")?;
        let a = (
            r.try_get::<String, _>("completion_a")?,
            super::flag(r, "ends_a")?,
        );
        let b = (
            r.try_get::<String, _>("completion_b")?,
            super::flag(r, "ends_b")?,
        );
        let ((chosen, chosen_ends), (rejected, rejected_ends)) =
            if for_a > for_b { (a, b) } else { (b, a) };
        out.push(Preference {
            prompt: r.try_get("prompt")?,
            chosen,
            rejected,
            chosen_ends,
            rejected_ends,
            eval: split == "eval",
            votes_for: for_a.max(for_b),
            votes_against: for_a.min(for_b),
        });
    }
    Ok(out)
}

/// The project's held-out prompts (split "eval"), oldest first, at most `limit`.
pub async fn eval_prompts(store: &Store, project_id: &str, limit: i64) -> Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT text FROM prompts WHERE project_id = $1 AND split = 'eval' ORDER BY created_at, id LIMIT $2",
    )
    .bind(project_id)
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(|r| Ok(r.try_get("text")?)).collect()
}

/// The acquisition scores of the project's pending pairs (those that have one).
pub async fn pending_scores(store: &Store, project_id: &str) -> Result<Vec<f64>> {
    let rows = sqlx::query(
        "SELECT score FROM pairs WHERE project_id = $1 AND status = 'pending' AND score IS NOT NULL",
    )
    .bind(project_id)
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(|r| Ok(r.try_get("score")?)).collect()
}
