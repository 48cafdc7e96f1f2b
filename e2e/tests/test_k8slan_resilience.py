"""Scenario 9: the datapath outlives the agent, and a kubelet restart brings the spokes back."""
import time

from helpers import (E2E_DIR, K8SLAN_NAMESPACE, WORKERS, Lan, Pinger, agent_pod, kubelet_log_time,
                     kubelet_registration_time, lan_subnet, member_pod, node_has, ping, plugin_socket,
                     pod_ready, resource_name, run, two_members, wait_for)

W1, W2 = WORKERS


def agent_ready(kubectl, node, not_name):
    """The node's agent once it is Ready and is not the pod `not_name`, else None."""
    p = agent_pod(kubectl, node)
    if not p or p["metadata"]["name"] == not_name:
        return None
    return p if pod_ready(p) else None


def test_agent_restart_loses_no_packet(k8slan, namespace):
    """Agents on both workers are deleted (the DaemonSet recreates them) during a 100 packets/s
    ping between members on the two workers: not one packet is lost."""
    kubectl = k8slan
    lan, subnet = Lan(), lan_subnet()
    two_members(kubectl, namespace, lan, subnet, reachable=True)
    count = 2500
    with Pinger(namespace, "m1", subnet.host(2), count, interval=0.01, wait=5) as pinger:
        time.sleep(2)
        for node in WORKERS:
            old = agent_pod(kubectl, node)["metadata"]["name"]
            start = time.monotonic()
            kubectl("-n", K8SLAN_NAMESPACE, "delete", "pod", old, "--wait=false")
            wait_for(lambda: agent_ready(kubectl, node, old), 90, interval=0.5, what=f"a new Ready agent on {node}")
            print(f"\nFIGURE agent restart on {node}: new agent Ready after {time.monotonic() - start:.1f}s")
        assert pinger.running(), "the ping ended before both agents were back: make it longer"
        stats = pinger.finish(timeout=120)
    sent, got = stats.sent, stats.received
    print(f"FIGURE ping at 100/s across two agent restarts: {sent} sent, {got} received, {sent - got} lost")
    assert sent == count and got == sent, stats.output.splitlines()[-3:]


def test_kubelet_restart_brings_capacity_back(k8slan, namespace):
    """worker2's kubelet restarts while members ping: the agent re-registers every spoke (the
    kubelet deleted the plugin sockets), the node shows them again, a new member can take a free
    spoke there, and the old members never stop talking."""
    kubectl = k8slan
    lan, subnet = Lan(roles=("a", "b", "c")), lan_subnet()
    two_members(kubectl, namespace, lan, subnet, reachable=True)
    free = resource_name("veth", lan.spokes["c"])
    held = resource_name("veth", lan.spokes["b"])
    sockets = [plugin_socket(kind, s) for s in lan.spokes.values() for kind in ("veth", "mac")]
    assert all(node_has(W2, s) for s in sockets), "plugin sockets missing before the restart"

    with Pinger(namespace, "m1", subnet.host(2), 300, interval=0.05, wait=5) as pinger:
        time.sleep(1)
        before = time.time()
        run([E2E_DIR / "restart-kubelet", W2], timeout=60)
        kubelet_start = wait_for(lambda: kubelet_log_time(W2, '"Kubelet version"', before), 30,
                                 what="the restarted kubelet's first log lines")
        kubelet_start_stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(kubelet_start)))
        resources = [resource_name(kind, s) for s in lan.spokes.values() for kind in ("veth", "mac")]

        def capacity_back():
            node = kubectl.json("get", "node", W2)
            ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"][0]
            cap, alloc = node["status"]["capacity"], node["status"]["allocatable"]
            return (ready["status"] == "True" and ready["lastHeartbeatTime"] >= kubelet_start_stamp
                    and cap.get(free) == "1" and alloc.get(free) == "1" and cap.get(held) == "1")
        wait_for(capacity_back, 60, interval=0.2, what="worker2's node status with the spokes after the restart")
        status_back = time.time() - kubelet_start
        registered = [kubelet_registration_time(W2, r, kubelet_start) for r in resources]
        assert all(registered), f"the kubelet logged no new registration for {resources}: {registered}"
        registered_after = max(registered) - kubelet_start
        assert all(node_has(W2, s) for s in sockets), "plugin sockets missing after the restart"
        print(f"\nFIGURE kubelet restart: all {len(resources)} spokes registered with the new kubelet "
              f"{registered_after:.2f}s after it started; node status Ready with them allocatable after "
              f"{status_back:.2f}s")

        kubectl.apply(member_pod("m3", W2, lan.spokes["c"], subnet.cidr(3)), namespace)
        kubectl.wait_pod_running(namespace, "m3", timeout=90)
        stats = ping(kubectl, namespace, "m3", subnet.host(1), count=3)
        assert stats.received == stats.sent, stats.output
        stats = pinger.finish(timeout=60)
    print(f"FIGURE ping at 20/s across the kubelet restart: {stats.sent} sent, {stats.received} received")
    assert stats.received == stats.sent, stats.output.splitlines()[-3:]
    assert registered_after <= 5, f"spokes re-registered {registered_after:.2f}s after the kubelet started (goal 5 s)"
