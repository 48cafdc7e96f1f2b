//! Builders shared by the unit tests.

use std::collections::BTreeMap;

use k8slan_api::{LAN, LanSpec};

pub fn spec(ns: &str, vni: u32, spokes: &[&str]) -> LanSpec {
    LanSpec {
        ns: ns.into(),
        bridge: "br0".into(),
        vxlan: "vx0".into(),
        vni,
        vxlan_grp: Some("ff02::14".into()),
        vxlan_mode: Default::default(),
        vxlan_family: Default::default(),
        vxlan_port: 4789,
        default_vxlan_dev: Some("eth1".into()),
        vxlan_dev_map: BTreeMap::new(),
        spokes: spokes.iter().map(|s| s.to_string()).collect(),
        macvtap_mode: Default::default(),
        allowed_namespaces: Vec::new(),
    }
}

pub fn lan(namespace: &str, name: &str, uid: &str, spokes: &[&str]) -> LAN {
    let mut l = LAN::new(name, spec(&format!("ns-{name}"), 100, spokes));
    l.metadata.namespace = Some(namespace.into());
    l.metadata.uid = Some(uid.into());
    l
}
