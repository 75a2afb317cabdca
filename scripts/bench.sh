#!/usr/bin/env bash
# Side-by-side benchmarks: Switchboard, a bare axum broadcast server with batched writes (the
# upper bound on this machine; the naive one that flushes per message as a second row),
# socketioxide (the Rust Socket.IO server), a Node `ws` server and a Node Socket.IO server,
# under the same load generator, in one run. Each server is pinned to core 0 and the load
# generator to core 1 (SERVER_CPUS, LOADGEN_CPUS and LOADGEN_PROCS change that). Loopback only; every workload is bounded in
# connections and time. Writes docs/benchmarks.md (and prints it).
#
# The durable-history workloads (issue 11) run Switchboard alone, with each history setting
# (memory; disk with --durability os; disk with --durability fsync), each on a fresh
# --data-dir.
#
#   scripts/bench.sh                   full run (~14 min)
#   QUICK=1 scripts/bench.sh           fewer connections and shorter phases (~5 min)
#   ONLY=history scripts/bench.sh      only the history workloads (combines with QUICK=1);
#                                      prints their sections and writes them to
#                                      target/bench-history.md, not docs/benchmarks.md
#   ONLY=cluster scripts/bench.sh      only the cross-node fan-out (Redis; issue 12), written
#                                      to target/bench-cluster.md
#   ONLY=fanout scripts/bench.sh       only the fan-out comparison of Switchboard (both queue
#                                      settings) and the two bare axum servers, written to
#                                      target/bench-fanout.md
#   ONLY=transport scripts/bench.sh    only Switchboard's encodings, with and without
#                                      permessage-deflate and TLS (issue 13), written to
#                                      target/bench-transport.md
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh
# The cross-node rows need Redis (Debian's redis-server, as the tests use).
case "${ONLY:-}" in history|fanout|transport) ;; *) install_redis ;; esac

SUBS=${SUBS:-1000}; RATES=${RATES:-250,500,1000,2000}; SECS=${SECS:-5}
# Where the servers and the load generator run, and over how many processes the fan-out's
# subscribers are spread (docs/benchmarks.md: "On a bigger machine").
SERVER_CPUS=${SERVER_CPUS:-0}; LOADGEN_CPUS=${LOADGEN_CPUS:-1}; LOADGEN_PROCS=${LOADGEN_PROCS:-1}
IDLE=${IDLE:-10000}; RPC_CONNS=${RPC_CONNS:-100}; STORM=${STORM:-1000}; SLOW_SECS=${SLOW_SECS:-10}
PUB_CONNS=${PUB_CONNS:-50}; PUB_WINDOW=${PUB_WINDOW:-16}; PUB_CHANNELS=${PUB_CHANNELS:-4}
MISSED=${MISSED:-50}; ONLY=${ONLY:-}
# Rates for the 2 KiB payloads of the transport rows (20× the bytes of the 100-byte ones).
RATES_2K=${RATES_2K:-100,250,500}
if [ "${QUICK:-0}" = 1 ]; then
  SUBS=200; RATES=1000,5000; SECS=2; IDLE=2000; STORM=300; SLOW_SECS=4; PUB_CONNS=20
  RATES_2K=250,1000
fi
CLUSTER_RATES=${CLUSTER_RATES:-$RATES}
case "$ONLY" in ""|history|cluster|fanout|transport) ;; *) echo "ONLY must be empty, history, cluster, fanout or transport" >&2; exit 2 ;; esac
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "==> building (release)"
cargo build --locked --release -p switchboard-server -p switchboard-bench
if [ -z "$ONLY" ] && { [ ! -f bench/peers/node_modules/.package-lock.json ] \
  || [ bench/peers/package-lock.json -nt bench/peers/node_modules/.package-lock.json ]; }; then
  (cd bench/peers && npm ci --no-audit --no-fund --loglevel=error)
fi

pin() { if command -v taskset >/dev/null; then taskset -c "$1" "${@:2}"; else "${@:2}"; fi; }
pids=(); dirs=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "${dirs[@]}"' EXIT

# start NAME CMD...: runs a server on core 0, sets $url and $pid
start() {
  local log; log=$(mktemp)
  # taskset execs the server, so $! is the server itself (its CPU and memory are read).
  if command -v taskset >/dev/null; then taskset -c "$SERVER_CPUS" "$@" >"$log" 2>&1 &
  else "$@" >"$log" 2>&1 & fi
  pid=$!; pids+=("$pid")
  for _ in $(seq 100); do grep -q 'listening on' "$log" && break; sleep 0.1; done
  url="ws://$(grep -o 'https\?://[0-9.:]*' "$log" | head -n1 | sed 's|https\?://||')"
  [ "$url" != "ws://" ] || { cat "$log"; exit 1; }
}
stop() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
lg() { pin "$LOADGEN_CPUS" target/release/loadgen "$@"; }
# A workload that fails (its error is in the log) leaves a row saying so; the run goes on.
failed() { echo "| $1 | failed: see the bench log |"; }

sb_base=(target/release/switchboard-server --addr 127.0.0.1:0 --dist /nonexistent
         --max-connections 30000 --max-connections-per-ip 30000
         --rate-per-sec 1000000 --rate-burst 1000000 --log-format json)
# The comparison rows keep the in-memory history, comparable with the runs before issue 11.
sb=("${sb_base[@]}" --history memory)
# NAME|DIALECT|COMMAND[|fanout-only]
servers=("switchboard|switchboard|${sb[*]}"
         "switchboard, queue 1024|switchboard|${sb[*]} --queue-capacity 1024|fanout-only"
         "bare axum, batched writes|raw|target/release/bare-peer --addr 127.0.0.1:0"
         "bare axum, flush per message (naive)|raw|target/release/bare-peer --addr 127.0.0.1:0 --flush-each|fanout-only"
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

# hist_cmd MODE: Switchboard with history MODE (memory, os or fsync; the last two the disk
# store with that --durability, on a fresh --data-dir); sets $cmd, $hlabel and $dir.
hist_cmd() {
  dir=""
  case $1 in
    memory) cmd="${sb_base[*]} --history memory"; hlabel="switchboard, history memory" ;;
    *) dir=$(mktemp -d); dirs+=("$dir")
       cmd="${sb_base[*]} --history disk --durability $1 --data-dir $dir"
       hlabel="switchboard, disk, $1" ;;
  esac
}

# recover_storm (after hist_cmd, which must run outside the $(…) so that the data dir is
# removed at exit): $STORM subscribed clients, the server restarted (SIGTERM, then the same
# command: address and data dir) while they miss $MISSED messages; prints the load
# generator's row.
recover_storm() {
  local ready out lgpid port
  ready=$(mktemp -u); out=$(mktemp)
  # shellcheck disable=SC2086
  start $cmd; port=${url##*:}
  lg storm-recover --url "$url" --label "$hlabel" --conns "$STORM" --missed "$MISSED" \
    --ready-file "$ready" >"$out" &
  lgpid=$!
  for _ in $(seq 600); do
    { [ -f "$ready" ] || ! kill -0 "$lgpid" 2>/dev/null; } && break; sleep 0.1
  done
  stop
  # shellcheck disable=SC2086
  start ${cmd//127.0.0.1:0/127.0.0.1:$port}
  wait "$lgpid" || failed "$hlabel"
  stop
  cat "$out"; rm -f "$ready" "$out"
}

fanout_rows=""; rpc_rows=""; idle_rows=""; storm_rows=""; slow_rows=""
# ONLY=history and ONLY=cluster: none of the comparison workloads; ONLY=fanout: the fan-out
# of Switchboard and bare axum only.
case "$ONLY" in
  "") ;;
  fanout)
    kept=()
    for entry in "${servers[@]}"; do
      case "$entry" in switchboard*|bare*) kept+=("${entry%|fanout-only}|fanout-only") ;; esac
    done
    servers=("${kept[@]}") ;;
  *) servers=() ;;
esac
for entry in "${servers[@]}"; do
  IFS='|' read -r name dialect cmd only <<<"$entry"
  echo "==> $name: fan-out"
  # shellcheck disable=SC2086
  start $cmd
  fanout_rows+=$(lg fanout --url "$url" --dialect "$dialect" --label "$name" --subs "$SUBS" \
    --rates "$RATES" --secs "$SECS" --server-pid "$pid" --procs "$LOADGEN_PROCS" \
    || failed "$name")$'\n'
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

# Transport (issue 13): Switchboard's fan-out with every client offering permessage-deflate
# (as browsers do) and without, 100-byte and 2 KiB payloads of chat-like text; idle
# connections with compression negotiated.
transport_rows=""; transport_idle=""
if [ -z "$ONLY" ] || [ "$ONLY" = transport ]; then
  # The TLS rows: the server's own rustls with a development certificate.
  tls_dir=$(mktemp -d); dirs+=("$tls_dir")
  target/release/switchboard-dev-cert --out "$tls_dir" >/dev/null
  for payload in 100 2048; do
    rates=$RATES; [ "$payload" = 100 ] || rates=$RATES_2K
    for flags in "" "--deflate" "--msgpack" "--msgpack --deflate" "tls" "tls --deflate"; do
      case "$flags" in
        "") label="JSON" ;; --deflate) label="JSON + deflate" ;;
        --msgpack) label="MessagePack" ;; "--msgpack --deflate") label="MessagePack + deflate" ;;
        tls) label="JSON over TLS" ;; *) label="JSON + deflate over TLS" ;;
      esac
      label="switchboard, $payload B, $label"
      echo "==> transport: $label"
      server=("${sb[@]}")
      if [ "${flags%% *}" = tls ]; then
        flags="--tls-ca $tls_dir/cert.pem${flags#tls}"
        server+=(--tls-cert "$tls_dir/cert.pem" --tls-key "$tls_dir/key.pem")
      fi
      start "${server[@]}"
      # shellcheck disable=SC2086
      transport_rows+=$(lg fanout $flags --url "$url" --dialect switchboard --label "$label" \
        --subs "$SUBS" --rates "$rates" --secs "$SECS" --server-pid "$pid" --payload "$payload" \
        --procs "$LOADGEN_PROCS" || failed "$label")$'\n'
      stop
    done
  done
  echo "==> transport: idle connections with deflate negotiated"
  start "${sb[@]}"
  transport_idle=$(lg idle --deflate --url "$url" --dialect switchboard \
    --label "switchboard, deflate negotiated" --conns "$IDLE" --server-pid "$pid" \
    || failed "switchboard, deflate negotiated")$'\n'
  stop
  echo "==> transport: idle connections over TLS, deflate negotiated"
  start "${sb[@]}" --tls-cert "$tls_dir/cert.pem" --tls-key "$tls_dir/key.pem"
  transport_idle+=$(lg idle --deflate --tls-ca "$tls_dir/cert.pem" --url "$url" \
    --dialect switchboard --label "switchboard, TLS, deflate negotiated" --conns "$IDLE" \
    --server-pid "$pid" || failed "switchboard, TLS, deflate negotiated")$'\n'
  stop
fi
transport_section() {
  echo "## Transport: encodings and permessage-deflate (issue 13)"
  echo
  echo "Switchboard alone, $SUBS subscribers, $SECS s per rate; every client speaks JSON or"
  echo "MessagePack, and offers permessage-deflate (as browsers do) or not. The load"
  echo "generator transcodes MessagePack back to JSON to read it (its CPU, not the server's)."
  echo "Payloads are chat-like text (words"
  echo "from a fixed list), inside the \\`message\\` envelope. Compressed: the server's defaults,"
  echo "no context takeover, level 6, frames of 256 bytes and more, each broadcast compressed"
  echo "once. Wire bytes per delivery: read from the subscribers' sockets when compressed,"
  echo "the frames' size otherwise."
  echo
  echo "| server | subscribers | publish rate/s | delivered/s | loss % | p50 ms | p99 ms | max ms | server CPU % | loadgen CPU % | wire bytes per delivery | server CPU s per M deliveries |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s' "$transport_rows"
  echo
  echo "Idle subscribed connections with compression negotiated (no context takeover: no"
  echo "compression state is held between messages):"
  echo
  echo "| server | connections | RSS before MiB | RSS after MiB | KiB per connection |"
  echo "|---|---|---|---|---|"
  printf '%s' "$transport_idle"
}
if [ "$ONLY" = transport ]; then
  mkdir -p target
  transport_section | tee target/bench-transport.md
  exit 0
fi

# Cross-node fan-out (issue 12): one publisher, $SUBS subscribers, one rate per run so that
# Redis's own counters can be read around it. Every process on core 0.
cluster_rows=""
redis_pid=""; redis_port=""
start_redis() {
  redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  local rdir; rdir=$(mktemp -d); dirs+=("$rdir")
  local cmd=(redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly yes
             --appendfsync always --dir "$rdir")
  # Started directly (not through a function), so that $! is Redis itself, as in start().
  if command -v taskset >/dev/null; then taskset -c "$SERVER_CPUS" "${cmd[@]}" >/dev/null 2>&1 &
  else "${cmd[@]}" >/dev/null 2>&1 & fi
  redis_pid=$!; pids+=("$redis_pid")
  for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
}
# redis_counters: "cpu_seconds commands bytes_in bytes_out"
redis_counters() {
  redis-cli -p "$redis_port" info all | tr -d '\r' | awk -F: '
    /^used_cpu_sys:/ {c += $2} /^used_cpu_user:/ {c += $2}
    /^total_commands_processed:/ {n = $2} /^total_net_input_bytes:/ {i = $2}
    /^total_net_output_bytes:/ {o = $2} END {print c, n, i, o}'
}
# cluster_row NAME NODES: fan-out with the publisher on the first node and the subscribers
# on the others (or on the only one), per rate; appends rows with Redis's cost per message.
cluster_row() {
  local name=$1 nodes=$2 rate before after row first subs_urls also i prefix node_pids
  for rate in ${CLUSTER_RATES//,/ }; do
    first=""; subs_urls=""; also=""; node_pids=(); prefix="b$rate$RANDOM"
    for i in $(seq "$nodes"); do
      # Every node of this run on one prefix: they share the channels.
      start "${sb_base[@]}" --redis-url "redis://127.0.0.1:$redis_port/" --redis-prefix "$prefix"
      node_pids+=("$pid")
      if [ -z "$first" ]; then first=$url; fpid=$pid
      else subs_urls+="${subs_urls:+,}$url"; also+="${also:+,}$pid"; fi
    done
    before=$(redis_counters)
    row=$(lg fanout --url "$first" --dialect switchboard --label "$name" --subs "$SUBS" \
      --rates "$rate" --secs "$SECS" --server-pid "$fpid" \
      ${subs_urls:+--sub-urls "$subs_urls"} --also-pids "${also:+$also,}$redis_pid" \
      || failed "$name")
    after=$(redis_counters)
    for p in "${node_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    cluster_rows+="${row%|}| $(awk -v b="$before" -v a="$after" -v n=$((rate * SECS)) 'BEGIN {
      split(b, x, " "); split(a, y, " ");
      printf "%.1f | %.2f | %.0f | %.0f |", 1e6 * (y[1] - x[1]) / n, (y[2] - x[2]) / n,
        (y[3] - x[3]) / n, (y[4] - x[4]) / n }')"$'\n'
  done
}
if [ -z "$ONLY" ] || [ "$ONLY" = cluster ]; then
  echo "==> cross-node fan-out"
  start "${sb[@]}"
  cluster_rows+=$(lg fanout --url "$url" --dialect switchboard --label "one node, in-memory broker" \
    --subs "$SUBS" --rates "$CLUSTER_RATES" --secs "$SECS" --server-pid "$pid" \
    | sed 's/|$/| – | – | – | – |/' || failed "one node")$'\n'
  stop
  start_redis
  cluster_row "one node on Redis" 1
  cluster_row "3 nodes on Redis: publisher on A, subscribers on B and C" 3
fi
cluster_section() {
  echo "## Cross-node fan-out (issue 12): 1 publisher, $SUBS subscribers, 100-byte payloads, $SECS s per rate"
  echo
  if [ "$ONLY" = cluster ]; then
    echo "Rows from \`${QUICK:+QUICK=$QUICK }ONLY=cluster scripts/bench.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC')."
    echo
  fi
  echo "The fan-out workload, through Redis $(redis-server --version | grep -o 'v=[0-9.]*' | cut -c3-)"
  echo "(append-only file, \`appendfsync always\`, as docs/scaling.md recommends). One node"
  echo "on Redis: publisher and subscribers on it, every message still goes through Redis"
  echo "(script, stream, pub/sub). Three nodes: the publisher on node A, the subscribers split"
  echo "between nodes B and C. Every node and Redis pinned to core 0, the load generator to core"
  echo "1: the CPU column is all of them together, in % of that one core. Redis columns: its"
  echo "CPU time (INFO cpu), commands processed and network bytes (INFO stats), over the"
  echo "messages published (rate × duration)."
  echo
  echo "| setup | subscribers | publish rate/s | delivered/s | loss % | p50 ms | p99 ms | max ms | nodes + Redis CPU % | loadgen CPU % | wire bytes per delivery | nodes + Redis CPU s per M deliveries | Redis CPU µs per message | Redis commands per message | Redis bytes in per message | Redis bytes out per message |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s' "$cluster_rows"
}
if [ "$ONLY" = cluster ]; then
  mkdir -p target
  cluster_section | tee target/bench-cluster.md
  exit 0
fi
if [ "$ONLY" = fanout ]; then
  mkdir -p target
  {
    echo "## Fan-out: 1 publisher, $SUBS subscribers, 100-byte payloads, $SECS s per rate"
    echo
    echo "Rows from \`${QUICK:+QUICK=$QUICK }ONLY=fanout scripts/bench.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC')."
    echo
    echo "| server | subscribers | publish rate/s | delivered/s | loss % | p50 ms | p99 ms | max ms | server CPU % | loadgen CPU % | wire bytes per delivery | server CPU s per M deliveries |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    printf '%s' "$fanout_rows"
  } | tee target/bench-fanout.md
  exit 0
fi

# The durable-history workloads (issue 11): Switchboard alone, per history setting.
publish_rows=""; hfanout_rows=""; recover_rows=""; slow_closed=""
for mode in memory os fsync; do
  # One connection (its own ceiling), then $PUB_CONNS; a fresh server and data dir each.
  for conns in 1 "$PUB_CONNS"; do
    hist_cmd "$mode"
    echo "==> $hlabel: publish with acks, $conns connections"
    # shellcheck disable=SC2086
    start $cmd
    # shellcheck disable=SC2086
    publish_rows+=$(lg publish --url "$url" --label "$hlabel" --conns "$conns" \
      --window "$PUB_WINDOW" --channels "$PUB_CHANNELS" --secs "$SECS" --server-pid "$pid" \
      ${dir:+--data-dir "$dir"} || failed "$hlabel")$'\n'
    stop
  done
  hist_cmd "$mode"
  echo "==> $hlabel: fan-out"
  # shellcheck disable=SC2086
  start $cmd
  hfanout_rows+=$(lg fanout --url "$url" --dialect switchboard --label "$hlabel" --subs "$SUBS" \
    --rates "$RATES" --secs "$SECS" --server-pid "$pid" || failed "$hlabel")$'\n'
  closed=$(curl -fsS "http://${url#ws://}/metrics" 2>/dev/null \
    | awk '/^switchboard_slow_consumers_total/ {print $2}' || true)
  slow_closed+="${slow_closed:+; }${hlabel#switchboard, }: ${closed:-?}"
  stop
done
# The memory row is the control: its history does not survive the restart.
for mode in fsync memory; do
  hist_cmd "$mode"
  echo "==> $hlabel: recovery storm"
  recover_rows+=$(recover_storm)$'\n'
done

history_sections() {
  echo "## Durable history (issue 11): Switchboard alone, per history setting"
  echo
  if [ -n "$ONLY" ]; then
    echo "Rows from \`${QUICK:+QUICK=$QUICK }ONLY=history scripts/bench.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC')$(
      [ "${QUICK:-0}" = 1 ] && printf '%s' ' (a quick run: fewer connections, shorter phases; the full run is still to be done)')."
    echo
  fi
  echo "\`history memory\` is the setting of the comparison tables above; \`disk, os\` and"
  echo "\`disk, fsync\` are the embedded store (the default, \`--history disk\`) with"
  echo "\`--durability os\` (written to the OS, fsync'd within a second) and \`fsync\` (each group"
  echo "commit fsync'd before its publishes are acked and delivered), each on a fresh \`--data-dir\`"
  echo "in $(df -PT "${TMPDIR:-/tmp}" | awk 'NR==2 {print $2}') (\`${TMPDIR:-/tmp}\`) on this VM's virtual disk, where an fsync costs what the host"
  echo "makes it cost. 2 shared cores, noisy: compare the rows of one table, not runs."
  echo
  echo "### Publish with acks: 1 and $PUB_CONNS connections, $PUB_WINDOW unacknowledged publishes each, $PUB_CHANNELS channels, $SECS s"
  echo
  echo "Every publish has an id and is answered by an \`ack\` once stored; each connection keeps"
  echo "$PUB_WINDOW publishes unacknowledged and sends another as each ack arrives, on channel"
  echo "\`bench:{i mod $PUB_CHANNELS}\`; no subscribers; a fresh server (and data dir) per row."
  echo "Acked/s = acks over the run, its drain included. Latency = publish written → ack read."
  echo "The server handles one connection's frames in order and acks a publish once it is"
  echo "stored, so a connection's publishes are stored one at a time (group commits gather"
  echo "publishes from different connections): the 1-connection rows are one connection's"
  echo "ceiling, whatever its window, and the latency includes the wait behind the"
  echo "connection's earlier publishes, p50 ≈ window × time per commit. CPU µs per publish ="
  echo "the server's CPU time (user + system, /proc) over acked publishes. Bytes written per"
  echo "publish = the server's \`write_bytes\` (/proc/<pid>/io: what it sent to storage, the store's"
  echo "pages and its log) over acked publishes; data dir = the size of its files after the run"
  echo "(100 messages and 1,024 publish ids are kept per channel: what is kept, not what was written)."
  echo
  echo "| server | connections | window | channels | acked publishes/s | ack p50 ms | ack p99 ms | ack max ms | server CPU % | loadgen CPU % | server CPU µs per publish | errors | bytes written per publish | data dir MiB after |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s' "$publish_rows"
  echo
  echo "### Fan-out with history: 1 publisher, $SUBS subscribers, 100-byte payloads, $SECS s per rate"
  echo
  echo "The fan-out workload of the fan-out table above, against each history setting in turn."
  echo "A message is delivered once its store has it: with \`disk, fsync\` after an fsync. The"
  echo "publisher's messages have no id, but the server still stores one connection's publishes"
  echo "one at a time (the 1-connection rows above are that ceiling). Above it, the publishes"
  echo "wait in the publisher's socket buffers, which take megabytes before its writes block:"
  echo "latency grows to seconds, and what is not delivered by the end of the 5 s drain counts"
  echo "as loss even when no subscriber was closed (see under the table), and the backlog"
  echo "spills into the next rate's row. Columns as in that table."
  echo
  echo "| server | subscribers | publish rate/s | delivered/s | loss % | p50 ms | p99 ms | max ms | server CPU % | loadgen CPU % | wire bytes per delivery | server CPU s per M deliveries |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s' "$hfanout_rows"
  echo
  echo "Subscribers closed as slow consumers (4108) in these runs, the server's"
  echo "\`switchboard_slow_consumers_total\` after its last rate: $slow_closed."
  echo
  echo "### Recovery storm: $STORM subscribed clients miss $MISSED messages across a restart"
  echo
  echo "Every client is subscribed to one channel and has received 10 messages live. The server"
  echo "gets SIGTERM and is started again on the same address with the same command (and data"
  echo "dir). As soon as it answers, a publisher (retrying every 5 ms) publishes $MISSED messages with"
  echo "ids; a client attempt that would start while those are being published waits for their"
  echo "acks (a few ms), and a client that got in beside the publisher (the restarted server's"
  echo "accept backlog) resubscribes after them, so every client has all $MISSED to recover by"
  echo "replay (replayed = clients × $MISSED when all did). The clients reconnect with full"
  echo "jitter (as in the reconnect storm) and resubscribe with \`since\` = the last position they"
  echo "saw. Down = ms from the first drop until the publisher was welcomed again. Caught up ="
  echo "has every missed message (or was answered unrecovered), s after the first drop: the"
  echo "median client and the last. Recovered / not recovered = the resubscribes' \`subscribed\`"
  echo "answers; replayed = messages received between a resubscribe and its \`subscribed\`."
  echo "Lost, duplicated and out of order count every client's messages before and after the"
  echo "restart, by the sequence number the publisher put in each. The \`history memory\` row is"
  echo "the control: its streams do not survive a restart (a new epoch), so every client is"
  echo "answered \`epoch\` and loses all $MISSED."
  echo
  echo "| server | clients | missed (acked) | down ms | caught up, median s | all caught up s | attempts | failed attempts | peak attempts/s (100 ms) | peak attempts/s (1 s) | recovered | not recovered | replayed | lost | duplicated | out of order | error frames |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s' "$recover_rows"
}

if [ -n "$ONLY" ]; then
  mkdir -p target
  history_sections | tee target/bench-history.md
  exit 0
fi

echo "==> codec micro-benchmarks (criterion)"
codec_rows=$(cargo bench --locked -p switchboard-protocol --bench codec -- --warm-up-time 1 \
  --measurement-time 3 2>/dev/null | awk '
    /^codec\// { name = $0; sub(/^codec\//, "", name); sub(/ +time:.*/, "", name) }
    /thrpt:/ && name != "" { gsub(/[][]/, ""); printf "| %s | %s %s |\n", name, $4, $5; name = "" }')

echo "==> web bundle size (scripts/bundle-size.sh)"
size_rows=$(./scripts/bundle-size.sh)

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
  echo "| server | subscribers | publish rate/s | delivered/s | loss % | p50 ms | p99 ms | max ms | server CPU % | loadgen CPU % | wire bytes per delivery | server CPU s per M deliveries |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s' "$fanout_rows"
  echo
  transport_section
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
  cluster_section
  echo
  history_sections
  echo
  echo "## Codec (criterion, median throughput on one core)"
  echo
  echo "| operation | frames per second |"
  echo "|---|---|"
  printf '%s\n' "$codec_rows"
  echo
  echo "## What the browser downloads (\`scripts/bundle-size.sh\`, bytes)"
  echo
  printf '%s\n' "$size_rows"
  cat bench/ANALYSIS.md
} > "$out"
cat "$out"
