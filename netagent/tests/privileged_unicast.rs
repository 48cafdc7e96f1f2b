//! Privileged tests of unicast VXLAN: the kernel primitives (addresses, flood entries) on the
//! real kernel, and unicast LANs between simulated nodes over IPv6 link-local, IPv6 ULA and
//! IPv4 underlays. Run as root: `cargo test -p k8slan-netagent -- --ignored`.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;

use common::*;
use k8slan_netagent::{Kernel, Ns};

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
