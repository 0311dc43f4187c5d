#!/usr/bin/env bash
# Training throughput and full-evaluation speed of every encoder recipe on this machine, one after the
# other (nothing else should run meanwhile), each appended to benchmarks/results/.
#   bash benchmarks/speed_all.sh [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
py="${PYTHON:-.venv/bin/python}"
for spec in \
    "recipes/beauty/sasrec_ce.toml --set loss.ce_matmul_dtype=float32" \
    "recipes/beauty/sasrec_ce.toml" \
    "recipes/beauty/bert4rec.toml" \
    "recipes/beauty/hstu.toml" \
    "recipes/ml-1m/sasrec.toml" \
    "recipes/ml-1m/hstu.toml" \
    "recipes/ml-1m/hstu_large.toml"; do
    # shellcheck disable=SC2086
    "$py" benchmarks/speed.py $spec --set "train.num_threads=$threads" --log-results
done
