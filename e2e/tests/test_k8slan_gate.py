"""One pod per spoke at scheduling time (issue 11 item 9): two pods for one spoke created at the
same moment for two nodes. Without k8slan's scheduling gate both were bound, and the kubelet of
the losing node failed its pod for good (UnexpectedAdmissionError). Now the mutating pod webhook
gates every pod that requests a spoke (k8slan.io/spoke) and the controller lifts one gate per
spoke at a time: the other pod stays Pending (SchedulingGated, with a WaitingForSpoke event) and
runs once the first is gone. The controller's `patch pods` is narrowed by the
ValidatingAdmissionPolicy k8slan-controller-pods to removing that gate."""
import json
import subprocess
import time

from helpers import (K8SLAN_NAMESPACE, KUBECTL, SPOKE_GATE, WORKERS, Lan, assert_stays_pending,
                     lan_subnet, member_pod, ping, resource_name, waiting_event, wait_for)

W1, W2 = WORKERS
CONTROLLER = f"system:serviceaccount:{K8SLAN_NAMESPACE}:k8slan-controller"
POLICY = "ValidatingAdmissionPolicy 'k8slan-controller-pods'"


def phase(kubectl, namespace, pod):
    return kubectl.json("-n", namespace, "get", "pod", pod)["status"].get("phase")


def gates(kubectl, namespace, pod):
    spec = kubectl.json("-n", namespace, "get", "pod", pod)["spec"]
    return [g["name"] for g in spec.get("schedulingGates", [])]


def test_two_pods_racing_for_one_spoke_the_loser_stays_pending(k8slan, namespace):
    kubectl = k8slan
    lan, subnet = Lan(roles=("a", "b")), lan_subnet()
    a = lan.spokes["a"]
    kubectl.apply(lan.manifest(), namespace)
    kubectl.apply(member_pod("peer", W2, lan.spokes["b"], subnet.cidr(9)), namespace)
    kubectl.wait_pod_running(namespace, "peer")
    # Both in one request: created within milliseconds of each other, one per worker.
    kubectl.apply([member_pod("first", W1, a, subnet.cidr(1)),
                   member_pod("second", W2, a, subnet.cidr(2))], namespace)
    start = time.monotonic()
    winner = wait_for(lambda: next((p for p in ("first", "second")
                                    if phase(kubectl, namespace, p) == "Running"), None),
                      90, interval=0.2, what="one of the two pods Running")
    print(f"\nFIGURE spoke gate: pod applied -> Running through the gate in {time.monotonic() - start:.2f}s")
    loser = "second" if winner == "first" else "first"
    assert_stays_pending(kubectl, namespace, loser, resource_name("veth", a), seconds=15)
    assert gates(kubectl, namespace, loser) == [SPOKE_GATE]
    note = waiting_event(kubectl, namespace, loser)
    assert f"spoke {a} is held by pod {winner}" in note, note
    assert phase(kubectl, namespace, winner) == "Running"

    start = time.monotonic()
    kubectl("-n", namespace, "delete", "pod", winner, "--wait=true")
    kubectl.wait_pod_running(namespace, loser, timeout=90)
    print(f"FIGURE spoke gate handover: winner deleted -> the waiting pod Running after "
          f"{time.monotonic() - start:.2f}s")
    n = 1 if loser == "first" else 2
    stats = ping(kubectl, namespace, loser, subnet.host(9))
    assert stats.received == stats.sent, f"pod {loser} (.{n}) cannot reach the peer: {stats.output}"


def test_the_controller_may_only_lift_its_own_gate(k8slan, namespace):
    kubectl = k8slan
    lan = Lan(roles=("a",))
    kubectl.apply(lan.manifest(), namespace)
    pod = member_pod("held", W1, lan.spokes["a"])
    pod["spec"]["schedulingGates"] = [{"name": "example.com/hold"}]
    kubectl.apply(pod, namespace)
    got = kubectl.json("-n", namespace, "get", "pod", "held")
    assert got["metadata"]["labels"].get("k8slan.io/member") == "true", got["metadata"]
    assert gates(kubectl, namespace, "held") == ["example.com/hold", SPOKE_GATE]
    # Another gate is first: ours stays, the pod is not scheduled.
    time.sleep(3)
    assert gates(kubectl, namespace, "held") == ["example.com/hold", SPOKE_GATE]

    refused = [
        ("a label", ["label", "pod", "held", "stolen=yes"]),
        ("another gate", ["patch", "pod", "held", "--type=json", "-p", json.dumps(
            [{"op": "remove", "path": "/spec/schedulingGates/0"}])]),
        ("an image", ["patch", "pod", "held", "--type=json", "-p", json.dumps(
            [{"op": "replace", "path": "/spec/containers/0/image", "value": "evil.example/x:1"}])]),
        ("a toleration", ["patch", "pod", "held", "--type=json", "-p", json.dumps(
            [{"op": "add", "path": "/spec/tolerations/-", "value": {"operator": "Exists"}}])]),
    ]
    for what, cmd in refused:
        proc = subprocess.run([str(KUBECTL), "--as", CONTROLLER, "-n", namespace, *cmd],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0, f"the controller changed {what}: {proc.stdout}"
        assert POLICY in proc.stderr, f"{what}: {proc.stderr}"
    assert gates(kubectl, namespace, "held") == ["example.com/hold", SPOKE_GATE]

    # The other gate's owner lifts it: now the controller lifts ours and the pod runs.
    kubectl("-n", namespace, "patch", "pod", "held", "--type=json", "-p",
            json.dumps([{"op": "remove", "path": "/spec/schedulingGates/0"}]))
    kubectl.wait_pod_running(namespace, "held", timeout=90)
    assert gates(kubectl, namespace, "held") == []
