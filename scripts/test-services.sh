#!/usr/bin/env bash
# Installs (when absent) and starts what the test suite talks to: PostgreSQL, an
# S3-compatible server (moto), schemathesis for the API fuzz, Debian's Chromium for the status-page test, promtool (prometheus) for the metrics and alerting rules and libfaketime for the clock-step test. Idempotent: safe to run again and again.
# Prints `export` lines for the test environment on stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "test-services: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else "$@"; fi; }

# --- PostgreSQL ------------------------------------------------------------------------
PG_URL=${WARDEN_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  log "installing PostgreSQL (apt-get)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
for version in $(ls /etc/postgresql 2>/dev/null); do
  if ! pg_ctlcluster "$version" main status >/dev/null 2>&1; then
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
  fi
done
for _ in $(seq 1 60); do
  pg_isready -q -h 127.0.0.1 -p 5432 && break
  sleep 0.5
done
pg_isready -h 127.0.0.1 -p 5432 >&2 || { log "PostgreSQL is not accepting connections on 127.0.0.1:5432"; exit 1; }
if ! psql "$PG_URL" -Atqc 'SELECT 1' >/dev/null 2>&1; then
  # A fresh Debian install asks for a password over TCP: give the postgres role one.
  log "setting a password for the postgres role (fresh install)"
  as_root su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'warden'\"" >&2
  PG_URL=postgres://postgres:warden@127.0.0.1:5432/postgres
  psql "$PG_URL" -Atqc 'SELECT 1' >/dev/null
fi
# Sweep databases left by earlier, interrupted test runs.
for db in $(psql "$PG_URL" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'warden\_t\_%'"); do
  psql "$PG_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
done
# And the least-privilege roles the grant tests create (their databases are gone by now).
for role in $(psql "$PG_URL" -Atqc "SELECT rolname FROM pg_roles WHERE rolname LIKE 'warden\_p\_%'"); do
  psql "$PG_URL" -qc "DROP ROLE IF EXISTS \"$role\"" >/dev/null 2>&1 || true
done
echo "export WARDEN_TEST_PG='$PG_URL'"

# --- S3: moto's server, in a virtualenv of our own ---------------------------------------
VENV=${WARDEN_TEST_VENV:-$PWD/target/test-venv}
MOTO_VERSION=5.2.1
if ! "$VENV/bin/moto_server" --help >/dev/null 2>&1; then
  log "installing moto[server]==$MOTO_VERSION into $VENV"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
fi
echo "export MOTO_SERVER='$VENV/bin/moto_server'"

# --- schemathesis, which fuzzes the admin API from its OpenAPI document ----------------------
SCHEMATHESIS_VERSION=4.32.5
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  log "installing schemathesis==$SCHEMATHESIS_VERSION into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >&2
fi
echo "export SCHEMATHESIS='$VENV/bin/schemathesis'"

# --- Chromium, for the status page in a real browser --------------------------------------
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
  log "installing chromium (apt-get)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || true
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
fi
echo "export CHROMIUM='$CHROMIUM'"

# --- promtool (Debian's prometheus), for /metrics and the alerting rules in deploy/ --------
PROMTOOL=${PROMTOOL:-/usr/bin/promtool}
if [ ! -x "$PROMTOOL" ]; then
  log "installing prometheus for promtool (apt-get)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || true
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2
fi
echo "export PROMTOOL='$PROMTOOL'"

# --- libfaketime (Debian's faketime), to step the wall clock of one warden process --------
FAKETIME_LIB=${WARDEN_TEST_FAKETIME:-/usr/lib/$(uname -m)-linux-gnu/faketime/libfaketime.so.1}
if [ ! -e "$FAKETIME_LIB" ]; then
  log "installing faketime (apt-get)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || true
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >&2
fi
echo "export WARDEN_TEST_FAKETIME='$FAKETIME_LIB'"
