//! From prompts to scored, ordered candidate pairs with a live model: the glue between the model engine
//! (sampling, scoring) and the pure strategies of [`super::acquisition`]. Used by `prefloop acquire` and meant
//! for the server's online mode.
//!
//! Per round, as in the paper: entropy-score prompts with N samples at temperature 1 (only for strategies that
//! need it; or, with [`EntropyEstimator::Tokens`], one sample and its summed per-token entropy), keep hybrid's top fraction, sample two completions per remaining prompt (T 0.7 by default), score
//! both under the policy and the reference, order, keep M.

use serde::{Deserialize, Serialize};

use super::acquisition::{self, AcquisitionRecord, Candidate, EntropySample};
use super::policy::{fit_completion, fit_prompt};
use super::run::DpoConfig;
use crate::domain::{EntropyEstimator, LossKind, Oversample, PairScores, Strategy};
use crate::model::{LanguageModel, ModelError, Sample, SamplingParams, SeqLogProb, TextTokenizer};

/// Settings of one acquisition round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AcquireConfig {
    pub strategy: Strategy,
    /// How the trainer will see a pair: the implicit rewards behind certainty are taken the same way.
    pub reward: RewardSpec,
    /// N: samples per prompt for the `samples` entropy estimate.
    pub entropy_samples: usize,
    /// How a prompt's entropy is estimated: N samples' −mean log π, or one sample's summed token entropies.
    pub entropy_estimator: EntropyEstimator,
    /// Divide each sample's log-prob (or summed token entropy) by its length before averaging.
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
            reward: RewardSpec::default(),
            entropy_samples: 8,
            entropy_estimator: EntropyEstimator::Samples,
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
    /// Whether each completion stopped at EOS rather than at `max_new_tokens`.
    pub ends_a: bool,
    pub ends_b: bool,
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

/// Predictive entropy of each prompt under `policy`, by `cfg.entropy_estimator`: `samples` draws
/// `cfg.entropy_samples` completions at temperature 1 and takes −mean log π (sample j of prompt i only ever
/// counts for prompt i); `tokens` draws ONE completion at temperature 1 and sums the policy's full
/// per-token entropy along it, read from the logits the sampler already computes.
pub fn prompt_entropies(
    policy: &LanguageModel,
    prompt_ids: &[Vec<u32>],
    cfg: &AcquireConfig,
) -> Result<Vec<Option<f64>>, ModelError> {
    entropies_from(prompt_ids.len(), cfg, |k, record_entropy| {
        let params = SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            max_new_tokens: cfg.max_new_tokens,
            seed: cfg.seed ^ 0x5eed_e27f,
            record_entropy,
            ..Default::default()
        };
        policy.sample(prompt_ids, k, &params)
    })
}

/// The estimators over any sampler: `sample(k, record_entropy)` returns k completions per prompt at
/// temperature 1 (row i for prompt i), with per-token entropies when asked. Kept apart from the model so
/// the samples each estimator asks for can be checked without one.
fn entropies_from(
    n_prompts: usize,
    cfg: &AcquireConfig,
    sample: impl FnOnce(usize, bool) -> Result<Vec<Vec<Sample>>, ModelError>,
) -> Result<Vec<Option<f64>>, ModelError> {
    match cfg.entropy_estimator {
        EntropyEstimator::Samples => {
            let samples = sample(cfg.entropy_samples.max(1), false)?;
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
                n_prompts,
                &tagged,
                cfg.length_normalised,
            ))
        }
        EntropyEstimator::Tokens => {
            let samples = sample(1, true)?;
            let mut out = vec![None; n_prompts];
            for (slot, row) in out.iter_mut().zip(&samples) {
                *slot = row.first().and_then(|s| {
                    let sum = s.entropy_sum()?;
                    let n = s.token_ids.len();
                    Some(match (cfg.length_normalised, n) {
                        (false, _) => sum,
                        (true, 0) => 0.0,
                        (true, n) => sum / n as f64,
                    })
                });
            }
            Ok(out)
        }
    }
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

/// The implicit reward r̂ = β·(log πθ − log πref) as the loss defines it, on the tokens the trainer keeps:
/// sums of log-probs for DPO, per-token means for IPO, prompts and completions truncated as in
/// training (`learn::policy::fit_prompt`, `fit_completion`). Certainty scored any other way would rank
/// pairs by a reward DPO never optimises.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RewardSpec {
    pub loss: LossKind,
    pub beta: f64,
    pub max_prompt_tokens: usize,
    pub max_completion_tokens: usize,
}

impl RewardSpec {
    pub fn of(cfg: &DpoConfig) -> RewardSpec {
        RewardSpec {
            loss: cfg.loss.kind,
            beta: cfg.loss.beta,
            max_prompt_tokens: cfg.max_prompt_tokens,
            max_completion_tokens: cfg.max_completion_tokens,
        }
    }

    /// The log-prob a reward is taken from.
    fn logprob(&self, s: &SeqLogProb) -> f64 {
        match self.loss {
            LossKind::Dpo => s.sum,
            LossKind::Ipo => s.mean,
        }
    }
}

impl Default for RewardSpec {
    fn default() -> Self {
        RewardSpec::of(&DpoConfig::default())
    }
}

/// A pair as it is stored: the prompt, both completions as text, and whether each is whole (it stopped at
/// EOS, or was imported whole) so that scoring appends EOS where training does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairText {
    pub prompt: String,
    pub a: String,
    pub b: String,
    pub ends_a: bool,
    pub ends_b: bool,
}

/// Implicit rewards and certainty of existing pairs (imported ones, or pending ones after a new model
/// version). `reference` `None` means the policy is the reference. Entropy is left `None`: it needs
/// sampling, see [`prompt_entropies`].
pub fn score_pairs(
    policy: &LanguageModel,
    reference: Option<&LanguageModel>,
    items: &[PairText],
    spec: &RewardSpec,
) -> Result<Vec<PairScores>, ModelError> {
    let tok = policy.tokenizer();
    let eos = tok.eos_id();
    let mut seqs = Vec::with_capacity(2 * items.len());
    for item in items {
        let p = fit_prompt(prompt_ids(tok, &item.prompt)?, spec.max_prompt_tokens);
        let fit = |c: &str, ends: bool| {
            Ok::<_, ModelError>(fit_completion(
                tok.encode(c)?,
                ends.then_some(eos),
                spec.max_completion_tokens,
            ))
        };
        seqs.push((p.clone(), fit(&item.a, item.ends_a)?));
        seqs.push((p, fit(&item.b, item.ends_b)?));
    }
    let lp: Vec<f64> = policy
        .score(&seqs)?
        .iter()
        .map(|s| spec.logprob(s))
        .collect();
    let rf: Vec<f64> = match reference {
        Some(r) => r.score(&seqs)?.iter().map(|s| spec.logprob(s)).collect(),
        None => lp.clone(),
    };
    Ok((0..items.len())
        .map(|i| {
            PairScores::from_logprobs(
                spec.beta,
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
    // Hybrid and k-center generate pairs only for the prompts they keep; the others for every prompt.
    let kept: Vec<usize> = if matches!(cfg.strategy, Strategy::Hybrid | Strategy::KCenter) {
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

    // Rewards from the completions' TEXT and whether each stopped at EOS, as the trainer and later
    // re-scoring see them (the text may not re-encode to the sampler's own ids). Identical completions
    // make no comparison and are dropped.
    let mut items = Vec::new();
    let mut prompt_of = Vec::new();
    for (&i, samples) in kept.iter().zip(&pairs) {
        let (a, b) = (&samples[0], &samples[1]);
        if a.text != b.text {
            items.push(PairText {
                prompt: prompts[i].clone(),
                a: a.text.clone(),
                b: b.text.clone(),
                ends_a: a.stopped_at_eos,
                ends_b: b.stopped_at_eos,
            });
            prompt_of.push(i);
        }
    }
    let scores = score_pairs(policy, reference, &items, &cfg.reward)?;
    let candidates: Vec<Candidate> = scores
        .into_iter()
        .zip(&prompt_of)
        .map(|(mut scores, &i)| {
            scores.entropy = entropies[i];
            Candidate { prompt: i, scores }
        })
        .collect();

    // Hybrid's prompt filter already ran: order what is left by certainty. k-center orders the kept
    // prompts farthest-first in the policy's embedding space, from the most uncertain one.
    let keep_all = 1.0;
    let order = if cfg.strategy == Strategy::KCenter {
        let with_pairs: Vec<usize> = {
            let mut v = prompt_of.clone();
            v.dedup();
            v
        };
        let embeddings = policy.embed(
            &with_pairs
                .iter()
                .map(|&i| ids[i].clone())
                .collect::<Vec<_>>(),
        )?;
        let first = with_pairs
            .iter()
            .enumerate()
            .max_by(|a, b| {
                let e = |i: usize| entropies[i].unwrap_or(f64::NEG_INFINITY);
                e(*a.1).total_cmp(&e(*b.1)).then(b.0.cmp(&a.0))
            })
            .map_or(0, |(k, _)| k);
        let prompt_order: Vec<usize> = acquisition::farthest_first(&embeddings, first)
            .into_iter()
            .map(|k| with_pairs[k])
            .collect();
        let mut order = acquisition::spread_over_prompts(&candidates, &prompt_order, cfg.seed);
        order.truncate(m);
        order
    } else {
        acquisition::select_candidates(cfg.strategy, &candidates, m, keep_all, cfg.seed)
    };
    Ok(order
        .into_iter()
        .enumerate()
        .map(|(rank, c)| {
            let item = items[c].clone();
            AcquiredPair {
                prompt: item.prompt,
                completion_a: item.a,
                completion_b: item.b,
                ends_a: item.ends_a,
                ends_b: item.ends_b,
                prompt_index: prompt_of[c],
                scores: candidates[c].scores,
                strategy: cfg.strategy,
                model_version: model_version.to_string(),
                rank,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certainty_takes_the_reward_the_loss_trains_on_the_tokens_it_keeps() {
        let model = |seed| {
            let tok = TextTokenizer::byte_level_for_tests();
            let config = crate::model::ModelConfig::tiny(tok.vocab_size());
            LanguageModel::random(config, tok, &candle_core::Device::Cpu, seed).unwrap()
        };
        let (policy, reference) = (model(1), model(2));
        let tok = policy.tokenizer();
        let (prompt, a, b) = (
            "A prompt that is long",
            "a completion that runs on",
            "short",
        );
        // `a` was cut at the length limit, `b` stopped at EOS.
        let items = vec![PairText {
            prompt: prompt.to_string(),
            a: a.to_string(),
            b: b.to_string(),
            ends_a: false,
            ends_b: true,
        }];
        // What the trainer sees with 4 prompt and 6 completion tokens kept.
        let p = fit_prompt(prompt_ids(tok, prompt).unwrap(), 4);
        let eos = tok.eos_id();
        let (fa, fb) = (
            fit_completion(tok.encode(a).unwrap(), None, 6),
            fit_completion(tok.encode(b).unwrap(), Some(eos), 6),
        );
        assert_eq!((p.len(), fa.len()), (4, 6));
        assert_eq!(fb.last(), Some(&eos), "a whole completion ends in EOS");
        let seqs = vec![(p.clone(), fa), (p, fb)];
        let (lp, rf) = (
            policy.score(&seqs).unwrap(),
            reference.score(&seqs).unwrap(),
        );
        type Pick = fn(&SeqLogProb) -> f64;
        let by: [(LossKind, Pick); 2] = [(LossKind::Dpo, |s| s.sum), (LossKind::Ipo, |s| s.mean)];
        for (loss, pick) in by {
            let spec = RewardSpec {
                loss,
                beta: 0.5,
                max_prompt_tokens: 4,
                max_completion_tokens: 6,
            };
            let got = score_pairs(&policy, Some(&reference), &items, &spec).unwrap()[0];
            let want_a = 0.5 * (pick(&lp[0]) - pick(&rf[0]));
            let want_b = 0.5 * (pick(&lp[1]) - pick(&rf[1]));
            assert!(
                (got.reward_a - want_a).abs() < 1e-4,
                "{loss}: {got:?} vs {want_a}"
            );
            assert!(
                (got.reward_b - want_b).abs() < 1e-4,
                "{loss}: {got:?} vs {want_b}"
            );
            assert!((got.certainty - (want_a - want_b).abs()).abs() < 1e-4);
        }
    }

    /// A completion of `n` tokens with log-prob `lp` and, when recorded, entropy `h` at every token.
    fn fake(n: usize, lp: f64, h: f32, record: bool) -> Sample {
        Sample {
            text: String::new(),
            token_ids: vec![1; n],
            logprob: lp,
            stopped_at_eos: false,
            token_entropies: record.then(|| vec![h; n]),
        }
    }

    #[test]
    fn tokens_asks_for_one_recorded_sample_per_prompt_and_sums_its_entropies() {
        let cfg = AcquireConfig {
            entropy_estimator: EntropyEstimator::Tokens,
            entropy_samples: 8,
            ..Default::default()
        };
        let mut asked = Vec::new();
        let got = entropies_from(3, &cfg, |k, record| {
            asked.push((k, record));
            Ok((0..3)
                .map(|i| (0..k).map(|_| fake(4, -100.0, i as f32, record)).collect())
                .collect())
        })
        .unwrap();
        assert_eq!(asked, [(1, true)]);
        assert_eq!(got, [Some(0.0), Some(4.0), Some(8.0)]);
        let per_token = AcquireConfig {
            length_normalised: true,
            ..cfg
        };
        let got = entropies_from(1, &per_token, |_, _| {
            Ok(vec![vec![fake(4, 0.0, 0.5, true)]])
        });
        assert_eq!(got.unwrap(), [Some(0.5)]);
    }

    #[test]
    fn samples_asks_for_n_plain_samples_and_averages_their_logprobs() {
        let cfg = AcquireConfig {
            entropy_estimator: EntropyEstimator::Samples,
            entropy_samples: 3,
            ..Default::default()
        };
        let mut asked = Vec::new();
        let got = entropies_from(2, &cfg, |k, record| {
            asked.push((k, record));
            Ok((0..2)
                .map(|i| {
                    (0..k)
                        .map(|j| fake(2, -((i * 10 + j) as f64), 9.0, record))
                        .collect()
                })
                .collect())
        })
        .unwrap();
        assert_eq!(asked, [(3, false)]);
        // Prompt 0: −mean(0, −1, −2) = 1; prompt 1: −mean(−10, −11, −12) = 11.
        assert_eq!(got, [Some(1.0), Some(11.0)]);
    }
}
