"""Fixtures for the e2e tests: kubectl, node-exec, a fresh namespace per test.

The cluster must be up (make cluster-up); run with the venv built by e2e/build.sh:
  $K8SLAN_CACHE/venv/bin/pytest e2e/tests/test_smoke.py   (the k8slan tests need k8slan installed)
"""
import re
import uuid

import pytest

from helpers import (HELM, K8SLAN_ARTIFACTS, K8SLAN_NAMESPACE, K8SLAN_RELEASE, KUBECTL, Kubectl,
                     node_run, run, wait_for)


@pytest.fixture(scope="session")
def kubectl():
    k = Kubectl()
    k("version")  # fail early and clearly when the cluster is not up
    return k


@pytest.fixture
def namespace(kubectl, request):
    """A fresh namespace for one test, deleted (and waited for) afterwards."""
    # A DNS label: parametrised tests' ids ("[ipv6]") become dashes too.
    label = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower().replace("_", "-"))[:40].strip("-")
    name = f"e2e-{label}-{uuid.uuid4().hex[:5]}"
    kubectl("create", "namespace", name)
    wait_for(lambda: kubectl("-n", name, "get", "serviceaccount", "default", check=False),
             30, what=f"default service account in {name}")
    yield name
    kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s", check=False, timeout=150)


@pytest.fixture
def node_exec():
    """node_exec(node, *cmd, check=True, timeout=60): helpers.node_run."""
    return node_run


@pytest.fixture(scope="session")
def k8slan(kubectl):
    """k8slan installed by e2e/install-k8slan.sh (Helm release K8SLAN_RELEASE in K8SLAN_NAMESPACE)."""
    status = run([HELM, "status", K8SLAN_RELEASE, "-n", K8SLAN_NAMESPACE, "-o", "json"], check=False)
    assert status, "k8slan is not installed: run e2e/install-k8slan.sh (make test-cluster does)"
    return kubectl


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """When a k8slan test fails, save what explains it at once (a later test may uninstall
    k8slan): agent and controller logs, the test namespace's events and pods, the LANs, VMs and VM launcher logs, Leases.
    Directory: K8SLAN_ARTIFACTS (e2e/lib/common.sh: $E2E_LOGS/k8slan)/<test>/."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed or "k8slan" not in item.nodeid:
        return
    out = K8SLAN_ARTIFACTS / item.name
    out.mkdir(parents=True, exist_ok=True)

    def save(name, *args):
        text = run([KUBECTL, *args], check=False, timeout=60)
        (out / name).write_text(text)

    ns = item.funcargs.get("namespace")
    if ns:
        save("events.txt", "-n", ns, "get", "events", "--sort-by=.lastTimestamp")
        save("pods.txt", "-n", ns, "get", "pods", "-o", "wide")
        save("describe-pods.txt", "-n", ns, "describe", "pods")
        save("lans.yaml", "-n", ns, "get", "lans", "-o", "yaml")
        save("vms.yaml", "-n", ns, "get", "vm,vmi", "-o", "yaml")
        launchers = run([KUBECTL, "-n", ns, "get", "pods", "-l", "kubevirt.io=virt-launcher", "-o", "name"],
                        check=False).split()
        for pod in launchers:
            save(f"{pod.removeprefix('pod/')}.log", "-n", ns, "logs", pod, "--all-containers", "--prefix",
                 "--tail=400")
    save("system-pods.txt", "-n", K8SLAN_NAMESPACE, "get", "pods", "-o", "wide")
    save("leases.yaml", "-n", K8SLAN_NAMESPACE, "get", "leases", "-o", "yaml")
    pods = run([KUBECTL, "-n", K8SLAN_NAMESPACE, "get", "pods", "-o", "name"], check=False).split()
    for pod in pods:
        save(f"{pod.removeprefix('pod/')}.log", "-n", K8SLAN_NAMESPACE, "logs", pod, "--all-containers",
             "--prefix", "--tail=400")
    print(f"\nlogs of the failure saved in {out}")
