//! Members learnt from the kubelet's pod-resources listing, and what follows from them:
//!
//! - a member's pod (namespace, name and UID, the UID from one `get pods`) is written onto this
//!   node's claim once;
//! - a member whose pod's namespace its LAN does not admit (not the LAN's own namespace, not in
//!   `spec.allowedNamespaces`) is *denied*: its claim is released, its host side torn down (for
//!   a VM spoke this removes the macvtap whose tap device reached the container at `Allocate`),
//!   its record removed, a Warning event names the LAN and the fix on the pod, and the spoke
//!   stays unhealthy here until that pod is gone;
//! - members that are gone are released (claim, host side, record);
//! - claims of this node that no member backs are dropped (orphans).
//!
//! [`plan`] decides all of it under the lock, free of I/O; the tracker carries it out in
//! background tasks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8slan_api::SpokeKind;
use tracing::{info, warn};

use super::state::{Core, Denial, State};
use crate::claim::{Claim, ClaimSnapshot, LeaseClaim};
use crate::lan::WatchedLan;
use crate::member::Member;
use crate::podresources::{KubeletId, Listing};
use crate::pods::{PodRef, PodWarning};
use crate::spoke::SpokeRequest;

/// Reason of the event on a pod whose spoke was refused for its namespace.
pub const NAMESPACE_DENIED_REASON: &str = "SpokeNamespaceDenied";

/// A member pod to write onto this node's claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// The claim as it should read, without the pod UID (looked up before writing).
    pub claim: Claim,
    pub pod: PodRef,
}

/// A member to tear down because its pod's namespace is not admitted.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Deny {
    pub spoke: String,
    pub kind: SpokeKind,
    pub pod: PodRef,
    pub lan: WatchedLan,
    pub claim: Option<LeaseClaim>,
}

/// A member that is gone.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Release {
    pub spoke: String,
    pub member: Member,
    pub claim: Option<LeaseClaim>,
    pub lan: Option<WatchedLan>,
}

/// Everything one look at the members calls for.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Work {
    pub record: Vec<Record>,
    pub deny: Vec<Deny>,
    pub release: Vec<Release>,
}

impl Work {
    fn is_empty(&self) -> bool {
        self.record.is_empty() && self.deny.is_empty() && self.release.is_empty()
    }
}

/// The message of the event on a denied pod.
pub(crate) fn denial_message(spoke: &str, pod: &PodRef, lan: &WatchedLan) -> String {
    let lan_ns = lan.key.split_once('/').map_or("", |(ns, _)| ns);
    format!(
        "spoke {spoke} of LAN {lan} belongs to namespace {lan_ns}; pod {pod} of namespace {ns} may not hold it, so its link was removed on this node. Run the pod in namespace {lan_ns}, or have the LAN's owner add {ns} to spec.allowedNamespaces of LAN {lan}, then recreate the pod",
        lan = lan.key,
        ns = pod.namespace,
    )
}

/// Applies the last pod-resources listing at `now`: which members left, which pods to write
/// onto claims, which members to deny. Updates the members, denials and recorded pods.
pub(crate) fn plan(st: &mut State, node: &str, now: Instant, grace: Duration) -> Work {
    let mut work = Work::default();
    let Some(holdings) = st.holdings.clone() else {
        return work; // never learnt anything from the kubelet: release nothing
    };
    for (spoke, member) in st.members.observe(&holdings, now, grace) {
        st.pods_recorded.remove(&spoke);
        st.denied.remove(&spoke);
        work.release.push(Release {
            claim: st.own_claim(&spoke, node).cloned(),
            lan: st.any_lan_of(&spoke).cloned(),
            spoke,
            member,
        });
    }
    let known: Vec<(String, SpokeKind, PodRef)> = st
        .members
        .iter()
        .filter_map(|(s, m)| Some((s.clone(), m.kind, m.pod.as_deref().and_then(PodRef::parse)?)))
        .collect();
    // The served LAN of each spoke, once per look (not one scan of every LAN per member).
    let lans = st.lans.clone();
    let served = served_lans(lans.as_deref());
    for (spoke, kind, pod) in known {
        if let Some(lan) = served.get(spoke.as_str()) {
            judge_member(st, node, &spoke, kind, pod, lan, &mut work);
        }
    }
    work
}

/// The served LAN of every spoke: the first served LAN, by key, that lists it (as the
/// inventory serves it).
fn served_lans(lans: Option<&BTreeMap<String, WatchedLan>>) -> BTreeMap<&str, &WatchedLan> {
    let mut out = BTreeMap::new();
    for lan in lans
        .into_iter()
        .flat_map(|l| l.values())
        .filter(|l| l.served())
    {
        for spoke in &lan.spec.spokes {
            out.entry(spoke.as_str()).or_insert(lan);
        }
    }
    out
}

/// Denies a member of a namespace its LAN does not admit, or schedules its pod for the claim.
fn judge_member(
    st: &mut State,
    node: &str,
    spoke: &str,
    kind: SpokeKind,
    pod: PodRef,
    lan: &WatchedLan,
    work: &mut Work,
) {
    let pod_s = pod.to_string();
    if st.denied.get(spoke).is_some_and(|d| d.pod == pod_s) {
        return;
    }
    if !lan.admits(&pod.namespace) {
        st.denied.insert(
            spoke.to_string(),
            Denial {
                pod: pod_s,
                lan: lan.key.clone(),
            },
        );
        st.pods_recorded.remove(spoke);
        work.deny.push(Deny {
            spoke: spoke.to_string(),
            kind,
            claim: st.own_claim(spoke, node).cloned(),
            pod,
            lan: lan.clone(),
        });
        return;
    }
    st.denied.remove(spoke);
    if st.pods_recorded.get(spoke) == Some(&pod_s) {
        return;
    }
    let Some(lan_ref) = k8slan_api::report::LanRef::parse(&lan.key) else {
        return;
    };
    st.pods_recorded.insert(spoke.to_string(), pod_s.clone());
    work.record.push(Record {
        claim: Claim {
            pod: Some(pod_s),
            ..Claim::new(spoke, node, lan_ref, kind)
        },
        pod,
    });
}

/// Claims of this node that no member backs.
pub(crate) fn orphan_claims(st: &State, node: &str) -> Vec<LeaseClaim> {
    st.claims
        .iter()
        .flat_map(|c| c.values())
        .filter(|c| c.claim.node == node && st.members.get(&c.claim.spoke).is_none())
        .cloned()
        .collect()
}

/// What the serving loop knows about the members' sources.
pub(super) struct MemberTracker {
    /// This node's claims were taken in as members (once, after start).
    adopted: bool,
    /// pod-resources stopped answering after it had answered (the kubelet may be restarting).
    listing_lost: bool,
    /// The kubelet that gave the last listing.
    kubelet: Option<KubeletId>,
    release_grace: Duration,
}

impl MemberTracker {
    pub fn new(release_grace: Duration) -> Self {
        Self {
            adopted: false,
            listing_lost: false,
            kubelet: None,
            release_grace,
        }
    }

    pub fn claims_changed(&mut self, core: &Core, claims: Option<ClaimSnapshot>) {
        let mut st = core.lock();
        if let (Some(snap), false) = (&claims, self.adopted) {
            // After an agent restart our own claims tell which spokes are held here, until
            // pod-resources confirms or the grace period ends.
            let now = Instant::now();
            for c in snap
                .values()
                .map(|c| &c.claim)
                .filter(|c| c.node == core.node)
            {
                st.members.adopt(&c.spoke, c.kind, c.pod.clone(), now);
            }
            self.adopted = true;
        }
        st.claims = claims;
    }

    pub fn listing_changed(&mut self, core: &Arc<Core>, listing: Option<Listing>) {
        {
            let mut st = core.lock();
            if self.kubelet_restarted(st.holdings.is_some(), listing.as_ref()) {
                // Its first listings can miss live members: release nothing for a while.
                st.members
                    .hold_releases(Instant::now() + self.release_grace);
            }
            st.holdings = listing.map(|l| l.holdings);
        }
        self.expire(core);
    }

    /// Whether `listing` comes from another kubelet than the last one: pod-resources answers
    /// again after an outage, or the socket file was replaced between two listings. Notes the
    /// listing's kubelet.
    fn kubelet_restarted(&mut self, had_listing: bool, listing: Option<&Listing>) -> bool {
        let Some(listing) = listing else {
            self.listing_lost |= had_listing;
            return false;
        };
        let back = !had_listing && std::mem::take(&mut self.listing_lost);
        let replaced = match (self.kubelet, listing.kubelet) {
            (Some(old), Some(new)) => old != new,
            _ => false,
        };
        if listing.kubelet.is_some() {
            self.kubelet = listing.kubelet;
        }
        if replaced {
            info!(
                "the kubelet's pod-resources socket was replaced (kubelet restart); holding releases"
            );
        }
        back || replaced
    }

    /// Applies the last pod-resources listing (see [`plan`]) and starts the work it calls for.
    pub fn expire(&mut self, core: &Arc<Core>) {
        let work = plan(
            &mut core.lock(),
            &core.node,
            Instant::now(),
            self.release_grace,
        );
        if work.is_empty() {
            return;
        }
        core.churn.record();
        for r in work.record {
            tokio::spawn(record_member(core.clone(), r));
        }
        for d in work.deny {
            warn!(spoke = %d.spoke, pod = %d.pod, lan = %d.lan.key, "spoke held from a namespace its LAN does not admit; tearing it down");
            tokio::spawn(deny(core.clone(), d));
            core.wake.notify_one();
        }
        for r in work.release {
            info!(spoke = %r.spoke, kind = %r.member.kind, pod = ?r.member.pod, "member gone; releasing the spoke");
            tokio::spawn(release(core.clone(), r));
        }
    }

    /// Drops claims of this node that no member backs (a release that failed, or a member that
    /// left while the agent was down). Only once the kubelet has answered and our claims were
    /// adopted, so nothing is dropped on partial knowledge.
    pub fn release_orphan_claims(&self, core: &Core) {
        if !self.adopted {
            return;
        }
        let st = core.lock();
        if st.holdings.is_none() {
            return;
        }
        let orphans = orphan_claims(&st, &core.node);
        drop(st);
        for seen in orphans {
            let claims = core.backends.claims.clone();
            tokio::spawn(async move {
                let spoke = &seen.claim.spoke;
                info!(spoke, "dropping a claim no member backs");
                if let Err(e) = claims.release(spoke, Some(&seen)).await {
                    warn!(spoke, error = %e, "cannot drop an orphan claim");
                }
            });
        }
    }
}

/// Looks up the pod's UID and writes the member onto the claim; on failure the pod counts as
/// not recorded, so that the next look tries again.
async fn record_member(core: Arc<Core>, r: Record) {
    let spoke = r.claim.spoke.clone();
    let result = async {
        let uid = core
            .backends
            .pods
            .uid(&r.pod)
            .await
            .map_err(|e| e.to_string())?;
        if uid.is_none() {
            info!(spoke, pod = %r.pod, "the API has no such pod (yet); recording it without a UID");
        }
        let claim = Claim {
            pod_uid: uid,
            ..r.claim.clone()
        };
        core.backends
            .claims
            .record_member(&claim)
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    if let Err(error) = result {
        warn!(spoke, pod = %r.pod, error, "cannot record the member pod on the claim; will retry");
        let mut st = core.lock();
        if st.pods_recorded.get(&spoke) == r.claim.pod.as_ref() {
            st.pods_recorded.remove(&spoke);
        }
    }
}

/// Tears a denied member's spoke down and tells its pod why.
async fn deny(core: Arc<Core>, d: Deny) {
    if let Err(e) = core
        .backends
        .claims
        .release(&d.spoke, d.claim.as_ref())
        .await
    {
        warn!(spoke = %d.spoke, error = %e, "cannot release the claim of a denied member");
    }
    tear_down(&core, &d.spoke, d.kind, &d.lan).await;
    let warning = PodWarning {
        reason: NAMESPACE_DENIED_REASON,
        message: denial_message(&d.spoke, &d.pod, &d.lan),
    };
    let uid = core.backends.pods.uid(&d.pod).await.ok().flatten();
    if let Err(e) = core
        .backends
        .pods
        .warn(&d.pod, uid.as_deref(), &warning)
        .await
    {
        warn!(spoke = %d.spoke, pod = %d.pod, error = %e, "cannot tell the pod why its spoke was removed");
    }
}

async fn release(core: Arc<Core>, r: Release) {
    if let Err(e) = core
        .backends
        .claims
        .release(&r.spoke, r.claim.as_ref())
        .await
    {
        warn!(spoke = %r.spoke, error = %e, "cannot release the claim");
    }
    match &r.lan {
        Some(lan) => tear_down(&core, &r.spoke, r.member.kind, lan).await,
        None => core.remove_record(&r.spoke).await,
    }
}

/// Removes the spoke's host side, then its record (a record naming a link that is gone binds
/// nothing: the CNI plugins check the link's index).
async fn tear_down(core: &Core, spoke: &str, kind: SpokeKind, lan: &WatchedLan) {
    release_host_side(core, spoke, kind, lan).await;
    core.remove_record(spoke).await;
}

async fn release_host_side(core: &Core, spoke: &str, kind: SpokeKind, lan: &WatchedLan) {
    let Some(underlay) = lan.spec.underlay_for(&core.node, core.uplink()) else {
        return;
    };
    let req = SpokeRequest {
        lan: &lan.key,
        spec: &lan.spec,
        underlay,
        spoke,
        kind,
    };
    if let Err(e) = core.backends.preparer.release(req).await {
        warn!(spoke, lan = %lan.key, error = %e, "cannot release the spoke's host side");
    }
}

#[cfg(test)]
mod tests {
    use k8slan_api::LanSpec;
    use k8slan_api::report::LanRef;

    use super::*;
    use crate::member::{Holding, Holdings};

    const NODE: &str = "node-a";
    const GRACE: Duration = Duration::from_secs(60);

    fn lan(allowed: &[&str]) -> WatchedLan {
        let spec: LanSpec = serde_json::from_value(serde_json::json!({
            "ns": "knl", "bridge": "br0", "vxlan": "vx0", "vni": 1,
            "defaultVxlanDev": "eth1", "spokes": ["s1", "s2"], "allowedNamespaces": allowed,
        }))
        .unwrap();
        WatchedLan {
            key: "lab/lan1".into(),
            generation: 1,
            spec,
            accepted: Some(true),
        }
    }

    fn state(allowed: &[&str], held: &[(&str, SpokeKind, &str)]) -> State {
        let l = lan(allowed);
        let claims = held
            .iter()
            .map(|(s, k, _)| {
                let claim = Claim::new(s, NODE, LanRef::new("lab", "lan1"), *k);
                (
                    s.to_string(),
                    LeaseClaim {
                        claim,
                        uid: Some(format!("u-{s}")),
                    },
                )
            })
            .collect::<BTreeMap<_, _>>();
        let holdings = held
            .iter()
            .map(|(s, k, p)| {
                (
                    s.to_string(),
                    Holding {
                        kind: *k,
                        pod: p.to_string(),
                    },
                )
            })
            .collect();
        State {
            lans: Some(Arc::new(BTreeMap::from([(l.key.clone(), l)]))),
            claims: Some(Arc::new(claims)),
            holdings: Some(holdings),
            ..State::default()
        }
    }

    #[test]
    fn admitted_pods_are_recorded_once() {
        let mut st = state(
            &["lab2"],
            &[
                ("s1", SpokeKind::Veth, "lab/p1"),
                ("s2", SpokeKind::Mac, "lab2/vm"),
            ],
        );
        let work = plan(&mut st, NODE, Instant::now(), GRACE);
        assert!(work.deny.is_empty() && work.release.is_empty());
        let pods: Vec<_> = work
            .record
            .iter()
            .map(|r| r.claim.pod.clone().unwrap())
            .collect();
        assert_eq!(pods, ["lab/p1", "lab2/vm"]);
        assert_eq!(work.record[1].claim.kind, SpokeKind::Mac);
        assert!(plan(&mut st, NODE, Instant::now(), GRACE).record.is_empty());
    }

    #[test]
    fn a_pod_of_a_foreign_namespace_is_denied_once_and_never_recorded() {
        let mut st = state(&[], &[("s1", SpokeKind::Mac, "intruder/vm")]);
        let work = plan(&mut st, NODE, Instant::now(), GRACE);
        assert!(work.record.is_empty());
        assert_eq!(work.deny.len(), 1);
        let d = &work.deny[0];
        assert_eq!((d.spoke.as_str(), d.kind), ("s1", SpokeKind::Mac));
        assert_eq!(
            d.claim.as_ref().and_then(|c| c.uid.as_deref()),
            Some("u-s1")
        );
        assert_eq!(st.denied["s1"].pod, "intruder/vm");
        // Denied once; the spoke stays denied while that pod holds it.
        assert_eq!(plan(&mut st, NODE, Instant::now(), GRACE), Work::default());
        assert!(st.denied.contains_key("s1"));
        // The pod goes: the member is released and the denial lifted.
        st.holdings = Some(Holdings::new());
        let work = plan(&mut st, NODE, Instant::now(), GRACE);
        assert_eq!(work.release.len(), 1);
        assert!(st.denied.is_empty());
    }

    #[test]
    fn the_event_names_the_lan_its_namespace_and_the_fix() {
        let pod = PodRef::parse("intruder/vm").unwrap();
        let msg = denial_message("s1", &pod, &lan(&[]));
        for part in [
            "s1",
            "lab/lan1",
            "namespace lab",
            "intruder/vm",
            "spec.allowedNamespaces",
        ] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
    }

    #[test]
    fn claims_without_members_are_orphans() {
        let mut st = state(&[], &[("s1", SpokeKind::Veth, "lab/p")]);
        assert_eq!(orphan_claims(&st, NODE).len(), 1);
        st.members
            .reserve("s1", SpokeKind::Veth, Instant::now())
            .unwrap();
        assert!(orphan_claims(&st, NODE).is_empty());
        assert!(orphan_claims(&st, "node-b").is_empty());
    }

    #[test]
    fn a_spoke_is_judged_by_the_first_served_lan_that_lists_it() {
        let mut rejected = lan(&["intruder"]);
        rejected.key = "a/rejected".into();
        rejected.accepted = Some(false);
        let mut late = lan(&["intruder"]);
        late.key = "z/late".into();
        let own = lan(&[]);
        let lans: BTreeMap<String, WatchedLan> = [rejected, own, late]
            .into_iter()
            .map(|l| (l.key.clone(), l))
            .collect();
        let served = served_lans(Some(&lans));
        assert_eq!(served["s1"].key, "lab/lan1");
        assert!(!served["s1"].admits("intruder"));
        assert!(served_lans(None).is_empty());
    }

    #[test]
    fn nothing_happens_before_the_kubelet_answered() {
        let mut st = state(&[], &[("s1", SpokeKind::Veth, "intruder/p")]);
        st.holdings = None;
        assert_eq!(plan(&mut st, NODE, Instant::now(), GRACE), Work::default());
    }
}
