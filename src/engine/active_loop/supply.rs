//! Keeping a project's pool of pairs filled ahead of demand. The buffer of ready pairs is sized to what
//! annotators take (answers in the last minutes × how long a round takes now, twice over, so a slow round
//! or a burst does not empty it); when fewer free pairs than that are pending and budget is left, a round
//! of prompts is drawn, the current policy generates and scores candidate pairs in one batch, and the
//! strategy's best are stored for annotation with every score that chose them. Round times are measured,
//! so a training run competing for the cores makes the buffer deeper by itself.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
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
use crate::store::stats::answering_since;

/// The window demand is measured over.
pub(super) const DEMAND_WINDOW_MS: i64 = 5 * 60 * 1000;
/// Most pairs one round acquires: bigger rounds batch better, but the first pair waits for the whole.
const MAX_ROUND: usize = 16;
/// Most ready pairs kept per project, however high the demand.
const MAX_BUFFER: usize = 256;
/// What a round of one pair is assumed to take before any was measured.
const FIRST_ROUND_SECONDS_PER_PAIR: f64 = 10.0;

/// Rounds in the making, how long rounds take, and the signal that pairs were stored.
#[derive(Default)]
pub(super) struct Supply {
    /// Per project: pairs the round being acquired will bring, and when it started.
    rounds: Mutex<HashMap<String, (usize, Instant)>>,
    /// Per project: seconds per acquired pair, averaged over recent rounds.
    pace: Mutex<HashMap<String, f64>>,
    /// Per project: the buffer the last tick aimed for, to log when it changes.
    targets: Mutex<HashMap<String, usize>>,
    /// Projects with a filling task running.
    filling: Mutex<HashSet<String>>,
    pub(super) stored: Notify,
}

/// Answers a minute annotators would give if they never waited: what they gave, or (when a starved
/// queue held them back) how many are at work times their pace, whichever is more. Paces under a
/// second (AI judges) count as one a second.
pub(super) fn demand_per_minute(
    answered_per_minute: f64,
    annotators: i64,
    seconds_each: f64,
) -> f64 {
    let unstarved = annotators.max(0) as f64 * 60.0 / seconds_each.max(1.0);
    answered_per_minute.max(unstarved)
}

/// How many ready pairs to keep: what annotators take (`answers_per_minute`) while a round of `round`
/// pairs is made (`seconds_per_pair` each), twice over, and at least `low_water`.
pub(super) fn buffer_target(
    answers_per_minute: f64,
    seconds_per_pair: f64,
    low_water: usize,
    round: usize,
) -> usize {
    let round_seconds = seconds_per_pair * round.max(1) as f64;
    let needed = (answers_per_minute / 60.0 * round_seconds * 2.0).ceil();
    (needed as usize).clamp(low_water, MAX_BUFFER.max(low_water))
}

/// Pairs the next round acquires: what the buffer lacks, at least the configured round size, at most
/// `MAX_ROUND`.
pub(super) fn round_size(target: usize, free: usize, configured: usize) -> usize {
    target
        .saturating_sub(free)
        .clamp(configured.max(1), MAX_ROUND.max(configured))
}

impl Supply {
    fn seconds_per_pair(&self, project_id: &str) -> f64 {
        let pace = self.pace.lock().expect("lock");
        pace.get(project_id)
            .copied()
            .unwrap_or(FIRST_ROUND_SECONDS_PER_PAIR)
    }

    /// Folds a finished round into the project's pace (recent rounds weigh most).
    fn record_round(&self, project_id: &str, pairs: usize, seconds: f64) {
        let per_pair = seconds / pairs.max(1) as f64;
        let mut pace = self.pace.lock().expect("lock");
        let p = pace.entry(project_id.to_string()).or_insert(per_pair);
        *p = 0.5 * *p + 0.5 * per_pair;
    }

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

/// Starts filling the project's pool in the background, unless a filling task already runs for it.
pub(super) fn spawn_fill(inner: &Arc<Inner>, engine: &EngineHandle, project: &Project) {
    if !inner
        .supply
        .filling
        .lock()
        .expect("lock")
        .insert(project.id.clone())
    {
        return;
    }
    let (inner, engine, project) = (inner.clone(), engine.clone(), project.clone());
    tokio::spawn(async move {
        if let Err(e) = fill_pool(&inner, &engine, &project).await {
            tracing::warn!(project = %project.name, error = %e, "could not acquire new pairs");
        }
        inner
            .supply
            .filling
            .lock()
            .expect("lock")
            .remove(&project.id);
    });
}

async fn fill_pool(inner: &Inner, engine: &EngineHandle, project: &Project) -> LoopResult<()> {
    let store = &inner.store;
    if let Some(budget) = project.label_budget
        && count_labels(store.pool(), &project.id).await? >= budget
    {
        return Ok(());
    }
    let free = queue::count_free_pending(store, &project.id).await? as usize;
    let now = store.clock().now_ms();
    let since = now - DEMAND_WINDOW_MS;
    let answering = answering_since(store, &project.id, since).await?;
    let per_minute = demand_per_minute(
        answering.answers as f64 / (DEMAND_WINDOW_MS / 60_000) as f64,
        answering.annotators,
        answering.mean_seconds,
    );
    let pace = inner.supply.seconds_per_pair(&project.id);
    let configured = inner.config.round_size.max(1);
    // The paper's protocol makes one round at a time with the newest policy, and no more pairs than
    // the round still needs decisive labels (ties and both-bad answers make it ask for more): no buffer.
    let target = if inner.config.wait_for_training {
        let wanting = super::schedule::decisive_until_due(inner, project).await?;
        wanting.map_or(configured, |w| configured.min(w as usize))
    } else {
        buffer_target(per_minute, pace, inner.config.low_water, configured)
    };
    let previous = inner
        .supply
        .targets
        .lock()
        .expect("lock")
        .insert(project.id.clone(), target);
    if previous != Some(target) {
        tracing::info!(project = %project.name, target, answers_per_minute = per_minute,
            seconds_per_pair = pace, "buffer of ready pairs resized");
    }
    if free >= target {
        return Ok(());
    }
    if inner.config.wait_for_training && training_pending(inner, project).await? {
        return Ok(());
    }
    let Some(policy) = super::current_policy(store, Some(engine), &project.id).await? else {
        return Ok(());
    };
    let m = if inner.config.wait_for_training {
        target - free // target > free here
    } else {
        round_size(target, free, configured)
    };
    let s = &project.settings;
    let wanted = s.oversample.prompts_to_draw(project.strategy, m);
    let counts = count_pairs(store, &project.id).await?;
    let seed = round_seed(s.seed, (counts.pending + counts.labelled) as u64);
    let prompts = queue::draw_prompts(store, &project.id, wanted as i64, seed).await?;
    if prompts.is_empty() {
        return Ok(());
    }
    // People are answering and the buffer is below what keeps them supplied through a round: while this
    // round is made it gets the cores before a training run's next step (cores.rs). The paper's protocol
    // (simulate) has nobody waiting.
    let short = (!inner.config.wait_for_training && answering.people > 0)
        .then(|| inner.cores.short_while(&project.id));
    let req = AcquireRequest {
        policy: policy.clone(),
        prompts: prompts.iter().map(|p| p.text.clone()).collect(),
        m,
        settings: s.clone(),
        strategy: project.strategy,
        seed,
    };
    let round = RoundGuard::start(&inner.supply, &project.id, m);
    let started = Instant::now();
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
            ends_a: p.ends_a,
            ends_b: p.ends_b,
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
    drop((round, short));
    let seconds = started.elapsed().as_secs_f64();
    inner
        .supply
        .record_round(&project.id, generated.len(), seconds);
    inner.supply.stored.notify_waiters();
    tracing::info!(project = %project.name, pairs = generated.len(), seconds,
        version = %policy.version_id, free_before = free, target, "acquired pairs");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::round_seed;

    use super::{buffer_target, round_size};

    #[test]
    fn the_buffer_follows_demand_and_round_time() {
        // Nobody answering: the low-water mark.
        assert_eq!(buffer_target(0.0, 10.0, 4, 4), 4);
        // Two people at 12 a minute, a 4-pair round at 12 s a pair (48 s): 24 / 60 × 48 × 2 = 38.4.
        assert_eq!(buffer_target(24.0, 12.0, 4, 4), 39);
        // Slower rounds (a training run on the same cores) ask for more.
        assert!(buffer_target(24.0, 30.0, 4, 4) > buffer_target(24.0, 12.0, 4, 4));
        // Capped.
        assert_eq!(buffer_target(10_000.0, 60.0, 4, 4), super::MAX_BUFFER);
    }

    #[test]
    fn demand_counts_annotators_at_their_pace_when_the_queue_starved_them() {
        use super::demand_per_minute;
        // Two people who take 5 s a pair but answered only 3 a minute (they waited): 24 a minute.
        assert_eq!(demand_per_minute(3.0, 2, 5.0), 24.0);
        // Nobody: nothing.
        assert_eq!(demand_per_minute(0.0, 0, 0.0), 0.0);
        // A judge answering instantly counts as one a second, not infinity.
        assert_eq!(demand_per_minute(10.0, 1, 0.0), 60.0);
        // What was answered is a floor.
        assert_eq!(demand_per_minute(30.0, 1, 10.0), 30.0);
    }

    #[test]
    fn rounds_grow_to_what_the_buffer_lacks() {
        assert_eq!(round_size(4, 3, 4), 4, "at least the configured round");
        assert_eq!(round_size(14, 4, 4), 10);
        assert_eq!(round_size(200, 0, 4), super::MAX_ROUND);
        assert_eq!(round_size(4, 10, 4), 4);
    }

    #[test]
    fn every_round_has_its_own_repeatable_seed() {
        assert_eq!(round_seed(7, 12), round_seed(7, 12));
        assert_ne!(round_seed(7, 12), round_seed(7, 16));
        assert_ne!(round_seed(7, 12), round_seed(8, 12));
        assert_eq!(round_seed(0, 5), 5);
    }
}
