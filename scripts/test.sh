#!/usr/bin/env bash
# Command 2: install what is missing, then run every test: formatting, clippy (native and
# wasm), native tests, a short fuzz run of the frame decoders and the inflater, wasm tests in headless
# Chromium against a real server, the end-to-end browser tests against the real server
# serving the release bundle, and the Autobahn conformance suite. The native tests include
# the cross-node ones: real redis-server, several server processes and nginx, all started
# as child processes on free loopback ports.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh --test

T0=$(date +%s)
step() { echo "==> [+$(( $(date +%s) - T0 ))s] $*"; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

step "cargo fmt --check"
cargo fmt --all --check

# scripts/bench.sh writes docs/benchmarks.md as fresh tables followed by bench/ANALYSIS.md:
# the hand-written part must be the same in both, or the next benchmark run loses edits.
step "docs/benchmarks.md ends with bench/ANALYSIS.md"
diff -u <(tail -n +2 bench/ANALYSIS.md) \
  <(sed -n '/^## Reading these numbers, and the targets/,$p' docs/benchmarks.md) ||
  { echo "edit bench/ANALYSIS.md and docs/benchmarks.md together (the diff above)" >&2; exit 1; }

step "clippy (native: protocol, client, deflate, server, bench, the axum example)"
cargo clippy --locked --all-targets -p switchboard-protocol -p switchboard-client -p switchboard-deflate \
  -p switchboard-server -p switchboard-bench -p switchboard-example-axum \
  --features switchboard-client/native -- -D warnings
step "clippy (native: the Leptos hook compiles for SSR)"
cargo clippy --locked -p switchboard-leptos -- -D warnings
step "clippy (wasm32: the client core)"
cargo clippy --locked -p switchboard-client --target wasm32-unknown-unknown -- -D warnings
step "clippy (wasm32: the hook, the demo, the bundle-size apps)"
cargo clippy --locked -p switchboard-leptos -p switchboard-web -p switchboard-bundle-size --all-targets \
  --target wasm32-unknown-unknown -- -D warnings

step "native tests (protocol, client core and native client, hook outside a browser, deflate, server and cross-node on Redis, bench helpers, the axum example)"
# setup.sh --test installed Redis and nginx: their tests must run here, not skip.
SWITCHBOARD_REQUIRE_REDIS=1 cargo test --locked -p switchboard-protocol -p switchboard-client -p switchboard-leptos \
  -p switchboard-deflate -p switchboard-server -p switchboard-bench -p switchboard-example-axum --features switchboard-client/native

step "fuzzing the frame decoders and the inflater (cargo-fuzz, ${FUZZ_SECS:-20} s per target)"
FUZZ_SECS=${FUZZ_SECS:-20} ./scripts/fuzz.sh

step "release web bundle (trunk build --release)"
trunk build --release

step "server for the wasm tests"
server=target/debug/switchboard-server
cargo build --locked -p switchboard-server --bins
log=$(mktemp)
# The wasm test page is served by wasm-bindgen-test-runner on a random port: allow it.
"$server" --addr 127.0.0.1:0 --dist dist --allowed-origins "*" --data-dir "$(mktemp -d)" \
  >"$log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q 'listening on' "$log" && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' "$log" | head -n1)
[ -n "$url" ] || { cat "$log"; echo "server did not start" >&2; exit 1; }

# A second server that requires tokens, and a token for it, for the token-provider test.
auth_log=$(mktemp)
"$server" --addr 127.0.0.1:0 --dist dist --allowed-origins "*" --jwt-secret wasm-test-secret \
  --auth-timeout 2s --history memory >"$auth_log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q 'listening on' "$auth_log" && break; sleep 0.1; done
auth_url=$(grep -o 'http://[0-9.:]*' "$auth_log" | head -n1)
[ -n "$auth_url" ] || { cat "$auth_log"; echo "auth server did not start" >&2; exit 1; }
token=$(SWITCHBOARD_JWT_SECRET=wasm-test-secret target/debug/switchboard-token --sub wasm-user --subscribe 'room:*')

step "wasm tests in headless Chromium (servers at $url and $auth_url)"
SWITCHBOARD_TEST_WS_URL="ws://${url#http://}/ws" \
SWITCHBOARD_TEST_AUTH_WS_URL="ws://${auth_url#http://}/ws" \
SWITCHBOARD_TEST_TOKEN="$token" \
  cargo test --locked -p switchboard-web --target wasm32-unknown-unknown --test web

step "end-to-end browser tests (Playwright + Chromium)"
(cd e2e && SWITCHBOARD_SERVER="$PWD/../$server" SWITCHBOARD_DIST="$PWD/../dist" node --test)

step "WebSocket conformance (Autobahn|Testsuite against the opt-in /echo endpoint)"
if [ -x "${SWITCHBOARD_SHARED_TOOLS:-../shared/tools}/autobahn/run.sh" ]; then
  SWITCHBOARD_SERVER="$server" ./scripts/autobahn.sh
else
  echo "SKIPPED: the Autobahn tools (../shared/tools/autobahn) are not beside this checkout"
fi

step "all tests passed"
