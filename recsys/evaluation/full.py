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

A model with a learned repeat bias (:mod:`recsys.models.layers.repeat`) has it added to the scores of
the items in each user's input window, the target's included, before anything is ranked (through the
GEMM path: the ranking kernel and the popular-items pass compare plain dot products).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import distributed
from ..config import ConfigError, EvalConfig
from ..data.batching import iter_eval_batches, seen_items_csr, window_history_pairs
from ..data.splits import EvalSet, Split
from ..kernels import cpu_ranking, onednn
from ..metrics import (
    NonFiniteScoresError,
    metric_names,
    ranking_metric_sums,
    ranks_under_policy,
)
from .ranks import cutoff_ranks, exact_rank_counts, item_counts, popular_first, sampled_ranks


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
    bias = getattr(model, "repeat_bias", None)
    repeat_bias = None if bias is None else float(bias.detach())  # in the units of the scores ranked
    if repeat_bias is not None and sampled:
        raise ConfigError(
            f"{label}: eval.sampled_negatives with model.repeat_bias: a model with a repeat score is ranked "
            "against the whole catalogue only (eval.sampled_negatives = 0)"
        )
    ranker = None if sampled or repeat_bias is not None else item_ranker(padded_items, num_items)
    block = block_users(cfg, padded_items.shape[0], ranker is not None)
    cutoff = cfg.ranks == "cutoff"
    if cutoff and return_ranks:
        raise ValueError("return_ranks needs every exact rank: use eval.ranks='all'")
    # the popular-items pass pays off when it scores a small share of the catalogue (Beauty: 2,040 of
    # 54,542 items); from a quarter on (ML-1M) ranking every user exactly was as fast, same @k metrics
    prefilter = cutoff and not sampled and repeat_bias is None and 4 * min(cfg.popular_items, num_items - 1) < num_items
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
            offset = None
            if repeat_bias is not None:  # each user's window items, by user column
                columns, window_items = window_history_pairs(batch.item_ids)
                offset = (columns.to(device), window_items.to(device), repeat_bias)
            above, ties = exact_rank_counts(
                padded_items, users, targets, num_items, exclude, out=scores_t, ranker=ranker, score_offset=offset
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
