//! Invariant 6 at start-up: a bad configuration, an unreachable endpoint or a missing group is
//! one error line on stderr that names the problem, a non-zero exit, and nothing changed in
//! AWS or Kubernetes.
#![cfg(feature = "daemon")]

mod harness;

use std::time::Duration;

use harness::{run_cli, standard_groups, World, LEDGER, SPOT};
use spotguard_testkit_aws::{free_port, ImdsServer};

/// The one line on stderr (logs go to stdout).
fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one error line on stderr:\n{stderr}"
    );
    lines[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_one_line_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "groups = [{ spot = \"a\", on_demand = \"b\" }]\n[timings]\nmonitor_interval = \"0s\"\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    for args in [vec!["run", "--config", path], vec!["check-config", path]] {
        let (status, _, stderr) = run_cli(&args, &[], dir.path()).await;
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        let line = one_line(&stderr);
        assert!(
            line.contains("timings.monitor_interval = 0s: must be greater than zero"),
            "{line}"
        );
    }

    std::fs::write(&file, "[daemon]\nrole = \"observer\"\n").unwrap();
    let (status, _, stderr) = run_cli(&["run", "--config", path], &[], dir.path()).await;
    assert_eq!(status.code(), Some(2));
    let line = one_line(&stderr);
    assert!(
        line.contains("line 2") && line.contains("observer"),
        "{line}"
    );

    // Environment variables are validated like the file.
    std::fs::write(&file, "groups = [{ spot = \"a\", on_demand = \"b\" }]\n").unwrap();
    let (status, _, stderr) = run_cli(
        &["run", "--config", path],
        &[("SPOTGUARD_METRICS_ADDR", "everywhere")],
        dir.path(),
    )
    .await;
    assert_eq!(status.code(), Some(2));
    assert!(
        one_line(&stderr).contains("daemon.metrics_addr = \"everywhere\""),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoints_and_missing_groups_change_nothing() {
    let world = World::start(&standard_groups()).await;
    let spot = world.instances(SPOT).await.into_iter().next().unwrap();
    let imds = ImdsServer::start(&spot).await;
    world.config("");
    let config = world.dir.path().join("spotguard.toml");
    let config = config.to_str().unwrap();
    let dir = world.dir.path();
    let closed = format!("http://127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let base = [
        "run",
        "--config",
        config,
        "--metrics-addr",
        metrics.as_str(),
    ];

    // Auto Scaling cannot be reached.
    let mut args = base.to_vec();
    args.extend(["--aws-endpoint", closed.as_str(), "--aws-max-attempts", "1"]);
    let (status, _, stderr) = run_cli(&args, &[], dir).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    let line = one_line(&stderr);
    assert!(
        line.starts_with(&format!("spotguard: cannot reach Auto Scaling at {closed}")),
        "{line}"
    );

    // The API server cannot be reached.
    let kubeconfig = dir.join("closed-kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {closed}\n\
             contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n\
             users:\n- name: u\n  user: {{}}\n"
        ),
    )
    .unwrap();
    let mut args = base.to_vec();
    args.extend(["--kubeconfig", kubeconfig.to_str().unwrap()]);
    let (status, _, stderr) = run_cli(&args, &[], dir).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    let line = one_line(&stderr);
    assert!(
        line.starts_with(&format!(
            "spotguard: cannot reach the Kubernetes API server at {closed}"
        )),
        "{line}"
    );

    // A kubeconfig that does not exist.
    let mut args = base.to_vec();
    args.extend(["--kubeconfig", "/nonexistent/kubeconfig"]);
    let (status, _, stderr) = run_cli(&args, &[], dir).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        one_line(&stderr).contains(
            "cannot load the Kubernetes client configuration from /nonexistent/kubeconfig"
        ),
        "{stderr}"
    );

    // A group that does not exist.
    let mut args = base.to_vec();
    args.extend(["--group", "web-spot=web-ondemand"]);
    let (status, _, stderr) = run_cli(&args, &[], dir).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    let line = one_line(&stderr);
    assert!(
        line.contains("auto scaling groups not found") && line.contains("web-ondemand"),
        "{line}"
    );

    // IMDS cannot be reached (agent).
    let mut args = base.to_vec();
    args.extend(["--role", "agent", "--imds-endpoint", closed.as_str()]);
    let (status, _, stderr) = run_cli(&args, &[], dir).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    let line = one_line(&stderr);
    assert!(
        line.contains("cannot read this node's instance id from IMDS") && line.contains(&closed),
        "{line}"
    );

    // The metrics address is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let args = [
        "run",
        "--config",
        config,
        "--metrics-addr",
        taken_addr.as_str(),
    ];
    let (status, _, stderr) = run_cli(&args, &[], dir).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        one_line(&stderr).contains(&format!("cannot listen on {taken_addr}")),
        "{stderr}"
    );

    // Nothing was changed anywhere; the working configuration still starts.
    for action in ["SetDesiredCapacity", "TerminateInstanceInAutoScalingGroup"] {
        assert_eq!(world.proxy.received(action), 0);
    }
    assert_eq!(world.writes_to_kubernetes(), vec![]);
    assert!(world.configmap(LEDGER).await.is_none());
    let mut agent = world.spawn("agent", "agent", Some(&imds), &[]).await;
    agent.wait_ready(Duration::from_secs(60)).await;
    agent.terminate();
    assert!(agent.wait_exit(Duration::from_secs(30)).await.success());
}
