//! The validating webhook for LANs: an `admission.k8s.io/v1` AdmissionReview in, a review with
//! the verdict out. [`review`] is pure: it gets the LANs the controller's cache holds.
//!
//! It denies, naming the field and, for clashes, the other LAN (`namespace/name`):
//! - a spec that breaks [`k8slan_api::validate_spec`];
//! - an update that changes `spec.ns` (the CRD has the same CEL rule; this gives the message even
//!   where CEL is off);
//! - a create whose `ns`, `vni` or a spoke is already used by another LAN, and an update that
//!   introduces such a clash. Clashes the LAN already had before the update are allowed with a
//!   warning, so that a LAN the controller rejected can still be fixed step by step.

use std::sync::Arc;

use k8slan_api::report::LanRef;
use k8slan_api::{LAN, validate_spec};
use kube::ResourceExt;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use crate::conflict::{self, LanKeys};

/// A request body that is not an AdmissionReview.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("request body is not an admission.k8s.io/v1 AdmissionReview: {0}")]
    Body(#[from] serde_json::Error),
    #[error("AdmissionReview has no request")]
    NoRequest,
}

/// Verdict and the review to send back.
#[derive(Debug)]
pub struct Verdict {
    pub allowed: bool,
    pub review: AdmissionReview<DynamicObject>,
}

/// Reads an AdmissionReview body and answers it.
pub fn handle(body: &[u8], stored: &[Arc<LAN>]) -> Result<Verdict, WebhookError> {
    let incoming: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
    let request: AdmissionRequest<DynamicObject> =
        incoming.try_into().map_err(|_| WebhookError::NoRequest)?;
    let response = review(&request, stored);
    Ok(Verdict {
        allowed: response.allowed,
        review: response.into_review(),
    })
}

fn as_lan(obj: &DynamicObject) -> Result<LAN, String> {
    serde_json::to_value(obj)
        .and_then(serde_json::from_value::<LAN>)
        .map_err(|e| format!("the object is not a valid LAN: {e}"))
}

/// Answers one admission request for a LAN.
pub fn review(request: &AdmissionRequest<DynamicObject>, stored: &[Arc<LAN>]) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return response;
    }
    let Some(obj) = &request.object else {
        return response.deny("the request carries no LAN object");
    };
    let lan = match as_lan(obj) {
        Ok(l) => l,
        Err(e) => return response.deny(e),
    };
    let namespace = lan
        .namespace()
        .or_else(|| request.namespace.clone())
        .unwrap_or_default();
    let name = if request.name.is_empty() {
        lan.name_any()
    } else {
        request.name.clone()
    };
    let me = LanRef::new(namespace, name);
    if let Err(e) = validate_spec(&lan.spec) {
        return response.deny(format!("LAN {me}: {e}"));
    }
    let old = match (&request.operation, &request.old_object) {
        (Operation::Update, Some(o)) => match as_lan(o) {
            Ok(o) => Some(o),
            Err(e) => return response.deny(format!("LAN {me}: old object: {e}")),
        },
        _ => None,
    };
    if let Some(old) = &old
        && old.spec.ns != lan.spec.ns
    {
        return response.deny(format!(
            "LAN {me}: spec.ns is immutable (was {:?}, now {:?}): the LAN namespace exists on every node; create a new LAN to use another namespace",
            old.spec.ns, lan.spec.ns
        ));
    }

    let others: Vec<LanKeys<'_>> = stored
        .iter()
        .map(|l| LanKeys {
            lan: LanRef::new(l.namespace().unwrap_or_default(), l.name_any()),
            created: l.metadata.creation_timestamp.as_ref().map(|t| t.0),
            spec: &l.spec,
        })
        .collect();
    let view = LanKeys {
        lan: me.clone(),
        created: lan.metadata.creation_timestamp.as_ref().map(|t| t.0),
        spec: &lan.spec,
    };
    let now = conflict::clashes(&view, &others);
    let before = old
        .as_ref()
        .map(|o| {
            conflict::clashes(
                &LanKeys {
                    lan: me.clone(),
                    created: view.created,
                    spec: &o.spec,
                },
                &others,
            )
        })
        .unwrap_or_default();
    let (kept, new): (Vec<_>, Vec<_>) = now.into_iter().partition(|c| before.contains(c));
    if !new.is_empty() {
        return response.deny(format!(
            "LAN {me} conflicts with another LAN (ns, vni and spoke names are unique across the cluster): {}",
            conflict::describe(&new)
        ));
    }
    let mut response = response;
    if !kept.is_empty() {
        response.warnings = Some(vec![format!(
            "LAN {me} still conflicts with another LAN and stays not accepted until that is fixed: {}",
            conflict::describe(&kept)
        )]);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::spec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::{Value, json};

    fn stored(ns: &str, name: &str, lan_ns: &str, vni: u32, spokes: &[&str]) -> Arc<LAN> {
        let mut l = LAN::new(name, spec(lan_ns, vni, spokes));
        l.metadata.namespace = Some(ns.into());
        l.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1000).unwrap()));
        Arc::new(l)
    }

    fn lan_json(name: &str, spec: Value) -> Value {
        json!({"apiVersion": "lan.k8slan.io/v1beta1", "kind": "LAN",
               "metadata": {"name": name, "namespace": "default"}, "spec": spec})
    }

    fn request(op: &str, object: Value, old: Option<Value>) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "lan.k8slan.io", "version": "v1beta1", "kind": "LAN"},
                "resource": {"group": "lan.k8slan.io", "version": "v1beta1", "resource": "lans"},
                "name": object["metadata"]["name"],
                "namespace": "default",
                "operation": op,
                "userInfo": {"username": "admin"},
                "object": object,
                "oldObject": old,
                "dryRun": false
            }
        }))
        .unwrap()
    }

    fn answer(body: &[u8], lans: &[Arc<LAN>]) -> Value {
        serde_json::to_value(handle(body, lans).unwrap().review).unwrap()
    }

    fn good_spec(ns: &str, vni: u32, spokes: &[&str]) -> Value {
        json!({"ns": ns, "bridge": "br0", "vxlan": "vx0", "vni": vni,
               "defaultVxlanDev": "eth1", "spokes": spokes})
    }

    #[test]
    fn a_unique_lan_is_allowed_and_the_uid_echoed() {
        let lans = [stored("default", "a", "knlvrf", 222, &["srl"])];
        let out = answer(
            &request(
                "CREATE",
                lan_json("b", good_spec("other", 7, &["vm"])),
                None,
            ),
            &lans,
        );
        assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!(
            out["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
        assert_eq!(out["response"]["allowed"], true);
    }

    #[test]
    fn a_clash_is_denied_naming_the_field_and_the_other_lan() {
        let lans = [stored("team", "a", "knlvrf", 222, &["srl"])];
        let out = answer(
            &request(
                "CREATE",
                lan_json("b", good_spec("knlvrf", 222, &["srl", "vm"])),
                None,
            ),
            &lans,
        );
        assert_eq!(out["response"]["allowed"], false);
        let msg = out["response"]["status"]["message"].as_str().unwrap();
        assert!(
            msg.starts_with("LAN default/b conflicts with another LAN"),
            "{msg}"
        );
        for part in [
            "spec.ns: ns \"knlvrf\" is already used by LAN team/a",
            "spec.vni: vni 222 is already used by LAN team/a",
            "spec.spokes: spoke \"srl\" is already used by LAN team/a",
        ] {
            assert!(msg.contains(part), "{msg} lacks {part}");
        }
    }

    #[test]
    fn invalid_specs_and_ns_changes_are_denied() {
        let out = answer(
            &request(
                "CREATE",
                lan_json("b", good_spec("../etc", 0, &["br0"])),
                None,
            ),
            &[],
        );
        assert_eq!(out["response"]["allowed"], false);
        let msg = out["response"]["status"]["message"].as_str().unwrap();
        assert!(msg.contains("spec.ns"), "{msg}");
        assert!(msg.contains("spec.vni"), "{msg}");
        assert!(msg.contains("spec.spokes[0]"), "{msg}");

        let old = lan_json("b", good_spec("one", 5, &["x"]));
        let new = lan_json("b", good_spec("two", 5, &["x"]));
        let out = answer(&request("UPDATE", new, Some(old)), &[]);
        assert_eq!(out["response"]["allowed"], false);
        let msg = out["response"]["status"]["message"].as_str().unwrap();
        assert!(msg.contains("spec.ns is immutable"), "{msg}");
    }

    #[test]
    fn live_changes_are_allowed_unless_they_introduce_a_clash() {
        let lans = [
            stored("default", "a", "na", 1, &["s1"]),
            stored("default", "b", "nb", 2, &["s2"]),
        ];
        let old = lan_json("b", good_spec("nb", 2, &["s2"]));
        // Adding a spoke and changing the VNI on the fly: fine.
        let new = lan_json("b", good_spec("nb", 3, &["s2", "s3"]));
        let out = answer(&request("UPDATE", new, Some(old.clone())), &lans);
        assert_eq!(out["response"]["allowed"], true, "{out}");
        // Taking a's spoke: denied.
        let new = lan_json("b", good_spec("nb", 2, &["s2", "s1"]));
        let out = answer(&request("UPDATE", new, Some(old)), &lans);
        assert_eq!(out["response"]["allowed"], false);
        assert!(
            out["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("spoke \"s1\" is already used by LAN default/a")
        );
    }

    #[test]
    fn an_existing_clash_does_not_block_fixing_the_lan() {
        // b was created while the webhook was down and clashes with a on vni 1 and spoke s1.
        let lans = [
            stored("default", "a", "na", 1, &["s1"]),
            stored("default", "b", "nb", 1, &["s1"]),
        ];
        let old = lan_json("b", good_spec("nb", 1, &["s1"]));
        let new = lan_json("b", good_spec("nb", 9, &["s1"]));
        let out = answer(&request("UPDATE", new, Some(old)), &lans);
        assert_eq!(out["response"]["allowed"], true, "{out}");
        let warning = out["response"]["warnings"][0].as_str().unwrap();
        assert!(warning.contains("spoke \"s1\""), "{warning}");
    }

    #[test]
    fn deletes_pass_and_garbage_is_an_error() {
        let old = lan_json("b", good_spec("nb", 1, &["s1"]));
        let out = answer(&request("DELETE", old.clone(), Some(old)), &[]);
        assert_eq!(out["response"]["allowed"], true);
        let err = handle(b"{\"nope\":1", &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("not an admission.k8s.io/v1 AdmissionReview")
        );
        let err = handle(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            &[],
        )
        .unwrap_err();
        assert!(matches!(err, WebhookError::NoRequest));
    }
}
