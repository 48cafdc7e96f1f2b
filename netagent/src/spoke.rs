//! Spoke up and down: the veth pair of a spoke and, for a VM, its macvtap and tap device node.

use std::path::PathBuf;

use k8slan_api::naming::{
    SpokeKind, bridge_port_name, container_tap_path, host_veth_name, link_alias, macvtap_name,
};
use k8slan_api::{LanSpec, validate};
use serde::Serialize;
use tracing::{debug, instrument};

use crate::datapath::{Datapath, DatapathError, Want, kerr, role};
use crate::kernel::{Kernel, Link, LinkKind, NewLink, Ns};

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

fn is_ours(l: &Link, alias: &str) -> bool {
    l.alias.as_deref() == Some(alias)
}

fn paired(host: &Link, port: &Link) -> bool {
    matches!(host.kind, LinkKind::Veth { peer_ifindex: Some(p) } if p == port.ifindex)
        && matches!(port.kind, LinkKind::Veth { peer_ifindex: Some(p) } if p == host.ifindex)
}

impl<K: Kernel> Datapath<K> {
    /// Prepare a spoke's host side exactly as `Allocate` needs it: the LAN (see
    /// [`Datapath::lan_up`]), a veth pair whose bridge end is a port of the LAN bridge and whose
    /// host end waits in the host namespace, and for [`SpokeKind::Mac`] a macvtap on the host end
    /// with its tap device node in the device directory. Leftovers of an earlier allocation (host
    /// end missing or moved away, wrong macvtap) are replaced; correct state is left untouched.
    /// A host link with the spoke's name that is not ours is an error and is never touched.
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
        let _guard = self.serialise();
        let state = self.lan_core(spec, node)?;
        let mut changes = state.changes.clone();
        let host_name = host_veth_name(spoke);
        let port_name = bridge_port_name(spoke);
        let mvt_name = macvtap_name(spoke);
        validate::interface_name("macvtap", &mvt_name)?;
        let host_alias = link_alias(lan, &role::host(spoke));
        let port_alias = link_alias(lan, &role::port(spoke));
        let mvt_alias = link_alias(lan, &role::macvtap(spoke));
        let lan_ns = Ns::Lan(lan.to_string());

        // Never touch a host link that is not ours; check both names before changing anything.
        let host = self
            .kernel
            .link(&Ns::Host, host_name)
            .map_err(|e| kerr(lan, e))?;
        let mvt = self
            .kernel
            .link(&Ns::Host, &mvt_name)
            .map_err(|e| kerr(lan, e))?;
        for (link, alias) in [(&host, &host_alias), (&mvt, &mvt_alias)] {
            if let Some(l) = link
                && !is_ours(l, alias)
            {
                return Err(DatapathError::ForeignLink {
                    lan: lan.into(),
                    spoke: spoke.into(),
                    link: l.name.clone(),
                    alias: l.alias.clone(),
                    expected: alias.clone(),
                });
            }
        }
        let port = self
            .kernel
            .link(&lan_ns, port_name)
            .map_err(|e| kerr(lan, e))?;

        let mut created_pair = false;
        let (host, port) = match (host, port) {
            (Some(h), Some(p)) if paired(&h, &p) => (h, p),
            (host, port) => {
                // A leftover: remove what is there, then make a fresh pair.
                if mvt.is_some() {
                    self.kernel
                        .delete_link(&Ns::Host, &mvt_name)
                        .map_err(|e| kerr(lan, e))?;
                    changes.push(format!("remove stale macvtap {mvt_name}"));
                }
                if host.is_some() {
                    self.kernel
                        .delete_link(&Ns::Host, host_name)
                        .map_err(|e| kerr(lan, e))?;
                    changes.push(format!("remove stale host end {host_name}"));
                }
                if port.is_some()
                    && self
                        .kernel
                        .link(&lan_ns, port_name)
                        .map_err(|e| kerr(lan, e))?
                        .is_some()
                {
                    self.kernel
                        .delete_link(&lan_ns, port_name)
                        .map_err(|e| kerr(lan, e))?;
                    changes.push(format!("remove stale bridge port {port_name}"));
                }
                self.kernel
                    .create_link(&NewLink::VethPair {
                        lan: lan.into(),
                        host_name: host_name.into(),
                        host_alias: host_alias.clone(),
                        port_name: port_name.into(),
                        port_alias: port_alias.clone(),
                        mtu: state.mtu,
                    })
                    .map_err(|e| kerr(lan, e))?;
                created_pair = true;
                changes.push(format!("create veth pair {host_name}"));
                let h = self
                    .kernel
                    .link(&Ns::Host, host_name)
                    .map_err(|e| kerr(lan, e));
                let p = self
                    .kernel
                    .link(&lan_ns, port_name)
                    .map_err(|e| kerr(lan, e));
                match (h, p) {
                    (Ok(Some(h)), Ok(Some(p))) => (h, p),
                    (h, p) => {
                        let _ = self.kernel.delete_link(&Ns::Host, host_name);
                        h?;
                        p?;
                        return Err(DatapathError::Inconsistent {
                            lan: lan.into(),
                            what: format!("veth pair of spoke {spoke} vanished after creation"),
                        });
                    }
                }
            }
        };
        let result = self.finish_spoke(spec, spoke, kind, &state, &host, &port, mvt, &mut changes);
        match result {
            Ok(mac) => {
                debug!(changes = ?changes, "spoke up");
                Ok(SpokeAttachment {
                    lan: lan.into(),
                    spoke: spoke.into(),
                    kind: kind.as_str().into(),
                    host_ifname: host.name.clone(),
                    host_ifindex: host.ifindex,
                    mtu: state.mtu,
                    mac,
                    changes,
                })
            }
            Err(e) => {
                if created_pair {
                    // Roll back what this call created.
                    let _ = self.kernel.delete_link(&Ns::Host, &mvt_name);
                    let _ = self.kernel.delete_link(&Ns::Host, host_name);
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_spoke(
        &self,
        spec: &LanSpec,
        spoke: &str,
        kind: SpokeKind,
        state: &crate::lan::LanState,
        host: &Link,
        port: &Link,
        mvt: Option<Link>,
        changes: &mut Vec<String>,
    ) -> Result<Option<MacAttachment>, DatapathError> {
        let lan = spec.ns.as_str();
        let lan_ns = Ns::Lan(lan.to_string());
        let host_alias = link_alias(lan, &role::host(spoke));
        let port_alias = link_alias(lan, &role::port(spoke));
        let mvt_alias = link_alias(lan, &role::macvtap(spoke));
        let mvt_name = macvtap_name(spoke);
        if self.converge(
            lan,
            &lan_ns,
            port,
            &Want {
                mtu: state.mtu,
                alias: &port_alias,
                master: Some((&spec.bridge, state.bridge_ifindex)),
            },
        )? {
            changes.push(format!("converge bridge port {}", port.name));
        }
        if self.converge(
            lan,
            &Ns::Host,
            host,
            &Want {
                mtu: state.mtu,
                alias: &host_alias,
                master: None,
            },
        )? {
            changes.push(format!("converge host end {}", host.name));
        }
        let tap_path = self.tap_node_path(spoke);
        // A macvtap whose lower is gone disappears with it: look again.
        let mvt = match mvt {
            Some(_) => self
                .kernel
                .link(&Ns::Host, &mvt_name)
                .map_err(|e| kerr(lan, e))?,
            None => None,
        };
        match kind {
            SpokeKind::Veth => {
                if mvt.is_some() {
                    self.kernel
                        .delete_link(&Ns::Host, &mvt_name)
                        .map_err(|e| kerr(lan, e))?;
                    changes.push(format!("remove macvtap {mvt_name} (spoke used as veth)"));
                }
                if self
                    .kernel
                    .tap_node(&tap_path)
                    .map_err(|e| kerr(lan, e))?
                    .is_some()
                {
                    self.kernel
                        .remove_tap_node(&tap_path)
                        .map_err(|e| kerr(lan, e))?;
                    changes.push(format!("remove tap node {}", tap_path.display()));
                }
                Ok(None)
            }
            SpokeKind::Mac => {
                let right = |l: &Link| {
                    matches!(l.kind, LinkKind::Macvtap { lower_ifindex, mode }
                        if lower_ifindex == host.ifindex && mode == spec.macvtap_mode)
                };
                let mvt = match mvt {
                    Some(l) if right(&l) => l,
                    other => {
                        if other.is_some() {
                            self.kernel
                                .delete_link(&Ns::Host, &mvt_name)
                                .map_err(|e| kerr(lan, e))?;
                            changes.push(format!("replace macvtap {mvt_name}"));
                        } else {
                            changes.push(format!("create macvtap {mvt_name}"));
                        }
                        self.kernel
                            .create_link(&NewLink::Macvtap {
                                name: mvt_name.clone(),
                                lower: host.name.clone(),
                                mode: spec.macvtap_mode,
                                mtu: state.mtu,
                                alias: mvt_alias.clone(),
                            })
                            .map_err(|e| kerr(lan, e))?;
                        self.kernel
                            .link(&Ns::Host, &mvt_name)
                            .map_err(|e| kerr(lan, e))?
                            .ok_or_else(|| DatapathError::Inconsistent {
                                lan: lan.into(),
                                what: format!("macvtap {mvt_name} vanished after creation"),
                            })?
                    }
                };
                if self.converge(
                    lan,
                    &Ns::Host,
                    &mvt,
                    &Want {
                        mtu: state.mtu,
                        alias: &mvt_alias,
                        master: None,
                    },
                )? {
                    changes.push(format!("converge macvtap {mvt_name}"));
                }
                let dev = self
                    .kernel
                    .macvtap_devnum(&mvt_name)
                    .map_err(|e| kerr(lan, e))?;
                if self.kernel.tap_node(&tap_path).map_err(|e| kerr(lan, e))? != Some(dev) {
                    self.kernel
                        .make_tap_node(&tap_path, dev)
                        .map_err(|e| kerr(lan, e))?;
                    changes.push(format!("create tap node {} ({dev})", tap_path.display()));
                }
                Ok(Some(MacAttachment {
                    macvtap: mvt_name,
                    macvtap_ifindex: mvt.ifindex,
                    tap_host_path: tap_path,
                    tap_container_path: container_tap_path(mvt.ifindex),
                    devnum: dev.to_string(),
                }))
            }
        }
    }

    /// Remove one spoke: its tap device node, its macvtap and host end (only if ours) and its
    /// bridge port. Other spokes and the LAN stay. Absent parts are fine.
    #[instrument(skip_all, fields(lan = %spec.ns, spoke = %spoke))]
    pub fn spoke_down(&self, spec: &LanSpec, spoke: &str) -> Result<Vec<String>, DatapathError> {
        validate::validate_spec(spec)?;
        validate::spoke_name("spoke", spoke)?;
        let _guard = self.serialise();
        let lan = spec.ns.as_str();
        let mut removed = Vec::new();
        let tap_path = self.tap_node_path(spoke);
        if self
            .kernel
            .tap_node(&tap_path)
            .map_err(|e| kerr(lan, e))?
            .is_some()
        {
            self.kernel
                .remove_tap_node(&tap_path)
                .map_err(|e| kerr(lan, e))?;
            removed.push(tap_path.display().to_string());
        }
        let mvt_name = macvtap_name(spoke);
        for (name, alias) in [
            (mvt_name.as_str(), link_alias(lan, &role::macvtap(spoke))),
            (host_veth_name(spoke), link_alias(lan, &role::host(spoke))),
        ] {
            if let Some(l) = self
                .kernel
                .link(&Ns::Host, name)
                .map_err(|e| kerr(lan, e))?
                && is_ours(&l, &alias)
            {
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
            let port = bridge_port_name(spoke);
            if self
                .kernel
                .link(&lan_ns, port)
                .map_err(|e| kerr(lan, e))?
                .is_some()
            {
                self.kernel
                    .delete_link(&lan_ns, port)
                    .map_err(|e| kerr(lan, e))?;
                removed.push(format!("{lan}:{port}"));
            }
        }
        Ok(removed)
    }
}
