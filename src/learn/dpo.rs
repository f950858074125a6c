//! Preference losses on candle tensors (REFERENCE.md, "DPO in one paragraph").
//!
//! With h = [log πθ(y⁺|x) − log πref(y⁺|x)] − [log πθ(y⁻|x) − log πref(y⁻|x)]:
//! - `dpo` (sigmoid), with label smoothing ε (conservative DPO): L = −(1−ε) log σ(βh) − ε log σ(−βh);
//! - `ipo`: L = (h̄ − 1/(2β))², h̄ from per-token MEAN log-probs.
//!
//! −log σ(u) = softplus(−u) is computed as log(1 + exp(clamp(−u))). The usual "stable" form
//! relu(−u) + log(1 + exp(−|u|)) has a 3× wrong gradient at u = 0 in candle (it takes relu' and abs' at 0 as 1),
//! and DPO starts exactly there, since the policy begins equal to the reference.

use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::domain::{LossKind, RewardStats};

/// The loss and its two hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    pub kind: LossKind,
    /// β: strength of the pull towards the reference (the paper used 0.2).
    pub beta: f64,
    /// ε: assumed share of flipped labels, `dpo` only.
    pub label_smoothing: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            kind: LossKind::Dpo,
            beta: 0.2,
            label_smoothing: 0.0,
        }
    }
}

impl LossConfig {
    /// Rejects settings the formulas are undefined or silently meaningless for.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(format!("beta must be > 0, got {}", self.beta));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(format!(
                "label smoothing must be in [0, 0.5), got {}",
                self.label_smoothing
            ));
        }
        if self.kind == LossKind::Ipo && self.label_smoothing != 0.0 {
            return Err("label smoothing applies to the dpo loss only, not ipo".into());
        }
        Ok(())
    }
}

pub use crate::model::SeqLogProbs;

/// Per-token mean of completion log-probs; a sequence with no completion tokens counts as mean 0.
fn per_token_mean(s: &SeqLogProbs) -> Result<Tensor> {
    s.sum.broadcast_div(&s.tokens.maximum(1.0)?)
}

/// The four log-probs of a batch of pairs. Reference ones carry no gradient.
#[derive(Debug, Clone)]
pub struct PairLogProbs {
    pub policy_chosen: SeqLogProbs,
    pub policy_rejected: SeqLogProbs,
    pub reference_chosen: SeqLogProbs,
    pub reference_rejected: SeqLogProbs,
}

/// The batch loss (scalar, mean over pairs) and the implicit rewards β(log πθ − log πref) of both sides, (b,).
/// For `ipo` the rewards use the per-token means the loss sees, as TRL does.
#[derive(Debug, Clone)]
pub struct LossOutput {
    pub loss: Tensor,
    pub rewards_chosen: Tensor,
    pub rewards_rejected: Tensor,
}

/// The preference loss of a batch of pairs.
pub fn preference_loss(cfg: &LossConfig, lp: &PairLogProbs) -> Result<LossOutput> {
    preference_loss_smoothed(cfg, lp, None)
}

/// The preference loss with a label smoothing per pair (`smoothing[i]` for pair i, each in [0, 0.5)):
/// conservative DPO where the annotators split, −(1−εᵢ) log σ(βhᵢ) − εᵢ log σ(−βhᵢ). `None` is
/// [`preference_loss`], the run's one smoothing for every pair. The IPO loss has no smoothing.
pub fn preference_loss_smoothed(
    cfg: &LossConfig,
    lp: &PairLogProbs,
    smoothing: Option<&[f64]>,
) -> Result<LossOutput> {
    let pick = |s: &SeqLogProbs| -> Result<Tensor> {
        match cfg.kind {
            LossKind::Dpo => Ok(s.sum.clone()),
            LossKind::Ipo => per_token_mean(s),
        }
    };
    let chosen = (pick(&lp.policy_chosen)? - pick(&lp.reference_chosen)?)?;
    let rejected = (pick(&lp.policy_rejected)? - pick(&lp.reference_rejected)?)?;
    let h = (&chosen - &rejected)?;
    let per_pair = match cfg.kind {
        LossKind::Dpo => {
            let z = (&h * cfg.beta)?;
            match smoothing {
                Some(per_pair) => {
                    let eps: Vec<f32> = per_pair.iter().map(|&e| e as f32).collect();
                    let eps =
                        Tensor::from_vec(eps, per_pair.len(), z.device())?.to_dtype(z.dtype())?;
                    let keep = eps.affine(-1.0, 1.0)?;
                    (softplus(&z.neg()?)?.mul(&keep)? + softplus(&z)?.mul(&eps)?)?
                }
                None => {
                    let eps = cfg.label_smoothing;
                    let main = (softplus(&z.neg()?)? * (1.0 - eps))?;
                    if eps > 0.0 {
                        (main + (softplus(&z)? * eps)?)?
                    } else {
                        main
                    }
                }
            }
        }
        LossKind::Ipo => (h - 1.0 / (2.0 * cfg.beta))?.sqr()?,
    };
    Ok(LossOutput {
        loss: per_pair.mean_all()?,
        rewards_chosen: (chosen * cfg.beta)?.detach(),
        rewards_rejected: (rejected * cfg.beta)?.detach(),
    })
}

/// Above this, softplus(u) is u itself to within f32's precision (log(1 + e^−20) ≈ 2·10⁻⁹).
const SOFTPLUS_LINEAR_ABOVE: f32 = 20.0;

/// softplus(u) = log(1 + exp(u)), with the right slope σ(u) everywhere: log(1 + exp(u)) up to 20, and u
/// itself above, where clamping the exponent would leave the value stuck and the slope 0 (a pair the
/// policy gets badly wrong would stop teaching it). Far below, exp(u) underflows to 0 and so does the
/// slope, as σ(u) does.
pub fn softplus(u: &Tensor) -> Result<Tensor> {
    let low = (u.clamp(-80f32, SOFTPLUS_LINEAR_ABOVE)?.exp()? + 1.0)?.log()?;
    u.gt(SOFTPLUS_LINEAR_ABOVE)?.where_cond(u, &low)
}

/// Sums (not means) of the reward statistics over the batch, so batches of different sizes can be combined;
/// divide by the number of pairs.
pub fn reward_sums(out: &LossOutput) -> Result<(RewardStats, usize)> {
    let c: Vec<f32> = out.rewards_chosen.to_dtype(DType::F32)?.to_vec1()?;
    let r: Vec<f32> = out.rewards_rejected.to_dtype(DType::F32)?.to_vec1()?;
    let mut s = RewardStats::default();
    for (&c, &r) in c.iter().zip(&r) {
        s.chosen += c as f64;
        s.rejected += r as f64;
        s.margins += (c - r) as f64;
        s.accuracies += if c > r { 1.0 } else { 0.0 };
    }
    Ok((s, c.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn seq(sum: &[f32], tokens: &[f32]) -> SeqLogProbs {
        SeqLogProbs {
            sum: Tensor::new(sum, &Device::Cpu).unwrap(),
            tokens: Tensor::new(tokens, &Device::Cpu).unwrap(),
        }
    }

    fn scalar(t: &Tensor) -> f64 {
        t.to_scalar::<f32>().unwrap() as f64
    }

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() < tol, "{a} vs {b}");
    }

    #[test]
    fn softplus_keeps_its_value_and_slope_far_out() {
        let u = Var::new(&[-100f32, -2.0, 0.0, 3.0, 25.0, 100.0], &Device::Cpu).unwrap();
        let y = softplus(u.as_tensor()).unwrap();
        let values: Vec<f32> = y.to_vec1().unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        let slopes: Vec<f32> = grads.get(&u).unwrap().to_vec1().unwrap();
        for (i, &x) in [-100f64, -2.0, 0.0, 3.0, 25.0, 100.0].iter().enumerate() {
            let exact = x.max(0.0) + (-x.abs()).exp().ln_1p();
            let sigma = 1.0 / (1.0 + (-x).exp());
            close(values[i] as f64, exact, 1e-4 * exact.max(1.0));
            close(slopes[i] as f64, sigma, 1e-5);
        }
    }

    #[test]
    fn a_two_to_one_pair_trains_with_smoothing_one_third() {
        // Two pairs with the same log-probs; the second was split 2–1 by its annotators.
        let lp = PairLogProbs {
            policy_chosen: seq(&[-10.0, -10.0], &[5.0, 5.0]),
            policy_rejected: seq(&[-12.0, -12.0], &[3.0, 3.0]),
            reference_chosen: seq(&[-11.0, -11.0], &[5.0, 5.0]),
            reference_rejected: seq(&[-11.0, -11.0], &[3.0, 3.0]),
        };
        let cfg = LossConfig {
            kind: LossKind::Dpo,
            beta: 0.1,
            label_smoothing: 0.0,
        };
        let pair = crate::learn::PreferencePair {
            split_votes: Some((1, 3)),
            ..crate::learn::PreferencePair::new("p", "a", "b")
        };
        let eps = pair.label_smoothing(0.0);
        close(eps, 1.0 / 3.0, 1e-12);
        let out = preference_loss_smoothed(&cfg, &lp, Some(&[0.0, eps])).unwrap();
        // βh = 0.2: pair 1 log(1 + e^−0.2), pair 2 (2/3)·log(1 + e^−0.2) + (1/3)·log(1 + e^0.2).
        let (lo, hi) = ((1f64 + (-0.2f64).exp()).ln(), (1f64 + 0.2f64.exp()).ln());
        let want = (lo + (2.0 / 3.0) * lo + (1.0 / 3.0) * hi) / 2.0;
        close(scalar(&out.loss), want, 1e-6);
        // The run's smoothing for every pair is the same as `preference_loss`.
        let same = preference_loss_smoothed(&cfg, &lp, Some(&[0.0, 0.0])).unwrap();
        close(
            scalar(&same.loss),
            scalar(&preference_loss(&cfg, &lp).unwrap().loss),
            1e-7,
        );
    }

    #[test]
    fn dpo_matches_hand_computed_values() {
        // h = (−10 − −11) − (−12 − −11) = 2, βh = 0.2, L = log(1 + e^−0.2).
        let lp = PairLogProbs {
            policy_chosen: seq(&[-10.0], &[5.0]),
            policy_rejected: seq(&[-12.0], &[3.0]),
            reference_chosen: seq(&[-11.0], &[5.0]),
            reference_rejected: seq(&[-11.0], &[3.0]),
        };
        let cfg = LossConfig {
            kind: LossKind::Dpo,
            beta: 0.1,
            label_smoothing: 0.0,
        };
        let out = preference_loss(&cfg, &lp).unwrap();
        close(scalar(&out.loss), 0.598_138_869, 1e-6);
        close(
            out.rewards_chosen.to_vec1::<f32>().unwrap()[0] as f64,
            0.1,
            1e-6,
        );
        close(
            out.rewards_rejected.to_vec1::<f32>().unwrap()[0] as f64,
            -0.1,
            1e-6,
        );
        // ε = 0.1: 0.9·softplus(−0.2) + 0.1·softplus(0.2) = softplus(−0.2) + 0.1·0.2.
        let smooth = LossConfig {
            label_smoothing: 0.1,
            ..cfg
        };
        close(
            scalar(&preference_loss(&smooth, &lp).unwrap().loss),
            0.618_138_869,
            1e-6,
        );
    }

    #[test]
    fn ipo_uses_per_token_means() {
        // Means: chosen −8/4 = −2 vs ref −6/4 = −1.5; rejected −9/3 = −3 vs ref −4.5/3 = −1.5.
        // h̄ = −0.5 − (−1.5) = 1; β = 0.25 → 1/(2β) = 2; L = (1 − 2)² = 1.
        // With sums instead, h = −2 − (−4.5) = 2.5 would give (2.5 − 2)² = 0.25: the test tells them apart.
        let lp = PairLogProbs {
            policy_chosen: seq(&[-8.0, -1.0], &[4.0, 1.0]),
            policy_rejected: seq(&[-9.0, -1.0], &[3.0, 1.0]),
            reference_chosen: seq(&[-6.0, -1.0], &[4.0, 1.0]),
            reference_rejected: seq(&[-4.5, -1.0], &[3.0, 1.0]),
        };
        let cfg = LossConfig {
            kind: LossKind::Ipo,
            beta: 0.25,
            label_smoothing: 0.0,
        };
        // Second pair: h̄ = 0 → (0 − 2)² = 4. Batch mean (1 + 4) / 2.
        let out = preference_loss(&cfg, &lp).unwrap();
        close(scalar(&out.loss), 2.5, 1e-6);
        let rc = out.rewards_chosen.to_vec1::<f32>().unwrap();
        close(rc[0] as f64, 0.25 * -0.5, 1e-6);
    }

    #[test]
    fn gradient_is_right_at_the_start_of_training() {
        // Policy == reference: h = 0. dL/d(log πθ(y⁺)) = −β(1 − 2ε)·σ(0) = −β(1 − 2ε)/2.
        for eps in [0.0, 0.1] {
            let pc = Var::new(&[-5.0f32], &Device::Cpu).unwrap();
            let pr = Var::new(&[-7.0f32], &Device::Cpu).unwrap();
            let lp = PairLogProbs {
                policy_chosen: SeqLogProbs {
                    sum: pc.as_tensor().clone(),
                    tokens: Tensor::new(&[2f32], &Device::Cpu).unwrap(),
                },
                policy_rejected: SeqLogProbs {
                    sum: pr.as_tensor().clone(),
                    tokens: Tensor::new(&[2f32], &Device::Cpu).unwrap(),
                },
                reference_chosen: seq(&[-5.0], &[2.0]),
                reference_rejected: seq(&[-7.0], &[2.0]),
            };
            let cfg = LossConfig {
                kind: LossKind::Dpo,
                beta: 0.2,
                label_smoothing: eps,
            };
            let out = preference_loss(&cfg, &lp).unwrap();
            close(scalar(&out.loss), std::f64::consts::LN_2, 1e-6);
            let grads = out.loss.backward().unwrap();
            let g_c = grads.get(&pc).unwrap().to_vec1::<f32>().unwrap()[0] as f64;
            let g_r = grads.get(&pr).unwrap().to_vec1::<f32>().unwrap()[0] as f64;
            close(g_c, -0.2 * (1.0 - 2.0 * eps) / 2.0, 1e-6);
            close(g_r, 0.2 * (1.0 - 2.0 * eps) / 2.0, 1e-6);
        }
    }

    #[test]
    fn gradient_matches_finite_differences_away_from_zero() {
        let cfg = LossConfig {
            kind: LossKind::Dpo,
            beta: 0.5,
            label_smoothing: 0.05,
        };
        let loss_at = |x: f32| -> (f64, f64) {
            let pc = Var::new(&[x], &Device::Cpu).unwrap();
            let lp = PairLogProbs {
                policy_chosen: SeqLogProbs {
                    sum: pc.as_tensor().clone(),
                    tokens: Tensor::new(&[1f32], &Device::Cpu).unwrap(),
                },
                policy_rejected: seq(&[-3.0], &[1.0]),
                reference_chosen: seq(&[-2.0], &[1.0]),
                reference_rejected: seq(&[-2.5], &[1.0]),
            };
            let out = preference_loss(&cfg, &lp).unwrap();
            let g = out.loss.backward().unwrap();
            (
                scalar(&out.loss),
                g.get(&pc).unwrap().to_vec1::<f32>().unwrap()[0] as f64,
            )
        };
        for x in [-4.0f32, -1.0, 1.5] {
            let (_, g) = loss_at(x);
            let d = 1e-2;
            let fd = (loss_at(x + d).0 - loss_at(x - d).0) / (2.0 * d as f64);
            close(g, fd, 1e-3);
        }
    }

    #[test]
    fn reward_stats_and_validation() {
        let out = LossOutput {
            loss: Tensor::new(0f32, &Device::Cpu).unwrap(),
            rewards_chosen: Tensor::new(&[1f32, 0.0, 0.5], &Device::Cpu).unwrap(),
            rewards_rejected: Tensor::new(&[0f32, 0.0, 1.0], &Device::Cpu).unwrap(),
        };
        let (s, n) = reward_sums(&out).unwrap();
        assert_eq!(n, 3);
        let m = s.scaled(1.0 / n as f64);
        close(m.margins, 0.5 / 3.0, 1e-9);
        close(m.accuracies, 1.0 / 3.0, 1e-9);
        let json = serde_json::to_value(m).unwrap();
        assert!(json.get("rewards/accuracies").is_some());
        assert!(LossConfig::default().validate().is_ok());
        let bad = LossConfig {
            kind: LossKind::Ipo,
            beta: 0.1,
            label_smoothing: 0.1,
        };
        assert!(bad.validate().is_err());
        assert!(
            LossConfig {
                beta: 0.0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }
}
