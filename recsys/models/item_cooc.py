"""Item-to-item co-occurrence: the items that followed a user's recent items in other users' sequences.

A sequential item-kNN baseline. Counting the training events, c(i, j) is how often item j came within
``window`` steps after item i in one user's sequence; the similarity is normalised by both items'
frequencies, s(i, j) = c(i, j) / sqrt(n_i n_j) (cosine of the co-occurrence rows). A user's score for j
is the sum over the last ``max_seq_len`` history items i of decay^(age of i) s(i, j).

What differs from a plain item-kNN: to fit the shared evaluator (scores are user vectors times item
vectors) and large catalogues, the similarity matrix is replaced by its best rank-``dim`` approximation
(randomised SVD of the sparse matrix, ``torch.svd_lowrank``): s ~ P Q^T, user vector = sum_i decay^age P_i,
item vectors = Q. With dim at least the number of items the scores are exact up to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .base import SequentialEncoder, register
from .counts import training_events


@dataclass
class ItemCoocConfig:
    max_seq_len: int = 20  # the most recent history items whose neighbours are summed
    window: int = 3  # j co-occurs with i when it comes 1..window steps after i
    dim: int = 128  # rank of the similarity's approximation
    decay: float = 0.7  # weight of a history item per step of age (1: all alike)
    seed: int = 0  # the randomised SVD's

    def check(self) -> list[tuple[str, bool, str]]:
        return [
            ("window", self.window >= 1, ">= 1"),
            ("dim", self.dim >= 1, ">= 1"),
            ("decay", 0 < self.decay <= 1, "in (0, 1]"),
        ]


@register("item_cooc", ItemCoocConfig)
class ItemCooc(SequentialEncoder):
    objective = "fitted"
    last_only_forward = True

    def __init__(self, cfg: ItemCoocConfig, num_items: int):
        super().__init__()
        self.cfg = cfg
        dim = min(cfg.dim, num_items)
        self.register_buffer("sources", torch.zeros(num_items, dim))  # P: item i as a history item
        self.register_buffer("targets", torch.zeros(num_items, dim))  # Q: item j as a candidate

    def fit_counts(self, split) -> None:
        users, items, _ = training_events(split)
        V = self.sources.shape[0]
        rows, cols = [], []
        for lag in range(1, self.cfg.window + 1):  # pairs (i, j) with j `lag` steps after i, same user
            same_user = users[lag:] == users[:-lag]
            rows.append(items[:-lag][same_user])
            cols.append(items[lag:][same_user])
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        keep = rows != cols
        pairs = np.unique(rows[keep].astype(np.int64) * V + cols[keep], return_counts=True)
        i, j = pairs[0] // V, pairs[0] % V
        freq = np.bincount(items, minlength=V).astype(np.float64)
        values = pairs[1] / np.sqrt(freq[i] * freq[j])
        indices = torch.from_numpy(np.stack([i, j]))
        matrix = torch.sparse_coo_tensor(indices, torch.from_numpy(values).float(), (V, V), check_invariants=True)
        matrix = matrix.coalesce()
        dim = self.sources.shape[1]
        generator_state = torch.random.get_rng_state()  # the SVD's random draws leave the run's stream alone
        torch.manual_seed(self.cfg.seed)
        u, s, v = torch.svd_lowrank(matrix, q=dim, niter=4)
        torch.random.set_rng_state(generator_state)
        root = s.clamp(min=0).sqrt()
        self.sources.copy_(u * root)
        self.targets.copy_(v * root)

    def item_vectors(self) -> torch.Tensor:  # [V, dim]
        return self.targets

    def forward(
        self,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        next_timestamps: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """[B, L] -> [B, L, dim]: at each position the decayed sum of the source vectors up to it (with
        ``last_only``, [B, 1, dim] for the last position)."""
        L = item_ids.shape[1]
        age = torch.arange(L - 1, -1, -1, device=item_ids.device, dtype=torch.float32)  # 0 = most recent
        weights = self.cfg.decay**age * (item_ids != 0)  # [B, L]
        if last_only:
            return (weights[..., None] * self.sources[item_ids]).sum(1, keepdim=True)
        # every position t: sum over s <= t of decay^(t - s) P[item_s] (in float64: decay^L may be tiny)
        scaled = (weights.double()[..., None] * self.sources[item_ids].double()).cumsum(dim=1)
        return (scaled / (self.cfg.decay ** age.double())[None, :, None]).float()
