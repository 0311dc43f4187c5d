"""Dropout that is cheap on CPU.

``torch.nn.Dropout`` on CPU draws its mask with ``bernoulli_``, which costs ~14 ns per element, and
uniform floats (``rand_like``) still ~3.7 ns: on BERT4Rec at length 200 the attention dropout's draws
were 23% of a training step. Here each element's mask comes from 16 random bits: one 64-bit draw of
torch's generator (``random_``) gives four elements, ~0.75 ns per element for draw and comparison.
An element is dropped when its bits fall below ``round(p * 65536)``, so p is used to 1 / 65,536
(0.2 -> 0.199997); kept elements are scaled by 1 / (1 - p) as usual. The mask is a bool tensor (also
what backward keeps: a quarter of a float mask). Other devices keep ``F.dropout`` (fused kernels
there). Seeded by torch's generator like ``nn.Dropout``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def drop_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A bool tensor of ``shape``, True (drop) with probability ``round(p * 65536) / 65536``."""
    n = math.prod(shape)
    words = torch.empty(-(-n // 4), dtype=torch.int64, device=device).random_(-(2**63), 2**63 - 1)
    return words.view(torch.int16)[:n].view(shape) < round(p * 65536) - 32768


def dropout(x: torch.Tensor, p: float, training: bool = True, rescale: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)``, with the mask from :func:`drop_mask` on CPU. ``rescale=False``
    leaves the kept elements unscaled (the caller multiplies a smaller tensor by 1 / (1 - p) instead:
    attention scales its output, not its [L, L] weights); only on CPU."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        if not rescale:
            raise ValueError("rescale=False is for CPU dropout with p < 1")
        return F.dropout(x, p, training)
    drop = drop_mask(x.shape, p, x.device)
    return x.mul(1.0 / (1.0 - p)).masked_fill_(drop, 0.0) if rescale else x.masked_fill(drop, 0.0)


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
