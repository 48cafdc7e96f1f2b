"""Scenario 9: the datapath outlives the agent, and a kubelet restart brings the spokes back."""
import subprocess
import time

from helpers import (E2E_DIR, K8SLAN_NAMESPACE, KUBECTL, WORKERS, Lan, kubelet_log_time,
                     kubelet_registration_time, member_pod, node_has,
                     ping_stats, resource_name, run, wait_for, wait_pods_running)

W1, W2 = WORKERS


def agent_pod(kubectl, node):
    pods = kubectl.json("-n", K8SLAN_NAMESPACE, "get", "pods", "--field-selector", f"spec.nodeName={node}")["items"]
    agents = [p for p in pods if p["metadata"].get("ownerReferences", [{}])[0].get("name") == "k8slan-ds"
              and not p["metadata"].get("deletionTimestamp")]
    return agents[0] if len(agents) == 1 else None


def agent_ready(kubectl, node, not_name):
    p = agent_pod(kubectl, node)
    if not p or p["metadata"]["name"] == not_name:
        return None
    return p if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", [])) else None


def start_ping(namespace, pod, address, count, interval):
    return subprocess.Popen([str(KUBECTL), "-n", namespace, "exec", pod, "--", "ping", "-c", str(count),
                             "-i", str(interval), "-W", "5", address],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish_ping(proc, timeout):
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return ping_stats(out), out


def members(kubectl, namespace, lan, subnet, extra_spokes=()):
    kubectl.apply(lan.manifest(), namespace)
    kubectl.apply([member_pod("m1", W1, lan.spokes["a"], f"{subnet}.1/24"),
                   member_pod("m2", W2, lan.spokes["b"], f"{subnet}.2/24")], namespace)
    wait_pods_running(kubectl, namespace, "m1", "m2")
    kubectl.exec(namespace, "m1", "ping", "-c", "2", "-W", "3", f"{subnet}.2")


def test_agent_restart_loses_no_packet(k8slan, namespace):
    """Agents on both workers are deleted (the DaemonSet recreates them) during a 100 packets/s
    ping between members on the two workers: not one packet is lost."""
    kubectl = k8slan
    lan = Lan()
    members(kubectl, namespace, lan, "198.18.206")
    count = 2500
    pinger = start_ping(namespace, "m1", "198.18.206.2", count, 0.01)
    time.sleep(2)
    for node in WORKERS:
        old = agent_pod(kubectl, node)["metadata"]["name"]
        start = time.monotonic()
        kubectl("-n", K8SLAN_NAMESPACE, "delete", "pod", old, "--wait=false")
        wait_for(lambda: agent_ready(kubectl, node, old), 90, interval=0.5, what=f"a new Ready agent on {node}")
        print(f"\nFIGURE agent restart on {node}: new agent Ready after {time.monotonic() - start:.1f}s")
    assert pinger.poll() is None, "the ping ended before both agents were back: make it longer"
    (sent, got), out = finish_ping(pinger, 120)
    print(f"FIGURE ping at 100/s across two agent restarts: {sent} sent, {got} received, {sent - got} lost")
    assert sent == count and got == sent, out.splitlines()[-3:]


def test_kubelet_restart_brings_capacity_back(k8slan, namespace):
    """worker2's kubelet restarts while members ping: the agent re-registers every spoke (the
    kubelet deleted the plugin sockets), the node shows them again, a new member can take a free
    spoke there, and the old members never stop talking."""
    kubectl = k8slan
    lan = Lan(roles=("a", "b", "c"))
    members(kubectl, namespace, lan, "198.18.207")
    free = resource_name("veth", lan.spokes["c"])
    held = resource_name("veth", lan.spokes["b"])
    sockets = [f"/var/lib/kubelet/device-plugins/k8slan-{kind}-{s}.sock"
               for s in lan.spokes.values() for kind in ("veth", "mac")]
    assert all(node_has(W2, s) for s in sockets), "plugin sockets missing before the restart"

    pinger = start_ping(namespace, "m1", "198.18.207.2", 300, 0.05)
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

    kubectl.apply(member_pod("m3", W2, lan.spokes["c"], "198.18.207.3/24"), namespace)
    kubectl.wait_pod_running(namespace, "m3", timeout=90)
    out = kubectl.exec(namespace, "m3", "ping", "-c", "3", "-W", "3", "198.18.207.1", check=False)
    sent, got = ping_stats(out)
    assert got == sent, out
    (sent, got), out = finish_ping(pinger, 60)
    print(f"FIGURE ping at 20/s across the kubelet restart: {sent} sent, {got} received")
    assert got == sent, out.splitlines()[-3:]
    assert registered_after <= 5, f"spokes re-registered {registered_after:.2f}s after the kubelet started (goal 5 s)"
