//! A dead node does not hold spokes forever: the controller releases (deletes) a spoke claim
//! Lease that no live member backs, which a node's agent can no longer do itself.
//!
//! [`decide`] is pure. A claim is released when
//! - its node was deleted (`kubectl delete node` after a node loss);
//! - the pod it records no longer exists in the API, has finished (`Succeeded`/`Failed`: the
//!   kubelet has freed its devices), or exists with another UID (`k8slan.io/pod-uid`; without
//!   that annotation: on another node than the claim's, or not scheduled) — a pod with another
//!   identity only once it is older than the grace period, since the agent records the new pod
//!   within seconds of its Allocate;
//! - it records no pod at all once it is older than the grace period (the agent writes the pod
//!   within seconds of Allocate).
//!
//! A partitioned node whose pod still exists (same UID, or same node) keeps its claim, so a spoke
//! never gets two members. Every release is a delete with the Lease's `uid` and
//! `resourceVersion` as preconditions (a claim that changed since it was judged is judged again
//! next time), and is told as a `ClaimReleased` event on the LAN.
//!
//! [`run`] sweeps every claim in the controller's Lease cache periodically and at once when a
//! Node is deleted; it looks up only the pods of claims whose node still exists (one `get`).

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use k8slan_api::LAN;
use k8slan_api::naming::LEASE_ROLE_LABEL;
use k8slan_api::report::{Claim, ROLE_CLAIM};
use kube::api::{DeleteParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::Notify;
use tracing::instrument;

/// Default of [`Settings::period`].
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(30);
/// Default of [`Settings::grace`].
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

/// What the API says about the pod a claim records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodState {
    Missing,
    Present {
        uid: String,
        /// `spec.nodeName`, once scheduled.
        node: Option<String>,
        created: Option<Timestamp>,
        /// Phase `Succeeded` or `Failed`.
        finished: bool,
    },
}

/// Everything [`decide`] looks at for one claim.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub claim: &'a Claim,
    /// The `k8slan.io/pod-uid` annotation, if the agent wrote one.
    pub pod_uid: Option<&'a str>,
    /// The Lease's `creationTimestamp`.
    pub claimed_at: Option<Timestamp>,
    pub node_exists: bool,
    /// `None` when not looked up (the node is gone, or the claim records no pod).
    pub pod: Option<PodState>,
    pub now: Timestamp,
    pub grace: Duration,
}

/// Why a claim is released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    NodeDeleted,
    NoPodRecorded,
    PodGone,
    PodFinished,
    PodReplaced { uid: String },
    PodElsewhere { node: Option<String> },
}

impl Release {
    /// Short reason, for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Release::NodeDeleted => "NodeDeleted",
            Release::NoPodRecorded => "NoPodRecorded",
            Release::PodGone => "PodGone",
            Release::PodFinished => "PodFinished",
            Release::PodReplaced { .. } => "PodReplaced",
            Release::PodElsewhere { .. } => "PodElsewhere",
        }
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Release::NodeDeleted => write!(f, "its node was deleted"),
            Release::NoPodRecorded => {
                write!(f, "no pod was recorded on it within the grace period")
            }
            Release::PodGone => write!(f, "its pod no longer exists"),
            Release::PodFinished => write!(f, "its pod has finished"),
            Release::PodReplaced { uid } => {
                write!(
                    f,
                    "its pod was replaced by another pod of the same name (uid {uid})"
                )
            }
            Release::PodElsewhere { node: Some(n) } => {
                write!(f, "a pod of that name now runs on node {n}")
            }
            Release::PodElsewhere { node: None } => {
                write!(f, "a pod of that name exists but is not scheduled")
            }
        }
    }
}

fn older_than(t: Option<Timestamp>, now: Timestamp, grace: Duration) -> bool {
    let grace = SignedDuration::try_from(grace).unwrap_or(SignedDuration::MAX);
    t.is_some_and(|t| now.duration_since(t) > grace)
}

/// Whether `facts.claim` is to be released, and why.
pub fn decide(facts: &Facts<'_>) -> Option<Release> {
    if !facts.node_exists {
        return Some(Release::NodeDeleted);
    }
    if facts.claim.pod.is_none() {
        return older_than(facts.claimed_at, facts.now, facts.grace)
            .then_some(Release::NoPodRecorded);
    }
    let (uid, node, created, finished) = match facts.pod.as_ref()? {
        PodState::Missing => return Some(Release::PodGone),
        PodState::Present {
            uid,
            node,
            created,
            finished,
        } => (uid, node, *created, *finished),
    };
    let same = match facts.pod_uid {
        Some(recorded) => recorded == uid,
        None => node.as_deref() == Some(facts.claim.node.as_str()),
    };
    if same {
        return finished.then_some(Release::PodFinished);
    }
    if !older_than(created, facts.now, facts.grace) {
        return None;
    }
    Some(match facts.pod_uid {
        Some(_) => Release::PodReplaced { uid: uid.clone() },
        None => Release::PodElsewhere { node: node.clone() },
    })
}

/// Settings of [`run`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespace of the claim Leases (the release namespace).
    pub namespace: String,
    /// How often every claim is checked.
    pub period: Duration,
    /// How long a claim may record no pod, or a pod of another identity, before it is released.
    pub grace: Duration,
}

/// What a sweep needs.
pub struct Sweeper {
    pub client: Client,
    pub leases: Store<Lease>,
    pub lans: Store<LAN>,
    pub recorder: Recorder,
    pub settings: Settings,
}

/// Sweeps the claims every `settings.period` and whenever a Node is deleted, until the process
/// ends. Sweeps start once the Node and Lease caches hold a complete list.
pub async fn run(sweeper: Sweeper) {
    let (nodes, writer) = reflector::store();
    let deleted = Arc::new(Notify::new());
    let notify = deleted.clone();
    let node_events = watcher(
        Api::<PartialObjectMeta<Node>>::all(sweeper.client.clone()),
        watcher::Config::default(),
    )
    .backoff(crate::reconnect())
    .reflect(writer)
    .for_each(move |ev| {
        if let Ok(watcher::Event::Delete(n)) = &ev {
            tracing::info!(node = %n.name_any(), "node deleted; checking its claims");
            notify.notify_one();
        }
        async {}
    });
    tokio::spawn(node_events);
    nodes.wait_until_ready().await.ok();
    sweeper.leases.wait_until_ready().await.ok();
    let mut tick = tokio::time::interval(sweeper.settings.period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = deleted.notified() => {}
        }
        let names: HashSet<String> = nodes.state().iter().map(|n| n.name_any()).collect();
        sweeper.sweep(&names).await;
    }
}

impl Sweeper {
    /// Judges every claim once against the nodes that exist.
    #[instrument(skip_all, fields(nodes = nodes.len()))]
    pub async fn sweep(&self, nodes: &HashSet<String>) {
        let claims = self.leases.state();
        let now = Timestamp::now();
        let mut released = BTreeSet::new();
        for lease in claims.iter() {
            if lease.labels().get(LEASE_ROLE_LABEL).map(String::as_str) != Some(ROLE_CLAIM) {
                continue;
            }
            let holder = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref());
            let Ok(claim) = Claim::from_lease(&lease.name_any(), holder, lease.annotations())
            else {
                continue;
            };
            let node_exists = nodes.contains(&claim.node);
            let pod = match (&claim.pod, node_exists) {
                (Some(p), true) => match self.pod_state(p).await {
                    Some(s) => Some(s),
                    None => continue, // the API did not answer: judge it next time
                },
                _ => None,
            };
            let facts = Facts {
                claim: &claim,
                pod_uid: claim.pod_uid.as_deref(),
                claimed_at: lease.metadata.creation_timestamp.as_ref().map(|t| t.0),
                node_exists,
                pod,
                now,
                grace: self.settings.grace,
            };
            if let Some(why) = decide(&facts)
                && self.release(lease, &claim, &why).await
            {
                released.insert(claim.spoke.clone());
            }
        }
        if !released.is_empty() {
            tracing::info!(spokes = ?released, "released claims no live member backs");
        }
    }

    /// The pod `namespace/name` as the API has it; `None` when the API cannot tell.
    async fn pod_state(&self, pod: &str) -> Option<PodState> {
        let (ns, name) = pod.split_once('/')?;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        match api.get_opt(name).await {
            Ok(None) => Some(PodState::Missing),
            Ok(Some(p)) => Some(PodState::Present {
                uid: p.metadata.uid.clone().unwrap_or_default(),
                node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
                created: p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                finished: matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                ),
            }),
            Err(e) => {
                tracing::warn!(pod, error = %e, "cannot read the pod of a claim; judging it later");
                None
            }
        }
    }

    /// Deletes the claim as it was judged; true when it is gone because of this call.
    async fn release(&self, lease: &Lease, claim: &Claim, why: &Release) -> bool {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: lease.metadata.uid.clone(),
                resource_version: lease.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match api.delete(&lease.name_any(), &dp).await {
            Ok(_) => {}
            // Gone already, or changed since it was judged (judged again next time).
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return false,
            Err(e) => {
                tracing::warn!(lease = %lease.name_any(), error = %e, "cannot release a claim");
                return false;
            }
        }
        let pod = claim.pod.as_deref().unwrap_or("none recorded");
        let note = format!(
            "released spoke {} ({}) held on node {} by pod {pod}: {why}",
            claim.spoke, claim.kind, claim.node
        );
        tracing::info!(lan = %claim.lan, spoke = %claim.spoke, node = %claim.node, pod, reason = why.reason(), "released a claim");
        let key = ObjectRef::<LAN>::new(&claim.lan.name).within(&claim.lan.namespace);
        if let Some(lan) = self.lans.get(&key) {
            let ev = Event {
                type_: EventType::Normal,
                reason: "ClaimReleased".into(),
                note: Some(note),
                action: "ReleaseClaim".into(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&ev, &lan.object_ref(&())).await {
                tracing::warn!(lan = %claim.lan, error = %e, "publishing a ClaimReleased event failed");
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8slan_api::SpokeKind;
    use k8slan_api::report::LanRef;

    fn claim(pod: Option<&str>) -> Claim {
        Claim {
            spoke: "srl".into(),
            node: "worker1".into(),
            lan: LanRef::new("team", "a"),
            kind: SpokeKind::Veth,
            pod: pod.map(str::to_string),
            pod_uid: None,
        }
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn present(uid: &str, node: Option<&str>, created: i64, finished: bool) -> PodState {
        PodState::Present {
            uid: uid.into(),
            node: node.map(str::to_string),
            created: Some(t(created)),
            finished,
        }
    }

    fn facts<'a>(
        c: &'a Claim,
        uid: Option<&'a str>,
        node: bool,
        pod: Option<PodState>,
    ) -> Facts<'a> {
        Facts {
            claim: c,
            pod_uid: uid,
            claimed_at: Some(t(1000)),
            node_exists: node,
            pod,
            now: t(2000),
            grace: Duration::from_secs(60),
        }
    }

    /// What [`decide`] says of the claim for pod `team/p` (pod UID annotation `uid`) while its
    /// node exists and the pod looks like `pod`.
    fn on_live_node(uid: Option<&str>, pod: PodState) -> Option<Release> {
        let c = claim(Some("team/p"));
        decide(&facts(&c, uid, true, Some(pod)))
    }

    #[test]
    fn a_deleted_node_loses_every_claim() {
        let c = claim(Some("team/p"));
        let f = facts(&c, Some("u1"), false, None);
        assert_eq!(decide(&f), Some(Release::NodeDeleted));
        let c = claim(None);
        assert_eq!(
            decide(&facts(&c, None, false, None)),
            Some(Release::NodeDeleted)
        );
    }

    #[test]
    fn a_partitioned_node_whose_pod_exists_keeps_its_claim() {
        // Same UID; or, without the annotation, the same node.
        assert_eq!(
            on_live_node(Some("u1"), present("u1", Some("worker1"), 900, false)),
            None
        );
        assert_eq!(
            on_live_node(None, present("u9", Some("worker1"), 900, false)),
            None
        );
    }

    #[test]
    fn gone_finished_and_replaced_pods_release() {
        assert_eq!(
            on_live_node(Some("u1"), PodState::Missing),
            Some(Release::PodGone)
        );
        assert_eq!(
            on_live_node(Some("u1"), present("u1", Some("worker1"), 900, true)),
            Some(Release::PodFinished)
        );
        assert_eq!(
            on_live_node(Some("u1"), present("u2", Some("worker1"), 900, false)),
            Some(Release::PodReplaced { uid: "u2".into() })
        );
        assert_eq!(
            on_live_node(None, present("u2", Some("worker2"), 900, false)),
            Some(Release::PodElsewhere {
                node: Some("worker2".into())
            })
        );
        assert_eq!(
            on_live_node(None, present("u2", None, 900, false)),
            Some(Release::PodElsewhere { node: None })
        );
    }

    #[test]
    fn young_replacements_and_fresh_claims_get_the_grace_period() {
        // The new pod of the same name is 30 s old: its agent may not have recorded it yet.
        assert_eq!(
            on_live_node(Some("u1"), present("u2", Some("worker1"), 1970, false)),
            None
        );
        assert_eq!(
            on_live_node(None, present("u2", Some("worker2"), 1970, false)),
            None
        );
        let c = claim(None);
        let mut f = facts(&c, None, true, None);
        f.claimed_at = Some(t(1970));
        assert_eq!(decide(&f), None);
        f.claimed_at = Some(t(1900));
        assert_eq!(decide(&f), Some(Release::NoPodRecorded));
        // Not looked up (the API did not answer): nothing is decided.
        let c = claim(Some("team/p"));
        assert_eq!(decide(&facts(&c, Some("u1"), true, None)), None);
    }

    #[test]
    fn reasons_read_well() {
        assert_eq!(Release::NodeDeleted.to_string(), "its node was deleted");
        assert_eq!(
            Release::PodReplaced { uid: "x".into() }.reason(),
            "PodReplaced"
        );
    }
}
