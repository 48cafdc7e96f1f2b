"""Scenario 1 and RBAC: k8slan installed with Helm (e2e/install-k8slan.sh) is up on every node,
and its service accounts can do exactly what charts/k8slan/README.md says."""
import json
import re

from helpers import (AGENT_DAEMONSET, E2E_DIR, HELM, K8SLAN_NAMESPACE, K8SLAN_RELEASE, NODES, node_has,
                     pod_ready, run)

CHART_README = E2E_DIR.parent / "charts" / "k8slan" / "README.md"


def test_helm_release_controller_and_agents_ready_on_every_node(k8slan):
    kubectl = k8slan
    release = json.loads(run([HELM, "status", K8SLAN_RELEASE, "-n", K8SLAN_NAMESPACE, "-o", "json"]))
    assert release["info"]["status"] == "deployed"
    listed = json.loads(run([HELM, "list", "-n", K8SLAN_NAMESPACE, "-o", "json"]))
    assert [r["chart"].rsplit("-", 1)[0] for r in listed if r["name"] == K8SLAN_RELEASE] == ["k8slan"]

    deploy = kubectl.json("-n", K8SLAN_NAMESPACE, "get", "deployment", "k8slan-controller-manager")
    assert deploy["status"].get("readyReplicas") == deploy["spec"]["replicas"] == 1
    ds = kubectl.json("-n", K8SLAN_NAMESPACE, "get", "daemonset", AGENT_DAEMONSET)
    assert ds["status"]["desiredNumberScheduled"] == len(NODES)
    assert ds["status"]["numberReady"] == len(NODES)

    pods = kubectl.json("-n", K8SLAN_NAMESPACE, "get", "pods")["items"]
    controllers = [p for p in pods if p["metadata"]["name"].startswith("k8slan-controller-manager-")]
    assert len(controllers) == 1 and pod_ready(controllers[0]), [p["metadata"]["name"] for p in controllers]
    agents = {}
    for p in pods:
        if p["metadata"].get("ownerReferences", [{}])[0].get("name") == AGENT_DAEMONSET:
            agents.setdefault(p["spec"]["nodeName"], []).append(p)
    assert sorted(agents) == sorted(NODES), f"agent pods per node: {agents.keys()}"
    for node, on_node in agents.items():
        assert len(on_node) == 1, f"{node} runs {len(on_node)} agents"
        assert pod_ready(on_node[0]), f"agent on {node} not Ready: {on_node[0]['status']}"
        init = on_node[0]["status"]["initContainerStatuses"][0]
        assert init["name"] == "install-cni" and init["state"]["terminated"]["exitCode"] == 0
        # The init container installed the CNI plugins into the node's CNI directory.
        for plugin in ("k8slanveth", "k8slanmacvtap"):
            assert node_has(node, f"/opt/cni/bin/{plugin}"), f"/opt/cni/bin/{plugin} missing on {node}"


def can_i_rows():
    """(command, expected answer) from the README's `kubectl auth can-i` table."""
    rows = []
    for line in CHART_README.read_text().splitlines():
        m = re.match(r"^\| `(kubectl auth can-i [^`]+)`(.*?)\| (yes|no) \|$", line)
        if m:
            rows.append((m.group(1), "--subresource=status" in m.group(2), m.group(3)))
    return rows


def test_service_accounts_can_exactly_what_the_chart_readme_says(k8slan):
    rows = can_i_rows()
    assert len(rows) >= 20, "the README's can-i table was not found"
    subjects = {"$C": f"system:serviceaccount:{K8SLAN_NAMESPACE}:k8slan-controller",
                "$A": f"system:serviceaccount:{K8SLAN_NAMESPACE}:k8slan-agent",
                "$NS": K8SLAN_NAMESPACE}
    wrong = []
    for command, status_subresource, expected in rows:
        args = command.split()[1:]   # drop "kubectl"
        args = [subjects.get(a, a) for a in args]
        if status_subresource:
            # `lans.lan.k8slan.io/status` in the table means the status subresource.
            args = [a.removesuffix("/status") for a in args] + ["--subresource=status"]
        answer = k8slan(*args, check=False).strip()
        if answer != expected:
            wrong.append(f"{command}{' --subresource=status' if status_subresource else ''}: "
                         f"expected {expected}, got {answer!r}")
    assert not wrong, "\n".join(wrong)
