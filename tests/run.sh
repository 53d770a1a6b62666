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
# --- service (issue 6): PostgreSQL and Prometheus servers for the store and scrape tests -------------
# The tests start their own throwaway PostgreSQL cluster (initdb + pg_ctl, as the `postgres` user when
# run as root) and their own Prometheus, both on 127.0.0.1; here we only install the Debian packages.
# Under CI=true the tests fail (not skip) when these are missing.
service_pkgs=()
dpkg -s postgresql >/dev/null 2>&1 || service_pkgs+=(postgresql)
# MQTT tests (issue 3): each test starts its own Mosquitto on a free port from a generated config.
dpkg -s mosquitto >/dev/null 2>&1 || service_pkgs+=(mosquitto)
command -v prometheus >/dev/null 2>&1 || service_pkgs+=(prometheus)
# issue 4: InfluxDB 1.x for the history loader test (tests/it/influx.rs starts its own influxd).
command -v influxd >/dev/null 2>&1 || service_pkgs+=(influxdb)
if [ "${#service_pkgs[@]}" -gt 0 ]; then
  echo "== installing ${service_pkgs[*]}"
  if [ -z "${EGIZML_APT_UPDATED:-}" ]; then
    apt-get update -qq
    export EGIZML_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${service_pkgs[@]}"
fi
# --- end service ---------------------------------------------------------------------------------

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --locked --all-targets 2>&1 | tee "${TMPDIR:-/tmp}/egizml-test.log"
