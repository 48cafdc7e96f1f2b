"""The node's multicast membership limit: every multicast VXLAN of a node on one port and family
shares one socket, and the kernel lets that socket join only so many groups (IPv4:
net.ipv4.igmp_max_memberships, 20 by default). A LAN past the limit says so in its status, with
the fixes; sharing a group (LANs stay apart by VNI) is one of them. docs/underlay.md has the
figures."""
import contextlib

from helpers import (WORKERS, Lan, lan_status, lan_subnet, member_pod, node_run, ping, wait_for,
                     wait_pods_running)

W1, W2 = WORKERS
LIMIT = "net.ipv4.igmp_max_memberships"


@contextlib.contextmanager
def membership_limit(node, value):
    """The node's IPv4 membership limit is `value` for the block's duration (its host network
    namespace only: the sysctl is per namespace)."""
    before = node_run(node, "sysctl", "-n", LIMIT).strip()
    node_run(node, "sysctl", "-qw", f"{LIMIT}={value}")
    try:
        yield
    finally:
        node_run(node, "sysctl", "-qw", f"{LIMIT}={before}")


def ipv4_multicast(lan, group):
    return lan.manifest(vxlanFamily="ipv4", vxlanGrp=group)


def node_state(kubectl, namespace, lan, node):
    nodes = {n["node"]: n for n in lan_status(kubectl, namespace, lan.name).get("nodes", [])}
    return nodes.get(node)


def test_a_lan_past_the_multicast_limit_says_why_and_sharing_a_group_fixes_it(k8slan, namespace):
    kubectl = k8slan
    first, second = Lan(), Lan()
    subnet = lan_subnet()
    kubectl.apply(ipv4_multicast(first, "239.1.31.1"), namespace)
    kubectl.apply(member_pod("m1", W1, first.spokes["a"], subnet.cidr(1)), namespace)
    wait_pods_running(kubectl, namespace, "m1")
    # The second LAN's member on worker2 (limit untouched there) is up before the limit bites.
    kubectl.apply(ipv4_multicast(second, "239.1.31.2"), namespace)
    kubectl.apply(member_pod("m3", W2, second.spokes["b"], subnet.cidr(3)), namespace)
    wait_pods_running(kubectl, namespace, "m3")

    with membership_limit(W1, 1):
        # worker1 holds one IPv4 group (the first LAN's) at least: a new group is refused.
        kubectl.apply(member_pod("m2", W1, second.spokes["a"], subnet.cidr(2)), namespace)

        def failed():
            st = node_state(kubectl, namespace, second, W1)
            return st if st and st["state"] == "Failed" else None
        st = wait_for(failed, 90, what=f"{second.name} Failed on {W1}")
        message = st["message"]
        for part in ("239.1.31.2", LIMIT, "spec.vxlanMode to unicast", "spec.vxlanGrp"):
            assert part in message, f"{part!r} missing from the status message: {message}"
        print(f"\n{W1}: {message}")
        # The first LAN is untouched.
        assert node_state(kubectl, namespace, first, W1)["state"] == "Ready"

        # The fix the message names: share the first LAN's group.
        kubectl.apply(ipv4_multicast(second, "239.1.31.1"), namespace)
        wait_for(lambda: (node_state(kubectl, namespace, second, W1) or {}).get("state") == "Ready", 60,
                 what=f"{second.name} Ready on {W1} after sharing the group")
        kubectl("-n", namespace, "delete", "pod", "m2", "--wait=true", "--timeout=60s")
        kubectl.apply(member_pod("m2", W1, second.spokes["a"], subnet.cidr(2)), namespace)
        wait_pods_running(kubectl, namespace, "m2")
        ping(kubectl, namespace, "m2", subnet.host(3), count=3, check=True)
