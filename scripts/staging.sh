#!/usr/bin/env bash
# The local staging environment of the design: three "hosts" on loopback
# addresses, all of it real processes.
#
#   host-1  127.0.0.11  Consul server, operator agent --host host-1 (metrics :9810)
#   host-2  127.0.0.12  Consul server, operator agent --host host-2 (metrics :9810)
#   host-3  127.0.0.13  Consul server, operator lb (metrics :9810), NGINX on :80 (default service: simple)
#
# usage: staging.sh up | down | status
#
# Every process is started detached with its pid in $RUN_DIR/pids/<name>.pid and
# its log in $RUN_DIR/logs/<name>.log; `down` stops exactly those pids (after
# checking that the pid still runs the program we started, so a stale pid file
# after a crash never kills a stranger), removes the containers labelled with
# this environment's name, and wipes the environment's state.
#
# Environment (for a second, independent environment such as the tests'):
#   STAGING_NAME   name of the environment, also the containers' cluster label (default: staging)
#   STAGING_ADDRS  the three hosts' addresses (default: "127.0.0.11 127.0.0.12 127.0.0.13")
#   RUN_DIR        state, logs and pid files (default: .run/$STAGING_NAME)
#   RUNTIME_DIR    the agents' --runtime-dir, a tmpfs for secret files
#                  (default /dev/shm/consul-operator-$STAGING_NAME; `down` removes it)
#   AGENT_ARGS     extra flags for every `operator agent` (e.g. "--lost-grace 5s")
#   AGENT_ARGS_HOST1, AGENT_ARGS_HOST2  extra flags for host-1's or host-2's agent only,
#                  after AGENT_ARGS (e.g. "--label zone=a --capacity memory=4Gi,cpus=2")
#   STAGING_CAPACITY  every agent's --capacity (default: memory=8Gi,cpus=8, nominal:
#                  the hosts share this machine; see README, "Capacity")
#   LB_ARGS        extra flags for `operator lb`
#   CLOCK_OFFSET_DIR  tests only: each agent's wall clock is stepped by the
#                  seconds in $CLOCK_OFFSET_DIR/<host> (tests/support/clockshim)
#   STAGING_ACL    1: Consul with ACLs on and default deny (deploy/consul/acl.hcl),
#                  bootstrapped by scripts/acl-bootstrap.sh: the policies of
#                  deploy/acl/, one token per role in $RUN_DIR/acl/ (management,
#                  operator-agent, operator-lb, operator-admin, one per Consul
#                  agent); the agents and the LB run with their role's token in
#                  CONSUL_HTTP_TOKEN (their environment, readable by this user
#                  only: never a command-line flag, which every user can read
#                  in /proc/<pid>/cmdline). `down` wipes the tokens with the
#                  cluster's state.
#   STAGING_SECURE 1: secured as provision.sh secures real hosts (implies STAGING_ACL=1):
#                  a Consul CA and per-server certificates (`consul tls ca create`,
#                  `consul tls cert create`) and a client certificate for the
#                  operator's daemons and our own calls, in $RUN_DIR/tls/ (keys
#                  0600); a gossip key; HTTPS only on :8501, plain HTTP off;
#                  verify_incoming, verify_outgoing, verify_server_hostname. The
#                  daemons get CONSUL_CACERT, CONSUL_CLIENT_CERT and
#                  CONSUL_CLIENT_KEY in their environment and serve /metrics over
#                  HTTPS (--metrics-tls-cert/key, their host's server certificate).
#
# `up` returns once every daemon's /healthz answers 200 (its loops pass, it
# reaches Consul, Docker or NGINX); `status` shows each daemon's /healthz.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NAME=${STAGING_NAME:-staging}
RUNTIME_DIR=${RUNTIME_DIR:-/dev/shm/consul-operator-$NAME}
read -r -a ADDRS <<<"${STAGING_ADDRS:-127.0.0.11 127.0.0.12 127.0.0.13}"
RUN_DIR=${RUN_DIR:-$ROOT/.run/$NAME}
HOSTS=(host-1 host-2 host-3)
PIDS="$RUN_DIR/pids"
LOGS="$RUN_DIR/logs"
LABEL_CLUSTER="consul-operator.cluster=$NAME"
ACL=${STAGING_ACL:-0}
SECURE=${STAGING_SECURE:-0}
[[ $SECURE == 0 || $SECURE == 1 ]] || { echo "STAGING_SECURE must be 0 or 1, got '$SECURE'" >&2; exit 2; }
((SECURE)) && ACL=1
TLS_DIR="$RUN_DIR/tls"
CAPACITY=${STAGING_CAPACITY:-memory=8Gi,cpus=8}
ACL_DIR="$RUN_DIR/acl"
[[ $ACL == 0 || $ACL == 1 ]] || { echo "STAGING_ACL must be 0 or 1, got '$ACL'" >&2; exit 2; }
# With ACLs: curl reads the management token's header from a file (never from its
# command line) on our own Consul reads; empty without ACLs.
CURL_AUTH=()
# Secured: curl's CA and client certificate, the scheme and port of Consul's API, of /metrics.
CURL_TLS=()
API_SCHEME=http API_PORT=8500 METRICS_SCHEME=http
if ((SECURE)); then
  CURL_TLS=(--cacert "$TLS_DIR/consul-agent-ca.pem" --cert "$TLS_DIR/dc1-client-consul-0.pem" --key "$TLS_DIR/dc1-client-consul-0-key.pem")
  API_SCHEME=https API_PORT=8501 METRICS_SCHEME=https
fi

say() { printf '[%s] %s\n' "$NAME" "$*"; }
die() { printf '[%s] ERROR: %s\n' "$NAME" "$*" >&2; exit 1; }

# shellcheck source=scripts/consul-bin.sh
source "$ROOT/scripts/consul-bin.sh"

# alive NAME: the pid in NAME's pid file runs and is the program we started.
alive() {
  local pidfile="$PIDS/$1.pid" pid exe
  [[ -f $pidfile ]] || return 1
  read -r pid exe <"$pidfile" || return 1
  [[ -d /proc/$pid ]] || return 1
  [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$exe" ]]
}

# spawn NAME CMD...: start CMD detached (own session, so that it outlives make
# and a Ctrl-C in this terminal), remembering pid and executable. With
# SPAWN_TOKEN_FILE set, CMD gets that file's token as CONSUL_HTTP_TOKEN in its
# environment (never on its command line).
spawn() {
  local name=$1; shift
  if alive "$name"; then say "$name already running"; return; fi
  local exe; exe=$(readlink -f "$(command -v "$1")")
  if [[ -n ${SPAWN_TOKEN_FILE:-} ]]; then
    CONSUL_HTTP_TOKEN=$(<"$SPAWN_TOKEN_FILE") setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  else
    setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  fi
  local pid=$! i
  # Written whole then renamed: a reader (the chaos monitor) never sees the file half written.
  echo "$pid $exe" >"$PIDS/$name.pid.tmp" && mv -f "$PIDS/$name.pid.tmp" "$PIDS/$name.pid"
  # Until setsid has exec'd the program, /proc/<pid>/exe is bash or setsid.
  for i in $(seq 1 100); do
    [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$exe" ]] && break
    sleep 0.02
  done
  say "started $name (pid $pid)"
}

# stop NAME...: SIGTERM to all of them at once, wait up to 15 s, then SIGKILL.
# Removes their pid files.
stop() {
  local name pid exe i pids=() names=()
  for name in "$@"; do
    if alive "$name"; then
      read -r pid exe <"$PIDS/$name.pid"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid"); names+=("$name")
    fi
  done
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    for _ in $(seq 1 150); do
      [[ -d /proc/$pid ]] || break
      sleep 0.1
    done
    if [[ -d /proc/$pid ]]; then
      say "${names[$i]} did not stop on SIGTERM, killing"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    say "stopped ${names[$i]} (pid $pid)"
  done
  for name in "$@"; do rm -f "$PIDS/$name.pid"; done
}

# tls_up: the CA, a server certificate per host, one client certificate, the gossip
# key and each server's TLS settings file (once; `down` wipes them).
tls_up() {
  local consul i; consul=$(consul_bin)
  [[ -s $TLS_DIR/gossip.key ]] && return 0
  mkdir -p "$TLS_DIR"; chmod 0700 "$TLS_DIR"
  (
    cd "$TLS_DIR"; umask 077
    "$consul" tls ca create >/dev/null
    for i in 0 1 2; do
      "$consul" tls cert create -server -dc dc1 -additional-ipaddress "${ADDRS[$i]}" >/dev/null
    done
    "$consul" tls cert create -client -dc dc1 >/dev/null
    "$consul" keygen >gossip.key
    for i in 0 1 2; do
      # deploy/consul/tls.hcl with this host's files, and the gossip key: 0600.
      sed -e "s|/etc/consul.d/tls/ca.pem|$TLS_DIR/consul-agent-ca.pem|" \
        -e "s|/etc/consul.d/tls/server.pem|$TLS_DIR/dc1-server-consul-$i.pem|" \
        -e "s|/etc/consul.d/tls/server-key.pem|$TLS_DIR/dc1-server-consul-$i-key.pem|" \
        "$ROOT/deploy/consul/tls.hcl" >"host-$((i + 1)).hcl"
      printf 'encrypt = "%s"\n' "$(<gossip.key)" >>"host-$((i + 1)).hcl"
    done
  )
  say "TLS: CA, server and client certificates and the gossip key in $TLS_DIR/"
}

# secure_env: the consul CLI's TLS variables, for the daemons' environment and acl-bootstrap.sh.
secure_env() {
  ((SECURE)) || return 0
  export CONSUL_CACERT="$TLS_DIR/consul-agent-ca.pem" \
    CONSUL_CLIENT_CERT="$TLS_DIR/dc1-client-consul-0.pem" CONSUL_CLIENT_KEY="$TLS_DIR/dc1-client-consul-0-key.pem"
}

# metrics_tls_args I: secured, the daemon of host I serves /metrics over HTTPS with its server certificate.
metrics_tls_args() {
  ((SECURE)) || return 0
  echo "--metrics-tls-cert $TLS_DIR/dc1-server-consul-$1.pem --metrics-tls-key $TLS_DIR/dc1-server-consul-$1-key.pem"
}

consul_up() {
  local consul; consul=$(consul_bin)
  local i join=() acl_args=()
  for addr in "${ADDRS[@]}"; do join+=("-retry-join=$addr"); done
  ((ACL)) && acl_args=(-config-file="$ROOT/deploy/consul/acl.hcl")
  for i in 0 1 2; do
    local host=${HOSTS[$i]} addr=${ADDRS[$i]} tls_args=()
    ((SECURE)) && tls_args=(-config-file="$TLS_DIR/$host.hcl")
    mkdir -p "$RUN_DIR/consul/$host"
    # raft_multiplier=1 and the short timeouts make leader election and failure
    # detection take seconds, like a tuned production cluster, not Consul's
    # conservative defaults. DNS is off: nothing here uses it.
    spawn "consul-$host" "$consul" agent -server -bootstrap-expect=3 \
      -node="$host" -bind="$addr" -client="$addr" -advertise="$addr" \
      -data-dir="$RUN_DIR/consul/$host" -dns-port=-1 \
      -node-meta="staging:$NAME" \
      -hcl='performance { raft_multiplier = 1 }' \
      -hcl='disable_update_check = true' \
      "${acl_args[@]}" "${tls_args[@]}" "${join[@]}"
  done
  say "waiting for the Consul cluster to elect a leader"
  local leader=""
  for i in $(seq 1 300); do
    leader=$(curl -fsS --max-time 1 "${CURL_TLS[@]}" "$API_SCHEME://${ADDRS[0]}:$API_PORT/v1/status/leader" 2>/dev/null || true)
    [[ $leader =~ :[0-9]+\"$ ]] && break
    for h in "${HOSTS[@]}"; do alive "consul-$h" || die "consul-$h died; see $LOGS/consul-$h.log"; done
    sleep 0.2
  done
  [[ $leader =~ :[0-9]+\"$ ]] || die "no Consul leader after 60 s; see $LOGS/"
  for h in "${HOSTS[@]}"; do alive "consul-$h" || die "consul-$h died; see $LOGS/consul-$h.log"; done
  say "Consul cluster up, leader $leader"
}

# ACLs: bootstrap (once), policies and tokens; our own reads use the management token.
acl_up() {
  local pairs=() i
  for i in 0 1 2; do pairs+=("${HOSTS[$i]}=$API_SCHEME://${ADDRS[$i]}:$API_PORT"); done
  secure_env
  CONSUL="$(consul_bin)" bash "$ROOT/scripts/acl-bootstrap.sh" "$ACL_DIR" "${pairs[@]}" \
    | while IFS= read -r line; do say "$line"; done
  [[ -s $ACL_DIR/management.token ]] || die "ACL bootstrap left no management token"
  (umask 077; printf 'X-Consul-Token: %s\n' "$(<"$ACL_DIR/management.token")" >"$ACL_DIR/management.header")
  CURL_AUTH=(-H "@$ACL_DIR/management.header")
}

# token_file ROLE: the file of ROLE's token when ACLs are on, "" otherwise (for SPAWN_TOKEN_FILE).
token_file() {
  ((ACL)) || return 0
  echo "$ACL_DIR/$1.token"
}

# wait_healthy NAME ADDR: wait until the daemon NAME answers 200 on http(s)://ADDR/healthz.
wait_healthy() {
  local name=$1 addr=$2 i
  for i in $(seq 1 300); do
    curl -fsS --max-time 1 "${CURL_TLS[@]}" "$METRICS_SCHEME://$addr/healthz" >/dev/null 2>&1 && return 0
    alive "$name" || die "$name died; see $LOGS/$name.log"
    sleep 0.2
  done
  die "$name is not healthy after 60 s: $(curl -sS --max-time 2 "${CURL_TLS[@]}" "$METRICS_SCHEME://$addr/healthz" 2>&1 | tr '\n' ' '); see $LOGS/$name.log"
}

remove_containers() {
  command -v docker >/dev/null && docker info >/dev/null 2>&1 || return 0
  local ids
  ids=$(docker ps -aq --filter "label=$LABEL_CLUSTER")
  if [[ -n $ids ]]; then
    # shellcheck disable=SC2086
    docker rm -f $ids >/dev/null
    say "removed containers labelled $LABEL_CLUSTER: $(echo $ids | wc -w)"
  fi
  # Replicas' named volumes (manifests' volumes:) carry the same label; the data goes with the state.
  ids=$(docker volume ls -q --filter "label=$LABEL_CLUSTER")
  if [[ -n $ids ]]; then
    # shellcheck disable=SC2086
    docker volume rm -f $ids >/dev/null
    say "removed volumes labelled $LABEL_CLUSTER: $(echo $ids | wc -w)"
  fi
}

agents_up() {
  local py="$ROOT/.venv/bin/python" i
  [[ -x $py ]] || die "no .venv: run 'make deps'"
  for i in 0 1; do
    local host=${HOSTS[$i]} addr=${ADDRS[$i]}
    (
      if [[ -n ${CLOCK_OFFSET_DIR:-} ]]; then
        mkdir -p "$CLOCK_OFFSET_DIR"; [[ -f $CLOCK_OFFSET_DIR/$host ]] || echo 0 >"$CLOCK_OFFSET_DIR/$host"
        export PYTHONPATH="$ROOT/tests/support/clockshim" CLOCK_OFFSET_FILE="$CLOCK_OFFSET_DIR/$host"
      fi
      # The hosts share one machine: each gets a nominal capacity of its own (CPU
      # quotas and memory limits are limits, not reservations, so the two may
      # together offer more than the machine has); AGENT_ARGS_HOST<n> comes last.
      local own="AGENT_ARGS_HOST$((i + 1))"
      # shellcheck disable=SC2086
      secure_env
      # shellcheck disable=SC2046
      SPAWN_TOKEN_FILE=$(token_file operator-agent) spawn "agent-$host" "$py" -m consul_operator agent \
        --host "$host" --advertise "$addr" --consul "$API_SCHEME://$addr:$API_PORT" --cluster "$NAME" --metrics "$addr:9810" \
        --runtime-dir "$RUNTIME_DIR" \
        $(metrics_tls_args "$i") --capacity "$CAPACITY" --log-json ${AGENT_ARGS:-} ${!own:-}
    )
  done
  # Ready means: both agents registered and live, and one of them leads.
  local url="$API_SCHEME://${ADDRS[0]}:$API_PORT/v1" live=0 leader=""
  for i in $(seq 1 300); do
    live=$(curl -fsS --max-time 2 "${CURL_TLS[@]}" "${CURL_AUTH[@]}" "$url/health/service/operator-agent?passing=1&filter=Service.Meta.cluster==\"$NAME\"" 2>/dev/null \
      | grep -o '"ServiceID":"operator-agent-' | wc -l || true)
    leader=$(curl -fsS --max-time 2 "${CURL_TLS[@]}" "${CURL_AUTH[@]}" "$url/kv/operator/leader" 2>/dev/null | grep -o '"Session":"[^"]' || true)
    [[ $live -ge 2 && -n $leader ]] && break
    for h in host-1 host-2; do alive "agent-$h" || die "agent-$h died; see $LOGS/agent-$h.log"; done
    sleep 0.2
  done
  [[ $live -ge 2 && -n $leader ]] || die "the agents did not become live within 60 s; see $LOGS/"
  for i in 0 1; do wait_healthy "agent-${HOSTS[$i]}" "${ADDRS[$i]}:9810"; done
}

lb_up() {
  local addr=${ADDRS[2]}
  secure_env
  # shellcheck disable=SC2086,SC2046
  SPAWN_TOKEN_FILE=$(token_file operator-lb) spawn "lb-host-3" "$ROOT/.venv/bin/python" -m consul_operator lb \
    $(metrics_tls_args 2) --consul "$API_SCHEME://$addr:$API_PORT" --cluster "$NAME" --listen "$addr:80" --default-service simple \
    --nginx-dir "$RUN_DIR/nginx" \
    --metrics "$addr:9810" --log-json ${LB_ARGS:-}
  # Healthy: its loop passed, it reaches Consul, and NGINX accepts connections on :80.
  wait_healthy lb-host-3 "$addr:9810"
}

# An NGINX left behind by a load balancer that was killed: stop it by its own pid file.
nginx_leftover_down() {
  local pidfile="$RUN_DIR/nginx/nginx.pid" pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if [[ -d /proc/$pid && $(readlink "/proc/$pid/exe") == */nginx ]]; then
    kill -QUIT "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
    [[ -d /proc/$pid ]] && kill -KILL "$pid" 2>/dev/null
    say "stopped a leftover nginx (pid $pid)"
  fi
  rm -f "$pidfile"
}

cmd_up() {
  mkdir -p "$PIDS" "$LOGS"
  ((SECURE)) && tls_up
  consul_up
  ((ACL)) && acl_up
  agents_up
  lb_up
  ((ACL)) && say "ACLs on (default deny); tokens in $ACL_DIR/"
  ((SECURE)) && say "secured: HTTPS only, mutual TLS, gossip encryption; certificates in $TLS_DIR/"
  say "up: Consul on ${ADDRS[*]} ($API_SCHEME :$API_PORT), agents of host-1 and host-2, NGINX on http://${ADDRS[2]}/; logs in $LOGS"
}

cmd_down() {
  local names=() f
  if [[ -d $PIDS ]]; then
    for f in "$PIDS"/*.pid; do [[ -e $f ]] && names+=("$(basename "$f" .pid)"); done
  fi
  # Operators first (so that nothing restarts containers while we remove them),
  # then the load balancer, then Consul; each group in parallel.
  local agents=() lbs=() rest=() n
  for n in "${names[@]}"; do
    case $n in
      agent-*) agents+=("$n") ;;
      lb*|nginx*) lbs+=("$n") ;;
      *) rest+=("$n") ;;
    esac
  done
  ((${#agents[@]})) && stop "${agents[@]}"
  ((${#lbs[@]})) && stop "${lbs[@]}"
  nginx_leftover_down
  ((${#rest[@]})) && stop "${rest[@]}"
  remove_containers
  rm -rf "$RUN_DIR/consul" "$RUN_DIR/nginx" "$ACL_DIR" "$TLS_DIR" "$RUNTIME_DIR"
  say "down"
}

cmd_status() {
  local f n addr health
  for f in "$PIDS"/*.pid; do
    [[ -e $f ]] || continue
    n=$(basename "$f" .pid)
    if ! alive "$n"; then echo "$n: dead"; continue; fi
    health=""
    case $n in
      agent-host-1) addr=${ADDRS[0]} ;;
      agent-host-2) addr=${ADDRS[1]} ;;
      lb-host-3) addr=${ADDRS[2]} ;;
      *) addr="" ;;
    esac
    if [[ -n $addr ]]; then
      health=$(curl -sS --max-time 2 "${CURL_TLS[@]}" "$METRICS_SCHEME://$addr:9810/healthz" 2>&1 | tr '\n' ' ')
      health=", healthz: ${health% }"
    fi
    echo "$n: running (pid $(cut -d' ' -f1 "$f"))$health"
  done
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
