//! Claims and node reports against a small in-process API server for Leases (kube client over a
//! tower service): the requests kube sends and the answers of a real API server (201, 409
//! AlreadyExists, 404, precondition conflicts).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::coordination::v1::Lease;
use k8slan_api::SpokeKind;
use k8slan_api::report::{Claim, LanRef};
use k8slan_deviceplugin::claim::{Acquired, ClaimStore, LeaseClaims, claim_from_lease};
use k8slan_deviceplugin::report::{
    LanNodeReport, LeaseReports, NodeReport, NodeState, REPORT_ANNOTATION, ReportSink,
};
use kube::client::Body;
use serde_json::{Value, json};

const NS: &str = "k8slan-system";

#[derive(Default)]
struct Store {
    leases: BTreeMap<String, Value>,
    version: u64,
}

type Shared = Arc<Mutex<Store>>;

fn status(code: u16, reason: &str, message: &str) -> http::Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    http::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn ok(code: u16, v: &Value) -> http::Response<Body> {
    http::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(v).unwrap()))
        .unwrap()
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn stamp(store: &mut Store, lease: &mut Value, name: &str) {
    store.version += 1;
    lease["metadata"]["resourceVersion"] = json!(store.version.to_string());
    if lease["metadata"]["uid"].is_null() {
        lease["metadata"]["uid"] = json!(format!("uid-{name}-{}", store.version));
    }
}

async fn handle(store: Shared, req: http::Request<Body>) -> http::Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body.collect_bytes().await.unwrap();
    let path = parts.uri.path().to_string();
    let prefix = format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases");
    let rest = path.strip_prefix(&prefix).expect("lease path");
    let name = rest.trim_start_matches('/').to_string();
    let mut st = store.lock().unwrap();
    match (parts.method.as_str(), name.is_empty()) {
        ("POST", true) => {
            let mut lease: Value = serde_json::from_slice(&body).unwrap();
            let name = lease["metadata"]["name"].as_str().unwrap().to_string();
            if st.leases.contains_key(&name) {
                return status(
                    409,
                    "AlreadyExists",
                    &format!("leases \"{name}\" already exists"),
                );
            }
            stamp(&mut st, &mut lease, &name);
            st.leases.insert(name, lease.clone());
            ok(201, &lease)
        }
        ("GET", false) => match st.leases.get(&name) {
            Some(l) => ok(200, l),
            None => status(404, "NotFound", &format!("leases \"{name}\" not found")),
        },
        ("PATCH", false) => {
            let patch: Value = serde_json::from_slice(&body).unwrap();
            let apply = parts
                .headers
                .get("content-type")
                .is_some_and(|c| c.to_str().unwrap().contains("apply-patch"));
            let mut lease = match (st.leases.get(&name), apply) {
                (Some(l), false) => l.clone(),
                (_, true) => patch.clone(),
                (None, false) => return status(404, "NotFound", "not found"),
            };
            if !apply {
                if let Some(rv) = patch["metadata"]["resourceVersion"].as_str()
                    && lease["metadata"]["resourceVersion"].as_str() != Some(rv)
                {
                    return status(409, "Conflict", "the object has been modified");
                }
                merge(&mut lease, &patch);
            }
            stamp(&mut st, &mut lease, &name);
            st.leases.insert(name, lease.clone());
            ok(200, &lease)
        }
        ("DELETE", false) => {
            let opts: Value = if body.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(&body).unwrap()
            };
            let Some(l) = st.leases.get(&name) else {
                return status(404, "NotFound", "not found");
            };
            let pre = &opts["preconditions"];
            if let Some(uid) = pre["uid"].as_str()
                && l["metadata"]["uid"].as_str() != Some(uid)
            {
                return status(409, "Conflict", "Precondition failed: UID in precondition");
            }
            if let Some(rv) = pre["resourceVersion"].as_str()
                && l["metadata"]["resourceVersion"].as_str() != Some(rv)
            {
                return status(409, "Conflict", "Precondition failed: ResourceVersion");
            }
            let l = st.leases.remove(&name).unwrap();
            ok(200, &l)
        }
        (m, _) => status(405, "MethodNotAllowed", m),
    }
}

fn client(store: &Shared) -> kube::Client {
    let store = store.clone();
    let svc = tower::service_fn(move |req| {
        let store = store.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(store, req).await) }
    });
    kube::Client::new(svc, NS)
}

fn want(spoke: &str, kind: SpokeKind, node: &str) -> Claim {
    Claim::new(spoke, node, LanRef::new("default", "lan1"), kind)
}

/// The claim of `spoke` by node-a with `pod` as its member.
fn member(spoke: &str, kind: SpokeKind, pod: &str) -> Claim {
    Claim {
        pod: Some(pod.into()),
        pod_uid: Some(format!("uid-{pod}")),
        ..want(spoke, kind, "node-a")
    }
}

/// A node's lease claims that have just acquired `s1` as `kind` for `node`.
async fn holding_s1(store: &Shared, kind: SpokeKind, node: &str) -> LeaseClaims {
    let claims = LeaseClaims::new(client(store), NS);
    claims.acquire(&want("s1", kind, node)).await.unwrap();
    claims
}

fn lease(store: &Shared, name: &str) -> Option<Lease> {
    let v = store.lock().unwrap().leases.get(name).cloned()?;
    Some(serde_json::from_value(v).unwrap())
}

#[tokio::test]
async fn claim_is_created_once_and_refused_to_other_nodes() {
    let store = Shared::default();
    let a = LeaseClaims::new(client(&store), NS);
    let b = LeaseClaims::new(client(&store), NS);

    let got = a
        .acquire(&want("s1", SpokeKind::Mac, "node-a"))
        .await
        .unwrap();
    assert_eq!(got, Acquired::Created);
    let l = lease(&store, "spoke-s1").unwrap();
    assert_eq!(
        l.metadata.labels.as_ref().unwrap()["k8slan.io/role"],
        "claim"
    );
    let ann = l.metadata.annotations.as_ref().unwrap();
    assert_eq!(ann["k8slan.io/lan"], "default/lan1");
    assert_eq!(ann["k8slan.io/kind"], "mac");
    assert_eq!(
        l.spec.as_ref().unwrap().holder_identity.as_deref(),
        Some("node-a")
    );

    // Again by the holder: idempotent.
    assert_eq!(
        a.acquire(&want("s1", SpokeKind::Mac, "node-a"))
            .await
            .unwrap(),
        Acquired::AlreadyOurs
    );
    // By another node: 409, then the holder is read and named.
    a.record_member(&member("s1", SpokeKind::Mac, "vms/vm1"))
        .await
        .unwrap();
    let ann = lease(&store, "spoke-s1")
        .unwrap()
        .metadata
        .annotations
        .unwrap();
    assert_eq!(ann["k8slan.io/pod"], "vms/vm1");
    assert_eq!(ann["k8slan.io/pod-uid"], "uid-vms/vm1");
    match b
        .acquire(&want("s1", SpokeKind::Veth, "node-b"))
        .await
        .unwrap()
    {
        Acquired::HeldElsewhere(c) => {
            assert_eq!(c.node, "node-a");
            assert_eq!(c.pod.as_deref(), Some("vms/vm1"));
            assert_eq!(c.kind, SpokeKind::Mac);
        }
        other => panic!("expected HeldElsewhere, got {other:?}"),
    }
}

#[tokio::test]
async fn holder_switching_kind_rewrites_its_claim() {
    let store = Shared::default();
    let a = holding_s1(&store, SpokeKind::Veth, "node-a").await;
    a.record_member(&member("s1", SpokeKind::Veth, "ns/old"))
        .await
        .unwrap();
    assert_eq!(
        a.acquire(&want("s1", SpokeKind::Mac, "node-a"))
            .await
            .unwrap(),
        Acquired::AlreadyOurs
    );
    let c = claim_from_lease(&lease(&store, "spoke-s1").unwrap())
        .unwrap()
        .claim;
    assert_eq!(c.kind, SpokeKind::Mac);
    assert_eq!(c.pod, None, "the old pod is no longer the member");
    assert_eq!(c.pod_uid, None, "nor its UID");
}

#[tokio::test]
async fn release_is_guarded_by_the_observed_lease() {
    let store = Shared::default();
    let a = holding_s1(&store, SpokeKind::Veth, "node-a").await;
    let seen = claim_from_lease(&lease(&store, "spoke-s1").unwrap()).unwrap();

    // The claim was deleted and taken by another node meanwhile: our stale release must fail
    // and leave the new holder's claim alone.
    store.lock().unwrap().leases.remove("spoke-s1");
    let b = holding_s1(&store, SpokeKind::Veth, "node-b").await;
    assert!(a.release("s1", Some(&seen)).await.is_err());
    assert!(lease(&store, "spoke-s1").is_some());

    // The holder's own release with what it saw succeeds even though its own pod annotation
    // moved the resourceVersion since; a second one is no error.
    let seen_b = claim_from_lease(&lease(&store, "spoke-s1").unwrap()).unwrap();
    let mut of_b = member("s1", SpokeKind::Veth, "ns/p");
    of_b.node = "node-b".into();
    b.record_member(&of_b).await.unwrap();
    b.release("s1", Some(&seen_b)).await.unwrap();
    assert!(lease(&store, "spoke-s1").is_none());
    b.release("s1", Some(&seen_b)).await.unwrap();
}

#[tokio::test]
async fn node_report_is_applied_to_the_node_lease() {
    let store = Shared::default();
    let r = LeaseReports::new(client(&store), NS);
    let report = NodeReport {
        lans: BTreeMap::from([(
            "default/lan1".into(),
            LanNodeReport {
                state: NodeState::Ready,
                message: String::new(),
                generation: 7,
            },
        )]),
        ..NodeReport::default()
    };
    r.publish("node-a", &report).await.unwrap();
    let l = lease(&store, "node-node-a").unwrap();
    assert_eq!(
        l.metadata.labels.as_ref().unwrap()["k8slan.io/role"],
        "node-report"
    );
    let json: NodeReport =
        serde_json::from_str(&l.metadata.annotations.unwrap()[REPORT_ANNOTATION]).unwrap();
    assert_eq!(json, report);
}

#[tokio::test]
async fn two_nodes_racing_for_a_spoke_get_one_winner_and_the_loser_learns_it() {
    for _ in 0..20 {
        let store = Shared::default();
        let a = LeaseClaims::new(client(&store), NS);
        let b = LeaseClaims::new(client(&store), NS);
        let (wa, wb) = (
            want("s1", SpokeKind::Veth, "node-a"),
            want("s1", SpokeKind::Mac, "node-b"),
        );
        let (ra, rb) = tokio::join!(a.acquire(&wa), b.acquire(&wb));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let holder = claim_from_lease(&lease(&store, "spoke-s1").unwrap())
            .unwrap()
            .claim;
        match (&ra, &rb) {
            (Acquired::Created, Acquired::HeldElsewhere(c)) => {
                assert_eq!(
                    (holder.node.as_str(), c.node.as_str()),
                    ("node-a", "node-a")
                );
            }
            (Acquired::HeldElsewhere(c), Acquired::Created) => {
                assert_eq!(
                    (holder.node.as_str(), c.node.as_str()),
                    ("node-b", "node-b")
                );
            }
            other => panic!("expected exactly one winner, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn broken_claim_leases_of_another_node_are_never_taken_over() {
    let store = Shared::default();
    holding_s1(&store, SpokeKind::Veth, "node-a").await;
    // Someone strips the annotations of node-a's claim.
    store.lock().unwrap().leases.get_mut("spoke-s1").unwrap()["metadata"]["annotations"] =
        json!({"k8slan.io/kind": "tap"});
    assert_eq!(claim_from_lease(&lease(&store, "spoke-s1").unwrap()), None);
    let b = LeaseClaims::new(client(&store), NS);
    match b
        .acquire(&want("s1", SpokeKind::Veth, "node-b"))
        .await
        .unwrap()
    {
        Acquired::HeldElsewhere(c) => assert_eq!(c.node, "node-a"),
        other => panic!("expected HeldElsewhere, got {other:?}"),
    }
}
