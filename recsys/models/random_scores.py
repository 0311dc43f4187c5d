"""Random: scores that carry no information, the floor every metric is read against.

Each item has a random vector, each history a random query (the mean of random vectors of its items, a
second table), so scores are fixed for a given history and seed but unrelated to what comes next; the
expected HR@k is about k / catalogue size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import SequentialEncoder, register


@dataclass
class RandomConfig:
    max_seq_len: int = 50  # the history window the evaluator hands over
    dim: int = 16  # width of the random vectors
    seed: int = 0


@register("random", RandomConfig)
class RandomScores(SequentialEncoder):
    objective = "fitted"

    def __init__(self, cfg: RandomConfig, num_items: int):
        super().__init__()
        self.cfg = cfg
        generator = torch.Generator().manual_seed(cfg.seed)
        self.register_buffer("items", torch.randn(num_items, cfg.dim, generator=generator))
        self.register_buffer("queries", torch.randn(num_items, cfg.dim, generator=generator))

    def fit_counts(self, split) -> None:  # nothing to learn
        pass

    def item_vectors(self) -> torch.Tensor:
        return self.items

    def forward(  # [B, L] -> [B, L, dim]
        self,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        next_timestamps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        q = self.queries[item_ids] * (item_ids != 0)[..., None]
        return torch.cumsum(q, dim=1)
