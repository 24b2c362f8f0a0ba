#!/usr/bin/env bash
# Installs (when absent) the stock toolchains for policies in Python and JavaScript into
# target/guest-tools: componentize-py from PyPI and componentize-js from npm, both pinned.
# Idempotent. Prints the two commands as shell assignments on stdout:
#
#   eval "$(scripts/guest-toolchains.sh)"; "$COMPONENTIZE_PY" --version
set -euo pipefail
cd "$(dirname "$0")/.."

PY_VERSION=0.25.1
JS_VERSION=0.23.0
TOOLS=$PWD/target/guest-tools
log() { echo "guest-toolchains: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else "$@"; fi; }
apt() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

PY=$TOOLS/py/bin/componentize-py
if ! { [ -x "$PY" ] && "$PY" --version 2>/dev/null | grep -q "$PY_VERSION"; }; then
  log "installing componentize-py $PY_VERSION (PyPI)"
  command -v python3 >/dev/null || apt python3
  python3 -m venv --help >/dev/null 2>&1 || apt python3-venv
  rm -rf "$TOOLS/py"
  python3 -m venv "$TOOLS/py" >&2 || { apt python3-venv && python3 -m venv "$TOOLS/py" >&2; }
  "$TOOLS/py/bin/pip" install -q --disable-pip-version-check "componentize-py==$PY_VERSION" >&2
fi

JS=$TOOLS/js/node_modules/.bin/componentize-js
if ! { [ -x "$JS" ] && grep -q "\"version\": \"$JS_VERSION\"" "$TOOLS/js/node_modules/@bytecodealliance/componentize-js/package.json" 2>/dev/null; }; then
  log "installing componentize-js $JS_VERSION (npm)"
  command -v npm >/dev/null || apt nodejs npm
  mkdir -p "$TOOLS/js"
  (cd "$TOOLS/js" && npm install --silent --no-audit --no-fund --no-save "@bytecodealliance/componentize-js@$JS_VERSION" >&2)
fi

echo "COMPONENTIZE_PY='$PY'"
echo "COMPONENTIZE_JS='$JS'"
