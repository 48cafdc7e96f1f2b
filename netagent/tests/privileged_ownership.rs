//! Privileged tests (real kernel, simulated nodes): the datapath never takes over, changes or
//! deletes a link it did not make for that LAN and role, and never builds a VXLAN on `lo` or on
//! a link k8slan made. Run as root: `cargo test -p k8slan-netagent -- --ignored`.

mod common;

use common::*;
use k8slan_api::SpokeKind;
use k8slan_api::naming::macvtap_name;

/// What k8slan could change about links: name, ifindex, peer, admin state, MTU, master, MAC,
/// alias (`ip -o link`, without the carrier and operational state, which a bridge without ports
/// changes by itself).
const STABLE: &str = "sed -E 's/(NO-CARRIER|LOWER_UP|M-DOWN),?//g; s/ state [A-Z]+ / /'";

fn link_state(node: &Node, name: &str) -> String {
    node.sh(&format!("ip -o link show {name} | {STABLE}"))
}

/// The node's host links, one line each.
fn host_links(node: &Node) -> String {
    node.sh(&format!("ip -o link show | {STABLE}"))
}

#[test]
#[ignore = "privileged"]
fn node_interfaces_named_as_spokes_are_never_touched() {
    let (_ul, n1) = one_node();
    // The simulated node's own interfaces: an uplink `ens3`, a CNI bridge `podbr0` with another
    // pod's veth `vethab12` on it, and a link with someone else's alias. (`eth0`, `cni0` and the
    // LAN's own underlay are refused by the API rules before the node is looked at: unit tier.)
    n1.sh(
        "ip link add ens3 type veth peer name ens3peer && ip link set ens3 up && \
         ip link add podbr0 type bridge && ip link set podbr0 up && \
         ip link add vethab12 type veth peer name podside && \
         ip link set vethab12 master podbr0 up && \
         ip link add flannel1 type veth peer name flpeer && ip link set flannel1 alias 'flannel vtep'",
    );
    let names = ["ens3", "podbr0", "vethab12", "flannel1"];
    let spec = lan_spec(900, &names);
    n1.dp.lan_up(&spec, &n1.name).unwrap();
    let before = host_links(&n1);
    for name in names {
        for kind in SpokeKind::ALL {
            let e = n1
                .dp
                .spoke_up(&spec, &n1.name, name, kind)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("spoke {name}")) && e.contains("not made by k8slan"),
                "{e}"
            );
        }
        n1.dp.spoke_down(&spec, name).unwrap();
    }
    n1.dp.lan_up(&spec, &n1.name).unwrap();
    assert_eq!(host_links(&n1), before);
    n1.dp.lan_down(&spec).unwrap();
    assert_eq!(host_links(&n1), before, "LAN down touched a node interface");
}

#[test]
#[ignore = "privileged"]
fn another_lans_spoke_links_are_never_touched() {
    let (_ul, n1) = one_node();
    let x = spoke("x");
    let a = lan_spec(901, &[&x]);
    let att = n1.spoke_up(&a, &x, SpokeKind::Mac);
    let mvt = macvtap_name(&x);
    // LAN b: a spoke of the same name. (A spoke named as a's macvtap, `mvt-<x>`, is refused by
    // the API rules before the node is looked at: unit tier.)
    let mut b = lan_spec(902, &[&x]);
    b.bridge = "brb".into();
    let held = (link_state(&n1, &x), link_state(&n1, &mvt));
    let tap = att.mac.as_ref().unwrap().tap_host_path.clone();
    for kind in SpokeKind::ALL {
        let e = n1
            .dp
            .spoke_up(&b, &n1.name, &x, kind)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "belongs to LAN {} as its host end of spoke {x}",
                a.ns
            )),
            "{kind}: {e}"
        );
    }
    n1.dp.spoke_down(&b, &x).unwrap();
    n1.dp.lan_down(&b).unwrap();
    assert_eq!((link_state(&n1, &x), link_state(&n1, &mvt)), held);
    assert!(tap.exists(), "LAN b removed LAN a's tap node");
    // LAN a's spoke is still whole: a second spoke up changes nothing.
    let again = n1.spoke_up(&a, &x, SpokeKind::Mac);
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    n1.dp.lan_down(&a).unwrap();
}

#[test]
#[ignore = "privileged"]
fn lo_and_k8slan_links_are_refused_as_underlay() {
    let (_ul, n1) = one_node();
    let (x, v) = (spoke("x"), spoke("v"));
    let a = lan_spec(903, &[&x, &v]);
    n1.spoke_up(&a, &x, SpokeKind::Veth);
    n1.spoke_up(&a, &v, SpokeKind::Mac);
    let before = host_links(&n1);
    let netns_dir = n1.dir.path().join("netns");
    let mvt = macvtap_name(&v);
    for (dev, why) in [
        // `lo` and a macvtap's name are refused by the API rules, a host end by the node.
        ("lo", "cannot carry the VXLAN".to_string()),
        (x.as_str(), format!("host end of spoke {x}")),
        (mvt.as_str(), "starts with \"mvt-\"".to_string()),
    ] {
        let mut b = lan_spec(904, &[&spoke("y")]);
        b.bridge = "brb".into();
        b.vxlan_dev_map.insert(n1.name.clone(), dev.into());
        let e = n1
            .dp
            .spoke_up(&b, &n1.name, &b.spokes[0], SpokeKind::Veth)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("spec.vxlanDevMap[{}]", n1.name)) && e.contains(&why),
            "{e}"
        );
        assert!(
            !netns_dir.join(&b.ns).exists(),
            "{dev}: a namespace was made"
        );
    }
    assert_eq!(host_links(&n1), before);
    n1.dp.lan_down(&a).unwrap();
}
