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

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use k8slan_api::naming::link_alias;
use k8slan_kernel::{
    DevNum, NetNs, NsId, NsThread, RequestError, RouteSocket, TapDir, TapNode, tap,
};
use rtnetlink::packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL};
use rtnetlink::packet_route::link::{
    InfoBridge, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{
    LinkBridge, LinkBridgePort, LinkMacVtap, LinkMessageBuilder, LinkUnspec, LinkVxlan,
};
use tracing::warn;

/// Alias role of the placeholder link that lets a VXLAN's flood entries name the host's
/// underlay (see `Conversation::flood_via`).
pub const UNDERLAY_REF_ROLE: &str = "underlay-ref";

use self::parse::{flood_dst, mode_to_nl, parse_address, parse_link};
use crate::kernel::{
    BridgeParams, IfAddress, Kernel, KernelError, LAN_LINK_GROUP, Link, LinkChange, LinkKind,
    NewLink, Ns, VxlanParams,
};
use crate::netns::{self, ForeignEntry, LanDir, NetnsError};

/// Which namespace is the node's host namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostNs {
    /// The namespace of the thread that builds the kernel handle (the agent in production).
    Current,
    /// A namespace file, e.g. `/run/netns/node1` (tests simulating several nodes on one machine).
    Path(PathBuf),
}

/// The real kernel. Share it (`Send + Sync`); it holds the host namespace open, one netlink
/// socket per namespace in use, and the netns directory.
#[derive(Debug)]
pub struct RtnlKernel {
    host: NetNs,
    host_is_own: bool,
    lans: LanDir,
    sockets: Mutex<HashMap<Ns, Arc<NsSocket>>>,
    /// The host-namespace thread, when the host namespace is not the process's own.
    host_thread: OnceLock<NsThread>,
    /// Foreign entries of the netns directory already warned about (each is warned once).
    warned: Mutex<BTreeSet<ForeignEntry>>,
}

/// The socket of one namespace, with the identity of the namespace it belongs to. A LAN
/// namespace's socket exists only once its mark was verified on it.
#[derive(Debug)]
struct NsSocket {
    id: NsId,
    socket: Mutex<RouteSocket>,
}

impl NsSocket {
    fn lock(&self) -> MutexGuard<'_, RouteSocket> {
        self.socket
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RtnlKernel {
    /// Open the host namespace; LAN namespaces live in `netns_dir` (the `--netns-dir` flag),
    /// which is refused when it is the container runtime's directory.
    pub fn new(host: HostNs, netns_dir: impl Into<PathBuf>) -> Result<Self, KernelError> {
        let (opened, own) = match &host {
            HostNs::Current => (NetNs::current(), true),
            HostNs::Path(p) => (NetNs::open(p), false),
        };
        let host = opened.map_err(|e| KernelError::new("open", "host namespace", &Ns::Host, e))?;
        let dir = netns_dir.into();
        let lans = LanDir::open(&dir)
            .map_err(|e| KernelError::new("open", dir.display().to_string(), &Ns::Host, e))?;
        Ok(Self {
            host,
            host_is_own: own,
            lans,
            sockets: Mutex::new(HashMap::new()),
            host_thread: OnceLock::new(),
            warned: Mutex::new(BTreeSet::new()),
        })
    }

    /// The directory holding LAN namespace mounts.
    pub fn netns_dir(&self) -> &Path {
        self.lans.path()
    }

    /// Path of a LAN namespace mount.
    pub fn lan_path(&self, lan: &str) -> PathBuf {
        self.lans.lan_path(lan)
    }

    fn sockets(&self) -> MutexGuard<'_, HashMap<Ns, Arc<NsSocket>>> {
        lock(&self.sockets)
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

    fn netns_err(&self, ns: &Ns, e: NetnsError) -> KernelError {
        KernelError::new("open", self.netns_dir().display().to_string(), ns, e)
    }

    fn warn_foreign(&self, entry: ForeignEntry) {
        if lock(&self.warned).insert(entry.clone()) {
            warn!(
                dir = %self.netns_dir().display(),
                entry = %entry.name,
                what = %entry.what,
                "the netns directory holds an entry k8slan did not create; it is left alone"
            );
        }
    }

    fn open_ns(&self, ns: &Ns) -> Result<NetNs, KernelError> {
        match ns {
            Ns::Host => self
                .host
                .try_clone()
                .map_err(|e| KernelError::new("open", "host namespace", ns, e)),
            Ns::Lan(lan) => match self.lans.open_lan(lan, self.host.id()) {
                Ok(Some(netns)) => Ok(netns),
                Ok(None) => Err(self.not_mounted(ns, lan)),
                Err(e) => Err(self.netns_err(ns, e)),
            },
        }
    }

    /// The socket of `ns`, opened on first use; a LAN namespace that was deleted or replaced
    /// since gets a fresh one (or an error when it is gone or not k8slan's).
    fn socket(&self, ns: &Ns) -> Result<Arc<NsSocket>, KernelError> {
        self.open_socket(ns).map_err(|e| match e {
            Opened::Failed(e) => e,
            Opened::Foreign(what) => {
                let lan = match ns {
                    Ns::Lan(lan) => lan.as_str(),
                    Ns::Host => "",
                };
                let path = self.lan_path(lan);
                self.netns_err(ns, NetnsError::Foreign { path, what })
            }
        })
    }

    fn open_socket(&self, ns: &Ns) -> Result<Arc<NsSocket>, Opened> {
        let netns = match ns {
            Ns::Host => self.open_ns(ns).map_err(Opened::Failed)?,
            Ns::Lan(lan) => match self.lans.open_lan(lan, self.host.id()) {
                Ok(Some(netns)) => netns,
                Ok(None) => {
                    self.forget(ns);
                    return Err(Opened::Failed(self.not_mounted(ns, lan)));
                }
                Err(NetnsError::Foreign { what, .. }) => {
                    self.forget(ns);
                    return Err(Opened::Foreign(what));
                }
                Err(e) => return Err(Opened::Failed(self.netns_err(ns, e))),
            },
        };
        if let Some(s) = self.sockets().get(ns)
            && s.id == netns.id()
        {
            return Ok(s.clone());
        }
        let open_err = |e: &dyn std::fmt::Display| {
            Opened::Failed(KernelError::new(
                "open a netlink socket",
                "namespace",
                ns,
                e,
            ))
        };
        let mut socket = netns
            .run(RouteSocket::open)
            .map_err(|e| open_err(&e))?
            .map_err(|e| open_err(&e))?;
        if let Ns::Lan(lan) = ns
            && let Err(what) = netns::check_mark(&mut socket, lan)
        {
            self.forget(ns);
            return Err(Opened::Foreign(what));
        }
        let s = Arc::new(NsSocket {
            id: netns.id(),
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
                self.host_thread
                    .get()
                    .ok_or_else(|| err(&"no host thread"))?
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
                // Only a namespace whose mark was verified (it has a socket) is entered.
                self.socket(ns)?;
                let netns = self.open_ns(ns)?;
                netns
                    .run(|| netns::set_link_ipv6_sysctl(name, "disable_ipv6", value))
                    .map_err(|e| KernelError::new(WHAT, name, ns, e))?
                    .map_err(|e| KernelError::new(WHAT, name, ns, e))
            }
        }
    }

    /// The tap device directory holding `path`, and the node's file name in it.
    fn tap_dir(
        &self,
        op: &'static str,
        path: &Path,
        create: bool,
    ) -> Result<(Option<TapDir>, String), KernelError> {
        let err = |e: &dyn std::fmt::Display| {
            KernelError::new(op, path.display().to_string(), &Ns::Host, e)
        };
        let (Some(dir), Some(file)) = (path.parent(), path.file_name().and_then(|f| f.to_str()))
        else {
            return Err(err(&"not a file in a directory"));
        };
        let dir = TapDir::open(dir, create).map_err(|e| err(&e))?;
        Ok((dir, file.to_string()))
    }

    /// The verified LAN namespaces of the netns directory; foreign entries are warned about.
    fn scan(&self) -> Result<(Vec<String>, Vec<ForeignEntry>), KernelError> {
        let (found, mut foreign) = self
            .lans
            .entries(self.host.id())
            .map_err(|e| self.netns_err(&Ns::Host, e))?;
        let mut names = Vec::new();
        for (name, _) in found {
            match self.open_socket(&Ns::Lan(name.clone())) {
                Ok(_) => names.push(name),
                Err(Opened::Foreign(what)) => foreign.push(ForeignEntry { name, what }),
                Err(Opened::Failed(e)) => return Err(e),
            }
        }
        // Sockets of namespaces that are gone would keep them alive: drop them.
        self.sockets().retain(|ns, _| match ns {
            Ns::Host => true,
            Ns::Lan(lan) => names.contains(lan),
        });
        for f in &foreign {
            self.warn_foreign(f.clone());
        }
        Ok((names, foreign))
    }
}

/// Why a namespace's socket could not be had.
enum Opened {
    /// The entry is not k8slan's LAN namespace (what it is instead).
    Foreign(String),
    Failed(KernelError),
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
        self.socket
            .link_by_name(name)
            .map_err(|e| self.err(op, name, e))
    }

    /// The ifindex of the VXLAN `name` and of its underlay device (in the namespace the VXLAN
    /// was created in), which every flood entry names: a link-local destination is reachable
    /// only through it, and the kernel matches an entry's removal on it too.
    fn vxlan_and_underlay(
        &mut self,
        op: &'static str,
        name: &str,
    ) -> Result<(u32, Option<u32>), KernelError> {
        let Some(msg) = self.get(op, name)? else {
            return Err(
                KernelError::new(op, name, self.ns, "no such link").with_errno(libc::ENODEV)
            );
        };
        let underlay = match parse_link(&msg).kind {
            LinkKind::Vxlan(p) if p.underlay_ifindex != 0 => Some(p.underlay_ifindex),
            _ => None,
        };
        Ok((msg.header.index, underlay))
    }

    /// The VXLAN's ifindex and, for a link-local `dst`, the underlay the entry must name (a
    /// link-local address is reachable only through one interface; the kernel would otherwise
    /// route it out of whichever interface has fe80::/64 first).
    ///
    /// The kernel resolves that ifindex in the VXLAN's *current* namespace when it checks the
    /// entry, but sends through it in the namespace the VXLAN was created in (the host's). For
    /// the check to pass, a link with the underlay's ifindex must exist in the LAN namespace: when
    /// none does, an empty, down bridge `ul.<ifindex>` is made there at that index (alias
    /// `k8slan:<lan>/underlay-ref`); it goes with the namespace.
    fn flood_via(
        &mut self,
        op: &'static str,
        ns: &Ns,
        vxlan: &str,
        dst: IpAddr,
    ) -> Result<(u32, Option<u32>), KernelError> {
        let (index, underlay) = self.vxlan_and_underlay(op, vxlan)?;
        let link_local = matches!(dst, IpAddr::V6(a) if a.is_unicast_link_local());
        let (Some(via), true) = (underlay, link_local) else {
            return Ok((index, None));
        };
        if !self.dump()?.iter().any(|m| m.header.index == via) {
            self.make_underlay_ref(op, ns, via)?;
        }
        Ok((index, Some(via)))
    }

    fn make_underlay_ref(
        &mut self,
        op: &'static str,
        ns: &Ns,
        via: u32,
    ) -> Result<(), KernelError> {
        let name = format!("ul.{via}");
        let alias = match ns {
            Ns::Lan(lan) => link_alias(lan, UNDERLAY_REF_ROLE),
            Ns::Host => String::new(),
        };
        let mut msg = LinkMessageBuilder::<LinkBridge>::new(&name)
            .alias(alias)
            .build();
        msg.header.index = via;
        self.create(op, &name, msg)
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
        self.socket
            .links()
            .map_err(|e| self.err("list", "links", e))
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
            .ack(msg, flags)
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
        match self.socket.ack(RouteNetlinkMessage::DelLink(msg), 0) {
            Ok(()) => Ok(()),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(self.err(op, name, e)),
        }
    }

    /// The destinations of the all-zero-MAC entries of the link with ifindex `index`.
    fn flood_entries(&mut self, name: &str, index: u32) -> Result<Vec<IpAddr>, KernelError> {
        let fdb = self
            .socket
            .fdb()
            .map_err(|e| self.err("list the forwarding entries of", name, e))?;
        Ok(fdb.iter().filter_map(|m| flood_dst(m, index)).collect())
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

impl Kernel for RtnlKernel {
    fn lan_namespaces(&self) -> Result<Vec<String>, KernelError> {
        Ok(self.scan()?.0)
    }

    fn foreign_namespace_entries(&self) -> Result<Vec<ForeignEntry>, KernelError> {
        Ok(self.scan()?.1)
    }

    fn lan_namespace_exists(&self, lan: &str) -> Result<bool, KernelError> {
        let ns = Ns::Lan(lan.to_string());
        match self.open_socket(&ns) {
            Ok(_) => Ok(true),
            // Not k8slan's: as far as the datapath goes there is no namespace to work in.
            Err(Opened::Foreign(what)) => {
                self.warn_foreign(ForeignEntry {
                    name: lan.to_string(),
                    what,
                });
                Ok(false)
            }
            Err(Opened::Failed(e)) if e.errno == Some(libc::ENOENT) => Ok(false),
            Err(Opened::Failed(e)) => Err(e),
        }
    }

    fn create_lan_namespace(&self, lan: &str) -> Result<(), KernelError> {
        let ns = Ns::Lan(lan.to_string());
        self.forget(&ns);
        self.lans.create(lan).map_err(|e| {
            KernelError::new("create", self.lan_path(lan).display().to_string(), &ns, e)
        })?;
        // Opening its socket verifies the mark once more.
        self.socket(&ns).map(drop)
    }

    fn delete_lan_namespace(&self, lan: &str) -> Result<(), KernelError> {
        let ns = Ns::Lan(lan.into());
        let path = self.lan_path(lan).display().to_string();
        // Only a namespace whose mark checks out on its socket is unmounted, and only while
        // the entry still is that namespace.
        let expect = match self.open_socket(&ns) {
            Ok(s) => Some(s.id),
            Err(Opened::Failed(e)) if e.errno == Some(libc::ENOENT) => None,
            Err(Opened::Foreign(what)) => {
                let e = NetnsError::Foreign {
                    path: self.lan_path(lan),
                    what,
                };
                return Err(KernelError::new("delete", path, &ns, e));
            }
            Err(Opened::Failed(e)) => return Err(e),
        };
        self.forget(&ns);
        self.lans
            .delete(lan, expect)
            .map_err(|e| KernelError::new("delete", path, &ns, e))
    }

    fn link(&self, ns: &Ns, name: &str) -> Result<Option<Link>, KernelError> {
        self.rtnl(ns, |c| Ok(c.get("look up", name)?.as_ref().map(parse_link)))
    }

    fn links(&self, ns: &Ns) -> Result<Vec<Link>, KernelError> {
        self.rtnl(ns, |c| Ok(c.dump()?.iter().map(parse_link).collect()))
    }

    fn addresses(&self, ns: &Ns, ifindex: u32) -> Result<Vec<IfAddress>, KernelError> {
        self.rtnl(ns, |c| {
            let all = c
                .socket
                .addresses()
                .map_err(|e| c.err("list the addresses of", &format!("ifindex {ifindex}"), e))?;
            Ok(all
                .iter()
                .filter(|m| m.header.index == ifindex)
                .filter_map(parse_address)
                .collect())
        })
    }

    fn flood_entries(&self, ns: &Ns, vxlan: &str) -> Result<Vec<IpAddr>, KernelError> {
        self.rtnl(ns, |c| {
            let index = c.index_of("list the forwarding entries of", vxlan)?;
            c.flood_entries(vxlan, index)
        })
    }

    fn add_flood_entry(&self, ns: &Ns, vxlan: &str, dst: IpAddr) -> Result<(), KernelError> {
        const OP: &str = "add a flood entry to";
        self.rtnl(ns, |c| {
            let (index, via) = c.flood_via(OP, ns, vxlan, dst)?;
            let msg = flood_message(index, dst, via);
            // NLM_F_APPEND: one more all-zero entry beside the others (without it the kernel
            // would replace the first); an entry that is there already is acknowledged as is.
            let flags = NLM_F_CREATE | NLM_F_APPEND;
            c.acked(OP, vxlan, RouteNetlinkMessage::NewNeighbour(msg), flags)
        })
    }

    fn remove_flood_entry(&self, ns: &Ns, vxlan: &str, dst: IpAddr) -> Result<(), KernelError> {
        const OP: &str = "remove a flood entry from";
        self.rtnl(ns, |c| {
            let (index, via) = c.flood_via(OP, ns, vxlan, dst)?;
            let msg = flood_message(index, dst, via);
            match c.socket.ack(RouteNetlinkMessage::DelNeighbour(msg), 0) {
                Ok(()) => Ok(()),
                Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
                Err(e) => Err(c.err(OP, vxlan, e)),
            }
        })
    }

    // Kept whole (62 lines): one flat match, one arm per link kind, each arm the namespace it is
    // sent in and its message (built by the *_message functions below).
    fn create_link(&self, link: &NewLink) -> Result<(), KernelError> {
        match link {
            NewLink::Bridge {
                lan,
                name,
                mtu,
                alias,
                params,
            } => self.rtnl(&Ns::Lan(lan.clone()), |c| {
                c.create("create bridge", name, bridge_message(name, *mtu, params))?;
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
                let msg = vxlan_message(name, *mtu, params, lan_file.fd().as_raw_fd());
                self.rtnl(&Ns::Host, |c| c.create("create vxlan", name, msg))?;
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
                let msg = veth_pair_message(host_name, port_name, *mtu, lan_file.fd().as_raw_fd());
                self.rtnl(&Ns::Host, |c| {
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
        self.in_host_fs(
            "read the tap device number of",
            macvtap,
            move || match tap::sysfs_devnum(&name, None) {
                Ok(Some(dev)) => Ok(dev),
                Ok(None) => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{name} has no tap device in sysfs"),
                )),
                Err(e) => Err(io::Error::other(e)),
            },
        )
    }

    fn tap_node(&self, path: &Path) -> Result<Option<TapNode>, KernelError> {
        let (dir, file) = self.tap_dir("inspect", path, false)?;
        let Some(dir) = dir else { return Ok(None) };
        dir.entry(&file)
            .map_err(|e| KernelError::new("inspect", path.display().to_string(), &Ns::Host, e))
    }

    fn make_tap_node(&self, path: &Path, node: TapNode) -> Result<(), KernelError> {
        const OP: &str = "create tap device node";
        let (dir, file) = self.tap_dir(OP, path, true)?;
        let err = |e: &dyn std::fmt::Display| {
            KernelError::new(OP, path.display().to_string(), &Ns::Host, e)
        };
        let dir = dir.ok_or_else(|| err(&"the directory is missing"))?;
        dir.make(&file, node.dev, 0o660, node.owner)
            .map_err(|e| err(&e))
    }

    fn remove_tap_node(&self, path: &Path) -> Result<(), KernelError> {
        const OP: &str = "remove tap device node";
        let (dir, file) = self.tap_dir(OP, path, false)?;
        let Some(dir) = dir else { return Ok(()) };
        dir.remove(&file)
            .map_err(|e| KernelError::new(OP, path.display().to_string(), &Ns::Host, e))
    }

    fn tap_nodes(&self, dir: &Path) -> Result<Vec<PathBuf>, KernelError> {
        let err = |e: &dyn std::fmt::Display| {
            KernelError::new("list", dir.display().to_string(), &Ns::Host, e)
        };
        match TapDir::open(dir, false).map_err(|e| err(&e))? {
            None => Ok(Vec::new()),
            Some(d) => Ok(d
                .names()
                .map_err(|e| err(&e))?
                .into_iter()
                .map(|n| dir.join(n))
                .collect()),
        }
    }
}

/// A LAN bridge in the LAN's link group. `vlan_filtering` is off by default; it is only sent
/// when wanted, because kernels without CONFIG_BRIDGE_VLAN_FILTERING refuse the attribute even
/// as 0.
fn bridge_message(name: &str, mtu: u32, params: &BridgeParams) -> LinkMessage {
    let mut b = LinkMessageBuilder::<LinkBridge>::new(name)
        .mtu(mtu)
        .link_group(LAN_LINK_GROUP);
    if params.vlan_filtering {
        b = b.append_info_data(InfoBridge::VlanFiltering(true));
    }
    b.append_info_data(InfoBridge::MulticastSnooping(params.mcast_snooping))
        .append_info_data(InfoBridge::GroupFwdMask(params.group_fwd_mask))
        .build()
}

/// A LAN VXLAN, sent from the host namespace (its UDP socket and underlay stay there) and placed
/// directly into the LAN namespace open at `lan_fd`.
fn vxlan_message(name: &str, mtu: u32, params: &VxlanParams, lan_fd: RawFd) -> LinkMessage {
    let mut b = LinkMessageBuilder::<LinkVxlan>::new(name)
        .id(params.vni)
        .dev(params.underlay_ifindex);
    b = match params.group {
        Some(IpAddr::V6(g)) => b.group6(g),
        Some(IpAddr::V4(g)) => b.group(g),
        None => b,
    };
    b = match params.local {
        Some(IpAddr::V6(a)) => b.local6(a),
        Some(IpAddr::V4(a)) => b.local(a),
        None => b,
    };
    b.port(params.port)
        .learning(params.learning)
        .mtu(mtu)
        .link_group(LAN_LINK_GROUP)
        .append_extra_attribute(LinkAttribute::NetNsFd(lan_fd))
        .build()
}

/// The VXLAN forwarding entry (`NTF_SELF`, permanent) for MAC 00:00:00:00:00:00 to `dst` on
/// the link with ifindex `index`, sent out of the underlay `via` (`bridge fdb ... via <dev>`):
/// flooded frames (broadcast, multicast, unknown unicast) go to every such entry. Without `via`
/// the kernel routes a link-local `dst` out of whichever interface has fe80::/64 first.
fn flood_message(index: u32, dst: IpAddr, via: Option<u32>) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes = vec![
        NeighbourAttribute::LinkLayerAddress(vec![0; 6]),
        NeighbourAttribute::Destination(NeighbourAddress::from(dst)),
    ];
    msg.attributes.extend(via.map(NeighbourAttribute::IfIndex));
    msg
}

/// A spoke's veth pair: `host_name` in the namespace the message is sent in, its peer
/// `port_name` (in the LAN's link group) placed directly into the LAN namespace open at `lan_fd`.
fn veth_pair_message(host_name: &str, port_name: &str, mtu: u32, lan_fd: RawFd) -> LinkMessage {
    let mut peer = LinkMessage::default();
    peer.attributes = vec![
        LinkAttribute::IfName(port_name.to_owned()),
        LinkAttribute::Mtu(mtu),
        LinkAttribute::Group(LAN_LINK_GROUP),
        LinkAttribute::NetNsFd(lan_fd),
    ];
    LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(host_name.to_owned())
        .mtu(mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build()
}
