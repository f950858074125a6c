//! The thread that owns the model: loads it, warms it up, then answers jobs one at a time.

use tokio::sync::{mpsc, oneshot};

use super::{
    AcquireRequest, EngineConfig, EngineError, GenerateRequest, PolicyRef, RescoreRequest,
    ScoredPair,
};
use crate::domain::{LoopSettings, PairScores, SamplingWeights, Strategy};
use crate::learn::DpoConfig;
use crate::learn::candidates::{
    AcquireConfig, RewardSpec, acquire_pairs, prompt_entropies, prompt_ids, score_pairs,
};
use crate::model::{LanguageModel, SampleRow, SamplingParams, parse_device, row_seed};

type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

pub(super) enum Job {
    Acquire {
        req: Box<AcquireRequest>,
        reply: Reply<Vec<ScoredPair>>,
    },
    Rescore {
        req: Box<RescoreRequest>,
        reply: Reply<Vec<PairScores>>,
    },
    Generate {
        req: Box<GenerateRequest>,
        reply: Reply<Vec<String>>,
    },
    /// Shared handles (not copies) on a policy and on the reference, for a training thread that copies
    /// what it trains. Installed models are never changed in place, so sharing them is safe.
    Models {
        policy: PolicyRef,
        reply: Reply<(LanguageModel, LanguageModel)>,
    },
    /// A freshly trained version, so it serves without a reload from disk.
    Install {
        version_id: String,
        model: Box<LanguageModel>,
    },
}

fn model_error(e: impl std::fmt::Display) -> EngineError {
    EngineError::Model(e.to_string())
}

struct Models {
    reference_id: String,
    reference: LanguageModel,
    /// Trained policies, least recently used first.
    policies: Vec<(String, LanguageModel)>,
    max_policies: usize,
    device: candle_core::Device,
    dtype: candle_core::DType,
    sampling_weights: SamplingWeights,
}

/// `model` sampling through `weights`: a quantized copy is made here, once per version loaded or installed.
fn for_sampling(
    model: LanguageModel,
    weights: SamplingWeights,
    version: &str,
) -> Result<LanguageModel, EngineError> {
    if weights == SamplingWeights::F32 {
        return Ok(model);
    }
    let started = std::time::Instant::now();
    let model = model.with_sampling_weights(weights).map_err(|e| {
        EngineError::Model(format!(
            "{e} (serve with --sampling-weights f32 to sample from the f32 weights)"
        ))
    })?;
    tracing::info!(
        version,
        weights = %weights,
        seconds = started.elapsed().as_secs_f64(),
        "quantized the sampling copy"
    );
    Ok(model)
}

impl Models {
    /// The model for a version, loading it from its path when it is not in memory.
    fn get(&mut self, policy: &PolicyRef) -> Result<&LanguageModel, EngineError> {
        if policy.version_id == self.reference_id {
            return Ok(&self.reference);
        }
        if let Some(i) = self
            .policies
            .iter()
            .position(|(id, _)| *id == policy.version_id)
        {
            let entry = self.policies.remove(i);
            self.policies.push(entry);
        } else {
            // An adapter goes onto the reference's weights (and their sampling copy): one base in memory.
            let model = if LanguageModel::is_adapter(&policy.path) {
                self.reference.with_adapter(&policy.path)
            } else {
                LanguageModel::load_as(&policy.path, &self.device, self.dtype)
            }
            .map_err(model_error)?;
            let model = for_sampling(model, self.sampling_weights, &policy.version_id)?;
            self.insert(policy.version_id.clone(), model);
        }
        Ok(&self.policies.last().expect("just inserted").1)
    }

    fn insert(&mut self, id: String, model: LanguageModel) {
        self.policies.retain(|(v, _)| *v != id);
        self.policies.push((id, model));
        while self.policies.len() > self.max_policies.max(1) {
            self.policies.remove(0);
        }
    }

    fn is_reference(&self, policy: &PolicyRef) -> bool {
        policy.version_id == self.reference_id
    }
}

pub(super) fn run(
    config: EngineConfig,
    reference: PolicyRef,
    mut rx: mpsc::Receiver<Job>,
    ready: oneshot::Sender<Result<(), EngineError>>,
) {
    let loaded = parse_device(&config.device)
        .and_then(|device| config.dtype.check_device(&device).map(|()| device))
        .map_err(model_error)
        .and_then(|device| {
            let model = LanguageModel::load_as(&config.model_path, &device, config.dtype.dtype())
                .map_err(|e| {
                EngineError::Model(format!("{}: {e}", config.model_path.display()))
            })?;
            let model = for_sampling(model, config.sampling_weights, &reference.version_id)?;
            // Warm-up: one token through the sampler proves the weights and the tokenizer work together.
            let ids = model.tokenizer().encode("Hello").map_err(model_error)?;
            let params = SamplingParams {
                max_new_tokens: 1,
                ..Default::default()
            };
            model.sample(&[ids], 1, &params).map_err(model_error)?;
            Ok(Models {
                reference_id: reference.version_id.clone(),
                reference: model,
                policies: Vec::new(),
                max_policies: config.max_loaded_policies,
                device,
                dtype: config.dtype.dtype(),
                sampling_weights: config.sampling_weights,
            })
        });
    let mut models = match loaded {
        Ok(m) => {
            let _ = ready.send(Ok(()));
            m
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    while let Some(job) = rx.blocking_recv() {
        match job {
            Job::Acquire { req, reply } => {
                let _ = reply.send(acquire(&mut models, *req));
            }
            Job::Rescore { req, reply } => {
                let _ = reply.send(rescore(&mut models, *req));
            }
            Job::Generate { req, reply } => {
                let _ = reply.send(generate(&mut models, *req));
            }
            Job::Models { policy, reply } => {
                let answer = models
                    .get(&policy)
                    .cloned()
                    .map(|p| (p, models.reference.clone()));
                let _ = reply.send(answer);
            }
            Job::Install { version_id, model } => {
                // A version that cannot be quantized still serves: loaded again from its checkpoint on
                // first use, where the failure is reported to the request that needed it.
                match for_sampling(*model, models.sampling_weights, &version_id) {
                    Ok(model) => models.insert(version_id, model),
                    Err(e) => {
                        tracing::warn!(version = %version_id, error = %e, "not installed in memory")
                    }
                }
            }
        }
    }
}

fn acquire_config(settings: &LoopSettings, strategy: Strategy, seed: u64) -> AcquireConfig {
    let c = &settings.completions;
    AcquireConfig {
        strategy,
        reward: RewardSpec::of(&DpoConfig::from_settings(settings)),
        entropy_samples: settings.entropy_samples as usize,
        entropy_estimator: settings.entropy_estimator,
        length_normalised: false,
        temperature: c.temperature,
        top_p: c.top_p,
        max_new_tokens: c.max_new_tokens as usize,
        keep_fraction: settings.oversample.keep_fraction(),
        seed,
    }
}

fn acquire(models: &mut Models, req: AcquireRequest) -> Result<Vec<ScoredPair>, EngineError> {
    let cfg = acquire_config(&req.settings, req.strategy, req.seed);
    let is_reference = models.is_reference(&req.policy);
    let reference = models.reference.clone();
    let policy = models.get(&req.policy)?;
    let reference = (!is_reference).then_some(&reference);
    let prompts = as_prompts(policy, &req.prompts, req.settings.chat_template);
    let pairs = acquire_pairs(
        policy,
        reference,
        &prompts,
        req.m,
        &cfg,
        &req.policy.version_id,
    )
    .map_err(model_error)?;
    Ok(pairs
        .into_iter()
        .map(|p| ScoredPair {
            prompt_index: p.prompt_index,
            completion_a: p.completion_a,
            completion_b: p.completion_b,
            ends_a: p.ends_a,
            ends_b: p.ends_b,
            scores: p.scores,
            rank: p.rank,
        })
        .collect())
}

/// The prompts as the model sees them: in its chat template (one user turn) when the project asks.
fn as_prompts(model: &LanguageModel, prompts: &[String], chat_template: bool) -> Vec<String> {
    if chat_template {
        prompts
            .iter()
            .map(|p| model.tokenizer().chat_prompt(p))
            .collect()
    } else {
        prompts.to_vec()
    }
}

fn encode_prompt(model: &LanguageModel, text: &str) -> Result<Vec<u32>, EngineError> {
    prompt_ids(model.tokenizer(), text).map_err(model_error)
}

fn rescore(models: &mut Models, req: RescoreRequest) -> Result<Vec<PairScores>, EngineError> {
    let cfg = acquire_config(&req.settings, req.strategy, req.settings.seed);
    let is_reference = models.is_reference(&req.policy);
    let reference = models.reference.clone();
    let policy = models.get(&req.policy)?;
    let reference = (!is_reference).then_some(&reference);
    let mut pairs = req.pairs;
    if req.settings.chat_template {
        let tok = policy.tokenizer();
        for p in &mut pairs {
            p.prompt = tok.chat_prompt(&p.prompt);
        }
    }
    let mut scores = score_pairs(policy, reference, &pairs, &cfg.reward).map_err(model_error)?;
    if cfg.strategy.needs_entropy() {
        let prompt_ids: Vec<Vec<u32>> = pairs
            .iter()
            .map(|p| encode_prompt(policy, &p.prompt))
            .collect::<Result<_, _>>()?;
        let entropies = prompt_entropies(policy, &prompt_ids, &cfg).map_err(model_error)?;
        for (s, e) in scores.iter_mut().zip(entropies) {
            s.entropy = e;
        }
    }
    Ok(scores)
}

fn generate(models: &mut Models, req: GenerateRequest) -> Result<Vec<String>, EngineError> {
    let policy = models.get(&req.policy)?;
    let exact;
    let policy = if req.full_precision && policy.sampling_weights() != SamplingWeights::F32 {
        exact = policy
            .with_sampling_weights(SamplingWeights::F32)
            .map_err(model_error)?;
        &exact
    } else {
        policy
    };
    let ids: Vec<Vec<u32>> = as_prompts(policy, &req.prompts, req.chat_template)
        .iter()
        .map(|p| encode_prompt(policy, p))
        .collect::<Result<_, _>>()?;
    let params = SamplingParams {
        temperature: req.temperature,
        top_p: req.top_p,
        max_new_tokens: req.max_new_tokens,
        seed: req.seed,
        ..Default::default()
    };
    // Prompt i's stream is the one it has at its place in the caller's whole list.
    let rows: Vec<SampleRow> = ids
        .into_iter()
        .enumerate()
        .map(|(i, prompt_ids)| SampleRow {
            prompt_ids,
            seed: row_seed(req.seed, req.first_prompt + i, 0),
        })
        .collect();
    let samples = policy.sample_rows(&rows, &params).map_err(model_error)?;
    Ok(samples.into_iter().map(|s| s.text).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EntropyEstimator;

    #[test]
    fn acquisition_and_rescoring_take_the_projects_entropy_estimator() {
        for &e in EntropyEstimator::ALL {
            let settings = LoopSettings {
                entropy_estimator: e,
                entropy_samples: 5,
                ..LoopSettings::default()
            };
            let cfg = acquire_config(&settings, Strategy::Hybrid, 7);
            assert_eq!(cfg.entropy_estimator, e);
            assert_eq!(cfg.entropy_samples, 5);
        }
    }
}
