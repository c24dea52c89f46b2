#!/usr/bin/env bash
# Installs what consul-operator needs, and only what is missing (idempotent).
#
#   Debian packages  docker.io nginx busybox-static iproute2 curl prometheus ruby
#                    debootstrap (the node image of scripts/nodes.sh), chromium
#                    (headless: the status page's browser test), docker-registry,
#                    apache2-utils and openssl (the private registry tests), redis-server
#                    and python3 (the two-tier example's images: images/visits/)
#   consul           Debian 11's package, fetched through a private apt source
#                    list (never added to the system's sources) and unpacked
#   .venv            the package, editable, with its test extras
#   dockerd          started in the background when no engine answers and
#                    nothing else manages it
#
# Where it cannot install something (not root, not Debian-like) it says what
# to install by hand and fails.
#
# Without arguments or environment this is `make deps`. For installing a host
# (scripts/provision.sh) three variables narrow or redirect it:
#   DEPS_STEPS     which steps run, of "packages consul venv engine" (default: all four)
#   DEPS_PACKAGES  the Debian packages to install instead of the list above
#   PREFIX         install consul as $PREFIX/bin/consul (e.g. /usr/local), where
#                  systemd units expect it, instead of .tools/bin/consul; a consul
#                  elsewhere on PATH does not count then
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUN="$ROOT/.run"
TOOLS="$ROOT/.tools"
PYTHON=${PYTHON:-python3}
mkdir -p "$RUN" "$TOOLS/bin"

STEPS=" ${DEPS_STEPS:-packages consul venv engine} "
PREFIX=${PREFIX:-}

say() { printf '[deps] %s\n' "$*"; }
die() { printf '[deps] ERROR: %s\n' "$*" >&2; exit 1; }

is_root() { [[ $(id -u) -eq 0 ]]; }
is_debian() { command -v apt-get >/dev/null && command -v dpkg >/dev/null; }
step() { [[ $STEPS == *" $1 "* ]]; }

# --- Debian packages ---------------------------------------------------------
# package -> a file it installs, so that "installed" is checked cheaply
declare -A PKG_FILE=(
  [docker.io]=/usr/sbin/dockerd
  [nginx]=/usr/sbin/nginx
  [busybox-static]=/bin/busybox
  [iproute2]=/usr/sbin/ip
  [curl]=/usr/bin/curl
  [prometheus]=/usr/bin/prometheus  # and /usr/bin/promtool: the tests check metrics, config and alerts with it
  [ruby]=/usr/bin/ruby
  [debootstrap]=/usr/sbin/debootstrap
  [chromium]=/usr/bin/chromium  # headless: tests/integration/test_events.py loads the status page in it
  [docker-registry]=/usr/bin/docker-registry  # a private registry the tests start (tests/support/registry.py)
  [apache2-utils]=/usr/bin/htpasswd  # its users' passwords (htpasswd -B)
  [openssl]=/usr/bin/openssl  # its self-signed certificate
  [redis-server]=/usr/bin/redis-server  # copied into visits-redis:local (images/visits/build.sh)
  [python3]=/usr/bin/python3  # Debian's, copied into visits-web:local
)
# installed PACKAGE: its file exists, or (for a package of DEPS_PACKAGES not in
# the table) dpkg knows it as installed.
installed() {
  if [[ -n ${PKG_FILE[$1]:-} ]]; then [[ -e ${PKG_FILE[$1]} ]]; return; fi
  [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}
if step packages; then
  if [[ -n ${DEPS_PACKAGES:-} ]]; then read -r -a wanted <<<"$DEPS_PACKAGES"; else wanted=("${!PKG_FILE[@]}"); fi
  missing=()
  for pkg in "${wanted[@]}"; do
    installed "$pkg" || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    if is_root && is_debian; then
      say "installing Debian packages: ${missing[*]}"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      # --no-install-recommends: docker.io would otherwise pull in a lot we never use.
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$RUN/apt.log" 2>&1 \
        || { tail -20 "$RUN/apt.log" >&2; die "apt-get install failed (log: $RUN/apt.log)"; }
      # The Debian nginx package starts a system nginx on :80 via its postinst when a
      # service manager runs; we drive our own nginx, so leave the system one alone.
    else
      die "missing packages: ${missing[*]}. Install them by hand (Debian/Ubuntu: sudo apt-get install ${missing[*]})."
    fi
  else
    say "Debian packages present"
  fi
fi

# --- consul ------------------------------------------------------------------
# Where consul goes: .tools/bin by default, $PREFIX/bin when asked.
CONSUL_DIR=${PREFIX:+$PREFIX/bin}
CONSUL_DIR=${CONSUL_DIR:-$TOOLS/bin}
consul_bin() {
  if [[ -n $PREFIX ]]; then
    [[ -x $CONSUL_DIR/consul ]] && { echo "$CONSUL_DIR/consul"; return; }
    return 1
  fi
  if command -v consul >/dev/null; then command -v consul; return; fi
  [[ -x $TOOLS/bin/consul ]] && { echo "$TOOLS/bin/consul"; return; }
  return 1
}
if ! step consul; then
  :
elif c=$(consul_bin); then
  say "consul present: $c ($("$c" version | head -1))"
else
  is_debian || die "no consul binary. Install Consul >= 1.8 by hand (https://developer.hashicorp.com/consul/install) and put it on PATH."
  say "fetching consul from Debian 11 (bullseye) through a private source list"
  apt_dir="$RUN/apt-bullseye"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main" >"$apt_dir/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
            -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache::Archives=$apt_dir/archives"
            -o "APT::Sandbox::User=root")
  apt-get "${apt_opts[@]}" update -qq
  (cd "$apt_dir" && apt-get "${apt_opts[@]}" download consul >/dev/null)
  rm -rf "$apt_dir/pkg"
  dpkg -x "$apt_dir"/consul_*.deb "$apt_dir/pkg"
  mkdir -p "$CONSUL_DIR"
  install -m 0755 "$apt_dir/pkg/usr/bin/consul" "$CONSUL_DIR/consul"
  say "consul installed: $CONSUL_DIR/consul ($("$CONSUL_DIR/consul" version | head -1))"
fi

# --- .venv -------------------------------------------------------------------
stamp="$ROOT/.venv/.installed"
if ! step venv; then
  :
elif [[ ! -x $ROOT/.venv/bin/operator || ! -f $stamp || $ROOT/pyproject.toml -nt $stamp ]]; then
  say "creating .venv with the package and its test extras"
  [[ -x $ROOT/.venv/bin/python ]] || "$PYTHON" -m venv "$ROOT/.venv"
  "$ROOT/.venv/bin/pip" install -q -e "$ROOT[test]" >"$RUN/pip.log" 2>&1 \
    || { tail -20 "$RUN/pip.log" >&2; die "pip install failed (log: $RUN/pip.log)"; }
  touch "$stamp"
else
  say ".venv present"
fi

# --- Docker engine -----------------------------------------------------------
if ! step engine; then
  :
elif docker info >/dev/null 2>&1; then
  say "Docker engine answers"
else
  if ! is_root; then
    die "no Docker engine answers. Start one by hand (sudo systemctl start docker, or sudo dockerd &)."
  fi
  if [[ -d /run/systemd/system ]] && systemctl is-enabled docker >/dev/null 2>&1; then
    say "starting docker through systemd"
    systemctl start docker
  else
    say "starting dockerd in the background (log: $RUN/dockerd.log)"
    # setsid: the engine must outlive this make invocation and its process group.
    setsid dockerd >"$RUN/dockerd.log" 2>&1 </dev/null &
    echo $! >"$RUN/dockerd.pid"
  fi
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { tail -20 "$RUN/dockerd.log" >&2 || true; die "dockerd did not come up within 60 s"; }
  say "Docker engine answers"
fi
