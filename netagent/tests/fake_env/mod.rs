//! The unit tier's node: a recording fake kernel with `eth1` (MTU 1500, the default underlay)
//! and `eth0` (MTU 9000), and LAN specs over it.
#![allow(dead_code)]

use std::collections::BTreeMap;

use k8slan_api::{LanSpec, MacvtapMode};
use k8slan_netagent::fake::{Call, RecordingKernel};
use k8slan_netagent::{Datapath, Ns};

pub const NODE: &str = "worker1";

pub fn spec(ns: &str, vni: u32, spokes: &[&str]) -> LanSpec {
    LanSpec {
        ns: ns.into(),
        bridge: "br2".into(),
        vxlan: "vx2".into(),
        vni,
        vxlan_grp: Some("ff02::14".into()),
        vxlan_mode: Default::default(),
        vxlan_family: Default::default(),
        vxlan_port: 4789,
        default_vxlan_dev: Some("eth1".into()),
        vxlan_dev_map: BTreeMap::from([("worker2".into(), "eth9".into())]),
        spokes: spokes.iter().map(|s| s.to_string()).collect(),
        macvtap_mode: MacvtapMode::Passthru,
        allowed_namespaces: Vec::new(),
    }
}

pub fn datapath() -> (Datapath<RecordingKernel>, u32) {
    let k = RecordingKernel::new();
    let eth1 = k.add_host_link("eth1", 1500);
    k.add_host_link("eth0", 9000);
    (Datapath::new(k, "/run/k8slan/dev"), eth1)
}

pub fn lan(ns: &str) -> Ns {
    Ns::Lan(ns.into())
}

/// The link names a list of calls touches.
pub fn touched(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .map(|c| match c {
            Call::CreateLink(n) => n.target().1.to_string(),
            Call::ChangeLink(_, n, _) | Call::DeleteLink(_, n) => n.clone(),
            Call::CreateLanNamespace(n) | Call::DeleteLanNamespace(n) => format!("ns:{n}"),
            Call::MakeTapNode(p, _) | Call::RemoveTapNode(p) => p.display().to_string(),
            other => format!("{other:?}"),
        })
        .collect()
}
