#!/usr/bin/env bash
# ReaRec's K table on one GPU: cells that take CPU-hours (BERT4Rec's Beauty, S3-Rec's Beauty) as several
# `recsys train` runs sharing the device (benchmarks/rearec_table.py --device cuda --jobs N). Test
# NDCG@10 does not depend on the device; each record names the GPU it ran on.
# Usage, from the repository root on the GPU machine (carry .whl with polars, .gpu_data with the data):
#   bash benchmarks/gpu_rearec.sh OUT_DIR RECIPE [RECIPE ...]
#   STEPS="1 2 3" JOBS=4 SEEDS=3 RUN_TIMEOUT=540 bash benchmarks/gpu_rearec.sh "$OUT" beauty/sasrec_ce
# A run the timeout stops keeps the seeds it finished (each is recorded when it ends); the records come
# back in OUT_DIR/results/ for benchmarks/render_results.py. DEVICE=cpu tries the script on a machine
# without a GPU.
set -uo pipefail
OUT="${1:-${OUT:-gpu_out}}"; shift || true
[ $# -ge 1 ] || { echo "usage: bash benchmarks/gpu_rearec.sh OUT_DIR RECIPE [RECIPE ...]" >&2; exit 2; }
mkdir -p "$OUT"
. benchmarks/gpu_env.sh
SECONDS=0
# records go to a fresh folder inside the checkout (the path the commands record is relative), then to OUT
LOG_DIR=benchmarks/results-gpu
rm -rf "$LOG_DIR"
# shellcheck disable=SC2086  # STEPS is a list of numbers
timeout "${RUN_TIMEOUT:-540}" python3 benchmarks/rearec_table.py --recipes "$@" --methods erl \
  --steps ${STEPS:-0 1 2 3} --seeds "${SEEDS:-3}" --jobs "${JOBS:-4}" --device "${DEVICE:-cuda}" --log-results "$LOG_DIR" \
  2>&1 | tee "$OUT/rearec.txt"
mkdir -p "$OUT/results" && cp "$LOG_DIR"/*.jsonl "$OUT/results/" 2>/dev/null
echo "== done ($SECONDS s); records: $(cat "$OUT"/results/*.jsonl 2>/dev/null | wc -l)"
