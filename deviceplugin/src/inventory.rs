//! The heart of the plugin, free of I/O: from the LANs, this node's name, which underlay devices
//! exist, the members held here and the cluster's claims, compute which resources the node
//! advertises, each device's health, and the node report.

use std::collections::{BTreeMap, BTreeSet};

use k8slan_api::naming::{macvtap_name, resource_name};
use k8slan_api::{SpokeKind, validate_spec};

use crate::claim::LeaseClaim;
use crate::lan::WatchedLan;
use crate::member::Members;
use crate::proto::v1beta1::Device;
use crate::proto::{HEALTHY, UNHEALTHY};
use crate::report::{LanNodeReport, NodeReport, NodeState, UnderlayAddresses};

/// A failed preparation of one of a LAN's spokes, reported until a later one succeeds or the
/// LAN's generation changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub generation: i64,
    pub message: String,
}

/// Everything the inventory depends on.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub node: &'a str,
    pub lans: &'a BTreeMap<String, WatchedLan>,
    /// This node's uplink (the interface carrying its InternalIP): the underlay of LANs that
    /// name no device.
    pub uplink: Option<&'a str>,
    /// Presence of each underlay device the LANs name for this node (absent = not present).
    pub underlays: &'a BTreeMap<String, bool>,
    /// Addresses of each present underlay device (reported for unicast peers).
    pub addresses: &'a BTreeMap<String, UnderlayAddresses>,
    pub members: &'a Members,
    pub claims: &'a BTreeMap<String, LeaseClaim>,
    /// By LAN key.
    pub failures: &'a BTreeMap<String, Failure>,
    /// Spokes held here by a pod of a namespace their LAN does not admit: spoke → pod.
    pub denied: &'a BTreeMap<String, String>,
}

/// Why a device is, or is not, allocatable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// The spoke's twin kind is held on this node.
    TwinHeldHere,
    /// Another node holds the spoke.
    HeldElsewhere {
        node: String,
    },
    /// A pod of a namespace the LAN does not admit holds the spoke here; it was torn down.
    Denied {
        pod: String,
    },
}

/// One advertised resource (one device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// `<namespace>/<name>` of the LAN.
    pub lan: String,
    pub spoke: String,
    pub kind: SpokeKind,
    pub device_id: String,
    /// Underlay device of the LAN on this node.
    pub underlay: String,
    pub health: Health,
}

impl Advert {
    /// The ListAndWatch device list of this resource.
    pub fn devices(&self) -> Vec<Device> {
        vec![Device {
            id: self.device_id.clone(),
            health: if self.health == Health::Healthy {
                HEALTHY
            } else {
                UNHEALTHY
            }
            .to_string(),
            topology: None,
        }]
    }
}

/// What the node advertises and reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// By full resource name (`macvtap.k8slan.io/k8slan-veth-<spoke>`).
    pub resources: BTreeMap<String, Advert>,
    pub report: NodeReport,
}

/// Device ID of a spoke's resource: the spoke for `Veth`, its macvtap name for `Mac` — the
/// `deviceID` Multus hands the CNI plugin.
pub fn device_id(kind: SpokeKind, spoke: &str) -> String {
    match kind {
        SpokeKind::Veth => spoke.to_string(),
        SpokeKind::Mac => macvtap_name(spoke),
    }
}

/// The underlay devices whose presence [`compute`] needs.
pub fn underlays_needed<'a>(
    node: &str,
    uplink: Option<&str>,
    lans: impl IntoIterator<Item = &'a WatchedLan>,
) -> BTreeSet<String> {
    lans.into_iter()
        .filter(|l| l.served())
        .filter_map(|l| l.spec.underlay_for(node, uplink).map(str::to_string))
        .collect()
}

/// Computes the inventory. LANs are visited in key order; a spoke that two LANs name is served
/// for the first and reported as a failure of the second.
pub fn compute(i: Inputs<'_>) -> Inventory {
    let mut inv = Inventory::default();
    let mut taken: BTreeMap<&str, &str> = BTreeMap::new();
    for lan in i.lans.values().filter(|l| l.served()) {
        let report = |state, message: String| LanNodeReport {
            state,
            message,
            generation: lan.generation,
        };
        let entry = match servable(&i, lan) {
            Err((state, message)) => report(state, message),
            Ok(underlay) => {
                let clashes = advertise(&i, lan, underlay, &mut taken, &mut inv.resources);
                let failure = i
                    .failures
                    .get(&lan.key)
                    .filter(|f| f.generation == lan.generation);
                if !clashes.is_empty() {
                    report(NodeState::Failed, clashes.join("; "))
                } else if let Some(f) = failure {
                    report(NodeState::Failed, f.message.clone())
                } else {
                    report(NodeState::Ready, String::new())
                }
            }
        };
        inv.report.lans.insert(lan.key.clone(), entry);
    }
    inv.report.uplink = i.uplink.map(str::to_string);
    inv.report.underlays = underlays_needed(i.node, i.uplink, i.lans.values())
        .into_iter()
        .filter_map(|d| i.addresses.get(&d).map(|a| (d, *a)))
        .collect();
    inv
}

/// The underlay this node serves the LAN on, or the state and message of why it cannot.
fn servable<'a>(i: &Inputs<'a>, lan: &'a WatchedLan) -> Result<&'a str, (NodeState, String)> {
    validate_spec(&lan.spec).map_err(|e| (NodeState::Failed, e.to_string()))?;
    let Some(underlay) = lan.spec.underlay_for(i.node, i.uplink) else {
        let why = if lan.spec.uses_uplink() {
            "the LAN names no underlay device and the agent found no uplink (no host interface carries the node's InternalIP, --node-ip); set defaultVxlanDev"
        } else {
            "the LAN has neither a vxlanDevMap entry for it nor a defaultVxlanDev"
        };
        return Err((
            NodeState::NoUnderlay,
            format!("no underlay device for node {}: {why}", i.node),
        ));
    };
    if !i.underlays.get(underlay).copied().unwrap_or(false) {
        return Err((
            NodeState::NoUnderlay,
            format!(
                "underlay device {underlay} does not exist in the host network namespace of node {}",
                i.node
            ),
        ));
    }
    Ok(underlay)
}

/// Adds both resources of every spoke of the LAN not `taken` by an earlier LAN; returns the
/// clashes with earlier LANs.
fn advertise<'a>(
    i: &Inputs<'_>,
    lan: &'a WatchedLan,
    underlay: &str,
    taken: &mut BTreeMap<&'a str, &'a str>,
    resources: &mut BTreeMap<String, Advert>,
) -> Vec<String> {
    let mut clashes = Vec::new();
    for spoke in &lan.spec.spokes {
        if let Some(other) = taken.get(spoke.as_str()) {
            clashes.push(format!("spoke {spoke} is already served for LAN {other}"));
            continue;
        }
        taken.insert(spoke, &lan.key);
        for kind in SpokeKind::ALL {
            resources.insert(
                resource_name(kind, spoke),
                Advert {
                    lan: lan.key.clone(),
                    spoke: spoke.clone(),
                    kind,
                    device_id: device_id(kind, spoke),
                    underlay: underlay.to_string(),
                    health: health(i, spoke, kind),
                },
            );
        }
    }
    clashes
}

fn health(i: &Inputs<'_>, spoke: &str, kind: SpokeKind) -> Health {
    if let Some(pod) = i.denied.get(spoke) {
        return Health::Denied { pod: pod.clone() };
    }
    if i.members.get(spoke).is_some_and(|m| m.kind != kind) {
        return Health::TwinHeldHere;
    }
    // Our own member (same kind) wins over a claim the watch has not caught up with.
    if i.members.get(spoke).is_none()
        && let Some(c) = i.claims.get(spoke).filter(|c| c.claim.node != i.node)
    {
        return Health::HeldElsewhere {
            node: c.claim.node.clone(),
        };
    }
    Health::Healthy
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use k8slan_api::LanSpec;

    use super::*;
    use crate::member::{Holding, Holdings};

    fn spec(spokes: &[&str]) -> LanSpec {
        serde_json::from_value(serde_json::json!({
            "ns": "lan1", "bridge": "br0", "vxlan": "vx0", "vni": 100,
            "defaultVxlanDev": "eth1",
            "vxlanDevMap": {"node-b": "eth2"},
            "spokes": spokes,
        }))
        .unwrap()
    }

    fn view(key: &str, spokes: &[&str], accepted: Option<bool>) -> WatchedLan {
        WatchedLan {
            key: key.into(),
            generation: 2,
            spec: spec(spokes),
            accepted,
        }
    }

    struct World {
        uplink: Option<&'static str>,
        lans: BTreeMap<String, WatchedLan>,
        underlays: BTreeMap<String, bool>,
        addresses: BTreeMap<String, UnderlayAddresses>,
        members: Members,
        claims: BTreeMap<String, LeaseClaim>,
        failures: BTreeMap<String, Failure>,
        denied: BTreeMap<String, String>,
    }

    impl World {
        fn new(lans: Vec<WatchedLan>) -> Self {
            World {
                uplink: None,
                lans: lans.into_iter().map(|l| (l.key.clone(), l)).collect(),
                underlays: BTreeMap::from([("eth1".into(), true), ("eth2".into(), false)]),
                addresses: BTreeMap::new(),
                members: Members::default(),
                claims: BTreeMap::new(),
                failures: BTreeMap::new(),
                denied: BTreeMap::new(),
            }
        }
        fn compute(&self, node: &str) -> Inventory {
            compute(Inputs {
                node,
                lans: &self.lans,
                uplink: self.uplink,
                underlays: &self.underlays,
                addresses: &self.addresses,
                members: &self.members,
                claims: &self.claims,
                failures: &self.failures,
                denied: &self.denied,
            })
        }
    }

    fn health_of(inv: &Inventory, kind: SpokeKind, spoke: &str) -> Health {
        inv.resources[&resource_name(kind, spoke)].health.clone()
    }

    #[test]
    fn every_spoke_gets_two_healthy_resources_with_multus_device_ids() {
        let w = World::new(vec![view("default/a", &["s1", "s2"], Some(true))]);
        let inv = w.compute("node-a");
        assert_eq!(inv.resources.len(), 4);
        let veth = &inv.resources["macvtap.k8slan.io/k8slan-veth-s1"];
        assert_eq!(veth.device_id, "s1");
        assert_eq!(veth.devices()[0].health, "Healthy");
        let mac = &inv.resources["macvtap.k8slan.io/k8slan-mac-s2"];
        assert_eq!(mac.device_id, macvtap_name("s2"));
        assert_eq!(mac.underlay, "eth1");
        assert_eq!(inv.report.lans["default/a"].state, NodeState::Ready);
        assert_eq!(inv.report.lans["default/a"].generation, 2);
    }

    #[test]
    fn rejected_lan_is_not_served_but_unjudged_lan_is() {
        let w = World::new(vec![
            view("default/no", &["s1"], Some(false)),
            view("default/new", &["s2"], None),
        ]);
        let inv = w.compute("node-a");
        assert!(
            !inv.resources
                .contains_key("macvtap.k8slan.io/k8slan-veth-s1")
        );
        assert!(
            inv.resources
                .contains_key("macvtap.k8slan.io/k8slan-veth-s2")
        );
        assert!(!inv.report.lans.contains_key("default/no"));
    }

    #[test]
    fn missing_underlay_advertises_nothing_and_says_why() {
        let w = World::new(vec![view("default/a", &["s1"], Some(true))]);
        // node-b maps to eth2, which does not exist.
        let inv = w.compute("node-b");
        assert!(inv.resources.is_empty());
        let r = &inv.report.lans["default/a"];
        assert_eq!(r.state, NodeState::NoUnderlay);
        assert!(r.message.contains("eth2"), "{}", r.message);
        assert!(r.message.contains("node-b"), "{}", r.message);
    }

    #[test]
    fn lan_without_underlay_for_node_reports_no_underlay() {
        let mut w = World::new(vec![view("default/a", &["s1"], None)]);
        w.lans.get_mut("default/a").unwrap().spec.default_vxlan_dev = None;
        let inv = w.compute("node-a");
        assert!(inv.resources.is_empty());
        assert_eq!(inv.report.lans["default/a"].state, NodeState::NoUnderlay);
    }

    #[test]
    fn a_lan_naming_no_device_is_served_on_the_uplink_and_its_addresses_reported() {
        let mut w = World::new(vec![view("default/a", &["s1"], None)]);
        let spec = &mut w.lans.get_mut("default/a").unwrap().spec;
        spec.default_vxlan_dev = None;
        spec.vxlan_dev_map.clear();
        let addrs = UnderlayAddresses::pick(["fe80::1".parse().unwrap()]);
        w.addresses.insert("eth1".into(), addrs);
        w.uplink = Some("eth1");
        let inv = w.compute("node-a");
        assert_eq!(inv.report.lans["default/a"].state, NodeState::Ready);
        assert_eq!(inv.resources.len(), 2);
        assert_eq!(inv.report.uplink.as_deref(), Some("eth1"));
        assert_eq!(inv.report.underlays["eth1"], addrs);
        // No uplink found: the LAN is not served here, and the message says why.
        w.uplink = None;
        let inv = w.compute("node-a");
        let r = &inv.report.lans["default/a"];
        assert_eq!(r.state, NodeState::NoUnderlay);
        assert!(r.message.contains("no uplink"), "{}", r.message);
        assert!(inv.report.underlays.is_empty());
    }

    #[test]
    fn invalid_spec_is_reported_failed() {
        let mut w = World::new(vec![view("default/a", &["s1"], None)]);
        w.lans.get_mut("default/a").unwrap().spec.ns = "../etc".into();
        let inv = w.compute("node-a");
        assert!(inv.resources.is_empty());
        let r = &inv.report.lans["default/a"];
        assert_eq!(r.state, NodeState::Failed);
        assert!(r.message.contains("ns"), "{}", r.message);
    }

    #[test]
    fn local_member_makes_its_twin_unhealthy_only() {
        let mut w = World::new(vec![view("default/a", &["s1", "s2"], None)]);
        w.members
            .reserve("s1", SpokeKind::Veth, Instant::now())
            .unwrap();
        let inv = w.compute("node-a");
        assert_eq!(health_of(&inv, SpokeKind::Veth, "s1"), Health::Healthy);
        assert_eq!(health_of(&inv, SpokeKind::Mac, "s1"), Health::TwinHeldHere);
        assert_eq!(health_of(&inv, SpokeKind::Mac, "s2"), Health::Healthy);
        // The member leaves: the twin is healthy again.
        w.members.observe(
            &Holdings::new(),
            Instant::now() + std::time::Duration::from_secs(3600),
            std::time::Duration::from_secs(1),
        );
        let inv = w.compute("node-a");
        assert_eq!(health_of(&inv, SpokeKind::Mac, "s1"), Health::Healthy);
    }

    #[test]
    fn kubelet_reported_member_makes_twin_unhealthy() {
        let mut w = World::new(vec![view("default/a", &["s1"], None)]);
        w.members.observe(
            &Holdings::from([(
                "s1".into(),
                Holding {
                    kind: SpokeKind::Mac,
                    pod: "ns/vm".into(),
                },
            )]),
            Instant::now(),
            std::time::Duration::from_secs(60),
        );
        let inv = w.compute("node-a");
        assert_eq!(health_of(&inv, SpokeKind::Veth, "s1"), Health::TwinHeldHere);
        assert_eq!(health_of(&inv, SpokeKind::Mac, "s1"), Health::Healthy);
    }

    #[test]
    fn remote_claim_makes_both_kinds_unhealthy_here_but_not_on_holder() {
        let mut w = World::new(vec![view("default/a", &["s1"], None)]);
        w.claims.insert(
            "s1".into(),
            LeaseClaim {
                claim: crate::claim::Claim {
                    pod: Some("ns/p".into()),
                    ..crate::claim::Claim::new(
                        "s1",
                        "node-b",
                        k8slan_api::report::LanRef::new("default", "a"),
                        SpokeKind::Veth,
                    )
                },
                uid: None,
            },
        );
        let inv = w.compute("node-a");
        for kind in SpokeKind::ALL {
            assert_eq!(
                health_of(&inv, kind, "s1"),
                Health::HeldElsewhere {
                    node: "node-b".into()
                }
            );
        }
        // On the holder itself (eth2 present there) the claim is its own: healthy.
        w.underlays.insert("eth2".into(), true);
        let inv = w.compute("node-b");
        assert_eq!(health_of(&inv, SpokeKind::Veth, "s1"), Health::Healthy);
    }

    #[test]
    fn spoke_in_two_lans_is_served_once_and_reported() {
        let w = World::new(vec![
            view("default/a", &["s1"], None),
            view("default/b", &["s1", "s2"], None),
        ]);
        let inv = w.compute("node-a");
        assert_eq!(
            inv.resources["macvtap.k8slan.io/k8slan-veth-s1"].lan,
            "default/a"
        );
        assert_eq!(
            inv.resources["macvtap.k8slan.io/k8slan-veth-s2"].lan,
            "default/b"
        );
        let r = &inv.report.lans["default/b"];
        assert_eq!(r.state, NodeState::Failed);
        assert!(r.message.contains("default/a"), "{}", r.message);
    }

    #[test]
    fn failure_is_reported_for_its_generation_only() {
        let mut w = World::new(vec![view("default/a", &["s1"], None)]);
        w.failures.insert(
            "default/a".into(),
            Failure {
                generation: 2,
                message: "bridge br0: boom".into(),
            },
        );
        let inv = w.compute("node-a");
        assert_eq!(inv.report.lans["default/a"].state, NodeState::Failed);
        // Devices stay advertised: the next Allocate may succeed.
        assert_eq!(inv.resources.len(), 2);
        w.lans.get_mut("default/a").unwrap().generation = 3;
        let inv = w.compute("node-a");
        assert_eq!(inv.report.lans["default/a"].state, NodeState::Ready);
    }

    #[test]
    fn underlays_needed_lists_this_nodes_devices_of_served_lans() {
        let lans = [
            view("default/a", &["s1"], None),
            view("default/b", &["s2"], Some(false)),
        ];
        assert_eq!(
            underlays_needed("node-b", None, &lans),
            BTreeSet::from(["eth2".to_string()])
        );
        assert_eq!(
            underlays_needed("node-x", None, &lans),
            BTreeSet::from(["eth1".to_string()])
        );
    }

    #[test]
    fn a_spoke_denied_here_is_unhealthy_for_both_kinds() {
        let mut w = World::new(vec![view("default/a", &["s1", "s2"], None)]);
        w.members
            .reserve("s1", SpokeKind::Mac, Instant::now())
            .unwrap();
        w.denied.insert("s1".into(), "other/vm".into());
        let inv = w.compute("node-a");
        for kind in SpokeKind::ALL {
            assert_eq!(
                health_of(&inv, kind, "s1"),
                Health::Denied {
                    pod: "other/vm".into()
                }
            );
            assert_eq!(health_of(&inv, kind, "s2"), Health::Healthy);
        }
    }
}
