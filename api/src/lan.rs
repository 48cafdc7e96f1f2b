//! The `LAN` custom resource (`lan.k8slan.io/v1beta1`).
//!
//! The schema carries the same rules as [`crate::validate`] (patterns, ranges and CEL), so the
//! API server rejects a bad LAN at `kubectl apply` time; the agent and the webhook call
//! [`crate::validate::validate_spec`] on top, which gives the same answer with a friendlier message.

// `printcolumn(type_ = ...)` repeats by design; the lint mistakes it for a duplicate attribute.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default IPv6 multicast group of a multicast LAN (link-local scope is enough for one L2 underlay).
pub const DEFAULT_VXLAN_GROUP: &str = "ff02::14";
/// Default IPv4 multicast group of a multicast LAN over IPv4 (administratively scoped, 239/8).
pub const DEFAULT_VXLAN_GROUP_V4: &str = "239.1.20.20";
/// Default VXLAN UDP port (IANA).
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// Status condition: `False` when the LAN conflicts with an older one; agents then never program it.
pub const CONDITION_ACCEPTED: &str = "Accepted";
/// Status condition: every node that should program the LAN has done so.
pub const CONDITION_READY: &str = "Ready";

/// Interface-name pattern: 1–15 printable ASCII characters other than `/` and `:`.
/// `.` and `..` are rejected by a CEL rule next to each use.
pub const IFNAME_PATTERN: &str = r"^[!-.0-9;-~]{1,15}$";
/// Spoke-name pattern: a DNS label of at most 15 characters, so that the spoke is at once a valid
/// interface name, part of a NetworkAttachmentDefinition name and part of an extended resource name.
pub const SPOKE_PATTERN: &str = r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$";
/// LAN namespace pattern: one safe path component below the netns directory.
pub const NETNS_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$";

/// Desired state of one virtual layer-2 segment spanning the cluster.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lan.k8slan.io",
    version = "v1beta1",
    kind = "LAN",
    plural = "lans",
    singular = "lan",
    shortname = "vlan",
    namespaced,
    status = "LanStatus",
    doc = "A virtual layer-2 LAN that spans the cluster; pods and KubeVirt VMs attach to it through named spokes.",
    printcolumn(name = "VNI", type_ = "integer", json_path = ".spec.vni"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.vxlanMode"),
    printcolumn(
        name = "Family",
        type_ = "string",
        priority = 1,
        json_path = ".spec.vxlanFamily"
    ),
    printcolumn(name = "Spokes", type_ = "integer", json_path = ".status.spokeCount"),
    printcolumn(
        name = "Ready-Nodes",
        type_ = "integer",
        json_path = ".status.readyNodes"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    validation = Rule::new("size(self.metadata.name) <= 63").message("a LAN name has at most 63 characters: its NetworkAttachmentDefinitions carry it as a label value")
)]
#[x_kube(validation = Rule::new("!has(self.defaultVxlanDev) || !(self.defaultVxlanDev in self.spokes)").message("a spoke must not be named like the underlay defaultVxlanDev: a spoke's host end is a link k8slan creates under the spoke's name").field_path(".spokes"))]
#[x_kube(validation = Rule::new("!self.spokes.exists(s, s.startsWith('mvt-') || s.startsWith('mvh-'))").message("a spoke must not start with mvt- or mvh-: those are the names of the macvtaps k8slan makes for VM spokes").field_path(".spokes"))]
#[x_kube(validation = Rule::new("!self.spokes.exists(s, s in ['lo', 'eth0', 'cni0', 'docker0', 'cbr0', 'tunl0', 'kube-ipvs0', 'kube-bridge', 'nodelocaldns'])").message("a spoke must not be named like a well-known node interface (lo, eth0, cni0, docker0, cbr0, tunl0, kube-ipvs0, kube-bridge, nodelocaldns): its host end is created under the spoke's name").field_path(".spokes"))]
#[x_kube(validation = Rule::new("self.bridge != self.vxlan").message("bridge and vxlan must be different interface names").field_path(".vxlan"))]
#[x_kube(validation = Rule::new("!self.spokes.exists(s, s == self.bridge || s == self.vxlan || s == 'lo')").message("a spoke must not be named like the bridge, the vxlan or lo: they share the LAN namespace").field_path(".spokes"))]
#[x_kube(validation = Rule::new("!has(self.vxlanGrp) || !has(self.vxlanMode) || self.vxlanMode == 'multicast'").message("vxlanGrp is only for vxlanMode multicast: a unicast LAN sends its floods to each peer node instead; remove spec.vxlanGrp (kubectl patch lan <name> --type=json -p '[{\"op\":\"remove\",\"path\":\"/spec/vxlanGrp\"}]')").field_path(".vxlanGrp"))]
#[x_kube(validation = Rule::new("!has(self.vxlanGrp) || !isIP(self.vxlanGrp) || (ip(self.vxlanGrp).family() == 4) == (has(self.vxlanFamily) && self.vxlanFamily == 'ipv4')").message("vxlanGrp must be of the LAN's vxlanFamily: an IPv6 group (ffXS::...) for ipv6, the default, or an IPv4 group (224.0.0.0-239.255.255.255) for ipv4").field_path(".vxlanGrp"))]
#[serde(rename_all = "camelCase")]
pub struct LanSpec {
    /// Name of the LAN's network namespace on each node, mounted at `<netns-dir>/<ns>`
    /// (default `/run/k8slan/netns/<ns>`). Unique across LANs; immutable.
    #[schemars(
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"),
        length(min = 1, max = 63)
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("ns is immutable: create a new LAN to use another namespace"))]
    pub ns: String,

    /// Name of the Linux bridge inside the LAN namespace.
    #[schemars(regex(pattern = r"^[!-.0-9;-~]{1,15}$"), length(min = 1, max = 15))]
    #[x_kube(validation = Rule::new("self != '.' && self != '..' && self != 'lo'").message("bridge must not be '.', '..' or lo (the LAN namespace's loopback)"))]
    pub bridge: String,

    /// Name of the VXLAN interface inside the LAN namespace.
    #[schemars(regex(pattern = r"^[!-.0-9;-~]{1,15}$"), length(min = 1, max = 15))]
    #[x_kube(validation = Rule::new("self != '.' && self != '..' && self != 'lo'").message("vxlan must not be '.', '..' or lo (the LAN namespace's loopback)"))]
    pub vxlan: String,

    /// VXLAN network identifier, 1–16777215; unique across LANs.
    #[schemars(range(min = 1, max = 16_777_215))]
    pub vni: u32,

    /// `multicast` (the default): floods go to the multicast group `vxlanGrp`, so every node on the
    /// underlay must reach every other by IP multicast. `unicast`: each node sends every flood to
    /// each other node taking part (head-end replication), over any IP network.
    #[serde(default)]
    pub vxlan_mode: VxlanMode,

    /// Address family of the underlay: `ipv6` (the default; global, ULA or link-local) or `ipv4`.
    #[serde(default)]
    pub vxlan_family: VxlanFamily,

    /// Multicast group that carries the LAN's broadcast, unknown-unicast and multicast frames, in
    /// multicast mode only; of the family (default ff02::14, or 239.1.20.20 for ipv4). An IPv6
    /// group's scope must reach the other nodes: not interface-local (`ffX1`) or reserved
    /// (`ffX0`, `ffXF`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(
            pattern = r"^([Ff][Ff][0-9A-Fa-f][2-9A-Ea-e]:[0-9A-Fa-f:]{1,34}|2(2[4-9]|3[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3})$"
        ),
        length(max = 39)
    )]
    #[x_kube(validation = Rule::new("isIP(self)").message("vxlanGrp must be a multicast address such as ff02::14 (IPv6, first group written in full as ffXS, scope S not 0, 1 or f, in plain hex) or 239.1.20.20 (IPv4)"))]
    pub vxlan_grp: Option<String>,

    /// UDP destination port of the VXLAN.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub vxlan_port: u16,

    /// Underlay device (in the node's host namespace) for nodes not listed in `vxlanDevMap`. When
    /// neither this nor `vxlanDevMap` is set, every node uses its uplink: the interface that
    /// carries the node's InternalIP (so a LAN works on nodes with a single NIC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[!-.0-9;-~]{1,15}$"), length(min = 1, max = 15))]
    #[x_kube(validation = Rule::new("self != '.' && self != '..' && self != 'lo' && !self.startsWith('mvt-') && !self.startsWith('mvh-')").message("defaultVxlanDev must be the node's underlay interface: not '.', '..', lo, or a k8slan macvtap (mvt-*, mvh-*)"))]
    pub default_vxlan_dev: Option<String>,

    /// Underlay device per Kubernetes node name; overrides `defaultVxlanDev` on those nodes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 1000, "additionalProperties" = {"type": "string", "maxLength": 15}))]
    #[x_kube(validation = Rule::new("self.all(k, size(k) <= 253 && k.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?([.][a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$'))").message("vxlanDevMap keys must be Kubernetes node names (lowercase DNS subdomains of at most 253 characters)"))]
    #[x_kube(validation = Rule::new("self.all(k, self[k].matches('^[!-.0-9;-~]{1,15}$') && self[k] != '.' && self[k] != '..' && self[k] != 'lo' && !self[k].startsWith('mvt-') && !self[k].startsWith('mvh-'))").message("vxlanDevMap values must be underlay interface names of 1-15 characters without '/', ':' or whitespace, and not lo or a k8slan macvtap (mvt-*, mvh-*)"))]
    pub vxlan_dev_map: BTreeMap<String, String>,

    /// Spoke names: one attachment point each, for one pod (`k8slan-veth-<spoke>`) or one
    /// KubeVirt VM (`k8slan-mac-<spoke>`). Unique across LANs.
    #[schemars(
        length(min = 1, max = 4095),
        inner(
            regex(pattern = r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$"),
            length(max = 15)
        )
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub spokes: Vec<String>,

    /// Mode of the macvtap that a VM spoke gets on top of its host-side veth.
    #[serde(default)]
    pub macvtap_mode: MacvtapMode,

    /// Kubernetes namespaces, besides the LAN's own, whose pods and VMs may hold its spokes.
    /// Empty (the default): only the LAN's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(
            regex(pattern = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"),
            length(max = 63)
        )
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub allowed_namespaces: Vec<String>,
}

fn default_port() -> u16 {
    DEFAULT_VXLAN_PORT
}

/// Mode of a VM spoke's macvtap. `passthru` (the default) gives the VM the whole veth, so any
/// source MAC it sends is carried.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MacvtapMode {
    #[default]
    Passthru,
    Bridge,
    Vepa,
    Private,
}

impl MacvtapMode {
    /// The mode as `ip link` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            MacvtapMode::Passthru => "passthru",
            MacvtapMode::Bridge => "bridge",
            MacvtapMode::Vepa => "vepa",
            MacvtapMode::Private => "private",
        }
    }
}

/// How a LAN carries its floods (broadcast, unknown unicast, multicast) between nodes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VxlanMode {
    /// To the multicast group `vxlanGrp`: the underlay must carry IP multicast between nodes.
    #[default]
    Multicast,
    /// To each peer node in turn (head-end replication): any IP network between the nodes.
    Unicast,
}

impl VxlanMode {
    pub fn as_str(self) -> &'static str {
        match self {
            VxlanMode::Multicast => "multicast",
            VxlanMode::Unicast => "unicast",
        }
    }
}

/// Address family of a LAN's underlay.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VxlanFamily {
    #[default]
    Ipv6,
    Ipv4,
}

impl VxlanFamily {
    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => VxlanFamily::Ipv4,
            IpAddr::V6(_) => VxlanFamily::Ipv6,
        }
    }

    /// The family as the spec spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            VxlanFamily::Ipv6 => "ipv6",
            VxlanFamily::Ipv4 => "ipv4",
        }
    }

    /// The default multicast group of a multicast LAN of this family.
    pub fn default_group(self) -> IpAddr {
        match self {
            VxlanFamily::Ipv6 => IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x14)),
            VxlanFamily::Ipv4 => IpAddr::V4(Ipv4Addr::new(239, 1, 20, 20)),
        }
    }
}

impl std::fmt::Display for VxlanFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl LanSpec {
    /// The underlay device `node` uses for the LAN: its `vxlanDevMap` entry, else
    /// `defaultVxlanDev`, else (when the LAN names no device at all) the node's `uplink`.
    pub fn underlay_for<'a>(&'a self, node: &str, uplink: Option<&'a str>) -> Option<&'a str> {
        self.vxlan_dev_map
            .get(node)
            .or(self.default_vxlan_dev.as_ref())
            .map(String::as_str)
            .or_else(|| self.uses_uplink().then_some(uplink).flatten())
    }

    /// Whether the LAN names no underlay device, so that every node uses its uplink.
    pub fn uses_uplink(&self) -> bool {
        self.default_vxlan_dev.is_none() && self.vxlan_dev_map.is_empty()
    }

    /// The multicast group of a multicast LAN (`vxlanGrp`, else the family's default); `None` in
    /// unicast mode. Valid after [`crate::validate::validate_spec`].
    pub fn group(&self) -> Option<IpAddr> {
        match self.vxlan_mode {
            VxlanMode::Unicast => None,
            VxlanMode::Multicast => match &self.vxlan_grp {
                Some(g) => g.parse().ok(),
                None => Some(self.vxlan_family.default_group()),
            },
        }
    }
}

/// Observed state of a LAN, written by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LanStatus {
    /// `Accepted` (no conflict with another LAN) and `Ready` (every node that should program the
    /// LAN has done so).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of spokes in the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spoke_count: Option<u32>,
    /// Number of nodes that report the LAN programmed at the current generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_nodes: Option<u32>,
    /// Per-node state, aggregated from the agents' node reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeLanState>,
    /// Spokes that are held by a member, with the pod and node holding them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<SpokeHolder>,
}

/// One node's state for one LAN.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeLanState {
    /// Kubernetes node name.
    pub node: String,
    /// `Ready`, `Failed` or `NoUnderlay`.
    pub state: String,
    /// Why, when not `Ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// LAN generation the node programmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The node's underlay device for the LAN and its address of the LAN's family, as the node
    /// reports them (`eth1 fe80::1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay: Option<String>,
    /// Unicast mode: the other nodes taking part (holding a spoke) that this node floods to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<u32>,
}

/// A spoke held by a member.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpokeHolder {
    pub spoke: String,
    /// `veth` (a pod) or `mac` (a VM).
    pub kind: String,
    /// Node where the spoke is allocated.
    pub node: String,
    /// `namespace/name` of the pod holding it, once the kubelet reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}
