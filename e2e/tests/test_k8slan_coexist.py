"""k8slan's VM plugin beside KubeVirt's macvtap-cni (issue 11, item 10): KubeVirt's plugin is
/opt/cni/bin/macvtap (NAD type "macvtap"); ours is k8slanmacvtap. k8slan's installer leaves
KubeVirt's file byte for byte, and a KubeVirt macvtap NAD and a k8slan VM spoke both work on
one node at the same time.

The plugin is KubeVirt's macvtap-cni built by e2e/build.sh (macvtapcni) from its Go module at
MACVTAP_CNI_VERSION, or, while the module proxy refuses that module, the stand-in
e2e/tools/macvtap-cni-standin/macvtap (the build's SOURCE file says which; the test prints it).
"""
import json
import os
from pathlib import Path

from helpers import (E2E_DIR, K8SLAN_NAMESPACE, LAN_IF, WORKERS, Lan, box_pod, member_pod, nad_name,
                     node_has, node_run, unique_tag, wait_for, wait_pods_running)
from test_k8slan_resilience import agent_pod, agent_ready

W1 = WORKERS[0]
CNI_BIN = "/opt/cni/bin"
KUBEVIRT_MACVTAP = f"{CNI_BIN}/macvtap"


def macvtap_cni():
    """Path of the plugin e2e/build.sh made, and where it came from."""
    versions = dict(line.split("=", 1) for line in (E2E_DIR / "versions.env").read_text().splitlines()
                    if line and not line.startswith("#"))
    cache = Path(os.environ.get("K8SLAN_CACHE") or "/var/cache/k8slan")
    out = cache / "bin" / f"macvtap-cni-{versions['MACVTAP_CNI_VERSION']}"
    assert (out / "macvtap").is_file(), f"{out}/macvtap is missing: run e2e/build.sh macvtapcni"
    return out / "macvtap", (out / "SOURCE").read_text().strip()


def sha256(node, path):
    return node_run(node, "sha256sum", path).split()[0]


def reinstall_cni(kubectl, node):
    """A new agent pod on `node`: its init container runs k8slan-agent install-cni again."""
    old = agent_pod(kubectl, node)["metadata"]["name"]
    kubectl("-n", K8SLAN_NAMESPACE, "delete", "pod", old, "--wait=false")
    wait_for(lambda: agent_ready(kubectl, node, old), 120, interval=0.5, what=f"a new Ready agent on {node}")


def kubevirt_nad(name, master):
    config = {"cniVersion": "0.3.1", "name": name, "type": "macvtap", "master": master}
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name}, "spec": {"config": json.dumps(config)}}


def test_kubevirt_macvtap_cni_and_a_k8slan_vm_spoke_share_a_node(k8slan, namespace):
    kubectl = k8slan
    plugin, origin = macvtap_cni()
    print(f"\nmacvtap plugin under test: {origin}")
    lower = f"cx{unique_tag()}"
    backup = f"/var/tmp/k8slan-e2e-macvtap-{lower}"
    had_one = node_has(W1, KUBEVIRT_MACVTAP)
    if had_one:
        node_run(W1, "cp", "-a", KUBEVIRT_MACVTAP, backup)
    node_run(W1, "ip", "link", "add", lower, "type", "veth", "peer", "name", f"{lower}p")
    node_run(W1, "ip", "link", "set", lower, "up")
    try:
        node_run(W1, "install", "-m", "755", str(plugin), KUBEVIRT_MACVTAP)
        before = sha256(W1, KUBEVIRT_MACVTAP)
        reinstall_cni(kubectl, W1)
        assert sha256(W1, KUBEVIRT_MACVTAP) == before, "k8slan's install-cni changed KubeVirt's macvtap"
        for ours in ("k8slanmacvtap", "k8slanveth", "k8slan-cni.json"):
            assert node_has(W1, f"{CNI_BIN}/{ours}"), f"{ours} not installed"

        lan = Lan(roles=("a",))
        spoke = lan.spokes["a"]
        kubectl.apply(lan.manifest(), namespace)
        kubectl.apply(kubevirt_nad("kubevirt-macvtap", lower), namespace)
        wait_for(lambda: kubectl("-n", namespace, "get", "network-attachment-definitions",
                                 nad_name("mac", spoke), check=False), 60, what="the k8slan mac NAD")
        ours_nad = kubectl.json("-n", namespace, "get", "network-attachment-definitions", nad_name("mac", spoke))
        assert json.loads(ours_nad["spec"]["config"])["type"] == "k8slanmacvtap", ours_nad["spec"]["config"]
        kv = box_pod("kv", node=W1, annotations={"k8s.v1.cni.cncf.io/networks": "kubevirt-macvtap@net1"})
        vm = member_pod("vm", W1, spoke, kind="mac")
        kubectl.apply([kv, vm], namespace)
        wait_pods_running(kubectl, namespace, "kv", "vm")
        # Each pod got its own plugin's macvtap: KubeVirt's on the lower link, ours the spoke's.
        assert kubectl.exec(namespace, "kv", "ls", "/sys/class/net/net1/macvtap").split(), "kv: net1 is no macvtap"
        ifindex = kubectl.exec(namespace, "vm", "cat", f"/sys/class/net/{LAN_IF}/ifindex").strip()
        assert kubectl.exec(namespace, "vm", "ls", f"/sys/class/net/{LAN_IF}/macvtap").split() == [f"tap{ifindex}"]
        assert sha256(W1, KUBEVIRT_MACVTAP) == before
    finally:
        # The kv pod's DEL needs the plugin under test: delete the pods before restoring it.
        kubectl("-n", namespace, "delete", "pod", "kv", "vm", "--ignore-not-found", "--wait=true",
                "--timeout=60s", check=False, timeout=90)
        if had_one:
            node_run(W1, "cp", "-a", backup, KUBEVIRT_MACVTAP, check=False)
            node_run(W1, "rm", "-f", backup, check=False)
        else:
            node_run(W1, "rm", "-f", KUBEVIRT_MACVTAP, check=False)
        node_run(W1, "ip", "link", "del", lower, check=False)
