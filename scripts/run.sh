#!/usr/bin/env bash
# Command 1: install what is missing, build the release web bundle, and run the server on
# http://127.0.0.1:8080 (override with SWITCHBOARD_ADDR). Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh

echo "==> building the web bundle (trunk build --release)"
trunk build --release
echo "==> building the server"
cargo build --release --locked -p switchboard-server
addr="${SWITCHBOARD_ADDR:-127.0.0.1:8080}"
echo "==> open http://$addr in your browser (Ctrl-C stops the server)"
# The demo's live ticker channel; any other option can follow as arguments.
exec target/release/switchboard-server --addr "$addr" --dist dist --demo-ticker 250ms "$@"
