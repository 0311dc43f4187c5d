"""HSTU pointwise attention on jagged sequences: the PyTorch reference and the dispatcher.

For each sequence (tokens ``seq_offsets[b]:seq_offsets[b+1]`` of the jagged tensors) and head::

    A[i, j] = SiLU(q_i . k_j + rab[i, j]) / N      for j <= i (causal), else 0
    out_i   = sum_j A[i, j] v_j

with N the configured maximum sequence length (a constant, so jagged and padded paths agree) and
``rab[i, j] = position_bias[i - j] + time_bias[bucket(query_time_i - time_j)]``, where
``bucket(d) = clamp(floor(ln(max(|d|, 1)) / 0.301), 0, num_buckets - 1)``. There is no softmax.

The reference processes sequences in groups of similar length (shortest first, at most
``GROUP_SEQUENCES`` per group), padding each group only to its own longest sequence and bounding the
[group, heads, n, n] score block by ``max_block_elements``: a batch of mixed lengths costs about the sum
of its squared lengths, not batch x longest squared. It is what the fused Triton
kernel (:mod:`recsys.kernels.hstu_attention_triton`) is tested against. This module imports nothing
else from the package, and Triton only when the kernel is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TIME_BUCKET_DIVISOR = 0.301


def time_buckets(delta: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Log-spaced bucket of a time gap (HSTU): clamp(floor(ln(max(|d|, 1)) / 0.301), 0, num_buckets - 1)."""
    d = delta.abs().clamp(min=1).float()  # fp32, as the fused kernel computes it
    return torch.floor(torch.log(d) / TIME_BUCKET_DIVISOR).clamp(0, num_buckets - 1).long()


class _GatherRows(torch.autograd.Function):
    """``table[index]`` whose backward adds the gradient rows up with ``index_add_``: torch's own backward
    of advanced indexing (an accumulating ``index_put_``) is many times slower on CPU for millions of
    scores gathered from a small bias table, and was the largest item of an HSTU-large step."""

    @staticmethod
    def forward(ctx, table, index):
        ctx.save_for_backward(index)
        ctx.table_shape = table.shape
        return table[index]

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        grad_table = grad.new_zeros(ctx.table_shape)
        grad_table.index_add_(0, index.reshape(-1), grad.reshape(-1, *ctx.table_shape[1:]))
        return grad_table, None


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` (index: integer tensor of any shape), with a fast backward into ``table``."""
    if torch.is_grad_enabled() and table.requires_grad:
        return _GatherRows.apply(table, index)
    return table[index]


GROUP_SEQUENCES = 16


def _groups(lengths: torch.Tensor, heads: int, max_block_elements: int) -> list[tuple[int, int]]:
    """Consecutive ranges of ``lengths`` (sorted ascending by the caller) of at most ``GROUP_SEQUENCES``
    sequences whose padded score block [g, H, n, n] stays under the budget."""
    groups, start, longest = [], 0, 0
    lengths_list = lengths.tolist()  # one entry per sequence
    for b, n in enumerate(lengths_list):
        longest_if = max(longest, n)
        too_big = (b - start + 1) * heads * longest_if * longest_if > max_block_elements
        if b > start and (too_big or b - start == GROUP_SEQUENCES):
            groups.append((start, b))
            start, longest_if = b, n
        longest = longest_if
    groups.append((start, len(lengths_list)))
    return groups


def hstu_attention_reference(
    q: torch.Tensor,  # [T, H, Dqk]
    k: torch.Tensor,  # [T, H, Dqk]
    v: torch.Tensor,  # [T, H, Dv]
    seq_offsets: torch.Tensor,  # [B + 1]
    max_seq_len: int,
    position_bias: torch.Tensor | None = None,  # [max_seq_len] weight per offset i - j
    time_bias: torch.Tensor | None = None,  # [num_buckets]
    key_times: torch.Tensor | None = None,  # [T] timestamp of each token
    query_times: torch.Tensor | None = None,  # [T] the time each query predicts for (next item's)
    causal: bool = True,
    max_block_elements: int = 1 << 26,
) -> torch.Tensor:  # [T, H, Dv]
    T, H, _ = q.shape
    out = q.new_zeros(T, H, v.shape[-1])
    lengths = seq_offsets[1:] - seq_offsets[:-1]
    if T == 0:
        return out
    order = torch.argsort(lengths, stable=True)  # shortest first: groups of similar length
    for first, last in _groups(lengths[order].cpu(), H, max_block_elements):
        members = order[first:last]
        lens = lengths[members]
        n = int(lens.max()) if len(lens) else 0
        if n == 0:
            continue
        starts = seq_offsets[members]
        pos = torch.arange(n, device=q.device)
        valid = pos[None, :] < lens[:, None]  # [g, n]
        index = (starts[:, None] + pos[None, :]).clamp(max=T - 1)  # [g, n]
        qg, kg, vg = (gather_rows(x, index).transpose(1, 2) for x in (q, k, v))  # [g, H, n, D]
        scores = qg @ kg.transpose(-1, -2)  # [g, H, n, n]
        if position_bias is not None:
            offset = (pos[:, None] - pos[None, :]).clamp(0, position_bias.shape[0] - 1)
            scores = scores + gather_rows(position_bias, offset)
        if time_bias is not None:
            gap = query_times[index][:, :, None] - key_times[index][:, None, :]  # [g, n, n]
            scores = scores + gather_rows(time_bias, time_buckets(gap, time_bias.shape[0]))[:, None]
        attn = F.silu(scores)  # the 1 / max_seq_len is applied to the (smaller) output below
        allowed = valid[:, None, :, None] & valid[:, None, None, :]
        if causal:
            allowed = allowed & (pos[:, None] >= pos[None, :])
        attn = attn.masked_fill(~allowed, 0.0)
        og = (attn.to(vg.dtype) @ vg).transpose(1, 2) / max_seq_len  # [g, n, H, Dv]; fp32 bias tables promote attn
        out[index[valid]] = og[valid].to(out.dtype)  # bias tables may be fp32 under bf16 inputs
    return out


def hstu_attention_last(
    q_last: torch.Tensor,  # [B, H, Dqk] the query of each sequence's last token
    k: torch.Tensor,  # [T, H, Dqk]
    v: torch.Tensor,  # [T, H, Dv]
    seq_offsets: torch.Tensor,  # [B + 1]
    max_seq_len: int,
    position_bias: torch.Tensor | None = None,
    time_bias: torch.Tensor | None = None,
    key_times: torch.Tensor | None = None,  # [T]
    query_times_last: torch.Tensor | None = None,  # [B] the time the last query predicts for
) -> torch.Tensor:  # [B, H, Dv]
    """The same attention as :func:`hstu_attention_reference` for each sequence's last query only (an
    evaluation's user vector): every token scores against its sequence's last query, ``SiLU(q . k +
    rab) v`` is summed per sequence. O(T) work instead of O(sum of squared lengths); the last query sees
    every token of its sequence, so there is no mask. An empty sequence gives zeros."""
    T = k.shape[0]
    B = seq_offsets.shape[0] - 1
    out = v.new_zeros(B, v.shape[1], v.shape[2])
    if T == 0:
        return out
    lengths = seq_offsets[1:] - seq_offsets[:-1]
    sequence = torch.repeat_interleave(torch.arange(B, device=k.device), lengths, output_size=T)  # [T]
    last = seq_offsets[1:][sequence] - 1  # [T] the index of each token's sequence's last token
    scores = (gather_rows(q_last, sequence) * k).sum(-1)  # [T, H]
    if position_bias is not None:
        offset = (last - torch.arange(T, device=k.device)).clamp(0, position_bias.shape[0] - 1)
        scores = scores + gather_rows(position_bias, offset)[:, None]
    if time_bias is not None:
        gap = query_times_last[sequence] - key_times  # [T]
        scores = scores + gather_rows(time_bias, time_buckets(gap, time_bias.shape[0]))[:, None]
    weighted = F.silu(scores).to(v.dtype)[:, :, None] * v  # [T, H, Dv]
    return out.index_add_(0, sequence, weighted) / max_seq_len


BACKENDS = ("reference", "triton")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def hstu_attention(*args, backend: str = "auto", **kwargs) -> torch.Tensor:
    """Dispatcher: the fused Triton kernel for CUDA tensors when Triton is installed, else the reference.

    ``backend``: "auto", "reference" or "triton" (an override for tests and benchmarks; "triton" on CPU
    tensors needs ``TRITON_INTERPRET=1``).
    """
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown HSTU attention backend {backend!r}; available: {list(BACKENDS)}")
    q = args[0] if args else kwargs["q"]
    causal = kwargs.get("causal", True)
    if backend == "auto":
        backend = "triton" if (q.is_cuda and causal and triton_available()) else "reference"
    if backend == "triton":
        from .hstu_attention_triton import hstu_attention_triton

        return hstu_attention_triton(*args, **kwargs)
    kwargs.pop("max_len", None)
    return hstu_attention_reference(*args, **kwargs)


def attention_flops(lengths: torch.Tensor, heads: int, qk_dim: int, v_dim: int, causal: bool = True) -> float:
    """Multiply-adds x 2 of QK^T and AV over the jagged batch (half of each n x n block when causal)."""
    pairs = (lengths.double() * (lengths.double() + 1) / 2) if causal else lengths.double() ** 2
    return float(2 * heads * (qk_dim + v_dim) * pairs.sum())
