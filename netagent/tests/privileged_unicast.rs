//! Privileged tests of unicast VXLAN: the kernel primitives (addresses, flood entries) on the
//! real kernel, and unicast LANs between simulated nodes over IPv6 link-local, IPv6 ULA and
//! IPv4 underlays. Run as root: `cargo test -p k8slan-netagent -- --ignored`.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use k8slan_api::{LanSpec, SpokeKind, VxlanFamily, VxlanMode};
use k8slan_netagent::{Kernel, Ns};
use k8slan_testkit::TestNs;
use k8slan_testkit::frame::{Filter, Frame, Mac, PacketSocket};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn set(v: Vec<IpAddr>) -> BTreeSet<IpAddr> {
    v.into_iter().collect()
}

/// The ifindex of the node's underlay in its host namespace.
fn underlay_ifindex(node: &Node) -> u32 {
    node.dp
        .kernel()
        .link(&Ns::Host, UNDERLAY)
        .unwrap()
        .unwrap()
        .ifindex
}

#[test]
#[ignore = "privileged"]
fn addresses_lists_the_underlay_addresses_of_both_families() {
    let (_ul, n1) = one_node();
    n1.sh(&format!(
        "ip addr add 198.18.30.1/24 dev {UNDERLAY} && ip addr add fd00:30::1/64 dev {UNDERLAY}"
    ));
    let link_local = n1.sh(&format!(
        "ip -6 -o addr show dev {UNDERLAY} scope link | awk '{{print $4}}'"
    ));
    let found = n1
        .dp
        .kernel()
        .addresses(&Ns::Host, underlay_ifindex(&n1))
        .unwrap();
    let got: BTreeSet<String> = found
        .iter()
        .map(|a| format!("{}/{}", a.addr, a.prefix_len))
        .collect();
    let want: BTreeSet<String> = ["198.18.30.1/24", "fd00:30::1/64", link_local.trim()]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(got, want);
    // `lo`'s addresses are not the underlay's.
    let lo = n1.dp.kernel().addresses(&Ns::Host, 1).unwrap();
    assert!(lo.iter().all(|a| a.addr.is_loopback()), "{lo:?}");
}

#[test]
#[ignore = "privileged"]
fn flood_entries_are_appended_listed_and_removed_one_by_one() {
    let (_ul, n1) = one_node();
    let spec = lan_spec(4311, &[&spoke("a")]);
    n1.dp.lan_up(&spec, &n1.name).unwrap();
    let k = n1.dp.kernel();
    let ns = Ns::Lan(spec.ns.clone());
    // The multicast group is the VXLAN's default flood entry.
    assert_eq!(k.flood_entries(&ns, "vx0").unwrap(), vec![ip("ff02::14")]);

    for dst in ["fe80::1", "fd00:31::2", "fe80::1"] {
        k.add_flood_entry(&ns, "vx0", ip(dst)).unwrap();
    }
    let want = set(vec![ip("ff02::14"), ip("fe80::1"), ip("fd00:31::2")]);
    assert_eq!(set(k.flood_entries(&ns, "vx0").unwrap()), want);
    // What `bridge fdb` shows agrees.
    let fdb = n1.lan_sh(&spec.ns, "bridge fdb show dev vx0");
    for dst in &want {
        assert!(
            fdb.lines()
                .any(|l| l.starts_with("00:00:00:00:00:00") && l.contains(&format!("dst {dst} "))),
            "{dst} missing from:\n{fdb}"
        );
    }

    k.remove_flood_entry(&ns, "vx0", ip("fe80::1")).unwrap();
    // Absent already: fine.
    k.remove_flood_entry(&ns, "vx0", ip("fe80::1")).unwrap();
    assert_eq!(
        set(k.flood_entries(&ns, "vx0").unwrap()),
        set(vec![ip("ff02::14"), ip("fd00:31::2")])
    );

    // The kernel refuses an IPv4 destination on an IPv6 VXLAN.
    let e = k
        .add_flood_entry(&ns, "vx0", ip("198.18.31.2"))
        .unwrap_err();
    assert_eq!(e.errno, Some(libc::EAFNOSUPPORT), "{e}");
    assert!(e.to_string().contains("vx0"), "{e}");
    n1.dp.lan_down(&spec).unwrap();
}

/// The nftables ruleset of [`unicast_only_underlay`].
const DROP_MULTICAST: &str = "table bridge k8slan_test {
  chain mcast {
    type filter hook forward priority 0; policy accept;
    ip daddr 224.0.0.0/4 drop
    ip6 daddr ff00::/8 meta l4proto != ipv6-icmp drop
    ip6 daddr ff00::/8 icmpv6 type != { 133, 134, 135, 136, 137 } drop
  }
}";

/// An underlay on which the bridge drops IP multicast (IPv6 neighbour discovery, ICMPv6 types
/// 133-137, excepted): a LAN over it works by unicast or not at all.
fn unicast_only_underlay() -> Underlay {
    let ul = Underlay::new();
    drop_multicast(&ul);
    ul
}

/// From now on the underlay bridge drops IP multicast.
fn drop_multicast(ul: &Underlay) {
    ul.ns
        .sh(&format!("nft -f - <<'EOF'\n{DROP_MULTICAST}\nEOF"))
        .unwrap();
}

/// `count` nodes `node1`.. on `ul`; `address` gives node i (from 1) its underlay address
/// (CIDR), or none (link-local only).
fn nodes(ul: &Underlay, count: usize, address: impl Fn(usize) -> Option<String>) -> Vec<Node> {
    (1..=count)
        .map(|i| {
            let n = Node::new(ul, &format!("node{i}"), 1500);
            if let Some(a) = address(i) {
                n.sh(&format!("ip addr add {a} dev {UNDERLAY} nodad"));
            }
            n
        })
        .collect()
}

fn unicast_spec(vni: u32, spokes: &[&str], family: VxlanFamily) -> LanSpec {
    let mut s = lan_spec(vni, spokes);
    s.vxlan_mode = VxlanMode::Unicast;
    s.vxlan_family = family;
    s.vxlan_grp = None;
    s
}

/// One spoke per node with a pod on it addressed 198.18.<subnet>.<i>/24; returns the pods.
fn pods(spec: &LanSpec, nodes: &[Node], subnet: u8) -> Vec<TestNs> {
    nodes
        .iter()
        .zip(&spec.spokes)
        .enumerate()
        .map(|(i, (n, sp))| {
            n.spoke_up(spec, sp, SpokeKind::Veth);
            pod_with(n, sp, &format!("198.18.{subnet}.{}/24", i + 1))
        })
        .collect()
}

/// The underlay address each node uses for the LAN.
fn addresses(spec: &LanSpec, nodes: &[Node]) -> Vec<IpAddr> {
    nodes
        .iter()
        .map(|n| n.dp.underlay_address(spec, &n.name).unwrap().unwrap())
        .collect()
}

/// Node `i` floods to the underlay addresses of the nodes `to` (indexes into `nodes`).
fn set_peers(spec: &LanSpec, nodes: &[Node], i: usize, to: &[usize]) {
    let all = addresses(spec, nodes);
    let peers: BTreeSet<IpAddr> = to.iter().map(|j| all[*j]).collect();
    nodes[i].dp.set_peers(spec, &peers).unwrap();
}

/// Every node floods to every other.
fn full_mesh(spec: &LanSpec, nodes: &[Node]) {
    for i in 0..nodes.len() {
        let others: Vec<usize> = (0..nodes.len()).filter(|j| *j != i).collect();
        set_peers(spec, nodes, i, &others);
    }
}

/// How many copies of one broadcast frame sent from `from` each of `to` receives (on `e1`).
fn broadcast_copies(from: &TestNs, to: &[&TestNs], tag: u8) -> Vec<usize> {
    let src = Mac([0x02, 0x6b, 0x75, 0x6e, 0x69, tag]);
    let frame = Frame {
        dst: "ff:ff:ff:ff:ff:ff".parse().unwrap(),
        src,
        ethertype: 0x88b5,
        payload: b"once".to_vec(),
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::scope(|s| {
        let counters: Vec<_> = to
            .iter()
            .map(|pod| {
                let ready = ready_tx.clone();
                s.spawn(move || {
                    pod.run(|| {
                        let sock = PacketSocket::open("e1").unwrap();
                        ready.send(()).unwrap();
                        let filter = Filter {
                            ethertype: Some(0x88b5),
                            src: Some(src),
                        };
                        let mut copies = 0;
                        while sock
                            .recv(&filter, Duration::from_millis(1500))
                            .unwrap()
                            .is_some()
                        {
                            copies += 1;
                        }
                        copies
                    })
                    .unwrap()
                })
            })
            .collect();
        for _ in to {
            ready_rx.recv().unwrap();
        }
        from.run(|| PacketSocket::open("e1").unwrap().send(&frame).unwrap())
            .unwrap();
        counters.into_iter().map(|c| c.join().unwrap()).collect()
    })
}

fn lan_down(spec: &LanSpec, nodes: &[Node]) {
    for n in nodes {
        n.dp.lan_down(spec).unwrap();
    }
}

#[test]
#[ignore = "privileged"]
fn unicast_lan_over_link_local_underlays_floods_each_frame_once_to_every_peer() {
    let ul = unicast_only_underlay();
    let ns = nodes(&ul, 3, |_| None);
    let (a, b, c) = (spoke("a"), spoke("b"), spoke("c"));

    // The control: a multicast LAN does not work over this underlay.
    let multicast = lan_spec(4320, &[&a, &b, &c]);
    let mp = pods(&multicast, &ns[..2], 60);
    assert!(
        !ping(&mp[0], "198.18.60.2"),
        "multicast crossed an underlay that drops it: the test proves nothing"
    );
    drop(mp);
    lan_down(&multicast, &ns[..2]);

    let spec = unicast_spec(4321, &[&a, &b, &c], VxlanFamily::Ipv6);
    let p = pods(&spec, &ns, 61);
    let addrs = addresses(&spec, &ns);
    assert!(
        addrs
            .iter()
            .all(|a| matches!(a, IpAddr::V6(v) if v.is_unicast_link_local())),
        "{addrs:?}"
    );
    // No peers yet: nothing floods.
    assert_eq!(broadcast_copies(&p[0], &[&p[1], &p[2]], 1), vec![0, 0]);
    full_mesh(&spec, &ns);
    assert!(ping(&p[0], "198.18.61.2"), "node1 to node2");
    assert!(ping(&p[0], "198.18.61.3"), "node1 to node3");
    assert!(ping(&p[1], "198.18.61.3"), "node2 to node3");
    assert_eq!(
        broadcast_copies(&p[0], &[&p[1], &p[2]], 2),
        vec![1, 1],
        "a broadcast from node1 must reach each other member exactly once"
    );
    // The VXLAN sends from the link-local address, on the underlay; show lists the peers.
    let vx = ns[0].lan_sh(&spec.ns, "ip -d link show vx0");
    assert!(vx.contains(&format!("local {} ", addrs[0])), "{vx}");
    let view = ns[0].dp.show().unwrap();
    let shown: BTreeSet<IpAddr> = view[0].peers.iter().copied().collect();
    assert_eq!(shown, BTreeSet::from([addrs[1], addrs[2]]));
    drop(p);
    lan_down(&spec, &ns);
}

/// The node also has another interface with a link-local route, ahead of the underlay's (as a
/// real node's eth0 is): a link-local flood entry must still leave through the underlay.
fn with_another_link_local_interface(n: &Node) {
    n.sh(&format!(
        "ip link add mgmt0 type veth peer name mgmt0p && ip link set mgmt0p up && ip link set mgmt0 up \
         && sleep 2 && ip link set {UNDERLAY} down && ip link set {UNDERLAY} up && sleep 2"
    ));
}

#[test]
#[ignore = "privileged"]
fn link_local_peers_leave_through_the_underlay_when_another_interface_is_first() {
    let ul = unicast_only_underlay();
    let ns = nodes(&ul, 2, |_| None);
    for n in &ns {
        with_another_link_local_interface(n);
        let routes = n.sh("ip -6 route show fe80::/64");
        assert!(
            routes.trim_start().starts_with("fe80::/64 dev mgmt0"),
            "{routes}"
        );
    }
    let (a, b) = (spoke("a"), spoke("b"));
    let spec = unicast_spec(4330, &[&a, &b], VxlanFamily::Ipv6);
    let p = pods(&spec, &ns, 63);
    full_mesh(&spec, &ns);
    assert!(
        ping(&p[0], "198.18.63.2"),
        "node1 to node2 over link-local peers"
    );
    assert!(ping(&p[1], "198.18.63.1"), "node2 to node1");
    let fdb = ns[0].lan_sh(&spec.ns, "bridge fdb show dev vx0");
    let via = format!("via ifindex {}", underlay_ifindex(&ns[0]));
    assert!(
        fdb.contains(&via),
        "the flood entry names the underlay: {fdb}"
    );
    drop(p);
    lan_down(&spec, &ns);
}

#[test]
#[ignore = "privileged"]
fn unicast_lan_over_unique_local_underlays() {
    let ul = unicast_only_underlay();
    let ns = nodes(&ul, 2, |i| Some(format!("fd00:62::{i}/64")));
    let (a, b) = (spoke("a"), spoke("b"));
    let spec = unicast_spec(4322, &[&a, &b], VxlanFamily::Ipv6);
    let p = pods(&spec, &ns, 62);
    // The unique-local address, not the link-local one.
    assert_eq!(
        addresses(&spec, &ns),
        vec![ip("fd00:62::1"), ip("fd00:62::2")]
    );
    full_mesh(&spec, &ns);
    assert!(
        ping(&p[0], "198.18.62.2"),
        "ping over the ULA underlay failed"
    );
    // 1430: the IPv6 overhead; full-size frames pass unfragmented.
    assert!(
        ping(&p[1], "-M do -s 1402 198.18.62.1"),
        "full-MTU ping failed"
    );
    assert!(!ping(&p[1], "-M do -s 1403 198.18.62.1"));
    drop(p);
    lan_down(&spec, &ns);
}

#[test]
#[ignore = "privileged"]
fn unicast_lan_over_ipv4_underlays_with_peers_joining_and_leaving() {
    let ul = unicast_only_underlay();
    let ns = nodes(&ul, 3, |i| Some(format!("198.18.63.{i}/24")));
    let (a, b, c) = (spoke("a"), spoke("b"), spoke("c"));
    let spec = unicast_spec(4323, &[&a, &b, &c], VxlanFamily::Ipv4);
    let p = pods(&spec, &ns, 64);
    assert_eq!(
        addresses(&spec, &ns),
        vec![ip("198.18.63.1"), ip("198.18.63.2"), ip("198.18.63.3")]
    );
    // IPv4's outer header is 20 bytes smaller: MTU 1450 on every link of the LAN.
    let links = ns[0].lan_sh(&spec.ns, "ip -o link");
    for name in ["br0", "vx0"] {
        let line = links
            .lines()
            .find(|l| l.contains(&format!(" {name}")))
            .unwrap();
        assert!(line.contains("mtu 1450"), "{line}");
    }

    // node1 and node2 know each other; node3 has joined no one yet.
    set_peers(&spec, &ns, 0, &[1]);
    set_peers(&spec, &ns, 1, &[0]);
    assert!(
        ping(&p[0], "-M do -s 1422 198.18.64.2"),
        "full-MTU ping failed"
    );
    assert!(!ping(&p[0], "-M do -s 1423 198.18.64.2"));
    assert_eq!(broadcast_copies(&p[0], &[&p[1], &p[2]], 2), vec![1, 0]);

    // node3 joins, live: everyone gets the new peer; node1 and node2 keep each other.
    full_mesh(&spec, &ns);
    assert!(ping(&p[2], "198.18.64.1"), "node3 to node1 after it joined");
    assert_eq!(broadcast_copies(&p[0], &[&p[1], &p[2]], 3), vec![1, 1]);

    // node2 leaves: node1 and node3 drop it and still reach each other.
    set_peers(&spec, &ns, 0, &[2]);
    set_peers(&spec, &ns, 2, &[0]);
    assert_eq!(broadcast_copies(&p[0], &[&p[1], &p[2]], 4), vec![0, 1]);
    assert!(
        ping(&p[2], "198.18.64.1"),
        "node3 to node1 after node2 left"
    );
    let fdb = ns[0].lan_sh(&spec.ns, "bridge fdb show dev vx0");
    let zero: Vec<&str> = fdb
        .lines()
        .filter(|l| l.starts_with("00:00:00:00:00:00"))
        .collect();
    assert_eq!(zero.len(), 1, "{fdb}");
    assert!(zero[0].contains("dst 198.18.63.3 "), "{fdb}");
    drop(p);
    lan_down(&spec, &ns);
}

#[test]
#[ignore = "privileged"]
fn multicast_lan_over_ipv4_underlays_uses_the_ipv4_group() {
    let ul = Underlay::new();
    let ns = nodes(&ul, 2, |i| Some(format!("198.18.65.{i}/24")));
    let (a, b) = (spoke("a"), spoke("b"));
    let mut spec = lan_spec(4324, &[&a, &b]);
    spec.vxlan_family = VxlanFamily::Ipv4;
    spec.vxlan_grp = None;
    let p = pods(&spec, &ns, 66);
    let vx = ns[0].lan_sh(&spec.ns, "ip -d link show vx0");
    assert!(vx.contains("group 239.1.20.20 "), "{vx}");
    assert!(vx.contains("mtu 1450 "), "{vx}");
    assert!(
        ping(&p[0], "-M do -s 1422 198.18.66.2"),
        "full-MTU ping failed"
    );
    assert!(ns[0].dp.show().unwrap()[0].peers.is_empty());
    drop(p);
    lan_down(&spec, &ns);
}

#[test]
#[ignore = "privileged"]
fn a_live_lan_switches_from_multicast_to_unicast_keeping_its_members() {
    let ul = Underlay::new();
    let ns = nodes(&ul, 2, |i| Some(format!("fd00:67::{i}/64")));
    let (a, b) = (spoke("a"), spoke("b"));
    let mut spec = lan_spec(4325, &[&a, &b]);
    let p = pods(&spec, &ns, 67);
    assert!(ping(&p[0], "198.18.67.2"), "multicast LAN");
    let ifindex = |link: &str| {
        let line = ns[0].lan_sh(&spec.ns, &format!("ip -o link show {link}"));
        line.split(':').next().unwrap().to_string()
    };
    let (port_before, bridge_before) = (ifindex(&a), ifindex("br0"));

    spec.vxlan_mode = VxlanMode::Unicast;
    spec.vxlan_grp = None;
    for n in &ns {
        let st = n.dp.lan_up(&spec, &n.name).unwrap();
        assert!(
            st.changes.iter().any(|c| c.contains("replace vx0")),
            "{:?}",
            st.changes
        );
    }
    full_mesh(&spec, &ns);
    let vx = ns[0].lan_sh(&spec.ns, "ip -d link show vx0");
    assert!(
        vx.contains("local fd00:67::1 ") && !vx.contains("group ff02"),
        "{vx}"
    );
    // Unicast alone carries it now: the underlay stops carrying multicast.
    drop_multicast(&ul);
    assert!(ping(&p[0], "198.18.67.2"), "unicast LAN after the switch");
    // The members kept their links: same bridge, same port.
    assert_eq!((ifindex(&a), ifindex("br0")), (port_before, bridge_before));
    drop(p);
    lan_down(&spec, &ns);
}
