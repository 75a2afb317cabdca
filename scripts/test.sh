#!/usr/bin/env bash
# Command 2: install what is missing, then run every test: formatting, clippy (native and
# wasm), native tests, wasm tests in headless Chromium against a real server, and the
# end-to-end browser tests against the real server serving the release bundle.
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

step "clippy (native)"
cargo clippy --locked --all-targets -- -D warnings
step "clippy (wasm32: frontend)"
cargo clippy --locked -p switchboard-web --all-targets --target wasm32-unknown-unknown -- -D warnings

step "native tests (protocol, server)"
cargo test --locked
step "native unit tests of the hook's pure parts (backoff, outbox, pacing)"
cargo test --locked -p switchboard-web --lib

step "release web bundle (trunk build --release)"
trunk build --release

step "server for the wasm tests"
server=target/debug/switchboard-server
cargo build --locked -p switchboard-server
log=$(mktemp)
# The wasm test page is served by wasm-bindgen-test-runner on a random port: allow it.
"$server" --addr 127.0.0.1:0 --dist dist --allowed-origins "*" >"$log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q 'listening on' "$log" && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' "$log" | head -n1)
[ -n "$url" ] || { cat "$log"; echo "server did not start" >&2; exit 1; }

step "wasm tests in headless Chromium (server at $url)"
SWITCHBOARD_TEST_WS_URL="ws://${url#http://}/ws" \
  cargo test --locked -p switchboard-web --target wasm32-unknown-unknown --test web

step "end-to-end browser tests (Playwright + Chromium)"
(cd e2e && SWITCHBOARD_SERVER="$PWD/../$server" SWITCHBOARD_DIST="$PWD/../dist" node --test)

step "all tests passed"
