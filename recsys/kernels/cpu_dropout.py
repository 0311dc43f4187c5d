"""Dropout masks on CPU (``recsys_keep_mask``): 16 random bits per element from a counter-based
generator, compared with a threshold, written as an fp32 mask (0 or the keep scale) in one
multi-threaded pass.

- reference: ``torch.nn.functional.dropout`` (the same distribution, not the same bits);
- kernel: :func:`keep_mask`;
- dispatcher: ``recsys.models.dropout.Dropout`` takes the kernel on CPU in training where
  :func:`available` says yes.
"""

from __future__ import annotations

import ctypes

import torch

from .cpu_build import available, library

__all__ = ["available", "keep_mask"]


def keep_mask(
    shape: torch.Size | tuple[int, ...], threshold: int, scale: float, num_threads: int | None = None
) -> torch.Tensor:
    """fp32 dropout mask of ``shape``: ``scale`` where an element's 16 random bits are >= ``threshold``
    (so dropped with probability threshold / 65,536), else 0; the bits come from a counter-based
    generator (splitmix64) seeded by one draw of torch's global generator, so ``torch.manual_seed``
    makes masks reproducible and the number of threads does not change them."""
    lib = library()
    out = torch.empty(shape, dtype=torch.float32)
    seed = int(torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64)) % 2**64
    config = (ctypes.c_int32 * 1)(num_threads or torch.get_num_threads())
    n, thr = (ctypes.c_int64 * 1)(out.numel()), (ctypes.c_int64 * 1)(threshold)
    seed_arg, scale_arg = (ctypes.c_uint64 * 1)(seed), (ctypes.c_float * 1)(scale)
    rc = lib.recsys_keep_mask(
        ctypes.addressof(config),
        ctypes.addressof(n),
        ctypes.addressof(thr),
        ctypes.addressof(seed_arg),
        ctypes.addressof(scale_arg),
        out.data_ptr(),
    )
    if rc != 0:
        raise RuntimeError(f"fused CPU dropout mask failed (code {rc})")
    return out


def self_check() -> bool:
    """``recsys_keep_mask``: values 0 or the scale, the kept share near 1 - p, the same mask for a seed
    whatever the number of threads."""
    torch.manual_seed(0)
    threshold, scale = 13_107, 1 / 0.8  # p = 0.2
    mask = keep_mask((64, 1000), threshold, scale, num_threads=1)
    torch.manual_seed(0)
    again = keep_mask((64, 1000), threshold, scale, num_threads=2)
    values_ok = bool(((mask == 0) | (mask == torch.tensor(scale, dtype=torch.float32))).all())
    share = float((mask > 0).float().mean())
    return values_ok and abs(share - (1 - threshold / 65536)) < 0.01 and bool(torch.equal(mask, again))
