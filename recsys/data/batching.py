"""Batches from jagged sequences.

Sequences stay jagged (values + offsets) in memory; a batch gathers, per user, the window of the
last ``max_len`` events before a given end into a left-padded [B, max_len] tensor (0 = padding).
One window per user and batch: no prefix of any sequence is ever materialised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from .splits import EvalSet, Split


def padded_windows(values: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """values[max(start, end - width):end] per row, left-padded with 0 to ``width``. [B, width]."""
    idx = ends[:, None] - width + np.arange(width)[None, :]  # [B, width]
    valid = idx >= starts[:, None]
    out = values[np.clip(idx, 0, max(len(values) - 1, 0))]
    out[~valid] = 0
    return out


@dataclass
class TrainBatch:
    item_ids: torch.Tensor  # [B, L] inputs, left-padded; L <= max_len (the batch's longest window)
    timestamps: torch.Tensor  # [B, L]
    target_ids: torch.Tensor  # [B, L] next item at each position, 0 where no target
    target_timestamps: torch.Tensor  # [B, L] time of the next item (HSTU's query time)
    users: torch.Tensor  # [B]
    window_ids: torch.Tensor  # [B, L + 1] the unshifted window (for cloze training)


@dataclass
class EvalBatch:
    item_ids: torch.Tensor  # [B, L] history, left-padded; the last column is the latest event
    timestamps: torch.Tensor  # [B, L]
    target_ids: torch.Tensor  # [B]
    target_timestamps: torch.Tensor  # [B] (the request time)
    users: torch.Tensor  # [B]
    rows: slice  # which rows of the EvalSet this batch holds


def train_users(split: Split) -> np.ndarray:
    """Users with at least one (input, target) pair in training."""
    return np.flatnonzero(split.train_lengths >= 2)


def iter_train_batches(
    split: Split,
    max_len: int,
    batch_size: int,
    generator: torch.Generator,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[TrainBatch]:
    """Shuffled training batches: per user the last ``max_len + 1`` training events, shifted by one.

    With ``world_size > 1`` (torchrun) every rank draws the same permutation and takes its own equal
    share of it (the remainder of users is left out of that epoch), so all ranks run the same number
    of steps."""
    data = split.data
    users = train_users(split)
    order = users[torch.randperm(len(users), generator=generator).numpy()]
    if world_size > 1:
        per_rank = len(order) // world_size
        order = order[rank * per_rank : (rank + 1) * per_rank]
    starts_all = data.seq_offsets[:-1]
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for b in range(0, stop, batch_size):
        u = order[b : b + batch_size]
        starts = starts_all[u]
        ends = starts + split.train_lengths[u]
        # as wide as the longest window in the batch: leading all-padding columns are never built
        width = int(min(max_len + 1, split.train_lengths[u].max()))
        items = padded_windows(data.item_ids, starts, ends, width)
        times = padded_windows(data.timestamps, starts, ends, width)
        inputs, targets = items[:, :-1], items[:, 1:].copy()
        targets[inputs == 0] = 0
        yield TrainBatch(
            item_ids=torch.from_numpy(inputs),
            timestamps=torch.from_numpy(times[:, :-1]),
            target_ids=torch.from_numpy(targets),
            target_timestamps=torch.from_numpy(times[:, 1:]),
            users=torch.from_numpy(u),
            window_ids=torch.from_numpy(items),
        )


def cloze_inputs(
    window_ids: torch.Tensor, max_len: int, mask_token: int, mask_prob: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked-item (cloze) inputs and targets from the last ``max_len`` items of each window.

    Each real item becomes ``mask_token`` with probability ``mask_prob``; a row with no mask gets its
    most recent item masked. Targets hold the original item at masked positions and 0 elsewhere.
    """
    items = window_ids[:, -max_len:]  # [B, L]
    real = items != 0
    masked = (torch.rand(items.shape, generator=generator) < mask_prob) & real
    none = ~masked.any(1)
    masked[none, -1] = real[none, -1]  # left padding: the last column is the most recent item
    inputs = torch.where(masked, torch.full_like(items, mask_token), items)
    targets = torch.where(masked, items, torch.zeros_like(items))
    return inputs, targets


def iter_eval_batches(split: Split, eval_set: EvalSet, max_len: int, batch_size: int) -> Iterator[EvalBatch]:
    data = split.data
    for b in range(0, len(eval_set), batch_size):
        rows = slice(b, min(b + batch_size, len(eval_set)))
        u = eval_set.users[rows]
        starts = data.seq_offsets[u]
        ends = starts + eval_set.history_lengths[rows]
        width = int(max(1, min(max_len, eval_set.history_lengths[rows].max())))
        yield EvalBatch(
            item_ids=torch.from_numpy(padded_windows(data.item_ids, starts, ends, width)),
            timestamps=torch.from_numpy(padded_windows(data.timestamps, starts, ends, width)),
            target_ids=torch.from_numpy(eval_set.targets[rows]),
            target_timestamps=torch.from_numpy(data.timestamps[ends]),
            users=torch.from_numpy(u),
            rows=rows,
        )


def jagged_take(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """values[starts[i] : starts[i] + lengths[i]] for every i, back to back (one gather, no loop)."""
    lengths = np.asarray(lengths)
    pos = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.asarray(values)[np.repeat(np.asarray(starts), lengths) + pos]


def seen_items_csr(split: Split, eval_set: EvalSet, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """Every item in each history of ``rows`` (whole history, not only the window), as (row, item) pairs."""
    data = split.data
    u = eval_set.users[rows]
    lengths = eval_set.history_lengths[rows]
    row_of = np.repeat(np.arange(len(u)), lengths)
    return torch.from_numpy(row_of), torch.from_numpy(jagged_take(data.item_ids, data.seq_offsets[u], lengths))


# -- the items each window (or each position of it) has read: a model's repeat bias scores them apart
def window_history_pairs(item_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, items) [K] each: every row's distinct item ids (ids <= 0, padding, skipped), each once.

    item_ids: [B, L] windows; rows index B."""
    first = _first_occurrences(item_ids)  # [B, L]
    rows, columns = first.nonzero(as_tuple=True)
    return rows, item_ids[rows, columns]


def prefix_history_pairs(item_ids: torch.Tensor, scored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, items) [K] each, for next-item training: for every scored position (t, in ``scored``'s
    row-major order, the order of ``hidden[scored]``) the distinct items of ``item_ids[b, : t + 1]``, each
    once. Rows come out in increasing order.

    item_ids: [B, L] inputs (ids <= 0 skipped); scored: [B, L] bool, the positions with a target."""
    B, L = item_ids.shape
    first = _first_occurrences(item_ids)  # [B, L]
    seen_by = torch.ones(L, L, dtype=torch.bool, device=item_ids.device).tril()  # [t, j]: j <= t
    pairs = scored[:, :, None] & seen_by[None] & first[:, None, :]  # [B, t, j]
    b, t, j = pairs.nonzero(as_tuple=True)  # lexicographic: rows non-decreasing
    row_of = torch.cumsum(scored.reshape(-1), 0) - 1  # [B * L]: the row of each scored position
    return row_of[b * L + t], item_ids[b, j]


def _first_occurrences(item_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: a real item (id > 0) at its first position in its row."""
    L = item_ids.shape[1]
    same = item_ids[:, :, None] == item_ids[:, None, :]  # [B, j, k]
    earlier = torch.ones(L, L, dtype=torch.bool, device=item_ids.device).tril(-1)  # [j, k]: k < j
    return (item_ids > 0) & ~(same & earlier).any(-1)
