"""Full-ranking evaluation shared by every model.

Users are processed in blocks (sorted by history length, so each block's windows are only as wide as
its longest history): one GEMM [V, D] x [D, b] gives every item's score, the target's score is read, the
padding item and (with ``exclude_seen``) every item of the user's whole history are set to -inf, and the
rank is one plus the number of items scored strictly higher (see
:func:`recsys.metrics.ranks_from_item_scores`). No sort; memory is one reused [V, b] block, with b
shrunk for large catalogues so the block stays under ``max_block_mb``. Under torchrun each rank takes a
share of the users and the metric sums are all-reduced.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data.batching import iter_eval_batches, seen_items_csr
from .data.splits import EvalSet, Split
from . import distributed
from .metrics import metric_names, ranking_metric_sums, ranks_from_item_scores


@dataclass
class EvalConfig:
    ks: tuple[int, ...] = (1, 5, 10, 20)
    exclude_seen: bool = True
    block_size: int = 512  # users per GEMM block (fewer when the catalogue is large, see max_block_mb)
    max_block_mb: int = 512  # bound on one block of scores [items, users]: memory does not grow with the catalogue
    tie_policy: Literal["optimistic", "pessimistic"] = "optimistic"
    early_stopping_metric: str = "ndcg@10"


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
) -> dict:
    """Mean ranking metrics over ``eval_set`` (plus ``num_users`` and ``seconds``).

    normalize: score with cosine (L2-normalised user and item vectors), matching an L2-normalised loss.
    """
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    items = model.item_vectors()  # [V, D]
    if normalize:
        items = F.normalize(items, dim=-1)
    num_items = items.shape[0]
    # item-major scores [V_pad, b]: the layout whose GEMM and counting are fastest on CPU;
    # V_pad a multiple of 255 and b of 8 let metrics.count_true_per_column count by machine words
    padded_items = F.pad(items, (0, 0, 0, (-num_items) % 255))  # [V_pad, D]
    fits = (cfg.max_block_mb * 2**20) // (4 * padded_items.shape[0])  # users whose scores fit the budget
    block = max(8, min(cfg.block_size, fits) // 8 * 8)
    buffer = torch.empty(padded_items.shape[0] * block, device=device)  # [V_pad * block] scores
    sums: dict[str, float] = {}
    all_ranks = []
    # users in order of history length: each block is only as wide as its longest history;
    # under torchrun each rank takes every world-th user of that order and the sums are all-reduced
    n = len(eval_set)
    order = np.argsort(np.minimum(eval_set.history_lengths, max_len), kind="stable")
    if distributed.world_size() > 1:
        if return_ranks:
            raise ValueError("return_ranks is not available under torchrun")
        order = order[distributed.rank() :: distributed.world_size()]
    eval_set = eval_set.reordered(order)
    batches = iter_eval_batches(split, eval_set, max_len, block)
    total = (len(eval_set) + block - 1) // block
    for batch in tqdm(batches, total=total, desc="evaluate", disable=not progress, leave=False):
        users = model.user_vectors(
            batch.item_ids.to(device), batch.timestamps.to(device), batch.target_timestamps.to(device)
        )  # [b, D]
        if normalize:
            users = F.normalize(users, dim=-1)
        b = users.shape[0]
        b_pad = b + (-b) % 8
        # one reused buffer (a fresh [V, b] allocation per block costs page faults); a smaller last
        # block is a contiguous view of its front, so there is never a second [V, b] block in memory
        scores_t = buffer[: padded_items.shape[0] * b_pad].view(padded_items.shape[0], b_pad)
        torch.mm(padded_items, F.pad(users, (0, 0, 0, b_pad - b)).T, out=scores_t)
        scores_t[0] = float("-inf")  # padding id is never a candidate
        scores_t[num_items:] = float("-inf")  # nor are the rows added for alignment
        targets = F.pad(batch.target_ids.to(device), (0, b_pad - b), value=1)
        exclude = None
        if cfg.exclude_seen:
            rows, seen = seen_items_csr(split, eval_set, batch.rows)
            exclude = (rows.to(device), seen.to(device))
        ranks = ranks_from_item_scores(scores_t, targets, exclude_index=exclude, tie_policy=cfg.tie_policy)[:b]
        for name, value in ranking_metric_sums(ranks, cfg.ks).items():
            sums[name] = sums.get(name, 0.0) + value
        if return_ranks:
            all_ranks.append(ranks.cpu())
    names = metric_names(cfg.ks)
    totals = distributed.all_reduce_sum(torch.tensor([sums.get(k, 0.0) for k in names], dtype=torch.float64,
                                                     device=device))
    out = {name: float(total) / n for name, total in zip(names, totals)}
    out["num_users"] = n
    out["seconds"] = time.perf_counter() - start
    if return_ranks:  # back in the caller's order
        ranks = torch.empty(n, dtype=torch.long)
        ranks[torch.from_numpy(order)] = torch.cat(all_ranks)
        out["ranks"] = ranks
    model.train(was_training)
    return out
