"""LAN members: pods on different workers share a layer-2 LAN (scenario 3), a VM-like pod through
its tap device (4), one member per spoke (5), spokes added and removed live (6), LAN deletion
cleans every node (8)."""
import time

from helpers import (LAN_IF, LINK_ALIAS_PREFIX, WORKERS, Lan, Pinger, assert_stays_pending,
                     capacity, exchange, exec_background, holders, k8slan_host_links, lan_netns_links,
                     lan_status, lan_subnet, member_pod, nad_exists, nad_name, ping, pod_mac,
                     resource_name, two_members, wait_for, wait_pods_running)

W1, W2 = WORKERS
LLDP_MULTICAST = "01:80:c2:00:00:0e"
IPV4_ICMP_OVERHEAD = 28   # IPv4 header + ICMP header: a DF ping's payload is the MTU less this


def test_pods_on_two_workers_share_a_layer2_lan(k8slan, namespace):
    kubectl = k8slan
    lan, subnet = Lan(), lan_subnet()
    pods = two_members(kubectl, namespace, lan, subnet)
    assert pods["m1"]["spec"]["nodeName"] == W1 and pods["m2"]["spec"]["nodeName"] == W2

    for pod in ("m1", "m2"):
        link = kubectl.exec(namespace, pod, "ip", "-o", "link", "show", LAN_IF)
        assert f"mtu {lan.mtu}" in link, link
    stats = ping(kubectl, namespace, "m1", subnet.host(2))
    print(f"\n{stats.output}")
    assert stats.received == stats.sent, stats.output
    stats = ping(kubectl, namespace, "m2", subnet.host(1))
    assert stats.received == stats.sent, stats.output
    # A full-size frame crosses the underlay unfragmented; one byte more is refused at the pod.
    biggest = lan.mtu - IPV4_ICMP_OVERHEAD
    kubectl.exec(namespace, "m1", "dfping", subnet.host(2), str(biggest))
    too_big = kubectl.exec_rc(namespace, "m1", "dfping", subnet.host(2), str(biggest + 1))
    assert too_big != 0, f"a {biggest + 1}-byte DF ping passed a {lan.mtu}-byte MTU"

    # LLDP (link-local multicast, which a plain bridge never forwards) crosses the LAN.
    src = "02:11:22:33:44:55"
    frame = exchange(kubectl, namespace, "m2", ["recv", "--iface", LAN_IF, "--ethertype", "88cc"],
                     "m1", ["send", "--iface", LAN_IF, "--dst", LLDP_MULTICAST, "--src", src,
                            "--ethertype", "88cc", "--payload", "lldp-from-m1"])
    assert frame["dst"] == LLDP_MULTICAST and frame["src"] == src, frame
    assert frame["payload"].startswith("lldp-from-m1"), frame

    # A frame with an arbitrary source MAC (not the sender's), unicast to the peer, crosses too.
    src = "0a:bc:de:f0:12:34"
    assert src != pod_mac(kubectl, namespace, "m2")
    frame = exchange(kubectl, namespace, "m1", ["recv", "--iface", LAN_IF, "--ethertype", "88b5", "--src", src],
                     "m2", ["send", "--iface", LAN_IF, "--dst", pod_mac(kubectl, namespace, "m1"),
                            "--src", src, "--ethertype", "88b5", "--payload", "any-source"])
    assert frame["src"] == src and frame["payload"].startswith("any-source"), frame

    # Status: who holds which spoke, and both nodes Ready.
    def both_held():
        h = {x["spoke"]: x for x in holders(kubectl, namespace, lan)}
        return h if all(h.get(s, {}).get("pod") for s in lan.spokes.values()) else None
    h = wait_for(both_held, 30, what="status.holders naming both pods")
    assert h[lan.spokes["a"]] == {"spoke": lan.spokes["a"], "kind": "veth", "node": W1, "pod": f"{namespace}/m1"}
    assert h[lan.spokes["b"]] == {"spoke": lan.spokes["b"], "kind": "veth", "node": W2, "pod": f"{namespace}/m2"}
    wait_for(lambda: lan_status(kubectl, namespace, lan.name).get("readyNodes", 0) >= 2,
             30, what="Ready-Nodes >= 2")
    print(kubectl("-n", namespace, "get", "lan", lan.name))


def test_vm_like_pod_talks_through_its_tap_device(k8slan, namespace):
    """A pod attached the way KubeVirt attaches a VM: the k8slan-mac NAD and resource give it a
    macvtap and its tap device; frames written there reach a pod on the other node and frames
    from that pod are read there and answered."""
    kubectl = k8slan
    lan = Lan()
    two_members(kubectl, namespace, lan, lan_subnet(), kinds=("mac", "veth"))
    taps = kubectl.exec(namespace, "m1", "sh", "-c", "ls /dev/tap*").split()
    assert len(taps) == 1, taps
    tap = taps[0]
    ifindex = kubectl.exec(namespace, "m1", "cat", f"/sys/class/net/{LAN_IF}/ifindex").strip()
    assert tap == f"/dev/tap{ifindex}", f"{tap} is not the tap of {LAN_IF} (ifindex {ifindex})"
    # The interface is a macvtap (sysfs has its macvtap/ directory) whose tap is that device.
    assert kubectl.exec(namespace, "m1", "ls", f"/sys/class/net/{LAN_IF}/macvtap").split() == [f"tap{ifindex}"]

    vm_src = "52:54:00:12:34:56"   # the VM's own MAC, not the macvtap's
    peer = pod_mac(kubectl, namespace, "m2")
    # Written to the tap -> received by the pod on worker2.
    frame = exchange(kubectl, namespace, "m2", ["recv", "--iface", LAN_IF, "--ethertype", "88b5", "--src", vm_src],
                     "m1", ["tap-send", "--dev", tap, "--dst", peer, "--src", vm_src, "--ethertype", "88b5",
                            "--payload", "from-the-vm"])
    assert frame["payload"].startswith("from-the-vm"), frame
    # Sent by the pod on worker2 -> read from the tap, answered through it -> back at the pod.
    vm_reply_src = "52:54:00:ab:cd:ef"
    proc = exec_background(namespace, "m1", "k8slan-frame", "tap-echo", "--dev", tap, "--ethertype", "88b6",
                           "--reply-src", vm_reply_src, "--timeout", "25")
    try:
        time.sleep(1.0)
        reply = exchange(kubectl, namespace, "m2",
                         ["recv", "--iface", LAN_IF, "--ethertype", "88b6", "--src", vm_reply_src],
                         "m2", ["send", "--iface", LAN_IF, "--dst", "ff:ff:ff:ff:ff:ff", "--src", peer,
                                "--ethertype", "88b6", "--payload", "to-the-vm"])
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, f"tap-echo: {out}{err}"
    assert reply["dst"] == peer and reply["payload"].startswith("echo:to-the-vm"), reply


def test_a_non_root_vm_opens_its_tap_device(k8slan, namespace):
    """KubeVirt runs QEMU as 107:107 without capabilities (non-root VMs, the default): the tap
    device the container gets from Allocate is owned by that user (agent.tapOwner), so it can
    open it and write a frame that reaches a pod on the other node."""
    kubectl = k8slan
    lan = Lan()
    kubectl.apply(lan.manifest(), namespace)
    vm = member_pod("vm", W1, lan.spokes["a"], kind="mac", command=["sleep", "3600"])
    vm["spec"]["securityContext"] = {"runAsUser": 107, "runAsGroup": 107, "runAsNonRoot": True}
    vm["spec"]["containers"][0]["securityContext"] = {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    kubectl.apply([vm, member_pod("peer", W2, lan.spokes["b"])], namespace)
    wait_pods_running(kubectl, namespace, "vm", "peer")
    taps = kubectl.exec(namespace, "vm", "sh", "-c", "ls /dev/tap*").split()
    assert len(taps) == 1, taps
    tap = taps[0]
    assert kubectl.exec(namespace, "vm", "id", "-u").strip() == "107"
    owner = kubectl.exec(namespace, "vm", "stat", "-c", "%u:%g %a", tap).strip()
    assert owner == "107:107 660", f"{tap} in the VM's container: {owner}"
    peer = pod_mac(kubectl, namespace, "peer")
    vm_src = "52:54:00:10:70:07"
    frame = exchange(kubectl, namespace, "peer", ["recv", "--iface", LAN_IF, "--ethertype", "88b5", "--src", vm_src],
                     "vm", ["tap-send", "--dev", tap, "--dst", peer, "--src", vm_src, "--ethertype", "88b5",
                            "--payload", "from-qemu-107"])
    assert frame["payload"].startswith("from-qemu-107"), frame


def test_one_member_per_spoke(k8slan, namespace):
    """A held spoke keeps a second pod Pending on the same and on the other node; released, it
    goes to the waiting pod, which connects. A pod on the veth twin blocks the mac twin."""
    kubectl = k8slan
    lan, subnet = Lan(), lan_subnet()
    a, b = lan.spokes["a"], lan.spokes["b"]
    kubectl.apply(lan.manifest(), namespace)
    kubectl.apply([member_pod("holder", W1, a, subnet.cidr(1)),
                   member_pod("peer", W1, b, subnet.cidr(9))], namespace)
    wait_pods_running(kubectl, namespace, "holder", "peer")

    kubectl.apply(member_pod("same-node", W1, a, subnet.cidr(2)), namespace)
    assert_stays_pending(kubectl, namespace, "same-node", resource_name("veth", a))
    kubectl("-n", namespace, "delete", "pod", "same-node", "--wait=true")

    kubectl.apply(member_pod("other-node", W2, a, subnet.cidr(3)), namespace)
    assert_stays_pending(kubectl, namespace, "other-node", resource_name("veth", a))

    # The mac twin of a spoke held by a pod is not available anywhere.
    twin = member_pod("twin", None, b, kind="mac")
    kubectl.apply(twin, namespace)
    assert_stays_pending(kubectl, namespace, "twin", resource_name("mac", b))
    kubectl("-n", namespace, "delete", "pod", "twin", "--wait=true")

    start = time.monotonic()
    kubectl("-n", namespace, "delete", "pod", "holder", "--wait=true")
    pod = kubectl.wait_pod_running(namespace, "other-node", timeout=90)
    print(f"\nFIGURE spoke handover: holder deleted -> waiting pod on the other node Running: "
          f"{time.monotonic() - start:.1f}s")
    assert pod["spec"]["nodeName"] == W2
    stats = ping(kubectl, namespace, "other-node", subnet.host(9))
    assert stats.received == stats.sent, stats.output


def test_spokes_added_and_removed_live(k8slan, namespace):
    kubectl = k8slan
    lan, subnet = Lan(), lan_subnet()
    two_members(kubectl, namespace, lan, subnet)
    # 20 s of pings at 5/s while the LAN changes.
    with Pinger(namespace, "m1", subnet.host(2), count=100, interval=0.2) as pinger:
        new = f"c{lan.tag}"
        start = time.monotonic()
        kubectl.apply(lan.manifest(spokes=[*lan.spokes.values(), new]), namespace)
        for kind in ("veth", "mac"):
            for node in WORKERS:
                wait_for(lambda: capacity(kubectl, node, resource_name(kind, new)) == (1, 1), 30,
                         interval=0.2, what=f"{resource_name(kind, new)} on {node}")
        print(f"\nFIGURE added spoke: capacity on both workers after {time.monotonic() - start:.2f}s")
        for kind in ("veth", "mac"):
            # The controller writes NADs on its own schedule: capacity can come first.
            wait_for(lambda: nad_exists(kubectl, namespace, nad_name(kind, new)),
                     30, interval=0.2, what=f"NAD {nad_name(kind, new)}")

        start = time.monotonic()
        kubectl.apply(lan.manifest(), namespace)
        for kind in ("veth", "mac"):
            wait_for(lambda: not nad_exists(kubectl, namespace, nad_name(kind, new)),
                     30, what=f"NAD {nad_name(kind, new)} gone")
            for node in WORKERS:
                wait_for(lambda: capacity(kubectl, node, resource_name(kind, new)) == (0, 0), 30,
                         interval=0.2, what=f"{resource_name(kind, new)} gone from {node}")
        print(f"FIGURE removed spoke: NADs and capacity gone after {time.monotonic() - start:.2f}s")
        stats = pinger.finish(timeout=60)
    print(f"FIGURE ping during add/remove: {stats.sent} sent, {stats.received} received")
    assert stats.sent == 100 and stats.received == stats.sent, stats.output


def test_lan_deletion_cleans_every_node(k8slan, namespace):
    kubectl = k8slan
    lan = Lan()
    two_members(kubectl, namespace, lan, lan_subnet())
    for node in WORKERS:
        links = lan_netns_links(node, lan.ns)
        assert links is not None, f"no LAN namespace {lan.ns} on {node}"
        assert "br0" in links and "vx0" in links, links

    def mine(node):
        return [link for link in k8slan_host_links(node) if f"{LINK_ALIAS_PREFIX}{lan.ns}/" in link]

    start = time.monotonic()
    kubectl("-n", namespace, "delete", "lan", lan.name, "--wait=false")

    def clean():
        return all(lan_netns_links(node, lan.ns) is None and not mine(node) for node in WORKERS)
    wait_for(clean, 30, interval=0.2, what=f"LAN namespace {lan.ns} and its links gone from every node")
    elapsed = time.monotonic() - start
    print(f"\nFIGURE LAN delete: namespace and links gone from every node after {elapsed:.2f}s")
    # The namespace itself is destroyed, not only unmounted: the pods' LAN interfaces (veth peers
    # of ports in it) are gone.
    for pod in ("m1", "m2"):
        wait_for(lambda: LAN_IF not in kubectl.exec(namespace, pod, "ip", "-o", "link"), 10,
                 interval=0.2, what=f"{LAN_IF} gone from {pod}")
    for spoke in lan.spokes.values():
        for kind in ("veth", "mac"):
            wait_for(lambda: not nad_exists(kubectl, namespace, nad_name(kind, spoke)),
                     30, what=f"NAD {nad_name(kind, spoke)} gone")
    assert elapsed <= 10, f"cleanup took {elapsed:.2f}s (goal 10 s)"
