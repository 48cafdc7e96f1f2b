//! The datapath of one node: the entry point [`Datapath`] and its error type.
//!
//! Operations are idempotent and converge the kernel towards the LAN spec: each reads the
//! current state through the [`Kernel`] trait, changes only what differs, and leaves anything
//! that is not k8slan's (a link without our alias) alone. [`crate::lan`] brings LANs up and
//! down, [`crate::spoke`] prepares and removes spokes, [`crate::inventory`] reports what exists.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use k8slan_api::VxlanFamily;
use k8slan_api::mtu::MtuTooSmall;
use k8slan_api::validate::{FieldError, InvalidLan};

use crate::kernel::{Kernel, KernelError, Link, LinkChange, NodeOwner, Ns};

/// Per-port group forward mask of every bridge port k8slan makes: forward every link-local
/// group address (STP, LACP, LLDP, 802.1X, ...) except PAUSE (bit 1), which the kernel refuses.
pub const PORT_GROUP_FWD_MASK: u16 = 0xfffd;
/// Bridge-wide group forward mask: the kernel refuses the STP, PAUSE and LACP bits (0x0007)
/// here, so the per-port mask above is what lets STP and LACP cross; this one covers LLDP and
/// the rest even on ports k8slan did not make.
pub const BRIDGE_GROUP_FWD_MASK: u16 = 0xfff8;

/// Why a datapath operation failed. Every message names the LAN and the object.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(transparent)]
    InvalidLan(#[from] InvalidLan),
    #[error("invalid name: {0}")]
    InvalidName(#[from] FieldError),
    #[error(
        "LAN {lan}: no underlay for node {node}: it has no vxlanDevMap entry and defaultVxlanDev is not set"
    )]
    NoUnderlay { lan: String, node: String },
    #[error(
        "LAN {lan}: no underlay for node {node}: the LAN names no underlay device, so the node's uplink (the interface carrying its InternalIP) would be used, and the agent found none; set spec.defaultVxlanDev or spec.vxlanDevMap[{node}]"
    )]
    NoUplink { lan: String, node: String },
    #[error(
        "LAN {lan}: underlay device {dev} ({field}) does not exist in the host namespace of node {node}"
    )]
    UnderlayMissing {
        lan: String,
        node: String,
        field: String,
        dev: String,
    },
    #[error(
        "LAN {lan}: {field} is {dev:?}, which cannot be the underlay on node {node}: {why}; set {field} to the node's uplink interface"
    )]
    BadUnderlay {
        lan: String,
        node: String,
        field: String,
        dev: String,
        why: String,
    },
    #[error(
        "LAN {lan}: underlay device {dev} of node {node} has no {fam} address for the unicast VXLAN to send from; give {dev} an {fam} address or set spec.vxlanFamily to the other family",
        fam = family_name(*family)
    )]
    NoUnderlayAddress {
        lan: String,
        node: String,
        dev: String,
        family: VxlanFamily,
    },
    #[error(
        "LAN {lan}: peer {peer} is not an {fam} address, and the LAN's VXLAN is {fam} (spec.vxlanFamily): the peer node's underlay needs an {fam} address, or spec.vxlanFamily the other family",
        fam = family_name(*family)
    )]
    PeerFamily {
        lan: String,
        peer: IpAddr,
        family: VxlanFamily,
    },
    #[error(
        "LAN {lan}: the kernel refused the VXLAN's membership of multicast group {group} on underlay {dev} ({reason}): the node holds as many {fam} multicast memberships for VXLAN port {port} as {limit} allows. Fix: give the LAN the spec.vxlanGrp of another multicast LAN on the node (LANs sharing a group stay apart by VNI), or set spec.vxlanMode to unicast, or raise {limit} on the node",
        fam = family_name(VxlanFamily::of(group)),
        limit = membership_limit(group)
    )]
    MulticastLimit {
        lan: String,
        group: IpAddr,
        dev: String,
        port: u16,
        /// What the kernel said.
        reason: String,
    },
    #[error("LAN {lan}: underlay device {dev}: {source}")]
    Mtu {
        lan: String,
        dev: String,
        source: MtuTooSmall,
    },
    #[error("LAN {lan}: {spoke} is not one of its spokes")]
    UnknownSpoke { lan: String, spoke: String },
    #[error(
        "LAN {lan}, spoke {spoke}: the {what} name {link} is taken in the {ns} by a link that {owner}; k8slan never takes over, changes or deletes a link it did not make for this spoke: rename the spoke (spec.spokes) or remove that link"
    )]
    ForeignLink {
        lan: String,
        spoke: String,
        /// Which of the spoke's links needs the name: `host end`, `macvtap` or `bridge port`.
        what: &'static str,
        link: String,
        ns: Ns,
        owner: Box<Owner>,
    },
    #[error("LAN {lan}: {source}")]
    Kernel { lan: String, source: KernelError },
    #[error("LAN {lan}: {what}")]
    Inconsistent { lan: String, what: String },
}

/// The datapath of one node over a [`Kernel`].
///
/// Every method is blocking (it waits for netlink and the filesystem); call it from a
/// blocking context (`tokio::task::spawn_blocking` under tokio). Operations are serialised by
/// an internal lock, so concurrent callers (two `Allocate`s for one LAN) are safe.
#[derive(Debug)]
pub struct Datapath<K> {
    pub(crate) kernel: K,
    pub(crate) dev_dir: PathBuf,
    /// Owner of the tap device nodes it makes (KubeVirt's qemu by default in the agent).
    pub(crate) tap_owner: NodeOwner,
    /// The node's uplink (the host interface carrying its InternalIP): the underlay of a LAN
    /// that names none for the node.
    pub(crate) uplink: Option<String>,
    lock: Mutex<()>,
}

impl<K: Kernel> Datapath<K> {
    /// A datapath whose VM spokes' tap device nodes go to `dev_dir`.
    pub fn new(kernel: K, dev_dir: impl Into<PathBuf>) -> Self {
        Self {
            kernel,
            dev_dir: dev_dir.into(),
            tap_owner: NodeOwner::ROOT,
            uplink: None,
            lock: Mutex::new(()),
        }
    }

    /// The same datapath, using `uplink` as the underlay of a LAN whose spec names none for
    /// the node (neither `vxlanDevMap` nor `defaultVxlanDev`).
    pub fn with_uplink(mut self, uplink: Option<impl Into<String>>) -> Self {
        self.uplink = uplink.map(Into::into);
        self
    }

    /// The same datapath, making its tap device nodes owned by `owner` (root:root otherwise).
    pub fn with_tap_owner(mut self, owner: NodeOwner) -> Self {
        self.tap_owner = owner;
        self
    }

    /// The kernel this datapath drives.
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// The node-private directory of tap device nodes.
    pub fn dev_dir(&self) -> &Path {
        &self.dev_dir
    }

    pub(crate) fn serialise(&self) -> MutexGuard<'_, ()> {
        self.lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Path of a spoke's tap device node.
    pub fn tap_node_path(&self, spoke: &str) -> PathBuf {
        self.dev_dir
            .join(k8slan_api::naming::tap_device_file(spoke))
    }

    /// Apply `want` to `link` where it differs; returns whether anything changed.
    pub(crate) fn converge(
        &self,
        lan: &str,
        ns: &Ns,
        link: &Link,
        want: &Want<'_>,
    ) -> Result<bool, DatapathError> {
        let mut change = LinkChange::default();
        if link.mtu != want.mtu {
            change.mtu = Some(want.mtu);
        }
        if link.alias.as_deref() != Some(want.alias) {
            change.alias = Some(want.alias.to_string());
        }
        if let Some((name, ifindex)) = want.master {
            if link.master != Some(ifindex) {
                change.master = Some(name.to_string());
            }
            if link.port_group_fwd_mask != Some(PORT_GROUP_FWD_MASK) || change.master.is_some() {
                change.port_group_fwd_mask = Some(PORT_GROUP_FWD_MASK);
            }
        }
        // Every link of a LAN is a wire end: IPv6 off, so that the node never sends its own
        // frames (DAD, MLD, router solicitations) onto the LAN, and never answers one.
        if link.ipv6 == Some(true) {
            change.ipv6 = Some(false);
        }
        if !link.up {
            change.up = Some(true);
        }
        if change.is_empty() {
            return Ok(false);
        }
        self.kernel
            .change_link(ns, &link.name, &change)
            .map_err(|source| kerr(lan, source))?;
        Ok(true)
    }
}

/// What a link should look like.
pub(crate) struct Want<'a> {
    pub mtu: u32,
    pub alias: &'a str,
    /// Bridge (name, ifindex) the link must be a port of, with the port mask.
    pub master: Option<(&'a str, u32)>,
}

/// A family in words.
pub(crate) fn family_name(family: VxlanFamily) -> &'static str {
    match family {
        VxlanFamily::Ipv6 => "IPv6",
        VxlanFamily::Ipv4 => "IPv4",
    }
}

/// The sysctl that bounds how many groups of `group`'s family the VXLAN sockets of a node (one
/// per port and family, shared by all its VXLANs) can join.
fn membership_limit(group: &IpAddr) -> &'static str {
    match group {
        IpAddr::V4(_) => "net.ipv4.igmp_max_memberships (default 20)",
        IpAddr::V6(_) => "net.core.optmem_max (the socket's option memory)",
    }
}

pub(crate) fn kerr(lan: &str, source: KernelError) -> DatapathError {
    DatapathError::Kernel {
        lan: lan.to_string(),
        source,
    }
}

/// Alias roles, so that `show`, teardown and the ownership checks can tell our links apart.
pub(crate) mod role {
    pub const BRIDGE: &str = "bridge";
    pub const VXLAN: &str = "vxlan";
    pub fn port(spoke: &str) -> String {
        format!("port/{spoke}")
    }
    pub fn host(spoke: &str) -> String {
        format!("spoke/{spoke}")
    }
    pub fn macvtap(spoke: &str) -> String {
        format!("macvtap/{spoke}")
    }
}

/// What an alias says about a link: LAN namespace and role.
pub fn parse_alias(alias: &str) -> Option<(&str, &str)> {
    alias
        .strip_prefix(k8slan_api::naming::LINK_ALIAS_PREFIX)?
        .split_once('/')
}

/// Who a link belongs to, as its alias says. k8slan writes `k8slan:<lan-ns>/<role>` on every
/// link it creates (in the same netlink request), and acts on a link only when that alias is
/// exactly the one of the LAN and role it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// No alias: a link k8slan did not make (`eth0`, `cni0`, another pod's veth...).
    NoAlias,
    /// An alias that is not k8slan's.
    OtherAlias(String),
    /// A k8slan link of that LAN namespace, in that role (`spoke/x`, `macvtap/x`, `bridge`...).
    Lan { lan: String, role: String },
}

impl Owner {
    /// The owner of `link`.
    pub fn of(link: &Link) -> Self {
        match link.alias.as_deref() {
            None => Owner::NoAlias,
            Some(a) => match parse_alias(a) {
                Some((lan, role)) => Owner::Lan {
                    lan: lan.into(),
                    role: role.into(),
                },
                None => Owner::OtherAlias(a.into()),
            },
        }
    }

    /// Whether it is a k8slan link of another LAN namespace than `lan`.
    pub fn is_other_lan(&self, lan: &str) -> bool {
        matches!(self, Owner::Lan { lan: l, .. } if l != lan)
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::NoAlias => f.write_str("was not made by k8slan: no k8slan alias"),
            Owner::OtherAlias(a) => {
                write!(
                    f,
                    "was not made by k8slan: its alias {a:?} is not a k8slan alias"
                )
            }
            Owner::Lan { lan, role } => write!(f, "belongs to LAN {lan} as its {}", describe(role)),
        }
    }
}

/// A role of an alias in words.
fn describe(role: &str) -> String {
    for (prefix, what) in [
        ("spoke/", "host end of spoke"),
        ("port/", "bridge port of spoke"),
        ("macvtap/", "macvtap of spoke"),
    ] {
        if let Some(spoke) = role.strip_prefix(prefix) {
            return format!("{what} {spoke}");
        }
    }
    role.to_string()
}

/// Whether `link` carries exactly `alias`.
pub(crate) fn is_ours(link: &Link, alias: &str) -> bool {
    link.alias.as_deref() == Some(alias)
}
