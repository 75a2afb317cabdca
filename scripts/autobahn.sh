#!/usr/bin/env bash
# WebSocket conformance: runs the Autobahn|Testsuite (../shared/tools/autobahn) against the
# server's opt-in raw echo endpoint, with the same read buffer as /ws (512 bytes by default).
# Exits non-zero when any case FAILED. Report: target/autobahn/reports/index.html.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tools="${SWITCHBOARD_SHARED_TOOLS:-../shared/tools}"
[ -x "$tools/autobahn/run.sh" ] || { echo "Autobahn tools not found at $tools/autobahn" >&2; exit 1; }
# SWITCHBOARD_SERVER: a server binary to test (scripts/test.sh passes its debug build);
# by default a release build is made.
server="${SWITCHBOARD_SERVER:-}"
if [ -z "$server" ]; then
  cargo build --locked --release -p switchboard-server
  server=target/release/switchboard-server
fi
log=$(mktemp)
"$server" --addr 127.0.0.1:0 --dist /nonexistent --echo-endpoint --history memory \
  >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q 'listening on' "$log" && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' "$log" | head -n1)
[ -n "$url" ] || { cat "$log"; exit 1; }
"$tools/autobahn/run.sh" "ws://${url#http://}/echo" switchboard target/autobahn
