#!/usr/bin/env bash
# make demo: a local three-node Kubernetes cluster (e2e/) with k8slan installed by Helm, a demo
# LAN (e2e/demo/lan.yaml), two member pods on different workers (e2e/demo/pods.yaml) that ping
# each other over it, and a KubeVirt VM on the same LAN (e2e/demo/vm.yaml; KubeVirt built from
# source and installed by e2e/kubevirt/install.sh) that srl1 pings. Builds whatever is missing (cached in $K8SLAN_CACHE), reuses a running
# cluster, and can be run again at any time (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
source e2e/lib/common.sh
KUBECTL=$REPO/e2e/kubectl
NS=k8slan-demo

step() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

[[ $EUID -eq 0 ]] || die "make demo needs root (it runs a Kubernetes cluster in network namespaces)"
start=$SECONDS

step "building the cluster's parts (Kubernetes, Multus, Helm, images; cached after the first run)"
e2e/build.sh all

step "starting the cluster (reused when it runs already)"
e2e/cluster-up.sh >/dev/null

step "building k8slan and installing it with Helm (charts/k8slan)"
e2e/install-k8slan.sh >/dev/null

step "installing KubeVirt $KUBEVIRT_VERSION (built from source, cached; the macvtap binding plugin)"
e2e/kubevirt/install.sh >/dev/null

step "applying the demo LAN (e2e/demo/lan.yaml)"
"$KUBECTL" apply -f e2e/demo/lan.yaml
# Both spokes must be advertised on their workers before the pods are scheduled.
for w in "${WORKERS[@]}"; do
  spoke=srl${w#worker}
  # shellcheck disable=SC2016  # expanded by the inner bash
  wait_for 60 "macvtap.k8slan.io/k8slan-veth-$spoke on $w" bash -c \
    '[[ $("$0" get node "$1" -o jsonpath="{.status.capacity.macvtap\.k8slan\.io/k8slan-veth-$2}") == 1 ]]' \
    "$KUBECTL" "$w" "$spoke" || die "the LAN's spokes are not advertised on $w"
done

step "starting two member pods, srl1 on worker1 and srl2 on worker2 (e2e/demo/pods.yaml)"
"$KUBECTL" apply -f e2e/demo/pods.yaml
"$KUBECTL" -n "$NS" wait --for=condition=Ready pod/srl1 pod/srl2 --timeout=180s

step "the LAN and its members"
"$KUBECTL" -n "$NS" get lan -o wide
"$KUBECTL" -n "$NS" get pods -o wide
"$KUBECTL" -n "$NS" exec srl1 -- ip -o -4 addr show dev e1-1
"$KUBECTL" -n "$NS" exec srl2 -- ip -o -4 addr show dev e1-1

step "srl1 (worker1) pings srl2 (worker2) over the LAN"
"$KUBECTL" -n "$NS" exec srl1 -- ping -c 5 -W 3 198.18.222.2
step "srl2 (worker2) pings srl1 (worker1) over the LAN"
"$KUBECTL" -n "$NS" exec srl2 -- ping -c 3 -W 3 198.18.222.1

step "starting VirtualMachine vm on spoke vm (e2e/demo/vm.yaml; boots under QEMU, about a minute)"
"$KUBECTL" apply -f e2e/demo/vm.yaml
"$KUBECTL" -n "$NS" wait --for=condition=Ready vmi/vm --timeout=420s
# shellcheck disable=SC2016  # expanded by the inner bash
wait_for 300 "the VM to answer on the LAN" bash -c \
  '"$0" -n "$1" exec srl1 -- ping -c 1 -W 2 198.18.222.3' "$KUBECTL" "$NS" \
  || die "the VM does not answer on the LAN (kubectl -n $NS describe vmi vm)"
"$KUBECTL" -n "$NS" get vmi -o wide
step "srl1 (worker1) pings the VM over the LAN"
"$KUBECTL" -n "$NS" exec srl1 -- ping -c 3 198.18.222.3

cat <<EOF

k8slan demo ready in $((SECONDS - start))s.

Use the cluster:
  export KUBECONFIG=$ADMIN_KUBECONFIG
  alias kubectl=$REPO/e2e/kubectl            # the matching kubectl (already uses that kubeconfig)
  kubectl get nodes -o wide
  kubectl -n $NS get lan demo-lan -o yaml    # status: Accepted/Ready, nodes, holders
  kubectl -n $NS get network-attachment-definitions
  kubectl describe node worker1 | grep macvtap.k8slan.io
  kubectl -n $NS exec -it srl1 -- sh         # ping 198.18.222.2, ip link show e1-1
  $REPO/e2e/node-exec worker1 nsenter --net=/run/k8slan/netns/$NS ip -br link   # the LAN namespace
  $REPO/e2e/helm -n k8slan-system status k8slan
  kubectl -n $NS get vm,vmi                  # the KubeVirt VM on spoke vm (198.18.222.3)
  $KUBEVIRT_BIN/virtctl --kubeconfig $ADMIN_KUBECONFIG -n $NS console vm   # its console (Ctrl+] leaves)

Add a member: add a spoke to the LAN (kubectl -n $NS edit lan demo-lan), then create a pod with
  annotation k8s.v1.cni.cncf.io/networks: k8slan-veth-<spoke>@e1-1
  and resources.limits: {macvtap.k8slan.io/k8slan-veth-<spoke>: 1}

Tear down:
  kubectl delete -f $REPO/e2e/demo/vm.yaml -f $REPO/e2e/demo/pods.yaml -f $REPO/e2e/demo/lan.yaml   # just the demo
  make -C $REPO cluster-down   # everything (checks nothing is left)
EOF
