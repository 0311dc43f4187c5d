"""Ranking and click-prediction metrics.

A ranking metric is a function of the 1-based rank ``r`` of the single held-out target:
``HR@k = Recall@k = [r <= k]``, ``NDCG@k = [r <= k] / log2(r + 1)``, ``MRR = 1 / r`` and
``MRR@k = [r <= k] / r``. Ranks are counted, never sorted: for each target, ``above`` = how many
candidates score strictly higher and ``ties`` = how many others score exactly the same. How ties
are resolved is the tie policy (:data:`TIE_POLICIES`):

- ``"expected"`` (the default): the metric's expectation when the tied items are put in a uniformly
  random order, i.e. ``r`` uniform over ``above + 1 .. above + ties + 1``; a scorer that gives every item
  the same score gets exactly a random ranking's metrics, never a perfect one;
- ``"optimistic"``: ``r = above + 1`` (ties favour the target: only for comparison with older tools);
- ``"pessimistic"``: ``r = above + ties + 1``.

Scores must be finite: :func:`check_finite` is what the evaluators call before ranking.

Click metrics: AUC (Mann-Whitney with mid-ranks for ties), GAUC (per-user AUC averaged with the
user's number of impressions as weight, users with only one class skipped) and log loss; non-finite
scores are an error there too.

This module imports only recsys.errors from the package.
"""

from __future__ import annotations

import math
import sys
from typing import Iterable, Sequence

import numpy as np
import torch

from .errors import RecsysError

RANKING_METRICS = ("hr", "recall", "ndcg", "mrr")
TIE_POLICIES = ("expected", "optimistic", "pessimistic")


class NonFiniteScoresError(RecsysError, ValueError):
    """Scores (or the vectors they are made from) hold NaN or infinite values."""


def check_finite(values: torch.Tensor, what: str) -> None:
    """Raise :class:`NonFiniteScoresError` naming ``what`` and how many rows hold a NaN or an infinity.
    ``values``: [rows, ...]; a row is one user (or item)."""
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return
    bad_rows = int((~finite.reshape(finite.shape[0], -1)).any(1).sum()) if values.dim() else 1
    raise NonFiniteScoresError(
        f"{what}: {bad_rows:,} of {values.shape[0] if values.dim() else 1:,} rows hold "
        "NaN or infinite values; a model with non-finite outputs cannot be ranked "
        "(did training diverge?)"
    )


def count_true_per_column(mask: torch.Tensor) -> torch.Tensor:
    """mask [V, B] bool -> [B] int64: the number of True values in each column.

    A plain ``mask.sum(0)`` widens every bool to int64 and dominates full-ranking evaluation on CPU.
    When V is a multiple of 255, B a multiple of 8 and ``mask`` contiguous, the bools are read as int64
    words instead (one word = one item for 8 users, a byte per user), words are added up in runs of
    255 items so no byte can overflow into its neighbour, and the bytes are split out at the end.
    """
    V, B = mask.shape
    if not (
        mask.is_contiguous() and V % 255 == 0 and B % 8 == 0 and mask.device.type == "cpu" and sys.byteorder == "little"
    ):
        return mask.sum(0)
    words = mask.view(torch.int64).view(V // 255, 255, B // 8).sum(1)  # [V/255, B/8], byte lanes <= 255
    shifts = torch.arange(0, 64, 8, device=mask.device)  # byte k of a word = user 8j + k
    lanes = (words[:, :, None] >> shifts) & 255  # [V/255, B/8, 8]
    return lanes.sum(0).reshape(B)


def rank_counts_from_item_scores(
    scores_t: torch.Tensor,
    target_ids: torch.Tensor,
    exclude_index: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(above, ties), each [B] int64, from item-major scores.

    scores_t: [V, B] scores (item v, user b); overwritten in place where excluded. target_ids: [B].
    exclude_index: (user columns, items) pairs that may not outrank the target (seen items). The
    target's own score is read first, so a target that was also seen before is still ranked.
    ``above``: other candidates scored strictly higher; ``ties``: other candidates scored exactly the same.
    """
    cols = torch.arange(scores_t.shape[1], device=scores_t.device)
    target_scores = scores_t[target_ids, cols]  # [B]
    if exclude_index is not None:
        scores_t[exclude_index[1], exclude_index[0]] = float("-inf")
    above = count_true_per_column(scores_t > target_scores)
    scores_t[target_ids, cols] = float("-inf")  # the target is not one of the "others"
    ties = count_true_per_column(scores_t == target_scores)
    return above, ties


def ranks_under_policy(
    above: torch.Tensor, ties: torch.Tensor, tie_policy: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(1-based ranks, ties left to average): optimistic -> (above + 1, None), pessimistic ->
    (above + ties + 1, None), expected -> (above + 1, ties), the form :func:`ranking_metric_sums` takes."""
    if tie_policy == "optimistic":
        return above + 1, None
    if tie_policy == "pessimistic":
        return above + ties + 1, None
    if tie_policy == "expected":
        return above + 1, ties
    raise ValueError(f"tie_policy must be one of {TIE_POLICIES}, got {tie_policy!r}")


def ranks_from_item_scores(
    scores_t: torch.Tensor,
    target_ids: torch.Tensor,
    exclude_index: tuple[torch.Tensor, torch.Tensor] | None = None,
    tie_policy: str = "optimistic",
) -> torch.Tensor:
    """1-based integer ranks under the optimistic or pessimistic policy (see
    :func:`rank_counts_from_item_scores`; the expected policy has no single integer rank)."""
    if tie_policy not in ("optimistic", "pessimistic"):
        raise ValueError(f"integer ranks need tie_policy 'optimistic' or 'pessimistic', got {tie_policy!r}")
    return ranks_under_policy(*rank_counts_from_item_scores(scores_t, target_ids, exclude_index), tie_policy)[0]


def ranks_from_scores(
    scores: torch.Tensor,
    target_ids: torch.Tensor,
    exclude_mask: torch.Tensor | None = None,
    tie_policy: str = "optimistic",
) -> torch.Tensor:
    """Ranks from user-major scores [B, V]; ``exclude_mask`` [B, V] True = may not outrank the target.

    Same rules as :func:`ranks_from_item_scores`; ``scores`` is not modified.
    """
    if tie_policy not in ("optimistic", "pessimistic"):
        raise ValueError(f"integer ranks need tie_policy 'optimistic' or 'pessimistic', got {tie_policy!r}")
    return ranks_under_policy(*rank_counts_from_scores(scores, target_ids, exclude_mask), tie_policy)[0]


def rank_counts_from_scores(
    scores: torch.Tensor, target_ids: torch.Tensor, exclude_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(above, ties) from user-major scores [B, V] (:func:`rank_counts_from_item_scores`); ``scores``
    is not modified."""
    scores_t = scores.T.contiguous().clone()
    exclude = None
    if exclude_mask is not None:
        rows, items = exclude_mask.nonzero(as_tuple=True)
        exclude = (rows, items)
    return rank_counts_from_item_scores(scores_t, target_ids, exclude)


def metric_names(ks: Sequence[int]) -> list[str]:
    names = []
    for k in ks:
        names += [f"hr@{k}", f"recall@{k}", f"ndcg@{k}", f"mrr@{k}"]
    return names + ["mrr"]


def _harmonic(n: torch.Tensor) -> torch.Tensor:
    """H(n) = 1 + 1/2 + ... + 1/n (float64; H(0) = 0), through the digamma function."""
    return torch.special.digamma(n.double() + 1.0) + 0.5772156649015329


def ranking_metric_sums(ranks: torch.Tensor, ks: Sequence[int], ties: torch.Tensor | None = None) -> dict[str, float]:
    """Sums (not means) of each metric over the given ranks, so blocks can be added up.

    ``ties`` [B] (the expected policy): the target's rank is uniform over ``ranks .. ranks + ties`` and
    each metric is its exact expectation: with g = ranks - 1 and e = ties,
    HR@k = clip(k - g, 0, e + 1) / (e + 1), NDCG@k = sum_{r=g+1}^{min(k, g+e+1)} 1 / log2(r + 1) / (e + 1),
    MRR = (H(g + e + 1) - H(g)) / (e + 1) with H the harmonic numbers. Without ties (or where e = 0) the
    plain formulas, bit for bit."""
    r = ranks.double()
    out: dict[str, float] = {}
    tied = None
    if ties is not None and bool((ties > 0).any()):
        tied = ties > 0
        e = ties.double()
        low = r - 1.0  # g: items strictly above
        high = low + e + 1.0  # the last rank the target can take
        width = e + 1.0
        k_max = max(ks)
        # D[n] = sum_{r=1}^{n} 1 / log2(r + 1) for n <= k_max: the NDCG@k partial sums
        discounts = torch.cat(
            [
                torch.zeros(1, dtype=torch.float64),
                torch.cumsum(1.0 / torch.log2(torch.arange(2, k_max + 2, dtype=torch.float64)), 0),
            ]
        )
    for k in ks:
        hit = (r <= k).double()
        ndcg = hit / torch.log2(r + 1.0)
        mrr_k = hit / r
        if tied is not None:
            # the ranks counted at this cut-off: low_k + 1 .. top_k (none when g >= k)
            low_k = low.clamp_max(k)
            top_k = torch.maximum(high.clamp_max(k), low_k)
            hit = torch.where(tied, (top_k - low_k) / width, hit)
            low_k, top_k = low_k.long(), top_k.long()
            ndcg = torch.where(tied, (discounts[top_k] - discounts[low_k]) / width, ndcg)
            mrr_k = torch.where(tied, (_harmonic(top_k) - _harmonic(low_k)) / width, mrr_k)
        out[f"hr@{k}"] = hit.sum().item()
        out[f"recall@{k}"] = out[f"hr@{k}"]
        out[f"ndcg@{k}"] = ndcg.sum().item()
        out[f"mrr@{k}"] = mrr_k.sum().item()
    mrr = 1.0 / r
    if tied is not None:
        mrr = torch.where(tied, (_harmonic(high) - _harmonic(low)) / width, mrr)
    out["mrr"] = mrr.sum().item()
    return out


def ranking_metrics(
    ranks: torch.Tensor | np.ndarray | Iterable[int],
    ks: Sequence[int] = (10,),
    ties: torch.Tensor | np.ndarray | Iterable[int] | None = None,
) -> dict[str, float]:
    """Mean HR@k / Recall@k / NDCG@k / MRR@k / MRR over 1-based ranks (with ``ties``: the expectation
    over a random order of the tied items, :func:`ranking_metric_sums`)."""
    if not isinstance(ranks, torch.Tensor):
        ranks = torch.as_tensor(np.asarray(list(ranks)))
    if ranks.numel() == 0:
        raise ValueError("no ranks given: nothing to evaluate")
    if (ranks < 1).any():
        raise ValueError("ranks are 1-based; got a rank < 1")
    if ties is not None:
        ties = ties if isinstance(ties, torch.Tensor) else torch.as_tensor(np.asarray(list(ties)))
        if ties.shape != ranks.shape or bool((ties < 0).any()):
            raise ValueError("ties must be >= 0, one per rank")
    sums = ranking_metric_sums(ranks, ks, ties)
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
    if not np.isfinite(s).all():
        raise NonFiniteScoresError(f"AUC: {int((~np.isfinite(s)).sum()):,} of {s.size:,} scores are NaN or infinite")
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
    if not np.isfinite(s).all():
        raise NonFiniteScoresError(f"GAUC: {int((~np.isfinite(s)).sum()):,} of {s.size:,} scores are NaN or infinite")
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
    if not np.isfinite(_as_numpy(probabilities)).all():
        raise NonFiniteScoresError("log loss: NaN or infinite probabilities")
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
