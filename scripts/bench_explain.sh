#!/usr/bin/env bash
# Explanation cost in the stream (issue 5: "throughput with explanations on for every alert stays
# >= 90% of throughput without").
#
# 1. Trains an Isolation Forest per simulated equipment class (oven, mixer, conveyor) with
#    `egizml train --simulator --activate` into a temporary registry.
# 2. Runs `egizml bench` on the simulator workload with a dataflow whose `models` section scores every
#    thing by its class's forest, once with `models.explain: true` (exact TreeSHAP on alerts) and once
#    with `explain: false`, alternating, ROUNDS times; prints each run, the median throughputs and
#    their ratio.
#
# What "every alert" means here. The engine computes a registry model's TreeSHAP for every ensemble
# alert candidate that the per-thing rate limit lets through (a rate-limited candidate cannot be
# emitted, so it is explained by the statistics alone); that is every emitted ensemble alert (plus the
# few that dedup then drops). Two policies are measured:
#   POLICY=shipped  the default alert policy (dedup 300 s per type, at most one alert per thing per 60 s):
#                   TreeSHAP for every alert the stream emits;
#   POLICY=none     dedup_s: 0 and rate_limit_s: 0: every anomalous reading is an emitted alert, each
#                   with TreeSHAP (the worst case: explanation cost per anomalous reading).
# The rules of configs/rules.yaml run in both, as in the default dataflow.
#
# Usage: scripts/bench_explain.sh            (from the repository root)
# Environment (defaults in brackets):
#   EGIZML        the binary [target/release/egizml if built, else target/debug/egizml; honours
#                 CARGO_TARGET_DIR]
#   POINTS        readings per bench run [1000000]      THINGS   things in the workload [1000]
#   WORKERS       timely workers [the machine's cores]   ROUNDS   runs per setting [3]
#   POLICY        shipped | none | both [both]
#   TRAIN_POINTS  simulator readings per training run [100000]  TRAIN_THINGS [30]
#   KEEP          keep the temporary directory (set to 1) [unset]
# A quick check with a debug build:
#   cargo build && POINTS=20000 THINGS=100 ROUNDS=1 TRAIN_POINTS=20000 scripts/bench_explain.sh
# The last line of stdout is JSON: {"policy":{"shipped":{...},"none":{...}}} with per-policy
# explain_on_pps, explain_off_pps, ratio, alerts_on, alerts_off.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
if [[ -z "${EGIZML:-}" ]]; then
  if [[ -x $target/release/egizml ]]; then EGIZML=$target/release/egizml; else EGIZML=$target/debug/egizml; fi
fi
[[ -x $EGIZML ]] || { echo "bench_explain: no binary at $EGIZML (cargo build --release, or set EGIZML)" >&2; exit 1; }
POINTS=${POINTS:-1000000}
THINGS=${THINGS:-1000}
ROUNDS=${ROUNDS:-3}
POLICY=${POLICY:-both}
TRAIN_POINTS=${TRAIN_POINTS:-100000}
TRAIN_THINGS=${TRAIN_THINGS:-30}
case $POLICY in
  shipped | none) policies=$POLICY ;;
  both) policies="shipped none" ;;
  *) echo "bench_explain: POLICY must be shipped, none or both, got '$POLICY'" >&2; exit 2 ;;
esac
workers=()
[[ -n "${WORKERS:-}" ]] && workers=(--workers "$WORKERS")

tmp=$(mktemp -d)
[[ -n "${KEEP:-}" ]] || trap 'rm -rf "$tmp"' EXIT
registry=$tmp/models
echo "binary: $EGIZML"
echo "registry: $registry"

for class in oven mixer conveyor; do
  "$EGIZML" train --equipment-type "$class" --simulator --sim-things "$TRAIN_THINGS" \
    --sim-points "$TRAIN_POINTS" --registry "$registry" --activate > "$tmp/train-$class.out"
  echo "trained $(tail -n 1 "$tmp/train-$class.out" | jq -r '"\(.model.id) (\(.model.samples) rows, \(.activation))"' 2>/dev/null || echo "$class")"
done

flow() { # policy explain
  local file=$tmp/flow-$1-$2.yaml
  {
    echo "name: bench-explain"
    echo "rules: $root/configs/rules.yaml"
    echo "models:"
    echo "  registry: {path: $registry}"
    echo "  explain: $2"
    if [[ $1 == none ]]; then
      echo "policy: {dedup_s: 0, rate_limit_s: 0}"
    fi
  } > "$file"
  echo "$file"
}

median() { sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }

json="{\"points\":$POINTS,\"things\":$THINGS,\"rounds\":$ROUNDS,\"policy\":{"
first=1
for policy in $policies; do
  on=$(flow "$policy" true)
  off=$(flow "$policy" false)
  : > "$tmp/$policy-true.pps"
  : > "$tmp/$policy-false.pps"
  for round in $(seq 1 "$ROUNDS"); do
    for explain in true false; do
      cfg=$on
      [[ $explain == false ]] && cfg=$off
      line=$("$EGIZML" bench --points "$POINTS" --things "$THINGS" "${workers[@]}" --config "$cfg" | tail -n 1)
      pps=$(jq -r .points_per_sec <<< "$line")
      alerts=$(jq -r .alerts <<< "$line")
      echo "$pps" >> "$tmp/$policy-$explain.pps"
      echo "$alerts" > "$tmp/$policy-$explain.alerts"
      printf 'policy %-7s round %d explain %-5s %12.0f readings/s  %7d alerts\n' "$policy" "$round" "$explain" "$pps" "$alerts"
    done
  done
  pps_on=$(median < "$tmp/$policy-true.pps")
  pps_off=$(median < "$tmp/$policy-false.pps")
  ratio=$(awk -v a="$pps_on" -v b="$pps_off" 'BEGIN {printf "%.4f", a / b}')
  printf 'policy %-7s median: explain on %.0f readings/s, off %.0f readings/s, ratio %s\n' "$policy" "$pps_on" "$pps_off" "$ratio"
  [[ $first == 1 ]] || json+=","
  first=0
  json+="\"$policy\":{\"explain_on_pps\":$pps_on,\"explain_off_pps\":$pps_off,\"ratio\":$ratio,"
  json+="\"alerts_on\":$(cat "$tmp/$policy-true.alerts"),\"alerts_off\":$(cat "$tmp/$policy-false.alerts")}"
done
json+="}}"
echo "$json"
