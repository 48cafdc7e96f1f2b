//! Kernel link messages in the datapath's terms.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8slan_api::MacvtapMode;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, InfoBridge, InfoBridgePort, InfoData, InfoKind, InfoMacVtap,
    InfoPortData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
    MacVtapMode as NlMode,
};

use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};

use crate::kernel::{BridgeParams, IfAddress, Link, LinkKind, VxlanParams};

pub(super) fn mode_to_nl(m: MacvtapMode) -> NlMode {
    match m {
        MacvtapMode::Passthru => NlMode::Passthrough,
        MacvtapMode::Bridge => NlMode::Bridge,
        MacvtapMode::Vepa => NlMode::Vepa,
        MacvtapMode::Private => NlMode::Private,
    }
}

fn mode_from_nl(m: &NlMode) -> Option<MacvtapMode> {
    Some(match m {
        NlMode::Passthrough => MacvtapMode::Passthru,
        NlMode::Bridge => MacvtapMode::Bridge,
        NlMode::Vepa => MacvtapMode::Vepa,
        NlMode::Private => MacvtapMode::Private,
        _ => return None,
    })
}

/// Translate a kernel link message into the datapath's view.
pub(super) fn parse_link(msg: &LinkMessage) -> Link {
    let mut name = String::new();
    let mut mtu = 0;
    let mut alias = None;
    let mut master = None;
    let mut link = None;
    let mut info = Info::default();
    let mut ipv6 = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::IfAlias(a) if !a.is_empty() => alias = Some(a.clone()),
            LinkAttribute::Controller(c) => master = Some(*c),
            LinkAttribute::Link(l) => link = Some(*l),
            LinkAttribute::AfSpecUnspec(families) => ipv6 = ipv6_enabled(families).or(ipv6),
            LinkAttribute::LinkInfo(infos) => info = Info::of(infos),
            _ => {}
        }
    }
    Link {
        name,
        ifindex: msg.header.index,
        mtu,
        up: msg.header.flags.contains(LinkFlags::Up),
        alias,
        master,
        port_group_fwd_mask: info.port_mask,
        ipv6,
        kind: link_kind(info.kind, info.data, link),
    }
}

/// What a link's `IFLA_LINKINFO` says: its kind, that kind's data and, on a bridge port, the
/// port's group forward mask.
#[derive(Default)]
struct Info<'a> {
    kind: Option<InfoKind>,
    data: Option<&'a InfoData>,
    port_mask: Option<u16>,
}

impl<'a> Info<'a> {
    fn of(infos: &'a [LinkInfo]) -> Self {
        let mut info = Info::default();
        for i in infos {
            match i {
                LinkInfo::Kind(k) => info.kind = Some(k.clone()),
                LinkInfo::Data(d) => info.data = Some(d),
                LinkInfo::PortData(InfoPortData::BridgePort(p)) => {
                    info.port_mask = p.iter().find_map(|x| match x {
                        InfoBridgePort::GroupFwdMask(m) => Some(*m),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        info
    }
}

/// Whether IPv6 is on for the link (its `disable_ipv6` is 0), when the message says.
fn ipv6_enabled(families: &[AfSpecUnspec]) -> Option<bool> {
    let mut on = None;
    for family in families {
        if let AfSpecUnspec::Inet6(attrs) = family {
            for a in attrs {
                if let AfSpecInet6::DevConf(conf) = a {
                    on = Some(conf.disable_ipv6 == 0);
                }
            }
        }
    }
    on
}

/// The datapath's kind of a link from its info kind and data; `link` is `IFLA_LINK` (a veth's
/// peer, a macvtap's lower device).
fn link_kind(kind: Option<InfoKind>, data: Option<&InfoData>, link: Option<u32>) -> LinkKind {
    match kind {
        Some(InfoKind::Bridge) => LinkKind::Bridge(bridge_params(data)),
        Some(InfoKind::Vxlan) => LinkKind::Vxlan(vxlan_params(data)),
        Some(InfoKind::Veth) => LinkKind::Veth { peer_ifindex: link },
        Some(InfoKind::MacVtap) => match macvtap_mode(data) {
            Some(mode) => LinkKind::Macvtap {
                lower_ifindex: link.unwrap_or(0),
                mode,
            },
            None => LinkKind::Other {
                kind: "macvtap(source)".into(),
            },
        },
        Some(k) => LinkKind::Other {
            kind: format!("{k:?}").to_lowercase(),
        },
        None => LinkKind::Other {
            kind: "device".into(),
        },
    }
}

fn bridge_params(data: Option<&InfoData>) -> BridgeParams {
    let mut p = BridgeParams {
        vlan_filtering: false,
        mcast_snooping: true,
        group_fwd_mask: 0,
    };
    if let Some(InfoData::Bridge(infos)) = data {
        for i in infos {
            match i {
                InfoBridge::VlanFiltering(v) => p.vlan_filtering = *v,
                InfoBridge::MulticastSnooping(v) => p.mcast_snooping = *v,
                InfoBridge::GroupFwdMask(v) => p.group_fwd_mask = *v,
                _ => {}
            }
        }
    }
    p
}

fn vxlan_params(data: Option<&InfoData>) -> VxlanParams {
    let mut p = VxlanParams {
        vni: 0,
        group: None,
        local: None,
        port: 0,
        underlay_ifindex: 0,
        learning: false,
    };
    if let Some(InfoData::Vxlan(infos)) = data {
        for i in infos {
            match i {
                InfoVxlan::Id(v) => p.vni = *v,
                InfoVxlan::Group(g) => p.group = Some((*g).into()),
                InfoVxlan::Group6(g) => p.group = Some((*g).into()),
                InfoVxlan::Local(a) => p.local = Some((*a).into()),
                InfoVxlan::Local6(a) => p.local = Some((*a).into()),
                InfoVxlan::Port(v) => p.port = *v,
                InfoVxlan::Link(v) => p.underlay_ifindex = *v,
                InfoVxlan::Learning(v) => p.learning = *v,
                _ => {}
            }
        }
    }
    p
}

/// A macvtap's mode; `None` for a mode the datapath does not use (source).
fn macvtap_mode(data: Option<&InfoData>) -> Option<MacvtapMode> {
    match data {
        Some(InfoData::MacVtap(infos)) => infos.iter().find_map(|i| match i {
            InfoMacVtap::Mode(m) => mode_from_nl(m),
            _ => None,
        }),
        _ => None,
    }
}

/// An address of a link: `IFA_LOCAL` (the link's own address, which IPv4 point-to-point links
/// tell apart from their peer's `IFA_ADDRESS`), else `IFA_ADDRESS`.
pub(super) fn parse_address(msg: &AddressMessage) -> Option<IfAddress> {
    let find = |local: bool| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) if local => Some(*ip),
            AddressAttribute::Address(ip) if !local => Some(*ip),
            _ => None,
        })
    };
    Some(IfAddress {
        addr: find(true).or_else(|| find(false))?,
        prefix_len: msg.header.prefix_len,
    })
}

/// The destination of a VXLAN flood entry: an `NTF_SELF` entry of link `index` for MAC
/// 00:00:00:00:00:00. `None` for any other forwarding entry.
pub(super) fn flood_dst(msg: &NeighbourMessage, index: u32) -> Option<IpAddr> {
    if msg.header.ifindex != index || !msg.header.flags.contains(NeighbourFlags::Own) {
        return None;
    }
    let mut zero_mac = false;
    let mut dst = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::LinkLayerAddress(mac) => zero_mac = mac.iter().all(|b| *b == 0),
            NeighbourAttribute::Destination(d) => dst = ip_of(d),
            _ => {}
        }
    }
    dst.filter(|_| zero_mac)
}

/// An `NDA_DST`: in an `AF_BRIDGE` message the library cannot tell the family, so raw bytes
/// are read by their length.
fn ip_of(d: &NeighbourAddress) -> Option<IpAddr> {
    match d {
        NeighbourAddress::Inet(a) => Some((*a).into()),
        NeighbourAddress::Inet6(a) => Some((*a).into()),
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice())
                .ok()
                .map(|o| Ipv4Addr::from(o).into()),
            16 => <[u8; 16]>::try_from(b.as_slice())
                .ok()
                .map(|o| Ipv6Addr::from(o).into()),
            _ => None,
        },
        _ => None,
    }
}
