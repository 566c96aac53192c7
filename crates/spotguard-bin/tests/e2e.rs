//! End to end: the real `spotguard` binary, as an agent process (no AWS credentials, the token
//! of its node's agent pod) and a controller process,
//! against moto (through the fault proxy), a local IMDS and the real Kubernetes control plane
//! (kwok nodes registered for moto's instances), each process as its own ServiceAccount with
//! the chart's RBAC rules alone.
//!
//! A rebalance notice while spot launches fail leads to a spot scale-up, a fallback to
//! on-demand recorded in the ledger, and a taint and drain of the at-risk node; once spot is
//! healthy and stable the controller drains the on-demand node and decrements the on-demand
//! group. The end state is read back with the real `aws` CLI against moto and the real
//! `kubectl` against the API server, the metrics and Events are checked, every verb the chart
//! grants each role is shown to be used, and both processes shut down gracefully on SIGTERM.
#![cfg(feature = "daemon")]

mod harness;

use std::time::Duration;

use harness::{
    fallback_given_back, node_name, reach_fallback, standard_groups, World, LEADER_LEASE, LEDGER,
    ON_DEMAND, SPOT,
};
use serde_json::Value;
use spotguard_core::ledger::{EntryKind, EntryState, Ledger};
use spotguard_testkit_aws::ImdsServer;

fn ledger_from(configmap: &Value) -> Ledger {
    let text = configmap["data"]["ledger.json"]
        .as_str()
        .expect("the ledger ConfigMap holds ledger.json");
    serde_json::from_str(text).expect("ledger JSON")
}

fn has_taint(node: &k8s_openapi::api::core::v1::Node, key: &str) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == key))
}

fn instances_of(group: &Value) -> Vec<String> {
    group["Instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["InstanceId"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_falls_back_to_on_demand_and_the_controller_gives_it_back() {
    let world = World::start(&standard_groups()).await;
    let at_risk = world.instances(SPOT).await.into_iter().next().unwrap();
    let baseline = world.instances(ON_DEMAND).await.into_iter().next().unwrap();
    let at_risk_node = node_name(&at_risk);
    world.add_pods("web", &at_risk_node, 3).await;
    let imds = ImdsServer::start(&at_risk).await;
    world.config("");
    let mut agent = world
        .spawn(
            "agent",
            "agent",
            Some(&imds),
            &["--node-name", &at_risk_node],
        )
        .await;
    agent.wait_ready(Duration::from_secs(60)).await;
    // The agent holds no cloud credentials: nothing AWS in its environment.
    let environ = std::fs::read(format!("/proc/{}/environ", agent.pid())).unwrap();
    let aws: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .filter(|v| v.starts_with("AWS_"))
        .collect();
    assert_eq!(aws, Vec::<String>::new(), "the agent's environment");
    // The controller runs all along: its monitor ticks while phase 1 waits in the agent.
    let mut controller = world.spawn("controller", "controller", None, &[]).await;
    controller.wait_ready(Duration::from_secs(60)).await;
    assert_eq!(
        world.proxy.received("SetDesiredCapacity"),
        0,
        "nothing scales before a notice"
    );

    // Phase 1: spot scale-up, failed launch, on-demand fallback, taint and drain.
    let fallback = reach_fallback(&world, &imds, &at_risk).await;
    // Its instance terminated, the node is gone by now: its last state was tainted.
    let node = world
        .node_last_seen(&at_risk_node)
        .await
        .expect("at-risk node");
    assert!(
        has_taint(&node, "spotguard.dev/draining"),
        "at-risk node tainted: {node:?}"
    );
    let pods = world
        .kubectl_json(&[
            "get",
            "pods",
            "-A",
            "--field-selector",
            &format!("spec.nodeName={at_risk_node}"),
        ])
        .await;
    // Drained: nothing is left but the agent's own DaemonSet pod, which a drain leaves.
    let left: Vec<&Value> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["ownerReferences"][0]["kind"] != "DaemonSet")
        .collect();
    assert!(left.is_empty(), "at-risk node drained: {left:?}");
    let ledger = ledger_from(
        &world
            .kubectl_json(&["get", "configmap", LEDGER, "-n", &world.namespace])
            .await,
    );
    let entry = ledger.get(&fallback.entry).expect("fallback entry");
    assert_eq!(entry.state, EntryState::Active, "{entry:?}");
    assert_eq!(entry.group, ON_DEMAND);
    assert!(
        ledger
            .entries
            .iter()
            .any(|e| e.kind == EntryKind::Prescale && e.state == EntryState::Released),
        "the spot pre-scale was paid back: {ledger:?}"
    );

    // Spot still launches nothing: the on-demand capacity stays.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(world.group(ON_DEMAND).await.desired, 2);
    assert!(world.group(ON_DEMAND).await.holds(&fallback.on_demand));

    // Spot capacity is back: the controller drains and removes the on-demand node.
    world.proxy.clear();
    fallback_given_back(&world, &fallback, "the on-demand fallback given back").await;

    // The state, as the real CLIs see it.
    let od = world.aws_group(ON_DEMAND).await;
    assert_eq!(od["DesiredCapacity"], 1, "{od}");
    assert_eq!(instances_of(&od), vec![baseline.clone()], "{od}");
    let spot = world.aws_group(SPOT).await;
    assert_eq!(spot["DesiredCapacity"], 3, "{spot}");
    assert!(!instances_of(&spot).contains(&at_risk), "{spot}");
    let od_node = world
        .node_last_seen(&node_name(&fallback.on_demand))
        .await
        .expect("the fallback node");
    let unschedulable = od_node.spec.as_ref().and_then(|s| s.unschedulable);
    assert_eq!(unschedulable, Some(true), "{od_node:?}");
    assert!(has_taint(&od_node, "spotguard.dev/draining"), "{od_node:?}");
    let ledger = ledger_from(
        &world
            .kubectl_json(&["get", "configmap", LEDGER, "-n", &world.namespace])
            .await,
    );
    let entry = ledger.get(&fallback.entry).unwrap();
    assert!(
        entry
            .note
            .contains(&format!("terminated {} with decrement", fallback.on_demand)),
        "{entry:?}"
    );
    assert_eq!(
        world.proxy.forwarded("TerminateInstanceInAutoScalingGroup"),
        2,
        "one termination pays the pre-scale back, one gives the fallback back"
    );

    // Metrics of both roles: the agent noticed and handed over; the controller did the rest.
    let agent_metrics = agent.metrics().await;
    for needle in [
        "spotguard_notices_handed_over_total{kind=\"rebalance\"} 1",
        "spotguard_api_calls_total{service=\"kubernetes\",operation=\"mark node\"} 1",
        "spotguard_api_calls_total{service=\"imds\",operation=\"poll\"}",
    ] {
        assert!(
            agent_metrics.contains(needle),
            "agent: {needle} missing from\n{agent_metrics}"
        );
    }
    assert!(
        !agent_metrics.contains("service=\"autoscaling\""),
        "the agent makes no Auto Scaling call:\n{agent_metrics}"
    );
    let controller_metrics = controller.metrics().await;
    for needle in [
        "spotguard_notices_total{kind=\"rebalance\"} 1",
        "spotguard_scale_ups_total{group=\"web-spot\",outcome=\"raised\"} 1",
        "spotguard_scale_ups_total{group=\"web-spot\",outcome=\"failed\"} 1",
        "spotguard_scale_ups_total{group=\"web-od\",outcome=\"raised\"} 1",
        "spotguard_fallbacks_total{group=\"web-od\"} 1",
        "spotguard_prescale_paybacks_total{group=\"web-spot\"} 1",
        // The at-risk node, then the fallback node.
        "spotguard_drain_duration_seconds_count{outcome=\"complete\"} 2",
        "spotguard_api_calls_total{service=\"autoscaling\",operation=\"SetDesiredCapacity\"} 2",
        "spotguard_api_calls_total{service=\"kubernetes\",operation=\"clear notice\"} 1",
        "spotguard_scale_downs_total{group=\"web-od\"} 1",
        "spotguard_leader 1",
        "spotguard_verdicts_total{check=\"safety\",verdict=\"go\"}",
        "spotguard_wait_reasons_total{check=\"health\",reason=\"CapacityMismatch\"}",
        "spotguard_ledger_entries{state=\"released\"} 2",
        "spotguard_api_calls_total{service=\"kubernetes\",operation=\"drain node\"}",
    ] {
        assert!(
            controller_metrics.contains(needle),
            "controller: {needle} missing from\n{controller_metrics}"
        );
    }

    // Kubernetes Events on the nodes concerned, from the controller (an agent writes nothing
    // but its node: the taint it put there with the notice record has no Event of its own).
    let od_node_name = node_name(&fallback.on_demand);
    for (node, reason) in [
        (at_risk_node.as_str(), "SpotGuardNotice"),
        (at_risk_node.as_str(), "SpotGuardDrained"),
        (od_node_name.as_str(), "SpotGuardTainted"),
        (od_node_name.as_str(), "SpotGuardScaleDown"),
    ] {
        let events = world.node_events(node).await;
        assert!(
            events.iter().any(|(r, _)| r == reason),
            "no {reason} event on {node}: {events:?}"
        );
    }

    // Least privilege: each process ran as its role's ServiceAccount with the chart's rules
    // alone (the API server refused anything else, and the flows above passed), and every
    // verb the chart grants is used by one of them (but the Event series patch, which only a
    // repeated Event needs).
    let manifests =
        harness::chart::render(&serde_json::json!({}), &world.release, &world.namespace);
    let mut granted = std::collections::BTreeSet::new();
    let mut used = std::collections::BTreeSet::new();
    for access in [&world.agent, &world.controller] {
        let rbac = harness::chart::grants_of(&manifests, &access.account);
        for (method, path, status) in access.api.requests() {
            assert_ne!(
                status, 403,
                "{} was refused {method} {path}",
                access.account
            );
            if let Some(access) = harness::chart::access(&method, &path) {
                assert!(
                    harness::chart::permits(&rbac, &access),
                    "{method} {path} needs {access:?}, which the chart does not grant"
                );
                used.insert((access.group, access.resource, access.verb));
            }
        }
        granted.extend(rbac.into_iter().map(|g| (g.group, g.resource, g.verb)));
    }
    let unused: Vec<_> = granted
        .into_iter()
        .filter(|g| !used.contains(g))
        .filter(|(group, _, verb)| !(group == "events.k8s.io" && verb == "patch"))
        .collect();
    assert_eq!(unused, vec![], "granted but never used");
    assert!(
        !world
            .agent
            .api
            .requests()
            .iter()
            .any(|(_, path, _)| path.contains("poddisruptionbudgets")),
        "agents never read PDBs"
    );

    // Graceful shutdown: exit 0, leader lease released.
    controller.terminate();
    agent.terminate();
    let status = controller.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "controller: {status}\n{}",
        controller.output()
    );
    let status = agent.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "agent: {status}\n{}", agent.output());
    let lease = world.lease(LEADER_LEASE).await.expect("leader lease");
    let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
    assert!(
        holder.unwrap_or_default().is_empty(),
        "leader lease released: {lease:?}"
    );
    assert!(
        controller.output().contains("ledger persisted"),
        "{}",
        controller.output()
    );
}
