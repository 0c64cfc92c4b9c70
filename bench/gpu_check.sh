#!/usr/bin/env bash
# The GPU check, on a lent GPU machine without network (Python 3.12, torch with
# CUDA and e3nn preinstalled). Prepared beforehand where there is network:
#
#   bash bench/gpu_wheels.sh                 # the wheels, into runs/gpu-wheels
#
# then, with the working tree and runs/gpu-wheels copied to the GPU machine:
#
#   bash bench/gpu_check.sh OUT              # about 6-8 minutes on one H200
#
# 1. a venv that sees the machine's torch and e3nn, with the carried wheels it
#    lacks and this project (no index, no downloads);
# 2. the tests marked `cuda` plus the GPU path's own tests (tests/train/test_gpu_path.py);
# 3. python -m analysis.bench.gpu: pet xs direct and conservative and mace at
#    matched size trained for a few hundred steps on NCCL (world size 1), pet
#    direct under torch.compile, and inference at 1k-100k atoms.
# Everything lands in OUT: install.log, pytest.log, gpu.json, bench.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-runs/bench/gpu}}
WHEELS=${GPU_WHEELS:-runs/gpu-wheels}
STEPS=${GPU_STEPS:-300}
mkdir -p "$OUT"
start=$(date +%s)
stamp() { echo "[gpu_check $(( $(date +%s) - start )) s] $*" | tee -a "$OUT/summary.txt"; }

PY=python3
python3 -m venv --system-site-packages .gpu-venv && PY=.gpu-venv/bin/python
# the carried wheels this machine lacks (the machine's own numpy, torch... stay)
missing=()
for wheel in "$WHEELS"/*.whl; do
    name=$(basename "$wheel" | cut -d- -f1)
    "$PY" -m pip show --quiet "$name" >/dev/null 2>&1 || missing+=("$wheel")
done
stamp "installing ${#missing[@]} wheels"
"$PY" -m pip install --no-index --no-deps --quiet "${missing[@]}" > "$OUT/install.log" 2>&1
"$PY" -m pip install --no-index --no-deps --no-build-isolation --quiet -e . >> "$OUT/install.log" 2>&1
"$PY" -c "import torch, train, deepspeed, mace; assert torch.cuda.is_available(); print(torch.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$OUT/install.log"
stamp "installed"

timeout 240 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/ tests/train/test_gpu_path.py \
    > "$OUT/pytest.log" 2>&1
stamp "tests: $(tail -n 1 "$OUT/pytest.log")"

timeout 420 "$PY" -m analysis.bench.gpu --out "$OUT" --steps "$STEPS" > "$OUT/bench.log" 2>&1
stamp "bench exit $? (gpu.json)"
