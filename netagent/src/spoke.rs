//! Spoke up and down: the veth pair of a spoke and, for a VM, its macvtap and tap device node.

use std::path::PathBuf;

use k8slan_api::naming::{
    SpokeKind, bridge_port_name, container_tap_path, host_veth_name, link_alias, macvtap_name,
};
use k8slan_api::{LanSpec, validate};
use serde::Serialize;
use tracing::{debug, instrument};

use crate::datapath::{Datapath, DatapathError, Owner, Want, is_ours, kerr, role};
use crate::kernel::{Kernel, KernelError, Link, LinkKind, NewLink, Ns, TapNode};
use crate::lan::{LanState, held_elsewhere};

/// What a prepared spoke gives its member. The CNI plugin moves `host_ifname` (veth) or
/// `mac.macvtap` (VM) into the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpokeAttachment {
    pub lan: String,
    pub spoke: String,
    pub kind: String,
    /// Host-namespace end of the spoke's veth (named exactly as the spoke).
    pub host_ifname: String,
    pub host_ifindex: u32,
    /// MTU of every link of the LAN; the pod interface should get it too.
    pub mtu: u32,
    /// For a VM spoke: the macvtap and its tap device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAttachment>,
    /// What this call changed (empty when the spoke was already right).
    pub changes: Vec<String>,
}

/// The macvtap of a VM spoke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MacAttachment {
    pub macvtap: String,
    pub macvtap_ifindex: u32,
    /// Tap device node on the node (`<dev-dir>/tap-<spoke>`), to hand to the kubelet.
    pub tap_host_path: PathBuf,
    /// Where the container sees it: `/dev/tap<macvtap ifindex>`.
    pub tap_container_path: String,
    /// `MAJOR:MINOR` of the tap character device.
    pub devnum: String,
}

fn paired(host: &Link, port: &Link) -> bool {
    matches!(host.kind, LinkKind::Veth { peer_ifindex: Some(p) } if p == port.ifindex)
        && matches!(port.kind, LinkKind::Veth { peer_ifindex: Some(p) } if p == host.ifindex)
}

/// The names and aliases of one spoke's links.
struct SpokeLinks {
    host: String,
    port: String,
    mvt: String,
    host_alias: String,
    port_alias: String,
    mvt_alias: String,
}

impl SpokeLinks {
    fn new(lan: &str, spoke: &str) -> Result<Self, DatapathError> {
        let mvt = macvtap_name(spoke);
        validate::interface_name("macvtap", &mvt)?;
        Ok(Self {
            host: host_veth_name(spoke).into(),
            port: bridge_port_name(spoke).into(),
            mvt,
            host_alias: link_alias(lan, &role::host(spoke)),
            port_alias: link_alias(lan, &role::port(spoke)),
            mvt_alias: link_alias(lan, &role::macvtap(spoke)),
        })
    }
}

/// One `spoke up` in progress: the spoke, the LAN state it joins and what changed so far.
struct SpokeUp<'a, K> {
    dp: &'a Datapath<K>,
    spec: &'a LanSpec,
    spoke: &'a str,
    kind: SpokeKind,
    lan_ns: Ns,
    names: SpokeLinks,
    state: LanState,
    changes: Vec<String>,
}

impl<K: Kernel> Datapath<K> {
    /// Prepare a spoke's host side exactly as `Allocate` needs it: the LAN (see
    /// [`Datapath::lan_up`]), a veth pair whose bridge end is a port of the LAN bridge and whose
    /// host end waits in the host namespace, and for [`SpokeKind::Mac`] a macvtap on the host end
    /// with its tap device node in the device directory. Leftovers of an earlier allocation (host
    /// end missing or moved away, wrong macvtap) are replaced; correct state is left untouched.
    /// A link with the name of the spoke's host end or macvtap (host namespace) or bridge port
    /// (LAN namespace) that is not exactly this spoke's (by its alias) is an error
    /// ([`DatapathError::ForeignLink`]) and is never touched.
    #[instrument(skip_all, fields(lan = %spec.ns, node = %node, spoke = %spoke, kind = %kind))]
    pub fn spoke_up(
        &self,
        spec: &LanSpec,
        node: &str,
        spoke: &str,
        kind: SpokeKind,
    ) -> Result<SpokeAttachment, DatapathError> {
        validate::spoke_name("spoke", spoke)?;
        let lan = spec.ns.as_str();
        if !spec.spokes.iter().any(|s| s == spoke) {
            return Err(DatapathError::UnknownSpoke {
                lan: lan.into(),
                spoke: spoke.into(),
            });
        }
        let names = SpokeLinks::new(lan, spoke)?;
        let _guard = self.serialise();
        let state = self.lan_core(spec, node)?;
        let up = SpokeUp {
            dp: self,
            spec,
            spoke,
            kind,
            lan_ns: Ns::Lan(lan.into()),
            names,
            changes: state.changes.clone(),
            state,
        };
        up.run()
    }

    /// Remove one spoke: its tap device node, its macvtap and host end and its bridge port, each
    /// only if it is this spoke's (by its alias). Other spokes and the LAN stay. Absent parts
    /// are fine.
    #[instrument(skip_all, fields(lan = %spec.ns, spoke = %spoke))]
    pub fn spoke_down(&self, spec: &LanSpec, spoke: &str) -> Result<Vec<String>, DatapathError> {
        validate::validate_spec(spec)?;
        validate::spoke_name("spoke", spoke)?;
        let _guard = self.serialise();
        let lan = spec.ns.as_str();
        let names = SpokeLinks::new(lan, spoke)?;
        let mut removed = Vec::new();
        // Another LAN's spoke of this name would have its host end or macvtap under these names.
        let mut host = Vec::new();
        for name in [&names.mvt, &names.host] {
            host.extend(
                self.kernel
                    .link(&Ns::Host, name)
                    .map_err(|e| kerr(lan, e))?,
            );
        }
        if !held_elsewhere(&host, lan, spoke) {
            self.remove_tap_node(lan, spoke, &mut removed)?;
        }
        for (name, alias) in [
            (&names.mvt, &names.mvt_alias),
            (&names.host, &names.host_alias),
        ] {
            if host.iter().any(|l| &l.name == name && is_ours(l, alias)) {
                self.kernel
                    .delete_link(&Ns::Host, name)
                    .map_err(|e| kerr(lan, e))?;
                removed.push(format!("host:{name}"));
            }
        }
        if self
            .kernel
            .lan_namespace_exists(lan)
            .map_err(|e| kerr(lan, e))?
        {
            let lan_ns = Ns::Lan(lan.into());
            let port = self
                .kernel
                .link(&lan_ns, &names.port)
                .map_err(|e| kerr(lan, e))?;
            if port.is_some_and(|p| is_spoke_port(&p, &names.port_alias)) {
                self.kernel
                    .delete_link(&lan_ns, &names.port)
                    .map_err(|e| kerr(lan, e))?;
                removed.push(format!("{lan}:{}", names.port));
            }
        }
        Ok(removed)
    }
}

/// Whether a LAN-namespace link may be handled as this spoke's bridge port: it carries exactly
/// the port alias, or it is a veth without any alias (a leftover pair end in k8slan's own
/// namespace). The LAN's bridge or VXLAN, or another spoke's port, never is.
fn is_spoke_port(l: &Link, alias: &str) -> bool {
    is_ours(l, alias) || (l.alias.is_none() && matches!(l.kind, LinkKind::Veth { .. }))
}

impl<K: Kernel> SpokeUp<'_, K> {
    fn lan(&self) -> &str {
        &self.spec.ns
    }

    fn k<T>(&self, r: Result<T, KernelError>) -> Result<T, DatapathError> {
        r.map_err(|e| kerr(self.lan(), e))
    }

    fn foreign(&self, what: &'static str, ns: &Ns, l: &Link) -> DatapathError {
        DatapathError::ForeignLink {
            lan: self.lan().into(),
            spoke: self.spoke.into(),
            what,
            link: l.name.clone(),
            ns: ns.clone(),
            owner: Box::new(Owner::of(l)),
        }
    }

    /// The host link `name` if it is ours (`alias`), `None` if absent; a foreign one is an error.
    fn host_link(
        &self,
        what: &'static str,
        name: &str,
        alias: &str,
    ) -> Result<Option<Link>, DatapathError> {
        match self.k(self.dp.kernel.link(&Ns::Host, name))? {
            Some(l) if !is_ours(&l, alias) => Err(self.foreign(what, &Ns::Host, &l)),
            other => Ok(other),
        }
    }

    /// The bridge port if it is this spoke's (see [`is_spoke_port`]), `None` if absent.
    fn port_link(&self) -> Result<Option<Link>, DatapathError> {
        match self.k(self.dp.kernel.link(&self.lan_ns, &self.names.port))? {
            Some(l) if !is_spoke_port(&l, &self.names.port_alias) => {
                Err(self.foreign("bridge port", &self.lan_ns, &l))
            }
            other => Ok(other),
        }
    }

    fn run(mut self) -> Result<SpokeAttachment, DatapathError> {
        // Check every name before changing anything.
        let host = self.host_link("host end", &self.names.host, &self.names.host_alias)?;
        let mvt = self.host_link("macvtap", &self.names.mvt, &self.names.mvt_alias)?;
        let port = self.port_link()?;
        let (host, port, created) = match (host, port) {
            (Some(h), Some(p)) if paired(&h, &p) => (h, p, false),
            (host, port) => {
                self.clear_leftovers(host.is_some(), port.is_some(), mvt.is_some())?;
                let (h, p) = self.make_pair()?;
                (h, p, true)
            }
        };
        match self.finish(&host, &port, mvt.is_some()) {
            Ok(mac) => {
                debug!(changes = ?self.changes, "spoke up");
                Ok(SpokeAttachment {
                    lan: self.lan().into(),
                    spoke: self.spoke.into(),
                    kind: self.kind.as_str().into(),
                    host_ifname: host.name,
                    host_ifindex: host.ifindex,
                    mtu: self.state.mtu,
                    mac,
                    changes: self.changes,
                })
            }
            Err(e) => {
                if created {
                    // Roll back what this call created (the macvtap dies with its lower).
                    let _ = self.dp.kernel.delete_link(&Ns::Host, &self.names.host);
                }
                Err(e)
            }
        }
    }

    /// Remove the parts of a broken pair (all checked to be this spoke's), macvtap first.
    fn clear_leftovers(&mut self, host: bool, port: bool, mvt: bool) -> Result<(), DatapathError> {
        let n = &self.names;
        let steps = [
            (mvt, Ns::Host, n.mvt.clone(), "stale macvtap"),
            (host, Ns::Host, n.host.clone(), "stale host end"),
            (
                port,
                self.lan_ns.clone(),
                n.port.clone(),
                "stale bridge port",
            ),
        ];
        for (present, ns, name, what) in steps {
            // A port dies with its host end: look again before deleting it.
            if present && self.k(self.dp.kernel.link(&ns, &name))?.is_some() {
                self.k(self.dp.kernel.delete_link(&ns, &name))?;
                self.changes.push(format!("remove {what} {name}"));
            }
        }
        Ok(())
    }

    /// Create a fresh veth pair and return (host end, port).
    fn make_pair(&mut self) -> Result<(Link, Link), DatapathError> {
        let n = &self.names;
        let new = NewLink::VethPair {
            lan: self.lan().into(),
            host_name: n.host.clone(),
            host_alias: n.host_alias.clone(),
            port_name: n.port.clone(),
            port_alias: n.port_alias.clone(),
            mtu: self.state.mtu,
        };
        self.k(self.dp.kernel.create_link(&new))?;
        self.changes.push(format!("create veth pair {}", n.host));
        let h = self.k(self.dp.kernel.link(&Ns::Host, &n.host));
        let p = self.k(self.dp.kernel.link(&self.lan_ns, &n.port));
        match (h, p) {
            (Ok(Some(h)), Ok(Some(p))) => Ok((h, p)),
            (h, p) => {
                let _ = self.dp.kernel.delete_link(&Ns::Host, &n.host);
                h?;
                p?;
                Err(DatapathError::Inconsistent {
                    lan: self.lan().into(),
                    what: format!("veth pair of spoke {} vanished after creation", self.spoke),
                })
            }
        }
    }

    /// Converge the pair, then make the spoke a veth or a mac spoke.
    fn finish(
        &mut self,
        host: &Link,
        port: &Link,
        had_mvt: bool,
    ) -> Result<Option<MacAttachment>, DatapathError> {
        let (mtu, bridge) = (self.state.mtu, self.state.bridge_ifindex);
        let port_want = Want {
            mtu,
            alias: &self.names.port_alias,
            master: Some((&self.spec.bridge, bridge)),
        };
        if self
            .dp
            .converge(self.lan(), &self.lan_ns, port, &port_want)?
        {
            self.changes
                .push(format!("converge bridge port {}", port.name));
        }
        let host_want = Want {
            mtu,
            alias: &self.names.host_alias,
            master: None,
        };
        if self.dp.converge(self.lan(), &Ns::Host, host, &host_want)? {
            self.changes
                .push(format!("converge host end {}", host.name));
        }
        // A macvtap whose lower was replaced disappeared with it: look again (and check again).
        let mvt = match had_mvt {
            true => self.host_link("macvtap", &self.names.mvt, &self.names.mvt_alias)?,
            false => None,
        };
        match self.kind {
            SpokeKind::Veth => self.drop_mac(mvt).map(|()| None),
            SpokeKind::Mac => self.macvtap(host, mvt).map(Some),
        }
    }

    /// A veth spoke has no macvtap and no tap node.
    fn drop_mac(&mut self, mvt: Option<Link>) -> Result<(), DatapathError> {
        if mvt.is_some() {
            self.k(self.dp.kernel.delete_link(&Ns::Host, &self.names.mvt))?;
            let m = &self.names.mvt;
            self.changes
                .push(format!("remove macvtap {m} (spoke used as veth)"));
        }
        let mut removed = Vec::new();
        self.dp
            .remove_tap_node(self.lan(), self.spoke, &mut removed)?;
        self.changes
            .extend(removed.into_iter().map(|p| format!("remove tap node {p}")));
        Ok(())
    }

    /// The macvtap on the host end with the spec's mode, and its tap node.
    fn macvtap(&mut self, host: &Link, mvt: Option<Link>) -> Result<MacAttachment, DatapathError> {
        let mode = self.spec.macvtap_mode;
        let right = |l: &Link| {
            matches!(l.kind, LinkKind::Macvtap { lower_ifindex, mode: m }
                if lower_ifindex == host.ifindex && m == mode)
        };
        let mvt = match mvt {
            Some(l) if right(&l) => l,
            other => self.make_macvtap(host, other.is_some())?,
        };
        let want = Want {
            mtu: self.state.mtu,
            alias: &self.names.mvt_alias,
            master: None,
        };
        if self.dp.converge(self.lan(), &Ns::Host, &mvt, &want)? {
            self.changes
                .push(format!("converge macvtap {}", self.names.mvt));
        }
        let dev = self.k(self.dp.kernel.macvtap_devnum(&self.names.mvt))?;
        let tap_path = self.dp.tap_node_path(self.spoke);
        let node = TapNode {
            dev,
            owner: self.dp.tap_owner,
        };
        if self.k(self.dp.kernel.tap_node(&tap_path))? != Some(node) {
            self.k(self.dp.kernel.make_tap_node(&tap_path, node))?;
            let (p, owner) = (tap_path.display(), node.owner);
            self.changes
                .push(format!("create tap node {p} ({dev}, owner {owner})"));
        }
        Ok(MacAttachment {
            macvtap: self.names.mvt.clone(),
            macvtap_ifindex: mvt.ifindex,
            tap_host_path: tap_path,
            tap_container_path: container_tap_path(mvt.ifindex),
            devnum: dev.to_string(),
        })
    }

    /// Create the macvtap (replacing a wrong one of ours) and return it.
    fn make_macvtap(&mut self, host: &Link, replace: bool) -> Result<Link, DatapathError> {
        let name = self.names.mvt.clone();
        if replace {
            self.k(self.dp.kernel.delete_link(&Ns::Host, &name))?;
            self.changes.push(format!("replace macvtap {name}"));
        } else {
            self.changes.push(format!("create macvtap {name}"));
        }
        let new = NewLink::Macvtap {
            name: name.clone(),
            lower: host.name.clone(),
            mode: self.spec.macvtap_mode,
            mtu: self.state.mtu,
            alias: self.names.mvt_alias.clone(),
        };
        self.k(self.dp.kernel.create_link(&new))?;
        self.k(self.dp.kernel.link(&Ns::Host, &name))?
            .ok_or_else(|| DatapathError::Inconsistent {
                lan: self.lan().into(),
                what: format!("macvtap {name} vanished after creation"),
            })
    }
}
