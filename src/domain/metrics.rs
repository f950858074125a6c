//! What a DPO run reports, step by step and at its end, and how a trained version scored against the
//! reference. The trainer produces these, the loop stores them, the REST API and the dashboard show them:
//! one set of types, serialised with the names TRL uses (`rewards/margins`, ...).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Mean implicit rewards and accuracy over a batch, the scalars DPO users know.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct RewardStats {
    #[serde(rename = "rewards/chosen")]
    pub chosen: f64,
    #[serde(rename = "rewards/rejected")]
    pub rejected: f64,
    #[serde(rename = "rewards/margins")]
    pub margins: f64,
    #[serde(rename = "rewards/accuracies")]
    pub accuracies: f64,
}

impl RewardStats {
    pub fn add(&mut self, o: &RewardStats) {
        self.chosen += o.chosen;
        self.rejected += o.rejected;
        self.margins += o.margins;
        self.accuracies += o.accuracies;
    }

    pub fn scaled(&self, k: f64) -> RewardStats {
        RewardStats {
            chosen: self.chosen * k,
            rejected: self.rejected * k,
            margins: self.margins * k,
            accuracies: self.accuracies * k,
        }
    }
}

/// Metrics of one optimizer step, named as TRL names them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EvalMetrics {
    pub step: usize,
    pub pairs: usize,
    pub loss: f64,
    #[serde(flatten)]
    pub rewards: RewardStats,
}

/// One point of a run's loss curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LossPoint {
    pub step: usize,
    pub loss: f64,
    #[serde(rename = "rewards/margins")]
    pub margins: f64,
    #[serde(rename = "rewards/accuracies")]
    pub accuracies: f64,
}

impl From<&StepMetrics> for LossPoint {
    fn from(m: &StepMetrics) -> Self {
        LossPoint {
            step: m.step,
            loss: m.loss,
            margins: m.rewards.margins,
            accuracies: m.rewards.accuracies,
        }
    }
}

/// Where training stands: the latest step's metrics (flattened: `loss`, `rewards/margins`, ...) and the
/// held-out metrics once the run evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct TrainedMetrics {
    #[serde(flatten)]
    pub last_step: Option<StepMetrics>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalMetrics>,
}

/// A training run's metrics as the REST API and the dashboard read them: where training stands, and the
/// loss curve of every step so far.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct RunMetrics {
    #[serde(flatten)]
    pub trained: TrainedMetrics,
    #[serde(default)]
    pub history: Vec<LossPoint>,
}

/// Win rate of a policy against the reference on held-out prompts, as the paper measures it (a tie
/// counts half).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WinRate {
    pub win_rate: f64,
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
    /// Mean positivity (VADER compound) of the policy's completions: the "reward" of the IMDB setting.
    pub mean_reward: f64,
    /// Held-out prompts compared.
    pub eval_prompts: usize,
    /// The 95% interval of the win rate (Wilson's, ties counting half a win); absent in versions
    /// evaluated before intervals were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub win_rate_low: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub win_rate_high: Option<f64>,
}

impl WinRate {
    /// The win rate of `wins`, `ties` and `losses` over as many prompts, with its interval.
    pub fn from_counts(wins: usize, ties: usize, losses: usize, mean_reward: f64) -> WinRate {
        let n = wins + ties + losses;
        let score = wins as f64 + 0.5 * ties as f64;
        let (win_rate, low, high) = match n {
            0 => (0.5, None, None),
            _ => {
                let (low, high) = wilson_interval(score, n as f64);
                (score / n as f64, Some(low), Some(high))
            }
        };
        WinRate {
            win_rate,
            wins,
            ties,
            losses,
            mean_reward,
            eval_prompts: n,
            win_rate_low: low,
            win_rate_high: high,
        }
    }
}

/// Wilson's 95% score interval for `successes` out of `n` (successes may be fractional: a tie is half).
pub fn wilson_interval(successes: f64, n: f64) -> (f64, f64) {
    const Z: f64 = 1.959_964;
    let p = successes / n;
    let z2n = Z * Z / n;
    let centre = (p + z2n / 2.0) / (1.0 + z2n);
    let half = Z / (1.0 + z2n) * (p * (1.0 - p) / n + z2n / (4.0 * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// A model version's metrics: its training run's last step and held-out metrics, and its win rate when
/// it was evaluated. The reference has none of them.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct VersionMetrics {
    #[serde(flatten)]
    pub trained: TrainedMetrics,
    #[serde(flatten)]
    pub win: Option<WinRate>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(n: usize) -> StepMetrics {
        StepMetrics {
            step: n,
            total_steps: 4,
            epoch: 1,
            loss: 0.69,
            rewards: RewardStats {
                chosen: 0.1,
                rejected: -0.1,
                margins: 0.2,
                accuracies: 0.75,
            },
            grad_norm: 1.5,
            learning_rate: 1e-6,
            tokens: 512,
            seconds: 4.0,
            optimizer_seconds: 0.25,
        }
    }

    #[test]
    fn run_metrics_read_back_with_trl_names() {
        let m = RunMetrics {
            trained: TrainedMetrics {
                last_step: Some(step(2)),
                eval: None,
            },
            history: vec![LossPoint::from(&step(1)), LossPoint::from(&step(2))],
        };
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["loss"], 0.69);
        assert_eq!(json["rewards/margins"], 0.2);
        assert_eq!(json["history"][1]["rewards/accuracies"], 0.75);
        assert!(json.get("eval").is_none());
        assert_eq!(serde_json::from_value::<RunMetrics>(json).unwrap(), m);
        // A run that has not stepped yet.
        let empty: RunMetrics = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, RunMetrics::default());
        assert_eq!(
            serde_json::to_value(&empty).unwrap(),
            serde_json::json!({"history": []})
        );
    }

    #[test]
    fn the_win_rate_interval_is_wilson_s_with_ties_as_half() {
        // 10 of 20 (8 wins, 4 ties): Wilson's 95% interval for p = 0.5, n = 20 is 0.299–0.701.
        let w = WinRate::from_counts(8, 4, 8, 0.0);
        assert_eq!(w.win_rate, 0.5);
        assert!((w.win_rate_low.unwrap() - 0.2993).abs() < 1e-3, "{w:?}");
        assert!((w.win_rate_high.unwrap() - 0.7007).abs() < 1e-3, "{w:?}");
        // All wins: the interval stays inside [0, 1] and below 1 at its low end.
        let w = WinRate::from_counts(16, 0, 0, 0.0);
        assert_eq!(w.win_rate_high, Some(1.0));
        assert!((w.win_rate_low.unwrap() - 0.806).abs() < 1e-3, "{w:?}");
        // A version stored before intervals were kept still reads.
        let old = serde_json::json!({"win_rate": 0.5, "wins": 1, "ties": 0, "losses": 1,
                                     "mean_reward": 0.0, "eval_prompts": 2});
        let old: WinRate = serde_json::from_value(old).unwrap();
        assert_eq!(old.win_rate_low, None);
    }

    #[test]
    fn version_metrics_carry_the_win_rate_beside_training() {
        let v = VersionMetrics {
            trained: TrainedMetrics {
                last_step: Some(step(4)),
                eval: None,
            },
            win: Some(WinRate::from_counts(9, 2, 5, 0.3)),
        };
        let json = serde_json::to_value(v).unwrap();
        assert_eq!(json["win_rate"], 0.625);
        assert_eq!(json["eval_prompts"], 16);
        assert_eq!(json["step"], 4);
        assert_eq!(serde_json::from_value::<VersionMetrics>(json).unwrap(), v);
        let reference: VersionMetrics = serde_json::from_str("{}").unwrap();
        assert_eq!(reference, VersionMetrics::default());
    }
}
