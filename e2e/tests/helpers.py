"""Helpers for the e2e tests: running commands, waiting, kubectl, pod manifests.

Retries exist only in wait_for: a check that fails after its wait fails.
"""
import json
import os
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
