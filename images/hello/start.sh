#!/bin/sh
# Entry point of the hello image: the original flask-nanoservice's answer,
# "Hello World from <container hostname>", served by busybox httpd on :5000,
# plus /health for the operator's HTTP check.
#
# sh stays PID 1 with a TERM trap: a bare httpd as PID 1 would ignore SIGTERM
# and every planned stop would wait out the whole grace period.
set -e
mkdir -p /www
printf '%s from %s\n' "${GREETING:-Hello World}" "$(hostname)" > /www/index.html
printf 'ok\n' > /www/health
httpd -f -p "${PORT:-5000}" -h /www &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"; exit 0' TERM INT
wait "$pid"
