"""Fused CPU inference of pre-LayerNorm transformer encoders (SASRec, BERT4Rec): each history's last
hidden state, one sequence at a time in cache-sized scratch (``recsys_encode_last`` in cpu/encoder.c).

- reference: :func:`reference_encode_last`, the same function in PyTorch ops (and the models' own
  PyTorch path, which the tests compare against as well);
- kernel: :func:`encode_last` (built and loaded by :mod:`.cpu_build`);
- dispatcher: ``recsys.models.layers.blocks`` takes the kernel in eval mode without gradients where
  :func:`recsys.kernels.cpu_build.available` says yes, else the PyTorch path.

Why: in an evaluation most of the time went to PyTorch ops that each stream a [tokens, D] tensor through
memory (LayerNorms, GELU, residual additions, the attention's scores, softmax and masks) and to
thousands of op calls; the kernel keeps one sequence's intermediates in L2 cache and runs its products
register-blocked. The results equal the PyTorch path to fp32 rounding (different summation order,
polynomial exp and erf; tests compare both).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .cpu_build import TILES, add_flops, available, counting, library, round_up

__all__ = ["EncoderWeights", "available", "encode_last", "left_padded_counts", "reference_encode_last"]

PARAMS_PER_BLOCK = 12
W1 = 8  # a block's first feed-forward matrix [D, F] in EncoderWeights.blocks


@dataclass
class EncoderWeights:
    """What the kernel reads, every matrix transposed to [in, out] and contiguous.

    blocks: per block (ln1_weight, ln1_bias, w_qkv [D, 3D] or, folded, w_query [D, D], b_qkv,
    w_out [D, D], b_out, ln2_weight, ln2_bias, w1 [D, F], b1, w2 [F, D], b2)."""

    item_table: torch.Tensor  # [V, D]
    position_table: torch.Tensor  # [max_len + 1, D], row p = position p (counted from the end)
    final_weight: torch.Tensor  # [D]
    final_bias: torch.Tensor  # [D]
    blocks: list[tuple[torch.Tensor, ...]]
    heads: int
    causal: bool
    folded: bool  # one head whose key / value projections are folded into query / output (keys = values = LN(x))
    eps: float = 1e-5
    emb_scale: float = 1.0


def encoder_flops(counts: torch.Tensor, weights: "EncoderWeights") -> int:
    """The products and attention :func:`encode_last` executes for rows of ``counts`` items: the same
    loops as the C code (query tiles of 6, score widths rounded up to 8, the last block's one query)."""
    D, H = weights.item_table.shape[1], weights.heads
    dh, F_dim, nb = D // H, weights.blocks[0][W1].shape[1], len(weights.blocks)
    n = counts.to(torch.int64).numpy()
    total = np.zeros(len(n), dtype=np.int64)
    ffn = 2 * 2 * F_dim * D
    # every block but the last, all n positions
    qkv = (1 if weights.folded else 3) * 2 * D * D
    total += (nb - 1) * n * (qkv + 2 * D * D + ffn)
    # their attention per head: query tiles [i0, i0 + r), r <= 6, keys i0 + r (causal) or n
    longest = int(n.max()) if len(n) else 0
    attn = np.zeros(longest + 1, dtype=np.int64)  # attention flops of one block at each length
    for length in range(1, longest + 1):
        i0 = np.arange(0, length, TILES["query_tile"])
        r = np.minimum(TILES["query_tile"], length - i0)
        keys = i0 + r if weights.causal else np.full_like(i0, length)
        attn[length] = H * int((2 * r * round_up(keys, 8) * dh + 2 * r * dh * keys).sum())
    total += (nb - 1) * attn[n]
    # the last block: one query, its output and FFN; its attention over the normalised inputs u_j
    # themselves (folded: one head; otherwise per head Wk_h^T q_h, the scores, sum_j p_j u_j, Wv_h of it)
    total += 2 * D * D + 2 * D * D + ffn
    if weights.folded:
        total += 2 * round_up(n, 8) * D + 2 * D * n
    else:
        total += H * (2 * D * dh + 2 * round_up(n, 8) * D + 2 * D * n + 2 * D * dh)
    return int(total.sum())


def left_padded_counts(item_ids: torch.Tensor) -> torch.Tensor | None:
    """[B] items per row of a left-padded [B, L] id batch (0 = padding), or None where a row is empty or
    has padding between items (the kernel's input is each row's last ``count`` columns)."""
    B, L = item_ids.shape
    not_pad = item_ids != 0
    counts = not_pad.sum(1)
    if B == 0 or L == 0 or bool((counts == 0).any()):
        return None
    expected = torch.arange(L, device=item_ids.device) >= (L - counts)[:, None]
    return counts if bool(torch.equal(not_pad, expected)) else None


def encode_last(
    item_ids: torch.Tensor, weights: EncoderWeights, counts: torch.Tensor, num_threads: int | None = None
) -> torch.Tensor:
    """[B, D] final hidden state at each row's last position, for left-padded ``item_ids`` [B, L] with
    ``counts`` [B] items per row (:func:`left_padded_counts`). Call :func:`available` first."""
    lib = library()
    ids = item_ids.contiguous().to(torch.int64)
    B, L = ids.shape
    D = weights.item_table.shape[1]
    F_dim = weights.blocks[0][W1].shape[1]
    if L >= weights.position_table.shape[0]:
        raise ValueError(f"sequence length {L} exceeds the position table ({weights.position_table.shape[0] - 1})")
    counts = counts.to(torch.int64).contiguous()
    start = (L - counts).contiguous()
    out = torch.empty(B, D, dtype=torch.float32)
    threads = num_threads or torch.get_num_threads()
    dh = D // weights.heads
    config = (ctypes.c_int32 * 9)(
        B, L, D, weights.heads, F_dim, len(weights.blocks), int(weights.causal), int(weights.folded), threads
    )
    scalars = (ctypes.c_float * 3)(weights.eps, weights.emb_scale, 1.0 if weights.folded else dh**-0.5)
    tables = [weights.item_table, weights.position_table, weights.final_weight, weights.final_bias]
    if any(len(block) != PARAMS_PER_BLOCK for block in weights.blocks):  # the C code reads 12 per block
        raise ValueError(f"each block needs {PARAMS_PER_BLOCK} weight tensors (EncoderWeights)")
    flat = [t for block in weights.blocks for t in block]
    for t in tables + flat:
        if t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu":
            raise ValueError("encoder weights must be contiguous fp32 CPU tensors")
    table_ptrs = (ctypes.c_void_p * 4)(*(t.data_ptr() for t in tables))
    block_ptrs = (ctypes.c_void_p * len(flat))(*(t.data_ptr() for t in flat))
    rc = lib.recsys_encode_last(
        ctypes.addressof(config),
        ctypes.addressof(scalars),
        ids.data_ptr(),
        start.data_ptr(),
        counts.data_ptr(),
        ctypes.addressof(table_ptrs),
        ctypes.addressof(block_ptrs),
        out.data_ptr(),
    )
    if rc != 0:
        raise RuntimeError(f"fused CPU encoder failed (code {rc})")
    if counting():
        add_flops(encoder_flops(counts, weights))
    return out


def reference_encode_last(item_ids: torch.Tensor, weights: EncoderWeights) -> torch.Tensor:
    """The kernel's function in PyTorch ops, [B, L] left-padded ids -> [B, D] (every position through
    every block; padding keys masked)."""
    B, L = item_ids.shape
    D = weights.item_table.shape[1]
    H, dh = weights.heads, D // weights.heads
    not_pad = item_ids != 0  # [B, L]
    positions = torch.arange(L, 0, -1).expand(B, L) * not_pad
    x = weights.item_table[item_ids] * weights.emb_scale + weights.position_table[positions]  # [B, L, D]
    allowed = not_pad[:, None, :].expand(B, L, L)  # [B, query, key]
    if weights.causal:
        allowed = allowed & torch.ones(L, L, dtype=torch.bool).tril()
    allowed = allowed | torch.eye(L, dtype=torch.bool)  # padding queries (never read) see themselves
    for ln1_w, ln1_b, w_qkv, b_qkv, w_out, b_out, ln2_w, ln2_b, w1, b1, w2, b2 in weights.blocks:
        u = F.layer_norm(x, (D,), ln1_w, ln1_b, weights.eps)
        if weights.folded:
            q, k, v, scale = u @ w_qkv + b_qkv, u, u, 1.0
        else:
            q, k, v = (u @ w_qkv + b_qkv).split(D, dim=-1)
            scale = dh**-0.5
        q, k, v = (t.view(B, L, H, dh).transpose(1, 2) for t in (q, k, v))  # [B, H, L, dh]
        scores = (q @ k.transpose(-1, -2)) * scale
        a = scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1) @ v
        x = x + a.transpose(1, 2).reshape(B, L, D) @ w_out + b_out
        x = x + F.gelu(F.layer_norm(x, (D,), ln2_w, ln2_b, weights.eps) @ w1 + b1) @ w2 + b2
    return F.layer_norm(x[:, -1], (D,), weights.final_weight, weights.final_bias, weights.eps)


def random_weights(
    num_items: int,
    max_len: int,
    dim: int,
    heads: int,
    ffn: int,
    num_blocks: int,
    causal: bool,
    folded: bool,
    generator: torch.Generator | None = None,
) -> EncoderWeights:
    """Random weights of the kernel's shapes (self check, tests)."""

    def rand(*shape, std=0.3):
        return torch.randn(*shape, generator=generator) * std

    blocks = []
    width = dim if folded else 3 * dim
    for _ in range(num_blocks):
        blocks.append(
            (
                1 + rand(dim, std=0.1),
                rand(dim, std=0.1),
                rand(dim, width),
                rand(width, std=0.1),
                rand(dim, dim),
                rand(dim, std=0.1),
                1 + rand(dim, std=0.1),
                rand(dim, std=0.1),
                rand(dim, ffn),
                rand(ffn, std=0.1),
                rand(ffn, dim),
                rand(dim, std=0.1),
            )
        )
    return EncoderWeights(
        rand(num_items, dim, std=1.0),
        rand(max_len + 1, dim, std=1.0),
        1 + rand(dim, std=0.1),
        rand(dim, std=0.1),
        blocks,
        heads,
        causal,
        folded,
        emb_scale=1.5,
    )


def self_check() -> bool:
    """``recsys_encode_last`` against the reference on small random encoders, both attentions, folded or not."""
    gen = torch.Generator().manual_seed(0)
    for causal, folded, heads in ((True, True, 1), (False, False, 2)):
        weights = random_weights(50, 12, 16, heads, 24, 2, causal, folded, gen)
        counts = torch.tensor([1, 5, 12, 9])
        ids = torch.randint(1, 50, (4, 12), generator=gen) * (torch.arange(12) >= 12 - counts[:, None])
        got = encode_last(ids, weights, counts, num_threads=2)
        if not torch.allclose(got, reference_encode_last(ids, weights), rtol=1e-4, atol=1e-4):
            return False
    return True
