"""Popularity: every user gets the catalogue in order of how often training saw each item.

The baseline every sequential model has to beat; it reads nothing of the user. Counts come from the
training events only (recsys.train.fitted), so a held-out item or a validation / test target adds
nothing. Scores are log(1 + count) (a monotone transform: the ranking is the counts').
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import SequentialEncoder, register
from .counts import training_events


@dataclass
class PopularityConfig:
    max_seq_len: int = 50  # the history window the evaluator hands over (unread)


@register("popularity", PopularityConfig)
class Popularity(SequentialEncoder):
    objective = "fitted"

    def __init__(self, cfg: PopularityConfig, num_items: int):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("scores", torch.zeros(num_items, 1))  # [V, 1], kept in checkpoints

    def fit_counts(self, split) -> None:
        counts = np.bincount(training_events(split)[1], minlength=self.scores.shape[0])[: self.scores.shape[0]]
        counts[0] = 0
        self.scores.copy_(torch.from_numpy(np.log1p(counts.astype(np.float64))).float()[:, None])

    def item_vectors(self) -> torch.Tensor:  # [V, 1]
        return self.scores

    def forward(  # [B, L] -> [B, L, 1]
        self,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        next_timestamps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return torch.ones(*item_ids.shape, 1, device=item_ids.device)
