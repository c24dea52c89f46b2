#!/usr/bin/env bash
# Builds the two-tier example's images without any registry (manifests/visits*.yaml), each a root
# filesystem of files from this machine's Debian packages brought in with `docker import`, as
# images/hello/build.sh does:
#   visits-redis:local  redis-server (Debian's redis-server) and busybox-static; start: redis-start.sh
#   visits-web:local    python3 (Debian's, its standard library trimmed) running app.py, and busybox
# Each binary comes with the shared libraries ldd names. Skips the work when both tags exist and
# were built from the current sources and binaries.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUSYBOX=${BUSYBOX:-/bin/busybox}
REDIS=${REDIS:-/usr/bin/redis-server}
PYTHON=$(readlink -f "${DEBIAN_PYTHON:-/usr/bin/python3}")  # Debian's, not a virtualenv's or pyenv's
for f in "$BUSYBOX" "$REDIS" "$PYTHON"; do
  [[ -x $f ]] || { echo "[image] $f is missing: run make deps" >&2; exit 1; }
done
PYVER=$(basename "$PYTHON")  # python3.11
STDLIB=/usr/lib/$PYVER
[[ -d $STDLIB ]] || { echo "[image] $STDLIB is missing: run make deps (Debian's python3)" >&2; exit 1; }

src_hash=$( (cat "$HERE/build.sh" "$HERE/app.py" "$HERE/redis-start.sh"
             sha256sum "$BUSYBOX" "$REDIS" "$PYTHON" | cut -d' ' -f1) | sha256sum | cut -c1-16)
have() { [[ $(docker image inspect -f '{{index .Config.Labels "visits.source"}}' "$1" 2>/dev/null) == "$src_hash" ]]; }
if have visits-redis:local && have visits-web:local; then
  echo "[image] visits-redis:local and visits-web:local are up to date"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# with_libs ROOT FILE...: each file and every shared library ldd names for it, at the same paths.
with_libs() {
  local root=$1; shift
  cp -L --parents "$@" "$root/"
  # "libx.so => /path (addr)" and the loader's "/lib64/ld-linux-x86-64.so.2 (addr)"; not the "file:" headers.
  ldd "$@" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $2 ~ /^\(/ {print $1}' \
    | sort -u | while read -r lib; do
    cp -L --parents "$lib" "$root/"
  done
}

# base ROOT: busybox (sh and a few applets, for the start script and `docker exec`), passwd, tmp.
base() {
  local root=$1 applet
  mkdir -p "$root"/{bin,tmp,etc}
  chmod 1777 "$root/tmp"
  cp "$BUSYBOX" "$root/bin/busybox"
  for applet in sh cat mkdir echo ls ps nc; do ln -s busybox "$root/bin/$applet"; done
  echo 'root:x:0:0:root:/:/bin/sh' >"$root/etc/passwd"
  echo 'root:x:0:' >"$root/etc/group"
}

import() {  # root tag change...
  local root=$1 tag=$2; shift 2
  local changes=() c
  for c in "$@"; do changes+=(--change "$c"); done
  tar -C "$root" -c . | docker import "${changes[@]}" --change "LABEL visits.source=$src_hash" - "$tag" >/dev/null
  echo "[image] built $tag ($(du -sh "$root" | cut -f1))"
}

redis_root=$work/redis
base "$redis_root"
with_libs "$redis_root" "$REDIS"
mkdir -p "$redis_root/var/lib/redis"
install -m 0755 "$HERE/redis-start.sh" "$redis_root/start.sh"
import "$redis_root" visits-redis:local 'CMD ["/bin/sh", "/start.sh"]' 'EXPOSE 6379' 'ENV PATH=/bin:/usr/bin'

web_root=$work/web
base "$web_root"
with_libs "$web_root" "$PYTHON" "$STDLIB"/lib-dynload/*.so
# The standard library without what an HTTP app never imports (tests, IDLE, Tk, 2to3, pip's wheels).
tar -C / -c --exclude="${STDLIB#/}/test" --exclude="${STDLIB#/}/idlelib" --exclude="${STDLIB#/}/tkinter" \
  --exclude="${STDLIB#/}/turtledemo" --exclude="${STDLIB#/}/lib2to3" --exclude="${STDLIB#/}/ensurepip" \
  --exclude="${STDLIB#/}/config-*" --exclude="${STDLIB#/}/site-packages" --exclude="${STDLIB#/}/dist-packages" \
  "${STDLIB#/}" | tar -C "$web_root" -x
ln -s "$PYVER" "$web_root/usr/bin/python3"
mkdir -p "$web_root/app" "$web_root/etc/app"
install -m 0644 "$HERE/app.py" "$web_root/app/app.py"
import "$web_root" visits-web:local 'CMD ["/usr/bin/python3", "/app/app.py"]' 'EXPOSE 8000' \
  'ENV PATH=/bin:/usr/bin PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1'
