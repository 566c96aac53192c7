//! What the benchmarks on the real control plane print with their figures.

use std::time::Duration;

/// The median of some durations (the upper one of an even count).
pub fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

/// The machine's load, from `/proc/loadavg`, as a sentence for the notes: the figures are only
/// as quiet as the machine, which other work shares.
pub fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let fields: Vec<&str> = load.split_whitespace().take(3).collect();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "Load average of the machine at the end (1, 5, 15 min): {} on {cores} cores; other work ran on it too.",
        fields.join(", ")
    )
}
