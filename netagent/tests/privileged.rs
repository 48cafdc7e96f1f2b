//! Privileged tests of the real datapath: two simulated nodes on a shared underlay.
//! Run as root: `cargo test -p k8slan-netagent -- --ignored`.

mod common;

use common::*;
use k8slan_api::SpokeKind;

#[test]
#[ignore = "privileged"]
fn pods_on_two_nodes_ping_over_the_lan() {
    let ul = Underlay::new();
    let n1 = Node::new(&ul, "node1", 1500);
    let n2 = Node::new(&ul, "node2", 1500);
    let (a, b) = (spoke("a"), spoke("b"));
    let spec = lan_spec(4242, &[&a, &b]);

    let s1 = n1
        .dp
        .spoke_up(&spec, &n1.name, &a, SpokeKind::Veth)
        .unwrap();
    let s2 = n2
        .dp
        .spoke_up(&spec, &n2.name, &b, SpokeKind::Veth)
        .unwrap();
    assert_eq!(s1.host_ifname, a);
    assert_eq!(s1.mtu, 1430);
    assert!(s1.mac.is_none());

    let p1 = pod_with(&n1, &a, "198.18.7.1/24");
    let p2 = pod_with(&n2, &b, "198.18.7.2/24");
    let out = p1.sh_output("ping -c 3 -i 0.2 -W 2 198.18.7.2").unwrap();
    assert!(
        out.status.success(),
        "ping over the LAN failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Full-size frames pass unfragmented (DF set): MTU 1430 - 28 bytes of IPv4+ICMP headers.
    let out = p2
        .sh_output("ping -c 2 -i 0.2 -W 2 -M do -s 1402 198.18.7.1")
        .unwrap();
    assert!(
        out.status.success(),
        "full-MTU ping failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    n1.dp.lan_down(&spec).unwrap();
    n2.dp.lan_down(&spec).unwrap();
}
