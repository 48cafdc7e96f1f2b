//! Datapath benchmark (root): time per `spoke up` over 1,000 spokes on one simulated node;
//! pod-to-pod throughput over a multicast and over a unicast LAN built by k8slan, each against
//! the same topology built with plain `ip` and `bridge` commands in the same run; the cost of
//! flooding to 1, 10 and 100 unicast peers; `set_peers` latency; and how many multicast LANs a
//! node holds before the kernel refuses a membership. `make bench-datapath` runs it; figures go
//! to docs/benchmarks.md. `K8SLAN_BENCH_PARTS` (comma-separated: spokes, throughput, unicast,
//! flood, peers, multicast) picks parts.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "datapath/measure.rs"]
mod measure;
#[path = "datapath/multicast.rs"]
mod multicast;
#[path = "datapath/unicast.rs"]
mod unicast;

use std::time::Instant;

use common::*;
use k8slan_api::SpokeKind;
use k8slan_testkit::TestNs;
use measure::{iperf, report};

fn spoke_up_timing(count: usize) {
    let ul = Underlay::new();
    let node = Node::new(&ul, "node1", 1500);
    let names: Vec<String> = (0..count).map(|i| format!("s{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let spec = lan_spec(1000, &refs);
    let t = Instant::now();
    node.dp.lan_up(&spec, &node.name).unwrap();
    println!("lan up (fresh): {:.3} ms", t.elapsed().as_secs_f64() * 1e3);

    let mut first = Vec::with_capacity(count);
    for s in &names {
        let t = Instant::now();
        node.spoke_up(&spec, s, SpokeKind::Veth);
        first.push(t.elapsed());
    }
    report(
        &format!("spoke up (veth, create, {count} spokes on one node)"),
        first,
    );

    let mut again = Vec::with_capacity(count);
    for s in &names {
        let t = Instant::now();
        node.spoke_up(&spec, s, SpokeKind::Veth);
        again.push(t.elapsed());
    }
    report("spoke up (veth, already correct: no-op)", again);

    let mut mac = Vec::new();
    for s in names.iter().take(100) {
        let t = Instant::now();
        node.spoke_up(&spec, s, SpokeKind::Mac);
        mac.push(t.elapsed());
    }
    report(
        "spoke up (veth -> mac: macvtap + tap node, 100 spokes)",
        mac,
    );

    let t = Instant::now();
    node.dp.lan_up(&spec, &node.name).unwrap();
    println!(
        "lan up (no-op, {count} ports): {:.3} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    node.dp.lan_down(&spec).unwrap();
    println!(
        "lan down ({count} spokes): {:.3} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
}

fn throughput(secs: u32, rounds: u32) {
    let ul = Underlay::new();
    let n1 = Node::new(&ul, "node1", 1500);
    let n2 = Node::new(&ul, "node2", 1500);

    // k8slan.
    let (a, b) = (spoke("a"), spoke("b"));
    let spec = lan_spec(2000, &[&a, &b]);
    n1.spoke_up(&spec, &a, SpokeKind::Veth);
    n2.spoke_up(&spec, &b, SpokeKind::Veth);
    let p1 = pod_with(&n1, &a, "198.18.20.1/24");
    let p2 = pod_with(&n2, &b, "198.18.20.2/24");
    p1.sh("ping -c 1 -W 2 198.18.20.2").unwrap();

    // The same topology with plain ip commands (VNI 2001): LAN namespace, bridge, vxlan, veth.
    let mut plain = Vec::new();
    for (i, n) in [&n1, &n2].into_iter().enumerate() {
        let lan = TestNs::new("pl").unwrap();
        let port = spoke("p");
        n.sh(&format!(
            "ip link add vxp type vxlan id 2001 dev {UNDERLAY} group ff02::14 dstport 4789 && \
             ip link set vxp netns {lan} && \
             ip link add {port} mtu 1430 type veth peer name {port} mtu 1430 netns {lan}",
            lan = lan.name()
        ));
        lan.sh(&format!(
            "ip link add brp mtu 1430 type bridge mcast_snooping 0 && ip link set vxp mtu 1430 master brp up && \
             ip link set {port} master brp up && ip link set brp up"
        ))
        .unwrap();
        let pod = pod_with(n, &port, &format!("198.18.21.{}/24", i + 1));
        plain.push((lan, pod));
    }
    plain[0].1.sh("ping -c 1 -W 2 198.18.21.2").unwrap();

    // Interleaved rounds, so that load from elsewhere on the machine hits both alike.
    for round in 1..=rounds {
        let k = iperf(&p2, &p1, "198.18.20.2", secs);
        let p = iperf(&plain[1].1, &plain[0].1, "198.18.21.2", secs);
        println!(
            "throughput pod->pod over the LAN, iperf3 TCP {secs}s, round {round}: k8slan {k:.2} Gbit/s, plain ip {p:.2} Gbit/s"
        );
    }
    n1.dp.lan_down(&spec).unwrap();
    n2.dp.lan_down(&spec).unwrap();
}

/// A number from the environment, or the default.
fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if !nix_is_root() {
        eprintln!("bench datapath: needs root (network namespaces); skipped");
        return;
    }
    let parts = std::env::var("K8SLAN_BENCH_PARTS")
        .unwrap_or_else(|_| "spokes,throughput,unicast,flood,peers,multicast".into());
    let part = |p: &str| parts.split(',').any(|x| x.trim() == p);
    let secs = setting("K8SLAN_BENCH_SECS", 5) as u32;
    if part("spokes") {
        spoke_up_timing(setting("K8SLAN_BENCH_SPOKES", 1000));
    }
    if part("throughput") {
        throughput(secs, 3);
    }
    if part("unicast") {
        unicast::throughput(secs, 5);
    }
    if part("flood") {
        unicast::flood_cost(&[1, 10, 100], setting("K8SLAN_BENCH_FRAMES", 500));
    }
    if part("peers") {
        unicast::peer_changes(100);
    }
    if part("multicast") {
        multicast::limits(setting("K8SLAN_BENCH_MCAST_CAP", 4000), 500);
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
