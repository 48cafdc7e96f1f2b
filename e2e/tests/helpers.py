"""Helpers for the e2e tests: running commands, waiting, kubectl, pod manifests.

Retries exist only in wait_for: a check that fails after its wait fails.
"""
import itertools
import json
import os
import random
import re
import subprocess
import time
from pathlib import Path

E2E_DIR = Path(__file__).resolve().parent.parent
KUBECTL = E2E_DIR / "kubectl"
NODE_EXEC = E2E_DIR / "node-exec"
HELM = E2E_DIR / "helm"
TESTBOX_IMAGE = os.environ.get("TESTBOX_IMAGE", "k8slan.local/testbox:dev")
WORKERS = ["worker1", "worker2"]
NODES = ["control-plane"] + WORKERS


def run(cmd, input=None, check=True, timeout=120):
    """Run a command; return stdout. On failure, raise with its output."""
    proc = subprocess.run([str(c) for c in cmd], input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def wait_for(predicate, timeout=60, interval=1.0, what="condition"):
    """Call predicate until it returns a truthy value (returned) or time runs out."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except (AssertionError, subprocess.SubprocessError, KeyError, ValueError) as err:
            last_error = err
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}" +
                                 (f"; last error: {last_error}" if last_error else ""))
        time.sleep(interval)


class Kubectl:
    def __call__(self, *args, input=None, check=True, timeout=120):
        return run([KUBECTL, *args], input=input, check=check, timeout=timeout)

    def json(self, *args):
        return json.loads(self(*args, "-o", "json"))

    def apply(self, manifest, namespace=None):
        """Apply a manifest given as dict, list of dicts or YAML/JSON text."""
        if isinstance(manifest, dict):
            manifest = json.dumps(manifest)
        elif isinstance(manifest, list):
            manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": manifest})
        ns = ["-n", namespace] if namespace else []
        return self(*ns, "apply", "-f", "-", input=manifest)

    def wait_pod_running(self, namespace, name, timeout=120):
        def running():
            pod = self.json("-n", namespace, "get", "pod", name)
            return pod if pod["status"].get("phase") == "Running" else None
        try:
            return wait_for(running, timeout, what=f"pod {namespace}/{name} Running")
        except AssertionError:
            print(self("-n", namespace, "describe", "pod", name, check=False))
            raise

    def exec(self, namespace, pod, *cmd, check=True, timeout=60):
        return self("-n", namespace, "exec", pod, "--", *cmd, check=check, timeout=timeout)


def box_pod(name, node=None, command=("sleep", "3600"), annotations=None, resources=None, **spec):
    """A pod running the local test image, optionally pinned to a node."""
    container = {"name": "box", "image": TESTBOX_IMAGE, "imagePullPolicy": "Never", "command": list(command)}
    if resources:
        container["resources"] = resources
    pod_spec = {"containers": [container], "terminationGracePeriodSeconds": 1, **spec}
    if node:
        pod_spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    metadata = {"name": name, "labels": {"app": name}}
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


# --- k8slan ---------------------------------------------------------------------------------
# Names the tests give to LANs must be unique cluster-wide (ns, vni, spokes): every test draws
# them from unique_tag(), a random per-run suffix plus a counter.
K8SLAN_NAMESPACE = "k8slan-system"
K8SLAN_RELEASE = "k8slan"
RESOURCE_DOMAIN = "macvtap.k8slan.io"
LAN_NETNS_DIR = "/run/k8slan/netns"
UNDERLAY = "eth1"
LAN_IF = "e1-1"
# The kubelets' logs (e2e/lib/common.sh: $K8SLAN_E2E_STATE/logs/<node>/kubelet.log).
E2E_LOGS = Path(os.environ.get("K8SLAN_E2E_LOGS",
                              Path(os.environ.get("K8SLAN_E2E_STATE", "/var/lib/k8slan-e2e")) / "logs"))
_RUN_TAG = "".join(random.choice("abcdefghijkmnpqrstuvwxyz") for _ in range(3))
_COUNTER = itertools.count(1)


def unique_tag():
    """A short tag unique in this run and (most likely) across runs: 3 letters + a counter."""
    return f"{_RUN_TAG}{next(_COUNTER)}"


def unique_vni():
    return random.randint(100_000, 16_000_000)


def nad_name(kind, spoke):
    return f"k8slan-{kind}-{spoke}"


def resource_name(kind, spoke):
    return f"{RESOURCE_DOMAIN}/{nad_name(kind, spoke)}"


def lan_manifest(name, ns, vni, spokes, bridge="br0", vxlan="vx0", dev=UNDERLAY, **extra):
    """A LAN in the seed's form (lan.k8slan.io/v1beta1)."""
    spec = {"ns": ns, "bridge": bridge, "vxlan": vxlan, "vni": vni,
            "defaultVxlanDev": dev, "spokes": list(spokes), **extra}
    return {"apiVersion": "lan.k8slan.io/v1beta1", "kind": "LAN",
            "metadata": {"name": name}, "spec": spec}


class Lan:
    """A test LAN with unique ns, vni and spokes; spokes are named <role><tag>."""

    def __init__(self, roles=("a", "b"), name=None):
        tag = unique_tag()
        self.tag = tag
        self.name = name or f"lan-{tag}"
        self.ns = f"e2e-{tag}"
        self.vni = unique_vni()
        self.spokes = {role: f"{role}{tag}" for role in roles}

    def manifest(self, spokes=None, **extra):
        names = list(self.spokes.values()) if spokes is None else spokes
        return lan_manifest(self.name, self.ns, self.vni, names, **extra)


def member_pod(name, node, spoke, address=None, kind="veth", ifname=LAN_IF, command=None):
    """A testbox pod attached to a spoke: the Multus annotation plus the spoke's resource.

    With an address (CIDR), the container puts it on the LAN interface before sleeping.
    kind="mac" attaches like a KubeVirt VM would: macvtap + tap device.
    """
    if command is None:
        setup = f"ip link set {ifname} up && " + (f"ip addr add {address} dev {ifname} && " if address else "")
        command = ["sh", "-c", f"{setup}echo attached && exec sleep 3600"]
    res = resource_name(kind, spoke)
    pod = box_pod(name, node=node, command=command,
                  annotations={"k8s.v1.cni.cncf.io/networks": f"{nad_name(kind, spoke)}@{ifname}"},
                  resources={"limits": {res: 1}, "requests": {res: 1}})
    pod["spec"]["containers"][0]["securityContext"] = {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}}
    return pod


def node_resources(kubectl, node):
    """(capacity, allocatable) of a node as dicts of strings."""
    st = kubectl.json("get", "node", node)["status"]
    return st.get("capacity", {}), st.get("allocatable", {})


def describe_node_count(kubectl, node, resource):
    """The count `kubectl describe node` shows for a resource under Capacity (None if absent)."""
    text = kubectl("describe", "node", node)
    section = text.split("Capacity:", 1)[1].split("Allocatable:", 1)[0]
    m = re.search(rf"^\s+{re.escape(resource)}:\s+(\d+)\s*$", section, re.M)
    return int(m.group(1)) if m else None


def node_run(node, *cmd, check=True, timeout=60):
    """Run a command in a node's namespaces (e2e/node-exec); return stdout."""
    return run([NODE_EXEC, node, *cmd], check=check, timeout=timeout)


def node_has(node, path):
    proc = subprocess.run([str(NODE_EXEC), node, "test", "-e", path], capture_output=True, timeout=30)
    return proc.returncode == 0


def lan_netns_links(node, ns):
    """`ip -o link` inside a LAN namespace on a node, or None when the namespace is absent."""
    path = f"{LAN_NETNS_DIR}/{ns}"
    if not node_has(node, path):
        return None
    return node_run(node, "nsenter", f"--net={path}", "ip", "-o", "link")


def k8slan_host_links(node):
    """Links in a node's host namespace whose alias marks them as k8slan's (`k8slan:<ns>/...`)."""
    out = node_run(node, "ip", "-o", "link")
    return [line for line in out.splitlines() if "alias k8slan:" in line]


def ping_stats(output):
    """(transmitted, received) from busybox ping output."""
    m = re.search(r"(\d+) packets transmitted, (\d+) packets received", output)
    if not m:
        raise AssertionError(f"no ping statistics in:\n{output}")
    return int(m.group(1)), int(m.group(2))


def exchange(kubectl, namespace, recv_pod, recv_args, send_pod, send_args, timeout=20):
    """Start `k8slan-frame <recv_args>` in recv_pod, then run `k8slan-frame <send_args>` in
    send_pod every half second until the receiver exits; return the frame it printed (dict).

    Sending repeatedly only covers the moment the receiver needs to open its socket."""
    cmd = [str(KUBECTL), "-n", namespace, "exec", recv_pod, "--", "k8slan-frame", *recv_args,
           "--timeout", str(timeout)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            kubectl.exec(namespace, send_pod, "k8slan-frame", *send_args)
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        out, err = proc.communicate(timeout=timeout + 15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (f"{recv_pod}: k8slan-frame {' '.join(recv_args)} got nothing from "
                                  f"{send_pod} (k8slan-frame {' '.join(send_args)}): {out}{err}")
    return json.loads(out.strip().splitlines()[-1])


def pod_mac(kubectl, namespace, pod, ifname=LAN_IF):
    return kubectl.exec(namespace, pod, "cat", f"/sys/class/net/{ifname}/address").strip()


def wait_pods_running(kubectl, namespace, *names, timeout=120):
    return {n: kubectl.wait_pod_running(namespace, n, timeout=timeout) for n in names}


def assert_stays_pending(kubectl, namespace, pod, resource, seconds=8):
    """The pod is unschedulable for want of `resource`, and stays unscheduled for `seconds`."""
    def unschedulable():
        p = kubectl.json("-n", namespace, "get", "pod", pod)
        for c in p["status"].get("conditions", []):
            if c["type"] == "PodScheduled" and c["status"] == "False" and c.get("reason") == "Unschedulable":
                return c
        return None
    cond = wait_for(unschedulable, 30, what=f"pod {pod} Unschedulable")
    assert resource in cond.get("message", ""), cond
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        p = kubectl.json("-n", namespace, "get", "pod", pod)
        assert p["status"]["phase"] == "Pending" and not p["spec"].get("nodeName"), \
            f"pod {pod} left Pending: node {p['spec'].get('nodeName')}, phase {p['status']['phase']}"
        time.sleep(1)
    return cond



def kubelet_log_time(node, text, after):
    """Epoch time of the first line of the node's kubelet log that contains `text` and was
    written at or after `after` (epoch seconds), or None. The kubelet logs local time, no year."""
    log = E2E_LOGS / node / "kubelet.log"
    stamp_re = re.compile(r"^[IWE](\d{4}) (\d\d:\d\d:\d\d)(\.\d+) ")
    year = time.localtime(after).tm_year
    for line in log.read_text(errors="replace").splitlines():
        if text not in line:
            continue
        m = stamp_re.match(line)
        if not m:
            continue
        stamp = time.mktime(time.strptime(f"{year}{m.group(1)} {m.group(2)}", "%Y%m%d %H:%M:%S")) + float(m.group(3))
        if stamp >= after - 0.001:
            return stamp
    return None


def kubelet_registration_time(node, resource, after):
    """When the kubelet logged the device plugin registration of `resource` (after `after`)."""
    return kubelet_log_time(node, f'Got registration request from device plugin with resource" '
                            f'resourceName="{resource}"', after)
