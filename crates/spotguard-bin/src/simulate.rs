//! `spotguard simulate`.

use std::process::ExitCode;

/// Arguments of `spotguard simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {}

/// Runs the simulation.
pub fn run(_args: SimulateArgs) -> ExitCode {
    eprintln!("spotguard simulate: the simulator is not built yet");
    ExitCode::FAILURE
}
