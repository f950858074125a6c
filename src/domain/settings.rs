//! A project's active-learning settings: how completions are sampled, how much the strategies over-sample,
//! and the DPO settings of its background runs. Every field has a default, so a project needs only a name.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    Display, EntropyEstimator, LabelAggregation, LoraTarget, LossKind, Schedule, Strategy,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CompletionSettings {
    pub max_new_tokens: u32,
    pub temperature: f64,
    pub top_p: f64,
}

impl Default for CompletionSettings {
    /// The paper's acquisition sampling: T = 0.7, top-p 1.0, completions of 16–24 tokens.
    fn default() -> Self {
        CompletionSettings {
            max_new_tokens: 24,
            temperature: 0.7,
            top_p: 1.0,
        }
    }
}

/// Over-sampling per acquired pair: how many prompts a round draws (and entropy-scores, for the strategies
/// that use entropy) and how many candidate pairs it certainty-scores, for every pair it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Oversample {
    /// Prompts drawn per pair acquired (the paper: 32,768 / 128 = 256).
    pub prompts: u32,
    /// Candidate pairs certainty-scored per pair acquired (the paper: 4,096 / 128 = 32).
    pub pairs: u32,
}

impl Oversample {
    /// The paper's IMDB ratios: 32,768 prompts entropy-scored, 4,096 kept, 128 pairs acquired per round.
    pub const PAPER: Oversample = Oversample {
        prompts: 32_768 / 128,
        pairs: 4_096 / 128,
    };

    /// The share of entropy-scored prompts that hybrid keeps: pairs / prompts (1/4 by default, 1/8 in the
    /// paper), at most all of them.
    pub fn keep_fraction(&self) -> f64 {
        (self.pairs.max(1) as f64 / self.prompts.max(1) as f64).min(1.0)
    }

    /// Prompts a round draws from the pool to acquire `m` pairs with `strategy`: one per pair for random,
    /// `pairs` per pair for the strategies that only certainty-score, `prompts` per pair for those that
    /// entropy-score prompts first.
    pub fn prompts_to_draw(&self, strategy: Strategy, m: usize) -> usize {
        let per_pair = match strategy {
            Strategy::Random => 1,
            Strategy::Certainty | Strategy::Uncertainty => self.pairs.max(1),
            Strategy::Entropy | Strategy::Hybrid | Strategy::KCenter => self.prompts.max(1),
        };
        m * per_pair as usize
    }
}

impl Default for Oversample {
    /// Small enough that a two-core CPU keeps up with a few annotators: 8 prompts and 2 pairs per pair.
    fn default() -> Self {
        Oversample {
            prompts: 8,
            pairs: 2,
        }
    }
}

/// Low-rank adapters (LoRA, Hu et al. 2021) instead of full fine-tuning: each targeted linear weight W
/// (out × in) of every block becomes W + (alpha / rank) · B · A with A (rank × in) and B (out × rank)
/// trained and W frozen, as PEFT does it (A uniform in ±1/√in, B zero, so a fresh adapter changes
/// nothing; dropout on the adapter's input while training).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSettings {
    pub rank: u32,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<LoraTarget>,
}

impl Default for LoraSettings {
    /// Rank 8 with alpha 16 (a scale of 2) on all seven linear layers of a block, no dropout.
    fn default() -> Self {
        LoraSettings {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: LoraTarget::ALL.to_vec(),
        }
    }
}

impl LoraSettings {
    /// What multiplies B · A: alpha / rank.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank.max(1) as f64
    }

    /// Whether the settings can train; the message names the first field that cannot.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=1024).contains(&self.rank) {
            return Err("lora.rank must be 1 to 1024".into());
        }
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return Err("lora.alpha must be a positive number".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err("lora.dropout must be in [0, 1)".into());
        }
        if self.targets.is_empty() {
            return Err("lora.targets must name at least one of q, k, v, o, gate, up, down".into());
        }
        Ok(())
    }

    /// The same settings with the targets in block order, each once (as adapters record them).
    pub fn normalised(&self) -> LoraSettings {
        LoraSettings {
            targets: self.targets_in_order(),
            ..self.clone()
        }
    }

    /// The targets in block order, each once.
    pub fn targets_in_order(&self) -> Vec<LoraTarget> {
        LoraTarget::ALL
            .iter()
            .copied()
            .filter(|t| self.targets.contains(t))
            .collect()
    }
}

/// The active-learning loop's settings. Every field has a default, so a project needs only a name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct LoopSettings {
    pub seed: u64,
    /// Labels between background DPO updates; 0 = only on demand.
    pub train_every: u32,
    pub loss: LossKind,
    pub beta: f64,
    pub label_smoothing: f64,
    pub schedule: Schedule,
    pub learning_rate: f64,
    pub epochs: u32,
    pub batch_size: u32,
    pub completions: CompletionSettings,
    pub oversample: Oversample,
    /// N, the completions per prompt of the `samples` entropy estimator.
    pub entropy_samples: u32,
    /// How entropy-using strategies estimate a prompt's entropy. A new project gets `tokens` (a quarter
    /// of the cost of `samples` at N = 4, and as stable across seeds: docs/EXPERIMENTS.md); settings
    /// stored before the field existed keep what they ran with, `samples`.
    #[serde(default = "EntropyEstimator::stored_before_the_field")]
    pub entropy_estimator: EntropyEstimator,
    /// Wrap each prompt in the model's chat template (as one user turn) before generating, scoring
    /// and training: for instruction-tuned models.
    pub chat_template: bool,
    /// Install a trained version only when it beats the one serving (win rate on the eval prompts
    /// when the project measures it, else held-out DPO accuracy); otherwise every run's version serves.
    pub install_only_if_better: bool,
    /// Distinct annotators who answer a pair before it counts as labelled (never one person twice).
    pub labels_per_pair: u32,
    /// How several votes on one pair train DPO.
    pub label_aggregation: LabelAggregation,
    /// Share of served pairs drawn from the gold pairs; `None`: 0.05 when the project has any.
    pub gold_rate: Option<f64>,
    /// An annotator whose share of correct gold answers is below this after `GOLD_TRIAL` gold answers
    /// receives no more pairs; `None`: no bar.
    pub min_gold_accuracy: Option<f64>,
    /// How the workbench shows completions.
    pub display: Display,
    /// One line on what decides an answer, shown on the workbench above every pair ("Which
    /// continuation is more positive?"); empty: the guidelines' first line.
    pub criterion: String,
    /// Held-out prompts (the oldest of the eval split) each new version's win rate is measured on.
    pub eval_prompts: u32,
    /// Train LoRA adapters on the frozen reference instead of every weight; `None`: full fine-tuning.
    /// Versions are then stored as adapters, and all of them share the reference's weights in memory.
    pub lora: Option<LoraSettings>,
}

/// Gold answers an annotator gives before `min_gold_accuracy` applies to them.
pub const GOLD_TRIAL: i64 = 10;

/// The share of served pairs drawn from gold when a project with gold pairs sets none.
pub const DEFAULT_GOLD_RATE: f64 = 0.05;

impl Default for LoopSettings {
    fn default() -> Self {
        LoopSettings {
            seed: 0,
            train_every: 64,
            loss: LossKind::Dpo,
            // The paper's 0.2 gave way to 0.1 in the second defaults sweep: ahead after 128 labels on both
            // seeds (0.86 and 0.89 against 0.81 and 0.71), level or ahead at 64 (docs/EXPERIMENTS.md).
            beta: 0.1,
            label_smoothing: 0.0,
            schedule: Schedule::Reset,
            // The paper's 1e-6 (50 epochs) barely moves SmolLM2 in the 2 epochs a round can afford: 128
            // labels left the win rate at 0.46–0.48. The defaults sweep (docs/EXPERIMENTS.md) chose 5e-5.
            learning_rate: 5e-5,
            epochs: 2,
            batch_size: 8,
            completions: CompletionSettings::default(),
            oversample: Oversample::default(),
            entropy_samples: 4,
            entropy_estimator: EntropyEstimator::Tokens,
            chat_template: false,
            install_only_if_better: true,
            labels_per_pair: 1,
            label_aggregation: LabelAggregation::Majority,
            gold_rate: None,
            min_gold_accuracy: None,
            display: Display::Markdown,
            criterion: String::new(),
            eval_prompts: 64,
            lora: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_draws_prompts_by_what_the_strategy_scores() {
        let o = Oversample::default();
        assert_eq!(o.prompts_to_draw(Strategy::Random, 4), 4);
        assert_eq!(o.prompts_to_draw(Strategy::Certainty, 4), 8);
        assert_eq!(o.prompts_to_draw(Strategy::Uncertainty, 4), 8);
        assert_eq!(o.prompts_to_draw(Strategy::Hybrid, 4), 32);
        assert_eq!(o.prompts_to_draw(Strategy::Entropy, 4), 32);
        let zero = Oversample {
            prompts: 0,
            pairs: 0,
        };
        assert_eq!(zero.prompts_to_draw(Strategy::Hybrid, 3), 3);
    }

    #[test]
    fn settings_stored_before_the_estimator_read_as_samples() {
        let mut old = serde_json::to_value(LoopSettings::default()).unwrap();
        old.as_object_mut().unwrap().remove("entropy_estimator");
        let back: LoopSettings = serde_json::from_value(old).unwrap();
        assert_eq!(back.entropy_estimator, EntropyEstimator::Samples);
        assert_eq!(
            LoopSettings::default().entropy_estimator,
            EntropyEstimator::Tokens
        );
        let tokens: LoopSettings =
            serde_json::from_value(serde_json::json!({"entropy_estimator": "tokens"})).unwrap();
        assert_eq!(tokens.entropy_estimator, EntropyEstimator::Tokens);
    }

    #[test]
    fn hybrid_keeps_pairs_over_prompts() {
        assert_eq!(Oversample::default().keep_fraction(), 0.25);
        assert_eq!(Oversample::PAPER.keep_fraction(), 0.125);
        let more_pairs = Oversample {
            prompts: 2,
            pairs: 8,
        };
        assert_eq!(more_pairs.keep_fraction(), 1.0);
    }
}
