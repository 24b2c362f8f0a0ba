#!/usr/bin/env bash
# Makes sure the toolchain that builds policy plugins is present, installing it when absent.
#
# On these machines `rustup target add` cannot download, so the wasm32 standard library is
# built from Debian's Rust 1.96 sources with -Zbuild-std, and Debian's wasm-component-ld
# links and componentizes in one step. Elsewhere the ordinary path works just as well:
#   rustup target add wasm32-unknown-unknown   (then plain `cargo build --target …`)
# Prints `export` lines (WASM_CARGO, WASM_RUSTC, WASM_LINKER, WASM_LD) on stdout.
set -euo pipefail

log() { echo "wasm-toolchain: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else "$@"; fi; }

WCL=/usr/lib/rustlib/x86_64-unknown-linux-gnu/bin/wasm-component-ld
WASM_LD=/usr/bin/wasm-ld-22
need=()
[ -x /usr/bin/rustc ] || need+=(rustc-web)
[ -x /usr/bin/cargo ] || need+=(cargo-web)
[ -d /usr/lib/rustlib/src/rust/library ] || need+=(rust-web-src)
[ -x "$WCL" ] || need+=(rustc-web)
[ -x "$WASM_LD" ] || need+=(lld-22)
[ -e /usr/bin/rust-lld ] || need+=(rust-web-llvm)
[ -f /usr/lib/wasm32-wasi/libc.a ] || need+=(wasi-libc)   # for the WASI test guest (wasm32-wasip1)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]} (Debian)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    ca-certificates gcc libc6-dev rustc-web cargo-web rust-web-src rust-web-llvm lld-22 wasi-libc >&2
fi
echo "export WASM_CARGO=/usr/bin/cargo WASM_RUSTC=/usr/bin/rustc WASM_LINKER=$WCL WASM_LD=$WASM_LD"
