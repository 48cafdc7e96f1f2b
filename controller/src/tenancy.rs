//! Tenants stay apart at admission: a pod (KubeVirt's virt-launcher pods included) may request a
//! spoke's resource (`macvtap.k8slan.io/k8slan-veth-<spoke>` or `-mac-`), in the requests or
//! limits of any container or init container, only if it runs in the namespace of the LAN that
//! serves the spoke or in one of that LAN's `spec.allowedNamespaces`. A resource of the domain
//! that names no spoke of an accepted LAN is denied too. [`review_pod`] is pure; the webhook
//! calls it on pod CREATE (a pod's resources are immutable afterwards: in-place resize touches
//! only cpu and memory).
//!
//! The LAN that serves a spoke is the one the controller accepts ([`conflict::acceptance`]:
//! a LAN that clashes with an older one serves nothing, so another tenant's clashing LAN can
//! neither grant nor block access to a spoke). The node side enforces the same rule on its own
//! (the CNI plugins and the agent), so a bypassed webhook still cannot cross namespaces.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8slan_api::naming::{RESOURCE_DOMAIN, parse_resource_name};
use k8slan_api::report::LanRef;
use k8slan_api::{LAN, validate_spec};
use kube::ResourceExt;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};

use crate::conflict::{self, LanKeys};
use crate::webhook::{Verdict, WebhookError, answer};

/// The LAN serving a spoke, as far as tenancy is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub lan: LanRef,
    /// Namespaces besides the LAN's own whose pods may hold its spokes.
    pub allowed: Vec<String>,
}

impl Server {
    fn admits(&self, namespace: &str) -> bool {
        self.lan.namespace == namespace || self.allowed.iter().any(|n| n == namespace)
    }
}

/// Spoke → the LAN serving it: every valid LAN not being deleted that the acceptance rule admits.
pub fn servers(lans: &[Arc<LAN>]) -> BTreeMap<String, Server> {
    let live: Vec<&LAN> = lans
        .iter()
        .map(AsRef::as_ref)
        .filter(|l| l.metadata.deletion_timestamp.is_none() && validate_spec(&l.spec).is_ok())
        .collect();
    let keys: Vec<LanKeys<'_>> = live
        .iter()
        .map(|l| LanKeys {
            lan: LanRef::new(l.namespace().unwrap_or_default(), l.name_any()),
            created: l.metadata.creation_timestamp.as_ref().map(|t| t.0),
            spec: &l.spec,
        })
        .collect();
    let rejected = conflict::acceptance(&keys);
    let mut out = BTreeMap::new();
    for k in keys.iter().filter(|k| !rejected.contains_key(&k.lan)) {
        for spoke in &k.spec.spokes {
            out.insert(
                spoke.clone(),
                Server {
                    lan: k.lan.clone(),
                    allowed: k.spec.allowed_namespaces.clone(),
                },
            );
        }
    }
    out
}

/// Every resource of the k8slan domain a pod requests or limits, in any container or init
/// container, sorted.
pub fn requested_resources(pod: &Pod) -> BTreeSet<String> {
    let Some(spec) = &pod.spec else {
        return BTreeSet::new();
    };
    let prefix = format!("{RESOURCE_DOMAIN}/");
    let of = |c: &Container| -> Vec<String> {
        let r = c.resources.as_ref();
        r.and_then(|r| r.requests.as_ref())
            .into_iter()
            .chain(r.and_then(|r| r.limits.as_ref()))
            .flat_map(|m| m.keys())
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect()
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(of)
        .collect()
}

/// Whether a pod of `namespace` may have `resources`; the denial names the resource, the LAN and
/// its namespace, and the fix.
pub fn review_pod(
    namespace: &str,
    pod: &str,
    resources: &BTreeSet<String>,
    servers: &BTreeMap<String, Server>,
) -> Result<(), String> {
    let mut denials = Vec::new();
    for resource in resources {
        let Some((_, spoke)) = parse_resource_name(resource) else {
            denials.push(format!(
                "{resource} is not a k8slan spoke resource ({RESOURCE_DOMAIN}/k8slan-veth-<spoke> or {RESOURCE_DOMAIN}/k8slan-mac-<spoke>)"
            ));
            continue;
        };
        match servers.get(spoke) {
            None => denials.push(format!(
                "{resource}: spoke {spoke:?} is in no accepted LAN (create the LAN first, or fix its conflict)"
            )),
            Some(s) if s.admits(namespace) => {}
            Some(s) => denials.push(format!(
                "{resource}: spoke {spoke:?} belongs to LAN {} in namespace {}, whose spokes only pods of namespace {}{} may use (the LAN's owner can add {namespace} to its spec.allowedNamespaces)",
                s.lan,
                s.lan.namespace,
                s.lan.namespace,
                if s.allowed.is_empty() {
                    String::new()
                } else {
                    format!(" and of {}", s.allowed.join(", "))
                }
            )),
        }
    }
    if denials.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "pod {namespace}/{pod} may not use these spokes: {}",
            denials.join("; ")
        ))
    }
}

/// Answers one admission request for a pod.
pub fn review(request: &AdmissionRequest<DynamicObject>, lans: &[Arc<LAN>]) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    if request.operation != Operation::Create {
        return response;
    }
    let Some(obj) = &request.object else {
        return response.deny("the request carries no pod");
    };
    let pod: Pod = match serde_json::to_value(obj).and_then(serde_json::from_value) {
        Ok(p) => p,
        Err(e) => return response.deny(format!("the object is not a valid pod: {e}")),
    };
    let resources = requested_resources(&pod);
    if resources.is_empty() {
        return response;
    }
    let namespace = pod
        .namespace()
        .or_else(|| request.namespace.clone())
        .unwrap_or_default();
    let name = match (request.name.as_str(), &pod.metadata.generate_name) {
        ("", Some(g)) => format!("{g}<generated>"),
        (n, _) => n.to_string(),
    };
    match review_pod(&namespace, &name, &resources, &servers(lans)) {
        Ok(()) => response,
        Err(denial) => response.deny(denial),
    }
}

/// Reads a pod AdmissionReview body and answers it.
pub fn handle(body: &[u8], lans: &[Arc<LAN>]) -> Result<Verdict, WebhookError> {
    answer(body, |r| review(r, lans))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::spec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::{Value, json};

    fn lan(
        ns: &str,
        name: &str,
        secs: i64,
        lan_ns: &str,
        spokes: &[&str],
        allowed: &[&str],
    ) -> Arc<LAN> {
        let mut l = LAN::new(name, spec(lan_ns, secs as u32 + 10, spokes));
        l.metadata.namespace = Some(ns.into());
        l.metadata.creation_timestamp = Some(Time(Timestamp::from_second(secs).unwrap()));
        l.spec.allowed_namespaces = allowed.iter().map(|s| s.to_string()).collect();
        Arc::new(l)
    }

    fn pod_request(namespace: &str, containers: Value, init: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "name": "p1",
                "namespace": namespace,
                "operation": "CREATE",
                "userInfo": {"username": "someone"},
                "object": {"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": "p1", "namespace": namespace},
                           "spec": {"containers": containers, "initContainers": init}},
                "dryRun": false
            }
        }))
        .unwrap()
    }

    fn container(where_: &str, resource: &str) -> Value {
        json!({"name": "c", "image": "x", "resources": {where_: {resource: "1"}}})
    }

    fn verdict(body: &[u8], lans: &[Arc<LAN>]) -> (bool, String) {
        let v = handle(body, lans).unwrap();
        let out = serde_json::to_value(v.review).unwrap();
        (
            out["response"]["allowed"].as_bool().unwrap(),
            out["response"]["status"]["message"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        )
    }

    #[test]
    fn pods_of_the_lan_namespace_and_allowed_namespaces_pass() {
        let lans = [lan("team", "a", 1, "na", &["srl", "vm"], &["guest"])];
        for ns in ["team", "guest"] {
            let body = pod_request(
                ns,
                json!([container("limits", "macvtap.k8slan.io/k8slan-veth-srl")]),
                json!([]),
            );
            assert_eq!(verdict(&body, &lans), (true, String::new()), "{ns}");
        }
        // Pods without k8slan resources are none of our business.
        let body = pod_request(
            "evil",
            json!([container("limits", "example.com/gpu")]),
            json!([]),
        );
        assert!(verdict(&body, &lans).0);
    }

    #[test]
    fn every_place_a_resource_can_hide_is_checked() {
        let lans = [lan("team", "a", 1, "na", &["srl", "vm"], &[])];
        let cases = [
            (
                json!([container("limits", "macvtap.k8slan.io/k8slan-veth-srl")]),
                json!([]),
            ),
            (
                json!([container("requests", "macvtap.k8slan.io/k8slan-mac-vm")]),
                json!([]),
            ),
            (
                json!([
                    container("limits", "cpu"),
                    container("requests", "macvtap.k8slan.io/k8slan-veth-srl")
                ]),
                json!([]),
            ),
            (
                json!([container("limits", "cpu")]),
                json!([container("limits", "macvtap.k8slan.io/k8slan-mac-vm")]),
            ),
        ];
        for (containers, init) in cases {
            let (allowed, msg) = verdict(&pod_request("evil", containers.clone(), init), &lans);
            assert!(!allowed, "{containers}");
            assert!(
                msg.starts_with("pod evil/p1 may not use these spokes"),
                "{msg}"
            );
            assert!(
                msg.contains("belongs to LAN team/a in namespace team"),
                "{msg}"
            );
            assert!(msg.contains("spec.allowedNamespaces"), "{msg}");
        }
    }

    #[test]
    fn spokes_in_no_lan_and_foreign_names_are_denied() {
        let lans = [lan("team", "a", 1, "na", &["srl"], &[])];
        for (res, says) in [
            ("macvtap.k8slan.io/k8slan-veth-nolan", "in no accepted LAN"),
            ("macvtap.k8slan.io/something", "not a k8slan spoke resource"),
            (
                "macvtap.k8slan.io/k8slan-veth-",
                "not a k8slan spoke resource",
            ),
        ] {
            let (allowed, msg) = verdict(
                &pod_request("team", json!([container("limits", res)]), json!([])),
                &lans,
            );
            assert!(!allowed && msg.contains(says), "{res}: {msg}");
        }
    }

    #[test]
    fn a_younger_clashing_lan_neither_grants_nor_blocks() {
        // evil/b lists team's spoke srl and allows evil; it is younger, so it serves nothing.
        let lans = [
            lan("team", "a", 1, "na", &["srl"], &[]),
            lan("evil", "b", 2, "nb", &["srl"], &["team", "evil2"]),
        ];
        let srl = || json!([container("limits", "macvtap.k8slan.io/k8slan-veth-srl")]);
        assert!(!verdict(&pod_request("evil", srl(), json!([])), &lans).0);
        assert!(!verdict(&pod_request("evil2", srl(), json!([])), &lans).0);
        assert!(verdict(&pod_request("team", srl(), json!([])), &lans).0);
        // A LAN being deleted or invalid serves nothing either.
        let mut gone = (*lans[0]).clone();
        gone.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(5).unwrap()));
        assert!(!verdict(&pod_request("team", srl(), json!([])), &[Arc::new(gone)]).0);
        let mut bad = (*lans[0]).clone();
        bad.spec.ns = "..".into();
        assert!(!verdict(&pod_request("team", srl(), json!([])), &[Arc::new(bad)]).0);
    }

    #[test]
    fn updates_and_deletes_pass() {
        let mut body: Value = serde_json::from_slice(&pod_request(
            "evil",
            json!([container("limits", "macvtap.k8slan.io/k8slan-veth-srl")]),
            json!([]),
        ))
        .unwrap();
        body["request"]["operation"] = json!("UPDATE");
        assert!(verdict(&serde_json::to_vec(&body).unwrap(), &[]).0);
    }
}
