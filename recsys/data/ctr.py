"""Click-prediction samples from an interaction log, with DARE's protocol.

Feng et al., "Long-Sequence Recommendation Models Need Decoupled Embeddings" (2025), evaluate on users
with long logs: for each such user, target positions are taken every ``stride`` events going back from
the end; the last target is the user's test sample, the one before it the validation sample, the rest
train. A target at position t has the history of the ``max_history`` events before it and yields one
positive (the clicked item) and ``negatives`` items sampled by popularity among items the user never
clicked. Histories are not copied: a sample stores (user, t) and batches gather the window from the
jagged log.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .batching import padded_windows
from .prepare import SequenceData
from .readers import DataError


@dataclass
class CTRSamples:
    users: np.ndarray  # [S] internal user ids
    history_ends: np.ndarray  # [S] the target's position t: history = events [t - max_history, t)
    items: np.ndarray  # [S] candidate item
    labels: np.ndarray  # [S] 1 = clicked, 0 = sampled negative

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray) -> "CTRSamples":
        return CTRSamples(self.users[rows], self.history_ends[rows], self.items[rows], self.labels[rows])


@dataclass
class CTRData:
    data: SequenceData
    categories: np.ndarray  # [V] category of each internal item id (0 = none / padding)
    train: CTRSamples
    valid: CTRSamples
    test: CTRSamples
    max_history: int
    log: list[str]


def item_categories(data: SequenceData, raw_item_ids, raw_categories) -> np.ndarray:
    """[V] category index per internal item id (categories remapped to 1..C; 0 = unknown)."""
    cats = np.zeros(data.num_items, dtype=np.int64)
    if raw_item_ids is None:
        return cats
    idx = data.item_index(raw_item_ids)
    _, remapped = np.unique(np.asarray(raw_categories), return_inverse=True)
    cats[idx] = remapped + 1
    return cats


def _sample_negatives(data: SequenceData, users: np.ndarray, per_positive: int, rng: np.random.Generator) -> np.ndarray:
    """Popularity-sampled items that ``users`` never clicked: [len(users), per_positive]."""
    popularity = np.bincount(data.item_ids, minlength=data.num_items).astype(np.float64)
    popularity[0] = 0
    p = popularity / popularity.sum()
    # (user, item) pairs the user clicked, as sorted keys for membership tests
    user_of_event = np.repeat(np.arange(data.num_users), data.lengths)
    clicked = np.unique(user_of_event * data.num_items + data.item_ids)
    if len(np.unique(data.item_ids)) <= 1:
        raise DataError("negative sampling needs more than one item")
    out = rng.choice(data.num_items, size=(len(users), per_positive), p=p)
    for _ in range(100):  # resampling rounds; each round redraws only the collisions
        keys = users[:, None] * data.num_items + out
        pos = np.searchsorted(clicked, keys)
        bad = clicked[np.minimum(pos, len(clicked) - 1)] == keys
        if not bad.any():
            return out
        out[bad] = rng.choice(data.num_items, size=int(bad.sum()), p=p)
    raise DataError("could not sample negatives the users never clicked (catalogue too small?)")


def build_ctr_data(
    data: SequenceData,
    categories: np.ndarray | None = None,
    min_events: int = 210,
    max_history: int = 200,
    stride: int = 5,
    min_history: int = 10,
    negatives: int = 2,
    seed: int = 0,
    verbose: bool = True,
) -> CTRData:
    rng = np.random.default_rng(seed)
    lengths = data.lengths
    eligible = np.flatnonzero(lengths >= min_events)
    log = [f"{len(eligible):,} of {data.num_users:,} users have >= {min_events} events"]
    if len(eligible) == 0:
        raise DataError(f"no user has >= {min_events} events (median {np.median(lengths):.0f}); lower min_events")
    # targets t = n-1, n-1-stride, ... >= min_history, per user; k = 0 is test, k = 1 validation
    per_user = (lengths[eligible] - 1 - min_history) // stride + 1
    users = np.repeat(eligible, per_user)
    k = np.arange(per_user.sum()) - np.repeat(np.cumsum(per_user) - per_user, per_user)
    t = lengths[users] - 1 - stride * k
    positives = data.item_ids[data.seq_offsets[users] + t]
    neg = _sample_negatives(data, users, negatives, rng)  # [P, negatives]

    def samples(mask: np.ndarray) -> CTRSamples:
        n = int(mask.sum())
        return CTRSamples(
            users=np.concatenate([users[mask], np.repeat(users[mask], negatives)]),
            history_ends=np.concatenate([t[mask], np.repeat(t[mask], negatives)]),
            items=np.concatenate([positives[mask], neg[mask].reshape(-1)]),
            labels=np.concatenate([np.ones(n, np.float32), np.zeros(n * negatives, np.float32)]),
        )

    out = CTRData(
        data=data,
        categories=categories if categories is not None else np.zeros(data.num_items, dtype=np.int64),
        train=samples(k >= 2),
        valid=samples(k == 1),
        test=samples(k == 0),
        max_history=max_history,
        log=log,
    )
    log.append(
        f"samples: train {len(out.train):,}, valid {len(out.valid):,}, test {len(out.test):,} "
        f"({negatives} popularity negatives per click)"
    )
    if verbose:
        for line in log:
            print(line)
    return out


def ctr_batch(ctr: CTRData, samples: CTRSamples, rows: np.ndarray) -> dict[str, torch.Tensor]:
    """Tensors for rows of ``samples``: history items / categories [B, L] (left-padded), target item /
    category [B], label [B]."""
    data = ctr.data
    u = samples.users[rows]
    starts = data.seq_offsets[u]
    ends = starts + samples.history_ends[rows]
    width = int(min(ctr.max_history, max(1, samples.history_ends[rows].max())))
    hist = padded_windows(data.item_ids, starts, ends, width)
    items = samples.items[rows]
    return {
        "history": torch.from_numpy(hist),
        "history_categories": torch.from_numpy(ctr.categories[hist] * (hist != 0)),
        "target": torch.from_numpy(items),
        "target_category": torch.from_numpy(ctr.categories[items]),
        "label": torch.from_numpy(samples.labels[rows]),
        "users": torch.from_numpy(u),
    }
