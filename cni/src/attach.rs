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
    let macvtap = att.target.plugin == PluginKind::Macvtap;
    let tap_before = if macvtap {
        links.tap_devnum(Side::Host, original).map_err(io)?
    } else {
        None
    };
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
    if att.target.plugin == PluginKind::Macvtap && moved.index != original.index {
        // The device plugin handed the pod /dev/tap<ifindex> with the node's ifindex; KubeVirt
        // opens /dev/tap<ifindex in the pod>. They must be the same device.
        return Err(CniError::new(
            ErrorCode::IoFailure,
            format!(
                "macvtap {:?} got ifindex {} in the pod instead of {} (that index is taken there), so the tap device {} handed to the pod would not match; retry the pod",
                original.name,
                moved.index,
                original.index,
                k8slan_api::naming::container_tap_path(original.index)
            ),
        ));
    }
    if let Some(before) = tap_before {
        // Moving gave the tap the lowest free minor number: re-point the node the device plugin
        // handed the pod, before the runtime creates the container from it.
        let after = links
            .tap_devnum(Side::Sandbox, &moved)
            .map_err(io)?
            .ok_or_else(|| {
                CniError::new(
                    ErrorCode::IoFailure,
                    format!("macvtap {ifname:?} has no tap device in the pod"),
                )
            })?;
        if after != before {
            let nodes = links
                .repoint_tap_nodes(&att.dev_dir, before, after)
                .map_err(io)?;
            info!(%before, %after, ?nodes, "the tap device got another number in the pod; nodes re-pointed");
        }
    }
    if let Some(mtu) = att.mtu {
        links.set_mtu(Side::Sandbox, &moved, mtu).map_err(io)?;
    }
    if let Some((mac, source)) = att.mac {
        info!(%mac, ?source, "setting MAC");
        links.set_mac(Side::Sandbox, &moved, mac).map_err(io)?;
    }
    if att.target.plugin == PluginKind::Macvtap {
        links.set_promisc(Side::Sandbox, &moved, true).map_err(io)?;
        // The macvtap is the VM's wire: the VM behind the tap owns the addresses. The pod's own
        // IPv6 on it would send MLD and neighbour frames with the VM's MAC onto the LAN.
        links.set_ipv6(Side::Sandbox, &moved, false).map_err(io)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PluginKind, Request, parse_request};
    use crate::mac::MacAddr;
    use crate::result::IpNet;
    use crate::tap::DevNum;
    use std::collections::HashMap;

    /// Two namespaces of links in memory; `fail` makes the named operation fail.
    #[derive(Default)]
    struct FakeKernel {
        host: HashMap<String, (LinkState, Vec<IpNet>)>,
        pod: HashMap<String, (LinkState, Vec<IpNet>)>,
        fail: Option<&'static str>,
        next_index: u32,
        /// Every operation, as "<op> <side> <link>", in order.
        log: Vec<String>,
        /// The minor a macvtap's tap gets in the pod (7 in the node's namespace).
        minor_in_pod: u32,
        repointed: Vec<(DevNum, DevNum)>,
    }

    impl FakeKernel {
        fn ns(&mut self, side: Side) -> &mut HashMap<String, (LinkState, Vec<IpNet>)> {
            match side {
                Side::Host => &mut self.host,
                Side::Sandbox => &mut self.pod,
            }
        }
        /// The injected failure happens once, on the first call of its operation.
        fn op(&mut self, op: &'static str, side: Side, link: &str) -> Result<(), LinkError> {
            self.log.push(format!("{op} {side} {link}"));
            if self.fail == Some(op) {
                self.fail = None;
                Err(LinkError::new(op, side, link, Some(1), "injected failure"))
            } else {
                Ok(())
            }
        }
        fn with<T>(
            &mut self,
            op: &'static str,
            side: Side,
            link: &LinkState,
            f: impl FnOnce(&mut (LinkState, Vec<IpNet>)) -> T,
        ) -> Result<T, LinkError> {
            self.op(op, side, &link.name)?;
            let entry = self
                .ns(side)
                .get_mut(&link.name)
                .ok_or_else(|| LinkError::new(op, side, &link.name, Some(19), "no such device"))?;
            Ok(f(entry))
        }
    }

    impl LinkOps for FakeKernel {
        fn get(&mut self, side: Side, name: &str) -> Result<Option<LinkState>, LinkError> {
            Ok(self.ns(side).get(name).map(|(l, _)| l.clone()))
        }
        fn move_to(
            &mut self,
            from: Side,
            link: &LinkState,
            new_name: &str,
        ) -> Result<(), LinkError> {
            self.op("move link", from, &link.name)?;
            if self.ns(from.other()).contains_key(new_name) {
                return Err(LinkError::new(
                    "move link",
                    from,
                    &link.name,
                    Some(17),
                    "exists",
                ));
            }
            let (mut l, _) = self.ns(from).remove(&link.name).unwrap();
            l.name = new_name.to_owned();
            l.up = false; // moving closes the device and flushes its addresses
            if self
                .ns(from.other())
                .values()
                .any(|(o, _)| o.index == l.index)
            {
                self.next_index += 1;
                l.index = 1000 + self.next_index;
            }
            self.ns(from.other())
                .insert(new_name.to_owned(), (l, vec![]));
            Ok(())
        }
        fn set_mtu(&mut self, side: Side, link: &LinkState, mtu: u32) -> Result<(), LinkError> {
            self.with("set MTU", side, link, |e| e.0.mtu = Some(mtu))
        }
        fn set_mac(&mut self, side: Side, link: &LinkState, mac: MacAddr) -> Result<(), LinkError> {
            self.with("set MAC", side, link, |e| e.0.mac = Some(mac))
        }
        fn set_promisc(&mut self, side: Side, link: &LinkState, on: bool) -> Result<(), LinkError> {
            self.with("set promiscuous mode", side, link, |e| e.0.promisc = on)
        }
        fn set_ipv6(&mut self, side: Side, link: &LinkState, on: bool) -> Result<(), LinkError> {
            let op = if on { "enable IPv6" } else { "disable IPv6" };
            self.with(op, side, link, |_| ())
        }
        fn tap_devnum(
            &mut self,
            side: Side,
            link: &LinkState,
        ) -> Result<Option<DevNum>, LinkError> {
            self.op("read the tap device number", side, &link.name)?;
            // As the kernel does: a macvtap's tap gets the lowest free minor when it enters a
            // namespace; the test sets what that is.
            Ok((link.kind.as_deref() == Some("macvtap")).then_some(DevNum {
                major: 246,
                minor: match side {
                    Side::Host => 7,
                    Side::Sandbox => self.minor_in_pod,
                },
            }))
        }
        fn repoint_tap_nodes(
            &mut self,
            dir: &std::path::Path,
            old: DevNum,
            new: DevNum,
        ) -> Result<Vec<std::path::PathBuf>, LinkError> {
            self.op(
                "re-point the tap device nodes",
                Side::Host,
                &dir.display().to_string(),
            )?;
            self.repointed.push((old, new));
            Ok(vec![dir.join("tap-vm")])
        }
        fn set_up(&mut self, side: Side, link: &LinkState, up: bool) -> Result<(), LinkError> {
            self.with(if up { "set up" } else { "set down" }, side, link, |e| {
                e.0.up = up
            })
        }
        fn addresses(&mut self, side: Side, link: &LinkState) -> Result<Vec<IpNet>, LinkError> {
            self.with("list addresses", side, link, |e| e.1.clone())
        }
        fn add_address(
            &mut self,
            side: Side,
            link: &LinkState,
            addr: IpNet,
        ) -> Result<(), LinkError> {
            self.with("add address", side, link, |e| e.1.push(addr))
        }
        fn add_route(
            &mut self,
            side: Side,
            link: &LinkState,
            _dst: IpNet,
            _gw: Option<IpAddr>,
        ) -> Result<(), LinkError> {
            self.with("add route", side, link, |_| ())
        }
        fn delete(&mut self, side: Side, link: &LinkState) -> Result<(), LinkError> {
            self.op("delete link", side, &link.name)?;
            self.ns(side).remove(&link.name);
            Ok(())
        }
    }

    #[derive(Default)]
    struct FakeIpam {
        leased: bool,
        dels: u32,
        fail_add: bool,
    }

    impl Ipam for FakeIpam {
        fn add(&mut self) -> Result<CniResult, CniError> {
            if self.fail_add {
                return Err(CniError::new(ErrorCode::Other(999), "range exhausted"));
            }
            self.leased = true;
            let v = serde_json::json!({"ips": [{"address": "198.18.3.2/24", "gateway": "198.18.3.1"}], "routes": [{"dst": "198.19.0.0/16"}]});
            Ok(CniResult::from_value("fake", &v).unwrap())
        }
        fn del(&mut self) -> Result<(), CniError> {
            self.leased = false;
            self.dels += 1;
            Ok(())
        }
        fn check(&mut self) -> Result<(), CniError> {
            Ok(())
        }
    }

    const PREPARED: MacAddr = MacAddr([2, 0x11, 0, 0, 0, 1]);
    const POD: &str = "/var/run/netns/pod";

    fn kernel(kind: &str, name: &str) -> FakeKernel {
        let mut k = FakeKernel {
            minor_in_pod: 7,
            ..Default::default()
        };
        let l = LinkState {
            index: 7,
            name: name.into(),
            kind: Some(kind.into()),
            mac: Some(PREPARED),
            mtu: Some(1430),
            up: true,
            promisc: false,
            alias: None,
        };
        k.host.insert(name.into(), (l, vec![]));
        k
    }

    fn attachment(plugin: PluginKind, conf: &str) -> Attachment {
        let env: HashMap<&str, &str> = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", POD),
            ("CNI_IFNAME", "e1-1"),
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
        let r = add(&att, POD, &mut k, Some(&mut ipam)).unwrap();
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
            let err = add(&att, POD, &mut k, Some(&mut ipam)).unwrap_err();
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
        let err = add(&att, POD, &mut k, Some(&mut ipam)).unwrap_err();
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
        let conf =
            r#"{"cniVersion":"1.0.0","name":"k8slan-mac-vm","type":"macvtap","deviceID":"mvt-vm"}"#;
        let att = attachment(PluginKind::Macvtap, conf);
        let mut k = kernel("macvtap", "mvt-vm");
        let r = add(&att, POD, &mut k, None).unwrap();
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
        let conf =
            r#"{"cniVersion":"1.0.0","name":"k8slan-mac-vm","type":"macvtap","deviceID":"mvt-vm"}"#;
        let att = attachment(PluginKind::Macvtap, conf);
        let mut k = kernel("macvtap", "mvt-vm");
        k.minor_in_pod = 2;
        add(&att, POD, &mut k, None).unwrap();
        let tap = |minor| DevNum { major: 246, minor };
        assert_eq!(k.repointed, vec![(tap(7), tap(2))]);
        // A failure to re-point fails the ADD and puts the macvtap back.
        let mut k = kernel("macvtap", "mvt-vm");
        k.minor_in_pod = 2;
        k.fail = Some("re-point the tap device nodes");
        assert!(add(&att, POD, &mut k, None).is_err());
        assert!(k.host.contains_key("mvt-vm") && k.pod.is_empty());
    }

    #[test]
    fn macvtap_whose_ifindex_changes_is_refused() {
        let conf =
            r#"{"cniVersion":"1.0.0","name":"k8slan-mac-vm","type":"macvtap","deviceID":"mvt-vm"}"#;
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
        let err = add(&att, POD, &mut k, None).unwrap_err();
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
        let r = add(&att, POD, &mut k, None).unwrap();
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
