//! `prefloop bench-model`: tokens per second and peak memory for scoring, sampling and one DPO step, on the
//! workloads of `../shared/bench/anchor_torch.py`, so that the two can be run back to back and reported as
//! ratios (docs/BENCHMARKS.md):
//! - **score**: 8 sequences × 64 tokens (32 prompt + 32 completion), no gradient, fused kernels.
//!   As in anchor_torch.py, the 8 are 4 prompts with two completions each, and the prompts run once
//!   (the engine shares a prompt's forward pass among the completions that continue it).
//! - **sample16** / **sample1**: 16 prompts (and 1) of 16 tokens, 32 new tokens each at T = 1.0 with no
//!   nucleus cut, KV cache, one batch; only generated tokens count (EOS may stop a row early). Run once
//!   per `--sampling-weights` entry: f32 as `sample16`, a quantized copy as `sample16_q8_0`, after
//!   `quantize_q8_0`, the time to make that copy from the f32 weights (what the engine pays per version).
//! - **dpo**: the same 8 × 64 as 4 chosen + 4 rejected sequences, the sigmoid DPO loss (β 0.1) against cached
//!   reference log-probs, backward, and the trainer's own fused AdamW (lr 1e-6). After the others, because the
//!   memory a step takes is not all given back to the system and would raise the peaks measured after it.
//! - **dpo_unshared**: the `dpo` step on 8 × 64 tokens with 8 different prompts, where nothing is shared: the
//!   cost of the same shape without the shared prompts. Last (its peak memory is not its own).
//! - **dpo_lora**: the same step training LoRA adapters (`--lora-rank`, all seven linear layers of every
//!   block) on the frozen weights, just before `dpo`.
//! - **sample64**: 64 prompts of 16 tokens, 128 new tokens each, one batch: a GPU's sampling workload. Run
//!   only when named in `--only` (on the CPU it takes minutes).
//!
//! `--dtype bf16` runs every workload on bf16 weights (the DPO steps with f32 optimizer state and master
//! weights); it is meant for a GPU, and runs on the CPU only to be measured.
//!
//! Each runs once to warm up, then `--repeats` times: the readable lines give the best run, the JSON the
//! best, the median (anchor_torch.py's statistic) and every run.
//!
//! With `--json` the human-readable lines go to stderr and stdout gets one JSON object.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde_json::{Value, json};

use crate::domain::{LoraSettings, LossKind, SamplingWeights};
use crate::learn::dpo::{LossConfig, LossOutput, PairLogProbs, preference_loss};
use crate::learn::optim::{AdamW, AdamWParams};
use crate::model::{
    LanguageModel, ModelConfig, Padding, Precision, SamplingParams, SeqLogProbs, TextTokenizer,
    parse_device,
};

const WORKLOADS: [&str; 7] = [
    "score",
    "dpo",
    "dpo_lora",
    "dpo_unshared",
    "sample16",
    "sample1",
    "sample64",
];
/// Workloads left out unless `--only` names them.
const OPT_IN: [&str; 1] = ["sample64"];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A Hugging Face model directory or a .gguf file.
    #[arg(long, required_unless_present = "random")]
    pub model: Option<PathBuf>,
    /// Benchmark a random model instead: "small" (4 layers, hidden 256, vocab 8192, 7.1M parameters) or
    /// "1b" (TinyLlama's shape: 22 layers, hidden 2048, 32 heads, 4 KV heads, vocab 32000, 1.1B parameters;
    /// its DPO step needs about 20 GB).
    #[arg(long, value_parser = ["small", "1b"])]
    pub random: Option<String>,
    /// Timed repetitions of each workload (after one warm-up); the best is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Comma-separated workloads to run: score, dpo, dpo_lora, dpo_unshared, sample16, sample1, sample64
    /// (default: all but sample64).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Print one JSON object on stdout (the readable lines go to stderr).
    #[arg(long)]
    pub json: bool,
    /// The weights the sampling workloads read, each in turn: f32, q8_0, q4_k.
    #[arg(long, value_delimiter = ',', default_value = "f32,q8_0")]
    pub sampling_weights: Vec<SamplingWeights>,
    /// The rank of the `dpo_lora` step's adapters (alpha twice the rank, all seven linear layers).
    #[arg(long, default_value_t = 8)]
    pub lora_rank: u32,
    /// What the weights compute in: f32, or bf16 (for a GPU; the CPU runs it, slowly, to measure it).
    #[arg(long, default_value = "f32")]
    pub dtype: Precision,
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

/// One workload's result: every timed run, the work it counts (tokens), peak RSS.
struct Measured {
    runs: Vec<f64>,
    tokens: usize,
    peak: Option<u64>,
}

impl Measured {
    /// The best run's time: what the readable lines report.
    fn best(&self) -> f64 {
        self.runs.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// The median run's time: what anchor_torch.py reports, so ratios compare like with like.
    fn median(&self) -> f64 {
        let mut r = self.runs.clone();
        r.sort_by(f64::total_cmp);
        let n = r.len();
        if n % 2 == 1 {
            r[n / 2]
        } else {
            (r[n / 2 - 1] + r[n / 2]) / 2.0
        }
    }

    fn per_second(&self) -> f64 {
        self.tokens as f64 / self.best()
    }

    fn json(&self) -> Value {
        json!({
            "seconds": self.best(),
            "median_seconds": self.median(),
            "runs_seconds": self.runs,
            "tokens": self.tokens,
            "tokens_per_s": self.per_second(),
            "median_tokens_per_s": self.tokens as f64 / self.median(),
            "peak_rss_bytes": self.peak,
        })
    }
}

/// Runs `f` once to warm up, then `repeats` times; every run's time, the work count of the last run and the
/// peak RSS over all runs.
fn measure(
    repeats: usize,
    mut f: impl FnMut() -> anyhow::Result<usize>,
) -> anyhow::Result<Measured> {
    reset_peak_rss();
    f()?;
    let mut runs = Vec::new();
    let mut tokens = 0;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        tokens = f()?;
        runs.push(t.elapsed().as_secs_f64());
    }
    Ok(Measured {
        runs,
        tokens,
        peak: peak_rss(),
    })
}

fn random_model(shape: &str, device: &candle_core::Device) -> anyhow::Result<LanguageModel> {
    let cfg = match shape {
        "small" => ModelConfig {
            vocab_size: 8192,
            hidden_size: 256,
            intermediate_size: 688,
            num_hidden_layers: 4,
            num_attention_heads: 8,
            num_key_value_heads: 4,
            ..ModelConfig::tiny(8192)
        },
        "1b" => ModelConfig {
            vocab_size: 32000,
            hidden_size: 2048,
            intermediate_size: 5632,
            num_hidden_layers: 22,
            num_attention_heads: 32,
            num_key_value_heads: 4,
            max_position_embeddings: 2048,
            ..ModelConfig::tiny(32000)
        },
        other => anyhow::bail!("unknown random shape {other:?}: small or 1b"),
    };
    Ok(LanguageModel::random(
        cfg,
        TextTokenizer::byte_level_for_tests(),
        device,
        0,
    )?)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::model::init_cpu_threads();
    for w in &args.only {
        if !WORKLOADS.contains(&w.as_str()) {
            anyhow::bail!(
                "unknown workload {w:?}: expected some of {}",
                WORKLOADS.join(", ")
            );
        }
    }
    let wanted = |w: &str| {
        args.only.iter().any(|o| o == w) || (args.only.is_empty() && !OPT_IN.contains(&w))
    };
    let say = |line: String| {
        if args.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let device = parse_device(&args.device)?;
    let t0 = Instant::now();
    let dtype = args.dtype.dtype();
    let model = match (&args.model, &args.random) {
        (Some(p), _) => LanguageModel::load_as(p, &device, dtype)
            .with_context(|| format!("loading {}", p.display()))?,
        (None, Some(shape)) => {
            let m = random_model(shape, &device)?;
            if dtype == m.dtype() {
                m
            } else {
                m.to_dtype(dtype)?
            }
        }
        (None, None) => anyhow::bail!("give --model PATH or --random small|1b"),
    };
    let cfg = model.config().clone();
    let threads = (
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        std::env::var("RAYON_NUM_THREADS").ok(),
        std::env::var("CANDLE_NUM_THREADS").ok(),
    );
    say(format!(
        "model: {} layers, hidden {}, vocab {}, {:.1}M parameters; loaded in {:.1} s; RSS after load {}",
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.vocab_size,
        cfg.num_parameters() as f64 / 1e6,
        t0.elapsed().as_secs_f64(),
        gib(peak_rss())
    ));
    say(format!(
        "threads: {} cores available, RAYON_NUM_THREADS={:?}, CANDLE_NUM_THREADS={:?}",
        threads.0, threads.1, threads.2
    ));
    let mut report = json!({
        "model": args.model.as_ref().map(|p| p.display().to_string()).or_else(|| args.random.clone()),
        "parameters": cfg.num_parameters(),
        "device": args.device,
        "dtype": args.dtype.to_string(),
        "repeats": args.repeats,
        "threads": {"available": threads.0, "rayon": threads.1, "candle": threads.2},
    });

    // Token ids from a real sentence, repeated, so EOS stays rare.
    let tok = model.tokenizer();
    let base = tok.encode(
        "The film opens on a quiet street at dawn, and for a while nothing happens; then the story \
         finds its feet and never lets go. The acting is warm, the music is spare, and the ending is earned.",
    )?;
    let seq = |i: usize, n: usize| -> Vec<u32> {
        (0..n).map(|j| base[(i * 7 + j) % base.len()]).collect()
    };
    // 8 × (32 prompt + 32 completion) tokens: scoring's batch, and the DPO step's 4 chosen + 4 rejected. As
    // in anchor_torch.py, 4 prompts each with two completions: row i + 4 has row i's prompt.
    let items: Vec<(Vec<u32>, Vec<u32>)> = (0..8)
        .map(|i| (seq(i % 4, 32), seq(i + 4, 64)[32..].to_vec()))
        .collect();
    // The same shape with 8 different prompts: what a step costs when no prompt is shared.
    let unshared: Vec<(Vec<u32>, Vec<u32>)> = (0..8)
        .map(|i| {
            let s = seq(i, 64);
            (s[..32].to_vec(), s[32..].to_vec())
        })
        .collect();

    if wanted("score") {
        let m = measure(args.repeats, || {
            model.score(&items)?;
            Ok(512)
        })?;
        say(format!(
            "score      8 × 64 tokens, no grad:          {:7.1} tokens/s  ({:.3} s)  peak RSS {}",
            m.per_second(),
            m.best(),
            gib(m.peak)
        ));
        report["score"] = m.json();
    }

    for &weights in &args.sampling_weights {
        if !SAMPLE_WORKLOADS.iter().any(|(w, ..)| wanted(w)) {
            break;
        }
        let (sampler, suffix) = if weights == SamplingWeights::F32 {
            (model.clone(), String::new())
        } else {
            let t = Instant::now();
            let q = model.with_sampling_weights(weights)?;
            let seconds = t.elapsed().as_secs_f64();
            say(format!(
                "quantize   the sampling copy to {weights}:       {seconds:7.3} s"
            ));
            report[format!("quantize_{weights}")] = json!({ "seconds": seconds });
            (q, format!("_{weights}"))
        };
        sample_workloads(
            &sampler,
            &seq,
            args.repeats,
            &wanted,
            &suffix,
            &say,
            &mut report,
        )?;
    }
    // The reference enters only through its cached log-probs, so a step's peak is the policy's weights,
    // gradients, AdamW state and activations.
    let reference: Vec<f64> = if wanted("dpo") || wanted("dpo_lora") {
        model.score(&items)?.iter().map(|s| s.sum).collect()
    } else {
        Vec::new()
    };
    if wanted("dpo_lora") {
        // Before the full step, whose memory is not all given back to the system.
        let settings = LoraSettings {
            rank: args.lora_rank,
            alpha: 2.0 * args.lora_rank as f64,
            ..LoraSettings::default()
        };
        let policy = model.with_lora(&settings, 0)?;
        let trainable: usize = policy.vars().iter().map(|v| v.elem_count()).sum();
        let (m, fwd_bwd) = dpo_workload(&policy, &items, &reference, args.repeats)?;
        say(format!(
            "dpo LoRA   8 × 64 tokens, rank {} on q,k,v,o,gate,up,down ({:.2}M trainable): {:7.1} tokens/s  ({:.3} s, of which forward+backward {:.3} s)  peak RSS {}",
            args.lora_rank,
            trainable as f64 / 1e6,
            m.per_second(),
            m.best(),
            fwd_bwd,
            gib(m.peak)
        ));
        report["dpo_lora"] = m.json();
        report["dpo_lora"]["forward_backward_seconds"] = json!(fwd_bwd);
        report["dpo_lora"]["rank"] = json!(args.lora_rank);
        report["dpo_lora"]["trainable_parameters"] = json!(trainable);
    }
    if wanted("dpo") {
        // The loaded model is trained in place, as anchor_torch.py does.
        let (m, fwd_bwd) = dpo_workload(&model, &items, &reference, args.repeats)?;
        say(format!(
            "dpo step   8 × 64 tokens (fwd+bwd+AdamW):   {:7.1} tokens/s  ({:.3} s, of which forward+backward {:.3} s)  peak RSS {}",
            m.per_second(),
            m.best(),
            fwd_bwd,
            gib(m.peak)
        ));
        report["dpo"] = m.json();
        report["dpo"]["forward_backward_seconds"] = json!(fwd_bwd);
    }
    if wanted("dpo_unshared") {
        // After `dpo`, on the weights it trained: the peak here is not this step's alone.
        let reference: Vec<f64> = model.score(&unshared)?.iter().map(|s| s.sum).collect();
        let (m, fwd_bwd) = dpo_workload(&model, &unshared, &reference, args.repeats)?;
        say(format!(
            "dpo step   8 × 64 tokens, 8 prompts:       {:7.1} tokens/s  ({:.3} s, of which forward+backward {:.3} s)",
            m.per_second(),
            m.best(),
            fwd_bwd,
        ));
        report["dpo_unshared"] = m.json();
        report["dpo_unshared"]["forward_backward_seconds"] = json!(fwd_bwd);
    }

    if args.json {
        println!("{report}");
    }
    Ok(())
}

/// The sampling workloads: name, prompts in the batch, new tokens each.
const SAMPLE_WORKLOADS: [(&str, usize, usize); 3] = [
    ("sample16", 16, 32),
    ("sample1", 1, 32),
    ("sample64", 64, 128),
];

/// The sampling workloads on `model`, reported under their names plus `suffix`.
fn sample_workloads(
    model: &LanguageModel,
    seq: &dyn Fn(usize, usize) -> Vec<u32>,
    repeats: usize,
    wanted: &dyn Fn(&str) -> bool,
    suffix: &str,
    say: &dyn Fn(String),
    report: &mut Value,
) -> anyhow::Result<()> {
    for &(name, n, new_tokens) in &SAMPLE_WORKLOADS {
        if !wanted(name) {
            continue;
        }
        let prompts: Vec<Vec<u32>> = (0..n).map(|i| seq(i, 16)).collect();
        let params = SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            max_new_tokens: new_tokens,
            seed: 1,
            max_batch: n.max(16),
            ..Default::default()
        };
        let m = measure(repeats, || {
            let out = model.sample(&prompts, 1, &params)?;
            Ok(out.iter().flatten().map(|s| s.token_ids.len()).sum())
        })?;
        say(format!(
            "{name}{suffix:6} {n:2} × {new_tokens} new tokens, KV cache: {:7.1} new tokens/s  ({} tokens in {:.3} s)  peak RSS {}",
            m.per_second(),
            m.tokens,
            m.best(),
            gib(m.peak)
        ));
        report[format!("{name}{suffix}")] = m.json();
    }
    Ok(())
}

/// One DPO step on `policy` (the trainer's loss, backward and fused AdamW over its trainable weights), timed
/// `repeats` times: 4 chosen and 4 rejected of `items`, `reference` their cached log-probs. Returns the
/// measurement and the best forward+backward time.
fn dpo_workload(
    policy: &LanguageModel,
    items: &[(Vec<u32>, Vec<u32>)],
    reference: &[f64],
    repeats: usize,
) -> anyhow::Result<(Measured, f64)> {
    let device = policy.device().clone();
    let cached = |range: std::ops::Range<usize>| -> anyhow::Result<SeqLogProbs> {
        let n = range.len();
        let sums: Vec<f32> = reference[range].iter().map(|&s| s as f32).collect();
        Ok(SeqLogProbs {
            sum: candle_core::Tensor::from_vec(sums, n, &device)?,
            tokens: candle_core::Tensor::full(32f32, n, &device)?,
        })
    };
    let reference = (cached(0..4)?, cached(4..8)?);
    let mut opt = AdamW::new(policy.vars(), AdamWParams::default())?;
    let mut fwd_bwd = f64::INFINITY;
    let m = measure(repeats, || {
        let t = Instant::now();
        let grads = halves_loss(policy, items, &reference)?.loss.backward()?;
        fwd_bwd = fwd_bwd.min(t.elapsed().as_secs_f64());
        opt.step_grads(&grads, None)?;
        Ok(512)
    })?;
    Ok((m, fwd_bwd))
}

/// The sigmoid DPO loss (β 0.1) of `policy` on `items` read as pairs, the first half chosen and the second
/// rejected, against the reference's cached log-probabilities of each half: the step that `bench-model`
/// times and `check-device` compares.
pub(super) fn halves_loss(
    policy: &LanguageModel,
    items: &[(Vec<u32>, Vec<u32>)],
    reference: &(SeqLogProbs, SeqLogProbs),
) -> anyhow::Result<LossOutput> {
    let half = items.len() / 2;
    let lp = policy.sequence_logprobs(items, Padding::Right)?;
    let side = |from: usize| -> anyhow::Result<SeqLogProbs> {
        Ok(SeqLogProbs {
            sum: lp.sum.narrow(0, from, half)?,
            tokens: lp.tokens.narrow(0, from, half)?,
        })
    };
    let loss = LossConfig {
        kind: LossKind::Dpo,
        beta: 0.1,
        label_smoothing: 0.0,
    };
    Ok(preference_loss(
        &loss,
        &PairLogProbs {
            policy_chosen: side(0)?,
            policy_rejected: side(half)?,
            reference_chosen: reference.0.clone(),
            reference_rejected: reference.1.clone(),
        },
    )?)
}
