//! The few kernel link operations the plugins need, behind [`LinkOps`] so that the attachment
//! logic can be tested without root. [`Netlink`] implements them on the kernel layer's blocking
//! rtnetlink socket ([`k8slan_kernel::RouteSocket`]), holding one socket in the node's namespace
//! and one opened inside the pod's namespace: no async runtime, no thread per call.

use std::fmt;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use k8slan_kernel::route::link_at;
use k8slan_kernel::{RequestError, RouteSocket, TapDir, sysfs, tap};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::mac::MacAddr;
use crate::netns::Netns;
use crate::result::IpNet;
use crate::tap::DevNum;

/// Which namespace an operation acts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The namespace the plugin runs in (the node's).
    Host,
    /// The pod's namespace (`CNI_NETNS`).
    Sandbox,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Host => Side::Sandbox,
            Side::Sandbox => Side::Host,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Host => "node namespace",
            Side::Sandbox => "pod namespace",
        })
    }
}

/// What the plugins read of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub name: String,
    /// `veth`, `macvtap`, ... (`None` for links without a kind, such as physical NICs).
    pub kind: Option<String>,
    pub mac: Option<MacAddr>,
    pub mtu: Option<u32>,
    pub up: bool,
    pub promisc: bool,
    pub alias: Option<String>,
}

/// A failed kernel operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op} on link {link:?} in the {side} failed: {message}")]
pub struct LinkError {
    pub op: &'static str,
    pub side: Side,
    pub link: String,
    /// The errno the kernel answered, when it answered one.
    pub errno: Option<i32>,
    pub message: String,
}

impl LinkError {
    pub fn new(
        op: &'static str,
        side: Side,
        link: &str,
        errno: Option<i32>,
        message: impl Into<String>,
    ) -> Self {
        LinkError {
            op,
            side,
            link: link.to_owned(),
            errno,
            message: message.into(),
        }
    }

    /// The target namespace already has a link of that name.
    pub fn is_exists(&self) -> bool {
        self.errno == Some(libc_eexist())
    }
}

fn libc_eexist() -> i32 {
    nix::errno::Errno::EEXIST as i32
}

/// Link operations used by the plugins. Links are addressed by their state as last read, since
/// an index is only meaningful inside one namespace.
pub trait LinkOps {
    /// The link called `name`, or `None`.
    fn get(&mut self, side: Side, name: &str) -> Result<Option<LinkState>, LinkError>;
    /// Moves `link` from `from` to the other namespace and names it `new_name` there, in one
    /// request (so a clash with an existing name fails instead of renaming something else).
    fn move_to(&mut self, from: Side, link: &LinkState, new_name: &str) -> Result<(), LinkError>;
    fn set_mtu(&mut self, side: Side, link: &LinkState, mtu: u32) -> Result<(), LinkError>;
    fn set_mac(&mut self, side: Side, link: &LinkState, mac: MacAddr) -> Result<(), LinkError>;
    fn set_promisc(&mut self, side: Side, link: &LinkState, on: bool) -> Result<(), LinkError>;
    fn set_up(&mut self, side: Side, link: &LinkState, up: bool) -> Result<(), LinkError>;
    /// Turns the link's own IPv6 on or off (`net.ipv6.conf.<link>.disable_ipv6` of its
    /// namespace). A kernel without IPv6 has nothing to do.
    fn set_ipv6(&mut self, side: Side, link: &LinkState, on: bool) -> Result<(), LinkError>;
    /// The tap device number of a macvtap, as its namespace's sysfs shows it (`None`: no tap).
    fn tap_devnum(&mut self, side: Side, link: &LinkState) -> Result<Option<DevNum>, LinkError>;
    /// Re-points the tap device nodes in `dir` that carry `old` to `new` (see [`tap`]); returns
    /// the nodes changed.
    fn repoint_tap_nodes(
        &mut self,
        dir: &std::path::Path,
        old: DevNum,
        new: DevNum,
    ) -> Result<Vec<std::path::PathBuf>, LinkError>;
    fn addresses(&mut self, side: Side, link: &LinkState) -> Result<Vec<IpNet>, LinkError>;
    fn add_address(&mut self, side: Side, link: &LinkState, addr: IpNet) -> Result<(), LinkError>;
    /// Adds a route to `dst` via `gw`, or on-link through `link` when `gw` is `None`.
    fn add_route(
        &mut self,
        side: Side,
        link: &LinkState,
        dst: IpNet,
        gw: Option<IpAddr>,
    ) -> Result<(), LinkError>;
    fn delete(&mut self, side: Side, link: &LinkState) -> Result<(), LinkError>;
}

/// [`LinkOps`] over the blocking rtnetlink socket.
pub struct Netlink {
    host: RouteSocket,
    host_ns: Netns,
    sandbox: Option<(RouteSocket, Netns)>,
}

fn nl_err(op: &'static str, side: Side, link: &str, e: RequestError) -> LinkError {
    LinkError::new(op, side, link, e.errno(), e.to_string())
}

impl Netlink {
    /// Opens netlink in the calling thread's namespace and, when given, inside `sandbox`.
    pub fn open(sandbox: Option<Netns>) -> Result<Netlink, LinkError> {
        let setup = |side: Side, why: String| LinkError::new("netlink setup", side, "-", None, why);
        let host_ns = Netns::current().map_err(|e| setup(Side::Host, e.to_string()))?;
        let host = RouteSocket::open().map_err(|e| setup(Side::Host, e.to_string()))?;
        let sandbox = match sandbox {
            None => None,
            Some(ns) => {
                // A netlink socket belongs to the namespace of the thread that creates it: create
                // it on a short-lived thread inside the pod's namespace.
                let socket = ns
                    .inner()
                    .run(RouteSocket::open)
                    .map_err(|e| setup(Side::Sandbox, e.to_string()))?
                    .map_err(|e| setup(Side::Sandbox, format!("{}: {e}", ns.path())))?;
                Some((socket, ns))
            }
        };
        Ok(Netlink {
            host,
            host_ns,
            sandbox,
        })
    }

    fn parts(
        &mut self,
        side: Side,
        op: &'static str,
        link: &str,
    ) -> Result<(&mut RouteSocket, &Netns), LinkError> {
        match side {
            Side::Host => Ok((&mut self.host, &self.host_ns)),
            Side::Sandbox => self
                .sandbox
                .as_mut()
                .map(|(s, ns)| (s, &*ns))
                .ok_or_else(|| LinkError::new(op, side, link, None, "no pod namespace was opened")),
        }
    }

    fn socket(
        &mut self,
        side: Side,
        op: &'static str,
        link: &str,
    ) -> Result<&mut RouteSocket, LinkError> {
        self.parts(side, op, link).map(|(s, _)| s)
    }

    fn ns(&self, side: Side) -> Option<&Netns> {
        match side {
            Side::Host => Some(&self.host_ns),
            Side::Sandbox => self.sandbox.as_ref().map(|(_, ns)| ns),
        }
    }

    /// Runs `f` on a short-lived thread inside `side`'s namespace.
    fn in_namespace<T: Send>(
        &self,
        side: Side,
        f: impl FnOnce() -> Result<T, String> + Send,
    ) -> Result<T, String> {
        let ns = self.ns(side).ok_or("no pod namespace was opened")?;
        ns.inner().run(f).map_err(|e| e.to_string())?
    }

    /// An acknowledged request on `side`'s socket.
    fn ack(
        &mut self,
        op: &'static str,
        side: Side,
        link: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), LinkError> {
        self.socket(side, op, link)?
            .ack(msg, flags)
            .map_err(|e| nl_err(op, side, link, e))
    }

    /// `RTM_SETLINK` on `link` with the changes `f` makes to an empty message.
    fn set(
        &mut self,
        op: &'static str,
        side: Side,
        link: &LinkState,
        f: impl FnOnce(&mut LinkMessage),
    ) -> Result<(), LinkError> {
        let mut msg = link_at(link.index);
        f(&mut msg);
        self.ack(op, side, &link.name, RouteNetlinkMessage::SetLink(msg), 0)
    }
}

fn state_of(msg: &LinkMessage) -> LinkState {
    let mut s = LinkState {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        mtu: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        promisc: msg.header.flags.contains(LinkFlags::Promisc),
        alias: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => s.name = n.clone(),
            LinkAttribute::Address(a) => s.mac = MacAddr::from_bytes(a),
            LinkAttribute::Mtu(m) => s.mtu = Some(*m),
            LinkAttribute::IfAlias(a) => s.alias = Some(a.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        s.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    s
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// `RTM_NEWADDR` for `addr` on ifindex `index`, as `ip address add` makes it (IPv4: local,
/// address and broadcast; IPv6: no duplicate address detection, since IPAM assigned it and
/// routes through it are added at once).
fn address_message(index: u32, addr: IpNet) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family_of(addr.addr);
    msg.header.prefix_len = addr.prefix;
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Address(addr.addr));
    msg.attributes.push(AddressAttribute::Local(addr.addr));
    match addr.addr {
        IpAddr::V4(v4) if addr.prefix < 31 => {
            let brd = u32::from(v4) | (u32::MAX >> u32::from(addr.prefix));
            msg.attributes
                .push(AddressAttribute::Broadcast(std::net::Ipv4Addr::from(brd)));
        }
        IpAddr::V4(_) => {}
        IpAddr::V6(_) => msg
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad)),
    }
    msg
}

/// `RTM_NEWROUTE` to `dst` via `gw` (or on-link) out of ifindex `index`, in the main table.
fn route_message(index: u32, dst: IpNet, gw: Option<IpAddr>) -> Result<RouteMessage, String> {
    let max = if dst.addr.is_ipv4() { 32 } else { 128 };
    if dst.prefix > max {
        return Err(format!("prefix length {} is longer than {max}", dst.prefix));
    }
    if let Some(gw) = gw
        && gw.is_ipv4() != dst.addr.is_ipv4()
    {
        return Err(format!("gateway {gw} is not of the family of {}", dst.addr));
    }
    let mut msg = RouteMessage::default();
    msg.header.address_family = family_of(dst.addr);
    msg.header.destination_prefix_length = dst.prefix;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Static;
    msg.header.kind = RouteType::Unicast;
    msg.header.scope = if gw.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(dst.addr)));
    msg.attributes.push(RouteAttribute::Oif(index));
    if let Some(gw) = gw {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    Ok(msg)
}

impl LinkOps for Netlink {
    fn get(&mut self, side: Side, name: &str) -> Result<Option<LinkState>, LinkError> {
        let found = self
            .socket(side, "read link", name)?
            .link_by_name(name)
            .map_err(|e| nl_err("read link", side, name, e))?;
        Ok(found.as_ref().map(state_of))
    }

    fn move_to(&mut self, from: Side, link: &LinkState, new_name: &str) -> Result<(), LinkError> {
        let no_ns = || {
            LinkError::new(
                "move link",
                from,
                &link.name,
                None,
                "no pod namespace was opened",
            )
        };
        let fd = self.ns(from.other()).ok_or_else(no_ns)?.fd().as_raw_fd();
        self.set("move link", from, link, |m| {
            m.attributes.push(LinkAttribute::NetNsFd(fd));
            m.attributes
                .push(LinkAttribute::IfName(new_name.to_string()));
        })
    }

    fn set_mtu(&mut self, side: Side, link: &LinkState, mtu: u32) -> Result<(), LinkError> {
        self.set("set MTU", side, link, |m| {
            m.attributes.push(LinkAttribute::Mtu(mtu))
        })
    }

    fn set_mac(&mut self, side: Side, link: &LinkState, mac: MacAddr) -> Result<(), LinkError> {
        self.set("set MAC", side, link, |m| {
            m.attributes.push(LinkAttribute::Address(mac.0.to_vec()))
        })
    }

    fn set_promisc(&mut self, side: Side, link: &LinkState, on: bool) -> Result<(), LinkError> {
        self.set("set promiscuous mode", side, link, |m| {
            m.header.change_mask = LinkFlags::Promisc;
            if on {
                m.header.flags = LinkFlags::Promisc;
            }
        })
    }

    fn set_ipv6(&mut self, side: Side, link: &LinkState, on: bool) -> Result<(), LinkError> {
        const OP: &str = "set disable_ipv6";
        let name = link.name.as_str();
        k8slan_kernel::name::link_name(name)
            .map_err(|e| LinkError::new(OP, side, name, None, e.to_string()))?;
        // Sysctls under /proc/sys/net are those of the opening thread's namespace.
        let knob = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
        let value = if on { "0" } else { "1" };
        self.in_namespace(side, || {
            if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
                return Ok(());
            }
            std::fs::write(&knob, value).map_err(|e| format!("{knob}: {e}"))
        })
        .map_err(|e| LinkError::new(OP, side, name, None, e))
    }

    fn repoint_tap_nodes(
        &mut self,
        dir: &std::path::Path,
        old: DevNum,
        new: DevNum,
    ) -> Result<Vec<std::path::PathBuf>, LinkError> {
        let err = |e: k8slan_kernel::TapError| {
            LinkError::new(
                "re-point the tap device nodes",
                Side::Host,
                &dir.display().to_string(),
                e.raw_os_error(),
                e.to_string(),
            )
        };
        let Some(tap_dir) = TapDir::open(dir, false).map_err(err)? else {
            return Ok(Vec::new());
        };
        let changed = tap_dir.repoint(old, new).map_err(err)?;
        Ok(changed.into_iter().map(|n| dir.join(n)).collect())
    }

    fn tap_devnum(&mut self, side: Side, link: &LinkState) -> Result<Option<DevNum>, LinkError> {
        const OP: &str = "read the tap device number";
        let err = |e: &dyn fmt::Display| LinkError::new(OP, side, &link.name, None, e.to_string());
        let (name, index) = (link.name.as_str(), link.index);
        match side {
            // This process runs in the node's namespace and sees its sysfs.
            Side::Host => tap::sysfs_devnum(name, Some(index)).map_err(|e| err(&e)),
            // sysfs shows the links of the namespace it was mounted in: the thread in the pod's
            // namespace mounts its own in a private mount namespace (nothing is mounted anywhere
            // else).
            Side::Sandbox => self
                .in_namespace(side, || {
                    sysfs::mount_private().map_err(|e| e.to_string())?;
                    tap::sysfs_devnum(name, Some(index)).map_err(|e| e.to_string())
                })
                .map_err(|e| err(&e)),
        }
    }

    fn set_up(&mut self, side: Side, link: &LinkState, up: bool) -> Result<(), LinkError> {
        let op = if up { "set up" } else { "set down" };
        self.set(op, side, link, |m| {
            m.header.change_mask = LinkFlags::Up;
            if up {
                m.header.flags = LinkFlags::Up;
            }
        })
    }

    fn addresses(&mut self, side: Side, link: &LinkState) -> Result<Vec<IpNet>, LinkError> {
        const OP: &str = "list addresses";
        let mut req = AddressMessage::default();
        req.header.index = link.index;
        let replies = self
            .socket(side, OP, &link.name)?
            .request(RouteNetlinkMessage::GetAddress(req), NLM_F_DUMP)
            .map_err(|e| nl_err(OP, side, &link.name, e))?;
        Ok(replies
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewAddress(m) if m.header.index == link.index => Some(m),
                _ => None,
            })
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(IpNet {
                        addr: *ip,
                        prefix: m.header.prefix_len,
                    }),
                    _ => None,
                })
            })
            .collect())
    }

    fn add_address(&mut self, side: Side, link: &LinkState, addr: IpNet) -> Result<(), LinkError> {
        let msg = RouteNetlinkMessage::NewAddress(address_message(link.index, addr));
        self.ack(
            "add address",
            side,
            &link.name,
            msg,
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    fn add_route(
        &mut self,
        side: Side,
        link: &LinkState,
        dst: IpNet,
        gw: Option<IpAddr>,
    ) -> Result<(), LinkError> {
        let msg = route_message(link.index, dst, gw)
            .map_err(|e| LinkError::new("add route", side, &link.name, None, e))?;
        let msg = RouteNetlinkMessage::NewRoute(msg);
        self.ack(
            "add route",
            side,
            &link.name,
            msg,
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    fn delete(&mut self, side: Side, link: &LinkState) -> Result<(), LinkError> {
        let msg = RouteNetlinkMessage::DelLink(link_at(link.index));
        self.ack("delete link", side, &link.name, msg, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_addresses_get_a_broadcast_and_ipv6_ones_skip_dad() {
        let v4 = address_message(
            7,
            IpNet {
                addr: "198.18.0.5".parse().unwrap(),
                prefix: 24,
            },
        );
        assert_eq!(v4.header.index, 7);
        assert!(v4.attributes.contains(&AddressAttribute::Broadcast(
            "198.18.0.255".parse().unwrap()
        )));
        let v6 = address_message(
            7,
            IpNet {
                addr: "fd00::5".parse().unwrap(),
                prefix: 64,
            },
        );
        assert!(
            v6.attributes
                .contains(&AddressAttribute::Flags(AddressFlags::Nodad))
        );
    }

    #[test]
    fn routes_of_mixed_families_or_long_prefixes_are_refused() {
        let dst = IpNet {
            addr: "198.18.0.0".parse().unwrap(),
            prefix: 16,
        };
        assert!(route_message(1, dst, Some("fd00::1".parse().unwrap())).is_err());
        let long = IpNet {
            addr: "198.18.0.0".parse().unwrap(),
            prefix: 33,
        };
        assert!(route_message(1, long, None).is_err());
        let r = route_message(1, dst, None).unwrap();
        assert_eq!(r.header.scope, RouteScope::Link);
        let r = route_message(1, dst, Some("198.18.0.1".parse().unwrap())).unwrap();
        assert_eq!(r.header.scope, RouteScope::Universe);
    }
}
