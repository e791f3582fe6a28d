use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = orderguard::cli::Cli::parse();
    match orderguard::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("orderguard: {error:#}");
            ExitCode::FAILURE
        }
    }
}
