use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cloud4iot::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(cloud4iot::flags::EXIT_ERROR);
        }
    };
    ExitCode::from(runtime.block_on(cloud4iot::cli::run(cli)))
}
