"""Faults the cluster around k8slan suffers (issue: faults survived, measured): the API server and
etcd down for a minute, containerd restarted on a worker, and every controller replica gone. In
each the members keep talking; the figures go to e2e/README.md.

During the API outage the ping cannot go through `kubectl exec`: it runs in the member pod's
network namespace from its node (`Pinger.from_node`). K8SLAN_E2E_OUTAGE_SECONDS lengthens the outage
(default 60)."""
import os
import time

from helpers import (CONTROL_PLANE, E2E_DIR, K8SLAN_NAMESPACE, WORKERS, Lan, Pinger, apply_fails, lan_subnet,
                     member_pod, node_has, ping, plugin_socket, run, two_members, wait_for)

W1, W2 = WORKERS
DAEMON = E2E_DIR / "daemon"
OUTAGE = int(os.environ.get("K8SLAN_E2E_OUTAGE_SECONDS", "60"))


def daemon(action, node, name):
    run([DAEMON, action, node, name], timeout=180)


def k8slan_restarts(kubectl):
    """Container restarts of every k8slan pod (agents, controller), by pod name."""
    pods = kubectl.json("-n", K8SLAN_NAMESPACE, "get", "pods")["items"]
    return {p["metadata"]["name"]: sum(c.get("restartCount", 0) for c in p["status"].get("containerStatuses", []))
            for p in pods}


def api_up(kubectl):
    return kubectl("get", "--raw", "/readyz", check=False, timeout=10).strip() == "ok"


def test_apiserver_and_etcd_down_for_a_minute(k8slan, namespace):
    """etcd and the API server stop for OUTAGE seconds while two members on the two workers ping
    at 100/s: not one packet is lost, no k8slan container restarts, and a spoke added right
    after the API returns reaches both workers (the agents' watches reconnect by themselves)."""
    kubectl = k8slan
    lan, subnet = Lan(roles=("a", "b", "c")), lan_subnet()
    two_members(kubectl, namespace, lan, subnet, reachable=True)
    # The LAN starts without spoke c; it is added after the outage.
    kubectl.apply(lan.manifest(spokes=[lan.spokes["a"], lan.spokes["b"]]), namespace)
    new_sockets = [plugin_socket("veth", lan.spokes["c"])]
    wait_for(lambda: not any(node_has(w, s) for w in WORKERS for s in new_sockets), 30,
             what="spoke c gone from the workers")
    restarts = k8slan_restarts(kubectl)
    # Long enough for the kills and starts around the outage (~6 s here) and the spoke check.
    count = (OUTAGE + 30) * 100
    with Pinger.from_node(kubectl, namespace, "m1", subnet.host(2), count, interval=0.01) as pinger:
        time.sleep(2)
        t0 = time.monotonic()
        # Killed, as a crash or power cut would: a graceful stop would also take the API
        # server's address out of the `kubernetes` Service, and every node's kube-proxy (its own
        # watch backing off up to 30 s) would refuse connections to it for a while after the
        # return, for any client that reaches the API through the Service (docs/controller.md, "Faults").
        daemon("kill", CONTROL_PLANE, "kube-apiserver")
        daemon("kill", CONTROL_PLANE, "etcd")
        stopped = time.monotonic()
        time.sleep(OUTAGE)
        daemon("start", CONTROL_PLANE, "etcd")
        daemon("start", CONTROL_PLANE, "kube-apiserver")
        wait_for(lambda: api_up(kubectl), 60, interval=0.2, what="the API server ready again")
        print(f"\nstopping took {stopped - t0:.1f}s, starting {time.monotonic() - stopped - OUTAGE:.1f}s")
        start = time.monotonic()
        kubectl.apply(lan.manifest(), namespace)
        accepted = time.monotonic() - start
        wait_for(lambda: all(node_has(w, s) for w in WORKERS for s in new_sockets), 120, interval=0.1,
                 what="spoke c served on both workers after the outage")
        reached = time.monotonic() - start
        assert pinger.running(), "the ping ended before the API came back: make it longer"
        stats = pinger.finish(timeout=OUTAGE + 60)
    after = k8slan_restarts(kubectl)
    restarted = {p: after[p] - n for p, n in restarts.items() if after.get(p, n) != n}
    print(f"\nFIGURE apiserver outage: {OUTAGE}s down, {stats.sent} sent, {stats.received} received, "
          f"{sum(restarted.values())} restarts; a spoke added once the API answers: applied in "
          f"{accepted:.2f}s (admission included), served on both workers {reached - accepted:.2f}s later")
    assert stats.sent == count and stats.received == stats.sent, stats.output.splitlines()[-3:]
    assert not restarted, f"k8slan containers restarted during the outage: {restarted}"
    assert set(after) == set(restarts), f"k8slan pods changed: {sorted(restarts)} → {sorted(after)}"
    ping(kubectl, namespace, "m1", subnet.host(2), count=2, check=True)


def test_containerd_restart_keeps_members_talking(k8slan, namespace):
    """worker2's containerd is stopped and started while the members ping at 100/s: the pods
    (their shims) keep running, not one packet is lost, and the node still starts a new member."""
    kubectl = k8slan
    lan, subnet = Lan(roles=("a", "b", "c")), lan_subnet()
    two_members(kubectl, namespace, lan, subnet, reachable=True)
    count = 1500
    with Pinger.from_node(kubectl, namespace, "m1", subnet.host(2), count, interval=0.01) as pinger:
        time.sleep(2)
        daemon("stop", W2, "containerd")
        time.sleep(3)
        daemon("start", W2, "containerd")
        stats = pinger.finish(timeout=60)
    print(f"\nFIGURE containerd restart: {stats.sent} sent, {stats.received} received")
    assert stats.sent == count and stats.received == stats.sent, stats.output.splitlines()[-3:]
    kubectl.apply(member_pod("m3", W2, lan.spokes["c"], subnet.cidr(3)), namespace)
    kubectl.wait_pod_running(namespace, "m3", timeout=120)
    ping(kubectl, namespace, "m3", subnet.host(1), count=2, check=True)


def controller_deployment(kubectl):
    deps = kubectl.json("-n", K8SLAN_NAMESPACE, "get", "deployments", "-l",
                        "app.kubernetes.io/component=controller")["items"]
    assert len(deps) == 1, [d["metadata"]["name"] for d in deps]
    return deps[0]


def test_without_a_controller_lan_writes_fail_naming_the_webhook(k8slan, namespace):
    """With every controller replica gone, applying a LAN fails with an error that names the
    webhook and its service; running members are untouched and keep talking."""
    kubectl = k8slan
    lan, subnet = Lan(), lan_subnet()
    two_members(kubectl, namespace, lan, subnet, reachable=True)
    dep = controller_deployment(kubectl)
    name, replicas = dep["metadata"]["name"], dep["spec"]["replicas"]
    kubectl("-n", K8SLAN_NAMESPACE, "scale", "deployment", name, "--replicas=0")
    try:
        wait_for(lambda: not kubectl.json("-n", K8SLAN_NAMESPACE, "get", "pods", "-l",
                                          "app.kubernetes.io/component=controller")["items"],
                 90, what="no controller pod left")
        other = Lan()
        message = apply_fails(kubectl, namespace, other.manifest())
        print(f"\nwith no controller, kubectl apply of a LAN says: {message.strip()}")
        for part in ("lans.lan.k8slan.io", "k8slan-webhook"):
            assert part in message, f"{part!r} missing from: {message}"
        assert not kubectl("-n", namespace, "get", "lan", other.name, "--ignore-not-found", "-o", "name").strip()
        stats = ping(kubectl, namespace, "m1", subnet.host(2), count=20, interval=0.1)
        assert stats.received == stats.sent == 20, stats.output
        members = kubectl.json("-n", namespace, "get", "pods")["items"]
        assert all(c["restartCount"] == 0 for m in members for c in m["status"]["containerStatuses"]), \
            "a member restarted without the controller"
    finally:
        kubectl("-n", K8SLAN_NAMESPACE, "scale", "deployment", name, f"--replicas={replicas}")
        kubectl("-n", K8SLAN_NAMESPACE, "rollout", "status", "deployment", name, "--timeout=120s", timeout=150)
    # With the controller back, the same LAN is accepted.
    kubectl.apply(other.manifest(), namespace)
