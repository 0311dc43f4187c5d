"""BERT4Rec: bidirectional transformer trained by masked-item prediction.

Fei Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional Encoder Representations from
Transformer", CIKM 2019.

Method. A training window of the user's last ``max_seq_len`` items has each item replaced by a
``[mask]`` token with probability ``mask_prob`` (at least one per sequence); a bidirectional
transformer (every position attends to every non-padding position) encodes the window, and the loss
predicts the original item at each masked position. At inference a ``[mask]`` is appended after the
history and its hidden state scores the next item.

What differs from the paper:
- The loss is the recipe's (full cross-entropy by default, as in the paper and in Klenitskiy &
  Vasilev 2023); scores use the item embeddings (tied output, no extra output bias or projection).
- Pre-LayerNorm blocks (:mod:`recsys.models.layers`, GELU feed-forward), positions counted from the end;
  as in BERT (and the paper's code) no dropout between the feed-forward network's two layers, only
  after it, after attention and on the attention weights.
  On CPU the attention runs in groups of rows of similar length, each on its own square
  (:func:`recsys.models.layers.attention.grouped_bidirectional_attention`; exact): with ML-1M's lengths of
  20-200 in one batch that halves the scores, softmax and dropout draws of the full [L, L] grid. In
  training each group is gathered from the packed rows and written back to them
  (:func:`recsys.models.layers.attention.grouped_packed_attention`), which skips the padding.
- The masking lives in the data pipeline (:func:`recsys.data.batching.cloze_inputs`), seeded per epoch
  like the rest of the training data, so runs are reproducible and resumable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import SequentialEncoder, padding_and_positions, register
from .dropout import Dropout
from .layers import Block, FusedCPUInference, fused_last_hidden, grid_inputs, run_blocks


@dataclass
class BERT4RecConfig:
    max_seq_len: int = 200  # the most recent items of a history that are read
    hidden_dim: int = 64  # width of item and hidden vectors
    num_blocks: int = 2  # transformer blocks
    num_heads: int = 2  # attention heads
    ffn_dim: int | None = None  # default: 4 * hidden_dim (as in BERT)
    dropout: float = 0.2  # dropout on embeddings, attention and feed-forward outputs
    mask_prob: float = 0.2  # share of a training sequence's items masked (cloze)
    init_std: float = 0.02


@register("bert4rec", BERT4RecConfig)
class BERT4Rec(FusedCPUInference, SequentialEncoder):
    causal = False
    objective = "cloze"

    def __init__(self, cfg: BERT4RecConfig, num_items: int):
        super().__init__()
        self.cfg = cfg
        self.num_items = num_items
        self.mask_token = num_items  # one row past the catalogue
        self.item_embedding = nn.Embedding(num_items + 1, cfg.hidden_dim, padding_idx=0)
        self.position_embedding = nn.Embedding(cfg.max_seq_len + 1, cfg.hidden_dim, padding_idx=0)
        self.emb_dropout = Dropout(cfg.dropout)
        # BERT's blocks: a feed-forward network 4x wide, no dropout between its two layers
        self.blocks = nn.ModuleList(
            Block(cfg.hidden_dim, cfg.num_heads, cfg.dropout, cfg.ffn_dim or 4 * cfg.hidden_dim, inner_dropout=False)
            for _ in range(cfg.num_blocks)
        )
        self.final_ln = nn.LayerNorm(cfg.hidden_dim)
        for emb in (self.item_embedding, self.position_embedding):
            nn.init.normal_(emb.weight, std=cfg.init_std)
            emb.weight.data[0].zero_()

    def item_vectors(self) -> torch.Tensor:
        return self.item_embedding.weight[: self.num_items]  # the [mask] row is never a candidate

    def forward(
        self,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        next_timestamps: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """[B, L] -> [B, L, D]; ``last_only``: [B, 1, D], the last position's output (computed alone in the
        last block)."""
        not_pad, positions = padding_and_positions(item_ids, self.cfg.max_seq_len)  # [B, L, 1], [B, L]
        if last_only and (fused := fused_last_hidden(self, item_ids, causal=False)) is not None:
            return fused[:, None]
        grid, not_pad, item_ids, positions = grid_inputs(last_only, not_pad, item_ids, positions)
        x = self.item_embedding(item_ids) * math.sqrt(self.cfg.hidden_dim)
        x = self.emb_dropout(x + self.position_embedding(positions)) * not_pad
        return self.final_ln(run_blocks(self.blocks, x, not_pad, False, last_only=last_only, grid=grid))

    def user_vectors(  # [B, L] -> [B, D]
        self,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        next_timestamps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Append [mask] after the history (dropping the oldest item if the window is full)."""
        keep = item_ids[:, -(self.cfg.max_seq_len - 1) :] if self.cfg.max_seq_len > 1 else item_ids[:, :0]
        mask = torch.full((item_ids.shape[0], 1), self.mask_token, dtype=item_ids.dtype, device=item_ids.device)
        return self(torch.cat([keep, mask], dim=1), last_only=True)[:, -1]
