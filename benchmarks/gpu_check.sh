#!/usr/bin/env bash
# One short GPU session: install, kernel parity on the GPU, kernel timings, an HSTU training smoke run.
# Usage (on the GPU machine, repository root): bash benchmarks/gpu_check.sh [OUT_DIR]
# Writes logs and results.jsonl lines to OUT_DIR (default: gpu_out/).
set -uo pipefail
OUT="${1:-${OUT:-gpu_out}}"
mkdir -p "$OUT"
python3 -m venv .venv-gpu && . .venv-gpu/bin/activate
pip install -q torch triton 2>&1 | tail -2          # the GPU machine's own CUDA build of torch
pip install -q -e ".[dev]" 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"
# 1. parity of forward and all gradients on the GPU (the same tests CI runs in the interpreter)
timeout 300 python -m pytest -q tests/kernels 2>&1 | tail -15 | tee "$OUT/parity.txt"
# 2. timings: Triton vs reference vs torch.compile(reference) vs SDPA softmax
timeout 420 python benchmarks/kernels.py --log-results "$OUT/results.jsonl" 2>&1 | tee "$OUT/kernels.txt"
# 3. HSTU-large trains through the kernel; the loss curve is compared with the reference path
for backend in triton reference; do
  timeout 240 python -m recsys.cli train recipes/ml-1m/hstu_large.toml --run-dir "$OUT/hstu-large-$backend" --quiet \
    --set train.epochs=3 --set model.attention_backend=$backend --set train.device=cuda 2>&1 | tail -4 | tee -a "$OUT/train.txt"
done
python - "$OUT" <<'PY' | tee -a "$OUT/train.txt"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for backend in ("triton", "reference"):
    f = out / f"hstu-large-{backend}" / "metrics.jsonl"
    if f.exists():
        print(backend, [round(json.loads(l)["train_loss"], 4) for l in f.read_text().splitlines()])
PY
