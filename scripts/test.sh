#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs and starts what the tests need,
# then checks formatting and lints and runs every test. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/test-services.sh)"
export WARDEN_TEST_PG MOTO_SERVER SCHEMATHESIS CHROMIUM PROMTOOL

# Rebuild every plugin and the purpose-built test guests from source (installing the wasm
# toolchain if absent); the suite tests what was just built, not the committed components.
scripts/build-plugins.sh --tests --out target/plugins
export WARDEN_TEST_PLUGINS=$PWD/target/plugins

cargo fmt --all --check
cargo clippy --all-targets --locked -- -D warnings
cargo clippy --all-targets --locked --features warden/testing -- -D warnings
cargo test --all-targets --locked --features warden/testing
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --locked
echo "test.sh: the status page screenshot is target/artifacts/status-page.png" >&2
