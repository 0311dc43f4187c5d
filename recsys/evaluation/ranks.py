"""How a target's rank is counted against the catalogue: exact (above, ties) counts from blocks of
scores, the cut-off path that ranks most users against the popular items alone (:func:`cutoff_ranks`),
and the legacy sampled-negative ranks (:func:`sampled_ranks`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.readers import DataError
from ..data.splits import Split
from ..kernels import cpu_ranking, onednn
from ..metrics import (
    count_true_per_column,
    rank_counts_from_item_scores,
)


def item_counts(split: Split, num_items: int) -> np.ndarray:
    """[V] int: how often each item id occurs in the whole log (index 0, padding, never does)."""
    return np.bincount(split.data.item_ids, minlength=num_items)[:num_items]


def popular_first(split: Split, num_items: int, size: int) -> torch.Tensor:
    """The ``size`` most frequent item ids of the log (never the padding id 0), most frequent first.

    Only decides which items :func:`cutoff_ranks` scores first; no metric depends on it."""
    counts = item_counts(split, num_items)
    counts[0] = -1
    return torch.from_numpy(np.argsort(-counts, kind="stable")[: min(size, num_items - 1)].copy())


def exact_rank_counts(
    items: torch.Tensor,
    users: torch.Tensor,
    target_ids: torch.Tensor,
    num_items: int,
    exclude_index: tuple[torch.Tensor, torch.Tensor] | None,
    out: torch.Tensor | None = None,
    ranker: cpu_ranking.ItemRanker | None = None,
    score_offset: tuple[torch.Tensor, torch.Tensor, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every user's exact (above, ties) counts. With ``ranker`` (the CPU kernel, see :func:`item_ranker`)
    scores are made and counted in cache-sized tiles, each score independent of its block. Otherwise:
    one GEMM [V_pad, D] x [D, B] (torch's, into ``out`` when given; else a fresh output from oneDNN,
    which falls back to torch's product where it is not usable), the padding item and the alignment
    rows set to -inf, then :func:`recsys.metrics.rank_counts_from_item_scores`.

    ``eval.ranks`` "all" and "cutoff" give identical @k metrics only if an (item, user) score does not
    depend on the block it was computed in: B is kept >= 16 (callers pad), as torch's (MKL's) product
    of 8 columns rounded differently here; from 16 columns on both products gave the same bits (test).

    ``score_offset`` (user columns [K], item ids [K], value): added to those scores before anything is
    counted, the target's own score included (a model's repeat bias; GEMM path only)."""
    if ranker is not None:
        if score_offset is not None:
            raise ValueError("the ranking kernel takes no score offsets")
        return ranker.counts(users, target_ids, exclude_index)
    scores_t = onednn.mm(items, users.T) if out is None else torch.mm(items, users.T, out=out)  # [V_pad, B]
    if score_offset is not None:
        columns, offset_items, value = score_offset
        scores_t[offset_items, columns] += value
    scores_t[0] = float("-inf")  # padding id is never a candidate
    scores_t[num_items:] = float("-inf")  # nor are the rows added for alignment
    return rank_counts_from_item_scores(scores_t, target_ids, exclude_index=exclude_index)


def _position_of(selected: torch.Tensor, size: int) -> torch.Tensor:
    """[size] long: the position of each value in ``selected``, -1 for values not in it."""
    position = torch.full((size,), -1, dtype=torch.long, device=selected.device)
    position[selected] = torch.arange(len(selected), device=selected.device)
    return position


def cutoff_ranks(
    items: torch.Tensor,
    popular_ids: torch.Tensor,
    users: torch.Tensor,
    target_ids: torch.Tensor,
    num_items: int,
    k_max: int,
    exclude_index: tuple[torch.Tensor, torch.Tensor] | None,
    max_item_norm: float,
    num_real: int | None = None,
    ranker: cpu_ranking.ItemRanker | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(above, ties) exact wherever above < k_max; above >= k_max (ties 0) elsewhere, where every cut-off
    metric is 0 whatever the ties; and how many users were fully ranked.
    Only the first ``num_real`` users (default all) are ranked: the rest are padding columns.

    items: [V_pad, D] (rows >= num_items are padding); popular_ids: [P] item ids scored first; users:
    [B, D], B a multiple of 8; target_ids: [B]; exclude_index: (user columns, items) as in
    :func:`recsys.metrics.ranks_from_item_scores`; max_item_norm: >= every |w|.

    A user with k_max popular items scored above the target has rank > k_max whatever the other items
    score, so only the [P, B] popular block is needed for it. An item counts as above only if it beats
    the target by more than two fp32 dot products can differ (dim 2^-24 |w| |u| each), so a near-tie
    decided differently by another GEMM shape can only send a user to the full ranking. Every other user
    is ranked against the whole catalogue exactly as the default path does.
    """
    B, dim = users.shape
    popular = items[popular_ids]  # [P, D]
    # oneDNN where it is faster (fp32 products on CPU): these scores only
    # decide which users are surely past k_max, by more than the rounding of any product
    scores_t = onednn.mm(popular, users.T)  # [P, B]
    if exclude_index is not None:
        rows = _position_of(popular_ids, items.shape[0])[exclude_index[1]]
        keep = rows >= 0
        scores_t[rows[keep], exclude_index[0][keep]] = float("-inf")
    target_scores = (items[target_ids] * users).sum(1)  # [B]
    tolerance = 2 * dim * 2.0**-24 * max_item_norm * users.norm(dim=1)  # [B]
    surely_above = count_true_per_column(scores_t > target_scores + tolerance)  # [B]
    above = surely_above.clone()  # >= k_max wherever the user is decided; exact below
    ties = torch.zeros_like(above)
    undecided = (surely_above[:num_real] < k_max).nonzero().squeeze(1)  # users whose rank may be <= k_max
    n = undecided.numel()
    if n:
        n_pad = max(16, n + (-n) % 8)  # >= 16 columns: see exact_ranks
        sub_users = F.pad(users[undecided], (0, 0, 0, n_pad - n))  # [n_pad, D]
        sub_targets = F.pad(target_ids[undecided], (0, n_pad - n), value=1)
        sub_exclude = None
        if exclude_index is not None:
            cols = _position_of(undecided, B)[exclude_index[0]]
            keep = cols >= 0
            sub_exclude = (cols[keep], exclude_index[1][keep])
        sub_above, sub_ties = exact_rank_counts(items, sub_users, sub_targets, num_items, sub_exclude, ranker=ranker)
        above[undecided], ties[undecided] = sub_above[:n], sub_ties[:n]
    return above, ties, n


def _hash_uniform(user_ids: torch.Tensor, draws: torch.Tensor, seed: int) -> torch.Tensor:
    """[b, m] uniform numbers in [0, 1) from (seed, user id, draw index) alone (murmur3's 32-bit finaliser
    on int64 arithmetic): a user's sampled items do not depend on its block, the block size or the number
    of processes, so single-process and torchrun evaluations sample the same items."""
    m32 = 0xFFFFFFFF
    x = (user_ids[:, None] * 0x9E3779B1 + draws[None, :] * 0x85EBCA77 + (seed & m32) * 0xC2B2AE3D) & m32
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & m32  # products of two 32-bit values wrap in int64: the low 32 bits are exact
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & m32
    x = x ^ (x >> 16)
    return x.double() / 2.0**32


def sample_negatives(
    user_ids: torch.Tensor,
    target_ids: torch.Tensor,
    seen: tuple[torch.Tensor, torch.Tensor] | None,
    num_items: int,
    num_negatives: int,
    cdf: torch.Tensor | None,
    seed: int,
) -> torch.Tensor:
    """[B, N] distinct item ids per user, never padding, the target or (``seen``: (row, item) pairs) an
    item of its history; uniform over items 1 .. V-1, or (``cdf``: cumulative counts of items 1 .. V-1)
    by popularity. Draws come from :func:`_hash_uniform`, so a user's items do not depend on the batch.
    What a user may not draw is kept as sorted keys row * V + item (no [B, V] mask): rounds of
    proposals, vectorised over users, accept each user's first acceptable distinct draws in order."""
    B, V, N = len(user_ids), num_items, num_negatives
    rows = torch.arange(B)
    parts = [rows * V + target_ids] + ([seen[0] * V + seen[1]] if seen is not None else [])
    taken = torch.unique(torch.cat(parts))  # sorted keys of what may not be drawn
    taken_rows, taken_items = taken // V, taken % V
    if cdf is None:
        drawable = taken_items >= 1
        available = (V - 1) - torch.bincount(taken_rows[drawable], minlength=B)
    else:
        positive = torch.cat([torch.zeros(1, dtype=torch.bool), cdf.diff(prepend=cdf.new_zeros(1)) > 0])  # [V]
        available = int(positive.sum()) - torch.bincount(taken_rows[positive[taken_items]], minlength=B)
    if bool((available < N).any()):
        raise DataError(
            f"eval.sampled_negatives={N}: a user has only {int(available.min())} items to sample from "
            "(unseen, other than its target)"
        )
    negatives = torch.zeros(B, N, dtype=torch.long)
    filled = torch.zeros(B, dtype=torch.long)
    todo = rows  # users still short of N negatives
    draw, width = 0, N + max(16, N // 2)  # proposals per round: a margin for rejected and repeated draws
    while len(todo):  # later rounds only for the users still short
        u = _hash_uniform(user_ids[todo], torch.arange(draw, draw + width), seed)  # [t, width]
        draw += width
        if cdf is None:
            proposals = 1 + (u * (V - 1)).long().clamp_max(V - 2)
        else:
            proposals = 1 + torch.searchsorted(cdf, u * float(cdf[-1]), right=True).clamp_max(V - 2)
        keys = todo[:, None] * V + proposals  # [t, width]
        at = torch.searchsorted(taken, keys).clamp_max(len(taken) - 1)
        ok = taken[at] != keys  # not the target, the history or an item drawn in an earlier round
        order = keys.sort(dim=1, stable=True)  # a repeat within the round counts once, at its first draw
        repeat = torch.zeros_like(ok)
        repeat.scatter_(1, order.indices[:, 1:], order.values[:, 1:] == order.values[:, :-1])
        ok &= ~repeat
        keep = ok & (ok.cumsum(1) <= (N - filled[todo])[:, None])  # the first acceptable draws, in order
        r, c = keep.nonzero(as_tuple=True)  # row-major: each user's draws in draw order
        negatives[todo[r], filled[todo][r] + keep.cumsum(1)[r, c] - 1] = proposals[r, c]
        filled[todo] += keep.sum(1)
        taken = torch.unique(torch.cat([taken, keys[r, c]]))
        todo = todo[filled[todo] < N]
    return negatives


def sampled_ranks(
    items: torch.Tensor,
    users: torch.Tensor,
    target_ids: torch.Tensor,
    user_ids: torch.Tensor,
    seen: tuple[torch.Tensor, torch.Tensor] | None,
    num_negatives: int,
    cdf: torch.Tensor | None,
    seed: int,
    max_gathered: int = 1 << 24,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Legacy sampled (above, ties): how many of the user's :func:`sample_negatives` outscore its
    target, and how many score the same. items: [V, D] (row 0 padding); users: [B, D]; target_ids, user_ids:
    [B]. Users go in chunks whose gathered negative vectors [rows, N, D] stay under ``max_gathered``."""
    B, (V, D) = users.shape[0], items.shape
    above = torch.empty(B, dtype=torch.long)
    ties = torch.empty(B, dtype=torch.long)
    step = max(1, max_gathered // (num_negatives * D))
    for start in range(0, B, step):
        rows = slice(start, min(start + step, B))
        chunk_seen = None
        if seen is not None:
            pick = (seen[0] >= start) & (seen[0] < rows.stop)
            chunk_seen = (seen[0][pick] - start, seen[1][pick])
        negatives = sample_negatives(user_ids[rows], target_ids[rows], chunk_seen, V, num_negatives, cdf, seed)
        user_block = users[rows]  # [r, D]
        target_scores = (items[target_ids[rows]] * user_block).sum(1, keepdim=True)  # [r, 1]
        negative_scores = torch.einsum("rnd,rd->rn", items[negatives], user_block)  # [r, N]
        above[rows] = (negative_scores > target_scores).sum(1)
        ties[rows] = (negative_scores == target_scores).sum(1)
    return above, ties
