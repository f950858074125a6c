//! The method, free of I/O: acquisition scores and strategies, DPO losses, the trainer, the optimizer.
//!
//! - [`acquisition`]: pure functions over scores (entropy, implicit rewards, certainty) and the strategies that
//!   order candidate pairs; the server calls these directly.
//! - [`dpo`]: the `dpo` (sigmoid, with label smoothing) and `ipo` losses on candle tensors.
//! - [`optim`]: a fused, in-place AdamW.
//! - [`run`]: what a DPO run is given and reports: settings, progress and cancellation hooks, errors.
//! - [`trainer`]: the DPO loop itself.
//! - [`reference`]: reference log-probs, computed once per pair and cached.
//! - [`policy`]: what the trainer needs from a model ([`DpoModel`], implemented by `LanguageModel`).
//! - [`candidates`]: one acquisition round with a live model (sample, score, order), for the CLI and server.
//! - [`data`]: TRL-format preference files and prompt files, bad lines reported by number.
//!
//! The types it shares with the other layers (strategies, losses, schedules, scores, metrics) live in
//! [`crate::domain`].

pub mod acquisition;
pub mod candidates;
pub mod data;
pub mod dpo;
pub mod optim;
pub mod policy;
pub mod reference;
pub mod run;
pub mod trainer;

pub use acquisition::{
    AcquisitionRecord, Candidate, EntropySample, certainty, entropy_by_prompt, implicit_reward,
    order_candidates, predictive_entropy, select_candidates, top_by_entropy,
};
pub use data::{DataError, PreferencePair, read_preferences, read_preferences_chat, read_prompts};
pub use dpo::LossConfig;
pub use optim::{AdamW, AdamWParams};
pub use policy::DpoModel;
pub use reference::{ReferenceCache, ReferenceLogProbs};
pub use run::{BoxError, DpoConfig, Progress, RunControl, TrainError};
pub use trainer::{TrainOutcome, split_eval, train_dpo};
