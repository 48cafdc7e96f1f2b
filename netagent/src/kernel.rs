//! The small trait through which the datapath logic speaks to the kernel, in datapath terms.
//!
//! [`crate::netlink::RtnlKernel`] implements it with rtnetlink and nix; `fake::RecordingKernel`
//! (feature `testing`) implements it in memory and records every call for the unit tier. The logic in [`crate::lan`]
//! and [`crate::spoke`] only ever sees this trait, so both tiers exercise the same code.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8slan_api::MacvtapMode;
use serde::Serialize;

pub use crate::netns::ForeignEntry;

/// A network namespace the datapath works in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase", tag = "ns", content = "name")]
pub enum Ns {
    /// The node's host namespace (the underlay lives here; spoke host ends wait here).
    Host,
    /// A LAN namespace, mounted at `<netns-dir>/<name>`.
    Lan(String),
}

impl std::fmt::Display for Ns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ns::Host => f.write_str("host namespace"),
            Ns::Lan(n) => write!(f, "LAN namespace {n}"),
        }
    }
}

/// Parameters of a VXLAN that decide whether it carries the right LAN.
///
/// Multicast mode: `group` set, `local` unset (flooded frames go to the group). Unicast mode:
/// `group` unset, `local` the node's underlay address (flooded frames go to each peer's
/// all-zero forwarding entry); an IPv6 unicast VXLAN needs `local` to be IPv6 at all, and a
/// link-local one needs the underlay device, which is always set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VxlanParams {
    pub vni: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<IpAddr>,
    pub port: u16,
    /// Ifindex of the underlay device in the host namespace.
    pub underlay_ifindex: u32,
    pub learning: bool,
}

impl VxlanParams {
    /// Whether the VXLAN is an IPv6 one: the kernel makes it IPv6 when its group or local
    /// address is, IPv4 otherwise.
    pub fn is_ipv6(&self) -> bool {
        self.group.or(self.local).is_some_and(|a| a.is_ipv6())
    }
}

/// One address of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IfAddress {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// Bridge options k8slan sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BridgeParams {
    pub vlan_filtering: bool,
    pub mcast_snooping: bool,
    /// Bridge-wide group forward mask (the kernel forbids the STP, PAUSE and LACP bits here).
    pub group_fwd_mask: u16,
}

/// The kind-specific part of a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum LinkKind {
    Bridge(BridgeParams),
    Vxlan(VxlanParams),
    Veth {
        /// Ifindex of the peer (in whatever namespace the peer is).
        peer_ifindex: Option<u32>,
    },
    Macvtap {
        lower_ifindex: u32,
        #[serde(serialize_with = "ser_mode")]
        mode: MacvtapMode,
    },
    Other {
        kind: String,
    },
}

fn ser_mode<S: serde::Serializer>(m: &MacvtapMode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(m.as_str())
}

/// One link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    pub name: String,
    pub ifindex: u32,
    pub mtu: u32,
    pub up: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Ifindex of the bridge this link is a port of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master: Option<u32>,
    /// Per-port group forward mask, when the link is a bridge port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_group_fwd_mask: Option<u16>,
    /// Whether IPv6 is enabled on the link (`None`: the kernel has no IPv6 for it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<bool>,
    pub kind: LinkKind,
}

/// A link to create. Every link is created down, with its MTU and alias; the caller brings it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewLink {
    /// A bridge in a LAN namespace.
    Bridge {
        lan: String,
        name: String,
        mtu: u32,
        alias: String,
        params: BridgeParams,
    },
    /// A VXLAN created in the host namespace on the underlay and placed in the LAN namespace,
    /// where it keeps using the host-namespace underlay.
    Vxlan {
        lan: String,
        name: String,
        mtu: u32,
        alias: String,
        params: VxlanParams,
    },
    /// A veth pair: `host_name` in the host namespace, `port_name` in the LAN namespace.
    VethPair {
        lan: String,
        host_name: String,
        host_alias: String,
        port_name: String,
        port_alias: String,
        mtu: u32,
    },
    /// A macvtap on a host-namespace link.
    Macvtap {
        name: String,
        lower: String,
        mode: MacvtapMode,
        mtu: u32,
        alias: String,
    },
}

impl NewLink {
    /// Namespace and name of the (first) link this creates, for messages.
    pub fn target(&self) -> (Ns, &str) {
        match self {
            NewLink::Bridge { lan, name, .. } | NewLink::Vxlan { lan, name, .. } => {
                (Ns::Lan(lan.clone()), name)
            }
            NewLink::VethPair { host_name, .. } => (Ns::Host, host_name),
            NewLink::Macvtap { name, .. } => (Ns::Host, name),
        }
    }
}

/// A change to an existing link. `None` leaves that property alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkChange {
    pub mtu: Option<u32>,
    pub up: Option<bool>,
    /// Enslave to the bridge of this name (in the same namespace).
    pub master: Option<String>,
    pub port_group_fwd_mask: Option<u16>,
    pub alias: Option<String>,
    /// Turn IPv6 on or off for the link (applied before the link is brought up).
    pub ipv6: Option<bool>,
}

impl LinkChange {
    pub fn is_empty(&self) -> bool {
        *self == LinkChange::default()
    }
}

/// Major and minor number of a character device (defined once, in the kernel layer).
pub use k8slan_kernel::{DevNum, NodeOwner, TapNode};

/// Link group (`IFLA_GROUP`) of every link k8slan creates in a LAN namespace, so that
/// `lan down` deletes them all in one batch (`ip link delete group`).
pub const LAN_LINK_GROUP: u32 = 0x6b38_6c6e;

/// What went wrong in one kernel call.
#[derive(Debug, thiserror::Error)]
#[error("{op} {object} in {ns}: {reason}")]
pub struct KernelError {
    /// The operation, e.g. `create veth pair`.
    pub op: &'static str,
    /// The link, namespace or file it was applied to.
    pub object: String,
    pub ns: Ns,
    pub reason: String,
    /// errno, when the kernel gave one.
    pub errno: Option<i32>,
}

impl KernelError {
    pub fn new(
        op: &'static str,
        object: impl Into<String>,
        ns: &Ns,
        reason: impl ToString,
    ) -> Self {
        Self {
            op,
            object: object.into(),
            ns: ns.clone(),
            reason: reason.to_string(),
            errno: None,
        }
    }

    pub fn with_errno(mut self, errno: i32) -> Self {
        self.errno = Some(errno);
        self
    }
}

/// The datapath's view of the kernel: namespaces, links and tap device nodes.
///
/// Implementations must be usable from several threads; every method is blocking.
pub trait Kernel: Send + Sync {
    /// Names of the LAN namespaces mounted in the netns directory.
    fn lan_namespaces(&self) -> Result<Vec<String>, KernelError>;
    /// Whether the LAN namespace is mounted.
    fn lan_namespace_exists(&self, lan: &str) -> Result<bool, KernelError>;
    /// Create and mount a fresh LAN namespace with `lo` up.
    fn create_lan_namespace(&self, lan: &str) -> Result<(), KernelError>;
    /// Unmount the LAN namespace and remove its file (a leftover unmounted file too).
    fn delete_lan_namespace(&self, lan: &str) -> Result<(), KernelError>;
    /// Entries of the netns directory that are not k8slan's LAN namespaces (symlinks, foreign
    /// namespaces, files): never listed, touched or removed, only reported.
    fn foreign_namespace_entries(&self) -> Result<Vec<ForeignEntry>, KernelError> {
        Ok(Vec::new())
    }

    /// The link of that name, if any.
    fn link(&self, ns: &Ns, name: &str) -> Result<Option<Link>, KernelError>;
    /// Every link of the namespace.
    fn links(&self, ns: &Ns) -> Result<Vec<Link>, KernelError>;
    fn create_link(&self, link: &NewLink) -> Result<(), KernelError>;
    fn change_link(&self, ns: &Ns, name: &str, change: &LinkChange) -> Result<(), KernelError>;
    fn delete_link(&self, ns: &Ns, name: &str) -> Result<(), KernelError>;
    /// Delete every link k8slan created in a LAN namespace in one batch (ports, VXLAN, bridge;
    /// veth peers die with their ports). Much faster than one deletion per link.
    fn delete_lan_links(&self, lan: &str) -> Result<(), KernelError>;

    /// The addresses of the link with that ifindex, both families, in the kernel's order.
    fn addresses(&self, ns: &Ns, ifindex: u32) -> Result<Vec<IfAddress>, KernelError>;
    /// Destinations of the VXLAN's all-zero-MAC forwarding entries, the ones flooded frames go
    /// to (the multicast group's default entry is one of them).
    fn flood_entries(&self, ns: &Ns, vxlan: &str) -> Result<Vec<IpAddr>, KernelError>;
    /// Append an all-zero-MAC forwarding entry to `dst` on the VXLAN (present already is fine).
    fn add_flood_entry(&self, ns: &Ns, vxlan: &str, dst: IpAddr) -> Result<(), KernelError>;
    /// Remove the VXLAN's all-zero-MAC forwarding entry to `dst` (absent is fine).
    fn remove_flood_entry(&self, ns: &Ns, vxlan: &str, dst: IpAddr) -> Result<(), KernelError>;

    /// Device number of a host-namespace macvtap's character device.
    fn macvtap_devnum(&self, macvtap: &str) -> Result<DevNum, KernelError>;
    /// The device number and owner of a character device node, `None` when the file does not
    /// exist (a file that is not a character device is reported as an error).
    fn tap_node(&self, path: &Path) -> Result<Option<TapNode>, KernelError>;
    /// Create (replace) a character device node with that device number and owner (mode
    /// 0660), creating its directory if needed.
    fn make_tap_node(&self, path: &Path, node: TapNode) -> Result<(), KernelError>;
    /// Remove a device node; absent is fine.
    fn remove_tap_node(&self, path: &Path) -> Result<(), KernelError>;
    /// Every file in the device directory.
    fn tap_nodes(&self, dir: &Path) -> Result<Vec<PathBuf>, KernelError>;
}
