//! `orderguard bench`: the project's own load tool. Each scenario is a module with its own
//! options and a report; runs are bounded in size and target loopback services only.
//!
//! Scenarios: `verify`, `gate` and `mixed` drive a running service over HTTP as shops and
//! buyers would (with the tool's own SMS sink and upstream); `relay` measures the outbox →
//! ClickHouse relay. A new scenario is a new [`load::Flow`] path or a module like `relay`.

pub mod load;
mod load_report;
pub mod relay;
pub mod sink;
pub mod stats;

use clap::Subcommand;
use serde::Serialize;

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Buyers start a verification, wait for the SMS and check the code: all approved.
    Verify(load::LoadOptions),
    /// Shops hold orders; buyers confirm; orders are forwarded to the tool's upstream.
    Gate(load::LoadOptions),
    /// Wrong codes, resends, aborts and abandoned verifications beside straight approvals.
    Mixed(load::LoadOptions),
    /// Normal buyers' verify flows beside SMS pumping to one prefix (`--pump-rate`): what
    /// the fraud rules refuse, what still goes out, and what the buyers' latency does.
    Attack(load::LoadOptions),
    /// Events per second from the outbox to ClickHouse.
    Relay(relay::RelayOptions),
}

pub async fn run(scenario: Scenario) -> anyhow::Result<()> {
    let (flow, options) = match scenario {
        Scenario::Relay(options) => {
            let json = options.json;
            let report = relay::run(options).await?;
            return print_report(&report, json);
        }
        Scenario::Verify(options) => (load::Flow::Verify, options),
        Scenario::Gate(options) => (load::Flow::Gate, options),
        Scenario::Mixed(options) => (load::Flow::Mixed, options),
        Scenario::Attack(options) => (load::Flow::Attack, options),
    };
    let json = options.json;
    let report = load::run(flow, options).await?;
    print_report(&report, json)
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
