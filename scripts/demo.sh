#!/usr/bin/env bash
# The original walkthrough on the local staging environment (after `make up`).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$ROOT/.tools/bin:$PATH" CONSUL_HTTP_ADDR=${CONSUL_HTTP_ADDR:-127.0.0.11:8500}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "the Consul cluster"
consul members
step "validate the demo manifest"
"$ROOT/.venv/bin/operator" validate "$ROOT/manifests/simple.yaml"
step "store it as desired state"
consul kv put services/simple @"$ROOT/manifests/simple.yaml"
consul kv get services/simple
