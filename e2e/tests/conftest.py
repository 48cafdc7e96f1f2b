"""Fixtures for the e2e tests: kubectl, node-exec, a fresh namespace per test.

The cluster must be up (make cluster-up); run with the venv built by e2e/build.sh:
  $K8SLAN_CACHE/venv/bin/pytest e2e/tests
"""
import uuid

import pytest

from helpers import NODE_EXEC, Kubectl, run, wait_for


@pytest.fixture(scope="session")
def kubectl():
    k = Kubectl()
    k("version")  # fail early and clearly when the cluster is not up
    return k


@pytest.fixture
def namespace(kubectl, request):
    """A fresh namespace for one test, deleted (and waited for) afterwards."""
    name = f"e2e-{request.node.name.lower().replace('_', '-')[:40]}-{uuid.uuid4().hex[:5]}"
    kubectl("create", "namespace", name)
    wait_for(lambda: kubectl("-n", name, "get", "serviceaccount", "default", check=False),
             30, what=f"default service account in {name}")
    yield name
    kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s", check=False, timeout=150)


@pytest.fixture
def node_exec():
    def _exec(node, *cmd, check=True, timeout=60):
        return run([NODE_EXEC, node, *cmd], check=check, timeout=timeout)
    return _exec


@pytest.fixture(scope="session")
def k8slan(kubectl):
    """k8slan installed by e2e/install-k8slan.sh (Helm release k8slan in k8slan-system)."""
    from helpers import HELM, K8SLAN_NAMESPACE, K8SLAN_RELEASE
    status = run([HELM, "status", K8SLAN_RELEASE, "-n", K8SLAN_NAMESPACE, "-o", "json"], check=False)
    assert status, "k8slan is not installed: run e2e/install-k8slan.sh (make test-cluster does)"
    return kubectl
