//! Kernel link messages in the datapath's terms.

use k8slan_api::MacvtapMode;
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, InfoBridge, InfoBridgePort, InfoData, InfoKind, InfoMacVtap,
    InfoPortData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
    MacVtapMode as NlMode,
};

use crate::kernel::{BridgeParams, Link, LinkKind, VxlanParams};

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
    let mut kind_name: Option<InfoKind> = None;
    let mut data: Option<&InfoData> = None;
    let mut port_mask = None;
    let mut ipv6 = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::IfAlias(a) if !a.is_empty() => alias = Some(a.clone()),
            LinkAttribute::Controller(c) => master = Some(*c),
            LinkAttribute::Link(l) => link = Some(*l),
            LinkAttribute::AfSpecUnspec(families) => {
                for family in families {
                    if let AfSpecUnspec::Inet6(attrs) = family {
                        for a in attrs {
                            if let AfSpecInet6::DevConf(conf) = a {
                                ipv6 = Some(conf.disable_ipv6 == 0);
                            }
                        }
                    }
                }
            }
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => kind_name = Some(k.clone()),
                        LinkInfo::Data(d) => data = Some(d),
                        LinkInfo::PortData(InfoPortData::BridgePort(p)) => {
                            port_mask = p.iter().find_map(|x| match x {
                                InfoBridgePort::GroupFwdMask(m) => Some(*m),
                                _ => None,
                            });
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let kind = match (kind_name, data) {
        (Some(InfoKind::Bridge), d) => {
            let mut p = BridgeParams {
                vlan_filtering: false,
                mcast_snooping: true,
                group_fwd_mask: 0,
            };
            if let Some(InfoData::Bridge(infos)) = d {
                for i in infos {
                    match i {
                        InfoBridge::VlanFiltering(v) => p.vlan_filtering = *v,
                        InfoBridge::MulticastSnooping(v) => p.mcast_snooping = *v,
                        InfoBridge::GroupFwdMask(v) => p.group_fwd_mask = *v,
                        _ => {}
                    }
                }
            }
            LinkKind::Bridge(p)
        }
        (Some(InfoKind::Vxlan), d) => {
            let mut p = VxlanParams {
                vni: 0,
                group: std::net::Ipv6Addr::UNSPECIFIED,
                port: 0,
                underlay_ifindex: 0,
                learning: false,
            };
            if let Some(InfoData::Vxlan(infos)) = d {
                for i in infos {
                    match i {
                        InfoVxlan::Id(v) => p.vni = *v,
                        InfoVxlan::Group6(g) => p.group = *g,
                        InfoVxlan::Port(v) => p.port = *v,
                        InfoVxlan::Link(v) => p.underlay_ifindex = *v,
                        InfoVxlan::Learning(v) => p.learning = *v,
                        _ => {}
                    }
                }
            }
            LinkKind::Vxlan(p)
        }
        (Some(InfoKind::Veth), _) => LinkKind::Veth { peer_ifindex: link },
        (Some(InfoKind::MacVtap), d) => {
            let mode = match d {
                Some(InfoData::MacVtap(infos)) => infos.iter().find_map(|i| match i {
                    InfoMacVtap::Mode(m) => mode_from_nl(m),
                    _ => None,
                }),
                _ => None,
            };
            match mode {
                Some(mode) => LinkKind::Macvtap {
                    lower_ifindex: link.unwrap_or(0),
                    mode,
                },
                None => LinkKind::Other {
                    kind: "macvtap(source)".into(),
                },
            }
        }
        (Some(k), _) => LinkKind::Other {
            kind: format!("{k:?}").to_lowercase(),
        },
        (None, _) => LinkKind::Other {
            kind: "device".into(),
        },
    };
    Link {
        name,
        ifindex: msg.header.index,
        mtu,
        up: msg.header.flags.contains(LinkFlags::Up),
        alias,
        master,
        port_group_fwd_mask: port_mask,
        ipv6,
        kind,
    }
}
