# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables here are used by the scripts that source it
# Shared settings and helpers for the e2e cluster scripts. Source it; do not run it.
# Every path and address is a variable here so a caller can override it from the
# environment (e.g. K8SLAN_E2E_STATE=/run/k8slan-e2e make cluster-up).

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../versions.env
source "$E2E_DIR/versions.env"

# --- directories -----------------------------------------------------------
K8SLAN_CACHE=${K8SLAN_CACHE:-/var/cache/k8slan}          # build cache, survives cluster-down
E2E_STATE=${K8SLAN_E2E_STATE:-/var/lib/k8slan-e2e}       # everything of a running cluster
E2E_LOGS=${K8SLAN_E2E_LOGS:-$E2E_STATE/logs}             # kept by cluster-down for post-mortems
E2E_PKI=$E2E_STATE/pki
E2E_NODES=$E2E_STATE/nodes                               # per-node private trees
E2E_RUN=$E2E_STATE/run                                   # pid files, markers
ADMIN_KUBECONFIG=$E2E_STATE/admin.kubeconfig
K8SLAN_ARTIFACTS=$E2E_LOGS/k8slan                        # logs of failed k8slan tests

K8S_BIN=$K8SLAN_CACHE/bin/kubernetes-$KUBERNETES_VERSION
MULTUS_BIN=$K8SLAN_CACHE/bin/multus-$MULTUS_VERSION
HELM_BIN=$K8SLAN_CACHE/bin/helm-$HELM_VERSION
IMAGES_DIR=$K8SLAN_CACHE/images
PY_VENV=$K8SLAN_CACHE/venv
CNI_SRC_DIR=${CNI_SRC_DIR:-/usr/lib/cni}                 # Debian's reference plugins
GO_BUILD_JOBS=${GO_BUILD_JOBS:-2}
# shellcheck source=kubevirt.sh
source "$E2E_DIR/lib/kubevirt.sh"

# --- names and addresses (all test-only: 198.18.0.0/15, link-local IPv6) ---------
NODES=(control-plane worker1 worker2)
WORKERS=(worker1 worker2)
CONTROL_PLANE=control-plane
NS_PREFIX=k8se2e                      # netns, bridges and host veth ends start with it
MGMT_BRIDGE=$NS_PREFIX-mgmt
UNDERLAY_BRIDGE=$NS_PREFIX-ul
MGMT_HOST_CIDR=198.18.0.1/24
MGMT_NODE_CIDR=198.18.0.0/24         # node addresses (eth0) live here
TEST_SUPERNET=198.18.0.0/15           # host gets an unreachable route: nothing leaves
SERVICE_CIDR=198.19.0.0/16
KUBERNETES_SERVICE_IP=198.19.0.1
CLUSTER_CIDR=198.18.8.0/21            # covers every node's pod CIDR
APISERVER_PORT=6443
MGMT_MTU=1500
UNDERLAY_MTU=1500
UNDERLAY_IF=eth1                      # each worker's underlay port (the LANs' defaultVxlanDev)
UNDERLAY_V4_CIDR=198.18.1.0/24        # IPv4 on the underlay: a worker's eth1 gets .<its NODE_IP's last octet>
UNDERLAY_NFT_TABLE=k8se2e_underlay    # bridge-family table that drops IP multicast on the underlay (underlay_multicast)
# Test LANs of the cluster tier: e2e/tests/helpers.py lan_subnet() hands each one a /24 of it.
# Inside TEST_SUPERNET, apart from the mgmt, pod and service ranges (e2e/README.md, "Address plan").
TEST_LAN_RANGE=198.18.128.0/18

# Per-node facts: short id (for 15-char link names), management IP, pod CIDR.
declare -A NODE_ID=([control-plane]=cp [worker1]=w1 [worker2]=w2)
declare -A NODE_IP=([control-plane]=198.18.0.10 [worker1]=198.18.0.11 [worker2]=198.18.0.12)
declare -A POD_CIDR=([control-plane]=198.18.10.0/24 [worker1]=198.18.11.0/24 [worker2]=198.18.12.0/24)
APISERVER_IP=${NODE_IP[$CONTROL_PLANE]}
APISERVER_URL=https://$APISERVER_IP:$APISERVER_PORT

# k8slan as install-k8slan.sh installs it (Helm release and its namespace).
K8SLAN_RELEASE=k8slan
K8SLAN_NAMESPACE=k8slan-system

# Standard paths each node gets privately (bind-mounted from its own tree).
NODE_PRIVATE_DIRS=(
  /etc/kubernetes /etc/cni/net.d /opt/cni/bin
  /var/lib/kubelet /var/lib/containerd /var/lib/cni /var/lib/k8slan
  /var/log/pods /var/log/containers
  /run/containerd /run/netns /run/k8slan
  # KubeVirt's node state: virt-handler's and the launchers' sockets collide when shared.
  /run/kubevirt /run/kubevirt-private /run/kubevirt-libvirt-runtimes /var/lib/kubevirt-node-labeller
)
# PID 1 of every node's PID namespace: the pause binary (reaps orphans, exits on SIGTERM,
# which ends every process of the node). Built by images/build-images.sh.
NODE_INIT=$IMAGES_DIR/node-init
DFPING=$IMAGES_DIR/dfping          # images/dfping.c, in the testbox and the KubeVirt guest

# --- helpers ------------------------------------------------------------------
log()  { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die()  { log "ERROR: $*"; exit 1; }

netns_name()  { echo "$NS_PREFIX-${NODE_ID[$1]}"; }
node_dir()    { echo "$E2E_NODES/$1"; }
node_root()   { echo "$E2E_NODES/$1/root"; }          # sources of the private bind mounts
node_logs()   { echo "$E2E_LOGS/$1"; }
holder_pidfile() { echo "$E2E_RUN/$1.holder.pid"; }
cgroup_root() { echo "/$NS_PREFIX-$1"; }                # kubelet cgroupRoot of a node
# The node's containerd socket, reachable from the host through its state tree.
containerd_sock() { echo "$(node_root "$1")/run/containerd/containerd.sock"; }

# Print the pid stored in a pid file if that process is alive.
alive_pid() {
  local f=$1 pid
  [[ -s $f ]] || return 1
  pid=$(<"$f")
  [[ -d /proc/$pid ]] || return 1
  echo "$pid"
}

# Run a command inside a node's mount, UTS, network and PID namespaces (nsenter forks
# into the PID namespace and returns the command's status).
in_node() {
  local node=$1 pid; shift
  pid=$(alive_pid "$(holder_pidfile "$node")") || die "node $node is not running"
  nsenter -t "$pid" -m -u -n -p -- "$@"
}

# Wait until a command succeeds; $1 seconds, $2 description, rest the command.
wait_for() {
  local timeout=$1 what=$2 deadline; shift 2
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { log "timed out after ${timeout}s waiting for $what"; return 1; }
    sleep 1
  done
}

# --- the pytest suites -------------------------------------------------------------

# The settings e2e/tests/helpers.py reads, as NAME=value lines (arrays joined by spaces).
# run_pytest passes them in the environment; helpers.py runs this itself when pytest is
# started by hand, so these values are written nowhere else.
e2e_test_settings() {
  printf '%s\n' \
    "KUBERNETES_VERSION=$KUBERNETES_VERSION" "TESTBOX_IMAGE=$TESTBOX_IMAGE" "PY_VENV=$PY_VENV" \
    "NODES=${NODES[*]}" "WORKERS=${WORKERS[*]}" "CONTROL_PLANE=$CONTROL_PLANE" \
    "E2E_LOGS=$E2E_LOGS" "K8SLAN_ARTIFACTS=$K8SLAN_ARTIFACTS" \
    "TEST_SUPERNET=$TEST_SUPERNET" "MGMT_NODE_CIDR=$MGMT_NODE_CIDR" "CLUSTER_CIDR=$CLUSTER_CIDR" \
    "SERVICE_CIDR=$SERVICE_CIDR" "KUBERNETES_SERVICE_IP=$KUBERNETES_SERVICE_IP" \
    "TEST_LAN_RANGE=$TEST_LAN_RANGE" "UNDERLAY_IF=$UNDERLAY_IF" "UNDERLAY_MTU=$UNDERLAY_MTU" \
    "UNDERLAY_V4_CIDR=$UNDERLAY_V4_CIDR" "UNDERLAY_NFT_TABLE=$UNDERLAY_NFT_TABLE" \
    "K8SLAN_RELEASE=$K8SLAN_RELEASE" "K8SLAN_NAMESPACE=$K8SLAN_NAMESPACE" \
    "KUBEVIRT_VERSION=$KUBEVIRT_VERSION" "KUBEVIRT_NAMESPACE=$KUBEVIRT_NAMESPACE" \
    "KUBEVIRT_GUEST_IMAGE=$KUBEVIRT_GUEST_IMAGE" "KUBEVIRT_BIN=$KUBEVIRT_BIN"
}

# Run pytest from the venv with those settings; arguments go to pytest.
run_pytest() {
  local settings
  mapfile -t settings < <(e2e_test_settings)
  env "${settings[@]}" "$PY_VENV/bin/pytest" -p no:cacheprovider -v "$@"
}

# End a test run: tear the cluster down (KEEP_CLUSTER=1 leaves it running, for debugging),
# log the verdict of $1 (the run's name) and exit with the tests' status $2, or 1 when the
# teardown or its leftover check fails.
teardown_and_exit() {
  local what=$1 rc=$2
  if [[ ${KEEP_CLUSTER:-0} == 1 ]]; then
    log "KEEP_CLUSTER=1: cluster left running"
  else
    "$E2E_DIR/cluster-down.sh" || rc=1      # includes check-clean.sh
  fi
  if ((rc == 0)); then log "$what: PASSED in ${SECONDS}s"; else log "$what: FAILED"; fi
  exit "$rc"
}
