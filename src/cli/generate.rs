//! `prefloop generate`: sample K completions of one prompt and print them.

use std::path::PathBuf;

use anyhow::Context;

use crate::model::{LanguageModel, Precision, SamplingParams, parse_device};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A Hugging Face model directory or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    /// Number of completions.
    #[arg(short = 'n', long = "num", default_value_t = 1)]
    pub n: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Wrap the prompt as one user turn in the model's chat template (ChatML for SmolLM2).
    #[arg(long)]
    pub chat: bool,
    /// cpu, cuda or cuda:N (CUDA needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// What the weights compute in: f32, or bf16 on a GPU.
    #[arg(long, default_value = "f32")]
    pub dtype: Precision,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::model::init_cpu_threads();
    let device = parse_device(&args.device)?;
    args.dtype.check_device(&device)?;
    let model = LanguageModel::load_as(&args.model, &device, args.dtype.dtype())
        .with_context(|| format!("loading {}", args.model.display()))?;
    let tok = model.tokenizer();
    let text = if args.chat {
        tok.chat_prompt(&args.prompt)
    } else {
        args.prompt.clone()
    };
    let ids = tok.encode(&text)?;
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        max_new_tokens: args.max_new_tokens,
        seed: args.seed,
        ..Default::default()
    };
    let samples = model.sample(&[ids], args.n, &params)?.remove(0);
    for (i, s) in samples.iter().enumerate() {
        println!(
            "--- completion {} ({} tokens, log p = {:.2}{})",
            i + 1,
            s.token_ids.len(),
            s.logprob,
            if s.stopped_at_eos {
                ", stopped at EOS"
            } else {
                ""
            }
        );
        println!("{}", s.text);
    }
    Ok(())
}
