//! Unit tier: renaming `spec.bridge` or `spec.vxlan` of a live LAN (issue 11, item 8). The LAN
//! moves to the new links in place: the old bridge and VXLAN of that LAN go, every port moves to
//! the new bridge, and the namespace and the spokes' veths (also those in pods) are kept.

mod fake_env;

use fake_env::*;
use k8slan_api::SpokeKind;
use k8slan_api::naming::link_alias;
use k8slan_netagent::fake::Call;
use k8slan_netagent::{Datapath, LinkKind, Ns};

type Dp = Datapath<k8slan_netagent::fake::RecordingKernel>;

/// A LAN with a held veth spoke (host end in a pod), a waiting one and a VM spoke.
fn live_lan() -> (Dp, k8slan_api::LanSpec) {
    let (dp, _) = datapath();
    let s = spec("lana", 100, &["held", "wait", "vm"]);
    dp.spoke_up(&s, NODE, "held", SpokeKind::Veth).unwrap();
    dp.spoke_up(&s, NODE, "wait", SpokeKind::Veth).unwrap();
    dp.spoke_up(&s, NODE, "vm", SpokeKind::Mac).unwrap();
    dp.kernel().move_out_of_host("held");
    (dp, s)
}

/// The spokes' links (ports, host ends, macvtap) with their ifindexes.
fn spoke_links(dp: &Dp) -> Vec<(String, u32)> {
    let k = dp.kernel();
    let mut v = Vec::new();
    for name in ["held", "wait", "vm"] {
        if let Some(l) = k.peek(&lan("lana"), name) {
            v.push((format!("port {name}"), l.ifindex));
        }
    }
    for name in ["wait", "vm", "mvt-vm"] {
        if let Some(l) = k.peek(&Ns::Host, name) {
            v.push((format!("host {name}"), l.ifindex));
        }
    }
    v
}

/// What a renamed LAN must look like: one bridge and one VXLAN, of the new names, with every
/// port on the bridge.
fn assert_moved(dp: &Dp, bridge: &str, vxlan: &str) {
    let k = dp.kernel();
    let links = k.peek_all(&lan("lana"));
    let bridges: Vec<&str> = links
        .iter()
        .filter(|l| matches!(l.kind, LinkKind::Bridge(_)))
        .map(|l| l.name.as_str())
        .collect();
    let vxlans: Vec<&str> = links
        .iter()
        .filter(|l| matches!(l.kind, LinkKind::Vxlan(_)))
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!((bridges, vxlans), (vec![bridge], vec![vxlan]));
    let br = k.peek(&lan("lana"), bridge).unwrap();
    assert_eq!(
        br.alias.as_deref(),
        Some(link_alias("lana", "bridge").as_str())
    );
    for port in ["held", "wait", "vm", vxlan] {
        let l = k.peek(&lan("lana"), port).unwrap();
        assert_eq!(l.master, Some(br.ifindex), "{port} is not on {bridge}");
        assert!(l.up, "{port} is down");
    }
}

/// Neither the namespace nor any veth was recreated or deleted.
fn assert_kept(dp: &Dp, before: &[(String, u32)]) {
    let m = dp.kernel().mutations();
    assert!(
        !m.iter().any(|c| matches!(
            c,
            Call::CreateLanNamespace(_) | Call::DeleteLanNamespace(_) | Call::DeleteLanLinks(_)
        )),
        "{m:?}"
    );
    assert_eq!(spoke_links(dp), before);
}

#[test]
fn renaming_the_bridge_moves_every_port_and_removes_the_old_one() {
    let (dp, mut s) = live_lan();
    let before = spoke_links(&dp);
    s.bridge = "brnew".into();
    dp.kernel().clear_calls();
    let st = dp.lan_up(&s, NODE).unwrap();
    assert_moved(&dp, "brnew", "vx2");
    assert_kept(&dp, &before);
    assert!(
        st.changes
            .iter()
            .any(|c| c.contains("remove old bridge br2")),
        "{:?}",
        st.changes
    );
    // Converged: the next run changes nothing.
    dp.kernel().clear_calls();
    assert!(dp.lan_up(&s, NODE).unwrap().changes.is_empty());
    assert_eq!(dp.kernel().mutations(), vec![]);
}

#[test]
fn renaming_the_vxlan_replaces_it_without_a_vni_clash() {
    let (dp, mut s) = live_lan();
    let before = spoke_links(&dp);
    s.vxlan = "vxnew".into();
    dp.kernel().clear_calls();
    dp.lan_up(&s, NODE).unwrap();
    assert_moved(&dp, "br2", "vxnew");
    assert_kept(&dp, &before);
    // The old VXLAN goes before the new one takes the VNI (the kernel refuses two).
    let m = dp.kernel().mutations();
    let del = m
        .iter()
        .position(|c| matches!(c, Call::DeleteLink(_, n) if n == "vx2"));
    let add = m
        .iter()
        .position(|c| matches!(c, Call::CreateLink(n) if n.target().1 == "vxnew"));
    assert!(del.is_some() && del < add, "{m:?}");
}

#[test]
fn renaming_both_and_swapping_the_names_work() {
    for (bridge, vxlan) in [("brnew", "vxnew"), ("vx2", "br2")] {
        let (dp, mut s) = live_lan();
        let before = spoke_links(&dp);
        s.bridge = bridge.into();
        s.vxlan = vxlan.into();
        dp.kernel().clear_calls();
        dp.lan_up(&s, NODE).unwrap();
        assert_moved(&dp, bridge, vxlan);
        assert_kept(&dp, &before);
        dp.kernel().clear_calls();
        dp.lan_up(&s, NODE).unwrap();
        assert_eq!(dp.kernel().mutations(), vec![], "{bridge}/{vxlan}");
    }
}

#[test]
fn an_allocate_after_a_rename_moves_the_other_ports_too() {
    // The device plugin's spoke up may see the renamed spec before the reconciler does.
    let (dp, mut s) = live_lan();
    let before = spoke_links(&dp);
    s.bridge = "brnew".into();
    s.vxlan = "vxnew".into();
    dp.kernel().clear_calls();
    dp.spoke_up(&s, NODE, "wait", SpokeKind::Veth).unwrap();
    assert_moved(&dp, "brnew", "vxnew");
    assert_kept(&dp, &before);
}

#[test]
fn a_new_spoke_may_take_the_old_bridge_name() {
    let (dp, mut s) = live_lan();
    s.bridge = "brnew".into();
    s.spokes.push("br2".into());
    dp.spoke_up(&s, NODE, "br2", SpokeKind::Veth).unwrap();
    let k = dp.kernel();
    let port = k.peek(&lan("lana"), "br2").unwrap();
    assert!(matches!(port.kind, LinkKind::Veth { .. }), "{port:?}");
    assert_moved(&dp, "brnew", "vx2");
}

#[test]
fn an_old_bridge_left_by_an_interrupted_rename_is_removed_by_the_next_lan_up() {
    let (dp, mut s) = live_lan();
    s.bridge = "brnew".into();
    // The rename stops right after the new bridge was made (the ports still on the old one).
    dp.kernel().fail_next("links", "");
    dp.lan_up(&s, NODE).unwrap_err();
    assert!(dp.kernel().peek(&lan("lana"), "br2").is_some());
    dp.lan_up(&s, NODE).unwrap();
    assert_moved(&dp, "brnew", "vx2");
}

#[test]
fn links_of_another_role_or_lan_are_not_retired() {
    let (dp, mut s) = live_lan();
    let k = dp.kernel();
    // A bridge in the LAN namespace that is not k8slan's bridge of this LAN (no alias, or the
    // alias of another LAN) stays where it is.
    dp.lan_up(&s, NODE).unwrap();
    s.bridge = "brnew".into();
    k.edit(&lan("lana"), "br2", |l| {
        l.alias = Some(link_alias("lanb", "bridge"))
    });
    dp.lan_up(&s, NODE).unwrap();
    assert!(k.peek(&lan("lana"), "br2").is_some());
    k.edit(&lan("lana"), "br2", |l| l.alias = None);
    dp.lan_up(&s, NODE).unwrap();
    assert!(k.peek(&lan("lana"), "br2").is_some());
}
