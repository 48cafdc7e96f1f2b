"""Tenancy on the node (issue 11 item 4, node half): a pod of a namespace a LAN does not admit
never keeps a working link to it, even when admission let it through, and an Event on the pod
says why. The agent learns each holder's namespace from the kubelet's pod-resources and tears
down a spoke held from a foreign namespace (for `mac`, the macvtap whose tap reached the
container at Allocate); the CNI plugins refuse to bind for such a pod in the first place.

Two ways in are tried: a pod created in a foreign namespace while the pod admission webhook is
bypassed (as a cluster without it, or a webhook outage with failurePolicy Ignore, would let it),
and an admitted pod whose namespace the LAN's owner then removes from spec.allowedNamespaces."""
import contextlib
import json
import uuid

from helpers import (K8SLAN_NAMESPACE, LAN_IF, WORKERS, Lan, k8slan_host_links, member_pod, nad_name,
                     node_has, run, KUBECTL, wait_for)

W1, _ = WORKERS
DENIED = "SpokeNamespaceDenied"
PREPARED_DIR = "/run/k8slan/prepared"


@contextlib.contextmanager
def foreign_namespace(kubectl):
    name = f"e2e-foreign-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    wait_for(lambda: kubectl("-n", name, "get", "serviceaccount", "default", check=False),
             30, what=f"default service account in {name}")
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s", check=False, timeout=150)


@contextlib.contextmanager
def pod_webhooks_bypassed(kubectl, namespace):
    """Exclude `namespace` from every k8slan webhook that matches pods, validating and mutating,
    for the block's length (a webhook that is not there, or whose failurePolicy let a request
    through in an outage)."""
    saved = []
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        for cfg in kubectl.json("get", kind, "-l", "app.kubernetes.io/name=k8slan")["items"]:
            for i, hook in enumerate(cfg.get("webhooks", [])):
                if not any("pods" in r.get("resources", []) for r in hook.get("rules", [])):
                    continue
                saved.append((kind, cfg["metadata"]["name"], i, hook.get("namespaceSelector")))
                selector = {"matchExpressions": [{"key": "kubernetes.io/metadata.name",
                                                  "operator": "NotIn", "values": [namespace]}]}
                patch = [{"op": "add", "path": f"/webhooks/{i}/namespaceSelector", "value": selector}]
                kubectl("patch", kind, cfg["metadata"]["name"], "--type=json", "-p", json.dumps(patch))
    try:
        yield
    finally:
        for kind, name, i, selector in saved:
            op = ({"op": "replace", "path": f"/webhooks/{i}/namespaceSelector", "value": selector}
                  if selector is not None else
                  {"op": "remove", "path": f"/webhooks/{i}/namespaceSelector"})
            kubectl("patch", kind, name, "--type=json", "-p", json.dumps([op]), check=False)


def denial_event(kubectl, namespace, pod):
    events = kubectl.json("-n", namespace, "get", "events.events.k8s.io")["items"]
    for ev in events:
        if ev.get("reason") == DENIED and ev.get("regarding", {}).get("name") == pod:
            return ev
    return None


def foreign_member(name, lan_namespace, spoke, kind):
    """A member pod of another namespace, naming the LAN namespace's NAD explicitly."""
    pod = member_pod(name, W1, spoke, kind=kind)
    pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] = \
        f"{lan_namespace}/{nad_name(kind, spoke)}@{LAN_IF}"
    return pod


def has_lan_link(kubectl, namespace, pod):
    out = kubectl("-n", namespace, "exec", pod, "--", "ip", "-o", "link", "show", LAN_IF,
                  check=False, timeout=30)
    return LAN_IF in out


def spoke_host_links(spoke):
    return [line for line in k8slan_host_links(W1) if f"/{spoke}" in line or f"-{spoke}" in line]


def claim_of(kubectl, spoke):
    out = run([KUBECTL, "-n", K8SLAN_NAMESPACE, "get", "lease", f"spoke-{spoke}", "-o", "json"],
              check=False)
    return json.loads(out) if out else None


def test_a_vm_spoke_taken_from_a_foreign_namespace_is_torn_down_with_an_event(k8slan, namespace):
    kubectl = k8slan
    lan = Lan(roles=("a",))
    spoke = lan.spokes["a"]
    kubectl.apply(lan.manifest(), namespace)
    wait_for(lambda: kubectl("-n", namespace, "get", "network-attachment-definitions", nad_name("mac", spoke), check=False),
             60, what="the LAN's NADs")
    with foreign_namespace(kubectl) as foreign, pod_webhooks_bypassed(kubectl, foreign):
        kubectl.apply(foreign_member("intruder", namespace, spoke, "mac"), foreign)
        ev = wait_for(lambda: denial_event(kubectl, foreign, "intruder"), 90,
                      what=f"a {DENIED} event on the intruder pod")
        note = ev.get("note", "")
        assert f"{namespace}/{lan.name}" in note and f"namespace {namespace}" in note, note
        assert "spec.allowedNamespaces" in note, note
        # No working link: the macvtap (and with it the tap that reached the container) is gone
        # from the node, there is no record for the CNI, and the claim names no intruder.
        wait_for(lambda: not spoke_host_links(spoke), 30, what=f"no host link of spoke {spoke}")
        assert not node_has(W1, f"{PREPARED_DIR}/{spoke}.json")
        claim = claim_of(kubectl, spoke)
        assert claim is None or foreign not in json.dumps(claim.get("metadata", {}).get("annotations", {}))
        pod = kubectl.json("-n", foreign, "get", "pod", "intruder")
        if pod["status"].get("phase") == "Running":
            assert not has_lan_link(kubectl, foreign, "intruder")
        # The spoke stays unusable on that node while the intruder holds it, and a pod of the
        # LAN's own namespace gets it once the intruder is gone.
        kubectl("-n", foreign, "delete", "pod", "intruder", "--wait=true", "--timeout=60s")
    kubectl.apply(member_pod("owner", W1, spoke, kind="mac"), namespace)
    kubectl.wait_pod_running(namespace, "owner", timeout=120)
    assert has_lan_link(kubectl, namespace, "owner")


def test_a_namespace_removed_from_allowed_namespaces_loses_its_link(k8slan, namespace):
    kubectl = k8slan
    with foreign_namespace(kubectl) as friend:
        lan = Lan(roles=("a",))
        spoke = lan.spokes["a"]
        kubectl.apply(lan.manifest(allowedNamespaces=[friend]), namespace)
        wait_for(lambda: kubectl("-n", namespace, "get", "network-attachment-definitions", nad_name("veth", spoke), check=False),
                 60, what="the LAN's NADs")
        kubectl.apply(foreign_member("guest", namespace, spoke, "veth"), friend)
        kubectl.wait_pod_running(friend, "guest", timeout=120)
        assert has_lan_link(kubectl, friend, "guest")
        assert node_has(W1, f"{PREPARED_DIR}/{spoke}.json")
        assert denial_event(kubectl, friend, "guest") is None

        # The LAN's owner withdraws the invitation.
        kubectl.apply(lan.manifest(allowedNamespaces=[]), namespace)
        wait_for(lambda: denial_event(kubectl, friend, "guest"), 60, what=f"a {DENIED} event on the guest")
        wait_for(lambda: not has_lan_link(kubectl, friend, "guest"), 30, what="the guest's LAN link gone")
        assert not node_has(W1, f"{PREPARED_DIR}/{spoke}.json")
        wait_for(lambda: claim_of(kubectl, spoke) is None, 30, what="the guest's claim released")
