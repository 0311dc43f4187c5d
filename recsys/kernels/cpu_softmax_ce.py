"""The full-softmax cross-entropy on CPU with both gradients (``recsys_softmax_ce``: 48 x 96 tiles of
logits in cache, an online log-sum-exp, the exponentials of up to 48 MB of positions kept for the item
gradient, else the logits recomputed), and the elementwise pass of the bf16 full CE
(``recsys_bf16_exp_colsum``: a bf16 logits block exponentiated in place with fp32 column sums, between
oneDNN's bf16 products).

- reference: ``torch.nn.functional.cross_entropy`` of the full logits, ``(block.float() - shift).exp()``;
- kernels: :func:`softmax_ce`, :func:`bf16_exp_column_sums`;
- dispatcher: ``recsys.losses`` takes them on CPU where :func:`available` says yes.
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from .cpu_build import TILES, add_flops, available, counting, library

__all__ = ["BF16_EXP_LARGEST_SUM", "available", "bf16_exp_column_sums", "ce_keeps_exponentials", "softmax_ce"]


def ce_keeps_exponentials(padded: int, num_items: int, kept_floats: int | None = None) -> bool:
    """Whether :func:`softmax_ce` with gradients, for ``padded`` positions (a multiple of 48), keeps its
    exponentials (three products) rather than recomputing the logits (four): the kernel's own decision
    (a group of at least CE_KEPT_MIN = 192 positions, or all, must fit in ``kept_floats``, default
    CE_KEPT_FLOATS = 48 MB, x the items rounded up to 96)."""
    lib = library()
    sizes = (ctypes.c_int64 * 3)(padded, num_items, -1 if kept_floats is None else kept_floats)
    return bool(lib.recsys_ce_keeps_exponentials(ctypes.addressof(sizes)))


def softmax_ce(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    want_grads: bool,
    num_threads: int | None = None,
    grad_items_out: torch.Tensor | None = None,
    kept_floats: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Full-softmax cross-entropy of ``hidden @ items.T`` against ``targets`` by the kernel
    (``recsys_softmax_ce``): hidden [P, D], items [V, D] (every row a candidate), targets [P] in [0, V).
    Returns the per-position losses [P] and, with ``want_grads``, the gradients of their mean with
    respect to hidden [P, D] and items [V, D] (written into ``grad_items_out`` if given: a contiguous
    fp32 [V, D]); no [P, V] logits exist (tiles of 48 x 96 in cache), only, with gradients, the
    exponentials of one group of positions at a time, at most ``kept_floats`` of them (default
    CE_KEPT_FLOATS, 48 MB; 0 always recomputes the logits instead: see :func:`ce_keeps_exponentials`)."""
    lib = library()
    P, D = hidden.shape
    V = items.shape[0]
    step = TILES["ce_positions"]
    padded = max(step, -(-P // step) * step)
    h = torch.zeros(padded, D, dtype=torch.float32)
    h[:P] = hidden.detach()
    h_t = h.T.contiguous()  # [D, padded]
    w = items.detach().to(torch.float32).contiguous()
    t = targets.to(torch.int64).contiguous()
    loss, lse = torch.empty(padded), torch.empty(padded)
    grad_h = torch.empty(P, D) if want_grads else None
    grad_w = None
    if want_grads:
        grad_w = torch.empty(V, D) if grad_items_out is None else grad_items_out
        if grad_w.shape != (V, D) or grad_w.dtype != torch.float32 or not grad_w.is_contiguous():
            raise ValueError("grad_items_out must be a contiguous fp32 tensor of the items' shape")
    config = (ctypes.c_int32 * 7)(
        P,
        padded,
        D,
        V,
        num_threads or torch.get_num_threads(),
        int(want_grads),
        -1 if kept_floats is None else kept_floats,
    )
    scale = (ctypes.c_float * 1)(1.0 / max(P, 1))
    rc = lib.recsys_softmax_ce(
        ctypes.addressof(config),
        ctypes.addressof(scale),
        h.data_ptr(),
        h_t.data_ptr(),
        w.data_ptr(),
        t.data_ptr(),
        loss.data_ptr(),
        lse.data_ptr(),
        grad_h.data_ptr() if want_grads else None,
        grad_w.data_ptr() if want_grads else None,
    )
    if rc != 0:
        raise RuntimeError(f"fused CPU cross-entropy failed (code {rc})")
    if counting():  # the logits once, and with gradients the two gradient products (and, where no
        # exponentials are kept, the logits recomputed)
        products = 1 if not want_grads else 3 if ce_keeps_exponentials(padded, V, kept_floats) else 4
        add_flops(products * 2 * padded * V * D)
    return loss[:P], grad_h, grad_w


# a column sum at or above this came from a clamped input (e^88 ~ 2^127): the caller redoes it shifted
BF16_EXP_LARGEST_SUM = 2.0**120


def bf16_exp_column_sums(
    block: torch.Tensor, shift: torch.Tensor | None = None, num_threads: int | None = None
) -> torch.Tensor:
    """``block`` [V, c] bf16 (contiguous, CPU) replaced by ``exp(block - shift)`` rounded to bf16 (to nearest,
    ties to even), in one multi-threaded pass; returns the [c] fp32 column sums of the unrounded
    exponentials (the same bits for any number of threads). ``shift``: [c] fp32 per column, or None.
    Inputs are clamped to [-87, 88]: a sum >= ``BF16_EXP_LARGEST_SUM`` means a clamped value, redo shifted.
    The reference is ``(block.float() - shift).exp()`` (tests)."""
    lib = library()
    if block.dtype != torch.bfloat16 or block.device.type != "cpu" or block.dim() != 2 or not block.is_contiguous():
        raise ValueError("the kernel's bf16 exponentials take a contiguous 2-D bf16 CPU tensor")
    rows, cols = block.shape
    col_sum = torch.empty(cols, dtype=torch.float32)
    if rows == 0 or cols == 0:
        return col_sum.zero_()
    if shift is not None:
        shift = shift.to(torch.float32).contiguous()
        if shift.shape != (cols,):
            raise ValueError(f"shift must hold one value per column ({cols}), got {tuple(shift.shape)}")
    config = (ctypes.c_int64 * 3)(rows, cols, num_threads or torch.get_num_threads())
    rc = lib.recsys_bf16_exp_colsum(
        ctypes.addressof(config), block.data_ptr(), shift.data_ptr() if shift is not None else None, col_sum.data_ptr()
    )
    if rc != 0:
        raise RuntimeError(f"fused CPU bf16 exponentials failed (code {rc})")
    return col_sum


def self_check_ce() -> bool:
    """``recsys_softmax_ce`` (kept exponentials and recomputed logits) against torch's cross-entropy."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(50, 16, generator=gen, requires_grad=True)
    items = torch.randn(130, 16, generator=gen, requires_grad=True)
    targets = torch.randint(0, 130, (50,), generator=gen)
    with torch.enable_grad():  # the first use may come under no_grad (an evaluation)
        loss = F.cross_entropy(hidden @ items.T, targets)
        grad_h, grad_w = torch.autograd.grad(loss, (hidden, items))
    for kept in (None, 0):
        losses, gh, gw = softmax_ce(hidden, items, targets, True, num_threads=2, kept_floats=kept)
        if not (
            torch.allclose(losses.mean(), loss.detach(), rtol=1e-4, atol=1e-5)
            and torch.allclose(gh, grad_h, rtol=1e-3, atol=1e-5)
            and torch.allclose(gw, grad_w, rtol=1e-3, atol=1e-5)
        ):
            return False
    return ce_keeps_exponentials(48, 130) and not ce_keeps_exponentials(48, 130, kept_floats=0)


def self_check_bf16() -> bool:
    """``recsys_bf16_exp_colsum`` against torch's exp of the widened block (with and without a shift)."""
    gen = torch.Generator().manual_seed(0)
    block = (torch.randn(300, 20, generator=gen) * 3).to(torch.bfloat16)
    shift = torch.randn(20, generator=gen)
    for s in (None, shift):
        ref = block.float() - (s if s is not None else 0.0)
        out = block.clone()
        sums = bf16_exp_column_sums(out, s, num_threads=2)
        if not (
            torch.allclose(sums, ref.exp().sum(0), rtol=1e-4)
            and torch.allclose(out.float(), ref.exp().to(torch.bfloat16).float(), rtol=1e-2)
        ):
            return False
    return True
