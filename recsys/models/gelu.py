"""Exact GELU (Hendrycks & Gimpel 2016, ``x * Phi(x)``) that is cheap on CPU.

``nn.GELU()`` with its forward and backward on fp32 CPU tensors in the fused C kernels
(:func:`recsys.kernels.cpu_encoder.gelu`: one multi-threaded pass each, erf and exp by vectorised
polynomials, within ~2e-7 of torch's); everywhere else (other devices and dtypes, no C compiler,
tracing, autocast) torch's own. A subclass of ``nn.GELU``, so code that checks for one (the fused
inference of SASRec / BERT4Rec) still finds it, and checkpoints are unchanged (no parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import cpu_encoder


class _KernelGELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return cpu_encoder.gelu(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return cpu_encoder.gelu(x, grad.float())


def _kernel_usable(x: torch.Tensor) -> bool:
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.numel() < 4096:
        return False
    if torch.jit.is_tracing() or torch.is_autocast_enabled("cpu"):
        return False
    return cpu_encoder.available()


class GELU(nn.GELU):
    """``nn.GELU(approximate="none")`` with the C kernels on fp32 CPU tensors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.approximate == "none" and _kernel_usable(x):
            return _KernelGELU.apply(x)
        return F.gelu(x, approximate=self.approximate)
