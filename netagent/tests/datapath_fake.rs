//! Unit tier: the datapath logic against the recording fake kernel (no root needed).

mod fake_env;

use std::net::IpAddr;

use fake_env::*;
use k8slan_api::naming::link_alias;
use k8slan_api::{MacvtapMode, SpokeKind};
use k8slan_netagent::fake::{Call, FAKE_TAP_MAJOR};
use k8slan_netagent::kernel::LinkChange;
use k8slan_netagent::{DatapathError, LinkKind, Ns, PORT_GROUP_FWD_MASK};

#[test]
fn lan_up_creates_namespace_bridge_and_vxlan_with_the_lan_mtu() {
    let (dp, eth1) = datapath();
    let s = spec("knlvrf", 222, &["srl", "vm"]);
    let st = dp.lan_up(&s, NODE).unwrap();
    let k = dp.kernel();
    assert_eq!(k.peek_namespaces(), vec!["knlvrf"]);
    assert_eq!(st.mtu, 1430);
    assert_eq!(st.underlay, "eth1");

    let br = k.peek(&lan("knlvrf"), "br2").unwrap();
    let LinkKind::Bridge(bp) = br.kind else {
        panic!("{br:?}")
    };
    assert!(!bp.mcast_snooping && !bp.vlan_filtering);
    assert_eq!((br.mtu, br.up), (1430, true));
    assert_eq!(
        br.alias.as_deref(),
        Some(link_alias("knlvrf", "bridge").as_str())
    );

    let vx = k.peek(&lan("knlvrf"), "vx2").unwrap();
    let LinkKind::Vxlan(p) = vx.kind else {
        panic!("{vx:?}")
    };
    assert_eq!(p.vni, 222);
    assert_eq!(p.group, Some("ff02::14".parse::<IpAddr>().unwrap()));
    assert_eq!(p.local, None);
    assert_eq!(p.port, 4789);
    assert_eq!(p.underlay_ifindex, eth1);
    assert!(p.learning);
    assert_eq!((vx.mtu, vx.up, vx.master), (1430, true, Some(br.ifindex)));
    assert_eq!(vx.port_group_fwd_mask, Some(PORT_GROUP_FWD_MASK));
    // Nothing in the host namespace.
    assert_eq!(k.peek_all(&Ns::Host).len(), 3);
}

#[test]
fn vxlan_dev_map_picks_the_underlay_per_node() {
    let (dp, _) = datapath();
    let s = spec("knlvrf", 222, &["srl"]);
    let st = dp.lan_up(&s, "worker2").unwrap_err();
    assert!(
        matches!(&st, DatapathError::UnderlayMissing { dev, node, .. } if dev == "eth9" && node == "worker2"),
        "{st}"
    );
    assert!(
        dp.kernel().mutations().is_empty(),
        "nothing may be created without an underlay"
    );
    let mut s2 = s.clone();
    s2.vxlan_dev_map.insert(NODE.into(), "eth0".into());
    assert_eq!(dp.lan_up(&s2, NODE).unwrap().mtu, 8930);
}

#[test]
fn second_up_changes_nothing() {
    let (dp, _) = datapath();
    let s = spec("knlvrf", 222, &["srl", "vm"]);
    dp.lan_up(&s, NODE).unwrap();
    dp.spoke_up(&s, NODE, "srl", SpokeKind::Veth).unwrap();
    dp.spoke_up(&s, NODE, "vm", SpokeKind::Mac).unwrap();
    dp.kernel().clear_calls();
    let st = dp.lan_up(&s, NODE).unwrap();
    let a = dp.spoke_up(&s, NODE, "srl", SpokeKind::Veth).unwrap();
    let b = dp.spoke_up(&s, NODE, "vm", SpokeKind::Mac).unwrap();
    assert_eq!(dp.kernel().mutations(), vec![]);
    assert!(st.changes.is_empty() && a.changes.is_empty() && b.changes.is_empty());
    assert!(
        !dp.kernel().calls().is_empty(),
        "the second run must still look"
    );
}

#[test]
fn veth_spoke_has_a_host_end_and_a_bridge_port() {
    let (dp, _) = datapath();
    let s = spec("knlvrf", 222, &["srl"]);
    let a = dp.spoke_up(&s, NODE, "srl", SpokeKind::Veth).unwrap();
    let k = dp.kernel();
    let host = k.peek(&Ns::Host, "srl").unwrap();
    let port = k.peek(&lan("knlvrf"), "srl").unwrap();
    let br = k.peek(&lan("knlvrf"), "br2").unwrap();
    assert_eq!(
        (a.host_ifname.as_str(), a.host_ifindex, a.mtu),
        ("srl", host.ifindex, 1430)
    );
    assert!(a.mac.is_none());
    assert_eq!(
        host.kind,
        LinkKind::Veth {
            peer_ifindex: Some(port.ifindex)
        }
    );
    assert_eq!((host.mtu, port.mtu), (1430, 1430));
    assert_eq!(port.master, Some(br.ifindex));
    assert_eq!(port.port_group_fwd_mask, Some(0xfffd));
    assert!(port.up && host.up);
    assert_eq!(host.alias.as_deref(), Some("k8slan:knlvrf/spoke/srl"));
}

#[test]
fn mac_spoke_gets_a_macvtap_and_a_tap_node() {
    let (dp, _) = datapath();
    let mut s = spec("knlvrf", 222, &["vm"]);
    s.macvtap_mode = MacvtapMode::Bridge;
    let a = dp.spoke_up(&s, NODE, "vm", SpokeKind::Mac).unwrap();
    let k = dp.kernel();
    let host = k.peek(&Ns::Host, "vm").unwrap();
    let mvt = k.peek(&Ns::Host, "mvt-vm").unwrap();
    assert_eq!(
        mvt.kind,
        LinkKind::Macvtap {
            lower_ifindex: host.ifindex,
            mode: MacvtapMode::Bridge
        }
    );
    assert_eq!(mvt.mtu, 1430);
    let mac = a.mac.unwrap();
    assert_eq!(mac.macvtap, "mvt-vm");
    assert_eq!(mac.macvtap_ifindex, mvt.ifindex);
    assert_eq!(mac.tap_host_path.to_str(), Some("/run/k8slan/dev/tap-vm"));
    assert_eq!(mac.tap_container_path, format!("/dev/tap{}", mvt.ifindex));
    let taps = k.peek_taps();
    assert_eq!(taps[&mac.tap_host_path].major, FAKE_TAP_MAJOR);
    assert_eq!(taps[&mac.tap_host_path].minor, mvt.ifindex);
    // Switching the spoke to veth removes the macvtap and the node.
    dp.spoke_up(&s, NODE, "vm", SpokeKind::Veth).unwrap();
    assert!(k.peek(&Ns::Host, "mvt-vm").is_none());
    assert!(k.peek_taps().is_empty());
    assert!(k.peek(&Ns::Host, "vm").is_some());
}

#[test]
fn no_link_of_a_spoke_is_ever_up_with_ipv6() {
    let (dp, _) = datapath();
    let s = spec("knlvrf", 222, &["srl", "vm"]);
    dp.spoke_up(&s, NODE, "srl", SpokeKind::Veth).unwrap();
    dp.spoke_up(&s, NODE, "vm", SpokeKind::Mac).unwrap();
    let k = dp.kernel();
    // The host end and the macvtap wait in the host namespace, where links get IPv6: it is
    // turned off in the same change that brings them up (the kernel applies it first).
    assert_eq!(k.spoke_ipv6(), vec![]);
    for name in ["srl", "vm", "mvt-vm"] {
        let l = k.peek(&Ns::Host, name).unwrap();
        assert_eq!((l.up, l.ipv6), (true, Some(false)), "{name}");
    }
    // Someone turns IPv6 back on (`sysctl net.ipv6.conf.all.disable_ipv6=0` does that to every
    // link): the next spoke up turns it off again on that link only.
    k.edit(&Ns::Host, "vm", |l| l.ipv6 = Some(true));
    k.clear_calls();
    dp.spoke_up(&s, NODE, "vm", SpokeKind::Mac).unwrap();
    let m = k.mutations();
    assert_eq!(touched(&m), vec!["vm"]);
    assert!(
        matches!(&m[0], Call::ChangeLink(_, _, c) if *c == LinkChange { ipv6: Some(false), ..Default::default() }),
        "{m:?}"
    );
}

#[test]
fn drifted_vxlan_port_is_replaced_and_nothing_else_touched() {
    let (dp, _) = datapath();
    let s = spec("knlvrf", 222, &["srl", "vm"]);
    dp.spoke_up(&s, NODE, "srl", SpokeKind::Veth).unwrap();
    let k = dp.kernel();
    k.edit(&lan("knlvrf"), "vx2", |l| {
        if let LinkKind::Vxlan(p) = &mut l.kind {
            p.port = 8472;
        }
    });
    k.clear_calls();
    let st = dp.lan_up(&s, NODE).unwrap();
    assert_eq!(
        touched(&k.mutations()),
        vec!["vx2", "vx2", "vx2"],
        "{:?}",
        k.mutations()
    );
    assert!(
        st.changes.iter().any(|c| c.contains("replace vx2")),
        "{:?}",
        st.changes
    );
    let LinkKind::Vxlan(p) = k.peek(&lan("knlvrf"), "vx2").unwrap().kind else {
        panic!()
    };
    assert_eq!(p.port, 4789);
    // Same for a wrong VNI, group and underlay.
    for edit in [
        (|p: &mut k8slan_netagent::kernel::VxlanParams| p.vni = 7) as fn(&mut _),
        |p| p.group = Some("ff05::1".parse().unwrap()),
        |p| p.underlay_ifindex = 999,
    ] {
        k.edit(&lan("knlvrf"), "vx2", |l| {
            if let LinkKind::Vxlan(p) = &mut l.kind {
                edit(p);
            }
        });
        k.clear_calls();
        dp.lan_up(&s, NODE).unwrap();
        assert_eq!(touched(&k.mutations()), vec!["vx2", "vx2", "vx2"]);
    }
}

#[test]
fn drifted_mtu_is_set_back_on_that_link_only() {
    let (dp, _) = datapath();
    let s = spec("knlvrf", 222, &["srl", "vm"]);
    dp.spoke_up(&s, NODE, "srl", SpokeKind::Veth).unwrap();
    dp.spoke_up(&s, NODE, "vm", SpokeKind::Veth).unwrap();
    let k = dp.kernel();
    k.edit(&lan("knlvrf"), "br2", |l| l.mtu = 1500);
    k.edit(&lan("knlvrf"), "vm", |l| l.mtu = 1500);
    k.clear_calls();
    dp.lan_up(&s, NODE).unwrap();
    let m = k.mutations();
    assert_eq!(touched(&m), vec!["br2", "vm"]);
    assert!(
        matches!(&m[0], Call::ChangeLink(_, _, c) if *c == LinkChange { mtu: Some(1430), ..Default::default() })
    );
}

#[test]
fn leftover_spoke_is_rebuilt_without_touching_other_spokes() {
    let (dp, _) = datapath();
    let s = spec("knlvrf", 222, &["srl", "vm"]);
    dp.spoke_up(&s, NODE, "srl", SpokeKind::Veth).unwrap();
    dp.spoke_up(&s, NODE, "vm", SpokeKind::Mac).unwrap();
    let k = dp.kernel();
    let vm_before = k.peek(&Ns::Host, "vm").unwrap();
    // The host end was moved into a pod (gone from the host namespace; its port remains).
    k.move_out_of_host("srl");
    k.clear_calls();
    let a = dp.spoke_up(&s, NODE, "srl", SpokeKind::Veth).unwrap();
    assert_eq!(
        touched(&k.mutations()),
        vec!["srl", "srl", "srl", "srl"],
        "{:?}",
        k.mutations()
    );
    assert!(
        a.changes
            .iter()
            .any(|c| c.contains("remove stale bridge port")),
        "{:?}",
        a.changes
    );
    let host = k.peek(&Ns::Host, "srl").unwrap();
    let port = k.peek(&lan("knlvrf"), "srl").unwrap();
    assert_eq!(
        host.kind,
        LinkKind::Veth {
            peer_ifindex: Some(port.ifindex)
        }
    );
    assert_eq!(k.peek(&Ns::Host, "vm").unwrap(), vm_before);

    // The macvtap of the VM spoke disappeared: only it and its tap node are redone.
    k.remove(&Ns::Host, "mvt-vm");
    k.clear_calls();
    dp.spoke_up(&s, NODE, "vm", SpokeKind::Mac).unwrap();
    let t = touched(&k.mutations());
    assert_eq!(
        t,
        vec!["mvt-vm", "mvt-vm", "/run/k8slan/dev/tap-vm"],
        "{:?}",
        k.mutations()
    );
    assert_eq!(k.peek(&Ns::Host, "vm").unwrap(), vm_before);

    // A bridge port deleted by hand: the pair is rebuilt.
    k.remove(&lan("knlvrf"), "srl");
    assert!(
        k.peek(&Ns::Host, "srl").is_none(),
        "the fake deletes veth peers together"
    );
    dp.spoke_up(&s, NODE, "srl", SpokeKind::Veth).unwrap();
    assert!(k.peek(&lan("knlvrf"), "srl").unwrap().master.is_some());
}

#[test]
fn a_foreign_host_link_with_the_spoke_name_is_never_touched() {
    let (dp, _) = datapath();
    let s = spec("knlvrf", 222, &["srl", "vm"]);
    dp.lan_up(&s, NODE).unwrap();
    let k = dp.kernel();
    k.add_host_link("srl", 1500);
    k.add_host_link("mvt-vm", 1500);
    k.clear_calls();
    let e = dp.spoke_up(&s, NODE, "srl", SpokeKind::Veth).unwrap_err();
    assert!(
        matches!(&e, DatapathError::ForeignLink { link, .. } if link == "srl"),
        "{e}"
    );
    assert!(
        e.to_string().contains("srl") && e.to_string().contains("not made by k8slan"),
        "{e}"
    );
    let e = dp.spoke_up(&s, NODE, "vm", SpokeKind::Mac).unwrap_err();
    assert!(e.to_string().contains("mvt-vm"), "{e}");
    dp.spoke_down(&s, "srl").unwrap();
    dp.lan_down(&s).unwrap();
    assert!(k.peek(&Ns::Host, "srl").is_some() && k.peek(&Ns::Host, "mvt-vm").is_some());
    assert!(!k.mutations().iter().any(|c| matches!(
        c,
        Call::DeleteLink(Ns::Host, _) | Call::ChangeLink(Ns::Host, ..)
    )));
}

#[test]
fn spoke_down_removes_one_spoke() {
    let (dp, _) = datapath();
    let s = spec("knlvrf", 222, &["srl", "vm"]);
    dp.spoke_up(&s, NODE, "srl", SpokeKind::Veth).unwrap();
    dp.spoke_up(&s, NODE, "vm", SpokeKind::Mac).unwrap();
    let k = dp.kernel();
    dp.spoke_down(&s, "vm").unwrap();
    assert!(k.peek(&Ns::Host, "vm").is_none() && k.peek(&Ns::Host, "mvt-vm").is_none());
    assert!(k.peek(&lan("knlvrf"), "vm").is_none());
    assert!(k.peek_taps().is_empty());
    assert!(k.peek(&Ns::Host, "srl").is_some() && k.peek(&lan("knlvrf"), "srl").is_some());
    assert!(k.peek(&lan("knlvrf"), "vx2").is_some());
}

#[test]
fn lan_down_removes_only_that_lan() {
    let (dp, _) = datapath();
    let a = spec("lana", 100, &["a1", "a2"]);
    let mut b = spec("lanb", 200, &["b1"]);
    b.bridge = "brb".into();
    dp.spoke_up(&a, NODE, "a1", SpokeKind::Veth).unwrap();
    dp.spoke_up(&a, NODE, "a2", SpokeKind::Mac).unwrap();
    dp.spoke_up(&b, NODE, "b1", SpokeKind::Mac).unwrap();
    let k = dp.kernel();
    let b_host = k.peek(&Ns::Host, "b1").unwrap();
    dp.lan_down(&a).unwrap();
    assert_eq!(k.peek_namespaces(), vec!["lanb"]);
    let host_names: Vec<String> = k.peek_all(&Ns::Host).into_iter().map(|l| l.name).collect();
    assert_eq!(host_names, vec!["lo", "eth1", "eth0", "b1", "mvt-b1"]);
    assert_eq!(
        k.peek_taps()
            .keys()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>(),
        vec!["/run/k8slan/dev/tap-b1"]
    );
    assert_eq!(k.peek(&Ns::Host, "b1").unwrap(), b_host);
    k.clear_calls();
    dp.lan_down(&a).unwrap();
    assert_eq!(
        k.mutations(),
        vec![],
        "down of an absent LAN changes nothing"
    );
}

#[test]
fn remove_orphan_removes_that_lan_only() {
    let (dp, _) = datapath();
    let a = spec("lana", 100, &["a1"]);
    let c = spec("lanc", 300, &["c1"]);
    for s in [&a, &c] {
        dp.spoke_up(s, NODE, &s.spokes[0], SpokeKind::Mac).unwrap();
    }
    let k = dp.kernel();
    let listed: Vec<String> = dp.show().unwrap().into_iter().map(|v| v.ns).collect();
    assert_eq!(listed, vec!["lana", "lanc"]);
    let a_links = k.peek_all(&lan("lana"));
    dp.remove_orphan("lanc").unwrap();
    assert_eq!(k.peek_namespaces(), vec!["lana"]);
    assert!(k.peek(&Ns::Host, "c1").is_none() && k.peek(&Ns::Host, "mvt-c1").is_none());
    assert_eq!(
        k.peek_taps()
            .keys()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>(),
        vec!["/run/k8slan/dev/tap-a1"],
        "the orphan's tap node is gone, the other stays"
    );
    assert_eq!(k.peek_all(&lan("lana")), a_links);
    assert!(k.peek(&Ns::Host, "a1").is_some() && k.peek(&Ns::Host, "mvt-a1").is_some());
}

#[test]
fn show_lists_lans_and_their_spokes() {
    let (dp, _) = datapath();
    let a = spec("lana", 100, &["a1", "a2"]);
    dp.spoke_up(&a, NODE, "a1", SpokeKind::Veth).unwrap();
    dp.spoke_up(&a, NODE, "a2", SpokeKind::Mac).unwrap();
    let views = dp.show().unwrap();
    assert_eq!(views.len(), 1);
    let v = &views[0];
    assert_eq!(v.ns, "lana");
    assert_eq!(v.bridges[0].name, "br2");
    assert_eq!(v.vxlans[0].name, "vx2");
    let names: Vec<&str> = v.spokes.iter().map(|s| s.spoke.as_str()).collect();
    assert_eq!(names, vec!["a1", "a2"]);
    assert!(v.spokes[0].host_end.is_some() && v.spokes[0].macvtap.is_none());
    assert_eq!(v.spokes[1].macvtap.as_ref().unwrap().name, "mvt-a2");
    assert!(v.spokes[1].tap_node.is_some());
}

#[test]
fn invalid_input_is_refused_before_any_kernel_call() {
    let (dp, _) = datapath();
    let mut s = spec("../etc", 0, &["srl"]);
    let e = dp.lan_up(&s, NODE).unwrap_err().to_string();
    assert!(e.contains("spec.ns") && e.contains("spec.vni"), "{e}");
    s = spec("knlvrf", 1, &["srl"]);
    let e = dp.spoke_up(&s, NODE, "other", SpokeKind::Veth).unwrap_err();
    assert!(matches!(e, DatapathError::UnknownSpoke { .. }), "{e}");
    let e = dp
        .spoke_up(&s, NODE, "Bad/Name", SpokeKind::Veth)
        .unwrap_err();
    assert!(e.to_string().contains("Bad/Name"), "{e}");
    let e = dp.lan_up(&s, "Not_A_Node").unwrap_err();
    assert!(e.to_string().contains("node"), "{e}");
    assert!(dp.kernel().calls().is_empty(), "{:?}", dp.kernel().calls());
}

#[test]
fn a_failed_first_up_leaves_nothing_behind() {
    let (dp, _) = datapath();
    let s = spec("knlvrf", 222, &["srl"]);
    dp.kernel().fail_next("create_link", "vx2");
    let e = dp.lan_up(&s, NODE).unwrap_err();
    assert!(
        e.to_string().contains("vx2") && e.to_string().contains("knlvrf"),
        "{e}"
    );
    assert!(dp.kernel().peek_namespaces().is_empty());
    // A failure while preparing a spoke removes the pair it created.
    dp.lan_up(&s, NODE).unwrap();
    dp.kernel().fail_next("change_link", "srl");
    dp.spoke_up(&s, NODE, "srl", SpokeKind::Veth).unwrap_err();
    assert!(dp.kernel().peek(&Ns::Host, "srl").is_none());
    assert!(dp.kernel().peek(&lan("knlvrf"), "srl").is_none());
    assert!(matches!(
        dp.kernel().mutations()[0],
        Call::CreateLanNamespace(_)
    ));
}

#[test]
fn a_refused_multicast_membership_names_the_limit_and_the_fixes() {
    let (dp, _) = datapath();
    let mut s = spec("knlgrp", 223, &["srl"]);
    s.vxlan_grp = Some("239.1.30.3".into());
    s.vxlan_family = k8slan_api::VxlanFamily::Ipv4;
    // The VXLAN joins its group when it comes up; past igmp_max_memberships the kernel says
    // ENOBUFS.
    dp.kernel()
        .fail_next_with("change_link", "vx2", libc::ENOBUFS);
    let e = dp.lan_up(&s, NODE).unwrap_err();
    assert!(
        matches!(&e, DatapathError::MulticastLimit { group, dev, .. }
            if group.to_string() == "239.1.30.3" && dev == "eth1"),
        "{e:?}"
    );
    let msg = e.to_string();
    for part in [
        "knlgrp",
        "net.ipv4.igmp_max_memberships",
        "spec.vxlanMode to unicast",
        "spec.vxlanGrp",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    // Nothing of the failed first up is left.
    assert!(dp.kernel().peek_namespaces().is_empty());

    // Any other failure to bring the VXLAN up stays what it is.
    dp.kernel().fail_next("change_link", "vx2");
    let e = dp.lan_up(&s, NODE).unwrap_err();
    assert!(matches!(e, DatapathError::Kernel { .. }), "{e:?}");
    dp.lan_up(&s, NODE).unwrap();
}
