#!/usr/bin/env bash
# The CUDA check of the bundled workload, in one go, on a machine with an NVIDIA GPU:
# the default-size dataset (configs/data_default.yaml), then every extractor for a fixed
# number of steps at the default training size (configs/train_default.yaml) with mixed
# precision on (bf16, the default on CUDA) and off: clips/s, data-wait fraction, peak GPU
# memory. Writes the tables to stdout and to ${OUT:-.}/gpu_check.txt.
#
#     ./scripts/gpu_check.sh [STEPS]        # default 60 steps per extractor and setting
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-60}
out=${OUT:-.}/gpu_check.txt
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -c scripts/constraints.txt -e ".[workload]"
fi
py=.venv/bin/python
"$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else
  "no CUDA device visible to torch: run this on a GPU machine")'
data=$(mktemp -d)/data
trap 'rm -rf "$(dirname "$data")"' EXIT
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  start=$(date +%s)
  "$py" -m experiments.trajectory_video.generate --config configs/data_default.yaml \
    --out "$data" --workers auto
  echo "# generated the default dataset in $(( $(date +%s) - start )) s"
  for amp in bf16 off; do
    "$py" scripts/bench_train.py --data "$data" --config configs/train_default.yaml \
      --steps "$steps" --set "amp=$amp"
  done
} 2>&1 | tee "$out"
