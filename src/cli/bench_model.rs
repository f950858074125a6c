//! `prefloop bench-model`: tokens per second and peak memory for scoring, sampling and one training step, on
//! the shapes of issue 3 (8 × 64 tokens; 16 and 1 sequences × 32 new tokens).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::Var;

use crate::model::{
    LanguageModel, ModelConfig, Padding, SamplingParams, TextTokenizer, parse_device,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A Hugging Face model directory or a .gguf file.
    #[arg(long, required_unless_present = "random")]
    pub model: Option<PathBuf>,
    /// Benchmark a random model instead: "small" (4 layers, hidden 256, vocab 8192, ~6M parameters).
    #[arg(long, value_parser = ["small"])]
    pub random: Option<String>,
    /// Timed repetitions of each workload (after one warm-up); the best is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Peak resident memory since the last reset, in bytes (Linux: VmHWM; reset by writing 5 to clear_refs).
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn gib(b: Option<u64>) -> String {
    b.map_or("?".into(), |b| {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    })
}

/// Runs `f` once to warm up, then `repeats` times; returns the best time in seconds, the work count of the
/// last run and the peak RSS over all runs.
fn measure(
    repeats: usize,
    mut f: impl FnMut() -> anyhow::Result<usize>,
) -> anyhow::Result<(f64, usize, Option<u64>)> {
    reset_peak_rss();
    f()?;
    let mut best = f64::INFINITY;
    let mut work = 0;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        work = f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok((best, work, peak_rss()))
}

/// A plain in-place AdamW over host copies (lr 1e-6, β 0.9/0.999, weight decay 0.01), standing in for the
/// trainer's fused optimizer so the step time includes an optimizer update.
struct HostAdamW {
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    t: i32,
}

impl HostAdamW {
    fn step(
        &mut self,
        vars: &[Var],
        grads: &candle_core::backprop::GradStore,
    ) -> anyhow::Result<()> {
        let (lr, b1, b2, eps, wd) = (1e-6f32, 0.9f32, 0.999f32, 1e-8f32, 0.01f32);
        self.t += 1;
        let (c1, c2) = (1.0 - b1.powi(self.t), 1.0 - b2.powi(self.t));
        if self.m.is_empty() {
            self.m = vars.iter().map(|v| vec![0.0; v.elem_count()]).collect();
            self.v = self.m.clone();
        }
        for (i, var) in vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = g.flatten_all()?.to_vec1::<f32>()?;
            let mut w = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            for j in 0..w.len() {
                m[j] = b1 * m[j] + (1.0 - b1) * g[j];
                v[j] = b2 * v[j] + (1.0 - b2) * g[j] * g[j];
                w[j] -= lr * ((m[j] / c1) / ((v[j] / c2).sqrt() + eps) + wd * w[j]);
            }
            var.set(&candle_core::Tensor::from_vec(
                w,
                var.shape(),
                var.device(),
            )?)?;
        }
        Ok(())
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::model::init_cpu_threads();
    let device = parse_device(&args.device)?;
    let t0 = Instant::now();
    let model = match (&args.model, &args.random) {
        (Some(p), _) => {
            LanguageModel::load(p, &device).with_context(|| format!("loading {}", p.display()))?
        }
        (None, _) => {
            let tok = TextTokenizer::byte_level_for_tests();
            let cfg = ModelConfig {
                vocab_size: 8192,
                hidden_size: 256,
                intermediate_size: 688,
                num_hidden_layers: 4,
                num_attention_heads: 8,
                num_key_value_heads: 4,
                ..ModelConfig::tiny(8192)
            };
            LanguageModel::random(cfg, tok, &device, 0)?
        }
    };
    let cfg = model.config().clone();
    println!(
        "model: {} layers, hidden {}, vocab {}, {:.1}M parameters; loaded in {:.1} s; RSS after load {}",
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.vocab_size,
        cfg.num_parameters() as f64 / 1e6,
        t0.elapsed().as_secs_f64(),
        gib(peak_rss())
    );
    println!(
        "threads: {} cores available, RAYON_NUM_THREADS={:?}, CANDLE_NUM_THREADS={:?}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        std::env::var("RAYON_NUM_THREADS").ok(),
        std::env::var("CANDLE_NUM_THREADS").ok()
    );

    // Token ids from a real sentence, repeated: 8 sequences of 64 tokens.
    let tok = model.tokenizer();
    let base = tok.encode(
        "The film opens on a quiet street at dawn, and for a while nothing happens; then the story \
         finds its feet and never lets go. The acting is warm, the music is spare, and the ending is earned.",
    )?;
    let seq = |i: usize, n: usize| -> Vec<u32> {
        (0..n).map(|j| base[(i * 7 + j) % base.len()]).collect()
    };

    // Scoring: 1 prompt token + 63 completion tokens per sequence, so all 64 positions are scored.
    let items: Vec<(Vec<u32>, Vec<u32>)> = (0..8)
        .map(|i| {
            let s = seq(i, 64);
            (s[..1].to_vec(), s[1..].to_vec())
        })
        .collect();
    let (secs, _, peak) = measure(args.repeats, || {
        model.score(&items)?;
        Ok(512)
    })?;
    println!(
        "scoring   8 × 64 tokens, no grad:        {:7.1} tokens/s  ({:.3} s)  peak RSS {}",
        512.0 / secs,
        secs,
        gib(peak)
    );

    // Sampling: 16 prompts of 16 tokens, and 1 prompt, 32 new tokens each at T = 0.7 (EOS may stop some early:
    // only generated tokens are counted).
    for n in [16usize, 1] {
        let prompts: Vec<Vec<u32>> = (0..n).map(|i| seq(i, 16)).collect();
        let params = SamplingParams {
            temperature: 0.7,
            max_new_tokens: 32,
            seed: 1,
            max_batch: 16,
            ..Default::default()
        };
        let (secs, tokens, peak) = measure(args.repeats, || {
            let out = model.sample(&prompts, 1, &params)?;
            Ok(out.iter().flatten().map(|s| s.token_ids.len()).sum())
        })?;
        println!(
            "sampling {n:2} × 32 new tokens, KV cache:  {:7.1} new tokens/s  ({tokens} tokens in {secs:.3} s)  peak RSS {}",
            tokens as f64 / secs,
            gib(peak)
        );
    }

    // Training step: differentiable log-probs of 8 × 64 (16 prompt + 48 completion tokens), a DPO-shaped loss
    // over 4 pairs with cached reference log-probs, backward, AdamW.
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = (0..8)
        .map(|i| {
            let s = seq(i, 64);
            (s[..16].to_vec(), s[16..].to_vec())
        })
        .collect();
    // The differentiable forward alone (graph built, no backward): splits the step's time between the
    // forward through differentiable ops and the backward.
    let (fwd_secs, _, _) = measure(args.repeats, || {
        let lp = model.sequence_logprobs(&pairs, Padding::Right)?;
        lp.sum.sum_all()?.to_scalar::<f32>()?;
        Ok(512)
    })?;
    println!(
        "forward   8 × 64 tokens, differentiable:  {:7.1} tokens/s  ({:.3} s)",
        512.0 / fwd_secs,
        fwd_secs
    );
    let policy = model.deep_clone()?;
    let vars = policy.vars();
    let mut opt = HostAdamW {
        m: Vec::new(),
        v: Vec::new(),
        t: 0,
    };
    let mut fwd_bwd = f64::INFINITY;
    let (secs, _, peak) = measure(args.repeats, || {
        let t = Instant::now();
        let lp = policy.sequence_logprobs(&pairs, Padding::Right)?;
        // h = (chosen − rejected) with the reference term a constant; loss = log(1 + exp(−β h)).
        let h = (lp.sum.narrow(0, 0, 4)? - lp.sum.narrow(0, 4, 4)?)?;
        let loss = ((h * -0.1)?.exp()? + 1.0)?.log()?.mean_all()?;
        let grads = loss.backward()?;
        fwd_bwd = fwd_bwd.min(t.elapsed().as_secs_f64());
        opt.step(&vars, &grads)?;
        Ok(512)
    })?;
    println!(
        "train step 8 × 64 tokens (fwd+bwd+AdamW): {:7.1} tokens/s  ({:.3} s, of which forward+backward {:.3} s)  peak RSS {}",
        512.0 / secs,
        secs,
        fwd_bwd,
        gib(peak)
    );
    Ok(())
}
