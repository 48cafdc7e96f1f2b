//! The multicast limit: how many multicast LANs one node holds, with a distinct group each and
//! with one shared group, at the kernel's default limits, before the kernel refuses a
//! membership. Every multicast VXLAN of a node on one port and family shares one socket in the
//! node's host namespace, and joins its group when it comes up.

use std::time::Instant;

use k8slan_api::{LanSpec, VxlanFamily};
use k8slan_netagent::DatapathError;

use crate::common::*;

/// A multicast LAN of one spoke on `group` (of the group's family).
fn multicast(vni: u32, group: String) -> LanSpec {
    let mut s = lan_spec(vni, &[&spoke("m")]);
    s.vxlan_family = if group.contains(':') {
        VxlanFamily::Ipv6
    } else {
        VxlanFamily::Ipv4
    };
    s.vxlan_grp = Some(group);
    s
}

/// The `i`th group (from 0) of the family.
fn group(family: VxlanFamily, i: usize) -> String {
    match family {
        VxlanFamily::Ipv4 => format!("239.2.{}.{}", i / 250, 1 + i % 250),
        VxlanFamily::Ipv6 => format!("ff02::4b38:{:x}", i + 1),
    }
}

/// Brings LANs up on a fresh node, the `i`th on `group_of(i)`, until the kernel refuses one or
/// `cap` are up; prints how many came up and the refusal, then takes them down.
fn fill(what: &str, cap: usize, group_of: impl Fn(usize) -> String, sysctl: &str) {
    let (_ul, n1) = one_node();
    let limit = n1.sh(&format!("sysctl -n {sysctl}"));
    let mut up = Vec::new();
    let t = Instant::now();
    let refused = (0..cap).find_map(|i| {
        let lan = multicast(20_000 + i as u32, group_of(i));
        match n1.dp.lan_up(&lan, &n1.name) {
            Ok(_) => {
                up.push(lan);
                None
            }
            Err(e) => Some(e),
        }
    });
    let took = t.elapsed();
    match refused {
        Some(e @ DatapathError::MulticastLimit { .. }) => println!(
            "multicast limit, {what} ({sysctl}={}): {} LANs up, the next refused after {:.1} s: {e}",
            limit.trim(),
            up.len(),
            took.as_secs_f64()
        ),
        Some(e) => println!(
            "multicast limit, {what}: {} LANs up, then another error: {e}",
            up.len()
        ),
        None => println!(
            "multicast limit, {what} ({sysctl}={}): all {cap} LANs up in {:.1} s, none refused",
            limit.trim(),
            took.as_secs_f64()
        ),
    }
    for lan in &up {
        n1.dp.lan_down(lan).unwrap();
    }
}

/// Distinct groups up to `cap` LANs, and `shared` LANs on one group, for each family.
pub fn limits(cap: usize, shared: usize) {
    let sysctl = |f| match f {
        VxlanFamily::Ipv4 => "net.ipv4.igmp_max_memberships",
        VxlanFamily::Ipv6 => "net.core.optmem_max",
    };
    for family in [VxlanFamily::Ipv4, VxlanFamily::Ipv6] {
        fill(
            &format!("{} distinct groups", family.as_str()),
            cap,
            |i| group(family, i),
            sysctl(family),
        );
        fill(
            &format!("{} one shared group", family.as_str()),
            shared,
            |_| group(family, 0),
            sysctl(family),
        );
    }
}
