#!/usr/bin/env bash
# The kernel timings alone (benchmarks/gpu_check.sh runs them together with parity and training):
#   bash benchmarks/gpu_kernels_only.sh OUT_DIR
set -uo pipefail
OUT="${1:-${OUT:-gpu_out}}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import polars" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then  # carried wheels (no network there)
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '|', torch.cuda.get_device_name(0))"
  date -u; git rev-parse --short HEAD; } 2>&1 | tee "$OUT/gpu.txt"
timeout "${KERNEL_TIMEOUT:-280}" python3 benchmarks/kernels.py --budget-s "${COMPILE_BUDGET:-100}" \
  --snapshot="$OUT/kernels.jsonl" 2>&1 | tee "$OUT/kernels.txt"
