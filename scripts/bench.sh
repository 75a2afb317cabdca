#!/usr/bin/env bash
# Side-by-side benchmarks: Switchboard, a bare axum broadcast server (the upper bound on this
# machine), socketioxide (the Rust Socket.IO server), a Node `ws` server and a Node
# Socket.IO server, under the same load generator, in one run. Each server is pinned to
# core 0 and the load generator to core 1. Loopback only; every workload is bounded in
# connections and time. Writes docs/benchmarks.md (and prints it).
#
#   scripts/bench.sh            full run (~10 min)
#   QUICK=1 scripts/bench.sh    fewer connections and shorter phases (~3 min)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh

SUBS=${SUBS:-1000}; RATES=${RATES:-250,500,1000,2000}; SECS=${SECS:-5}
IDLE=${IDLE:-10000}; RPC_CONNS=${RPC_CONNS:-100}; STORM=${STORM:-1000}; SLOW_SECS=${SLOW_SECS:-10}
if [ "${QUICK:-0}" = 1 ]; then SUBS=200; RATES=1000,5000; SECS=2; IDLE=2000; STORM=300; SLOW_SECS=4; fi
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "==> building (release)"
cargo build --locked --release -p switchboard-server -p switchboard-bench
if [ ! -f bench/peers/node_modules/.package-lock.json ] \
  || [ bench/peers/package-lock.json -nt bench/peers/node_modules/.package-lock.json ]; then
  (cd bench/peers && npm ci --no-audit --no-fund --loglevel=error)
fi

pin() { if command -v taskset >/dev/null; then taskset -c "$1" "${@:2}"; else "${@:2}"; fi; }
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

# start NAME CMD...: runs a server on core 0, sets $url and $pid
start() {
  local log; log=$(mktemp)
  # taskset execs the server, so $! is the server itself (its CPU and memory are read).
  if command -v taskset >/dev/null; then taskset -c 0 "$@" >"$log" 2>&1 &
  else "$@" >"$log" 2>&1 & fi
  pid=$!; pids+=("$pid")
  for _ in $(seq 100); do grep -q 'listening on' "$log" && break; sleep 0.1; done
  url="ws://$(grep -o 'http://[0-9.:]*' "$log" | head -n1 | sed 's|http://||')"
  [ "$url" != "ws://" ] || { cat "$log"; exit 1; }
}
stop() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
lg() { pin 1 target/release/loadgen "$@"; }
# A workload that fails (its error is in the log) leaves a row saying so; the run goes on.
failed() { echo "| $1 | failed: see the bench log |"; }

sb=(target/release/switchboard-server --addr 127.0.0.1:0 --dist /nonexistent --history memory
    --max-connections 30000 --max-connections-per-ip 30000
    --rate-per-sec 1000000 --rate-burst 1000000 --log-format json)
# NAME|DIALECT|COMMAND[|fanout-only]
servers=("switchboard|switchboard|${sb[*]}"
         "switchboard, queue 1024|switchboard|${sb[*]} --queue-capacity 1024|fanout-only"
         "bare axum|raw|target/release/bare-peer --addr 127.0.0.1:0"
         "socketioxide|socketio|target/release/sio-peer --addr 127.0.0.1:0"
         "node ws|raw|node bench/peers/ws-peer.mjs 127.0.0.1:0"
         "socket.io|socketio|node bench/peers/sio-peer.mjs 127.0.0.1:0")

# storm NAME DIALECT BACKOFF CMD...: connects $STORM clients, restarts the server on the same
# address as soon as it has exited (SIGTERM), and prints the load generator's row.
storm() {
  local name=$1 dialect=$2 backoff=$3; shift 3
  local ready out lgpid port
  ready=$(mktemp -u); out=$(mktemp)
  start "$@"; port=${url##*:}
  lg storm --url "$url" --dialect "$dialect" --label "$name" --conns "$STORM" \
    --backoff "$backoff" --ready-file "$ready" >"$out" &
  lgpid=$!
  for _ in $(seq 600); do [ -f "$ready" ] && break; sleep 0.1; done
  stop
  start "${@//127.0.0.1:0/127.0.0.1:$port}"
  wait "$lgpid" || failed "$name"
  stop
  cat "$out"; rm -f "$ready" "$out"
}

fanout_rows=""; rpc_rows=""; idle_rows=""; storm_rows=""; slow_rows=""
for entry in "${servers[@]}"; do
  IFS='|' read -r name dialect cmd only <<<"$entry"
  echo "==> $name: fan-out"
  # shellcheck disable=SC2086
  start $cmd
  fanout_rows+=$(lg fanout --url "$url" --dialect "$dialect" --label "$name" --subs "$SUBS" \
    --rates "$RATES" --secs "$SECS" --server-pid "$pid" || failed "$name")$'\n'
  stop
  [ "$only" = fanout-only ] && continue
  echo "==> $name: request/response"
  # shellcheck disable=SC2086
  start $cmd
  rpc_rows+=$(lg rpc --url "$url" --dialect "$dialect" --label "$name" --conns "$RPC_CONNS" \
    --secs "$SECS" --server-pid "$pid" || failed "$name")$'\n'
  stop
  echo "==> $name: idle connections"
  # shellcheck disable=SC2086
  start $cmd
  idle_rows+=$(lg idle --url "$url" --dialect "$dialect" --label "$name" --conns "$IDLE" \
    --server-pid "$pid" || failed "$name")$'\n'
  stop
  echo "==> $name: reconnect storm"
  # shellcheck disable=SC2086
  storm_rows+=$(storm "$name" "$dialect" full-jitter $cmd)$'\n'
  if [ "$dialect" = switchboard ]; then
    # The same clients without jitter: what a naive backoff does to the server.
    # shellcheck disable=SC2086
    storm_rows+=$(storm "$name" "$dialect" no-jitter $cmd)$'\n'
  fi
  echo "==> $name: slow consumers"
  # shellcheck disable=SC2086
  start $cmd
  slow_rows+=$(lg slow --url "$url" --dialect "$dialect" --label "$name" --secs "$SLOW_SECS" \
    --server-pid "$pid" || failed "$name")$'\n'
  stop
done

echo "==> codec micro-benchmarks (criterion)"
codec_rows=$(cargo bench --locked -p switchboard-protocol --bench codec -- --warm-up-time 1 \
  --measurement-time 3 2>/dev/null | awk '
    /^codec\// { name = $0; sub(/^codec\//, "", name); sub(/ +time:.*/, "", name) }
    /thrpt:/ && name != "" { gsub(/[][]/, ""); printf "| %s | %s %s |\n", name, $4, $5; name = "" }')

echo "==> web bundle size (trunk build --release)"
trunk build --release >/dev/null 2>&1
wasm=$(ls dist/*_bg.wasm); js=$(ls dist/*.js | grep -v _bg | head -n1)
size_rows="| wasm | $(stat -c %s "$wasm") | $(gzip -9c "$wasm" | wc -c) |"$'\n'
size_rows+="| JS glue | $(stat -c %s "$js") | $(gzip -9c "$js" | wc -c) |"$'\n'

summary_rows=$({ echo "#fanout"; printf '%s' "$fanout_rows"; echo "#rpc"; printf '%s' "$rpc_rows"
                echo "#idle"; printf '%s' "$idle_rows"; } | awk -f bench/summary.awk)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
out=docs/benchmarks.md
{
  echo "# Benchmarks"
  echo
  echo "Produced by \`scripts/bench.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'): $(nproc) cores ($cpu),"
  echo "$(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), $(rustc --version), node $(node --version)."
  echo "Each server pinned to core 0, the load generator (\`bench/\`, tokio-tungstenite, one"
  echo "worker thread) to core 1; loopback; connections spread over 127.0.0.1–50. Numbers from"
  echo "a shared, noisy machine: compare the rows of one run, not runs."
  echo
  echo "## Summary: Switchboard against each peer, from the tables below"
  echo
  echo "Ratios are Switchboard's result over the peer's for throughput (its better queue"
  echo "setting) and the peer's over Switchboard's for latency and memory (its defaults):"
  echo "above 1× means Switchboard does better. ∞: the peer never qualified."
  echo
  echo "| server | fan-out: most delivered/s at p99 ≤ 100 ms, no loss | × | fan-out: most delivered/s at any rate | × | request p99 ms | × | idle KiB per connection (×) |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s\n' "$summary_rows"
  echo
  echo "## Fan-out: 1 publisher, $SUBS subscribers, 100-byte payloads, $SECS s per rate"
  echo
  echo "Delivered = messages received by all subscribers per second. Latency = publish to"
  echo "delivery. CPU in % of one core (a load generator near 100% is the limit, not the server)."
  echo "Per-subscriber bounds: Switchboard's queue holds 256 frames by default (then the"
  echo "subscriber is closed with 4108 and counts as loss), the second Switchboard row has 1,024"
  echo "like the socketioxide peer's buffer and the bare axum broadcast ring; Node buffers without"
  echo "bound (what is still buffered after the 5 s drain window counts as loss)."
  echo
  echo "| server | subscribers | publish rate/s | delivered/s | loss % | p50 ms | p99 ms | max ms | server CPU % | loadgen CPU % |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  printf '%s' "$fanout_rows"
  echo
  echo "## Request/response: $RPC_CONNS connections, back-to-back round trips, $SECS s"
  echo
  echo "Switchboard answers \`request\` \`time\` through its method table; the peers echo."
  echo
  echo "| server | connections | round trips/s | p50 ms | p99 ms | max ms | server CPU % | loadgen CPU % |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s' "$rpc_rows"
  echo
  echo "## Idle connections: $IDLE, subscribed (Switchboard) or open (peers)"
  echo
  echo "| server | connections | RSS before MiB | RSS after MiB | KiB per connection |"
  echo "|---|---|---|---|---|"
  printf '%s' "$idle_rows"
  echo
  echo "## Reconnect storm: $STORM subscribed clients, server restarted"
  echo
  echo "The server gets SIGTERM and is started again on the same address as soon as it has"
  echo "exited (typically 50–100 ms down). Every client reconnects (and resubscribes) on its own"
  echo "schedule: attempt n after a drop waits min(30 s, 500 ms · 2ⁿ), times a uniform random"
  echo "factor with full jitter (the \`use_websocket\` hook's default), times 1 without. All back ="
  echo "seconds from the first drop until every client is connected and subscribed again; peak"
  echo "attempts/s over any 100 ms and any 1 s window."
  echo
  echo "| server | clients | jitter | all back s | attempts | failed attempts | peak attempts/s (100 ms) | peak attempts/s (1 s) |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s' "$storm_rows"
  echo
  echo "## Slow consumers: 20 subscribers that read, 10 that never read, 16 KiB messages"
  echo
  echo "One publisher sends 200 messages/s of 16 KiB for $SLOW_SECS s. Owed = what the 10 stalled"
  echo "subscribers would be sent in all; the loopback kernel buffers absorb a few MiB of it per"
  echo "socket, the rest is the server's problem. Server RSS sampled every 50 ms."
  echo
  echo "| server | fast | slow | rate/s | payload bytes | owed MiB | RSS before MiB | RSS peak MiB | RSS end MiB | growth MiB | fast delivered % | fast p99 ms |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s' "$slow_rows"
  echo
  echo "## Codec (criterion, median throughput on one core)"
  echo
  echo "| operation | frames per second |"
  echo "|---|---|"
  printf '%s\n' "$codec_rows"
  echo
  echo "## Web bundle (the demo app, \`trunk build --release\`)"
  echo
  echo "| file | bytes | gzip -9 bytes |"
  echo "|---|---|---|"
  printf '%s' "$size_rows"
  cat bench/ANALYSIS.md
} > "$out"
cat "$out"
