//! The hand-over of a notice through the agent's own Node, on the real API server: the agent
//! taints and records in one patch, idempotently, never weakening an interruption; the
//! controller's cache wakes on the change and reads the notice of the node's instance; records
//! that are malformed or name another instance are refused by name and break no snapshot.

mod common;

use std::time::{Duration, SystemTime};

use common::WAIT;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;
use spotguard_core::model::{Taint, TaintEffect};
use spotguard_core::notice::{Notice, NoticeKind};
use spotguard_k8s::node_writes::WritePolicy;
use spotguard_k8s::notice::{
    clear_notice, mark_node, pending_notices, NoticeRecord, NOTICE_ANNOTATION,
};
use spotguard_k8s::KubeCluster;
use spotguard_testkit_k8s::{eventually, ApiFaultProxy};

fn taint() -> Taint {
    Taint {
        key: "spotguard.dev/at-risk".into(),
        value: "true".into(),
        effect: TaintEffect::NoSchedule,
    }
}

fn instance_of(node: &str) -> String {
    format!("i-{node}")
}

fn rebalance(node: &str) -> Notice {
    Notice {
        instance_id: instance_of(node),
        kind: NoticeKind::Rebalance,
        notice_time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    }
}

fn interruption(node: &str) -> Notice {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_060);
    Notice {
        instance_id: instance_of(node),
        kind: NoticeKind::Interruption {
            action: "terminate".into(),
            deadline: at + Duration::from_secs(120),
        },
        notice_time: at,
    }
}

async fn get(node: &str) -> Node {
    Api::<Node>::all(common::control_plane().admin_client())
        .get(node)
        .await
        .expect("reading the node")
}

/// The notices the controller's cache holds for `node`, once its changes have arrived.
async fn pending_for(cluster: &KubeCluster, node: &str) -> Vec<Result<Notice, String>> {
    pending_notices(&cluster.cache().nodes_with_annotation(NOTICE_ANNOTATION))
        .into_iter()
        .filter(|p| p.node == node)
        .map(|p| p.notice.map_err(|e| e.to_string()))
        .collect()
}

#[tokio::test]
async fn an_agent_marks_its_node_in_one_write_and_the_controller_wakes_to_read_it() {
    let cp = common::control_plane();
    let node = common::create_node("marked", None).await;
    // Another owner's taint and annotation, which the mark keeps.
    let other = json!({
        "metadata": {"annotations": {"example.com/owner": "team-a"}},
        "spec": {"taints": [{"key": "example.com/dedicated", "value": "batch", "effect": "NoSchedule"}]},
    });
    Api::<Node>::all(cp.admin_client())
        .patch(&node, &PatchParams::default(), &Patch::Merge(&other))
        .await
        .unwrap();
    let controller = common::real_cluster().await;
    let mut changes = controller.cache().node_changes();
    eventually(WAIT, "the controller's cache holds the node", || async {
        controller
            .cache()
            .snapshot()
            .ok()?
            .node(&node)
            .map(|n| n.annotations.contains_key("example.com/owner"))?
            .then_some(())
    })
    .await;
    assert!(pending_for(&controller, &node).await.is_empty());
    changes.borrow_and_update();

    let proxy = ApiFaultProxy::start(cp).await;
    let agent = Api::<Node>::all(kube::Client::try_from(proxy.admin_config()).unwrap());
    let mark = |notice: Notice| {
        let (agent, node) = (agent.clone(), node.clone());
        async move {
            mark_node(&agent, &node, &taint(), &notice, WritePolicy::default())
                .await
                .unwrap()
        }
    };
    assert!(mark(rebalance(&node)).await);
    let writes: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|(method, _, _)| method != "GET")
        .collect();
    assert_eq!(writes.len(), 1, "one patch: {writes:?}");

    // The controller is woken by its node watch and reads the notice.
    tokio::time::timeout(WAIT, changes.changed())
        .await
        .expect("woken in time")
        .unwrap();
    let pending = eventually(WAIT, "the notice in the controller's cache", || async {
        let pending = pending_for(&controller, &node).await;
        (!pending.is_empty()).then_some(pending)
    })
    .await;
    assert_eq!(pending, vec![Ok(rebalance(&node))]);
    let marked = get(&node).await;
    let taints: Vec<String> = marked
        .spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.key)
        .collect();
    assert_eq!(taints, ["example.com/dedicated", "spotguard.dev/at-risk"]);
    let annotations = marked.metadata.annotations.unwrap_or_default();
    assert_eq!(annotations["example.com/owner"], "team-a");

    // Again: nothing sent. An interruption replaces the recommendation; a recommendation
    // after it changes nothing.
    let before = proxy.requests().len();
    assert!(!mark(rebalance(&node)).await);
    assert!(proxy.requests()[before..]
        .iter()
        .all(|(m, _, _)| m == "GET"));
    assert!(mark(interruption(&node)).await);
    assert!(!mark(rebalance(&node)).await);
    eventually(
        WAIT,
        "the interruption in the controller's cache",
        || async {
            (pending_for(&controller, &node).await == vec![Ok(interruption(&node))]).then_some(())
        },
    )
    .await;

    // The controller clears the record it handled, not a newer one; the taint is phase 1's
    // to lift.
    let admin = Api::<Node>::all(cp.admin_client());
    let handled = NoticeRecord::from(&rebalance(&node)).to_value();
    let current = NoticeRecord::from(&interruption(&node)).to_value();
    let clear = |node: String, record: String| {
        let admin = admin.clone();
        async move {
            clear_notice(&admin, &node, &record, WritePolicy::default())
                .await
                .unwrap()
        }
    };
    assert!(
        !clear(node.clone(), handled).await,
        "a newer record is kept"
    );
    assert!(clear(node.clone(), current.clone()).await);
    assert!(!clear(node.clone(), current.clone()).await);
    assert!(!clear("no-such-node".into(), current).await);
    let cleared = get(&node).await;
    assert!(!cleared
        .metadata
        .annotations
        .unwrap_or_default()
        .contains_key(NOTICE_ANNOTATION));
    eventually(
        WAIT,
        "the record gone from the controller's cache",
        || async {
            pending_for(&controller, &node)
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn records_that_are_malformed_or_name_another_instance_are_refused_by_name() {
    let cp = common::control_plane();
    let garbled = common::create_node("garbled", None).await;
    let liar = common::create_node("liar", None).await;
    let admin = Api::<Node>::all(cp.admin_client());
    let annotate = |value: String| json!({"metadata": {"annotations": {NOTICE_ANNOTATION: value}}});
    admin
        .patch(
            &garbled,
            &PatchParams::default(),
            &Patch::Merge(&annotate("{not json".into())),
        )
        .await
        .unwrap();
    // The agent of `liar` records a notice about the instance of `garbled`.
    let mut foreign = rebalance(&garbled);
    foreign.instance_id = instance_of(&garbled);
    let value = NoticeRecord::from(&foreign).to_value();
    admin
        .patch(
            &liar,
            &PatchParams::default(),
            &Patch::Merge(&annotate(value)),
        )
        .await
        .unwrap();

    let controller = common::real_cluster().await;
    let (garbled_pending, liar_pending) = eventually(WAIT, "both records cached", || async {
        let g = pending_for(&controller, &garbled).await;
        let l = pending_for(&controller, &liar).await;
        (!g.is_empty() && !l.is_empty()).then_some((g, l))
    })
    .await;
    let [Err(g)] = &garbled_pending[..] else {
        panic!("{garbled_pending:?}")
    };
    assert!(
        g.contains(&format!("node/{garbled}")) && g.contains(NOTICE_ANNOTATION),
        "{g}"
    );
    let [Err(l)] = &liar_pending[..] else {
        panic!("{liar_pending:?}")
    };
    assert!(
        l.contains(&format!("node/{liar}"))
            && l.contains(&format!(
                "names instance {} but the node is instance {}",
                instance_of(&garbled),
                instance_of(&liar)
            )),
        "{l}"
    );
    // Snapshots go on: a bad record is the agent's problem, not the cluster view's.
    assert!(controller.cache().snapshot().is_ok());
}
