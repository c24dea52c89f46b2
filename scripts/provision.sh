#!/usr/bin/env bash
# Installs one host of the real topology (the Vagrantfile's VMs, or any Debian 12
# host): the packages, consul and the operator, then the configuration and the
# systemd units of deploy/. Idempotent: run it again after changing the sources
# or deploy/, and it installs what changed and restarts only what needs it.
#
# usage: provision.sh app|lb
#
#   app  an app host: Docker, a Consul server, operator-agent.service
#   lb   a load-balancer host: NGINX, a Consul server (or client), operator-lb.service,
#        and keepalived holding the floating address with the other LB hosts
#
# The packages and consul come from scripts/deps.sh, the same script as
# `make deps`, told to install only a host's runtime packages and to put
# consul in $PREFIX/bin where the units expect it.
#
# Environment:
#   NODE_NAME           this host's Consul node name (default: the short host name)
#   CONSUL_HOST_CONFIG  its Consul settings (default: deploy/consul/hosts/$NODE_NAME.hcl)
#   NODE_ADDR           app hosts: the address containers are published on and
#                       registered with (default: bind_addr of the host config)
#   OPERATOR_CLUSTER    the operator cluster's name written into the settings file
#                       (default: the file's, "default"); letters, digits, '.', '_', '-'
#
# The floating address (lb hosts; docs/deploy.md, "Two load balancers"): keepalived
# (VRRP, unicast between the LB hosts) puts it on the healthy LB host that holds it;
# without LB_FLOATING_ADDRESS keepalived is installed but not configured (one LB).
#   LB_FLOATING_ADDRESS the address clients use, with its prefix: 192.168.50.100/24
#   LB_PEERS            every LB host's address, space-separated (this host's own is
#                       skipped): VRRP adverts go to these only, and only theirs count
#   LB_PRIORITY         1..254 (default 100). Equal on every LB host (the default): the
#                       address stays where it is when a failed host returns. A higher
#                       one makes this host the preferred, which takes it back when healthy
#   LB_ROUTER_ID        VRRP virtual router id, 1..255 (default 51): one per pair on a
#                       network segment
#   LB_INTERFACE        where the address goes (default: the interface of NODE_ADDR)
#
# Secure by default (docs/deploy.md, "Hardening"); each is turned off only by
# its own explicit 0:
#   CONSUL_TLS          1 (default): TLS with the cluster's CA, deploy/consul/tls.hcl:
#                       HTTPS only on :8501 (plain HTTP off), verify_incoming,
#                       verify_outgoing, verify_server_hostname; the operator's
#                       daemon gets a client certificate and CONSUL_CACERT,
#                       CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY in its settings file.
#                       0: plain HTTP on :8500, no TLS.
#   CONSUL_GOSSIP       1 (default): gossip encryption, the key in
#                       /etc/consul.d/encrypt.hcl (0600, consul). 0: none.
#   CONSUL_ACL          1 (default): deploy/consul/acl.hcl (ACLs on, default deny);
#                       then bootstrap once, see docs/deploy.md. 0: ACLs off.
#   CONSUL_SECRETS      the CA, gossip key and certificates of scripts/consul-secrets.sh
#                       (default: .secrets/ of the sources; made here, for this host,
#                       when missing and the CA key is there)
#   PREFIX              consul and the operator command go to $PREFIX/bin (/usr/local)
#   OPERATOR_HOME       the operator's virtualenv (/opt/consul-operator)
#   NO_START            1: install everything, start nothing (also the case when
#                       systemd is not running, e.g. in a container)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROLE=${1:-}
case $ROLE in
  app) UNIT=operator-agent ;;
  lb) UNIT=operator-lb ;;
  *) echo "usage: $0 app|lb" >&2; exit 2 ;;
esac
NODE_NAME=${NODE_NAME:-$(hostname -s)}
CONSUL_HOST_CONFIG=${CONSUL_HOST_CONFIG:-$ROOT/deploy/consul/hosts/$NODE_NAME.hcl}
CONSUL_ACL=${CONSUL_ACL:-1}
CONSUL_TLS=${CONSUL_TLS:-1}
CONSUL_GOSSIP=${CONSUL_GOSSIP:-1}
CONSUL_SECRETS=${CONSUL_SECRETS:-$ROOT/.secrets}
PREFIX=${PREFIX:-/usr/local}
OPERATOR_HOME=${OPERATOR_HOME:-/opt/consul-operator}
NO_START=${NO_START:-0}

say() { printf '[provision %s] %s\n' "$NODE_NAME" "$*"; }
die() { printf '[provision %s] ERROR: %s\n' "$NODE_NAME" "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root"
[[ -f $CONSUL_HOST_CONFIG ]] || die "no Consul host config $CONSUL_HOST_CONFIG (copy one of deploy/consul/hosts/ and set CONSUL_HOST_CONFIG)"
if [[ -z ${NODE_ADDR:-} ]]; then
  NODE_ADDR=$(sed -n 's/^bind_addr *= *"\([^"]*\)".*/\1/p' "$CONSUL_HOST_CONFIG")
fi
[[ -n $NODE_ADDR ]] || die "no NODE_ADDR and no bind_addr in $CONSUL_HOST_CONFIG"
OPERATOR_CLUSTER=${OPERATOR_CLUSTER:-default}
[[ $OPERATOR_CLUSTER =~ ^[A-Za-z0-9._-]+$ ]] || die "OPERATOR_CLUSTER '$OPERATOR_CLUSTER': letters, digits, '.', '_', '-' only"
for flag in CONSUL_ACL CONSUL_TLS CONSUL_GOSSIP; do
  [[ ${!flag} == 0 || ${!flag} == 1 ]] || die "$flag must be 0 or 1, got '${!flag}'"
done
LB_FLOATING_ADDRESS=${LB_FLOATING_ADDRESS:-}
LB_PEERS=${LB_PEERS:-}
LB_PRIORITY=${LB_PRIORITY:-100}
LB_ROUTER_ID=${LB_ROUTER_ID:-51}
LB_INTERFACE=${LB_INTERFACE:-}
ipv4='([0-9]{1,3}\.){3}[0-9]{1,3}'
if [[ -n $LB_FLOATING_ADDRESS ]]; then
  [[ $ROLE == lb ]] || die "LB_FLOATING_ADDRESS is for the lb role only"
  [[ $LB_FLOATING_ADDRESS =~ ^$ipv4/[0-9]{1,2}$ ]] \
    || die "LB_FLOATING_ADDRESS must be an IPv4 address with its prefix (192.168.50.100/24), got '$LB_FLOATING_ADDRESS'"
  for peer in $LB_PEERS; do
    [[ $peer =~ ^$ipv4$ ]] || die "LB_PEERS: '$peer' is not an IPv4 address"
  done
  [[ $LB_PRIORITY =~ ^[0-9]+$ ]] && ((LB_PRIORITY >= 1 && LB_PRIORITY <= 254)) \
    || die "LB_PRIORITY must be 1..254, got '$LB_PRIORITY'"
  [[ $LB_ROUTER_ID =~ ^[0-9]+$ ]] && ((LB_ROUTER_ID >= 1 && LB_ROUTER_ID <= 255)) \
    || die "LB_ROUTER_ID must be 1..255, got '$LB_ROUTER_ID'"
  [[ -z $LB_INTERFACE || $LB_INTERFACE =~ ^[A-Za-z0-9._-]+$ ]] || die "LB_INTERFACE: '$LB_INTERFACE' is not an interface name"
fi
systemd_runs() { [[ -d /run/systemd/system ]]; }

# --- packages and consul: the same script as `make deps` --------------------------
if [[ $ROLE == app ]]; then
  packages="docker.io busybox-static iproute2 curl ca-certificates python3-venv"
  steps="packages consul"
  # The engine: started by its package under systemd; deps.sh checks that it answers.
  systemd_runs && steps="$steps engine"
else
  packages="nginx keepalived iproute2 curl procps ca-certificates python3-venv"
  steps="packages consul"
fi
DEPS_STEPS=$steps DEPS_PACKAGES=$packages PREFIX=$PREFIX bash "$ROOT/scripts/deps.sh"

# changed FILE...: set by install_file when it wrote something new.
CHANGED=()
# install_file MODE SRC DEST [OWNER:GROUP]: install SRC as DEST when it differs.
install_file() {
  local mode=$1 src=$2 dest=$3 owner=${4:-root:root}
  if [[ -f $dest ]] && cmp -s "$src" "$dest"; then
    chmod "$mode" "$dest"; chown "$owner" "$dest"
    return
  fi
  install -D -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$src" "$dest"
  CHANGED+=("$dest")
  say "installed $dest"
}

# --- the operator: its own virtualenv, the command in $PREFIX/bin ------------------
src_hash=$(cd "$ROOT" && find pyproject.toml consul_operator -type f \( -name '*.py' -o -name '*.j2' -o -name '*.toml' \) \
  -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
operator_changed=0
if [[ ! -x $OPERATOR_HOME/bin/operator || $(cat "$OPERATOR_HOME/.source" 2>/dev/null) != "$src_hash" ]]; then
  say "installing the operator into $OPERATOR_HOME (sources $src_hash)"
  [[ -x $OPERATOR_HOME/bin/python ]] || python3 -m venv "$OPERATOR_HOME"
  # A copy of the sources: pip builds in the tree, and the tree may be a shared folder.
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  cp -r "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/consul_operator" "$build/"
  "$OPERATOR_HOME/bin/pip" install -q "$build" >/dev/null
  # Same version number, new code: replace the package itself.
  "$OPERATOR_HOME/bin/pip" install -q --no-deps --force-reinstall "$build" >/dev/null
  echo "$src_hash" >"$OPERATOR_HOME/.source"
  operator_changed=1
fi
ln -sfn "$OPERATOR_HOME/bin/operator" "$PREFIX/bin/operator"
install_file 0644 "$ROOT/docs/deploy.md" /usr/local/share/doc/consul-operator/deploy.md

# --- users --------------------------------------------------------------------------
id consul >/dev/null 2>&1 \
  || useradd --system --user-group --home-dir /var/lib/consul --no-create-home --shell /usr/sbin/nologin consul
if [[ $ROLE == app ]]; then
  getent group docker >/dev/null || groupadd --system docker
  id consul-operator >/dev/null 2>&1 \
    || useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin consul-operator
  # The Docker socket's group: root-equivalent on this host, and exactly what the agent needs.
  usermod -a -G docker consul-operator
fi

# --- Consul -------------------------------------------------------------------------
install -d -o consul -g consul -m 0750 /var/lib/consul
install -d -o root -g consul -m 0750 /etc/consul.d
install_file 0640 "$ROOT/deploy/consul/consul.hcl" /etc/consul.d/consul.hcl root:consul
install_file 0640 "$CONSUL_HOST_CONFIG" /etc/consul.d/host.hcl root:consul
if [[ $CONSUL_ACL == 1 ]]; then
  install_file 0640 "$ROOT/deploy/consul/acl.hcl" /etc/consul.d/acl.hcl root:consul
elif [[ -f /etc/consul.d/acl.hcl ]]; then
  # Never turn ACLs off behind someone's back: remove the file by hand to do that.
  say "keeping /etc/consul.d/acl.hcl (ACLs stay on; CONSUL_ACL=1 is implied)"
fi
# The daemon's user: it owns its client key (the LB runs as root).
SERVICE_USER=root
[[ $ROLE == app ]] && SERVICE_USER=consul-operator
if [[ $CONSUL_TLS == 1 || $CONSUL_GOSSIP == 1 ]]; then
  CONSUL="$PREFIX/bin/consul" bash "$ROOT/scripts/consul-secrets.sh" "$CONSUL_SECRETS" "$NODE_NAME=$NODE_ADDR" \
    | while IFS= read -r line; do say "$line"; done
fi
if [[ $CONSUL_TLS == 1 ]]; then
  install -d -o root -g consul -m 0750 /etc/consul.d/tls
  install_file 0644 "$CONSUL_SECRETS/consul-agent-ca.pem" /etc/consul.d/tls/ca.pem root:consul
  install_file 0644 "$CONSUL_SECRETS/$NODE_NAME-server.pem" /etc/consul.d/tls/server.pem root:consul
  install_file 0600 "$CONSUL_SECRETS/$NODE_NAME-server-key.pem" /etc/consul.d/tls/server-key.pem consul:consul
  install_file 0640 "$ROOT/deploy/consul/tls.hcl" /etc/consul.d/tls.hcl root:consul
  # The operator's daemon: the CA and its own client certificate.
  install -d -o root -g "$SERVICE_USER" -m 0750 /etc/consul-operator
  install_file 0644 "$CONSUL_SECRETS/consul-agent-ca.pem" /etc/consul-operator/ca.pem root:root
  install_file 0644 "$CONSUL_SECRETS/$NODE_NAME-client.pem" /etc/consul-operator/client.pem root:root
  install_file 0600 "$CONSUL_SECRETS/$NODE_NAME-client-key.pem" /etc/consul-operator/client-key.pem \
    "$SERVICE_USER:$SERVICE_USER"
elif [[ -f /etc/consul.d/tls.hcl ]]; then
  say "keeping /etc/consul.d/tls.hcl (TLS stays on; CONSUL_TLS=1 is implied): remove it by hand to turn TLS off"
  CONSUL_TLS=1
fi
if [[ $CONSUL_GOSSIP == 1 ]]; then
  # Written once: `consul keyring` rotates the key later (docs/deploy.md), and
  # Consul then keeps the keyring in its data directory.
  if [[ ! -f /etc/consul.d/encrypt.hcl ]]; then
    (umask 077; printf 'encrypt = "%s"\n' "$(<"$CONSUL_SECRETS/gossip.key")" >/etc/consul.d/encrypt.hcl)
    CHANGED+=(/etc/consul.d/encrypt.hcl)
    say "installed /etc/consul.d/encrypt.hcl"
  fi
  chown consul:consul /etc/consul.d/encrypt.hcl
  chmod 0600 /etc/consul.d/encrypt.hcl
elif [[ -f /etc/consul.d/encrypt.hcl ]]; then
  say "keeping /etc/consul.d/encrypt.hcl (gossip encryption stays on): remove it by hand to turn it off"
fi
out=$("$PREFIX/bin/consul" validate /etc/consul.d 2>&1) || die "consul validate /etc/consul.d failed: $out"
install_file 0644 "$ROOT/deploy/systemd/consul.service" /etc/systemd/system/consul.service

# --- the role -----------------------------------------------------------------------
install_file 0644 "$ROOT/deploy/systemd/$UNIT.service" "/etc/systemd/system/$UNIT.service"
envfile=/etc/default/$UNIT
if [[ ! -f $envfile ]]; then
  # Written once: it is where the host's token goes, and a later run keeps it.
  tmp=$(mktemp)
  sed -e "s/^OPERATOR_ADVERTISE=.*/OPERATOR_ADVERTISE=$NODE_ADDR/" \
    -e "s/^OPERATOR_METRICS=.*/OPERATOR_METRICS=$NODE_ADDR:9810/" \
    -e "s/^OPERATOR_CLUSTER=.*/OPERATOR_CLUSTER=$OPERATOR_CLUSTER/" \
    "$ROOT/deploy/env/$UNIT" >"$tmp"
  install_file 0600 "$tmp" "$envfile" "$SERVICE_USER:$SERVICE_USER"
  rm -f "$tmp"
fi
# set_env KEY VALUE: the settings file's KEY is VALUE (replaced, or added).
set_env() {
  if grep -q "^$1=$2\$" "$envfile"; then return; fi
  if grep -q "^$1=" "$envfile"; then
    sed -i "s|^$1=.*|$1=$2|" "$envfile"
  else
    printf '%s=%s\n' "$1" "$2" >>"$envfile"
  fi
  CHANGED+=("$envfile:$1")
  say "$envfile: $1=$2"
}
if [[ $CONSUL_TLS == 1 ]]; then
  # Our own Consul agent over HTTPS, verified with the cluster's CA, with our client certificate.
  set_env CONSUL_HTTP_ADDR https://127.0.0.1:8501
  set_env CONSUL_CACERT /etc/consul-operator/ca.pem
  set_env CONSUL_CLIENT_CERT /etc/consul-operator/client.pem
  set_env CONSUL_CLIENT_KEY /etc/consul-operator/client-key.pem
fi
chown "$SERVICE_USER:$SERVICE_USER" "$envfile"
chmod 0600 "$envfile"
# keepalived_config: the floating address (LB_*), keepalived's settings and checks.
keepalived_config() {
  local iface=$LB_INTERFACE listen metrics peers="" peer tmp
  if [[ -z $iface ]]; then
    iface=$(ip -o -4 addr show | awk -v a="$NODE_ADDR" 'index($4, a "/") == 1 {print $2; exit}')
    [[ -n $iface ]] || die "no interface has $NODE_ADDR: set LB_INTERFACE"
  fi
  # What the checks connect to: the settings file's listen and metrics addresses,
  # the wildcard as the loopback.
  listen=$(sed -n 's/^OPERATOR_LISTEN=//p' "$envfile" | tail -1)
  metrics=$(sed -n 's/^OPERATOR_METRICS=//p' "$envfile" | tail -1)
  listen=${listen:-0.0.0.0:80}
  metrics=${metrics:-127.0.0.1:9810}
  listen=${listen/#0.0.0.0:/127.0.0.1:}
  metrics=${metrics/#0.0.0.0:/127.0.0.1:}
  for peer in $LB_PEERS; do
    [[ $peer == "$NODE_ADDR" ]] || peers+="    $peer"$'\n'
  done
  [[ -n $peers ]] || die "LB_PEERS names no LB host but this one: the floating address needs a peer"
  # The checks run as this user (keepalived's default script user), never as root.
  id keepalived_script >/dev/null 2>&1 \
    || useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin keepalived_script
  install_file 0755 "$ROOT/deploy/keepalived/consul-has-leader" /usr/local/lib/consul-operator/consul-has-leader
  tmp=$(mktemp)
  cat >"$tmp" <<KEEPALIVED
# /etc/keepalived/keepalived.conf of $NODE_NAME: written by scripts/provision.sh lb from
# LB_FLOATING_ADDRESS, LB_PEERS, LB_PRIORITY, LB_ROUTER_ID (docs/deploy.md, "Two load
# balancers"). Run provision.sh again to change it; edits here are overwritten.
global_defs {
  router_id $NODE_NAME
  # VRRP version 3: adverts every half second (version 2 counts whole seconds).
  vrrp_version 3
  enable_script_security
  script_user keepalived_script
}

# NGINX answers on its listen address (any HTTP status: it is up). One failure puts
# this host in FAULT: the address goes to the peer at once, whatever the priorities.
vrrp_script nginx {
  script "/usr/bin/curl -s -o /dev/null --max-time 1 http://$listen/"
  interval 1
  timeout 2
  fall 1
  rise 2
}

# operator lb's /healthz (its loop passes, NGINX accepts), Consul left to the check
# below, which tells a restart of this host's agent from a cut. Two failures lower
# the priority by 50: a healthy peer (higher now) takes the address; when both fail,
# the holder keeps it and NGINX serves the last good config.
vrrp_script operator_lb {
  script "/usr/bin/curl -fs -o /dev/null --max-time 1 http://$metrics/healthz?exclude=consul"
  interval 1
  timeout 2
  fall 2
  rise 2
  weight -50
}

# This host's Consul knows a leader: it is on the majority's side (or it restarted in
# the last 15 s). Two failures lower the priority by 50: a host cut off from the others
# yields to its peer when the cut heals (both held the address meanwhile). Root: it
# reads the client key and asks systemd about the consul unit.
vrrp_script consul {
  script "/usr/local/lib/consul-operator/consul-has-leader"
  user root
  interval 1
  timeout 2
  fall 2
  rise 2
  weight -50
}

vrrp_instance consul_operator_lb {
  # Every host starts as a backup: the first to find no master takes the address.
  state BACKUP
  interface $iface
  virtual_router_id $LB_ROUTER_ID
  # Equal on every LB host (the default): a returning host does not take the address back.
  priority $LB_PRIORITY
  advert_int 0.5
  # Unicast VRRP: no multicast needed; adverts from other sources are ignored.
  unicast_src_ip $NODE_ADDR
  unicast_peer {
$peers  }
  check_unicast_src
  virtual_ipaddress {
    $LB_FLOATING_ADDRESS dev $iface
  }
  track_script {
    nginx
    operator_lb
    consul
  }
}
KEEPALIVED
  install_file 0644 "$tmp" /etc/keepalived/keepalived.conf
  rm -f "$tmp"
  # Stopped before NGINX and operator-lb at shutdown (started after them): a host
  # that goes down hands the address over before it stops serving.
  tmp=$(mktemp)
  printf '%s\n' "# Installed by scripts/provision.sh lb: the floating address is given up before NGINX stops." \
    "[Unit]" "After=nginx.service operator-lb.service" >"$tmp"
  install_file 0644 "$tmp" /etc/systemd/system/keepalived.service.d/consul-operator.conf
  rm -f "$tmp"
  # operator lb exports whether this host holds the address, and status shows it.
  set_env OPERATOR_FLOATING_ADDRESS "${LB_FLOATING_ADDRESS%/*}"
}
if [[ $ROLE == app ]]; then
  # No registry: the demo image is built on every app host.
  if docker info >/dev/null 2>&1; then
    bash "$ROOT/images/hello/build.sh"
  else
    say "no Docker engine answers here: hello:local not built (run images/hello/build.sh later)"
  fi
else
  # Debian's default site is the default server on :80; ours replaces it.
  if [[ -e /etc/nginx/sites-enabled/default ]]; then
    rm -f /etc/nginx/sites-enabled/default
    CHANGED+=(/etc/nginx/sites-enabled/default)
    say "removed NGINX's default site"
  fi
  install -d -m 0755 /etc/nginx/conf.d
  if [[ -n $LB_FLOATING_ADDRESS ]]; then
    keepalived_config
  elif [[ -f /etc/keepalived/keepalived.conf ]]; then
    say "keeping /etc/keepalived/keepalived.conf (no LB_FLOATING_ADDRESS given): remove it by hand for one LB"
  fi
fi

# --- start --------------------------------------------------------------------------
if [[ $NO_START == 1 ]] || ! systemd_runs; then
  say "installed; not starting anything (NO_START=1 or no systemd)"
  exit 0
fi
systemctl daemon-reload
systemctl enable --quiet consul.service "$UNIT.service"
changed=" ${CHANGED[*]} "
if [[ $changed == *" /etc/consul.d/"* ]] && systemctl is-active --quiet consul.service; then
  systemctl restart consul.service  # one host at a time: the other servers keep the quorum
  say "consul restarted (configuration changed)"
else
  systemctl start consul.service
fi
if [[ $ROLE == lb ]]; then
  systemctl enable --quiet --now nginx.service
  [[ $changed == *" /etc/nginx/"* ]] && systemctl reload nginx.service
fi
if ((operator_changed)) || [[ $changed == *" /etc/systemd/system/$UNIT.service "* || $changed == *" $envfile:"* ]]; then
  # SIGTERM leaves every container running; back within --lost-grace, nothing moves.
  systemctl restart "$UNIT.service"
  say "$UNIT restarted"
else
  systemctl start "$UNIT.service"
fi
running="consul.service $UNIT.service"
if [[ $ROLE == lb && -s /etc/keepalived/keepalived.conf ]]; then
  # After NGINX and the daemon: it takes the address only once its checks pass.
  systemctl enable --quiet keepalived.service
  if [[ $changed == *" /etc/keepalived/"* || $changed == *" /etc/systemd/system/keepalived.service.d/"* ]]; then
    systemctl restart keepalived.service  # a holder hands the address to its peer meanwhile
    say "keepalived restarted (configuration changed)"
  else
    systemctl start keepalived.service
  fi
  running+=" keepalived.service"
fi
# shellcheck disable=SC2086
say "done: ${running//.service/} run ($(systemctl is-active $running | tr '\n' ' '))"
