//! Label quality: how far annotators agree where several answered one pair, and how each annotator does
//! (answers, skips, side bias, pace, gold pairs, agreement with the others).
//!
//! Only decisive votes (left or right, mapped back to completion A or B) count towards agreement: a tie
//! or "both bad" says nothing about which completion is better. Gold pairs measure annotators against a
//! known answer and stay out of agreement.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;

use super::{Result, Store};

/// A project's agreement, as `GET /api/v1/projects/{id}/stats` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct Agreement {
    /// Pairs with at least two decisive votes.
    pub agreement_pairs: i64,
    /// Of those, the share where every vote picked the same completion; absent without such pairs.
    pub agreement_rate: Option<f64>,
    /// Krippendorff's alpha (nominal) over the decisive votes of those pairs: 1 is perfect agreement,
    /// 0 what chance gives. Absent where it is undefined: no such pair, or every vote the same.
    pub krippendorff_alpha: Option<f64>,
}

/// Agreement over pairs given as (votes for A, votes for B).
pub fn agreement(pairs: &[(u32, u32)]) -> Agreement {
    let multi: Vec<(u32, u32)> = pairs.iter().copied().filter(|&(a, b)| a + b >= 2).collect();
    let unanimous = multi.iter().filter(|&&(a, b)| a == 0 || b == 0).count();
    Agreement {
        agreement_pairs: multi.len() as i64,
        agreement_rate: (!multi.is_empty()).then(|| unanimous as f64 / multi.len() as f64),
        krippendorff_alpha: krippendorff_alpha_binary(&multi),
    }
}

/// Krippendorff's alpha for nominal data with two values, each unit given as (count of value 1, count
/// of value 2); units with fewer than two values are not pairable and are left out. With n pairable
/// values, n₁ and n₂ of each value, and Dₒ, Dₑ the observed and expected disagreement,
/// α = 1 − Dₒ/Dₑ = 1 − (n − 1) · Σᵤ n₁ᵤ n₂ᵤ / (mᵤ − 1) / (n₁ n₂). `None` when undefined (no pairable
/// value, or one value only: Dₑ = 0).
pub fn krippendorff_alpha_binary(units: &[(u32, u32)]) -> Option<f64> {
    let (mut n, mut n1, mut n2, mut observed) = (0f64, 0f64, 0f64, 0f64);
    for &(a, b) in units {
        let m = (a + b) as f64;
        if m < 2.0 {
            continue;
        }
        n += m;
        n1 += a as f64;
        n2 += b as f64;
        observed += a as f64 * b as f64 / (m - 1.0);
    }
    (n1 > 0.0 && n2 > 0.0).then(|| 1.0 - (n - 1.0) * observed / (n1 * n2))
}

/// Every non-gold pair's current decisive votes: (pair, user, 'a' or 'b'), in vote order.
async fn decisive_votes(store: &Store, project_id: &str) -> Result<Vec<(String, String, bool)>> {
    let rows = sqlx::query(concat!(
        "SELECT j.pair_id, j.user_id, ",
        preferred_side_sql!(),
        " AS side FROM judgments j JOIN pairs p ON p.id = j.pair_id \
         WHERE j.project_id = $1 AND j.superseded_at IS NULL AND j.choice IN ('left', 'right') \
           AND p.gold IS NULL ORDER BY j.seq"
    ))
    .bind(project_id)
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            let side: String = r.try_get("side")?;
            Ok((r.try_get("pair_id")?, r.try_get("user_id")?, side == "a"))
        })
        .collect()
}

/// The project's agreement (see [`Agreement`]).
pub async fn project_agreement(store: &Store, project_id: &str) -> Result<Agreement> {
    let mut by_pair: HashMap<String, (u32, u32)> = HashMap::new();
    for (pair, _, a) in decisive_votes(store, project_id).await? {
        let e = by_pair.entry(pair).or_default();
        if a {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    Ok(agreement(&by_pair.into_values().collect::<Vec<_>>()))
}

/// One annotator of a project, as `GET /api/v1/projects/{id}/annotators` lists them.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AnnotatorQuality {
    pub user_id: String,
    pub name: String,
    /// "human" or "ai".
    pub kind: String,
    /// Current answers other than skips (gold included).
    pub labels: i64,
    pub skips: i64,
    /// Answers that picked a side (left or right).
    pub decisive: i64,
    /// Share of decisive answers that picked the left side; absent without any.
    pub left_rate: Option<f64>,
    /// Median seconds from a pair being shown to its answer; absent without answers.
    pub median_seconds: Option<f64>,
    pub gold_answered: i64,
    /// Gold answers that picked the known better completion.
    pub gold_correct: i64,
    /// Of this annotator's decisive votes on pairs someone else also voted on, paired with each other
    /// vote there, the share that agree; absent without any.
    pub agreement_rate: Option<f64>,
    /// Whether `min_gold_accuracy` stopped serving this annotator.
    pub below_gold_bar: bool,
}

/// Every annotator who answered in the project, by name.
pub async fn list_annotators(
    store: &Store,
    project_id: &str,
    min_gold_accuracy: Option<f64>,
) -> Result<Vec<AnnotatorQuality>> {
    let rows = sqlx::query(concat!(
        "SELECT u.id, u.name, u.kind, \
           COALESCE(SUM(CASE WHEN j.choice <> 'skip' THEN 1 ELSE 0 END), 0) AS labels, \
           COALESCE(SUM(CASE WHEN j.choice = 'skip' THEN 1 ELSE 0 END), 0) AS skips, \
           COALESCE(SUM(CASE WHEN j.choice = 'left' THEN 1 ELSE 0 END), 0) AS lefts, \
           COALESCE(SUM(CASE WHEN j.choice IN ('left', 'right') THEN 1 ELSE 0 END), 0) AS sided, \
           COALESCE(SUM(CASE WHEN p.gold IS NOT NULL AND j.choice <> 'skip' THEN 1 ELSE 0 END), 0) \
             AS gold_answered, \
           COALESCE(SUM(CASE WHEN p.gold IS NOT NULL AND ",
        preferred_side_sql!(),
        " = p.gold THEN 1 ELSE 0 END), 0) AS gold_correct \
         FROM judgments j JOIN users u ON u.id = j.user_id JOIN pairs p ON p.id = j.pair_id \
         WHERE j.project_id = $1 AND j.superseded_at IS NULL \
         GROUP BY u.id, u.name, u.kind ORDER BY u.name, u.id"
    ))
    .bind(project_id)
    .fetch_all(store.pool())
    .await?;

    let mut seconds: HashMap<String, Vec<f64>> = HashMap::new();
    for r in sqlx::query(
        "SELECT user_id, seconds FROM judgments WHERE project_id = $1 AND superseded_at IS NULL \
         AND choice <> 'skip'",
    )
    .bind(project_id)
    .fetch_all(store.pool())
    .await?
    {
        seconds
            .entry(r.try_get("user_id")?)
            .or_default()
            .push(r.try_get("seconds")?);
    }

    // Pairwise agreement: each of a user's votes against every other user's vote on the same pair.
    let mut by_pair: HashMap<String, Vec<(String, bool)>> = HashMap::new();
    for (pair, user, a) in decisive_votes(store, project_id).await? {
        by_pair.entry(pair).or_default().push((user, a));
    }
    let mut agree: HashMap<String, (u64, u64)> = HashMap::new();
    for votes in by_pair.values() {
        for (i, (u1, a1)) in votes.iter().enumerate() {
            for (u2, a2) in &votes[i + 1..] {
                if u1 == u2 {
                    continue;
                }
                for u in [u1, u2] {
                    let e = agree.entry(u.clone()).or_default();
                    e.0 += (a1 == a2) as u64;
                    e.1 += 1;
                }
            }
        }
    }

    rows.iter()
        .map(|r| {
            let id: String = r.try_get("id")?;
            let sided = super::int(r, "sided")?;
            let gold_answered = super::int(r, "gold_answered")?;
            let gold_correct = super::int(r, "gold_correct")?;
            Ok(AnnotatorQuality {
                name: r.try_get("name")?,
                kind: r.try_get("kind")?,
                labels: super::int(r, "labels")?,
                skips: super::int(r, "skips")?,
                decisive: sided,
                left_rate: (sided > 0)
                    .then(|| super::int(r, "lefts").unwrap_or(0) as f64 / sided as f64),
                median_seconds: seconds.get(&id).and_then(|s| super::dashboard::median(s)),
                gold_answered,
                gold_correct,
                agreement_rate: agree
                    .get(&id)
                    .filter(|e| e.1 > 0)
                    .map(|e| e.0 as f64 / e.1 as f64),
                below_gold_bar: below_gold_bar(min_gold_accuracy, gold_answered, gold_correct),
                user_id: id,
            })
        })
        .collect()
}

/// Which pairs the data browser lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, utoipa::IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PairFilter {
    /// `pending`, `labelled`, or absent for both.
    pub status: Option<String>,
    /// Only pairs with a flag (open or resolved).
    pub flagged: bool,
    /// Only pairs whose decisive votes went both ways.
    pub disagreement: bool,
    /// Only gold pairs.
    pub gold: bool,
    /// At most this many (default 50, at most 500), newest first, after `offset`.
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// One vote on a pair, in terms of the completions: "a", "b", "tie", "both_bad" or "skip".
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Vote {
    pub annotator: String,
    pub answer: String,
    pub seconds: f64,
}

/// A pair as the data browser shows it, with every current vote.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct BrowsedPair {
    pub pair_id: String,
    pub prompt: String,
    pub completion_a: String,
    pub completion_b: String,
    /// "pending" or "labelled".
    pub status: String,
    pub gold: Option<String>,
    pub held: bool,
    pub excluded: bool,
    pub flags: i64,
    pub votes: Vec<Vote>,
}

/// Votes for one side, as SQL over the current decisive judgments of pair `p`.
macro_rules! votes_for_sql {
    ($side:literal) => {
        concat!(
            "(SELECT COUNT(*) FROM judgments j WHERE j.pair_id = p.id AND j.superseded_at IS NULL AND ",
            preferred_side_sql!(),
            " = '",
            $side,
            "')"
        )
    };
}

/// The project's pairs by `filter`, newest first, each with its votes.
pub async fn browse_pairs(
    store: &Store,
    project_id: &str,
    filter: &PairFilter,
) -> Result<Vec<BrowsedPair>> {
    let status = match filter.status.as_deref() {
        None | Some("") | Some("all") => "all",
        Some(s @ ("pending" | "labelled")) => s,
        Some(other) => {
            return Err(super::StoreError::Invalid(format!(
                "status must be pending, labelled or all, not {other:?}"
            )));
        }
    };
    let rows = sqlx::query(concat!(
        "SELECT p.id, q.text AS prompt, p.completion_a, p.completion_b, p.status, p.gold, p.held, \
           p.excluded, (SELECT COUNT(*) FROM flags f WHERE f.pair_id = p.id) AS flags \
         FROM pairs p JOIN prompts q ON q.id = p.prompt_id \
         WHERE p.project_id = $1 AND ($2 = 'all' OR p.status = $2) \
           AND ($3 = 0 OR EXISTS (SELECT 1 FROM flags f WHERE f.pair_id = p.id)) \
           AND ($4 = 0 OR p.gold IS NOT NULL) \
           AND ($5 = 0 OR (",
        votes_for_sql!("a"),
        " > 0 AND ",
        votes_for_sql!("b"),
        " > 0)) ORDER BY p.created_at DESC, p.id LIMIT $6 OFFSET $7"
    ))
    .bind(project_id)
    .bind(status)
    .bind(filter.flagged as i64)
    .bind(filter.gold as i64)
    .bind(filter.disagreement as i64)
    .bind(filter.limit.unwrap_or(50).clamp(1, 500))
    .bind(filter.offset.unwrap_or(0).max(0))
    .fetch_all(store.pool())
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: String = r.try_get("id")?;
        let votes = sqlx::query(
            "SELECT u.name, j.choice, j.left_is_a, j.seconds FROM judgments j \
             JOIN users u ON u.id = j.user_id \
             WHERE j.pair_id = $1 AND j.superseded_at IS NULL ORDER BY j.seq",
        )
        .bind(&id)
        .fetch_all(store.pool())
        .await?
        .iter()
        .map(|v| {
            let choice: String = v.try_get("choice")?;
            let left_is_a = super::flag(v, "left_is_a")?;
            let preferred = choice
                .parse::<crate::domain::Choice>()
                .ok()
                .and_then(|c| super::export::preference_of(c, left_is_a, "a", "b"));
            let answer = preferred.map_or(choice, |(side, _)| side.to_string());
            Ok(Vote {
                annotator: v.try_get("name")?,
                answer,
                seconds: v.try_get("seconds")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        out.push(BrowsedPair {
            prompt: r.try_get("prompt")?,
            completion_a: r.try_get("completion_a")?,
            completion_b: r.try_get("completion_b")?,
            status: r.try_get("status")?,
            gold: r.try_get("gold")?,
            held: super::flag(r, "held")?,
            excluded: super::flag(r, "excluded")?,
            flags: super::int(r, "flags")?,
            votes,
            pair_id: id,
        });
    }
    Ok(out)
}

/// Whether `min_gold_accuracy` stops an annotator with this gold record (after `GOLD_TRIAL` answers).
pub fn below_gold_bar(bar: Option<f64>, answered: i64, correct: i64) -> bool {
    bar.is_some_and(|bar| {
        answered >= crate::domain::GOLD_TRIAL && (correct as f64) < bar * answered as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_matches_a_hand_computed_example() {
        // Four pairs, two votes each: (A, A), (A, B), (B, B), (B, B). n = 8, n_A = 3, n_B = 5,
        // Dₒ = 2 · 1 / 8, Dₑ = 2 · 15 / 56: α = 1 − 0.25 / (30 / 56) = 0.5333…
        let units = [(2, 0), (1, 1), (0, 2), (0, 2)];
        let alpha = krippendorff_alpha_binary(&units).unwrap();
        assert!(
            (alpha - (1.0 - 0.25 / (30.0 / 56.0))).abs() < 1e-12,
            "{alpha}"
        );
        // Perfect agreement is 1; a single vote per pair is not pairable.
        assert_eq!(krippendorff_alpha_binary(&[(2, 0), (0, 3)]), Some(1.0));
        assert_eq!(krippendorff_alpha_binary(&[(1, 0), (0, 1)]), None);
        // Everyone always picks A: no expected disagreement, alpha undefined.
        assert_eq!(krippendorff_alpha_binary(&[(2, 0), (3, 0)]), None);
        // Systematic disagreement is below 0.
        assert!(krippendorff_alpha_binary(&[(1, 1), (1, 1)]).unwrap() < 0.0);
    }

    #[test]
    fn agreement_counts_pairs_with_two_decisive_votes() {
        let a = agreement(&[(2, 0), (1, 1), (1, 0), (0, 3), (2, 1)]);
        assert_eq!(a.agreement_pairs, 4);
        assert_eq!(a.agreement_rate, Some(0.5));
        assert!(a.krippendorff_alpha.is_some());
        let none = agreement(&[(1, 0), (0, 1)]);
        assert_eq!(
            (
                none.agreement_pairs,
                none.agreement_rate,
                none.krippendorff_alpha
            ),
            (0, None, None)
        );
    }

    #[test]
    fn the_gold_bar_applies_after_ten_answers() {
        assert!(!below_gold_bar(Some(0.8), 9, 0));
        assert!(below_gold_bar(Some(0.8), 10, 7));
        assert!(!below_gold_bar(Some(0.8), 10, 8));
        assert!(!below_gold_bar(None, 50, 0));
    }
}
