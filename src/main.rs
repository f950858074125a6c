use clap::Parser;

fn main() -> std::process::ExitCode {
    // Before any thread exists: candle's spin-waiting element-wise pool costs more than it gains on
    // shared cores (docs/BENCHMARKS.md).
    prefloop::model::init_cpu_threads();
    prefloop::cli::init_tracing();
    let cli = prefloop::cli::Cli::parse();
    match prefloop::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
