"""SASRec: self-attentive sequential recommendation.

Wang-Cheng Kang and Julian McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018.

Method. Item embeddings (scaled by sqrt(D)) plus learned position embeddings go through
``num_blocks`` causal transformer blocks (multi-head self-attention, then a two-layer point-wise
feed-forward network, each with a residual connection), computed for the real positions only
(:class:`Packing`); a final LayerNorm gives the hidden state h_t, scored against the (shared) item embeddings:
``score(i | history up to t) = h_t . e_i``.

What differs from the paper:
- Pre-LayerNorm blocks (LN before attention and before the FFN) instead of the original's mix of
  normalised queries and un-normalised keys; this trains stably at larger learning rates.
- Attention is PyTorch's ``scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU); on
  CPU causal attention runs in chunks of 32 queries (:func:`chunked_causal_attention`, exact, faster there),
  in training on groups of rows of similar length gathered from the packed rows
  (:func:`grouped_packed_attention`: an ML-1M epoch 5.04-5.32 -> 4.38-4.83 s), and the linear layers'
  fp32 products go through oneDNN (:mod:`recsys.kernels.onednn`).
- Training with full CE runs the real positions alone from the embedding lookup on
  (:meth:`SASRec.packed_forward`: no embedding, dropout or final LayerNorm of padding, same values);
  the trainer scores its packed hidden states directly.
- Inference with one head (evaluation, export) folds the key projection into the query's and the value
  projection into the output's (:meth:`CausalSelfAttention.folded`): the same function to fp32 rounding
  at half the per-position products (ML-1M test evaluation 0.258 -> 0.209 s, same ranks).
- Inference on CPU (evaluation, export of user vectors, the API) goes through a fused C kernel,
  one history at a time in cache (:func:`fused_last_hidden`, :mod:`recsys.kernels.cpu_encoder`), where it
  is built; the PyTorch path below is its reference and runs everywhere else.
- Positions count from the end of the history (the most recent item always has the same position
  embedding), as left padding makes natural; padding has its own zero position.
- Embeddings start at N(0, 0.02) instead of N(0, 1): a plain SASRec learned ~5x slower with the latter.
- ``attention_table_dim`` turns on DARE-style decoupling (Feng et al. 2025): queries and keys of every block
  come from a separate (smaller) item table, values and scores from the item table.
- The loss is chosen by the recipe (BCE with one negative as in the paper, full CE = "SASRec+",
  sampled softmax, gBCE); the model only produces hidden states.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import cpu_encoder
from ..kernels.onednn import Linear, feed_forward, linear
from .base import SequentialEncoder, padding_and_positions, register
from .dropout import Dropout, dropout
from .gelu import GELU


@dataclass
class SASRecConfig:
    max_seq_len: int = 50
    hidden_dim: int = 64
    num_blocks: int = 2
    num_heads: int = 1
    ffn_dim: int | None = None  # default: hidden_dim (as in the paper)
    dropout: float = 0.2
    init_std: float = 0.02
    # DARE-style decoupling (Feng et al. 2025): a separate item table of this dimension feeds every block's
    # queries and keys, the item table feeds values and scores; None = one table, as in the paper
    attention_table_dim: int | None = None
    # dropout between the feed-forward network's two layers, as in SASRec's code (BERT has none there)
    ffn_inner_dropout: bool = True


def exporting() -> bool:
    """Whether ``torch.export`` is tracing: the encoders then take their branch-free paths (the grid
    layout with a key mask, plain attention), whose shapes do not depend on the data."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting and is_exporting())


def bucket_size(n: int) -> int:
    """``n`` rounded up to one of 8 sizes per power of two (at most 12.5% more, ~6% on average)."""
    if n <= 16:
        return n
    step = 1 << (n.bit_length() - 4)  # n in [8 step, 16 step)
    return -(-n // step) * step


class Packing:
    """The real (non-padding) positions of a left-padded [B, L] batch, in row-major order.

    Blocks work on the packed [T, F] rows: every linear layer, LayerNorm, GELU and dropout then costs
    T rows instead of B x L (on Beauty's training batches about 1 in 9 positions is real). Only the
    attention scatters its queries, keys and values into a [B, L] grid, and there each row's items sit
    at the front (right padding): a real query's earlier keys are then all real, so causal attention
    needs no mask at all (SDPA's ``is_causal``, which also skips the masked half of the work), and
    bidirectional attention only a [B, 1, 1, L] key mask. T is rounded up to :func:`bucket_size` with
    copies of a real row that nothing reads: oneDNN compiles and caches a kernel per shape (GELU runs
    there), and a new T every step grew the process by ~1 MB per step."""

    def __init__(self, not_pad: torch.Tensor):
        B, L = not_pad.shape[:2]
        self.batch, self.length = B, L
        flat = not_pad.reshape(B * L)
        self.index = flat.nonzero().squeeze(1)  # [T] into the flattened left-padded [B * L]
        self.num_real = T = self.index.numel()
        self.full = T == B * L  # no padding (e.g. evaluation blocks of long histories): packing is a view
        self.counts = counts = not_pad.reshape(B, L).sum(1)  # [B] items per row
        # the same positions in the attention grid, where row b's items take columns 0 .. counts[b] - 1
        self.grid_index = self.index - (L - counts)[self.index // L]  # [T]
        self.rows, self.grid_rows = self.index, self.grid_index  # [T_bucket]: the real rows, then copies
        extra = 0 if self.full else bucket_size(T) - T
        if extra:
            self.rows = torch.cat([self.index, self.index[-1:].expand(extra)])
            self.grid_rows = torch.cat([self.grid_index, self.grid_index[-1:].expand(extra)])
        # each row's last position (always real for a non-empty row) in the packed rows
        self.last = (counts.cumsum(0) - 1).clamp_min(0)  # [B]
        self.nonempty = (counts > 0)[:, None]  # [B, 1]

    def pack(self, x: torch.Tensor) -> torch.Tensor:  # left-padded [B, L, F] -> [T_bucket, F]
        if self.full:
            return x.reshape(self.batch * self.length, -1)
        return x.reshape(self.batch * self.length, -1).index_select(0, self.rows)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:  # [T_bucket, F] -> left-padded [B, L, F], zeros at padding
        if self.full:
            return x.view(self.batch, self.length, -1)
        out = x.new_zeros(self.batch * self.length, x.shape[-1])
        return out.index_copy_(0, self.index, x[: self.num_real]).view(self.batch, self.length, -1)

    def to_grid(self, x: torch.Tensor) -> torch.Tensor:  # [T_bucket, F] -> [B, L, F], items first, zeros after
        if self.full:
            return x.view(self.batch, self.length, -1)
        out = x.new_zeros(self.batch * self.length, x.shape[-1])
        return out.index_copy_(0, self.grid_index, x[: self.num_real]).view(self.batch, self.length, -1)

    def from_grid(self, y: torch.Tensor) -> torch.Tensor:  # [B, L, F] (grid) -> [T_bucket, F]
        if self.full:
            return y.reshape(self.batch * self.length, -1)
        return y.reshape(self.batch * self.length, -1).index_select(0, self.grid_rows)

    def key_mask(self) -> torch.Tensor | None:
        """[B, 1, 1, L] bool, True = a real key (None without padding); an empty row keeps key 0, so
        no softmax row is empty (SDPA would return NaN there)."""
        if self.full:
            return None
        columns = torch.arange(self.length, device=self.counts.device)
        return ((columns < self.counts[:, None]) | (columns == 0))[:, None, None, :]

    def last_rows(self, x: torch.Tensor) -> torch.Tensor:  # [T_bucket, F] -> [B, F], zeros for an empty row
        if self.num_real == 0:
            return x.new_zeros(self.batch, x.shape[-1])
        return x.index_select(0, self.last) * self.nonempty


class GridRows(Packing):
    """A batch given in the attention grid's layout (each row's items first, padding after) and computed
    row for row, padding included: nothing is gathered into packed rows or scattered back. For dense
    batches (an evaluation block of users with similar history lengths) that costs less than packing;
    the padding rows are computed and never read (a real query's keys are all real: earlier positions
    under causal attention, the key mask otherwise), so every real position is exactly as packed."""

    def __init__(self, not_pad: torch.Tensor):  # [B, L, 1] in grid layout
        B, L = not_pad.shape[:2]
        self.batch, self.length = B, L
        self.counts = not_pad.reshape(B, L).sum(1)  # [B]
        self.num_real = B * L  # every position is a row
        self.full = False if exporting() else bool((self.counts == L).all())  # (exported: always the key mask)
        self.last = torch.arange(B, device=not_pad.device) * L + (self.counts - 1).clamp_min(0)  # [B]
        self.nonempty = (self.counts > 0)[:, None]

    def pack(self, x: torch.Tensor) -> torch.Tensor:  # grid [B, L, F] -> [B L, F]
        return x.reshape(self.batch * self.length, -1)

    def to_grid(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(self.batch, self.length, -1)

    def from_grid(self, y: torch.Tensor) -> torch.Tensor:
        return y.reshape(self.batch * self.length, -1)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:  # [B L, F] (grid) -> left-padded [B, L, F]
        B, L = self.batch, self.length
        columns = torch.arange(L, device=x.device)
        real = columns < self.counts[:, None]  # [B, L]
        left = (torch.arange(B, device=x.device)[:, None] * L + (L - self.counts)[:, None] + columns)[real]
        out = x.new_zeros(B * L, x.shape[-1])
        return out.index_copy_(0, left, x.view(B, L, -1)[real]).view(B, L, -1)


def items_first_order(not_pad: torch.Tensor) -> torch.Tensor:
    """[B, L] column order that moves each left-padded row's items to the front (``tensor.gather(1,
    order)``); the padding columns follow."""
    B, L = not_pad.shape[:2]
    counts = not_pad.reshape(B, L).sum(1)
    return (torch.arange(L, device=not_pad.device) + (L - counts)[:, None]) % L


# at least this share of real positions in a last-position batch: compute it in the grid layout
# (GridRows) instead of packing (ML-1M test evaluation, SASRec at length 200, interleaved runs: 0.28 -> 0.265 s)
GRID_MIN_REAL_SHARE = 0.75


def grid_inputs(last_only: bool, not_pad: torch.Tensor, *per_position: torch.Tensor):
    """(grid, not_pad, *per_position): a dense last-position batch (evaluation) reordered items-first,
    so that :func:`run_blocks` computes it in the grid layout (no hidden state packed or scattered);
    any other batch unchanged, with grid False. per_position: [B, L] tensors (ids, positions)."""
    if not (last_only and (exporting() or bool(not_pad.sum() >= GRID_MIN_REAL_SHARE * not_pad.numel()))):
        return (False, not_pad, *per_position)
    order = items_first_order(not_pad)
    return (True, not_pad.gather(1, order[..., None]), *(t.gather(1, order) for t in per_position))


def chunked_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
                             chunk: int = 32, scale: float | None = None) -> torch.Tensor:
    """Causal softmax attention, [B, H, L, d] -> [B, H, L, d], ``chunk`` queries at a time (CPU).

    Queries ``s .. e`` see keys ``0 .. e`` only: one batched GEMM for their scores, the upper triangle of
    the last ``chunk`` x ``chunk`` square masked, softmax, dropout, one GEMM with the values. The work is
    the causal half plus the chunks' diagonal squares, in batched GEMMs. With 1 head of 64 and L of 50,
    92 and 200 this was 1.5-1.7x faster on 2 CPU cores than SDPA's flash kernel with ``is_causal`` and
    1.2-3.4x faster than full masked attention, to fp32 rounding (``benchmarks/attention_cpu.py``).
    ``scale`` multiplies the scores (default d ** -0.5, as SDPA); 1.0 skips the multiplication.
    """
    B, H, L, d = q.shape
    q, k, v = (t.reshape(B * H, L, d) for t in (q, k, v))  # views for one head
    out = q.new_empty(B * H, L, d)
    scale = d**-0.5 if scale is None else scale
    above = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).triu_(1)
    for start in range(0, L, chunk):
        end = min(start + chunk, L)
        scores = torch.bmm(q[:, start:end], k[:, :end].transpose(1, 2))  # [B H, c, end]
        if scale != 1.0:
            scores.mul_(scale)
        scores[:, :, start:].masked_fill_(above[: end - start, : end - start], float("-inf"))
        # dropout's 1 / (1 - p) is applied to the [B H, L, d] output, not to every [c, end] weight
        out[:, start:end] = torch.bmm(dropout(scores.softmax(dim=-1), dropout_p, rescale=False), v[:, :end])
    return (out * (1.0 / (1.0 - dropout_p)) if dropout_p > 0 else out).view(B, H, L, d)


def grouped_bidirectional_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, counts: torch.Tensor,
                                    dropout_p: float = 0.0, groups: int = 4) -> torch.Tensor:
    """Softmax attention over each row's real keys (CPU), [B, H, L, d] -> [B, H, L, d], rows in groups.

    Row b of the grid holds its ``counts[b]`` items in columns 0 .. counts[b] - 1 (:class:`Packing`).
    The rows are sorted by count and cut into ``groups`` groups of equal size; each group is computed
    on its own [B_g, H, n_g, n_g] square, n_g its longest row, instead of [B, H, L, L]: on ML-1M
    training batches (lengths 20-200) that is ~half the scores, softmax and dropout draws. Padding
    queries (columns from counts[b] on) are never read and hold no meaning; an empty row attends to
    key 0, as with :meth:`Packing.key_mask`. Same values and gradients at the real queries as the full
    masked form (test)."""
    B, H, L, d = q.shape
    out = q.new_zeros(B, H, L, d)
    for rows, n in length_groups(counts, groups):
        qg, kg, vg = (t[:, :, :n].index_select(0, rows) for t in (q, k, v))  # [B_g, H, n, d]
        out[rows, :, :n] = _key_masked_attention(qg, kg, vg, counts[rows][:, None], dropout_p)
    return out * (1.0 / (1.0 - dropout_p)) if dropout_p > 0 else out


def length_groups(counts: torch.Tensor, groups: int) -> list[tuple[torch.Tensor, int]]:
    """Rows sorted by ``counts`` [B] and cut into ``groups`` groups of equal size: (row indices, the
    group's longest count, at least 1) per group, shortest group first."""
    order = counts.argsort()
    parts = order.tensor_split(min(groups, counts.shape[0]))
    # each group's longest row: the last of its sorted counts (one conversion to Python for all groups)
    longest = counts[order][torch.tensor([len(rows) for rows in parts]).cumsum(0) - 1].tolist()
    return [(rows, max(n, 1)) for rows, n in zip(parts, longest)]


def _key_masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, row_counts: torch.Tensor,
                          dropout_p: float) -> torch.Tensor:
    """Softmax attention [B_g, H, n, d] -> [B_g, H, n, d] over each row's first ``row_counts`` [B_g, 1]
    keys (key 0 for an empty row, as :meth:`Packing.key_mask`); dropout's 1 / (1 - p) left to the caller."""
    n, d = q.shape[-2:]
    columns = torch.arange(n, device=q.device)
    # -inf added at padding keys: a broadcast add, whose backward passes the gradient through
    # (a masked_fill costs ~5x more here and masks the gradient again in backward)
    key_bias = torch.zeros((q.shape[0], n), dtype=q.dtype, device=q.device)
    key_bias.masked_fill_(~((columns < row_counts) | (columns == 0)), float("-inf"))  # [B_g, n]
    weights = (q @ k.transpose(-1, -2)).mul_(d**-0.5).add_(key_bias[:, None, None, :]).softmax(dim=-1)
    return dropout(weights, dropout_p, rescale=False) @ v


def grouped_packed_attention(qkv: torch.Tensor, packing: Packing, heads: int, dropout_p: float = 0.0,
                             groups: int = 4, causal: bool = False) -> torch.Tensor:
    """:func:`grouped_bidirectional_attention` read from and written to the packed rows (CPU training);
    ``causal``: each group through :func:`chunked_causal_attention` on its own n_g columns instead.

    qkv: packed [T_bucket, 3 D] (queries, keys and values of :class:`Packing`'s rows) -> packed
    [T_bucket, D], zeros in the bucket's copy rows. Each group's [B_g, n_g] window is gathered straight
    from the packed rows (one index_select for all groups; a window's columns past its row's items
    repeat the row's last item: masked as keys, never read as queries) and only the real queries are
    written back. There is no [B, L, 3 D] attention grid, so neither its zero fill nor, in the backward,
    the permuted copy of the queries', keys' and values' gradients into it. Same values and gradients
    as the grid version (test)."""
    D = qkv.shape[1] // 3
    d = D // heads
    counts = packing.counts  # [B]
    starts = counts.cumsum(0) - counts  # [B] each row's first packed row
    windows, row_counts = [], []
    for rows, n in length_groups(counts, groups):
        columns = torch.arange(n, device=qkv.device)
        last = (counts[rows] - 1).clamp_min(0)[:, None]  # an empty row reads a real row it never uses
        window = starts[rows][:, None] + torch.minimum(columns, last)  # [B_g, n] packed rows
        windows.append(window.clamp_max(max(packing.num_real - 1, 0)))  # (an empty last row starts past T)
        row_counts.append(counts[rows][:, None])  # [B_g, 1]
    gathered = qkv.index_select(0, torch.cat([w.reshape(-1) for w in windows]))  # [sum B_g n_g, 3 D]
    out_rows, out_values = [], []
    for part, window, n_real in zip(gathered.split([w.numel() for w in windows]), windows, row_counts):
        b, n = window.shape
        q, k, v = part.view(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)  # [B_g, H, n, d] each
        if causal:  # a real query's earlier keys are all real: no mask
            y = chunked_causal_attention(q, k, v, dropout_p)  # rescaled for dropout inside
        else:
            y = _key_masked_attention(q, k, v, n_real, dropout_p)
        y = y.transpose(1, 2).reshape(b * n, D)  # [B_g n, D]
        real = (torch.arange(n, device=qkv.device) < n_real).reshape(-1)  # the real queries
        out_rows.append(window.reshape(-1)[real])
        out_values.append(y[real])
    out = qkv.new_zeros(qkv.shape[0], D).index_copy(0, torch.cat(out_rows), torch.cat(out_values))
    return out * (1.0 / (1.0 - dropout_p)) if dropout_p > 0 and not causal else out


class CausalSelfAttention(nn.Module):
    #: inference (eval mode, no gradients) with one head runs through :meth:`folded` weights
    fold_inference: bool = True

    def __init__(self, dim: int, num_heads: int, dropout: float, attention_input_dim: int | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        if attention_input_dim is None:
            self.qkv = Linear(dim, 3 * dim)
        else:  # decoupled: queries / keys from the attention stream, values from the hidden state
            self.qk = Linear(attention_input_dim, 2 * dim)
            self.v = Linear(dim, dim)
        self.out = Linear(dim, dim)
        self.dropout = dropout

    def folds_at_inference(self) -> bool:
        """Whether inference (eval mode, no gradients) runs through :meth:`folded` weights: one head."""
        return self.fold_inference and self.num_heads == 1

    def folded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inference weights of one head with the key and output projections folded in (exact algebra).

        Scores: (u_i Wq^T + bq) . (u_j Wk^T + bk) = (u_i Wq^T Wk + bq Wk) . u_j + terms constant over j,
        which softmax cancels; so the query u_i (Wk^T Wq)^T + Wk^T bq meets the normalised inputs u_j
        themselves as keys. Output: sum_j a_ij (u_j Wv^T + bv) Wo^T + bo = (sum_j a_ij u_j)(Wo Wv)^T
        + Wo bv + bo, as each row of a sums to 1; so the values are the u_j too. One D x D product per
        query and one per output replace four per position, and keys / values need none: the last
        block of an evaluation projects nothing at all per position. Equal to the unfolded layer up to
        fp32 rounding (test). Returns (w_query [D, D], b_query [D], w_out [D, D], b_out [D]), the query
        weights scaled by D ** -0.5 (the attention's scale), cached for as long as the layer's weights
        equal the copies taken when they were folded. (Tensor version counters do not do for this:
        torch's fused AdamW kernel updates parameters without bumping them, and validation between
        epochs then ran with the first epoch's folded weights.)"""
        params = tuple(t.detach() for t in (self.qkv.weight, self.qkv.bias, self.out.weight, self.out.bias))
        source = getattr(self, "_folded_source", None)  # ~10 us to compare at D = 64, ~60 to refold
        if source is None or not all(a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
                                     and torch.equal(a, b) for a, b in zip(params, source)):
            with torch.no_grad():
                D = self.out.weight.shape[0]
                (w_q, w_k, w_v), (b_q, _, b_v) = self.qkv.weight.split(D), self.qkv.bias.split(D)
                scale = D**-0.5
                self._folded_weights = ((w_k.t() @ w_q).mul_(scale), (w_k.t() @ b_q).mul_(scale),
                                        self.out.weight @ w_v, self.out.weight @ b_v + self.out.bias)
            self._folded_source = tuple(t.clone() for t in params)
        return self._folded_weights

    def _folded_forward(self, x: torch.Tensor, packing: Packing, last_only: bool, causal: bool) -> torch.Tensor:
        """:meth:`forward` at inference with one head, through :meth:`folded` weights."""
        B, L, D = packing.batch, packing.length, x.shape[-1]
        w_query, b_query, w_out, b_out = self.folded()
        keys = packing.to_grid(x).view(B, 1, L, D)  # keys and values: the normalised inputs themselves
        if last_only:
            q = linear(packing.last_rows(x), w_query, b_query).view(B, 1, 1, D)
            y = F.scaled_dot_product_attention(q, keys, keys, attn_mask=packing.key_mask(), scale=1.0)[:, 0, 0]
        elif causal and x.device.type == "cpu":
            q = packing.to_grid(linear(x, w_query, b_query)).view(B, 1, L, D)
            y = packing.from_grid(chunked_causal_attention(q, keys, keys, scale=1.0)[:, 0])
        else:
            q = packing.to_grid(linear(x, w_query, b_query)).view(B, 1, L, D)
            mask = None if causal else packing.key_mask()
            y = packing.from_grid(F.scaled_dot_product_attention(q, keys, keys, attn_mask=mask,
                                                                 is_causal=causal, scale=1.0)[:, 0])
        return linear(y, w_out, b_out)

    def _last_queries_keys_values(self, x: torch.Tensor, packing: Packing, attention_input: torch.Tensor | None):
        """Each row's last query [B, H, 1, d] and every position's keys and values [B, H, L, d] (grid):
        the query projection runs on the B last rows only, not on all T."""
        B, L, D = packing.batch, packing.length, x.shape[-1]
        H = self.num_heads
        if attention_input is None:
            (w_q, w_kv), (b_q, b_kv) = self.qkv.weight.split([D, 2 * D]), self.qkv.bias.split([D, 2 * D])
            q = linear(packing.last_rows(x), w_q, b_q)  # [B, D]
            k, v = packing.to_grid(linear(x, w_kv, b_kv)).view(B, L, 2, H, D // H).permute(2, 0, 3, 1, 4)
        else:
            (w_q, w_k), (b_q, b_k) = self.qk.weight.split([D, D]), self.qk.bias.split([D, D])
            q = linear(packing.last_rows(attention_input), w_q, b_q)  # [B, D]
            k = packing.to_grid(linear(attention_input, w_k, b_k)).view(B, L, H, D // H).transpose(1, 2)
            v = packing.to_grid(self.v(x)).view(B, L, H, D // H).transpose(1, 2)
        return q.view(B, 1, H, D // H).transpose(1, 2), k, v

    def forward(self, x: torch.Tensor, packing: Packing, attention_input: torch.Tensor | None = None,
                last_only: bool = False, causal: bool = True):
        """Packed [T, D] -> [T, D] (T: :class:`Packing`'s rows), or [B, D] for each row's last query only
        (``last_only``: keys and values still come from every position). ``causal``: a query sees its
        own and earlier positions (SASRec), otherwise every position of its row (BERT4Rec)."""
        if (self.folds_at_inference() and attention_input is None and not self.training
                and not torch.is_grad_enabled() and not torch.jit.is_tracing()
                and not torch.compiler.is_compiling()):
            return self._folded_forward(x, packing, last_only, causal)
        B, L, D = packing.batch, packing.length, x.shape[-1]
        H = self.num_heads
        # the attention grid: row b's items in columns 0 .. n_b - 1, zeros after (Packing)
        if last_only:  # the last item's query (computed for it alone) sees every real key of its row
            q, k, v = self._last_queries_keys_values(x, packing, attention_input)
            mask, is_causal = packing.key_mask(), False
        else:
            if (attention_input is None and self.training and x.device.type == "cpu"
                    and type(packing) is Packing):  # packed rows in, packed rows out (no attention grid)
                return self.out(grouped_packed_attention(self.qkv(x), packing, H, self.dropout, causal=causal))
            if attention_input is None:
                q, k, v = packing.to_grid(self.qkv(x)).view(B, L, 3, H, D // H).permute(2, 0, 3, 1, 4)
            else:
                q, k = packing.to_grid(self.qk(attention_input)).view(B, L, 2, H, D // H).permute(2, 0, 3, 1, 4)
                v = packing.to_grid(self.v(x)).view(B, L, H, D // H).transpose(1, 2)
            # causal: the earlier keys of a real query are all real, so no mask
            mask, is_causal = (None, True) if causal else (packing.key_mask(), False)
        # q: [B, H, L_q, D/H], k, v: [B, H, L, D/H]; mask: [B, 1, 1, L] real keys, or none
        p = self.dropout if self.training else 0.0
        if is_causal and x.device.type == "cpu":
            y = chunked_causal_attention(q, k, v, p)
        elif x.device.type == "cpu" and not last_only and not exporting():  # bidirectional (BERT4Rec)
            # SDPA's CPU path with dropout is the full [B, H, L, L] math with a bernoulli_ mask; without
            # dropout its flash kernel took 154 ms of BERT4Rec's 0.41 s ML-1M test evaluation (2 heads,
            # length 200), these batched GEMMs and softmax 76 + 33 ms (evaluation 0.37 s, 4 runs each)
            y = grouped_bidirectional_attention(q, k, v, packing.counts, p)
        elif p > 0 and x.device.type == "cpu":  # last query only, with dropout
            weights = (q @ k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)  # [B, H, L_q, L]
            if mask is not None:
                weights.masked_fill_(~mask, float("-inf"))
            y = dropout(weights.softmax(dim=-1), p) @ v  # [B, H, L_q, D/H]
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, -1, D)  # [B, L_q, D]
        return self.out(y[:, 0] if last_only else packing.from_grid(y))


class Block(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        dim = cfg.hidden_dim
        self.ln_attn = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, cfg.num_heads, cfg.dropout, cfg.attention_table_dim)
        self.ln_ffn = nn.LayerNorm(dim)
        ffn = cfg.ffn_dim or dim
        inner_dropout = Dropout(cfg.dropout) if cfg.ffn_inner_dropout else nn.Identity()
        self.ffn = nn.Sequential(Linear(dim, ffn), GELU(), inner_dropout, Linear(ffn, dim))
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, packing: Packing, attention_input: torch.Tensor | None = None,
                last_only: bool = False, causal: bool = True):
        """Packed [T, D] -> [T, D]; ``last_only``: [B, D], each row's last position alone (the last
        block of an evaluation, which reads no other position: a 1 / L share of its attention and FFN)."""
        residual = packing.last_rows(x) if last_only else x
        x = residual + self.drop(self.attn(self.ln_attn(x), packing, attention_input, last_only, causal))
        h = self.ln_ffn(x)
        if not self.training and isinstance(self.ffn[1], nn.GELU) and self.ffn[1].approximate == "none":
            y = feed_forward(h, self.ffn[0], self.ffn[3], x)  # GELU and residual fused into the products
            if y is not None:
                return y
        return x + self.drop(self.ffn(h))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, not_pad: torch.Tensor, causal: bool,
               attention_input: torch.Tensor | None = None, last_only: bool = False,
               grid: bool = False) -> torch.Tensor:
    """The blocks in order on the real positions only (:class:`Packing`): left-padded [B, L, D] ->
    [B, L, D] with zeros at padding, or [B, 1, D] with ``last_only`` (the last block computes the last
    position only). ``grid``: x, not_pad (and attention_input) are in the grid layout instead, each
    row's items first, and every position is computed (:class:`GridRows`)."""
    packing = GridRows(not_pad) if grid else Packing(not_pad)
    x = packing.pack(x)  # [T, D]
    if attention_input is not None:
        attention_input = packing.pack(attention_input)  # [T, A]
    for i, block in enumerate(blocks):
        x = block(x, packing, attention_input, last_only and i == len(blocks) - 1, causal)
    return x[:, None] if last_only else packing.unpack(x)


def _fused_block_weights(block: Block) -> tuple[torch.Tensor, ...]:
    """One block's weights as :mod:`recsys.kernels.cpu_encoder` reads them (matrices [in, out]); a
    one-head attention gives its :meth:`CausalSelfAttention.folded` weights."""
    attn = block.attn
    if attn.folds_at_inference():
        w_qkv, b_qkv, w_out, b_out = attn.folded()
    else:
        w_qkv, b_qkv, w_out, b_out = attn.qkv.weight, attn.qkv.bias, attn.out.weight, attn.out.bias
    first, second = block.ffn[0], block.ffn[3]
    weights = (block.ln_attn.weight, block.ln_attn.bias, w_qkv.t(), b_qkv, w_out.t(), b_out,
               block.ln_ffn.weight, block.ln_ffn.bias, first.weight.t(), first.bias, second.weight.t(), second.bias)
    return tuple(t.detach().contiguous() for t in weights)


def fused_inference_ready(model: nn.Module) -> bool:
    """Whether ``model``'s (SASRec / BERT4Rec) inference on CPU runs through the fused kernel of
    :mod:`recsys.kernels.cpu_encoder`: eval mode, no gradients, fp32, standard blocks (no DARE-style
    decoupling), a kernel built on this machine, not exporting. ``model.fused_cpu_inference = False``
    turns it off for one model (tests compare both paths)."""
    if not (getattr(model, "fused_cpu_inference", False) and model.item_embedding.weight.dtype == torch.float32
            and model.item_embedding.weight.device.type == "cpu" and not model.training
            and not torch.is_grad_enabled() and not getattr(model.cfg, "attention_table_dim", None)
            and not exporting() and not torch.jit.is_tracing() and not torch.compiler.is_compiling()):
        return False
    norms = [model.final_ln] + [ln for b in model.blocks for ln in (b.ln_attn, b.ln_ffn)]
    if any(ln.eps != model.final_ln.eps or ln.weight is None or ln.bias is None for ln in norms):
        return False
    if any(not isinstance(b.ffn[1], nn.GELU) or b.ffn[1].approximate != "none" for b in model.blocks):
        return False
    if len({b.attn.folds_at_inference() for b in model.blocks}) != 1:  # folded in every block or none
        return False
    return cpu_encoder.available()


def fused_last_hidden(model: nn.Module, item_ids: torch.Tensor, causal: bool) -> torch.Tensor | None:
    """[B, D]: the final hidden state at each row's last position by the fused CPU kernel, or None where
    it does not apply (:func:`fused_inference_ready`; ids on another device; a row without items or
    not left-padded): the caller runs its PyTorch path, the kernel's reference."""
    if item_ids.device.type != "cpu" or not fused_inference_ready(model):
        return None
    counts = cpu_encoder.left_padded_counts(item_ids)
    if counts is None:
        return None
    attn = model.blocks[0].attn
    weights = cpu_encoder.EncoderWeights(
        model.item_embedding.weight.detach(), model.position_embedding.weight.detach(),
        model.final_ln.weight.detach(), model.final_ln.bias.detach(),
        [_fused_block_weights(b) for b in model.blocks], attn.num_heads, causal, attn.folds_at_inference(),
        model.final_ln.eps, math.sqrt(model.cfg.hidden_dim))
    return cpu_encoder.encode_last(item_ids, weights, counts)


class FusedCPUInference:
    """For encoders of :class:`Block` s (SASRec, BERT4Rec): evaluation / export on CPU through the fused
    kernel (:func:`fused_last_hidden`) where it applies; ``fused_cpu_inference = False`` on a model
    keeps its PyTorch path."""

    fused_cpu_inference = True

    def fused_inference(self) -> bool:
        return fused_inference_ready(self)


@register("sasrec", SASRecConfig)
class SASRec(FusedCPUInference, SequentialEncoder):
    causal = True
    last_only_forward = True
    packed_forward_available = True

    def __init__(self, cfg: SASRecConfig, num_items: int):
        super().__init__()
        self.cfg = cfg
        self.item_embedding = nn.Embedding(num_items, cfg.hidden_dim, padding_idx=0)
        self.position_embedding = nn.Embedding(cfg.max_seq_len + 1, cfg.hidden_dim, padding_idx=0)
        self.emb_dropout = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_blocks))
        self.final_ln = nn.LayerNorm(cfg.hidden_dim)
        tables = [self.item_embedding, self.position_embedding]
        if cfg.attention_table_dim:
            self.attention_embedding = nn.Embedding(num_items, cfg.attention_table_dim, padding_idx=0)
            self.attention_position = nn.Embedding(cfg.max_seq_len + 1, cfg.attention_table_dim, padding_idx=0)
            tables += [self.attention_embedding, self.attention_position]
        for emb in tables:
            nn.init.normal_(emb.weight, std=cfg.init_std)
            emb.weight.data[0].zero_()

    def forward(self, item_ids, timestamps=None, next_timestamps=None, last_only: bool = False,
                packed: bool = False):
        """[B, L] -> [B, L, D]; ``last_only``: [B, 1, D], the last position's output (computed alone in the
        last block); ``packed``: (hidden [T, D], index [T]), see :meth:`packed_forward`."""
        if packed:
            return self.packed_forward(item_ids)
        not_pad, positions = padding_and_positions(item_ids, self.cfg.max_seq_len)  # [B, L, 1], [B, L]
        if last_only and (fused := fused_last_hidden(self, item_ids, causal=True)) is not None:
            return fused[:, None]
        grid, not_pad, item_ids, positions = grid_inputs(last_only, not_pad, item_ids, positions)
        x, attention_input = self.embed(item_ids, positions)  # [B, L, D], [B, L, A] or None
        x = x * not_pad
        if attention_input is not None:
            attention_input = attention_input * not_pad
        return self.final_ln(run_blocks(self.blocks, x, not_pad, True, attention_input, last_only, grid))

    def embed(self, item_ids: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The blocks' input for ids and positions of any shape [...]: item embedding x sqrt(D) plus position
        embedding, dropped out [..., D]; with ``attention_table_dim``, the attention stream the same way
        from its own tables [..., A] (the same for every block), else None."""
        x = self.emb_dropout(self.item_embedding(item_ids) * math.sqrt(self.cfg.hidden_dim)
                             + self.position_embedding(positions))
        attention_input = None
        if self.cfg.attention_table_dim:
            attention_input = self.attention_embedding(item_ids) * math.sqrt(self.cfg.attention_table_dim)
            attention_input = self.emb_dropout(attention_input + self.attention_position(positions))
        return x, attention_input

    def packed_forward(self, item_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training's forward on the real positions alone: left-padded [B, L] ids -> (hidden [T, D], index
        [T]), the hidden states of the T real positions in row-major order and their flat indices into
        [B * L] (``target_ids.view(-1)[index]`` are their targets; ``hidden[not_pad]`` of the padded
        forward, same values). The padded forward embeds, drops out and normalises all B x L positions
        and packs / unpacks around the blocks; here the embeddings are looked up for the packed rows
        only, so none of that touches padding (on Beauty's batches 1 position in 7 is real)."""
        not_pad, positions = padding_and_positions(item_ids, self.cfg.max_seq_len)  # [B, L, 1], [B, L]
        packing = Packing(not_pad)
        ids, positions = item_ids.reshape(-1)[packing.rows], positions.reshape(-1)[packing.rows]  # [T_bucket]
        x, attention_input = self.embed(ids, positions)  # [T_bucket, D], [T_bucket, A] or None
        for block in self.blocks:
            x = block(x, packing, attention_input, False, True)
        return self.final_ln(x[: packing.num_real]), packing.index  # [T, D], [T]
