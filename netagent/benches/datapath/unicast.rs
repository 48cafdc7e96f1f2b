//! Unicast LANs (head-end replication over an IPv4 underlay): pod→pod throughput against the
//! same topology hand-built with `ip` and `bridge`, the cost of flooding one frame to 1, 10 and
//! 100 peers, and how long `set_peers` takes to add or remove one peer.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8slan_api::{LanSpec, SpokeKind, VxlanFamily, VxlanMode};
use k8slan_testkit::TestNs;
use k8slan_testkit::frame::{Filter, Frame, Mac, PacketSocket};

use crate::common::*;
use crate::measure::{iperf, median, report};

/// A unicast IPv4 LAN of these spokes.
fn unicast(vni: u32, spokes: &[&str]) -> LanSpec {
    let mut s = lan_spec(vni, spokes);
    s.vxlan_mode = VxlanMode::Unicast;
    s.vxlan_family = VxlanFamily::Ipv4;
    s.vxlan_grp = None;
    s
}

/// A node on `ul` whose underlay has the address `addr` (CIDR).
fn node_at(ul: &Underlay, name: &str, addr: &str) -> Node {
    let n = Node::new(ul, name, 1500);
    n.sh(&format!("ip addr add {addr} dev {UNDERLAY}"));
    n
}

fn addrs(list: impl IntoIterator<Item = String>) -> BTreeSet<IpAddr> {
    list.into_iter().map(|a| a.parse().unwrap()).collect()
}

/// Two nodes, a k8slan unicast LAN between them and the same by hand (LAN namespace, bridge,
/// VXLAN with a local address, one all-zero FDB entry to the other node, veth; MTU 1450), iperf3
/// over both in interleaved rounds.
pub fn throughput(secs: u32, rounds: u32) {
    let ul = Underlay::new();
    let n1 = node_at(&ul, "node1", "198.18.70.1/24");
    let n2 = node_at(&ul, "node2", "198.18.70.2/24");

    let (a, b) = (spoke("a"), spoke("b"));
    let spec = unicast(2100, &[&a, &b]);
    n1.spoke_up(&spec, &a, SpokeKind::Veth);
    n2.spoke_up(&spec, &b, SpokeKind::Veth);
    n1.dp
        .set_peers(&spec, &addrs(["198.18.70.2".into()]))
        .unwrap();
    n2.dp
        .set_peers(&spec, &addrs(["198.18.70.1".into()]))
        .unwrap();
    let p1 = pod_with(&n1, &a, "198.18.72.1/24");
    let p2 = pod_with(&n2, &b, "198.18.72.2/24");
    p1.sh("ping -c 1 -W 2 198.18.72.2").unwrap();

    let mut plain = Vec::new();
    for (i, n) in [&n1, &n2].into_iter().enumerate() {
        let (me, other) = (i + 1, 2 - i);
        let lan = TestNs::new("pl").unwrap();
        let port = spoke("p");
        n.sh(&format!(
            "ip link add vxp type vxlan id 2101 dev {UNDERLAY} local 198.18.70.{me} dstport 4789 && \
             ip link set vxp netns {lan} && \
             ip link add {port} mtu 1450 type veth peer name {port} mtu 1450 netns {lan}",
            lan = lan.name()
        ));
        lan.sh(&format!(
            "ip link add brp mtu 1450 type bridge mcast_snooping 0 && ip link set vxp mtu 1450 master brp up && \
             ip link set {port} master brp up && ip link set brp up && \
             bridge fdb append 00:00:00:00:00:00 dev vxp dst 198.18.70.{other}"
        ))
        .unwrap();
        let pod = pod_with(n, &port, &format!("198.18.73.{me}/24"));
        plain.push((lan, pod));
    }
    plain[0].1.sh("ping -c 1 -W 2 198.18.73.2").unwrap();

    let (mut k_sum, mut p_sum) = (0.0, 0.0);
    for round in 1..=rounds {
        let k = iperf(&p2, &p1, "198.18.72.2", secs);
        let p = iperf(&plain[1].1, &plain[0].1, "198.18.73.2", secs);
        (k_sum, p_sum) = (k_sum + k, p_sum + p);
        println!(
            "unicast IPv4 LAN throughput pod->pod, iperf3 TCP {secs}s, round {round}: k8slan {k:.2} Gbit/s, plain ip/bridge {p:.2} Gbit/s"
        );
    }
    println!(
        "unicast IPv4 LAN throughput over {rounds} rounds: k8slan {:.2} Gbit/s, plain {:.2} Gbit/s, ratio {:.3}",
        k_sum / rounds as f64,
        p_sum / rounds as f64,
        k_sum / p_sum
    );
    n1.dp.lan_down(&spec).unwrap();
    n2.dp.lan_down(&spec).unwrap();
}

/// Copies of the frames from `src` that one pod receives, counted by a thread in the pod.
struct Counter<'a> {
    copies: &'a AtomicUsize,
    stop: &'a AtomicBool,
}

impl Counter<'_> {
    fn run(&self, pod: &TestNs, src: Mac, ready: std::sync::mpsc::Sender<()>) {
        pod.run(|| {
            let sock = PacketSocket::open("e1").unwrap();
            ready.send(()).unwrap();
            let filter = Filter {
                ethertype: Some(0x88b5),
                src: Some(src),
            };
            while !self.stop.load(Ordering::Relaxed) {
                if sock
                    .recv(&filter, Duration::from_millis(50))
                    .unwrap()
                    .is_some()
                {
                    self.copies.fetch_add(1, Ordering::Release);
                }
            }
        })
        .unwrap();
    }
}

/// Sends `frames` broadcasts from `from` one at a time, each once all `peers` copies of the
/// one before arrived at `to` (or 200 ms passed); returns the time from each send to its last copy and
/// the copies counted in all.
fn flood(
    from: &TestNs,
    to: &TestNs,
    peers: usize,
    frames: usize,
    tag: u8,
) -> (Vec<Duration>, usize) {
    let src = Mac([0x02, 0x6b, 0x66, 0x6c, 0x64, tag]);
    let frame = Frame {
        dst: "ff:ff:ff:ff:ff:ff".parse().unwrap(),
        src,
        ethertype: 0x88b5,
        payload: vec![0x5a; 64],
    };
    let (copies, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
    let counter = Counter {
        copies: &copies,
        stop: &stop,
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(move || counter.run(to, src, ready_tx));
        ready_rx.recv().unwrap();
        let samples = from
            .run(|| {
                let sock = PacketSocket::open("e1").unwrap();
                (0..frames)
                    .map(|_| {
                        let want = copies.load(Ordering::Acquire) + peers;
                        let t = Instant::now();
                        sock.send(&frame).unwrap();
                        while copies.load(Ordering::Acquire) < want
                            && t.elapsed() < Duration::from_millis(200)
                        {
                            std::hint::spin_loop();
                        }
                        t.elapsed()
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        (samples, copies.load(Ordering::Acquire))
    })
}

/// One sender node floods a broadcast to 1, 10 and 100 peers. The peers are addresses of one
/// sink node (its VXLAN receives every copy and hands it to a member pod, which counts them),
/// so the figure is the whole cost on this machine: replicate, encapsulate, cross the underlay,
/// decapsulate, deliver.
pub fn flood_cost(counts: &[usize], frames: usize) {
    let max = counts.iter().copied().max().unwrap_or(1);
    let ul = Underlay::new();
    let sender = node_at(&ul, "node1", "198.18.74.1/24");
    let sink = Node::new(&ul, "node2", 1500);
    let sink_addrs: Vec<String> = (0..max).map(|i| format!("198.18.74.{}", 10 + i)).collect();
    let batch: String = sink_addrs
        .iter()
        .map(|a| format!("address add {a}/24 dev {UNDERLAY}\n"))
        .collect();
    sink.sh(&format!("ip -batch - <<'EOF'\n{batch}EOF"));

    let (a, b) = (spoke("fa"), spoke("fb"));
    let spec = unicast(2200, &[&a, &b]);
    sender.spoke_up(&spec, &a, SpokeKind::Veth);
    sink.spoke_up(&spec, &b, SpokeKind::Veth);
    let from = pod_with(&sender, &a, "198.18.75.1/24");
    let to = pod_with(&sink, &b, "198.18.75.2/24");
    for (tag, &n) in counts.iter().enumerate() {
        let peers = addrs(sink_addrs[..n].iter().cloned());
        sender.dp.set_peers(&spec, &peers).unwrap();
        // Resolve the peers' neighbour entries first.
        flood(&from, &to, n, 3, 0xf0 + tag as u8);
        std::thread::sleep(Duration::from_millis(300));
        let (samples, copies) = flood(&from, &to, n, frames, tag as u8);
        let per_copy = median(samples.clone()).as_secs_f64() * 1e6 / n as f64;
        report(
            &format!("flood one broadcast to {n} peers (send to last copy delivered)"),
            samples,
        );
        println!(
            "flood to {n} peers: {copies} copies delivered of {} sent ({:.1} us per copy at the median)",
            n * frames,
            per_copy
        );
    }
    drop((from, to));
    sender.dp.lan_down(&spec).unwrap();
    sink.dp.lan_down(&spec).unwrap();
}

/// `set_peers` adding peers one at a time up to `count`, then removing them one at a time, then
/// all `count` at once and none at once.
pub fn peer_changes(count: usize) {
    let ul = Underlay::new();
    let n1 = node_at(&ul, "node1", "198.18.76.1/24");
    let spec = unicast(2300, &[&spoke("pa")]);
    n1.dp.lan_up(&spec, &n1.name).unwrap();
    let first = |k: usize| addrs((0..k).map(|i| format!("198.18.76.{}", 10 + i)));
    let timed = |peers: &BTreeSet<IpAddr>| {
        let t = Instant::now();
        n1.dp.set_peers(&spec, peers).unwrap();
        t.elapsed()
    };
    let add: Vec<Duration> = (1..=count).map(|k| timed(&first(k))).collect();
    report(&format!("set_peers: add one peer (0 -> {count})"), add);
    let remove: Vec<Duration> = (0..count).rev().map(|k| timed(&first(k))).collect();
    report(
        &format!("set_peers: remove one peer ({count} -> 0)"),
        remove,
    );
    let all = timed(&first(count));
    let none = timed(&first(0));
    println!(
        "set_peers: 0 -> {count} peers at once {:.3} ms, {count} -> 0 at once {:.3} ms",
        all.as_secs_f64() * 1e3,
        none.as_secs_f64() * 1e3
    );
    n1.dp.lan_down(&spec).unwrap();
}
