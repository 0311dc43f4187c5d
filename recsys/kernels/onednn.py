"""fp32 matrix products through oneDNN on CPU, where torch's own fp32 GEMM is slow.

``torch.mm`` and ``F.linear`` compute fp32 products with the BLAS torch was built with (MKL in the
official x86 wheels). On the CPUs of our benchmarks oneDNN, which torch ships as well (and already
uses for bf16 products), ran the encoders' linear layers and the full CE's fp32 products several times
faster (``python benchmarks/cpu_gemm.py`` prints the table for your CPU; figures in
benchmarks/RESULTS.md). The results are fp32 products like torch's (they differ by summation order only; tests
compare).

The entry point is ``torch.ops.mkldnn._linear_pointwise`` (``x @ w.T + b``, the op torch.compile's
CPU backend emits for linear layers). It is private, so its use is guarded: it is tried once on a
small product and compared with ``torch.mm``; if it is missing, fails or disagrees, every function
here falls back to torch's own product. ``RECSYS_CPU_GEMM=torch`` turns it off (e.g. to compare).

Only products whose first operand is row-major go through oneDNN: reading a transposed first operand
it was slower than MKL, so a linear layer's weight gradient (``grad.T @ x``) stays ``torch.mm``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

_usable: bool | None = None  # decided on first use (see _check)
# oneDNN writes every product into a fresh tensor. glibc maps blocks above 32 MB fresh from the OS on
# every allocation (its largest mmap threshold), and their page faults cost more than the faster
# product saves: larger outputs stay with torch's product into a reused buffer (callers check)
MAX_OUTPUT_BYTES = 32 * 2**20


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T (+ bias)`` by oneDNN; x: [M, K] row-major, weight: [N, K] (any strides)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _check() -> bool:
    if os.environ.get("RECSYS_CPU_GEMM", "onednn") == "torch" or not torch.backends.mkldnn.is_available():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*shape, generator=gen) for shape in ((37, 19), (23, 19), (23,)))  # no global RNG draw
        return bool(torch.allclose(_product(x, w, b), torch.addmm(b, x, w.T), rtol=1e-5, atol=1e-5))
    except (AttributeError, RuntimeError):  # no such op in this torch build, or it refused
        return False


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled()


def _compiling() -> bool:
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)  # torch >= 2.3
    return bool(is_compiling and is_compiling())


def usable(t: torch.Tensor, output_numel: int = 0) -> bool:
    """Whether a product reading ``t`` (and writing ``output_numel`` values) goes through oneDNN: fp32
    on CPU, an output of at most ``MAX_OUTPUT_BYTES``, outside autocast (which wants its own
    low-precision product), torch.compile (which lowers products itself) and TorchScript tracing (an
    exported encoder holds torch's own ops only)."""
    global _usable
    if t.device.type != "cpu" or t.dtype != torch.float32 or t.numel() == 0:
        return False
    if output_numel * t.element_size() > MAX_OUTPUT_BYTES:
        return False
    if _autocast_on() or _compiling() or torch.jit.is_tracing():
        return False
    if _usable is None:
        _usable = _check()
    return _usable


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for 2-D tensors; through oneDNN when ``a`` is row-major fp32 on CPU (and the output
    at most ``MAX_OUTPUT_BYTES``)."""
    if usable(a, a.shape[0] * b.shape[1]) and b.dtype == a.dtype and a.is_contiguous() and b.numel():
        return _product(a, b.T)
    return torch.mm(a, b)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):  # x: [M, K] row-major
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _product(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):  # grad: [M, N]
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = _product(grad, weight.T) if ctx.needs_input_grad[0] else None  # [M, K]
        grad_weight = torch.mm(grad.T, x) if ctx.needs_input_grad[1] else None  # [N, K]
        grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, [..., K] -> [..., N], through oneDNN for fp32 on CPU."""
    rows = x.numel() // max(x.shape[-1], 1)
    if not (usable(x, rows * weight.shape[0]) and weight.dtype == x.dtype and weight.numel()):
        return F.linear(x, weight, bias)
    x2 = x.reshape(-1, x.shape[-1])
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    if torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        y = _Linear.apply(x2, weight, bias)
    else:
        y = _product(x2, weight, bias)
    return y.view(*x.shape[:-1], weight.shape[0])


_fused_usable: bool | None = None  # the post-op products, decided on first use


def _check_fused() -> bool:
    try:
        gen = torch.Generator().manual_seed(1)
        x, w1, b1, w2, b2, r = (
            torch.randn(*shape, generator=gen) for shape in ((37, 19), (23, 19), (23,), (19, 23), (19,), (37, 19))
        )
        h = torch.ops.mkldnn._linear_pointwise(x, w1, b1, "gelu", [], "none")
        y = torch.ops.mkldnn._linear_pointwise.binary(h, r, w2, b2, "add")
        return bool(torch.allclose(y, r + F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2), rtol=1e-5, atol=1e-5))
    except (AttributeError, RuntimeError):
        return False


def feed_forward(x: torch.Tensor, first: nn.Linear, second: nn.Linear, residual: torch.Tensor) -> torch.Tensor | None:
    """Inference ``residual + second(gelu(first(x)))`` for 2-D fp32 CPU tensors, with the GELU (erf) and
    the addition done by oneDNN inside the two products (post-ops): no pass of their own over the
    [rows, ffn] and [rows, D] activations (it pays off for wide feed-forward networks such as BERT4Rec's;
    identical metrics). None where it does not
    apply (gradients, autocast, other dtypes or devices, a first call whose check against torch's ops
    failed): the caller computes it with torch's ops then."""
    global _fused_usable
    if torch.is_grad_enabled() or x.dim() != 2 or residual.shape != x.shape[:1] + second.weight.shape[:1]:
        return None
    if not (
        usable(x, x.shape[0] * max(first.weight.shape[0], second.weight.shape[0]))
        and first.weight.dtype == second.weight.dtype == residual.dtype == x.dtype
    ):
        return None
    if _fused_usable is None:
        _fused_usable = _check_fused()
    if not _fused_usable:
        return None
    h = torch.ops.mkldnn._linear_pointwise(x.contiguous(), first.weight, first.bias, "gelu", [], "none")
    return torch.ops.mkldnn._linear_pointwise.binary(h, residual.contiguous(), second.weight, second.bias, "add")


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) computed by :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
