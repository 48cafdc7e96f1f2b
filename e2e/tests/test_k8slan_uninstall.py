"""Scenario 10: after the user deletes their LANs, `helm uninstall` leaves no k8slan state on any node.

"State" here means what k8slan makes on a node or in the cluster and would otherwise leak:
- LAN network namespaces (mounts under /run/k8slan/netns) and every link whose alias starts with
  `k8slan:` (host-side veth ends, macvtaps);
- tap device nodes under /run/k8slan/dev;
- device-plugin sockets `k8slan-*.sock` in the kubelet's device-plugins directory;
- the release's objects: pods, the webhook configuration, Leases (claims, node reports).
Kept on purpose: the LAN CRD (Helm never deletes CRDs from crds/, so users' LAN objects survive a
reinstall) and the CNI plugin binaries the init container copied into /opt/cni/bin (Multus may
still call them for a pod being torn down; they are inert without the agent).

This runs last among the k8slan tests (files sort alphabetically): k8slan is not reinstalled
afterwards (e2e/install-k8slan.sh does that).
"""
import json

from helpers import (HELM, K8SLAN_NAMESPACE, K8SLAN_RELEASE, LAN_NETNS_DIR, NODES, WORKERS, Lan,
                     k8slan_host_links, member_pod, node_run, run, wait_for, wait_pods_running)

W1, W2 = WORKERS


def k8slan_state(node):
    """Everything of k8slan found on a node, as a list of strings (empty: clean)."""
    found = []
    out = node_run(node, "sh", "-c", f"ls -A {LAN_NETNS_DIR} /run/k8slan/dev 2>/dev/null; "
                   "ls -A /var/lib/kubelet/device-plugins | grep '^k8slan-' || true; "
                   f"grep -F ' {LAN_NETNS_DIR}/' /proc/self/mountinfo || true")
    found += [f"{node}: {line}" for line in out.splitlines() if line.strip()]
    found += [f"{node}: link {line.split(':')[1].strip()}" for line in k8slan_host_links(node)]
    return found


def test_helm_uninstall_leaves_no_k8slan_state(k8slan, namespace):
    kubectl = k8slan
    lan = Lan(roles=("a", "b"))
    kubectl.apply(lan.manifest(), namespace)
    kubectl.apply([member_pod("m1", W1, lan.spokes["a"], "198.18.208.1/24"),
                   member_pod("vm", W2, lan.spokes["b"], kind="mac")], namespace)
    wait_pods_running(kubectl, namespace, "m1", "vm")
    # There is state to remove: LAN namespaces, k8slan links, sockets, claims.
    assert all(k8slan_state(n) for n in WORKERS)
    assert kubectl("-n", K8SLAN_NAMESPACE, "get", "leases", "-l", "k8slan.io/role=claim", "-o", "name").strip()

    # The user's part: delete the LAN (members may stay; they lose the LAN interface).
    kubectl("-n", namespace, "delete", "lan", lan.name, "--wait=true")
    wait_for(lambda: not any(k8slan_state(n) for n in NODES), 30, interval=0.5,
             what="every node clean after the LAN is deleted")
    run([HELM, "uninstall", K8SLAN_RELEASE, "-n", K8SLAN_NAMESPACE, "--wait", "--timeout", "2m"], timeout=180)

    releases = json.loads(run([HELM, "list", "-A", "-o", "json"]))
    assert not [r for r in releases if r["name"] == K8SLAN_RELEASE]
    assert not kubectl("-n", K8SLAN_NAMESPACE, "get", "pods,leases,services,secrets",
                       "-l", "app.kubernetes.io/instance=k8slan", "-o", "name").strip()
    assert not kubectl("-n", K8SLAN_NAMESPACE, "get", "leases", "-o", "name").strip()
    assert not kubectl("get", "validatingwebhookconfigurations", "k8slan-validating-webhook",
                       "--ignore-not-found", "-o", "name").strip()
    left = [s for n in NODES for s in k8slan_state(n)]
    assert not left, "k8slan state left after helm uninstall:\n" + "\n".join(left)
    # Kept by design (see the module docstring).
    assert kubectl("get", "crd", "lans.lan.k8slan.io", "-o", "name").strip()
