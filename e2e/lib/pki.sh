# shellcheck shell=bash
# Certificates and kubeconfigs for the e2e cluster, made with openssl (ECDSA P-256).
# Everything lands in $E2E_PKI; existing files are kept, so a re-run is a no-op.

# new_key FILE: ECDSA P-256 private key.
new_key() {
  [[ -s $1 ]] || openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null
  chmod 600 "$1"
}

# new_ca NAME CN: self-signed CA $E2E_PKI/NAME.{crt,key}.
new_ca() {
  local name=$1 cn=$2
  [[ -s $E2E_PKI/$name.crt ]] && return
  new_key "$E2E_PKI/$name.key"
  openssl req -x509 -new -key "$E2E_PKI/$name.key" -subj "/CN=$cn" -days 3650 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$E2E_PKI/$name.crt"
}

# new_cert CA NAME SUBJECT USAGE [SAN]: certificate NAME.{crt,key} signed by CA.
# USAGE is serverAuth, clientAuth or both ("serverAuth,clientAuth").
new_cert() {
  local ca=$1 name=$2 subject=$3 usage=$4 san=${5:-}
  [[ -s $E2E_PKI/$name.crt ]] && return
  new_key "$E2E_PKI/$name.key"
  local ext="$E2E_PKI/$name.ext"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [[ -z $san ]] || echo "subjectAltName=$san"
  } >"$ext"
  openssl req -new -key "$E2E_PKI/$name.key" -subj "$subject" -out "$E2E_PKI/$name.csr"
  openssl x509 -req -in "$E2E_PKI/$name.csr" -CA "$E2E_PKI/$ca.crt" -CAkey "$E2E_PKI/$ca.key" \
    -CAcreateserial -days 3650 -extfile "$ext" -out "$E2E_PKI/$name.crt" 2>/dev/null
  rm -f "$E2E_PKI/$name.csr" "$ext"
}

# kubeconfig OUT USER CERTNAME: kubeconfig for a client certificate in $E2E_PKI.
kubeconfig() {
  local out=$1 user=$2 cert=$3
  [[ -s $out ]] && return
  cat >"$out" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: k8slan-e2e
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $(base64 -w0 "$E2E_PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$E2E_PKI/$cert.crt")
    client-key-data: $(base64 -w0 "$E2E_PKI/$cert.key")
contexts:
- name: k8slan-e2e
  context: {cluster: k8slan-e2e, user: $user}
current-context: k8slan-e2e
KCFG
  chmod 600 "$out"
}

make_pki() {
  mkdir -p "$E2E_PKI"
  log "pki: certificates in $E2E_PKI"
  new_ca ca k8slan-e2e-ca
  new_ca front-proxy-ca k8slan-e2e-front-proxy-ca

  local san="DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
  san+=",DNS:kubernetes.default.svc.cluster.local,DNS:localhost,DNS:$CONTROL_PLANE"
  san+=",IP:$KUBERNETES_SERVICE_IP,IP:127.0.0.1"
  local n
  for n in "${NODES[@]}"; do san+=",IP:${NODE_IP[$n]}"; done
  new_cert ca apiserver "/CN=kube-apiserver" serverAuth "$san"
  new_cert ca apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  new_cert front-proxy-ca front-proxy-client "/CN=front-proxy-client" clientAuth
  new_cert ca admin "/O=system:masters/CN=kubernetes-admin" clientAuth
  new_cert ca controller-manager "/CN=system:kube-controller-manager" clientAuth
  new_cert ca scheduler "/CN=system:kube-scheduler" clientAuth
  new_cert ca kube-proxy "/CN=system:kube-proxy" clientAuth
  new_cert ca multus "/CN=multus" clientAuth          # bound to ClusterRole multus
  for n in "${NODES[@]}"; do
    new_cert ca "kubelet-$n" "/O=system:nodes/CN=system:node:$n" clientAuth
  done
  # Service-account token signing key pair.
  if [[ ! -s $E2E_PKI/sa.key ]]; then
    openssl genrsa -out "$E2E_PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$E2E_PKI/sa.key" -pubout -out "$E2E_PKI/sa.pub" 2>/dev/null
  fi

  kubeconfig "$ADMIN_KUBECONFIG" kubernetes-admin admin
  kubeconfig "$E2E_PKI/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
  kubeconfig "$E2E_PKI/scheduler.kubeconfig" system:kube-scheduler scheduler
  kubeconfig "$E2E_PKI/kube-proxy.kubeconfig" system:kube-proxy kube-proxy
  kubeconfig "$E2E_PKI/multus.kubeconfig" multus multus
  for n in "${NODES[@]}"; do
    kubeconfig "$E2E_PKI/kubelet-$n.kubeconfig" "system:node:$n" "kubelet-$n"
  done
}
