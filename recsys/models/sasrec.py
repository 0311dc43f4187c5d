"""SASRec: self-attentive sequential recommendation.

Wang-Cheng Kang and Julian McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018.

Method. Item embeddings (scaled by sqrt(D)) plus learned position embeddings go through
``num_blocks`` causal transformer blocks (multi-head self-attention, then a two-layer point-wise
feed-forward network, each with a residual connection); padded positions are zeroed after every
block; a final LayerNorm gives the hidden state h_t, scored against the (shared) item embeddings:
``score(i | history up to t) = h_t . e_i``.

What differs from the paper:
- Pre-LayerNorm blocks (LN before attention and before the FFN) instead of the original's mix of
  normalised queries and un-normalised keys; this trains stably at larger learning rates.
- Attention is PyTorch's ``scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU).
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

from .base import SequentialEncoder, padding_and_positions, register
from .dropout import Dropout, dropout


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
    attention scatters its queries, keys and values back into [B, L] for the batched matmuls. T is
    rounded up to :func:`bucket_size` with copies of a real row that nothing reads: oneDNN compiles
    and caches a kernel per shape (GELU runs there), and a new T every step grew the process by ~1 MB
    per step."""

    def __init__(self, not_pad: torch.Tensor):
        B, L = not_pad.shape[:2]
        self.batch, self.length = B, L
        flat = not_pad.reshape(B * L)
        self.index = flat.nonzero().squeeze(1)  # [T] into the flattened [B * L]
        self.num_real = T = self.index.numel()
        self.full = T == B * L  # no padding (e.g. evaluation blocks of long histories): packing is a view
        self.rows = self.index  # [T_bucket]: the real rows, then copies of the last one
        if bucket_size(T) > T and not self.full:
            self.rows = torch.cat([self.index, self.index[-1:].expand(bucket_size(T) - T)])
        counts = not_pad.reshape(B, L).sum(1)  # [B]
        # each row's last position (always real for a non-empty left-padded row) in the packed rows
        self.last = (counts.cumsum(0) - 1).clamp_min(0)  # [B]
        self.nonempty = (counts > 0)[:, None]  # [B, 1]

    def pack(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, F] -> [T_bucket, F]
        if self.full:
            return x.reshape(self.batch * self.length, -1)
        return x.reshape(self.batch * self.length, -1).index_select(0, self.rows)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:  # [T_bucket, F] -> [B, L, F], zeros at padding
        if self.full:
            return x.view(self.batch, self.length, -1)
        out = x.new_zeros(self.batch * self.length, x.shape[-1])
        return out.index_copy_(0, self.index, x[: self.num_real]).view(self.batch, self.length, -1)

    def last_rows(self, x: torch.Tensor) -> torch.Tensor:  # [T_bucket, F] -> [B, F], zeros for an empty row
        if self.num_real == 0:
            return x.new_zeros(self.batch, x.shape[-1])
        return x.index_select(0, self.last) * self.nonempty


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float, attention_input_dim: int | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        if attention_input_dim is None:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:  # decoupled: queries / keys from the attention stream, values from the hidden state
            self.qk = nn.Linear(attention_input_dim, 2 * dim)
            self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, packing: Packing, attn_mask: torch.Tensor | None,
                attention_input: torch.Tensor | None = None, last_only: bool = False, causal: bool = True):
        """Packed [T, D] -> [T, D] (T: :class:`Packing`'s rows), or [B, D] for each row's last query only
        (``last_only``: keys and values still come from every position). ``attn_mask`` None: no padding,
        so causal attention needs no mask (SDPA's ``is_causal``, which also skips the masked half)."""
        B, L, D = packing.batch, packing.length, x.shape[-1]
        H = self.num_heads
        if attention_input is None:
            q, k, v = packing.unpack(self.qkv(x)).view(B, L, 3, H, D // H).permute(2, 0, 3, 1, 4)
        else:
            q, k = packing.unpack(self.qk(attention_input)).view(B, L, 2, H, D // H).permute(2, 0, 3, 1, 4)
            v = packing.unpack(self.v(x)).view(B, L, H, D // H).transpose(1, 2)
        is_causal = causal and attn_mask is None and not last_only  # the last query may see every key
        if last_only:
            q = q[:, :, -1:]
            attn_mask = None if attn_mask is None else attn_mask[:, :, -1:]
        # q: [B, H, L_q, D/H], k, v: [B, H, L, D/H]; attn_mask: [B, 1, L_q, L] bool, True = may attend
        if self.training and self.dropout > 0 and x.device.type == "cpu":
            # SDPA's CPU path with dropout is this same math with a bernoulli_ mask (3x slower to draw)
            weights = (q @ k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
            if is_causal:
                attn_mask = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
            if attn_mask is not None:
                weights.masked_fill_(~attn_mask, float("-inf"))
            y = dropout(weights.softmax(dim=-1), self.dropout) @ v  # [B, H, L_q, D/H]
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                               dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, -1, D)  # [B, L_q, D]
        return self.out(y[:, -1] if last_only else packing.pack(y))


class Block(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        dim = cfg.hidden_dim
        self.ln_attn = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, cfg.num_heads, cfg.dropout, cfg.attention_table_dim)
        self.ln_ffn = nn.LayerNorm(dim)
        ffn = cfg.ffn_dim or dim
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), Dropout(cfg.dropout), nn.Linear(ffn, dim))
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, packing: Packing, attn_mask: torch.Tensor | None,
                attention_input: torch.Tensor | None = None, last_only: bool = False, causal: bool = True):
        """Packed [T, D] -> [T, D]; ``last_only``: [B, D], each row's last position alone (the last
        block of an evaluation, which reads no other position: a 1 / L share of its attention and FFN)."""
        residual = packing.last_rows(x) if last_only else x
        x = residual + self.drop(self.attn(self.ln_attn(x), packing, attn_mask, attention_input, last_only, causal))
        return x + self.drop(self.ffn(self.ln_ffn(x)))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, not_pad: torch.Tensor, causal: bool,
               attention_input: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
    """The blocks in order on the real positions only (:class:`Packing`): [B, L, D] -> [B, L, D] with
    zeros at padding, or [B, 1, D] with ``last_only`` (the last block computes the last position only).
    The attention mask (:func:`causal_padding_mask`) is built only for a batch with padding."""
    packing = Packing(not_pad)
    attn_mask = None if packing.full else causal_padding_mask(not_pad[..., 0], causal)  # [B, 1, L, L]
    x = packing.pack(x)  # [T, D]
    if attention_input is not None:
        attention_input = packing.pack(attention_input)  # [T, A]
    for i, block in enumerate(blocks):
        x = block(x, packing, attn_mask, attention_input, last_only and i == len(blocks) - 1, causal)
    return x[:, None] if last_only else packing.unpack(x)


def causal_padding_mask(item_ids: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """[B, 1, L, L] bool: query i may attend key j if j is not padding (and j <= i when causal);
    ``item_ids`` [B, L] (or its not-padding mask).

    A padded query attends to itself only, so no row is empty (SDPA would return NaN there).
    """
    B, L = item_ids.shape
    key_ok = (item_ids != 0)[:, None, None, :]  # [B, 1, 1, L]
    eye = torch.eye(L, dtype=torch.bool, device=item_ids.device)
    allowed = key_ok | eye
    if causal:
        allowed = allowed & torch.ones(L, L, dtype=torch.bool, device=item_ids.device).tril()
    return allowed


@register("sasrec", SASRecConfig)
class SASRec(SequentialEncoder):
    causal = True

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

    def forward(self, item_ids, timestamps=None, next_timestamps=None, last_only: bool = False):
        """[B, L] -> [B, L, D]; ``last_only``: [B, 1, D], the last position's output (computed alone in the
        last block)."""
        not_pad, positions = padding_and_positions(item_ids, self.cfg.max_seq_len)  # [B, L, 1], [B, L]
        x = self.item_embedding(item_ids) * math.sqrt(self.cfg.hidden_dim)
        x = self.emb_dropout(x + self.position_embedding(positions)) * not_pad  # [B, L, D]
        attention_input = None
        if self.cfg.attention_table_dim:  # [B, L, attention_table_dim], the same for every block
            attention_input = self.attention_embedding(item_ids) * math.sqrt(self.cfg.attention_table_dim)
            attention_input = self.emb_dropout(attention_input + self.attention_position(positions)) * not_pad
        return self.final_ln(run_blocks(self.blocks, x, not_pad, True, attention_input, last_only))

    def user_vectors(self, item_ids, timestamps=None, next_timestamps=None):  # [B, L] -> [B, D]
        return self(item_ids, last_only=True)[:, -1]
