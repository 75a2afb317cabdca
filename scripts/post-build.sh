#!/usr/bin/env bash
# Trunk's post_build hook (see Trunk.toml), for release builds only (`trunk serve` builds
# are left alone):
# 1. minifies the wasm-bindgen JS glue with terser (Trunk's own minifier fails on it) and
#    updates its `integrity` digest in index.html, which Trunk computed before this hook;
# 2. writes a brotli (`.br`, quality 11) and a gzip (`.gz`, level 9) copy next to every
#    HTML, JS, CSS, SVG and wasm file, which the server sends to browsers that accept them
#    (server/src/lib.rs). A copy that is not smaller than its file is not written.
# `scripts/setup.sh` installs terser (e2e/package.json) and brotli (Debian); without them
# the bundle still builds, unminified or gzip-only, with a warning.
set -euo pipefail
dir="${1:-${TRUNK_STAGING_DIR:?run by trunk, or give the directory}}"
[ -n "${1:-}" ] || [ "${TRUNK_PROFILE:-}" = "release" ] || exit 0
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
terser="$root/e2e/node_modules/.bin/terser"

# The SRI digest Trunk writes: sha384, base64 (node is there: npm installed terser).
sri() { node -e 'const c=require("crypto");process.stdout.write(c.createHash("sha384").update(require("fs").readFileSync(process.argv[1])).digest("base64"))' "$1"; }
if [ -x "$terser" ]; then
  for js in "$dir"/*.js; do
    [ -e "$js" ] || continue
    old=$(sri "$js")
    "$terser" "$js" --module --compress --mangle -o "$js.min"
    mv "$js.min" "$js"
    new=$(sri "$js")
    # Base64 is [A-Za-z0-9+/=]: none of it is special in a basic sed regex with '|'.
    grep -q "sha384-$old" "$dir/index.html" || { echo "post-build: no integrity for $js" >&2; exit 1; }
    sed -i "s|sha384-$old|sha384-$new|g" "$dir/index.html"
  done
else
  echo "post-build: no terser (run scripts/setup.sh): the JS glue stays unminified" >&2
fi

if ! command -v brotli >/dev/null; then
  echo "post-build: no brotli on PATH (Debian package 'brotli'): writing gzip copies only" >&2
fi
find "$dir" -type f \( -name '*.html' -o -name '*.js' -o -name '*.css' -o -name '*.svg' -o -name '*.wasm' \) |
  while read -r f; do
    size=$(stat -c%s "$f")
    gzip -9 -n -c "$f" >"$f.gz"
    [ "$(stat -c%s "$f.gz")" -lt "$size" ] || rm -f "$f.gz"
    if command -v brotli >/dev/null; then
      brotli -q 11 -f -o "$f.br" "$f"
      [ "$(stat -c%s "$f.br")" -lt "$size" ] || rm -f "$f.br"
    fi
  done
