//! What exists on the node: `show` for people and start-up recovery for the agent.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8slan_api::naming::{link_alias, tap_device_file};
use k8slan_api::{LanSpec, validate};
use serde::Serialize;
use tracing::instrument;

use crate::datapath::{Datapath, DatapathError, kerr, parse_alias, role};
use crate::kernel::{Kernel, Link, LinkKind, Ns};
use crate::lan::{bridge_params, spoke_of};

/// One LAN namespace and everything of it on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeLan {
    pub ns: String,
    pub bridges: Vec<Link>,
    pub vxlans: Vec<Link>,
    pub spokes: Vec<SpokeView>,
    /// Links in the LAN namespace that are neither bridge, vxlan, spoke port nor `lo`.
    pub other: Vec<Link>,
}

/// One spoke: its bridge port and its host-side links.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct SpokeView {
    pub spoke: String,
    pub port: Option<Link>,
    pub host_end: Option<Link>,
    pub macvtap: Option<Link>,
    pub tap_node: Option<PathBuf>,
}

/// Result of start-up recovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Recovery {
    /// Known LANs whose namespace, bridge and VXLAN already match the spec (kept as they are).
    pub adopted: Vec<String>,
    /// Known LANs whose namespace exists but differs from the spec: `lan_up` repairs them.
    pub drifted: Vec<String>,
    /// LAN namespaces in the netns directory that belong to no known LAN:
    /// remove them with [`Datapath::remove_orphan`].
    pub orphan_namespaces: Vec<String>,
    /// Host links carrying a k8slan alias of a LAN namespace that no known LAN has.
    pub orphan_links: Vec<String>,
    /// Tap device nodes in the device directory whose spoke is in no known LAN.
    pub orphan_tap_nodes: Vec<PathBuf>,
    /// Entries of the netns directory that k8slan did not create: left alone (see
    /// [`crate::netns`]).
    pub foreign_entries: Vec<crate::netns::ForeignEntry>,
}

impl<K: Kernel> Datapath<K> {
    /// Every LAN namespace with its bridge, VXLAN and spokes, and the host-side spoke links.
    #[instrument(skip_all)]
    pub fn show(&self) -> Result<Vec<NodeLan>, DatapathError> {
        let _guard = self.serialise();
        let host = self.kernel.links(&Ns::Host).map_err(|e| kerr("*", e))?;
        let mut views = Vec::new();
        for ns in self.kernel.lan_namespaces().map_err(|e| kerr("*", e))? {
            if validate::netns_name("ns", &ns).is_err() {
                continue;
            }
            let links = self
                .kernel
                .links(&Ns::Lan(ns.clone()))
                .map_err(|e| kerr(&ns, e))?;
            let mut view = NodeLan {
                ns: ns.clone(),
                bridges: Vec::new(),
                vxlans: Vec::new(),
                spokes: Vec::new(),
                other: Vec::new(),
            };
            let mut spokes: BTreeMap<String, SpokeView> = BTreeMap::new();
            for l in links {
                match (&l.kind, spoke_of(&l)) {
                    (LinkKind::Bridge(_), _) => view.bridges.push(l),
                    (LinkKind::Vxlan(_), _) => view.vxlans.push(l),
                    (LinkKind::Veth { .. }, Some(s)) => {
                        let s = s.to_string();
                        spokes.entry(s.clone()).or_default().port = Some(l);
                    }
                    _ if l.name == "lo" => {}
                    _ => view.other.push(l),
                }
            }
            for l in host.iter().filter(|l| {
                l.alias
                    .as_deref()
                    .and_then(parse_alias)
                    .is_some_and(|(n, _)| n == ns)
            }) {
                let Some(s) = spoke_of(l) else { continue };
                let entry = spokes.entry(s.to_string()).or_default();
                if matches!(l.kind, LinkKind::Macvtap { .. }) {
                    entry.macvtap = Some(l.clone());
                } else {
                    entry.host_end = Some(l.clone());
                }
            }
            for (name, mut sv) in spokes {
                if validate::spoke_name("spoke", &name).is_ok() {
                    let path = self.dev_dir.join(tap_device_file(&name));
                    if self.kernel.tap_node(&path).ok().flatten().is_some() {
                        sv.tap_node = Some(path);
                    }
                }
                sv.spoke = name;
                view.spokes.push(sv);
            }
            views.push(view);
        }
        Ok(views)
    }

    /// Compare what the node has with the known LANs (read only: nothing is changed).
    #[instrument(skip_all, fields(node = %node, known = known.len()))]
    pub fn recover(&self, node: &str, known: &[LanSpec]) -> Result<Recovery, DatapathError> {
        validate::node_name("node", node)?;
        let _guard = self.serialise();
        let mut rec = Recovery::default();
        let present = self.kernel.lan_namespaces().map_err(|e| kerr("*", e))?;
        rec.foreign_entries = self
            .kernel
            .foreign_namespace_entries()
            .map_err(|e| kerr("*", e))?;
        for ns in &present {
            match known.iter().find(|s| &s.ns == ns) {
                None => rec.orphan_namespaces.push(ns.clone()),
                Some(spec) => {
                    if self.matches(spec, node)? {
                        rec.adopted.push(ns.clone());
                    } else {
                        rec.drifted.push(ns.clone());
                    }
                }
            }
        }
        let host = self.kernel.links(&Ns::Host).map_err(|e| kerr("*", e))?;
        for l in host {
            if let Some((ns, _)) = l.alias.as_deref().and_then(parse_alias)
                && !known.iter().any(|s| s.ns == ns)
            {
                rec.orphan_links.push(l.name.clone());
            }
        }
        let spokes: Vec<String> = known
            .iter()
            .flat_map(|s| s.spokes.iter().map(|sp| tap_device_file(sp)))
            .collect();
        for path in self
            .kernel
            .tap_nodes(&self.dev_dir)
            .map_err(|e| kerr("*", e))?
        {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.starts_with("tap-") && !spokes.iter().any(|s| s == name) {
                rec.orphan_tap_nodes.push(path);
            }
        }
        Ok(rec)
    }

    /// Whether the LAN's bridge and VXLAN are ours and have the spec's parameters.
    fn matches(&self, spec: &LanSpec, node: &str) -> Result<bool, DatapathError> {
        if validate::validate_spec(spec).is_err() {
            return Ok(false);
        }
        let lan = spec.ns.as_str();
        let ns = Ns::Lan(lan.into());
        let Some(dev) = spec.underlay_for(node) else {
            return Ok(false);
        };
        let Some(under) = self.kernel.link(&Ns::Host, dev).map_err(|e| kerr(lan, e))? else {
            return Ok(false);
        };
        let Ok(mtu) = k8slan_api::mtu::lan_mtu(under.mtu) else {
            return Ok(false);
        };
        let bridge = self
            .kernel
            .link(&ns, &spec.bridge)
            .map_err(|e| kerr(lan, e))?;
        let vxlan = self
            .kernel
            .link(&ns, &spec.vxlan)
            .map_err(|e| kerr(lan, e))?;
        let bridge_ok = bridge.as_ref().is_some_and(|b| {
            b.alias.as_deref() == Some(link_alias(lan, role::BRIDGE).as_str())
                && b.kind == LinkKind::Bridge(bridge_params())
                && b.mtu == mtu
                && b.up
        });
        let vxlan_ok = vxlan.as_ref().is_some_and(|v| {
            v.alias.as_deref() == Some(link_alias(lan, role::VXLAN).as_str())
                && matches!(v.kind, LinkKind::Vxlan(p) if p.vni == spec.vni
                    && Some(p.group) == spec.group()
                    && p.port == spec.vxlan_port
                    && p.underlay_ifindex == under.ifindex)
                && v.mtu == mtu
                && v.up
                && v.master == bridge.as_ref().map(|b| b.ifindex)
        });
        Ok(bridge_ok && vxlan_ok)
    }
}
