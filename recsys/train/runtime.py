"""What a run runs on: the device, bf16 units, the allocator, peak memory and the ``env.json`` record."""

from __future__ import annotations

import ctypes
import os
import resource
import sys
import time

import torch

from .. import distributed
from ..config import ConfigError, RunConfig


def peak_memory_mb() -> float:
    """Peak resident memory of this process (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def retain_freed_memory() -> bool:
    """Ask glibc to keep freed blocks of up to 32 MB for reuse instead of handing them back to the OS.

    Every CPU training step allocates and frees [items, D] tensors (the item table's gradients). By
    default glibc can hand such blocks back and map them fresh, so each reuse costs a page fault per
    4 KiB (thousands of faults per step on Beauty, counted with ru_minflt). Kept in the heap they are
    reused without faults, and peak memory stayed the same. Returns whether the settings were applied: not on other C libraries, nor when the user set
    MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ (theirs win).
    """
    if sys.platform != "linux" or any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers
        return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)) and bool(libc.mallopt(m_trim_threshold, 2**30))
    except (OSError, AttributeError):  # musl and others: no glibc mallopt
        return False


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 products run on bf16 hardware here (tensor cores; AVX512-BF16 / AMX through
    oneDNN on CPU) rather than being emulated with fp32 arithmetic."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def resolve_ce_matmul_dtype(cfg: RunConfig, device: torch.device) -> bool:
    """``loss.ce_matmul_dtype = "auto"`` becomes "bfloat16" where bf16 products run on bf16 units and
    "float32" elsewhere, in ``cfg`` itself (the run's saved config says what ran): on a CPU without bf16
    units bf16 products are emulated, many times slower than fp32. Returns whether it changed anything."""
    if cfg.loss.ce_matmul_dtype != "auto":
        return False
    cfg.loss.ce_matmul_dtype = "bfloat16" if native_bf16(device) else "float32"
    if distributed.is_main() and cfg.loss.name == "ce":
        why = "bf16 units" if cfg.loss.ce_matmul_dtype == "bfloat16" else "no bf16 units"
        print(f"loss.ce_matmul_dtype=auto: {cfg.loss.ce_matmul_dtype} ({device.type} with {why})", file=sys.stderr)
    return True


def warn_if_bf16_emulated(cfg: RunConfig, device: torch.device) -> bool:
    """Print a warning (main process only) when the run asks for bf16 products (``loss.ce_matmul_dtype``,
    ``train.precision``) on a device without bf16 units: they are emulated there, so the speed they are
    chosen for does not come. Returns whether it warned."""
    asked = []
    if cfg.loss.name == "ce" and cfg.loss.ce_matmul_dtype == "bfloat16":
        asked.append("loss.ce_matmul_dtype=bfloat16")
    if cfg.train.precision == "bf16":
        asked.append("train.precision=bf16")
    if not asked or native_bf16(device) or not distributed.is_main():
        return False
    print(
        f"warning: {' and '.join(asked)} asked for, but this {device.type} has no bf16 units: bf16 products "
        f"are emulated here, many times slower than fp32 for the full CE (--set loss.ce_matmul_dtype=auto or float32 / "
        f"train.precision=fp32)",
        file=sys.stderr,
    )
    return True


def warn_if_compile_on_cpu(cfg: RunConfig, device: torch.device) -> bool:
    """Print a warning (main process only) when ``train.compile`` is asked for on CPU, and return whether
    it warned. The encoders' CPU paths (oneDNN products, chunked attention, 16-bit dropout masks,
    packing on the real positions) are eager code with data-dependent shapes: torch.compile splits
    SASRec's training forward into 26 graphs there (25 breaks, ``torch._dynamo.explain``) and the ops
    stay the same ones, so losses came out identical while epochs got slower. It is meant for CUDA."""
    if not cfg.train.compile or device.type != "cpu" or not distributed.is_main():
        return False
    print(
        "warning: train.compile=true on CPU: the encoders' CPU paths are already fused eager code that "
        "torch.compile breaks into many small graphs; it costs compile time and made epochs slower here, "
        "with the same losses (--set train.compile=false; it is meant for CUDA)",
        file=sys.stderr,
    )
    return True


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "train.device = 'cuda' but no CUDA device is available here (this torch build: "
            f"{'CPU only' if torch.version.cuda is None else 'CUDA ' + torch.version.cuda}); --set train.device=auto"
        )
    return torch.device(name)


def run_environment(cfg, data_info: dict, device: torch.device) -> dict:
    """What a run ran on: recsys version and commit, torch / Python / OS / CPU / GPU, threads, the data's
    checksum and counts, and the resolved configuration (``env.json``)."""
    import platform
    from importlib import metadata

    from ..results import git_commit, machine

    try:
        version = metadata.version("recsys")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "recsys": {"version": version, "commit": git_commit()},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "os": platform.platform(),
        "machine": machine(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "data": data_info,
        "config": cfg.to_dict(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "argv": sys.argv,
    }
