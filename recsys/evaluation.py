"""Full-ranking evaluation shared by every model.

Users are processed in blocks (sorted by history length, so each block's windows are only as wide as
its longest history): one GEMM [V, D] x [D, b] gives every item's score, the target's score is read, the
padding item and (with ``exclude_seen``) every item of the user's whole history are set to -inf, and the
rank is one plus the number of items scored strictly higher (see
:func:`recsys.metrics.ranks_from_item_scores`). No sort; memory is one reused [V, b] block, with b
shrunk for large catalogues so the block stays under ``max_block_mb`` (on CPU the ranking kernel
computes the same counts in cache-sized tiles, with no [V, b] block at all: :func:`block_users`).
Under torchrun each rank takes a share of the users and the metric sums are all-reduced.

``ranks="cutoff"`` gives the same cut-off metrics (HR/NDCG/MRR@k for every k in ``ks``) several
times faster: a user is first scored against the catalogue's most frequent items only, and one with
max(ks) of them above its target has rank > max(ks), where every cut-off metric is 0. Only the other
users (those whose rank may be <= max(ks): 1.6-8.7% of Beauty's test users in our runs) are ranked
against the whole catalogue, as in the default ``ranks="all"``. When the popular items would be a
quarter of the catalogue or more, every user is ranked exactly instead (faster there). The uncut MRR
needs every user's exact rank and is therefore not reported in this mode (see :func:`cutoff_ranks`).

Ties: the evaluator counts, per user, the items strictly above the target and those tied with it;
``eval.tie_policy`` turns the two counts into metrics (:mod:`recsys.metrics`; by default the expectation
over a random order of the tied items, so a constant scorer scores like a random one). Scores must be
finite: NaN or infinite user or item vectors, or vectors whose products could overflow, are an error
that names the evaluation and the number of users affected.

Repeat targets: with ``exclude_seen`` every item of the user's history is removed from the candidates.
When the target itself is one of them, keeping it (``repeat_targets = "keep"``) while removing the rest
tells the model which history item is the answer; the default ``"exclude"`` removes it too (the user
is a miss, as in RecBole), ``"apart"`` ranks those users against every item, history included, and
reports them separately. How many targets repeat a history item is always reported, and under
``"exclude"`` the metrics with those targets kept as well, where they differ.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import distributed
from .config import EvalConfig
from .data.batching import iter_eval_batches, seen_items_csr
from .data.readers import DataError
from .data.splits import EvalSet, Split
from .kernels import cpu_ranking, onednn
from .metrics import (
    NonFiniteScoresError,
    count_true_per_column,
    metric_names,
    rank_counts_from_item_scores,
    ranking_metric_sums,
    ranks_under_policy,
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every user's exact (above, ties) counts. With ``ranker`` (the CPU kernel, see :func:`item_ranker`)
    scores are made and counted in cache-sized tiles, each score independent of its block. Otherwise:
    one GEMM [V_pad, D] x [D, B] (torch's, into ``out`` when given; else a fresh output from oneDNN,
    which falls back to torch's product where it is not usable), the padding item and the alignment
    rows set to -inf, then :func:`recsys.metrics.rank_counts_from_item_scores`.

    ``eval.ranks`` "all" and "cutoff" give identical @k metrics only if an (item, user) score does not
    depend on the block it was computed in: B is kept >= 16 (callers pad), as torch's (MKL's) product
    of 8 columns rounded differently here; from 16 columns on both products gave the same bits (test)."""
    if ranker is not None:
        return ranker.counts(users, target_ids, exclude_index)
    scores_t = onednn.mm(items, users.T) if out is None else torch.mm(items, users.T, out=out)  # [V_pad, B]
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


def item_ranker(items: torch.Tensor, num_items: int) -> cpu_ranking.ItemRanker | None:
    """The CPU ranking kernel for fp32 item vectors on CPU where it is built (None elsewhere: the GEMM
    path). On ML-1M's 2,999 test users x 3,706 items it replaces a [V, 512] product per block, the
    -inf writes for seen items and a comparison pass over the block by one pass in cache."""
    return cpu_ranking.ItemRanker(items, num_items) if ranks_in_kernel(items) else None


def ranks_in_kernel(items: torch.Tensor) -> bool:
    """Whether evaluation against these item vectors ranks through the CPU kernel (:func:`item_ranker`)."""
    return items.device.type == "cpu" and items.dtype == torch.float32 and cpu_ranking.available()


def block_users(cfg: EvalConfig, padded_items: int, ranked_in_kernel: bool) -> int:
    """Users per evaluation block: ``cfg.block_size``, fewer where their [items, users] scores would pass
    ``cfg.max_block_mb``; not with the CPU ranking kernel (``ranked_in_kernel``), which holds no such
    block (tiles of 6 users x 1,024 items in cache). There a block shares each pass over the item
    table among more users: at 10^6 items, 128 users per block read the 256 MB table 11 times per
    block, 512 users 11 times per 4 blocks."""
    if ranked_in_kernel:
        return max(8, cfg.block_size // 8 * 8)
    fits = (cfg.max_block_mb * 2**20) // (4 * padded_items)  # users whose scores fit the budget
    return max(8, min(cfg.block_size, fits) // 8 * 8)


def user_vectors(model, batch, device: str | torch.device, max_tokens: int) -> torch.Tensor:
    """[b, D]: ``model.user_vectors`` of an evaluation batch, at most ``max_tokens`` positions per call."""
    rows = max(1, max_tokens // max(batch.item_ids.shape[1], 1))
    if torch.device(device).type == "cpu" and getattr(model, "fused_inference", lambda: False)():
        rows = batch.item_ids.shape[0]  # a fused kernel holds one history's intermediates at a time
    parts = [
        model.user_vectors(
            *(t[start : start + rows].to(device) for t in (batch.item_ids, batch.timestamps, batch.target_timestamps))
        )
        for start in range(0, batch.item_ids.shape[0], rows)
    ]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def repeat_target_rows(seen: tuple[torch.Tensor, torch.Tensor], target_ids: torch.Tensor) -> torch.Tensor:
    """[b] bool: whether each user's target is one of its history items (``seen``: (row, item) pairs)."""
    rows, items = seen
    repeats = torch.zeros(len(target_ids), dtype=torch.bool)
    repeats[rows[items == target_ids[rows]]] = True
    return repeats


def _check_scores_finite(items: torch.Tensor, label: str, num_users: int) -> float:
    """Raise unless every real item vector (rows 1..) is finite; returns the largest item norm."""
    real = items[1:]
    if not bool(torch.isfinite(real).all()):
        bad = int((~torch.isfinite(real)).any(1).sum())
        raise NonFiniteScoresError(
            f"{label}: {bad:,} of {real.shape[0]:,} item vectors hold NaN or infinite values, "
            f"so all {num_users:,} users' scores are non-finite (did training diverge?)"
        )
    return float(real.norm(dim=1).max()) if real.numel() else 0.0


# |score| <= |u| |w| (Cauchy-Schwarz): below this product a fp32 score cannot overflow, whatever its rounding
SCORE_BOUND = 1e37


@torch.no_grad()
def evaluate(
    model,
    split: Split,
    eval_set: EvalSet,
    max_len: int,
    cfg: EvalConfig = EvalConfig(),
    normalize: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = False,
    return_ranks: bool = False,
    label: str = "evaluation",
) -> dict:
    """Mean ranking metrics over ``eval_set`` (plus ``num_users``, ``seconds`` and ``repeat_targets``).

    normalize: score with cosine (L2-normalised user and item vectors), matching an L2-normalised loss.
    label: names the run and split in errors. return_ranks: adds ``ranks`` (above + 1) and ``ties`` [n]
    in ``eval_set``'s order. Raises :class:`recsys.metrics.NonFiniteScoresError` where scores would be
    NaN or infinite.
    """
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    items = model.item_vectors()  # [V, D]
    if normalize:
        items = F.normalize(items, dim=-1)
    num_items = items.shape[0]
    n = len(eval_set)
    max_item_norm = _check_scores_finite(items, label, n)
    # item-major scores [V_pad, b]: the layout whose GEMM and counting are fastest on CPU;
    # V_pad a multiple of 255 and b of 8 let metrics.count_true_per_column count by machine words
    padded_items = F.pad(items, (0, 0, 0, (-num_items) % 255))  # [V_pad, D]
    sampled = cfg.sampled_negatives > 0
    ranker = None if sampled else item_ranker(padded_items, num_items)
    block = block_users(cfg, padded_items.shape[0], ranker is not None)
    cutoff = cfg.ranks == "cutoff"
    if cutoff and return_ranks:
        raise ValueError("return_ranks needs every exact rank: use eval.ranks='all'")
    # the popular-items pass pays off when it scores a small share of the catalogue (Beauty: 2,040 of
    # 54,542 items); from a quarter on (ML-1M) ranking every user exactly was as fast, same @k metrics
    prefilter = cutoff and not sampled and 4 * min(cfg.popular_items, num_items - 1) < num_items
    cdf = None
    items_cpu = items.cpu() if sampled else None  # sampled metrics are scored on the CPU
    if sampled and cfg.negative_sampling == "popularity":  # by each item's count in the whole log
        cdf = torch.from_numpy(np.cumsum(item_counts(split, num_items)[1:]).astype(np.float64))
    if prefilter:
        popular_ids = popular_first(split, num_items, cfg.popular_items).to(device)  # [P]
    elif not sampled:
        # oneDNN's fp32 products where a block's scores fit onednn.MAX_OUTPUT_BYTES, otherwise torch's
        # product into one reused buffer. The blocks stay as they are: a block's users go through the
        # encoder together, and other batches would change the user vectors' rounding ("all" vs "cutoff")
        columns = max(block, 16)  # a block's padded width (exact_rank_counts)
        dnn = onednn.usable(padded_items, padded_items.shape[0] * columns)
        if not dnn and ranker is None:
            buffer = torch.empty(padded_items.shape[0] * columns, device=device)  # [V_pad * columns] scores
    fully_ranked = 0
    nonfinite_users = 0
    repeats_policy = cfg.repeat_targets if cfg.exclude_seen else "keep"  # nothing is excluded otherwise
    sums_new: dict[str, float] = {}  # users whose target is not in their history
    sums_repeat: dict[str, float] = {}  # users whose target repeats a history item
    num_repeat = 0
    all_above, all_ties = [], []
    # users in order of history length: each block is only as wide as its longest history;
    # under torchrun each rank takes every world-th user of that order and the sums are all-reduced
    order = np.argsort(np.minimum(eval_set.history_lengths, max_len), kind="stable")
    if distributed.world_size() > 1:
        if return_ranks:
            raise ValueError("return_ranks is not available under torchrun")
        order = order[distributed.rank() :: distributed.world_size()]
    eval_set = eval_set.reordered(order)
    batches = iter_eval_batches(split, eval_set, max_len, block)
    total = (len(eval_set) + block - 1) // block
    for batch in tqdm(batches, total=total, desc="evaluate", disable=not progress, leave=False):
        users = user_vectors(model, batch, device, cfg.encoder_tokens)  # [b, D]
        if normalize:
            users = F.normalize(users, dim=-1)
        b = users.shape[0]
        user_norms = users.norm(dim=1)  # NaN / inf for a non-finite vector
        bad = ~torch.isfinite(user_norms) | (user_norms * max_item_norm > SCORE_BOUND)
        if bool(bad.any()):  # counted over every block, then reported at once
            nonfinite_users += int(bad.sum())
            continue
        b_pad = max(16, b + (-b) % 8)  # >= 16 columns: see exact_rank_counts
        users = F.pad(users, (0, 0, 0, b_pad - b))  # [b_pad, D]
        targets = F.pad(batch.target_ids.to(device), (0, b_pad - b), value=1)
        seen = exclude = None
        repeat = torch.zeros(b, dtype=torch.bool)
        if cfg.exclude_seen:
            seen = seen_items_csr(split, eval_set, batch.rows)  # (rows, items) on the CPU
            repeat = repeat_target_rows(seen, batch.target_ids.cpu())
            if repeats_policy == "apart" and bool(repeat.any()):  # their history stays among the candidates
                keep = ~repeat[seen[0]]
                seen = (seen[0][keep], seen[1][keep])
            exclude = tuple(t.to(device) for t in seen)
        if sampled:
            user_ids = torch.from_numpy(np.asarray(eval_set.users[batch.rows], dtype=np.int64))
            above, ties = sampled_ranks(
                items_cpu,
                users[:b].cpu(),
                batch.target_ids.cpu(),
                user_ids,
                seen,
                cfg.sampled_negatives,
                cdf,
                cfg.negative_seed,
            )
            fully_ranked += b
        elif prefilter:
            above, ties, block_fully_ranked = cutoff_ranks(
                padded_items,
                popular_ids,
                users,
                targets,
                num_items,
                max(cfg.ks),
                exclude,
                max_item_norm,
                b,
                ranker=ranker,
            )
            fully_ranked += block_fully_ranked
        else:
            fully_ranked += b
            # one reused buffer (a fresh [V, b] allocation per block costs page faults); a smaller last
            # block is a contiguous view of its front, so there is never a second [V, b] block in memory
            scores_t = None
            if ranker is None and not dnn:
                scores_t = buffer[: padded_items.shape[0] * b_pad].view(padded_items.shape[0], b_pad)
            above, ties = exact_rank_counts(
                padded_items, users, targets, num_items, exclude, out=scores_t, ranker=ranker
            )
        above, ties = above[:b].cpu(), ties[:b].cpu()
        ranks, tied = ranks_under_policy(above, ties, cfg.tie_policy)
        num_repeat += int(repeat.sum())
        for mask, sums in ((~repeat, sums_new), (repeat, sums_repeat)):
            if bool(mask.any()):
                part = ranking_metric_sums(ranks[mask], cfg.ks, None if tied is None else tied[mask])
                for name, value in part.items():
                    sums[name] = sums.get(name, 0.0) + value
        if return_ranks:
            all_above.append(above)
            all_ties.append(ties)
    names = metric_names(cfg.ks)
    if cutoff:
        names.remove("mrr")  # needs every exact rank
    totals = distributed.all_reduce_sum(
        torch.tensor(
            [sums_new.get(k, 0.0) for k in names]
            + [sums_repeat.get(k, 0.0) for k in names]
            + [num_repeat, nonfinite_users, fully_ranked],
            dtype=torch.float64,
            device=device,
        )
    )
    new_totals, repeat_totals = totals[: len(names)], totals[len(names) : 2 * len(names)]
    num_repeat, nonfinite_users, fully_ranked = (int(x) for x in totals[2 * len(names) :])
    if nonfinite_users:
        raise NonFiniteScoresError(
            f"{label}: {nonfinite_users:,} of {n:,} users have NaN or infinite user vectors (or vectors so large "
            "that their scores overflow); a model with non-finite outputs cannot be ranked (did training diverge?)"
        )
    kept = {name: float(a + r) / n for name, a, r in zip(names, new_totals, repeat_totals)}
    if repeats_policy == "keep":
        out = dict(kept)
    elif repeats_policy == "exclude":  # an excluded target is a miss: 0 for every metric
        out = {name: float(a) / n for name, a in zip(names, new_totals)}
    else:  # apart: the headline over the users whose target is new
        out = {name: float(a) / max(n - num_repeat, 1) for name, a in zip(names, new_totals)}
    out["num_users"] = n - num_repeat if repeats_policy == "apart" else n
    out["seconds"] = time.perf_counter() - start
    out["tie_policy"] = cfg.tie_policy
    if cfg.exclude_seen:
        repeat_info: dict = {"users": num_repeat, "policy": repeats_policy}
        if num_repeat and repeats_policy == "exclude":
            repeat_info["metrics_if_kept"] = kept
        if num_repeat and repeats_policy == "apart":  # ranked against every item, history included
            repeat_info["metrics"] = {name: float(r) / num_repeat for name, r in zip(names, repeat_totals)}
        out["repeat_targets"] = repeat_info
    if cutoff and not sampled:  # users ranked against the whole catalogue
        out["fully_ranked_users"] = fully_ranked
    if sampled:
        out["protocol"] = (
            f"sampled metrics (legacy): each target ranked against {cfg.sampled_negatives} "
            f"{cfg.negative_sampling}-sampled {'unseen ' if cfg.exclude_seen else ''}items, "
            "not the whole catalogue"
        )
    if return_ranks:  # back in the caller's order
        position = torch.from_numpy(order)
        out["ranks"] = torch.empty(n, dtype=torch.long)
        out["ranks"][position] = torch.cat(all_above) + 1
        out["ties"] = torch.empty(n, dtype=torch.long)
        out["ties"][position] = torch.cat(all_ties)
    model.train(was_training)
    return out
