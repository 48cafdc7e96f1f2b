//! The NetworkAttachmentDefinitions of a LAN: two per spoke (`k8slan-veth-<spoke>` for pods,
//! `k8slan-mac-<spoke>` for VMs), in the LAN's namespace, owned by the LAN. [`plan`] decides, as
//! a pure function, which NADs to apply, which to prune and which names are taken by somebody else.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8slan_api::naming::{
    LAN_LABEL, MANAGED_BY, MANAGED_BY_LABEL, RESOURCE_NAME_ANNOTATION, nad_name, resource_name,
};
use k8slan_api::{LAN, SpokeKind};
use kube::{CustomResource, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// CNI version written into every NAD config.
pub const CNI_VERSION: &str = "1.0.0";

/// Multus' NetworkAttachmentDefinition (`k8s.cni.cncf.io/v1`); only the field k8slan uses.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "k8s.cni.cncf.io",
    version = "v1",
    kind = "NetworkAttachmentDefinition",
    plural = "network-attachment-definitions",
    namespaced
)]
pub struct NadSpec {
    /// The CNI configuration as a JSON string.
    #[serde(default)]
    pub config: String,
}

/// Why the NADs of a LAN cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum NadError {
    #[error("LAN {0} has no namespace, name or uid yet; it cannot own NADs")]
    Unidentified(String),
}

/// What the node agents are configured with. No longer written into NADs: the CNI plugins
/// read every node path from the node's `k8slan-cni.json` (written by `k8slan-agent
/// install-cni`), never from a network configuration, which a NAD author controls.
/// `dev_dir` stays only until the controller's `--dev-dir` flag is removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniSettings {
    /// The agents' `--dev-dir` (tap device nodes of VM spokes); unused by the NADs.
    pub dev_dir: String,
}

impl Default for CniSettings {
    fn default() -> Self {
        CniSettings {
            dev_dir: k8slan_api::naming::DEFAULT_DEV_DIR.into(),
        }
    }
}

/// The CNI configuration of one spoke's NAD (keys sorted, as serde_json writes them).
pub fn cni_config(kind: SpokeKind, spoke: &str, _settings: &CniSettings) -> String {
    let name = nad_name(kind, spoke);
    let mut cfg = serde_json::Map::new();
    cfg.insert("cniVersion".into(), CNI_VERSION.into());
    cfg.insert("name".into(), name.into());
    cfg.insert("type".into(), kind.cni_type().into());
    if kind == SpokeKind::Veth {
        cfg.insert("veth".into(), spoke.into());
    }
    serde_json::Value::Object(cfg).to_string()
}

/// Every NAD a LAN should own, in spoke order (veth then mac per spoke).
pub fn desired(
    lan: &LAN,
    settings: &CniSettings,
) -> Result<Vec<NetworkAttachmentDefinition>, NadError> {
    let namespace = lan.namespace();
    let owner = lan.controller_owner_ref(&());
    let (Some(namespace), Some(owner)) = (namespace, owner) else {
        return Err(NadError::Unidentified(lan.name_any()));
    };
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (LAN_LABEL.to_string(), lan.name_any()),
    ]);
    let mut out = Vec::with_capacity(lan.spec.spokes.len() * 2);
    for spoke in &lan.spec.spokes {
        for kind in SpokeKind::ALL {
            let name = nad_name(kind, spoke);
            out.push(NetworkAttachmentDefinition {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(namespace.clone()),
                    labels: Some(labels.clone()),
                    annotations: Some(BTreeMap::from([(
                        RESOURCE_NAME_ANNOTATION.to_string(),
                        resource_name(kind, spoke),
                    )])),
                    owner_references: Some(vec![owner.clone()]),
                    ..ObjectMeta::default()
                },
                spec: NadSpec {
                    config: cni_config(kind, spoke, settings),
                },
            });
        }
    }
    Ok(out)
}

/// A NAD name that the LAN wants but that belongs to somebody else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NadConflict {
    pub name: String,
    /// Who owns it instead, as far as its metadata says (`"nobody"` when it has no controller).
    pub owner: String,
}

/// What to do with a LAN's NADs.
#[derive(Debug, Default)]
pub struct NadPlan {
    /// NADs to server-side apply: missing or different from what the LAN wants.
    pub apply: Vec<NetworkAttachmentDefinition>,
    /// Names of NADs this LAN owns that no spoke wants any more.
    pub prune: Vec<String>,
    /// Wanted names held by objects this LAN does not control: never overwritten.
    pub conflicts: Vec<NadConflict>,
}

/// True when `nad`'s controller owner reference is the LAN with `uid`.
pub fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    controller_of(meta).is_some_and(|o| o.uid == uid)
}

fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

/// Compares what the LAN wants (`desired`, empty when the LAN is not accepted) with the NADs that
/// exist in its namespace (`existing`, any NAD there) and says what to apply, prune and report.
pub fn plan(
    lan_uid: &str,
    desired: Vec<NetworkAttachmentDefinition>,
    existing: &[NetworkAttachmentDefinition],
) -> NadPlan {
    let by_name: BTreeMap<String, &NetworkAttachmentDefinition> =
        existing.iter().map(|n| (n.name_any(), n)).collect();
    let wanted: BTreeSet<String> = desired.iter().map(|n| n.name_any()).collect();
    let mut out = NadPlan::default();
    for want in desired {
        match by_name.get(&want.name_any()) {
            None => out.apply.push(want),
            Some(have) if !controlled_by(&have.metadata, lan_uid) => {
                out.conflicts.push(NadConflict {
                    name: want.name_any(),
                    owner: controller_of(&have.metadata)
                        .map(|o| format!("{} {}", o.kind, o.name))
                        .unwrap_or_else(|| "nobody (created by hand or another tool)".into()),
                })
            }
            Some(have) if !matches(have, &want) => out.apply.push(want),
            Some(_) => {}
        }
    }
    out.prune = existing
        .iter()
        .filter(|n| controlled_by(&n.metadata, lan_uid) && !wanted.contains(&n.name_any()))
        .map(|n| n.name_any())
        .collect();
    out
}

/// True when `have` already carries everything `want` sets (extra labels or annotations that
/// other tools add are fine).
fn matches(have: &NetworkAttachmentDefinition, want: &NetworkAttachmentDefinition) -> bool {
    let contains = |have: &Option<BTreeMap<String, String>>,
                    want: &Option<BTreeMap<String, String>>| {
        want.iter()
            .flatten()
            .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    have.spec == want.spec
        && contains(&have.metadata.labels, &want.metadata.labels)
        && contains(&have.metadata.annotations, &want.metadata.annotations)
        && want.metadata.owner_references.iter().flatten().all(|o| {
            have.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|h| h == o)
        })
}

/// The `GroupVersionKind` header a server-side apply body needs.
pub fn with_type_meta(nad: &NetworkAttachmentDefinition) -> serde_json::Value {
    let mut v = serde_json::to_value(nad).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "apiVersion".into(),
            NetworkAttachmentDefinition::api_version(&()).into(),
        );
        obj.insert("kind".into(), NetworkAttachmentDefinition::kind(&()).into());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::lan;

    #[test]
    fn nads_carry_no_node_path() {
        let custom = CniSettings {
            dev_dir: "/var/lib/k8slan/dev".into(),
        };
        for kind in SpokeKind::ALL {
            let cfg: serde_json::Value =
                serde_json::from_str(&cni_config(kind, "vm", &custom)).unwrap();
            for key in ["devDir", "logFile", "logLevel", "preparedDir"] {
                assert!(cfg.get(key).is_none(), "{kind}: {key} in {cfg}");
            }
        }
    }

    #[test]
    fn two_nads_per_spoke_with_the_agreed_config() {
        let l = lan("default", "lan-a", "uid-a", &["srl", "vm"]);
        let nads = desired(&l, &CniSettings::default()).unwrap();
        let names: Vec<_> = nads.iter().map(|n| n.name_any()).collect();
        assert_eq!(
            names,
            [
                "k8slan-veth-srl",
                "k8slan-mac-srl",
                "k8slan-veth-vm",
                "k8slan-mac-vm"
            ]
        );
        assert_eq!(
            nads[0].spec.config,
            r#"{"cniVersion":"1.0.0","name":"k8slan-veth-srl","type":"k8slanveth","veth":"srl"}"#
        );
        assert_eq!(
            nads[3].spec.config,
            r#"{"cniVersion":"1.0.0","name":"k8slan-mac-vm","type":"k8slanmacvtap"}"#
        );
        let n = &nads[1];
        assert_eq!(n.namespace().as_deref(), Some("default"));
        assert_eq!(
            n.annotations()[RESOURCE_NAME_ANNOTATION],
            "macvtap.k8slan.io/k8slan-mac-srl"
        );
        assert_eq!(n.labels()[LAN_LABEL], "lan-a");
        assert_eq!(n.labels()[MANAGED_BY_LABEL], "k8slan");
        let owner = &n.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("LAN", "lan-a", "uid-a")
        );
        assert_eq!(owner.controller, Some(true));
        let body = with_type_meta(n);
        assert_eq!(body["apiVersion"], "k8s.cni.cncf.io/v1");
        assert_eq!(body["kind"], "NetworkAttachmentDefinition");
    }

    #[test]
    fn a_lan_without_uid_cannot_own_nads() {
        let mut l = lan("default", "lan-a", "uid-a", &["srl"]);
        l.metadata.uid = None;
        assert!(
            desired(&l, &CniSettings::default())
                .unwrap_err()
                .to_string()
                .contains("LAN lan-a has no")
        );
    }

    #[test]
    fn plan_applies_missing_and_changed_prunes_removed_and_reports_foreign() {
        let old = lan("default", "lan-a", "uid-a", &["keep", "gone", "taken"]);
        let mut existing = desired(&old, &CniSettings::default()).unwrap();
        // Somebody changed one config by hand: it gets re-applied.
        existing[0].spec.config = "{}".into();
        // Somebody else's NAD holds one of our names.
        let foreign = existing
            .iter_mut()
            .find(|n| n.name_any() == "k8slan-veth-taken")
            .unwrap();
        foreign.metadata.owner_references = None;
        // A NAD of another LAN in the same namespace is none of our business.
        let other = desired(
            &lan("default", "lan-b", "uid-b", &["x"]),
            &CniSettings::default(),
        )
        .unwrap();
        existing.extend(other);

        let now = lan("default", "lan-a", "uid-a", &["keep", "taken", "new"]);
        let p = plan(
            "uid-a",
            desired(&now, &CniSettings::default()).unwrap(),
            &existing,
        );
        let applied: Vec<_> = p.apply.iter().map(|n| n.name_any()).collect();
        assert_eq!(
            applied,
            ["k8slan-veth-keep", "k8slan-veth-new", "k8slan-mac-new"]
        );
        assert_eq!(p.prune, ["k8slan-veth-gone", "k8slan-mac-gone"]);
        assert_eq!(p.conflicts.len(), 1);
        assert_eq!(p.conflicts[0].name, "k8slan-veth-taken");
        assert!(p.conflicts[0].owner.starts_with("nobody"));
    }

    #[test]
    fn plan_is_empty_when_everything_is_in_place() {
        let l = lan("default", "lan-a", "uid-a", &["a", "b"]);
        let mut existing = desired(&l, &CniSettings::default()).unwrap();
        // Labels added by other tools do not cause re-applies.
        existing[0]
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "x".into());
        let p = plan(
            "uid-a",
            desired(&l, &CniSettings::default()).unwrap(),
            &existing,
        );
        assert!(
            p.apply.is_empty() && p.prune.is_empty() && p.conflicts.is_empty(),
            "{p:?}"
        );
    }

    #[test]
    fn a_rejected_lan_prunes_all_its_nads() {
        let l = lan("default", "lan-a", "uid-a", &["a"]);
        let existing = desired(&l, &CniSettings::default()).unwrap();
        let p = plan("uid-a", Vec::new(), &existing);
        assert_eq!(p.prune, ["k8slan-veth-a", "k8slan-mac-a"]);
        assert!(p.apply.is_empty() && p.conflicts.is_empty());
    }

    #[test]
    fn nads_of_a_recreated_lan_with_a_new_uid_are_conflicts_not_stolen() {
        let old = lan("default", "lan-a", "uid-old", &["a"]);
        let existing = desired(&old, &CniSettings::default()).unwrap();
        let new = lan("default", "lan-a", "uid-new", &["a"]);
        let p = plan(
            "uid-new",
            desired(&new, &CniSettings::default()).unwrap(),
            &existing,
        );
        assert_eq!(p.conflicts.len(), 2);
        assert_eq!(p.conflicts[0].owner, "LAN lan-a");
        assert!(p.prune.is_empty());
    }
}
