//! Test doubles of the plugins' system side, for the unit tests, the property tests and the
//! fuzz target (cargo feature `testing`): [`RecordingLinks`], two namespaces of links in memory
//! that log every operation, and [`FakeIpam`].

use std::collections::HashMap;
use std::net::IpAddr;

use k8slan_api::naming::{self, SpokeKind};
use k8slan_api::prepared::PreparedSpoke;

use crate::error::{CniError, ErrorCode};
use crate::ipam::Ipam;
use crate::link::{LinkError, LinkOps, LinkState, Side};
use crate::mac::MacAddr;
use crate::result::{CniResult, IpNet};
use crate::tap::DevNum;

/// Two namespaces of links in memory; `fail` makes the named operation fail.
#[derive(Default)]
pub struct RecordingLinks {
    pub host: HashMap<String, (LinkState, Vec<IpNet>)>,
    pub pod: HashMap<String, (LinkState, Vec<IpNet>)>,
    pub fail: Option<&'static str>,
    pub next_index: u32,
    /// Every operation, as "<op> <side> <link>", in order.
    pub log: Vec<String>,
    /// The minor a macvtap's tap gets in the pod (7 in the node's namespace).
    pub minor_in_pod: u32,
    pub repointed: Vec<(DevNum, DevNum)>,
}

impl RecordingLinks {
    pub fn ns(&mut self, side: Side) -> &mut HashMap<String, (LinkState, Vec<IpNet>)> {
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

impl LinkOps for RecordingLinks {
    fn get(&mut self, side: Side, name: &str) -> Result<Option<LinkState>, LinkError> {
        Ok(self.ns(side).get(name).map(|(l, _)| l.clone()))
    }
    fn move_to(&mut self, from: Side, link: &LinkState, new_name: &str) -> Result<(), LinkError> {
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
    fn tap_devnum(&mut self, side: Side, link: &LinkState) -> Result<Option<DevNum>, LinkError> {
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
    fn add_address(&mut self, side: Side, link: &LinkState, addr: IpNet) -> Result<(), LinkError> {
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
pub struct FakeIpam {
    pub leased: bool,
    pub dels: u32,
    pub fail_add: bool,
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

impl RecordingLinks {
    /// Operations that change something (every logged operation but reads).
    pub fn changes(&self) -> Vec<&String> {
        self.log
            .iter()
            .filter(|l| {
                !l.starts_with("read the tap device number") && !l.starts_with("list addresses")
            })
            .collect()
    }

    /// Whether any link left the node's namespace or was changed in it.
    pub fn touched_the_node(&self) -> bool {
        self.changes().iter().any(|l| l.contains("node namespace"))
    }
}

/// The record the agent writes for `spoke` of `kind` in LAN `lab/lan1` (namespace `knl`), its
/// link at index 7.
pub fn record(kind: SpokeKind, spoke: &str) -> PreparedSpoke {
    PreparedSpoke {
        lan_namespace: "lab".into(),
        lan_name: "lan1".into(),
        netns: "knl".into(),
        spoke: spoke.into(),
        kind,
        link: naming::bound_link(kind, "knl", spoke).0,
        ifindex: 7,
        allowed_namespaces: vec![],
    }
}

/// The link the agent prepared for `record`, as the kernel shows it.
pub fn prepared_link(record: &PreparedSpoke, mac: MacAddr, mtu: u32) -> LinkState {
    LinkState {
        index: record.ifindex,
        name: record.link.clone(),
        kind: Some(match record.kind {
            SpokeKind::Veth => "veth".into(),
            SpokeKind::Mac => "macvtap".into(),
        }),
        mac: Some(mac),
        mtu: Some(mtu),
        up: true,
        promisc: false,
        alias: Some(naming::bound_link(record.kind, &record.netns, &record.spoke).1),
    }
}

impl RecordingLinks {
    /// A node namespace holding `links`, an empty pod namespace; macvtap taps keep minor 7.
    pub fn with_host_links(links: impl IntoIterator<Item = LinkState>) -> RecordingLinks {
        let mut k = RecordingLinks {
            minor_in_pod: 7,
            ..Default::default()
        };
        for l in links {
            k.host.insert(l.name.clone(), (l, vec![]));
        }
        k
    }
}

/// [`RecordingLinks`] shared between a [`FakeHost`] and the test that inspects it afterwards.
#[derive(Clone, Default)]
pub struct SharedLinks(pub std::rc::Rc<std::cell::RefCell<RecordingLinks>>);

macro_rules! delegate {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(fn $name(&mut self, $($arg: $ty),*) -> $ret {
            self.0.borrow_mut().$name($($arg),*)
        })*
    };
}

impl LinkOps for SharedLinks {
    delegate! {
        get(side: Side, name: &str) -> Result<Option<LinkState>, LinkError>;
        move_to(from: Side, link: &LinkState, new_name: &str) -> Result<(), LinkError>;
        set_mtu(side: Side, link: &LinkState, mtu: u32) -> Result<(), LinkError>;
        set_mac(side: Side, link: &LinkState, mac: MacAddr) -> Result<(), LinkError>;
        set_promisc(side: Side, link: &LinkState, on: bool) -> Result<(), LinkError>;
        set_up(side: Side, link: &LinkState, up: bool) -> Result<(), LinkError>;
        set_ipv6(side: Side, link: &LinkState, on: bool) -> Result<(), LinkError>;
        tap_devnum(side: Side, link: &LinkState) -> Result<Option<DevNum>, LinkError>;
        repoint_tap_nodes(dir: &std::path::Path, old: DevNum, new: DevNum) -> Result<Vec<std::path::PathBuf>, LinkError>;
        addresses(side: Side, link: &LinkState) -> Result<Vec<IpNet>, LinkError>;
        add_address(side: Side, link: &LinkState, addr: IpNet) -> Result<(), LinkError>;
        add_route(side: Side, link: &LinkState, dst: IpNet, gw: Option<IpAddr>) -> Result<(), LinkError>;
        delete(side: Side, link: &LinkState) -> Result<(), LinkError>;
    }
}

/// IPAM double that logs `ADD`/`DEL`/`CHECK` into a shared list.
pub struct LoggedIpam(
    pub std::rc::Rc<std::cell::RefCell<Vec<&'static str>>>,
    pub FakeIpam,
);

impl Ipam for LoggedIpam {
    fn add(&mut self) -> Result<CniResult, CniError> {
        self.0.borrow_mut().push("ADD");
        self.1.add()
    }
    fn del(&mut self) -> Result<(), CniError> {
        self.0.borrow_mut().push("DEL");
        self.1.del()
    }
    fn check(&mut self) -> Result<(), CniError> {
        self.0.borrow_mut().push("CHECK");
        self.1.check()
    }
}

/// [`crate::plugin::Host`] over [`SharedLinks`] and [`LoggedIpam`]; `sandbox_exists: false`
/// behaves as a pod namespace that is gone.
#[derive(Clone, Default)]
pub struct FakeHost {
    pub links: SharedLinks,
    pub ipam_calls: std::rc::Rc<std::cell::RefCell<Vec<&'static str>>>,
    pub sandbox_exists: bool,
}

impl crate::plugin::Host for FakeHost {
    fn links(&mut self, _sandbox: &str) -> Result<Option<Box<dyn LinkOps>>, CniError> {
        Ok(self
            .sandbox_exists
            .then(|| Box::new(self.links.clone()) as Box<dyn LinkOps>))
    }

    fn ipam(&mut self, _att: &crate::config::Attachment, _plugin: &str) -> Box<dyn Ipam> {
        Box::new(LoggedIpam(self.ipam_calls.clone(), FakeIpam::default()))
    }
}
