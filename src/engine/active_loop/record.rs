//! One training run from start to record: train on every labelled pair, store each step as it happens,
//! record the new version, evaluate it against the reference, and re-score the free pending pairs with it.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::Inner;
use super::error::LoopResult;
use crate::domain::JudgeKind;
use crate::engine::{EngineError, EngineHandle, PolicyRef, RescoreRequest, TrainRequest};
use crate::learn::Progress;
use crate::store::judges::list_judges;
use crate::store::leases::count_labels;
use crate::store::projects::Project;
use crate::store::queue;
use crate::store::training::{self, RunStatus, TrainingRun};
use crate::store::{Store, new_id};

/// Most held-out prompts one evaluation uses.
const MAX_EVAL_PROMPTS: i64 = 64;

pub(super) async fn run_training(
    inner: &Arc<Inner>,
    engine: &EngineHandle,
    project: &Project,
    run: &TrainingRun,
) -> LoopResult<()> {
    let store = &inner.store;
    let preferences = queue::training_preferences(store, &project.id).await?;
    let labels = count_labels(store.pool(), &project.id).await?;
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
    let req = TrainRequest {
        project_id: project.id.clone(),
        current: current.clone(),
        preferences,
        settings: project.settings.clone(),
        version_id: version_id.clone(),
    };
    let result = engine.train(req, tx, cancel).await;
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
        &version_id,
        Some(&project.id),
        Some(&current.version_id),
        &done.path,
        labels,
        done.metrics,
    )
    .await?;
    training::record_run_result(store, &run.id, done.steps, &done.metrics).await?;
    training::finish_training_run(
        store,
        &run.id,
        RunStatus::Succeeded,
        None,
        Some(&version_id),
    )
    .await?;
    tracing::info!(project = %project.name, version = %version_id, steps = done.steps, "new model version");
    let policy = PolicyRef {
        version_id,
        path: done.path,
    };
    if let Err(e) = evaluate_version(inner, engine, project, &policy).await {
        tracing::warn!(project = %project.name, error = %e, "evaluating the new version failed");
    }
    if let Err(e) = rescore_open_pairs(inner, engine, project, &policy).await {
        tracing::warn!(project = %project.name, error = %e, "re-scoring after training failed");
    }
    Ok(())
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
            .map(|p| {
                (
                    p.prompt.clone(),
                    p.completion_a.clone(),
                    p.completion_b.clone(),
                )
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
    let prompts = queue::eval_prompts(&inner.store, &project.id, MAX_EVAL_PROMPTS).await?;
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
