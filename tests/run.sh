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

# --- External services for the transport tests (Kafka-protocol broker) ----------------------------
# The tests start their own broker per test on a free 127.0.0.1 port; here we only make sure the
# binary exists. tansu 0.6.0: unpacked from the prebuilt cache in ../shared/tools when present, else
# built with cargo (20-30 min on 2 cores, once).
EGIZML_BIN="$HOME/.cache/egizml/bin"
export EGIZML_TANSU="${EGIZML_TANSU:-$EGIZML_BIN/tansu}"
if [ ! -x "$EGIZML_TANSU" ]; then
  mkdir -p "$EGIZML_BIN"
  if [ -f ../shared/tools/tansu-0.6.0-x86_64-linux-gnu.xz ]; then
    echo "== unpacking tansu 0.6.0 from ../shared/tools"
    xz -dc ../shared/tools/tansu-0.6.0-x86_64-linux-gnu.xz > "$EGIZML_TANSU.tmp"
    chmod +x "$EGIZML_TANSU.tmp" && mv "$EGIZML_TANSU.tmp" "$EGIZML_TANSU"
  else
    echo "== installing tansu 0.6.0 with cargo (once)"
    cargo install tansu --version 0.6.0 --locked --features dynostore,libsql --root "$HOME/.cache/egizml"
  fi
fi
# ---------------------------------------------------------------------------------------------------

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --locked --all-targets 2>&1 | tee "${TMPDIR:-/tmp}/egizml-test.log"
