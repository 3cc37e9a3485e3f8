#!/usr/bin/env bash
# The whole trajectory-video pipeline on this machine, no server needed:
#   generate the dataset -> train four extractors in parallel (one worktree each), beside
#   four baseline-* reference workers -> wait -> collect results -> compare (table + HTML
#   report).
# Small settings: a few minutes on 2 CPU cores. Extra arguments go to `wt-run launch`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
# scripts/constraints.txt pins torch to the CPU-friendly build (the package itself only
# needs torch >= 2.3).
python -m pip install -q -c scripts/constraints.txt -e ".[workload,report]"

CONFIG=configs/wt-run.yaml
wt-run --config "$CONFIG" generate --wait
wt-run --config "$CONFIG" launch --branches i3d slowfast transformer magvit \
  baseline-majority baseline-last-position baseline-constant-velocity baseline-hand-features \
  --wait "$@"
wt-run --config "$CONFIG" collect
wt-run --config "$CONFIG" compare
wt-run --config "$CONFIG" compare --format html
