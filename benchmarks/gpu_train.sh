#!/usr/bin/env bash
# Training runs that take hours on 2 CPU cores and minutes on one GPU: the issue-3 comparison on the
# partial ML-1M file (SASRec, HSTU, HSTU-large; paper settings, 50 epochs each) and HSTU / BERT4Rec on
# BERT4Rec's Beauty file. Quality figures (NDCG@10, HR@10) do not depend on the device; each record
# names the GPU it ran on. Usage, from the repository root on the GPU machine:
#   bash benchmarks/gpu_train.sh OUT_DIR [recipe ...]      (carry .whl with polars, .gpu_data with the data)
set -uo pipefail
OUT="${1:-${OUT:-gpu_out}}"; shift || true
mkdir -p "$OUT"
. benchmarks/gpu_env.sh
RECIPES=("$@")
[ ${#RECIPES[@]} -eq 0 ] && RECIPES=(ml-1m/sasrec ml-1m/hstu ml-1m/hstu_large beauty/hstu beauty/bert4rec)
SECONDS=0
for r in "${RECIPES[@]}"; do
  echo "== $r ($SECONDS s)"
  timeout "${RUN_TIMEOUT:-400}" python3 -m recsys.cli train "recipes/$r.toml" --run-dir "/tmp/gpu-runs/$r" --quiet \
    --set train.device=cuda --log-results "$OUT/train.jsonl" --note "GPU run (benchmarks/gpu_train.sh)" 2>&1 \
    | tail -8 | tee -a "$OUT/train.txt"
done
echo "== done ($SECONDS s)"
