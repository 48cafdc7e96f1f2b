"""Real KubeVirt VMs on k8slan LANs (issue 13): KubeVirt v1.7.0 built from source, installed by
e2e/kubevirt/install.sh with the macvtap binding plugin; VMs boot our guest (e2e/kubevirt/guest)
under QEMU (software emulation where this machine's KVM cannot run a guest).

What a user checks: the seed's VirtualMachine runs and answers on its LAN; a VM and a pod on two
nodes reach each other both ways at the LAN's MTU; LLDP and frames from foreign MACs cross in both
directions; a restarted VM comes back on its spoke; a deleted VM frees its spoke; a VM and a pod on
the two twins of one spoke never both run. QEMU runs as uid 107 (non-root VMs, no Root gate).
"""
import json
import time

import pytest

from helpers import (LAN_IF, LAN_MTU, WORKERS, Lan, assert_stays_pending, exec_background, lan_subnet,
                     member_pod, node_run, pod_mac, ping, resource_name, wait_for, wait_pods_running)
from vms import (GUEST_LAN_IF, KUBEVIRT_NAMESPACE, SEED_VM, Guest, eui64_link_local, finish,
                 kubevirt_available, launcher_pod, launcher_pods, multus_ifname, requests_spoke, vm_manifest,
                 vmi, vmi_interface, wait_vmi_running)

W1, W2 = WORKERS
LLDP_DST = "01:80:c2:00:00:0e"
IPV4_ICMP_OVERHEAD = 28   # IPv4 header + ICMP header: a DF ping's payload is the MTU less this


@pytest.fixture(scope="session")
def kubevirt(k8slan):
    """KubeVirt installed by e2e/kubevirt/install.sh (make test-cluster does) and Available."""
    assert kubevirt_available(k8slan), "KubeVirt is not Available: run e2e/kubevirt/install.sh"
    return k8slan


def vm_with_peer(kubectl, namespace, vm_node=W1, peer_node=W2):
    """A LAN with spokes v (the VM's) and p (the peer pod's), VM `vm` at .1 on vm_node and pod
    `peer` at .2 on peer_node; returns (lan, subnet, guest, seconds applied -> VMI Running)."""
    lan, subnet = Lan(roles=("v", "p")), lan_subnet()
    kubectl.apply(lan.manifest(), namespace)
    kubectl.apply(member_pod("peer", peer_node, lan.spokes["p"], subnet.cidr(2)), namespace)
    wait_pods_running(kubectl, namespace, "peer")
    start = time.monotonic()
    kubectl.apply(vm_manifest("vm", lan.spokes["v"], node=vm_node, address=subnet.cidr(1)), namespace)
    v = wait_vmi_running(kubectl, namespace, "vm")
    running = time.monotonic() - start
    guest = Guest(kubectl, namespace, "peer", v)
    guest.wait_ready()
    return lan, subnet, guest, running


def first_reply(kubectl, namespace, pod, address, timeout):
    """Seconds until `pod` gets a reply from `address` (one ping a second)."""
    start = time.monotonic()
    wait_for(lambda: ping(kubectl, namespace, pod, address, count=1, wait=1, timeout=20).received == 1,
             timeout, interval=0.2, what=f"{pod}: a reply from {address}")
    return time.monotonic() - start


def test_the_seed_vm_boots_and_answers_on_its_spoke(kubevirt, namespace):
    """The seed's VirtualMachine, as written (only the containerDisk image is ours), on spoke
    `vm`: it reaches Running with QEMU as uid 107, Multus gets the interface name KubeVirt asks
    for, and a pod on the other spoke reaches the guest's IPv6 link-local address, which needs no
    configuration at all (the seed's user-data is not a script)."""
    kubectl = kubevirt
    lan = Lan(roles=("p",))
    kubectl.apply(lan.manifest(spokes=["vm", lan.spokes["p"]]), namespace)
    kubectl.apply(member_pod("peer", W2, lan.spokes["p"]), namespace)
    wait_pods_running(kubectl, namespace, "peer")
    start = time.monotonic()
    kubectl("-n", namespace, "apply", "-f", SEED_VM)
    v = wait_vmi_running(kubectl, namespace, "testvm")
    running = time.monotonic() - start
    address = eui64_link_local(vmi_interface(v, "link1")["mac"])
    reply = running + first_reply(kubectl, namespace, "peer", f"{address}%{LAN_IF}", 300)
    print(f"\nFIGURE seed VM: applied -> VMI Running {running:.1f}s, -> first reply on the LAN {reply:.1f}s")

    pod = launcher_pod(kubectl, namespace, v)
    assert requests_spoke(pod, "mac", "vm"), pod["spec"]["containers"]
    status = json.loads(pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"])
    lan_ifs = [n["interface"] for n in status if n["name"] == f"{namespace}/k8slan-mac-vm"]
    assert lan_ifs == [multus_ifname("link1")], status
    node = pod["spec"]["nodeName"]
    qemus = [line.split() for line in node_run(node, "ps", "-eo", "uid=,comm=").splitlines() if "qemu" in line]
    assert qemus and all(uid == "107" for uid, _ in qemus), f"QEMU on {node} runs as {qemus}"
    gates = kubectl.json("-n", KUBEVIRT_NAMESPACE, "get", "kubevirt", "kubevirt")["spec"]["configuration"] \
        .get("developerConfiguration", {}).get("featureGates", [])
    assert "Root" not in gates, gates


def test_a_vm_and_a_pod_on_two_nodes_reach_each_other_at_the_lan_mtu(kubevirt, namespace):
    kubectl = kubevirt
    _, subnet, guest, running = vm_with_peer(kubectl, namespace)
    reply = running + first_reply(kubectl, namespace, "peer", subnet.host(1), 120)
    print(f"\nFIGURE VM on a LAN: applied -> VMI Running {running:.1f}s, -> first reply across nodes {reply:.1f}s")
    stats = ping(kubectl, namespace, "peer", subnet.host(1), count=5)
    assert stats.received == stats.sent, stats.output
    out = guest.check(f"ping -c 3 -W 3 {subnet.host(2)}")
    assert "3 packets received" in out, out
    assert guest.check(f"cat /sys/class/net/{GUEST_LAN_IF}/mtu").strip() == str(LAN_MTU)
    biggest = LAN_MTU - IPV4_ICMP_OVERHEAD
    guest.check(f"dfping {subnet.host(2)} {biggest}")
    rc, out = guest.run(f"dfping {subnet.host(2)} {biggest + 1}")
    assert rc != 0, f"a {biggest + 1}-byte DF ping passed a {LAN_MTU}-byte MTU: {out}"


def test_lldp_and_foreign_macs_cross_between_a_vm_and_a_pod(kubevirt, namespace):
    kubectl = kubevirt
    _, _, guest, _ = vm_with_peer(kubectl, namespace)
    peer_mac = pod_mac(kubectl, namespace, "peer")
    guest_mac = guest.check(f"cat /sys/class/net/{GUEST_LAN_IF}/address").strip()
    frame_from_guest(kubectl, namespace, guest, ["--ethertype", "88cc", "--src", guest_mac],
                     ["--dst", LLDP_DST, "--src", guest_mac, "--ethertype", "88cc", "--payload", "lldp-from-vm"])
    foreign = "02:00:5e:10:13:01"
    frame_from_guest(kubectl, namespace, guest, ["--ethertype", "88b5", "--src", foreign],
                     ["--dst", peer_mac, "--src", foreign, "--ethertype", "88b5", "--payload", "foreign-src"])
    frame = frame_to_guest(kubectl, namespace, guest, ["--ethertype", "88cc", "--src", peer_mac],
                           ["--dst", LLDP_DST, "--src", peer_mac, "--ethertype", "88cc", "--payload", "lldp-from-pod"])
    assert frame.startswith("{") and "lldp-from-pod" in frame, frame


def frame_from_guest(kubectl, namespace, guest, recv_args, send_args, timeout=20):
    """k8slan-frame recv in the peer pod while the guest sends every half second."""
    proc = exec_background(namespace, "peer", "k8slan-frame", "recv", "--iface", LAN_IF, *recv_args,
                           "--timeout", timeout)
    try:
        time.sleep(1.0)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            guest.check(" ".join(["k8slan-frame", "send", "--iface", GUEST_LAN_IF, *send_args]))
            time.sleep(0.5)
        out, err = proc.communicate(timeout=timeout + 15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, f"peer got nothing the guest sent ({' '.join(send_args)}): {out}{err}"
    return out


def frame_to_guest(kubectl, namespace, guest, recv_args, send_args, timeout=20):
    """k8slan-frame recv in the guest while the peer pod sends every half second."""
    recv = " ".join(["k8slan-frame", "recv", "--iface", GUEST_LAN_IF, *recv_args, "--timeout", str(timeout)])
    proc = guest.start(recv, timeout=timeout + 10)
    time.sleep(2.0)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        kubectl.exec(namespace, "peer", "k8slan-frame", "send", "--iface", LAN_IF, *send_args)
        time.sleep(0.5)
    rc, out = finish(proc, timeout + 30)
    assert rc == 0, f"the guest got nothing the peer sent ({' '.join(send_args)}): {out}"
    return out.strip().splitlines()[-1]


def seq_gap(ping_output, interval):
    """The longest run without replies in busybox ping output, in seconds."""
    seqs = [int(line.split("seq=")[1].split()[0]) for line in ping_output.splitlines() if "seq=" in line]
    assert len(seqs) > 2, ping_output
    return max(b - a for a, b in zip(seqs, seqs[1:])) * interval


def test_a_restarted_vm_comes_back_on_its_spoke(kubevirt, namespace):
    """The VMI deleted under runStrategy Always: the new VMI's launcher asks for the same spoke,
    gets it, and traffic resumes."""
    kubectl = kubevirt
    lan, subnet, _, _ = vm_with_peer(kubectl, namespace)
    old = vmi(kubectl, namespace, "vm")
    interval = 0.2
    pinger = exec_background(namespace, "peer", "ping", "-i", interval, "-c", 3000, subnet.host(1))
    try:
        first_reply(kubectl, namespace, "peer", subnet.host(1), 60)
        kubectl("-n", namespace, "delete", "vmi", "vm", "--wait=false")
        new = wait_vmi_running(kubectl, namespace, "vm", not_uid=old["metadata"]["uid"])
        assert requests_spoke(launcher_pod(kubectl, namespace, new), "mac", lan.spokes["v"])
        back = first_reply(kubectl, namespace, "peer", subnet.host(1), 300)
        time.sleep(2)
    finally:
        pinger.kill()
    out, _ = pinger.communicate(timeout=30)
    print(f"\nFIGURE VM restart: seconds without traffic {seq_gap(out, interval):.1f}s "
          f"(new VMI Running -> first reply {back:.1f}s)")


def assert_launcher_waits(kubectl, namespace, vm, spoke):
    """The VM's launcher pod exists and stays Pending for the spoke's mac resource for 15 s."""
    pods = wait_for(lambda: launcher_pods(kubectl, namespace, vm), 60, what=f"{vm}'s launcher pod")
    assert_stays_pending(kubectl, namespace, pods[0]["metadata"]["name"], resource_name("mac", spoke), seconds=15)


def test_a_deleted_vm_frees_its_spoke_for_a_waiting_vm(kubevirt, namespace):
    kubectl = kubevirt
    lan, subnet = Lan(roles=("v",)), lan_subnet()
    spoke = lan.spokes["v"]
    kubectl.apply(lan.manifest(), namespace)
    kubectl.apply(vm_manifest("first", spoke, address=subnet.cidr(1)), namespace)
    wait_vmi_running(kubectl, namespace, "first")
    kubectl.apply(vm_manifest("second", spoke, address=subnet.cidr(2)), namespace)
    assert_launcher_waits(kubectl, namespace, "second", spoke)
    start = time.monotonic()
    kubectl("-n", namespace, "delete", "vm", "first", "--wait=true")
    wait_vmi_running(kubectl, namespace, "second")
    print(f"\nFIGURE VM handover: first VM deleted -> waiting VM Running {time.monotonic() - start:.1f}s")


def test_a_pod_and_a_vm_on_the_twins_of_one_spoke_never_both_run(kubevirt, namespace):
    kubectl = kubevirt
    lan, subnet = Lan(roles=("t",)), lan_subnet()
    spoke = lan.spokes["t"]
    kubectl.apply(lan.manifest(), namespace)
    kubectl.apply(vm_manifest("vm", spoke, address=subnet.cidr(1)), namespace)
    wait_vmi_running(kubectl, namespace, "vm")
    kubectl.apply(member_pod("twin", None, spoke, subnet.cidr(2)), namespace)
    assert_stays_pending(kubectl, namespace, "twin", resource_name("veth", spoke), seconds=15)
    kubectl("-n", namespace, "delete", "vm", "vm", "--wait=true")
    kubectl.wait_pod_running(namespace, "twin", timeout=120)
    vm = vm_manifest("vm2", spoke, address=subnet.cidr(3))
    kubectl.apply(vm, namespace)
    assert_launcher_waits(kubectl, namespace, "vm2", spoke)
