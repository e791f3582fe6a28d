//! `orderguard bench`: the project's own load tool. Each scenario is a module with its own
//! options and a report; runs are bounded in size and target loopback services only.
//!
//! Scenarios so far: `relay` (outbox → ClickHouse throughput). The HTTP scenarios (verify,
//! gate, mixed) belong to the load-tool issue and are not built yet.

pub mod relay;

use clap::Subcommand;
use serde::Serialize;

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Events per second from the outbox to ClickHouse.
    Relay(relay::RelayOptions),
}

pub async fn run(scenario: Scenario) -> anyhow::Result<()> {
    match scenario {
        Scenario::Relay(options) => {
            let json = options.json;
            let report = relay::run(options).await?;
            print_report(&report, json)
        }
    }
}

/// A report: a table for people, or one JSON object for scripts.
pub trait Report: Serialize {
    fn rows(&self) -> Vec<(&'static str, String)>;
}

fn print_report(report: &impl Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        let width = report
            .rows()
            .iter()
            .map(|(name, _)| name.len())
            .max()
            .unwrap_or(0);
        for (name, value) in report.rows() {
            println!("{name:<width$}  {value}");
        }
    }
    Ok(())
}
