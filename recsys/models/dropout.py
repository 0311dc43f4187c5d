"""Dropout that is cheap on CPU.

``torch.nn.Dropout`` on CPU draws its mask with ``bernoulli_`` (~14 ns per element), and uniform
floats (``rand_like``) still cost a few ns each. Here each element's mask comes from 16 random bits:
one 64-bit draw of torch's generator (``random_``) gives four elements. An element is dropped when
its bits fall below ``round(p * 65536)``, so p is used to 1 / 65,536 (0.2 -> 0.199997); the kept
ones are scaled by 1 / (1 - p) as usual. The mask becomes a float tensor before use: ``x * mask``
forward and ``grad * mask`` backward are the cheapest passes there are (a bool mask through
``masked_fill`` cost several times a multiplication per element, forward and again backward), and
the whole is faster than drawing a uniform float per element. Other devices keep ``F.dropout`` (fused kernels there). Seeded by torch's generator like
``nn.Dropout``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import cpu_dropout


def keep_mask(
    shape: torch.Size | tuple[int, ...],
    p: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    scale: float = 1.0,
) -> torch.Tensor:
    """``scale`` (keep) with probability ``1 - round(p * 65536) / 65536``, else 0.0, of ``shape`` and
    ``dtype``. fp32 on CPU where the C kernels are built: in one multi-threaded pass
    (:func:`recsys.kernels.cpu_dropout.keep_mask`, a counter-based generator seeded from torch's);
    otherwise from torch's generator, four elements per 64-bit draw."""
    if dtype == torch.float32 and torch.device(device).type == "cpu" and _kernels_ready():
        return cpu_dropout.keep_mask(tuple(shape), round(p * 65536), scale)
    n = math.prod(shape)
    words = torch.empty(-(-n // 4), dtype=torch.int64, device=device).random_(-(2**63), 2**63 - 1)
    keep = (words.view(torch.int16)[:n].view(shape) >= round(p * 65536) - 32768).to(dtype)
    return keep if scale == 1.0 else keep.mul_(scale)


def _kernels_ready() -> bool:
    return not torch.jit.is_tracing() and cpu_dropout.available()


def dropout(x: torch.Tensor, p: float, training: bool = True, rescale: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)``, with the mask from :func:`keep_mask` on CPU. ``rescale=False``
    leaves the kept elements unscaled (the caller multiplies a smaller tensor by 1 / (1 - p) instead:
    attention scales its output, not its [L, L] weights); only on CPU."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        if not rescale:
            raise ValueError("rescale=False is for CPU dropout with p < 1")
        return F.dropout(x, p, training)
    return x * keep_mask(x.shape, p, x.dtype, x.device, 1.0 / (1.0 - p) if rescale else 1.0)


class Dropout(nn.Module):
    """Drop-in for ``nn.Dropout`` (same ``p``, same train / eval behaviour) using :func:`dropout`."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
