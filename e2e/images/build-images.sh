#!/usr/bin/env bash
# Build the cluster's local images as OCI archives under $IMAGES_DIR:
#   pause.tar    $PAUSE_IMAGE   static C pause (images/pause.c)
#   testbox.tar  $TESTBOX_IMAGE busybox (applets as symlinks), e2e-webhook
#                (tools/webhook), dfping (images/dfping.c) and any extra static binaries
#   dfping       the static DF ping itself, for the KubeVirt guest (kubevirt/guest)
# Usage: e2e/images/build-images.sh [--add SRC:DEST]...
#   Each --add puts SRC (static binary or directory) at DEST in the testbox image,
#   e.g. --add target/release/rawframe:/usr/local/bin/rawframe. TESTBOX_ADD (space
#   separated SRC:DEST list) does the same from the environment (used by make).
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"

OCI_IMAGE=$E2E_DIR/images/oci-image.py
BUSYBOX=${BUSYBOX:-/bin/busybox}        # from busybox-static: must be statically linked

build_pause() {
  local work=$1
  gcc -static -Os -Wall -Werror -o "$work/pause" "$E2E_DIR/images/pause.c"
  strip "$work/pause"
  # The same binary is every node's PID 1 (lib/node-init.sh).
  install -m 755 "$work/pause" "$NODE_INIT"
  python3 "$OCI_IMAGE" --name "$PAUSE_IMAGE" --output "$IMAGES_DIR/pause.tar" \
    --add "$work/pause:/pause" --entrypoint /pause
}

# A one-shot ICMP echo that forbids fragmentation (busybox ping cannot): MTU checks.
build_dfping() {
  gcc -static -Os -Wall -Wextra -Werror -o "$DFPING" "$E2E_DIR/images/dfping.c"
  strip "$DFPING"
}

build_testbox() {
  local work=$1; shift
  file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' \
    || ldd "$BUSYBOX" 2>&1 | grep -q 'not a dynamic' || die "$BUSYBOX is not static (install busybox-static)"
  # Static Go admission webhook used by the smoke test (Go's build cache makes this quick).
  (cd "$E2E_DIR/tools/webhook" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/e2e-webhook" .)
  local args=(--name "$TESTBOX_IMAGE" --output "$IMAGES_DIR/testbox.tar"
    --add "$BUSYBOX:/bin/busybox" --mkdir /tmp:1777 --mkdir /root:700
    --add "$work/e2e-webhook:/usr/local/bin/e2e-webhook" --add "$DFPING:/usr/local/bin/dfping"
    --add "$work/etc:/etc" --entrypoint /bin/sh --env HOME=/root)
  # One symlink per applet, as `busybox --install -s` would do.
  local applet
  for applet in $("$BUSYBOX" --list-full); do
    [[ $applet == bin/busybox ]] || args+=(--symlink "/$applet:/bin/busybox")
  done
  mkdir -p "$work/etc"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$work/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$work/etc/group"
  local extra
  for extra in ${TESTBOX_ADD:-} "$@"; do args+=(--add "$extra"); done
  python3 "$OCI_IMAGE" "${args[@]}"
}

main() {
  local extras=()
  while (($#)); do
    case $1 in
      --add) extras+=("$2"); shift 2 ;;
      --add=*) extras+=("${1#--add=}"); shift ;;
      *) die "usage: $0 [--add SRC:DEST]..." ;;
    esac
  done
  mkdir -p "$IMAGES_DIR"
  local work; work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  build_pause "$work"
  build_dfping
  build_testbox "$work" "${extras[@]}"
  log "images in $IMAGES_DIR: $(cd "$IMAGES_DIR" && echo *.tar)"
}

main "$@"
