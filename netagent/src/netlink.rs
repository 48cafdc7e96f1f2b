//! The real [`Kernel`]: rtnetlink for links, nix for namespaces and device nodes.
//!
//! Every call runs on a short-lived OS thread that enters the target namespace (see
//! [`crate::netns::in_netns`]), opens an rtnetlink socket there and drives it with a
//! current-thread tokio runtime. The socket therefore always talks to the right namespace,
//! whatever thread or runtime the caller uses.

use std::fs::{self, File};
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use k8slan_api::MacvtapMode;
use nix::sys::stat::{Mode, SFlag, major, makedev, minor, mknod};
use rtnetlink::packet_route::link::{
    InfoBridge, InfoBridgePort, InfoData, InfoKind, InfoMacVtap, InfoPortData, InfoVeth, InfoVxlan,
    LinkAttribute, LinkFlags, LinkInfo, LinkMessage, MacVtapMode as NlMode,
};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMacVtap, LinkMessageBuilder, LinkUnspec, LinkVxlan,
};

use crate::kernel::{
    BridgeParams, DevNum, Kernel, KernelError, LAN_LINK_GROUP, Link, LinkChange, LinkKind, NewLink,
    Ns, VxlanParams,
};
use crate::netns;

/// Which namespace is the node's host namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostNs {
    /// The namespace of the thread that builds the kernel handle (the agent in production).
    Current,
    /// A namespace file, e.g. `/run/netns/node1` (tests simulating several nodes on one machine).
    Path(PathBuf),
}

/// The real kernel. Cheap to share: holds the host namespace open and the netns directory path.
#[derive(Debug)]
pub struct RtnlKernel {
    host: File,
    host_is_own: bool,
    netns_dir: PathBuf,
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

    fn open_ns(&self, ns: &Ns) -> Result<File, KernelError> {
        match ns {
            Ns::Host => self
                .host
                .try_clone()
                .map_err(|e| KernelError::new("open", "host namespace", ns, e)),
            Ns::Lan(lan) => {
                let path = self.lan_path(lan);
                if !netns::is_mounted(&path) {
                    return Err(KernelError::new(
                        "open",
                        path.display().to_string(),
                        ns,
                        "the LAN namespace is not mounted",
                    )
                    .with_errno(libc::ENOENT));
                }
                netns::open(&path).map_err(|e| KernelError::new("open", lan.clone(), ns, e))
            }
        }
    }

    /// Run an rtnetlink conversation inside `ns`.
    fn rtnl<T, F, Fut>(
        &self,
        ns: &Ns,
        op: &'static str,
        object: &str,
        f: F,
    ) -> Result<T, KernelError>
    where
        T: Send,
        F: FnOnce(Handle) -> Fut + Send,
        Fut: Future<Output = Result<T, KernelError>>,
    {
        let file = self.open_ns(ns)?;
        netns::in_netns(&file, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| KernelError::new(op, object, ns, format!("tokio runtime: {e}")))?;
            rt.block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| {
                    KernelError::new(op, object, ns, format!("netlink socket: {e}"))
                })?;
                let task = tokio::spawn(conn);
                let out = f(handle).await;
                task.abort();
                out
            })
        })
        .map_err(|e| KernelError::new(op, object, ns, e))?
    }
}

fn nl_err(op: &'static str, object: &str, ns: &Ns, e: rtnetlink::Error) -> KernelError {
    let errno = errno_of(&e);
    let reason = match errno {
        Some(n) => format!("{} (errno {n})", io::Error::from_raw_os_error(n)),
        None => e.to_string(),
    };
    let err = KernelError::new(op, object, ns, reason);
    match errno {
        Some(n) => err.with_errno(n),
        None => err,
    }
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

async fn get_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(m) => Ok(m),
        Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn index_of(h: &Handle, ns: &Ns, op: &'static str, name: &str) -> Result<u32, KernelError> {
    match get_by_name(h, name).await {
        Ok(Some(m)) => Ok(m.header.index),
        Ok(None) => Err(KernelError::new(op, name, ns, "no such link").with_errno(libc::ENODEV)),
        Err(e) => Err(nl_err(op, name, ns, e)),
    }
}

async fn set_alias(h: &Handle, ns: &Ns, name: &str, alias: &str) -> Result<(), KernelError> {
    let index = index_of(h, ns, "set alias of", name).await?;
    h.link()
        .set(LinkUnspec::new_with_index(index).alias(alias).build())
        .execute()
        .await
        .map_err(|e| nl_err("set alias of", name, ns, e))
}

fn mode_to_nl(m: MacvtapMode) -> NlMode {
    match m {
        MacvtapMode::Passthru => NlMode::Passthrough,
        MacvtapMode::Bridge => NlMode::Bridge,
        MacvtapMode::Vepa => NlMode::Vepa,
        MacvtapMode::Private => NlMode::Private,
    }
}

fn mode_from_nl(m: &NlMode) -> Option<MacvtapMode> {
    Some(match m {
        NlMode::Passthrough => MacvtapMode::Passthru,
        NlMode::Bridge => MacvtapMode::Bridge,
        NlMode::Vepa => MacvtapMode::Vepa,
        NlMode::Private => MacvtapMode::Private,
        _ => return None,
    })
}

/// Translate a kernel link message into the datapath's view.
fn parse_link(msg: &LinkMessage) -> Link {
    let mut name = String::new();
    let mut mtu = 0;
    let mut alias = None;
    let mut master = None;
    let mut link = None;
    let mut kind_name: Option<InfoKind> = None;
    let mut data: Option<&InfoData> = None;
    let mut port_mask = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::IfAlias(a) if !a.is_empty() => alias = Some(a.clone()),
            LinkAttribute::Controller(c) => master = Some(*c),
            LinkAttribute::Link(l) => link = Some(*l),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => kind_name = Some(k.clone()),
                        LinkInfo::Data(d) => data = Some(d),
                        LinkInfo::PortData(InfoPortData::BridgePort(p)) => {
                            port_mask = p.iter().find_map(|x| match x {
                                InfoBridgePort::GroupFwdMask(m) => Some(*m),
                                _ => None,
                            });
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let kind = match (kind_name, data) {
        (Some(InfoKind::Bridge), d) => {
            let mut p = BridgeParams {
                vlan_filtering: false,
                mcast_snooping: true,
                group_fwd_mask: 0,
            };
            if let Some(InfoData::Bridge(infos)) = d {
                for i in infos {
                    match i {
                        InfoBridge::VlanFiltering(v) => p.vlan_filtering = *v,
                        InfoBridge::MulticastSnooping(v) => p.mcast_snooping = *v,
                        InfoBridge::GroupFwdMask(v) => p.group_fwd_mask = *v,
                        _ => {}
                    }
                }
            }
            LinkKind::Bridge(p)
        }
        (Some(InfoKind::Vxlan), d) => {
            let mut p = VxlanParams {
                vni: 0,
                group: std::net::Ipv6Addr::UNSPECIFIED,
                port: 0,
                underlay_ifindex: 0,
                learning: false,
            };
            if let Some(InfoData::Vxlan(infos)) = d {
                for i in infos {
                    match i {
                        InfoVxlan::Id(v) => p.vni = *v,
                        InfoVxlan::Group6(g) => p.group = *g,
                        InfoVxlan::Port(v) => p.port = *v,
                        InfoVxlan::Link(v) => p.underlay_ifindex = *v,
                        InfoVxlan::Learning(v) => p.learning = *v,
                        _ => {}
                    }
                }
            }
            LinkKind::Vxlan(p)
        }
        (Some(InfoKind::Veth), _) => LinkKind::Veth { peer_ifindex: link },
        (Some(InfoKind::MacVtap), d) => {
            let mode = match d {
                Some(InfoData::MacVtap(infos)) => infos.iter().find_map(|i| match i {
                    InfoMacVtap::Mode(m) => mode_from_nl(m),
                    _ => None,
                }),
                _ => None,
            };
            match mode {
                Some(mode) => LinkKind::Macvtap {
                    lower_ifindex: link.unwrap_or(0),
                    mode,
                },
                None => LinkKind::Other {
                    kind: "macvtap(source)".into(),
                },
            }
        }
        (Some(k), _) => LinkKind::Other {
            kind: format!("{k:?}").to_lowercase(),
        },
        (None, _) => LinkKind::Other {
            kind: "device".into(),
        },
    };
    Link {
        name,
        ifindex: msg.header.index,
        mtu,
        up: msg.header.flags.contains(LinkFlags::Up),
        alias,
        master,
        port_group_fwd_mask: port_mask,
        kind,
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
        netns::list(&self.netns_dir).map_err(|e| {
            KernelError::new("list", self.netns_dir.display().to_string(), &Ns::Host, e)
        })
    }

    fn lan_namespace_exists(&self, lan: &str) -> Result<bool, KernelError> {
        Ok(netns::is_mounted(&self.lan_path(lan)))
    }

    fn create_lan_namespace(&self, lan: &str) -> Result<(), KernelError> {
        let ns = Ns::Lan(lan.to_string());
        let path = self.lan_path(lan);
        netns::prepare_dir(&self.netns_dir)
            .and_then(|()| netns::create(&path))
            .map_err(|e| KernelError::new("create", path.display().to_string(), &ns, e))?;
        let nsr = &ns;
        let up = self.rtnl(nsr, "bring up", "lo", |h| async move {
            let index = index_of(&h, nsr, "bring up", "lo").await?;
            h.link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(|e| nl_err("bring up", "lo", nsr, e))
        });
        if up.is_err() {
            let _ = netns::delete(&path);
        }
        up
    }

    fn delete_lan_namespace(&self, lan: &str) -> Result<(), KernelError> {
        let path = self.lan_path(lan);
        netns::delete(&path).map_err(|e| {
            KernelError::new(
                "delete",
                path.display().to_string(),
                &Ns::Lan(lan.into()),
                e,
            )
        })
    }

    fn link(&self, ns: &Ns, name: &str) -> Result<Option<Link>, KernelError> {
        self.rtnl(ns, "look up", name, |h| async move {
            get_by_name(&h, name)
                .await
                .map(|m| m.as_ref().map(parse_link))
                .map_err(|e| nl_err("look up", name, ns, e))
        })
    }

    fn links(&self, ns: &Ns) -> Result<Vec<Link>, KernelError> {
        self.rtnl(ns, "list", "links", |h| async move {
            let msgs: Vec<LinkMessage> = h
                .link()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(|e| nl_err("list", "links", ns, e))?;
            Ok(msgs.iter().map(parse_link).collect())
        })
    }

    fn create_link(&self, link: &NewLink) -> Result<(), KernelError> {
        match link {
            NewLink::Bridge {
                lan,
                name,
                mtu,
                alias,
                params,
            } => {
                let ns = &Ns::Lan(lan.clone());
                self.rtnl(ns, "create bridge", name, |h| async move {
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
                    h.link()
                        .add(msg)
                        .execute()
                        .await
                        .map_err(|e| nl_err("create bridge", name, ns, e))?;
                    set_alias(&h, ns, name, alias).await
                })
            }
            NewLink::Vxlan {
                lan,
                name,
                mtu,
                alias,
                params,
            } => {
                let lan_ns = &Ns::Lan(lan.clone());
                let lan_file = self.open_ns(lan_ns)?;
                let fd = lan_file.as_raw_fd();
                // Created from the host namespace (its UDP socket and underlay stay there) and
                // placed directly into the LAN namespace.
                self.rtnl(&Ns::Host, "create vxlan", name, |h| async move {
                    let msg = LinkMessageBuilder::<LinkVxlan>::new(name)
                        .id(params.vni)
                        .dev(params.underlay_ifindex)
                        .group6(params.group)
                        .port(params.port)
                        .learning(params.learning)
                        .mtu(*mtu)
                        .link_group(LAN_LINK_GROUP)
                        .append_extra_attribute(LinkAttribute::NetNsFd(fd))
                        .build();
                    h.link()
                        .add(msg)
                        .execute()
                        .await
                        .map_err(|e| nl_err("create vxlan", name, &Ns::Host, e))
                })?;
                drop(lan_file);
                self.rtnl(lan_ns, "set alias of", name, |h| async move {
                    set_alias(&h, lan_ns, name, alias).await
                })
            }
            NewLink::VethPair {
                lan,
                host_name,
                host_alias,
                port_name,
                port_alias,
                mtu,
            } => {
                let lan_ns = &Ns::Lan(lan.clone());
                let lan_file = self.open_ns(lan_ns)?;
                let fd = lan_file.as_raw_fd();
                self.rtnl(&Ns::Host, "create veth pair", host_name, |h| async move {
                    let mut peer = LinkMessage::default();
                    peer.attributes = vec![
                        LinkAttribute::IfName(port_name.clone()),
                        LinkAttribute::Mtu(*mtu),
                        LinkAttribute::Group(LAN_LINK_GROUP),
                        LinkAttribute::NetNsFd(fd),
                    ];
                    let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
                        .name(host_name.clone())
                        .mtu(*mtu)
                        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                        .build();
                    h.link()
                        .add(msg)
                        .execute()
                        .await
                        .map_err(|e| nl_err("create veth pair", host_name, &Ns::Host, e))?;
                    set_alias(&h, &Ns::Host, host_name, host_alias).await
                })?;
                drop(lan_file);
                self.rtnl(lan_ns, "set alias of", port_name, |h| async move {
                    set_alias(&h, lan_ns, port_name, port_alias).await
                })
            }
            NewLink::Macvtap {
                name,
                lower,
                mode,
                mtu,
                alias,
            } => self.rtnl(&Ns::Host, "create macvtap", name, |h| async move {
                let ns = Ns::Host;
                let lower_index = index_of(&h, &ns, "create macvtap on", lower).await?;
                let msg = LinkMacVtap::new(name, lower_index, mode_to_nl(*mode))
                    .mtu(*mtu)
                    .build();
                h.link()
                    .add(msg)
                    .execute()
                    .await
                    .map_err(|e| nl_err("create macvtap", name, &ns, e))?;
                set_alias(&h, &ns, name, alias).await
            }),
        }
    }

    fn change_link(&self, ns: &Ns, name: &str, change: &LinkChange) -> Result<(), KernelError> {
        self.rtnl(ns, "change", name, |h| async move {
            let index = index_of(&h, ns, "change", name).await?;
            let mut b = LinkUnspec::new_with_index(index);
            let mut any = false;
            if let Some(master) = &change.master {
                let m = index_of(&h, ns, "enslave to", master).await?;
                b = b.controller(m);
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
                h.link()
                    .set(b.build())
                    .execute()
                    .await
                    .map_err(|e| nl_err("change", name, ns, e))?;
            }
            if let Some(mask) = change.port_group_fwd_mask {
                h.link()
                    .set_port(LinkBridgePort::new(index).group_fwd_mask(mask).build())
                    .execute()
                    .await
                    .map_err(|e| nl_err("set group_fwd_mask of bridge port", name, ns, e))?;
            }
            Ok(())
        })
    }

    fn delete_link(&self, ns: &Ns, name: &str) -> Result<(), KernelError> {
        self.rtnl(ns, "delete", name, |h| async move {
            let Some(msg) = get_by_name(&h, name)
                .await
                .map_err(|e| nl_err("delete", name, ns, e))?
            else {
                return Ok(());
            };
            match h.link().del(msg.header.index).execute().await {
                Ok(()) => Ok(()),
                Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(()),
                Err(e) => Err(nl_err("delete", name, ns, e)),
            }
        })
    }

    fn delete_lan_links(&self, lan: &str) -> Result<(), KernelError> {
        let ns = &Ns::Lan(lan.to_string());
        self.rtnl(ns, "delete all links", "k8slan group", |h| async move {
            let mut msg = LinkMessage::default();
            msg.attributes.push(LinkAttribute::Group(LAN_LINK_GROUP));
            match h.link().del_with_message(msg).execute().await {
                Ok(()) => Ok(()),
                Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(()),
                Err(e) => Err(nl_err("delete all links", "k8slan group", ns, e)),
            }
        })
    }

    fn macvtap_devnum(&self, macvtap: &str) -> Result<DevNum, KernelError> {
        let err = |e: &dyn std::fmt::Display| {
            KernelError::new("read the tap device number of", macvtap, &Ns::Host, e)
        };
        if self.host_is_own {
            macvtap_devnum_from_sysfs(macvtap).map_err(|e| err(&e))
        } else {
            netns::with_sysfs_of(&self.host, || macvtap_devnum_from_sysfs(macvtap))
                .map_err(|e| err(&e))?
                .map_err(|e| err(&e))
        }
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
