#!/usr/bin/env bash
# WebSocket conformance: runs the Autobahn|Testsuite (../shared/tools/autobahn) against the
# server's opt-in raw echo endpoint, with the same read buffer as /ws (512 bytes by default),
# every case, the permessage-deflate ones (12.*, 13.*) included. Exits non-zero when any
# case FAILED. Reports: target/autobahn/{base,deflate}/reports/index.html.
#
# The compression cases are most of the time (the suite's Python 2 client does ~1,000
# round trips per case, ~5 s each; the server idles), so the run is split into two
# processes beside each other: everything but 13.*, and 13.*. A run that passed is
# recorded by the server binary's hash: the same binary again is not run again
# (AUTOBAHN_FORCE=1 runs it anyway). AUTOBAHN_EXCLUDE="12.* 13.*" skips compression.
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
mkdir -p target/autobahn
stamp="target/autobahn/passed-$(sha256sum "$server" | cut -c1-16)-${AUTOBAHN_EXCLUDE-all}"
stamp="${stamp// /_}"
if [ -f "$stamp" ] && [ -z "${AUTOBAHN_FORCE:-}" ]; then
  echo "autobahn: this server binary passed already ($(cat "$stamp")); AUTOBAHN_FORCE=1 runs it again"
  exit 0
fi
log=$(mktemp)
"$server" --addr 127.0.0.1:0 --dist /nonexistent --echo-endpoint --history memory \
  >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q 'listening on' "$log" && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' "$log" | head -n1)
[ -n "$url" ] || { cat "$log"; exit 1; }
url="ws://${url#http://}/echo"
start=$(date +%s)
if [ -n "${AUTOBAHN_EXCLUDE+set}" ]; then
  "$tools/autobahn/run.sh" "$url" switchboard target/autobahn/base
else
  # Every case's section except 13, and section 13 alone.
  AUTOBAHN_EXCLUDE="13.*" "$tools/autobahn/run.sh" "$url" switchboard target/autobahn/base &
  base=$!
  AUTOBAHN_EXCLUDE="1.* 2.* 3.* 4.* 5.* 6.* 7.* 9.* 10.* 12.*" \
    "$tools/autobahn/run.sh" "$url" switchboard target/autobahn/deflate &
  deflate=$!
  ok=0
  wait $base || ok=1
  wait $deflate || ok=1
  [ $ok = 0 ] || exit 1
fi
echo "$(date -u +%FT%TZ), $(( $(date +%s) - start )) s" > "$stamp"
