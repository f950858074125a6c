//! DPO updates in the background: a copy of the weights trains on its own thread while the model thread
//! keeps serving; the result is saved atomically as a new version and installed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::sync::mpsc;

use super::worker::Job;
use super::{EngineError, EngineHandle, PolicyRef};
use crate::domain::{LoopSettings, TrainedMetrics};
use crate::learn::{
    DpoConfig, PreferencePair, Progress, ReferenceCache, RunControl, TrainError, train_dpo,
};
use crate::store::queue::Preference;

/// Reference log-probs per project, kept across runs (they never change for a pair), and the one lock
/// that lets a single run train at a time: two would only share the same cores.
#[derive(Default)]
pub(super) struct Trainer {
    caches: std::sync::Mutex<HashMap<String, ReferenceCache>>,
    one_at_a_time: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone)]
pub struct TrainRequest {
    pub project_id: String,
    /// The policy now serving the project: the start under `continue`.
    pub current: PolicyRef,
    pub preferences: Vec<Preference>,
    pub settings: LoopSettings,
    /// Id the new version will have; its weights go to `<checkpoint dir>/<id>`.
    pub version_id: String,
    /// Threads the run computes on (a pool of its own); None: every core.
    pub threads: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct TrainResult {
    pub path: String,
    pub steps: usize,
    /// The last step's metrics, and the held-out ones when the project has an eval split.
    pub metrics: TrainedMetrics,
}

pub(super) async fn run(
    handle: &EngineHandle,
    req: TrainRequest,
    progress: mpsc::UnboundedSender<Progress>,
    cancel: Arc<AtomicBool>,
    hold: Arc<dyn Fn() -> bool + Send + Sync>,
) -> Result<TrainResult, EngineError> {
    let _turn = handle.trainer.one_at_a_time.lock().await;
    let (current, reference) = handle
        .call(|reply| Job::Models {
            policy: req.current.clone(),
            reply,
        })
        .await?;
    let mut cache = handle
        .trainer
        .caches
        .lock()
        .expect("cache lock poisoned")
        .remove(&req.project_id)
        .unwrap_or_default();
    // With LoRA the policy is the reference's weights plus adapters: a run starts from fresh ones (`reset`,
    // a first LoRA run, or changed LoRA settings) or the serving version's (`continue`). A project that
    // turned LoRA off continues from the serving version's merged weights (`reset` starts from the
    // reference and never reads them).
    let lora = req.settings.lora.as_ref().map(|l| l.normalised());
    let seed = req.settings.seed;
    let continues = req.settings.schedule == crate::domain::Schedule::Continue;
    let current = match &lora {
        Some(l) if current.lora() != Some(l) => reference.with_lora(l, seed),
        None if continues && current.lora().is_some() => current.merged(),
        _ => Ok(current),
    }
    .map_err(|e| EngineError::Model(format!("preparing the model to train: {e}")))?;
    let dir: PathBuf = handle.checkpoint_dir.join(&req.version_id);
    let cfg = DpoConfig::from_settings(&req.settings);
    let (train, eval): (Vec<_>, Vec<_>) = req.preferences.iter().partition(|p| !p.eval);
    let chat = req.settings.chat_template;
    let soft = req.settings.label_aggregation == crate::domain::LabelAggregation::Soft;
    let to_pairs = |v: Vec<&Preference>| -> Vec<PreferencePair> {
        v.into_iter()
            .map(|p| {
                let prompt = if chat {
                    current.tokenizer().chat_prompt(&p.prompt)
                } else {
                    p.prompt.clone()
                };
                training_pair(p, prompt, soft)
            })
            .collect()
    };
    let (train, eval) = (to_pairs(train), to_pairs(eval));
    let req_threads = req.threads;

    let outcome = tokio::task::spawn_blocking(move || {
        let mut report = |p: &Progress| {
            let _ = progress.send(p.clone());
        };
        let mut run = || {
            train_dpo(
                &current,
                // A fresh adapter (B = 0) scores exactly as the reference: the start of `reset`, and the
                // reference's log-probs, with no copy of the weights.
                &mut || match &lora {
                    Some(l) => reference.with_lora(l, seed).map_err(Into::into),
                    None => reference.deep_clone().map_err(Into::into),
                },
                &mut cache,
                &train,
                &eval,
                &cfg,
                RunControl {
                    progress: &mut report,
                    cancel: &cancel,
                    hold: &|| hold(),
                },
            )
        };
        // candle's matrix products run on the rayon pool they are called from.
        let result =
            match req_threads.map(|n| rayon::ThreadPoolBuilder::new().num_threads(n).build()) {
                Some(Ok(pool)) => pool.install(run),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "no thread pool for training: it takes every core");
                    run()
                }
                None => run(),
            };
        let saved = result.and_then(|outcome| {
            outcome.model.save(&dir).map_err(|e| TrainError::Model {
                context: "saving the trained model",
                source: Box::new(e),
            })?;
            Ok(outcome)
        });
        (saved, cache, dir)
    })
    .await
    .map_err(|e| EngineError::Model(format!("the training thread failed: {e}")))?;

    let (result, cache, dir) = outcome;
    handle
        .trainer
        .caches
        .lock()
        .expect("cache lock poisoned")
        .insert(req.project_id.clone(), cache);
    let outcome = result.map_err(|e| match e {
        TrainError::Cancelled { .. } => EngineError::Cancelled,
        other => EngineError::Model(other.to_string()),
    })?;
    let metrics = TrainedMetrics {
        last_step: outcome.steps.last().copied(),
        eval: outcome.eval,
    };
    let steps = outcome.steps.len();
    // Install the trained model so the next requests use it without reading it back from disk.
    handle
        .tx
        .send(Job::Install {
            version_id: req.version_id.clone(),
            model: Box::new(outcome.model),
        })
        .await
        .map_err(|_| EngineError::Stopped)?;
    Ok(TrainResult {
        path: dir.display().to_string(),
        steps,
        metrics,
    })
}

/// What DPO trains on for one stored preference, its prompt as the model sees it. With `soft`
/// aggregation a pair its annotators split on carries its votes, and trains with label smoothing
/// minority / decisive votes.
fn training_pair(p: &Preference, prompt: String, soft: bool) -> PreferencePair {
    PreferencePair {
        prompt,
        chosen: p.chosen.clone(),
        rejected: p.rejected.clone(),
        chosen_ends: p.chosen_ends,
        rejected_ends: p.rejected_ends,
        split_votes: (soft && p.votes_against > 0)
            .then_some((p.votes_against, p.votes_for + p.votes_against)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_two_to_one_pair_trains_with_smoothing_one_third_under_soft_aggregation() {
        let p = Preference {
            prompt: "p".into(),
            chosen: "good".into(),
            rejected: "bad".into(),
            chosen_ends: true,
            rejected_ends: false,
            eval: false,
            votes_for: 2,
            votes_against: 1,
        };
        let soft = training_pair(&p, "p".into(), true);
        assert!((soft.label_smoothing(0.0) - 1.0 / 3.0).abs() < 1e-12);
        assert!(!soft.rejected_ends);
        // Majority: the run's own smoothing, whatever the split.
        assert_eq!(
            training_pair(&p, "p".into(), false).label_smoothing(0.05),
            0.05
        );
        // A unanimous pair has nothing to smooth.
        let unanimous = Preference {
            votes_against: 0,
            ..p
        };
        assert_eq!(
            training_pair(&unanimous, "p".into(), true).split_votes,
            None
        );
    }
}
