"""Exact full-ranking counts on CPU (``recsys_rank_counts`` in cpu/ranking.c): for each user, how many
items score above its target and how many tie with it, without a [V, B] score matrix.

- reference: :func:`recsys.metrics.rank_counts_from_item_scores` on the full score matrix;
- kernel: :class:`ItemRanker`;
- dispatcher: ``recsys.evaluation`` takes the kernel on CPU where :func:`available` says yes.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch

from .cpu_build import TILES, add_flops, available, counting, library, round_up

__all__ = ["ItemRanker", "available"]


class ItemRanker:
    """Exact full-ranking counts by the kernel (``recsys_rank_counts``): for each user the number of
    items that score above its target, without a [V, B] score matrix (scores are made and counted in
    [6 users, 1,024 items] tiles in cache). Every score is the same chain of fp32 FMAs over the D
    dimensions wherever it is computed, so a user's rank does not depend on its block or batch; its
    scores equal torch's products to fp32 rounding (not bit for bit: a near-tie may rank differently).

    items: [V', D] fp32 (rows from ``num_items`` on are padding and never ranked, nor is item 0)."""

    def __init__(self, items: torch.Tensor, num_items: int):
        library()  # loaded (available() first)
        self.num_items, self.dim = num_items, items.shape[1]
        stride = -(-num_items // 16) * 16
        self.items_t = torch.zeros(self.dim, stride)  # [D, V rounded up to 16], zero columns past V
        self.items_t[:, :num_items] = items[:num_items].detach().to(torch.float32).T

    def counts(
        self,
        users: torch.Tensor,
        target_ids: torch.Tensor,
        exclude_index: tuple[torch.Tensor, torch.Tensor] | None,
        num_threads: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(above, ties) [B] each, as :func:`recsys.metrics.rank_counts_from_item_scores` defines them.
        exclude_index: (user rows, items) pairs that never outrank the target (seen items)."""
        users = users.detach().to(torch.float32).contiguous()
        B = users.shape[0]
        targets = target_ids.to(torch.int64).contiguous()
        if exclude_index is None:
            offsets, seen = torch.zeros(B + 1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)
        else:
            rows, seen = (t.to(torch.int64) for t in exclude_index)
            if rows.numel() > 1 and not bool((rows[1:] >= rows[:-1]).all()):
                order = torch.argsort(rows, stable=True)
                rows, seen = rows[order], seen[order]
            offsets = torch.zeros(B + 1, dtype=torch.int64)
            offsets[1:] = torch.bincount(rows, minlength=B).cumsum(0)
            seen = seen.contiguous() if seen.numel() else torch.zeros(1, dtype=torch.int64)
        above = torch.empty(B, dtype=torch.int64)
        ties = torch.empty(B, dtype=torch.int64)
        config = (ctypes.c_int32 * 5)(
            B, self.dim, self.num_items, self.items_t.shape[1], num_threads or torch.get_num_threads()
        )
        rc = library().recsys_rank_counts(
            ctypes.addressof(config),
            users.data_ptr(),
            self.items_t.data_ptr(),
            targets.data_ptr(),
            offsets.data_ptr(),
            seen.data_ptr(),
            above.data_ptr(),
            ties.data_ptr(),
        )
        if rc != 0:
            raise RuntimeError(f"fused CPU ranking failed (code {rc})")
        if counting():  # per user: every chunk's columns rounded up to 16, and the target's 16 columns
            chunk = TILES["rank_chunk"]
            chunks = np.minimum(chunk, self.num_items - np.arange(0, self.num_items, chunk))
            add_flops(B * 2 * self.dim * (int(round_up(chunks, 16).sum()) + 16))
        return above, ties

    def ranks(
        self,
        users: torch.Tensor,
        target_ids: torch.Tensor,
        exclude_index: tuple[torch.Tensor, torch.Tensor] | None,
        tie_policy: str,
        num_threads: int | None = None,
    ) -> torch.Tensor:
        """[B] 1-based integer ranks (optimistic or pessimistic, :func:`recsys.metrics.ranks_under_policy`)."""
        from ..metrics import ranks_under_policy

        if tie_policy not in ("optimistic", "pessimistic"):
            raise ValueError(f"integer ranks need tie_policy 'optimistic' or 'pessimistic', got {tie_policy!r}")
        return ranks_under_policy(*self.counts(users, target_ids, exclude_index, num_threads), tie_policy)[0]


def self_check() -> bool:
    """``recsys_rank_counts`` against the score matrix's counts, with ties and excluded items."""
    from ..metrics import rank_counts_from_item_scores

    gen = torch.Generator().manual_seed(0)
    items = torch.randn(70, 8, generator=gen).round()  # integer vectors: exact ties happen
    users = torch.randn(5, 8, generator=gen).round()
    targets = torch.tensor([1, 7, 33, 69, 2])
    rows, seen = torch.tensor([0, 0, 3]), torch.tensor([5, 9, 40])
    above, ties = ItemRanker(items, 70).counts(users, targets, (rows, seen), num_threads=2)
    scores_t = (users @ items.T).T.contiguous()  # [V, B]
    scores_t[0] = -torch.inf  # padding is never ranked
    ref_above, ref_ties = rank_counts_from_item_scores(scores_t, targets, (rows, seen))
    return bool(torch.equal(above, ref_above) and torch.equal(ties, ref_ties))
