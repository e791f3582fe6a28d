//! The command line: `orderguard serve` and `orderguard migrate`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::settings::Settings;
use crate::startup::{Application, connect_store, shutdown_signal};

#[derive(Debug, Parser)]
#[command(
    name = "orderguard",
    version,
    about = "Checkout 2FA gate for telecom e-shops"
)]
pub struct Cli {
    /// Configuration file (TOML). Default: ./orderguard.toml if it exists.
    #[arg(long, global = true, env = "ORDERGUARD_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (applies pending migrations first).
    Serve,
    /// Apply pending database migrations (and ClickHouse's, when configured) and exit.
    Migrate,
    /// Brand folders: validate them, or start a new one.
    #[command(subcommand)]
    Brands(BrandsCommand),
    /// The load tool: run a benchmark scenario against loopback services.
    #[command(subcommand)]
    Bench(crate::bench::Scenario),
}

#[derive(Debug, Subcommand)]
pub enum BrandsCommand {
    /// Validate a brands folder (for a brand team's CI): exit 0 when all is well, else 1
    /// and every problem as `file: key: what is wrong`.
    Check {
        /// The brands folder. Default: ./brands.
        #[arg(default_value = "brands")]
        dir: PathBuf,
    },
    /// Create a brand folder that passes the check, with a new API key (shown once).
    New {
        /// The brand id: lower-case letters, digits and dashes.
        id: String,
        /// The brands folder. Default: ./brands.
        #[arg(long, default_value = "brands")]
        dir: PathBuf,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => {
            let settings = load_settings(cli.config.as_deref())?;
            let app = Application::build(settings).await?;
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::Migrate => migrate(&load_settings(cli.config.as_deref())?).await,
        // The load tool takes its targets as options, not from the service's settings.
        Command::Bench(scenario) => crate::bench::run(scenario).await,
        Command::Brands(BrandsCommand::Check { dir }) => {
            let problems = crate::brands::check(&dir);
            if problems.is_empty() {
                println!("{}: all brands are valid", dir.display());
                Ok(())
            } else {
                for problem in &problems {
                    println!("{problem}");
                }
                anyhow::bail!("{} problem(s) in {}", problems.len(), dir.display())
            }
        }
        Command::Brands(BrandsCommand::New { id, dir }) => {
            let created = crate::brands::scaffold::new_brand(&dir, &id)?;
            println!("created {}", created.folder.display());
            println!(
                "API key (shown once; brand.toml keeps only its hash): {}",
                created.api_key
            );
            Ok(())
        }
    }
}

/// Settings for the service commands, with logging set up from them.
fn load_settings(config: Option<&std::path::Path>) -> anyhow::Result<Settings> {
    let settings = Settings::load(config)?;
    crate::telemetry::init(&settings);
    if !settings.ignored_env.is_empty() {
        tracing::info!(variables = ?settings.ignored_env, "ignoring Kubernetes service-link variables (set enableServiceLinks: false to drop them)");
    }
    Ok(settings)
}

async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    if settings.mode == crate::settings::Mode::Production && settings.database.url.is_none() {
        anyhow::bail!("database.url (ORDERGUARD_DATABASE__URL) is required in production mode");
    }
    let store = connect_store(settings).await?;
    if let Some(url) = &settings.clickhouse.url {
        let sink = crate::events::clickhouse::ClickHouseSink::new(url, &settings.clickhouse);
        sink.ensure_migrated().await?;
        tracing::info!("ClickHouse migrations applied");
    }
    tracing::info!(
        backend = crate::store::Store::backend(&store).as_str(),
        "migrations applied"
    );
    Ok(())
}
