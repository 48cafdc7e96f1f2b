//! Who a unicast LAN floods to. A node *takes part* in a LAN while it holds at least one of its
//! spokes (a claim Lease names the node); its *address* is the one its node report gives for the
//! LAN's underlay device (`vxlanDevMap`/`defaultVxlanDev`, else its uplink) in the LAN's family.
//! Every node taking part sends each broadcast, unknown-unicast and multicast frame once to every
//! other one: its *peers*. Pure: the agents program these peers, the controller reports them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::lan::LanSpec;
use crate::report::{Claim, LanRef, NodeReport};

/// One node taking part in a LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The node's underlay device for the LAN, when its report names one.
    pub underlay: Option<String>,
    /// Its address on that device in the LAN's family, when it reported one.
    pub address: Option<IpAddr>,
}

/// The nodes taking part in `lan`, by node name, with what their reports say of their underlay.
pub fn members<'a>(
    lan: &LanRef,
    spec: &LanSpec,
    reports: impl IntoIterator<Item = (&'a str, &'a NodeReport)>,
    claims: impl IntoIterator<Item = &'a Claim>,
) -> BTreeMap<String, Member> {
    let reports: BTreeMap<&str, &NodeReport> = reports.into_iter().collect();
    let nodes: BTreeSet<&str> = claims
        .into_iter()
        .filter(|c| &c.lan == lan)
        .map(|c| c.node.as_str())
        .collect();
    nodes
        .into_iter()
        .map(|node| {
            let found = reports.get(node).and_then(|r| r.underlay_of(spec, node));
            let member = Member {
                underlay: found.map(|(dev, _)| dev.to_string()),
                address: found.and_then(|(_, addr)| addr),
            };
            (node.to_string(), member)
        })
        .collect()
}

/// The addresses `node` floods to: every other member's address (members that reported none
/// cannot be reached and are left out; so is this node's own address, should another node
/// report the same one).
pub fn peers_of(node: &str, members: &BTreeMap<String, Member>) -> BTreeSet<IpAddr> {
    let own = members.get(node).and_then(|m| m.address);
    members
        .iter()
        .filter(|(n, _)| n.as_str() != node)
        .filter_map(|(_, m)| m.address)
        .filter(|a| Some(*a) != own)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SpokeKind;
    use crate::report::UnderlayAddresses;

    fn spec(extra: serde_json::Value) -> LanSpec {
        let mut base = serde_json::json!({
            "ns": "lan", "bridge": "br0", "vxlan": "vx0", "vni": 9,
            "vxlanMode": "unicast", "spokes": ["a", "b", "c"],
        });
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    fn report(dev: &str, v6: &str, v4: Option<&str>, uplink: Option<&str>) -> NodeReport {
        NodeReport {
            underlays: BTreeMap::from([(
                dev.to_string(),
                UnderlayAddresses {
                    ipv6: Some(v6.parse().unwrap()),
                    ipv4: v4.map(|a| a.parse().unwrap()),
                },
            )]),
            uplink: uplink.map(str::to_string),
            ..NodeReport::default()
        }
    }

    fn by_node(
        reports: &BTreeMap<String, NodeReport>,
    ) -> impl Iterator<Item = (&str, &NodeReport)> {
        reports.iter().map(|(n, r)| (n.as_str(), r))
    }

    fn claim(spoke: &str, node: &str, lan: &str) -> Claim {
        let (ns, name) = lan.split_once('/').unwrap();
        Claim::new(spoke, node, LanRef::new(ns, name), SpokeKind::Veth)
    }

    #[test]
    fn only_nodes_holding_a_spoke_take_part_each_once() {
        let lan = LanRef::new("t", "l");
        let s = spec(serde_json::json!({"defaultVxlanDev": "eth1"}));
        let reports = BTreeMap::from([
            ("w1".to_string(), report("eth1", "fe80::1", None, None)),
            ("w2".to_string(), report("eth1", "fe80::2", None, None)),
            ("w3".to_string(), report("eth1", "fe80::3", None, None)),
        ]);
        let claims = [
            claim("a", "w1", "t/l"),
            claim("b", "w2", "t/l"),
            claim("c", "w2", "t/l"),
            claim("x", "w3", "t/other"),
        ];
        let m = members(&lan, &s, by_node(&reports), &claims);
        assert_eq!(m.keys().collect::<Vec<_>>(), ["w1", "w2"]);
        assert_eq!(
            peers_of("w1", &m),
            BTreeSet::from(["fe80::2".parse().unwrap()])
        );
        // A node without a member still floods to every member (it is nobody's peer).
        assert_eq!(peers_of("w3", &m).len(), 2);
    }

    #[test]
    fn the_family_and_the_uplink_pick_the_address() {
        let lan = LanRef::new("t", "l");
        let s = spec(serde_json::json!({"vxlanFamily": "ipv4"}));
        let reports = BTreeMap::from([
            (
                "w1".to_string(),
                report("eth0", "fe80::1", Some("198.18.0.11"), Some("eth0")),
            ),
            // Reports no IPv4 address: takes part, but nobody can reach it.
            (
                "w2".to_string(),
                report("eth0", "fe80::2", None, Some("eth0")),
            ),
            // Its uplink is another device than the one it reported addresses for.
            (
                "w3".to_string(),
                report("eth1", "fe80::3", Some("198.18.1.13"), Some("eth0")),
            ),
        ]);
        let claims = [
            claim("a", "w1", "t/l"),
            claim("b", "w2", "t/l"),
            claim("c", "w3", "t/l"),
        ];
        let m = members(&lan, &s, by_node(&reports), &claims);
        assert_eq!(m["w1"].address, Some("198.18.0.11".parse().unwrap()));
        assert_eq!(m["w2"].underlay.as_deref(), Some("eth0"));
        assert_eq!(m["w2"].address, None);
        assert_eq!(m["w3"].address, None);
        assert!(peers_of("w2", &m).contains(&"198.18.0.11".parse().unwrap()));
        assert!(peers_of("w1", &m).is_empty());
    }
}
