//! What exists on the node: `show`, for people (`k8slan-agent datapath show`) and for the
//! agent's LAN reconciler, which plans refreshes and orphan removals from it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use k8slan_api::naming::tap_device_file;
use k8slan_api::validate;
use serde::Serialize;
use tracing::instrument;

use crate::datapath::{Datapath, DatapathError, kerr, parse_alias};
use crate::kernel::{Kernel, Link, LinkKind, Ns};
use crate::lan::spoke_of;

/// One LAN namespace and everything of it on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeLan {
    pub ns: String,
    pub bridges: Vec<Link>,
    pub vxlans: Vec<Link>,
    pub spokes: Vec<SpokeView>,
    /// Where the VXLANs flood to besides their multicast group: the peers of a unicast LAN.
    pub peers: Vec<IpAddr>,
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
                peers: Vec::new(),
                other: Vec::new(),
            };
            let mut spokes: BTreeMap<String, SpokeView> = BTreeMap::new();
            for l in links {
                match (&l.kind, spoke_of(&l)) {
                    (LinkKind::Bridge(_), _) => view.bridges.push(l),
                    (LinkKind::Vxlan(p), _) => {
                        view.peers.extend(self.peers_of(&ns, &l.name, p.group)?);
                        view.vxlans.push(l);
                    }
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

    /// The flood entries of a VXLAN of LAN namespace `ns`, without its multicast group.
    fn peers_of(
        &self,
        ns: &str,
        vxlan: &str,
        group: Option<IpAddr>,
    ) -> Result<Vec<IpAddr>, DatapathError> {
        let entries = self
            .kernel
            .flood_entries(&Ns::Lan(ns.into()), vxlan)
            .map_err(|e| kerr(ns, e))?;
        Ok(entries.into_iter().filter(|a| Some(*a) != group).collect())
    }
}
