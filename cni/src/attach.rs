//! ADD, DEL and CHECK of one attachment: bind the link the agent prepared in the node's
//! namespace to the pod, and give it back.

use std::net::IpAddr;
use std::path::Path;

use k8slan_api::prepared::PreparedSpoke;
use tracing::{info, instrument, warn};

use crate::config::{Attachment, PluginKind};
use crate::error::{CniError, ErrorCode};
use crate::ipam::Ipam;
use crate::link::{LinkError, LinkOps, LinkState, Side};
use crate::prepared;
use crate::result::{CniResult, IpConfig, IpNet, container_interface};
use crate::tap::DevNum;

fn io(e: LinkError) -> CniError {
    io_failure(e.to_string())
}

fn io_failure(details: String) -> CniError {
    CniError::new(ErrorCode::IoFailure, details)
}

fn check_failed(details: String) -> CniError {
    CniError::new(ErrorCode::CheckFailed, details)
}

/// What the node says about the spoke an `ADD` binds: the agent's record of it, checked to fit
/// the network and to admit the pod's namespace ([`Binding::authorize`] is the only way to make
/// one), and the node-private directory of the tap device nodes (from the node settings).
#[derive(Debug, Clone)]
pub struct Binding<'a> {
    record: &'a PreparedSpoke,
    dev_dir: &'a Path,
}

impl<'a> Binding<'a> {
    /// The record fits the network `att` names and admits the pod's namespace.
    pub fn authorize(
        att: &Attachment,
        record: &'a PreparedSpoke,
        dev_dir: &'a Path,
    ) -> Result<Binding<'a>, CniError> {
        prepared::admit(att, record)?;
        prepared::record_matches(record, &att.target)?;
        Ok(Binding { record, dev_dir })
    }
}

/// ADD: moves the prepared link into the pod as `CNI_IFNAME`, configures it and returns the
/// result. Nothing is touched unless the link in the node's namespace is exactly the one
/// recorded in `binding` (which admits the pod's namespace). On any failure after the IPAM
/// allocation everything is undone: the link goes back to the node's namespace under its
/// prepared name and settings, and the IPAM lease is released.
#[instrument(skip_all, fields(command = "ADD", container = %att.env.container_id, ifname = %att.env.ifname, host_link = %att.target.host_link, sandbox = %sandbox))]
pub fn add(
    att: &Attachment,
    binding: &Binding,
    sandbox: &str,
    links: &mut dyn LinkOps,
    mut ipam: Option<&mut dyn Ipam>,
) -> Result<CniResult, CniError> {
    let ifname = att.env.ifname.as_str();
    let original = prepared_link(att, links)?;
    prepared::verify_link(binding.record, &att.target, &original)?;
    if links.get(Side::Sandbox, ifname).map_err(io)?.is_some() {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!(
                "CNI_IFNAME: interface {ifname:?} already exists in the pod's network namespace; choose another name (network selection annotation <network>@<ifname>)"
            ),
        ));
    }
    let allocated = match ipam.as_deref_mut() {
        None => None,
        Some(ipam) => match ipam.add() {
            Ok(r) => Some(r),
            Err(e) => {
                // CNI 1.0.0 section 4: a failed delegated ADD is followed by a DEL.
                if let Err(del) = ipam.del() {
                    warn!(error = %del, "IPAM DEL after a failed IPAM ADD failed too");
                }
                return Err(e);
            }
        },
    };
    match bind(
        att,
        binding.dev_dir,
        sandbox,
        links,
        &original,
        allocated.as_ref(),
    ) {
        Ok(result) => {
            info!(mac = ?result.interfaces.first().and_then(|i| i.mac.as_deref()), "attached");
            Ok(match &att.prev_result {
                Some(prev) => prev.clone().merge(result),
                None => result,
            })
        }
        Err(e) => {
            warn!(error = %e, "ADD failed; rolling back");
            rollback(att, links, &original);
            if let Some(ipam) = ipam
                && let Err(del) = ipam.del()
            {
                warn!(error = %del, "rollback: IPAM DEL failed");
            }
            Err(e)
        }
    }
}

/// The link named as the prepared one in the node's namespace.
fn prepared_link(att: &Attachment, links: &mut dyn LinkOps) -> Result<LinkState, CniError> {
    let host_link = att.target.host_link.as_str();
    links.get(Side::Host, host_link).map_err(io)?.ok_or_else(|| {
        CniError::new(
            ErrorCode::TryAgainLater,
            format!(
                "the prepared {} {host_link:?} is not in the node's network namespace: the pod did not request resource {} (add it to the container's resources.limits), or the k8slan agent has not prepared it yet",
                att.target.plugin.link_kind(),
                att.target.resource_hint()
            ),
        )
    })
}

fn bind(
    att: &Attachment,
    dev_dir: &Path,
    sandbox: &str,
    links: &mut dyn LinkOps,
    original: &LinkState,
    allocated: Option<&CniResult>,
) -> Result<CniResult, CniError> {
    let ifname = att.env.ifname.as_str();
    let macvtap = att.target.plugin == PluginKind::Macvtap;
    let tap_before = if macvtap {
        links.tap_devnum(Side::Host, original).map_err(io)?
    } else {
        None
    };
    let moved = move_into_pod(att, links, original)?;
    if let Some(before) = tap_before {
        repoint_tap_nodes(links, dev_dir, ifname, &moved, before)?;
    }
    configure_in_pod(att, links, &moved)?;
    let mut result = CniResult::default();
    if let Some(alloc) = allocated {
        address_in_pod(links, &moved, alloc, &mut result)?;
    }
    let now = links
        .get(Side::Sandbox, ifname)
        .map_err(io)?
        .unwrap_or(moved);
    result
        .interfaces
        .push(container_interface(ifname, now.mac, sandbox));
    Ok(result)
}

/// Moves the prepared link into the pod as `CNI_IFNAME` and returns it there; a macvtap must
/// keep its ifindex.
fn move_into_pod(
    att: &Attachment,
    links: &mut dyn LinkOps,
    original: &LinkState,
) -> Result<LinkState, CniError> {
    let ifname = att.env.ifname.as_str();
    links.move_to(Side::Host, original, ifname).map_err(|e| {
        if e.is_exists() {
            CniError::new(
                ErrorCode::InvalidEnvironment,
                format!(
                    "CNI_IFNAME: interface {ifname:?} already exists in the pod's network namespace"
                ),
            )
        } else {
            io(e)
        }
    })?;
    let moved = links
        .get(Side::Sandbox, ifname)
        .map_err(io)?
        .ok_or_else(|| {
            io_failure(format!(
                "link {:?} was moved into the pod as {ifname:?} but is not there",
                original.name
            ))
        })?;
    if att.target.plugin == PluginKind::Macvtap && moved.index != original.index {
        // The device plugin handed the pod /dev/tap<ifindex> with the node's ifindex; KubeVirt
        // opens /dev/tap<ifindex in the pod>. They must be the same device.
        return Err(io_failure(format!(
            "macvtap {:?} got ifindex {} in the pod instead of {} (that index is taken there), so the tap device {} handed to the pod would not match; retry the pod",
            original.name,
            moved.index,
            original.index,
            k8slan_api::naming::container_tap_path(original.index)
        )));
    }
    Ok(moved)
}

/// Moving gave the tap the lowest free minor number: re-point the node the device plugin handed
/// the pod, before the runtime creates the container from it.
fn repoint_tap_nodes(
    links: &mut dyn LinkOps,
    dev_dir: &Path,
    ifname: &str,
    moved: &LinkState,
    before: DevNum,
) -> Result<(), CniError> {
    let after = links
        .tap_devnum(Side::Sandbox, moved)
        .map_err(io)?
        .ok_or_else(|| io_failure(format!("macvtap {ifname:?} has no tap device in the pod")))?;
    if after != before {
        let nodes = links
            .repoint_tap_nodes(dev_dir, before, after)
            .map_err(io)?;
        info!(%before, %after, ?nodes, "the tap device got another number in the pod; nodes re-pointed");
    }
    Ok(())
}

/// The link's settings in the pod (MTU, MAC; promiscuous and IPv6 off for a VM's macvtap), then
/// up.
fn configure_in_pod(
    att: &Attachment,
    links: &mut dyn LinkOps,
    moved: &LinkState,
) -> Result<(), CniError> {
    if let Some(mtu) = att.mtu {
        links.set_mtu(Side::Sandbox, moved, mtu).map_err(io)?;
    }
    if let Some((mac, source)) = att.mac {
        info!(%mac, ?source, "setting MAC");
        links.set_mac(Side::Sandbox, moved, mac).map_err(io)?;
    }
    if att.target.plugin == PluginKind::Macvtap {
        links.set_promisc(Side::Sandbox, moved, true).map_err(io)?;
        // The macvtap is the VM's wire: the VM behind the tap owns the addresses. The pod's own
        // IPv6 on it would send MLD and neighbour frames with the VM's MAC onto the LAN.
        links.set_ipv6(Side::Sandbox, moved, false).map_err(io)?;
    }
    links.set_up(Side::Sandbox, moved, true).map_err(io)?;
    Ok(())
}

/// The IPAM plugin's addresses and routes on the link in the pod, and in `result`.
fn address_in_pod(
    links: &mut dyn LinkOps,
    moved: &LinkState,
    alloc: &CniResult,
    result: &mut CniResult,
) -> Result<(), CniError> {
    for ip in &alloc.ips {
        links
            .add_address(Side::Sandbox, moved, ip.address)
            .map_err(io)?;
    }
    for route in &alloc.routes {
        let gw = route
            .gw
            .or_else(|| default_gateway(&alloc.ips, route.dst.addr));
        links
            .add_route(Side::Sandbox, moved, route.dst, gw)
            .map_err(io)?;
    }
    result.ips = alloc
        .ips
        .iter()
        .map(|ip| IpConfig {
            interface: Some(0),
            ..ip.clone()
        })
        .collect();
    result.routes = alloc.routes.clone();
    result.dns = alloc.dns.clone();
    Ok(())
}

/// A route without `gw` uses the gateway of the first address of the same family (CNI 1.0.0).
fn default_gateway(ips: &[IpConfig], dst: IpAddr) -> Option<IpAddr> {
    ips.iter()
        .filter(|ip| ip.address.addr.is_ipv4() == dst.is_ipv4())
        .find_map(|ip| ip.gateway)
}

/// Puts the link back as it was prepared: in the node's namespace, named as prepared, with its
/// original MTU, MAC, promiscuity and state. Best effort: failures are logged, the ADD error wins.
fn rollback(att: &Attachment, links: &mut dyn LinkOps, original: &LinkState) {
    let ifname = att.env.ifname.as_str();
    let host_link = att.target.host_link.as_str();
    let in_pod = match links.get(Side::Sandbox, ifname) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "rollback: cannot read the link in the pod");
            None
        }
    };
    if let Some(link) = in_pod.filter(|l| l.kind == original.kind) {
        let _ = links
            .set_up(Side::Sandbox, &link, false)
            .map_err(|e| warn!(error = %e, "rollback"));
        if let Err(e) = links.move_to(Side::Sandbox, &link, host_link) {
            warn!(error = %e, "rollback: cannot move the link back to the node's namespace");
            return;
        }
    }
    let Ok(Some(back)) = links.get(Side::Host, host_link) else {
        warn!("rollback: the link is not back in the node's namespace");
        return;
    };
    let undo = |r: Result<(), LinkError>| {
        if let Err(e) = r {
            warn!(error = %e, "rollback");
        }
    };
    if let Some(mtu) = original.mtu.filter(|m| Some(*m) != back.mtu) {
        undo(links.set_mtu(Side::Host, &back, mtu));
    }
    if let Some(mac) = original.mac.filter(|m| Some(*m) != back.mac) {
        undo(links.set_mac(Side::Host, &back, mac));
    }
    if back.promisc != original.promisc {
        undo(links.set_promisc(Side::Host, &back, original.promisc));
    }
    if original.up {
        undo(links.set_up(Side::Host, &back, true));
    }
    info!("rolled back: link is back in the node's namespace as prepared");
}

/// Whether `link` (named `CNI_IFNAME` in the pod) is the one this plugin bound: the right kind,
/// and either the alias the k8slan agent writes on this spoke's link or the MAC that
/// `prevResult` recorded for it. A DEL never takes away an interface some other plugin created
/// under the same name, nor one that a pod labelled with another spoke's or role's alias.
fn is_ours(att: &Attachment, sandbox: Option<&str>, link: &LinkState) -> bool {
    if link.kind.as_deref() != Some(att.target.plugin.link_kind()) {
        return false;
    }
    if let Some(alias) = link.alias.as_deref() {
        return prepared::alias_is_the_spokes(alias, &att.target);
    }
    let (Some(prev), Some(sandbox), Some(mac)) = (&att.prev_result, sandbox, link.mac) else {
        return false;
    };
    prev.interface_index(&att.env.ifname, sandbox)
        .and_then(|i| prev.interfaces[i].mac.as_deref())
        .is_some_and(|m| m.eq_ignore_ascii_case(&mac.to_string()))
}

/// DEL: gives the link back to the node's namespace under its prepared name (so the agent can
/// reuse it), or deletes it when that name is taken meanwhile; then releases the IPAM lease.
/// Idempotent: a missing namespace or link is success.
#[instrument(skip_all, fields(command = "DEL", container = %att.env.container_id, ifname = %att.env.ifname, host_link = %att.target.host_link, sandbox = ?sandbox))]
pub fn del(
    att: &Attachment,
    sandbox: Option<&str>,
    links: Option<&mut dyn LinkOps>,
    ipam: Option<&mut dyn Ipam>,
) -> Result<(), CniError> {
    let ifname = att.env.ifname.as_str();
    let host_link = att.target.host_link.as_str();
    let link_result = match links {
        None => {
            info!("no pod namespace; nothing to give back");
            Ok(())
        }
        Some(links) => give_back(att, sandbox, links, ifname, host_link),
    };
    let ipam_result = match ipam {
        Some(ipam) => ipam.del(),
        None => Ok(()),
    };
    link_result.and(ipam_result)
}

fn give_back(
    att: &Attachment,
    sandbox: Option<&str>,
    links: &mut dyn LinkOps,
    ifname: &str,
    host_link: &str,
) -> Result<(), CniError> {
    let Some(link) = links.get(Side::Sandbox, ifname).map_err(io)? else {
        info!("interface not in the pod; nothing to give back");
        return Ok(());
    };
    if !is_ours(att, sandbox, &link) {
        info!(kind = ?link.kind, "interface in the pod was not bound by this plugin; leaving it alone");
        return Ok(());
    }
    links.set_up(Side::Sandbox, &link, false).map_err(io)?;
    if att.target.plugin == PluginKind::Macvtap {
        links.set_promisc(Side::Sandbox, &link, false).map_err(io)?;
    }
    match links.move_to(Side::Sandbox, &link, host_link) {
        Ok(()) => {
            info!("link given back to the node's namespace");
            Ok(())
        }
        Err(e) if e.is_exists() => {
            info!("the node already has a link named like the prepared one; deleting the pod's");
            links.delete(Side::Sandbox, &link).map_err(io)
        }
        Err(e) => Err(io(e)),
    }
}

/// CHECK: the interface is in the pod under `CNI_IFNAME`, of the right kind, up, with the MAC
/// and addresses `prevResult` lists (and promiscuous for macvtap); then IPAM CHECK.
#[instrument(skip_all, fields(command = "CHECK", container = %att.env.container_id, ifname = %att.env.ifname, sandbox = %sandbox))]
pub fn check(
    att: &Attachment,
    sandbox: &str,
    links: &mut dyn LinkOps,
    ipam: Option<&mut dyn Ipam>,
) -> Result<(), CniError> {
    let ifname = att.env.ifname.as_str();
    let kind = att.target.plugin.link_kind();
    let prev = att.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidConfig,
            "prevResult is missing; CHECK needs the result of the preceding ADD",
        )
    })?;
    let link = links
        .get(Side::Sandbox, ifname)
        .map_err(io)?
        .ok_or_else(|| {
            check_failed(format!(
                "interface {ifname:?} is missing from the pod's network namespace {sandbox:?}"
            ))
        })?;
    if link.kind.as_deref() != Some(kind) {
        return Err(check_failed(format!(
            "interface {ifname:?} is a {:?}, expected a {kind}",
            link.kind
        )));
    }
    let index = prev.interface_index(ifname, sandbox).ok_or_else(|| {
        check_failed(format!(
            "prevResult lists no interface {ifname:?} in sandbox {sandbox:?}"
        ))
    })?;
    check_settings(att, &link, prev.interfaces[index].mac.as_deref())?;
    let present = links.addresses(Side::Sandbox, &link).map_err(io)?;
    check_addresses(ifname, &present, prev.ips_of(index))?;
    if let Some(ipam) = ipam {
        ipam.check()?;
    }
    Ok(())
}

/// CHECK of the link's settings: the MAC `prevResult` lists, up, promiscuous for a macvtap, the
/// configured MTU.
fn check_settings(att: &Attachment, link: &LinkState, mac: Option<&str>) -> Result<(), CniError> {
    let ifname = att.env.ifname.as_str();
    if let Some(expected) = mac {
        let actual = link.mac.map(|m| m.to_string()).unwrap_or_default();
        if !expected.eq_ignore_ascii_case(&actual) {
            return Err(check_failed(format!(
                "interface {ifname:?} has MAC {actual}, prevResult says {expected}"
            )));
        }
    }
    if !link.up {
        return Err(check_failed(format!("interface {ifname:?} is down")));
    }
    if att.target.plugin == PluginKind::Macvtap && !link.promisc {
        return Err(check_failed(format!(
            "macvtap {ifname:?} is not in promiscuous mode"
        )));
    }
    if let (Some(mtu), Some(actual)) = (att.mtu, link.mtu)
        && mtu != actual
    {
        return Err(check_failed(format!(
            "interface {ifname:?} has MTU {actual}, the configuration says {mtu}"
        )));
    }
    Ok(())
}

/// CHECK of the addresses `prevResult` lists for the interface: each is `present`.
fn check_addresses<'a>(
    ifname: &str,
    present: &[IpNet],
    listed: impl IntoIterator<Item = &'a IpConfig>,
) -> Result<(), CniError> {
    for ip in listed {
        if !present.contains(&ip.address) {
            return Err(check_failed(format!(
                "address {} of interface {ifname:?} is missing",
                ip.address
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PluginKind, Request, parse_request};
    use crate::mac::MacAddr;
    use crate::result::IpNet;
    use crate::tap::DevNum;
    use crate::testing::{FakeIpam, RecordingLinks, prepared_link, record};
    use k8slan_api::naming::SpokeKind;
    use std::collections::HashMap;

    const PREPARED: MacAddr = MacAddr([2, 0x11, 0, 0, 0, 1]);
    const POD: &str = "/var/run/netns/pod";

    /// The record of the spoke `att` binds (LAN lab/lan1).
    fn rec(att: &Attachment) -> PreparedSpoke {
        record(
            att.target.plugin.spoke_kind(),
            att.target.spoke.as_deref().unwrap(),
        )
    }

    fn binding<'a>(att: &Attachment, record: &'a PreparedSpoke) -> Binding<'a> {
        Binding::authorize(att, record, Path::new("/run/k8slan/dev")).unwrap()
    }

    /// ADD of `att` into the pod namespace, bound to the spoke it names as the agent prepared it.
    fn add_to_pod(
        att: &Attachment,
        k: &mut RecordingLinks,
        ipam: Option<&mut FakeIpam>,
    ) -> Result<CniResult, CniError> {
        let ipam = ipam.map(|i| i as &mut dyn Ipam);
        add(att, &binding(att, &rec(att)), POD, k, ipam)
    }

    /// A node namespace holding the link `kind` the agent prepared under `name`.
    fn kernel(kind: &str, name: &str) -> RecordingLinks {
        let r = match kind {
            "veth" => record(SpokeKind::Veth, name),
            _ => record(SpokeKind::Mac, name.strip_prefix("mvt-").unwrap()),
        };
        RecordingLinks::with_host_links([prepared_link(&r, PREPARED, 1430)])
    }

    fn attachment(plugin: PluginKind, conf: &str) -> Attachment {
        let env: HashMap<&str, &str> = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", POD),
            ("CNI_IFNAME", "e1-1"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=lab"),
        ]
        .into();
        match parse_request(
            plugin,
            &|k| env.get(k).map(|v| v.to_string()),
            conf.as_bytes(),
        ) {
            Ok(Request::Attachment(a)) => *a,
            other => panic!("{other:?}"),
        }
    }

    const VETH_IPAM: &str = r#"{"cniVersion":"1.0.0","name":"k8slan-veth-srl","type":"k8slanveth","veth":"srl","mtu":1300,"mac":"02:00:00:00:00:09","ipam":{"type":"fake"}}"#;

    #[test]
    fn add_binds_and_configures() {
        let att = attachment(PluginKind::Veth, VETH_IPAM);
        let mut k = kernel("veth", "srl");
        let mut ipam = FakeIpam::default();
        let r = add_to_pod(&att, &mut k, Some(&mut ipam)).unwrap();
        let (l, addrs) = &k.pod["e1-1"];
        assert_eq!(
            (l.mtu, l.mac, l.up),
            (Some(1300), Some(MacAddr([2, 0, 0, 0, 0, 9])), true)
        );
        assert_eq!(addrs, &vec!["198.18.3.2/24".parse::<IpNet>().unwrap()]);
        assert!(k.host.is_empty());
        assert_eq!(r.interfaces[0].mac.as_deref(), Some("02:00:00:00:00:09"));
        assert_eq!(r.ips[0].interface, Some(0));
        assert_eq!(
            default_gateway(&r.ips, "198.19.0.0".parse().unwrap()),
            Some("198.18.3.1".parse().unwrap())
        );
    }

    /// Whatever step fails, the spoke ends up back in the node as prepared and the lease is freed.
    #[test]
    fn every_failure_rolls_back_completely() {
        for step in [
            "move link",
            "set MTU",
            "set MAC",
            "set up",
            "add address",
            "add route",
        ] {
            let att = attachment(PluginKind::Veth, VETH_IPAM);
            let mut k = kernel("veth", "srl");
            k.fail = Some(step);
            let mut ipam = FakeIpam::default();
            let err = add_to_pod(&att, &mut k, Some(&mut ipam)).unwrap_err();
            assert_eq!(err.code, ErrorCode::IoFailure, "{step}");
            assert!(err.details.contains(step), "{step}: {err}");
            let (l, addrs) = k
                .host
                .get("srl")
                .unwrap_or_else(|| panic!("{step}: spoke not back"));
            assert_eq!(
                (l.mtu, l.mac, l.up, l.promisc),
                (Some(1430), Some(PREPARED), true, false),
                "{step}"
            );
            assert!(addrs.is_empty(), "{step}");
            assert!(k.pod.is_empty(), "{step}");
            assert!(!ipam.leased, "{step}: lease released");
        }
    }

    #[test]
    fn failed_ipam_add_is_followed_by_ipam_del_and_touches_no_link() {
        let att = attachment(PluginKind::Veth, VETH_IPAM);
        let mut k = kernel("veth", "srl");
        let mut ipam = FakeIpam {
            fail_add: true,
            ..Default::default()
        };
        let err = add_to_pod(&att, &mut k, Some(&mut ipam)).unwrap_err();
        assert_eq!(
            err.code.code(),
            999,
            "the IPAM plugin's own code is passed on"
        );
        assert_eq!(ipam.dels, 1);
        assert!(k.host.contains_key("srl"));
    }

    #[test]
    fn macvtap_is_promiscuous_and_del_gives_it_back() {
        let conf = r#"{"cniVersion":"1.0.0","name":"k8slan-mac-vm","type":"k8slanmacvtap","deviceID":"mvt-vm"}"#;
        let att = attachment(PluginKind::Macvtap, conf);
        let mut k = kernel("macvtap", "mvt-vm");
        let r = add_to_pod(&att, &mut k, None).unwrap();
        assert!(k.pod["e1-1"].0.promisc);
        // Its tap kept its number: no node is touched.
        assert!(k.repointed.is_empty());
        // Its own IPv6 goes off before it comes up in the pod.
        let at = |entry: &str| k.log.iter().position(|l| l.starts_with(entry));
        let off = at("disable IPv6 pod namespace").expect("IPv6 left on for the macvtap");
        assert!(off < at("set up pod namespace").unwrap(), "{:?}", k.log);
        let mut del_att = att.clone();
        del_att.prev_result = Some(r);
        del(&del_att, Some(POD), Some(&mut k), None).unwrap();
        assert!(!k.host["mvt-vm"].0.promisc);
        assert!(k.pod.is_empty());
        // Idempotent.
        del(&del_att, Some(POD), Some(&mut k), None).unwrap();
        del(&del_att, None, None, None).unwrap();
    }

    #[test]
    fn macvtap_whose_tap_got_another_number_gets_its_node_repointed() {
        let conf = r#"{"cniVersion":"1.0.0","name":"k8slan-mac-vm","type":"k8slanmacvtap","deviceID":"mvt-vm"}"#;
        let att = attachment(PluginKind::Macvtap, conf);
        let mut k = kernel("macvtap", "mvt-vm");
        k.minor_in_pod = 2;
        add_to_pod(&att, &mut k, None).unwrap();
        let tap = |minor| DevNum { major: 246, minor };
        assert_eq!(k.repointed, vec![(tap(7), tap(2))]);
        // A failure to re-point fails the ADD and puts the macvtap back.
        let mut k = kernel("macvtap", "mvt-vm");
        k.minor_in_pod = 2;
        k.fail = Some("re-point the tap device nodes");
        assert!(add_to_pod(&att, &mut k, None).is_err());
        assert!(k.host.contains_key("mvt-vm") && k.pod.is_empty());
    }

    #[test]
    fn macvtap_whose_ifindex_changes_is_refused() {
        let conf = r#"{"cniVersion":"1.0.0","name":"k8slan-mac-vm","type":"k8slanmacvtap","deviceID":"mvt-vm"}"#;
        let att = attachment(PluginKind::Macvtap, conf);
        let mut k = kernel("macvtap", "mvt-vm");
        let other = LinkState {
            index: 7,
            name: "eth0".into(),
            kind: Some("veth".into()),
            mac: None,
            mtu: None,
            up: true,
            promisc: false,
            alias: None,
        };
        k.pod.insert("eth0".into(), (other, vec![]));
        let err = add_to_pod(&att, &mut k, None).unwrap_err();
        assert!(err.details.contains("/dev/tap7"), "{err}");
        assert!(k.host.contains_key("mvt-vm"), "rolled back");
    }

    #[test]
    fn del_deletes_when_the_prepared_name_was_reused() {
        let att = attachment(
            PluginKind::Veth,
            r#"{"cniVersion":"1.0.0","name":"k8slan-veth-srl","type":"k8slanveth","veth":"srl"}"#,
        );
        let mut k = kernel("veth", "srl");
        let r = add_to_pod(&att, &mut k, None).unwrap();
        // The agent recreated the spoke meanwhile.
        k.host.insert(
            "srl".into(),
            (
                LinkState {
                    index: 99,
                    name: "srl".into(),
                    kind: Some("veth".into()),
                    mac: None,
                    mtu: None,
                    up: false,
                    promisc: false,
                    alias: None,
                },
                vec![],
            ),
        );
        let mut del_att = att.clone();
        del_att.prev_result = Some(r);
        del(&del_att, Some(POD), Some(&mut k), None).unwrap();
        assert!(k.pod.is_empty());
        assert_eq!(
            k.host["srl"].0.index, 99,
            "the agent's new link is untouched"
        );
    }
}
