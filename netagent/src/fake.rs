//! An in-memory [`Kernel`] that behaves like the real one where the datapath logic can tell
//! (veth pairs die together, a macvtap dies with its lower link, links die with their namespace)
//! and records every call, so unit tests can assert what was changed and what was not.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::kernel::{
    DevNum, IfAddress, Kernel, KernelError, Link, LinkChange, LinkKind, NewLink, Ns, TapNode,
    VxlanParams,
};

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    LanNamespaces,
    LanNamespaceExists(String),
    CreateLanNamespace(String),
    DeleteLanNamespace(String),
    Link(Ns, String),
    Links(Ns),
    CreateLink(NewLink),
    ChangeLink(Ns, String, LinkChange),
    DeleteLink(Ns, String),
    DeleteLanLinks(String),
    MacvtapDevnum(String),
    TapNode(PathBuf),
    MakeTapNode(PathBuf, DevNum),
    RemoveTapNode(PathBuf),
    TapNodes(PathBuf),
    Addresses(Ns, u32),
    FloodEntries(Ns, String),
    AddFloodEntry(Ns, String, IpAddr),
    RemoveFloodEntry(Ns, String, IpAddr),
}

impl Call {
    /// Whether the call changes kernel or filesystem state.
    pub fn is_mutation(&self) -> bool {
        matches!(
            self,
            Call::CreateLanNamespace(_)
                | Call::DeleteLanNamespace(_)
                | Call::CreateLink(_)
                | Call::ChangeLink(..)
                | Call::DeleteLink(..)
                | Call::DeleteLanLinks(_)
                | Call::MakeTapNode(..)
                | Call::RemoveTapNode(_)
                | Call::AddFloodEntry(..)
                | Call::RemoveFloodEntry(..)
        )
    }
}

#[derive(Debug, Default)]
struct State {
    host: Vec<Link>,
    lans: BTreeMap<String, Vec<Link>>,
    taps: BTreeMap<PathBuf, TapNode>,
    next_ifindex: u32,
    /// Addresses by ifindex (ifindexes are unique across the fake's namespaces).
    addresses: BTreeMap<u32, Vec<IfAddress>>,
    /// All-zero-MAC forwarding entries of VXLANs by ifindex, in the order they were added.
    flood: BTreeMap<u32, Vec<IpAddr>>,
    calls: Vec<Call>,
    /// The next call to fail: operation, object, errno.
    fail: Option<(String, String, i32)>,
    /// Our links that were up with IPv6 on at some point (they would have spoken onto the LAN).
    spoke_ipv6: Vec<(Ns, String)>,
}

/// The recording fake kernel.
#[derive(Debug, Default)]
pub struct RecordingKernel {
    state: Mutex<State>,
}

/// Major number the fake gives every macvtap's character device.
pub const FAKE_TAP_MAJOR: u32 = 239;

impl RecordingKernel {
    /// An empty node: a host namespace with only `lo`.
    pub fn new() -> Self {
        let k = Self::default();
        k.st().next_ifindex = 2;
        k.st().host.push(plain("lo", 1, 65536));
        k
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add a plain (underlay-like) link to the host namespace, without recording a call.
    pub fn add_host_link(&self, name: &str, mtu: u32) -> u32 {
        let mut st = self.st();
        let idx = st.next_ifindex;
        st.next_ifindex += 1;
        st.host.push(plain(name, idx, mtu));
        idx
    }

    /// Give a host link an address, without recording a call.
    pub fn add_host_address(&self, name: &str, addr: IpAddr, prefix_len: u8) {
        let mut st = self.st();
        let ifindex = st
            .host
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("fake: no host link {name}"))
            .ifindex;
        let a = IfAddress { addr, prefix_len };
        st.addresses.entry(ifindex).or_default().push(a);
    }

    /// The flood entries of a VXLAN, without recording a call (empty when there is no such
    /// VXLAN).
    pub fn peek_flood(&self, ns: &Ns, vxlan: &str) -> Vec<IpAddr> {
        let st = self.st();
        vxlan_of(&st, ns, vxlan)
            .and_then(|(ifindex, _)| st.flood.get(&ifindex).cloned())
            .unwrap_or_default()
    }

    /// Drift: a flood entry added behind the datapath's back (not recorded).
    pub fn add_flood_behind(&self, ns: &Ns, vxlan: &str, dst: IpAddr) {
        let mut st = self.st();
        let (ifindex, _) =
            vxlan_of(&st, ns, vxlan).unwrap_or_else(|| panic!("fake: no vxlan {vxlan} in {ns}"));
        st.flood.entry(ifindex).or_default().push(dst);
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.st().calls.clone()
    }

    /// Only the calls that changed something.
    pub fn mutations(&self) -> Vec<Call> {
        self.st()
            .calls
            .iter()
            .filter(|c| c.is_mutation())
            .cloned()
            .collect()
    }

    /// Forget the recorded calls (state stays).
    /// Links of ours that were up with IPv6 on after some call, in order: each would have sent
    /// the node's own IPv6 frames (DAD, MLD, router solicitations) onto the LAN.
    pub fn spoke_ipv6(&self) -> Vec<(Ns, String)> {
        self.st().spoke_ipv6.clone()
    }

    pub fn clear_calls(&self) {
        self.st().calls.clear();
    }

    /// A copy of a link, without recording a call.
    pub fn peek(&self, ns: &Ns, name: &str) -> Option<Link> {
        let st = self.st();
        links_of(&st, ns)?.iter().find(|l| l.name == name).cloned()
    }

    /// Every link of a namespace, without recording a call.
    pub fn peek_all(&self, ns: &Ns) -> Vec<Link> {
        links_of(&self.st(), ns).cloned().unwrap_or_default()
    }

    /// Names of the LAN namespaces, without recording a call.
    pub fn peek_namespaces(&self) -> Vec<String> {
        self.st().lans.keys().cloned().collect()
    }

    /// Tap device nodes, without recording a call.
    pub fn peek_taps(&self) -> BTreeMap<PathBuf, DevNum> {
        self.st()
            .taps
            .iter()
            .map(|(p, n)| (p.clone(), n.dev))
            .collect()
    }

    /// Drift: change a link behind the datapath's back (not recorded).
    pub fn edit(&self, ns: &Ns, name: &str, f: impl FnOnce(&mut Link)) {
        let mut st = self.st();
        let link = links_of_mut(&mut st, ns)
            .and_then(|v| v.iter_mut().find(|l| l.name == name))
            .unwrap_or_else(|| panic!("fake: no link {name} in {ns}"));
        f(link);
    }

    /// Drift: remove a link behind the datapath's back (not recorded), with kernel side effects.
    pub fn remove(&self, ns: &Ns, name: &str) {
        let mut st = self.st();
        remove_link(&mut st, ns, name);
    }

    /// Drift: move a host link into a namespace the datapath does not know (a pod): it simply
    /// disappears from the host namespace, its veth peer keeps pointing at its ifindex.
    pub fn move_out_of_host(&self, name: &str) {
        self.st().host.retain(|l| l.name != name);
    }

    /// Make the next call whose operation is `op` (e.g. `"create_link"`) on `object` fail.
    pub fn fail_next(&self, op: &str, object: &str) {
        self.fail_next_with(op, object, libc::EIO);
    }

    /// [`fail_next`](Self::fail_next) with the errno the kernel would give.
    pub fn fail_next_with(&self, op: &str, object: &str, errno: i32) {
        self.st().fail = Some((op.to_string(), object.to_string(), errno));
    }

    fn begin(
        &self,
        call: Call,
        op: &'static str,
        object: &str,
        ns: &Ns,
    ) -> Result<MutexGuard<'_, State>, KernelError> {
        let mut st = self.st();
        st.calls.push(call);
        if let Some((_, _, errno)) = st.fail.take_if(|(o, n, _)| o == op && n == object) {
            return Err(KernelError::new(op, object, ns, "injected failure").with_errno(errno));
        }
        Ok(st)
    }

    /// `begin` for a call on the namespace of LAN `lan`; returns that namespace too.
    fn begin_lan(
        &self,
        call: fn(String) -> Call,
        op: &'static str,
        lan: &str,
    ) -> Result<(MutexGuard<'_, State>, Ns), KernelError> {
        let ns = Ns::Lan(lan.into());
        Ok((self.begin(call(lan.into()), op, lan, &ns)?, ns))
    }

    /// `begin` for a call on the tap node (or directory of them) at `path`.
    fn begin_tap_path(
        &self,
        call: impl FnOnce(PathBuf) -> Call,
        op: &'static str,
        path: &Path,
    ) -> Result<MutexGuard<'_, State>, KernelError> {
        self.begin(
            call(path.into()),
            op,
            &path.display().to_string(),
            &Ns::Host,
        )
    }
}

fn plain(name: &str, ifindex: u32, mtu: u32) -> Link {
    Link {
        name: name.into(),
        ifindex,
        mtu,
        up: true,
        alias: None,
        master: None,
        port_group_fwd_mask: None,
        ipv6: Some(true),
        kind: LinkKind::Other {
            kind: "device".into(),
        },
    }
}

fn links_of<'a>(st: &'a State, ns: &Ns) -> Option<&'a Vec<Link>> {
    match ns {
        Ns::Host => Some(&st.host),
        Ns::Lan(n) => st.lans.get(n),
    }
}

fn links_of_mut<'a>(st: &'a mut State, ns: &Ns) -> Option<&'a mut Vec<Link>> {
    match ns {
        Ns::Host => Some(&mut st.host),
        Ns::Lan(n) => st.lans.get_mut(n),
    }
}

fn all_namespaces(st: &State) -> Vec<Ns> {
    std::iter::once(Ns::Host)
        .chain(st.lans.keys().map(|k| Ns::Lan(k.clone())))
        .collect()
}

/// Remove a link and whatever the kernel removes with it.
/// Remove every link of `ns` that `which` selects (and whatever goes with each).
fn remove_links(st: &mut State, ns: &Ns, which: impl Fn(&Link) -> bool) {
    let names: Vec<String> = links_of(st, ns)
        .map(|v| {
            v.iter()
                .filter(|l| which(l))
                .map(|l| l.name.clone())
                .collect()
        })
        .unwrap_or_default();
    for n in names {
        remove_link(st, ns, &n);
    }
}

fn remove_link(st: &mut State, ns: &Ns, name: &str) {
    let Some(links) = links_of_mut(st, ns) else {
        return;
    };
    let Some(pos) = links.iter().position(|l| l.name == name) else {
        return;
    };
    let gone = links.remove(pos);
    st.addresses.remove(&gone.ifindex);
    st.flood.remove(&gone.ifindex);
    let Some(links) = links_of_mut(st, ns) else {
        return;
    };
    for l in links.iter_mut() {
        if l.master == Some(gone.ifindex) {
            l.master = None;
            l.port_group_fwd_mask = None;
        }
    }
    // Macvtaps on it (same namespace).
    let dependents: Vec<String> = links
        .iter()
        .filter(|l| matches!(l.kind, LinkKind::Macvtap { lower_ifindex, .. } if lower_ifindex == gone.ifindex))
        .map(|l| l.name.clone())
        .collect();
    for d in dependents {
        remove_link(st, ns, &d);
    }
    // A veth's peer, wherever it is.
    if let LinkKind::Veth {
        peer_ifindex: Some(peer),
    } = gone.kind
    {
        for other in all_namespaces(st) {
            let hit = links_of(st, &other).and_then(|v| {
                v.iter()
                    .find(|l| l.ifindex == peer && matches!(l.kind, LinkKind::Veth { peer_ifindex: Some(p) } if p == gone.ifindex))
                    .map(|l| l.name.clone())
            });
            if let Some(n) = hit {
                remove_link(st, &other, &n);
                break;
            }
        }
    }
}

/// What the kernel refuses of a new vxlan: a missing underlay, a VNI already in use.
fn vxlan_allowed(st: &State, name: &str, params: &VxlanParams) -> Result<(), KernelError> {
    if !st.host.iter().any(|l| l.ifindex == params.underlay_ifindex) {
        return Err(
            KernelError::new("create vxlan", name, &Ns::Host, "no underlay")
                .with_errno(libc::ENODEV),
        );
    }
    if vni_in_use(st, params) {
        return Err(KernelError::new(
            "create vxlan",
            name,
            &Ns::Host,
            "A VXLAN device with the specified VNI already exists",
        )
        .with_errno(libc::EEXIST));
    }
    Ok(())
}

/// As the kernel: one VXLAN per VNI, UDP port and family on a node, and per underlay when its
/// group or local address is link-local.
fn vni_in_use(st: &State, want: &VxlanParams) -> bool {
    st.lans.values().flatten().any(|l| {
        matches!(&l.kind, LinkKind::Vxlan(p) if p.vni == want.vni
            && p.port == want.port
            && p.is_ipv6() == want.is_ipv6()
            && (!link_local(want) || p.underlay_ifindex == want.underlay_ifindex))
    })
}

/// Whether the VXLAN's group or local address is IPv6 link-local (ff02::/16 or fe80::/10).
fn link_local(p: &VxlanParams) -> bool {
    [p.group, p.local].into_iter().flatten().any(|a| match a {
        IpAddr::V6(a) => a.is_unicast_link_local() || a.segments()[0] & 0xff0f == 0xff02,
        IpAddr::V4(_) => false,
    })
}

/// Ifindex and parameters of the VXLAN `name` of `ns`.
fn vxlan_of(st: &State, ns: &Ns, name: &str) -> Option<(u32, VxlanParams)> {
    links_of(st, ns)?
        .iter()
        .find(|l| l.name == name)
        .and_then(|l| match &l.kind {
            LinkKind::Vxlan(p) => Some((l.ifindex, *p)),
            _ => None,
        })
}

/// The VXLAN a flood entry call is about, as the kernel checks it: the link exists and is a
/// VXLAN, and `dst` is of its family.
fn flood_target(
    st: &State,
    op: &'static str,
    ns: &Ns,
    vxlan: &str,
    dst: IpAddr,
) -> Result<u32, KernelError> {
    let (ifindex, params) = vxlan_of(st, ns, vxlan)
        .ok_or_else(|| KernelError::new(op, vxlan, ns, "no such vxlan").with_errno(libc::ENODEV))?;
    if dst.is_ipv6() != params.is_ipv6() {
        return Err(
            KernelError::new(op, vxlan, ns, "Address family not supported by protocol")
                .with_errno(libc::EAFNOSUPPORT),
        );
    }
    Ok(ifindex)
}

fn add(
    st: &mut State,
    ns: &Ns,
    name: &str,
    mtu: u32,
    alias: &str,
    kind: LinkKind,
) -> Result<u32, KernelError> {
    let idx = st.next_ifindex;
    let links = links_of_mut(st, ns).ok_or_else(|| {
        KernelError::new("create", name, ns, "no such namespace").with_errno(libc::ENOENT)
    })?;
    if links.iter().any(|l| l.name == name) {
        return Err(KernelError::new("create", name, ns, "File exists").with_errno(libc::EEXIST));
    }
    links.push(Link {
        name: name.into(),
        ifindex: idx,
        mtu,
        up: false,
        alias: Some(alias.into()),
        master: None,
        port_group_fwd_mask: None,
        // As on the real kernel: host-namespace links get IPv6; LAN namespaces have it off by
        // default.
        ipv6: Some(*ns == Ns::Host),
        kind,
    });
    st.next_ifindex += 1;
    Ok(idx)
}

impl Kernel for RecordingKernel {
    fn lan_namespaces(&self) -> Result<Vec<String>, KernelError> {
        let st = self.begin(Call::LanNamespaces, "lan_namespaces", "", &Ns::Host)?;
        Ok(st.lans.keys().cloned().collect())
    }

    fn lan_namespace_exists(&self, lan: &str) -> Result<bool, KernelError> {
        let st = self.begin(
            Call::LanNamespaceExists(lan.into()),
            "lan_namespace_exists",
            lan,
            &Ns::Host,
        )?;
        Ok(st.lans.contains_key(lan))
    }

    fn create_lan_namespace(&self, lan: &str) -> Result<(), KernelError> {
        let (mut st, ns) = self.begin_lan(Call::CreateLanNamespace, "create_lan_namespace", lan)?;
        if st.lans.contains_key(lan) {
            return Err(KernelError::new("create", lan, &ns, "exists").with_errno(libc::EEXIST));
        }
        st.lans.insert(lan.into(), vec![plain("lo", 1, 65536)]);
        Ok(())
    }

    fn delete_lan_namespace(&self, lan: &str) -> Result<(), KernelError> {
        let (mut st, ns) = self.begin_lan(Call::DeleteLanNamespace, "delete_lan_namespace", lan)?;
        remove_links(&mut st, &ns, |_| true);
        st.lans.remove(lan);
        Ok(())
    }

    fn link(&self, ns: &Ns, name: &str) -> Result<Option<Link>, KernelError> {
        let st = self.begin(Call::Link(ns.clone(), name.into()), "link", name, ns)?;
        let links = links_of(&st, ns).ok_or_else(|| {
            KernelError::new("look up", name, ns, "no such namespace").with_errno(libc::ENOENT)
        })?;
        Ok(links.iter().find(|l| l.name == name).cloned())
    }

    fn links(&self, ns: &Ns) -> Result<Vec<Link>, KernelError> {
        let st = self.begin(Call::Links(ns.clone()), "links", "", ns)?;
        links_of(&st, ns).cloned().ok_or_else(|| {
            KernelError::new("list", "links", ns, "no such namespace").with_errno(libc::ENOENT)
        })
    }

    fn create_link(&self, link: &NewLink) -> Result<(), KernelError> {
        let (ns, name) = link.target();
        let mut st = self.begin(Call::CreateLink(link.clone()), "create_link", name, &ns)?;
        match link {
            NewLink::Bridge {
                lan,
                name,
                mtu,
                alias,
                params,
            } => {
                let kind = LinkKind::Bridge(*params);
                add(&mut st, &Ns::Lan(lan.clone()), name, *mtu, alias, kind)?;
            }
            NewLink::Vxlan {
                lan,
                name,
                mtu,
                alias,
                params,
            } => {
                vxlan_allowed(&st, name, params)?;
                let kind = LinkKind::Vxlan(*params);
                let idx = add(&mut st, &Ns::Lan(lan.clone()), name, *mtu, alias, kind)?;
                // As the kernel: a group becomes the default (all-zero) forwarding entry.
                if let Some(group) = params.group {
                    st.flood.insert(idx, vec![group]);
                }
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
                if !st.lans.contains_key(lan) {
                    return Err(KernelError::new(
                        "create veth pair",
                        host_name,
                        &lan_ns,
                        "no such namespace",
                    )
                    .with_errno(libc::ENOENT));
                }
                let h = add(
                    &mut st,
                    &Ns::Host,
                    host_name,
                    *mtu,
                    host_alias,
                    LinkKind::Veth { peer_ifindex: None },
                )?;
                let p = match add(
                    &mut st,
                    &lan_ns,
                    port_name,
                    *mtu,
                    port_alias,
                    LinkKind::Veth {
                        peer_ifindex: Some(h),
                    },
                ) {
                    Ok(p) => p,
                    Err(e) => {
                        st.host.retain(|l| l.ifindex != h);
                        return Err(e);
                    }
                };
                if let Some(l) = st.host.iter_mut().find(|l| l.ifindex == h) {
                    l.kind = LinkKind::Veth {
                        peer_ifindex: Some(p),
                    };
                }
            }
            NewLink::Macvtap {
                name,
                lower,
                mode,
                mtu,
                alias,
            } => {
                let lower_ifindex = st
                    .host
                    .iter()
                    .find(|l| &l.name == lower)
                    .map(|l| l.ifindex)
                    .ok_or_else(|| {
                        KernelError::new(
                            "create macvtap on",
                            lower.as_str(),
                            &Ns::Host,
                            "no such link",
                        )
                        .with_errno(libc::ENODEV)
                    })?;
                add(
                    &mut st,
                    &Ns::Host,
                    name,
                    *mtu,
                    alias,
                    LinkKind::Macvtap {
                        lower_ifindex,
                        mode: *mode,
                    },
                )?;
            }
        }
        Ok(())
    }

    fn change_link(&self, ns: &Ns, name: &str, change: &LinkChange) -> Result<(), KernelError> {
        let mut st = self.begin(
            Call::ChangeLink(ns.clone(), name.into(), change.clone()),
            "change_link",
            name,
            ns,
        )?;
        let links = links_of_mut(&mut st, ns).ok_or_else(|| {
            KernelError::new("change", name, ns, "no such namespace").with_errno(libc::ENOENT)
        })?;
        let master = match &change.master {
            Some(m) => Some(
                links
                    .iter()
                    .find(|l| &l.name == m && matches!(l.kind, LinkKind::Bridge(_)))
                    .map(|l| l.ifindex)
                    .ok_or_else(|| {
                        KernelError::new("enslave to", m.as_str(), ns, "no such bridge")
                            .with_errno(libc::ENODEV)
                    })?,
            ),
            None => None,
        };
        let link = links.iter_mut().find(|l| l.name == name).ok_or_else(|| {
            KernelError::new("change", name, ns, "no such link").with_errno(libc::ENODEV)
        })?;
        if let Some(m) = master {
            link.master = Some(m);
            link.port_group_fwd_mask = Some(0);
        }
        if let Some(mtu) = change.mtu {
            link.mtu = mtu;
        }
        if let Some(a) = &change.alias {
            link.alias = Some(a.clone());
        }
        if let Some(on) = change.ipv6 {
            link.ipv6 = Some(on);
        }
        if let Some(up) = change.up {
            link.up = up;
        }
        let speaks = link.up && link.ipv6 == Some(true) && link.alias.is_some();
        let who = (ns.clone(), link.name.clone());
        if let Some(mask) = change.port_group_fwd_mask {
            if link.master.is_none() {
                return Err(KernelError::new(
                    "set group_fwd_mask of bridge port",
                    name,
                    ns,
                    "not a bridge port",
                )
                .with_errno(libc::EOPNOTSUPP));
            }
            link.port_group_fwd_mask = Some(mask);
        }
        if speaks && !st.spoke_ipv6.contains(&who) {
            st.spoke_ipv6.push(who);
        }
        Ok(())
    }

    fn delete_link(&self, ns: &Ns, name: &str) -> Result<(), KernelError> {
        let mut st = self.begin(
            Call::DeleteLink(ns.clone(), name.into()),
            "delete_link",
            name,
            ns,
        )?;
        remove_link(&mut st, ns, name);
        Ok(())
    }

    fn delete_lan_links(&self, lan: &str) -> Result<(), KernelError> {
        let (mut st, ns) = self.begin_lan(Call::DeleteLanLinks, "delete_lan_links", lan)?;
        remove_links(&mut st, &ns, |l| l.name != "lo");
        Ok(())
    }

    fn addresses(&self, ns: &Ns, ifindex: u32) -> Result<Vec<IfAddress>, KernelError> {
        let call = Call::Addresses(ns.clone(), ifindex);
        let st = self.begin(call, "addresses", &ifindex.to_string(), ns)?;
        let exists = links_of(&st, ns).is_some_and(|v| v.iter().any(|l| l.ifindex == ifindex));
        Ok(match exists {
            true => st.addresses.get(&ifindex).cloned().unwrap_or_default(),
            false => Vec::new(),
        })
    }

    fn flood_entries(&self, ns: &Ns, vxlan: &str) -> Result<Vec<IpAddr>, KernelError> {
        let call = Call::FloodEntries(ns.clone(), vxlan.into());
        let st = self.begin(call, "flood_entries", vxlan, ns)?;
        let (ifindex, _) = vxlan_of(&st, ns, vxlan).ok_or_else(|| {
            KernelError::new("list the flood entries of", vxlan, ns, "no such vxlan")
                .with_errno(libc::ENODEV)
        })?;
        Ok(st.flood.get(&ifindex).cloned().unwrap_or_default())
    }

    fn add_flood_entry(&self, ns: &Ns, vxlan: &str, dst: IpAddr) -> Result<(), KernelError> {
        let call = Call::AddFloodEntry(ns.clone(), vxlan.into(), dst);
        let mut st = self.begin(call, "add_flood_entry", vxlan, ns)?;
        let ifindex = flood_target(&st, "add a flood entry to", ns, vxlan, dst)?;
        let entries = st.flood.entry(ifindex).or_default();
        if !entries.contains(&dst) {
            entries.push(dst);
        }
        Ok(())
    }

    fn remove_flood_entry(&self, ns: &Ns, vxlan: &str, dst: IpAddr) -> Result<(), KernelError> {
        let call = Call::RemoveFloodEntry(ns.clone(), vxlan.into(), dst);
        let mut st = self.begin(call, "remove_flood_entry", vxlan, ns)?;
        let ifindex = flood_target(&st, "remove a flood entry from", ns, vxlan, dst)?;
        if let Some(entries) = st.flood.get_mut(&ifindex) {
            entries.retain(|d| *d != dst);
        }
        Ok(())
    }

    fn macvtap_devnum(&self, macvtap: &str) -> Result<DevNum, KernelError> {
        let st = self.begin(
            Call::MacvtapDevnum(macvtap.into()),
            "macvtap_devnum",
            macvtap,
            &Ns::Host,
        )?;
        st.host
            .iter()
            .find(|l| l.name == macvtap && matches!(l.kind, LinkKind::Macvtap { .. }))
            .map(|l| DevNum {
                major: FAKE_TAP_MAJOR,
                minor: l.ifindex,
            })
            .ok_or_else(|| {
                KernelError::new(
                    "read the tap device number of",
                    macvtap,
                    &Ns::Host,
                    "no such macvtap",
                )
            })
    }

    fn tap_node(&self, path: &Path) -> Result<Option<TapNode>, KernelError> {
        let st = self.begin_tap_path(Call::TapNode, "tap_node", path)?;
        Ok(st.taps.get(path).copied())
    }

    fn make_tap_node(&self, path: &Path, node: TapNode) -> Result<(), KernelError> {
        let make = |p| Call::MakeTapNode(p, node.dev);
        let mut st = self.begin_tap_path(make, "make_tap_node", path)?;
        st.taps.insert(path.into(), node);
        Ok(())
    }

    fn remove_tap_node(&self, path: &Path) -> Result<(), KernelError> {
        let mut st = self.begin_tap_path(Call::RemoveTapNode, "remove_tap_node", path)?;
        st.taps.remove(path);
        Ok(())
    }

    fn tap_nodes(&self, dir: &Path) -> Result<Vec<PathBuf>, KernelError> {
        let st = self.begin_tap_path(Call::TapNodes, "tap_nodes", dir)?;
        Ok(st
            .taps
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }
}
