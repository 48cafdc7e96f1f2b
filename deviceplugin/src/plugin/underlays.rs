//! Probing the underlay devices the LANs name for this node. A `HostLinks` may ask the kernel
//! and take its time, so probes run on the blocking pool, one at a time, and their result comes
//! back to the serving loop through a channel.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8slan_api::report::UnderlayAddresses;
use tokio::sync::mpsc;
use tracing::warn;

use super::state::Core;
use crate::inventory;
use crate::lan::LanSnapshot;
use crate::underlay::HostLinks;

/// Presence of each underlay device, by name.
pub(super) type Probed = BTreeMap<String, bool>;
/// The addresses of each present underlay device, by name.
pub(super) type Addressed = BTreeMap<String, UnderlayAddresses>;

/// Asks `links` about every device of `needed`; a device whose lookup fails keeps its last
/// answer in `known` (or stays unknown), so a failing lookup never withdraws anything.
fn probe_all(
    links: &dyn HostLinks,
    needed: impl IntoIterator<Item = String>,
    known: &Probed,
) -> Probed {
    needed
        .into_iter()
        .filter_map(|d| match links.exists(&d) {
            Ok(present) => Some((d, present)),
            Err(e) => {
                warn!(underlay = %d, error = %e, "cannot tell whether the underlay exists; keeping the last answer");
                known.get(&d).map(|&present| (d, present))
            }
        })
        .collect()
}

/// The addresses of every present device of `probed`; a device whose lookup fails keeps its
/// last addresses in `known`.
fn address_all(links: &dyn HostLinks, probed: &Probed, known: &Addressed) -> Addressed {
    probed
        .iter()
        .filter(|(_, present)| **present)
        .filter_map(|(d, _)| match links.addresses(d) {
            Ok(all) => Some((d.clone(), UnderlayAddresses::pick(all))),
            Err(e) => {
                warn!(underlay = %d, error = %e, "cannot list the underlay's addresses; keeping the last ones");
                known.get(d).map(|a| (d.clone(), *a))
            }
        })
        .collect()
}

pub(super) struct Prober {
    tx: mpsc::UnboundedSender<(Probed, Addressed)>,
    probing: bool,
}

impl Prober {
    pub fn new(tx: mpsc::UnboundedSender<(Probed, Addressed)>) -> Self {
        Self { tx, probing: false }
    }

    /// Whether a served LAN names an underlay that was never probed.
    pub fn missing(
        &self,
        node: &str,
        uplink: Option<&str>,
        lans: &LanSnapshot,
        underlays: &Probed,
    ) -> bool {
        inventory::underlays_needed(node, uplink, lans.values())
            .iter()
            .any(|d| !underlays.contains_key(d))
    }

    /// Starts a probe unless one is running.
    pub fn probe(&mut self, core: &Core) {
        if self.probing {
            return;
        }
        let (lans, known, known_addresses) = {
            let st = core.lock();
            (st.lans.clone(), st.underlays.clone(), st.addresses.clone())
        };
        let Some(lans) = lans else { return };
        let needed = inventory::underlays_needed(&core.node, core.uplink(), lans.values());
        let links: Arc<dyn HostLinks> = core.backends.links.clone();
        let tx = self.tx.clone();
        self.probing = true;
        tokio::task::spawn_blocking(move || {
            let probed = probe_all(links.as_ref(), needed, &known);
            let addressed = address_all(links.as_ref(), &probed, &known_addresses);
            let _ = tx.send((probed, addressed));
        });
    }

    pub fn probed(&mut self, core: &Core, (underlays, addresses): (Probed, Addressed)) {
        self.probing = false;
        let mut st = core.lock();
        st.underlays = underlays;
        st.addresses = addresses;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    struct Links(Mutex<BTreeMap<String, std::io::Result<bool>>>);

    impl HostLinks for Links {
        fn exists(&self, ifname: &str) -> std::io::Result<bool> {
            match self.0.lock().unwrap().get(ifname) {
                Some(Ok(b)) => Ok(*b),
                Some(Err(e)) => Err(std::io::Error::new(e.kind(), e.to_string())),
                None => Ok(false),
            }
        }
    }

    #[test]
    fn a_failing_lookup_keeps_the_last_answer_or_stays_unknown() {
        let links = Links(Mutex::new(BTreeMap::from([
            ("eth1".to_string(), Ok(true)),
            (
                "eth2".to_string(),
                Err(std::io::Error::other("netlink down")),
            ),
            (
                "eth3".to_string(),
                Err(std::io::Error::other("netlink down")),
            ),
        ])));
        let known = Probed::from([("eth2".to_string(), true)]);
        let needed = ["eth1", "eth2", "eth3", "eth4"].map(String::from);
        let got = probe_all(&links, needed, &known);
        assert_eq!(
            got,
            Probed::from([
                ("eth1".to_string(), true),
                ("eth2".to_string(), true),
                ("eth4".to_string(), false),
            ])
        );
    }
}
