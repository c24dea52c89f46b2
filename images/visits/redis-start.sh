#!/bin/sh
# The Redis of the two-tier example (manifests/visits-redis.yaml). The password comes from the
# secret file /run/secrets/redis_password and reaches redis-server on its standard input (a config
# read from `-`): never on a command line (`ps`), in the environment (`docker inspect`) or on disk.
# Every write is fsynced to the append-only file in /var/lib/redis (the named volume), so a
# `docker kill` loses no acknowledged visit.
set -eu
secret=/run/secrets/redis_password
if [ ! -r "$secret" ]; then
  echo "no readable $secret: give the service the secret redis_password" >&2
  exit 1
fi
mkdir -p /var/lib/redis
exec /usr/bin/redis-server - <<CONF
bind 0.0.0.0 -::*
port 6379
protected-mode no
daemonize no
dir /var/lib/redis
appendonly yes
appendfsync always
save ""
logfile ""
requirepass $(cat "$secret")
CONF
