"""Next-item losses over hidden states and an item table, independent of the encoder.

Every loss takes ``hidden`` [B, L, D], ``target_ids`` [B, L] (0 = no target at that position) and the
item vectors [V, D] (row 0 = padding, never a candidate) and returns the mean over target positions.

- ``ce``: full softmax cross-entropy over all items ("SASRec+", Klenitskiy & Vasilev 2023; :mod:`.full_ce`);
  with an encoder's ``repeat_bias`` (:mod:`recsys.models.layers.repeat`) the items each position has read
  score that much more.
- ``sampled_softmax``: the positive against N uniform negatives; negatives shared per batch, per
  sequence or drawn per position; a negative equal to the positive is masked out; temperature and
  optional L2 normalisation (HSTU uses 128 negatives, temperature 0.05, normalised vectors). Optionally
  M in-batch negatives as well (the batch's own targets, so drawn by popularity) and the logQ
  correction: every logit minus the log of how often its item is expected among the candidates,
  M f(i) + N / (V - 1) with f the item's share of the training targets (Yi et al. 2019, "Sampling-bias-
  corrected neural modeling"; Yang et al. 2020, "Mixed negative sampling").
- ``bce``: binary cross-entropy with one uniform negative per position (the original SASRec).
- ``gbce``: generalised BCE of gSASRec (Petrov & Macdonald 2023): N negatives and the positive's
  probability raised to beta = alpha * (t * (1 - 1/alpha) + 1/alpha), alpha = N / (V - 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import LossConfig
from ..data.batching import prefix_history_pairs
from ..kernels import onednn
from .full_ce import ChunkedSoftmaxCE, Workspace, full_softmax_ce

LOSSES = ("ce", "sampled_softmax", "bce", "gbce")
__all__ = ["LOSSES", "ChunkedSoftmaxCE", "LossConfig", "Workspace", "full_softmax_ce", "l2_normalize", "next_item_loss"]


class L2Normalize(torch.autograd.Function):
    """``F.normalize(x, dim=-1)`` with a hand-written backward: ``(g - y (g . y)) / |x|``.

    Autograd's backward of ``x / |x|.clamp_min(eps)`` goes through the division's and the norm's
    gradients separately; this one is a handful of elementwise ops. It runs on the whole item table
    every step of a cosine-scored model (HSTU), where autograd's version was several times slower.
    Rows whose norm is under
    ``eps`` get ``g / eps``, as ``F.normalize`` gives them (tested)."""

    @staticmethod
    def forward(ctx, x, eps: float = 1e-12):
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # [..., 1]
        clamped = norm <= eps
        norm = norm.clamp_min(eps)
        y = x / norm
        ctx.save_for_backward(y, norm, clamped)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        y, norm, clamped = ctx.saved_tensors
        dot = (grad_y * y).sum(dim=-1, keepdim=True).masked_fill_(clamped, 0.0)  # clamped rows: norm is a constant
        return (grad_y - y * dot).div_(norm), None


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` scaled to unit L2 norm (``F.normalize(x, dim=-1)``, faster backward)."""
    return L2Normalize.apply(x) if x.requires_grad else F.normalize(x, dim=-1)


def _normalise(cfg: LossConfig, hidden: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if cfg.l2_normalize:
        return l2_normalize(hidden), l2_normalize(items)
    return hidden, items


def sample_negatives(
    cfg: LossConfig, num_items: int, batch: int, length: int, n: int, generator: torch.Generator | None, device
) -> torch.Tensor:
    """Uniform item ids in [1, V): [1, 1, n] (batch), [B, 1, n] (sequence) or [B, L, n] (position)."""
    shape = {"batch": (1, 1, n), "sequence": (batch, 1, n), "position": (batch, length, n)}[cfg.negatives_shared]
    return torch.randint(1, num_items, shape, generator=generator, device=device)


# negatives drawn per position: below this many catalogue items per negative, scoring the whole
# catalogue with GEMMs and picking the sampled columns beats gathering [B, L, N, D] item vectors
# (a memory-bound gather, a batched dot of width D, and a scatter-add of N x D per position in the
# backward): on ML-1M (3,615 items, 128 negatives) the loss's share of an HSTU step drops from ~3/4.
DENSE_NEGATIVES_MAX_ITEMS_PER_NEGATIVE = 64
DENSE_NEGATIVES_ROWS_PER_BLOCK = 2048  # rows of the reused [rows, V] score buffer


class SampledColumns(torch.autograd.Function):
    """``(hidden @ items.T).gather(1, columns)`` in blocks of ``chunk`` rows through one reused
    [chunk, V] buffer: the [P, V] score matrix (and its zero-filled gradient, whose fresh pages alone
    cost more than the GEMMs) never exists. hidden [P, D], items [V, D], columns [P, N] -> [P, N]."""

    @staticmethod
    def forward(ctx, hidden, items, columns, chunk: int):
        P, V = hidden.shape[0], items.shape[0]
        out = hidden.new_empty(P, columns.shape[1])
        dnn = onednn.usable(hidden, min(chunk, P) * V)  # fp32 on CPU: oneDNN's products, each writing its block
        buffer = None if dnn else hidden.new_empty(min(chunk, P), V)
        for start in range(0, P, chunk):
            rows = slice(start, min(start + chunk, P))
            if dnn:
                block = onednn.mm(hidden[rows], items.T)  # [c, V]
            else:
                block = torch.mm(hidden[rows], items.T, out=buffer[: rows.stop - start])
            out[rows] = block.gather(1, columns[rows])
        ctx.save_for_backward(hidden, items, columns)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, items, columns = ctx.saved_tensors
        P, V = hidden.shape[0], items.shape[0]
        grad_hidden = torch.empty_like(hidden)
        grad_items = torch.zeros_like(items)
        buffer = hidden.new_empty(min(ctx.chunk, P), V)
        for start in range(0, P, ctx.chunk):
            rows = slice(start, min(start + ctx.chunk, P))
            block = buffer[: rows.stop - start].zero_()
            block.scatter_add_(1, columns[rows], grad_out[rows].to(block.dtype))  # repeated columns add up
            grad_hidden[rows] = onednn.mm(block, items)
            grad_items.addmm_(block.T, hidden[rows])
        return grad_hidden, grad_items, None, None


def negative_logits(hidden: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor, shared: str) -> torch.Tensor:
    """Scores of sampled negatives. shared "batch": hidden [B, L, D], negatives [1, 1, N] -> [B, L, N];
    "sequence": negatives [B, 1, N] -> [B, L, N]; "position": hidden [P, D], negatives [P, N] -> [P, N]."""
    if shared == "batch":  # one GEMM
        return hidden @ items[negatives[0, 0]].T
    if shared == "sequence":  # one GEMM per sequence
        return torch.bmm(hidden, items[negatives[:, 0]].transpose(1, 2))
    if items.shape[0] <= DENSE_NEGATIVES_MAX_ITEMS_PER_NEGATIVE * negatives.shape[-1]:
        return SampledColumns.apply(hidden, items, negatives, DENSE_NEGATIVES_ROWS_PER_BLOCK)
    return torch.einsum("pd,pnd->pn", hidden, items[negatives])


def next_item_loss(
    cfg: LossConfig,
    hidden: torch.Tensor,  # [B, L, D]
    target_ids: torch.Tensor,  # [B, L]
    items: torch.Tensor,  # [V, D]
    generator: torch.Generator | None = None,
    workspace: Workspace | None = None,  # full CE: buffers reused across steps (see Workspace)
    item_frequency: torch.Tensor | None = None,  # [V] each item's share of the training targets (logQ)
    repeat_bias: torch.Tensor | None = None,  # a scalar: added to the scores of the items already read
    input_ids: torch.Tensor | None = None,  # [B, L] the encoder's inputs (with repeat_bias)
) -> torch.Tensor:
    mask = target_ids > 0  # [B, L]
    if not mask.any():
        return hidden.sum() * 0.0
    num_items = items.shape[0]
    if repeat_bias is not None and (cfg.name != "ce" or input_ids is None):
        raise ValueError("a repeat bias needs loss.name = 'ce' and the encoder's input ids")
    if cfg.name == "ce":
        h, w = _normalise(cfg, hidden[mask], items)  # [P, D], [V, D]
        if cfg.temperature != 1.0:
            h = h / cfg.temperature
        dtype = torch.bfloat16 if cfg.ce_matmul_dtype == "bfloat16" else None
        offsets = {}
        if repeat_bias is not None:  # each position's window so far: its items' logits get the bias
            offsets = dict(offset_pairs=prefix_history_pairs(input_ids, mask), offset=repeat_bias / cfg.temperature)
        return full_softmax_ce(
            h, w, target_ids[mask], cfg.ce_chunk_size, dtype, cfg.ce_item_chunk_size, workspace, **offsets
        )

    B, L, _ = hidden.shape
    h, w = _normalise(cfg, hidden, items)
    n = 1 if cfg.name == "bce" else cfg.num_negatives
    negatives = sample_negatives(cfg, num_items, B, L, n, generator, hidden.device)
    targets, scored = target_ids[mask], h[mask]  # [P], [P, D]: only positions with a target are scored
    if cfg.negatives_shared == "position":
        negatives = negatives[mask]  # [P, N]
        neg_logits = negative_logits(scored, w, negatives, "position")  # [P, N]
    else:  # shared negatives: one GEMM over the padded batch, then the scored positions
        neg_logits = negative_logits(h, w, negatives, cfg.negatives_shared)[mask]  # [B, L, N] -> [P, N]
        negatives = negatives.expand(B, L, n)[mask]
    pos_logits = (scored * w[targets]).sum(-1)  # [P]
    collide = negatives == targets[:, None]  # [P, N]

    if cfg.name == "sampled_softmax":
        m = cfg.in_batch_negatives
        if m:  # the batch's own targets: m drawn among the P scored positions, shared by all of them
            batch_negatives = targets[
                torch.randint(0, targets.shape[0], (m,), generator=generator, device=targets.device)
            ]
            neg_logits = torch.cat([neg_logits, scored @ w[batch_negatives].T], dim=-1)  # [P, N + m]
            negatives = torch.cat([negatives, batch_negatives.expand(targets.shape[0], m)], dim=-1)
            collide = negatives == targets[:, None]
        neg_logits = neg_logits.masked_fill(collide, float("-inf"))
        logits = torch.cat([pos_logits[:, None], neg_logits], dim=-1) / cfg.temperature  # [P, 1 + N + m]
        if cfg.logq_correction:
            if item_frequency is None:
                raise ValueError("loss.logq_correction needs the items' training frequencies")
            expected = m * item_frequency + n / (num_items - 1)  # [V] expected draws of each item
            logits = logits - torch.log(expected)[torch.cat([targets[:, None], negatives], dim=-1)]
        return -F.log_softmax(logits, dim=-1)[:, 0].mean()
    if cfg.name in ("bce", "gbce"):
        beta = 1.0
        if cfg.name == "gbce":
            alpha = n / (num_items - 1)
            beta = alpha * (cfg.gbce_t * (1 - 1 / alpha) + 1 / alpha)
        pos_term = -beta * F.logsigmoid(pos_logits)  # [P]
        neg_term = (-F.logsigmoid(-neg_logits)).masked_fill(collide, 0.0).sum(-1)  # [P]
        return (pos_term + neg_term).mean()
    raise ValueError(f"unknown loss {cfg.name!r}; allowed: {list(LOSSES)}")
