//! The validating webhook for LANs: an `admission.k8s.io/v1` AdmissionReview in, a review with
//! the verdict out. [`review`] is pure: it gets the LANs the controller's cache holds.
//!
//! It denies, naming the field and, for clashes, the other LAN (`namespace/name`):
//! - a LAN that breaks [`k8slan_api::validate::validate_lan`] (its spec, its name, its
//!   `allowedNamespaces` against its own namespace);
//! - an update that changes `spec.ns` (the CRD has the same CEL rule; this gives the message even
//!   where CEL is off);
//! - a create whose `ns`, `vni` or a spoke is already used by another LAN, or whose spoke is
//!   another LAN's underlay device (or the other way round), and an update that introduces such
//!   a clash. Clashes the LAN already had before the update are allowed with a warning, so that a
//!   LAN the controller rejected can still be fixed step by step;
//! - a create or update after which some node could carry more spokes of all LANs than
//!   [`Limits::max_spokes_per_node`] (unless the update does not make it worse).
//!
//! Pods are reviewed by [`crate::tenancy`], through the same [`answer`].

use std::sync::Arc;

use k8slan_api::LAN;
use k8slan_api::report::LanRef;
use k8slan_api::validate::validate_lan;
use kube::ResourceExt;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};

use crate::conflict::{self, LanKeys};

/// Default of [`Limits::max_spokes_per_node`] (see docs/controller.md for the arithmetic).
pub const DEFAULT_MAX_SPOKES_PER_NODE: usize = 1000;

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

/// Cluster-wide bounds the webhook enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most spokes of all LANs one node may carry (chart value `controller.maxSpokesPerNode`).
    pub max_spokes_per_node: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_spokes_per_node: DEFAULT_MAX_SPOKES_PER_NODE,
        }
    }
}

/// Reads an AdmissionReview body and answers it with `review`.
pub fn answer(
    body: &[u8],
    review: impl FnOnce(&AdmissionRequest<DynamicObject>) -> AdmissionResponse,
) -> Result<Verdict, WebhookError> {
    let incoming: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
    let request: AdmissionRequest<DynamicObject> =
        incoming.try_into().map_err(|_| WebhookError::NoRequest)?;
    let response = review(&request);
    Ok(Verdict {
        allowed: response.allowed,
        review: response.into_review(),
    })
}

/// Reads a LAN AdmissionReview body and answers it.
pub fn handle(body: &[u8], stored: &[Arc<LAN>], limits: Limits) -> Result<Verdict, WebhookError> {
    answer(body, |r| review(r, stored, limits))
}

fn as_lan(obj: &DynamicObject) -> Result<LAN, String> {
    serde_json::to_value(obj)
        .and_then(serde_json::from_value::<LAN>)
        .map_err(|e| format!("the object is not a valid LAN: {e}"))
}

fn keys_of(l: &LAN) -> LanKeys<'_> {
    LanKeys {
        lan: LanRef::new(l.namespace().unwrap_or_default(), l.name_any()),
        created: l.metadata.creation_timestamp.as_ref().map(|t| t.0),
        spec: &l.spec,
    }
}

/// Answers one admission request for a LAN.
pub fn review(
    request: &AdmissionRequest<DynamicObject>,
    stored: &[Arc<LAN>],
    limits: Limits,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return response;
    }
    let (me, lan, old) = match incoming(request) {
        Ok(x) => x,
        Err(denial) => return response.deny(denial),
    };
    let others: Vec<LanKeys<'_>> = stored
        .iter()
        .map(|l| keys_of(l))
        .filter(|k| k.lan != me)
        .collect();
    let view = LanKeys {
        lan: me.clone(),
        created: lan.metadata.creation_timestamp.as_ref().map(|t| t.0),
        spec: &lan.spec,
    };
    let before = old.as_ref().map(|o| LanKeys {
        spec: &o.spec,
        ..view.clone()
    });
    match judge(&view, before.as_ref(), &others, limits) {
        Ok(warnings) if warnings.is_empty() => response,
        Ok(warnings) => {
            let mut response = response;
            response.warnings = Some(warnings);
            response
        }
        Err(denial) => response.deny(denial),
    }
}

/// The LAN of a create or update, checked on its own: its reference, the LAN and, on update, the
/// old LAN. The error is the denial message.
fn incoming(
    request: &AdmissionRequest<DynamicObject>,
) -> Result<(LanRef, LAN, Option<LAN>), String> {
    let obj = request
        .object
        .as_ref()
        .ok_or("the request carries no LAN object")?;
    let lan = as_lan(obj)?;
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
    validate_lan(&me.namespace, &me.name, &lan.spec).map_err(|e| format!("LAN {me}: {e}"))?;
    let old = match (&request.operation, &request.old_object) {
        (Operation::Update, Some(o)) => {
            Some(as_lan(o).map_err(|e| format!("LAN {me}: old object: {e}"))?)
        }
        _ => None,
    };
    if let Some(old) = &old
        && old.spec.ns != lan.spec.ns
    {
        return Err(format!(
            "LAN {me}: spec.ns is immutable (was {:?}, now {:?}): the LAN namespace exists on every node; create a new LAN to use another namespace",
            old.spec.ns, lan.spec.ns
        ));
    }
    Ok((me, lan, old))
}

/// The cross-LAN rules: denies what the change introduces, warns about what it keeps.
fn judge(
    view: &LanKeys<'_>,
    before: Option<&LanKeys<'_>>,
    others: &[LanKeys<'_>],
    limits: Limits,
) -> Result<Vec<String>, String> {
    let me = &view.lan;
    let mut warnings = Vec::new();
    let now = conflict::clashes(view, others);
    let was = before
        .map(|b| conflict::clashes(b, others))
        .unwrap_or_default();
    let (kept, new): (Vec<_>, Vec<_>) = now.into_iter().partition(|c| was.contains(c));
    if !new.is_empty() {
        return Err(format!(
            "LAN {me} conflicts with another LAN (ns, vni and spoke names are unique across the cluster): {}",
            conflict::describe(&new)
        ));
    }
    if !kept.is_empty() {
        warnings.push(format!(
            "LAN {me} still conflicts with another LAN and stays not accepted until that is fixed: {}",
            conflict::describe(&kept)
        ));
    }
    let now = conflict::underlay_clashes(view, others);
    let was = before
        .map(|b| conflict::underlay_clashes(b, others))
        .unwrap_or_default();
    let new: Vec<String> = now
        .iter()
        .filter(|c| !was.contains(c))
        .map(ToString::to_string)
        .collect();
    if !new.is_empty() {
        return Err(format!("LAN {me}: {}", new.join("; ")));
    }
    check_node_load(view, before, others, limits)?;
    Ok(warnings)
}

fn check_node_load(
    view: &LanKeys<'_>,
    before: Option<&LanKeys<'_>>,
    others: &[LanKeys<'_>],
    limits: Limits,
) -> Result<(), String> {
    let with = |spec| {
        let mut specs: Vec<_> = others.iter().map(|o| o.spec).collect();
        specs.push(spec);
        conflict::busiest_node(&specs)
    };
    let (node, load) = with(view.spec);
    let limit = limits.max_spokes_per_node;
    let worse = before.is_none_or(|b| load > with(b.spec).1);
    if load > limit && worse {
        return Err(format!(
            "LAN {}: with its {} spokes, {node} could carry {load} spokes of all LANs, more than the limit of {limit} (chart value controller.maxSpokesPerNode, flag --max-spokes-per-node): every spoke is two extended resources in the Node object, which must stay far below etcd's object size limit; use fewer spokes, or vxlanDevMap to put the LAN on fewer nodes",
            view.lan,
            view.spec.spokes.len()
        ));
    }
    Ok(())
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
        answer_with(body, lans, Limits::default())
    }

    fn answer_with(body: &[u8], lans: &[Arc<LAN>], limits: Limits) -> Value {
        serde_json::to_value(handle(body, lans, limits).unwrap().review).unwrap()
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
        let err = handle(b"{\"nope\":1", &[], Limits::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("not an admission.k8s.io/v1 AdmissionReview")
        );
        let err = handle(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            &[],
            Limits::default(),
        )
        .unwrap_err();
        assert!(matches!(err, WebhookError::NoRequest));
    }

    #[test]
    fn lan_level_rules_and_underlays_of_other_lans_are_denied() {
        let mut own = good_spec("nb", 5, &["s1"]);
        own["allowedNamespaces"] = json!(["default"]);
        let out = answer(&request("CREATE", lan_json("b", own), None), &[]);
        let msg = out["response"]["status"]["message"].as_str().unwrap();
        assert!(msg.contains("spec.allowedNamespaces[0]"), "{msg}");
        let out = answer(
            &request(
                "CREATE",
                lan_json(&"n".repeat(64), good_spec("nb", 5, &["s1"])),
                None,
            ),
            &[],
        );
        let msg = out["response"]["status"]["message"].as_str().unwrap();
        assert!(msg.contains("metadata.name"), "{msg}");

        let mut a = stored("team", "a", "na", 1, &["s1"]);
        Arc::get_mut(&mut a).unwrap().spec.default_vxlan_dev = Some("ens5".into());
        let out = answer(
            &request("CREATE", lan_json("b", good_spec("nb", 2, &["ens5"])), None),
            &[a],
        );
        let msg = out["response"]["status"]["message"].as_str().unwrap();
        assert!(
            msg.contains("spoke \"ens5\" is an underlay device of LAN team/a"),
            "{msg}"
        );
    }

    #[test]
    fn spokes_past_the_node_limit_are_denied_naming_the_limit() {
        let limits = Limits {
            max_spokes_per_node: 4,
        };
        let mut a = stored("default", "a", "na", 1, &["s1", "s2", "s3"]);
        let only_w1 = Arc::get_mut(&mut a).unwrap();
        only_w1.spec.default_vxlan_dev = None;
        only_w1
            .spec
            .vxlan_dev_map
            .insert("w1".into(), "eth1".into());
        let lans = [a];
        let out = answer_with(
            &request(
                "CREATE",
                lan_json("b", good_spec("nb", 2, &["t1", "t2"])),
                None,
            ),
            &lans,
            limits,
        );
        assert_eq!(out["response"]["allowed"], false);
        let msg = out["response"]["status"]["message"].as_str().unwrap();
        assert!(
            msg.contains("node w1 could carry 5 spokes of all LANs, more than the limit of 4"),
            "{msg}"
        );
        assert!(msg.contains("controller.maxSpokesPerNode"), "{msg}");
        // On other nodes only (vxlanDevMap instead of defaultVxlanDev): fine.
        let mut elsewhere = good_spec("nb", 2, &["t1", "t2"]);
        elsewhere.as_object_mut().unwrap().remove("defaultVxlanDev");
        elsewhere["vxlanDevMap"] = json!({"w9": "eth1"});
        let out = answer_with(
            &request("CREATE", lan_json("b", elsewhere), None),
            &lans,
            limits,
        );
        assert_eq!(out["response"]["allowed"], true, "{out}");
        // An update that adds no load to a cluster already past the limit is allowed.
        let old = lan_json("a", good_spec("na", 1, &["s1", "s2", "s3", "s4", "s5"]));
        let new = lan_json("a", good_spec("na", 1, &["s1", "s2", "s3", "s4", "s5"]));
        let out = answer_with(
            &request("UPDATE", new, Some(old)),
            &lans,
            Limits {
                max_spokes_per_node: 2,
            },
        );
        assert_eq!(out["response"]["allowed"], true, "{out}");
    }
}
