//! Unit tier: unicast VXLAN and IPv4 underlays against the recording fake kernel.

mod fake_env;

use std::collections::BTreeSet;
use std::net::IpAddr;

use fake_env::*;
use k8slan_api::{LanSpec, SpokeKind, VxlanFamily, VxlanMode};
use k8slan_netagent::fake::{Call, RecordingKernel};
use k8slan_netagent::kernel::{NewLink, VxlanParams};
use k8slan_netagent::{Datapath, DatapathError, LinkKind, PeerChanges};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn peers(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

fn unicast(ns: &str, vni: u32, family: VxlanFamily) -> LanSpec {
    let mut s = spec(ns, vni, &["srl", "vm"]);
    s.vxlan_mode = VxlanMode::Unicast;
    s.vxlan_family = family;
    s.vxlan_grp = None;
    s
}

/// A datapath whose `eth1` has a link-local, a unique-local and an IPv4 address, the
/// link-local one listed first.
fn addressed() -> Datapath<RecordingKernel> {
    let (dp, _) = datapath();
    for (a, len) in [("fe80::1", 64), ("fd00:1::1", 64), ("198.18.1.1", 24)] {
        dp.kernel().add_host_address("eth1", ip(a), len);
    }
    dp
}

fn vxlan_params(dp: &Datapath<RecordingKernel>, ns: &str) -> VxlanParams {
    match dp.kernel().peek(&lan(ns), "vx2").unwrap().kind {
        LinkKind::Vxlan(p) => p,
        other => panic!("{other:?}"),
    }
}

fn flood_calls(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::AddFloodEntry(_, _, d) => Some(format!("add {d}")),
            Call::RemoveFloodEntry(_, _, d) => Some(format!("remove {d}")),
            _ => None,
        })
        .collect()
}

#[test]
fn unicast_vxlan_sends_from_the_underlay_address_of_its_family() {
    let dp = addressed();
    let v6 = dp
        .lan_up(&unicast("six", 10, VxlanFamily::Ipv6), NODE)
        .unwrap();
    let v4 = dp
        .lan_up(&unicast("four", 11, VxlanFamily::Ipv4), NODE)
        .unwrap();
    // IPv6: the unique-local address wins over the link-local one listed before it.
    assert_eq!(v6.underlay_address, Some(ip("fd00:1::1")));
    let p = vxlan_params(&dp, "six");
    assert_eq!((p.group, p.local), (None, Some(ip("fd00:1::1"))));
    assert_eq!(v6.mtu, 1430);
    // IPv4: its own address, and 20 bytes less of outer header.
    assert_eq!(v4.underlay_address, Some(ip("198.18.1.1")));
    let p = vxlan_params(&dp, "four");
    assert_eq!((p.group, p.local), (None, Some(ip("198.18.1.1"))));
    assert_eq!(v4.mtu, 1450);
    assert_eq!(dp.kernel().peek(&lan("four"), "br2").unwrap().mtu, 1450);
    // No peer yet: a unicast VXLAN floods nowhere until set_peers.
    assert!(dp.kernel().peek_flood(&lan("six"), "vx2").is_empty());
    assert_eq!(
        dp.underlay_address(&unicast("six", 10, VxlanFamily::Ipv6), NODE)
            .unwrap(),
        Some(ip("fd00:1::1"))
    );
}

#[test]
fn a_link_local_only_underlay_gives_its_link_local_address() {
    let (dp, _) = datapath();
    dp.kernel().add_host_address("eth1", ip("fe80::7"), 64);
    let s = unicast("knlvrf", 222, VxlanFamily::Ipv6);
    let st = dp.lan_up(&s, NODE).unwrap();
    assert_eq!(st.underlay_address, Some(ip("fe80::7")));
    assert_eq!(
        vxlan_params(&dp, "knlvrf").underlay_ifindex,
        st.underlay_ifindex
    );
}

#[test]
fn unicast_without_an_address_of_the_family_fails_before_any_change() {
    let (dp, _) = datapath();
    dp.kernel().add_host_address("eth1", ip("fe80::7"), 64);
    let s = unicast("knlvrf", 222, VxlanFamily::Ipv4);
    assert_eq!(dp.underlay_address(&s, NODE).unwrap(), None);
    let e = dp.lan_up(&s, NODE).unwrap_err();
    assert!(
        matches!(&e, DatapathError::NoUnderlayAddress { lan, node, dev, family }
            if lan == "knlvrf" && node == NODE && dev == "eth1" && *family == VxlanFamily::Ipv4),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("give eth1 an IPv4 address"), "{msg}");
    assert!(msg.contains("spec.vxlanFamily"), "{msg}");
    assert!(dp.kernel().mutations().is_empty());
}

#[test]
fn multicast_never_looks_at_addresses_and_ipv4_gets_its_group_and_mtu() {
    let dp = addressed();
    let mut s = spec("four", 11, &["srl"]);
    s.vxlan_family = VxlanFamily::Ipv4;
    s.vxlan_grp = None;
    let st = dp.lan_up(&s, NODE).unwrap();
    let v6 = dp.lan_up(&spec("six", 10, &["srl"]), NODE).unwrap();
    assert_eq!((st.mtu, v6.mtu), (1450, 1430));
    assert_eq!((st.underlay_address, v6.underlay_address), (None, None));
    let p = vxlan_params(&dp, "four");
    assert_eq!((p.group, p.local), (Some(ip("239.1.20.20")), None));
    assert_eq!(
        dp.kernel().peek_flood(&lan("four"), "vx2"),
        vec![ip("239.1.20.20")]
    );
    assert!(
        !dp.kernel()
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Addresses(..))),
        "multicast mode must not depend on the underlay's addresses"
    );
}

#[test]
fn a_mode_or_family_change_replaces_only_the_vxlan() {
    let dp = addressed();
    let mut s = spec("knlvrf", 222, &["srl", "vm"]);
    dp.spoke_up(&s, NODE, "srl", SpokeKind::Veth).unwrap();
    dp.spoke_up(&s, NODE, "vm", SpokeKind::Mac).unwrap();
    for (mode, family) in [
        (VxlanMode::Unicast, VxlanFamily::Ipv6),
        (VxlanMode::Unicast, VxlanFamily::Ipv4),
        (VxlanMode::Multicast, VxlanFamily::Ipv4),
    ] {
        s.vxlan_mode = mode;
        s.vxlan_family = family;
        s.vxlan_grp = None;
        let before = dp.kernel().peek(&lan("knlvrf"), "br2").unwrap();
        dp.kernel().clear_calls();
        let st = dp.lan_up(&s, NODE).unwrap();
        let m = dp.kernel().mutations();
        // The VXLAN is replaced; the rest only gets the new family's MTU, if it differs.
        assert!(
            m.contains(&Call::DeleteLink(lan("knlvrf"), "vx2".into())),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|c| matches!(c, Call::CreateLink(n) if n.target().1 == "vx2")),
            "{m:?}"
        );
        for c in &m {
            match c {
                Call::DeleteLink(_, n) | Call::CreateLink(NewLink::Vxlan { name: n, .. }) => {
                    assert_eq!(n, "vx2", "{mode:?} {family:?}: {m:?}")
                }
                Call::ChangeLink(_, n, change) if n != "vx2" => {
                    assert_eq!(change.mtu, Some(st.mtu), "{c:?}");
                    assert_eq!(change.master, None, "{c:?}");
                }
                Call::ChangeLink(..) => {}
                other => panic!("{mode:?} {family:?}: {other:?}"),
            }
        }
        let br = dp.kernel().peek(&lan("knlvrf"), "br2").unwrap();
        assert_eq!(br.ifindex, before.ifindex, "the bridge was replaced");
        assert_eq!(
            dp.kernel().peek(&lan("knlvrf"), "srl").unwrap().master,
            Some(br.ifindex)
        );
        assert_eq!(
            dp.kernel().peek(&lan("knlvrf"), "vx2").unwrap().master,
            Some(br.ifindex)
        );
        assert_eq!(
            st.mtu,
            if family == VxlanFamily::Ipv6 {
                1430
            } else {
                1450
            }
        );
    }
}

#[test]
fn set_peers_adds_before_it_removes_and_is_idempotent() {
    let dp = addressed();
    let s = unicast("knlvrf", 222, VxlanFamily::Ipv6);
    dp.lan_up(&s, NODE).unwrap();
    let k = dp.kernel();
    let ch = dp
        .set_peers(&s, &peers(&["fd00:1::2", "fd00:1::3"]))
        .unwrap();
    assert_eq!(ch.added, vec![ip("fd00:1::2"), ip("fd00:1::3")]);
    k.clear_calls();
    let ch = dp
        .set_peers(&s, &peers(&["fd00:1::3", "fd00:1::4"]))
        .unwrap();
    assert_eq!(
        ch,
        PeerChanges {
            added: vec![ip("fd00:1::4")],
            removed: vec![ip("fd00:1::2")],
        }
    );
    assert_eq!(
        flood_calls(&k.mutations()),
        vec!["add fd00:1::4", "remove fd00:1::2"],
        "the new peer must be there before the old one goes"
    );
    k.clear_calls();
    let ch = dp
        .set_peers(&s, &peers(&["fd00:1::3", "fd00:1::4"]))
        .unwrap();
    assert!(ch.is_empty(), "{ch:?}");
    assert!(k.mutations().is_empty());
    assert_eq!(
        k.peek_flood(&lan("knlvrf"), "vx2"),
        vec![ip("fd00:1::3"), ip("fd00:1::4")]
    );
}

#[test]
fn the_node_itself_is_never_its_own_peer() {
    let dp = addressed();
    let s = unicast("knlvrf", 222, VxlanFamily::Ipv6);
    dp.lan_up(&s, NODE).unwrap();
    let ch = dp
        .set_peers(&s, &peers(&["fd00:1::1", "fd00:1::2"]))
        .unwrap();
    assert_eq!(ch.added, vec![ip("fd00:1::2")]);
    assert_eq!(
        dp.kernel().peek_flood(&lan("knlvrf"), "vx2"),
        vec![ip("fd00:1::2")]
    );
}

#[test]
fn multicast_keeps_its_group_entry_and_loses_unicast_leftovers() {
    let dp = addressed();
    let s = spec("knlvrf", 222, &["srl"]);
    dp.lan_up(&s, NODE).unwrap();
    let k = dp.kernel();
    k.add_flood_behind(&lan("knlvrf"), "vx2", ip("fd00:1::9"));
    k.clear_calls();
    let ch = dp.set_peers(&s, &peers(&["fd00:1::2"])).unwrap();
    assert_eq!(
        ch,
        PeerChanges {
            added: vec![],
            removed: vec![ip("fd00:1::9")],
        }
    );
    assert_eq!(flood_calls(&k.mutations()), vec!["remove fd00:1::9"]);
    assert_eq!(k.peek_flood(&lan("knlvrf"), "vx2"), vec![ip("ff02::14")]);
    // Asked again, with the group itself among the peers: still nothing touches it.
    k.clear_calls();
    assert!(dp.set_peers(&s, &peers(&["ff02::14"])).unwrap().is_empty());
    assert!(k.mutations().is_empty());
}

#[test]
fn a_peer_of_the_other_family_is_refused_before_any_change() {
    let dp = addressed();
    let s = unicast("knlvrf", 222, VxlanFamily::Ipv6);
    dp.lan_up(&s, NODE).unwrap();
    dp.kernel().clear_calls();
    let e = dp
        .set_peers(&s, &peers(&["fd00:1::2", "198.18.1.2"]))
        .unwrap_err();
    assert!(
        matches!(&e, DatapathError::PeerFamily { lan, peer, family }
            if lan == "knlvrf" && *peer == ip("198.18.1.2") && *family == VxlanFamily::Ipv6),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("knlvrf") && msg.contains("198.18.1.2") && msg.contains("IPv6"),
        "{msg}"
    );
    assert!(dp.kernel().mutations().is_empty());
}

#[test]
fn set_peers_leaves_a_lan_not_programmed_here_alone() {
    let dp = addressed();
    let s = unicast("knlvrf", 222, VxlanFamily::Ipv6);
    let ch = dp.set_peers(&s, &peers(&["fd00:1::2"])).unwrap();
    assert!(ch.is_empty());
    assert!(dp.kernel().mutations().is_empty());
    assert!(dp.kernel().peek_namespaces().is_empty());
}

#[test]
fn a_replaced_unicast_vxlan_keeps_its_peers() {
    let dp = addressed();
    let mut s = unicast("knlvrf", 222, VxlanFamily::Ipv6);
    dp.lan_up(&s, NODE).unwrap();
    dp.set_peers(&s, &peers(&["fd00:1::2", "fe80::3"])).unwrap();
    let old = dp.kernel().peek(&lan("knlvrf"), "vx2").unwrap().ifindex;
    s.vxlan_port = 4790;
    let st = dp.lan_up(&s, NODE).unwrap();
    assert_ne!(st.vxlan_ifindex, old, "the VXLAN was not replaced");
    assert_eq!(
        dp.kernel().peek_flood(&lan("knlvrf"), "vx2"),
        vec![ip("fd00:1::2"), ip("fe80::3")]
    );
    // A family change starts without peers: the old ones cannot be reached over it.
    s.vxlan_family = VxlanFamily::Ipv4;
    dp.lan_up(&s, NODE).unwrap();
    assert!(dp.kernel().peek_flood(&lan("knlvrf"), "vx2").is_empty());
}

#[test]
fn show_lists_the_peers_without_the_group() {
    let dp = addressed();
    let u = unicast("uni", 10, VxlanFamily::Ipv6);
    let m = spec("multi", 11, &["srl"]);
    dp.lan_up(&u, NODE).unwrap();
    dp.lan_up(&m, NODE).unwrap();
    dp.set_peers(&u, &peers(&["fd00:1::2"])).unwrap();
    let views = dp.show().unwrap();
    let of = |ns: &str| views.iter().find(|v| v.ns == ns).unwrap().peers.clone();
    assert_eq!(of("uni"), vec![ip("fd00:1::2")]);
    assert!(of("multi").is_empty());
}

#[test]
fn the_uplink_is_the_underlay_when_the_lan_names_no_device() {
    let mut s = spec("knlvrf", 222, &["srl"]);
    s.default_vxlan_dev = None;
    s.vxlan_dev_map.clear();
    let (dp, _) = datapath();
    let e = dp.lan_up(&s, NODE).unwrap_err();
    assert!(matches!(e, DatapathError::NoUplink { .. }), "{e}");
    assert!(e.to_string().contains("set spec.defaultVxlanDev"), "{e}");
    assert!(dp.kernel().mutations().is_empty());
    let (dp, _) = datapath();
    let dp = dp.with_uplink(Some("eth0"));
    let st = dp.lan_up(&s, NODE).unwrap();
    assert_eq!((st.underlay.as_str(), st.mtu), ("eth0", 8930));
    // A LAN that names devices uses only those: no entry for this node, no underlay.
    s.vxlan_dev_map.insert("worker2".into(), "eth9".into());
    let e = dp.lan_up(&s, NODE).unwrap_err();
    assert!(matches!(e, DatapathError::NoUnderlay { .. }), "{e}");
}

#[test]
fn a_new_underlay_address_moves_the_vxlan_onto_it_with_its_peers() {
    let (dp, _) = datapath();
    dp.kernel().add_host_address("eth1", ip("fe80::1"), 64);
    let s = unicast("knlvrf", 222, VxlanFamily::Ipv6);
    dp.lan_up(&s, NODE).unwrap();
    dp.set_peers(&s, &peers(&["fe80::2", "fe80::3"])).unwrap();
    // A unique-local address arrives (SLAAC, DHCPv6): the node now floods from it.
    dp.kernel().add_host_address("eth1", ip("fd00:1::1"), 64);
    let st = dp.lan_up(&s, NODE).unwrap();
    assert_eq!(st.underlay_address, Some(ip("fd00:1::1")));
    assert_eq!(vxlan_params(&dp, "knlvrf").local, Some(ip("fd00:1::1")));
    assert_eq!(
        dp.kernel().peek_flood(&lan("knlvrf"), "vx2"),
        vec![ip("fe80::2"), ip("fe80::3")]
    );
    assert!(
        st.changes.iter().any(|c| c.contains("carry 2 peers")),
        "{:?}",
        st.changes
    );
}
