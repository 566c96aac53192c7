//! `spotguard`: the Spot Guard daemon and CLI.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod simulate;

/// Keeps Kubernetes clusters on AWS running on spot capacity without losing availability.
#[derive(Debug, Parser)]
#[command(name = "spotguard", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine end to end over a scenario, on this machine, with no AWS account and no
    /// cluster; compare with "all on-demand" and "no Spot Guard".
    Simulate(simulate::SimulateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Simulate(args) => simulate::run(args),
    }
}
