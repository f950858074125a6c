//! The DPO training loop: batches, the fused AdamW, metrics, progress and cancellation.
//!
//! The loop never touches the model that is being served: it trains a copy (`continue`) or a fresh copy of the
//! reference (`reset`) and hands the trained model back, so a failed or cancelled run loses nothing. Reference
//! log-probs come from a [`ReferenceCache`]; the reference model is only loaded when the cache misses pairs, and
//! dropped again before training starts.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::data::PreferencePair;
use super::dpo::{
    LossConfig, LossKind, PairLogProbs, RewardStats, SeqLogProbs, preference_loss, reward_sums,
};
use super::optim::{AdamW, AdamWParams};
use super::policy::{BoxError, DpoModel, sequences, tokenize_pairs};
use super::reference::ReferenceCache;

/// Where training starts each round (the paper's two schedules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Start from the reference weights and train on all labels so far (the paper's main runs).
    #[default]
    Reset,
    /// Keep training the current policy on the new and old labels.
    Continue,
}

impl Schedule {
    pub fn as_str(self) -> &'static str {
        match self {
            Schedule::Reset => "reset",
            Schedule::Continue => "continue",
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reset" => Ok(Schedule::Reset),
            "continue" => Ok(Schedule::Continue),
            other => Err(format!(
                "unknown schedule {other:?}: expected reset or continue"
            )),
        }
    }
}

/// Every setting of a DPO run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DpoConfig {
    pub loss: LossConfig,
    pub optimizer: AdamWParams,
    pub epochs: usize,
    /// Pairs per forward pass (each pair is two sequences).
    pub batch_size: usize,
    /// Forward passes per optimizer step: the effective batch is `batch_size × grad_accum_steps` pairs.
    pub grad_accum_steps: usize,
    /// Prompts longer than this keep their last tokens.
    pub max_prompt_tokens: usize,
    /// Completions longer than this keep their first tokens.
    pub max_completion_tokens: usize,
    /// Clip the global gradient norm to this before each step; `None` turns clipping off.
    pub max_grad_norm: Option<f64>,
    pub schedule: Schedule,
    /// Shuffles the pairs every epoch.
    pub seed: u64,
    /// Held-out evaluation every this many steps (and always after the last); 0 = only after the last.
    pub eval_every: usize,
}

impl Default for DpoConfig {
    fn default() -> Self {
        DpoConfig {
            loss: LossConfig::default(),
            optimizer: AdamWParams::default(),
            epochs: 1,
            batch_size: 4,
            grad_accum_steps: 1,
            max_prompt_tokens: 128,
            max_completion_tokens: 128,
            max_grad_norm: Some(1.0),
            schedule: Schedule::Reset,
            seed: 0,
            eval_every: 0,
        }
    }
}

impl DpoConfig {
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        self.loss.validate().map_err(TrainError::Config)?;
        if !(self.optimizer.lr.is_finite() && self.optimizer.lr > 0.0) {
            return bad(format!(
                "learning rate must be > 0, got {}",
                self.optimizer.lr
            ));
        }
        if self.epochs == 0 || self.batch_size == 0 || self.grad_accum_steps == 0 {
            return bad("epochs, batch size and gradient accumulation steps must be ≥ 1".into());
        }
        if self.max_prompt_tokens == 0 || self.max_completion_tokens == 0 {
            return bad("max prompt and completion tokens must be ≥ 1".into());
        }
        if self.max_grad_norm.is_some_and(|n| n.is_nan() || n <= 0.0) {
            return bad("max gradient norm must be > 0".into());
        }
        Ok(())
    }

    /// Optimizer steps for `n_train` pairs.
    pub fn total_steps(&self, n_train: usize) -> usize {
        self.epochs * n_train.div_ceil(self.batch_size * self.grad_accum_steps)
    }
}

/// Why a run ended without a model. The served model is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("bad training settings: {0}")]
    Config(String),
    #[error("no training pairs")]
    NoData,
    #[error("{context}: {source}")]
    Model {
        context: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("cancelled before step {step} of {total_steps}")]
    Cancelled { step: usize, total_steps: usize },
    #[error("cancelled while computing reference log-probs")]
    CancelledReference,
    #[error("loss is not finite at step {step} (try a lower learning rate)")]
    NonFinite { step: usize },
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Model {
            context: "tensor computation failed",
            source: Box::new(e),
        }
    }
}

pub(super) fn model_err(context: &'static str) -> impl FnOnce(BoxError) -> TrainError {
    move |source| TrainError::Model { context, source }
}

/// Metrics of one optimizer step, named as TRL names them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    pub loss: f64,
    #[serde(flatten)]
    pub rewards: RewardStats,
    pub grad_norm: f64,
    pub learning_rate: f64,
    /// Prompt + completion tokens through the policy in this step (both sides of every pair).
    pub tokens: usize,
    /// Wall time of the whole step, and of the optimizer update alone.
    pub seconds: f64,
    pub optimizer_seconds: f64,
}

/// Held-out metrics: the same quantities over the eval split, without a gradient.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub step: usize,
    pub pairs: usize,
    pub loss: f64,
    #[serde(flatten)]
    pub rewards: RewardStats,
}

/// What the caller hears while a run goes on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Progress {
    /// Reference log-probs being computed for pairs the cache did not have. `tokens` and `seconds` cover the
    /// scoring so far: a forward pass without gradient over the same batches training will see.
    Reference {
        done: usize,
        total: usize,
        tokens: usize,
        seconds: f64,
    },
    Step(StepMetrics),
    Eval(EvalMetrics),
}

/// The result of a finished run: the trained model (not yet saved) and its metrics.
pub struct TrainOutcome<M> {
    pub model: M,
    pub steps: Vec<StepMetrics>,
    pub eval: Option<EvalMetrics>,
}

/// Splits off `fraction` of the pairs (at least one when the fraction is > 0 and there are two or more pairs)
/// as a held-out eval set, chosen by the seed. Returns (train, eval).
pub fn split_eval(
    pairs: &[PreferencePair],
    fraction: f64,
    seed: u64,
) -> (Vec<PreferencePair>, Vec<PreferencePair>) {
    let mut idx: Vec<usize> = (0..pairs.len()).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed ^ 0xe7a1));
    let mut n_eval = (pairs.len() as f64 * fraction.clamp(0.0, 1.0)).round() as usize;
    if fraction > 0.0 && pairs.len() >= 2 {
        n_eval = n_eval.clamp(1, pairs.len() - 1);
    }
    let (e, t) = idx.split_at(n_eval);
    let pick = |ix: &[usize]| {
        let mut ix = ix.to_vec();
        ix.sort_unstable();
        ix.into_iter().map(|i| pairs[i].clone()).collect()
    };
    (pick(t), pick(e))
}

/// The hooks a running job talks through: progress out, cancellation in (checked before every step).
pub struct RunControl<'a> {
    pub progress: &'a mut dyn FnMut(&Progress),
    pub cancel: &'a AtomicBool,
}

/// One DPO run. `current` is the served policy (read only, used as the start under `continue`);
/// `load_reference` gives a fresh copy of the reference model and is called only when needed: under `reset`
/// once for the starting weights (whose log-probs also fill the cache, since they ARE the reference), under
/// `continue` only if the cache misses pairs (the copy is dropped before training starts).
pub fn train_dpo<M: DpoModel>(
    current: &M,
    load_reference: &mut dyn FnMut() -> Result<M, BoxError>,
    cache: &mut ReferenceCache,
    train: &[PreferencePair],
    eval: &[PreferencePair],
    cfg: &DpoConfig,
    control: RunControl<'_>,
) -> Result<TrainOutcome<M>, TrainError> {
    cfg.validate()?;
    if train.is_empty() {
        return Err(TrainError::NoData);
    }
    let mut control = control;
    let all: Vec<PreferencePair> = train.iter().chain(eval).cloned().collect();
    let policy = match cfg.schedule {
        Schedule::Reset => {
            let policy = load_reference().map_err(model_err("loading the reference model"))?;
            cache.fill(&policy, &all, cfg, &mut control)?;
            policy
        }
        Schedule::Continue => {
            if !cache.missing(&all, cfg).is_empty() {
                let reference =
                    load_reference().map_err(model_err("loading the reference model"))?;
                cache.fill(&reference, &all, cfg, &mut control)?;
            }
            current
                .deep_clone()
                .map_err(model_err("copying the current model"))?
        }
    };

    let total_steps = cfg.total_steps(train.len());
    let mut opt = AdamW::new(policy.trainable_vars(), cfg.optimizer)?;
    let pairs_per_step = cfg.batch_size * cfg.grad_accum_steps;
    let mut steps = Vec::with_capacity(total_steps);
    let mut last_eval = None;
    let mut step = 0;
    for epoch in 0..cfg.epochs {
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(
            cfg.seed.wrapping_add(epoch as u64),
        ));
        for step_pairs in order.chunks(pairs_per_step) {
            if control.cancel.load(Ordering::Relaxed) {
                return Err(TrainError::Cancelled {
                    step: step + 1,
                    total_steps,
                });
            }
            let started = Instant::now();
            let mut loss_sum = 0.0;
            let mut rewards = RewardStats::default();
            let mut tokens = 0;
            // One backward per step (no accumulation) goes straight to the optimizer, saving a copy of the
            // gradients; otherwise they are summed in the optimizer's accumulator first.
            let single = step_pairs.len() <= cfg.batch_size;
            let mut direct_grads = None;
            for micro in step_pairs.chunks(cfg.batch_size) {
                let pairs: Vec<PreferencePair> = micro.iter().map(|&i| train[i].clone()).collect();
                let tok = tokenize_pairs(&policy, &pairs, cfg)?;
                tokens += tok.iter().map(|t| t.len()).sum::<usize>();
                let seqs = sequences(&tok);
                let lp = policy
                    .completion_logprobs(&seqs)
                    .map_err(model_err("policy forward pass"))?;
                let out = preference_loss(
                    &cfg.loss,
                    &pair_logprobs(lp, &pairs, cache, policy.device())?,
                )?;
                // The step's loss is the mean over all its pairs: weight each micro-batch by its share.
                let share = micro.len() as f64 / step_pairs.len() as f64;
                let loss = (&out.loss * share)?;
                let value = loss.to_scalar::<f32>()? as f64;
                if !value.is_finite() {
                    return Err(TrainError::NonFinite { step: step + 1 });
                }
                loss_sum += value;
                let grads = loss.backward()?;
                if single {
                    direct_grads = Some(grads);
                } else {
                    opt.accumulate(&grads)?;
                }
                rewards.add(&reward_sums(&out)?.0);
            }
            let opt_started = Instant::now();
            let grad_norm = match direct_grads.take() {
                Some(grads) => opt.step_grads(&grads, cfg.max_grad_norm)?,
                None => opt.step(cfg.max_grad_norm)?,
            };
            let optimizer_seconds = opt_started.elapsed().as_secs_f64();
            step += 1;
            let metrics = StepMetrics {
                step,
                total_steps,
                epoch: epoch + 1,
                loss: loss_sum,
                rewards: rewards.scaled(1.0 / step_pairs.len() as f64),
                grad_norm,
                learning_rate: opt.params().lr,
                tokens,
                seconds: started.elapsed().as_secs_f64(),
                optimizer_seconds,
            };
            (control.progress)(&Progress::Step(metrics));
            steps.push(metrics);
            let due = cfg.eval_every > 0 && step % cfg.eval_every == 0;
            if !eval.is_empty() && (due || step == total_steps) {
                let m = evaluate(&policy, eval, cache, cfg, step)?;
                (control.progress)(&Progress::Eval(m));
                last_eval = Some(m);
            }
        }
    }
    Ok(TrainOutcome {
        model: policy,
        steps,
        eval: last_eval,
    })
}

/// Loss and reward statistics of `model` on `pairs`, no gradient; reference log-probs from the cache.
pub fn evaluate<M: DpoModel>(
    model: &M,
    pairs: &[PreferencePair],
    cache: &ReferenceCache,
    cfg: &DpoConfig,
    step: usize,
) -> Result<EvalMetrics, TrainError> {
    let mut loss = 0.0;
    let mut rewards = RewardStats::default();
    for chunk in pairs.chunks(cfg.batch_size) {
        let tok = tokenize_pairs(model, chunk, cfg)?;
        let scores = model
            .score_completions(&sequences(&tok))
            .map_err(model_err("scoring the eval split"))?;
        let sums: Vec<f32> = scores.iter().map(|s| s.0 as f32).collect();
        let counts: Vec<f32> = scores.iter().map(|s| s.1 as f32).collect();
        let lp = SeqLogProbs {
            sum: Tensor::new(sums, model.device())?,
            tokens: Tensor::new(counts, model.device())?,
        };
        let out = preference_loss(&cfg.loss, &pair_logprobs(lp, chunk, cache, model.device())?)?;
        loss += out.loss.to_scalar::<f32>()? as f64 * chunk.len() as f64;
        rewards.add(&reward_sums(&out)?.0);
    }
    let n = pairs.len().max(1) as f64;
    Ok(EvalMetrics {
        step,
        pairs: pairs.len(),
        loss: loss / n,
        rewards: rewards.scaled(1.0 / n),
    })
}

/// Splits the policy's 2b log-probs into chosen/rejected halves and adds the cached reference ones.
fn pair_logprobs(
    lp: SeqLogProbs,
    pairs: &[PreferencePair],
    cache: &ReferenceCache,
    device: &Device,
) -> Result<PairLogProbs, TrainError> {
    let b = pairs.len();
    let mut rc = (Vec::with_capacity(b), Vec::with_capacity(b));
    let mut rr = (Vec::with_capacity(b), Vec::with_capacity(b));
    for p in pairs {
        let e = cache
            .get(p)
            .expect("reference cache filled for every pair before training: this is a bug");
        rc.0.push(e.chosen.0 as f32);
        rc.1.push(e.chosen.1 as f32);
        rr.0.push(e.rejected.0 as f32);
        rr.1.push(e.rejected.1 as f32);
    }
    let t = |v: Vec<f32>| Tensor::new(v, device);
    Ok(PairLogProbs {
        policy_chosen: SeqLogProbs {
            sum: lp.sum.narrow(0, 0, b)?,
            tokens: lp.tokens.narrow(0, 0, b)?,
        },
        policy_rejected: SeqLogProbs {
            sum: lp.sum.narrow(0, b, b)?,
            tokens: lp.tokens.narrow(0, b, b)?,
        },
        reference_chosen: SeqLogProbs {
            sum: t(rc.0)?,
            tokens: t(rc.1)?,
        },
        reference_rejected: SeqLogProbs {
            sum: t(rr.0)?,
            tokens: t(rr.1)?,
        },
    })
}

/// The loss kind's name and the beta, for logs.
pub fn describe(cfg: &DpoConfig) -> String {
    let eps = if cfg.loss.kind == LossKind::Dpo && cfg.loss.label_smoothing > 0.0 {
        format!(", label smoothing {}", cfg.loss.label_smoothing)
    } else {
        String::new()
    };
    format!(
        "{} (β {}{eps}), lr {}, {} epoch(s), batch {} × {} accumulation, schedule {}",
        cfg.loss.kind,
        cfg.loss.beta,
        cfg.optimizer.lr,
        cfg.epochs,
        cfg.batch_size,
        cfg.grad_accum_steps,
        cfg.schedule
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(i: usize) -> PreferencePair {
        PreferencePair {
            prompt: format!("p{i}"),
            chosen: "a".into(),
            rejected: "b".into(),
        }
    }

    #[test]
    fn eval_split_is_seeded_disjoint_and_complete() {
        let pairs: Vec<_> = (0..20).map(pair).collect();
        let (t, e) = split_eval(&pairs, 0.2, 3);
        assert_eq!((t.len(), e.len()), (16, 4));
        assert!(e.iter().all(|p| !t.contains(p)));
        assert_eq!(split_eval(&pairs, 0.2, 3).1, e);
        assert_ne!(split_eval(&pairs, 0.2, 4).1, e);
        assert_eq!(split_eval(&pairs, 0.0, 3).1.len(), 0);
        assert_eq!(split_eval(&pairs[..2], 0.01, 3).1.len(), 1);
    }

    #[test]
    fn config_validation_and_step_count() {
        let cfg = DpoConfig {
            batch_size: 4,
            grad_accum_steps: 2,
            epochs: 3,
            ..Default::default()
        };
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.total_steps(17), 3 * 3);
        let bad = DpoConfig {
            batch_size: 0,
            ..Default::default()
        };
        assert!(matches!(bad.validate(), Err(TrainError::Config(_))));
        assert_eq!("continue".parse::<Schedule>().unwrap(), Schedule::Continue);
        let json = serde_json::to_value(DpoConfig::default()).unwrap();
        assert_eq!(json["schedule"], "reset");
    }
}
