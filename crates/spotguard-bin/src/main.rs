//! `spotguard`: the Spot Guard daemon and CLI.
//!
//! The binary wires, it does not decide: every decision is made by `spotguard-core`; this
//! crate turns configuration, flags and environment into the engine's settings, connects the
//! engine to AWS and Kubernetes through their adapters, and exposes what happens as logs,
//! metrics and Kubernetes Events.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use spotguard_core::config::ConfigWarning;

mod cli;
mod settings;
mod simulate;

#[cfg(feature = "daemon")]
mod daemon;
#[cfg(feature = "daemon")]
mod dry_run;
#[cfg(feature = "daemon")]
mod endpoints;
#[cfg(feature = "daemon")]
mod metrics;
#[cfg(feature = "daemon")]
mod observer;
#[cfg(feature = "daemon")]
mod roles;
#[cfg(feature = "daemon")]
mod shutdown;

use settings::{DaemonConfig, SettingsError};

const EXAMPLES: &str = "\
Examples:
  # Validate a configuration and print the effective settings (flags and SPOTGUARD_*
  # environment variables included):
  spotguard check-config /etc/spotguard/config.toml

  # One agent per spot node (DaemonSet) and a leader-elected controller (Deployment):
  spotguard run --config /etc/spotguard/config.toml --role agent
  spotguard run --config /etc/spotguard/config.toml --role controller

  # Everything in one process, deciding and logging but changing nothing:
  spotguard run --group web-spot=web-od --role all --dry-run --log-format json

  # See the whole flow on this machine, with no AWS account and no cluster:
  spotguard simulate

Settings: flags win over SPOTGUARD_* environment variables, which win over the file, which
wins over the defaults. `spotguard run --help` lists them all.

Exit codes: 0 success or graceful shutdown; 1 a runtime failure (an endpoint that cannot be
reached, a missing group); 2 an invalid configuration or command line.";

/// Keeps Kubernetes clusters on AWS running on spot capacity without losing availability.
#[derive(Debug, Parser)]
#[command(name = "spotguard", version, about, long_about = None, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: the agent (IMDS notices, handed over on its node), the controller
    /// (leader-elected: phase 1 of every notice, the monitor), or both.
    #[cfg(feature = "daemon")]
    Run(cli::RunArgs),
    /// Validate a configuration file and print the effective configuration as TOML.
    CheckConfig(cli::CheckConfigArgs),
    /// Run the engine end to end over a scenario, on this machine, with no AWS account and no
    /// cluster; compare with "all on-demand" and "no Spot Guard".
    Simulate(simulate::SimulateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        #[cfg(feature = "daemon")]
        Command::Run(args) => daemon::run(args),
        Command::CheckConfig(args) => check_config(args),
        Command::Simulate(args) => simulate::run(args),
    }
}

/// The configuration `run` would use: defaults, the file (if any), then flags and
/// environment; validated.
fn effective_config(
    file: Option<&Path>,
    overrides: cli::Overrides,
) -> Result<(DaemonConfig, Vec<ConfigWarning>), SettingsError> {
    let mut config = match file {
        Some(path) => DaemonConfig::load(path)?,
        None => DaemonConfig::default(),
    };
    overrides.apply(&mut config);
    let warnings = config.validate()?;
    Ok((config, warnings))
}

/// `spotguard check-config FILE`: the effective configuration on stdout, warnings on stderr.
fn check_config(args: cli::CheckConfigArgs) -> ExitCode {
    match effective_config(Some(&args.file), args.overrides) {
        Ok((config, warnings)) => {
            print!("{}", config.to_toml());
            for w in warnings {
                eprintln!("warning: {w}");
            }
            eprintln!("{}: configuration is valid", args.file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("spotguard: {e}");
            ExitCode::from(2)
        }
    }
}
