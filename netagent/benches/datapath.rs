//! Datapath benchmark (root): time per `spoke up` over 1,000 spokes on one simulated node, and
//! pod-to-pod throughput over a LAN built by k8slan against the same topology built with plain
//! `ip` commands, in the same run. `make bench-datapath` runs it; figures go to docs/benchmarks.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use k8slan_api::SpokeKind;
use k8slan_testkit::TestNs;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what}: n={} median={:.3} ms p99={:.3} ms max={:.3} ms",
        samples.len(),
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3,
    );
}

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

/// iperf3 from `client` to `server_addr` (served in `server`) for `secs`; Gbit/s received.
fn iperf(server: &TestNs, client: &TestNs, server_addr: &str, secs: u32) -> f64 {
    let mut srv = Command::new("ip")
        .args([
            "netns",
            "exec",
            server.name(),
            "iperf3",
            "-s",
            "-1",
            "-B",
            server_addr,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let out = client
        .sh(&format!("iperf3 -c {server_addr} -t {secs} -J"))
        .unwrap();
    let _ = srv.wait();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
        / 1e9
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

fn main() {
    if !nix_is_root() {
        eprintln!("bench datapath: needs root (network namespaces); skipped");
        return;
    }
    let count = std::env::var("K8SLAN_BENCH_SPOKES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let secs = std::env::var("K8SLAN_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    spoke_up_timing(count);
    throughput(secs, 3);
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
