#!/usr/bin/env bash
# Fuzzes what reads untrusted bytes (shared/fuzz): the frame decoders, `decode_client`
# (what the server runs on every text a client sends), `decode_server` (what the browser
# runs on every server text) and `decode_msgpack` (what the server runs on a MessagePack
# connection's binary messages), and `inflate` (the permessage-deflate reader the server
# runs on every byte of a client that negotiated compression), with cargo-fuzz and
# libFuzzer under AddressSanitizer. No target may panic; the decoders must re-encode every
# frame they accept into text they accept again, and the inflater must keep its memory
# bound, pass uncompressed streams unchanged and give back every message of a valid stream.
#
#   scripts/fuzz.sh                  30 s per target
#   FUZZ_SECS=600 scripts/fuzz.sh    longer
#
# cargo-fuzz needs nightly-only rustc flags; RUSTC_BOOTSTRAP=1 lets this stable toolchain
# accept them (for the fuzz build only). New inputs go to shared/fuzz/corpus/ (ignored by
# git); a crash is saved under shared/fuzz/artifacts/ and fails the run. Reproduce one
# with `cd shared && RUSTC_BOOTSTRAP=1 cargo fuzz run decode_client fuzz/artifacts/...`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh --test

secs=${FUZZ_SECS:-30}
cd shared
for target in decode_client decode_server decode_msgpack inflate; do
  seeds=fuzz/seeds/${target#decode_}
  dict=(-dict=fuzz/frames.dict)
  [ "$target" = inflate ] && dict=()
  mkdir -p "fuzz/corpus/$target"
  echo "==> fuzzing $target for ${secs}s"
  log=$(mktemp)
  if ! RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "fuzz/corpus/$target" "$seeds" -- \
    "${dict[@]}" -max_total_time="$secs" -max_len=4096 -print_final_stats=1 \
    >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target $target failed (the input is under shared/fuzz/artifacts/$target)" >&2
    exit 1
  fi
  grep -E '^(Done|stat::peak_rss_mb)' "$log"
done
