//! The plugin against a kubelet stand-in speaking the real device plugin and pod-resources
//! protocols over unix sockets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8slan_api::SpokeKind;
use k8slan_api::naming::macvtap_name;
use k8slan_api::report::LanRef;
use k8slan_deviceplugin::claim::Claim;
use k8slan_deviceplugin::proto::v1beta1::{
    ContainerPreferredAllocationRequest, Empty, PreferredAllocationRequest,
};
use k8slan_deviceplugin::report::NodeState;
use k8slan_deviceplugin::testing::{
    MemoryClaims, RecordingPreparer, TestNode, TestNodeOptions, lan,
};
use tempfile::TempDir;

const VETH_S1: &str = "macvtap.k8slan.io/k8slan-veth-s1";
const MAC_S1: &str = "macvtap.k8slan.io/k8slan-mac-s1";
const VETH_S2: &str = "macvtap.k8slan.io/k8slan-veth-s2";
const MAC_S2: &str = "macvtap.k8slan.io/k8slan-mac-s2";
const WAIT: Duration = Duration::from_secs(5);
/// Window in which no ListAndWatch message may arrive when nothing changed.
const QUIET: Duration = Duration::from_millis(700);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Starts node `name` in its own directory under `tmp`, keeping its claims in `claims`.
fn start_node(name: &str, tmp: &TempDir, claims: Arc<MemoryClaims>) -> TestNode {
    let dir = tmp.path().join(name);
    TestNode::start(name, &dir, claims, TestNodeOptions::default())
}

fn node(name: &str, tmp: &TempDir) -> TestNode {
    init_logs();
    start_node(name, tmp, MemoryClaims::new())
}

/// node-a serving LAN default/lan1 (underlay eth1) with `spokes`, once its kubelet has had the
/// first update of `resource`.
async fn serving_lan1(tmp: &TempDir, spokes: &[&str], resource: &str) -> TestNode {
    let n = node("node-a", tmp);
    n.set_lans(&[lan("default", "lan1", "lan1", spokes, "eth1")]);
    assert!(n.kubelet.wait_updates(resource, 1, WAIT).await.is_some());
    n
}

/// The claim of `node` on spoke `spoke` of LAN default/lan1, held for `pod`.
fn lan1_claim(spoke: &str, node: &str, pod: &str, kind: SpokeKind) -> Claim {
    Claim {
        pod: Some(pod.into()),
        ..Claim::new(spoke, node, LanRef::new("default", "lan1"), kind)
    }
}

fn health(n: &TestNode, resource: &str) -> Option<String> {
    n.kubelet
        .resource(resource)?
        .devices()?
        .first()
        .map(|d| d.health.clone())
}

async fn wait_health(n: &TestNode, resource: &str, want: &str) -> bool {
    n.kubelet
        .wait_until(WAIT, |m| {
            m.get(resource)
                .and_then(|r| r.devices()?.first().cloned())
                .is_some_and(|d| d.health == want)
        })
        .await
}

/// Waits (up to `WAIT`) until `done` holds.
async fn eventually(done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn update_counts(n: &TestNode) -> Vec<(String, usize)> {
    n.kubelet
        .resources()
        .into_iter()
        .map(|(k, v)| (k, v.updates.len()))
        .collect()
}

#[tokio::test]
async fn registers_both_kinds_and_streams_the_device_once() {
    let tmp = TempDir::new().unwrap();
    let n = node("node-a", &tmp);
    n.set_lans(&[lan("default", "lan1", "lan1", &["s1"], "eth1")]);

    assert!(
        n.kubelet
            .wait_until(WAIT, |m| m.len() == 2
                && m.values().all(|r| !r.updates.is_empty()))
            .await,
        "both resources registered and listed: {:?}",
        n.kubelet.resources()
    );
    let veth = n.kubelet.resource(VETH_S1).unwrap();
    assert_eq!(veth.endpoint, "k8slan-veth-s1.sock");
    assert!(n.dir.join("k8slan-veth-s1.sock").exists());
    let opts = veth.options.unwrap();
    assert!(!opts.pre_start_required);
    assert!(opts.get_preferred_allocation_available);
    assert_eq!(veth.served_options, Some(opts));
    let devs = veth.devices().unwrap();
    assert_eq!(devs.len(), 1);
    assert_eq!(devs[0].id, "s1");
    assert_eq!(devs[0].health, "Healthy");
    let mac = n.kubelet.resource(MAC_S1).unwrap();
    assert_eq!(mac.devices().unwrap()[0].id, macvtap_name("s1"));

    // Nothing changes: nothing is sent.
    let before = update_counts(&n);
    tokio::time::sleep(QUIET).await;
    assert_eq!(update_counts(&n), before, "no periodic resends");

    // The node reports the LAN ready.
    let report = n.reports.last().unwrap();
    assert_eq!(report.lans["default/lan1"].state, NodeState::Ready);
}

#[tokio::test]
async fn spokes_added_and_removed_change_only_their_resources() {
    let tmp = TempDir::new().unwrap();
    let n = serving_lan1(&tmp, &["s1"], MAC_S1).await;

    n.set_lans(&[lan("default", "lan1", "lan1", &["s1", "s2"], "eth1")]);
    assert!(n.kubelet.wait_updates(VETH_S2, 1, WAIT).await.is_some());
    assert!(n.kubelet.wait_updates(MAC_S2, 1, WAIT).await.is_some());
    tokio::time::sleep(QUIET).await;
    assert_eq!(n.kubelet.resource(VETH_S1).unwrap().updates.len(), 1);

    // s2 removed: its capacity drops to 0, then its endpoint goes away.
    n.set_lans(&[lan("default", "lan1", "lan1", &["s1"], "eth1")]);
    let last = n.kubelet.wait_updates(VETH_S2, 2, WAIT).await.unwrap();
    assert!(last.is_empty(), "withdrawn resource sends an empty list");
    assert!(
        n.kubelet
            .wait_until(WAIT, |m| !m[VETH_S2].streaming && !m[MAC_S2].streaming)
            .await
    );
    eventually(|| !n.dir.join("k8slan-veth-s2.sock").exists()).await;
    assert!(!n.dir.join("k8slan-veth-s2.sock").exists());
    assert!(n.dir.join("k8slan-veth-s1.sock").exists());
    assert_eq!(n.kubelet.resource(VETH_S1).unwrap().updates.len(), 1);

    // The whole LAN deleted: everything withdrawn.
    n.set_lans(&[]);
    assert!(
        n.kubelet
            .wait_until(WAIT, |m| m[VETH_S1].devices() == Some(&[])
                && m[MAC_S1].devices() == Some(&[]))
            .await
    );
}

#[tokio::test]
async fn kubelet_restart_brings_every_resource_back_within_five_seconds() {
    let tmp = TempDir::new().unwrap();
    let mut n = node("node-a", &tmp);
    n.set_lans(&[lan("default", "lan1", "lan1", &["s1", "s2"], "eth1")]);
    assert!(
        n.kubelet
            .wait_until(WAIT, |m| m.len() == 4 && m.values().all(|r| r.streaming))
            .await
    );

    let t0 = Instant::now();
    n.kubelet.restart().unwrap();
    assert!(n.kubelet.resources().is_empty());
    let back = n
        .kubelet
        .wait_until(Duration::from_secs(5), |m| {
            m.len() == 4
                && m.values()
                    .all(|r| r.streaming && r.devices().is_some_and(|d| d.len() == 1))
        })
        .await;
    assert!(back, "re-registered: {:?}", n.kubelet.resources());
    eprintln!(
        "re-registered 4 resources {:?} after the kubelet restart",
        t0.elapsed()
    );
    for f in ["k8slan-veth-s1.sock", "k8slan-mac-s2.sock"] {
        assert!(n.dir.join(f).exists(), "{f} served again");
    }
    // And Allocate works on the new endpoints.
    n.kubelet.allocate(VETH_S1, &["s1"]).await.unwrap();
}

#[tokio::test]
async fn allocate_prepares_the_spoke_and_hands_vms_their_tap() {
    let tmp = TempDir::new().unwrap();
    let n = node("node-a", &tmp);
    n.set_lans(&[lan("default", "lan1", "lan1", &["s1", "s2"], "eth1")]);
    assert!(n.kubelet.wait_until(WAIT, |m| m.len() == 4).await);

    let mac_id = macvtap_name("s1");
    let resp = n.kubelet.allocate(MAC_S1, &[&mac_id]).await.unwrap();
    let c = &resp.container_responses[0];
    assert_eq!(c.devices.len(), 1);
    let d = &c.devices[0];
    assert_eq!(
        d.container_path,
        format!(
            "/dev/tap{}",
            k8slan_deviceplugin::testing::RecordingPreparer::ifindex("s1")
        )
    );
    assert_eq!(
        d.host_path,
        tmp.path().join("node-a/dev/tap-s1").to_string_lossy()
    );
    assert_eq!(d.permissions, "rw");

    let resp = n.kubelet.allocate(VETH_S2, &["s2"]).await.unwrap();
    let c = &resp.container_responses[0];
    assert!(
        c.devices.is_empty() && c.mounts.is_empty(),
        "nothing fake for pods"
    );

    let calls = n.preparer.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].op, "prepare");
    assert_eq!(calls[0].spoke, "s1");
    assert_eq!(calls[0].kind, SpokeKind::Mac);
    assert_eq!(calls[0].netns, "lan1");
    assert_eq!(calls[0].underlay, "eth1");
    assert_eq!(calls[0].lan, "default/lan1");
    assert_eq!(calls[1].kind, SpokeKind::Veth);

    // Claims were taken for this node.
    let claim = n.claims.get("s1").unwrap();
    assert_eq!(claim.node, "node-a");
    assert_eq!(claim.kind, SpokeKind::Mac);
    assert_eq!(claim.lan.to_string(), "default/lan1");

    // Allocate again (kubelet restart re-admission): idempotent, prepares again.
    n.kubelet.allocate(MAC_S1, &[&mac_id]).await.unwrap();
    assert_eq!(n.preparer.calls().len(), 3);

    // A device we never advertised is refused.
    let err = n.kubelet.allocate(VETH_S1, &["nope"]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn twins_are_exclusive_until_the_member_goes_away() {
    let tmp = TempDir::new().unwrap();
    let n = serving_lan1(&tmp, &["s1"], MAC_S1).await;

    n.kubelet.allocate(VETH_S1, &["s1"]).await.unwrap();
    assert!(wait_health(&n, MAC_S1, "Unhealthy").await);
    assert_eq!(health(&n, VETH_S1).as_deref(), Some("Healthy"));
    // The kubelet cannot allocate the twin (and if it tried, the plugin refuses).
    let err = n
        .kubelet
        .allocate(MAC_S1, &[&macvtap_name("s1")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("s1"), "{}", err.message());

    // The pod shows up in pod-resources, then goes away.
    n.pod_resources.set(&[("default/pod1", VETH_S1, "s1")]);
    eventually(|| n.claims.get("s1").and_then(|c| c.pod).is_some()).await;
    assert_eq!(
        n.claims.get("s1").unwrap().pod.as_deref(),
        Some("default/pod1")
    );
    let mac_updates = n.kubelet.resource(MAC_S1).unwrap().updates.len();
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        n.kubelet.resource(MAC_S1).unwrap().updates.len(),
        mac_updates,
        "polling pod-resources sends nothing while health stays the same"
    );

    n.pod_resources.set(&[]);
    assert!(wait_health(&n, MAC_S1, "Healthy").await);
    eventually(|| n.claims.get("s1").is_none()).await;
    assert!(n.claims.get("s1").is_none(), "claim released");
    assert!(
        n.preparer
            .calls()
            .iter()
            .any(|c| c.op == "release" && c.spoke == "s1" && c.kind == SpokeKind::Veth)
    );
}

/// A node serving `lan1` whose spoke `s1` (veth) is held by `default/pod1`, recorded on the claim.
async fn held_by_pod1(tmp: &TempDir) -> TestNode {
    let n = serving_lan1(tmp, &["s1"], MAC_S1).await;
    n.kubelet.allocate(VETH_S1, &["s1"]).await.unwrap();
    n.pod_resources.set(&[("default/pod1", VETH_S1, "s1")]);
    eventually(|| n.claims.get("s1").and_then(|c| c.pod).is_some()).await;
    assert_eq!(
        n.claims.get("s1").unwrap().pod.as_deref(),
        Some("default/pod1")
    );
    n
}

fn released(n: &TestNode) -> bool {
    n.preparer.calls().iter().any(|c| c.op == "release")
}

/// After a kubelet restart whose first listings were empty: nothing was released; the kubelet
/// lists the member again and nothing changes, even after the hold; the pod really goes away
/// and it is released as usual.
async fn member_survives_the_restart_and_leaves_as_usual(n: &TestNode) {
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        !released(n),
        "a live member was released on the new kubelet's first listings: {:?}",
        n.preparer.calls()
    );
    assert!(n.claims.get("s1").is_some(), "the claim was dropped");
    assert_eq!(health(n, MAC_S1).as_deref(), Some("Unhealthy"));
    n.pod_resources.set(&[("default/pod1", VETH_S1, "s1")]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!released(n), "{:?}", n.preparer.calls());
    n.pod_resources.set(&[]);
    assert!(wait_health(n, MAC_S1, "Healthy").await);
    assert!(released(n));
}

/// The new kubelet answers `List` before it recreates its registration socket, and no `List`
/// failed in between: the replaced pod-resources socket alone tells the plugin not to take the
/// empty listing for a release.
#[tokio::test]
async fn a_new_kubelet_listing_nothing_before_it_registers_releases_no_member() {
    let tmp = TempDir::new().unwrap();
    let mut n = held_by_pod1(&tmp).await;
    n.pod_resources.set(&[]);
    n.pod_resources.restart().unwrap();
    member_survives_the_restart_and_leaves_as_usual(&n).await;
}

#[tokio::test]
async fn a_restarted_kubelet_that_lists_nothing_yet_releases_no_member() {
    let tmp = TempDir::new().unwrap();
    let mut n = held_by_pod1(&tmp).await;
    // The kubelet restarts and, until it has synced its pods, lists none.
    n.pod_resources.set(&[]);
    n.kubelet.restart().unwrap();
    assert!(
        n.kubelet
            .wait_until(WAIT, |m| m.len() == 2 && m.values().all(|r| r.streaming))
            .await
    );
    member_survives_the_restart_and_leaves_as_usual(&n).await;
}

#[tokio::test]
async fn allocation_never_confirmed_is_released_after_the_grace_period() {
    let tmp = TempDir::new().unwrap();
    let n = serving_lan1(&tmp, &["s1"], MAC_S1).await;
    n.kubelet.allocate(VETH_S1, &["s1"]).await.unwrap();
    assert!(wait_health(&n, MAC_S1, "Unhealthy").await);
    // The pod never appears in pod-resources: after the 2 s grace the spoke is free again.
    assert!(wait_health(&n, MAC_S1, "Healthy").await);
    assert!(n.claims.get("s1").is_none());
}

#[tokio::test]
async fn spoke_held_on_another_node_is_unhealthy_here() {
    let tmp = TempDir::new().unwrap();
    let (a, b, claims) = two_nodes(&tmp).await;

    a.kubelet.allocate(VETH_S1, &["s1"]).await.unwrap();
    a.pod_resources.set(&[("default/pod1", VETH_S1, "s1")]);
    // Both kinds of s1 are unhealthy on node-b; s2 is untouched.
    assert!(wait_health(&b, VETH_S1, "Unhealthy").await);
    assert!(wait_health(&b, MAC_S1, "Unhealthy").await);
    assert_eq!(health(&b, VETH_S2).as_deref(), Some("Healthy"));
    assert_eq!(health(&a, VETH_S1).as_deref(), Some("Healthy"));
    assert_eq!(b.kubelet.resource(VETH_S2).unwrap().updates.len(), 1);

    // If node-b's kubelet tries anyway (stale view), the plugin names the holder.
    eventually(|| claims.get("s1").and_then(|c| c.pod).is_some()).await;
    let err = b.kubelet.allocate(VETH_S1, &["s1"]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("node-a"), "{}", err.message());
    assert!(err.message().contains("default/pod1"), "{}", err.message());
    assert!(b.preparer.calls().is_empty());

    // The member leaves node-a: s1 is free everywhere.
    a.pod_resources.set(&[]);
    assert!(wait_health(&b, VETH_S1, "Healthy").await);
    assert!(wait_health(&b, MAC_S1, "Healthy").await);
}

#[tokio::test]
async fn remote_claim_recorded_in_the_api_blocks_allocation_race() {
    // Two nodes both see s1 healthy; the claim decides atomically.
    let tmp = TempDir::new().unwrap();
    let n = serving_lan1(&tmp, &["s1"], VETH_S1).await;
    // Another node claims s1 in the API, but our watch has not delivered it yet: simulate by
    // acquiring through the store and racing Allocate immediately.
    n.claims
        .put(lan1_claim("s1", "node-z", "vms/vm1", SpokeKind::Mac));
    let err = n.kubelet.allocate(VETH_S1, &["s1"]).await.unwrap_err();
    assert!(err.message().contains("node-z"), "{}", err.message());
    assert!(wait_health(&n, VETH_S1, "Unhealthy").await);
    assert!(n.preparer.calls().is_empty());
    n.claims.remove("s1");
    assert!(wait_health(&n, VETH_S1, "Healthy").await);
}

#[tokio::test]
async fn failed_preparation_is_reported_and_undone() {
    let tmp = TempDir::new().unwrap();
    let n = serving_lan1(&tmp, &["s1"], MAC_S1).await;
    n.preparer.fail("s1");
    let err = n.kubelet.allocate(VETH_S1, &["s1"]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal);
    assert!(
        err.message().contains("injected failure"),
        "{}",
        err.message()
    );
    assert!(
        n.claims.get("s1").is_none(),
        "claim of a failed allocation dropped"
    );
    eventually(|| {
        n.reports
            .last()
            .is_some_and(|r| r.lans["default/lan1"].state == NodeState::Failed)
    })
    .await;
    let r = n.reports.last().unwrap();
    assert_eq!(r.lans["default/lan1"].state, NodeState::Failed);
    assert!(r.lans["default/lan1"].message.contains("s1"));
    assert_eq!(
        health(&n, MAC_S1).as_deref(),
        Some("Healthy"),
        "twin not blocked"
    );
}

#[tokio::test]
async fn missing_underlay_serves_nothing_until_it_appears() {
    let tmp = TempDir::new().unwrap();
    let n = node("node-a", &tmp);
    n.set_lans(&[lan("default", "lan1", "lan1", &["s1"], "eth7")]);
    eventually(|| n.reports.last().is_some()).await;
    let r = n.reports.last().unwrap();
    assert_eq!(r.lans["default/lan1"].state, NodeState::NoUnderlay);
    assert!(r.lans["default/lan1"].message.contains("eth7"));
    assert!(n.kubelet.resources().is_empty());
    assert!(!n.dir.join("k8slan-veth-s1.sock").exists());

    n.links.add("eth7");
    assert!(n.kubelet.wait_updates(VETH_S1, 1, WAIT).await.is_some());
    let writes = n.reports.writes();
    tokio::time::sleep(QUIET).await;
    assert_eq!(n.reports.writes(), writes, "report written only on change");
    assert_eq!(
        n.reports.last().unwrap().lans["default/lan1"].state,
        NodeState::Ready
    );
}

#[tokio::test]
async fn rejected_lan_is_not_served() {
    let tmp = TempDir::new().unwrap();
    let n = node("node-a", &tmp);
    let mut l = lan("default", "lan1", "lan1", &["s1"], "eth1");
    l.status = Some(k8slan_api::LanStatus {
        conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: "Accepted".into(),
            status: "False".into(),
            reason: "Conflict".into(),
            message: "vni taken".into(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
            observed_generation: None,
        }],
        ..Default::default()
    });
    let ok = lan("default", "lan2", "lan2", &["s2"], "eth1");
    n.set_lans(&[l, ok]);
    assert!(n.kubelet.wait_updates(VETH_S2, 1, WAIT).await.is_some());
    assert!(n.kubelet.resource(VETH_S1).is_none());
}

#[tokio::test]
async fn agent_restart_keeps_allocations_and_shutdown_removes_sockets() {
    let tmp = TempDir::new().unwrap();
    let root = tmp.path().join("node-a");
    init_logs();
    let opts = TestNodeOptions::default();
    let mut n = start_node("node-a", &tmp, MemoryClaims::new());
    n.set_lans(&[lan("default", "lan1", "lan1", &["s1"], "eth1")]);
    assert!(n.kubelet.wait_updates(MAC_S1, 1, WAIT).await.is_some());
    n.kubelet.allocate(VETH_S1, &["s1"]).await.unwrap();
    n.pod_resources.set(&[("default/pod1", VETH_S1, "s1")]);
    assert!(wait_health(&n, MAC_S1, "Unhealthy").await);

    n.stop_plugin().await.unwrap();
    assert!(
        !n.dir.join("k8slan-veth-s1.sock").exists(),
        "sockets removed on shutdown"
    );
    assert!(
        n.dir.join("kubelet.sock").exists(),
        "the kubelet's socket is left alone"
    );
    assert!(n.claims.get("s1").is_some(), "shutdown releases nothing");

    n.restart_plugin(&root, &opts);
    // Registered again, and the twin is still unhealthy from the first list on.
    assert!(
        n.kubelet
            .wait_until(WAIT, |m| m[MAC_S1].registrations == 2
                && m[MAC_S1].streaming)
            .await
    );
    let first_after_restart = n.kubelet.resource(MAC_S1).unwrap().updates;
    let first_after_restart = first_after_restart.last().unwrap();
    assert_eq!(first_after_restart[0].health, "Unhealthy");
    assert_eq!(n.claims.get("s1").unwrap().node, "node-a");
    tokio::time::sleep(QUIET).await;
    assert!(
        n.claims.get("s1").is_some(),
        "claim kept across the restart"
    );
}

#[tokio::test]
async fn preferred_allocation_is_answered() {
    let tmp = TempDir::new().unwrap();
    let n = serving_lan1(&tmp, &["s1"], VETH_S1).await;
    let mut client = n.kubelet.client(VETH_S1).unwrap();
    let resp = client
        .get_preferred_allocation(PreferredAllocationRequest {
            container_requests: vec![ContainerPreferredAllocationRequest {
                available_device_i_ds: vec!["s1".into()],
                must_include_device_i_ds: vec![],
                allocation_size: 1,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.container_responses[0].device_i_ds,
        vec!["s1".to_string()]
    );
    let opts = client
        .get_device_plugin_options(Empty {})
        .await
        .unwrap()
        .into_inner();
    assert!(opts.get_preferred_allocation_available);
    client
        .pre_start_container(
            k8slan_deviceplugin::proto::v1beta1::PreStartContainerRequest {
                devices_ids: vec!["s1".into()],
            },
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn claim_of_this_node_without_member_is_dropped() {
    let tmp = TempDir::new().unwrap();
    let n = serving_lan1(&tmp, &["s1", "s2"], VETH_S1).await;
    // A claim left behind by a release that failed.
    n.claims
        .put(lan1_claim("s1", "node-a", "ns/gone", SpokeKind::Veth));
    eventually(|| n.claims.get("s1").is_none()).await;
    assert!(n.claims.get("s1").is_none(), "orphan claim dropped");
    // A live member's claim stays.
    n.kubelet.allocate(VETH_S2, &["s2"]).await.unwrap();
    n.pod_resources.set(&[("default/p2", VETH_S2, "s2")]);
    tokio::time::sleep(QUIET).await;
    assert_eq!(n.claims.get("s2").unwrap().node, "node-a");
}

#[tokio::test]
async fn spoke_removed_and_added_back_at_once_is_served_again() {
    let tmp = TempDir::new().unwrap();
    let n = node("node-a", &tmp);
    let with = [lan("default", "lan1", "lan1", &["s1", "s2"], "eth1")];
    n.set_lans(&with);
    assert!(n.kubelet.wait_updates(VETH_S2, 1, WAIT).await.is_some());
    n.set_lans(&[lan("default", "lan1", "lan1", &["s1"], "eth1")]);
    assert!(
        n.kubelet
            .wait_updates(VETH_S2, 2, WAIT)
            .await
            .unwrap()
            .is_empty()
    );
    n.set_lans(&with);
    // Registered a second time, on a live socket, with its device back.
    assert!(
        n.kubelet
            .wait_until(WAIT, |m| m[VETH_S2].registrations == 2
                && m[VETH_S2].streaming
                && m[VETH_S2].allocatable() == 1)
            .await,
        "{:?}",
        n.kubelet.resource(VETH_S2)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(n.dir.join("k8slan-veth-s2.sock").exists());
    n.kubelet.allocate(VETH_S2, &["s2"]).await.unwrap();
}

#[tokio::test]
async fn a_plugin_socket_deleted_by_hand_is_served_and_registered_again() {
    let tmp = TempDir::new().unwrap();
    let n = serving_lan1(&tmp, &["s1"], VETH_S1).await;
    std::fs::remove_file(n.dir.join("k8slan-veth-s1.sock")).unwrap();
    assert!(
        n.kubelet
            .wait_until(WAIT, |m| m[VETH_S1].registrations == 2
                && m[VETH_S1].streaming)
            .await
    );
    assert!(n.dir.join("k8slan-veth-s1.sock").exists());
    assert_eq!(n.kubelet.resource(MAC_S1).unwrap().registrations, 1);
    n.kubelet.allocate(VETH_S1, &["s1"]).await.unwrap();
}

#[tokio::test]
async fn failing_underlay_lookups_withdraw_nothing_but_a_vanished_underlay_does() {
    let tmp = TempDir::new().unwrap();
    let n = serving_lan1(&tmp, &["s1"], VETH_S1).await;
    n.links.set_broken(true);
    // Several probe ticks (100 ms) with failing lookups: nothing changes.
    tokio::time::sleep(QUIET).await;
    assert_eq!(n.kubelet.resource(VETH_S1).unwrap().updates.len(), 1);
    assert!(n.dir.join("k8slan-veth-s1.sock").exists());
    n.links.set_broken(false);
    // The underlay really goes away: capacity drops to 0 and the node reports why.
    n.links.remove("eth1");
    let last = n.kubelet.wait_updates(VETH_S1, 2, WAIT).await.unwrap();
    assert!(last.is_empty());
    eventually(|| {
        n.reports
            .last()
            .is_some_and(|r| r.lans["default/lan1"].state == NodeState::NoUnderlay)
    })
    .await;
    assert_eq!(
        n.reports.last().unwrap().lans["default/lan1"].state,
        NodeState::NoUnderlay
    );
}

/// Two nodes sharing one claim store, both serving LAN `default/lan1` with spokes s1 and s2.
async fn two_nodes(tmp: &TempDir) -> (TestNode, TestNode, Arc<MemoryClaims>) {
    init_logs();
    let claims = MemoryClaims::new();
    let a = start_node("node-a", tmp, claims.clone());
    let b = start_node("node-b", tmp, claims.clone());
    let lans = [lan("default", "lan1", "lan1", &["s1", "s2"], "eth1")];
    for n in [&a, &b] {
        n.set_lans(&lans);
        assert!(n.kubelet.wait_until(WAIT, |m| m.len() == 4).await);
    }
    (a, b, claims)
}

#[tokio::test]
async fn allocate_writes_the_record_the_cni_reads_and_release_removes_it() {
    let tmp = TempDir::new().unwrap();
    let n = node("node-a", &tmp);
    let mut l = lan("default", "lan1", "knl", &["s1", "s2"], "eth1");
    l.spec.allowed_namespaces = vec!["lab2".into()];
    n.set_lans(&[l]);
    assert!(n.kubelet.wait_until(WAIT, |m| m.len() == 4).await);

    n.kubelet
        .allocate(MAC_S1, &[&macvtap_name("s1")])
        .await
        .unwrap();
    n.kubelet.allocate(VETH_S2, &["s2"]).await.unwrap();
    let mac = n.record("s1").expect("record of the VM spoke");
    assert_eq!(
        (
            mac.lan_namespace.as_str(),
            mac.lan_name.as_str(),
            mac.netns.as_str()
        ),
        ("default", "lan1", "knl")
    );
    assert_eq!(mac.kind, SpokeKind::Mac);
    assert_eq!(mac.link, macvtap_name("s1"));
    assert_eq!(mac.ifindex, RecordingPreparer::ifindex("s1"));
    assert_eq!(mac.allowed_namespaces, ["lab2"]);
    let veth = n.record("s2").expect("record of the pod spoke");
    assert_eq!((veth.kind, veth.link.as_str()), (SpokeKind::Veth, "s2"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(n.prepared.join("s1.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The members show up, then s1's pod goes: its record goes with it, s2's stays.
    n.pod_resources.set(&[
        ("default/vm1", MAC_S1, &macvtap_name("s1")),
        ("lab2/p2", VETH_S2, "s2"),
    ]);
    eventually(|| n.claims.get("s2").and_then(|c| c.pod).is_some()).await;
    n.pod_resources.set(&[("lab2/p2", VETH_S2, "s2")]);
    eventually(|| n.record("s1").is_none()).await;
    assert!(n.record("s1").is_none(), "record removed with the member");
    assert!(n.record("s2").is_some());
}

#[tokio::test]
async fn claims_name_the_member_pod_with_its_uid() {
    let tmp = TempDir::new().unwrap();
    let n = serving_lan1(&tmp, &["s1"], VETH_S1).await;
    n.kubelet.allocate(VETH_S1, &["s1"]).await.unwrap();
    assert_eq!(n.claims.get("s1").unwrap().pod_uid, None);
    n.pod_resources.set(&[("default/pod1", VETH_S1, "s1")]);
    eventually(|| n.claims.get("s1").and_then(|c| c.pod_uid).is_some()).await;
    let c = n.claims.get("s1").unwrap();
    assert_eq!(c.pod.as_deref(), Some("default/pod1"));
    assert_eq!(
        c.pod_uid,
        Some(k8slan_deviceplugin::testing::MemoryPods::uid_of(
            "default/pod1"
        ))
    );
}

#[tokio::test]
async fn a_spoke_held_from_a_foreign_namespace_is_torn_down_with_an_event() {
    let tmp = TempDir::new().unwrap();
    let n = node("node-a", &tmp);
    n.set_lans(&[lan("lab", "lan1", "lan1", &["s1", "s2"], "eth1")]);
    assert!(n.kubelet.wait_until(WAIT, |m| m.len() == 4).await);
    // A pod of namespace "intruder" got a VM spoke of lab's LAN (the webhook was bypassed):
    // the tap reached its container at Allocate, before anyone knew the pod.
    n.kubelet
        .allocate(MAC_S1, &[&macvtap_name("s1")])
        .await
        .unwrap();
    assert!(n.record("s1").is_some());
    n.pod_resources
        .set(&[("intruder/vm", MAC_S1, &macvtap_name("s1"))]);

    // Torn down on the node: host side released (the macvtap goes), record removed, claim
    // dropped, both kinds unhealthy here, an event on the pod names the LAN and the fix.
    assert!(wait_health(&n, MAC_S1, "Unhealthy").await);
    assert!(wait_health(&n, VETH_S1, "Unhealthy").await);
    eventually(|| !n.pods.events().is_empty()).await;
    let calls = n.preparer.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.op == "release" && c.spoke == "s1" && c.kind == SpokeKind::Mac),
        "{calls:?}"
    );
    assert!(n.record("s1").is_none());
    eventually(|| n.claims.get("s1").is_none()).await;
    assert!(n.claims.get("s1").is_none(), "no claim for the foreign pod");
    let events = n.pods.events();
    assert_eq!(events.len(), 1, "one event, not one per poll");
    let (pod, uid, warning) = &events[0];
    assert_eq!(pod.to_string(), "intruder/vm");
    assert_eq!(
        uid.as_deref(),
        Some(k8slan_deviceplugin::testing::MemoryPods::uid_of("intruder/vm").as_str())
    );
    assert_eq!(warning.reason, "SpokeNamespaceDenied");
    for part in ["lab/lan1", "namespace lab", "spec.allowedNamespaces"] {
        assert!(
            warning.message.contains(part),
            "{part}: {}",
            warning.message
        );
    }
    // The kubelet re-admitting the pod (its restart) gets a refusal, not a new link.
    let err = n
        .kubelet
        .allocate(MAC_S1, &[&macvtap_name("s1")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("intruder/vm"), "{}", err.message());
    assert_eq!(
        n.preparer
            .calls()
            .iter()
            .filter(|c| c.op == "prepare")
            .count(),
        1
    );
    // s2 is untouched; once the intruder is gone s1 is served again.
    assert_eq!(health(&n, VETH_S2).as_deref(), Some("Healthy"));
    n.pod_resources.set(&[]);
    assert!(wait_health(&n, MAC_S1, "Healthy").await);
    n.kubelet
        .allocate(MAC_S1, &[&macvtap_name("s1")])
        .await
        .unwrap();
}

#[tokio::test]
async fn an_allowed_namespace_may_hold_the_spoke() {
    let tmp = TempDir::new().unwrap();
    let n = node("node-a", &tmp);
    let mut l = lan("lab", "lan1", "lan1", &["s1"], "eth1");
    l.spec.allowed_namespaces = vec!["friends".into()];
    n.set_lans(&[l]);
    assert!(n.kubelet.wait_updates(VETH_S1, 1, WAIT).await.is_some());
    n.kubelet.allocate(VETH_S1, &["s1"]).await.unwrap();
    n.pod_resources.set(&[("friends/p", VETH_S1, "s1")]);
    eventually(|| n.claims.get("s1").and_then(|c| c.pod).is_some()).await;
    tokio::time::sleep(QUIET).await;
    assert!(n.pods.events().is_empty());
    assert!(n.record("s1").is_some());
    assert_eq!(health(&n, VETH_S1).as_deref(), Some("Healthy"));
}

#[tokio::test]
async fn a_stalled_api_server_fails_allocate_fast_and_leaves_nothing_behind() {
    let tmp = TempDir::new().unwrap();
    let n = serving_lan1(&tmp, &["s1"], VETH_S1).await;
    n.claims.set_stalled(true);
    let started = Instant::now();
    let err = n.kubelet.allocate(VETH_S1, &["s1"]).await.unwrap_err();
    // Bounded by the claim timeout (1 s here), far below the kubelet's own patience.
    assert!(started.elapsed() < WAIT, "{:?}", started.elapsed());
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
    for part in ["spoke s1", "API server", "spoke-s1", "1s"] {
        assert!(err.message().contains(part), "{part}: {}", err.message());
    }
    assert!(
        n.preparer.calls().is_empty(),
        "nothing prepared without a claim"
    );
    assert!(n.record("s1").is_none());
    // The reservation was taken back: the twin is allocatable again.
    assert!(wait_health(&n, MAC_S1, "Healthy").await);
    n.claims.set_stalled(false);
    n.kubelet.allocate(VETH_S1, &["s1"]).await.unwrap();
}

#[tokio::test]
async fn two_nodes_racing_for_one_spoke_one_wins_and_the_loser_turns_unhealthy() {
    let tmp = TempDir::new().unwrap();
    let (a, b, claims) = two_nodes(&tmp).await;
    let mac_id = macvtap_name("s1");
    let (veth_ids, mac_ids) = (["s1"], [mac_id.as_str()]);
    let (ra, rb) = tokio::join!(
        a.kubelet.allocate(VETH_S1, &veth_ids),
        b.kubelet.allocate(MAC_S1, &mac_ids),
    );
    let (winner, loser, err) = match (ra, rb) {
        (Ok(_), Err(e)) => (&a, &b, e),
        (Err(e), Ok(_)) => (&b, &a, e),
        other => panic!("expected exactly one winner, got {other:?}"),
    };
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains(&winner.name), "{}", err.message());
    assert_eq!(claims.get("s1").unwrap().node, winner.name);
    // The loser prepared nothing, kept no record and offers neither kind of s1 any more, so
    // the scheduler places no further pod for s1 there; s2 stays free on both.
    let loser_prepares = loser
        .preparer
        .calls()
        .iter()
        .filter(|c| c.op == "prepare")
        .count();
    assert_eq!(loser_prepares, 0);
    assert!(loser.record("s1").is_none());
    assert!(winner.record("s1").is_some());
    assert!(wait_health(loser, VETH_S1, "Unhealthy").await);
    assert!(wait_health(loser, MAC_S1, "Unhealthy").await);
    assert_eq!(health(loser, VETH_S2).as_deref(), Some("Healthy"));
}

#[tokio::test]
async fn the_loser_learns_the_winner_from_its_refused_claim_before_the_watch_does() {
    let tmp = TempDir::new().unwrap();
    init_logs();
    // node-b's claim watch never delivers anything: only what Allocate learns can help.
    let shared = MemoryClaims::new();
    let a = start_node("node-a", &tmp, shared.clone());
    let (_silent, no_news) = tokio::sync::watch::channel(Some(Default::default()));
    let b = TestNode::start_with_claim_watch(
        "node-b",
        &tmp.path().join("b"),
        shared.clone(),
        TestNodeOptions::default(),
        no_news,
    );
    let lans = [lan("default", "lan1", "lan1", &["s1"], "eth1")];
    for n in [&a, &b] {
        n.set_lans(&lans);
        assert!(n.kubelet.wait_updates(VETH_S1, 1, WAIT).await.is_some());
    }
    a.kubelet.allocate(VETH_S1, &["s1"]).await.unwrap();
    assert_eq!(
        health(&b, VETH_S1).as_deref(),
        Some("Healthy"),
        "b has not seen it"
    );
    let err = b.kubelet.allocate(VETH_S1, &["s1"]).await.unwrap_err();
    assert!(err.message().contains("node-a"), "{}", err.message());
    assert!(wait_health(&b, VETH_S1, "Unhealthy").await);
    assert!(wait_health(&b, MAC_S1, "Unhealthy").await);
}
