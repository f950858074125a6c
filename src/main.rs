use clap::Parser;

fn main() -> std::process::ExitCode {
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
