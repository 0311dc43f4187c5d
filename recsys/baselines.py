"""Non-learned scorers for the shared evaluator: popularity and random scores.

Both implement ``item_vectors()`` and ``user_vectors(item_ids, ...)`` as the encoders do, so
:func:`recsys.evaluation.evaluate` ranks with them under the same protocol (seen items excluded,
strict ranks). Popularity counts only the events training sees, so it knows nothing of a held-out
item or of the validation and test targets.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .data.splits import Split


def train_item_counts(split: Split) -> np.ndarray:
    """[V] number of training events of each item (the first ``train_lengths[u]`` events of each user)."""
    data = split.data
    lengths = np.diff(data.seq_offsets)
    position = np.arange(data.num_interactions) - np.repeat(data.seq_offsets[:-1], lengths)
    in_train = position < np.repeat(split.train_lengths, lengths)
    return np.bincount(np.asarray(data.item_ids)[in_train], minlength=data.num_items)


class FixedScorer(nn.Module):
    """Scores from a fixed item table and either one constant user vector or random user vectors."""

    def __init__(self, item_vectors: torch.Tensor, random_users: bool = False, seed: int = 0):
        super().__init__()
        self.items = item_vectors  # [V, D]
        self.random_users = random_users
        self.generator = torch.Generator().manual_seed(seed)

    def item_vectors(self) -> torch.Tensor:
        return self.items

    def user_vectors(self, item_ids: torch.Tensor, *unused) -> torch.Tensor:  # [B, L] -> [B, D]
        if self.random_users:
            return torch.randn(item_ids.shape[0], self.items.shape[1], generator=self.generator)
        return torch.ones(item_ids.shape[0], self.items.shape[1])


def popularity_scorer(split: Split) -> FixedScorer:
    """Every user gets the items in order of their training counts (log1p, a monotone transform)."""
    return FixedScorer(torch.tensor(np.log1p(train_item_counts(split)), dtype=torch.float32)[:, None])


def random_scorer(num_items: int, seed: int = 1) -> FixedScorer:
    """Scores that are dot products of random item and random user vectors."""
    items = torch.randn(num_items, 16, generator=torch.Generator().manual_seed(seed))
    return FixedScorer(items, random_users=True)
