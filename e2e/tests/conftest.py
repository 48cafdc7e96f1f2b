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
