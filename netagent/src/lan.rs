//! LAN up and down: the LAN namespace, its bridge and its VXLAN.

use std::net::IpAddr;

use k8slan_api::naming::link_alias;
use k8slan_api::report::UnderlayAddresses;
use k8slan_api::{LanSpec, VxlanFamily, VxlanMode, mtu, validate};
use serde::Serialize;
use tracing::{debug, instrument};

use crate::datapath::{
    BRIDGE_GROUP_FWD_MASK, Datapath, DatapathError, Owner, Want, is_ours, kerr, parse_alias, role,
};
use crate::kernel::{BridgeParams, Kernel, Link, LinkKind, NewLink, Ns, VxlanParams};

/// The LAN as the node has it after `lan_up`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LanState {
    pub ns: String,
    pub underlay: String,
    pub underlay_ifindex: u32,
    /// The node's address on the underlay the VXLAN sends from (unicast mode; `None` in
    /// multicast mode, where the kernel picks it per packet).
    pub underlay_address: Option<IpAddr>,
    /// MTU of every link of the LAN.
    pub mtu: u32,
    pub bridge_ifindex: u32,
    pub vxlan_ifindex: u32,
    /// What this call changed, in order (empty when the LAN was already right).
    pub changes: Vec<String>,
}

/// Ifindex of `lo` in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// What names the uplink as the underlay, in messages.
const UPLINK_FIELD: &str = "the node's uplink (the LAN names no underlay device)";

/// The field that names `node`'s underlay, and the device it names; the node's uplink when the
/// LAN names no device at all (neither `vxlanDevMap` nor `defaultVxlanDev`).
fn underlay_field<'a>(
    spec: &'a LanSpec,
    node: &str,
    uplink: Option<&'a str>,
) -> Option<(String, &'a str)> {
    if spec.uses_uplink() {
        return uplink.map(|dev| (UPLINK_FIELD.to_string(), dev));
    }
    match spec.vxlan_dev_map.get(node) {
        Some(dev) => Some((format!("spec.vxlanDevMap[{node}]"), dev)),
        None => spec
            .default_vxlan_dev
            .as_deref()
            .map(|dev| ("spec.defaultVxlanDev".to_string(), dev)),
    }
}

/// The bridge options k8slan wants.
pub fn bridge_params() -> BridgeParams {
    BridgeParams {
        vlan_filtering: false,
        mcast_snooping: false,
        group_fwd_mask: BRIDGE_GROUP_FWD_MASK,
    }
}

impl<K: Kernel> Datapath<K> {
    /// Bring the LAN up on `node`: namespace, bridge and VXLAN exist with the spec's parameters,
    /// the right MTU, our aliases, up; and the MTU of every existing spoke port matches.
    /// Idempotent: on correct state nothing is changed. On failure, a namespace this call created
    /// is removed again.
    ///
    /// A bridge or VXLAN renamed in the spec is replaced live: the new one is made, the spoke
    /// ports (and the VXLAN) move onto the new bridge, and the LAN's old bridge and VXLAN (found
    /// by their alias) are removed. The namespace and the spokes' veths stay, so members keep
    /// their links.
    #[instrument(skip_all, fields(lan = %spec.ns, node = %node))]
    pub fn lan_up(&self, spec: &LanSpec, node: &str) -> Result<LanState, DatapathError> {
        let _guard = self.serialise();
        let mut state = self.lan_core(spec, node)?;
        // Existing spoke ports (also those whose host end is in a pod) get the LAN MTU, stay
        // ports of the bridge with the group forward mask, and stay up; they are never recreated
        // here, so members keep their links. Leftovers of a rename (an old bridge or VXLAN that
        // an interrupted call left) go too.
        let ns = Ns::Lan(spec.ns.clone());
        let links = self.kernel.links(&ns).map_err(|e| kerr(&spec.ns, e))?;
        self.adopt_ports(spec, &links, &mut state)?;
        let mut changes = std::mem::take(&mut state.changes);
        self.retire(&spec.ns, &links, role::BRIDGE, &spec.bridge, &mut changes)?;
        self.retire(&spec.ns, &links, role::VXLAN, &spec.vxlan, &mut changes)?;
        state.changes = changes;
        debug!(changes = ?state.changes, "LAN up");
        Ok(state)
    }

    /// Validate, then converge namespace, bridge and VXLAN (not the spokes, unless the bridge
    /// is new: then every port moves onto it).
    pub(crate) fn lan_core(&self, spec: &LanSpec, node: &str) -> Result<LanState, DatapathError> {
        validate::validate_spec(spec)?;
        validate::node_name("node", node)?;
        let lan = spec.ns.as_str();
        let under = self.underlay(spec, node)?;
        let mtu =
            mtu::lan_mtu(under.mtu, spec.vxlan_family).map_err(|source| DatapathError::Mtu {
                lan: lan.into(),
                dev: under.name.clone(),
                source,
            })?;
        let (group, local) = self.vxlan_addresses(spec, node, &under)?;
        let mut state = LanState {
            ns: lan.into(),
            underlay: under.name.clone(),
            underlay_ifindex: under.ifindex,
            underlay_address: local,
            mtu,
            bridge_ifindex: 0,
            vxlan_ifindex: 0,
            changes: Vec::new(),
        };
        let created_ns = self.ensure_namespace(lan, &mut state.changes)?;
        let vxlan = VxlanParams {
            vni: spec.vni,
            group,
            local,
            port: spec.vxlan_port,
            underlay_ifindex: under.ifindex,
            learning: true,
        };
        match self.lan_links(spec, vxlan, &mut state) {
            Ok(()) => Ok(state),
            Err(e) => {
                if created_ns {
                    // Roll back: nothing half-created survives a failed first `up`. The links
                    // go first and at once (a namespace's own devices die asynchronously after
                    // it), so that a retry does not meet this VXLAN's VNI still taken.
                    let _ = self.kernel.delete_lan_links(lan);
                    let _ = self.kernel.delete_lan_namespace(lan);
                }
                Err(e)
            }
        }
    }

    /// The address `node` uses on the LAN's underlay for the LAN's family (`spec.vxlanFamily`):
    /// for IPv6 the first global or unique-local one, else the link-local one; for IPv4 the
    /// first. `None` when the underlay has no address of the family.
    #[instrument(skip_all, fields(lan = %spec.ns, node = %node))]
    pub fn underlay_address(
        &self,
        spec: &LanSpec,
        node: &str,
    ) -> Result<Option<IpAddr>, DatapathError> {
        validate::validate_spec(spec)?;
        validate::node_name("node", node)?;
        let _guard = self.serialise();
        let under = self.underlay(spec, node)?;
        self.address_on(&spec.ns, &under, spec.vxlan_family)
    }

    fn address_on(
        &self,
        lan: &str,
        under: &Link,
        family: VxlanFamily,
    ) -> Result<Option<IpAddr>, DatapathError> {
        let addrs = self
            .kernel
            .addresses(&Ns::Host, under.ifindex)
            .map_err(|e| kerr(lan, e))?;
        // The same rule as the address the node reports for its peers.
        Ok(UnderlayAddresses::pick(addrs.iter().map(|a| a.addr)).get(family))
    }

    /// Group and local address of the LAN's VXLAN: the group in multicast mode, the node's
    /// underlay address in unicast mode.
    fn vxlan_addresses(
        &self,
        spec: &LanSpec,
        node: &str,
        under: &Link,
    ) -> Result<(Option<IpAddr>, Option<IpAddr>), DatapathError> {
        let lan = spec.ns.as_str();
        match spec.vxlan_mode {
            VxlanMode::Multicast => match spec.group() {
                Some(group) => Ok((Some(group), None)),
                None => Err(DatapathError::Inconsistent {
                    lan: lan.into(),
                    what: format!("vxlanGrp {:?} does not parse", spec.vxlan_grp),
                }),
            },
            VxlanMode::Unicast => match self.address_on(lan, under, spec.vxlan_family)? {
                Some(local) => Ok((None, Some(local))),
                None => Err(DatapathError::NoUnderlayAddress {
                    lan: lan.into(),
                    node: node.into(),
                    dev: under.name.clone(),
                    family: spec.vxlan_family,
                }),
            },
        }
    }

    /// The underlay of `node`, checked: it exists in the host namespace and may carry a VXLAN.
    fn underlay(&self, spec: &LanSpec, node: &str) -> Result<Link, DatapathError> {
        let lan = spec.ns.as_str();
        let uplink = self.uplink.as_deref();
        let (field, dev) = underlay_field(spec, node, uplink).ok_or_else(|| {
            let (lan, node) = (lan.into(), node.into());
            match spec.uses_uplink() {
                true => DatapathError::NoUplink { lan, node },
                false => DatapathError::NoUnderlay { lan, node },
            }
        })?;
        let link = self
            .kernel
            .link(&Ns::Host, dev)
            .map_err(|e| kerr(lan, e))?
            .ok_or_else(|| DatapathError::UnderlayMissing {
                lan: lan.into(),
                node: node.into(),
                field: field.clone(),
                dev: dev.into(),
            })?;
        match self.unfit_underlay(lan, &link)? {
            None => Ok(link),
            Some(why) => Err(DatapathError::BadUnderlay {
                lan: lan.into(),
                node: node.into(),
                field,
                dev: dev.into(),
                why,
            }),
        }
    }

    /// Why a host link cannot be an underlay: the loopback device, a link k8slan made (another
    /// LAN's spoke host end or macvtap: a VXLAN on it would loop one LAN into another), or a
    /// port of a bridge k8slan made.
    fn unfit_underlay(&self, lan: &str, link: &Link) -> Result<Option<String>, DatapathError> {
        if link.name == "lo" || link.ifindex == LOOPBACK_IFINDEX {
            return Ok(Some(
                "it is the loopback device, which never carries VXLAN packets off the node".into(),
            ));
        }
        let owner = Owner::of(link);
        if matches!(owner, Owner::Lan { .. }) {
            return Ok(Some(format!("it is a link k8slan made: it {owner}")));
        }
        let Some(master) = link.master else {
            return Ok(None);
        };
        let host = self.kernel.links(&Ns::Host).map_err(|e| kerr(lan, e))?;
        Ok(host
            .iter()
            .find(|b| b.ifindex == master)
            .map(|b| (b, Owner::of(b)))
            .filter(|(_, o)| matches!(o, Owner::Lan { .. }))
            .map(|(b, o)| format!("it is a port of bridge {}, which {o}", b.name)))
    }

    /// Make sure the LAN namespace exists; returns whether this call created it.
    fn ensure_namespace(
        &self,
        lan: &str,
        changes: &mut Vec<String>,
    ) -> Result<bool, DatapathError> {
        if self
            .kernel
            .lan_namespace_exists(lan)
            .map_err(|e| kerr(lan, e))?
        {
            return Ok(false);
        }
        self.kernel
            .create_lan_namespace(lan)
            .map_err(|e| kerr(lan, e))?;
        changes.push(format!("create namespace {lan}"));
        Ok(true)
    }

    /// The bridge, then (when it is new) every port onto it and the old bridge away, then the
    /// VXLAN (an old one of this LAN removed before the new one takes its VNI).
    fn lan_links(
        &self,
        spec: &LanSpec,
        vxlan: VxlanParams,
        state: &mut LanState,
    ) -> Result<(), DatapathError> {
        let lan = spec.ns.as_str();
        let ns = Ns::Lan(lan.to_string());
        let bridge_alias = link_alias(lan, role::BRIDGE);
        let existing = self
            .kernel
            .link(&ns, &spec.bridge)
            .map_err(|e| kerr(lan, e))?;
        let (bridge, fresh) = self.ensure_link(
            lan,
            &ns,
            existing,
            |k| matches!(k, LinkKind::Bridge(p) if *p == bridge_params()),
            NewLink::Bridge {
                lan: lan.into(),
                name: spec.bridge.clone(),
                mtu: state.mtu,
                alias: bridge_alias.clone(),
                params: bridge_params(),
            },
            &mut state.changes,
        )?;
        state.bridge_ifindex = bridge.ifindex;
        let want = Want {
            mtu: state.mtu,
            alias: &bridge_alias,
            master: None,
        };
        if self.converge(lan, &ns, &bridge, &want)? {
            state
                .changes
                .push(format!("converge bridge {}", spec.bridge));
        }
        if fresh {
            // A new bridge (renamed, replaced, or the LAN's first): the ports of the old one
            // move over before it goes.
            let links = self.kernel.links(&ns).map_err(|e| kerr(lan, e))?;
            self.adopt_ports(spec, &links, state)?;
            self.retire(lan, &links, role::BRIDGE, &spec.bridge, &mut state.changes)?;
        }
        let vx = self.ensure_vxlan(spec, vxlan, state)?;
        state.vxlan_ifindex = vx.ifindex;
        Ok(())
    }

    fn ensure_vxlan(
        &self,
        spec: &LanSpec,
        vxlan: VxlanParams,
        state: &mut LanState,
    ) -> Result<Link, DatapathError> {
        let lan = spec.ns.as_str();
        let ns = Ns::Lan(lan.to_string());
        let vxlan_alias = link_alias(lan, role::VXLAN);
        let group = vxlan.group;
        let right = |k: &LinkKind| matches!(k, LinkKind::Vxlan(p) if *p == vxlan);
        let existing = self
            .kernel
            .link(&ns, &spec.vxlan)
            .map_err(|e| kerr(lan, e))?;
        let mut peers = Vec::new();
        if !existing.as_ref().is_some_and(|l| right(&l.kind)) {
            // The kernel allows one VXLAN per VNI and port on an underlay: an old one of this
            // LAN (renamed in the spec) goes first.
            let links = self.kernel.links(&ns).map_err(|e| kerr(lan, e))?;
            peers = self.old_peers(lan, existing.as_ref(), &vxlan)?;
            self.retire(lan, &links, role::VXLAN, &spec.vxlan, &mut state.changes)?;
        }
        let (vx, fresh) = self.ensure_link(
            lan,
            &ns,
            existing,
            right,
            NewLink::Vxlan {
                lan: lan.into(),
                name: spec.vxlan.clone(),
                mtu: state.mtu,
                alias: vxlan_alias.clone(),
                params: vxlan,
            },
            &mut state.changes,
        )?;
        let want = Want {
            mtu: state.mtu,
            alias: &vxlan_alias,
            master: Some((&spec.bridge, state.bridge_ifindex)),
        };
        let converged = self.converge(lan, &ns, &vx, &want);
        if converged.map_err(|e| refused_membership(e, spec, group, &vx, &state.underlay))? {
            state.changes.push(format!("converge vxlan {}", spec.vxlan));
        }
        if fresh && !peers.is_empty() {
            for dst in &peers {
                self.kernel
                    .add_flood_entry(&ns, &spec.vxlan, *dst)
                    .map_err(|e| kerr(lan, e))?;
            }
            state.changes.push(format!(
                "carry {} peers over to the new vxlan {}",
                peers.len(),
                spec.vxlan
            ));
        }
        Ok(vx)
    }

    /// The peers of the VXLAN `old` that is about to be replaced by one with `new` parameters
    /// and that stay valid on it: unicast destinations of the new one's family, not its own
    /// address. Carried over, members do not lose each other until the next `set_peers` when
    /// the VXLAN is replaced (the node's underlay address changed, for one).
    fn old_peers(
        &self,
        lan: &str,
        old: Option<&Link>,
        new: &VxlanParams,
    ) -> Result<Vec<IpAddr>, DatapathError> {
        let Some((old, LinkKind::Vxlan(params))) = old.map(|l| (l, &l.kind)) else {
            return Ok(Vec::new());
        };
        if new.group.is_some() || params.is_ipv6() != new.is_ipv6() {
            return Ok(Vec::new());
        }
        let entries = self
            .kernel
            .flood_entries(&Ns::Lan(lan.into()), &old.name)
            .map_err(|e| kerr(lan, e))?;
        Ok(entries
            .into_iter()
            .filter(|a| Some(*a) != params.group && Some(*a) != new.local)
            .collect())
    }

    /// Every spoke port of the LAN among `links` (and its VXLAN) is a port of the bridge, with
    /// the LAN MTU and the group forward mask, and up.
    fn adopt_ports(
        &self,
        spec: &LanSpec,
        links: &[Link],
        state: &mut LanState,
    ) -> Result<(), DatapathError> {
        let ns = Ns::Lan(spec.ns.clone());
        let vxlan_alias = link_alias(&spec.ns, role::VXLAN);
        let ports = links.iter().filter(|l| {
            is_port_of(l, &spec.ns) || (l.name == spec.vxlan && is_ours(l, &vxlan_alias))
        });
        for link in ports {
            let alias = link.alias.clone().unwrap_or_default();
            let want = Want {
                mtu: state.mtu,
                alias: &alias,
                master: Some((&spec.bridge, state.bridge_ifindex)),
            };
            if self.converge(&spec.ns, &ns, link, &want)? {
                state.changes.push(format!("converge port {}", link.name));
            }
        }
        Ok(())
    }

    /// Remove the links among `links` that carry this LAN's alias of `role` but are not named
    /// `keep`: the bridge or VXLAN of a spec that renamed them. Nothing else is touched.
    fn retire(
        &self,
        lan: &str,
        links: &[Link],
        role: &str,
        keep: &str,
        changes: &mut Vec<String>,
    ) -> Result<(), DatapathError> {
        let alias = link_alias(lan, role);
        let ns = Ns::Lan(lan.to_string());
        for old in links
            .iter()
            .filter(|l| l.name != keep && is_ours(l, &alias))
        {
            self.kernel
                .delete_link(&ns, &old.name)
                .map_err(|e| kerr(lan, e))?;
            changes.push(format!(
                "remove old {role} {} (renamed to {keep})",
                old.name
            ));
        }
        Ok(())
    }

    /// Make sure a link of the right kind exists in a namespace k8slan owns (the LAN namespace):
    /// `existing`, the link of that name, is kept if it has the right kind and parameters and
    /// replaced otherwise. Returns the link and whether it was created by this call.
    pub(crate) fn ensure_link(
        &self,
        lan: &str,
        ns: &Ns,
        existing: Option<Link>,
        right: impl Fn(&LinkKind) -> bool,
        new: NewLink,
        changes: &mut Vec<String>,
    ) -> Result<(Link, bool), DatapathError> {
        let name = new.target().1.to_string();
        let name = name.as_str();
        if let Some(link) = existing {
            if right(&link.kind) {
                return Ok((link, false));
            }
            self.kernel
                .delete_link(ns, name)
                .map_err(|e| kerr(lan, e))?;
            changes.push(format!("replace {name} (wrong kind or parameters)"));
        } else {
            changes.push(format!("create {name}"));
        }
        self.kernel.create_link(&new).map_err(|e| kerr(lan, e))?;
        let link = self
            .kernel
            .link(ns, name)
            .map_err(|e| kerr(lan, e))?
            .ok_or_else(|| DatapathError::Inconsistent {
                lan: lan.into(),
                what: format!("{name} vanished right after it was created in {ns}"),
            })?;
        Ok((link, true))
    }

    /// Remove everything of the LAN on this node: tap device nodes, host-side spoke links,
    /// the links in the LAN namespace and the namespace itself. Nothing of other LANs, nor any
    /// link without this LAN's alias in the host namespace, is touched.
    #[instrument(skip_all, fields(lan = %spec.ns))]
    pub fn lan_down(&self, spec: &LanSpec) -> Result<Vec<String>, DatapathError> {
        validate::validate_spec(spec)?;
        let _guard = self.serialise();
        self.teardown(&spec.ns, &spec.spokes)
    }

    /// Remove a LAN namespace that belongs to no known LAN (the agent's reconciler finds them in
    /// [`Datapath::show`]), with its links and the tap device nodes of the spokes found in it.
    #[instrument(skip_all, fields(lan = %ns))]
    pub fn remove_orphan(&self, ns: &str) -> Result<Vec<String>, DatapathError> {
        validate::netns_name("ns", ns)?;
        let _guard = self.serialise();
        self.teardown(ns, &[])
    }

    /// Remove everything of LAN `lan`: tap nodes of its spokes, every link of its namespace,
    /// host links carrying one of its host-side aliases, the namespace. A link or tap node of
    /// another LAN (a spoke of the same name there) is never touched.
    fn teardown(&self, lan: &str, known_spokes: &[String]) -> Result<Vec<String>, DatapathError> {
        let mut removed = Vec::new();
        let ns = Ns::Lan(lan.to_string());
        let exists = self
            .kernel
            .lan_namespace_exists(lan)
            .map_err(|e| kerr(lan, e))?;
        let lan_links = if exists {
            self.kernel.links(&ns).map_err(|e| kerr(lan, e))?
        } else {
            Vec::new()
        };
        let host = self.kernel.links(&Ns::Host).map_err(|e| kerr(lan, e))?;
        let host_links: Vec<&Link> = host.iter().filter(|l| is_host_link_of(l, lan)).collect();
        let mut spokes: Vec<String> = known_spokes.to_vec();
        for l in lan_links.iter().chain(host_links.iter().copied()) {
            if let Some(spoke) = spoke_of(l)
                && validate::spoke_name("spoke", spoke).is_ok()
                && !spokes.iter().any(|s| s == spoke)
            {
                spokes.push(spoke.to_string());
            }
        }
        for spoke in &spokes {
            validate::spoke_name("spoke", spoke)?;
            if !held_elsewhere(&host, lan, spoke) {
                self.remove_tap_node(lan, spoke, &mut removed)?;
            }
        }
        if exists {
            self.clear_namespace(lan, &lan_links, &mut removed)?;
        }
        self.remove_host_leftovers(lan, &mut removed)?;
        if exists {
            self.kernel
                .delete_lan_namespace(lan)
                .map_err(|e| kerr(lan, e))?;
            removed.push(format!("namespace {lan}"));
        }
        Ok(removed)
    }

    /// Remove a spoke's tap device node, if there is one.
    pub(crate) fn remove_tap_node(
        &self,
        lan: &str,
        spoke: &str,
        removed: &mut Vec<String>,
    ) -> Result<(), DatapathError> {
        let path = self.tap_node_path(spoke);
        if self
            .kernel
            .tap_node(&path)
            .map_err(|e| kerr(lan, e))?
            .is_some()
        {
            self.kernel
                .remove_tap_node(&path)
                .map_err(|e| kerr(lan, e))?;
            removed.push(path.display().to_string());
        }
        Ok(())
    }

    /// Every link of the LAN namespace (k8slan's own namespace) in one batch; veth peers (host
    /// ends, even those in pods) and the macvtaps on them die with their ports.
    fn clear_namespace(
        &self,
        lan: &str,
        lan_links: &[Link],
        removed: &mut Vec<String>,
    ) -> Result<(), DatapathError> {
        let ns = Ns::Lan(lan.to_string());
        if !lan_links.iter().any(|l| l.name != "lo") {
            return Ok(());
        }
        self.kernel
            .delete_lan_links(lan)
            .map_err(|e| kerr(lan, e))?;
        removed.extend(
            lan_links
                .iter()
                .filter(|l| l.name != "lo")
                .map(|l| format!("{lan}:{}", l.name)),
        );
        // Links someone made by hand (not in k8slan's group) go one by one.
        for l in self.kernel.links(&ns).map_err(|e| kerr(lan, e))? {
            if l.name != "lo" {
                self.kernel
                    .delete_link(&ns, &l.name)
                    .map_err(|e| kerr(lan, e))?;
            }
        }
        Ok(())
    }

    /// Host links of this LAN that did not die with a port (leftovers), macvtaps first; only
    /// links carrying this LAN's host-end or macvtap alias, looked up again just before.
    fn remove_host_leftovers(
        &self,
        lan: &str,
        removed: &mut Vec<String>,
    ) -> Result<(), DatapathError> {
        let mut left: Vec<Link> = self
            .kernel
            .links(&Ns::Host)
            .map_err(|e| kerr(lan, e))?
            .into_iter()
            .filter(|l| is_host_link_of(l, lan))
            .collect();
        left.sort_by_key(|l| !matches!(l.kind, LinkKind::Macvtap { .. }));
        for l in left {
            self.kernel
                .delete_link(&Ns::Host, &l.name)
                .map_err(|e| kerr(lan, e))?;
            removed.push(format!("host:{}", l.name));
        }
        Ok(())
    }
}

/// The error of bringing up a multicast VXLAN `vx` explained when the kernel refused its group
/// membership: the VXLAN joins its group when it comes up, and the node's VXLAN socket for the
/// port and family (every such VXLAN of the node shares it) is over its limit: ENOBUFS past
/// `net.ipv4.igmp_max_memberships` groups, ENOMEM past `net.core.optmem_max` bytes of IPv6
/// memberships. Any other error is returned as it is.
fn refused_membership(
    e: DatapathError,
    spec: &LanSpec,
    group: Option<IpAddr>,
    vx: &Link,
    underlay: &str,
) -> DatapathError {
    let (Some(group), false) = (group, vx.up) else {
        return e;
    };
    match e {
        DatapathError::Kernel { lan, source }
            if matches!(source.errno, Some(libc::ENOBUFS | libc::ENOMEM)) =>
        {
            DatapathError::MulticastLimit {
                lan,
                group,
                dev: underlay.to_string(),
                port: spec.vxlan_port,
                reason: source.reason,
            }
        }
        e => e,
    }
}

/// Whether a host link is a host end or macvtap of LAN `lan` (by its alias, exactly).
fn is_host_link_of(l: &Link, lan: &str) -> bool {
    let Some((n, r)) = l.alias.as_deref().and_then(parse_alias) else {
        return false;
    };
    n == lan && ["spoke/", "macvtap/"].iter().any(|p| r.starts_with(p))
}

/// Whether another LAN holds a spoke of this name on the node (its host end or macvtap carries
/// that LAN's alias): then the tap node `tap-<spoke>` is that LAN's, not ours.
pub(crate) fn held_elsewhere(host: &[Link], lan: &str, spoke: &str) -> bool {
    host.iter().any(|l| {
        let owner = Owner::of(l);
        owner.is_other_lan(lan) && spoke_of(l) == Some(spoke)
    })
}

/// The spoke a link of ours belongs to (from its alias), or a LAN-namespace veth's own name.
pub(crate) fn spoke_of(l: &Link) -> Option<&str> {
    if let Some((_, r)) = l.alias.as_deref().and_then(parse_alias) {
        for prefix in ["port/", "spoke/", "macvtap/"] {
            if let Some(s) = r.strip_prefix(prefix) {
                return Some(s);
            }
        }
        return None;
    }
    match l.kind {
        LinkKind::Veth { .. } => Some(&l.name),
        _ => None,
    }
}

fn is_port_of(l: &Link, lan: &str) -> bool {
    l.alias
        .as_deref()
        .and_then(parse_alias)
        .is_some_and(|(n, r)| n == lan && r.starts_with("port/"))
}
