#!/usr/bin/env bash
# One short GPU run: parity of the Triton kernel on the GPU, kernel timings, SDPA backends of
# SASRec / BERT4Rec under bf16, and HSTU-large training through the kernel vs the reference path.
#
# Environment: benchmarks/gpu_env.sh (carry .whl with polars and .gpu_data with the ml-1m folder).
# Usage, from the repository root:
#   bash benchmarks/gpu_check.sh OUT_DIR
set -uo pipefail
OUT="${1:-${OUT:-gpu_out}}"
mkdir -p "$OUT"
SECONDS=0
. benchmarks/gpu_env.sh
# 1. parity of forward and all gradients on the GPU: the same tests CI runs in the interpreter
#    (one kernel configuration: autotuning every small test shape would cost minutes of compilation)
echo "== parity tests ($SECONDS s)"
RECSYS_TRITON_AUTOTUNE=0 timeout 150 python3 -m pytest -q -p no:cacheprovider tests/kernels 2>&1 | tail -15 | tee "$OUT/parity.txt"
# 2. timings: Triton (with / without bias) vs reference vs torch.compile(reference) vs SDPA softmax
echo "== kernel timings ($SECONDS s)"
timeout 300 python3 benchmarks/kernels.py --budget-s 200 --snapshot="$OUT/kernels.jsonl" 2>&1 | tee "$OUT/kernels.txt"
# 3. SASRec / BERT4Rec attention on SDPA's fused kernels under bf16 autocast
echo "== sdpa backends ($SECONDS s)"
timeout 60 python3 benchmarks/gpu_sdpa_check.py 2>&1 | tail -4 | tee "$OUT/sdpa.txt"
# 4. HSTU-large trains through the kernel; its loss curve is compared with the reference path's
echo "== HSTU-large training, triton vs reference ($SECONDS s)"
for backend in triton reference; do
  RECSYS_TRITON_AUTOTUNE=0 timeout 80 python3 -m recsys.cli train recipes/ml-1m/hstu_large.toml \
    --run-dir "/tmp/gpu-runs/hstu-large-$backend" --quiet --set train.epochs=3 --set train.device=cuda \
    --set model.attention_backend=$backend 2>&1 | tail -6 | tee -a "$OUT/train.txt"
  cp "/tmp/gpu-runs/hstu-large-$backend/metrics.jsonl" "$OUT/hstu-large-$backend.jsonl" 2>/dev/null
done
python3 - "$OUT" <<'PY' 2>&1 | tee -a "$OUT/train.txt"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for backend in ("triton", "reference"):
    f = out / f"hstu-large-{backend}.jsonl"
    if f.exists():
        rows = [json.loads(l) for l in f.read_text().splitlines()]
        print(backend, "train loss per epoch", [round(r["train_loss"], 5) for r in rows if "train_loss" in r],
              "epoch seconds", [round(r.get("train_seconds", 0), 1) for r in rows if "train_loss" in r])
PY
echo "== done ($SECONDS s)"
