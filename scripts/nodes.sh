#!/usr/bin/env bash
# The node staging environment: the three VMs of the Vagrantfile, as close as this
# machine allows without a hypervisor. Each host is a container with systemd as
# PID 1 (the way kind runs Kubernetes nodes), on a Docker network of its own,
# with its own address, its own systemd and, on the app hosts, its own Docker
# engine; each is provisioned by scripts/provision.sh ROLE, the Vagrantfile's
# script, and runs the shipped units of deploy/systemd/.
#
#   host-1  <subnet>.11  app: Docker engine, Consul server, operator-agent.service
#   host-2  <subnet>.12  app: Docker engine, Consul server, operator-agent.service
#   host-3  <subnet>.13  lb:  Consul server, operator-lb.service, NGINX on :80, keepalived
#   host-4  <subnet>.14  lb:  Consul client, operator-lb.service, NGINX on :80, keepalived
#   <subnet>.100         the floating address: keepalived puts it on host-3 or host-4
#                        (unicast VRRP between them), on the node's eth0
#
# usage: nodes.sh build | up | down | status | destroy
#
#   build    the node image, once (debootstrap of Debian 12 with systemd and the
#            packages of both roles, then provision.sh's package, consul and
#            operator steps, committed): consul-operator-node:bookworm
#   up       build when the image is missing, then the network, the three nodes,
#            provision.sh in each; returns once Consul has a leader, an agent leads,
#            every daemon's /healthz answers 200 and one LB host holds the floating
#            address. `up` twice is harmless.
#   down     removes exactly what `up` made, by this environment's label: the node
#            containers (their engines' containers go with them), their volumes,
#            the network, and $RUN_DIR. The image stays (it is `build`'s, a cache).
#   status   each node's systemd state and the units' state
#   destroy  `down`, then the images `build` made
#
# Environment:
#   NODES_NAME    the environment's name: its containers, volumes and network carry
#                 it, and it is the operator cluster's name (default: nodes)
#   NODES_SUBNET  a /24 of 198.18.0.0/15 for its network (default: 198.18.1.0/24);
#                 the hosts are .11 to .14, the floating address .100, the machine
#                 reaches them through .1
#   RUN_DIR       per-node files: generated Consul host configs, each engine's
#                 socket (default: .run/$NODES_NAME)
#   DEBIAN_MIRROR for the build (default: http://deb.debian.org/debian)
#   NODES_SECURE  1: provisioned secured, provision.sh's defaults (CONSUL_TLS,
#                 CONSUL_GOSSIP, CONSUL_ACL): the CA, gossip key and certificates
#                 made here by scripts/consul-secrets.sh in $RUN_DIR/secrets and
#                 copied into each node's /vagrant/.secrets without the CA key (as
#                 the Vagrantfile's rsync does); ACLs bootstrapped from here with
#                 scripts/acl-bootstrap.sh (tokens in $RUN_DIR/acl), each daemon's
#                 token written into its settings file through stdin, the daemon
#                 restarted. 0 (default): provision.sh with CONSUL_TLS=0
#                 CONSUL_GOSSIP=0 CONSUL_ACL=0, plain HTTP on :8500 (what the
#                 chaos and partition tests drive)
#   NODES_IMAGE   the provisioned image's tag (default: consul-operator-node:bookworm)
#
# What the hosts need beyond a plain container (checked on a cgroup v1 machine
# without CAP_SYS_RESOURCE, where --privileged fails "unable to apply caps"):
# every capability but SYS_RESOURCE, no seccomp or AppArmor profile, the cgroup
# tree writable, tmpfs on /run and /run/lock, container=docker, and a volume for
# /var/lib/docker (overlay2 cannot stack on the node's own overlay root).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NAME=${NODES_NAME:-nodes}
SUBNET=${NODES_SUBNET:-198.18.1.0/24}
RUN_DIR=${RUN_DIR:-$ROOT/.run/$NAME}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_IMAGE=consul-operator-node-base:bookworm
IMAGE=${NODES_IMAGE:-consul-operator-node:bookworm}
SECURE=${NODES_SECURE:-0}
LABEL=consul-operator.nodes
NETWORK=co-nodes-$NAME
HOSTS=(host-1 host-2 host-3 host-4)
ROLES=(app app lb lb)
BUILD_DIR="$ROOT/.run/node-image"

say() { printf '[nodes %s] %s\n' "$NAME" "$*"; }
die() { printf '[nodes %s] ERROR: %s\n' "$NAME" "$*" >&2; exit 1; }

[[ $SUBNET =~ ^198\.(18|19)\.([0-9]{1,3})\.0/24$ ]] || die "NODES_SUBNET must be a /24 of 198.18.0.0/15, got '$SUBNET'"
PREFIX3=${SUBNET%.0/24}
ADDRS=("$PREFIX3.11" "$PREFIX3.12" "$PREFIX3.13" "$PREFIX3.14")
FLOATING="$PREFIX3.100"
GATEWAY="$PREFIX3.1"

node() { echo "$NAME-$1"; }  # node HOST: its container's name
in_node() { local host=$1; shift; docker exec "$(node "$host")" "$@"; }

# --- build ------------------------------------------------------------------------------
# The Debian packages of both roles (scripts/provision.sh) and what systemd as PID 1
# and the partitions need; debootstrap resolves their dependencies.
PACKAGES=systemd,systemd-sysv,dbus,iproute2,iptables,procps,docker.io,busybox-static,nginx,keepalived,curl,ca-certificates,python3,python3-venv

# The sources, as the Vagrantfile's rsync synced folder has them: a one-way copy
# without this machine's build products.
sources() {
  tar -C "$ROOT" --exclude=./.git --exclude=./.venv --exclude=./.run --exclude=./.tools --exclude=./.secrets \
    --exclude=./.mypy_cache --exclude=./.ruff_cache --exclude=./.pytest_cache --exclude=__pycache__ -cf - .
}

# The host's local CAs (a TLS-inspecting proxy, say): the build's downloads need them.
ca_mount=()
compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null \
  && ca_mount=(-v /usr/local/share/ca-certificates:/host-ca:ro)

build_base() {
  docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && return
  [[ $(id -u) -eq 0 ]] || die "run as root (debootstrap)"
  if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  fi
  local rootfs="$BUILD_DIR/rootfs" started=$SECONDS
  rm -rf "$rootfs"; mkdir -p "$BUILD_DIR"
  say "debootstrap bookworm with systemd and the roles' packages (about a minute)"
  # Twice at most: a mirror behind a CDN has answered one run with a Release file its signature
  # did not match ("Invalid Release signature"), and the next with a good one.
  local attempt
  for attempt in 1 2; do
    debootstrap --variant=minbase --include="$PACKAGES" bookworm "$rootfs" "$MIRROR" \
      >"$BUILD_DIR/debootstrap.log" 2>&1 && break
    tail -20 "$BUILD_DIR/debootstrap.log" >&2
    [[ $attempt -eq 2 ]] && die "debootstrap failed"
    say "debootstrap failed; once more in 10 s"
    rm -rf "$rootfs"; sleep 10
  done
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  # No engine starts unless the host is an app host (`up` enables it there), and
  # nothing of a container's boot that cannot work in one.
  local unit
  for unit in docker.service docker.socket containerd.service; do
    rm -f "$rootfs"/etc/systemd/system/*.wants/"$unit"
  done
  ln -sf /dev/null "$rootfs/etc/systemd/system/getty@.service"
  ln -sf /dev/null "$rootfs/etc/systemd/system/systemd-firstboot.service"
  ln -sf /dev/null "$rootfs/etc/systemd/system/systemd-udevd.service"
  echo "node" >"$rootfs/etc/hostname"
  : >"$rootfs/etc/machine-id"
  tar -C "$rootfs" -c . | docker import \
    --change 'CMD ["/lib/systemd/systemd"]' \
    --change 'ENV container=docker' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  say "imported $BASE_IMAGE ($((SECONDS - started)) s)"
}

# The provisioned image: provision.sh of both roles run once with NO_START=1 (its
# packages, consul, the operator's virtualenv, users, units), then the files that
# belong to one host removed; `up` runs provision.sh again in each node, which
# then only writes that host's files and starts its units.
build() {
  build_base
  # Rebuilt when the scripts that make it changed (a source change alone is
  # installed by provision.sh at `up`, offline).
  local recipe old
  recipe=$(cat "$ROOT/scripts/nodes.sh" "$ROOT/scripts/deps.sh" "$ROOT/scripts/provision.sh" | sha256sum | cut -c1-16)
  old=$(docker image inspect -f '{{index .Config.Labels "consul-operator.recipe"}} {{.Id}}' "$IMAGE" 2>/dev/null || true)
  [[ ${old%% *} == "$recipe" ]] && { say "$IMAGE present"; return; }
  local started=$SECONDS name="$NAME-build-$$"
  mkdir -p "$BUILD_DIR"
  say "provisioning the image (consul, the operator's virtualenv)"
  # shellcheck disable=SC2016
  local inside='
set -euo pipefail
mkdir /vagrant && tar -C /vagrant -xf -
if compgen -G "/host-ca/*.crt" >/dev/null; then
  cp /host-ca/*.crt /usr/local/share/ca-certificates/
  update-ca-certificates >/dev/null 2>&1
fi
export PIP_CERT=/etc/ssl/certs/ca-certificates.crt
# The image is for every host: no secrets of a host in it (up secures each node).
export CONSUL_TLS=0 CONSUL_GOSSIP=0 CONSUL_ACL=0
NO_START=1 NODE_NAME=host-1 CONSUL_HOST_CONFIG=/vagrant/deploy/consul/hosts/host-1.hcl bash /vagrant/scripts/provision.sh app
NO_START=1 NODE_NAME=host-3 CONSUL_HOST_CONFIG=/vagrant/deploy/consul/hosts/host-3.hcl bash /vagrant/scripts/provision.sh lb
# A later source change is installed offline by `up` (no index, no build isolation):
# the build backend must be in the virtualenv.
/opt/consul-operator/bin/pip install -q "setuptools>=68" wheel
rm -f /etc/default/operator-agent /etc/default/operator-lb /etc/consul.d/host.hcl
# NGINX runs on the load balancer only (provision.sh lb enables it there).
systemctl disable --quiet nginx.service keepalived.service
rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /root/.cache /vagrant
'
  if ! sources | docker run -i --name "$name" "${ca_mount[@]}" "$BASE_IMAGE" bash -c "$inside" \
      >"$BUILD_DIR/provision.log" 2>&1; then
    docker rm -f "$name" >/dev/null 2>&1 || true
    tail -30 "$BUILD_DIR/provision.log" >&2
    die "provisioning the image failed (log: $BUILD_DIR/provision.log)"
  fi
  docker commit --change 'CMD ["/lib/systemd/systemd"]' --change "LABEL consul-operator.recipe=$recipe" \
    "$name" "$IMAGE" >/dev/null
  docker rm "$name" >/dev/null
  # The previous build, unless nodes still run it.
  [[ -n $old ]] && docker image rm "${old##* }" >/dev/null 2>&1 || true
  say "built $IMAGE ($((SECONDS - started)) s)"
}

# --- up -----------------------------------------------------------------------------------
host_hcl() {  # host-N ADDR: the node's /etc/consul.d/host.hcl
  local host=$1 addr=$2 client=""
  # The three app and first LB hosts are the servers; host-4 is a client agent.
  [[ $host == host-4 ]] && client=$'server = false\nbootstrap_expect = 0\n'
  cat <<EOF
# $host of the node environment $NAME (scripts/nodes.sh): installed as /etc/consul.d/host.hcl.
node_name = "$host"
${client}bind_addr = "$addr"
advertise_addr = "$addr"
client_addr = "127.0.0.1 $addr"
retry_join = ["${ADDRS[0]}", "${ADDRS[1]}", "${ADDRS[2]}"]
node_meta {
  staging = "$NAME"
}
EOF
}

network_up() {
  docker network inspect "$NETWORK" >/dev/null 2>&1 && return
  docker network create --label "$LABEL=$NAME" --subnet "$SUBNET" --gateway "$GATEWAY" "$NETWORK" >/dev/null
  say "network $NETWORK ($SUBNET)"
}

node_up() {  # INDEX
  local i=$1 host=${HOSTS[$1]} addr=${ADDRS[$1]}
  local c; c=$(node "$host")
  if [[ $(docker inspect -f '{{.State.Running}}' "$c" 2>/dev/null) == true ]]; then return; fi
  if docker inspect "$c" >/dev/null 2>&1; then docker start "$c" >/dev/null; return; fi
  mkdir -p "$RUN_DIR/$host"
  host_hcl "$host" "$addr" >"$RUN_DIR/$host/host.hcl"
  local engine=()
  if [[ ${ROLES[$i]} == app ]]; then
    docker volume create --label "$LABEL=$NAME" "$c-docker" >/dev/null
    engine=(-v "$c-docker:/var/lib/docker")
  fi
  docker run -d --name "$c" --hostname "$host" --label "$LABEL=$NAME" --stop-signal SIGRTMIN+3 \
    --network "$NETWORK" --ip "$addr" \
    --cap-add ALL --cap-drop SYS_RESOURCE \
    --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
    -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /run/lock -e container=docker \
    "${engine[@]}" -v "$RUN_DIR/$host:/srv/node" \
    "$IMAGE" >/dev/null
  say "started node $c ($addr)"
}

wait_booted() {  # host
  local c; c=$(node "$1") state=""
  for _ in $(seq 1 150); do
    state=$(docker exec "$c" systemctl is-system-running 2>/dev/null || true)
    [[ $state == running || $state == degraded ]] && break
    sleep 0.2
  done
  [[ $state == running ]] && return
  die "$c did not boot: systemctl is-system-running says '$state'; failed units: $(docker exec "$c" systemctl --failed --no-legend 2>&1 | tr '\n' ' ')"
}

# The app hosts' engine: enabled as the docker.io package does on a VM, and also
# listening on a socket the machine reaches (RUN_DIR/host-N/docker.sock) for the tests.
engine_up() {  # host
  local c; c=$(node "$1")
  docker exec -i "$c" bash -c '
set -e
mkdir -p /etc/systemd/system/docker.service.d
cat >/etc/systemd/system/docker.service.d/node-socket.conf <<EOF
[Service]
ExecStart=
ExecStart=/usr/sbin/dockerd -H fd:// -H unix:///srv/node/docker.sock --containerd=/run/containerd/containerd.sock
EOF
systemctl daemon-reload
systemctl enable --quiet --now containerd.service docker.socket docker.service
'
}

provision() {  # INDEX
  local i=$1 host=${HOSTS[$1]} addr=${ADDRS[$1]}
  # `vagrant rsync`: the sources to /vagrant.
  sources | docker exec -i "$(node "$host")" sh -c 'rm -rf /vagrant && mkdir /vagrant && tar -C /vagrant -xf -'
  if ((SECURE)); then
    tar -C "$RUN_DIR/secrets" --exclude=./consul-agent-ca-key.pem -cf - . \
      | docker exec -i "$(node "$host")" sh -c 'mkdir -m 0700 /vagrant/.secrets && tar -C /vagrant/.secrets -xf -'
  fi
  local floating=()
  [[ ${ROLES[$i]} == lb ]] && floating=(LB_FLOATING_ADDRESS="$FLOATING/24" LB_PEERS="${ADDRS[2]} ${ADDRS[3]}")
  in_node "$host" env NODE_NAME="$host" NODE_ADDR="$addr" OPERATOR_CLUSTER="$NAME" "${floating[@]}" \
    CONSUL_TLS="$SECURE" CONSUL_GOSSIP="$SECURE" CONSUL_ACL="$SECURE" \
    CONSUL_HOST_CONFIG=/srv/node/host.hcl PIP_NO_INDEX=1 PIP_NO_BUILD_ISOLATION=0 \
    bash /vagrant/scripts/provision.sh "${ROLES[$i]}" >"$RUN_DIR/$host/provision.log" 2>&1 \
    || { tail -20 "$RUN_DIR/$host/provision.log" >&2; die "provision.sh ${ROLES[$i]} failed on $host"; }
}

# The machine's consul, found as `make deps` finds it: on PATH, else .tools/bin (where deps puts
# it when none is on PATH). Only the secured environment's secrets and ACL bootstrap use it here.
# shellcheck source=scripts/consul-bin.sh
source "$ROOT/scripts/consul-bin.sh"

# Secured: the cluster's secrets, made here (the machine holds the CA key, the nodes do not).
secrets_up() {
  local pairs=() i
  for i in "${!HOSTS[@]}"; do pairs+=("${HOSTS[$i]}=${ADDRS[$i]}"); done
  CONSUL="$(consul_bin)" bash "$ROOT/scripts/consul-secrets.sh" "$RUN_DIR/secrets" "${pairs[@]}" >/dev/null
}

# Secured: ACLs bootstrapped from here, each daemon given its role's token through
# stdin (never a command line) and restarted; the containers keep running.
acl_up() {
  local pairs=() i host unit role
  for i in "${!HOSTS[@]}"; do pairs+=("${HOSTS[$i]}=https://${ADDRS[$i]}:8501"); done
  CONSUL="$(consul_bin)" CONSUL_CACERT="$RUN_DIR/secrets/consul-agent-ca.pem" \
    CONSUL_CLIENT_CERT="$RUN_DIR/secrets/host-1-client.pem" CONSUL_CLIENT_KEY="$RUN_DIR/secrets/host-1-client-key.pem" \
    bash "$ROOT/scripts/acl-bootstrap.sh" "$RUN_DIR/acl" "${pairs[@]}" >"$RUN_DIR/acl-bootstrap.log" 2>&1 \
    || { tail -20 "$RUN_DIR/acl-bootstrap.log" >&2; die "ACL bootstrap failed"; }
  for i in "${!HOSTS[@]}"; do
    host=${HOSTS[$i]}
    if [[ ${ROLES[$i]} == app ]]; then unit=operator-agent role=operator-agent; else unit=operator-lb role=operator-lb; fi
    # shellcheck disable=SC2016
    docker exec -i "$(node "$host")" sh -c 'IFS= read -r t; f=/etc/default/$1
      grep -v "^CONSUL_HTTP_TOKEN=" "$f" >"$f.new"; printf "CONSUL_HTTP_TOKEN=%s\n" "$t" >>"$f.new"
      cat "$f.new" >"$f"; rm -f "$f.new"; systemctl restart "$1.service"' sh "$unit" <"$RUN_DIR/acl/$role.token"
  done
}

wait_healthy() {  # host addr
  local i
  for i in $(seq 1 300); do
    curl -fsS --max-time 1 "http://$2:9810/healthz" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "$1 is not healthy after 60 s: $(curl -sS --max-time 2 "http://$2:9810/healthz" 2>&1 | tr '\n' ' ')"
}

holder() {  # the LB hosts that hold the floating address, space-separated
  local i found=()
  for i in "${!HOSTS[@]}"; do
    [[ ${ROLES[$i]} == lb ]] || continue
    docker exec "$(node "${HOSTS[$i]}")" ip -o -4 addr show 2>/dev/null | grep -q " $FLOATING/" && found+=("${HOSTS[$i]}")
  done
  echo "${found[*]}"
}

wait_floating() {
  local held=""
  for _ in $(seq 1 150); do
    held=$(holder)
    [[ -n $held && $held != *" "* ]] && return 0
    sleep 0.2
  done
  die "the floating address $FLOATING: held by '${held:-no LB host}' after 30 s, not by one; keepalived: $(docker exec "$(node host-3)" journalctl -u keepalived --no-pager -n 20 2>&1 | tr '\n' ' ')"
}

cmd_up() {
  local started=$SECONDS i pids=()
  build
  mkdir -p "$RUN_DIR"
  network_up
  for i in "${!HOSTS[@]}"; do node_up "$i"; done
  for h in "${HOSTS[@]}"; do wait_booted "$h"; done
  for i in 0 1; do engine_up "${HOSTS[$i]}"; done
  # The three at once: each Consul server waits for the other two (bootstrap_expect = 3).
  ((SECURE)) && secrets_up
  for i in "${!HOSTS[@]}"; do provision "$i" & pids+=($!); done
  for i in "${!HOSTS[@]}"; do wait "${pids[$i]}" || die "provisioning ${HOSTS[$i]} failed"; done
  local leader="" api="http://${ADDRS[0]}:8500" curl_tls=()
  if ((SECURE)); then
    acl_up
    api="https://${ADDRS[0]}:8501"
    curl_tls=(--cacert "$RUN_DIR/secrets/consul-agent-ca.pem" --cert "$RUN_DIR/secrets/host-1-client.pem"
      --key "$RUN_DIR/secrets/host-1-client-key.pem" -H "@$RUN_DIR/acl/management.header")
  fi
  for _ in $(seq 1 300); do
    leader=$(curl -fsS --max-time 1 "${curl_tls[@]}" "$api/v1/kv/operator/leader" 2>/dev/null | grep -o '"Session":"[^"]' || true)
    [[ -n $leader ]] && break
    sleep 0.2
  done
  [[ -n $leader ]] || die "no operator leader after 60 s"
  for i in "${!HOSTS[@]}"; do wait_healthy "${HOSTS[$i]}" "${ADDRS[$i]}"; done
  wait_floating
  say "up in $((SECONDS - started)) s: Consul on ${ADDRS[*]} (${api%%:*} :${api##*:}), agents of host-1 and host-2, NGINX on http://${ADDRS[2]}/ and http://${ADDRS[3]}/, the floating address http://$FLOATING/ on $(holder)"
}

cmd_down() {
  local ids
  ids=$(docker ps -aq --filter "label=$LABEL=$NAME")
  # shellcheck disable=SC2086
  [[ -n $ids ]] && docker rm -f $ids >/dev/null && say "removed nodes: $(echo $ids | wc -w)"
  ids=$(docker volume ls -q --filter "label=$LABEL=$NAME")
  # shellcheck disable=SC2086
  [[ -n $ids ]] && docker volume rm $ids >/dev/null && say "removed volumes: $(echo $ids | wc -w)"
  ids=$(docker network ls -q --filter "label=$LABEL=$NAME")
  # shellcheck disable=SC2086
  [[ -n $ids ]] && docker network rm $ids >/dev/null && say "removed network $NETWORK"
  rm -rf "$RUN_DIR"
  say "down"
}

cmd_status() {
  local h c held
  held=$(holder)
  for h in "${HOSTS[@]}"; do
    c=$(node "$h")
    if [[ $(docker inspect -f '{{.State.Running}}' "$c" 2>/dev/null) != true ]]; then echo "$h: not running"; continue; fi
    echo "$h: systemd $(docker exec "$c" systemctl is-system-running 2>&1 || true);" \
      "$(docker exec "$c" systemctl is-active consul operator-agent operator-lb nginx keepalived docker 2>/dev/null | paste -sd' ' || true)" \
      "(consul operator-agent operator-lb nginx keepalived docker)"
  done
  echo "floating address $FLOATING: held by ${held:-no LB host}"
}

cmd_destroy() {
  cmd_down
  docker image rm "$IMAGE" "$BASE_IMAGE" >/dev/null 2>&1 || true
  say "removed $IMAGE and $BASE_IMAGE"
}

case "${1:-}" in
  build) build ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  destroy) cmd_destroy ;;
  *) echo "usage: $0 build|up|down|status|destroy" >&2; exit 2 ;;
esac
