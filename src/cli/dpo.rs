//! `prefloop dpo`: DPO on a TRL-format file, metrics per step on stdout (NDJSON), a progress bar on stderr.

use std::io::{BufReader, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Context;

use crate::domain::{LoraSettings, LoraTarget, LossKind, Schedule};
use crate::learn::data::read_preferences_chat;
use crate::learn::dpo::LossConfig;
use crate::learn::optim::AdamWParams;
use crate::learn::reference::ReferenceCache;
use crate::learn::run::{DpoConfig, Progress, RunControl};
use crate::learn::trainer::{describe, split_eval, train_dpo};
use crate::model::{ChatMessage, LanguageModel, Precision, parse_device};

#[derive(Debug, clap::Args)]
pub struct DpoArgs {
    /// The model to train: a Hugging Face directory or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// The reference model πref (default: --model). `reset` starts from it, `continue` from --model.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// TRL-format preferences: {"prompt","chosen","rejected"} per line.
    #[arg(long)]
    data: PathBuf,
    /// Where the trained model is written (a Hugging Face directory, or with --lora-rank a PEFT adapter
    /// directory; replaced atomically).
    #[arg(long)]
    out: PathBuf,
    /// dpo (sigmoid) or ipo.
    #[arg(long, default_value = "dpo")]
    loss: LossKind,
    /// β: how strongly the policy is held near the reference (the paper: 0.2).
    #[arg(long, default_value_t = 0.2)]
    beta: f64,
    /// AdamW learning rate (the paper: 1e-6, constant).
    #[arg(long, default_value_t = 1e-6)]
    lr: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Forward passes per optimizer step (effective batch = batch size × this).
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// ε, the assumed share of flipped labels (conservative DPO; dpo loss only).
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// reset: start from the reference weights; continue: keep training --model.
    #[arg(long, default_value = "reset")]
    schedule: Schedule,
    /// Seeds the eval split and the batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Share of the pairs held out for evaluation (0 = none).
    #[arg(long, default_value_t = 0.1)]
    eval_fraction: f64,
    /// Longer prompts keep their last tokens.
    #[arg(long, default_value_t = 128)]
    max_prompt_tokens: usize,
    /// Longer completions keep their first tokens.
    #[arg(long, default_value_t = 128)]
    max_completion_tokens: usize,
    /// Gradient clipping by global norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// What the weights, activations and gradients are in: f32, or bf16 on a GPU (the optimizer state and an
    /// f32 master copy of every trained weight stay f32; the checkpoint is written in bf16).
    #[arg(long, default_value = "f32")]
    dtype: Precision,
    /// Train LoRA adapters of this rank on the frozen --model instead of every weight, and write them as a
    /// PEFT adapter directory (adapter_config.json + adapter_model.safetensors). The reference is --model
    /// with the adapters off. A --model that is an adapter directory keeps training its adapters.
    #[arg(long)]
    lora_rank: Option<u32>,
    /// LoRA's alpha: the adapters' output is scaled by alpha / rank (default: twice the rank).
    #[arg(long, requires = "lora_rank")]
    lora_alpha: Option<f64>,
    /// Dropout on the adapters' input while training.
    #[arg(long, requires = "lora_rank")]
    lora_dropout: Option<f64>,
    /// The linear layers of every block to adapt, comma-separated (default: all seven).
    #[arg(long, value_delimiter = ',', requires = "lora_rank")]
    lora_targets: Vec<LoraTarget>,
    /// Write a Hugging Face directory with the adapters merged into the weights instead of the adapter.
    #[arg(long)]
    merge: bool,
}

impl DpoArgs {
    /// The LoRA settings the flags ask for, if any.
    fn lora(&self) -> anyhow::Result<Option<LoraSettings>> {
        let Some(rank) = self.lora_rank else {
            return Ok(None);
        };
        let defaults = LoraSettings::default();
        let settings = LoraSettings {
            rank,
            alpha: self.lora_alpha.unwrap_or(2.0 * rank as f64),
            dropout: self.lora_dropout.unwrap_or(defaults.dropout),
            targets: if self.lora_targets.is_empty() {
                defaults.targets
            } else {
                self.lora_targets.clone()
            },
        };
        settings
            .check()
            .map_err(|e| anyhow::anyhow!("{}", e.replace("lora.", "--lora-")))?;
        Ok(Some(settings))
    }
}

pub fn run(args: DpoArgs) -> anyhow::Result<()> {
    let device = parse_device(&args.device)?;
    args.dtype.check_device(&device)?;
    let dtype = args.dtype.dtype();
    let lora = args.lora()?;
    let model = LanguageModel::load_as(&args.model, &device, dtype)
        .with_context(|| format!("loading {}", args.model.display()))?;
    if model.lora().is_some() && lora.is_some() {
        anyhow::bail!(
            "{} is a LoRA adapter already: leave out --lora-rank to keep training it",
            args.model.display()
        );
    }
    // With LoRA the policy is --model plus adapters (fresh, or the adapter directory's own).
    let model = match &lora {
        Some(l) => model.with_lora(l, args.seed)?,
        None => model,
    };
    let adapted = model.lora().cloned();
    if adapted.is_some() && args.reference.is_some() {
        anyhow::bail!(
            "with LoRA the reference is the base model with the adapters off: leave out --reference"
        );
    }
    if args.merge && adapted.is_none() {
        anyhow::bail!("--merge merges LoRA adapters: give --lora-rank (or an adapter directory)");
    }
    // Conversational lines are rendered with the model's own chat template.
    let file = std::fs::File::open(&args.data)
        .with_context(|| format!("opening {}", args.data.display()))?;
    let render = |m: &[ChatMessage], g: bool| model.tokenizer().apply_chat_template(m, g);
    let pairs = read_preferences_chat(BufReader::new(file), &render)
        .with_context(|| format!("reading {}", args.data.display()))?;
    let (train, eval) = split_eval(&pairs, args.eval_fraction, args.seed);
    let cfg = DpoConfig {
        loss: LossConfig {
            kind: args.loss,
            beta: args.beta,
            label_smoothing: args.label_smoothing,
        },
        optimizer: AdamWParams {
            lr: args.lr,
            weight_decay: args.weight_decay,
            ..Default::default()
        },
        epochs: args.epochs,
        batch_size: args.batch_size,
        grad_accum_steps: args.grad_accum,
        max_prompt_tokens: args.max_prompt_tokens,
        max_completion_tokens: args.max_completion_tokens,
        max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
        schedule: args.schedule,
        seed: args.seed,
        eval_every: 0,
    };
    cfg.validate()?;
    eprintln!(
        "{} training pairs, {} held out; {}",
        train.len(),
        eval.len(),
        describe(&cfg)
    );

    let reference_path = args.reference.clone();
    let mut load_reference = || -> Result<LanguageModel, crate::learn::BoxError> {
        match (&adapted, &reference_path) {
            // Fresh adapters score exactly as the base: `reset`'s start and the reference's log-probs.
            (Some(l), _) => Ok(model.without_lora().with_lora(l, args.seed)?),
            (None, Some(p)) => Ok(LanguageModel::load_as(p, &device, dtype)?),
            (None, None) => Ok(model.deep_clone()?),
        }
    };
    let mut bar = ProgressBar::new(cfg.total_steps(train.len()));
    let mut on_progress = |p: &Progress| {
        let last_reference = matches!(p, Progress::Reference { done, total, .. } if done == total);
        if last_reference || matches!(p, Progress::Step(_) | Progress::Eval(_)) {
            bar.clear();
            let line = serde_json::to_string(p).expect("metrics serialise");
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
        bar.update(p);
    };
    let cancel = AtomicBool::new(false);
    let outcome = train_dpo(
        &model,
        &mut load_reference,
        &mut ReferenceCache::new(),
        &train,
        &eval,
        &cfg,
        RunControl {
            hold: &|| false,
            progress: &mut on_progress,
            cancel: &cancel,
        },
    )?;
    bar.clear();
    let trained = if args.merge {
        outcome.model.merged()?
    } else {
        outcome.model
    };
    trained
        .save(&args.out)
        .with_context(|| format!("saving to {}", args.out.display()))?;
    eprintln!("saved {}", args.out.display());
    if let Some(kb) = peak_rss_kb() {
        eprintln!("peak memory (RSS) {:.2} GB", kb as f64 / 1e6);
    }
    Ok(())
}

/// The process's peak resident set (Linux `VmHWM`), for the benchmark figures.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A one-line bar on stderr, drawn only when stderr is a terminal.
struct ProgressBar {
    total: usize,
    live: bool,
}

impl ProgressBar {
    fn new(total: usize) -> Self {
        ProgressBar {
            total,
            live: std::io::stderr().is_terminal(),
        }
    }

    fn update(&mut self, p: &Progress) {
        if !self.live {
            return;
        }
        let text = match p {
            Progress::Reference { done, total, .. } => {
                format!("reference log-probs {done}/{total}")
            }
            Progress::Step(m) => {
                let width = 30;
                let filled = width * m.step / self.total.max(1);
                format!(
                    "[{}{}] step {}/{} loss {:.4} acc {:.2} {:.0} tok/s",
                    "#".repeat(filled),
                    ".".repeat(width - filled),
                    m.step,
                    self.total,
                    m.loss,
                    m.rewards.accuracies,
                    m.tokens as f64 / m.seconds.max(1e-9)
                )
            }
            Progress::Eval(_) => return,
        };
        eprint!("\r\x1b[2K{text}");
    }

    fn clear(&self) {
        if self.live {
            eprint!("\r\x1b[2K");
        }
    }
}
