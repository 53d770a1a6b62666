#!/usr/bin/env bash
# The README's test command: installs and starts what the tests need, then runs every check.
# Safe to re-run; installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build outside the clone so later runs on the same machine are incremental.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/egizml/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

need_component() {
  if ! cargo "$1" --version >/dev/null 2>&1; then
    echo "== installing rustup component $2"
    rustup component add "$2"
  fi
}
need_component fmt rustfmt
need_component clippy clippy

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --locked --all-targets 2>&1 | tee "${TMPDIR:-/tmp}/egizml-test.log"
