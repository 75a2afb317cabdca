#!/usr/bin/env bash
# Three Switchboard nodes and Redis on one machine, behind nginx: what docs/scaling.md
# describes, started as child processes (no system services), on http://127.0.0.1:8080.
# Ctrl-C stops everything. Redis keeps its data (append-only file, fsync on every write)
# in target/cluster/redis, so a restart of this script keeps the channels' history.
#
#   scripts/cluster.sh                 nodes on 127.0.0.1:8081-8083, nginx on :8080
#   CLUSTER_PORT=9080 scripts/cluster.sh   nginx elsewhere (nodes on the next three ports)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh
install_redis

port=${CLUSTER_PORT:-8080}
redis_port=${REDIS_PORT:-6390}
state=target/cluster
mkdir -p "$state/redis" "$state/nginx"

echo "==> building the web bundle (trunk build --release) and the server"
trunk build --release
cargo build --release --locked -p switchboard-server

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly yes \
  --appendfsync always --dir "$PWD/$state/redis" --daemonize no >"$state/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

for i in 1 2 3; do
  target/release/switchboard-server --addr "127.0.0.1:$((port + i))" --dist dist \
    --redis-url "redis://127.0.0.1:$redis_port/" --trusted-proxies 127.0.0.1/32 \
    "$@" >"$state/node$i.log" 2>&1 &
  pids+=($!)
done

# The example from docs/scaling.md, its ports moved to ours.
example=$(awk '/^```nginx$/ {on=1; next} /^```$/ && on {exit} on' docs/scaling.md \
  | sed -e "s/127.0.0.1:8080/127.0.0.1:$port/" -e "s/127.0.0.1:8081/127.0.0.1:$((port + 1))/" \
        -e "s/127.0.0.1:8082/127.0.0.1:$((port + 2))/" -e "s/127.0.0.1:8083/127.0.0.1:$((port + 3))/")
dir="$PWD/$state/nginx"
cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
error_log $dir/error.log warn;
pid $dir/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
$example
}
EOF
nginx -p "$dir" -c "$dir/nginx.conf" &
pids+=($!)

echo "==> Redis on :$redis_port, nodes on :$((port + 1))-:$((port + 3)), nginx on :$port"
echo "==> open http://127.0.0.1:$port in two browsers (each may land on another node);"
echo "    logs in $state/; Ctrl-C stops everything"
wait -n "${pids[@]}" || true
echo "==> a process exited; stopping the rest" >&2
