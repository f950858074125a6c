//! Export of judgments as NDJSON, streamed: rows go out as they are read, so memory stays flat however
//! large the project.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use utoipa::ToSchema;

use super::{Result, Store, StoreError};
use crate::domain::Choice;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// {"prompt", "chosen", "rejected"}: what TRL's DPOTrainer reads. One row per pair, by the
    /// majority of its decisive votes (a tie of votes: no row); gold and excluded pairs left out.
    #[default]
    Trl,
    /// Every judgment (every vote) with its ids, annotator, raw choice, display order, model version,
    /// score, and the pair's gold answer and review exclusion.
    Full,
}

/// Which annotators' judgments to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AnnotatorFilter {
    #[default]
    All,
    Human,
    Ai,
}

const EXPORT_SQL: &str = "SELECT j.id AS judgment_id, j.pair_id, j.lease_id, j.choice, j.left_is_a, \
       j.rationale, j.seconds, j.created_at, j.superseded_at, \
       u.id AS user_id, u.name AS annotator, u.kind AS annotator_kind, \
       p.completion_a, p.completion_b, p.model_version_id, p.strategy, p.score, p.score_parts, \
       p.source, p.meta AS pair_meta, p.gold, p.excluded, q.text AS prompt, \
       q.external_id AS prompt_external_id \
     FROM judgments j JOIN users u ON u.id = j.user_id JOIN pairs p ON p.id = j.pair_id \
       JOIN prompts q ON q.id = p.prompt_id \
     WHERE j.project_id = $1 AND ($2 = 'all' OR u.kind = $2) \
     ORDER BY j.seq";

/// TRL's rows: one per pair, from the current decisive votes of the chosen annotators, in the order of
/// each pair's first vote; `export_line` keeps the pairs with a majority. Gold pairs and pairs
/// excluded on review are left out.
const EXPORT_TRL_SQL: &str = concat!(
    "SELECT q.text AS prompt, p.completion_a, p.completion_b, \
       SUM(CASE WHEN ",
    preferred_side_sql!(),
    " = 'a' THEN 1 ELSE 0 END) AS for_a, \
       SUM(CASE WHEN ",
    preferred_side_sql!(),
    " = 'b' THEN 1 ELSE 0 END) AS for_b \
     FROM judgments j JOIN users u ON u.id = j.user_id JOIN pairs p ON p.id = j.pair_id \
       JOIN prompts q ON q.id = p.prompt_id \
     WHERE j.project_id = $1 AND ($2 = 'all' OR u.kind = $2) AND j.superseded_at IS NULL \
       AND j.choice IN ('left', 'right') AND p.gold IS NULL AND p.excluded = 0 \
     GROUP BY p.id, q.text, p.completion_a, p.completion_b \
     ORDER BY MIN(j.seq)"
);

fn choice_of(row: &AnyRow) -> Result<Choice> {
    let raw: String = row.try_get("choice")?;
    Ok(raw.parse()?)
}

/// (chosen, rejected) for a decisive answer, mapping the side shown on the left back to completion A or B;
/// `None` for ties, both-bad and skips.
pub fn preference_of<T>(choice: Choice, left_is_a: bool, a: T, b: T) -> Option<(T, T)> {
    let a_wins = match choice {
        Choice::Left => left_is_a,
        Choice::Right => !left_is_a,
        _ => return None,
    };
    Some(if a_wins { (a, b) } else { (b, a) })
}

/// One NDJSON line for a judgment row, or `None` when the format leaves that judgment out.
fn export_line(format: ExportFormat, row: &AnyRow) -> Result<Option<String>> {
    let a: String = row.try_get("completion_a")?;
    let b: String = row.try_get("completion_b")?;
    let prompt: String = row.try_get("prompt")?;
    let value = match format {
        ExportFormat::Trl => {
            // The majority of the pair's decisive votes; a tie of votes makes no row.
            let (for_a, for_b) = (super::int(row, "for_a")?, super::int(row, "for_b")?);
            let (chosen, rejected) = match for_a.cmp(&for_b) {
                std::cmp::Ordering::Greater => (a, b),
                std::cmp::Ordering::Less => (b, a),
                std::cmp::Ordering::Equal => return Ok(None),
            };
            serde_json::json!({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        }
        ExportFormat::Full => {
            let choice = choice_of(row)?;
            let left_is_a = super::flag(row, "left_is_a")?;
            let superseded: Option<i64> = row.try_get("superseded_at")?;
            let winner = preference_of(choice, left_is_a, "a", "b").map(|(w, _)| w);
            let score_parts: Option<String> = row.try_get("score_parts")?;
            let pair_meta: String = row.try_get("pair_meta")?;
            serde_json::json!({
                "judgment_id": row.try_get::<String, _>("judgment_id")?,
                "pair_id": row.try_get::<String, _>("pair_id")?,
                "lease_id": row.try_get::<String, _>("lease_id")?,
                "prompt": prompt,
                "prompt_id": row.try_get::<Option<String>, _>("prompt_external_id")?,
                "completion_a": a,
                "completion_b": b,
                "choice": choice.as_str(),
                "winner": winner,
                "left": if left_is_a { "a" } else { "b" },
                "rationale": row.try_get::<Option<String>, _>("rationale")?,
                "seconds": row.try_get::<f64, _>("seconds")?,
                "annotator": row.try_get::<String, _>("annotator")?,
                "annotator_id": row.try_get::<String, _>("user_id")?,
                "annotator_kind": row.try_get::<String, _>("annotator_kind")?,
                "source": row.try_get::<String, _>("source")?,
                "model_version": row.try_get::<Option<String>, _>("model_version_id")?,
                "strategy": row.try_get::<Option<String>, _>("strategy")?,
                "acquisition_score": row.try_get::<Option<f64>, _>("score")?,
                "score_parts": score_parts.and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok()),
                "pair_meta": serde_json::from_str::<serde_json::Value>(&pair_meta).unwrap_or_default(),
                "gold": row.try_get::<Option<String>, _>("gold")?,
                "excluded": super::flag(row, "excluded")?,
                "created_at": super::rfc3339(row.try_get("created_at")?),
                "superseded_at": superseded.map(super::rfc3339),
            })
        }
    };
    let mut line = value.to_string();
    line.push('\n');
    Ok(Some(line))
}

/// Starts streaming a project's judgments. Lines arrive on the receiver in batches of about 64 KiB;
/// the channel is bounded, so a slow reader slows the query instead of filling memory.
pub fn export_judgments(
    store: &Store,
    project_id: &str,
    format: ExportFormat,
    filter: AnnotatorFilter,
) -> mpsc::Receiver<Result<Bytes>> {
    let (tx, rx) = mpsc::channel(4);
    let store = store.clone();
    let project_id = project_id.to_string();
    let filter = match filter {
        AnnotatorFilter::All => "all",
        AnnotatorFilter::Human => "human",
        AnnotatorFilter::Ai => "ai",
    };
    tokio::spawn(async move {
        let sql = match format {
            ExportFormat::Trl => EXPORT_TRL_SQL,
            ExportFormat::Full => EXPORT_SQL,
        };
        let mut rows = sqlx::query(sql)
            .bind(&project_id)
            .bind(filter)
            .fetch(store.pool());
        let mut buf = String::new();
        while let Some(row) = rows.next().await {
            let line = row
                .map_err(StoreError::from)
                .and_then(|row| export_line(format, &row));
            match line {
                Ok(Some(line)) => buf.push_str(&line),
                Ok(None) => {}
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
            if buf.len() >= 64 * 1024
                && tx
                    .send(Ok(Bytes::from(std::mem::take(&mut buf))))
                    .await
                    .is_err()
            {
                return; // the reader went away
            }
        }
        if !buf.is_empty() {
            let _ = tx.send(Ok(Bytes::from(buf))).await;
        }
    });
    rx
}
