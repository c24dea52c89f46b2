#!/usr/bin/env bash
# Bootstraps Consul's ACL system for consul-operator, once per cluster, and
# makes one token per role from the policies in deploy/acl/. Idempotent: run
# it again and it reuses the tokens in OUT_DIR that still work, and updates
# the policies' rules from deploy/acl/.
#
# usage: acl-bootstrap.sh OUT_DIR NODE=ADDR [NODE=ADDR ...]
#
#   OUT_DIR    where the tokens' secrets go, one file each (mode 0600):
#                management.token      from `consul acl bootstrap`: keep it offline
#                operator-agent.token  for every `operator agent` (policy operator-agent)
#                operator-lb.token     for `operator lb` (policy operator-lb)
#                operator-admin.token  for people: manifests and `operator status` (policy operator-admin)
#                consul-NODE.token     the Consul agent NODE's own token (a node identity)
#                management.header     the management token as an HTTP header, for curl -H @FILE
#   NODE=ADDR  every Consul agent of the cluster: its node name and the address
#              of its HTTP API (host, host:port or https://host:port). The first one is asked to
#              bootstrap; every one is given its agent token.
#
# The servers must run with deploy/consul/acl.hcl (ACLs on, default deny).
# Environment: CONSUL (the consul binary), CONSUL_DATACENTER (dc1); with TLS,
# CONSUL_CACERT, CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY as for the consul CLI.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
say() { printf '[acl] %s\n' "$*"; }
die() { printf '[acl] ERROR: %s\n' "$*" >&2; exit 1; }

(($# >= 2)) || die "usage: $0 OUT_DIR NODE=ADDR [NODE=ADDR ...]"
OUT=$1; shift
DC=${CONSUL_DATACENTER:-dc1}
CONSUL=${CONSUL:-$(command -v consul || echo "$ROOT/.tools/bin/consul")}
[[ -x $CONSUL ]] || die "no consul binary: run 'make deps'"
# The CLI would read these from the caller's environment; every call here says what it means.
unset CONSUL_HTTP_TOKEN CONSUL_HTTP_TOKEN_FILE CONSUL_HTTP_ADDR

nodes=() addrs=()
for pair in "$@"; do
  [[ $pair == *=* ]] || die "not NODE=ADDR: $pair"
  nodes+=("${pair%%=*}")
  addr=${pair#*=}
  [[ $addr == *:* ]] || addr="$addr:8500"
  [[ $addr == *://* ]] || addr="http://$addr"
  addrs+=("$addr")
done
FIRST=${addrs[0]}

mkdir -p "$OUT"
chmod 0700 "$OUT"
umask 077

# secret_of JSON: the SecretID field of `consul acl ... -format=json` output.
secret_of() { sed -n 's/^ *"SecretID": *"\([^"]*\)".*/\1/p' <<<"$1" | head -1; }

# works FILE: the token in FILE is known to the cluster.
works() {
  [[ -s $1 ]] && "$CONSUL" acl token read -self -http-addr="$FIRST" -token-file="$1" >/dev/null 2>&1
}

# --- the management token ---------------------------------------------------------
MGMT="$OUT/management.token"
if works "$MGMT"; then
  say "ACLs already bootstrapped; reusing $MGMT"
else
  # Right after a leader is elected the ACL system may not be ready yet; retry.
  out="" ok=0
  for _ in $(seq 1 150); do
    if out=$("$CONSUL" acl bootstrap -http-addr="$FIRST" -format=json 2>&1); then ok=1; break; fi
    if grep -q "no longer allowed" <<<"$out"; then
      die "the cluster is already bootstrapped and $MGMT holds no valid management token ($out)"
    fi
    sleep 0.2
  done
  ((ok)) || die "consul acl bootstrap failed: $out"
  secret_of "$out" >"$MGMT"
  [[ -s $MGMT ]] || die "no SecretID in the bootstrap answer: $out"
  say "bootstrapped; management token in $MGMT"
fi
acl() { "$CONSUL" acl "$@" -http-addr="$FIRST" -token-file="$MGMT"; }
# curl with the consul CLI's TLS settings.
CURL_TLS=()
[[ -n ${CONSUL_CACERT:-} ]] && CURL_TLS+=(--cacert "$CONSUL_CACERT")
[[ -n ${CONSUL_CLIENT_CERT:-} ]] && CURL_TLS+=(--cert "$CONSUL_CLIENT_CERT" --key "$CONSUL_CLIENT_KEY")
# curl reads the management token's header from this file, never from its command line.
MGMT_HEADER="$OUT/management.header"
printf 'X-Consul-Token: %s\n' "$(<"$MGMT")" >"$MGMT_HEADER"

# --- the role policies, from deploy/acl/ -------------------------------------------
for file in "$ROOT"/deploy/acl/*.hcl; do
  name=$(basename "$file" .hcl)
  if acl policy read -name "$name" >/dev/null 2>&1; then
    acl policy update -name "$name" -rules "@$file" >/dev/null
    say "policy $name updated from deploy/acl/$name.hcl"
  else
    acl policy create -name "$name" -description "consul-operator: $name" -rules "@$file" >/dev/null
    say "policy $name created from deploy/acl/$name.hcl"
  fi
done

# token NAME DESCRIPTION ARGS...: OUT/NAME.token holds a working token, created with ARGS if needed.
token() {
  local name=$1 description=$2 out; shift 2
  if works "$OUT/$name.token"; then return; fi
  out=$(acl token create -description "$description" -format=json "$@")
  secret_of "$out" >"$OUT/$name.token"
  [[ -s $OUT/$name.token ]] || die "no SecretID for the $name token: $out"
  say "token $name created"
}
token operator-agent "consul-operator: operator agent" -policy-name operator-agent
token operator-lb "consul-operator: operator lb" -policy-name operator-lb
token operator-admin "consul-operator: people applying manifests" -policy-name operator-admin

# --- every Consul agent's own token: write on its node, read on services ----------
for i in "${!nodes[@]}"; do
  node=${nodes[$i]} addr=${addrs[$i]}
  token "consul-$node" "Consul agent $node" -node-identity "$node:$DC"
  # Persisted in the agent's data dir (enable_token_persistence in acl.hcl).
  # `consul acl set-agent-token` takes the token as an argument, where every user
  # of the machine could read it: the HTTP API instead, the token in the body on
  # stdin and the management token in a header file.
  printf '{"Token": "%s"}' "$(<"$OUT/consul-$node.token")" \
    | curl -fsS --max-time 10 "${CURL_TLS[@]}" -X PUT -H "@$MGMT_HEADER" --data-binary @- "$addr/v1/agent/token/agent" >/dev/null \
    || die "could not set the agent token of $node on $addr"
  say "agent token of $node set on $addr"
done
