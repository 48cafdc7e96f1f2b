//! Node-local LAN reconciliation: keeps what `Allocate` built on this node in line with the LAN
//! resources. The device plugin creates a LAN's namespace on the first allocation; from then on
//! this loop applies live changes (VNI, group, port, underlay), repairs drift, removes spokes
//! that left the spec, and removes the namespaces of LANs that were deleted or are no longer
//! accepted — within one watch event, without any finalizer. It also removes the prepared-spoke
//! records (what the CNI plugins may bind) of spokes this node no longer serves.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8slan_api::LanSpec;
use k8slan_deviceplugin::lan::LanSnapshot;
use k8slan_deviceplugin::prepared::{Listed, PreparedDir};
use k8slan_netagent::{Datapath, Kernel, NodeLan};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, instrument, warn};

use crate::metrics::Metrics;

/// One thing to change on this node.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// The LAN is programmed here: bring it in line with its spec (idempotent `lan_up`).
    Refresh { lan: String, spec: LanSpec },
    /// A spoke port is present for a spoke that the LAN no longer lists.
    RemoveSpoke {
        lan: String,
        spec: LanSpec,
        spoke: String,
    },
    /// A LAN namespace that belongs to no served LAN: deleted, or not accepted.
    RemoveOrphan { ns: String },
}

/// What this node must do, given the served LANs and the LAN namespaces it has. Pure.
pub fn plan(lans: &LanSnapshot, present: &[NodeLan]) -> Vec<Action> {
    let mut actions = Vec::new();
    for view in present {
        let owner = lans
            .values()
            .filter(|l| l.served())
            .find(|l| l.spec.ns == view.ns);
        match owner {
            None => actions.push(Action::RemoveOrphan {
                ns: view.ns.clone(),
            }),
            Some(lan) => {
                actions.push(Action::Refresh {
                    lan: lan.key.clone(),
                    spec: lan.spec.clone(),
                });
                let listed: BTreeSet<&str> = lan.spec.spokes.iter().map(String::as_str).collect();
                for spoke in &view.spokes {
                    if !listed.contains(spoke.spoke.as_str()) {
                        actions.push(Action::RemoveSpoke {
                            lan: lan.key.clone(),
                            spec: lan.spec.clone(),
                            spoke: spoke.spoke.clone(),
                        });
                    }
                }
            }
        }
    }
    actions
}

/// The records of spokes this node does not serve: the record's LAN is gone or not served,
/// no longer lists the spoke or now lives in another namespace, or the file is no valid record.
/// Records written after `since` (when `lans` was taken) are left for the next round: an
/// `Allocate` may have served a LAN newer than this snapshot. Pure.
pub fn stale_records(lans: &LanSnapshot, listed: &[Listed], since: SystemTime) -> Vec<String> {
    let served = |l: &Listed| {
        let Some(r) = &l.record else { return false };
        let key = format!("{}/{}", r.lan_namespace, r.lan_name);
        lans.get(&key).is_some_and(|lan| {
            lan.served() && lan.spec.ns == r.netns && lan.spec.spokes.contains(&r.spoke)
        }) && r.spoke == l.spoke
    };
    listed
        .iter()
        .filter(|l| l.modified < since && !served(l))
        .map(|l| l.spoke.clone())
        .collect()
}

/// What the reconciler works on.
pub struct Node<K> {
    pub dp: Arc<Datapath<K>>,
    pub name: String,
    pub records: PreparedDir,
    pub metrics: Arc<Metrics>,
    /// Woken whenever the datapath may have made or replaced a LAN's VXLAN (a refresh that
    /// changed something, a prepared spoke), which then needs its peers again.
    pub replumbed: Arc<Notify>,
}

/// Runs [`plan`] on every LAN change and every `resync` period until `lans` closes.
pub async fn reconcile_loop<K: Kernel + 'static>(
    node: Arc<Node<K>>,
    mut lans: watch::Receiver<Option<LanSnapshot>>,
    resync: Duration,
) {
    loop {
        let snapshot = lans.borrow_and_update().clone();
        let taken = SystemTime::now();
        // Never act before the first complete list: an empty cache is not "every LAN deleted".
        if let Some(snapshot) = snapshot {
            reconcile(node.clone(), snapshot, taken).await;
        }
        tokio::select! {
            changed = lans.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(resync) => {}
        }
    }
}

#[instrument(skip_all, fields(node = %node.name, lans = snapshot.len()))]
async fn reconcile<K: Kernel + 'static>(
    node: Arc<Node<K>>,
    snapshot: LanSnapshot,
    taken: SystemTime,
) {
    let result = tokio::task::spawn_blocking(move || {
        let present = match node.dp.show() {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot list the LAN namespaces of this node");
                return;
            }
        };
        node.metrics
            .lan_namespaces
            .set(i64::try_from(present.len()).unwrap_or(i64::MAX));
        for action in plan(&snapshot, &present) {
            let (name, result) = apply(&node, action);
            node.metrics.action(name, result);
        }
        remove_stale_records(&node, &snapshot, taken);
    })
    .await;
    if let Err(e) = result {
        warn!(error = %e, "LAN reconciliation panicked");
    }
}

fn remove_stale_records<K>(node: &Node<K>, snapshot: &LanSnapshot, taken: SystemTime) {
    let listed = match node.records.list() {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "cannot list the prepared-spoke records");
            return;
        }
    };
    for spoke in stale_records(snapshot, &listed, taken) {
        let result = match node.records.remove(&spoke) {
            Ok(_) => {
                info!(%spoke, "removed the record of a spoke this node does not serve");
                "changed"
            }
            Err(e) => {
                warn!(%spoke, error = %e, "cannot remove a stale prepared-spoke record");
                "error"
            }
        };
        node.metrics.action("remove_record", result);
    }
}

/// Carries out one action; returns its metric name and result (`ok`, `changed`, `error`).
fn apply<K: Kernel>(node: &Node<K>, action: Action) -> (&'static str, &'static str) {
    let dp = &node.dp;
    match action {
        Action::Refresh { lan, spec } => match dp.lan_up(&spec, &node.name) {
            Ok(state) if state.changes.is_empty() => {
                debug!(%lan, "LAN in line with its spec");
                ("refresh", "ok")
            }
            Ok(state) => {
                info!(%lan, changes = ?state.changes, "LAN brought in line with its spec");
                node.replumbed.notify_one();
                ("refresh", "changed")
            }
            Err(e) => {
                warn!(%lan, error = %e, "cannot bring the LAN in line with its spec");
                ("refresh", "error")
            }
        },
        Action::RemoveSpoke { lan, spec, spoke } => match dp.spoke_down(&spec, &spoke) {
            Ok(removed) => {
                if let Err(e) = node.records.remove(&spoke) {
                    warn!(%lan, %spoke, error = %e, "cannot remove the record of a spoke that left the LAN");
                }
                info!(%lan, %spoke, ?removed, "removed a spoke that left the LAN");
                ("remove_spoke", "changed")
            }
            Err(e) => {
                warn!(%lan, %spoke, error = %e, "cannot remove a spoke that left the LAN");
                ("remove_spoke", "error")
            }
        },
        Action::RemoveOrphan { ns } => match dp.remove_orphan(&ns) {
            Ok(removed) => {
                info!(%ns, ?removed, "removed the namespace of a LAN that is gone");
                ("remove_orphan", "changed")
            }
            Err(e) => {
                warn!(%ns, error = %e, "cannot remove the namespace of a LAN that is gone");
                ("remove_orphan", "error")
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use k8slan_deviceplugin::lan::WatchedLan;
    use k8slan_netagent::SpokeView;

    fn spec(ns: &str, spokes: &[&str]) -> LanSpec {
        serde_json::from_value(serde_json::json!({
            "ns": ns, "bridge": "br0", "vxlan": "vx0", "vni": 10,
            "defaultVxlanDev": "eth1", "spokes": spokes,
        }))
        .unwrap()
    }

    fn lans(entries: &[(&str, LanSpec, Option<bool>)]) -> LanSnapshot {
        Arc::new(
            entries
                .iter()
                .map(|(key, spec, accepted)| {
                    (
                        key.to_string(),
                        WatchedLan {
                            key: key.to_string(),
                            generation: 1,
                            spec: spec.clone(),
                            accepted: *accepted,
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
        )
    }

    fn present(ns: &str, spokes: &[&str]) -> NodeLan {
        NodeLan {
            ns: ns.into(),
            bridges: vec![],
            vxlans: vec![],
            spokes: spokes
                .iter()
                .map(|s| SpokeView {
                    spoke: s.to_string(),
                    port: None,
                    host_end: None,
                    macvtap: None,
                    tap_node: None,
                })
                .collect(),
            other: vec![],
            peers: vec![],
        }
    }

    #[test]
    fn programmed_lans_are_refreshed_and_removed_spokes_go() {
        let a = spec("lan-a", &["srl"]);
        let actions = plan(
            &lans(&[("ns/a", a.clone(), Some(true))]),
            &[present("lan-a", &["srl", "old"])],
        );
        assert_eq!(
            actions,
            vec![
                Action::Refresh {
                    lan: "ns/a".into(),
                    spec: a.clone()
                },
                Action::RemoveSpoke {
                    lan: "ns/a".into(),
                    spec: a,
                    spoke: "old".into()
                },
            ]
        );
    }

    #[test]
    fn namespaces_of_deleted_or_rejected_lans_are_orphans() {
        let actions = plan(
            &lans(&[("ns/b", spec("lan-b", &["x"]), Some(false))]),
            &[present("lan-b", &["x"]), present("gone", &[])],
        );
        assert_eq!(
            actions,
            vec![
                Action::RemoveOrphan { ns: "lan-b".into() },
                Action::RemoveOrphan { ns: "gone".into() },
            ]
        );
    }

    #[test]
    fn a_lan_not_yet_judged_is_served_and_unprogrammed_lans_are_left_alone() {
        let c = spec("lan-c", &["x"]);
        let actions = plan(
            &lans(&[
                ("ns/c", c.clone(), None),
                ("ns/d", spec("lan-d", &["y"]), Some(true)),
            ]),
            &[present("lan-c", &["x"])],
        );
        assert_eq!(
            actions,
            vec![Action::Refresh {
                lan: "ns/c".into(),
                spec: c
            }]
        );
    }

    fn listed(spoke: &str, lan: &str, netns: &str, age: Duration) -> Listed {
        let (ns, name) = lan.split_once('/').unwrap();
        Listed {
            spoke: spoke.into(),
            record: Some(k8slan_api::prepared::PreparedSpoke {
                lan_namespace: ns.into(),
                lan_name: name.into(),
                netns: netns.into(),
                spoke: spoke.into(),
                kind: k8slan_api::SpokeKind::Veth,
                link: spoke.into(),
                ifindex: 9,
                allowed_namespaces: vec![],
            }),
            modified: SystemTime::now() - age,
        }
    }

    #[test]
    fn records_of_spokes_not_served_are_stale_but_fresh_ones_wait() {
        let old = Duration::from_secs(60);
        let snapshot = lans(&[
            ("ns/a", spec("lan-a", &["srl", "vm"]), Some(true)),
            ("ns/b", spec("lan-b", &["x"]), Some(false)),
        ]);
        let mut junk = listed("junk", "ns/a", "lan-a", old);
        junk.record = None;
        // Written after the snapshot was taken: an Allocate may serve a newer LAN.
        let mut fresh = listed("new", "ns/new", "lan-n", old);
        fresh.modified = SystemTime::now() + Duration::from_secs(5);
        let all = [
            listed("srl", "ns/a", "lan-a", old),     // served
            listed("gone", "ns/a", "lan-a", old),    // left the LAN
            listed("vm", "ns/a", "elsewhere", old),  // the LAN moved namespace
            listed("x", "ns/b", "lan-b", old),       // LAN rejected
            listed("y", "ns/deleted", "lan-y", old), // LAN deleted
            fresh,
            junk,
        ];
        let since = SystemTime::now();
        assert_eq!(
            stale_records(&snapshot, &all, since),
            ["gone", "vm", "x", "y", "junk"]
        );
    }

    #[test]
    fn the_accepted_owner_of_a_contested_namespace_wins() {
        let winner = spec("shared", &["a"]);
        let actions = plan(
            &lans(&[
                ("ns/loser", spec("shared", &["b"]), Some(false)),
                ("ns/winner", winner.clone(), Some(true)),
            ]),
            &[present("shared", &["a"])],
        );
        assert_eq!(
            actions,
            vec![Action::Refresh {
                lan: "ns/winner".into(),
                spec: winner
            }]
        );
    }
}
