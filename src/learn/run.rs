//! What a DPO run is given and what it reports: its settings ([`DpoConfig`], also built from a project's
//! [`LoopSettings`]), the hooks it is controlled through ([`RunControl`]: progress out, cancellation in) and
//! the ways it can end without a model ([`TrainError`]). The trainer, the reference cache and the model
//! glue all depend on this file, and it on none of them.

use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use super::dpo::LossConfig;
use super::optim::AdamWParams;
use crate::domain::{EvalMetrics, LoopSettings, Schedule, StepMetrics};

/// Errors of the model behind the trainer, kept with their cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

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
    /// The DPO settings of a project's background run; the rest keep their defaults.
    pub fn from_settings(s: &LoopSettings) -> DpoConfig {
        DpoConfig {
            loss: LossConfig {
                kind: s.loss,
                beta: s.beta,
                label_smoothing: s.label_smoothing,
            },
            optimizer: AdamWParams {
                lr: s.learning_rate,
                ..Default::default()
            },
            epochs: s.epochs as usize,
            batch_size: s.batch_size as usize,
            schedule: s.schedule,
            seed: s.seed,
            ..Default::default()
        }
    }

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

pub(crate) fn model_err(context: &'static str) -> impl FnOnce(BoxError) -> TrainError {
    move |source| TrainError::Model { context, source }
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

/// The hooks a running job talks through: progress out, cancellation in (checked before every step).
pub struct RunControl<'a> {
    pub progress: &'a mut dyn FnMut(&Progress),
    pub cancel: &'a AtomicBool,
    /// Asked before every step: while it says true, the run waits (still cancellable) so that other
    /// work gets the cores. `&|| false` never holds it.
    pub hold: &'a dyn Fn() -> bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::LossKind;

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
        let json = serde_json::to_value(DpoConfig::default()).unwrap();
        assert_eq!(json["schedule"], "reset");
    }

    #[test]
    fn a_project_s_settings_become_its_run_s() {
        let s = LoopSettings {
            loss: LossKind::Ipo,
            beta: 0.1,
            learning_rate: 2e-5,
            epochs: 3,
            batch_size: 4,
            schedule: Schedule::Continue,
            seed: 9,
            ..Default::default()
        };
        let cfg = DpoConfig::from_settings(&s);
        assert_eq!(cfg.loss.kind, LossKind::Ipo);
        assert_eq!((cfg.loss.beta, cfg.optimizer.lr), (0.1, 2e-5));
        assert_eq!((cfg.epochs, cfg.batch_size, cfg.seed), (3, 4, 9));
        assert_eq!(cfg.schedule, Schedule::Continue);
        assert!(cfg.validate().is_ok());
    }
}
