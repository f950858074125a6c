//! The command line: one file per command. `run` hands each parsed command to its module.

use clap::{Parser, Subcommand};

pub mod bench_model;
pub mod generate;

/// Collect preference labels where they count, and DPO fine-tune a language model on them.
#[derive(Debug, Parser)]
#[command(name = "prefloop", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
        Command::Generate(args) => generate::run(args),
        Command::BenchModel(args) => bench_model::run(args),
    }
}
