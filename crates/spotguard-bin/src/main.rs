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
mod webhook;

#[cfg(feature = "daemon")]
mod daemon;
#[cfg(feature = "daemon")]
mod dry_run;
#[cfg(feature = "daemon")]
mod endpoints;
#[cfg(feature = "daemon")]
mod metrics;
#[cfg(feature = "daemon")]
mod notify;
#[cfg(feature = "daemon")]
mod observer;
#[cfg(feature = "daemon")]
mod roles;
#[cfg(feature = "daemon")]
mod shutdown;
#[cfg(feature = "daemon")]
mod status;
#[cfg(feature = "daemon")]
mod status_book;
#[cfg(feature = "daemon")]
mod wiring;

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

  # What Spot Guard owes back and why it waits, with your kubeconfig (installed as
  # kubectl-spotguard on the PATH, the same is `kubectl spotguard`):
  spotguard status --namespace spotguard

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
    /// Every open ledger entry (pool, instance, node, age, state, the monitor's latest
    /// verdict), the leader and the recent actions, read with your kubeconfig.
    #[cfg(feature = "daemon")]
    Status(status::StatusArgs),
    /// Run the engine end to end over a scenario, on this machine, with no AWS account and no
    /// cluster; compare with "all on-demand" and "no Spot Guard".
    Simulate(simulate::SimulateArgs),
}

/// The name `kubectl` gives a plugin's executable; installed under it, `spotguard` is
/// `kubectl spotguard`, and `kubectl spotguard` alone is `kubectl spotguard status`.
const KUBECTL_PLUGIN: &str = "kubectl-spotguard";

/// The command line, read as `kubectl spotguard` when installed as its plugin.
fn parse() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let plugin = args
        .first()
        .and_then(|a| Path::new(a).file_stem())
        .is_some_and(|stem| stem == KUBECTL_PLUGIN);
    let mut command = Cli::command();
    if plugin {
        command = command
            .name("kubectl spotguard")
            .bin_name("kubectl spotguard");
        // `kubectl spotguard` and `kubectl spotguard -n ops --json` are `... status ...`.
        let first = args.get(1).and_then(|a| a.to_str());
        let subcommand = first.is_some_and(|a| {
            ["-h", "--help", "-V", "--version", "help"].contains(&a)
                || command.get_subcommands().any(|c| c.get_name() == a)
        });
        if cfg!(feature = "daemon") && !subcommand {
            args.insert(1, "status".into());
        }
    }
    let matches = command.get_matches_from(args);
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() -> ExitCode {
    let cli = parse();
    match cli.command {
        #[cfg(feature = "daemon")]
        Command::Run(args) => daemon::run(args),
        Command::CheckConfig(args) => check_config(args),
        #[cfg(feature = "daemon")]
        Command::Status(args) => status::run(args),
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
