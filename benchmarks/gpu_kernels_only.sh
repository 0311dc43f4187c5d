#!/usr/bin/env bash
# The kernel timings alone (benchmarks/gpu_check.sh runs them together with parity and training):
#   bash benchmarks/gpu_kernels_only.sh OUT_DIR
set -uo pipefail
OUT="${1:-${OUT:-gpu_out}}"
mkdir -p "$OUT"
. benchmarks/gpu_env.sh
timeout "${KERNEL_TIMEOUT:-280}" python3 benchmarks/kernels.py --budget-s "${COMPILE_BUDGET:-100}" \
  --snapshot="$OUT/kernels.jsonl" 2>&1 | tee "$OUT/kernels.txt"
