//! `prefloop check-device`: does a device compute what the CPU computes? One tiny random model, seeded, in
//! f32 on the CPU and copied to `--device` in `--dtype`, is run through what the loop does with a model:
//! - **scoring**: the per-token mean log-probability of 8 completions (fused kernels, no gradient);
//! - **one DPO step**: the sigmoid loss against fixed reference log-probabilities, its gradient's global norm
//!   (differentiable kernels, backward), then the AdamW update, after which the completions are scored again.
//!
//! Each figure on the device is compared with the CPU's: log-probabilities and the loss by their largest
//! absolute difference, the gradient norm relative to the CPU's. The tolerance is 1e-3 for f32 and 1e-2 for
//! bf16 (bf16 keeps 8 bits of mantissa), twice that for the log-probabilities after the step, whose weights
//! were rounded twice. Exit status 1 when any figure is outside its tolerance.

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::learn::optim::{AdamW, AdamWParams};
use crate::model::{
    LanguageModel, ModelConfig, Precision, SeqLogProbs, TextTokenizer, parse_device,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The device to check against the CPU: cuda, cuda:N (or cpu, which checks nothing but the command).
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// What the device computes in: f32 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: Precision,
    /// The learning rate of the AdamW step. At 1e-3 the step moves most of the tiny model's weights by more
    /// than bf16's spacing, so the figure after it shows the update itself; steps under half that spacing
    /// stay in the f32 master copy until they add up, and the bf16 weights look unmoved.
    #[arg(long, default_value_t = 1e-3)]
    pub learning_rate: f64,
    /// Seeds the model, the sequences and the reference.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object on stdout instead of the readable lines.
    #[arg(long)]
    pub json: bool,
}

/// What one model computed: the figures compared between the CPU and the device.
struct Figures {
    /// Per-token mean log-probability of each completion.
    logprobs: Vec<f64>,
    loss: f64,
    grad_norm: f64,
    /// The same completions scored after the AdamW step.
    logprobs_after: Vec<f64>,
}

/// 8 items of a 16-token prompt and a 16-token completion, ids below `vocab`.
fn items(vocab: u32, seed: u64) -> Vec<(Vec<u32>, Vec<u32>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..8)
        .map(|_| {
            let mut seq = |n: usize| (0..n).map(|_| rng.random_range(0..vocab)).collect();
            (seq(16), seq(16))
        })
        .collect()
}

fn figures(
    model: &LanguageModel,
    items: &[(Vec<u32>, Vec<u32>)],
    reference: &[f32],
    lr: f64,
) -> anyhow::Result<Figures> {
    let means = |m: &LanguageModel| -> anyhow::Result<Vec<f64>> {
        Ok(m.score(items)?.iter().map(|s| s.mean).collect())
    };
    let logprobs = means(model)?;
    let device = model.device();
    let dtype = crate::model::compute_dtype(model.dtype());
    let cached = |range: std::ops::Range<usize>| -> anyhow::Result<SeqLogProbs> {
        let n = range.len();
        Ok(SeqLogProbs {
            sum: Tensor::new(&reference[range], device)?.to_dtype(dtype)?,
            tokens: Tensor::full(16f32, n, device)?.to_dtype(dtype)?,
        })
    };
    let out = super::bench_model::halves_loss(model, items, &(cached(0..4)?, cached(4..8)?))?;
    let loss = out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    // ε 1e-3, not PyTorch's 1e-8: with 1e-8 Adam's first step is ±lr for every weight whatever the size of its
    // gradient, and the sign of a near-zero gradient is rounding noise (bf16's, or another device's order of
    // summation), so weights the loss hardly touches would move apart by 2·lr. With 1e-3 the update is a
    // smooth function of the gradient and the figure compares what the gradients say.
    let params = AdamWParams {
        lr,
        eps: 1e-3,
        ..Default::default()
    };
    let mut opt = AdamW::new(model.vars(), params)?;
    let grad_norm = opt.backward_step(&out.loss, None)?;
    Ok(Figures {
        logprobs,
        loss,
        grad_norm,
        logprobs_after: means(model)?,
    })
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::model::init_cpu_threads();
    let device = parse_device(&args.device)?;
    let tolerance = match args.dtype {
        Precision::F32 => 1e-3,
        Precision::Bf16 => 1e-2,
    };
    let config = ModelConfig {
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        ..ModelConfig::tiny(512)
    };
    let tokenizer = TextTokenizer::byte_level_for_tests();
    let cpu = LanguageModel::random(config.clone(), tokenizer.clone(), &Device::Cpu, args.seed)?;
    let on_device = cpu
        .to_device(&device, args.dtype.dtype())
        .with_context(|| format!("copying the model to {} in {}", args.device, args.dtype))?;
    // The reference log-probabilities: another random model's, so that the loss is not log 2 exactly.
    let items = items(config.vocab_size as u32, args.seed);
    let reference_model =
        LanguageModel::random(config, tokenizer, &Device::Cpu, args.seed.wrapping_add(1))?;
    let reference: Vec<f32> = reference_model
        .score(&items)?
        .iter()
        .map(|s| s.sum as f32)
        .collect();

    let want = figures(&cpu, &items, &reference, args.learning_rate)?;
    let got = figures(&on_device, &items, &reference, args.learning_rate)?;
    // The weights after the step are rounded to the device's dtype a second time (from the f32 master), on
    // top of the first rounding and of the gradient's own error: that figure gets twice the tolerance.
    let rows = [
        (
            "log-probabilities (per token)",
            max_abs_diff(&want.logprobs, &got.logprobs),
            tolerance,
        ),
        ("DPO loss", (want.loss - got.loss).abs(), tolerance),
        (
            "DPO gradient norm (relative)",
            (want.grad_norm - got.grad_norm).abs() / want.grad_norm.max(f64::MIN_POSITIVE),
            tolerance,
        ),
        (
            "log-probabilities after the AdamW step",
            max_abs_diff(&want.logprobs_after, &got.logprobs_after),
            2.0 * tolerance,
        ),
    ];
    let pass = rows.iter().all(|(_, d, tol)| d <= tol);
    if args.json {
        println!(
            "{}",
            json!({
                "device": args.device,
                "dtype": args.dtype.to_string(),
                "tolerance": tolerance,
                "pass": pass,
                "logprob_max_abs_diff": rows[0].1,
                "loss": {"cpu": want.loss, "device": got.loss, "abs_diff": rows[1].1},
                "grad_norm": {"cpu": want.grad_norm, "device": got.grad_norm, "rel_diff": rows[2].1},
                "logprob_after_step_max_abs_diff": rows[3].1,
                "after_step_tolerance": rows[3].2,
            })
        );
    } else {
        println!(
            "{} in {} against the CPU in f32 (tolerance {tolerance:e}):",
            args.device, args.dtype
        );
        for (what, diff, tol) in &rows {
            let verdict = if diff <= tol { "ok" } else { "OUTSIDE" };
            println!("  {what:40} {diff:10.2e}  {verdict} (tolerance {tol:e})");
        }
        println!(
            "  loss {:.6} (cpu) against {:.6}; gradient norm {:.6} against {:.6}",
            want.loss, got.loss, want.grad_norm, got.grad_norm
        );
    }
    if !pass {
        anyhow::bail!(
            "{} in {} differs from the CPU beyond {tolerance:e}",
            args.device,
            args.dtype
        );
    }
    Ok(())
}
