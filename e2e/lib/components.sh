# shellcheck shell=bash
# Cluster daemons: etcd and the control plane on the control-plane node; containerd,
# kubelet, kube-proxy and the CNI configuration on every node. Each daemon runs inside
# its node's namespaces, logs to $E2E_LOGS/<node>/<daemon>.log and has a pid file in
# $E2E_RUN/<node>.<daemon>.pid; a daemon that is already running is left alone.

ETCD_CLIENT_URL=http://127.0.0.1:2379
KUBECTL=$K8S_BIN/kubectl

# start_daemon NODE NAME CMD...: start CMD in the node's namespaces, detached.
start_daemon() {
  local node=$1 name=$2; shift 2
  local pidfile=$E2E_RUN/$node.$name.pid holder
  alive_pid "$pidfile" >/dev/null && return 0
  holder=$(alive_pid "$(holder_pidfile "$node")") || die "node $node has no holder"
  log "start: $node: $name"
  # nsenter forks a bash into the node's PID namespace; that bash writes its pid as the host
  # sees it (the host's /proc is still mounted), then execs nsenter into the node's other
  # namespaces, which execs the daemon: the pid file holds the daemon's host pid.
  # shellcheck disable=SC2016  # expanded by the inner bash
  setsid nsenter -t "$holder" -p -- bash -c 'read -r pid _ </proc/self/stat; echo "$pid" >"$0"; exec "$@"' \
    "$pidfile" nsenter -t "$holder" -m -u -n -- "$@" >>"$(node_logs "$node")/$name.log" 2>&1 </dev/null &
  wait_for 5 "$name pid file" test -s "$pidfile"
}

daemon_alive() { alive_pid "$E2E_RUN/$1.$2.pid" >/dev/null; }

# wait_daemon NODE NAME SECONDS CMD...: wait until CMD succeeds; fail at once if the
# daemon exits meanwhile (its log then says why).
wait_daemon() {
  local node=$1 name=$2 timeout=$3 deadline; shift 3
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    daemon_alive "$node" "$name" || die "$name on $node exited (see $(node_logs "$node")/$name.log)"
    ((SECONDS < deadline)) || die "$name on $node not ready after ${timeout}s"
    sleep 1
  done
}

admin_kubectl() { "$KUBECTL" --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }

# --- control plane ------------------------------------------------------------

start_etcd() {
  local node=$CONTROL_PLANE
  start_daemon "$node" etcd etcd --name "$node" --data-dir "$(node_dir "$node")/etcd" \
    --listen-client-urls "$ETCD_CLIENT_URL" --advertise-client-urls "$ETCD_CLIENT_URL" \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster "$node=http://127.0.0.1:2380" --snapshot-count 10000 \
    --logger zap --log-level warn
  wait_daemon "$node" etcd 60 in_node "$node" curl -fsS "$ETCD_CLIENT_URL/health"
}

start_apiserver() {
  local p=$E2E_PKI
  start_daemon "$CONTROL_PLANE" kube-apiserver "$K8S_BIN/kube-apiserver" \
    --advertise-address="$APISERVER_IP" --bind-address=0.0.0.0 --secure-port="$APISERVER_PORT" \
    --etcd-servers="$ETCD_CLIENT_URL" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --client-ca-file="$p/ca.crt" --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
    --kubelet-client-certificate="$p/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$p/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true \
    --requestheader-client-ca-file="$p/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$p/front-proxy-client.crt" --proxy-client-key-file="$p/front-proxy-client.key" \
    --profiling=false --event-ttl=30m --v=1
  # Admission webhooks and aggregated APIs are called through their service's
  # cluster IP: kube-proxy on this node (started later) makes that work.
  wait_daemon "$CONTROL_PLANE" kube-apiserver 120 admin_kubectl get --raw /readyz
}

start_controllers() {
  local p=$E2E_PKI
  start_daemon "$CONTROL_PLANE" kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$p/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$p/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$p/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false \
    --root-ca-file="$p/ca.crt" --service-account-private-key-file="$p/sa.key" \
    --use-service-account-credentials=true \
    --cluster-signing-cert-file="$p/ca.crt" --cluster-signing-key-file="$p/ca.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" --allocate-node-cidrs=false \
    --kube-api-qps=20 --kube-api-burst=30 --profiling=false --v=1
  start_daemon "$CONTROL_PLANE" kube-scheduler "$K8S_BIN/kube-scheduler" \
    --kubeconfig="$p/scheduler.kubeconfig" \
    --authentication-kubeconfig="$p/scheduler.kubeconfig" \
    --authorization-kubeconfig="$p/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --profiling=false --v=1
}

# Cluster-wide objects the nodes need before their first pod (Multus: CRD + RBAC).
apply_cluster_manifests() {
  log "manifests: NetworkAttachmentDefinition CRD, multus RBAC"
  admin_kubectl apply -f "$E2E_DIR/manifests/" >/dev/null
  wait_for 60 "NAD CRD established" admin_kubectl wait --for=condition=Established \
    crd/network-attachment-definitions.k8s.cni.cncf.io --timeout=5s
}

# --- per node -----------------------------------------------------------------

write_containerd_config() {
  local node=$1
  cat >"$(node_dir "$node")/containerd.toml" <<EOF
# containerd for e2e node $node (written by e2e/lib/components.sh)
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  # Imported locally (e2e/images); the node has no route out, so a pull would fail.
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  disable_apparmor = true
  enable_selinux = false
  # Keep container oom_score_adj >= containerd's own: a process without
  # CAP_SYS_RESOURCE (as in some sandboxes) may not lower it, and the pause
  # container's -998 then fails with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
EOF
}


start_containerd() {
  local node=$1
  write_containerd_config "$node"
  start_daemon "$node" containerd containerd --config "$(node_dir "$node")/containerd.toml"
  wait_daemon "$node" containerd 60 ctr -a "$(containerd_sock "$node")" version
}

# import_images NODE TAR...: load OCI archives into the node's CRI image store.
import_images() {
  local node=$1 tar; shift
  for tar in "$@"; do
    ctr -a "$(containerd_sock "$node")" -n k8s.io images import "$tar" >/dev/null \
      || die "importing $tar into $node failed"
  done
}

# CNI: Multus thin plugin first, delegating to a bridge + host-local pod network.
install_cni() {
  local node=$1 r
  r=$(node_root "$node")
  cp -a "$CNI_SRC_DIR"/. "$r/opt/cni/bin/"
  install -m 755 "$MULTUS_BIN/multus" "$r/opt/cni/bin/multus"
  mkdir -p "$r/etc/cni/net.d/multus.d"
  install -m 600 "$E2E_PKI/multus.kubeconfig" "$r/etc/cni/net.d/multus.d/multus.kubeconfig"
  cat >"$r/etc/cni/net.d/00-multus.conf" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "multus-cni-network",
  "type": "multus",
  "kubeconfig": "/etc/cni/net.d/multus.d/multus.kubeconfig",
  "logFile": "$(node_logs "$node")/multus.log",
  "logLevel": "verbose",
  "delegates": [
    {
      "cniVersion": "0.4.0",
      "name": "k8se2e-pods",
      "plugins": [
        {
          "type": "bridge",
          "bridge": "cni0",
          "isGateway": true,
          "ipMasq": false,
          "hairpinMode": true,
          "mtu": $MGMT_MTU,
          "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "${POD_CIDR[$node]}"}]],
            "routes": [{"dst": "$TEST_SUPERNET"}]
          }
        },
        {"type": "portmap", "capabilities": {"portMappings": true}}
      ]
    }
  ]
}
EOF
}

write_node_configs() {
  local node=$1 r ip taints=""
  r=$(node_root "$node"); ip=${NODE_IP[$node]}
  mkdir -p "$r/etc/kubernetes/pki"
  install -m 644 "$E2E_PKI/ca.crt" "$r/etc/kubernetes/pki/ca.crt"
  install -m 600 "$E2E_PKI/kubelet-$node.kubeconfig" "$r/etc/kubernetes/kubelet.kubeconfig"
  install -m 600 "$E2E_PKI/kube-proxy.kubeconfig" "$r/etc/kubernetes/kube-proxy.kubeconfig"
  : >"$r/etc/kubernetes/resolv.conf"    # pods get no outside resolver
  if [[ $node == "$CONTROL_PLANE" ]]; then
    taints=$'registerWithTaints:\n- key: node-role.kubernetes.io/control-plane\n  effect: NoSchedule'
  fi
  cat >"$r/etc/kubernetes/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $ip
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: /etc/kubernetes/pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
# cgroup v1 host without systemd as PID 1; each node owns a cgroup subtree so the
# kubelets do not remove each other's pod cgroups.
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupRoot: $(cgroup_root "$node")
failSwapOn: false
resolvConf: /etc/kubernetes/resolv.conf
clusterDomain: cluster.local
# Images are imported, never pulled: never garbage-collect them, evict late.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 50Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%}
maxPods: 40
# Compute node status every second (posted only when it changes): new device-plugin resources
# show in the node's capacity about a second after they register instead of up to 10 s later.
nodeStatusUpdateFrequency: 1s
kubeAPIQPS: 10
kubeAPIBurst: 20
containerLogMaxSize: 5Mi
containerLogMaxFiles: 2
$taints
EOF
  cat >"$r/etc/kubernetes/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: /etc/kubernetes/kube-proxy.kubeconfig, qps: 5, burst: 10}
hostnameOverride: $node
mode: iptables
clusterCIDR: $CLUSTER_CIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$MGMT_NODE_CIDR"]
iptables: {localhostNodePorts: false}
conntrack: {maxPerCore: 0, min: 0}
EOF
}

start_node_agents() {
  local node=$1
  start_daemon "$node" kubelet "$K8S_BIN/kubelet" --config=/etc/kubernetes/kubelet.yaml \
    --kubeconfig=/etc/kubernetes/kubelet.kubeconfig \
    --hostname-override="$node" --node-ip="${NODE_IP[$node]}" --v=1
  start_daemon "$node" kube-proxy "$K8S_BIN/kube-proxy" --config=/etc/kubernetes/kube-proxy.yaml --v=1
}
