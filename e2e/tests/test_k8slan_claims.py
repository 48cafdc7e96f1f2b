"""Spoke claims (issue 11 items 6 and 7):

- only a node may change its own claims and report: the agents share one ServiceAccount, but the
  ValidatingAdmissionPolicy k8slan-agent-leases compares the node bound in the request
  (userInfo.extra authentication.kubernetes.io/node-name, which the API server takes from the
  agent pod's token) with the Lease's holder. Proven by impersonating worker2's agent against
  worker1's claim and report (denied) and worker1's agent against its own (allowed);
- a dead node does not hold spokes forever: worker1's kubelet and agent stopped and its Node
  deleted, the controller releases worker1's claim and the pod waiting for the same spoke on
  worker2 runs. The node is restored afterwards (kubelet started again, Node re-registered, its
  agent Ready), so later tests find the cluster as before.
"""
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from helpers import (E2E_DIR, E2E_STATE, K8SLAN_NAMESPACE, KUBECTL, WORKERS, Lan, assert_stays_pending,
                     containerd_sock, member_pod, resource_name, run, wait_for, wait_pods_running)

W1, W2 = WORKERS
AGENT = f"system:serviceaccount:{K8SLAN_NAMESPACE}:k8slan-agent"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
POLICY = "ValidatingAdmissionPolicy 'k8slan-agent-leases'"


def impersonating(node):
    """A kubeconfig acting as the agent of `node` (kubectl has no flag for impersonated extras;
    kubeconfig's as-user-extra does the same as --as-extra would)."""
    admin = json.loads(run([KUBECTL, "config", "view", "--raw", "--flatten", "-o", "json"]))
    user = admin["users"][0]["user"]
    user["as"] = AGENT
    if node:
        user["as-user-extra"] = {NODE_NAME_EXTRA: [node]}
    f = tempfile.NamedTemporaryFile("w", suffix=".kubeconfig", delete=False)
    json.dump(admin, f)
    f.close()
    return f.name


def as_agent(kubeconfig, *args):
    proc = subprocess.run([str(KUBECTL), "--kubeconfig", kubeconfig, "-n", K8SLAN_NAMESPACE, *args],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode == 0, proc.stdout + proc.stderr


def test_agent_tokens_carry_their_node(k8slan):
    """The fact the policy relies on, checked on this 1.34 cluster: a token bound to an agent pod
    carries the pod's node in userInfo.extra."""
    kubectl = k8slan
    pods = kubectl.json("-n", K8SLAN_NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/component=agent")["items"]
    pod = next(p for p in pods if p["spec"].get("nodeName") == W1)
    token = kubectl("-n", K8SLAN_NAMESPACE, "create", "token", "k8slan-agent", "--bound-object-kind=Pod",
                    f"--bound-object-name={pod['metadata']['name']}",
                    f"--bound-object-uid={pod['metadata']['uid']}").strip()
    cfg = json.loads(run([KUBECTL, "config", "view", "--raw", "--flatten", "-o", "json"]))
    cfg["users"][0]["user"] = {"token": token}
    with tempfile.NamedTemporaryFile("w", suffix=".kubeconfig") as f:
        json.dump(cfg, f)
        f.flush()
        who = json.loads(run([KUBECTL, "--kubeconfig", f.name, "auth", "whoami", "-o", "json"]))
    info = who["status"]["userInfo"]
    assert info["username"] == AGENT, info
    assert info.get("extra", {}).get(NODE_NAME_EXTRA) == [W1], info
    policy = kubectl.json("get", "validatingadmissionpolicy", "k8slan-agent-leases")
    assert policy["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert not policy.get("status", {}).get("typeChecking", {}).get("expressionWarnings"), policy["status"]


def test_only_a_node_may_change_its_own_claims_and_report(k8slan, namespace):
    kubectl = k8slan
    lan = Lan(roles=("a",))
    kubectl.apply(lan.manifest(), namespace)
    kubectl.apply(member_pod("m1", W1, lan.spokes["a"]), namespace)
    wait_pods_running(kubectl, namespace, "m1")
    claim = f"spoke-{lan.spokes['a']}"
    wait_for(lambda: kubectl.json("-n", K8SLAN_NAMESPACE, "get", "lease", claim)["spec"]["holderIdentity"] == W1,
             30, what=f"claim {claim} held by {W1}")
    report = f"node-{W1}"
    wait_for(lambda: kubectl("-n", K8SLAN_NAMESPACE, "get", "lease", report, check=False), 30,
             what=f"report {report}")
    w1, w2, nobody = impersonating(W1), impersonating(W2), impersonating(None)
    dry = "--dry-run=server"
    try:
        denied = [
            ("w2 annotates w1's claim", w2, ["annotate", "lease", claim, "x=1", dry]),
            ("w2 takes w1's claim", w2, ["patch", "lease", claim, "--type=merge", dry,
                                         "-p", json.dumps({"spec": {"holderIdentity": W2}})]),
            ("w2 deletes w1's claim", w2, ["delete", "lease", claim, dry]),
            ("w2 rewrites w1's report", w2, ["annotate", "lease", report, "k8slan.io/report={}", "--overwrite", dry]),
            ("w1 hands its claim to w2", w1, ["patch", "lease", claim, "--type=merge", dry,
                                             "-p", json.dumps({"spec": {"holderIdentity": W2}})]),
            ("a token bound to no node", nobody, ["annotate", "lease", claim, "x=1", dry]),
        ]
        for what, cfg, args in denied:
            ok, msg = as_agent(cfg, *args)
            assert not ok and POLICY in msg, f"{what}: {msg}"
        # A report of another node's name, held by the writer: denied too.
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": f"node-{W1}-x", "labels": {"k8slan.io/role": "node-report"}},
                 "spec": {"holderIdentity": W2}}
        proc = subprocess.run([str(KUBECTL), "--kubeconfig", w2, "-n", K8SLAN_NAMESPACE, "create", dry, "-f", "-"],
                              input=json.dumps(lease), capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and POLICY in proc.stderr, proc.stderr
        allowed = [
            ("w1 annotates its claim", w1, ["annotate", "lease", claim, "x=1", dry]),
            ("w1 deletes its claim", w1, ["delete", "lease", claim, dry]),
            ("w1 rewrites its report", w1, ["annotate", "lease", report, "x=1", dry]),
        ]
        for what, cfg, args in allowed:
            ok, msg = as_agent(cfg, *args)
            assert ok, f"{what}: {msg}"
    finally:
        for f in (w1, w2, nobody):
            os.unlink(f)


# --- node loss --------------------------------------------------------------------------------

def stop_kubelet(node):
    pidfile = E2E_STATE / "run" / f"{node}.kubelet.pid"
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 20, interval=0.2, what=f"kubelet of {node} to exit")
    pidfile.unlink()


def kill_agent(node):
    """SIGKILL the agent container on `node` (its kubelet is stopped, so nothing restarts it)."""
    sock = str(containerd_sock(node))
    # One filter, comma-separated: containerd ORs separate filters.
    ids = run(["ctr", "-a", sock, "-n", "k8s.io", "containers", "ls", "-q",
               'labels."io.kubernetes.container.name"==agent,'
               f'labels."io.kubernetes.pod.namespace"=={K8SLAN_NAMESPACE}']).split()
    tasks = run(["ctr", "-a", sock, "-n", "k8s.io", "tasks", "ls"]).splitlines()[1:]
    # containerd reports pids of the node's PID namespace: let it send the signal.
    running = [t.split()[0] for t in tasks if t.split()[0] in ids and t.split()[2] == "RUNNING"]
    assert running, f"no running agent container on {node}: {ids} {tasks}"
    for task in running:
        run(["ctr", "-a", sock, "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", task])


def start_kubelet(node):
    script = (f'source "{E2E_DIR}/lib/common.sh"; source "{E2E_DIR}/lib/components.sh"; '
              f'start_node_agents {node}')
    run(["bash", "-c", script], timeout=60)


def restore(kubectl, node):
    """Kubelet running, Node registered and Ready with its role label, agent Ready."""
    if not (E2E_STATE / "run" / f"{node}.kubelet.pid").exists():
        start_kubelet(node)
    wait_for(lambda: kubectl("get", "node", node, check=False), 120, what=f"node {node} registered again")
    kubectl("label", "node", node, "node-role.kubernetes.io/worker=", "--overwrite")
    kubectl("wait", "--for=condition=Ready", f"node/{node}", "--timeout=120s", timeout=150)

    def one_agent_ready():
        pods = [p for p in kubectl.json("-n", K8SLAN_NAMESPACE, "get", "pods", "-l",
                                        "app.kubernetes.io/component=agent")["items"]
                if p["spec"].get("nodeName") == node]
        return len(pods) == 1 and pods[0]["metadata"].get("deletionTimestamp") is None and any(
            c["type"] == "Ready" and c["status"] == "True" for c in pods[0]["status"].get("conditions", []))
    wait_for(one_agent_ready, 180, interval=2, what=f"exactly one agent on {node}, Ready")


def test_a_deleted_node_releases_its_claims(k8slan, namespace):
    kubectl = k8slan
    lan = Lan(roles=("a",))
    spoke = lan.spokes["a"]
    kubectl.apply(lan.manifest(), namespace)
    kubectl.apply(member_pod("m1", W1, spoke), namespace)
    wait_pods_running(kubectl, namespace, "m1")
    kubectl.apply(member_pod("m2", W2, spoke), namespace)
    assert_stays_pending(kubectl, namespace, "m2", resource_name("veth", spoke), seconds=5)
    try:
        stop_kubelet(W1)
        kill_agent(W1)
        # A partitioned node whose pod still exists keeps its claim: nothing moves for a full
        # sweep period (controller.claimCheckSeconds, 30 s by default).
        time.sleep(32)
        lease = kubectl.json("-n", K8SLAN_NAMESPACE, "get", "lease", f"spoke-{spoke}")
        assert lease["spec"]["holderIdentity"] == W1
        start = time.monotonic()
        kubectl("delete", "node", W1, "--wait=true", timeout=60)
        kubectl.wait_pod_running(namespace, "m2", timeout=120)
        took = time.monotonic() - start
        print(f"\nFIGURE node loss: node deleted -> waiting pod Running after {took:.1f} s")
        events = kubectl("-n", namespace, "get", "events", "--field-selector", "reason=ClaimReleased")
        assert f"released spoke {spoke}" in events and "its node was deleted" in events, events
    finally:
        # m1 lived on the deleted node: let it go before the node comes back.
        kubectl("-n", namespace, "delete", "pod", "m1", "--force", "--grace-period=0", check=False)
        restore(kubectl, W1)
