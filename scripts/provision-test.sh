#!/usr/bin/env bash
# `make provision-test`: runs scripts/provision.sh in a clean Debian 12 root file
# system, once per role, and checks what it installed. Slow (it downloads a
# Debian base system and the role's packages), so not part of `make test`.
#
# The root file system is made with debootstrap from Debian's packages and
# brought into Docker with `docker import` (no registry). systemd does not run
# in the container, so provision.sh installs everything and starts nothing;
# the check is what it left: consul and operator in /usr/local/bin, a Consul
# configuration that `consul validate` accepts, the units and settings files,
# the users, and that a second run changes nothing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK="$ROOT/.run/provision-test"
IMAGE=consul-operator-provision-base:bookworm
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

say() { printf '[provision-test] %s\n' "$*"; }
die() { printf '[provision-test] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap)"
docker info >/dev/null 2>&1 || die "no Docker engine answers: run 'make deps'"
if ! command -v debootstrap >/dev/null; then
  say "installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

# --- the base image: a minimal Debian 12, made once -----------------------------------
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  rootfs="$WORK/rootfs"
  rm -rf "$rootfs"
  mkdir -p "$WORK"
  say "debootstrap $SUITE into $rootfs (a few minutes)"
  debootstrap --variant=minbase --include=ca-certificates,python3 "$SUITE" "$rootfs" "$MIRROR" \
    >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
  rm -rf "$rootfs"
  say "imported $IMAGE"
fi

# --- one container per role ------------------------------------------------------------
# Inside: the sources copied to /vagrant (as on the VMs), provision.sh twice, then checks.
# shellcheck disable=SC2016
inside='
set -euo pipefail
if compgen -G "/host-ca/*.crt" >/dev/null; then
  # The host trusts local CAs (a TLS-inspecting proxy, say): so must pip in here.
  cp /host-ca/*.crt /usr/local/share/ca-certificates/
  update-ca-certificates >/dev/null 2>&1
  export PIP_CERT=/etc/ssl/certs/ca-certificates.crt
fi
mkdir /vagrant
tar -C /src --exclude=./.git --exclude=./.venv --exclude=./.run --exclude=./.tools -cf - . | tar -C /vagrant -xf -
echo "--- first run"
bash /vagrant/scripts/provision.sh "$ROLE"
echo "--- second run"
bash /vagrant/scripts/provision.sh "$ROLE" | tee /tmp/second.log
echo "--- checks"
fail() { echo "CHECK FAILED: $*"; exit 1; }
/usr/local/bin/consul version | head -1
/usr/local/bin/consul validate /etc/consul.d || fail "consul validate /etc/consul.d"
/usr/local/bin/operator validate /vagrant/manifests/simple.yaml || fail "operator validate"
[[ $(stat -c %a /etc/default/$UNIT) == 600 ]] || fail "/etc/default/$UNIT is not 0600"
[[ -f /etc/systemd/system/consul.service && -f /etc/systemd/system/$UNIT.service ]] || fail "units missing"
id consul >/dev/null || fail "no consul user"
[[ $(stat -c %U /var/lib/consul) == consul ]] || fail "/var/lib/consul not owned by consul"
# Secured by default: TLS, gossip key, ACLs; every secret 0600 and its service user's.
for f in /etc/consul.d/tls.hcl /etc/consul.d/acl.hcl /etc/consul.d/tls/ca.pem /etc/consul.d/tls/server.pem; do
  [[ -f $f ]] || fail "$f missing"
done
[[ $(stat -c "%a %U" /etc/consul.d/tls/server-key.pem) == "600 consul" ]] || fail "server key not 0600 consul"
[[ $(stat -c "%a %U" /etc/consul.d/encrypt.hcl) == "600 consul" ]] || fail "encrypt.hcl not 0600 consul"
user=root; [[ $ROLE == app ]] && user=consul-operator
[[ $(stat -c "%a %U" /etc/consul-operator/client-key.pem) == "600 $user" ]] || fail "client key not 0600 $user"
grep -q "^CONSUL_HTTP_ADDR=https://127.0.0.1:8501$" /etc/default/$UNIT || fail "the daemon does not use HTTPS"
grep -q "^CONSUL_CACERT=/etc/consul-operator/ca.pem$" /etc/default/$UNIT || fail "no CONSUL_CACERT"
if [[ $ROLE == app ]]; then
  id -nG consul-operator | grep -qw docker || fail "consul-operator is not in group docker"
  grep -q "^OPERATOR_ADVERTISE=192.168.50.101$" /etc/default/$UNIT || fail "advertise address not set"
else
  [[ ! -e /etc/nginx/sites-enabled/default ]] || fail "NGINX default site still enabled"
  /usr/sbin/nginx -t -q || fail "nginx -t"
fi
grep -q "installed /" /tmp/second.log && fail "the second run installed something again"
grep -q "installing the operator" /tmp/second.log && fail "the second run reinstalled the operator"
echo "ALL CHECKS PASSED ($ROLE)"
'
# Debian's folder of local CAs, when the host has any: networks that inspect TLS need them.
ca_mount=()
compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null \
  && ca_mount=(-v /usr/local/share/ca-certificates:/host-ca:ro)
for role in app lb; do
  case $role in app) node=host-1 unit=operator-agent ;; lb) node=host-3 unit=operator-lb ;; esac
  log="$WORK/$role.log"
  mkdir -p "$WORK"
  say "provisioning a clean $SUITE as $node ($role); log in $log"
  if ! docker run --rm --hostname "$node" -v "$ROOT:/src:ro" "${ca_mount[@]}" -e ROLE="$role" -e UNIT="$unit" \
      -e NODE_NAME="$node" "$IMAGE" bash -c "$inside" >"$log" 2>&1; then
    tail -30 "$log" >&2
    die "provisioning as $role failed"
  fi
  grep "ALL CHECKS PASSED" "$log"
done
say "passed"
