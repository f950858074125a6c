//! Batched sampling with a KV cache: many prompts × many samples per forward step, left padding, each row
//! with its own random stream so a row's result does not depend on what else is in the batch.

use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};

use super::Padding;
use super::llama::distinct;
use super::{LanguageModel, ModelError, Result};

/// How to sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax); otherwise logits are divided by it.
    pub temperature: f64,
    /// Nucleus sampling: keep the most likely tokens until their probability reaches top_p (1.0 = off).
    pub top_p: f64,
    pub max_new_tokens: usize,
    pub seed: u64,
    /// Rows per forward batch (bounds memory; results do not depend on it).
    pub max_batch: usize,
    /// Record, per sampled token, the entropy of the full temperature-1 distribution it was drawn from
    /// ([`Sample::token_entropies`]); off by default, so callers that do not need it pay nothing.
    pub record_entropy: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            max_new_tokens: 32,
            seed: 0,
            max_batch: 16,
            record_entropy: false,
        }
    }
}

/// One row to sample: a prompt and the seed of its own random stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleRow {
    pub prompt_ids: Vec<u32>,
    pub seed: u64,
}

/// One sampled completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The completion's text, special tokens (EOS) left out.
    pub text: String,
    /// The sampled ids, INCLUDING the final EOS when the sample stopped at one, so that scoring
    /// (prompt, token_ids) gives back `logprob`.
    pub token_ids: Vec<u32>,
    /// Σ log p(token) over `token_ids` under the model at temperature 1 with no top-p truncation, whatever
    /// temperature and top-p were used to draw them: log π(y|x), what the entropy estimate −mean log π needs.
    pub logprob: f64,
    pub stopped_at_eos: bool,
    /// With [`SamplingParams::record_entropy`]: per entry of `token_ids`, H_t = −Σ_v p(v|x,y<t) log p(v|x,y<t)
    /// of the model's distribution at temperature 1 with no top-p truncation (nats), from the same logits the
    /// token was drawn from. `None` when not asked for.
    pub token_entropies: Option<Vec<f32>>,
}

impl Sample {
    /// Σ_t H_t along this completion (nats), when entropies were recorded.
    pub fn entropy_sum(&self) -> Option<f64> {
        self.token_entropies
            .as_ref()
            .map(|h| h.iter().map(|&x| x as f64).sum())
    }
}

/// The seed of sample `sample_index` of prompt `prompt_index` in a `sample` call with `seed` (splitmix64).
pub fn row_seed(seed: u64, prompt_index: usize, sample_index: usize) -> u64 {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    mix(mix(mix(seed) ^ prompt_index as u64) ^ ((sample_index as u64) << 32))
}

/// Entropy −Σ p log p of softmax(logits) at temperature 1, given their log-sum-exp (nats). Vocabulary
/// entries of probability 0 (logit −∞) add nothing.
fn entropy_of(logits: &[f32], lse: f64) -> f64 {
    logits
        .iter()
        .map(|&x| {
            let lp = x as f64 - lse;
            if lp.is_finite() { -lp.exp() * lp } else { 0.0 }
        })
        .sum()
}

/// Picks a token from one row of logits; returns it with its temperature-1 log-probability and, with
/// `p.record_entropy`, the temperature-1 entropy of the row.
fn pick(
    logits: &[f32],
    p: &SamplingParams,
    rng: &mut rand::rngs::StdRng,
) -> (u32, f64, Option<f32>) {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = m + logits
        .iter()
        .map(|&x| (x as f64 - m).exp())
        .sum::<f64>()
        .ln();
    let tok = if p.temperature <= 0.0 {
        // First maximum: ties go to the lowest id.
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        best
    } else {
        let w: Vec<f64> = logits
            .iter()
            .map(|&x| ((x as f64 - m) / p.temperature).exp())
            .collect();
        let u: f64 = rng.random();
        if p.top_p < 1.0 {
            let mut order: Vec<usize> = (0..w.len()).collect();
            order.sort_unstable_by(|&a, &b| w[b].total_cmp(&w[a]).then(a.cmp(&b)));
            let total: f64 = w.iter().sum();
            let mut kept = 0.0;
            let mut n = 0;
            for &i in &order {
                kept += w[i];
                n += 1;
                if kept >= p.top_p * total {
                    break;
                }
            }
            let mut target = u * kept;
            let mut chosen = order[n - 1];
            for &i in &order[..n] {
                if target < w[i] {
                    chosen = i;
                    break;
                }
                target -= w[i];
            }
            chosen
        } else {
            let total: f64 = w.iter().sum();
            let mut target = u * total;
            let mut chosen = w.len() - 1;
            for (i, &x) in w.iter().enumerate() {
                if target < x {
                    chosen = i;
                    break;
                }
                target -= x;
            }
            chosen
        }
    };
    let entropy = p.record_entropy.then(|| entropy_of(logits, lse) as f32);
    (tok as u32, logits[tok] as f64 - lse, entropy)
}

impl LanguageModel {
    /// For each prompt, `k` samples (result\[i\]\[j\] is sample j of prompt i); sample (i, j) draws from
    /// `row_seed(params.seed, i, j)`, so a call is repeatable and equals `sample_rows` row by row.
    pub fn sample(
        &self,
        prompts: &[Vec<u32>],
        k: usize,
        params: &SamplingParams,
    ) -> Result<Vec<Vec<Sample>>> {
        let rows: Vec<SampleRow> = prompts
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                (0..k).map(move |j| SampleRow {
                    prompt_ids: p.clone(),
                    seed: row_seed(params.seed, i, j),
                })
            })
            .collect();
        let mut flat = self.sample_rows(&rows, params)?.into_iter();
        Ok(prompts
            .iter()
            .map(|_| flat.by_ref().take(k).collect())
            .collect())
    }

    /// Samples one completion per row (`params.seed` is unused: each row carries its seed), batching
    /// `params.max_batch` rows per forward pass.
    pub fn sample_rows(&self, rows: &[SampleRow], params: &SamplingParams) -> Result<Vec<Sample>> {
        if !(params.top_p > 0.0 && params.top_p <= 1.0 && params.temperature.is_finite()) {
            return Err(ModelError::Input(format!(
                "top_p must be in (0, 1] and temperature finite (got {} and {})",
                params.top_p, params.temperature
            )));
        }
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(params.max_batch.max(1)) {
            out.extend(self.sample_batch(chunk, params)?);
        }
        Ok(out)
    }

    fn sample_batch(&self, rows: &[SampleRow], params: &SamplingParams) -> Result<Vec<Sample>> {
        let b = rows.len();
        let dev = &self.device;
        let eos = self.tokenizer.eos_id();
        let vocab = self.config.vocab_size as u32;
        let kernels = self.sampling_kernels();
        for (i, r) in rows.iter().enumerate() {
            if r.prompt_ids.is_empty() {
                return Err(ModelError::Input(format!("row {i}: empty prompt")));
            }
            if let Some(bad) = r.prompt_ids.iter().find(|&&t| t >= vocab) {
                return Err(ModelError::Input(format!(
                    "row {i}: token id {bad} outside vocabulary {vocab}"
                )));
            }
        }
        let mut rngs: Vec<_> = rows
            .iter()
            .map(|r| rand::rngs::StdRng::seed_from_u64(r.seed))
            .collect();
        let mut toks: Vec<Vec<u32>> = vec![Vec::new(); b];
        let mut lps = vec![0f64; b];
        let mut stopped = vec![false; b];
        let mut ents: Vec<Vec<f32>> = vec![Vec::new(); b];
        if params.max_new_tokens > 0 {
            // Prefill each distinct prompt once (rows sampling the same prompt share its keys and values),
            // left-padded so every row's last slot is its last prompt token.
            let (prompts, of_row) = distinct(rows.iter().map(|r| r.prompt_ids.as_slice()));
            let (h, mut cache, last) = self.prefill(&prompts, Padding::Left, kernels)?;
            // Each row's prompt's last hidden state; the cache's rows, one per row.
            let idx: Vec<u32> = of_row.iter().map(|&p| last[p] as u32).collect();
            let mut last = h.index_select(&Tensor::new(idx, dev)?, 0)?;
            if prompts.len() < b {
                cache.select_rows(&of_row, dev)?;
            }
            // Original row index of each row still in the batch.
            let mut active: Vec<usize> = (0..b).collect();
            for step in 0..params.max_new_tokens {
                let logits = self.net.logits_2d(&last, kernels)?.to_dtype(DType::F32)?;
                let logits = logits.to_vec2::<f32>()?;
                let mut keep = Vec::new();
                let mut next = Vec::new();
                for (slot, &r) in active.iter().enumerate() {
                    let (tok, lp, h) = pick(&logits[slot], params, &mut rngs[r]);
                    toks[r].push(tok);
                    lps[r] += lp;
                    if let Some(h) = h {
                        ents[r].push(h);
                    }
                    if tok == eos {
                        stopped[r] = true;
                    } else {
                        keep.push(slot);
                        next.push(tok);
                    }
                }
                if keep.is_empty() || step + 1 == params.max_new_tokens {
                    break;
                }
                if keep.len() < active.len() {
                    cache.select_rows(&keep, dev)?;
                    active = keep.iter().map(|&s| active[s]).collect();
                }
                for v in cache.valid.iter_mut() {
                    v.push(true);
                }
                let valid = cache.valid.clone();
                let n = next.len();
                let ids = Tensor::from_vec(next, (n, 1), dev)?;
                let h = self
                    .net
                    .hidden(&self.config, &ids, &valid, Some(&mut cache), kernels)?;
                last = h.squeeze(1)?;
            }
        }
        toks.into_iter()
            .zip(lps)
            .zip(stopped)
            .zip(ents)
            .map(|(((ids, logprob), stopped_at_eos), ents)| {
                let text_ids = if stopped_at_eos {
                    &ids[..ids.len() - 1]
                } else {
                    &ids[..]
                };
                Ok(Sample {
                    text: self.tokenizer.decode(text_ids)?,
                    token_ids: ids,
                    logprob,
                    stopped_at_eos,
                    token_entropies: params.record_entropy.then_some(ents),
                })
            })
            .collect()
    }
}
