//! The command line: one file per command. `run` hands each parsed command to its module.

pub mod acquire;
pub mod bench_model;
pub mod dpo;
pub mod generate;

use clap::{Parser, Subcommand};

/// Collect preference labels where they count, and DPO fine-tune a language model on them.
#[derive(Debug, Parser)]
#[command(name = "prefloop", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// DPO fine-tune a model on a TRL-format preference file.
    Dpo(dpo::DpoArgs),
    /// Generate candidate pairs for prompts, score them and print the M an acquisition strategy picks.
    Acquire(acquire::AcquireArgs),
    /// Sample completions of a prompt from a model.
    Generate(generate::Args),
    /// Measure scoring, sampling and training-step speed of a model.
    BenchModel(bench_model::Args),
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info` for prefloop, `warn` elsewhere).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,prefloop=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dpo(args) => dpo::run(args),
        Command::Acquire(args) => acquire::run(args),
        Command::Generate(args) => generate::run(args),
        Command::BenchModel(args) => bench_model::run(args),
    }
}
