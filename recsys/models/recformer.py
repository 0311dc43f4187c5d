"""Recformer-style text recommender, two-level variant: items are their text, users their sequence.

Jiacheng Li et al., "Text Is All You Need: Learning Language Representations for Sequential
Recommendation", KDD 2023.

Method (two-level). Every item's flattened key-value sentence (``title: ... genres: ...``) is encoded
once by a pretrained MiniLM (:mod:`recsys.text`); a trainable adapter (MLP) maps these text vectors to
item vectors, so an item no ID model has seen still gets a vector from its text. A small transformer
over the history's item vectors, with Recformer's item-position embeddings, gives the user vector;
scores are cosine / temperature (set ``loss.l2_normalize`` and ``loss.temperature``).

What differs from the paper: Recformer runs one bidirectional Longformer over the concatenated *tokens*
of all items in the history (token, token-type and item-position embeddings). That costs ~130 MFLOP per
token per step: an hour per epoch on 2 CPU cores. Here the language model is frozen and runs once per
catalogue, and the sequence model works on item vectors (causal, so every position trains), which is
what fits a CPU; the token-level model is `recformer_tokens.py`. ``id_embeddings`` adds UniSRec's
"text + ID" item vectors (an option the paper does not have; off by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import SequentialEncoder, padding_and_positions, register
from .dropout import Dropout
from .layers import Block, grid_inputs, run_blocks
from .layers.repeat import RepeatBiasConfig, init_repeat_bias


@dataclass
class RecformerConfig(RepeatBiasConfig):
    max_seq_len: int = 50  # the most recent items of a history that are read
    hidden_dim: int = 64  # width of item and hidden vectors
    num_blocks: int = 2  # transformer blocks
    num_heads: int = 2  # attention heads
    dropout: float = 0.2  # dropout on embeddings, attention and feed-forward outputs
    adapter_dim: int = 256  # hidden width of the MLP from text vectors to item vectors
    text_dim: int = 384  # width of the MiniLM text vectors
    # also a learned vector per item id, added to the adapted text vector (UniSRec's transductive "text +
    # ID" setting): it tells apart items whose texts are the same and memorises what text misses; off, an
    # item is its text alone (inductive: new items need no training)
    id_embeddings: bool = False
    init_std: float = 0.02


@register("recformer", RecformerConfig)
class Recformer(SequentialEncoder):
    causal = True
    last_only_forward = True
    needs_item_text = True

    def __init__(self, cfg: RecformerConfig, num_items: int):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("text_vectors", torch.zeros(num_items, cfg.text_dim), persistent=False)
        self.adapter = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.adapter_dim), nn.GELU(), nn.Linear(cfg.adapter_dim, cfg.hidden_dim)
        )
        self.item_id = nn.Embedding(num_items, cfg.hidden_dim, padding_idx=0) if cfg.id_embeddings else None
        if self.item_id is not None:
            nn.init.normal_(self.item_id.weight, std=cfg.init_std)
            self.item_id.weight.data[0] = 0.0
        self.item_position = nn.Embedding(cfg.max_seq_len + 1, cfg.hidden_dim, padding_idx=0)
        nn.init.normal_(self.item_position.weight, std=cfg.init_std)
        init_repeat_bias(self, cfg.repeat_bias)
        self.emb_dropout = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.hidden_dim, cfg.num_heads, cfg.dropout) for _ in range(cfg.num_blocks))
        self.final_ln = nn.LayerNorm(cfg.hidden_dim)

    def set_item_text(self, vectors: torch.Tensor) -> None:
        """Text vectors [V, text_dim] by internal item id (row 0 = padding)."""
        if vectors.shape != self.text_vectors.shape:
            raise ValueError(f"text vectors {tuple(vectors.shape)} do not match {tuple(self.text_vectors.shape)}")
        self.text_vectors.copy_(vectors)

    def _items(self, item_ids: torch.Tensor | None = None) -> torch.Tensor:  # [..., D]
        """Item vectors of ``item_ids`` (all items when None): the adapted text, plus the id's own vector."""
        text = self.text_vectors if item_ids is None else self.text_vectors[item_ids]
        vectors = self.adapter(text)
        if self.item_id is not None:
            vectors = vectors + (self.item_id.weight if item_ids is None else self.item_id(item_ids))
        return vectors

    def item_vectors(self) -> torch.Tensor:  # [V, D]
        return self._items()

    def forward(
        self,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        next_timestamps: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """[B, L] -> [B, L, D]; ``last_only``: [B, 1, D], the last position's output."""
        not_pad, positions = padding_and_positions(item_ids, self.cfg.max_seq_len)  # [B, L, 1], [B, L]
        # dense last-position batches (evaluation) and torch.export take the grid layout (as SASRec)
        grid, not_pad, item_ids, positions = grid_inputs(last_only, not_pad, item_ids, positions)
        x = self._items(item_ids) * math.sqrt(self.cfg.hidden_dim)  # [B, L, D]
        x = self.emb_dropout(x + self.item_position(positions)) * not_pad
        return self.final_ln(run_blocks(self.blocks, x, not_pad, True, last_only=last_only, grid=grid))
