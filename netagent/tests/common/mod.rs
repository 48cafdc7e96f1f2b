//! Simulated nodes for the privileged tests: each node is a network namespace acting as the
//! node's host namespace, with an underlay `eth1` on a shared L2 underlay bridge (mcast_snooping
//! 0, only link-local IPv6), its own netns directory and device directory.
#![allow(dead_code)]

use std::collections::BTreeMap;

use k8slan_api::{LanSpec, MacvtapMode, SpokeKind};
use k8slan_netagent::{Datapath, HostNs, RtnlKernel, SpokeAttachment};
use k8slan_testkit::{TestDir, TestNs, unique_name};

pub const UNDERLAY: &str = "eth1";

/// The shared underlay segment.
pub struct Underlay {
    pub ns: TestNs,
}

impl Underlay {
    pub fn new() -> Self {
        let ns = TestNs::new("ul").unwrap();
        ns.sh("ip link add ubr type bridge mcast_snooping 0 && ip link set ubr up")
            .unwrap();
        Self { ns }
    }
}

/// One simulated node `node1` on an underlay of its own; keep the underlay as long as the node.
pub fn one_node() -> (Underlay, Node) {
    let ul = Underlay::new();
    let n1 = Node::new(&ul, "node1", 1500);
    (ul, n1)
}

/// Two simulated nodes `node1` and `node2` on one underlay; keep the underlay as long as them.
pub fn two_nodes() -> (Underlay, Node, Node) {
    let (ul, n1) = one_node();
    let n2 = Node::new(&ul, "node2", 1500);
    (ul, n1, n2)
}

/// Whether `ping <args>` (two echoes, 2 s each at most) from `from` is answered.
pub fn ping(from: &TestNs, args: &str) -> bool {
    from.sh_output(&format!("ping -c 2 -i 0.2 -W 2 {args}"))
        .unwrap()
        .status
        .success()
}

/// One simulated node.
pub struct Node {
    pub name: String,
    pub ns: TestNs,
    pub dir: TestDir,
    pub dp: Datapath<RtnlKernel>,
}

impl Node {
    pub fn new(underlay: &Underlay, name: &str, mtu: u32) -> Self {
        let ns = TestNs::new("nd").unwrap();
        // Link-local IPv6 only, usable at once (no DAD wait).
        ns.sh("sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0")
            .unwrap();
        let port = unique_name("up");
        underlay
            .ns
            .sh(&format!(
                "ip link add {port} mtu {mtu} type veth peer name {UNDERLAY} mtu {mtu} netns {node} && \
                 ip link set {port} master ubr up",
                node = ns.name()
            ))
            .unwrap();
        ns.sh(&format!("ip link set {UNDERLAY} up")).unwrap();
        let dir = TestDir::new("node").unwrap();
        let kernel = RtnlKernel::new(HostNs::Path(ns.path()), dir.path().join("netns")).unwrap();
        // As the agent runs by default: tap nodes owned by KubeVirt's qemu user.
        let dp = Datapath::new(kernel, dir.path().join("dev"))
            .with_tap_owner(k8slan_netagent::kernel::NodeOwner::QEMU);
        Self {
            name: name.to_string(),
            ns,
            dir,
            dp,
        }
    }

    /// Brings `spoke` of `spec` up on this node as `kind`; the test fails where it is called if
    /// the datapath refuses.
    #[track_caller]
    pub fn spoke_up(&self, spec: &LanSpec, spoke: &str, kind: SpokeKind) -> SpokeAttachment {
        self.dp.spoke_up(spec, &self.name, spoke, kind).unwrap()
    }

    /// `ip` in the node's host namespace.
    pub fn sh(&self, cmd: &str) -> String {
        self.ns.sh(cmd).unwrap()
    }

    /// Run a shell command inside the node's LAN namespace `lan`.
    pub fn lan_sh(&self, lan: &str, cmd: &str) -> String {
        let path = self.dir.path().join("netns").join(lan);
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", path.display()))
            .args(["sh", "-c", cmd])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A LAN spec with unique names.
pub fn lan_spec(vni: u32, spokes: &[&str]) -> LanSpec {
    LanSpec {
        ns: unique_name("lan"),
        bridge: "br0".into(),
        vxlan: "vx0".into(),
        vni,
        vxlan_grp: Some("ff02::14".into()),
        vxlan_mode: Default::default(),
        vxlan_family: Default::default(),
        vxlan_port: 4789,
        default_vxlan_dev: Some(UNDERLAY.into()),
        vxlan_dev_map: BTreeMap::new(),
        spokes: spokes.iter().map(|s| s.to_string()).collect(),
        macvtap_mode: MacvtapMode::Passthru,
        allowed_namespaces: Vec::new(),
    }
}

/// A pod: a namespace into which a spoke's host end is moved, addressed with `addr` (CIDR).
pub fn pod_with(node: &Node, spoke: &str, addr: &str) -> TestNs {
    let pod = TestNs::new("pod").unwrap();
    node.sh(&format!("ip link set {spoke} netns {}", pod.name()));
    pod.sh(&format!(
        "ip link set {spoke} name e1 && ip addr add {addr} dev e1 && ip link set e1 up"
    ))
    .unwrap();
    pod
}

/// A unique spoke name.
pub fn spoke(tag: &str) -> String {
    unique_name(tag)
}
