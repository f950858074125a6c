//! Keeping a project's pool of pairs filled: when fewer free pairs than the low-water mark are pending and
//! budget is left, a round of prompts is drawn, the current policy generates and scores candidate pairs,
//! and the strategy's best are stored for annotation with every score that chose them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::Notify;

use super::Inner;
use super::error::LoopResult;
use super::schedule::training_pending;
use crate::domain::ScoreParts;
use crate::engine::{AcquireRequest, EngineError, EngineHandle};
use crate::store::items::count_pairs;
use crate::store::leases::count_labels;
use crate::store::projects::Project;
use crate::store::queue::{self, GeneratedPair};

/// Rounds in the making, and the signal that pairs were stored.
#[derive(Default)]
pub(super) struct Supply {
    /// Per project: pairs the round being acquired will bring, and when it started.
    rounds: Mutex<HashMap<String, (usize, Instant)>>,
    pub(super) stored: Notify,
}

impl Supply {
    /// The project's round in the making: (pairs it brings, seconds so far).
    pub(super) fn round(&self, project_id: &str) -> Option<(usize, f64)> {
        let rounds = self.rounds.lock().expect("lock");
        rounds
            .get(project_id)
            .map(|(n, since)| (*n, since.elapsed().as_secs_f64()))
    }
}

/// Marks a round in the making for as long as it lives.
struct RoundGuard<'a> {
    supply: &'a Supply,
    project_id: String,
}

impl<'a> RoundGuard<'a> {
    fn start(supply: &'a Supply, project_id: &str, pairs: usize) -> Self {
        supply
            .rounds
            .lock()
            .expect("lock")
            .insert(project_id.to_string(), (pairs, Instant::now()));
        RoundGuard {
            supply,
            project_id: project_id.to_string(),
        }
    }
}

impl Drop for RoundGuard<'_> {
    fn drop(&mut self) {
        self.supply
            .rounds
            .lock()
            .expect("lock")
            .remove(&self.project_id);
    }
}

/// A new seed per round, fixed by the project's seed and how many pairs it has had so far.
pub(super) fn round_seed(project_seed: u64, pairs_so_far: u64) -> u64 {
    project_seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(pairs_so_far)
}

pub(super) async fn fill_pool(
    inner: &Inner,
    engine: &EngineHandle,
    project: &Project,
) -> LoopResult<()> {
    let store = &inner.store;
    if let Some(budget) = project.label_budget
        && count_labels(store.pool(), &project.id).await? >= budget
    {
        return Ok(());
    }
    let free = queue::count_free_pending(store, &project.id).await? as usize;
    if free >= inner.config.low_water {
        return Ok(());
    }
    if inner.config.wait_for_training && training_pending(inner, project).await? {
        return Ok(());
    }
    let Some(policy) = super::current_policy(store, Some(engine), &project.id).await? else {
        return Ok(());
    };
    let m = inner.config.round_size.max(1);
    let s = &project.settings;
    let wanted = s.oversample.prompts_to_draw(project.strategy, m);
    let prompts = queue::draw_prompts(store, &project.id, wanted as i64).await?;
    if prompts.is_empty() {
        return Ok(());
    }
    let counts = count_pairs(store, &project.id).await?;
    let req = AcquireRequest {
        policy: policy.clone(),
        prompts: prompts.iter().map(|p| p.text.clone()).collect(),
        m,
        settings: s.clone(),
        strategy: project.strategy,
        seed: round_seed(s.seed, (counts.pending + counts.labelled) as u64),
    };
    let round = RoundGuard::start(&inner.supply, &project.id, m);
    let pairs = match engine.acquire(req).await {
        Ok(p) => p,
        // The model thread is full of other work: the next tick tries again.
        Err(EngineError::Busy) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let n = pairs.len().max(1) as f64;
    let generated: Vec<GeneratedPair> = pairs
        .iter()
        .map(|p| GeneratedPair {
            prompt_id: prompts[p.prompt_index].id.clone(),
            completion_a: p.completion_a.clone(),
            completion_b: p.completion_b.clone(),
            model_version_id: policy.version_id.clone(),
            score_parts: ScoreParts {
                strategy: project.strategy,
                scores: p.scores,
                rank: Some(p.rank),
            },
            tie_key: p.rank as f64 / n,
        })
        .collect();
    queue::insert_generated_pairs(store, &project.id, &generated).await?;
    drop(round);
    inner.supply.stored.notify_waiters();
    tracing::info!(project = %project.name, pairs = generated.len(), version = %policy.version_id, "acquired pairs");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::round_seed;

    #[test]
    fn every_round_has_its_own_repeatable_seed() {
        assert_eq!(round_seed(7, 12), round_seed(7, 12));
        assert_ne!(round_seed(7, 12), round_seed(7, 16));
        assert_ne!(round_seed(7, 12), round_seed(8, 12));
        assert_eq!(round_seed(0, 5), 5);
    }
}
