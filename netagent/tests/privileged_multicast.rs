//! Privileged tests of the node's multicast membership limit on the real kernel: every multicast
//! VXLAN of a node on one port and family shares one socket in the node's host namespace, and
//! the kernel lets it join only so many groups (IPv4: `net.ipv4.igmp_max_memberships`; IPv6: as
//! many as `net.core.optmem_max` bytes hold). Both sysctls are per network namespace, so each
//! test lowers them on its simulated node alone. Run as root:
//! `cargo test -p k8slan-netagent -- --ignored`.

mod common;

use common::*;
use k8slan_api::{LanSpec, VxlanFamily, VxlanMode};
use k8slan_netagent::{DatapathError, Kernel};

/// A multicast LAN of one spoke on group `group`, of the group's family.
fn multicast(vni: u32, group: &str) -> LanSpec {
    let mut s = lan_spec(vni, &[&spoke("a")]);
    s.vxlan_family = if group.contains(':') {
        VxlanFamily::Ipv6
    } else {
        VxlanFamily::Ipv4
    };
    s.vxlan_grp = Some(group.into());
    s
}

/// Asserts that `e` is the refused membership of `group` and that its message names `sysctl`
/// and the fixes.
#[track_caller]
fn assert_refused(e: &DatapathError, group: &str, sysctl: &str) {
    assert!(
        matches!(e, DatapathError::MulticastLimit { group: g, dev, .. }
            if g.to_string() == group && dev == UNDERLAY),
        "{e:?}"
    );
    let msg = e.to_string();
    for part in [sysctl, "spec.vxlanMode to unicast", "spec.vxlanGrp"] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
}

#[test]
#[ignore = "privileged"]
fn an_ipv4_lan_past_the_membership_limit_fails_clearly_and_others_keep_working() {
    let (_ul, n1) = one_node();
    n1.sh(&format!(
        "sysctl -qw net.ipv4.igmp_max_memberships=2 && ip addr add 198.18.80.1/24 dev {UNDERLAY}"
    ));
    let lans: Vec<LanSpec> = (1..=3)
        .map(|i| multicast(4400 + i, &format!("239.1.30.{i}")))
        .collect();
    n1.dp.lan_up(&lans[0], &n1.name).unwrap();
    n1.dp.lan_up(&lans[1], &n1.name).unwrap();
    let e = n1.dp.lan_up(&lans[2], &n1.name).unwrap_err();
    assert_refused(&e, "239.1.30.3", "net.ipv4.igmp_max_memberships");
    // The refused LAN left nothing; the other two are up.
    assert!(!n1.dp.kernel().lan_namespace_exists(&lans[2].ns).unwrap());
    for l in &lans[..2] {
        assert!(n1.lan_sh(&l.ns, "ip -o link show vx0").contains(",UP"));
    }

    // Each fix the message names works. A LAN sharing a group joins nothing new:
    let mut shared = lans[2].clone();
    shared.vxlan_grp = Some("239.1.30.1".into());
    n1.dp.lan_up(&shared, &n1.name).unwrap();
    n1.dp.lan_down(&shared).unwrap();
    // unicast joins no group at all:
    let mut unicast = lans[2].clone();
    unicast.vxlan_mode = VxlanMode::Unicast;
    unicast.vxlan_grp = None;
    n1.dp.lan_up(&unicast, &n1.name).unwrap();
    n1.dp.lan_down(&unicast).unwrap();
    // and a higher limit admits the group.
    n1.sh("sysctl -qw net.ipv4.igmp_max_memberships=3");
    n1.dp.lan_up(&lans[2], &n1.name).unwrap();
    for l in &lans {
        n1.dp.lan_down(l).unwrap();
    }
}

#[test]
#[ignore = "privileged"]
fn an_ipv6_lan_past_the_option_memory_fails_clearly() {
    let (_ul, n1) = one_node();
    // Room for a handful of IPv6 memberships (~56 bytes each) on the shared socket.
    n1.sh("sysctl -qw net.core.optmem_max=300");
    let mut up = Vec::new();
    let refused = (1..=20).find_map(|i| {
        let l = multicast(4410 + i, &format!("ff02::4b38:{i}"));
        match n1.dp.lan_up(&l, &n1.name) {
            Ok(_) => {
                up.push(l);
                None
            }
            Err(e) => Some((i, e)),
        }
    });
    let (i, e) = refused.expect("20 IPv6 groups joined within 300 bytes of option memory");
    assert!(up.len() >= 2, "only {} groups before the refusal", up.len());
    assert_refused(&e, &format!("ff02::4b38:{i}"), "net.core.optmem_max");
    // A LAN on a group already joined still comes up.
    let mut shared = multicast(4440, "ff02::4b38:1");
    shared.spokes = vec![spoke("s")];
    n1.dp.lan_up(&shared, &n1.name).unwrap();
    up.push(shared);
    for l in &up {
        n1.dp.lan_down(l).unwrap();
    }
}
