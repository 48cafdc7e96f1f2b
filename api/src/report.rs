//! What the node agents tell the controller, through two kinds of `coordination.k8s.io/v1`
//! Lease in the release namespace (one small object per node and per held spoke, so that many
//! nodes never race on one LAN's status):
//!
//! - a *node report* per node, named [`node_report_lease_name`](crate::naming::node_report_lease_name),
//!   labelled [`LEASE_ROLE_LABEL`](crate::naming::LEASE_ROLE_LABEL)`=`[`ROLE_NODE_REPORT`], whose
//!   annotation [`REPORT_ANNOTATION`] holds a [`NodeReport`] as JSON:
//!   `{"lans":{"<lan-namespace>/<lan-name>":{"state":"Ready","message":"...","generation":3}}}`;
//! - a *spoke claim* per held spoke, named [`claim_lease_name`](crate::naming::claim_lease_name),
//!   labelled `k8slan.io/role=claim`, `holderIdentity` = node name, with the annotations
//!   [`CLAIM_LAN_ANNOTATION`] (`<ns>/<name>`), [`CLAIM_KIND_ANNOTATION`] (`veth`|`mac`) and, once
//!   known, [`CLAIM_POD_ANNOTATION`] (`<ns>/<name>`) and [`CLAIM_POD_UID_ANNOTATION`] (the pod's
//!   `metadata.uid`). [`Claim`] is the one reader and writer of them (and of the whole Lease).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use serde::{Deserialize, Serialize};

use crate::lan::{LanSpec, VxlanFamily};
use crate::naming::{LEASE_ROLE_LABEL, MANAGED_BY, MANAGED_BY_LABEL, SpokeKind, claim_lease_name};

/// Value of [`crate::naming::LEASE_ROLE_LABEL`] on node-report Leases.
pub const ROLE_NODE_REPORT: &str = "node-report";
/// Value of [`crate::naming::LEASE_ROLE_LABEL`] on spoke-claim Leases.
pub const ROLE_CLAIM: &str = "claim";
/// Annotation of a node-report Lease holding the [`NodeReport`] JSON.
pub const REPORT_ANNOTATION: &str = "k8slan.io/report";
/// Claim annotation: the LAN (`<namespace>/<name>`) the claimed spoke belongs to.
pub const CLAIM_LAN_ANNOTATION: &str = "k8slan.io/lan";
/// Claim annotation: `veth` (a pod) or `mac` (a VM).
pub const CLAIM_KIND_ANNOTATION: &str = "k8slan.io/kind";
/// Claim annotation: the pod (`<namespace>/<name>`) holding the spoke, once known.
pub const CLAIM_POD_ANNOTATION: &str = "k8slan.io/pod";
/// Claim annotation: `metadata.uid` of the pod holding the spoke, once known (a pod deleted and
/// created again under the same name has another UID).
pub const CLAIM_POD_UID_ANNOTATION: &str = "k8slan.io/pod-uid";
/// Prefix of a claim Lease's name, followed by the spoke (see [`crate::naming::claim_lease_name`]).
pub const CLAIM_LEASE_PREFIX: &str = "spoke-";

/// A report or claim that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(
        "node report is not valid JSON of the form {{\"lans\":{{\"<ns>/<name>\":{{\"state\":...}}}}}}: {0}"
    )]
    Json(#[from] serde_json::Error),
    #[error("claim {lease:?}: {what}")]
    Claim { lease: String, what: String },
}

/// `<namespace>/<name>` of a LAN, the key of reports and claims.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LanRef {
    pub namespace: String,
    pub name: String,
}

impl LanRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Parses `<namespace>/<name>`; both parts must be non-empty and contain no further `/`.
    pub fn parse(s: &str) -> Option<Self> {
        let (ns, name) = s.split_once('/')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then(|| Self::new(ns, name))
    }
}

impl fmt::Display for LanRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How far a node got with one LAN.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// The LAN namespace, bridge and VXLAN are programmed as the spec at `generation` says.
    Ready,
    /// Programming failed; `message` says why.
    Failed,
    /// The node has no underlay device for the LAN (no `vxlanDevMap` entry, no default, or the
    /// device is missing); the node does not take part.
    NoUnderlay,
    /// A state this version does not know (written by a newer agent).
    #[serde(other)]
    Unknown,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Ready => "Ready",
            NodeState::Failed => "Failed",
            NodeState::NoUnderlay => "NoUnderlay",
            NodeState::Unknown => "Unknown",
        }
    }
}

/// One node's state for one LAN.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LanNodeReport {
    pub state: NodeState,
    /// Why, when not `Ready`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// `metadata.generation` of the LAN the node acted on.
    pub generation: i64,
}

/// Everything one node reports: its state per LAN (keyed by `<lan-namespace>/<lan-name>`), and
/// what other nodes need to flood a unicast LAN to it: the addresses of the underlay devices its
/// LANs use, and its uplink (the interface carrying its InternalIP, the underlay of LANs that
/// name none).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeReport {
    #[serde(default)]
    pub lans: BTreeMap<String, LanNodeReport>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub underlays: BTreeMap<String, UnderlayAddresses>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
}

/// The addresses a node floods from and is reached at on one underlay device, per family:
/// IPv6 the first global or ULA address, else the link-local one; IPv4 the first.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnderlayAddresses {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
}

impl UnderlayAddresses {
    /// Picks the addresses of one device from all of its addresses.
    pub fn pick(addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut picked = Self::default();
        for addr in addresses {
            match addr {
                IpAddr::V4(a) => {
                    picked.ipv4.get_or_insert(a);
                }
                IpAddr::V6(a) if a.is_unicast_link_local() => {
                    picked.ipv6.get_or_insert(a);
                }
                IpAddr::V6(a) => {
                    if picked.ipv6.is_none_or(|p| p.is_unicast_link_local()) {
                        picked.ipv6 = Some(a);
                    }
                }
            }
        }
        picked
    }

    /// The address of `family`.
    pub fn get(&self, family: VxlanFamily) -> Option<IpAddr> {
        match family {
            VxlanFamily::Ipv6 => self.ipv6.map(IpAddr::V6),
            VxlanFamily::Ipv4 => self.ipv4.map(IpAddr::V4),
        }
    }
}

impl NodeReport {
    /// Reads the value of the [`REPORT_ANNOTATION`] annotation.
    pub fn parse(annotation: &str) -> Result<Self, ReportError> {
        Ok(serde_json::from_str(annotation)?)
    }

    /// The value to store in the [`REPORT_ANNOTATION`] annotation (compact JSON, stable key order).
    pub fn to_annotation(&self) -> String {
        // A map of plain structs with string keys always serialises.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// This node's entry for one LAN.
    pub fn lan(&self, lan: &LanRef) -> Option<&LanNodeReport> {
        self.lans.get(&lan.to_string())
    }

    /// The underlay device `node` (whose report this is) uses for a LAN, and its address of
    /// the LAN's family, when the node reported one.
    pub fn underlay_of<'a>(
        &'a self,
        spec: &'a LanSpec,
        node: &str,
    ) -> Option<(&'a str, Option<IpAddr>)> {
        let dev = spec.underlay_for(node, self.uplink.as_deref())?;
        let addr = self
            .underlays
            .get(dev)
            .and_then(|a| a.get(spec.vxlan_family));
        Some((dev, addr))
    }
}

/// A spoke held on a node, as recorded in a claim Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub spoke: String,
    /// `holderIdentity` of the Lease.
    pub node: String,
    pub lan: LanRef,
    pub kind: SpokeKind,
    /// `<namespace>/<name>` of the pod, once known.
    pub pod: Option<String>,
    /// `metadata.uid` of that pod, once known.
    pub pod_uid: Option<String>,
}

impl Claim {
    /// A claim of `spoke` by `node`, its member not known yet.
    pub fn new(spoke: &str, node: &str, lan: LanRef, kind: SpokeKind) -> Self {
        Self {
            spoke: spoke.to_string(),
            node: node.to_string(),
            lan,
            kind,
            pod: None,
            pod_uid: None,
        }
    }

    /// Reads a claim from its Lease name, `holderIdentity` and annotations.
    pub fn from_lease(
        lease_name: &str,
        holder: Option<&str>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Self, ReportError> {
        let bad = |what: String| ReportError::Claim {
            lease: lease_name.to_string(),
            what,
        };
        let spoke = spoke_of_claim_lease(lease_name)
            .ok_or_else(|| bad(format!("name does not start with {CLAIM_LEASE_PREFIX:?}")))?;
        let node = holder
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("has no holderIdentity (the node holding the spoke)".into()))?;
        let lan_s = annotations
            .get(CLAIM_LAN_ANNOTATION)
            .ok_or_else(|| bad(format!("has no {CLAIM_LAN_ANNOTATION} annotation")))?;
        let lan = LanRef::parse(lan_s).ok_or_else(|| {
            bad(format!(
                "{CLAIM_LAN_ANNOTATION}={lan_s:?} is not <namespace>/<name>"
            ))
        })?;
        let kind_s = annotations
            .get(CLAIM_KIND_ANNOTATION)
            .ok_or_else(|| bad(format!("has no {CLAIM_KIND_ANNOTATION} annotation")))?;
        let kind = kind_s
            .parse::<SpokeKind>()
            .map_err(|e| bad(format!("{CLAIM_KIND_ANNOTATION}: {e}")))?;
        let text = |key: &str| annotations.get(key).filter(|p| !p.is_empty()).cloned();
        Ok(Self {
            pod: text(CLAIM_POD_ANNOTATION),
            pod_uid: text(CLAIM_POD_UID_ANNOTATION),
            ..Self::new(spoke, node, lan, kind)
        })
    }

    /// Reads a claim from a whole Lease object.
    pub fn from_lease_object(lease: &Lease) -> Result<Self, ReportError> {
        let empty = BTreeMap::new();
        let holder = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref());
        Self::from_lease(
            lease.metadata.name.as_deref().unwrap_or_default(),
            holder,
            lease.metadata.annotations.as_ref().unwrap_or(&empty),
        )
    }

    /// Every claim annotation with its value, `None` where the claim has none. The one place
    /// that maps the fields to annotations: [`Claim::annotations`] and [`Claim::annotation_patch`]
    /// are built from it.
    fn entries(&self) -> [(&'static str, Option<String>); 4] {
        [
            (CLAIM_LAN_ANNOTATION, Some(self.lan.to_string())),
            (CLAIM_KIND_ANNOTATION, Some(self.kind.to_string())),
            (CLAIM_POD_ANNOTATION, self.pod.clone()),
            (CLAIM_POD_UID_ANNOTATION, self.pod_uid.clone()),
        ]
    }

    /// The annotations a claim Lease carries (the Lease name and holder are set separately).
    pub fn annotations(&self) -> BTreeMap<String, String> {
        self.entries()
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), v?)))
            .collect()
    }

    /// The annotations as a JSON merge patch: every claim annotation, `null` for the absent ones
    /// (so that a patch also drops a pod that is no longer the member).
    pub fn annotation_patch(&self) -> serde_json::Map<String, serde_json::Value> {
        self.entries()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.map_or(serde_json::Value::Null, Into::into)))
            .collect()
    }

    /// The Lease recording this claim in `namespace`.
    pub fn to_lease(&self, namespace: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(claim_lease_name(&self.spoke)),
                namespace: Some(namespace.to_string()),
                labels: Some(BTreeMap::from([
                    (LEASE_ROLE_LABEL.to_string(), ROLE_CLAIM.to_string()),
                    (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                ])),
                annotations: Some(self.annotations()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.node.clone()),
                acquire_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
                ..Default::default()
            }),
        }
    }
}

/// The spoke named by a claim Lease (`spoke-<spoke>`), the inverse of
/// [`crate::naming::claim_lease_name`].
pub fn spoke_of_claim_lease(lease_name: &str) -> Option<&str> {
    lease_name
        .strip_prefix(CLAIM_LEASE_PREFIX)
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::naming::claim_lease_name;

    #[test]
    fn node_report_round_trip_matches_the_agreed_json() {
        let json = r#"{"lans":{"default/lan-a":{"state":"Ready","generation":3},"team/b":{"state":"NoUnderlay","message":"no device eth9","generation":1}}}"#;
        let r = NodeReport::parse(json).unwrap();
        let a = r.lan(&LanRef::new("default", "lan-a")).unwrap();
        assert_eq!(a.state, NodeState::Ready);
        assert_eq!(a.generation, 3);
        assert_eq!(
            r.lan(&LanRef::new("team", "b")).unwrap().message,
            "no device eth9"
        );
        assert_eq!(r.to_annotation(), json);
        assert_eq!(NodeReport::parse(&r.to_annotation()).unwrap(), r);
    }

    #[test]
    fn underlay_addresses_prefer_global_ipv6_and_the_first_ipv4() {
        let addrs = [
            "fe80::1",
            "198.18.1.11",
            "fd00::11",
            "2001:db8::1",
            "198.18.1.99",
        ];
        let picked = UnderlayAddresses::pick(addrs.iter().map(|a| a.parse().unwrap()));
        assert_eq!(picked.ipv6, Some("fd00::11".parse().unwrap()));
        assert_eq!(picked.ipv4, Some("198.18.1.11".parse().unwrap()));
        let only_ll = UnderlayAddresses::pick(["fe80::2".parse().unwrap()]);
        assert_eq!(
            only_ll.get(VxlanFamily::Ipv6),
            Some("fe80::2".parse().unwrap())
        );
        assert_eq!(only_ll.get(VxlanFamily::Ipv4), None);
        let json = r#"{"lans":{},"underlays":{"eth1":{"ipv6":"fe80::2"}},"uplink":"eth0"}"#;
        let r = NodeReport::parse(json).unwrap();
        assert_eq!(r.uplink.as_deref(), Some("eth0"));
        assert_eq!(r.to_annotation(), json);
    }

    #[test]
    fn unknown_states_and_empty_reports_still_parse() {
        let r =
            NodeReport::parse(r#"{"lans":{"a/b":{"state":"Draining","generation":2}}}"#).unwrap();
        assert_eq!(r.lans["a/b"].state, NodeState::Unknown);
        assert_eq!(NodeReport::parse("{}").unwrap(), NodeReport::default());
        let err = NodeReport::parse("not json").unwrap_err().to_string();
        assert!(err.contains("node report is not valid JSON"), "{err}");
    }

    #[test]
    fn claim_from_lease() {
        let mut ann = BTreeMap::from([
            (
                CLAIM_LAN_ANNOTATION.to_string(),
                "default/lan-a".to_string(),
            ),
            (CLAIM_KIND_ANNOTATION.to_string(), "mac".to_string()),
        ]);
        let c = Claim::from_lease(&claim_lease_name("vm1"), Some("worker2"), &ann).unwrap();
        assert_eq!(c.spoke, "vm1");
        assert_eq!(c.node, "worker2");
        assert_eq!(c.lan, LanRef::new("default", "lan-a"));
        assert_eq!(c.kind, SpokeKind::Mac);
        assert_eq!(c.pod, None);
        assert_eq!(c.annotations(), ann);

        ann.insert(CLAIM_POD_ANNOTATION.to_string(), "default/vm-1".into());
        ann.insert(CLAIM_POD_UID_ANNOTATION.to_string(), "4f1c-uid".into());
        let c = Claim::from_lease("spoke-vm1", Some("worker2"), &ann).unwrap();
        assert_eq!(c.pod.as_deref(), Some("default/vm-1"));
        assert_eq!(c.pod_uid.as_deref(), Some("4f1c-uid"));
        assert_eq!(c.annotations(), ann);
    }

    #[test]
    fn a_claim_round_trips_through_its_lease_and_patches_drop_the_old_pod() {
        let mut c = Claim::new(
            "srl1",
            "node-a",
            LanRef::new("default", "lan1"),
            SpokeKind::Mac,
        );
        c.pod = Some("default/vm1".into());
        c.pod_uid = Some("u-1".into());
        let lease = c.to_lease("k8slan-system");
        assert_eq!(lease.metadata.name.as_deref(), Some("spoke-srl1"));
        assert_eq!(
            lease.metadata.labels.as_ref().unwrap()[LEASE_ROLE_LABEL],
            ROLE_CLAIM
        );
        assert_eq!(Claim::from_lease_object(&lease).unwrap(), c);

        let fresh = Claim::new(
            "srl1",
            "node-a",
            LanRef::new("default", "lan1"),
            SpokeKind::Veth,
        );
        let patch = fresh.annotation_patch();
        assert_eq!(patch[CLAIM_KIND_ANNOTATION], "veth");
        assert!(patch[CLAIM_POD_ANNOTATION].is_null());
        assert!(patch[CLAIM_POD_UID_ANNOTATION].is_null());
    }

    #[test]
    fn malformed_claim_leases_are_errors_not_panics() {
        let mut lease = Lease::default();
        assert!(Claim::from_lease_object(&lease).is_err());
        lease.metadata.name = Some("spoke-".into());
        assert!(Claim::from_lease_object(&lease).is_err());
        lease.metadata.name = Some("spoke-a".into());
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(String::new()),
            ..Default::default()
        });
        assert!(Claim::from_lease_object(&lease).is_err());
        for bad in ["", "/", "a/b/c", "a/"] {
            let ann = BTreeMap::from([
                (CLAIM_LAN_ANNOTATION.to_string(), bad.to_string()),
                (CLAIM_KIND_ANNOTATION.to_string(), "veth".to_string()),
            ]);
            assert!(
                Claim::from_lease("spoke-a", Some("n"), &ann).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn broken_claims_say_what_is_wrong() {
        let ann = BTreeMap::from([
            (CLAIM_LAN_ANNOTATION.to_string(), "nolan".to_string()),
            (CLAIM_KIND_ANNOTATION.to_string(), "veth".to_string()),
        ]);
        let e = Claim::from_lease("spoke-a", Some("n1"), &ann).unwrap_err();
        assert!(e.to_string().contains("is not <namespace>/<name>"), "{e}");
        let e = Claim::from_lease("spoke-a", None, &ann).unwrap_err();
        assert!(e.to_string().contains("holderIdentity"), "{e}");
        let e = Claim::from_lease("node-a", Some("n1"), &ann).unwrap_err();
        assert!(e.to_string().contains("\"spoke-\""), "{e}");
        let ann = BTreeMap::from([
            (CLAIM_LAN_ANNOTATION.to_string(), "a/b".to_string()),
            (CLAIM_KIND_ANNOTATION.to_string(), "tap".to_string()),
        ]);
        let e = Claim::from_lease("spoke-a", Some("n1"), &ann).unwrap_err();
        assert!(e.to_string().contains("unknown spoke kind"), "{e}");
    }

    #[test]
    fn lan_refs() {
        assert_eq!(LanRef::parse("a/b"), Some(LanRef::new("a", "b")));
        for bad in ["a", "/b", "a/", "a/b/c", ""] {
            assert_eq!(LanRef::parse(bad), None, "{bad}");
        }
        assert_eq!(spoke_of_claim_lease(&claim_lease_name("x-1")), Some("x-1"));
    }
}
