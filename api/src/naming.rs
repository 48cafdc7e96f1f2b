//! Every name k8slan derives from a LAN: extended resources, NetworkAttachmentDefinitions,
//! interfaces, device nodes and coordination objects. One place, so that the agent, the CNI
//! plugins and the controller can never disagree.

use std::fmt;
use std::str::FromStr;

/// Extended-resource domain of every spoke resource.
pub const RESOURCE_DOMAIN: &str = "macvtap.k8slan.io";
/// Prefix of the NAD and resource of a pod spoke.
pub const VETH_PREFIX: &str = "k8slan-veth-";
/// Prefix of the NAD and resource of a VM spoke.
pub const MAC_PREFIX: &str = "k8slan-mac-";
/// CNI type of a pod spoke's NAD.
pub const VETH_CNI_TYPE: &str = "k8slanveth";
/// CNI type of a VM spoke's NAD, which is also the plugin's binary name. Not `macvtap`: that is
/// KubeVirt's macvtap-cni, which may live beside ours in `/opt/cni/bin`.
pub const MAC_CNI_TYPE: &str = "k8slanmacvtap";
/// Binary name k8slan's VM plugin had before it became [`MAC_CNI_TYPE`] (and that KubeVirt's
/// macvtap-cni uses): `install-cni` removes a file of this name only if it is an old k8slan build.
pub const LEGACY_MAC_CNI_TYPE: &str = "macvtap";
/// Multus annotation that ties a NAD to a device-plugin resource.
pub const RESOURCE_NAME_ANNOTATION: &str = "k8s.v1.cni.cncf.io/resourceName";
/// Interface alias written on every link k8slan creates, followed by `<lan-ns>/<role>`.
pub const LINK_ALIAS_PREFIX: &str = "k8slan:";
/// Default directory of LAN network namespaces on a node.
pub const DEFAULT_NETNS_DIR: &str = "/run/k8slan/netns";
/// Default node-private directory for VM spokes' tap device nodes.
pub const DEFAULT_DEV_DIR: &str = "/run/k8slan/dev";

/// How a member attaches to a spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpokeKind {
    /// A pod: the spoke's veth end is moved into the pod.
    Veth,
    /// A KubeVirt VM: a macvtap on the spoke's veth end is moved into the pod.
    Mac,
}

impl SpokeKind {
    pub const ALL: [SpokeKind; 2] = [SpokeKind::Veth, SpokeKind::Mac];

    /// `veth` or `mac`, as the CLI and status spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            SpokeKind::Veth => "veth",
            SpokeKind::Mac => "mac",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            SpokeKind::Veth => VETH_PREFIX,
            SpokeKind::Mac => MAC_PREFIX,
        }
    }

    /// The other attachment kind of the same spoke.
    pub fn twin(self) -> SpokeKind {
        match self {
            SpokeKind::Veth => SpokeKind::Mac,
            SpokeKind::Mac => SpokeKind::Veth,
        }
    }

    /// CNI `type` of this kind's NAD.
    pub fn cni_type(self) -> &'static str {
        match self {
            SpokeKind::Veth => VETH_CNI_TYPE,
            SpokeKind::Mac => MAC_CNI_TYPE,
        }
    }
}

impl fmt::Display for SpokeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SpokeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "veth" => Ok(SpokeKind::Veth),
            "mac" => Ok(SpokeKind::Mac),
            other => Err(format!("unknown spoke kind {other:?}: use veth or mac")),
        }
    }
}

/// NAD name of a spoke: `k8slan-veth-<spoke>` or `k8slan-mac-<spoke>`.
pub fn nad_name(kind: SpokeKind, spoke: &str) -> String {
    format!("{}{spoke}", kind.prefix())
}

/// Extended resource of a spoke: `macvtap.k8slan.io/k8slan-veth-<spoke>` (or `-mac-`).
pub fn resource_name(kind: SpokeKind, spoke: &str) -> String {
    format!("{RESOURCE_DOMAIN}/{}", nad_name(kind, spoke))
}

/// The kind and spoke of a resource name made by [`resource_name`] (with or without the domain).
pub fn parse_resource_name(name: &str) -> Option<(SpokeKind, &str)> {
    let short = name
        .strip_prefix(RESOURCE_DOMAIN)
        .and_then(|s| s.strip_prefix('/'))
        .unwrap_or(name);
    SpokeKind::ALL.into_iter().find_map(|kind| {
        short
            .strip_prefix(kind.prefix())
            .filter(|s| !s.is_empty())
            .map(|spoke| (kind, spoke))
    })
}

/// Name of a spoke's host-side veth end, in the host namespace, where the CNI plugin finds it:
/// exactly the spoke name.
pub fn host_veth_name(spoke: &str) -> &str {
    spoke
}

/// Name of a spoke's bridge-side veth end inside the LAN namespace: also the spoke name, so that
/// `ip -n <lan> link` lists the bridge ports by spoke. Spoke names never clash with the bridge,
/// the vxlan or `lo` (validation forbids it).
pub fn bridge_port_name(spoke: &str) -> &str {
    spoke
}

/// Name of a VM spoke's macvtap in the host namespace before the CNI plugin moves it:
/// `mvt-<spoke>` when that fits in 15 bytes, else `mvh-` and a hash of the spoke.
pub fn macvtap_name(spoke: &str) -> String {
    if spoke.len() <= 11 {
        format!("mvt-{spoke}")
    } else {
        format!("mvh-{:08x}", fnv1a32(spoke.as_bytes()))
    }
}

/// File name of a VM spoke's tap device node inside the node-private device directory.
pub fn tap_device_file(spoke: &str) -> String {
    format!("tap-{spoke}")
}

/// Path at which a container sees a macvtap's character device: `/dev/tap<ifindex>`, where
/// KubeVirt's macvtap binding opens it.
pub fn container_tap_path(ifindex: u32) -> String {
    format!("/dev/tap{ifindex}")
}

/// Alias written on a link k8slan owns: `k8slan:<lan-ns>/<role>`; lets start-up recovery tell our
/// links from anyone else's.
pub fn link_alias(lan_ns: &str, role: &str) -> String {
    format!("{LINK_ALIAS_PREFIX}{lan_ns}/{role}")
}

/// Role part of the alias of a spoke's host-side veth end (`spoke/<spoke>`).
pub fn host_veth_role(spoke: &str) -> String {
    format!("spoke/{spoke}")
}

/// Role part of the alias of a VM spoke's macvtap (`macvtap/<spoke>`).
pub fn macvtap_role(spoke: &str) -> String {
    format!("macvtap/{spoke}")
}

/// Name and alias of the link a CNI plugin binds for `spoke` of `kind` in the LAN namespace
/// `lan_ns`: the host veth end (`veth`) or the macvtap on it (`mac`).
pub fn bound_link(kind: SpokeKind, lan_ns: &str, spoke: &str) -> (String, String) {
    match kind {
        SpokeKind::Veth => (
            host_veth_name(spoke).to_owned(),
            link_alias(lan_ns, &host_veth_role(spoke)),
        ),
        SpokeKind::Mac => (
            macvtap_name(spoke),
            link_alias(lan_ns, &macvtap_role(spoke)),
        ),
    }
}

/// Namespace-scoped name of the Lease that records which node holds a spoke.
pub fn claim_lease_name(spoke: &str) -> String {
    format!("spoke-{spoke}")
}

/// Name of the Lease in which a node's agent reports its per-LAN state.
pub fn node_report_lease_name(node: &str) -> String {
    let name = format!("node-{node}");
    if name.len() <= 253 {
        name
    } else {
        format!("node-{:08x}", fnv1a32(node.as_bytes()))
    }
}

/// Label on every object the controller or the agents create.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "k8slan";
/// Label naming the LAN (`<name>`) that a generated object belongs to.
pub const LAN_LABEL: &str = "lan.k8slan.io/lan";
/// Label on Leases, `claim` or `node-report`.
pub const LEASE_ROLE_LABEL: &str = "k8slan.io/role";
/// Scheduling gate the pod webhook puts on every pod that requests a spoke; the controller
/// removes it once no other pod holds or is being scheduled for any of the pod's spokes.
pub const SPOKE_GATE: &str = "k8slan.io/spoke";
/// Label (value [`MEMBER_LABEL_VALUE`]) the pod webhook puts on pods that request a spoke, so that
/// the controller watches only those pods.
pub const MEMBER_LABEL: &str = "k8slan.io/member";
/// Value of [`MEMBER_LABEL`].
pub const MEMBER_LABEL_VALUE: &str = "true";

fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate;

    #[test]
    fn resource_and_nad_names() {
        assert_eq!(
            resource_name(SpokeKind::Veth, "srl"),
            "macvtap.k8slan.io/k8slan-veth-srl"
        );
        assert_eq!(
            resource_name(SpokeKind::Mac, "vm"),
            "macvtap.k8slan.io/k8slan-mac-vm"
        );
        assert_eq!(nad_name(SpokeKind::Mac, "vm"), "k8slan-mac-vm");
        assert_eq!(
            parse_resource_name("macvtap.k8slan.io/k8slan-veth-srl"),
            Some((SpokeKind::Veth, "srl"))
        );
        assert_eq!(
            parse_resource_name("k8slan-mac-vm"),
            Some((SpokeKind::Mac, "vm"))
        );
        assert_eq!(parse_resource_name("k8slan-veth-"), None);
        assert_eq!(parse_resource_name("example.com/gpu"), None);
    }

    #[test]
    fn longest_spoke_gives_valid_names() {
        let spoke = "abcdefghijklmno";
        validate::spoke_name("s", spoke).unwrap();
        // A qualified-name part of an extended resource is at most 63 characters.
        assert!(nad_name(SpokeKind::Veth, spoke).len() <= 63);
        validate::interface_name("m", &macvtap_name(spoke)).unwrap();
        validate::interface_name("m", &macvtap_name("vm")).unwrap();
        assert_eq!(macvtap_name("vm"), "mvt-vm");
        assert_ne!(macvtap_name(spoke), macvtap_name("abcdefghijklmnp"));
    }

    #[test]
    fn bound_links_carry_the_role_aliases_the_agent_writes() {
        assert_eq!(
            bound_link(SpokeKind::Veth, "knl", "srl"),
            ("srl".into(), "k8slan:knl/spoke/srl".into())
        );
        assert_eq!(
            bound_link(SpokeKind::Mac, "knl", "vm"),
            ("mvt-vm".into(), "k8slan:knl/macvtap/vm".into())
        );
    }

    #[test]
    fn kinds() {
        assert_eq!("veth".parse::<SpokeKind>(), Ok(SpokeKind::Veth));
        assert!("tap".parse::<SpokeKind>().is_err());
        assert_eq!(SpokeKind::Veth.twin(), SpokeKind::Mac);
        assert_eq!(SpokeKind::Mac.cni_type(), "k8slanmacvtap");
        assert_ne!(SpokeKind::Mac.cni_type(), LEGACY_MAC_CNI_TYPE);
    }
}
