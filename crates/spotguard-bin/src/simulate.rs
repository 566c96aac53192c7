//! `spotguard simulate`: Spot Guard's engine, end to end, over an in-memory cloud and cluster
//! in virtual time, compared with *no Spot Guard* and *all on-demand*.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use spotguard_sim::{self as sim, clock_text, Comparison, Progress, Scenario, EXAMPLES};

mod plot;

/// Arguments of `spotguard simulate`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Example scenarios (--example): mixed-day (the default), quiet-day, interruption-wave, \
spot-drought. The scenario file format is described in docs/scenarios.md.")]
pub struct SimulateArgs {
    /// Scenario file (TOML); without one, the built-in mixed-day scenario runs.
    #[arg(value_name = "SCENARIO.toml", conflicts_with = "example")]
    pub scenario: Option<PathBuf>,

    /// Run one of the example scenarios shipped with Spot Guard.
    #[arg(long, value_name = "NAME", value_parser = example_names())]
    pub example: Option<String>,

    /// Print the timeline and the comparison as JSON instead of text.
    #[arg(long)]
    pub json: bool,

    /// Draw node counts by capacity type and pending pods over time to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,

    /// Leave the timeline out of the text output (the comparison only).
    #[arg(long, short)]
    pub quiet: bool,
}

fn example_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(EXAMPLES.iter().map(|(name, _)| *name))
}

/// Runs the simulation.
pub fn run(args: SimulateArgs) -> ExitCode {
    let scenario = match (&args.scenario, &args.example) {
        (Some(path), _) => Scenario::load(path),
        (None, Some(name)) => Scenario::example(name),
        (None, None) => Ok(Scenario::builtin()),
    };
    let scenario = match scenario {
        Ok(s) => s,
        Err(e) => {
            eprintln!("spotguard simulate: {e}");
            return ExitCode::FAILURE;
        }
    };

    let started = Instant::now();
    let mut shown = false;
    let mut progress = |p: &Progress| {
        // Only a run that takes a while says how far it is.
        if started.elapsed().as_secs_f64() < 1.0 {
            return;
        }
        shown = true;
        let percent = p.simulated.as_secs() * 100 / p.total.as_secs().max(1);
        eprint!(
            "\rsimulating {:<14} {percent:>3}%  ({} of {})",
            p.strategy.label(),
            clock_text(p.simulated),
            clock_text(p.total)
        );
        let _ = std::io::stderr().flush();
    };
    let comparison = sim::compare(&scenario, &mut progress);
    if shown {
        eprintln!(
            "\rsimulated 3 × {} in {:.1}s{:30}",
            clock_text(scenario.duration),
            started.elapsed().as_secs_f64(),
            ""
        );
    }

    if let Some(path) = &args.plot {
        if let Err(e) = plot::draw(&comparison, path) {
            eprintln!("spotguard simulate: cannot draw {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    let out = if args.json {
        let mut text = comparison.to_json();
        text.push('\n');
        text
    } else {
        render(&comparison, !args.quiet)
    };
    let mut stdout = std::io::stdout().lock();
    if stdout.write_all(out.as_bytes()).is_err() {
        return ExitCode::FAILURE;
    }
    if let (Some(path), false) = (&args.plot, args.json) {
        let _ = writeln!(stdout, "\nPlot written to {}", path.display());
    }
    ExitCode::SUCCESS
}

/// The text report: scenario, Spot Guard's timeline, the comparison table and the verdict.
fn render(c: &Comparison, timeline: bool) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Scenario {} ({} simulated)\n",
        c.scenario,
        clock_text(std::time::Duration::from_secs(c.duration_seconds))
    ));
    if !c.description.is_empty() {
        out.push_str(&wrap(&c.description, 96));
    }
    if timeline {
        out.push_str("\nWhat Spot Guard did, and why\n\n");
        out.push_str(&c.spot_guard.timeline_text());
    }
    out.push_str("\nSpot Guard against the baselines\n\n");
    out.push_str(&c.table());
    out.push('\n');
    out.push_str(&wrap(&c.verdict(), 96));
    out
}

/// Wraps text at `width` columns.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(&line);
        out.push('\n');
    }
    out
}
