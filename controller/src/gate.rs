//! One member per spoke already at scheduling time.
//!
//! The scheduler knows nothing of claims: two pods for one spoke, created together, can be bound
//! to two nodes before either node reports the spoke taken, and the kubelet fails the loser's pod
//! for good (`UnexpectedAdmissionError`). So the pod webhook puts a scheduling gate
//! ([`SPOKE_GATE`]) and the label [`MEMBER_LABEL`] on every pod that requests a spoke
//! ([`mutation`]), and the controller lifts the gate of a pod only when no other pod holds or is
//! being scheduled for any of its spokes ([`plan`]). A pod waiting for a spoke stays `Pending`
//! (`SchedulingGated`) with an event naming the spoke, and is lifted, oldest first, once the
//! holder is gone (deleted, `Succeeded` or `Failed`).
//!
//! A pod's state, as [`plan`] reads it:
//! - *terminal* (`Succeeded`/`Failed`), or bound to a node that no longer exists (deleted after
//!   a node loss; the claims of such a node are released too, see [`crate::claims`]): holds
//!   nothing;
//! - *holder*: no scheduling gate left (scheduled, running, or lifted and on its way);
//! - *waiting*: our gate is its only gate; lifted when all its spokes are free;
//! - *held back*: other gates besides ours (somebody else's turn first); neither holds nor is
//!   lifted, so that a pod held by another gate never blocks a spoke.
//!
//! Pods created with `spec.nodeName` bypass the scheduler (the API refuses gates on them); the
//! claims on the node keep such a pod from becoming a second member.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8slan_api::naming::{MEMBER_LABEL, MEMBER_LABEL_VALUE, SPOKE_GATE, parse_resource_name};
use kube::api::{Patch, PatchParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::{DynamicObject, PartialObjectMeta};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::instrument;

use crate::tenancy::requested_resources;
use crate::webhook::{Verdict, WebhookError, answer};

/// Reason of the event on a pod that waits for a spoke.
pub const WAITING_REASON: &str = "WaitingForSpoke";

/// The spokes a pod requests (either kind), sorted.
pub fn spokes_of(pod: &Pod) -> BTreeSet<String> {
    requested_resources(pod)
        .iter()
        .filter_map(|r| parse_resource_name(r).map(|(_, spoke)| spoke.to_string()))
        .collect()
}

/// The JSON patch the pod webhook answers a pod create with: the member label and the spoke
/// gate. `None` for a pod that requests no spoke, or that is bound to a node at creation.
pub fn mutation(pod: &Pod) -> Option<Value> {
    let spec = pod.spec.as_ref()?;
    if spokes_of(pod).is_empty() || spec.node_name.as_deref().is_some_and(|n| !n.is_empty()) {
        return None;
    }
    let mut ops = vec![label_op(pod)];
    match spec.scheduling_gates.as_deref() {
        None | Some([]) => ops.push(json!({"op": "add", "path": "/spec/schedulingGates",
            "value": [{"name": SPOKE_GATE}]})),
        Some(gates) if gates.iter().any(|g| g.name == SPOKE_GATE) => {}
        Some(_) => ops.push(json!({"op": "add", "path": "/spec/schedulingGates/-",
            "value": {"name": SPOKE_GATE}})),
    }
    Some(Value::Array(ops))
}

fn label_op(pod: &Pod) -> Value {
    if pod.metadata.labels.is_none() {
        return json!({"op": "add", "path": "/metadata/labels",
            "value": {MEMBER_LABEL: MEMBER_LABEL_VALUE}});
    }
    // JSON pointer: `/` in the key is written `~1`.
    let key = MEMBER_LABEL.replace('~', "~0").replace('/', "~1");
    json!({"op": "add", "path": format!("/metadata/labels/{key}"), "value": MEMBER_LABEL_VALUE})
}

/// Answers one admission request of the mutating pod webhook.
pub fn review(request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    if request.operation != Operation::Create {
        return response;
    }
    let Some(obj) = &request.object else {
        return response;
    };
    let pod: Pod = match serde_json::to_value(obj).and_then(serde_json::from_value) {
        Ok(p) => p,
        Err(e) => return response.deny(format!("the object is not a valid pod: {e}")),
    };
    let Some(ops) = mutation(&pod) else {
        return response;
    };
    match serde_json::from_value(ops) {
        Ok(patch) => match response.clone().with_patch(patch) {
            Ok(r) => r,
            Err(e) => response.deny(format!("cannot encode the spoke gate patch: {e}")),
        },
        Err(e) => response.deny(format!("cannot build the spoke gate patch: {e}")),
    }
}

/// Reads a mutating pod AdmissionReview body and answers it.
pub fn handle(body: &[u8]) -> Result<Verdict, WebhookError> {
    answer(body, review)
}

/// A pod, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn key_of(pod: &Pod) -> PodKey {
    PodKey {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
    }
}

/// A waiting pod that stays gated: the first of its spokes that is taken, and by whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    pub pod: PodKey,
    pub uid: String,
    pub spoke: String,
    pub holder: PodKey,
}

/// What one look at the member pods calls for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Waiting pods whose gate to lift, oldest first.
    pub lift: Vec<PodKey>,
    pub wait: Vec<Wait>,
}

enum Role {
    Terminal,
    Holder,
    Waiting,
    HeldBack,
}

fn role(pod: &Pod, nodes: &HashSet<String>) -> Role {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return Role::Terminal;
    }
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    if node.is_some_and(|n| !nodes.contains(n)) {
        return Role::Terminal;
    }
    let gates = pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_deref());
    match gates.unwrap_or_default() {
        [] => Role::Holder,
        [only] if only.name == SPOKE_GATE => Role::Waiting,
        _ => Role::HeldBack,
    }
}

/// Which waiting pods to lift, given the nodes that exist: every spoke has at most one holder,
/// and waiting pods take free spokes oldest first (creation time, then namespace and name).
pub fn plan(pods: &[Arc<Pod>], nodes: &HashSet<String>) -> Plan {
    let mut taken: BTreeMap<String, PodKey> = BTreeMap::new();
    let mut waiting = Vec::new();
    for pod in pods {
        match role(pod, nodes) {
            Role::Holder => {
                for spoke in spokes_of(pod) {
                    taken.entry(spoke).or_insert_with(|| key_of(pod));
                }
            }
            Role::Waiting => waiting.push(pod),
            Role::Terminal | Role::HeldBack => {}
        }
    }
    waiting.sort_by_key(|p| {
        (
            p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            key_of(p),
        )
    });
    let mut out = Plan::default();
    for pod in waiting {
        let spokes = spokes_of(pod);
        match spokes.iter().find_map(|s| taken.get(s).map(|h| (s, h))) {
            Some((spoke, holder)) => out.wait.push(Wait {
                pod: key_of(pod),
                uid: pod.uid().unwrap_or_default(),
                spoke: spoke.clone(),
                holder: holder.clone(),
            }),
            None => {
                let key = key_of(pod);
                for spoke in spokes {
                    taken.insert(spoke, key.clone());
                }
                out.lift.push(key);
            }
        }
    }
    out
}

/// The message of the event on a waiting pod. The holder's name is told only within one
/// namespace (a LAN may be shared with other namespaces; their pod names are theirs).
pub fn waiting_message(w: &Wait) -> String {
    let holder = if w.holder.namespace == w.pod.namespace {
        format!("pod {}", w.holder.name)
    } else {
        format!("a pod of namespace {}", w.holder.namespace)
    };
    format!(
        "spoke {} is held by {holder}; this pod is scheduled once that pod is gone (scheduling gate {SPOKE_GATE})",
        w.spoke
    )
}

/// The JSON patch that lifts our gate, only if it is still the pod's only gate.
fn lift_patch() -> json_patch::Patch {
    serde_json::from_value(json!([
        {"op": "test", "path": "/spec/schedulingGates", "value": [{"name": SPOKE_GATE}]},
        {"op": "remove", "path": "/spec/schedulingGates"},
    ]))
    .expect("a constant JSON patch")
}

#[derive(Clone, Copy)]
enum Source {
    Pods,
    Nodes,
}

/// What one watch event means to the keeper.
enum Change {
    /// Part of a (re)list, not complete yet.
    Partial,
    /// A (re)list is complete.
    Listed(Source),
    Deleted,
    Other(Source),
}

impl Change {
    fn of<K>(source: Source, ev: &watcher::Event<K>) -> Self {
        match ev {
            watcher::Event::Init | watcher::Event::InitApply(_) => Change::Partial,
            watcher::Event::InitDone => Change::Listed(source),
            watcher::Event::Delete(_) => Change::Deleted,
            watcher::Event::Apply(_) => Change::Other(source),
        }
    }
}

/// Keeps the spoke gates: watches the member pods and lifts gates as [`plan`] says.
pub struct Keeper {
    pub client: Client,
    pub recorder: Recorder,
}

impl Keeper {
    /// Runs until the process ends: looks again on every change of a member pod and every node
    /// deleted, once both lists are complete.
    pub async fn run(self) {
        let (pods, pod_writer) = reflector::store();
        let cfg =
            watcher::Config::default().labels(&format!("{MEMBER_LABEL}={MEMBER_LABEL_VALUE}"));
        let pod_events = watcher(Api::<Pod>::all(self.client.clone()), cfg)
            .backoff(crate::reconnect())
            .reflect(pod_writer)
            .map(|ev| ev.map(|e| Change::of(Source::Pods, &e)));
        let (nodes, node_writer) = reflector::store();
        let node_cfg = watcher::Config::default();
        let node_events = watcher(
            Api::<PartialObjectMeta<Node>>::all(self.client.clone()),
            node_cfg,
        )
        .backoff(crate::reconnect())
        .reflect(node_writer)
        .map(|ev| ev.map(|e| Change::of(Source::Nodes, &e)));
        let mut events = futures::stream::select(pod_events.boxed(), node_events.boxed());
        let (mut pods_listed, mut nodes_listed) = (false, false);
        let mut told: HashSet<(String, String)> = HashSet::new();
        while let Some(ev) = events.next().await {
            let change = match ev {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "watching the member pods and the nodes");
                    continue;
                }
            };
            match change {
                Change::Listed(Source::Pods) => pods_listed = true,
                Change::Listed(Source::Nodes) => nodes_listed = true,
                Change::Partial | Change::Other(Source::Nodes) => continue,
                Change::Other(Source::Pods) | Change::Deleted => {}
            }
            if pods_listed && nodes_listed {
                self.look(&pods, &nodes, &mut told).await;
            }
        }
    }

    #[instrument(skip_all)]
    async fn look(
        &self,
        pods: &Store<Pod>,
        nodes: &Store<PartialObjectMeta<Node>>,
        told: &mut HashSet<(String, String)>,
    ) {
        let names: HashSet<String> = nodes.state().iter().map(|n| n.name_any()).collect();
        let plan = plan(&pods.state(), &names);
        for pod in &plan.lift {
            self.lift(pod).await;
        }
        let live: HashSet<&str> = plan.wait.iter().map(|w| w.uid.as_str()).collect();
        told.retain(|(uid, _)| live.contains(uid.as_str()));
        for w in &plan.wait {
            if told.insert((w.uid.clone(), w.spoke.clone())) {
                self.tell_waiting(pods, w).await;
            }
        }
    }

    async fn lift(&self, pod: &PodKey) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        match api
            .patch(
                &pod.name,
                &PatchParams::default(),
                &Patch::<()>::Json(lift_patch()),
            )
            .await
        {
            Ok(_) => tracing::info!(pod = %pod, "spokes free; lifted the scheduling gate"),
            // Gone, or its gates changed meanwhile: the next event brings the truth.
            Err(e) => tracing::debug!(pod = %pod, error = %e, "not lifting the scheduling gate"),
        }
    }

    async fn tell_waiting(&self, pods: &Store<Pod>, w: &Wait) {
        let Some(pod) = pods.get(&ObjectRef::new(&w.pod.name).within(&w.pod.namespace)) else {
            return;
        };
        let ev = Event {
            type_: EventType::Normal,
            reason: WAITING_REASON.into(),
            note: Some(waiting_message(w)),
            action: "WaitForSpoke".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &pod.object_ref(&())).await {
            tracing::warn!(pod = %w.pod, error = %e, "publishing a WaitingForSpoke event failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, PodSchedulingGate, PodSpec, PodStatus, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn pod(ns: &str, name: &str, secs: i64, resources: &[&str], gates: &[&str]) -> Pod {
        let limits = resources
            .iter()
            .map(|r| (r.to_string(), Quantity("1".into())))
            .collect();
        let mut p = Pod::default();
        p.metadata.namespace = Some(ns.into());
        p.metadata.name = Some(name.into());
        p.metadata.uid = Some(format!("uid-{name}"));
        p.metadata.creation_timestamp = Some(Time(Timestamp::from_second(secs).unwrap()));
        p.spec = Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                resources: Some(ResourceRequirements {
                    limits: Some(limits),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            scheduling_gates: (!gates.is_empty()).then(|| {
                gates
                    .iter()
                    .map(|g| PodSchedulingGate {
                        name: g.to_string(),
                    })
                    .collect()
            }),
            ..Default::default()
        });
        p
    }

    /// A pod that waits at our gate alone.
    fn gated(name: &str, secs: i64, resources: &[&str]) -> Arc<Pod> {
        Arc::new(pod("ns", name, secs, resources, &[SPOKE_GATE]))
    }

    fn veth(spoke: &str) -> String {
        format!("macvtap.k8slan.io/k8slan-veth-{spoke}")
    }

    fn mac(spoke: &str) -> String {
        format!("macvtap.k8slan.io/k8slan-mac-{spoke}")
    }

    fn nodes() -> HashSet<String> {
        ["worker1".to_string(), "worker2".to_string()].into()
    }

    fn plan(pods: &[Arc<Pod>]) -> Plan {
        super::plan(pods, &nodes())
    }

    fn lifted(plan: &Plan) -> Vec<String> {
        plan.lift.iter().map(|k| k.name.clone()).collect()
    }

    #[test]
    fn a_pod_with_a_spoke_gets_the_label_and_the_gate_other_pods_nothing() {
        let p = pod("ns", "p", 1, &[&veth("a")], &[]);
        let ops = mutation(&p).unwrap();
        assert_eq!(
            ops,
            json!([
                {"op": "add", "path": "/metadata/labels", "value": {"k8slan.io/member": "true"}},
                {"op": "add", "path": "/spec/schedulingGates", "value": [{"name": "k8slan.io/spoke"}]},
            ])
        );
        assert_eq!(
            mutation(&pod("ns", "p", 1, &["example.com/gpu"], &[])),
            None
        );
        let mut bound = p.clone();
        bound.spec.as_mut().unwrap().node_name = Some("worker1".into());
        assert_eq!(
            mutation(&bound),
            None,
            "the API refuses gates on a bound pod"
        );
    }

    #[test]
    fn existing_labels_and_gates_are_kept() {
        let mut p = pod("ns", "p", 1, &[&mac("a")], &["example.com/quota"]);
        p.metadata.labels = Some([("app".to_string(), "vm".to_string())].into());
        let ops = mutation(&p).unwrap();
        assert_eq!(
            ops,
            json!([
                {"op": "add", "path": "/metadata/labels/k8slan.io~1member", "value": "true"},
                {"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": "k8slan.io/spoke"}},
            ])
        );
        let patch: json_patch::Patch = serde_json::from_value(ops).unwrap();
        let mut doc = serde_json::to_value(&p).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(doc["metadata"]["labels"]["app"], "vm");
        assert_eq!(
            doc["spec"]["schedulingGates"][0]["name"],
            "example.com/quota"
        );
        assert_eq!(doc["spec"]["schedulingGates"][1]["name"], SPOKE_GATE);
    }

    #[test]
    fn two_pods_for_one_spoke_the_older_is_lifted_the_other_waits() {
        let pods = [
            gated("young", 20, &[&veth("a")]),
            gated("old", 10, &[&veth("a")]),
        ];
        let plan = plan(&pods);
        assert_eq!(lifted(&plan), ["old"]);
        assert_eq!(plan.wait.len(), 1);
        assert_eq!(plan.wait[0].pod.name, "young");
        assert_eq!(plan.wait[0].holder.name, "old");
    }

    #[test]
    fn the_twin_kind_counts_as_the_same_spoke() {
        let pods = [
            Arc::new(pod("ns", "vm", 10, &[&mac("a")], &[])),
            gated("cnf", 5, &[&veth("a"), &veth("b")]),
        ];
        let plan = plan(&pods);
        assert!(plan.lift.is_empty());
        assert_eq!(plan.wait[0].spoke, "a");
        assert_eq!(
            waiting_message(&plan.wait[0]),
            "spoke a is held by pod vm; this pod is scheduled once that pod is gone (scheduling gate k8slan.io/spoke)"
        );
    }

    #[test]
    fn terminal_holders_free_their_spokes_and_other_gates_hold_nothing() {
        let mut done = pod("ns", "done", 1, &[&veth("a")], &[]);
        done.status = Some(PodStatus {
            phase: Some("Failed".into()),
            ..Default::default()
        });
        let pods = [
            Arc::new(done),
            Arc::new(pod(
                "ns",
                "queued",
                2,
                &[&veth("b")],
                &["example.com/quota", SPOKE_GATE],
            )),
            gated("next", 3, &[&veth("a"), &veth("b")]),
        ];
        assert_eq!(lifted(&plan(&pods)), ["next"]);
    }

    #[test]
    fn a_holder_on_a_deleted_node_holds_nothing() {
        let mut lost = pod("ns", "lost", 1, &[&veth("a")], &[]);
        lost.spec.as_mut().unwrap().node_name = Some("worker3".into());
        let mut alive = pod("ns", "alive", 1, &[&veth("b")], &[]);
        alive.spec.as_mut().unwrap().node_name = Some("worker1".into());
        let pods = [
            Arc::new(lost),
            Arc::new(alive),
            gated("wants-a", 2, &[&veth("a")]),
            gated("wants-b", 2, &[&veth("b")]),
        ];
        assert_eq!(lifted(&plan(&pods)), ["wants-a"]);
    }

    #[test]
    fn a_waiting_pod_does_not_block_a_younger_one_on_other_spokes() {
        let pods = [
            Arc::new(pod("ns", "holder", 1, &[&veth("a")], &[])),
            gated("wants-a-and-b", 2, &[&veth("a"), &veth("b")]),
            gated("wants-c", 3, &[&veth("c")]),
        ];
        assert_eq!(lifted(&plan(&pods)), ["wants-c"]);
    }

    #[test]
    fn the_holder_of_another_namespace_is_not_named() {
        let w = Wait {
            pod: PodKey {
                namespace: "guest".into(),
                name: "p".into(),
            },
            uid: "u".into(),
            spoke: "a".into(),
            holder: PodKey {
                namespace: "owner".into(),
                name: "secret-name".into(),
            },
        };
        let msg = waiting_message(&w);
        assert!(msg.contains("a pod of namespace owner"), "{msg}");
        assert!(!msg.contains("secret-name"), "{msg}");
    }

    #[test]
    fn the_webhook_answers_a_create_with_a_json_patch() {
        let p = pod("ns", "p", 1, &[&veth("a")], &[]);
        let body = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "r1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "name": "p", "namespace": "ns", "operation": "CREATE",
                "userInfo": {"username": "u"}, "object": p}
        });
        let verdict = handle(&serde_json::to_vec(&body).unwrap()).unwrap();
        assert!(verdict.allowed);
        let review = serde_json::to_value(&verdict.review).unwrap();
        assert_eq!(review["response"]["patchType"], "JSONPatch");
        // kube encodes the patch bytes as a JSON array of numbers (Go decodes it into []byte).
        let bytes: Vec<u8> = serde_json::from_value(review["response"]["patch"].clone()).unwrap();
        let ops: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(Some(ops), mutation(&p));
    }
}
