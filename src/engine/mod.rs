//! Where the model meets the server. One OS thread owns the model (`worker`); handlers and the active loop
//! talk to it through [`EngineHandle`], a cheap clone around a bounded queue: when the queue is full the
//! caller hears [`EngineError::Busy`] (a 429) instead of piling up. Training runs on a thread of its own
//! over a copy of the weights, so the served model keeps answering while DPO runs.
//!
//! Requests and answers here are plain data: the HTTP layer uses this module without touching candle.

pub mod active_loop;
pub mod evaluate;
mod training;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

pub use training::{TrainRequest, TrainResult};
use worker::Job;

use crate::domain::{LoopSettings, PairScores, SamplingWeights, Strategy};
use crate::learn::Progress;
use crate::learn::candidates::PairText;
use crate::model::Precision;

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("the model is busy: too many requests are waiting, try again shortly")]
    Busy,
    #[error("model error: {0}")]
    Model(String),
    #[error("the model engine has stopped")]
    Stopped,
    #[error("cancelled")]
    Cancelled,
}

/// How to start the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// A Hugging Face model directory or a `.gguf` file: the reference model.
    pub model_path: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Where trained versions are saved, one directory per version.
    pub checkpoint_dir: PathBuf,
    /// Requests that may wait for the model thread before callers are turned away.
    pub queue_capacity: usize,
    /// Trained policies kept loaded besides the reference (each costs one copy of the weights).
    pub max_loaded_policies: usize,
    /// What sampling reads: f32, or a quantized copy made of each version as it is loaded or installed.
    pub sampling_weights: SamplingWeights,
    /// What the weights compute in: f32, or bf16 on a GPU.
    pub dtype: Precision,
}

/// Which weights a request runs on: a model version id and where its weights are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyRef {
    pub version_id: String,
    pub path: String,
}

/// One acquisition round's settings, in the project's terms.
#[derive(Debug, Clone)]
pub struct AcquireRequest {
    pub policy: PolicyRef,
    pub prompts: Vec<String>,
    /// Pairs wanted.
    pub m: usize,
    pub settings: LoopSettings,
    pub strategy: Strategy,
    pub seed: u64,
}

/// A pair the model made, with every score that chose it; `prompt_index` points into the request's prompts.
#[derive(Debug, Clone, Serialize)]
pub struct ScoredPair {
    pub prompt_index: usize,
    pub completion_a: String,
    pub completion_b: String,
    /// Whether each completion stopped at EOS rather than at the length limit.
    pub ends_a: bool,
    pub ends_b: bool,
    pub scores: PairScores,
    /// 0-based position in the strategy's order (ties broken by the seed).
    pub rank: usize,
}

/// Pairs to score again with another version.
#[derive(Debug, Clone)]
pub struct RescoreRequest {
    pub policy: PolicyRef,
    pub pairs: Vec<PairText>,
    pub settings: LoopSettings,
    /// Entropy is re-estimated only for strategies that rank by it.
    pub strategy: Strategy,
}

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub policy: PolicyRef,
    pub prompts: Vec<String>,
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    pub seed: u64,
    /// Wrap each prompt in the model's chat template first.
    pub chat_template: bool,
    /// Sample from the version's own f32 weights even where the engine samples from a quantized copy:
    /// what a win rate measures is the trained model, not its inference copy.
    pub full_precision: bool,
    /// Index of the first prompt among the caller's whole list: prompt i samples from the random stream
    /// of prompt `first_prompt + i`, so a list asked for in pieces samples what it would in one call.
    pub first_prompt: usize,
}

/// A cheap, cloneable way to the model thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Job>,
    reference: Arc<PolicyRef>,
    checkpoint_dir: Arc<PathBuf>,
    trainer: Arc<training::Trainer>,
    /// The reference's completions of evaluation prompts, which every version of a project is compared
    /// with: the same request always samples the same, so they are made once (evaluate.rs).
    reference_completions: Arc<std::sync::Mutex<evaluate::CompletionCache>>,
}

impl EngineHandle {
    /// Loads the model on its own thread, checks it with one short generation, and returns once it is
    /// ready to serve. `reference_version_id` names the reference in the database.
    pub async fn start(
        config: EngineConfig,
        reference_version_id: String,
    ) -> Result<EngineHandle, EngineError> {
        let reference = PolicyRef {
            version_id: reference_version_id,
            path: config.model_path.display().to_string(),
        };
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let (ready_tx, ready_rx) = oneshot::channel();
        let worker_ref = reference.clone();
        let worker_config = config.clone();
        std::thread::Builder::new()
            .name("prefloop-model".into())
            .spawn(move || worker::run(worker_config, worker_ref, rx, ready_tx))
            .map_err(|e| EngineError::Model(format!("cannot start the model thread: {e}")))?;
        ready_rx.await.map_err(|_| EngineError::Stopped)??;
        Ok(EngineHandle {
            tx,
            reference: Arc::new(reference),
            checkpoint_dir: Arc::new(config.checkpoint_dir),
            trainer: Arc::new(training::Trainer::default()),
            reference_completions: Arc::default(),
        })
    }

    /// The model the server was started with.
    pub fn reference(&self) -> &PolicyRef {
        &self.reference
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, EngineError>>) -> Job,
    ) -> Result<T, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.tx.try_send(make(reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => EngineError::Busy,
            mpsc::error::TrySendError::Closed(_) => EngineError::Stopped,
        })?;
        answer.await.map_err(|_| EngineError::Stopped)?
    }

    /// Generates candidate pairs for the prompts and returns the `m` the strategy picks, best first.
    pub async fn acquire(&self, req: AcquireRequest) -> Result<Vec<ScoredPair>, EngineError> {
        self.call(|reply| Job::Acquire {
            req: Box::new(req),
            reply,
        })
        .await
    }

    /// Scores existing pairs with another model version (after training).
    pub async fn rescore(&self, req: RescoreRequest) -> Result<Vec<PairScores>, EngineError> {
        self.call(|reply| Job::Rescore {
            req: Box::new(req),
            reply,
        })
        .await
    }

    /// One completion per prompt.
    pub async fn generate(&self, req: GenerateRequest) -> Result<Vec<String>, EngineError> {
        self.call(|reply| Job::Generate {
            req: Box::new(req),
            reply,
        })
        .await
    }

    /// Runs one DPO update on its own thread; progress goes to `progress` as it happens.
    pub async fn train(
        &self,
        req: TrainRequest,
        progress: mpsc::UnboundedSender<Progress>,
        cancel: Arc<std::sync::atomic::AtomicBool>,
        hold: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> Result<TrainResult, EngineError> {
        training::run(self, req, progress, cancel, hold).await
    }
}
