"""Item 4 of issue 11, admission half: a pod may request a spoke's resource only in the LAN's
namespace or a namespace the LAN lists in spec.allowedNamespaces. The pod webhook of the
controller denies every other pod (containers and init containers, requests and limits) with a
message naming the LAN and its namespace, and pods of spokes in no LAN. Pods are server-side dry
runs: the webhook answers, nothing runs."""
import json
import subprocess
import uuid

import pytest

from helpers import KUBECTL, Lan, box_pod, resource_name, wait_for

WEBHOOK = 'admission webhook "pods.lan.k8slan.io" denied'


@pytest.fixture
def other_namespace(kubectl):
    name = f"e2e-tenant-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def pod_dry_run(namespace, pod):
    proc = subprocess.run([str(KUBECTL), "-n", namespace, "create", "--dry-run=server", "-f", "-"],
                          input=json.dumps(pod), capture_output=True, text=True, timeout=60)
    return proc.returncode == 0, proc.stdout + proc.stderr


def spoke_pod(name, resource, where="limits", init=False):
    pod = box_pod(name)
    res = {where: {resource: 1}}
    if where == "requests":
        res["limits"] = {resource: 1}
    if init:
        pod["spec"]["initContainers"] = [{"name": "init", "image": pod["spec"]["containers"][0]["image"],
                                          "command": ["true"], "resources": res}]
    else:
        pod["spec"]["containers"][0]["resources"] = res
    return pod


def test_pods_of_other_namespaces_cannot_request_a_lans_spokes(k8slan, namespace, other_namespace):
    kubectl = k8slan
    lan = Lan(roles=("a", "v"))
    kubectl.apply(lan.manifest(), namespace=namespace)
    veth = resource_name("veth", lan.spokes["a"])
    mac = resource_name("mac", lan.spokes["v"])
    # The LAN's own namespace may (once the controller's cache has the LAN).
    wait_for(lambda: pod_dry_run(namespace, spoke_pod("own", veth))[0], 30,
             what="a pod of the LAN's namespace to be admitted")
    for i, (res, where, init) in enumerate([(veth, "limits", False), (mac, "requests", False),
                                            (veth, "limits", True), (mac, "limits", True)]):
        ok, msg = pod_dry_run(other_namespace, spoke_pod(f"foreign{i}", res, where, init))
        assert not ok and WEBHOOK in msg, msg
        assert f"belongs to LAN {namespace}/{lan.name} in namespace {namespace}" in msg, msg
        assert "spec.allowedNamespaces" in msg, msg
    # A spoke in no LAN, and a resource of the domain that names no spoke.
    for res in [resource_name("veth", f"nolan{lan.tag}"), "macvtap.k8slan.io/whatever"]:
        ok, msg = pod_dry_run(namespace, spoke_pod("stray", res))
        assert not ok and WEBHOOK in msg, msg
    # Pods without k8slan resources never reach the webhook (matchConditions).
    ok, msg = pod_dry_run(other_namespace, box_pod("plain"))
    assert ok, msg


def test_allowed_namespaces_share_a_lan(k8slan, namespace, other_namespace):
    kubectl = k8slan
    lan = Lan(roles=("a",))
    kubectl.apply(lan.manifest(), namespace=namespace)
    veth = resource_name("veth", lan.spokes["a"])
    wait_for(lambda: pod_dry_run(namespace, spoke_pod("own", veth))[0], 30, what="the LAN in the cache")
    assert not pod_dry_run(other_namespace, spoke_pod("guest", veth))[0]
    kubectl.apply(lan.manifest(allowedNamespaces=[other_namespace]), namespace=namespace)
    ok, msg = wait_for(lambda: (lambda r: r if r[0] else None)(pod_dry_run(other_namespace, spoke_pod("guest", veth))),
                       30, what="a pod of an allowed namespace to be admitted")
    assert ok, msg
