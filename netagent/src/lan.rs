//! LAN up and down: the LAN namespace, its bridge and its VXLAN.

use k8slan_api::naming::link_alias;
use k8slan_api::{LanSpec, mtu, validate};
use serde::Serialize;
use tracing::{debug, instrument};

use crate::datapath::{
    BRIDGE_GROUP_FWD_MASK, Datapath, DatapathError, Want, kerr, parse_alias, role,
};
use crate::kernel::{BridgeParams, Kernel, Link, LinkKind, NewLink, Ns, VxlanParams};

/// The LAN as the node has it after `lan_up`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LanState {
    pub ns: String,
    pub underlay: String,
    pub underlay_ifindex: u32,
    /// MTU of every link of the LAN.
    pub mtu: u32,
    pub bridge_ifindex: u32,
    pub vxlan_ifindex: u32,
    /// What this call changed, in order (empty when the LAN was already right).
    pub changes: Vec<String>,
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
    #[instrument(skip_all, fields(lan = %spec.ns, node = %node))]
    pub fn lan_up(&self, spec: &LanSpec, node: &str) -> Result<LanState, DatapathError> {
        let _guard = self.serialise();
        let mut state = self.lan_core(spec, node)?;
        // Existing spoke ports (also those whose host end is in a pod) get the LAN MTU, stay
        // ports of the bridge with the group forward mask, and stay up; they are never recreated
        // here, so members keep their links.
        let ns = Ns::Lan(spec.ns.clone());
        let links = self.kernel.links(&ns).map_err(|e| kerr(&spec.ns, e))?;
        for link in links.iter().filter(|l| is_port_of(l, &spec.ns)) {
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
        debug!(changes = ?state.changes, "LAN up");
        Ok(state)
    }

    /// Validate, then converge namespace, bridge and VXLAN (not the spokes).
    pub(crate) fn lan_core(&self, spec: &LanSpec, node: &str) -> Result<LanState, DatapathError> {
        validate::validate_spec(spec)?;
        validate::node_name("node", node)?;
        let lan = spec.ns.as_str();
        let underlay = spec
            .underlay_for(node)
            .ok_or_else(|| DatapathError::NoUnderlay {
                lan: lan.into(),
                node: node.into(),
            })?
            .to_string();
        let under = self
            .kernel
            .link(&Ns::Host, &underlay)
            .map_err(|e| kerr(lan, e))?
            .ok_or_else(|| DatapathError::UnderlayMissing {
                lan: lan.into(),
                node: node.into(),
                dev: underlay.clone(),
            })?;
        let mtu = mtu::lan_mtu(under.mtu).map_err(|source| DatapathError::Mtu {
            lan: lan.into(),
            dev: underlay.clone(),
            source,
        })?;
        let mut changes = Vec::new();
        let mut created_ns = false;
        if !self
            .kernel
            .lan_namespace_exists(lan)
            .map_err(|e| kerr(lan, e))?
        {
            self.kernel
                .create_lan_namespace(lan)
                .map_err(|e| kerr(lan, e))?;
            created_ns = true;
            changes.push(format!("create namespace {lan}"));
        }
        let group = spec.group().ok_or_else(|| DatapathError::Inconsistent {
            lan: lan.into(),
            what: format!("vxlanGrp {:?} does not parse", spec.vxlan_grp),
        })?;
        let vxlan = VxlanParams {
            vni: spec.vni,
            group,
            port: spec.vxlan_port,
            underlay_ifindex: under.ifindex,
            learning: true,
        };
        match self.lan_links(spec, mtu, vxlan, &mut changes) {
            Ok((bridge_ifindex, vxlan_ifindex)) => Ok(LanState {
                ns: lan.into(),
                underlay,
                underlay_ifindex: under.ifindex,
                mtu,
                bridge_ifindex,
                vxlan_ifindex,
                changes,
            }),
            Err(e) => {
                if created_ns {
                    // Roll back: nothing half-created survives a failed first `up`.
                    let _ = self.kernel.delete_lan_namespace(lan);
                }
                Err(e)
            }
        }
    }

    fn lan_links(
        &self,
        spec: &LanSpec,
        mtu: u32,
        vxlan: VxlanParams,
        changes: &mut Vec<String>,
    ) -> Result<(u32, u32), DatapathError> {
        let lan = spec.ns.as_str();
        let ns = Ns::Lan(lan.to_string());
        let bridge_alias = link_alias(lan, role::BRIDGE);
        let bridge = self.ensure_link(
            lan,
            &ns,
            &spec.bridge,
            |k| matches!(k, LinkKind::Bridge(p) if *p == bridge_params()),
            NewLink::Bridge {
                lan: lan.into(),
                name: spec.bridge.clone(),
                mtu,
                alias: bridge_alias.clone(),
                params: bridge_params(),
            },
            changes,
        )?;
        if self.converge(
            lan,
            &ns,
            &bridge,
            &Want {
                mtu,
                alias: &bridge_alias,
                master: None,
            },
        )? {
            changes.push(format!("converge bridge {}", spec.bridge));
        }
        let vxlan_alias = link_alias(lan, role::VXLAN);
        let vx = self.ensure_link(
            lan,
            &ns,
            &spec.vxlan,
            |k| matches!(k, LinkKind::Vxlan(p) if *p == vxlan),
            NewLink::Vxlan {
                lan: lan.into(),
                name: spec.vxlan.clone(),
                mtu,
                alias: vxlan_alias.clone(),
                params: vxlan,
            },
            changes,
        )?;
        if self.converge(
            lan,
            &ns,
            &vx,
            &Want {
                mtu,
                alias: &vxlan_alias,
                master: Some((&spec.bridge, bridge.ifindex)),
            },
        )? {
            changes.push(format!("converge vxlan {}", spec.vxlan));
        }
        Ok((bridge.ifindex, vx.ifindex))
    }

    /// Make sure a link of the right kind exists in a namespace k8slan owns (the LAN namespace):
    /// a link of that name with the wrong kind or parameters is replaced.
    pub(crate) fn ensure_link(
        &self,
        lan: &str,
        ns: &Ns,
        name: &str,
        right: impl Fn(&LinkKind) -> bool,
        new: NewLink,
        changes: &mut Vec<String>,
    ) -> Result<Link, DatapathError> {
        let existing = self.kernel.link(ns, name).map_err(|e| kerr(lan, e))?;
        if let Some(link) = existing {
            if right(&link.kind) {
                return Ok(link);
            }
            self.kernel
                .delete_link(ns, name)
                .map_err(|e| kerr(lan, e))?;
            changes.push(format!("replace {name} (wrong kind or parameters)"));
        } else {
            changes.push(format!("create {name}"));
        }
        self.kernel.create_link(&new).map_err(|e| kerr(lan, e))?;
        self.kernel
            .link(ns, name)
            .map_err(|e| kerr(lan, e))?
            .ok_or_else(|| DatapathError::Inconsistent {
                lan: lan.into(),
                what: format!("{name} vanished right after it was created in {ns}"),
            })
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

    /// Remove a LAN namespace that belongs to no known LAN (see [`Datapath::recover`]), with
    /// its links and the tap device nodes of the spokes found in it.
    #[instrument(skip_all, fields(lan = %ns))]
    pub fn remove_orphan(&self, ns: &str) -> Result<Vec<String>, DatapathError> {
        validate::netns_name("ns", ns)?;
        let _guard = self.serialise();
        self.teardown(ns, &[])
    }

    fn teardown(&self, lan: &str, known_spokes: &[String]) -> Result<Vec<String>, DatapathError> {
        let mut removed = Vec::new();
        let mut spokes: Vec<String> = known_spokes.to_vec();
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
        let host_links: Vec<Link> = self
            .kernel
            .links(&Ns::Host)
            .map_err(|e| kerr(lan, e))?
            .into_iter()
            .filter(|l| {
                l.alias
                    .as_deref()
                    .and_then(parse_alias)
                    .is_some_and(|(n, _)| n == lan)
            })
            .collect();
        for l in lan_links.iter().chain(&host_links) {
            if let Some(spoke) = spoke_of(l)
                && validate::spoke_name("spoke", spoke).is_ok()
                && !spokes.iter().any(|s| s == spoke)
            {
                spokes.push(spoke.to_string());
            }
        }
        for spoke in &spokes {
            validate::spoke_name("spoke", spoke)?;
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
        }
        // Every link of the LAN namespace in one batch; veth peers (host ends, even those in
        // pods) and the macvtaps on them die with their ports.
        if lan_links.iter().any(|l| l.name != "lo") {
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
        }
        // Host links of this LAN that were not paired with a port (leftovers), macvtaps first.
        let mut host_left: Vec<Link> = self
            .kernel
            .links(&Ns::Host)
            .map_err(|e| kerr(lan, e))?
            .into_iter()
            .filter(|l| {
                host_links
                    .iter()
                    .any(|h| h.ifindex == l.ifindex && h.name == l.name)
            })
            .collect();
        host_left.sort_by_key(|l| !matches!(l.kind, LinkKind::Macvtap { .. }));
        for l in host_left {
            self.kernel
                .delete_link(&Ns::Host, &l.name)
                .map_err(|e| kerr(lan, e))?;
            removed.push(format!("host:{}", l.name));
        }
        if exists {
            self.kernel
                .delete_lan_namespace(lan)
                .map_err(|e| kerr(lan, e))?;
            removed.push(format!("namespace {lan}"));
        }
        Ok(removed)
    }
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
