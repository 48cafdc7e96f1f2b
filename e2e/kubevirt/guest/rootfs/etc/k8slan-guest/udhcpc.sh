#!/bin/sh
# udhcpc's event script for the first NIC: apply the lease (address, default route, MTU, DNS).
# udhcpc passes the event as $1 and the lease in the environment (interface, ip, subnet, mask,
# router, mtu, dns, domain, search).
# shellcheck disable=SC2154  # those variables come from udhcpc

prefix_len() {
  if [ -n "$mask" ]; then echo "$mask"; else ipcalc -p "$ip" "$subnet" | cut -d = -f 2; fi
}

bound() {
  local r
  ip -4 addr flush dev "$interface"
  ip addr add "$ip/$(prefix_len)" dev "$interface"
  [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
  for r in $router; do
    ip route replace default via "$r" dev "$interface" && break
  done
  {
    [ -n "$search$domain" ] && echo "search ${search:-$domain}"
    for r in $dns; do echo "nameserver $r"; done
  } >/etc/resolv.conf
  echo "k8slan-guest: $interface dhcp $ip/$(prefix_len) via ${router:-none}" >/dev/console
}

case $1 in
  deconfig) ip -4 addr flush dev "$interface"; ip link set dev "$interface" up ;;
  bound | renew) bound ;;
esac
exit 0
