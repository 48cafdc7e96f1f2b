"""KubeVirt VMs for the cluster tier: VirtualMachines in the seed's form, their launcher pods, and
the test guest (e2e/kubevirt/guest) driven through its control endpoint.

The guest's contract (e2e/kubevirt/guest/README.md): NIC eth0 is KubeVirt's `default`
(masquerade, DHCP), eth1 the LAN (the macvtap binding); a user-data that is a script runs at
boot; `k8slan-guest-control start` in it serves POSTed shell scripts on port 8080, which a pod
reaches at the launcher pod's IP (masquerade forwards every port into the guest).
"""
import base64
import hashlib
import json
import re
import subprocess
import time

from helpers import E2E_DIR, exec_background, nad_name, resource_name, setting, wait_for

KUBEVIRT_NAMESPACE = setting("KUBEVIRT_NAMESPACE")
GUEST_IMAGE = setting("KUBEVIRT_GUEST_IMAGE")
SEED_VM = E2E_DIR / "kubevirt" / "testvm.yaml"
GUEST_LAN_IF = "eth1"
GUEST_CONTROL_PORT = 8080
GUEST_CONTROL_PATH = "/cgi-bin/run"
VM_BOOT_TIMEOUT = 420       # seconds: scheduling, launcher start, TCG boot on a loaded 2-core machine


def guest_script(address=None, control=True):
    """The user-data of a test VM: put `address` (CIDR) on the LAN NIC, start the control endpoint."""
    lines = ["#!/bin/sh", f"ip link set {GUEST_LAN_IF} up"]
    if address:
        lines.append(f"ip addr add {address} dev {GUEST_LAN_IF}")
    if control:
        lines.append("k8slan-guest-control start")
    return "\n".join(lines) + "\n"


def vm_manifest(name, spoke, node=None, address=None, user_data=None):
    """A VirtualMachine like the seed's (masquerade `default`, `link1` with the macvtap binding on
    network k8slan-mac-<spoke>, 64M, runStrategy Always) booting our guest, pinned to `node`."""
    user_data = guest_script(address) if user_data is None else user_data
    spec = {
        "domain": {
            "devices": {
                "disks": [{"name": "containerdisk", "disk": {"bus": "virtio"}},
                          {"name": "cloudinitdisk", "disk": {"bus": "virtio"}}],
                "interfaces": [{"name": "default", "masquerade": {}},
                               {"name": "link1", "binding": {"name": "macvtap"}}],
            },
            "resources": {"requests": {"memory": "64M"}},
        },
        "networks": [{"name": "default", "pod": {}},
                     {"name": "link1", "multus": {"networkName": nad_name("mac", spoke)}}],
        "volumes": [{"name": "containerdisk", "containerDisk": {"image": GUEST_IMAGE}},
                    {"name": "cloudinitdisk", "cloudInitNoCloud": {
                        "userDataBase64": base64.b64encode(user_data.encode()).decode()}}],
        "terminationGracePeriodSeconds": 0,
    }
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name},
            "spec": {"runStrategy": "Always",
                     "template": {"metadata": {"labels": {"kubevirt.io/domain": name}}, "spec": spec}}}


def multus_ifname(network):
    """The interface name KubeVirt asks Multus for: "pod" + 11 hex digits of sha256 of the VM's
    network name (`link1`, not the NAD's)."""
    return "pod" + hashlib.sha256(network.encode()).hexdigest()[:11]


def vmi(kubectl, namespace, name):
    out = kubectl("-n", namespace, "get", "vmi", name, "-o", "json", "--ignore-not-found")
    return json.loads(out) if out.strip() else None


def wait_vmi_running(kubectl, namespace, name, timeout=VM_BOOT_TIMEOUT, not_uid=None):
    """The VMI once its phase is Running (and, with not_uid, once it is a new VMI)."""
    def running():
        v = vmi(kubectl, namespace, name)
        if v and v["metadata"]["uid"] != not_uid and v.get("status", {}).get("phase") == "Running":
            return v
        return None
    try:
        return wait_for(running, timeout, interval=2, what=f"VMI {namespace}/{name} Running")
    except AssertionError:
        print(kubectl("-n", namespace, "get", "vmi,pods", "-o", "wide", check=False))
        print(kubectl("-n", namespace, "describe", "vmi", name, check=False))
        raise


def vmi_interface(v, name):
    """The VMI's status entry for interface `name` (mac, interfaceName, ...)."""
    found = [i for i in v.get("status", {}).get("interfaces", []) if i.get("name") == name]
    assert found, f"VMI {v['metadata']['name']} reports no interface {name}: {v.get('status', {}).get('interfaces')}"
    return found[0]


def launcher_pod(kubectl, namespace, v):
    """The virt-launcher pod of a VMI (label kubevirt.io/created-by=<VMI uid>)."""
    pods = kubectl.json("-n", namespace, "get", "pods", "-l", f"kubevirt.io/created-by={v['metadata']['uid']}")
    live = [p for p in pods["items"] if p["status"].get("phase") not in ("Succeeded", "Failed")]
    assert len(live) == 1, f"VMI {v['metadata']['name']}: {len(live)} live launcher pods"
    return live[0]


def launcher_pods(kubectl, namespace, vm_name):
    """Every launcher pod of a VM's VMIs (label vm.kubevirt.io/name), oldest first."""
    pods = kubectl.json("-n", namespace, "get", "pods", "-l", f"vm.kubevirt.io/name={vm_name}")["items"]
    return sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"])


def requests_spoke(pod, kind, spoke):
    """Whether a pod's containers request the spoke's resource."""
    res = resource_name(kind, spoke)
    return any(res in c.get("resources", {}).get("requests", {}) for c in pod["spec"]["containers"])


def eui64_link_local(mac):
    """The IPv6 link-local address the guest's kernel derives from its MAC (RFC 4291, EUI-64)."""
    b = [int(x, 16) for x in mac.split(":")]
    b[0] ^= 0x02
    eui = b[:3] + [0xff, 0xfe] + b[3:]
    return "fe80::" + ":".join(f"{eui[i] << 8 | eui[i + 1]:x}" for i in range(0, 8, 2))


class Guest:
    """The test guest of a running VMI, driven from `client_pod` (any pod on the pod network)."""

    def __init__(self, kubectl, namespace, client_pod, v):
        self.kubectl, self.namespace, self.client = kubectl, namespace, client_pod
        self.name = v["metadata"]["name"]
        self.ip = launcher_pod(kubectl, namespace, v)["status"]["podIP"]

    def _command(self, script, timeout):
        # A raw HTTP/1.0 POST through nc: the testbox's static busybox wget crashes resolving
        # any host, an IP address included (static glibc, NSS).
        request = ('printf "POST %s?timeout=%s HTTP/1.0\\r\\nContent-Length: %d\\r\\n\\r\\n%s" '
                   f'{GUEST_CONTROL_PATH} {timeout} "${{#1}}" "$1" | nc {self.ip} {GUEST_CONTROL_PORT}')
        return ["sh", "-c", request, "sh", script]

    def run(self, script, timeout=30):
        """Run a shell script in the guest; (exit status, output)."""
        out = self.kubectl.exec(self.namespace, self.client, *self._command(script, timeout),
                                timeout=timeout + 30)
        return parse_answer(self.name, out)

    def check(self, script, timeout=30):
        rc, out = self.run(script, timeout)
        assert rc == 0, f"guest {self.name}: `{script}` exited {rc}:\n{out}"
        return out

    def start(self, script, timeout=30):
        """Run a script in the guest in the background (a subprocess.Popen); see finish()."""
        return exec_background(self.namespace, self.client, *self._command(script, timeout))

    def wait_ready(self, timeout=VM_BOOT_TIMEOUT):
        """Wait until the guest has booted and its control endpoint answers; seconds it took."""
        start = time.monotonic()
        wait_for(lambda: self.run("true", timeout=5)[0] == 0, timeout, interval=2,
                 what=f"guest {self.name}'s control endpoint at {self.ip}:{GUEST_CONTROL_PORT}")
        return time.monotonic() - start


def parse_answer(name, http):
    """(exit status, output) from the control endpoint's HTTP answer: the body ends in exit=N."""
    parts = re.split(r"\r?\n\r?\n", http, maxsplit=1)    # headers, then a blank line
    lines = parts[-1].rstrip("\n").split("\n")
    assert len(parts) == 2 and lines[-1].startswith("exit="), f"guest {name}: no exit status in {http!r}"
    return int(lines[-1][5:]), "\n".join(lines[:-1])


def finish(proc, timeout):
    """The (exit status, output) of a Guest.start() once it ends."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return parse_answer(f"(background) {err}", out)


def kubevirt_available(kubectl):
    out = kubectl("-n", KUBEVIRT_NAMESPACE, "get", "kubevirt", "-o", "json", check=False)
    items = json.loads(out)["items"] if out.strip() else []
    return bool(items) and any(c["type"] == "Available" and c["status"] == "True"
                               for c in items[0].get("status", {}).get("conditions", []))

