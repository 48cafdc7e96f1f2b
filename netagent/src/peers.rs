//! The peers of a unicast LAN: the all-zero-MAC forwarding entries of its VXLAN, one per other
//! node holding the LAN, to which the VXLAN sends every flooded frame (broadcast, multicast,
//! unknown unicast) since no multicast group does.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8slan_api::{LanSpec, VxlanFamily, VxlanMode, validate};
use serde::Serialize;
use tracing::{debug, instrument};

use crate::datapath::{Datapath, DatapathError, kerr};
use crate::kernel::{Kernel, LinkKind, Ns, VxlanParams};

/// What [`Datapath::set_peers`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PeerChanges {
    pub added: Vec<IpAddr>,
    pub removed: Vec<IpAddr>,
}

impl PeerChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

impl<K: Kernel> Datapath<K> {
    /// Make the LAN's VXLAN flood to exactly `peers` (the underlay addresses of the other nodes
    /// holding the LAN). The missing entries are added first, then the extra ones removed, so
    /// a member never loses the other peers while one joins or leaves. The entry of the
    /// multicast group and one to the node's own address are never made or touched. In
    /// multicast mode no peer is wanted: leftover unicast entries go.
    ///
    /// A LAN that is not programmed on this node (no namespace or no VXLAN yet) is left alone:
    /// nothing changes. A peer of the other family is refused before anything changes.
    #[instrument(skip_all, fields(lan = %spec.ns, peers = peers.len()))]
    pub fn set_peers(
        &self,
        spec: &LanSpec,
        peers: &BTreeSet<IpAddr>,
    ) -> Result<PeerChanges, DatapathError> {
        validate::validate_spec(spec)?;
        let wanted = match spec.vxlan_mode {
            VxlanMode::Multicast => BTreeSet::new(),
            VxlanMode::Unicast => checked_peers(spec, peers)?,
        };
        let _guard = self.serialise();
        let Some(params) = self.programmed_vxlan(spec)? else {
            debug!("LAN not programmed on this node: no peers to set");
            return Ok(PeerChanges::default());
        };
        if params.is_ipv6() != (spec.vxlan_family == VxlanFamily::Ipv6) {
            // The VXLAN of the old family is still there; `lan_up` replaces it, empty.
            debug!("the LAN's VXLAN is of the other family until lan_up replaces it");
            return Ok(PeerChanges::default());
        }
        let keep = |a: &IpAddr| Some(*a) == params.group || Some(*a) == params.local;
        let wanted: BTreeSet<IpAddr> = wanted.into_iter().filter(|a| !keep(a)).collect();
        let ns = Ns::Lan(spec.ns.clone());
        let have: BTreeSet<IpAddr> = self
            .kernel
            .flood_entries(&ns, &spec.vxlan)
            .map_err(|e| kerr(&spec.ns, e))?
            .into_iter()
            .filter(|a| !keep(a))
            .collect();
        let changes = PeerChanges {
            added: wanted.difference(&have).copied().collect(),
            removed: have.difference(&wanted).copied().collect(),
        };
        self.apply_peers(spec, &changes)?;
        if !changes.is_empty() {
            debug!(added = ?changes.added, removed = ?changes.removed, "peers changed");
        }
        Ok(changes)
    }

    /// The parameters of the LAN's VXLAN, `None` when the LAN has no namespace or no VXLAN.
    fn programmed_vxlan(&self, spec: &LanSpec) -> Result<Option<VxlanParams>, DatapathError> {
        let lan = spec.ns.as_str();
        if !self
            .kernel
            .lan_namespace_exists(lan)
            .map_err(|e| kerr(lan, e))?
        {
            return Ok(None);
        }
        let link = self
            .kernel
            .link(&Ns::Lan(lan.into()), &spec.vxlan)
            .map_err(|e| kerr(lan, e))?;
        Ok(link.and_then(|l| match l.kind {
            LinkKind::Vxlan(p) => Some(p),
            _ => None,
        }))
    }

    /// Adds first, then removes.
    fn apply_peers(&self, spec: &LanSpec, changes: &PeerChanges) -> Result<(), DatapathError> {
        let ns = Ns::Lan(spec.ns.clone());
        for dst in &changes.added {
            self.kernel
                .add_flood_entry(&ns, &spec.vxlan, *dst)
                .map_err(|e| kerr(&spec.ns, e))?;
        }
        for dst in &changes.removed {
            self.kernel
                .remove_flood_entry(&ns, &spec.vxlan, *dst)
                .map_err(|e| kerr(&spec.ns, e))?;
        }
        Ok(())
    }
}

/// `peers`, all of the LAN's family, or the error naming the first that is not.
fn checked_peers(
    spec: &LanSpec,
    peers: &BTreeSet<IpAddr>,
) -> Result<BTreeSet<IpAddr>, DatapathError> {
    let family = spec.vxlan_family;
    match peers.iter().find(|p| VxlanFamily::of(p) != family) {
        Some(peer) => Err(DatapathError::PeerFamily {
            lan: spec.ns.clone(),
            peer: *peer,
            family,
        }),
        None => Ok(peers.clone()),
    }
}
