//! The few kernel link operations the plugins need, behind [`LinkOps`] so that the attachment
//! logic can be tested without root. [`Netlink`] implements them with rtnetlink, holding one
//! netlink socket in the node's namespace and one opened inside the pod's namespace.

use std::fmt;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use tokio::runtime::Runtime;

use crate::mac::MacAddr;
use crate::netns::Netns;
use crate::result::IpNet;
use crate::tap::{self, DevNum};

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

/// [`LinkOps`] over rtnetlink.
pub struct Netlink {
    rt: Runtime,
    host: Handle,
    host_ns: Netns,
    sandbox: Option<(Handle, Netns)>,
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn nl_err(op: &'static str, side: Side, link: &str, e: rtnetlink::Error) -> LinkError {
    let errno = errno_of(&e);
    let message = match errno {
        Some(n) => format!("{} (errno {n})", nix::errno::Errno::from_raw(n).desc()),
        None => e.to_string(),
    };
    LinkError::new(op, side, link, errno, message)
}

impl Netlink {
    /// Opens netlink in the calling thread's namespace and, when given, inside `sandbox`.
    pub fn open(sandbox: Option<Netns>) -> Result<Netlink, LinkError> {
        let setup = |side: Side, why: String| LinkError::new("netlink setup", side, "-", None, why);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| setup(Side::Host, format!("cannot start the I/O runtime: {e}")))?;
        let host_ns = Netns::current().map_err(|e| setup(Side::Host, e.to_string()))?;
        let host = {
            let _guard = rt.enter();
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|e| setup(Side::Host, e.to_string()))?;
            rt.spawn(conn);
            handle
        };
        let sandbox = match sandbox {
            None => None,
            Some(ns) => {
                // A netlink socket belongs to the namespace of the thread that creates it: create
                // it on a short-lived thread that joined the pod's namespace (setns affects only
                // the calling thread, so this process's other threads stay in the node's).
                let rt_handle = rt.handle().clone();
                let ns_fd = ns.fd();
                let made = std::thread::scope(|s| {
                    s.spawn(move || {
                        let _guard = rt_handle.enter();
                        nix::sched::setns(ns_fd, nix::sched::CloneFlags::CLONE_NEWNET)
                            .map_err(|e| format!("cannot enter network namespace: {e}"))?;
                        rtnetlink::new_connection().map_err(|e| e.to_string())
                    })
                    .join()
                    .unwrap_or_else(|_| Err("namespace thread panicked".into()))
                });
                let (conn, handle, _) =
                    made.map_err(|e| setup(Side::Sandbox, format!("{}: {e}", ns.path())))?;
                rt.spawn(conn);
                Some((handle, ns))
            }
        };
        Ok(Netlink {
            rt,
            host,
            host_ns,
            sandbox,
        })
    }

    fn handle(&self, side: Side, op: &'static str, link: &str) -> Result<Handle, LinkError> {
        match side {
            Side::Host => Ok(self.host.clone()),
            Side::Sandbox => self
                .sandbox
                .as_ref()
                .map(|(h, _)| h.clone())
                .ok_or_else(|| LinkError::new(op, side, link, None, "no pod namespace was opened")),
        }
    }

    fn ns_fd(&self, side: Side) -> Option<i32> {
        match side {
            Side::Host => Some(self.host_ns.fd().as_raw_fd()),
            Side::Sandbox => self
                .sandbox
                .as_ref()
                .map(|(_, ns)| ns.fd().as_fd().as_raw_fd()),
        }
    }

    /// Runs `f` on a short-lived thread that joined `side`'s namespace (setns affects only the
    /// calling thread, so this process's other threads stay in the node's namespace).
    fn in_namespace<T: Send>(
        &self,
        side: Side,
        f: impl FnOnce() -> Result<T, String> + Send,
    ) -> Result<T, String> {
        let fd = self.ns_fd(side).ok_or("no pod namespace was opened")?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: the descriptor belongs to `self` and outlives this scoped thread.
                let ns = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("cannot enter the namespace: {e}"))?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err("namespace thread panicked".into()))
        })
    }

    fn set(
        &mut self,
        op: &'static str,
        side: Side,
        link: &LinkState,
        msg: LinkMessage,
    ) -> Result<(), LinkError> {
        let h = self.handle(side, op, &link.name)?;
        self.rt
            .block_on(h.link().set(msg).execute())
            .map_err(|e| nl_err(op, side, &link.name, e))
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

impl LinkOps for Netlink {
    fn get(&mut self, side: Side, name: &str) -> Result<Option<LinkState>, LinkError> {
        let h = self.handle(side, "read link", name)?;
        let found = self.rt.block_on(async {
            h.link()
                .get()
                .match_name(name.to_owned())
                .execute()
                .try_next()
                .await
        });
        match found {
            Ok(msg) => Ok(msg.as_ref().map(state_of)),
            Err(e) if errno_of(&e) == Some(nix::errno::Errno::ENODEV as i32) => Ok(None),
            Err(e) => Err(nl_err("read link", side, name, e)),
        }
    }

    fn move_to(&mut self, from: Side, link: &LinkState, new_name: &str) -> Result<(), LinkError> {
        let fd = self.ns_fd(from.other()).ok_or_else(|| {
            LinkError::new(
                "move link",
                from,
                &link.name,
                None,
                "no pod namespace was opened",
            )
        })?;
        let msg = LinkUnspec::new_with_index(link.index)
            .setns_by_fd(fd)
            .name(new_name)
            .build();
        self.set("move link", from, link, msg)
    }

    fn set_mtu(&mut self, side: Side, link: &LinkState, mtu: u32) -> Result<(), LinkError> {
        self.set(
            "set MTU",
            side,
            link,
            LinkUnspec::new_with_index(link.index).mtu(mtu).build(),
        )
    }

    fn set_mac(&mut self, side: Side, link: &LinkState, mac: MacAddr) -> Result<(), LinkError> {
        self.set(
            "set MAC",
            side,
            link,
            LinkUnspec::new_with_index(link.index)
                .address(mac.0.to_vec())
                .build(),
        )
    }

    fn set_promisc(&mut self, side: Side, link: &LinkState, on: bool) -> Result<(), LinkError> {
        self.set(
            "set promiscuous mode",
            side,
            link,
            LinkUnspec::new_with_index(link.index)
                .promiscuous(on)
                .build(),
        )
    }

    fn set_ipv6(&mut self, side: Side, link: &LinkState, on: bool) -> Result<(), LinkError> {
        const OP: &str = "set disable_ipv6";
        let name = link.name.as_str();
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(LinkError::new(OP, side, name, None, "not a link name"));
        }
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
        tap::repoint_nodes(dir, old, new).map_err(|e| {
            LinkError::new(
                "re-point the tap device nodes",
                Side::Host,
                &dir.display().to_string(),
                e.raw_os_error(),
                e.to_string(),
            )
        })
    }

    fn tap_devnum(&mut self, side: Side, link: &LinkState) -> Result<Option<DevNum>, LinkError> {
        const OP: &str = "read the tap device number";
        let err = |e: &dyn fmt::Display| LinkError::new(OP, side, &link.name, None, e.to_string());
        match side {
            // This process runs in the node's namespace and sees its sysfs.
            Side::Host => tap::devnum_from_sysfs(&link.name, link.index).map_err(|e| err(&e)),
            // sysfs shows the links of the namespace it was mounted in: the thread in the pod's
            // namespace mounts its own in a private mount namespace (nothing is mounted anywhere
            // else).
            Side::Sandbox => self
                .in_namespace(side, || {
                    tap::mount_private_sysfs()?;
                    tap::devnum_from_sysfs(&link.name, link.index).map_err(|e| e.to_string())
                })
                .map_err(|e| err(&e)),
        }
    }

    fn set_up(&mut self, side: Side, link: &LinkState, up: bool) -> Result<(), LinkError> {
        let b = LinkUnspec::new_with_index(link.index);
        let msg = if up { b.up() } else { b.down() }.build();
        self.set(if up { "set up" } else { "set down" }, side, link, msg)
    }

    fn addresses(&mut self, side: Side, link: &LinkState) -> Result<Vec<IpNet>, LinkError> {
        let h = self.handle(side, "list addresses", &link.name)?;
        let index = link.index;
        let msgs = self
            .rt
            .block_on(async {
                h.address()
                    .get()
                    .set_link_index_filter(index)
                    .execute()
                    .try_collect::<Vec<_>>()
                    .await
            })
            .map_err(|e| nl_err("list addresses", side, &link.name, e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
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
        let h = self.handle(side, "add address", &link.name)?;
        let mut req = h.address().add(link.index, addr.addr, addr.prefix);
        if !addr.is_ipv4() {
            // The address is assigned by IPAM: skip duplicate address detection so that it is
            // usable (and routes through it can be added) at once.
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.rt
            .block_on(req.execute())
            .map_err(|e| nl_err("add address", side, &link.name, e))
    }

    fn add_route(
        &mut self,
        side: Side,
        link: &LinkState,
        dst: IpNet,
        gw: Option<IpAddr>,
    ) -> Result<(), LinkError> {
        let h = self.handle(side, "add route", &link.name)?;
        let invalid = |e: String| LinkError::new("add route", side, &link.name, None, e);
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.addr, dst.prefix)
            .map_err(|e| invalid(e.to_string()))?
            .output_interface(link.index);
        b = match gw {
            Some(gw) => b.gateway(gw).map_err(|e| invalid(e.to_string()))?,
            None => b.scope(RouteScope::Link),
        };
        self.rt
            .block_on(h.route().add(b.build()).execute())
            .map_err(|e| nl_err("add route", side, &link.name, e))
    }

    fn delete(&mut self, side: Side, link: &LinkState) -> Result<(), LinkError> {
        let h = self.handle(side, "delete link", &link.name)?;
        self.rt
            .block_on(h.link().del(link.index).execute())
            .map_err(|e| nl_err("delete link", side, &link.name, e))
    }
}
