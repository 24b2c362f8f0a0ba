#!/usr/bin/env bash
# Builds every policy crate in plugins/ (and, with --tests, the purpose-built guests in
# tests/guests/) to WebAssembly components, and copies them to OUT (default: plugins/,
# where schedules.toml points). The first build compiles std for wasm32 (about a minute);
# later builds take seconds.
#
#   scripts/build-plugins.sh [--out DIR] [--tests]
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=plugins
TESTS=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --tests) TESTS=1; shift ;;
    *) echo "usage: $0 [--out DIR] [--tests]" >&2; exit 2 ;;
  esac
done

eval "$(scripts/wasm-toolchain.sh)"

crates=()
for dir in plugins/*/; do
  name=$(basename "$dir")
  [ -f "$dir/Cargo.toml" ] && [ "$name" != sdk ] && crates+=("$name")
done
if [ "$TESTS" = 1 ]; then
  for dir in tests/guests/*/; do
    name=$(basename "$dir")
    [ "$name" != wasi-guest ] && crates+=("$name")
  done
fi
args=()
for c in "${crates[@]}"; do args+=(-p "$c"); done

# Debian's rustc and cargo, ahead of any rustup shims; a target dir of their own so the two
# compilers never rebuild each other's artifacts.
PATH=/usr/bin:$PATH RUSTC=$WASM_RUSTC RUSTC_BOOTSTRAP=1 \
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=$WASM_LINKER \
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="-Clink-arg=--wasm-ld-path=$WASM_LD -Clink-arg=-zstack-size=131072" \
  "$WASM_CARGO" build --locked --profile wasm --target wasm32-unknown-unknown \
    -Zbuild-std=std,panic_abort --target-dir target/wasm "${args[@]}" >&2

if [ "$TESTS" = 1 ]; then
  # The WASI guest is built the ordinary way for WASI: wasm32-wasip1 std against Debian's
  # wasi-libc, made a component by wasm-component-ld with its preview1 reactor adapter.
  PATH=/usr/bin:$PATH RUSTC=$WASM_RUSTC RUSTC_BOOTSTRAP=1 \
  CARGO_TARGET_WASM32_WASIP1_LINKER=$WASM_LINKER \
  CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS="-L/usr/lib/wasm32-wasi -Clink-self-contained=no -Clink-arg=--wasm-ld-path=$WASM_LD -Clink-arg=--wasi-adapter=reactor" \
    "$WASM_CARGO" build --locked --profile wasm --target wasm32-wasip1 \
      -Zbuild-std=std,panic_abort --target-dir target/wasm -p wasi-guest >&2
fi

mkdir -p "$OUT"
[ "$TESTS" = 1 ] && crates+=(wasi-guest)
for c in "${crates[@]}"; do
  src=target/wasm/wasm32-unknown-unknown/wasm/${c//-/_}.wasm
  [ "$c" = wasi-guest ] && src=target/wasm/wasm32-wasip1/wasm/wasi_guest.wasm
  # A component starts 00 61 73 6d 0d 00 01 00; a core module would be refused by the host.
  magic=$(head -c 8 "$src" | od -An -tx1 | tr -d ' \n')
  [ "$magic" = 0061736d0d000100 ] || { echo "build-plugins: $src is not a component ($magic)" >&2; exit 1; }
  cp "$src" "$OUT/$c.wasm"
  echo "build-plugins: $OUT/$c.wasm ($(stat -c %s "$OUT/$c.wasm") bytes)" >&2
done

if [ "$TESTS" = 1 ]; then
  # The policies in Python and JavaScript, with the stock toolchains and their stock command
  # lines against the `policy` world. A build is kept while its source, wit/ and the tool
  # are unchanged (componentize-py takes ~25 s, componentize-js ~40 s).
  eval "$(scripts/guest-toolchains.sh)"
  KEEP=target/guest-tools/built
  mkdir -p "$KEEP"
  for dir in plugins/*/; do
    name=$(basename "$dir")
    if [ -f "$dir/app.py" ]; then tool=$COMPONENTIZE_PY; src=$dir/app.py
    elif [ -f "$dir/app.js" ]; then tool=$COMPONENTIZE_JS; src=$dir/app.js
    else continue; fi
    stamp=$(cat "$src" wit/*.wit "$tool" | sha256sum | cut -c1-16)
    if [ ! -f "$KEEP/$name.wasm" ] || [ "$(cat "$KEEP/$name.stamp" 2>/dev/null)" != "$stamp" ]; then
      echo "build-plugins: building $name with $(basename "$tool")" >&2
      if [ "$tool" = "$COMPONENTIZE_PY" ]; then
        wit=$PWD/wit out=$PWD/$KEEP/$name.wasm
        (cd "$dir" && "$COMPONENTIZE_PY" -d "$wit" -w policy componentize app -o "$out") >&2
      else
        "$COMPONENTIZE_JS" "$src" --wit wit -n policy -o "$KEEP/$name.wasm" >&2
      fi
      echo "$stamp" > "$KEEP/$name.stamp"
    fi
    cp "$KEEP/$name.wasm" "$OUT/$name.wasm"
    echo "build-plugins: $OUT/$name.wasm ($(stat -c %s "$OUT/$name.wasm") bytes)" >&2
  done
fi
