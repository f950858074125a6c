//! The command line: one file per command. `run` hands each parsed command to its module.

use clap::{Parser, Subcommand};

pub mod acquire;
pub mod bench_api;
pub mod bench_entropy;
pub mod bench_loop;
pub mod bench_model;
pub mod check_device;
pub mod demo;
pub mod dpo;
pub mod export;
pub mod generate;
pub mod import;
pub mod project;
pub mod prompts;
pub mod serve;
pub mod simulate;
pub mod user;

/// Collect preference labels where they count, and DPO fine-tune a language model on them.
#[derive(Debug, Parser)]
#[command(name = "prefloop", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch the demo model and reviews, set up a demo project and serve it with the model.
    Demo(demo::DemoArgs),
    /// Serve the web app and REST API.
    Serve(serve::ServeArgs),
    /// Manage users and their tokens.
    User(user::UserArgs),
    /// Manage projects.
    Project(project::ProjectArgs),
    /// Import prompts or pairs from NDJSON.
    Import(import::ImportArgs),
    /// Export judgments as NDJSON (TRL or full).
    Export(export::ExportArgs),
    /// DPO fine-tune a model on a TRL-format preference file.
    Dpo(dpo::DpoArgs),
    /// Generate candidate pairs for prompts, score them and print the M an acquisition strategy picks.
    Acquire(acquire::AcquireArgs),
    /// Sample completions of a prompt from a model.
    Generate(generate::Args),
    /// Measure scoring, sampling and training-step speed of a model.
    BenchModel(bench_model::Args),
    /// Does a GPU compute what the CPU does? Log-probabilities and one DPO step, f32 or bf16.
    CheckDevice(check_device::Args),
    /// The annotator path under load (no model): /next and judgment latency at a given pending count.
    BenchApi(bench_api::Args),
    /// Annotators at a steady pace against a running server: does the model keep them supplied?
    BenchLoop(bench_loop::Args),
    /// Compare the entropy estimators (samples, tokens) on review prompts: cost and rank agreement.
    BenchEntropy(bench_entropy::Args),
    /// Cut movie reviews into prompts for the IMDB setting, as NDJSON.
    Prompts(prompts::PromptsArgs),
    /// Run the paper's experiment headless: strategies against each other, judged by an AI judge.
    Simulate(simulate::SimulateArgs),
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

/// How long a command that has finished waits for blocking work it leaves behind (a DPO run in progress when
/// `serve` is stopped) before the process exits anyway.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The async commands share one runtime, built here so `main` stays thin. Dropping a runtime waits for every
/// blocking task to end, and a training run takes minutes: so `serve` and `demo`, stopped with SIGTERM or
/// Ctrl-C during a run, never exited. The runtime is shut down with a grace period instead; the run left
/// behind is recorded as interrupted and retried at the next start, as after a crash.
fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(f);
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    result
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(args) => block_on(demo::run(args)),
        Command::Serve(args) => block_on(serve::run(args)),
        Command::User(args) => block_on(user::run(args)),
        Command::Project(args) => block_on(project::run(args)),
        Command::Import(args) => block_on(import::run(args)),
        Command::Export(args) => block_on(export::run(args)),
        Command::Dpo(args) => dpo::run(args),
        Command::Acquire(args) => acquire::run(args),
        Command::Generate(args) => generate::run(args),
        Command::BenchModel(args) => bench_model::run(args),
        Command::CheckDevice(args) => check_device::run(args),
        Command::BenchApi(args) => bench_api::run(args),
        Command::BenchLoop(args) => block_on(bench_loop::run(args)),
        Command::BenchEntropy(args) => bench_entropy::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Prompts(args) => prompts::run(args),
    }
}

#[cfg(test)]
mod tests {
    /// A command returns even while blocking work it started is still running (here: a task that would
    /// wait for ever without the grace period, since what ends it is dropped only after `block_on` returns).
    #[test]
    fn a_command_returns_while_blocking_work_is_still_running() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        super::block_on(async move {
            tokio::task::spawn_blocking(move || {
                let _ = rx.recv();
            });
            Ok(())
        })
        .unwrap();
        drop(tx);
    }
}
