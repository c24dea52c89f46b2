#!/usr/bin/env bash
# The original walkthrough on the local staging environment (run after `make up`):
# put the manifest, curl the load balancer, scale, kill a replica, look at status.
#
# Environment, as for scripts/staging.sh (an environment other than the default one):
#   STAGING_NAME   name of the environment, its containers' cluster label (default: staging)
#   STAGING_ADDRS  the three hosts' addresses (default: "127.0.0.11 127.0.0.12 127.0.0.13")
#   RUN_DIR        its state and logs (default: .run/$STAGING_NAME)
# It changes only that environment's KV and kills one of its containers.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
NAME=${STAGING_NAME:-staging}
read -r -a ADDRS <<<"${STAGING_ADDRS:-127.0.0.11 127.0.0.12 127.0.0.13}"
LOGS=${RUN_DIR:-$ROOT/.run/$NAME}/logs
export PATH="$ROOT/.tools/bin:$PATH" CONSUL_HTTP_ADDR=${CONSUL_HTTP_ADDR:-${ADDRS[0]}:8500}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
manifest() { sed "s/^replicas: .*/replicas: $1/" "$ROOT/manifests/simple.yaml"; }

# wait_passing N: until exactly the N running replicas of simple pass in Consul (at most 60 s).
wait_passing() {
  local passing running
  for _ in $(seq 1 300); do
    passing=$(curl -fsS "http://$CONSUL_HTTP_ADDR/v1/health/service/simple?passing=1" \
      | grep -o '"ServiceID":"simple-[^"]*' | cut -d'"' -f4 | sort || true)
    running=$(docker ps --format '{{.Names}}' --filter label=consul-operator.service=simple \
      --filter "label=consul-operator.cluster=$NAME" | sort)
    [[ -n $running && $passing == "$running" && $(wc -l <<<"$running") -eq $1 ]] && return 0
    sleep 0.2
  done
  echo "simple did not converge to $1 replicas; see $LOGS/" >&2
  return 1
}

# answers: what each passing instance says, straight from its published port.
answers() {
  curl -fsS "http://$CONSUL_HTTP_ADDR/v1/health/service/simple?passing=1" \
    | python3 -c 'import json,sys; [print(e["Service"]["Address"], e["Service"]["Port"], e["Service"]["Meta"]["host"]) for e in json.load(sys.stdin)]' \
    | while read -r addr port host; do printf '  %s  %s:%s  ->  %s' "$host" "$addr" "$port" "$(curl -fsS "http://$addr:$port/")"; echo; done
}

LB=http://${ADDRS[2]}/
lb() { for _ in $(seq 1 "$1"); do printf '  curl %s  ->  %s\n' "$LB" "$(curl -fsS "$LB")"; done; }

# wait_lb N: until NGINX answers from N different containers (at most 30 s).
wait_lb() {
  for _ in $(seq 1 150); do
    [[ $(for _ in $(seq 1 $((3 * $1))); do curl -fsS "$LB" 2>/dev/null; done | sort -u | wc -l) -eq $1 ]] && return 0
    sleep 0.2
  done
  echo "NGINX did not serve $1 replicas; see $LOGS/lb-host-3.log" >&2
  return 1
}

step "the staging cluster: three Consul servers, operator agents on host-1 and host-2, operator lb on host-3"
consul members
consul kv get operator/leader

step "operator validate manifests/simple.yaml"
"$ROOT/.venv/bin/operator" validate "$ROOT/manifests/simple.yaml"

step "consul kv put services/simple (1 replica)"
manifest 1 | consul kv put services/simple -
wait_passing 1
answers
wait_lb 1
lb 2

step "scale to 2: one replica on each app host"
manifest 2 | consul kv put services/simple -
wait_passing 2
answers
consul kv get operator/placement/simple
wait_lb 2
echo "  through the load balancer, round-robin:"
lb 6

step "docker kill one replica: the operator replaces it"
victim=$(docker ps -q --filter label=consul-operator.service=simple --filter "label=consul-operator.cluster=$NAME" | head -1)
docker kill "$victim" >/dev/null
echo "  killed $victim"
wait_passing 2
answers
wait_lb 2
lb 4

step "operator status"
"$ROOT/.venv/bin/operator" wait simple --cluster "$NAME" --timeout 60s >/dev/null
"$ROOT/.venv/bin/operator" status simple --cluster "$NAME"

cat <<MSG

Go on:
  export PATH=$ROOT/.tools/bin:\$PATH CONSUL_HTTP_ADDR=$CONSUL_HTTP_ADDR
  sed 's/^replicas: .*/replicas: 4/' manifests/simple.yaml | consul kv put services/simple -
  docker ps --filter "label=consul-operator.cluster=$NAME"
  curl $LB               # NGINX, round-robin over the passing replicas
  .venv/bin/operator status --watch     # desired / running / healthy per service and host
  consul kv delete services/simple      # drains and removes every replica
  make down                             # stops everything make up started
MSG
