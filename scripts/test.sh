#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs and starts what the tests need,
# then checks formatting and lints and runs every test. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/test-services.sh)"
export WARDEN_TEST_PG MOTO_SERVER

cargo fmt --all --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
