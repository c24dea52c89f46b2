#!/usr/bin/env bash
# make demo-app: the two-tier example (manifests/visits-redis.yaml, manifests/visits.yaml) on an
# environment of its own. A Python web app counts visits in Redis: it finds Redis through a file
# the operator renders from Consul's catalog (templates:), both authenticate with a password kept
# as a secret (secrets:), and Redis keeps its data on a named volume (volumes:). It shows
#   - the app reaching Redis, through NGINX, with the rendered /etc/app/app.conf;
#   - the counter surviving a `docker kill` of the Redis replica (the volume);
#   - the password in use (Redis refuses a client without it) and shown nowhere: operator status,
#     describe, events, the status page, the daemons' logs, KV under operator/, the catalog, the
#     containers' inspect, the process listing.
# The environment stays up afterwards; `make demo-app-down` stops it.
#
# Environment, as for scripts/staging.sh:
#   STAGING_NAME   name of the environment, its containers' cluster label (default: demo-app)
#   STAGING_ADDRS  the three hosts' addresses (default: "127.0.0.14 127.0.0.15 127.0.0.16")
#   RUN_DIR        its state and logs (default: .run/$STAGING_NAME)
# The agents advertise (publish the replicas' ports on, and register them at) the Docker bridge's
# gateway: a container reaches another's published port there, never at a loopback address.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export STAGING_NAME=${STAGING_NAME:-demo-app}
export STAGING_ADDRS=${STAGING_ADDRS:-127.0.0.14 127.0.0.15 127.0.0.16}
export RUN_DIR=${RUN_DIR:-$ROOT/.run/$STAGING_NAME}
read -r -a ADDRS <<<"$STAGING_ADDRS"
NAME=$STAGING_NAME
export PATH="$ROOT/.tools/bin:$PATH" CONSUL_HTTP_ADDR=${ADDRS[0]}:8500
OPERATOR="$ROOT/.venv/bin/operator"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "demo-app: $*" >&2; exit 1; }
ours() { docker ps -q --filter "label=consul-operator.cluster=$NAME" --filter "label=consul-operator.service=$1"; }

if [[ ${1:-} == down ]]; then
  exec bash "$ROOT/scripts/staging.sh" down
fi

GATEWAY=$(docker network inspect bridge -f '{{(index .IPAM.Config 0).Gateway}}')
if [[ -z $GATEWAY ]]; then
  # An engine on its first boot (no docker0 before it) leaves the gateway out of the bridge's IPAM
  # config until it restarts (moby/moby#26799); the bridge interface holds that address all along.
  bridge=$(docker network inspect bridge -f '{{index .Options "com.docker.network.bridge.name"}}')
  GATEWAY=$(ip -o -4 addr show dev "${bridge:-docker0}" 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')
fi
[[ -n $GATEWAY ]] || die "Docker's bridge network has no gateway address"
step "an environment of its own: $NAME on ${ADDRS[*]}, replicas published on $GATEWAY"
AGENT_ARGS="${AGENT_ARGS:-} --advertise $GATEWAY" bash "$ROOT/scripts/staging.sh" up

step "a password for Redis, kept as a secret of each service that needs it (never in a manifest)"
# In a shell variable and on consul's standard input only: never on a command line.
PASSWORD=$(openssl rand -hex 16)
for service in redis visits; do
  printf '%s' "$PASSWORD" | consul kv put "secrets/$service/redis_password" - >/dev/null
  echo "  consul kv put secrets/$service/redis_password -   (from standard input)"
done

step "operator apply manifests/visits-redis.yaml manifests/visits.yaml"
"$OPERATOR" apply "$ROOT/manifests/visits-redis.yaml" "$ROOT/manifests/visits.yaml"
"$OPERATOR" wait redis visits --timeout 180s

LB=http://${ADDRS[2]}/
visit() { curl -fsS --max-time 5 -H 'Host: visits' "$LB"; }
# wait_visit: until the app answers through NGINX (at most 60 s); prints that answer.
wait_visit() {
  local answer
  for _ in $(seq 1 300); do
    answer=$(visit 2>/dev/null) && [[ $answer == visits:* ]] && { printf '  curl -H "Host: visits" %s  ->  %s\n' "$LB" "$answer"; return 0; }
    sleep 0.2
  done
  die "the app did not answer through $LB; see $RUN_DIR/logs/"
}

step "the app reaches Redis at the address the operator rendered from Consul"
# The first text was rendered before Redis passed its check, naming none; the leader's next pass
# renders Redis's address and rolls the app (change_mode: restart), and `wait` may have returned
# in between. So: until a replica's file names Redis (at most 60 s). The image has no grep: the
# file is read with cat, and searched here.
rendered=no
for _ in $(seq 1 300); do
  web=$(ours visits | head -1)
  if [[ -n $web ]] && docker exec "$web" cat /etc/app/app.conf 2>/dev/null | grep -q '^redis = '; then
    rendered=yes
    break
  fi
  sleep 0.2
done
[[ $rendered == yes ]] || die "no replica of visits has Redis's address in /etc/app/app.conf after 60 s"
echo "  docker exec $web cat /etc/app/app.conf"
docker exec "$web" cat /etc/app/app.conf | sed 's/^/    /'
for _ in 1 2 3; do wait_visit; done

step "docker kill the Redis replica: its successor, on the same host, finds the count on the volume"
old=$(ours redis)
[[ -n $old ]] || die "no Redis replica runs"
docker kill "$old" >/dev/null
echo "  killed $old"
for _ in $(seq 1 300); do
  new=$(ours redis)
  [[ -n $new && $new != "$old" ]] && break
  sleep 0.2
done
[[ -n $new && $new != "$old" ]] || die "no new Redis replica within 60 s"
echo "  its successor: $new, volume $(docker inspect -f '{{range .Mounts}}{{if .Name}}{{.Name}}{{end}}{{end}}' "$new")"
"$OPERATOR" wait redis visits --timeout 180s
wait_visit

step "the password is in use: Redis refuses a client without it"
redis=$(curl -fsS "http://$CONSUL_HTTP_ADDR/v1/health/service/redis?passing=1" \
  | python3 -c 'import json,sys; e=json.load(sys.stdin)[0]["Service"]; print(e["Address"], e["Port"])')
read -r raddr rport <<<"$redis"
python3 - "$raddr" "$rport" <<'PY'
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    s.sendall(b"INCR visits\r\n")
    print(f"  INCR visits without the password, at {sys.argv[1]}:{sys.argv[2]}  ->  {s.recv(200).decode().strip()}")
PY

step "... and shown nowhere"
found=0
look() {  # WHERE: standard input must not hold the password (given to grep by a pipe, not as an argument)
  if grep -qFf <(printf '%s\n' "$PASSWORD"); then echo "  $1: THE PASSWORD IS THERE"; found=1; else echo "  $1: not there"; fi
}
"$OPERATOR" status --json | look "operator status --json"
{ "$OPERATOR" describe redis; "$OPERATOR" describe visits; } | look "operator describe redis, visits"
"$OPERATOR" events --json | look "operator events --json"
curl -fsS "http://${ADDRS[0]}:9810/" | look "the status page"
cat "$RUN_DIR"/logs/*.log | look "the daemons' logs"
consul kv get -recurse operator/ | look "KV under operator/"
curl -fsS "http://$CONSUL_HTTP_ADDR/v1/health/service/redis" "http://$CONSUL_HTTP_ADDR/v1/health/service/visits" | look "the catalog"
# shellcheck disable=SC2046
docker inspect $(docker ps -aq --filter "label=consul-operator.cluster=$NAME") | look "docker inspect of the replicas"
for c in $(docker ps -q --filter "label=consul-operator.cluster=$NAME"); do docker logs "$c" 2>&1; done | look "the replicas' logs"
ps -eo args | look "the process listing"
((found == 0)) || die "the password showed somewhere"

echo
echo "The environment stays up: curl -H 'Host: visits' $LB ; make demo-app-down stops it."
