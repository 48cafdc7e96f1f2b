//! The real [`Kernel`]: rtnetlink for links, nix for namespaces and device nodes.
//!
//! Each namespace gets one blocking rtnetlink socket ([`socket::RouteSocket`]), opened on a
//! short-lived thread inside the namespace the first time it is used and kept: a netlink socket
//! always talks to the namespace it was created in, whatever thread uses it later, so a kernel
//! call costs a few system calls and no thread, runtime or socket of its own. A LAN namespace's
//! socket is checked against the namespace mounted at its path on every use and dropped when
//! the namespace is deleted or replaced, so it never keeps a deleted namespace (and the links in
//! it) alive.
//!
//! Per-link sysctls and sysfs are per namespace too, seen by the thread that opens them: in the
//! process's own namespace they are read directly; for a host namespace given as a file (tests
//! simulating several nodes) a long-lived [`netns::NsThread`] with its own sysfs does it.

mod parse;
pub mod socket;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use nix::sys::stat::{Mode, SFlag, major, makedev, minor, mknod};
use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{
    InfoBridge, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage,
};
use rtnetlink::{
    LinkBridge, LinkBridgePort, LinkMacVtap, LinkMessageBuilder, LinkUnspec, LinkVxlan,
};

use self::parse::{mode_to_nl, parse_link};
use self::socket::{RequestError, RouteSocket};
use crate::kernel::{DevNum, Kernel, KernelError, LAN_LINK_GROUP, Link, LinkChange, NewLink, Ns};
use crate::netns::{self, NsThread};

/// Which namespace is the node's host namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostNs {
    /// The namespace of the thread that builds the kernel handle (the agent in production).
    Current,
    /// A namespace file, e.g. `/run/netns/node1` (tests simulating several nodes on one machine).
    Path(PathBuf),
}

/// The real kernel. Share it (`Send + Sync`); it holds the host namespace open, one netlink
/// socket per namespace in use, and the netns directory path.
#[derive(Debug)]
pub struct RtnlKernel {
    host: File,
    host_is_own: bool,
    netns_dir: PathBuf,
    sockets: Mutex<HashMap<Ns, Arc<NsSocket>>>,
    /// The host-namespace thread, when the host namespace is not the process's own.
    host_thread: OnceLock<NsThread>,
}

/// The socket of one namespace, with the identity (device and inode of the namespace file) of
/// the namespace it belongs to.
#[derive(Debug)]
struct NsSocket {
    id: (u64, u64),
    socket: Mutex<RouteSocket>,
}

impl NsSocket {
    fn lock(&self) -> MutexGuard<'_, RouteSocket> {
        self.socket
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Device and inode of a namespace file: the namespace's identity.
fn ns_id(meta: &fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

impl RtnlKernel {
    /// Open the host namespace; LAN namespaces live in `netns_dir`.
    pub fn new(host: HostNs, netns_dir: impl Into<PathBuf>) -> Result<Self, KernelError> {
        let (path, own) = match &host {
            HostNs::Current => (PathBuf::from("/proc/thread-self/ns/net"), true),
            HostNs::Path(p) => (p.clone(), false),
        };
        let file = netns::open(&path)
            .map_err(|e| KernelError::new("open", path.display().to_string(), &Ns::Host, e))?;
        Ok(Self {
            host: file,
            host_is_own: own,
            netns_dir: netns_dir.into(),
            sockets: Mutex::new(HashMap::new()),
            host_thread: OnceLock::new(),
        })
    }

    /// The directory holding LAN namespace mounts.
    pub fn netns_dir(&self) -> &Path {
        &self.netns_dir
    }

    /// Path of a LAN namespace mount.
    pub fn lan_path(&self, lan: &str) -> PathBuf {
        self.netns_dir.join(lan)
    }

    fn sockets(&self) -> MutexGuard<'_, HashMap<Ns, Arc<NsSocket>>> {
        self.sockets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn forget(&self, ns: &Ns) {
        self.sockets().remove(ns);
    }

    fn not_mounted(&self, ns: &Ns, lan: &str) -> KernelError {
        KernelError::new(
            "open",
            self.lan_path(lan).display().to_string(),
            ns,
            "the LAN namespace is not mounted",
        )
        .with_errno(libc::ENOENT)
    }

    fn open_ns(&self, ns: &Ns) -> Result<File, KernelError> {
        match ns {
            Ns::Host => self
                .host
                .try_clone()
                .map_err(|e| KernelError::new("open", "host namespace", ns, e)),
            Ns::Lan(lan) => {
                let path = self.lan_path(lan);
                if !netns::is_mounted(&path) {
                    return Err(self.not_mounted(ns, lan));
                }
                netns::open(&path).map_err(|e| KernelError::new("open", lan.clone(), ns, e))
            }
        }
    }

    /// The socket of `ns`, opened on first use; a LAN namespace that was deleted or replaced
    /// since gets a fresh one (or an error when it is gone).
    fn socket(&self, ns: &Ns) -> Result<Arc<NsSocket>, KernelError> {
        let current = match ns {
            Ns::Host => None,
            Ns::Lan(lan) => {
                let path = self.lan_path(lan);
                let meta = match fs::metadata(&path) {
                    Ok(m) if netns::is_mounted(&path) => m,
                    _ => {
                        self.forget(ns);
                        return Err(self.not_mounted(ns, lan));
                    }
                };
                Some(ns_id(&meta))
            }
        };
        if let Some(s) = self.sockets().get(ns)
            && current.is_none_or(|id| id == s.id)
        {
            return Ok(s.clone());
        }
        let file = self.open_ns(ns)?;
        let meta = file
            .metadata()
            .map_err(|e| KernelError::new("open", "namespace", ns, e))?;
        let socket = netns::in_netns(&file, RouteSocket::open)
            .map_err(|e| KernelError::new("open a netlink socket", "namespace", ns, e))?
            .map_err(|e| KernelError::new("open a netlink socket", "namespace", ns, e))?;
        let s = Arc::new(NsSocket {
            id: ns_id(&meta),
            socket: Mutex::new(socket),
        });
        self.sockets().insert(ns.clone(), s.clone());
        Ok(s)
    }

    /// Run a netlink conversation in `ns` on its socket.
    fn rtnl<T>(
        &self,
        ns: &Ns,
        f: impl FnOnce(&mut Conversation<'_>) -> Result<T, KernelError>,
    ) -> Result<T, KernelError> {
        let s = self.socket(ns)?;
        let mut socket = s.lock();
        f(&mut Conversation {
            socket: &mut socket,
            ns,
        })
    }

    /// Run `f` where the host namespace's sysfs and sysctls are visible.
    fn in_host_fs<T: Send + 'static>(
        &self,
        what: &'static str,
        object: &str,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> Result<T, KernelError> {
        let err = |e: &dyn std::fmt::Display| KernelError::new(what, object, &Ns::Host, e);
        if self.host_is_own {
            return f().map_err(|e| err(&e));
        }
        let thread = match self.host_thread.get() {
            Some(t) => t,
            None => {
                let t = NsThread::start(&self.host).map_err(|e| err(&e))?;
                // Another caller may have won the race; theirs is kept, ours is dropped.
                let _ = self.host_thread.set(t);
                self.host_thread.get().expect("set above")
            }
        };
        thread.run(f).map_err(|e| err(&e))?.map_err(|e| err(&e))
    }

    /// Turn IPv6 on or off for one link of `ns`.
    fn set_ipv6(&self, ns: &Ns, name: &str, on: bool) -> Result<(), KernelError> {
        const WHAT: &str = "set disable_ipv6 of";
        let value = if on { "0" } else { "1" };
        match ns {
            Ns::Host => {
                let link = name.to_string();
                self.in_host_fs(WHAT, name, move || {
                    netns::set_link_ipv6_sysctl(&link, "disable_ipv6", value)
                })
            }
            Ns::Lan(_) => {
                let file = self.open_ns(ns)?;
                netns::in_netns(&file, || {
                    netns::set_link_ipv6_sysctl(name, "disable_ipv6", value)
                })
                .map_err(|e| KernelError::new(WHAT, name, ns, e))?
                .map_err(|e| KernelError::new(WHAT, name, ns, e))
            }
        }
    }
}

/// One netlink conversation: the socket of a namespace, with the namespace for messages.
struct Conversation<'a> {
    socket: &'a mut RouteSocket,
    ns: &'a Ns,
}

impl Conversation<'_> {
    fn err(&self, op: &'static str, object: &str, e: RequestError) -> KernelError {
        let err = KernelError::new(op, object, self.ns, &e);
        match e.errno() {
            Some(n) => err.with_errno(n),
            None => err,
        }
    }

    /// The link called `name`, if any.
    fn get(&mut self, op: &'static str, name: &str) -> Result<Option<LinkMessage>, KernelError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.socket.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(m) => Some(m),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(self.err(op, name, e)),
        }
    }

    fn index_of(&mut self, op: &'static str, name: &str) -> Result<u32, KernelError> {
        match self.get(op, name)? {
            Some(m) => Ok(m.header.index),
            None => {
                Err(KernelError::new(op, name, self.ns, "no such link").with_errno(libc::ENODEV))
            }
        }
    }

    fn dump(&mut self) -> Result<Vec<LinkMessage>, KernelError> {
        let replies = self
            .socket
            .request(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(|e| self.err("list", "links", e))?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(m) => Some(m),
                _ => None,
            })
            .collect())
    }

    /// A request the kernel only acknowledges.
    fn acked(
        &mut self,
        op: &'static str,
        name: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), KernelError> {
        self.socket
            .request(msg, NLM_F_ACK | flags)
            .map(drop)
            .map_err(|e| self.err(op, name, e))
    }

    /// `RTM_NEWLINK` creating a link (fails if it exists).
    fn create(
        &mut self,
        op: &'static str,
        name: &str,
        msg: LinkMessage,
    ) -> Result<(), KernelError> {
        let msg = RouteNetlinkMessage::NewLink(msg);
        self.acked(op, name, msg, NLM_F_CREATE | NLM_F_EXCL)
    }

    /// `RTM_SETLINK`.
    fn set(&mut self, op: &'static str, name: &str, msg: LinkMessage) -> Result<(), KernelError> {
        self.acked(op, name, RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// `RTM_NEWLINK` on an existing link (bridge port options need it).
    fn change(
        &mut self,
        op: &'static str,
        name: &str,
        msg: LinkMessage,
    ) -> Result<(), KernelError> {
        self.acked(op, name, RouteNetlinkMessage::NewLink(msg), 0)
    }

    /// `RTM_DELLINK`; a link already gone is fine.
    fn delete(
        &mut self,
        op: &'static str,
        name: &str,
        msg: LinkMessage,
    ) -> Result<(), KernelError> {
        match self
            .socket
            .request(RouteNetlinkMessage::DelLink(msg), NLM_F_ACK)
        {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(self.err(op, name, e)),
        }
    }

    fn set_alias(&mut self, name: &str, alias: &str) -> Result<(), KernelError> {
        let index = self.index_of("set alias of", name)?;
        self.set(
            "set alias of",
            name,
            LinkUnspec::new_with_index(index).alias(alias).build(),
        )
    }
}

fn read_devnum(path: &Path) -> io::Result<DevNum> {
    let text = fs::read_to_string(path)?;
    let (ma, mi) = text.trim().split_once(':').ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{text:?} is not MAJOR:MINOR"),
        )
    })?;
    let parse = |s: &str| {
        s.parse::<u32>()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{s:?}: {e}")))
    };
    Ok(DevNum {
        major: parse(ma)?,
        minor: parse(mi)?,
    })
}

/// `/sys/class/net/<macvtap>/macvtap/tap<ifindex>/dev`, found without knowing the ifindex.
fn macvtap_devnum_from_sysfs(macvtap: &str) -> io::Result<DevNum> {
    let dir = Path::new("/sys/class/net").join(macvtap).join("macvtap");
    let entry = fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("tap"))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no tap device under {}", dir.display()),
            )
        })?;
    read_devnum(&entry.path().join("dev"))
}

impl Kernel for RtnlKernel {
    fn lan_namespaces(&self) -> Result<Vec<String>, KernelError> {
        let names = netns::list(&self.netns_dir).map_err(|e| {
            KernelError::new("list", self.netns_dir.display().to_string(), &Ns::Host, e)
        })?;
        // Sockets of namespaces that are gone would keep them alive: drop them.
        self.sockets().retain(|ns, _| match ns {
            Ns::Host => true,
            Ns::Lan(lan) => names.contains(lan),
        });
        Ok(names)
    }

    fn lan_namespace_exists(&self, lan: &str) -> Result<bool, KernelError> {
        Ok(netns::is_mounted(&self.lan_path(lan)))
    }

    fn create_lan_namespace(&self, lan: &str) -> Result<(), KernelError> {
        let ns = Ns::Lan(lan.to_string());
        let path = self.lan_path(lan);
        self.forget(&ns);
        netns::prepare_dir(&self.netns_dir)
            .and_then(|()| netns::create(&path))
            .map_err(|e| KernelError::new("create", path.display().to_string(), &ns, e))?;
        let up = self.rtnl(&ns, |c| {
            let index = c.index_of("bring up", "lo")?;
            c.set(
                "bring up",
                "lo",
                LinkUnspec::new_with_index(index).up().build(),
            )
        });
        if up.is_err() {
            self.forget(&ns);
            let _ = netns::delete(&path);
        }
        up
    }

    fn delete_lan_namespace(&self, lan: &str) -> Result<(), KernelError> {
        let ns = Ns::Lan(lan.into());
        self.forget(&ns);
        let path = self.lan_path(lan);
        netns::delete(&path)
            .map_err(|e| KernelError::new("delete", path.display().to_string(), &ns, e))
    }

    fn link(&self, ns: &Ns, name: &str) -> Result<Option<Link>, KernelError> {
        self.rtnl(ns, |c| Ok(c.get("look up", name)?.as_ref().map(parse_link)))
    }

    fn links(&self, ns: &Ns) -> Result<Vec<Link>, KernelError> {
        self.rtnl(ns, |c| Ok(c.dump()?.iter().map(parse_link).collect()))
    }

    fn create_link(&self, link: &NewLink) -> Result<(), KernelError> {
        match link {
            NewLink::Bridge {
                lan,
                name,
                mtu,
                alias,
                params,
            } => self.rtnl(&Ns::Lan(lan.clone()), |c| {
                // vlan_filtering is off by default; it is only sent when wanted, because
                // kernels without CONFIG_BRIDGE_VLAN_FILTERING refuse the attribute even as 0.
                let mut b = LinkMessageBuilder::<LinkBridge>::new(name)
                    .mtu(*mtu)
                    .link_group(LAN_LINK_GROUP);
                if params.vlan_filtering {
                    b = b.append_info_data(InfoBridge::VlanFiltering(true));
                }
                let msg = b
                    .append_info_data(InfoBridge::MulticastSnooping(params.mcast_snooping))
                    .append_info_data(InfoBridge::GroupFwdMask(params.group_fwd_mask))
                    .build();
                c.create("create bridge", name, msg)?;
                c.set_alias(name, alias)
            }),
            NewLink::Vxlan {
                lan,
                name,
                mtu,
                alias,
                params,
            } => {
                let lan_ns = Ns::Lan(lan.clone());
                let lan_file = self.open_ns(&lan_ns)?;
                // Created from the host namespace (its UDP socket and underlay stay there) and
                // placed directly into the LAN namespace.
                self.rtnl(&Ns::Host, |c| {
                    let msg = LinkMessageBuilder::<LinkVxlan>::new(name)
                        .id(params.vni)
                        .dev(params.underlay_ifindex)
                        .group6(params.group)
                        .port(params.port)
                        .learning(params.learning)
                        .mtu(*mtu)
                        .link_group(LAN_LINK_GROUP)
                        .append_extra_attribute(LinkAttribute::NetNsFd(lan_file.as_raw_fd()))
                        .build();
                    c.create("create vxlan", name, msg)
                })?;
                drop(lan_file);
                self.rtnl(&lan_ns, |c| c.set_alias(name, alias))
            }
            NewLink::VethPair {
                lan,
                host_name,
                host_alias,
                port_name,
                port_alias,
                mtu,
            } => {
                let lan_ns = Ns::Lan(lan.clone());
                let lan_file = self.open_ns(&lan_ns)?;
                self.rtnl(&Ns::Host, |c| {
                    let mut peer = LinkMessage::default();
                    peer.attributes = vec![
                        LinkAttribute::IfName(port_name.clone()),
                        LinkAttribute::Mtu(*mtu),
                        LinkAttribute::Group(LAN_LINK_GROUP),
                        LinkAttribute::NetNsFd(lan_file.as_raw_fd()),
                    ];
                    let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
                        .name(host_name.clone())
                        .mtu(*mtu)
                        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                        .build();
                    c.create("create veth pair", host_name, msg)?;
                    c.set_alias(host_name, host_alias)
                })?;
                drop(lan_file);
                self.rtnl(&lan_ns, |c| c.set_alias(port_name, port_alias))
            }
            NewLink::Macvtap {
                name,
                lower,
                mode,
                mtu,
                alias,
            } => self.rtnl(&Ns::Host, |c| {
                let lower_index = c.index_of("create macvtap on", lower)?;
                let msg = LinkMacVtap::new(name, lower_index, mode_to_nl(*mode))
                    .mtu(*mtu)
                    .build();
                c.create("create macvtap", name, msg)?;
                c.set_alias(name, alias)
            }),
        }
    }

    fn change_link(&self, ns: &Ns, name: &str, change: &LinkChange) -> Result<(), KernelError> {
        // IPv6 first: a link brought up below must not speak IPv6 even for a moment.
        if let Some(on) = change.ipv6 {
            self.set_ipv6(ns, name, on)?;
        }
        self.rtnl(ns, |c| {
            let index = c.index_of("change", name)?;
            let mut b = LinkUnspec::new_with_index(index);
            let mut any = false;
            if let Some(master) = &change.master {
                b = b.controller(c.index_of("enslave to", master)?);
                any = true;
            }
            if let Some(mtu) = change.mtu {
                b = b.mtu(mtu);
                any = true;
            }
            if let Some(alias) = &change.alias {
                b = b.alias(alias.clone());
                any = true;
            }
            if let Some(up) = change.up {
                b = if up { b.up() } else { b.down() };
                any = true;
            }
            if any {
                c.set("change", name, b.build())?;
            }
            if let Some(mask) = change.port_group_fwd_mask {
                c.change(
                    "set group_fwd_mask of bridge port",
                    name,
                    LinkBridgePort::new(index).group_fwd_mask(mask).build(),
                )?;
            }
            Ok(())
        })
    }

    fn delete_link(&self, ns: &Ns, name: &str) -> Result<(), KernelError> {
        self.rtnl(ns, |c| {
            let Some(msg) = c.get("delete", name)? else {
                return Ok(());
            };
            let mut del = LinkMessage::default();
            del.header.index = msg.header.index;
            c.delete("delete", name, del)
        })
    }

    fn delete_lan_links(&self, lan: &str) -> Result<(), KernelError> {
        self.rtnl(&Ns::Lan(lan.to_string()), |c| {
            let mut msg = LinkMessage::default();
            msg.attributes.push(LinkAttribute::Group(LAN_LINK_GROUP));
            c.delete("delete all links", "k8slan group", msg)
        })
    }

    fn macvtap_devnum(&self, macvtap: &str) -> Result<DevNum, KernelError> {
        let name = macvtap.to_string();
        self.in_host_fs("read the tap device number of", macvtap, move || {
            macvtap_devnum_from_sysfs(&name)
        })
    }

    fn tap_node(&self, path: &Path) -> Result<Option<DevNum>, KernelError> {
        let err = |e: &dyn std::fmt::Display| {
            KernelError::new("inspect", path.display().to_string(), &Ns::Host, e)
        };
        match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_char_device() => Ok(Some(DevNum {
                major: major(m.rdev()) as u32,
                minor: minor(m.rdev()) as u32,
            })),
            Ok(_) => Err(err(&"exists but is not a character device")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(&e)),
        }
    }

    fn make_tap_node(&self, path: &Path, dev: DevNum) -> Result<(), KernelError> {
        let err = |e: &dyn std::fmt::Display| {
            KernelError::new(
                "create tap device node",
                path.display().to_string(),
                &Ns::Host,
                e,
            )
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(&e)),
        }
        mknod(
            path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o660),
            makedev(u64::from(dev.major), u64::from(dev.minor)),
        )
        .map_err(|e| err(&e))
    }

    fn remove_tap_node(&self, path: &Path) -> Result<(), KernelError> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(KernelError::new(
                "remove tap device node",
                path.display().to_string(),
                &Ns::Host,
                e,
            )),
        }
    }

    fn tap_nodes(&self, dir: &Path) -> Result<Vec<PathBuf>, KernelError> {
        match fs::read_dir(dir) {
            Ok(entries) => {
                let mut v: Vec<PathBuf> =
                    entries.filter_map(Result::ok).map(|e| e.path()).collect();
                v.sort();
                Ok(v)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(KernelError::new(
                "list",
                dir.display().to_string(),
                &Ns::Host,
                e,
            )),
        }
    }
}
