//! Privileged test (real kernel, two simulated nodes): `spec.bridge` and `spec.vxlan` of a live
//! LAN renamed. Members keep their interfaces and regain traffic at once; the loss while the
//! links are replaced is printed. Run as root: `cargo test -p k8slan-netagent -- --ignored`.

mod common;

use std::time::Duration;

use common::*;
use k8slan_api::SpokeKind;
use k8slan_testkit::TestNs;

/// Inode of a LAN namespace file (changes if the namespace is recreated).
fn ns_inode(node: &Node, lan: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(node.dir.path().join("netns").join(lan))
        .unwrap()
        .ino()
}

fn ifindex(pod: &TestNs) -> String {
    pod.sh("cat /sys/class/net/e1/ifindex").unwrap()
}

/// Ping at 10 ms intervals for `count` packets; returns (sent, received).
fn ping_stream(from: &TestNs, to: &str, count: u32) -> (u32, u32) {
    let out = from
        .sh_output(&format!("ping -n -q -c {count} -i 0.01 -W 1 {to}"))
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {text}"));
    let num = |i: usize| -> u32 {
        line.split(',')
            .nth(i)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (num(0), num(1))
}

/// The LAN namespace's bridges and VXLANs by name.
fn lan_links(node: &Node, lan: &str, kind: &str) -> Vec<String> {
    node.lan_sh(
        lan,
        &format!("ip -o link show type {kind} | awk -F': ' '{{print $2}}' | cut -d@ -f1"),
    )
    .lines()
    .map(str::to_string)
    .collect()
}

#[test]
#[ignore = "privileged"]
fn renaming_bridge_and_vxlan_of_a_live_lan_keeps_its_members() {
    let (_ul, n1, n2) = two_nodes();
    let (a, c, b, w) = (spoke("a"), spoke("c"), spoke("b"), spoke("w"));
    let mut spec = lan_spec(4343, &[&a, &c, &b, &w]);
    for (n, s) in [(&n1, &a), (&n1, &c), (&n2, &b)] {
        n.spoke_up(&spec, s, SpokeKind::Veth);
    }
    let p1 = pod_with(&n1, &a, "198.18.11.1/24");
    let p3 = pod_with(&n1, &c, "198.18.11.3/24");
    let p2 = pod_with(&n2, &b, "198.18.11.2/24");
    assert!(ping(&p2, "198.18.11.1") && ping(&p3, "198.18.11.1"));
    let pods = [ifindex(&p1), ifindex(&p2), ifindex(&p3)];
    let inodes = (ns_inode(&n1, &spec.ns), ns_inode(&n2, &spec.ns));

    spec.bridge = "brlive".into();
    spec.vxlan = "vxlive".into();
    let (remote, local) = std::thread::scope(|s| {
        // 3 s of pings across the VXLAN (node2 -> node1) and across node1's bridge.
        let remote = s.spawn(|| ping_stream(&p2, "198.18.11.1", 300));
        let local = s.spawn(|| ping_stream(&p3, "198.18.11.1", 300));
        std::thread::sleep(Duration::from_millis(500));
        // Node 1 through the reconciler's path, node 2 through an Allocate of another spoke.
        let st = n1.dp.lan_up(&spec, &n1.name).unwrap();
        eprintln!("node1 lan up: {:?}", st.changes);
        let att = n2.spoke_up(&spec, &w, SpokeKind::Veth);
        eprintln!("node2 spoke up: {:?}", att.changes);
        (remote.join().unwrap(), local.join().unwrap())
    });
    println!(
        "live rename of bridge and vxlan on both nodes: across the VXLAN {} of {} pings lost \
         (~{} ms at 10 ms intervals), across the bridge {} of {} lost",
        remote.0 - remote.1,
        remote.0,
        (remote.0 - remote.1) * 10,
        local.0 - local.1,
        local.0
    );
    assert!(
        ping(&p2, "198.18.11.1"),
        "no traffic across the VXLAN after the rename"
    );
    assert!(
        ping(&p3, "198.18.11.1"),
        "no traffic across the bridge after the rename"
    );
    // Most of the stream arrived: the LAN was replaced in place, not rebuilt.
    assert!(
        remote.1 >= remote.0 / 2 && local.1 >= local.0 / 2,
        "{remote:?} {local:?}"
    );
    // Same namespaces, same member interfaces; only the new bridge and VXLAN remain.
    assert_eq!((ns_inode(&n1, &spec.ns), ns_inode(&n2, &spec.ns)), inodes);
    assert_eq!([ifindex(&p1), ifindex(&p2), ifindex(&p3)], pods);
    for n in [&n1, &n2] {
        assert_eq!(lan_links(n, &spec.ns, "bridge"), vec!["brlive"]);
        assert_eq!(lan_links(n, &spec.ns, "vxlan"), vec!["vxlive"]);
        let ports = n.lan_sh(&spec.ns, "ip -o link show master brlive");
        assert!(ports.contains("vxlive"), "{ports}");
    }
    // Converged: a second run on each node changes nothing.
    assert!(n1.dp.lan_up(&spec, &n1.name).unwrap().changes.is_empty());
    assert!(n2.dp.lan_up(&spec, &n2.name).unwrap().changes.is_empty());
    n1.dp.lan_down(&spec).unwrap();
    n2.dp.lan_down(&spec).unwrap();
}
