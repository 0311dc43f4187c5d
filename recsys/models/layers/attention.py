"""Self-attention over packed rows: PyTorch's ``scaled_dot_product_attention`` (flash / memory-efficient
kernels on GPU), on CPU chunked causal attention (exact, 32 queries at a time) and, in training, groups
of rows of similar length; one-head inference folds the key projection into the query's and the value
projection into the output's (:meth:`CausalSelfAttention.folded`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...kernels.onednn import Linear, linear
from ..dropout import dropout
from .packing import Packing, exporting


def chunked_causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    chunk: int = 32,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal softmax attention, [B, H, L, d] -> [B, H, L, d], ``chunk`` queries at a time (CPU).

    Queries ``s .. e`` see keys ``0 .. e`` only: one batched GEMM for their scores, the upper triangle of
    the last ``chunk`` x ``chunk`` square masked, softmax, dropout, one GEMM with the values. The work is
    the causal half plus the chunks' diagonal squares, in batched GEMMs: on CPU faster than SDPA's flash
    kernel with ``is_causal`` and than full masked attention, to fp32 rounding
    (``benchmarks/attention_cpu.py`` measures it).
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


def grouped_bidirectional_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, counts: torch.Tensor, dropout_p: float = 0.0, groups: int = 4
) -> torch.Tensor:
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


def _key_masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, row_counts: torch.Tensor, dropout_p: float
) -> torch.Tensor:
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


def grouped_packed_attention(
    qkv: torch.Tensor, packing: Packing, heads: int, dropout_p: float = 0.0, groups: int = 4, causal: bool = False
) -> torch.Tensor:
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
    windows = packed_windows(packing, groups)
    gathered = qkv.index_select(0, torch.cat([w.reshape(-1) for w, _ in windows]))  # [sum B_g n_g, 3 D]
    out_rows, out_values = [], []
    for part, (window, n_real) in zip(gathered.split([w.numel() for w, _ in windows]), windows):
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


def packed_windows(packing: Packing, groups: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The packed rows of each length group's attention window (:func:`length_groups`): per group,
    (window [B_g, n_g] packed row indices, row counts [B_g, 1]). Row b's items fill columns 0 ..
    counts[b] - 1; the columns past them repeat its last item (masked as keys, never read as queries)."""
    counts = packing.counts  # [B]
    starts = counts.cumsum(0) - counts  # [B] each row's first packed row
    out = []
    for rows, n in length_groups(counts, groups):
        columns = torch.arange(n, device=counts.device)
        last = (counts[rows] - 1).clamp_min(0)[:, None]  # an empty row reads a real row it never uses
        window = starts[rows][:, None] + torch.minimum(columns, last)  # [B_g, n] packed rows
        # (an empty last row starts past T)
        out.append((window.clamp_max(max(packing.num_real - 1, 0)), counts[rows][:, None]))
    return out


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
        if source is None or not all(
            a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
            for a, b in zip(params, source)
        ):
            with torch.no_grad():
                D = self.out.weight.shape[0]
                (w_q, w_k, w_v), (b_q, _, b_v) = self.qkv.weight.split(D), self.qkv.bias.split(D)
                scale = D**-0.5
                self._folded_weights = (
                    (w_k.t() @ w_q).mul_(scale),
                    (w_k.t() @ b_q).mul_(scale),
                    self.out.weight @ w_v,
                    self.out.weight @ b_v + self.out.bias,
                )
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
            y = packing.from_grid(
                F.scaled_dot_product_attention(q, keys, keys, attn_mask=mask, is_causal=causal, scale=1.0)[:, 0]
            )
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

    def forward(
        self,
        x: torch.Tensor,
        packing: Packing,
        attention_input: torch.Tensor | None = None,
        last_only: bool = False,
        causal: bool = True,
    ) -> torch.Tensor:
        """Packed [T, D] -> [T, D] (T: :class:`Packing`'s rows), or [B, D] for each row's last query only
        (``last_only``: keys and values still come from every position). ``causal``: a query sees its
        own and earlier positions (SASRec), otherwise every position of its row (BERT4Rec)."""
        if (
            self.folds_at_inference()
            and attention_input is None
            and not self.training
            and not torch.is_grad_enabled()
            and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()
        ):
            return self._folded_forward(x, packing, last_only, causal)
        B, L, D = packing.batch, packing.length, x.shape[-1]
        H = self.num_heads
        # the attention grid: row b's items in columns 0 .. n_b - 1, zeros after (Packing)
        if last_only:  # the last item's query (computed for it alone) sees every real key of its row
            q, k, v = self._last_queries_keys_values(x, packing, attention_input)
            mask, is_causal = packing.key_mask(), False
        else:
            if (
                attention_input is None and self.training and x.device.type == "cpu" and type(packing) is Packing
            ):  # packed rows in, packed rows out (no attention grid)
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
            # dropout its flash kernel was slower than these batched GEMMs and softmax over groups of rows
            # of similar length
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
