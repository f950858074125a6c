//! The DPO training loop: batches, the fused AdamW, metrics, progress and cancellation.
//!
//! The loop never touches the model that is being served: it trains a copy (`continue`) or a fresh copy of the
//! reference (`reset`) and hands the trained model back, so a failed or cancelled run loses nothing. Reference
//! log-probs come from a [`ReferenceCache`]; the reference model is only loaded when the cache misses pairs, and
//! dropped again before training starts.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::data::PreferencePair;
use super::dpo::{PairLogProbs, SeqLogProbs, preference_loss_smoothed, reward_sums};
use super::optim::AdamW;
use super::policy::{DpoModel, sequences, tokenize_pairs};
use super::reference::ReferenceCache;
use super::run::{BoxError, DpoConfig, Progress, RunControl, TrainError, model_err};
use crate::domain::{EvalMetrics, LossKind, RewardStats, Schedule, StepMetrics};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

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
            while (control.hold)() && !control.cancel.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
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
                let out = preference_loss_smoothed(
                    &cfg.loss,
                    &pair_logprobs(lp, &pairs, cache, policy.device())?,
                    smoothing(&pairs, cfg).as_deref(),
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
        let out = preference_loss_smoothed(
            &cfg.loss,
            &pair_logprobs(lp, chunk, cache, model.device())?,
            smoothing(chunk, cfg).as_deref(),
        )?;
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

/// Each pair's own label smoothing when any pair of the batch has split votes (soft aggregation),
/// the run's setting for the others; `None` when every pair trains with the run's setting.
fn smoothing(pairs: &[PreferencePair], cfg: &DpoConfig) -> Option<Vec<f64>> {
    let eps = cfg.loss.label_smoothing;
    pairs
        .iter()
        .any(|p| p.split_votes.is_some())
        .then(|| pairs.iter().map(|p| p.label_smoothing(eps)).collect())
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
        PreferencePair::new(format!("p{i}"), "a", "b")
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
}
