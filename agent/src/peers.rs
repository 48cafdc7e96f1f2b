//! The peers of this node's unicast LANs: for every served LAN, the underlay addresses of the
//! other nodes taking part ([`k8slan_api::peer`]), programmed with `Datapath::set_peers` on every
//! change of the LANs, the claims (a node takes part while it holds a spoke) or the node reports
//! (where each node publishes its underlay addresses), whenever this node's datapath may have
//! made or replaced a VXLAN (`Node::replumbed`), and every `resync` period. A LAN that is
//! not programmed here is left alone by `set_peers`; a multicast LAN wants no peers, so entries
//! left by a switch from unicast go.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8slan_api::peer;
use k8slan_api::report::LanRef;
use k8slan_api::{LanSpec, VxlanMode};
use k8slan_deviceplugin::claim::ClaimSnapshot;
use k8slan_deviceplugin::lan::LanSnapshot;
use k8slan_deviceplugin::report::ReportSnapshot;
use k8slan_netagent::Kernel;
use tokio::sync::watch;
use tracing::{debug, info, instrument, warn};

use crate::lans::Node;

/// The peers one LAN should have on this node.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub lan: String,
    pub spec: LanSpec,
    pub peers: BTreeSet<IpAddr>,
}

/// The peers of every served LAN on `node`. Pure.
pub fn plan(
    node: &str,
    lans: &LanSnapshot,
    claims: &ClaimSnapshot,
    reports: &ReportSnapshot,
) -> Vec<Wanted> {
    let reports = || reports.iter().map(|(n, r)| (n.as_str(), r));
    let claims = || claims.values().map(|c| &c.claim);
    lans.values()
        .filter(|l| l.served())
        .map(|l| {
            let peers = match (l.spec.vxlan_mode, LanRef::parse(&l.key)) {
                (VxlanMode::Unicast, Some(lan)) => {
                    peer::peers_of(node, &peer::members(&lan, &l.spec, reports(), claims()))
                }
                _ => BTreeSet::new(),
            };
            Wanted {
                lan: l.key.clone(),
                spec: l.spec.clone(),
                peers,
            }
        })
        .collect()
}

/// What the loop watches; each is `None` until its first complete list.
pub struct Sources {
    pub lans: watch::Receiver<Option<LanSnapshot>>,
    pub claims: watch::Receiver<Option<ClaimSnapshot>>,
    pub reports: watch::Receiver<Option<ReportSnapshot>>,
}

/// Programs [`plan`] after every change of a source and every `resync`, until a source closes.
pub async fn peer_loop<K: Kernel + 'static>(
    node: Arc<Node<K>>,
    mut src: Sources,
    resync: Duration,
) {
    loop {
        let lans = src.lans.borrow_and_update().clone();
        let claims = src.claims.borrow_and_update().clone();
        let reports = src.reports.borrow_and_update().clone();
        // Never act on a partial view: no claims listed yet is not "no peers".
        if let (Some(l), Some(c), Some(r)) = (lans, claims, reports) {
            let wanted = plan(&node.name, &l, &c, &r);
            program(node.clone(), wanted).await;
        }
        let closed = tokio::select! {
            c = src.lans.changed() => c.is_err(),
            c = src.claims.changed() => c.is_err(),
            c = src.reports.changed() => c.is_err(),
            () = node.replumbed.notified() => false,
            () = tokio::time::sleep(resync) => false,
        };
        if closed {
            return;
        }
    }
}

#[instrument(skip_all, fields(node = %node.name, lans = wanted.len()))]
async fn program<K: Kernel + 'static>(node: Arc<Node<K>>, wanted: Vec<Wanted>) {
    let result = tokio::task::spawn_blocking(move || {
        for w in wanted {
            let outcome = set(&node, &w);
            node.metrics.action("set_peers", outcome);
        }
    })
    .await;
    if let Err(e) = result {
        warn!(error = %e, "programming the peers panicked");
    }
}

/// Sets one LAN's peers; returns the metric result (`ok`, `changed`, `error`).
fn set<K: Kernel>(node: &Node<K>, w: &Wanted) -> &'static str {
    match node.dp.set_peers(&w.spec, &w.peers) {
        Ok(c) if c.is_empty() => {
            debug!(lan = %w.lan, peers = w.peers.len(), "peers in line");
            "ok"
        }
        Ok(c) => {
            info!(lan = %w.lan, added = ?c.added, removed = ?c.removed, "peers changed");
            "changed"
        }
        Err(e) => {
            warn!(lan = %w.lan, error = %e, "cannot set the LAN's peers");
            "error"
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8slan_api::SpokeKind;
    use k8slan_api::report::{Claim, NodeReport, UnderlayAddresses};
    use k8slan_deviceplugin::claim::LeaseClaim;
    use k8slan_deviceplugin::lan::WatchedLan;

    use super::*;

    fn lan(key: &str, mode: &str) -> (String, WatchedLan) {
        let spec = serde_json::from_value(serde_json::json!({
            "ns": key.replace('/', "-"), "bridge": "br0", "vxlan": "vx0", "vni": 10,
            "vxlanMode": mode, "defaultVxlanDev": "eth1", "spokes": ["a", "b"],
        }))
        .unwrap();
        let watched = WatchedLan {
            key: key.into(),
            generation: 1,
            spec,
            accepted: Some(true),
        };
        (key.to_string(), watched)
    }

    fn claim(spoke: &str, node: &str, lan: &str) -> (String, LeaseClaim) {
        let lan = LanRef::parse(lan).unwrap();
        let claim = Claim::new(spoke, node, lan, SpokeKind::Veth);
        (spoke.to_string(), LeaseClaim { claim, uid: None })
    }

    fn reports() -> ReportSnapshot {
        let r = |v6: &str| NodeReport {
            underlays: BTreeMap::from([(
                "eth1".to_string(),
                UnderlayAddresses {
                    ipv6: Some(v6.parse().unwrap()),
                    ipv4: None,
                },
            )]),
            ..NodeReport::default()
        };
        Arc::new(BTreeMap::from([
            ("w1".to_string(), r("fe80::1")),
            ("w2".to_string(), r("fe80::2")),
        ]))
    }

    #[test]
    fn unicast_lans_flood_to_the_other_members_and_multicast_lans_to_nobody() {
        let lans = Arc::new(BTreeMap::from([
            lan("t/u", "unicast"),
            lan("t/m", "multicast"),
        ]));
        let claims = Arc::new(BTreeMap::from([
            claim("a", "w1", "t/u"),
            claim("b", "w2", "t/u"),
        ]));
        let wanted = plan("w1", &lans, &claims, &reports());
        let by_lan: BTreeMap<&str, &BTreeSet<IpAddr>> =
            wanted.iter().map(|w| (w.lan.as_str(), &w.peers)).collect();
        assert_eq!(by_lan["t/u"], &BTreeSet::from(["fe80::2".parse().unwrap()]));
        assert!(by_lan["t/m"].is_empty());
        // w2's member leaves: w1 has no peer left.
        let claims = Arc::new(BTreeMap::from([claim("a", "w1", "t/u")]));
        let wanted = plan("w1", &lans, &claims, &reports());
        assert!(wanted.iter().all(|w| w.peers.is_empty()));
    }
}
