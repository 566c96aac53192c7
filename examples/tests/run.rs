//! The examples that need no cluster and no AWS account run to completion, and say what they
//! did.

use std::process::Command;

fn run(bin: &str) -> String {
    let out = Command::new(bin)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{bin} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn a_cloud_of_ones_own_falls_back_then_gives_the_on_demand_capacity_back() {
    let out = run(env!("CARGO_BIN_EXE_custom_cloud"));
    assert!(
        out.contains("phase 1: spot had no capacity; i-web-od-1 stands in"),
        "{out}"
    );
    assert!(
        out.contains("waits: group web-spot had a failed scaling activity"),
        "{out}"
    );
    assert!(out.contains("healthy for 0s of the required 2m"), "{out}");
    assert!(out.contains("released [\"fb-"), "{out}");
    assert!(
        out.contains("end: 0 open ledger entries, on-demand pool at 0"),
        "{out}"
    );
}

#[test]
fn notices_from_ones_own_webhook_and_clock_are_handled() {
    let out = run(env!("CARGO_BIN_EXE_own_notices"));
    assert!(
        out.contains("tooling: POST /notice -> HTTP/1.1 202 Accepted"),
        "{out}"
    );
    assert!(
        out.contains("engine: rebalance recommendation for i-web-spot-0"),
        "{out}"
    );
    assert!(out.contains("replaced by spot instance"), "{out}");
    assert!(out.contains("pre-scale paid back: true"), "{out}");
}
