//! The Helm chart (`deploy/helm/spotguard`), rendered by the real `helm template`: every
//! document is the Kubernetes object its `kind` says (parsed as that k8s-openapi type, with no field
//! lost on the way back), the RBAC rules are exactly the verbs Spot Guard uses (the agents'
//! without the PodDisruptionBudgets only the controller reads), the
//! configuration it mounts passes `spotguard check-config`, and the values do what they say.

mod harness;

use std::collections::{BTreeMap, BTreeSet};

use harness::chart::{by_kind, grants, grants_of, render, Grant, Manifest};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

/// Drops nulls, which the typed objects never serialize.
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// Parses the object as `T` and checks that serializing it back loses nothing: a misspelled
/// or misplaced field would be dropped by the typed parse.
fn typed<T: DeserializeOwned + Serialize>(m: &Manifest) -> T {
    let object: T = serde_json::from_value(m.object.clone()).unwrap_or_else(|e| {
        panic!(
            "{} ({}) is not a valid {}: {e}",
            m.template,
            m.name(),
            m.kind()
        )
    });
    let back = serde_json::to_value(&object).unwrap();
    assert_eq!(
        without_nulls(&back),
        without_nulls(&m.object),
        "{} ({}): fields lost when read as {}",
        m.template,
        m.name(),
        m.kind()
    );
    object
}

fn check_types(manifests: &[Manifest]) {
    for m in manifests {
        assert!(
            m.object["apiVersion"].is_string() && !m.name().is_empty(),
            "{}: {}",
            m.template,
            m.object
        );
        match (m.object["apiVersion"].as_str().unwrap(), m.kind()) {
            ("v1", "ConfigMap") => drop(typed::<ConfigMap>(m)),
            ("v1", "ServiceAccount") => drop(typed::<ServiceAccount>(m)),
            ("v1", "Service") => drop(typed::<Service>(m)),
            ("apps/v1", "DaemonSet") => drop(typed::<DaemonSet>(m)),
            ("apps/v1", "Deployment") => drop(typed::<Deployment>(m)),
            ("policy/v1", "PodDisruptionBudget") => drop(typed::<PodDisruptionBudget>(m)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => drop(typed::<ClusterRole>(m)),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                drop(typed::<ClusterRoleBinding>(m))
            }
            ("rbac.authorization.k8s.io/v1", "Role") => drop(typed::<Role>(m)),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => drop(typed::<RoleBinding>(m)),
            ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy") => {
                drop(typed::<ValidatingAdmissionPolicy>(m))
            }
            ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding") => {
                drop(typed::<ValidatingAdmissionPolicyBinding>(m))
            }
            ("monitoring.coreos.com/v1", "ServiceMonitor" | "PodMonitor") => {
                // A CRD: no k8s-openapi type; check the fields prometheus-operator requires.
                assert!(m.object["spec"]["selector"]["matchLabels"].is_object());
                let endpoints = if m.kind() == "ServiceMonitor" {
                    &m.object["spec"]["endpoints"]
                } else {
                    &m.object["spec"]["podMetricsEndpoints"]
                };
                assert_eq!(endpoints[0]["port"], "metrics", "{}", m.object);
                assert_eq!(endpoints[0]["path"], "/metrics");
            }
            (api, kind) => panic!("{}: unexpected {api} {kind}", m.template),
        }
    }
}

fn kinds(manifests: &[Manifest]) -> Vec<String> {
    let mut k: Vec<String> = manifests.iter().map(|m| m.kind().to_string()).collect();
    k.sort();
    k
}

fn one<'a>(manifests: &'a [Manifest], kind: &str) -> &'a Manifest {
    let found: Vec<&Manifest> = manifests.iter().filter(|m| m.kind() == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}: {:?}", kinds(manifests));
    found[0]
}

fn grant(
    group: &str,
    resource: &str,
    verb: &str,
    namespace: Option<&str>,
    names: &[&str],
) -> Grant {
    Grant {
        group: group.into(),
        resource: resource.into(),
        verb: verb.into(),
        namespace: namespace.map(str::to_string),
        names: names.iter().map(|n| n.to_string()).collect(),
    }
}

/// What an agent may do: read its node, and mark it (taint and notice record) in a JSON patch.
/// Which node, and which fields, the chart's ValidatingAdmissionPolicy decides.
fn agent_rbac() -> BTreeSet<Grant> {
    BTreeSet::from([
        grant("", "nodes", "get", None, &[]),
        grant("", "nodes", "patch", None, &[]),
    ])
}

/// Every verb the controller uses, and where.
fn expected_rbac(namespace: &str) -> BTreeSet<Grant> {
    BTreeSet::from([
        // Watch caches (list + watch), node reads before writes and for Event UIDs (get),
        // taints, cordons, the protect annotation, handled notice records (JSON patches).
        grant("", "nodes", "get", None, &[]),
        grant("", "nodes", "list", None, &[]),
        grant("", "nodes", "watch", None, &[]),
        grant("", "nodes", "patch", None, &[]),
        // Watch cache; the drain lists a node's pods.
        grant("", "pods", "list", None, &[]),
        grant("", "pods", "watch", None, &[]),
        // Drain evictions.
        grant("", "pods/eviction", "create", None, &[]),
        // Watch cache of PDBs.
        grant("policy", "poddisruptionbudgets", "list", None, &[]),
        grant("policy", "poddisruptionbudgets", "watch", None, &[]),
        // The ledger and status ConfigMaps: created once, then read and patched.
        grant("", "configmaps", "create", Some(namespace), &[]),
        grant(
            "",
            "configmaps",
            "get",
            Some(namespace),
            &["spotguard-ledger", "spotguard-status"],
        ),
        grant(
            "",
            "configmaps",
            "patch",
            Some(namespace),
            &["spotguard-ledger", "spotguard-status"],
        ),
        // Leader election and scale locks.
        grant("coordination.k8s.io", "leases", "get", Some(namespace), &[]),
        grant(
            "coordination.k8s.io",
            "leases",
            "create",
            Some(namespace),
            &[],
        ),
        grant(
            "coordination.k8s.io",
            "leases",
            "update",
            Some(namespace),
            &[],
        ),
        // Node Events (the recorder patches a repeated event into a series).
        grant("events.k8s.io", "events", "create", Some("default"), &[]),
        grant("events.k8s.io", "events", "patch", Some("default"), &[]),
    ])
}

#[test]
fn default_values_render_valid_objects_with_least_privilege() {
    let manifests = render(&json!({}), "spotguard", "spotguard-system");
    check_types(&manifests);
    assert_eq!(
        kinds(&manifests),
        [
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Deployment",
            "PodDisruptionBudget",
            "Role",
            "Role",
            "RoleBinding",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ]
    );
    let expected = expected_rbac("spotguard-system");
    assert_eq!(grants(&manifests), expected);
    assert_eq!(grants_of(&manifests, "spotguard-controller"), expected);
    assert_eq!(grants_of(&manifests, "spotguard-agent"), agent_rbac());
    // The agents' node writes are checked by the API server against their pod's node.
    let policy = one(&manifests, "ValidatingAdmissionPolicy");
    assert_eq!(
        policy.object["spec"]["matchConditions"][0]["expression"],
        "request.userInfo.username == \"system:serviceaccount:spotguard-system:spotguard-agent\""
    );
    let binding = one(&manifests, "ValidatingAdmissionPolicyBinding");
    assert_eq!(binding.object["spec"]["policyName"], policy.name());
    assert_eq!(binding.object["spec"]["validationActions"][0], "Deny");
    // Every binding binds the chart's ServiceAccounts to a role of the chart.
    let accounts: Vec<&str> = manifests
        .iter()
        .filter(|m| m.kind() == "ServiceAccount")
        .map(Manifest::name)
        .collect();
    assert_eq!(accounts, ["spotguard-agent", "spotguard-controller"]);
    let rbac_bindings = manifests
        .iter()
        .filter(|m| m.kind() == "RoleBinding" || m.kind() == "ClusterRoleBinding");
    for binding in rbac_bindings {
        for subject in binding.object["subjects"].as_array().unwrap() {
            assert!(accounts.iter().any(|a| subject["name"] == *a), "{subject}");
            assert_eq!(subject["namespace"], "spotguard-system");
        }
        let role = binding.object["roleRef"]["name"].as_str().unwrap();
        let kind = binding.object["roleRef"]["kind"].as_str().unwrap();
        assert!(
            manifests.iter().any(|m| m.kind() == kind
                && m.name() == role
                && m.object["metadata"]["namespace"] == binding.object["metadata"]["namespace"]),
            "{} binds a missing {kind} {role}",
            binding.name()
        );
    }

    // The agent: one per spot node, on the host network (IMDS hop limit 1), non-root.
    let agent: DaemonSet = typed(one(&manifests, "DaemonSet"));
    let pod = agent.spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(pod.service_account_name.as_deref(), Some("spotguard-agent"));
    assert_eq!(
        pod.node_selector.as_ref().unwrap()["eks.amazonaws.com/capacityType"],
        "SPOT"
    );
    let security = pod.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    let container = &pod.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("ghcr.io/spotguard/spotguard:0.1.0")
    );
    assert_eq!(
        container.args.as_deref().unwrap(),
        ["run", "--config", "/etc/spotguard/config.toml"]
    );
    let env: Vec<(&str, Option<&str>)> = container
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.name.as_str(), e.value.as_deref()))
        .collect();
    assert!(env.contains(&("SPOTGUARD_ROLE", Some("agent"))), "{env:?}");
    assert!(
        env.contains(&("SPOTGUARD_METRICS_ADDR", Some("0.0.0.0:9808"))),
        "{env:?}"
    );
    assert!(env.iter().any(|(n, _)| *n == "SPOTGUARD_NODE_NAME"));
    let probe = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(
        probe(&container.liveness_probe).as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        probe(&container.readiness_probe).as_deref(),
        Some("/readyz")
    );
    let c_security = container.security_context.as_ref().unwrap();
    assert_eq!(c_security.read_only_root_filesystem, Some(true));
    assert_eq!(c_security.allow_privilege_escalation, Some(false));
    let resources = container.resources.as_ref().unwrap();
    assert_eq!(resources.requests.as_ref().unwrap()["memory"].0, "32Mi");
    assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "128Mi");

    // The controller: 2 replicas behind a PDB that keeps one.
    let controller: Deployment = typed(one(&manifests, "Deployment"));
    let spec = &controller.spec;
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.as_ref().unwrap();
    let env = pod.containers[0].env.as_ref().unwrap();
    assert!(env
        .iter()
        .any(|e| e.name == "SPOTGUARD_ROLE" && e.value.as_deref() == Some("controller")));
    assert!(pod.affinity.as_ref().unwrap().pod_anti_affinity.is_some());
    let pdb: PodDisruptionBudget = typed(one(&manifests, "PodDisruptionBudget"));
    let pdb_spec = pdb.spec.unwrap();
    assert_eq!(
        pdb_spec.min_available,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    for (k, v) in pdb_spec.selector.unwrap().match_labels.unwrap() {
        assert_eq!(
            pod_labels.get(&k),
            Some(&v),
            "the PDB selects the controller pods"
        );
    }
    for (k, v) in spec.selector.match_labels.clone().unwrap() {
        assert_eq!(pod_labels.get(&k), Some(&v));
    }
}

#[tokio::test]
async fn the_mounted_configuration_passes_check_config() {
    let manifests = render(
        &json!({"groups": [{"spot": "a-spot", "onDemand": "a-od"}, {"spot": "b-spot", "onDemand": "b-od"}]}),
        "sg",
        "ops",
    );
    let cm: ConfigMap = typed(one(&manifests, "ConfigMap"));
    let text = cm.data.unwrap()["config.toml"].clone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, &text).unwrap();
    for role in ["agent", "controller"] {
        let (status, stdout, stderr) = harness::run_cli(
            &["check-config", file.to_str().unwrap()],
            &[
                ("SPOTGUARD_ROLE", role),
                ("SPOTGUARD_METRICS_ADDR", "0.0.0.0:9808"),
                (
                    "SPOTGUARD_NOTICE_STATE_FILE",
                    "/var/lib/spotguard/notices.json",
                ),
            ],
            dir.path(),
        )
        .await;
        assert!(status.success(), "{role}: {stderr}\n{text}");
        assert!(stdout.contains(&format!("role = \"{role}\"")), "{stdout}");
        assert!(stdout.contains("namespace = \"ops\""), "{stdout}");
        assert!(stdout.contains("spot = \"b-spot\""), "{stdout}");
        assert!(!stderr.contains("warning"), "{stderr}");
    }
}

/// The taint, the protect annotation, the drain's grace period, the ledger's retention and
/// staleness reach what the daemon runs with (`spotguard check-config` of the mounted file);
/// each role's extra environment, pod annotations and affinity reach its pods; the agents'
/// node policy allows the configured taint.
#[tokio::test]
async fn engine_settings_and_pod_settings_reach_the_daemon() {
    let manifests = render(
        &json!({
            "taint": {"key": "example.com/at-risk", "value": "soon", "effect": "PreferNoSchedule"},
            "protectAnnotation": "example.com/keep",
            "drain": {"gracePeriod": "20s"},
            "timings": {"releasedRetention": "2h", "staleAfter": "45m"},
            "agent": {
                "extraEnv": [{"name": "SPOTGUARD_LOG_LEVEL", "value": "debug"}],
                "podAnnotations": {"example.com/team": "platform"},
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
            },
            "controller": {
                "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
                "podAnnotations": {"example.com/team": "platform"},
                "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "topology.kubernetes.io/zone", "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "controller"}}}]}},
            },
        }),
        "sg",
        "ops",
    );
    check_types(&manifests);
    let cm: ConfigMap = typed(one(&manifests, "ConfigMap"));
    let text = cm.data.unwrap()["config.toml"].clone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, &text).unwrap();
    let (status, stdout, stderr) =
        harness::run_cli(&["check-config", file.to_str().unwrap()], &[], dir.path()).await;
    assert!(status.success(), "{stderr}\n{text}");
    for needle in [
        "key = \"example.com/at-risk\"",
        "value = \"soon\"",
        "effect = \"PreferNoSchedule\"",
        "protect_annotation = \"example.com/keep\"",
        "grace_period = \"20s\"",
        "released_retention = \"2h\"",
        "stale_after = \"45m\"",
    ] {
        assert!(stdout.contains(needle), "{needle} missing from\n{stdout}");
    }
    let env_of = |kind: &str| -> Vec<(String, Option<String>)> {
        let pod = &one(&manifests, kind).object["spec"]["template"]["spec"];
        pod["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    e["value"].as_str().map(str::to_string),
                )
            })
            .collect()
    };
    assert!(env_of("DaemonSet").contains(&("SPOTGUARD_LOG_LEVEL".into(), Some("debug".into()))));
    assert!(
        env_of("Deployment").contains(&("HTTPS_PROXY".into(), Some("http://proxy:3128".into())))
    );
    for kind in ["DaemonSet", "Deployment"] {
        let template = &one(&manifests, kind).object["spec"]["template"];
        assert_eq!(
            template["metadata"]["annotations"]["example.com/team"], "platform",
            "{kind}"
        );
    }
    let affinity =
        |kind: &str| one(&manifests, kind).object["spec"]["template"]["spec"]["affinity"].clone();
    assert!(affinity("DaemonSet")["nodeAffinity"].is_object());
    // The controller's own affinity replaces the default anti-affinity.
    let controller = affinity("Deployment")["podAntiAffinity"].clone();
    assert_eq!(
        controller["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"],
        "topology.kubernetes.io/zone"
    );
    assert!(controller["preferredDuringSchedulingIgnoredDuringExecution"].is_null());
    let policy = one(&manifests, "ValidatingAdmissionPolicy")
        .object
        .to_string();
    assert!(policy.contains("example.com/at-risk"), "{policy}");
    assert!(!policy.contains("spotguard.dev/draining"), "{policy}");
}

#[test]
fn values_switch_features_on_and_off() {
    let manifests = render(
        &json!({
            "serviceMonitor": {"enabled": true, "labels": {"release": "prom"}},
            "serviceAccount": {
                "agentName": "sg-robot",
                "controllerName": "sg-pilot",
                "controllerAnnotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/spotguard"}
            },
            "aws": {"region": "eu-west-1"},
            "dryRun": true,
            "events": false,
            "image": {"tag": "1.2.3"},
            "controller": {"replicas": 3, "podDisruptionBudget": {"enabled": false}},
            "agent": {"resources": {"requests": {"cpu": "20m", "memory": "96Mi"}}},
        }),
        "sg",
        "ops",
    );
    check_types(&manifests);
    let by = by_kind(&manifests);
    assert!(!by.contains_key("PodDisruptionBudget"));
    assert_eq!(by["ServiceMonitor"].len(), 1);
    assert_eq!(by["PodMonitor"].len(), 1);
    assert_eq!(
        by["ServiceMonitor"][0].object["metadata"]["labels"]["release"],
        "prom"
    );
    // The IAM role goes to the controller only: agents make no cloud call.
    let accounts: Vec<ServiceAccount> = by["ServiceAccount"].iter().map(typed).collect();
    let names: Vec<_> = accounts
        .iter()
        .map(|a| a.metadata.name.as_deref())
        .collect();
    assert_eq!(names, [Some("sg-robot"), Some("sg-pilot")]);
    assert_eq!(accounts[0].metadata.annotations, None);
    assert_eq!(
        accounts[1].metadata.annotations.as_ref().unwrap()["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/spotguard"
    );
    // The node policy names the renamed agent account.
    assert!(
        by["ValidatingAdmissionPolicy"][0].object["spec"]["matchConditions"][0]["expression"]
            .as_str()
            .unwrap()
            .ends_with(":ops:sg-robot\"")
    );
    let cm: ConfigMap = typed(one(&manifests, "ConfigMap"));
    let config = cm.data.unwrap()["config.toml"].clone();
    assert!(config.contains("aws_region = \"eu-west-1\""), "{config}");
    assert!(config.contains("dry_run = true"), "{config}");
    assert!(config.contains("events = false"), "{config}");
    // No Events, no permission for them.
    assert!(!grants(&manifests)
        .iter()
        .any(|g| g.group == "events.k8s.io"));
    let ds: DaemonSet = typed(one(&manifests, "DaemonSet"));
    let container = &ds.spec.template.spec.unwrap().containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("ghcr.io/spotguard/spotguard:1.2.3")
    );
    assert_eq!(
        container
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["memory"]
            .0,
        "96Mi"
    );
    let deployment: Deployment = typed(one(&manifests, "Deployment"));
    assert_eq!(deployment.spec.replicas, Some(3));

    let only_controller = render(&json!({"agent": {"enabled": false}}), "sg", "ops");
    check_types(&only_controller);
    let by = by_kind(&only_controller);
    assert!(!by.contains_key("DaemonSet"));
    // No agents, no agent identity, rights or node policy.
    assert_eq!(by["ServiceAccount"].len(), 1);
    assert_eq!(by["ClusterRole"].len(), 1);
    assert!(!by.contains_key("ValidatingAdmissionPolicy"));
    assert!(grants_of(&only_controller, "sg-agent").is_empty());
    let unrestricted = render(&json!({"agent": {"nodeRestriction": false}}), "sg", "ops");
    assert!(!by_kind(&unrestricted).contains_key("ValidatingAdmissionPolicy"));
}

#[test]
fn iam_policy_example_scopes_writes_to_tagged_groups() {
    let path = harness::chart::chart_dir().join("../../iam-policy.json");
    let policy: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let statements = policy["Statement"].as_array().unwrap();
    let writes = [
        "autoscaling:SetDesiredCapacity",
        "autoscaling:TerminateInstanceInAutoScalingGroup",
    ];
    for statement in statements {
        let actions: Vec<&str> = match &statement["Action"] {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            other => panic!("Action {other}"),
        };
        assert!(
            !actions.iter().any(|a| a.contains('*')),
            "no wildcard actions: {statement}"
        );
        if actions.iter().any(|a| writes.contains(a)) {
            let condition = &statement["Condition"]["StringEquals"];
            assert!(
                condition["autoscaling:ResourceTag/spotguard.dev/managed"] == "true",
                "writes only on groups tagged spotguard.dev/managed=true: {statement}"
            );
        }
    }
    let all: Vec<&str> = statements
        .iter()
        .flat_map(|s| {
            s["Action"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
        })
        .collect();
    for needed in [
        "autoscaling:DescribeAutoScalingGroups",
        "autoscaling:DescribeAutoScalingInstances",
        "autoscaling:DescribeScalingActivities",
        "autoscaling:SetDesiredCapacity",
        "autoscaling:TerminateInstanceInAutoScalingGroup",
    ] {
        assert!(all.contains(&needed), "{needed} missing");
    }
    assert_eq!(all.len(), 5, "nothing more than Spot Guard calls: {all:?}");
}

/// Chart values and the setting of the configuration file each one sets, for every role.
const SETTINGS: &[(&str, &str)] = &[
    ("groups", "groups"),
    ("timings.imdsPoll", "timings.imds_poll"),
    ("timings.asgPoll", "timings.asg_poll"),
    ("timings.scaleUpTimeout", "timings.scale_up_timeout"),
    ("timings.monitorInterval", "timings.monitor_interval"),
    ("timings.stability", "timings.stability"),
    ("timings.cleanupInterval", "timings.cleanup_interval"),
    ("timings.errorWindow", "timings.error_window"),
    (
        "timings.interruptionDrainWindow",
        "timings.interruption_drain_window",
    ),
    ("timings.releasedRetention", "timings.released_retention"),
    ("timings.staleAfter", "timings.stale_after"),
    ("drain.timeout", "drain.timeout"),
    ("drain.deleteEmptydirData", "drain.delete_emptydir_data"),
    ("drain.force", "drain.force"),
    ("drain.concurrency", "drain.concurrency"),
    ("drain.gracePeriod", "drain.grace_period"),
    ("taint.key", "taint.key"),
    ("taint.value", "taint.value"),
    ("taint.effect", "taint.effect"),
    ("protectAnnotation", "protect_annotation"),
    ("capacityBuffer.cpuPercent", "capacity_buffer.cpu_percent"),
    (
        "capacityBuffer.memoryPercent",
        "capacity_buffer.memory_percent",
    ),
    ("paybackPrescale", "payback_prescale"),
    ("capacityRebalance", "capacity_rebalance"),
    ("noticeRetry.attempts", "notice_retry.attempts"),
    ("noticeRetry.backoff", "notice_retry.backoff"),
    ("noticeRetry.maxBackoff", "notice_retry.max_backoff"),
    ("dryRun", "daemon.dry_run"),
    ("logFormat", "daemon.log_format"),
    ("logLevel", "daemon.log_level"),
    ("events", "daemon.events"),
    ("aws.region", "daemon.aws_region"),
    ("aws.endpoint", "daemon.aws_endpoint"),
    ("aws.maxAttempts", "daemon.aws_max_attempts"),
    ("ledgerConfigMap", "daemon.ledger_configmap"),
    ("statusConfigMap", "daemon.status_configmap"),
    ("leaderLease", "daemon.leader_lease"),
    ("scaleLockPrefix", "daemon.scale_lock_prefix"),
    ("leaseDuration", "daemon.lease_duration"),
    ("shutdownTimeout", "daemon.shutdown_timeout"),
    ("startupTimeout", "daemon.startup_timeout"),
    ("webhook.url", "webhook.url"),
    ("webhook.format", "webhook.format"),
    ("webhook.template", "webhook.template"),
    ("webhook.headers", "webhook.headers"),
    ("webhook.proxy", "webhook.proxy"),
    ("webhook.events", "webhook.events"),
    ("webhook.cluster", "webhook.cluster"),
    ("webhook.timeout", "webhook.timeout"),
    ("webhook.attempts", "webhook.attempts"),
    ("webhook.backoff", "webhook.backoff"),
    ("webhook.maxBackoff", "webhook.max_backoff"),
    ("webhook.queue", "webhook.queue"),
];

/// Settings the chart sets for each pod from what the pod is, not from a value.
const SET_BY_THE_CHART: &[&str] = &[
    // From the template: agent or controller.
    "daemon.role",
    // The release namespace.
    "daemon.namespace",
    // From `<role>.metricsPort`, checked below.
    "daemon.metrics_addr",
    // Agents: the pod's node, and the file in the state volume (`agent.stateHostPath` says
    // where that volume lives).
    "daemon.node_name",
    "daemon.notice_state_file",
    // Agents: `agent.imdsEndpoint`, checked below.
    "daemon.imds_endpoint",
];

/// A TOML document's leaves by dotted path (an array, and the free-keyed `webhook.headers`,
/// are one leaf).
fn toml_leaves(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match value {
        toml::Value::Table(table) if prefix != "webhook.headers" => {
            for (key, value) in table {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                toml_leaves(&path, value, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

/// A chart value and a setting say the same: equal as text, as durations (`90s` is
/// `1m 30s`), or as group pairs (`onDemand` is `on_demand`).
fn same(value: &Value, setting: &toml::Value) -> bool {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let setting_text = match setting {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text(value) == setting_text {
        return true;
    }
    if let (Ok(a), Ok(b)) = (
        humantime::parse_duration(&text(value)),
        humantime::parse_duration(&setting_text),
    ) {
        return a == b;
    }
    match (value, setting) {
        // Headers: the same names (check-config prints no header value).
        (Value::Object(headers), toml::Value::Table(printed)) => {
            headers.keys().eq(printed.keys())
                && printed.values().all(|v| v.as_str() == Some("(redacted)"))
        }
        (Value::Array(items), toml::Value::Array(printed))
            if items.iter().all(Value::is_string) =>
        {
            items
                .iter()
                .map(Value::as_str)
                .eq(printed.iter().map(toml::Value::as_str))
        }
        (Value::Array(pairs), toml::Value::Array(groups)) => {
            pairs.len() == groups.len()
                && pairs.iter().zip(groups).all(|(p, g)| {
                    g.get("spot").and_then(toml::Value::as_str) == p["spot"].as_str()
                        && g.get("on_demand").and_then(toml::Value::as_str)
                            == p["onDemand"].as_str()
                })
        }
        _ => false,
    }
}

/// A value of a values tree by dotted path.
fn value_at<'a>(values: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(values, |v, key| &v[key])
}

/// The environment a rendered pod's container gets: literal values, and the pod's node for
/// a `spec.nodeName` field reference.
fn pod_env(manifest: &Manifest) -> Vec<(String, String)> {
    let container = &manifest.object["spec"]["template"]["spec"]["containers"][0];
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            let value = match (
                &e["value"],
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
            ) {
                (Value::String(v), _) => v.clone(),
                (_, Some("spec.nodeName")) => "ip-10-0-0-1.ec2.internal".to_string(),
                _ => return None,
            };
            Some((e["name"].as_str().unwrap().to_string(), value))
        })
        .collect()
}

/// Every setting of the configuration file is a chart value (or one the chart sets for each
/// pod), and with every value changed (`tests/data/values-non-default.yaml`) each reaches
/// what each role runs with: `spotguard check-config` of the mounted file, with the pod's
/// environment. A setting added to the file but not to the chart fails here.
#[tokio::test]
async fn every_setting_of_the_configuration_file_is_a_value_that_reaches_the_daemon() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/values-non-default.yaml"
    );
    let values: Value = serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let manifests = render(&values, "sg", "ops");
    let cm: ConfigMap = typed(one(&manifests, "ConfigMap"));
    let text = cm.data.unwrap()["config.toml"].clone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, &text).unwrap();
    for (kind, role) in [("DaemonSet", "agent"), ("Deployment", "controller")] {
        let env = pod_env(one(&manifests, kind));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (status, stdout, stderr) =
            harness::run_cli(&["check-config", file.to_str().unwrap()], &env, dir.path()).await;
        assert!(status.success(), "{role}: {stderr}\n{text}");
        let effective: toml::Value = toml::from_str(&stdout).unwrap();
        let mut settings = BTreeMap::new();
        toml_leaves("", &effective, &mut settings);
        for (value, setting) in SETTINGS {
            let got = settings
                .get(*setting)
                .unwrap_or_else(|| panic!("{role}: {setting} (value {value}) not set\n{stdout}"));
            let want = value_at(&values, value);
            assert!(
                same(want, got),
                "{role}: value {value} = {want} but {setting} = {got}"
            );
        }
        for setting in settings.keys() {
            assert!(
                SETTINGS.iter().any(|(_, s)| s == setting)
                    || SET_BY_THE_CHART.contains(&setting.as_str()),
                "{role}: setting {setting} is no chart value\n{stdout}"
            );
        }
        let port = value_at(&values, &format!("{role}.metricsPort"));
        assert_eq!(
            settings["daemon.metrics_addr"].as_str(),
            Some(format!("0.0.0.0:{port}").as_str())
        );
        assert_eq!(settings["daemon.role"].as_str(), Some(role));
        assert_eq!(settings["daemon.namespace"].as_str(), Some("ops"));
        if role == "agent" {
            assert_eq!(
                settings["daemon.imds_endpoint"].as_str(),
                values["agent"]["imdsEndpoint"].as_str()
            );
            assert_eq!(
                settings["daemon.node_name"].as_str(),
                Some("ip-10-0-0-1.ec2.internal")
            );
        } else {
            assert!(!settings.contains_key("daemon.imds_endpoint"));
        }
    }
    // The webhook URL comes from the Secret when one is named (it wins over the file's).
    let deployment = &one(&manifests, "Deployment").object;
    let url = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SPOTGUARD_WEBHOOK_URL")
        .expect("the webhook URL from its Secret");
    assert_eq!(
        url["valueFrom"]["secretKeyRef"],
        json!({"name": "spotguard-webhook", "key": "slack-url"})
    );
    // The notices file lives in the state volume, on the node's path when one is given.
    let ds: DaemonSet = typed(one(&manifests, "DaemonSet"));
    let pod = ds.spec.template.spec.unwrap();
    let state = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "state")
        .unwrap();
    assert_eq!(
        state.host_path.map(|h| h.path),
        values["agent"]["stateHostPath"]
            .as_str()
            .map(str::to_string)
    );
    let mount = pod.containers[0]
        .volume_mounts
        .clone()
        .unwrap()
        .into_iter()
        .find(|m| m.name == "state")
        .unwrap();
    let notices = pod_env(one(&manifests, "DaemonSet"))
        .into_iter()
        .find(|(k, _)| k == "SPOTGUARD_NOTICE_STATE_FILE")
        .unwrap()
        .1;
    assert!(
        notices.starts_with(&format!("{}/", mount.mount_path)),
        "{notices}"
    );
    // By default the state is an emptyDir.
    let default = render(&json!({}), "sg", "ops");
    let ds: DaemonSet = typed(one(&default, "DaemonSet"));
    let volumes = ds.spec.template.spec.unwrap().volumes.unwrap();
    let state = volumes.iter().find(|v| v.name == "state").unwrap();
    assert!(state.empty_dir.is_some() && state.host_path.is_none());
}
