//! Allocate on a real kernel: the plugin with the netagent datapath behind the
//! `SpokePreparer` trait (`common/netagent.rs`: what the agent binary wires), a kubelet stand-in
//! on unix sockets, and a simulated node (a network namespace acting as the node's host
//! namespace, with underlay `eth1`). Root only: `cargo test -- --ignored`.

use std::os::unix::fs::FileTypeExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8slan_api::naming::macvtap_name;
use k8slan_deviceplugin::plugin::{self, Backends, PluginConfig, Sources};
use k8slan_deviceplugin::testing::{
    FakePodResources, KubeletStandIn, MemoryClaims, MemoryReports, lan,
};
use k8slan_netagent::{Datapath, HostNs, RtnlKernel};
use k8slan_testkit::{TestDir, TestNs, unique_name};
use tokio::sync::watch;

#[path = "common/netagent.rs"]
mod netagent;
use netagent::{KernelLinks, NetagentPreparer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged"]
async fn allocate_prepares_real_spokes_and_hands_out_the_tap_device() {
    let host = TestNs::new("dph").unwrap();
    host.sh(
        "ip link add eth1 type veth peer name eth1p && ip link set eth1 up && ip link set eth1p up",
    )
    .unwrap();
    let dir = TestDir::new("dp").unwrap();
    let kernel = RtnlKernel::new(HostNs::Path(host.path()), dir.path().join("netns")).unwrap();
    let dp = Arc::new(Datapath::new(kernel, dir.path().join("dev")));

    let kubelet_dir = dir.path().join("kubelet");
    let plugins = kubelet_dir.join("device-plugins");
    let kubelet = KubeletStandIn::start(&plugins).unwrap();
    let pr_socket = kubelet_dir.join("pod-resources/kubelet.sock");
    let pod_resources = FakePodResources::start(&pr_socket).unwrap();
    let claims = MemoryClaims::new();
    let (lans_tx, lans_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(plugin::serve(
        PluginConfig {
            node_name: "node-a".into(),
            uplink: None,
            device_plugin_dir: plugins.clone(),
            pod_resources_socket: pr_socket,
            prepared_dir: dir.path().join("prepared"),
            poll_interval: Duration::from_millis(200),
            release_grace: Duration::from_secs(30),
            claim_timeout: PluginConfig::DEFAULT_CLAIM_TIMEOUT,
        },
        Backends {
            preparer: Arc::new(NetagentPreparer {
                dp: dp.clone(),
                node: "node-a".into(),
            }),
            claims: claims.clone(),
            reports: Arc::new(MemoryReports::default()),
            links: Arc::new(KernelLinks(dp.clone())),
            pods: Arc::new(k8slan_deviceplugin::testing::MemoryPods::default()),
        },
        Sources {
            lans: lans_rx,
            claims: claims.subscribe(),
        },
        async move {
            let _ = stop_rx.await;
        },
    ));

    let (pod_spoke, vm_spoke) = (unique_name("p"), unique_name("v"));
    let netns = unique_name("lan");
    let l = lan("default", "lan1", &netns, &[&pod_spoke, &vm_spoke], "eth1");
    lans_tx.send_replace(Some(k8slan_deviceplugin::lan::snapshot([&l])));
    let veth_res = format!("macvtap.k8slan.io/k8slan-veth-{pod_spoke}");
    let mac_res = format!("macvtap.k8slan.io/k8slan-mac-{vm_spoke}");
    assert!(
        kubelet
            .wait_until(Duration::from_secs(10), |m| m.len() == 4
                && m.values().all(|r| r.allocatable() == 1))
            .await
    );

    // A pod spoke: the host end waits in the node's host namespace, its peer is a bridge port.
    let resp = kubelet.allocate(&veth_res, &[&pod_spoke]).await.unwrap();
    assert!(resp.container_responses[0].devices.is_empty());
    host.sh(&format!("ip link show {pod_spoke}")).unwrap();
    let lan_ns = dir.path().join("netns").join(&netns);
    let ports = std::process::Command::new("nsenter")
        .arg(format!("--net={}", lan_ns.display()))
        .args(["ip", "-o", "link", "show", "master", "br0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&ports.stdout).contains(&pod_spoke));

    // A VM spoke: a macvtap and its tap node, handed to the kubelet.
    let mac_id = macvtap_name(&vm_spoke);
    let resp = kubelet.allocate(&mac_res, &[&mac_id]).await.unwrap();
    let dev = &resp.container_responses[0].devices[0];
    let meta = std::fs::metadata(&dev.host_path).unwrap();
    assert!(
        meta.file_type().is_char_device(),
        "{} is a tap node",
        dev.host_path
    );
    // /sys here shows the test's own namespace, so ask ip inside the node.
    let line = host.sh(&format!("ip -o link show {mac_id}")).unwrap();
    let idx = line.split(':').next().unwrap().trim();
    assert_eq!(dev.container_path, format!("/dev/tap{idx}"));
    assert_eq!(dev.permissions, "rw");
    // The records name the real links the CNI may move, by name and index.
    let record = |spoke: &str| {
        let bytes = std::fs::read(dir.path().join("prepared").join(format!("{spoke}.json")));
        k8slan_api::prepared::PreparedSpoke::parse(&bytes.expect("record written")).unwrap()
    };
    let vm = record(&vm_spoke);
    assert_eq!(
        (vm.link.as_str(), vm.ifindex.to_string()),
        (mac_id.as_str(), idx.to_string())
    );
    assert_eq!(vm.netns, netns);
    let pod = record(&pod_spoke);
    let line = host.sh(&format!("ip -o link show {pod_spoke}")).unwrap();
    let pod_idx = line.split(':').next().unwrap().trim();
    assert_eq!(
        (pod.link.as_str(), pod.ifindex.to_string()),
        (pod_spoke.as_str(), pod_idx.to_string())
    );

    // Allocate again after the macvtap vanished (a VM pod gone, kubelet re-admits): recreated.
    host.sh(&format!("ip link del {mac_id}")).unwrap();
    kubelet.allocate(&mac_res, &[&mac_id]).await.unwrap();
    host.sh(&format!("ip link show {mac_id}")).unwrap();

    // The pod member is listed, then goes away: the spoke is released on the host side.
    pod_resources.set(&[("default/pod", &veth_res, &pod_spoke)]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    pod_resources.set(&[]);
    assert!(
        eventually(10, || host
            .sh(&format!("ip link show {pod_spoke}"))
            .is_err())
        .await,
        "released spoke's host end removed"
    );
    assert!(claims.get(&pod_spoke).is_none());
    let gone = dir
        .path()
        .join("prepared")
        .join(format!("{pod_spoke}.json"));
    assert!(
        eventually(5, || !gone.exists()).await,
        "the released spoke's record is removed"
    );

    // The VM spoke turns out to be held by a pod of a namespace the LAN does not admit: its
    // macvtap (whose tap the container got at Allocate) and record go, on the real kernel.
    pod_resources.set(&[("intruder/vm", &mac_res, &mac_id)]);
    assert!(
        eventually(10, || host.sh(&format!("ip link show {mac_id}")).is_err()).await,
        "the foreign pod's macvtap is removed"
    );
    let vm_record = dir.path().join("prepared").join(format!("{vm_spoke}.json"));
    assert!(
        eventually(5, || !vm_record.exists()).await,
        "and its record"
    );
    let err = kubelet.allocate(&mac_res, &[&mac_id]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    // Tear the LAN down so the test leaves nothing behind.
    let spec = l.spec.clone();
    tokio::task::spawn_blocking(move || dp.lan_down(&spec).map_err(Box::new))
        .await
        .unwrap()
        .unwrap();
}

/// Whether `done` holds within `seconds` (asked every 50 ms, and once more at the end).
async fn eventually(seconds: u64, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}
