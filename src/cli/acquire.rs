//! `prefloop acquire`: score candidate pairs for a file of prompts and print the M chosen as NDJSON.

use std::io::{BufReader, Write};
use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;

use crate::domain::{EntropyEstimator, Strategy};
use crate::learn::candidates::{AcquireConfig, RewardSpec, acquire_pairs};
use crate::learn::data::read_prompts;
use crate::model::{LanguageModel, parse_device};

#[derive(Debug, clap::Args)]
pub struct AcquireArgs {
    /// The policy πθ: a Hugging Face directory or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// The reference πref for the implicit rewards (default: the policy itself, so every reward is 0).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Prompts as NDJSON, {"prompt"} per line.
    #[arg(long)]
    prompts: PathBuf,
    /// random, entropy, certainty, uncertainty or hybrid.
    #[arg(long)]
    strategy: Strategy,
    /// How many pairs to print.
    #[arg(short = 'm', long = "pairs")]
    m: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 0.2)]
    beta: f64,
    /// Samples per prompt for the `samples` entropy estimate.
    #[arg(long, default_value_t = 8)]
    entropy_samples: usize,
    /// samples (N samples, −mean log π) or tokens (one sample, summed per-token entropy).
    #[arg(long, default_value = "samples")]
    entropy_estimator: EntropyEstimator,
    /// Length-normalise each sample's log-prob in the entropy estimate.
    #[arg(long)]
    length_normalised: bool,
    #[arg(long, default_value_t = 0.7)]
    temperature: f64,
    #[arg(long, default_value_t = 24)]
    max_new_tokens: usize,
    /// Hybrid keeps this share of the prompts by entropy (the paper: 4096 / 32768).
    #[arg(long, default_value_t = 0.125)]
    keep_fraction: f64,
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: AcquireArgs) -> anyhow::Result<()> {
    if !(args.keep_fraction > 0.0 && args.keep_fraction <= 1.0) {
        anyhow::bail!("--keep-fraction must be in (0, 1]");
    }
    let file = std::fs::File::open(&args.prompts)
        .with_context(|| format!("opening {}", args.prompts.display()))?;
    let prompts = read_prompts(BufReader::new(file))
        .with_context(|| format!("reading {}", args.prompts.display()))?;
    let device = parse_device(&args.device)?;
    let policy = LanguageModel::load(&args.model, &device)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let reference = match &args.reference {
        Some(p) => Some(
            LanguageModel::load(p, &device).with_context(|| format!("loading {}", p.display()))?,
        ),
        None => None,
    };
    let cfg = AcquireConfig {
        strategy: args.strategy,
        reward: RewardSpec {
            beta: args.beta,
            ..RewardSpec::default()
        },
        entropy_samples: args.entropy_samples,
        entropy_estimator: args.entropy_estimator,
        length_normalised: args.length_normalised,
        temperature: args.temperature,
        top_p: 1.0,
        max_new_tokens: args.max_new_tokens,
        keep_fraction: args.keep_fraction,
        seed: args.seed,
    };
    let version = args.model.display().to_string();
    let chosen = acquire_pairs(
        &policy,
        reference.as_ref(),
        &prompts,
        args.m,
        &cfg,
        &version,
    )?;
    let mut out = std::io::stdout().lock();
    for p in &chosen {
        let line = json!({
            "prompt": p.prompt,
            "completion_a": p.completion_a,
            "completion_b": p.completion_b,
            "ends_a": p.ends_a,
            "ends_b": p.ends_b,
            "scores": {
                "entropy": p.scores.entropy,
                "reward_a": p.scores.reward_a,
                "reward_b": p.scores.reward_b,
                "certainty": p.scores.certainty,
                "rank": p.rank,
            },
            "strategy": p.strategy,
            "model_version": p.model_version,
        });
        writeln!(out, "{line}")?;
    }
    if chosen.len() < args.m {
        eprintln!(
            "only {} distinct pairs from {} prompts",
            chosen.len(),
            prompts.len()
        );
    }
    Ok(())
}
