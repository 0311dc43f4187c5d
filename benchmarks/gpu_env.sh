# Sourced by the benchmarks/gpu_*.sh scripts: the environment of a bare GPU machine (no network there).
# Uses the machine's own python3 (its CUDA torch and Triton) with recsys from the checkout; Python
# packages the machine lacks (polars) come as wheels carried in .whl/, data in .gpu_data/.
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export RECSYS_DATA="${RECSYS_DATA:-$PWD/.gpu_data}" RECSYS_CACHE="${RECSYS_CACHE:-/tmp/recsys-cache}"
if ! python3 -c "import polars" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '|', torch.cuda.get_device_name(0))"
  date -u; git rev-parse --short HEAD; } 2>&1 | tee "$OUT/gpu.txt"
