"""Smoke tests: the e2e cluster is a working multi-node Kubernetes with Multus.

Proof for CI that e2e/ works; run by `make e2e-smoke` (which then tears the cluster
down and checks that nothing is left, see e2e/check-clean.sh).
"""
import base64
import ipaddress
import json
import os
import re
import subprocess
import sys

from helpers import (CONTROL_PLANE, E2E_DIR, HELM, K8SLAN_RUN_DIR, KUBECTL, KUBERNETES_SERVICE_IP,
                     KUBERNETES_VERSION, NODE_EXEC, NODES, PY_VENV, SERVICE_CIDR, WORKERS, box_pod,
                     lan_subnet, node_run, ping, run, wait_for)

W1, W2 = WORKERS


def test_all_nodes_ready(kubectl):
    nodes = {n["metadata"]["name"]: n for n in kubectl.json("get", "nodes")["items"]}
    assert sorted(nodes) == sorted(NODES)
    for name, node in nodes.items():
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", f"{name} not Ready: {ready}"
        assert node["status"]["nodeInfo"]["kubeletVersion"] == KUBERNETES_VERSION
    taints = nodes[CONTROL_PLANE]["spec"].get("taints", [])
    assert any(t["key"] == "node-role.kubernetes.io/control-plane" for t in taints)
    client = json.loads(kubectl("version", "-o", "json"))
    assert client["clientVersion"]["gitVersion"] == KUBERNETES_VERSION
    assert client["serverVersion"]["gitVersion"] == KUBERNETES_VERSION


def test_each_node_is_its_own_pid_namespace_with_a_reaper_as_pid_1(kubectl):
    # KubeVirt's virt-handler (hostPID) takes /proc/1 for the node's init: its root and mount
    # namespace must be the node's. A pod with hostPID sees the node's processes, not another's.
    pidns = {}
    for node in NODES:
        assert node_run(node, "cat", "/proc/1/comm").strip() == "node-init", node
        pidns[node] = node_run(node, "readlink", "/proc/1/ns/pid").strip()
        assert node_run(node, "readlink", "/proc/1/ns/mnt").strip() == \
            node_run(node, "readlink", "/proc/self/ns/mnt").strip(), f"{node}: PID 1 is not in the node's mounts"
        kubelets = [p for p in node_run(node, "ps", "-o", "comm=").split() if p == "kubelet"]
        assert kubelets == ["kubelet"], f"{node} sees {len(kubelets)} kubelets: another node's processes leak in"
    assert len(set(pidns.values())) == len(NODES), f"nodes share a PID namespace: {pidns}"


def test_pods_on_workers_reach_each_other_and_the_api(kubectl, namespace):
    # hostAliases stands in for cluster DNS, which this cluster does not run.
    alias = [{"ip": KUBERNETES_SERVICE_IP, "hostnames": ["kubernetes.default.svc"]}]
    pods = {w: f"box-{w}" for w in WORKERS}
    kubectl.apply([box_pod(name, node=w, hostAliases=alias) for w, name in pods.items()], namespace)
    ips = {}
    for w, name in pods.items():
        pod = kubectl.wait_pod_running(namespace, name)
        assert pod["spec"]["nodeName"] == w
        ips[w] = pod["status"]["podIP"]
    assert ips[W1] != ips[W2]

    # Pod to pod across nodes, both directions.
    ping(kubectl, namespace, pods[W1], ips[W2], count=3, wait=2, check=True)
    ping(kubectl, namespace, pods[W2], ips[W1], count=3, wait=2, check=True)

    # Pod to the API server through the kubernetes service (kube-proxy, iptables mode).
    out = kubectl.exec(namespace, pods[W1], "wget", "-qO-", "--no-check-certificate",
                       "https://kubernetes.default.svc/healthz")
    assert out.strip() == "ok"
    out = kubectl.exec(namespace, pods[W2], "wget", "-qO-", "--no-check-certificate",
                       f"https://{KUBERNETES_SERVICE_IP}/healthz")
    assert out.strip() == "ok"


def test_control_plane_netns_reaches_service_ips(kubectl, namespace, node_exec):
    """The API server calls admission webhooks through service IPs from its netns."""
    kubectl.apply(box_pod("web", node=W2,
                              command=["sh", "-c", "echo hello-from-web > /tmp/index.html && httpd -f -p 8080 -h /tmp"]),
                  namespace)
    kubectl.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                   "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}},
                  namespace)
    kubectl.wait_pod_running(namespace, "web")
    cluster_ip = kubectl.json("-n", namespace, "get", "service", "web")["spec"]["clusterIP"]
    assert ipaddress.ip_address(cluster_ip) in ipaddress.ip_network(SERVICE_CIDR), cluster_ip
    out = wait_for(lambda: node_exec(CONTROL_PLANE, "curl", "-sS", "-m", "3",
                                     f"http://{cluster_ip}/index.html", check=False),
                   60, what=f"service {cluster_ip} from the control-plane netns")
    assert "hello-from-web" in out


def test_apiserver_calls_validating_webhook(kubectl, namespace, tmp_path):
    """A validating admission webhook served by a pod, called through its service."""
    host = f"webhook.{namespace}.svc"
    crt, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-subj", f"/CN={host}", "-addext", f"subjectAltName=DNS:{host}", "-days", "1",
         "-keyout", key, "-out", crt])
    kubectl("-n", namespace, "create", "secret", "tls", "webhook-tls", f"--cert={crt}", f"--key={key}")
    pod = box_pod("webhook", node=W1, command=["e2e-webhook", "-listen", ":8443"])
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "tls", "mountPath": "/tls"}]
    pod["spec"]["volumes"] = [{"name": "tls", "secret": {"secretName": "webhook-tls"}}]
    kubectl.apply(pod, namespace)
    kubectl.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "webhook"},
                   "spec": {"selector": {"app": "webhook"}, "ports": [{"port": 443, "targetPort": 8443}]}},
                  namespace)
    kubectl.wait_pod_running(namespace, "webhook")
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": namespace},
        "webhooks": [{
            "name": "deny.e2e.k8slan.io",
            "clientConfig": {"service": {"namespace": namespace, "name": "webhook", "path": "/validate"},
                             "caBundle": base64.b64encode(crt.read_bytes()).decode()},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["configmaps"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "failurePolicy": "Fail", "timeoutSeconds": 5,
        }],
    }
    kubectl.apply(config)
    try:
        labelled = {"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "denied", "labels": {"e2e-deny": "true"}}, "data": {"a": "b"}}

        def labelled_denied():
            # Until the webhook configuration is active, creation is admitted (dry run).
            proc = subprocess.run([str(KUBECTL), "-n", namespace, "create", "-f", "-",
                                   "--dry-run=server"], input=json.dumps(labelled),
                                  capture_output=True, text=True, timeout=30)
            return proc.returncode != 0 and "denied by e2e-webhook: denied" in proc.stderr
        wait_for(labelled_denied, 60, what="the webhook to deny a labelled ConfigMap")
        kubectl("-n", namespace, "create", "configmap", "allowed", "--from-literal=a=b")
        assert "allowed=true" in kubectl("-n", namespace, "logs", "webhook")
    finally:
        kubectl("delete", "validatingwebhookconfiguration", namespace, "--ignore-not-found", check=False)


def test_multus_adds_nad_interface(kubectl, namespace):
    subnet = lan_subnet()
    nad_config = {"cniVersion": "0.4.0", "name": "e2e-bridge", "type": "bridge", "bridge": "e2enad0",
                  "ipam": {"type": "host-local", "subnet": str(subnet)}}
    kubectl.apply({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                   "metadata": {"name": "e2e-bridge"}, "spec": {"config": json.dumps(nad_config)}}, namespace)
    kubectl.apply(box_pod("multi", node=W1,
                              annotations={"k8s.v1.cni.cncf.io/networks": "e2e-bridge"}), namespace)
    pod = kubectl.wait_pod_running(namespace, "multi")
    addr = kubectl.exec(namespace, "multi", "ip", "-4", "-o", "addr", "show", "dev", "net1")
    assigned = re.search(r"inet ([0-9.]+)/", addr)
    assert assigned and assigned.group(1) in subnet, addr
    status = json.loads(pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"])
    assert [s.get("interface") for s in status] == ["eth0", "net1"], status


def test_helm_works(kubectl):
    out = run([HELM, "version", "--short"])
    assert out.startswith("v3."), out
    run([HELM, "list", "--all-namespaces"])  # talks to the cluster with the admin kubeconfig


def test_device_plugin_resource_is_advertised(kubectl, namespace):
    resource, node = "e2e.k8slan.io/fake", W1
    plugin = subprocess.Popen(
        [str(NODE_EXEC), node, f"{PY_VENV}/bin/python",
         str(E2E_DIR / "deviceplugin" / "fake_device_plugin.py"), "--resource", resource, "--devices", "2"],
        stdout=sys.stderr, stderr=sys.stderr)
    try:
        wait_for(lambda: kubectl.json("get", "node", node)["status"].get("capacity", {}).get(resource) == "2",
                 60, what=f"{resource} capacity on {node}")
        assert resource in kubectl("describe", "node", node)
        kubectl.apply(box_pod("consumer", resources={"limits": {resource: "1"}}), namespace)
        pod = kubectl.wait_pod_running(namespace, "consumer")
        assert pod["spec"]["nodeName"] == node
        env = kubectl.exec(namespace, "consumer", "sh", "-c", "echo $FAKE_DEVICE_IDS")
        assert env.strip().startswith("fake-"), env
    finally:
        plugin.terminate()
        plugin.wait(timeout=20)


def test_daemonset_host_paths_are_per_node(kubectl, namespace, node_exec):
    """hostPath volumes resolve in the node's private tree; Bidirectional mounts propagate."""
    base = f"{K8SLAN_RUN_DIR}/{namespace}"
    script = (f"mkdir -p /host{base} && echo $NODE > /host{base}/owner && touch /host{base}/netns && "
              f"mount --bind /proc/self/ns/net /host{base}/netns && sleep 3600")
    pod = box_pod("agent", command=["sh", "-c", script], hostNetwork=True)["spec"]
    container = pod["containers"][0]
    container["securityContext"] = {"privileged": True}
    container["env"] = [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
    container["volumeMounts"] = [{"name": "run", "mountPath": f"/host{K8SLAN_RUN_DIR}",
                                  "mountPropagation": "Bidirectional"}]
    pod["volumes"] = [{"name": "run", "hostPath": {"path": K8SLAN_RUN_DIR, "type": "DirectoryOrCreate"}}]
    kubectl.apply({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
                   "spec": {"selector": {"matchLabels": {"app": "agent"}},
                            "template": {"metadata": {"labels": {"app": "agent"}}, "spec": pod}}}, namespace)
    try:
        for node in WORKERS:
            wait_for(lambda: node_exec(node, "findmnt", "-n", "-o", "FSTYPE", f"{base}/netns", check=False).strip() == "nsfs",
                     90, what=f"the agent's netns bind mount on {node}")
            assert node_exec(node, "cat", f"{base}/owner").strip() == node
        assert not os.path.exists(base), f"a node's {K8SLAN_RUN_DIR} leaked to the host"
    finally:
        kubectl("-n", namespace, "delete", "daemonset", "agent", "--wait=true", check=False)
        for node in WORKERS:
            node_exec(node, "sh", "-c", f"umount {base}/netns; rm -rf {base}", check=False)
