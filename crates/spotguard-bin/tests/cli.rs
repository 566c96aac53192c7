//! The command line as an operator meets it: `--help` with examples, `--version`, and
//! `check-config` printing the effective configuration with flags > environment > file >
//! defaults.

mod harness;

use harness::run_cli;

#[tokio::test]
async fn help_shows_examples_and_version_the_crate() {
    let dir = tempfile::tempdir().unwrap();
    let (status, stdout, _) = run_cli(&["--help"], &[], dir.path()).await;
    assert!(status.success());
    for needle in [
        "Examples:",
        "spotguard check-config",
        "simulate",
        "Exit codes",
    ] {
        assert!(stdout.contains(needle), "{needle} missing from\n{stdout}");
    }
    #[cfg(feature = "daemon")]
    assert!(stdout.contains("spotguard run --config"), "{stdout}");
    let (status, stdout, _) = run_cli(&["--version"], &[], dir.path()).await;
    assert!(status.success());
    assert_eq!(
        stdout.trim(),
        format!("spotguard {}", env!("CARGO_PKG_VERSION"))
    );
}

#[cfg(feature = "daemon")]
#[tokio::test]
async fn run_help_lists_every_setting_with_its_variable() {
    let dir = tempfile::tempdir().unwrap();
    let (status, stdout, _) = run_cli(&["run", "--help"], &[], dir.path()).await;
    assert!(status.success());
    for needle in [
        "--group <SPOT=ON_DEMAND>",
        "SPOTGUARD_GROUPS",
        "--monitor-interval",
        "SPOTGUARD_MONITOR_INTERVAL",
        "--stability",
        "--drain-timeout",
        "--role",
        "SPOTGUARD_ROLE",
        "--dry-run",
        "--metrics-addr",
        "--imds-endpoint",
        "--aws-endpoint",
        "--kubeconfig",
        "--shutdown-timeout",
    ] {
        assert!(stdout.contains(needle), "{needle} missing from\n{stdout}");
    }
}

#[tokio::test]
async fn check_config_applies_flags_over_environment_over_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(
        &file,
        r#"groups = [{ spot = "web-spot", on_demand = "web-od" }]
[timings]
monitor_interval = "45s"
stability = "5m"
asg_poll = "20s"
[daemon]
role = "agent"
notice_state_file = "/var/lib/spotguard/notices.json"
"#,
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let (status, stdout, stderr) = run_cli(
        &["check-config", path, "--stability", "3m"],
        &[
            ("SPOTGUARD_STABILITY", "4m"),
            ("SPOTGUARD_MONITOR_INTERVAL", "40s"),
            ("SPOTGUARD_ROLE", "controller"),
        ],
        dir.path(),
    )
    .await;
    assert!(status.success(), "{stderr}");
    // Flag over environment over file; file over default; default where nothing is said.
    for line in [
        "stability = \"3m\"",
        "monitor_interval = \"40s\"",
        "role = \"controller\"",
        "asg_poll = \"20s\"",
        "imds_poll = \"2s\"",
        "spot = \"web-spot\"",
    ] {
        assert!(
            stdout.lines().any(|l| l.trim() == line),
            "{line} missing from\n{stdout}"
        );
    }
    assert!(stderr.contains("configuration is valid"), "{stderr}");

    // The printed configuration is itself a valid file with the same meaning.
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, &stdout).unwrap();
    let (status, again, _) = run_cli(
        &["check-config", printed.to_str().unwrap()],
        &[],
        dir.path(),
    )
    .await;
    assert!(status.success());
    assert_eq!(again, stdout);
}

#[tokio::test]
async fn check_config_warns_about_legal_but_suspicious_settings() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(
        &file,
        "groups = [{ spot = \"a\", on_demand = \"b\" }]\n[timings]\nstability = \"10s\"\n[daemon]\nrole = \"controller\"\ndry_run = true\n",
    )
    .unwrap();
    let (status, _, stderr) =
        run_cli(&["check-config", file.to_str().unwrap()], &[], dir.path()).await;
    assert!(status.success());
    assert!(stderr.contains("warning: timings.stability"), "{stderr}");
    assert!(stderr.contains("warning: daemon.dry_run"), "{stderr}");
}
