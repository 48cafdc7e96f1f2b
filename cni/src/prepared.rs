//! What a plugin may bind: only the link the k8slan agent recorded for the spoke
//! ([`PreparedSpoke`]), and only for a pod of a namespace the record admits. Pure rules; the
//! record is read by [`crate::node::load_record`].

use k8slan_api::naming::{self, SpokeKind};
use k8slan_api::prepared::PreparedSpoke;
use k8slan_api::validate;

use crate::config::{Attachment, Target};
use crate::error::{CniError, ErrorCode};
use crate::invocation::POD_NAMESPACE_ARG;
use crate::link::LinkState;

/// The record belongs to the spoke and kind `target` names, and its fields are names k8slan
/// could have written (a record is root-owned, but it is checked as any input is).
pub fn record_matches(record: &PreparedSpoke, target: &Target) -> Result<(), CniError> {
    let bad = |why: String| {
        CniError::new(
            ErrorCode::IoFailure,
            format!(
                "the prepared-spoke record of {} does not fit this network: {why}; the agent rewrites it on the next Allocate of resource {}",
                target.shown(),
                target.resource_hint()
            ),
        )
    };
    validate::spoke_name("record.spoke", &record.spoke).map_err(|e| bad(e.to_string()))?;
    validate::netns_name("record.netns", &record.netns).map_err(|e| bad(e.to_string()))?;
    validate::interface_name("record.link", &record.link).map_err(|e| bad(e.to_string()))?;
    let kind = target.plugin.spoke_kind();
    if record.kind != kind {
        return Err(bad(format!(
            "it is a {} spoke, this plugin binds {} spokes (resource {})",
            record.kind,
            kind,
            naming::resource_name(record.kind, &record.spoke)
        )));
    }
    if let Some(spoke) = target.spoke.as_deref().filter(|s| *s != record.spoke) {
        return Err(bad(format!(
            "it records spoke {:?}, not {spoke:?}",
            record.spoke
        )));
    }
    let (link, _) = naming::bound_link(kind, &record.netns, &record.spoke);
    if record.link != link || target.host_link != link {
        return Err(bad(format!(
            "it records link {:?}, the spoke's link is {link:?} and the network names {:?}",
            record.link, target.host_link
        )));
    }
    Ok(())
}

/// The pod (`K8S_POD_NAMESPACE` in `CNI_ARGS`) may hold the spoke: it runs in the LAN's
/// namespace or in one of the LAN's `spec.allowedNamespaces`.
pub fn admit(att: &Attachment, record: &PreparedSpoke) -> Result<(), CniError> {
    let lan = format!("{}/{}", record.lan_namespace, record.lan_name);
    let Some(ns) = att.env.pod_namespace() else {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!(
                "CNI_ARGS: {POD_NAMESPACE_ARG} is missing, so spoke {:?} of LAN {lan} cannot be bound: k8slan binds a spoke only for a pod of a namespace its LAN admits (Multus and the Kubernetes runtimes pass {POD_NAMESPACE_ARG}); nothing was moved",
                record.spoke
            ),
        ));
    };
    validate::namespace_name(&format!("CNI_ARGS: {POD_NAMESPACE_ARG}"), ns)
        .map_err(|e| CniError::new(ErrorCode::InvalidEnvironment, e.to_string()))?;
    if record.admits(ns) {
        return Ok(());
    }
    Err(CniError::new(
        ErrorCode::InvalidConfig,
        format!(
            "spoke {:?} belongs to LAN {lan}, which pods of namespace {ns:?} may not use (only namespace {:?}{}); run the pod in {:?} or add {ns:?} to the LAN's spec.allowedNamespaces; nothing was moved",
            record.spoke,
            record.lan_namespace,
            allowed_list(record),
            record.lan_namespace
        ),
    ))
}

fn allowed_list(record: &PreparedSpoke) -> String {
    if record.allowed_namespaces.is_empty() {
        String::new()
    } else {
        format!(" and {:?}", record.allowed_namespaces)
    }
}

/// `link`, found in the node's namespace under the recorded name, is the very link the agent
/// prepared: same index, the plugin's link kind and the alias of the spoke's role.
pub fn verify_link(
    record: &PreparedSpoke,
    target: &Target,
    link: &LinkState,
) -> Result<(), CniError> {
    let kind = target.plugin.link_kind();
    let (_, alias) = naming::bound_link(record.kind, &record.netns, &record.spoke);
    let mut differences = Vec::new();
    if link.name != record.link {
        differences.push(format!("name {:?}, recorded {:?}", link.name, record.link));
    }
    if link.index != record.ifindex {
        differences.push(format!(
            "ifindex {}, recorded {}",
            link.index, record.ifindex
        ));
    }
    if link.kind.as_deref() != Some(kind) {
        differences.push(format!(
            "a {}, not a {kind}",
            link.kind.as_deref().unwrap_or("device without kind")
        ));
    }
    if link.alias.as_deref() != Some(alias.as_str()) {
        differences.push(format!("alias {:?}, expected {alias:?}", link.alias));
    }
    if differences.is_empty() {
        return Ok(());
    }
    Err(CniError::new(
        ErrorCode::IoFailure,
        format!(
            "link {:?} in the node's namespace is not the {kind} the k8slan agent prepared for spoke {:?} ({}); nothing was moved. Request resource {} so that the agent prepares the spoke, and do not name other links in the network",
            link.name,
            record.spoke,
            differences.join("; "),
            naming::resource_name(record.kind, &record.spoke)
        ),
    ))
}

/// Whether `alias` (on a link named `CNI_IFNAME` in the pod) is the one the agent writes on the
/// link `target` binds: `k8slan:<lan-ns>/<role of the spoke>`. Without a known spoke, any
/// macvtap role.
pub fn alias_is_the_spokes(alias: &str, target: &Target) -> bool {
    let Some((_, role)) = alias
        .strip_prefix(naming::LINK_ALIAS_PREFIX)
        .and_then(|a| a.split_once('/'))
    else {
        return false;
    };
    match (&target.spoke, target.plugin.spoke_kind()) {
        (Some(spoke), SpokeKind::Veth) => role == naming::host_veth_role(spoke),
        (Some(spoke), SpokeKind::Mac) => role == naming::macvtap_role(spoke),
        (None, SpokeKind::Mac) => role.starts_with(&naming::macvtap_role("")),
        (None, SpokeKind::Veth) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PluginKind;

    fn record(kind: SpokeKind) -> PreparedSpoke {
        PreparedSpoke {
            lan_namespace: "lab".into(),
            lan_name: "lan1".into(),
            netns: "knl".into(),
            spoke: "srl".into(),
            kind,
            link: naming::bound_link(kind, "knl", "srl").0,
            ifindex: 7,
            allowed_namespaces: vec![],
        }
    }

    fn target(plugin: PluginKind, link: &str) -> Target {
        Target {
            plugin,
            host_link: link.into(),
            spoke: Some("srl".into()),
        }
    }

    fn link(name: &str, kind: &str, alias: Option<&str>) -> LinkState {
        LinkState {
            index: 7,
            name: name.into(),
            kind: Some(kind.into()),
            mac: None,
            mtu: None,
            up: true,
            promisc: false,
            alias: alias.map(str::to_owned),
        }
    }

    #[test]
    fn only_the_recorded_link_is_accepted() {
        let r = record(SpokeKind::Veth);
        let t = target(PluginKind::Veth, "srl");
        let good = link("srl", "veth", Some("k8slan:knl/spoke/srl"));
        verify_link(&r, &t, &good).unwrap();
        let wrong = [
            LinkState {
                index: 8,
                ..good.clone()
            },
            link("srl", "bridge", Some("k8slan:knl/spoke/srl")),
            link("srl", "veth", None),
            link("srl", "veth", Some("k8slan:other/spoke/srl")),
            link("srl", "veth", Some("k8slan:knl/port/srl")),
            link("srl", "veth", Some("k8slan:knl/spoke/srl2")),
        ];
        for l in wrong {
            let e = verify_link(&r, &t, &l).unwrap_err();
            assert_eq!(e.code, ErrorCode::IoFailure, "{l:?}");
            assert!(
                e.details.contains("macvtap.k8slan.io/k8slan-veth-srl"),
                "{e}"
            );
            assert!(e.details.contains("spoke \"srl\""), "{e}");
        }
    }

    #[test]
    fn records_of_another_kind_spoke_or_link_do_not_fit() {
        let r = record(SpokeKind::Veth);
        record_matches(&r, &target(PluginKind::Veth, "srl")).unwrap();
        assert!(record_matches(&r, &target(PluginKind::Macvtap, "mvt-srl")).is_err());
        let mut other = r.clone();
        other.spoke = "x".into();
        assert!(record_matches(&other, &target(PluginKind::Veth, "srl")).is_err());
        let mut eth0 = r.clone();
        eth0.link = "eth0".into();
        assert!(record_matches(&eth0, &target(PluginKind::Veth, "srl")).is_err());
        let mut bad_ns = r;
        bad_ns.netns = "../x".into();
        assert!(record_matches(&bad_ns, &target(PluginKind::Veth, "srl")).is_err());
    }

    #[test]
    fn aliases_of_the_spokes_role_only() {
        let t = target(PluginKind::Veth, "srl");
        assert!(alias_is_the_spokes("k8slan:knl/spoke/srl", &t));
        assert!(!alias_is_the_spokes("k8slan:knl/spoke/srl2", &t));
        assert!(!alias_is_the_spokes("k8slan:knl/port/srl", &t));
        assert!(!alias_is_the_spokes("other:knl/spoke/srl", &t));
        let m = Target {
            spoke: None,
            ..target(PluginKind::Macvtap, "mvh-01234567")
        };
        assert!(alias_is_the_spokes("k8slan:knl/macvtap/abcdefghijkl", &m));
        assert!(!alias_is_the_spokes("k8slan:knl/spoke/abcdefghijkl", &m));
    }
}
