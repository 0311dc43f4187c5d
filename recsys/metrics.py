"""Ranking and click-prediction metrics.

Ranking metrics are computed from the 1-based rank ``r`` of the single held-out target:
``HR@k = Recall@k = [r <= k]``, ``NDCG@k = [r <= k] / log2(r + 1)``, ``MRR = 1 / r`` and
``MRR@k = [r <= k] / r``. Ranks come from :func:`ranks_from_scores`, which counts the candidates
scored strictly higher than the target, so no sort is needed and ties never depend on item index.

Click metrics: AUC (Mann-Whitney with mid-ranks for ties), GAUC (per-user AUC averaged with the
user's number of impressions as weight, users with only one class skipped) and log loss.

This module imports nothing else from the package.
"""
from __future__ import annotations

import math
import sys
from typing import Iterable, Sequence

import numpy as np
import torch

RANKING_METRICS = ("hr", "recall", "ndcg", "mrr")


def count_true_per_column(mask: torch.Tensor) -> torch.Tensor:
    """mask [V, B] bool -> [B] int64: the number of True values in each column.

    A plain ``mask.sum(0)`` widens every bool to int64 and dominates full-ranking evaluation on CPU.
    When V is a multiple of 255, B a multiple of 8 and ``mask`` contiguous, the bools are read as int64
    words instead (one word = one item for 8 users, a byte per user), words are added up in runs of
    255 items so no byte can overflow into its neighbour, and the bytes are split out at the end.
    """
    V, B = mask.shape
    if not (mask.is_contiguous() and V % 255 == 0 and B % 8 == 0 and mask.device.type == "cpu"
            and sys.byteorder == "little"):
        return mask.sum(0)
    words = mask.view(torch.int64).view(V // 255, 255, B // 8).sum(1)  # [V/255, B/8], byte lanes <= 255
    shifts = torch.arange(0, 64, 8, device=mask.device)  # byte k of a word = user 8j + k
    lanes = (words[:, :, None] >> shifts) & 255  # [V/255, B/8, 8]
    return lanes.sum(0).reshape(B)


def ranks_from_item_scores(
    scores_t: torch.Tensor,
    target_ids: torch.Tensor,
    exclude_index: tuple[torch.Tensor, torch.Tensor] | None = None,
    tie_policy: str = "optimistic",
) -> torch.Tensor:
    """1-based rank of each target among all candidates, from item-major scores.

    scores_t: [V, B] scores (item v, user b); overwritten in place where excluded. target_ids: [B].
    exclude_index: (user columns, items) pairs that may not outrank the target (seen items). The
    target's own score is read first, so a target that was also seen before is still ranked.
    ``tie_policy="optimistic"``: rank = 1 + #(others > target) (DESIGN.md: strict ranks);
    ``"pessimistic"``: rank = 1 + #(others >= target), so a model that scores everything alike is
    ranked last, not first.
    """
    cols = torch.arange(scores_t.shape[1], device=scores_t.device)
    target_scores = scores_t[target_ids, cols]  # [B]
    if exclude_index is not None:
        scores_t[exclude_index[1], exclude_index[0]] = float("-inf")
    if tie_policy == "optimistic":
        return count_true_per_column(scores_t > target_scores) + 1
    if tie_policy == "pessimistic":
        scores_t[target_ids, cols] = float("-inf")  # the target is not one of the "others"
        return count_true_per_column(scores_t >= target_scores) + 1
    raise ValueError(f"tie_policy must be 'optimistic' or 'pessimistic', got {tie_policy!r}")


def ranks_from_scores(
    scores: torch.Tensor,
    target_ids: torch.Tensor,
    exclude_mask: torch.Tensor | None = None,
    tie_policy: str = "optimistic",
) -> torch.Tensor:
    """Ranks from user-major scores [B, V]; ``exclude_mask`` [B, V] True = may not outrank the target.

    Same rules as :func:`ranks_from_item_scores`; ``scores`` is not modified.
    """
    scores_t = scores.T.contiguous().clone()
    exclude = None
    if exclude_mask is not None:
        rows, items = exclude_mask.nonzero(as_tuple=True)
        exclude = (rows, items)
    return ranks_from_item_scores(scores_t, target_ids, exclude, tie_policy)


def metric_names(ks: Sequence[int]) -> list[str]:
    names = []
    for k in ks:
        names += [f"hr@{k}", f"recall@{k}", f"ndcg@{k}", f"mrr@{k}"]
    return names + ["mrr"]


def ranking_metric_sums(ranks: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    """Sums (not means) of each metric over the given ranks, so blocks can be added up."""
    r = ranks.double()
    out: dict[str, float] = {}
    for k in ks:
        hit = (r <= k).double()
        out[f"hr@{k}"] = hit.sum().item()
        out[f"recall@{k}"] = out[f"hr@{k}"]
        out[f"ndcg@{k}"] = (hit / torch.log2(r + 1.0)).sum().item()
        out[f"mrr@{k}"] = (hit / r).sum().item()
    out["mrr"] = (1.0 / r).sum().item()
    return out


def ranking_metrics(ranks: torch.Tensor | np.ndarray | Iterable[int], ks: Sequence[int] = (10,)) -> dict[str, float]:
    """Mean HR@k / Recall@k / NDCG@k / MRR@k / MRR over 1-based ranks."""
    if not isinstance(ranks, torch.Tensor):
        ranks = torch.as_tensor(np.asarray(list(ranks)))
    if ranks.numel() == 0:
        raise ValueError("no ranks given: nothing to evaluate")
    if (ranks < 1).any():
        raise ValueError("ranks are 1-based; got a rank < 1")
    sums = ranking_metric_sums(ranks, ks)
    return {k: v / ranks.numel() for k, v in sums.items()}


# ----------------------------------------------------------------------------- click metrics


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def auc(labels, scores) -> float:
    """Area under the ROC curve; ties in score count one half (mid-ranks)."""
    y = _as_numpy(labels)
    s = _as_numpy(scores)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    n_pos = float((y == 1).sum())
    n_neg = float((y == 0).sum())
    if n_pos + n_neg != y.size:
        raise ValueError("labels must be 0 or 1")
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    # mid-ranks (1-based) for runs of equal scores
    boundaries = np.flatnonzero(np.diff(s_sorted)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [s.size]))
    mid = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1..end
    run_lengths = ends - starts
    ranks = np.empty(s.size)
    ranks[order] = np.repeat(mid, run_lengths)
    rank_sum_pos = ranks[y == 1].sum()
    return float((rank_sum_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(user_ids, labels, scores) -> float:
    """Impression-weighted mean of per-user AUC; users whose labels are all one class are skipped."""
    u = np.asarray(user_ids)
    y = _as_numpy(labels)
    s = _as_numpy(scores)
    order = np.argsort(u, kind="stable")
    u, y, s = u[order], y[order], s[order]
    cuts = np.flatnonzero(u[1:] != u[:-1]) + 1
    total, weight = 0.0, 0.0
    for yu, su in zip(np.split(y, cuts), np.split(s, cuts)):  # loop over users, not interactions
        pos = yu.sum()
        if pos == 0 or pos == yu.size:
            continue
        total += auc(yu, su) * yu.size
        weight += yu.size
    if weight == 0:
        raise ValueError("GAUC: no user has both positive and negative labels")
    return total / weight


def logloss(labels, probabilities, eps: float = 1e-7) -> float:
    y = _as_numpy(labels)
    p = np.clip(_as_numpy(probabilities), eps, 1 - eps)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of a metric over seeds."""
    values = [float(v) for v in values]
    mean = sum(values) / len(values)
    spread = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return mean, spread


def ndcg_discount(rank: int) -> float:
    """1 / log2(rank + 1): the NDCG gain of a single relevant item at a 1-based rank."""
    return 1.0 / math.log2(rank + 1)
