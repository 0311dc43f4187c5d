"""Latent multi-step reasoning after a history (ReaRec), the parts its encoders share.

Jiakai Tang et al., "Think Before Recommend: Unleashing the Latent Reasoning Power for Sequential
Recommendation", arXiv 2503.22675, 2025.

Method. An encoder reads a history and gives the hidden state h^(0) of its last position. That state is
fed back as one more input token, h^(0) + p_1, where p_k is a *reasoning position embedding* (a table
of its own, so the reasoning tokens are told apart from items), and the encoder runs again: the new
token attends to the history and to itself and gives h^(1). K steps give the states h^(0..K). Two ways
to train and use them (:data:`METHODS`):

- ERL (ensemble reasoning learning): the user vector is the mean of the K + 1 states; the loss is the
  next-item loss of the mean minus ``kl_weight`` times the mean KL divergence between the item
  distributions of every two steps (so the steps look at the history differently).
- PRL (progressive reasoning learning): the user vector is the last state; the loss is the next-item
  loss of the last state plus the mean loss of the earlier states with their logits' temperature
  raised by ``temperature_scale`` per step back (a curriculum: earlier steps are held to softer
  targets), plus a contrastive term: a second forward pass with Gaussian noise of scale ``noise``
  added to the reasoning inputs, whose reasoning states must pick their own sequence's out of the
  batch (InfoNCE).

What differs from the paper:
- Training reasons at every position of a sequence: each prefix gets its own K reasoning tokens,
  which attend to that prefix and to that prefix's earlier reasoning tokens (next-item training here
  predicts at every position; the paper trains one prefix per sample). Inference reasons after the
  last item only, as in the paper.
- The history's keys and values are computed once per block and reused by every step: exact, since
  the history is causal and never attends to reasoning tokens (a test checks h^(0) against the plain
  encoder).
- Training with full CE runs on packed rows (:func:`packed_attention`): every step's projections and
  feed-forward layers see the real positions only, and the attention is computed on each length
  group's window instead of the padded [B, L] grid (same values and gradients, tested).
- ERL's KL term and PRL's contrastive term (:mod:`recsys.losses.reasoning`) are computed at each
  sequence's last position (full item distributions at every position would be [positions, K + 1, V]);
  the contrastive term scores cosine similarities / 0.1 (the paper: dot products / 0.07, whose scale
  depends on the encoder).
- K = 0 is the plain encoder: its own forward runs, nothing here is called.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from .attention import packed_windows
from .packing import Packing

METHODS = ("erl", "prl")


@dataclasses.dataclass
class ReasoningConfig:
    """The reasoning settings of an encoder that offers ReaRec (SASRec and HSTU configs inherit them)."""

    reasoning_steps: int = 0  # ReaRec: K latent reasoning steps after the history; 0 = the plain encoder
    # ReaRec's training and user vector: "erl" ensemble (mean of the states) or "prl" progressive (the last)
    reasoning_method: Literal["erl", "prl"] = "erl"
    reasoning_kl_weight: float = 0.05  # ERL: weight of the steps' pairwise KL divergence (subtracted from the loss)
    # PRL: the state j steps before the last is scored at the loss's temperature x this ** j
    reasoning_temperature_scale: float = 5.0
    reasoning_noise: float = 0.01  # PRL: standard deviation of the noise on the second view's reasoning inputs
    reasoning_contrastive_weight: float = 1.0  # PRL: weight of the contrastive term (0: no second forward pass)


def combine_states(states: torch.Tensor, method: str) -> torch.Tensor:
    """The user vectors of reasoning states [..., K + 1, D] -> [..., D]: their mean (ERL) or the last (PRL)."""
    return states.mean(dim=-2) if method == "erl" else states[..., -1, :]


def history_mask(real: torch.Tensor, query_columns: torch.Tensor) -> torch.Tensor:
    """[B, Lq, L] bool: the keys a query at each of ``query_columns`` [Lq] (grid columns) may read: real
    items at or before its column. A padding query's row may be empty: its step keys are always there
    (:func:`softmax_attention`), and in the history pass the caller adds the diagonal."""
    columns = torch.arange(real.shape[1], device=real.device)
    return real[:, None, :] & (columns[None, :] <= query_columns[:, None])[None]


def softmax_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    allowed: torch.Tensor,
    step_keys: torch.Tensor | None,
    step_values: torch.Tensor | None,
    dropout_p: float,
) -> torch.Tensor:
    """Softmax attention of queries over the history and over their own position's reasoning tokens.

    q: [B, H, Lq, d]; keys, values: [B, H, L, d] (the history); allowed: [B, Lq, L] history keys each
    query may read; step_keys, step_values: [B, H, Lq, S, d], the S reasoning tokens of each query's
    position so far (itself included), or None (the history pass). -> [B, H, Lq, d]."""
    scale = q.shape[-1] ** -0.5
    scores = (q @ keys.transpose(-1, -2)).mul(scale).masked_fill(~allowed[:, None], float("-inf"))  # [B, H, Lq, L]
    if step_keys is not None:
        # a handful of keys per query: a broadcast product, not S-wide batched GEMMs
        step_scores = (q.unsqueeze(-2) * step_keys).sum(-1).mul(scale)  # [B, H, Lq, S]
        scores = torch.cat([scores, step_scores], dim=-1)
    weights = F.dropout(scores.softmax(dim=-1), dropout_p, training=dropout_p > 0)
    out = weights[..., : keys.shape[2]] @ values
    if step_keys is not None:
        out = out + (weights[..., keys.shape[2] :].unsqueeze(-1) * step_values).sum(-2)
    return out


def packed_attention(
    attend: Callable[..., torch.Tensor],
    packing: Packing,
    heads: int,
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    step_keys: torch.Tensor | None = None,
    step_values: torch.Tensor | None = None,
    windows: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Attention of one query per real position on packed rows (training): over its row's history up to
    its own position and, with step keys, over its own reasoning tokens so far.

    q, keys: [T_bucket, H d], values: [T_bucket, H dv], the queries and the history's keys and values of
    :class:`Packing`'s rows; step_keys, step_values: [T_bucket, S, H d or H dv], each row's reasoning
    tokens so far (itself included), or None. Each length group's [B_g, n_g] window
    (:func:`packed_windows`) is gathered from the packed rows, split into heads ([B_g, H, n, d]; step
    keys [B_g, H, n, S, d]) and given to ``attend(group, q, keys, values, step_keys, step_values,
    causal)`` -> [B_g, H, n, dv] (``group``: its index in ``windows``, default :func:`packed_windows`),
    where ``causal`` [1, n, n] is all a real query needs: its earlier columns are all real.
    -> [T_bucket, H dv], zeros in the bucket's copy rows."""
    out_rows, out_values = [], []
    for group, (window, n_real) in enumerate(windows or packed_windows(packing)):
        b, n = window.shape
        rows = window.reshape(-1)
        q_g, k_g, v_g = (t.index_select(0, rows).view(b, n, heads, -1).transpose(1, 2) for t in (q, keys, values))
        sk = sv = None
        if step_keys is not None:
            S = step_keys.shape[1]
            sk, sv = (
                t.index_select(0, rows).view(b, n, S, heads, -1).permute(0, 3, 1, 2, 4)
                for t in (step_keys, step_values)
            )
        causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril_()[None]  # [1, n, n]
        y = merge_heads(attend(group, q_g, k_g, v_g, sk, sv, causal))  # [B_g, n, H dv]
        real = (torch.arange(n, device=q.device) < n_real).reshape(-1)  # the real queries
        out_rows.append(rows[real])
        out_values.append(y.reshape(b * n, -1)[real])
    values_out = torch.cat(out_values)
    return values_out.new_zeros(q.shape[0], values_out.shape[1]).index_copy(0, torch.cat(out_rows), values_out)


def packed_softmax_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    step_keys: torch.Tensor,
    step_values: torch.Tensor,
    packing: Packing,
    heads: int,
    dropout_p: float,
    windows: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """:func:`softmax_attention` of the reasoning queries on packed rows (:func:`packed_attention`'s
    shapes and ``windows``). Same values and gradients at the real positions as the grid form (test)."""

    def attend(group, q_g, k_g, v_g, sk, sv, causal):
        return softmax_attention(q_g, k_g, v_g, causal, sk, sv, dropout_p)

    return packed_attention(attend, packing, heads, q, keys, values, step_keys, step_values, windows)


def pointwise_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    history_bias: torch.Tensor,
    allowed: torch.Tensor,
    step_keys: torch.Tensor | None,
    step_values: torch.Tensor | None,
    step_bias: torch.Tensor | float,
    normaliser: float,
) -> torch.Tensor:
    """HSTU's pointwise attention, SiLU(q . k + bias) / N summed over the allowed keys, over the history
    and a query's own reasoning tokens. history_bias: [B, 1 or H, Lq, L] relative bias of the history
    keys; step_bias: the bias of a reasoning key (same position and time as its query). Shapes as
    :func:`softmax_attention`."""
    scores = F.silu(q @ keys.transpose(-1, -2) + history_bias) * allowed[:, None]  # [B, H, Lq, L]
    out = scores @ values
    if step_keys is not None:
        step_scores = F.silu((q.unsqueeze(-2) * step_keys).sum(-1) + step_bias)  # [B, H, Lq, S]
        out = out + (step_scores.unsqueeze(-1) * step_values).sum(-2)
    return out / normaliser


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, L, d] -> [B, L, H d], the heads side by side."""
    B, H, L, d = x.shape
    return x.transpose(1, 2).reshape(B, L, H * d)


def append_step(cache: torch.Tensor | None, new: torch.Tensor, dim: int = 3) -> torch.Tensor:
    """A block's reasoning keys (or values) so far with one more step's, on a new axis ``dim``: grids
    [B, H, Lq, S, d] with [B, H, Lq, d] (dim 3), packed rows [T, S, D] with [T, D] (dim 1)."""
    new = new.unsqueeze(dim)
    return new if cache is None else torch.cat([cache, new], dim=dim)
