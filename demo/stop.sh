#!/bin/sh
# Stops the demo server by the PID in its PidFile.
set -eu
root=${PERUSER_DEMO_ROOT:-/tmp/peruser-demo}
pidfile="$root/run/httpd.pid"
[ -f "$pidfile" ] || { echo "demo: not running"; exit 0; }
pid=$(cat "$pidfile")
kill -TERM "$pid" 2>/dev/null || true
for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { echo "demo: stopped"; exit 0; }
    sleep 0.1
done
echo "demo: pid $pid did not stop" >&2
exit 1
