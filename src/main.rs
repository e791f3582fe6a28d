use std::process::ExitCode;

use clap::Parser;

// glibc's malloc took a sixth of the service's CPU under load (perf: `_int_malloc`,
// `malloc_consolidate` and their locks); mimalloc's thread-local heaps do not contend.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
