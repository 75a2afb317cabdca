#!/usr/bin/env bash
# Installs whatever is missing to build (and, with --test, to test) Switchboard, then
# prints nothing else. Idempotent: each step checks first and takes ~1 s when all is there.
# Source it (`. scripts/setup.sh`) to also get the PATH it sets up.
#
#   scripts/setup.sh          rust wasm target, wasm-bindgen-cli, trunk, npm tools (wasm-opt),
#                             Debian brotli (the release build precompresses the bundle)
#   scripts/setup.sh --test   also Debian chromium + chromium-driver (browser tests),
#                             redis-server + nginx (the cross-node tests start them as
#                             child processes on free loopback ports) and cargo-fuzz (the
#                             decoder's fuzz targets)
#
# Versions and why (measured on these machines; see docs/development.md):
#   trunk 0.21.14            0.22 needs rustc >= 1.96.1
#   wasm-bindgen-cli         must equal the wasm-bindgen crate in Cargo.lock; installed
#                            without --locked (its lockfile wants a crate the registry lacks)
#   wasm-opt 132 (npm)       Debian's binaryen 108 silently breaks the bundle
#   cargo-fuzz 0.13.2        runs on this stable toolchain with RUSTC_BOOTSTRAP=1
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TRUNK_VERSION=0.21.14
CARGO_FUZZ_VERSION=0.13.2
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

export PATH="$ROOT/e2e/node_modules/.bin:${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export TRUNK_SKIP_VERSION_CHECK=true
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

say() { printf '==> %s\n' "$*"; }

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  # dpkg once failed here with vanished /tmp/apt-dpkg-install-* archives; a retry works.
  for i in 1 2 3; do
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" && return 0
    say "apt-get install failed (try $i), retrying"
    sleep 5
  done
  return 1
}

# Redis (7, with redis-cli) and nginx, Debian's: run by the tests and benchmarks as child
# processes, never as system services.
install_redis() {
  apt_install redis-server nginx
}

# 1. Rust's wasm target.
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  say "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

# 2. wasm-bindgen-cli, exactly the crate's version (also gives wasm-bindgen-test-runner).
wbv=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$ROOT/Cargo.lock")
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$wbv" ] \
  || ! command -v wasm-bindgen-test-runner >/dev/null; then
  say "installing wasm-bindgen-cli $wbv (about 4 min)"
  cargo install wasm-bindgen-cli --version "$wbv" --force
fi

# 3. Trunk.
if [ "$(trunk --version 2>/dev/null | awk '{print $2}')" != "$TRUNK_VERSION" ]; then
  say "installing trunk $TRUNK_VERSION (about 15 min on 2 cores, once)"
  cargo install trunk --version "$TRUNK_VERSION" --locked --force
fi

# 4. Node tools from the committed lockfile: wasm-opt 132 (binaryen) and playwright-core.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt_install nodejs npm
fi
if [ ! -f "$ROOT/e2e/node_modules/.package-lock.json" ] \
  || [ "$ROOT/e2e/package-lock.json" -nt "$ROOT/e2e/node_modules/.package-lock.json" ]; then
  say "installing node packages (e2e/package-lock.json)"
  # PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: we drive Debian's Chromium, never a downloaded one.
  (cd "$ROOT/e2e" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi
# brotli: the release build writes .br copies of the bundle (scripts/post-build.sh).
command -v brotli >/dev/null || apt_install brotli
case "$(wasm-opt --version 2>/dev/null)" in
  *"version 132"*) ;;
  *) echo "wasm-opt on PATH is not version 132: $(command -v wasm-opt)" >&2; exit 1 ;;
esac

# 5. Browser and fuzzer for the tests.
if [ "$want_test" = 1 ]; then
  apt_install chromium chromium-driver
  install_redis
  if [ "$(cargo fuzz --version 2>/dev/null | awk '{print $2}')" != "$CARGO_FUZZ_VERSION" ]; then
    say "installing cargo-fuzz $CARGO_FUZZ_VERSION (about 2 min)"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --force
  fi
fi
