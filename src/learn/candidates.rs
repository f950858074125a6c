//! From prompts to scored, ordered candidate pairs with a live model: the glue between the model engine
//! (sampling, scoring) and the pure strategies of [`super::acquisition`]. Used by `prefloop acquire` and meant
//! for the server's online mode.
//!
//! Per round, as in the paper: entropy-score prompts with N samples at temperature 1 (only for strategies that
//! need it), keep hybrid's top fraction, sample two completions per remaining prompt (T 0.7 by default), score
//! both under the policy and the reference, order, keep M.

use serde::{Deserialize, Serialize};

use super::acquisition::{self, AcquisitionRecord, Candidate, EntropySample};
use crate::domain::{Oversample, PairScores, Strategy};
use crate::model::{LanguageModel, ModelError, SamplingParams, TextTokenizer};

/// Settings of one acquisition round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AcquireConfig {
    pub strategy: Strategy,
    /// β of the implicit rewards (use the trainer's).
    pub beta: f64,
    /// N: samples per prompt for the entropy estimate.
    pub entropy_samples: usize,
    /// Divide each sample's log-prob by its length before averaging.
    pub length_normalised: bool,
    /// Temperature of the two completions of a pair (the paper: 0.7).
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    /// Hybrid keeps this share of the prompts by entropy (at least `m` of them); see
    /// [`Oversample::keep_fraction`] for the server's over-sampling factors.
    pub keep_fraction: f64,
    pub seed: u64,
}

impl Default for AcquireConfig {
    fn default() -> Self {
        AcquireConfig {
            strategy: Strategy::Hybrid,
            beta: 0.2,
            entropy_samples: 8,
            length_normalised: false,
            temperature: 0.7,
            top_p: 1.0,
            max_new_tokens: 24,
            keep_fraction: Oversample::PAPER.keep_fraction(),
            seed: 0,
        }
    }
}

/// A pair chosen for annotation, with everything that chose it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcquiredPair {
    pub prompt: String,
    pub completion_a: String,
    pub completion_b: String,
    /// Prompt index in the input.
    pub prompt_index: usize,
    pub scores: PairScores,
    pub strategy: Strategy,
    pub model_version: String,
    pub rank: usize,
}

impl AcquiredPair {
    pub fn record(&self) -> AcquisitionRecord {
        AcquisitionRecord {
            strategy: self.strategy,
            model_version: self.model_version.clone(),
            scores: self.scores,
            rank: self.rank,
        }
    }
}

/// Predictive entropy of each prompt from `n` samples at temperature 1 drawn from `policy`; sample j of prompt
/// i only ever counts for prompt i.
pub fn prompt_entropies(
    policy: &LanguageModel,
    prompt_ids: &[Vec<u32>],
    cfg: &AcquireConfig,
) -> Result<Vec<Option<f64>>, ModelError> {
    let params = SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        max_new_tokens: cfg.max_new_tokens,
        seed: cfg.seed ^ 0x5eed_e27f,
        ..Default::default()
    };
    let samples = policy.sample(prompt_ids, cfg.entropy_samples.max(1), &params)?;
    let tagged: Vec<EntropySample> = samples
        .iter()
        .enumerate()
        .flat_map(|(i, row)| {
            row.iter().map(move |s| EntropySample {
                prompt: i,
                logprob_sum: s.logprob,
                tokens: s.token_ids.len(),
            })
        })
        .collect();
    Ok(acquisition::entropy_by_prompt(
        prompt_ids.len(),
        &tagged,
        cfg.length_normalised,
    ))
}

/// A prompt's token ids; an empty prompt becomes the end-of-sequence token, since the first completion
/// token needs something to be predicted from.
pub fn prompt_ids(tok: &TextTokenizer, text: &str) -> Result<Vec<u32>, ModelError> {
    let mut ids = tok.encode(text)?;
    if ids.is_empty() {
        ids.push(tok.eos_id());
    }
    Ok(ids)
}

/// Implicit rewards and certainty of existing pairs (imported ones, or pending ones after a new model
/// version), each item (prompt, completion a, completion b) as text. `reference` `None` means the policy is the
/// reference. Entropy is left `None`: it needs sampling, see [`prompt_entropies`].
pub fn score_pairs(
    policy: &LanguageModel,
    reference: Option<&LanguageModel>,
    items: &[(String, String, String)],
    beta: f64,
) -> Result<Vec<PairScores>, ModelError> {
    let tok = policy.tokenizer();
    let mut seqs = Vec::with_capacity(2 * items.len());
    for (prompt, a, b) in items {
        let p = prompt_ids(tok, prompt)?;
        seqs.push((p.clone(), tok.encode(a)?));
        seqs.push((p, tok.encode(b)?));
    }
    let lp: Vec<f64> = policy.score(&seqs)?.iter().map(|s| s.sum).collect();
    let rf: Vec<f64> = match reference {
        Some(r) => r.score(&seqs)?.iter().map(|s| s.sum).collect(),
        None => lp.clone(),
    };
    Ok((0..items.len())
        .map(|i| {
            PairScores::from_logprobs(
                beta,
                None,
                (lp[2 * i], lp[2 * i + 1]),
                (rf[2 * i], rf[2 * i + 1]),
            )
        })
        .collect())
}

/// One acquisition round: the `m` best pairs for `prompts` under `cfg.strategy`, best first. `reference` is
/// πref for the implicit rewards; `None` means the policy is the reference (round 1: every reward is 0 and the
/// order is the seed's). Pairs whose two completions are identical are dropped (nothing to compare), so fewer
/// than `m` can come back. Hybrid samples pairs only for its kept prompts: the top `keep_fraction` by entropy,
/// and never fewer than `m`.
pub fn acquire_pairs(
    policy: &LanguageModel,
    reference: Option<&LanguageModel>,
    prompts: &[String],
    m: usize,
    cfg: &AcquireConfig,
    model_version: &str,
) -> Result<Vec<AcquiredPair>, ModelError> {
    let tok = policy.tokenizer();
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| prompt_ids(tok, p))
        .collect::<Result<_, ModelError>>()?;

    let entropies = if cfg.strategy.needs_entropy() {
        prompt_entropies(policy, &ids, cfg)?
    } else {
        vec![None; prompts.len()]
    };
    // Hybrid generates pairs only for the prompts it keeps; the others for every prompt.
    let kept: Vec<usize> = if cfg.strategy == Strategy::Hybrid {
        let frac = cfg.keep_fraction.clamp(0.0, 1.0);
        let keep = ((prompts.len() as f64 * frac).ceil() as usize)
            .max(m)
            .min(prompts.len());
        let mut k = acquisition::top_by_entropy(&entropies, keep, cfg.seed);
        k.sort_unstable();
        k
    } else {
        (0..prompts.len()).collect()
    };

    let params = SamplingParams {
        temperature: cfg.temperature,
        top_p: cfg.top_p,
        max_new_tokens: cfg.max_new_tokens,
        seed: cfg.seed,
        ..Default::default()
    };
    let kept_ids: Vec<Vec<u32>> = kept.iter().map(|&i| ids[i].clone()).collect();
    let pairs = policy.sample(&kept_ids, 2, &params)?;

    // Rewards from the completions' TEXT, as the trainer and later re-scoring see them (the sampler's own ids
    // may end in an EOS the text leaves out). Identical completions make no comparison and are dropped.
    let mut items = Vec::new();
    let mut prompt_of = Vec::new();
    for (&i, samples) in kept.iter().zip(&pairs) {
        let (a, b) = (&samples[0], &samples[1]);
        if a.text != b.text {
            items.push((prompts[i].clone(), a.text.clone(), b.text.clone()));
            prompt_of.push(i);
        }
    }
    let scores = score_pairs(policy, reference, &items, cfg.beta)?;
    let candidates: Vec<Candidate> = scores
        .into_iter()
        .zip(&prompt_of)
        .map(|(mut scores, &i)| {
            scores.entropy = entropies[i];
            Candidate { prompt: i, scores }
        })
        .collect();

    // Hybrid's prompt filter already ran: order what is left by certainty.
    let keep_all = 1.0;
    let order = acquisition::select_candidates(cfg.strategy, &candidates, m, keep_all, cfg.seed);
    Ok(order
        .into_iter()
        .enumerate()
        .map(|(rank, c)| {
            let (prompt, a, b) = items[c].clone();
            AcquiredPair {
                prompt,
                completion_a: a,
                completion_b: b,
                prompt_index: prompt_of[c],
                scores: candidates[c].scores,
                strategy: cfg.strategy,
                model_version: model_version.to_string(),
                rank,
            }
        })
        .collect())
}
