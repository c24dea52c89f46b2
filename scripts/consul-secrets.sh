#!/usr/bin/env bash
# The secrets of a secured Consul cluster, made once and kept out of the
# repository (.secrets/ is in .gitignore): a CA, a gossip key, and for every
# host a server certificate and a client certificate for its operator daemon.
# Idempotent: what exists is kept; run it again with a new host to add its
# certificates.
#
# usage: consul-secrets.sh DIR NODE=ADDR [NODE=ADDR ...]
#
#   DIR        where they go (mode 0700; every key and the gossip key 0600):
#                consul-agent-ca.pem, consul-agent-ca-key.pem   the CA (`consul tls ca create`)
#                gossip.key                                     `consul keygen`
#                NODE-server.pem, NODE-server-key.pem           `consul tls cert create -server`,
#                                                               for server.<dc>.consul, localhost,
#                                                               127.0.0.1, NODE and ADDR
#                NODE-client.pem, NODE-client-key.pem           `consul tls cert create -client`
#   NODE=ADDR  a host's Consul node name and its address
#
# Without the CA key (a copy of DIR that leaves it out, as the Vagrantfile's
# rsync does), the existing certificates are kept and a missing one is an error.
# Environment: CONSUL (the consul binary), CONSUL_DATACENTER (dc1).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
say() { printf '[secrets] %s\n' "$*"; }
die() { printf '[secrets] ERROR: %s\n' "$*" >&2; exit 1; }

(($# >= 2)) || die "usage: $0 DIR NODE=ADDR [NODE=ADDR ...]"
DIR=$1; shift
DC=${CONSUL_DATACENTER:-dc1}
CONSUL=${CONSUL:-$(command -v consul || echo "$ROOT/.tools/bin/consul")}
[[ -x $CONSUL ]] || die "no consul binary (CONSUL=, PATH or .tools/bin): run 'make deps'"
umask 077
mkdir -p "$DIR"
chmod 0700 "$DIR"
DIR=$(cd "$DIR" && pwd)
CA="$DIR/consul-agent-ca.pem" CA_KEY="$DIR/consul-agent-ca-key.pem"

if [[ ! -s $CA ]]; then
  [[ -e $CA_KEY ]] && die "$CA_KEY exists without $CA"
  (cd "$DIR" && "$CONSUL" tls ca create -domain consul >/dev/null)
  say "CA created: $CA"
fi
if [[ ! -s $DIR/gossip.key ]]; then
  "$CONSUL" keygen >"$DIR/gossip.key"
  say "gossip key created: $DIR/gossip.key"
fi

# cert KIND NODE ADDR: DIR/NODE-KIND.pem and its key, made with the CA when missing.
cert() {
  local kind=$1 node=$2 addr=$3 tmp
  [[ -s $DIR/$node-$kind.pem && -s $DIR/$node-$kind-key.pem ]] && return 0
  [[ -s $CA_KEY ]] || die "no $node-$kind.pem in $DIR and no CA key to make one: run $0 where the CA key is"
  tmp=$(mktemp -d)
  if [[ $kind == server ]]; then
    (cd "$tmp" && "$CONSUL" tls cert create -server -dc "$DC" -ca "$CA" -key "$CA_KEY" \
      -additional-dnsname "$node" -additional-ipaddress "$addr" >/dev/null)
  else
    (cd "$tmp" && "$CONSUL" tls cert create -client -dc "$DC" -ca "$CA" -key "$CA_KEY" >/dev/null)
  fi
  mv "$tmp"/*-consul-0.pem "$DIR/$node-$kind.pem"
  mv "$tmp"/*-consul-0-key.pem "$DIR/$node-$kind-key.pem"
  rm -rf "$tmp"
  say "$kind certificate of $node created"
}

for pair in "$@"; do
  [[ $pair == *=* ]] || die "not NODE=ADDR: $pair"
  cert server "${pair%%=*}" "${pair#*=}"
  cert client "${pair%%=*}" "${pair#*=}"
done
chmod 0600 "$DIR"/*-key.pem "$DIR/gossip.key"
