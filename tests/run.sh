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
# --- mlflow (issue 4): an MLflow tracking server for the MLflow registry backend ---------------------
# tests/it/mlflow.rs starts its own `mlflow server` (SQLite store, proxied artifacts) on a free 127.0.0.1
# port per test run; here we install MLflow from PyPI into a venv outside the clone, only when missing.
# A light install: mlflow (no deps) + mlflow-skinny and the server's own requirements, within MLflow's
# bounds, leaving out the data-science stack the server never imports (matplotlib, scipy, scikit-learn,
# pyarrow, skops, docker): ~390 MB instead of ~850 MB; measured 68-78 s, 225 s under load (full: 87-108 s).
MLFLOW_VERSION=3.17.2
MLFLOW_VENV="$HOME/.cache/egizml/mlflow-venv"
export EGIZML_MLFLOW="${EGIZML_MLFLOW:-$MLFLOW_VENV/bin/mlflow}"
# (sed reads all of pip's output: `grep -q` would close the pipe early and fail it under pipefail)
mlflow_installed=$("$MLFLOW_VENV/bin/pip" show mlflow 2>/dev/null | sed -n 's/^Version: //p' || true)
if [ "$EGIZML_MLFLOW" = "$MLFLOW_VENV/bin/mlflow" ] && [ "$mlflow_installed" != "$MLFLOW_VERSION" ]; then
  echo "== installing MLflow $MLFLOW_VERSION from PyPI into $MLFLOW_VENV"
  t0=$(date +%s)
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    if [ -z "${EGIZML_APT_UPDATED:-}" ]; then
      apt-get update -qq
      export EGIZML_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv python3-pip
  fi
  rm -rf "$MLFLOW_VENV"
  python3 -m venv "$MLFLOW_VENV"
  mlflow_pip=("$MLFLOW_VENV/bin/pip" install -q --disable-pip-version-check)
  "${mlflow_pip[@]}" "mlflow-skinny==$MLFLOW_VERSION" "mlflow-tracing==$MLFLOW_VERSION" \
    'Flask<4' 'Flask-CORS<7' 'aiohttp>=3.7.0,<4' 'alembic!=1.10.0,<2' 'cryptography>=43.0.0,<51' \
    'graphene<4' 'gunicorn<27' 'huey>=2.5.4,<4' 'numpy<3' 'pandas<4' 'sqlalchemy>=1.4.0,<3'
  "${mlflow_pip[@]}" --no-deps "mlflow==$MLFLOW_VERSION"
  echo "== MLflow $MLFLOW_VERSION installed in $(( $(date +%s) - t0 )) s"
fi
# --- end mlflow ----------------------------------------------------------------------------------

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --locked --all-targets 2>&1 | tee "${TMPDIR:-/tmp}/egizml-test.log"
