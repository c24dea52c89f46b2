#!/usr/bin/env bash
# Builds hello:local and hello:v2 without any registry: a root filesystem that
# holds only Debian's busybox-static and start.sh, brought in with `docker import`.
# Skips the work when both tags exist and were built from the current sources.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUSYBOX=${BUSYBOX:-/bin/busybox}

# The sources' hash goes into a label, so that a changed start.sh rebuilds.
src_hash=$( (cat "$HERE/start.sh" "$HERE/build.sh"; sha256sum "$BUSYBOX" | cut -d' ' -f1) | sha256sum | cut -c1-16)
have() { [[ $(docker image inspect -f '{{index .Config.Labels "hello.source"}}' "$1" 2>/dev/null) == "$src_hash" ]]; }
if have hello:local && have hello:v2; then
  echo "[image] hello:local and hello:v2 are up to date"
  exit 0
fi

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs"/{bin,tmp,www,etc}
cp "$BUSYBOX" "$rootfs/bin/busybox"
for applet in sh httpd hostname mkdir printf kill sleep cat echo true false wget; do
  ln -s busybox "$rootfs/bin/$applet"
done
install -m 0755 "$HERE/start.sh" "$rootfs/start.sh"
echo 'root:x:0:0:root:/:/bin/sh' >"$rootfs/etc/passwd"

build() {  # tag greeting
  tar -C "$rootfs" -c . | docker import \
    --change 'CMD ["/bin/sh", "/start.sh"]' \
    --change 'EXPOSE 5000' \
    --change "ENV GREETING=\"$2\" PATH=/bin" \
    --change "LABEL hello.source=$src_hash" \
    - "$1" >/dev/null
  echo "[image] built $1 ($2)"
}
build hello:local "Hello World"
build hello:v2 "Hello World v2"
