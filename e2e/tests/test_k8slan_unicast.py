"""LANs on an underlay that drops IP multicast, as cloud and routed networks do
(`underlay_multicast drop` in e2e/lib/node.sh): a unicast LAN (head-end replication to each peer
node) passes the members scenarios over IPv6 and over IPv4, while a multicast LAN on the same
underlay carries nothing; peers follow membership live (figures); a LAN that names no underlay
device runs on each node's uplink (eth0, the InternalIP's interface) alone; a LAN switches
between multicast and unicast, and between families, with its members in place (figure)."""
import json
import subprocess
import time

import pytest

import test_k8slan_members as members
from helpers import (COMMON_SH, LAN_NETNS_DIR, WORKERS, Lan, Pinger, lan_status, lan_subnet, member_pod,
                     node_run, ping, setting, two_members, wait_for, wait_pods_running)

W1, W2 = WORKERS
FAMILIES = ("ipv6", "ipv4")


def underlay_multicast(what):
    node_sh = COMMON_SH.parent / "node.sh"
    subprocess.run(["bash", "-c", f'source "{COMMON_SH}" && source "{node_sh}" && underlay_multicast {what}'],
                   check=True, timeout=30)


@pytest.fixture
def no_multicast():
    """The underlay drops IP multicast between the nodes for the test's duration."""
    underlay_multicast("drop")
    yield
    underlay_multicast("pass")


@pytest.fixture
def unicast(request, no_multicast):
    """Every test LAN of the test is unicast, of the family the test is parametrised with."""
    Lan.flooding = {"vxlanMode": "unicast", "vxlanFamily": request.param}
    yield request.param
    Lan.flooding = {}


def flood_peers(node, lan, vxlan="vx0"):
    """The addresses the node's VXLAN of the LAN floods to (its all-zero-MAC FDB entries)."""
    out = node_run(node, "nsenter", f"--net={LAN_NETNS_DIR}/{lan.ns}", "bridge", "fdb", "show", "dev",
                   vxlan, check=False)
    return {line.split(" dst ")[1].split()[0] for line in out.splitlines()
            if line.startswith("00:00:00:00:00:00") and " dst " in line}


def node_ip(node):
    """The node's InternalIP (its eth0 address)."""
    return node_run(node, "ip", "-o", "-4", "addr", "show", "eth0").split()[3].split("/")[0]


@pytest.mark.parametrize("unicast", FAMILIES, indirect=True)
def test_unicast_members_share_a_lan_without_multicast(k8slan, namespace, unicast):
    members.test_pods_on_two_workers_share_a_layer2_lan(k8slan, namespace)


@pytest.mark.parametrize("unicast", FAMILIES, indirect=True)
def test_unicast_one_member_per_spoke(k8slan, namespace, unicast):
    members.test_one_member_per_spoke(k8slan, namespace)


@pytest.mark.parametrize("unicast", ["ipv6"], indirect=True)
def test_unicast_spokes_added_and_removed_live(k8slan, namespace, unicast):
    members.test_spokes_added_and_removed_live(k8slan, namespace)


def test_a_multicast_lan_carries_nothing_on_that_underlay(k8slan, namespace, no_multicast):
    """The proof that the drop is real: the same two members on a multicast LAN get no reply
    while the underlay drops multicast, and talk once it stops dropping."""
    kubectl = k8slan
    lan, subnet = Lan(), lan_subnet()
    two_members(kubectl, namespace, lan, subnet)
    stats = ping(kubectl, namespace, "m1", subnet.host(2), count=5)
    assert stats.received == 0, f"a multicast LAN crossed an underlay without multicast: {stats.output}"
    underlay_multicast("pass")
    ping(kubectl, namespace, "m1", subnet.host(2), count=3, check=True)


@pytest.mark.parametrize("unicast", FAMILIES, indirect=True)
def test_peers_follow_membership(k8slan, namespace, unicast):
    """Only nodes holding a spoke are peers; a node's peer appears when a member joins there and
    goes when it leaves. Status names each node's underlay address and peer count."""
    kubectl = k8slan
    lan, subnet = Lan(), lan_subnet()
    kubectl.apply(lan.manifest(), namespace)
    kubectl.apply(member_pod("m1", W1, lan.spokes["a"], subnet.cidr(1)), namespace)
    wait_pods_running(kubectl, namespace, "m1")
    assert flood_peers(W1, lan) == set(), "a node floods to a node without members"

    w2_address = wait_for(lambda: w2_underlay(kubectl, namespace, lan), 30, what="w2's underlay address")
    start = time.monotonic()
    kubectl.apply(member_pod("m2", W2, lan.spokes["b"], subnet.cidr(2)), namespace)
    wait_for(lambda: flood_peers(W1, lan) == {w2_address}, 60, interval=0.1, what=f"{W1} floods to {W2}")
    joined = time.monotonic() - start
    wait_pods_running(kubectl, namespace, "m2")
    ping(kubectl, namespace, "m1", subnet.host(2), count=3, check=True)

    def peers_in_status():
        nodes = {n["node"]: n for n in lan_status(kubectl, namespace, lan.name).get("nodes", [])}
        return nodes if all(nodes.get(w, {}).get("peers") == 1 for w in WORKERS) else None
    nodes = wait_for(peers_in_status, 30, what="status: each worker has one peer")
    assert nodes[W2]["underlay"].endswith(w2_address), nodes
    print(kubectl("-n", namespace, "get", "lan", lan.name, "-o", "wide"))

    kubectl("-n", namespace, "delete", "pod", "m2", "--wait=false")
    claim = f"spoke-{lan.spokes['b']}"
    wait_for(lambda: not kubectl("-n", setting("K8SLAN_NAMESPACE"), "get", "lease", claim,
                                 "--ignore-not-found", "-o", "name").strip(),
             90, interval=0.1, what=f"claim {claim} released")
    claim_gone_at = time.monotonic()
    wait_for(lambda: flood_peers(W1, lan) == set(), 30, interval=0.1, what=f"{W1} stops flooding to {W2}")
    left = time.monotonic() - claim_gone_at
    print(f"\nFIGURE unicast peer join ({unicast}): {W1} floods to {W2} {joined:.2f}s after the member pod "
          f"was created (Allocate + claim + watch)")
    print(f"FIGURE unicast peer leave ({unicast}): {W1} stops flooding to {W2} {left:.2f}s after the "
          f"claim was released")


def w2_underlay(kubectl, namespace, lan):
    """The address w2 reports for the LAN's underlay (its eth1), once it reports the LAN."""
    for n in lan_status(kubectl, namespace, lan.name).get("nodes", []):
        if n["node"] == W2 and n.get("underlay") and "(no " not in n["underlay"]:
            return n["underlay"].split()[1]
    return None


def test_a_lan_that_names_no_underlay_runs_on_each_nodes_uplink(k8slan, namespace, no_multicast):
    """No defaultVxlanDev, no vxlanDevMap: each node's uplink (eth0, its InternalIP) carries a
    unicast IPv4 LAN; nothing needs the second NIC."""
    kubectl = k8slan
    lan, subnet = Lan(), lan_subnet()
    Lan.flooding = {"vxlanMode": "unicast", "vxlanFamily": "ipv4"}
    try:
        manifest = lan.manifest(dev=None)
    finally:
        Lan.flooding = {}
    assert "defaultVxlanDev" not in manifest["spec"]
    kubectl.apply(manifest, namespace)
    kubectl.apply([member_pod("m1", W1, lan.spokes["a"], subnet.cidr(1)),
                   member_pod("m2", W2, lan.spokes["b"], subnet.cidr(2))], namespace)
    wait_pods_running(kubectl, namespace, "m1", "m2")
    ping(kubectl, namespace, "m1", subnet.host(2), count=3, check=True)
    ping(kubectl, namespace, "m2", subnet.host(1), count=3, check=True)
    assert flood_peers(W1, lan) == {node_ip(W2)}
    nodes = {n["node"]: n for n in lan_status(kubectl, namespace, lan.name)["nodes"]}
    assert nodes[W1]["underlay"] == f"eth0 {node_ip(W1)}", nodes


def test_mode_and_family_change_live(k8slan, namespace):
    """A multicast LAN with members becomes unicast, then unicast over IPv4, then multicast
    again, without recreating the LAN or its members; pings run throughout (figure: loss)."""
    kubectl = k8slan
    lan, subnet = Lan(), lan_subnet()
    two_members(kubectl, namespace, lan, subnet, reachable=True)
    steps = [("unicast ipv6", {"vxlanMode": "unicast", "vxlanGrp": None}),
             ("unicast ipv4", {"vxlanFamily": "ipv4"}),
             ("multicast ipv6", {"vxlanMode": "multicast", "vxlanFamily": "ipv6"})]
    for what, patch in steps:
        with Pinger(namespace, "m1", subnet.host(2), count=100, interval=0.1) as pinger:
            time.sleep(2)
            kubectl("-n", namespace, "patch", "lan", lan.name, "--type=merge",
                    "-p", json.dumps({"spec": patch}))
            stats = pinger.finish(timeout=60)
        lost = stats.sent - stats.received
        print(f"\nFIGURE live switch to {what}: {lost} of {stats.sent} pings lost at 10/s "
              f"(~{lost * 0.1:.1f}s without traffic)")
        ping(kubectl, namespace, "m1", subnet.host(2), count=3, check=True)
        ping(kubectl, namespace, "m2", subnet.host(1), count=3, check=True)
    pods = kubectl.json("-n", namespace, "get", "pods", "m1", "m2")["items"]
    assert all(p["status"]["containerStatuses"][0]["restartCount"] == 0 for p in pods)
