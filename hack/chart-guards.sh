#!/usr/bin/env bash
# The chart refuses values it cannot honour, with a message naming the value and the fix: render
# it with each bad value and check the message (part of `make check-generated`).
set -euo pipefail
cd "$(dirname "$0")/.."
helm=${HELM:-helm}
fails=0
expect_refused() { # <what the message must contain> <helm --set ...>
  local want=$1 out
  shift
  if out=$("$helm" template k8slan charts/k8slan -n k8slan-system "$@" 2>&1); then
    echo "chart-guards: helm template $* was accepted; it must be refused" >&2
    fails=$((fails + 1))
  elif [[ $out != *"$want"* ]]; then
    echo "chart-guards: helm template $* was refused without naming '$want':" >&2
    echo "$out" >&2
    fails=$((fails + 1))
  fi
}
expect_refused "controller.replicas is 2: it must be 1" --set controller.replicas=2
expect_refused "webhook.certificates.mode must be selfSigned or certManager" \
  --set webhook.certificates.mode=vault
expect_refused "controller.maxSpokesPerNode is 0: it must be at least 1" \
  --set controller.maxSpokesPerNode=0
expect_refused 'agent.tapOwner is "qemu:qemu": it must be a numeric UID:GID' \
  --set agent.tapOwner=qemu:qemu
# And the defaults render.
"$helm" template k8slan charts/k8slan -n k8slan-system >/dev/null
((fails == 0)) && echo "chart-guards: bad values refused with a message naming them"
exit "$fails"
