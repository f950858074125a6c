//! Deciding when a project's DPO run is due and starting it: a queued run (from `POST /train` or a
//! restart's retry) goes first; otherwise a run is due once `train_every` decisive labels (left or right:
//! ties, both-bad and skips teach DPO nothing) arrived since the last trained version saw, or since the
//! last automatic run started (so a failed run is not retried at once); and once more when the budget is
//! spent with decisive labels no run has seen.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::Inner;
use super::error::LoopResult;
use crate::engine::EngineHandle;
use crate::store::leases::count_labels;
use crate::store::projects::Project;
use crate::store::stats::count_decisive_labels;
use crate::store::training::{self, TrainingRun};

/// What the loop knows of runs in flight.
#[derive(Default)]
pub(super) struct Runs {
    /// Cancel flags of the runs now training, by run id.
    cancels: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Projects with a run in progress.
    training: Mutex<HashSet<String>>,
    /// Decisive label count at which each project's last automatic run started, so that a run that
    /// fails is not started again until `train_every` more arrive.
    auto_started_at: Mutex<HashMap<String, i64>>,
}

impl Runs {
    pub(super) fn is_training(&self, project_id: &str) -> bool {
        self.training.lock().expect("lock").contains(project_id)
    }

    /// Asks a running run to stop between two steps; false when it is not running here.
    pub(super) fn cancel(&self, run_id: &str) -> bool {
        match self.cancels.lock().expect("lock").get(run_id) {
            Some(flag) => {
                flag.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// The project no longer has a run in progress (and `run_id`, when given, no cancel flag).
    fn finish(&self, project_id: &str, run_id: Option<&str>) {
        self.training.lock().expect("lock").remove(project_id);
        if let Some(id) = run_id {
            self.cancels.lock().expect("lock").remove(id);
        }
    }

    /// A cancel flag for a run about to train.
    pub(super) fn cancel_flag(&self, run_id: &str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.cancels
            .lock()
            .expect("lock")
            .insert(run_id.to_string(), flag.clone());
        flag
    }
}

/// Whether an automatic run is due: `every` (`train_every`, 0 = never) decisive labels since the later
/// of what the last trained version saw and the count the last automatic run started at; or, once the
/// budget is spent, any decisive label since then (the last, shorter round).
pub(super) fn run_due(
    every: u32,
    decisive: i64,
    version_saw: i64,
    last_auto_start: i64,
    budget_spent: bool,
) -> bool {
    let new = decisive - version_saw.max(last_auto_start);
    every > 0 && (new >= every as i64 || (budget_spent && new > 0))
}

/// Decisive labels still wanting before the next automatic run is due (at least 1); `None` when the
/// project trains only on demand.
pub(super) async fn decisive_until_due(
    inner: &Inner,
    project: &Project,
) -> LoopResult<Option<i64>> {
    let every = project.settings.train_every as i64;
    if every == 0 {
        return Ok(None);
    }
    let (decisive, since) = decisive_and_round_start(inner, project).await?;
    Ok(Some((every - (decisive - since)).max(1)))
}

/// The project's decisive labels, and the count its current round started from: the later of what the
/// last trained version saw and what the last automatic run started at.
async fn decisive_and_round_start(inner: &Inner, project: &Project) -> LoopResult<(i64, i64)> {
    let decisive = count_decisive_labels(&inner.store, &project.id).await?;
    let seen = training::latest_trained_version(&inner.store, &project.id)
        .await?
        .map_or(0, |v| v.decisive_seen);
    let started = inner
        .runs
        .auto_started_at
        .lock()
        .expect("lock")
        .get(&project.id)
        .copied()
        .unwrap_or(0);
    Ok((decisive, seen.max(started)))
}

/// The decisive label count, when an automatic run is due for the project.
async fn automatic_run_due(inner: &Inner, project: &Project) -> LoopResult<Option<i64>> {
    if project.settings.train_every == 0 {
        return Ok(None);
    }
    let (decisive, since) = decisive_and_round_start(inner, project).await?;
    let budget_spent = match project.label_budget {
        Some(budget) => count_labels(inner.store.pool(), &project.id).await? >= budget,
        None => false,
    };
    let due = run_due(
        project.settings.train_every,
        decisive,
        since,
        since,
        budget_spent,
    );
    Ok(due.then_some(decisive))
}

/// Whether the project has a run going, queued, or due by its label count.
pub(super) async fn training_pending(inner: &Inner, project: &Project) -> LoopResult<bool> {
    if inner.runs.is_training(&project.id)
        || !training::queued_training_runs(&inner.store, &project.id)
            .await?
            .is_empty()
    {
        return Ok(true);
    }
    Ok(automatic_run_due(inner, project).await?.is_some())
}

/// Starts the project's next run in the background when one is queued or due.
pub(super) async fn maybe_train(
    inner: &Arc<Inner>,
    engine: &EngineHandle,
    project: &Project,
) -> LoopResult<()> {
    // Claimed before deciding, so a filling task that waits for training never sees a gap between
    // "due" and "running".
    if !inner
        .runs
        .training
        .lock()
        .expect("lock")
        .insert(project.id.clone())
    {
        return Ok(());
    }
    let run = match next_run(inner, engine, project).await {
        Ok(Some(run)) => run,
        other => {
            inner.runs.finish(&project.id, None);
            return other.map(|_| ());
        }
    };
    let (inner, engine, project) = (inner.clone(), engine.clone(), project.clone());
    tokio::spawn(async move {
        run_in_background(&inner, &engine, &project, &run).await;
    });
    Ok(())
}

/// The queued run to start, or a new automatic one when it is due.
async fn next_run(
    inner: &Inner,
    engine: &EngineHandle,
    project: &Project,
) -> LoopResult<Option<TrainingRun>> {
    let queued = training::queued_training_runs(&inner.store, &project.id).await?;
    if let Some(run) = queued.into_iter().next() {
        return Ok(Some(run));
    }
    let Some(decisive) = automatic_run_due(inner, project).await? else {
        return Ok(None);
    };
    inner
        .runs
        .auto_started_at
        .lock()
        .expect("lock")
        .insert(project.id.clone(), decisive);
    let current = super::current_policy(&inner.store, Some(engine), &project.id).await?;
    let run = training::create_training_run(
        &inner.store,
        &project.id,
        current.as_ref().map(|p| p.version_id.as_str()),
    )
    .await?;
    Ok(Some(run))
}

async fn run_in_background(
    inner: &Arc<Inner>,
    engine: &EngineHandle,
    project: &Project,
    run: &TrainingRun,
) {
    if let Err(e) = super::record::run_training(inner, engine, project, run).await {
        tracing::error!(run = %run.id, error = %e, "training run could not be recorded");
    }
    inner.runs.finish(&project.id, Some(&run.id));
    inner.wake.notify_one();
}

#[cfg(test)]
mod tests {
    use super::run_due;

    #[test]
    fn a_run_is_due_every_train_every_decisive_labels() {
        assert!(!run_due(0, 1_000, 0, 0, false), "0 means only on demand");
        assert!(!run_due(32, 31, 0, 0, false));
        assert!(run_due(32, 32, 0, 0, false));
        // Counted from the labels the last trained version saw.
        assert!(!run_due(32, 63, 32, 0, false));
        assert!(run_due(32, 64, 32, 0, false));
        // A failed automatic run at 64 waits for 32 more labels, not just for the version's 32.
        assert!(!run_due(32, 70, 32, 64, false));
        assert!(run_due(32, 96, 32, 64, false));
    }

    #[test]
    fn a_spent_budget_trains_once_more_on_what_is_left() {
        assert!(run_due(32, 40, 32, 0, true), "8 decisive labels no run saw");
        assert!(
            !run_due(32, 40, 40, 0, true),
            "all seen: nothing more to learn"
        );
        assert!(
            !run_due(32, 40, 32, 40, true),
            "that last run already started"
        );
        assert!(!run_due(0, 40, 32, 0, true), "on demand only");
    }
}
