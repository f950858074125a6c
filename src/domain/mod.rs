//! The ideas every layer below HTTP shares, each defined once: the acquisition strategies, the losses and
//! schedules of DPO, an annotator's choice, the scores a pair was chosen by, a project's loop settings and
//! the metrics of a training run. Plain data with serde (and utoipa schemas where the REST API shows them):
//! `learn` computes with these types, `store` persists them, `engine` passes them along, `http` shows them.

mod metrics;
mod settings;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use metrics::{
    EvalMetrics, LossPoint, RewardStats, RunMetrics, StepMetrics, TrainedMetrics, VersionMetrics,
    WinRate, wilson_interval,
};
pub use settings::{
    CompletionSettings, DEFAULT_GOLD_RATE, GOLD_TRIAL, LoopSettings, LoraSettings, Oversample,
};

/// A name that is not one of an enum's values; says which values there are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {given:?}: expected one of {expected}")]
pub struct UnknownName {
    pub what: &'static str,
    pub given: String,
    pub expected: String,
}

/// A fieldless enum whose values have one lower-case name each, used the same way in JSON, the database,
/// the CLI and the pages: `ALL`, `as_str`, `Display` and `FromStr` from one list.
macro_rules! named_enum {
    ($(#[$meta:meta])* pub enum $name:ident ($what:literal) {
        $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash,
            ::serde::Serialize, ::serde::Deserialize, ::utoipa::ToSchema,
        )]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] #[schema(rename = $text)] $variant,)+
        }

        impl $name {
            /// Every value, in the order the pages list them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::domain::UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| $crate::domain::UnknownName {
                        what: $what,
                        given: s.to_string(),
                        expected: $name::ALL
                            .iter()
                            .map(|v| v.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
            }
        }
    };
}

pub(crate) use named_enum;

named_enum! {
    /// Which pending pair is worth a label first (REFERENCE.md, "The acquisition functions").
    #[derive(Default)]
    pub enum Strategy ("strategy") {
        /// Uniform over candidates: the baseline every claim is measured against.
        #[default]
        Random = "random",
        /// Highest predictive entropy of the prompt first.
        Entropy = "entropy",
        /// Most certain pair first, |r̂a − r̂b| descending (the paper's choice).
        Certainty = "certainty",
        /// Least certain pair first (ADPO-style).
        Uncertainty = "uncertainty",
        /// Keep the top fraction of prompts by entropy, then the most certain pairs among them.
        Hybrid = "hybrid",
        /// Hybrid's kept prompts in k-center order (farthest-first over the policy's prompt embeddings),
        /// each prompt's most certain pair, one pair per prompt before any prompt gets a second: a batch
        /// of uncertain prompts that are not alike.
        KCenter = "kcenter",
    }
}

impl Strategy {
    /// Whether the strategy needs the prompt's predictive entropy (N extra samples per prompt).
    pub fn needs_entropy(self) -> bool {
        matches!(
            self,
            Strategy::Entropy | Strategy::Hybrid | Strategy::KCenter
        )
    }

    /// Whether the strategy needs implicit rewards (policy and reference log-probs of both completions).
    pub fn needs_rewards(self) -> bool {
        matches!(
            self,
            Strategy::Certainty | Strategy::Uncertainty | Strategy::Hybrid | Strategy::KCenter
        )
    }

    /// The score a stored pair is served by, highest first; `None` leaves the order to the tie key: the
    /// seeded rank of random, and k-center's acquisition order (a set, not a score per pair).
    pub fn serve_score(self, s: &PairScores) -> Option<f64> {
        match self {
            Strategy::Random | Strategy::KCenter => None,
            Strategy::Entropy => s.entropy,
            Strategy::Certainty | Strategy::Hybrid => Some(s.certainty),
            Strategy::Uncertainty => Some(-s.certainty),
        }
    }
}

named_enum! {
    /// Which preference loss DPO minimises.
    #[derive(Default)]
    pub enum LossKind ("loss") {
        /// −log σ(βh), h from summed log-probs (with optional label smoothing).
        #[default]
        Dpo = "dpo",
        /// (h̄ − 1/(2β))², h̄ from per-token mean log-probs.
        Ipo = "ipo",
    }
}

named_enum! {
    /// Where training starts each round (the paper's two schedules).
    #[derive(Default)]
    pub enum Schedule ("schedule") {
        /// Start from the reference weights and train on all labels so far (the paper's main runs).
        #[default]
        Reset = "reset",
        /// Keep training the current policy on the new and old labels.
        Continue = "continue",
    }
}

named_enum! {
    /// How a prompt's predictive entropy is estimated for the strategies that use it.
    #[derive(Default)]
    pub enum EntropyEstimator ("entropy estimator") {
        /// The paper's Monte-Carlo estimate: N completions at temperature 1, Ĥ(x) = −(1/N) Σₙ log πθ(yₙ|x).
        #[default]
        Samples = "samples",
        /// One completion at temperature 1, summing the policy's full per-token entropy along it:
        /// Σ_t H(πθ(·|x, y<t)). One sample instead of N; lower variance per sample.
        Tokens = "tokens",
    }
}

named_enum! {
    /// The weights sampling reads (completions, the `tokens` entropy estimate, `/generate`): the model's own
    /// (f32), or an inference-only quantized copy made from them whenever a version is loaded or installed.
    /// Scoring (certainty, DPO's log-probs) and training always read the model's own weights.
    #[derive(Default)]
    pub enum SamplingWeights ("sampling weights") {
        /// The model's own weights: what training and scoring read too.
        #[default]
        F32 = "f32",
        /// 8-bit blocks of 32 with one scale (GGML's Q8_0): 1.06 bytes a weight, near-f32 samples.
        Q8_0 = "q8_0",
        /// 4-bit k-quants in super-blocks of 256 (GGML's Q4_K): 0.56 bytes a weight, coarser samples.
        Q4K = "q4_k",
    }
}

named_enum! {
    /// A linear layer of every decoder block that LoRA adapts, by the short name the CLI and the project
    /// setting use; [`LoraTarget::module`] is the Hugging Face module name PEFT files use.
    pub enum LoraTarget ("LoRA target") {
        Q = "q",
        K = "k",
        V = "v",
        O = "o",
        Gate = "gate",
        Up = "up",
        Down = "down",
    }
}

impl LoraTarget {
    /// The module's name in a Hugging Face llama (and so in PEFT's `target_modules` and tensor names).
    pub fn module(self) -> &'static str {
        match self {
            LoraTarget::Q => "q_proj",
            LoraTarget::K => "k_proj",
            LoraTarget::V => "v_proj",
            LoraTarget::O => "o_proj",
            LoraTarget::Gate => "gate_proj",
            LoraTarget::Up => "up_proj",
            LoraTarget::Down => "down_proj",
        }
    }

    /// The target whose Hugging Face module name is `module`.
    pub fn from_module(module: &str) -> Option<LoraTarget> {
        LoraTarget::ALL
            .iter()
            .copied()
            .find(|t| t.module() == module)
    }
}

named_enum! {
    /// How the votes of a pair labelled by several annotators become what DPO trains on.
    #[derive(Default)]
    pub enum LabelAggregation ("label aggregation") {
        /// One preference per pair, by the majority of its decisive votes; a tie of votes trains nothing.
        #[default]
        Majority = "majority",
        /// The majority's preference, with the pair's label smoothing set to the minority's share of its
        /// decisive votes (conservative DPO per pair): a 2–1 pair trains with smoothing 1/3.
        Soft = "soft",
    }
}

named_enum! {
    /// How the workbench shows a pair's completions.
    #[derive(Default)]
    pub enum Display ("display") {
        /// Each completion rendered as Markdown on its own.
        #[default]
        Markdown = "markdown",
        /// Raw text: the prompt in grey, the continuation after it, as the model wrote it.
        Raw = "raw",
    }
}

impl EntropyEstimator {
    /// What projects stored before the setting existed ran with.
    pub fn stored_before_the_field() -> EntropyEstimator {
        EntropyEstimator::Samples
    }
}

named_enum! {
    /// What an annotator (or a judge) answered about a pair as shown.
    pub enum Choice ("choice") {
        Left = "left",
        Right = "right",
        Tie = "tie",
        BothBad = "both_bad",
        Skip = "skip",
    }
}

impl Choice {
    /// Every answer but a skip spends the label budget.
    pub fn spends_budget(self) -> bool {
        self != Choice::Skip
    }
}

named_enum! {
    /// What kind of AI judge answers a project's pairs.
    pub enum JudgeKind ("judge kind") {
        /// Prefers the more positive completion (VADER, built in).
        Sentiment = "sentiment",
        /// An OpenAI-compatible chat-completions endpoint.
        Http = "http",
    }
}

named_enum! {
    /// What an attached judge does: answer pairs from the label budget (the default), or only evaluate
    /// each new version against the reference on the held-out prompts, spending no label.
    #[derive(Default)]
    pub enum JudgeRole ("judge role") {
        #[default]
        Label = "label",
        Evaluate = "evaluate",
    }
}

/// Every score a candidate pair can be chosen by. `entropy` is the prompt's (shared by all pairs of that
/// prompt) and is `None` when the strategy did not need it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PairScores {
    pub entropy: Option<f64>,
    pub reward_a: f64,
    pub reward_b: f64,
    pub certainty: f64,
}

/// Why a stored pair is where it is in the queue: the strategy, every score, and (for pairs the strategy
/// ordered in their round) the rank it gave. Stored with the pair and exported as `score_parts`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScoreParts {
    pub strategy: Strategy,
    #[serde(flatten)]
    pub scores: PairScores,
    /// 0-based position in its round's order; `None` after a re-score.
    pub rank: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_json_and_text() {
        for &s in Strategy::ALL {
            assert_eq!(s.as_str().parse::<Strategy>(), Ok(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for &c in Choice::ALL {
            let back: Choice = serde_json::from_value(serde_json::json!(c.as_str())).unwrap();
            assert_eq!(back, c);
        }
        assert_eq!("both_bad".parse::<Choice>(), Ok(Choice::BothBad));
        assert_eq!("continue".parse::<Schedule>(), Ok(Schedule::Continue));
        for &e in EntropyEstimator::ALL {
            assert_eq!(e.as_str().parse::<EntropyEstimator>(), Ok(e));
            assert_eq!(serde_json::to_value(e).unwrap(), e.as_str());
        }
        assert_eq!(
            EntropyEstimator::ALL
                .iter()
                .map(|e| e.as_str())
                .collect::<Vec<_>>(),
            ["samples", "tokens"]
        );
        let err = "sgd".parse::<LossKind>().unwrap_err().to_string();
        assert_eq!(err, "unknown loss \"sgd\": expected one of dpo, ipo");
    }

    #[test]
    fn serve_order_follows_the_strategy() {
        let s = PairScores {
            entropy: Some(2.0),
            reward_a: 0.5,
            reward_b: -0.5,
            certainty: 1.0,
        };
        assert_eq!(Strategy::Random.serve_score(&s), None);
        assert_eq!(Strategy::Entropy.serve_score(&s), Some(2.0));
        assert_eq!(Strategy::Hybrid.serve_score(&s), Some(1.0));
        assert_eq!(Strategy::Uncertainty.serve_score(&s), Some(-1.0));
    }

    #[test]
    fn score_parts_keep_their_stored_shape() {
        let parts = ScoreParts {
            strategy: Strategy::Hybrid,
            scores: PairScores {
                entropy: None,
                reward_a: 0.25,
                reward_b: 0.0,
                certainty: 0.25,
            },
            rank: Some(3),
        };
        let json = serde_json::to_value(parts).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"strategy": "hybrid", "entropy": null, "reward_a": 0.25,
                "reward_b": 0.0, "certainty": 0.25, "rank": 3})
        );
        assert_eq!(serde_json::from_value::<ScoreParts>(json).unwrap(), parts);
    }
}
