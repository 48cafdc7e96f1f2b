"""Scenario 10: after the user deletes their LANs, `helm uninstall` leaves no k8slan state on any node.

"State" here means what k8slan makes on a node or in the cluster and would otherwise leak:
- LAN network namespaces (mounts under /run/k8slan/netns) and every link whose alias starts with
  `k8slan:` (host-side veth ends, macvtaps);
- tap device nodes under /run/k8slan/dev;
- device-plugin sockets `k8slan-*.sock` in the kubelet's device-plugins directory;
- the release's objects (pods, services, secrets, the webhook configuration) and the spoke
  claims (Leases `spoke-*`), which the agents release when the member pods are gone.
Kept on purpose:
- the LAN CRD (Helm never deletes CRDs from crds/, so users' LAN objects survive a reinstall);
- the namespace k8slan-system (Helm does not delete namespaces) with the agents' node-report Leases
  `node-<node>` (rewritten by the next install; `kubectl delete namespace k8slan-system` removes them);
- the CNI plugin binaries the init container copied into /opt/cni/bin (Multus may still call
  them for a pod being torn down; they do nothing without the agent's prepared links);
- the node state of LANs that still exist (an agent that stops never cuts a LAN: its members
  keep talking). This test deletes its own LAN first; other LANs (make demo's on a reused
  cluster) keep theirs, and everything else must go.

This runs last among the k8slan tests (files sort alphabetically): k8slan is not reinstalled
afterwards (e2e/install-k8slan.sh does that).
"""
import json

from helpers import (DEVICE_PLUGIN_DIR, HELM, K8SLAN_NAMESPACE, K8SLAN_RELEASE, LAN_DEV_DIR, LAN_NETNS_DIR,
                     LINK_ALIAS_PREFIX, NODES, WORKERS, Lan, k8slan_host_links, lan_subnet, member_pod,
                     node_run, run, wait_for, wait_pods_running)

W1, W2 = WORKERS


def k8slan_state(node):
    """Everything of k8slan found on a node, as a list of strings (empty: clean)."""
    found = []
    out = node_run(node, "sh", "-c", f"find {LAN_NETNS_DIR} {LAN_DEV_DIR} -mindepth 1 2>/dev/null; "
                   f"find {DEVICE_PLUGIN_DIR} -name 'k8slan-*'; "
                   f"grep -F ' {LAN_NETNS_DIR}/' /proc/self/mountinfo || true")
    found += [f"{node}: {line}" for line in out.splitlines() if line.strip()]
    found += [f"{node}: link {line.split(':')[1].strip()} {line.split('alias ')[1].split()[0]}"
              for line in k8slan_host_links(node)]
    return found


def belongs_to(line, ns, spokes):
    """Whether a k8slan_state line is about the LAN with namespace `ns` and these spokes."""
    words = line.split()
    return (f"{LAN_NETNS_DIR}/{ns}" in words or f"{LINK_ALIAS_PREFIX}{ns}/" in line
            or any(f"{LAN_DEV_DIR}/tap-{s}" in words for s in spokes))


def claims_of(kubectl, lan):
    leases = kubectl.json("-n", K8SLAN_NAMESPACE, "get", "leases", "-l", "k8slan.io/role=claim")["items"]
    return [x["metadata"]["name"] for x in leases if x["metadata"].get("annotations", {}).get("k8slan.io/lan") == lan]


def test_helm_uninstall_leaves_no_k8slan_state(k8slan, namespace):
    kubectl = k8slan
    lan = Lan(roles=("a", "b"))
    # LANs of others (e.g. make demo's on a reused cluster) keep their node state on purpose.
    others = [(x["spec"]["ns"], x["spec"]["spokes"]) for x in kubectl.json("get", "lans", "-A")["items"]]
    kubectl.apply(lan.manifest(), namespace)
    kubectl.apply([member_pod("m1", W1, lan.spokes["a"], lan_subnet().cidr(1)),
                   member_pod("vm", W2, lan.spokes["b"], kind="mac")], namespace)
    wait_pods_running(kubectl, namespace, "m1", "vm")
    # There is state to remove: LAN namespaces, k8slan links, sockets, claims.
    for n in WORKERS:
        assert [x for x in k8slan_state(n) if belongs_to(x, lan.ns, lan.spokes.values())], f"nothing of ours on {n}"
    assert len(claims_of(kubectl, f"{namespace}/{lan.name}")) == 2

    # The user's part: delete the members and the LAN.
    kubectl("-n", namespace, "delete", "pods", "--all", "--wait=true")
    kubectl("-n", namespace, "delete", "lan", lan.name, "--wait=true")
    wait_for(lambda: not claims_of(kubectl, f"{namespace}/{lan.name}"), 30, what="the spoke claims released")
    wait_for(lambda: not [x for n in NODES for x in k8slan_state(n) if belongs_to(x, lan.ns, lan.spokes.values())
                          or f"{lan.tag}.sock" in x],
             30, interval=0.5, what="every node clean of the LAN after it is deleted")
    run([HELM, "uninstall", K8SLAN_RELEASE, "-n", K8SLAN_NAMESPACE, "--wait", "--timeout", "2m"], timeout=180)

    releases = json.loads(run([HELM, "list", "-A", "-o", "json"]))
    assert not [r for r in releases if r["name"] == K8SLAN_RELEASE]
    assert not kubectl("-n", K8SLAN_NAMESPACE, "get", "pods,leases,services,secrets",
                       "-l", "app.kubernetes.io/instance=k8slan", "-o", "name").strip()
    assert not claims_of(kubectl, f"{namespace}/{lan.name}")
    leases = kubectl("-n", K8SLAN_NAMESPACE, "get", "leases", "-o", "name").split()
    print(f"\nleft in {K8SLAN_NAMESPACE} (documented): {leases}")
    assert not kubectl("get", "validatingwebhookconfigurations", "k8slan-validating-webhook",
                       "--ignore-not-found", "-o", "name").strip()
    assert not kubectl("get", "mutatingwebhookconfigurations", "k8slan-mutating-webhook",
                       "--ignore-not-found", "-o", "name").strip()
    left = [x for n in NODES for x in k8slan_state(n) if not any(belongs_to(x, ns, sp) for ns, sp in others)]
    assert not left, "k8slan state left after helm uninstall:\n" + "\n".join(left)
    # Kept by design (see the module docstring).
    assert kubectl("get", "crd", "lans.lan.k8slan.io", "-o", "name").strip()
