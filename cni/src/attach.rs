//! ADD, DEL and CHECK of one attachment: bind the link the agent prepared in the node's
//! namespace to the pod, and give it back.

use std::net::IpAddr;

use k8slan_api::naming::LINK_ALIAS_PREFIX;
use tracing::{info, instrument, warn};

use crate::config::{Attachment, PluginKind};
use crate::error::{CniError, ErrorCode};
use crate::ipam::Ipam;
use crate::link::{LinkError, LinkOps, LinkState, Side};
use crate::result::{CniResult, IpConfig, container_interface};

fn io(e: LinkError) -> CniError {
    CniError::new(ErrorCode::IoFailure, e.to_string())
}

fn check_failed(details: String) -> CniError {
    CniError::new(ErrorCode::CheckFailed, details)
}

/// ADD: moves the prepared link into the pod as `CNI_IFNAME`, configures it and returns the
/// result. On any failure after the IPAM allocation everything is undone: the link goes back to
/// the node's namespace under its prepared name and settings, and the IPAM lease is released.
#[instrument(skip_all, fields(command = "ADD", container = %att.env.container_id, ifname = %att.env.ifname, host_link = %att.target.host_link, sandbox = %sandbox))]
pub fn add(
    att: &Attachment,
    sandbox: &str,
    links: &mut dyn LinkOps,
    mut ipam: Option<&mut dyn Ipam>,
) -> Result<CniResult, CniError> {
    let plugin = att.target.plugin;
    let ifname = att.env.ifname.as_str();
    let host_link = att.target.host_link.as_str();
    let original = links.get(Side::Host, host_link).map_err(io)?.ok_or_else(|| {
        CniError::new(
            ErrorCode::TryAgainLater,
            format!(
                "the prepared {} {host_link:?} is not in the node's network namespace: the pod did not request resource {} (add it to the container's resources.limits), or the k8slan agent has not prepared it yet",
                plugin.link_kind(),
                att.target.resource_hint()
            ),
        )
    })?;
    if original.kind.as_deref() != Some(plugin.link_kind()) {
        return Err(CniError::new(
            ErrorCode::IoFailure,
            format!(
                "link {host_link:?} in the node's namespace is a {}, not the {} the k8slan agent prepares; another component uses this name",
                original.kind.as_deref().unwrap_or("device without kind"),
                plugin.link_kind()
            ),
        ));
    }
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
    match bind(att, sandbox, links, &original, allocated.as_ref()) {
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

fn bind(
    att: &Attachment,
    sandbox: &str,
    links: &mut dyn LinkOps,
    original: &LinkState,
    allocated: Option<&CniResult>,
) -> Result<CniResult, CniError> {
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
            CniError::new(
                ErrorCode::IoFailure,
                format!(
                    "link {:?} was moved into the pod as {ifname:?} but is not there",
                    original.name
                ),
            )
        })?;
    if let Some(mtu) = att.mtu {
        links.set_mtu(Side::Sandbox, &moved, mtu).map_err(io)?;
    }
    if let Some((mac, source)) = att.mac {
        info!(%mac, ?source, "setting MAC");
        links.set_mac(Side::Sandbox, &moved, mac).map_err(io)?;
    }
    if att.target.plugin == PluginKind::Macvtap {
        links.set_promisc(Side::Sandbox, &moved, true).map_err(io)?;
    }
    links.set_up(Side::Sandbox, &moved, true).map_err(io)?;
    let mut result = CniResult::default();
    if let Some(alloc) = allocated {
        for ip in &alloc.ips {
            links
                .add_address(Side::Sandbox, &moved, ip.address)
                .map_err(io)?;
        }
        for route in &alloc.routes {
            let gw = route
                .gw
                .or_else(|| default_gateway(&alloc.ips, route.dst.addr));
            links
                .add_route(Side::Sandbox, &moved, route.dst, gw)
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
/// and either an alias written by the k8slan agent or the MAC that `prevResult` recorded for it.
/// A DEL never takes away an interface some other plugin created under the same name.
fn is_ours(att: &Attachment, sandbox: Option<&str>, link: &LinkState) -> bool {
    if link.kind.as_deref() != Some(att.target.plugin.link_kind()) {
        return false;
    }
    if link
        .alias
        .as_deref()
        .is_some_and(|a| a.starts_with(LINK_ALIAS_PREFIX))
    {
        return true;
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
    if let Some(expected) = prev.interfaces[index].mac.as_deref() {
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
    let present = links.addresses(Side::Sandbox, &link).map_err(io)?;
    for ip in prev.ips_of(index) {
        if !present.contains(&ip.address) {
            return Err(check_failed(format!(
                "address {} of interface {ifname:?} is missing",
                ip.address
            )));
        }
    }
    if let Some(ipam) = ipam {
        ipam.check()?;
    }
    Ok(())
}
