"""Helpers for the e2e tests: settings, commands, waiting, kubectl, pods, LANs and their
members, test addresses, pings, frames, node state, kubelet logs.

Every test uses these; a test file keeps only what is particular to its scenarios.
Retries exist only in wait_for: a check that fails after its wait fails.
"""
import ipaddress
import itertools
import json
import os
import random
import re
import subprocess
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

E2E_DIR = Path(__file__).resolve().parent.parent
KUBECTL = E2E_DIR / "kubectl"
NODE_EXEC = E2E_DIR / "node-exec"
HELM = E2E_DIR / "helm"
COMMON_SH = E2E_DIR / "lib" / "common.sh"


# --- commands and waiting ---------------------------------------------------------------

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


# --- settings of the e2e cluster --------------------------------------------------------
# e2e/lib/common.sh is their one source. run-cluster-tests.sh and run-smoke.sh pass them in the
# environment (run_pytest); started by hand, pytest asks common.sh for them (e2e_test_settings).

@lru_cache(maxsize=1)
def _common_sh_settings():
    out = run(["bash", "-c", 'source "$1" && e2e_test_settings', "bash", COMMON_SH], timeout=30)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def setting(name):
    """A setting of the e2e cluster: from the environment, else from e2e/lib/common.sh."""
    if name in os.environ:
        return os.environ[name]
    settings = _common_sh_settings()
    if name not in settings:
        raise KeyError(f"{name} is not a setting that e2e/lib/common.sh e2e_test_settings prints")
    return settings[name]


KUBERNETES_VERSION = setting("KUBERNETES_VERSION")
TESTBOX_IMAGE = setting("TESTBOX_IMAGE")
PY_VENV = setting("PY_VENV")
CONTROL_PLANE = setting("CONTROL_PLANE")
WORKERS = setting("WORKERS").split()
NODES = setting("NODES").split()
# The nodes' logs (<node>/kubelet.log ...) and where conftest.py saves a failed test's logs.
E2E_LOGS = Path(setting("E2E_LOGS"))
K8SLAN_ARTIFACTS = Path(setting("K8SLAN_ARTIFACTS"))
SERVICE_CIDR = setting("SERVICE_CIDR")
KUBERNETES_SERVICE_IP = setting("KUBERNETES_SERVICE_IP")
UNDERLAY = setting("UNDERLAY_IF")
UNDERLAY_MTU = int(setting("UNDERLAY_MTU"))
K8SLAN_NAMESPACE = setting("K8SLAN_NAMESPACE")
K8SLAN_RELEASE = setting("K8SLAN_RELEASE")


# --- kubectl and pods ------------------------------------------------------------------

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

    def exec_rc(self, namespace, pod, *cmd, timeout=60):
        """The exit status of a command in a pod (for commands that must fail)."""
        return subprocess.run([str(KUBECTL), "-n", namespace, "exec", pod, "--", *map(str, cmd)],
                              capture_output=True, timeout=timeout).returncode


def exec_background(namespace, pod, *cmd, stderr=subprocess.PIPE):
    """`kubectl exec` of a command in a pod, started and not waited for (a subprocess.Popen)."""
    return subprocess.Popen([str(KUBECTL), "-n", namespace, "exec", pod, "--", *map(str, cmd)],
                            stdout=subprocess.PIPE, stderr=stderr, text=True)


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


def pod_ready(pod):
    """Whether a pod (as kubectl returns it) has condition Ready=True."""
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def wait_pods_running(kubectl, namespace, *names, timeout=120):
    return {n: kubectl.wait_pod_running(namespace, n, timeout=timeout) for n in names}


# --- k8slan: product constants and names ------------------------------------------------
# k8slan's own defaults, which the chart installs unchanged: api/src/naming.rs (RESOURCE_DOMAIN,
# DEFAULT_NETNS_DIR, DEFAULT_DEV_DIR, LINK_ALIAS_PREFIX, SPOKE_GATE) and charts/k8slan/values.yaml
# (agent.kubeletDir, agent.netnsDir, agent.devDir). They are part of the contract with users, so
# they are written here on purpose; test_helpers.py fails when they and those sources disagree.
RESOURCE_DOMAIN = "macvtap.k8slan.io"
K8SLAN_RUN_DIR = "/run/k8slan"
LAN_NETNS_DIR = f"{K8SLAN_RUN_DIR}/netns"
LAN_DEV_DIR = f"{K8SLAN_RUN_DIR}/dev"
LINK_ALIAS_PREFIX = "k8slan:"
SPOKE_GATE = "k8slan.io/spoke"  # the scheduling gate of pods that request a spoke
KUBELET_DIR = "/var/lib/kubelet"
DEVICE_PLUGIN_DIR = f"{KUBELET_DIR}/device-plugins"      # the kubelet's; the agent serves its sockets there
AGENT_DAEMONSET = "k8slan-ds"
VXLAN6_OVERHEAD = 70      # bytes an IPv6 VXLAN header adds: a LAN's MTU is the underlay's less this
VXLAN4_OVERHEAD = 50      # an IPv4 VXLAN's
LAN_MTU = UNDERLAY_MTU - VXLAN6_OVERHEAD
LAN_IF = "e1-1"           # the name the tests give a member's LAN interface

# Names the tests give to LANs must be unique cluster-wide (ns, vni, spokes): every test draws
# them from unique_tag(), a random per-run suffix plus a counter.
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


def plugin_socket(kind, spoke):
    """The device-plugin socket the agent serves a spoke's resource on (on its node)."""
    return f"{DEVICE_PLUGIN_DIR}/{nad_name(kind, spoke)}.sock"


def lan_manifest(name, ns, vni, spokes, bridge="br0", vxlan="vx0", dev=UNDERLAY, **extra):
    """A LAN in the seed's form (lan.k8slan.io/v1beta1); dev=None names no underlay device (each
    node's uplink)."""
    spec = {"ns": ns, "bridge": bridge, "vxlan": vxlan, "vni": vni,
            **({"defaultVxlanDev": dev} if dev else {}), "spokes": list(spokes), **extra}
    return {"apiVersion": "lan.k8slan.io/v1beta1", "kind": "LAN",
            "metadata": {"name": name}, "spec": spec}


class Lan:
    """A test LAN with unique ns, vni and spokes; spokes are named <role><tag>.

    `Lan.flooding` (spec fields such as vxlanMode and vxlanFamily) goes into every manifest: a
    module re-runs scenarios over another underlay by setting it (test_k8slan_unicast.py)."""

    flooding = {}

    def __init__(self, roles=("a", "b"), name=None):
        tag = unique_tag()
        self.tag = tag
        self.name = name or f"lan-{tag}"
        self.ns = f"e2e-{tag}"
        self.vni = unique_vni()
        self.spokes = {role: f"{role}{tag}" for role in roles}

    def manifest(self, spokes=None, **extra):
        names = list(self.spokes.values()) if spokes is None else spokes
        return lan_manifest(self.name, self.ns, self.vni, names, **{**Lan.flooding, **extra})

    @property
    def mtu(self):
        """The MTU of the LAN's links: the underlay's less the VXLAN overhead of its family."""
        ipv4 = Lan.flooding.get("vxlanFamily") == "ipv4"
        return UNDERLAY_MTU - (VXLAN4_OVERHEAD if ipv4 else VXLAN6_OVERHEAD)


def lan_status(kubectl, namespace, lan_name):
    return kubectl.json("-n", namespace, "get", "lan", lan_name).get("status", {})


def lan_condition(kubectl, namespace, name, type_):
    """The LAN's status condition of this type, or None."""
    for c in lan_status(kubectl, namespace, name).get("conditions", []):
        if c["type"] == type_:
            return c
    return None


def holders(kubectl, namespace, lan):
    """The LAN's status.holders: who holds which spoke."""
    return lan_status(kubectl, namespace, lan.name).get("holders", [])


def nad_exists(kubectl, namespace, name):
    return bool(kubectl("-n", namespace, "get", "network-attachment-definitions", name,
                        "--ignore-not-found", "-o", "name").strip())


def apply_fails(kubectl, namespace, manifest):
    """kubectl apply of a LAN that must be refused (and not stored); returns the error text."""
    proc = subprocess.run([str(KUBECTL), "-n", namespace, "apply", "-f", "-"], input=json.dumps(manifest),
                          capture_output=True, text=True, timeout=60)
    name = manifest["metadata"]["name"]
    assert proc.returncode != 0, f"LAN {name} was admitted: {proc.stdout}"
    assert not kubectl("-n", namespace, "get", "lan", name, "--ignore-not-found", "-o", "name").strip()
    return proc.stderr


def agent_pod(kubectl, node):
    """The one agent pod on a node that is not being deleted, or None."""
    pods = kubectl.json("-n", K8SLAN_NAMESPACE, "get", "pods", "--field-selector", f"spec.nodeName={node}")["items"]
    agents = [p for p in pods if p["metadata"].get("ownerReferences", [{}])[0].get("name") == AGENT_DAEMONSET
              and not p["metadata"].get("deletionTimestamp")]
    return agents[0] if len(agents) == 1 else None


# --- test addresses ----------------------------------------------------------------------
# The address plan is in e2e/README.md ("Address plan"); the ranges are e2e/lib/common.sh's.

class LanSubnet:
    """A /24 for the members of one test LAN: host(n) is an address, cidr(n) with its length."""

    def __init__(self, network):
        self.network = ipaddress.ip_network(network)

    def host(self, n):
        if not 0 < n < self.network.num_addresses - 1:
            raise ValueError(f"host {n} is outside {self.network} (1..{self.network.num_addresses - 2})")
        return str(self.network.network_address + n)

    def cidr(self, n):
        return f"{self.host(n)}/{self.network.prefixlen}"

    def __contains__(self, address):
        return ipaddress.ip_address(address) in self.network

    def __str__(self):
        return str(self.network)

    def __repr__(self):
        return f"LanSubnet({str(self.network)!r})"


class SubnetPlan:
    """Hands out distinct /24s of a range that must lie inside `supernet` and apart from every
    range in `taken` (name -> CIDR); a range that breaks this is refused, naming the culprit."""

    def __init__(self, lan_range, supernet, taken, prefixlen=24):
        self.range = ipaddress.ip_network(lan_range)
        if not self.range.subnet_of(ipaddress.ip_network(supernet)):
            raise ValueError(f"TEST_LAN_RANGE {self.range} is not inside TEST_SUPERNET {supernet}")
        for name, cidr in taken.items():
            if self.range.overlaps(ipaddress.ip_network(cidr)):
                raise ValueError(f"TEST_LAN_RANGE {self.range} overlaps {name} {cidr} (e2e/lib/common.sh)")
        self._subnets = self.range.subnets(new_prefix=prefixlen)

    def next(self):
        network = next(self._subnets, None)
        if network is None:
            raise AssertionError(f"TEST_LAN_RANGE {self.range} is used up: widen it in e2e/lib/common.sh")
        return LanSubnet(network)


@lru_cache(maxsize=1)
def _test_lan_plan():
    return SubnetPlan(setting("TEST_LAN_RANGE"), setting("TEST_SUPERNET"),
                      {name: setting(name) for name in ("MGMT_NODE_CIDR", "UNDERLAY_V4_CIDR", "CLUSTER_CIDR",
                                                        "SERVICE_CIDR")})


def lan_subnet():
    """A /24 of TEST_LAN_RANGE no other caller in this run gets: one for each LAN (or other
    extra network) a test puts addresses on."""
    return _test_lan_plan().next()


# --- members and pings ------------------------------------------------------------------

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


def two_members(kubectl, namespace, lan, subnet, kinds=("veth", "veth"), reachable=False):
    """Apply the LAN and members m1 (worker1, spoke a, subnet .1) and m2 (worker2, spoke b, .2);
    return both pods once Running. reachable=True also requires two pings m1 -> m2 to succeed."""
    w1, w2 = WORKERS
    kubectl.apply(lan.manifest(), namespace)
    kubectl.apply([member_pod("m1", w1, lan.spokes["a"], subnet.cidr(1), kind=kinds[0]),
                   member_pod("m2", w2, lan.spokes["b"], subnet.cidr(2), kind=kinds[1])], namespace)
    pods = wait_pods_running(kubectl, namespace, "m1", "m2")
    if reachable:
        ping(kubectl, namespace, "m1", subnet.host(2), count=2, check=True)
    return pods


@dataclass(frozen=True)
class PingStats:
    """What a busybox ping printed, and its statistics line."""
    sent: int
    received: int
    output: str

    @classmethod
    def parse(cls, output):
        sent, received = ping_stats(output)
        return cls(sent, received, output)


def ping_stats(output):
    """(transmitted, received) from busybox ping output."""
    m = re.search(r"(\d+) packets transmitted, (\d+) packets received", output)
    if not m:
        raise AssertionError(f"no ping statistics in:\n{output}")
    return int(m.group(1)), int(m.group(2))


def ping_command(address, count, wait=3, interval=None):
    """busybox ping: `count` echo requests, `interval` s apart, waiting `wait` s for replies."""
    return (["ping", "-c", str(count)] + (["-W", str(wait)] if wait is not None else [])
            + (["-i", str(interval)] if interval is not None else []) + [address])


def ping(kubectl, namespace, pod, address, count=5, wait=3, interval=None, timeout=60, check=False):
    """Ping from a pod and return its PingStats. check=True: the ping itself must succeed."""
    out = kubectl.exec(namespace, pod, *ping_command(address, count, wait, interval), check=check,
                       timeout=timeout)
    return PingStats.parse(out)


class Pinger:
    """A ping running in a pod in the background while the test changes something; finish()
    returns its PingStats. As a context manager it kills the ping if the test fails first.
    `Pinger.from_node` pings without the API server: from the pod's network namespace, on its
    node."""

    def __init__(self, namespace, pod, address, count, interval, wait=None, proc=None):
        self.proc = proc or exec_background(namespace, pod, *ping_command(address, count, wait, interval),
                                            stderr=subprocess.STDOUT)

    @classmethod
    def from_node(cls, kubectl, namespace, pod, address, count, interval, wait=5):
        """busybox ping in the pod's network namespace, started on its node through node-exec
        (for faults that take the API server, and so `kubectl exec`, away)."""
        node, netns = pod_netns(kubectl, namespace, pod)
        # -q: only the summary; a line per reply would fill the pipe (read at the end) and
        # block the ping after ~1,000 replies.
        ping = ping_command(address, count, wait, interval)
        proc = subprocess.Popen([str(NODE_EXEC), node, "nsenter", f"--net={netns}", "busybox",
                                 ping[0], "-q", *ping[1:]],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return cls(namespace, pod, address, count, interval, wait, proc=proc)

    def running(self):
        return self.proc.poll() is None

    def finish(self, timeout):
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        finally:
            self.kill()
        return PingStats.parse(out)

    def kill(self):
        if self.running():
            self.proc.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def start_ping(namespace, pod, address, count, interval, wait=None):
    return Pinger(namespace, pod, address, count, interval, wait)


# --- nodes ------------------------------------------------------------------------------

def node_resources(kubectl, node):
    """(capacity, allocatable) of a node as dicts of strings."""
    st = kubectl.json("get", "node", node)["status"]
    return st.get("capacity", {}), st.get("allocatable", {})


def capacity(kubectl, node, resource):
    """(capacity, allocatable) of one resource on a node, as numbers (0 when absent)."""
    cap, alloc = node_resources(kubectl, node)
    return int(cap.get(resource, "0")), int(alloc.get(resource, "0"))


def describe_node_count(kubectl, node, resource):
    """The count `kubectl describe node` shows for a resource under Capacity (None if absent)."""
    text = kubectl("describe", "node", node)
    section = text.split("Capacity:", 1)[1].split("Allocatable:", 1)[0]
    m = re.search(rf"^\s+{re.escape(resource)}:\s+(\d+)\s*$", section, re.M)
    return int(m.group(1)) if m else None


E2E_STATE = Path(os.environ.get("K8SLAN_E2E_STATE", "/var/lib/k8slan-e2e"))


def containerd_sock(node):
    """The node's containerd socket, as the host sees it."""
    return E2E_STATE / "nodes" / node / "root" / "run" / "containerd" / "containerd.sock"


def pod_netns(kubectl, namespace, pod):
    """(node, path of the pod's network namespace as its node sees it), from containerd."""
    p = kubectl.json("-n", namespace, "get", "pod", pod)
    node = p["spec"]["nodeName"]
    container = p["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    info = json.loads(run(["ctr", "-a", containerd_sock(node), "-n", "k8s.io", "containers", "info",
                           container]))
    paths = [n.get("path") for n in info["Spec"]["linux"]["namespaces"] if n["type"] == "network"]
    assert paths and paths[0], f"no network namespace path for {namespace}/{pod}: {info['Spec']['linux']}"
    return node, paths[0]


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
    return [line for line in out.splitlines() if f"alias {LINK_ALIAS_PREFIX}" in line]


# --- frames -----------------------------------------------------------------------------

def exchange(kubectl, namespace, recv_pod, recv_args, send_pod, send_args, timeout=20):
    """Start `k8slan-frame <recv_args>` in recv_pod, then run `k8slan-frame <send_args>` in
    send_pod every half second until the receiver exits; return the frame it printed (dict).

    Sending repeatedly only covers the moment the receiver needs to open its socket."""
    proc = exec_background(namespace, recv_pod, "k8slan-frame", *recv_args, "--timeout", timeout)
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


# --- scheduling and the kubelet -----------------------------------------------------------

def waiting_event(kubectl, namespace, pod):
    """The note of the controller's WaitingForSpoke event on the pod, or None."""
    events = kubectl.json("-n", namespace, "get", "events.events.k8s.io")["items"]
    notes = [e.get("note", "") for e in events
             if e.get("reason") == "WaitingForSpoke" and e.get("regarding", {}).get("name") == pod]
    return notes[-1] if notes else None


def assert_stays_pending(kubectl, namespace, pod, resource, seconds=8):
    """The pod waits for `resource` and stays unscheduled for `seconds`: either held at its
    scheduling gate (k8slan.io/spoke) with a WaitingForSpoke event naming the spoke, or
    unschedulable for want of the resource. Returns the PodScheduled condition."""
    spoke = resource.split("/", 1)[1].split("-", 2)[2]   # k8slan-<kind>-<spoke>

    def waiting():
        p = kubectl.json("-n", namespace, "get", "pod", pod)
        for c in p["status"].get("conditions", []):
            if c["type"] != "PodScheduled" or c["status"] != "False":
                continue
            if c.get("reason") == "Unschedulable" and resource in c.get("message", ""):
                return c
            note = waiting_event(kubectl, namespace, pod)
            if c.get("reason") == "SchedulingGated" and note and f"spoke {spoke} " in note:
                return c
        return None
    cond = wait_for(waiting, 30, what=f"pod {pod} waiting for {resource}")
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
