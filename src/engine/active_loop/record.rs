//! One training run from start to record: train on every labelled pair, store each step as it happens,
//! record the new version, evaluate it against the reference, install it when it beats the version
//! serving (or always, when the project says so), and re-score the free pending pairs with it.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::Inner;
use super::cores::training_threads;
use super::error::LoopResult;
use crate::domain::{JudgeKind, VersionMetrics};
use crate::engine::{EngineError, EngineHandle, PolicyRef, RescoreRequest, TrainRequest};
use crate::learn::Progress;
use crate::learn::candidates::PairText;
use crate::store::judges::list_judges;
use crate::store::leases::count_labels;
use crate::store::projects::Project;
use crate::store::queue;
use crate::store::stats::{answering_since, count_decisive_labels};
use crate::store::training::{self, NewVersion, RunStatus, TrainingRun};
use crate::store::{Store, new_id};

pub(super) async fn run_training(
    inner: &Arc<Inner>,
    engine: &EngineHandle,
    project: &Project,
    run: &TrainingRun,
) -> LoopResult<()> {
    let store = &inner.store;
    let preferences = queue::training_preferences(store, &project.id).await?;
    let labels = count_labels(store.pool(), &project.id).await?;
    let decisive = count_decisive_labels(store, &project.id).await?;
    if preferences.iter().all(|p| p.eval) {
        let msg = "no labelled pairs to train on: ties, both-bad and skips teach no preference";
        training::finish_training_run(store, &run.id, RunStatus::Failed, Some(msg), None).await?;
        return Ok(());
    }
    let current = super::current_policy(store, Some(engine), &project.id)
        .await?
        .expect("engine present");
    let cancel = inner.runs.cancel_flag(&run.id);
    training::mark_run_started(store, &run.id).await?;

    let (tx, rx) = mpsc::unbounded_channel::<Progress>();
    let recorder = tokio::spawn(record_steps(store.clone(), run.id.clone(), rx));
    let version_id = new_id();
    // People labelling now: the run leaves cores to the rounds made for them (cores.rs).
    let since = store.clock().now_ms() - super::supply::DEMAND_WINDOW_MS;
    let people = answering_since(store, &project.id, since).await?.people > 0;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = training_threads(people && !inner.config.wait_for_training, cores);
    if let Some(n) = threads {
        tracing::info!(project = %project.name, threads = n, cores,
            "training on part of the cores while people label");
    }
    let req = TrainRequest {
        project_id: project.id.clone(),
        current: current.clone(),
        preferences,
        settings: project.settings.clone(),
        version_id: version_id.clone(),
        threads,
    };
    let cores = inner.cores.clone();
    let hold = Arc::new(move || cores.hold_training());
    let result = engine.train(req, tx, cancel, hold).await;
    let _ = recorder.await;
    let done = match result {
        Ok(done) => done,
        Err(e) => {
            let (status, error) = match e {
                EngineError::Cancelled => (RunStatus::Cancelled, "cancelled".to_string()),
                other => (RunStatus::Failed, other.to_string()),
            };
            training::finish_training_run(store, &run.id, status, Some(&error), None).await?;
            return Ok(());
        }
    };
    training::create_model_version(
        store,
        &NewVersion {
            id: &version_id,
            project_id: Some(&project.id),
            parent_id: Some(&current.version_id),
            path: &done.path,
            labels_seen: labels,
            decisive_seen: decisive,
            trained: done.metrics,
            installed: false,
        },
    )
    .await?;
    training::record_run_result(store, &run.id, done.steps, &done.metrics).await?;
    tracing::info!(project = %project.name, version = %version_id, steps = done.steps, "new model version");
    let policy = PolicyRef {
        version_id,
        path: done.path,
    };
    // The run ends once its version is judged: a client that sees "succeeded" sees the decision too.
    if let Err(e) = evaluate_version(inner, engine, project, &policy).await {
        tracing::warn!(project = %project.name, error = %e, "evaluating the new version failed");
    }
    let new = training::get_model_version(store, &policy.version_id).await?;
    let serving = training::latest_project_version(store, &project.id).await?;
    let verdict = if project.settings.install_only_if_better {
        improvement(&new.metrics, serving.as_ref().map(|v| &v.metrics))
    } else {
        Ok(())
    };
    match &verdict {
        Ok(()) => training::install_version(store, &policy.version_id).await?,
        Err(reason) => {
            training::reject_version(store, &policy.version_id, reason).await?;
            tracing::info!(project = %project.name, version = %policy.version_id, %reason, "new version not installed");
        }
    }
    training::finish_training_run(
        store,
        &run.id,
        RunStatus::Succeeded,
        None,
        Some(&policy.version_id),
    )
    .await?;
    if verdict.is_ok()
        && let Err(e) = rescore_open_pairs(inner, engine, project, &policy).await
    {
        tracing::warn!(project = %project.name, error = %e, "re-scoring after training failed");
    }
    Ok(())
}

/// What a version chance-level against the reference scores, by either measure: the reference itself
/// (whose implicit rewards are all zero) serves until a version beats it.
const CHANCE: f64 = 0.5;

/// Whether a new version beats the one serving (`None`: the reference): by win rate against the reference
/// when the new version has one, else by held-out DPO accuracy, else (nothing to judge by) it does.
/// `Err` says why it does not.
pub(super) fn improvement(
    new: &VersionMetrics,
    serving: Option<&VersionMetrics>,
) -> Result<(), String> {
    let (what, new_score, old_score) = if let Some(win) = new.win {
        let old = serving.and_then(|m| m.win).map_or(CHANCE, |w| w.win_rate);
        ("win rate against the reference", win.win_rate, old)
    } else if let Some(eval) = new.trained.eval {
        let old = serving
            .and_then(|m| m.trained.eval)
            .map_or(CHANCE, |e| e.rewards.accuracies);
        ("held-out DPO accuracy", eval.rewards.accuracies, old)
    } else {
        return Ok(());
    };
    if new_score > old_score {
        Ok(())
    } else {
        Err(format!(
            "not installed: its {what} {new_score:.3} is not above the serving version's {old_score:.3}"
        ))
    }
}

/// Stores every optimizer step as the trainer reports it, until the run ends.
async fn record_steps(store: Store, run_id: String, mut rx: mpsc::UnboundedReceiver<Progress>) {
    while let Some(p) = rx.recv().await {
        if let Progress::Step(step) = p
            && let Err(e) = training::record_run_step(&store, &run_id, &step).await
        {
            tracing::warn!(run = %run_id, error = %e, "could not record a training step");
        }
    }
}

/// Scores every free pending pair with the new version; pairs leased meanwhile keep their old score.
async fn rescore_open_pairs(
    inner: &Inner,
    engine: &EngineHandle,
    project: &Project,
    policy: &PolicyRef,
) -> LoopResult<()> {
    let open = queue::open_pairs(&inner.store, &project.id).await?;
    if open.is_empty() {
        return Ok(());
    }
    let req = RescoreRequest {
        policy: policy.clone(),
        pairs: open
            .iter()
            .map(|p| PairText {
                prompt: p.prompt.clone(),
                a: p.completion_a.clone(),
                b: p.completion_b.clone(),
                ends_a: p.ends_a,
                ends_b: p.ends_b,
            })
            .collect(),
        settings: project.settings.clone(),
        strategy: project.strategy,
    };
    let scores = engine.rescore(req).await?;
    let updates: Vec<_> = open.iter().map(|p| p.id.clone()).zip(scores).collect();
    let n =
        queue::rescore_pairs(&inner.store, &policy.version_id, project.strategy, &updates).await?;
    tracing::info!(project = %project.name, pairs = n, version = %policy.version_id, "re-scored pending pairs");
    Ok(())
}

/// The win rate of a new version against the reference on the project's eval prompts, stored with the
/// version; skipped when the project has no eval prompts or no judge.
async fn evaluate_version(
    inner: &Inner,
    engine: &EngineHandle,
    project: &Project,
    policy: &PolicyRef,
) -> LoopResult<()> {
    let prompts = queue::eval_prompts(
        &inner.store,
        &project.id,
        project.settings.eval_prompts as i64,
    )
    .await?;
    let judged = list_judges(&inner.store, &project.id)
        .await?
        .iter()
        .any(|j| j.kind == JudgeKind::Sentiment);
    if prompts.is_empty() || !judged {
        return Ok(());
    }
    let s = &project.settings;
    let result = crate::engine::evaluate::win_rate(
        engine,
        policy,
        &prompts,
        s.completions.max_new_tokens as usize,
        s.seed,
        s.chat_template,
        &inner.judges.sentiment,
    )
    .await?;
    training::set_version_win_rate(&inner.store, &policy.version_id, &result).await?;
    tracing::info!(project = %project.name, version = %policy.version_id, win_rate = result.win_rate, "evaluated");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::improvement;
    use crate::domain::{EvalMetrics, RewardStats, TrainedMetrics, VersionMetrics, WinRate};

    fn version(win_rate: Option<f64>, accuracy: Option<f64>) -> VersionMetrics {
        VersionMetrics {
            trained: TrainedMetrics {
                last_step: None,
                eval: accuracy.map(|a| EvalMetrics {
                    step: 1,
                    pairs: 8,
                    loss: 0.6,
                    rewards: RewardStats {
                        accuracies: a,
                        ..Default::default()
                    },
                }),
            },
            win: win_rate.map(|w| WinRate {
                win_rate: w,
                ..WinRate::from_counts(32, 0, 32, 0.0)
            }),
        }
    }

    #[test]
    fn a_version_serves_only_when_it_beats_the_one_serving() {
        // Against the reference, chance is the bar.
        assert!(improvement(&version(Some(0.56), None), None).is_ok());
        let even = improvement(&version(Some(0.5), None), None).unwrap_err();
        assert!(
            even.contains("win rate against the reference 0.500"),
            "{even}"
        );
        // Against a trained version, its own win rate is.
        let serving = version(Some(0.61), Some(0.9));
        assert!(improvement(&version(Some(0.6), Some(1.0)), Some(&serving)).is_err());
        assert!(improvement(&version(Some(0.62), Some(0.1)), Some(&serving)).is_ok());
        // Without a win rate, held-out accuracy decides.
        assert!(improvement(&version(None, Some(0.75)), Some(&serving)).is_err());
        assert!(improvement(&version(None, Some(0.95)), Some(&serving)).is_ok());
        assert!(improvement(&version(None, Some(0.6)), None).is_ok());
        // Nothing to judge by: the new version serves.
        assert!(improvement(&version(None, None), Some(&serving)).is_ok());
    }
}
