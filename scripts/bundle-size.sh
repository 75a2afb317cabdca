#!/usr/bin/env bash
# What the browser downloads, measured: builds the demo app and the two apps of
# examples/bundle-size (a hello-world Leptos app without and with the hook) exactly as the
# release bundle is built (the wasm-release profile, wasm-bindgen, wasm-opt -Oz and the
# passes index.html adds, terser),
# and prints a markdown table of raw, gzip -9 and brotli -q 11 sizes (docs/benchmarks.md,
# "What the browser downloads"). The hook's own cost is `hello + hook` minus `hello`.
#
#   scripts/bundle-size.sh             the stable build (what scripts/run.sh serves)
#   NIGHTLY=1 scripts/bundle-size.sh   also the opt-in size build: std rebuilt with the
#                                      immediate-abort panic strategy, no panic locations,
#                                      no Debug formatting (nightly flags, through
#                                      RUSTC_BOOTSTRAP on this stable toolchain; needs
#                                      `rustup component add rust-src`)
#   TWIGGY=1 scripts/bundle-size.sh    also twiggy's top items of the demo (before wasm-opt,
#                                      names kept; `cargo install twiggy`)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/setup.sh
out="${OUT:-target/bundle-size}"
# The wasm-opt passes after -Oz, as index.html gives them to Trunk.
read -r -a opt_params <<<"$(sed -n 's/.*data-wasm-opt-params="\([^"]*\)".*/\1/p' index.html)"
mkdir -p "$out"

# build <label> <package> <bin> [extra cargo args...]: one row.
build() {
  local label=$1 pkg=$2 bin=$3
  shift 3
  local dir="$out/$label"
  rm -rf "$dir" && mkdir -p "$dir"
  cargo build -q --locked "$@" --profile wasm-release --target wasm32-unknown-unknown -p "$pkg" --bin "$bin"
  local tdir="${CARGO_TARGET_DIR:-target}"
  wasm-bindgen --target web --no-typescript --out-dir "$dir" \
    "$tdir/wasm32-unknown-unknown/wasm-release/$bin.wasm"
  [ "${TWIGGY:-}" = 1 ] && [ "$bin" = switchboard-web ] && cp "$dir/${bin}_bg.wasm" "$dir/names.wasm"
  wasm-opt -Oz "$dir/${bin}_bg.wasm" "${opt_params[@]}" -o "$dir/app.wasm"
  terser "$dir/$bin.js" --module --compress --mangle -o "$dir/app.js"
  local w="$dir/app.wasm" j="$dir/app.js"
  local wb jb
  wb=$(brotli -cq 11 "$w" | wc -c)
  jb=$(brotli -cq 11 "$j" | wc -c)
  printf '| %s | %s | %s | %s | %s | %s | **%s** |\n' "$label" \
    "$(stat -c%s "$w")" "$(gzip -9c "$w" | wc -c)" "$wb" \
    "$(stat -c%s "$j")" "$(gzip -9c "$j" | wc -c)" "$(( wb + jb ))"
}

echo "| app | wasm | wasm gzip | wasm brotli | JS (minified) | JS gzip | wasm + JS brotli |"
echo "|---|---:|---:|---:|---:|---:|---:|"
build hello switchboard-bundle-size hello
build "hello + hook" switchboard-bundle-size hello-hook
build "hello + hook, msgpack feature" switchboard-bundle-size hello-hook --features msgpack
build "demo app" switchboard-web switchboard-web
if [ "${NIGHTLY:-}" = 1 ]; then
  export RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=target/size-nightly
  export RUSTFLAGS="-Zlocation-detail=none -Zfmt-debug=none -Zunstable-options -Cpanic=immediate-abort"
  std=(-Zbuild-std=std,panic_abort)
  build "hello (nightly size build)" switchboard-bundle-size hello "${std[@]}"
  build "hello + hook (nightly size build)" switchboard-bundle-size hello-hook "${std[@]}"
  build "demo app (nightly size build)" switchboard-web switchboard-web "${std[@]}"
fi
if [ "${TWIGGY:-}" = 1 ]; then
  echo
  twiggy top -n 30 "$out/demo app/names.wasm"
fi
