//! Unit tier: the datapath acts only on links it made for that LAN and role (issue 11, item 8,
//! node side). A spoke whose host end, macvtap or bridge-port name is taken by anything else is
//! refused naming the owner, and no later call (spoke down, LAN down, orphan removal, drift
//! repair) touches that link; an underlay that is `lo`, a k8slan link or a port of a k8slan
//! bridge is refused naming the field.

mod fake_env;

use fake_env::*;
use k8slan_api::SpokeKind;
use k8slan_api::naming::link_alias;
use k8slan_netagent::fake::Call;
use k8slan_netagent::{DatapathError, Link, Ns, Owner};

/// No call of the list changed anything in the host namespace.
fn host_untouched(calls: &[Call]) -> bool {
    !calls.iter().any(|c| {
        matches!(
            c,
            Call::DeleteLink(Ns::Host, _) | Call::ChangeLink(Ns::Host, ..)
        ) || matches!(c, Call::CreateLink(n) if n.target().0 == Ns::Host)
    })
}

/// The LAN is refused by `api::validate` (before the node is looked at) naming `field`, and
/// nothing was changed: the node side's own checks are the second line behind these rules.
fn refused_by_the_api_rules(e: &DatapathError, field: &str, calls: &[Call]) {
    assert!(
        matches!(e, DatapathError::InvalidLan(_)) && e.to_string().contains(field),
        "{e}"
    );
    assert_eq!(calls, &[] as &[Call], "{e}");
}

fn foreign_owner(e: &DatapathError) -> Option<(&str, &Owner)> {
    match e {
        DatapathError::ForeignLink { link, owner, .. } => Some((link, owner)),
        _ => None,
    }
}

#[test]
fn node_interfaces_named_as_a_spoke_are_refused_and_never_touched() {
    let (dp, _) = datapath();
    let k = dp.kernel();
    // ens3 is the node's NIC (a name the API rules do not reserve), vethab12 another pod's
    // veth, flannel1 a link with someone else's alias.
    k.add_host_link("ens3", 1500);
    k.add_host_link("vethab12", 1500);
    k.add_host_link("flannel1", 1450);
    k.edit(&Ns::Host, "flannel1", |l| {
        l.alias = Some("flannel vtep".into())
    });
    let names = ["ens3", "vethab12", "flannel1"];
    let s = spec("lana", 100, &names);
    dp.lan_up(&s, NODE).unwrap();
    let before = k.peek_all(&Ns::Host);
    k.clear_calls();
    for name in names {
        for kind in SpokeKind::ALL {
            let e = dp.spoke_up(&s, NODE, name, kind).unwrap_err();
            let (link, owner) = foreign_owner(&e).unwrap_or_else(|| panic!("{e}"));
            assert_eq!(link, name);
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("spoke {name}")) && msg.contains("not made by k8slan"),
                "{msg}"
            );
            if name == "flannel1" {
                assert_eq!(owner, &Owner::OtherAlias("flannel vtep".into()));
            } else {
                assert_eq!(owner, &Owner::NoAlias);
                assert!(msg.contains("no k8slan alias"), "{msg}");
            }
        }
        dp.spoke_down(&s, name).unwrap();
    }
    dp.lan_up(&s, NODE).unwrap();
    dp.lan_down(&s).unwrap();
    assert!(host_untouched(&k.mutations()), "{:?}", k.mutations());
    assert_eq!(k.peek_all(&Ns::Host), before);
}

/// A spoke named like another spoke's macvtap (`mvt-x` next to a VM spoke `x`, in one LAN or
/// across LANs), or like a well-known node interface, never reaches the node: the API rules refuse
/// it, and the datapath checks them first (the ownership checks above stay behind them for LANs
/// written before those rules).
#[test]
fn spokes_named_like_a_macvtap_or_a_node_interface_are_refused_before_the_node_is_touched() {
    let (dp, _) = datapath();
    let k = dp.kernel();
    let a = spec("lana", 100, &["x"]);
    dp.spoke_up(&a, NODE, "x", SpokeKind::Mac).unwrap();
    let mvt = k.peek(&Ns::Host, "mvt-x").unwrap();
    for (ns, spokes) in [
        ("lanb", vec!["mvt-x", "y"]),
        ("lana", vec!["x", "mvt-x"]),
        ("lanb", vec!["mvh-0a1b2c3d"]),
        ("lanb", vec!["eth0"]),
        ("lanb", vec!["cni0"]),
    ] {
        let mut b = spec(ns, 200, &spokes);
        b.bridge = "brb".into();
        let spoke = spokes.iter().find(|s| **s != "x" && **s != "y").unwrap();
        k.clear_calls();
        let e = dp.spoke_up(&b, NODE, spoke, SpokeKind::Veth).unwrap_err();
        refused_by_the_api_rules(&e, "spec.spokes", &k.mutations());
        let e = dp.spoke_down(&b, spoke).unwrap_err();
        refused_by_the_api_rules(&e, "spec.spokes", &k.mutations());
    }
    assert_eq!(k.peek(&Ns::Host, "mvt-x"), Some(mvt));
}

#[test]
fn the_same_spoke_name_in_two_lans_never_touches_the_holder() {
    let (dp, _) = datapath();
    let k = dp.kernel();
    let a = spec("lana", 100, &["x"]);
    let mut b = spec("lanb", 200, &["x"]);
    b.bridge = "brb".into();
    dp.spoke_up(&a, NODE, "x", SpokeKind::Mac).unwrap();
    let held: Vec<Link> = ["x", "mvt-x"]
        .iter()
        .map(|n| k.peek(&Ns::Host, n).unwrap())
        .collect();
    let taps = k.peek_taps();
    k.clear_calls();
    for kind in SpokeKind::ALL {
        let e = dp.spoke_up(&b, NODE, "x", kind).unwrap_err();
        assert!(
            e.to_string()
                .contains("belongs to LAN lana as its host end of spoke x"),
            "{e}"
        );
    }
    // B's spoke down, LAN down and orphan removal all leave A's spoke as it is, tap node too.
    dp.spoke_down(&b, "x").unwrap();
    dp.lan_up(&b, NODE).unwrap();
    dp.lan_down(&b).unwrap();
    dp.lan_up(&b, NODE).unwrap();
    dp.remove_orphan("lanb").unwrap();
    assert!(host_untouched(&k.mutations()), "{:?}", k.mutations());
    assert!(
        !k.mutations()
            .iter()
            .any(|c| matches!(c, Call::RemoveTapNode(_) | Call::MakeTapNode(..))),
        "{:?}",
        k.mutations()
    );
    assert_eq!(k.peek_taps(), taps);
    for l in held {
        assert_eq!(k.peek(&Ns::Host, &l.name), Some(l));
    }
    dp.spoke_up(&a, NODE, "x", SpokeKind::Mac).unwrap();
}

#[test]
fn a_lan_namespace_link_with_another_role_is_not_taken_as_a_spoke_port() {
    let (dp, _) = datapath();
    let k = dp.kernel();
    let s = spec("lana", 100, &["p1"]);
    dp.spoke_up(&s, NODE, "p1", SpokeKind::Veth).unwrap();
    // The host end is in a pod; the LAN-namespace veth named p1 carries another role's alias.
    k.move_out_of_host("p1");
    let s2 = spec("lana", 100, &["p1", "p3"]);
    k.edit(&lan("lana"), "p1", |l| {
        l.alias = Some(link_alias("lana", "port/p3"))
    });
    k.clear_calls();
    let e = dp.spoke_up(&s2, NODE, "p1", SpokeKind::Veth).unwrap_err();
    assert!(
        matches!(
            &e,
            DatapathError::ForeignLink {
                what: "bridge port",
                ns: Ns::Lan(_),
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("bridge port of spoke p3"), "{e}");
    dp.spoke_down(&s2, "p1").unwrap();
    assert!(k.peek(&lan("lana"), "p1").is_some());
    assert!(
        !k.mutations()
            .iter()
            .any(|c| matches!(c, Call::DeleteLink(_, n) if n == "p1")),
        "{:?}",
        k.mutations()
    );
}

#[test]
fn lo_is_refused_as_underlay_naming_the_field() {
    let (dp, _) = datapath();
    let mut s = spec("lana", 100, &["x"]);
    s.default_vxlan_dev = Some("lo".into());
    let e = dp.lan_up(&s, NODE).unwrap_err();
    refused_by_the_api_rules(&e, "spec.defaultVxlanDev", &dp.kernel().mutations());
    s.default_vxlan_dev = Some("eth1".into());
    s.vxlan_dev_map.insert(NODE.into(), "lo".into());
    let e = dp.spoke_up(&s, NODE, "x", SpokeKind::Veth).unwrap_err();
    refused_by_the_api_rules(
        &e,
        &format!("spec.vxlanDevMap[{NODE}]"),
        &dp.kernel().mutations(),
    );
}

#[test]
fn a_k8slan_link_is_refused_as_underlay() {
    let (dp, _) = datapath();
    let k = dp.kernel();
    let a = spec("lana", 100, &["x", "v"]);
    dp.spoke_up(&a, NODE, "x", SpokeKind::Veth).unwrap();
    dp.spoke_up(&a, NODE, "v", SpokeKind::Mac).unwrap();
    // A macvtap's name (`mvt-v`) as underlay is refused by the API rules already.
    let mut b = spec("lanb", 200, &["y"]);
    b.default_vxlan_dev = Some("mvt-v".into());
    k.clear_calls();
    let e = dp.lan_up(&b, NODE).unwrap_err();
    refused_by_the_api_rules(&e, "spec.defaultVxlanDev", &k.mutations());
    for (dev, owner) in [("x", "host end of spoke x")] {
        for lan_ns in ["lanb", "lana"] {
            let mut b = spec(lan_ns, 200, &["y"]);
            b.bridge = "brb".into();
            b.default_vxlan_dev = Some(dev.into());
            k.clear_calls();
            let e = dp.lan_up(&b, NODE).unwrap_err();
            let msg = e.to_string();
            assert!(
                matches!(&e, DatapathError::BadUnderlay { .. })
                    && msg.contains(&format!("belongs to LAN lana as its {owner}"))
                    && msg.contains("spec.defaultVxlanDev"),
                "{msg}"
            );
            assert_eq!(k.mutations(), vec![], "{lan_ns} on {dev}");
        }
    }
    // A port of a bridge k8slan made in the host namespace (none does today; an alias says so).
    k.add_host_link("hbr", 1500);
    k.edit(&Ns::Host, "hbr", |l| {
        l.alias = Some(link_alias("lana", "bridge"))
    });
    let hbr = k.peek(&Ns::Host, "hbr").unwrap().ifindex;
    k.add_host_link("eth2", 1500);
    k.edit(&Ns::Host, "eth2", |l| l.master = Some(hbr));
    let mut b = spec("lanb", 200, &["y"]);
    b.default_vxlan_dev = Some("eth2".into());
    let e = dp.lan_up(&b, NODE).unwrap_err().to_string();
    assert!(
        e.contains("port of bridge hbr") && e.contains("LAN lana"),
        "{e}"
    );
    // An ordinary bridge port is fine (the node's own bridges are its business).
    k.edit(&Ns::Host, "hbr", |l| l.alias = None);
    dp.lan_up(&b, NODE).unwrap();
}

#[test]
fn a_working_lan_given_a_bad_underlay_keeps_running() {
    let (dp, _) = datapath();
    let k = dp.kernel();
    let s = spec("lana", 100, &["x"]);
    dp.spoke_up(&s, NODE, "x", SpokeKind::Veth).unwrap();
    let links = k.peek_all(&lan("lana"));
    let mut bad = s.clone();
    bad.default_vxlan_dev = Some("lo".into());
    k.clear_calls();
    dp.lan_up(&bad, NODE).unwrap_err();
    dp.spoke_up(&bad, NODE, "x", SpokeKind::Veth).unwrap_err();
    assert_eq!(k.mutations(), vec![]);
    assert_eq!(k.peek_all(&lan("lana")), links);
}
