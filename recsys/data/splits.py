"""Evaluation protocols as named splits.

Every split is expressed with prefixes of each user's chronological sequence, so nothing is copied:
``train_lengths[u]`` events of user u are for training; an :class:`EvalSet` holds, per evaluated user,
the history length ``n`` (history = the first n events) and the target = event n.

- ``leave_one_out`` (default): test target = last event, validation target = second to last,
  training on the rest; at test time the history includes the validation item.
- ``hstu``: no validation; train on all but the last event; test target = the last (HSTU's protocol).
- ``temporal``: two global cut-off times; training uses events before ``valid_cut``; a validation
  target is a user's first event in [valid_cut, test_cut), a test target the first event at or after
  ``test_cut``; histories hold only earlier events, so no future item can leak into them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .prepare import SequenceData
from .readers import DataError

SPLITS = ("leave_one_out", "hstu", "temporal")


@dataclass
class EvalSet:
    users: np.ndarray  # [E] internal user ids
    history_lengths: np.ndarray  # [E] history = first n events of the user
    targets: np.ndarray  # [E] internal item ids

    def __len__(self) -> int:
        return len(self.users)

    def reordered(self, order: np.ndarray) -> "EvalSet":
        return EvalSet(self.users[order], self.history_lengths[order], self.targets[order])


@dataclass
class Split:
    name: str
    data: SequenceData
    train_lengths: np.ndarray  # [U]; 0 for users without training events
    valid: EvalSet | None
    test: EvalSet
    log: list[str]


def _eval_set(data: SequenceData, users: np.ndarray, history_lengths: np.ndarray) -> EvalSet:
    targets = data.item_ids[data.seq_offsets[users] + history_lengths]
    return EvalSet(users=users.astype(np.int64), history_lengths=history_lengths.astype(np.int64), targets=targets)


def make_split(
    data: SequenceData,
    name: str = "leave_one_out",
    valid_cut: float | None = None,
    test_cut: float | None = None,
    verbose: bool = True,
) -> Split:
    """Build the named split. For ``temporal``, cuts are timestamps, or quantiles of all event times
    when given in (0, 1)."""
    lengths = data.lengths
    users = np.arange(data.num_users)
    log: list[str] = []
    if name == "leave_one_out":
        if (lengths < 3).any():
            raise DataError(
                f"leave_one_out needs >= 3 events per user; {(lengths < 3).sum()} users have fewer "
                "(prepare with min_seq_len=3 to drop them)"
            )
        train_lengths = lengths - 2
        valid = _eval_set(data, users, lengths - 2)
        test = _eval_set(data, users, lengths - 1)
    elif name == "hstu":
        if (lengths < 2).any():
            raise DataError(f"hstu split needs >= 2 events per user; {(lengths < 2).sum()} users have fewer")
        train_lengths = lengths - 1
        valid = None
        test = _eval_set(data, users, lengths - 1)
    elif name == "temporal":
        if valid_cut is None or test_cut is None:
            raise DataError("temporal split needs data.valid_cut and data.test_cut")
        if not data.has_timestamps:
            raise DataError("temporal split needs timestamps; this dataset has none")
        ts = data.timestamps
        cuts = [float(np.quantile(ts, c)) if 0 < c < 1 else float(c) for c in (valid_cut, test_cut)]
        valid_t, test_t = cuts
        if valid_t > test_t:
            raise DataError(f"temporal split: valid_cut ({valid_t}) must not be after test_cut ({test_t})")
        # per user: number of events strictly before each cut (sequences are time-sorted)
        user_of_event = np.repeat(users, lengths)
        before_valid = np.bincount(user_of_event, weights=ts < valid_t, minlength=data.num_users).astype(np.int64)
        before_test = np.bincount(user_of_event, weights=ts < test_t, minlength=data.num_users).astype(np.int64)
        train_lengths = before_valid
        # validation: first event in [valid_cut, test_cut) with a non-empty history
        has_valid = (before_valid < before_test) & (before_valid > 0)
        valid = _eval_set(data, users[has_valid], before_valid[has_valid])
        has_test = (before_test < lengths) & (before_test > 0)
        test = _eval_set(data, users[has_test], before_test[has_test])
        if not train_lengths.any():
            raise DataError(
                f"temporal split: no event before valid_cut (t={valid_t:.0f}; the log spans "
                f"{ts.min()}..{ts.max()}): nothing to train on"
            )
        if len(test) == 0:
            raise DataError(
                f"temporal split: no user has events both before and after test_cut (t={test_t:.0f}; "
                f"the log spans {ts.min()}..{ts.max()}): nothing to test"
            )
        cold = int(((before_test < lengths) & (before_test == 0)).sum())
        log.append(
            f"temporal split at t={valid_t:.0f} / {test_t:.0f}: {len(valid):,} validation users, "
            f"{len(test):,} test users; {cold:,} users whose first event is after the test cut are not evaluated"
        )
    else:
        raise DataError(f"unknown split {name!r}; allowed: {list(SPLITS)}")
    if verbose:
        for line in log:
            print(line)
    return Split(name=name, data=data, train_lengths=train_lengths, valid=valid, test=test, log=log)


def hold_out_items(
    data: SequenceData, fraction: float, seed: int = 0, keep_last: bool = True, min_events: int = 3
) -> tuple[SequenceData, np.ndarray, list[str]]:
    """Cold-start protocol: a random ``fraction`` of the catalogue never appears in training.

    Every event of a held-out item is removed, except (``keep_last``) each user's last event, which is
    the leave-one-out test target: so test targets include items that no training sequence, history
    or validation target contains, and only a model that reads item content can rank them. Users left
    with fewer than ``min_events`` events are dropped (counted in the log). Item ids are unchanged (the
    held-out items keep their rows in every item table). Returns (data, held-out ids, log lines).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.cold_item_fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    num_real = data.num_items - 1
    cold = np.sort(rng.choice(np.arange(1, data.num_items), size=max(1, round(fraction * num_real)), replace=False))
    item_ids = np.asarray(data.item_ids)
    offsets = np.asarray(data.seq_offsets)
    lengths = np.diff(offsets)
    is_cold = np.zeros(data.num_items, dtype=bool)
    is_cold[cold] = True
    keep = ~is_cold[item_ids]  # [total]
    if keep_last:
        keep[offsets[1:][lengths > 0] - 1] = True
    user_of_event = np.repeat(np.arange(data.num_users), lengths)
    new_lengths = np.bincount(user_of_event[keep], minlength=data.num_users)
    users_kept = new_lengths >= min_events
    keep &= users_kept[user_of_event]
    users = np.flatnonzero(users_kept)
    new_offsets = np.concatenate([[0], np.cumsum(new_lengths[users])]).astype(np.int64)
    out = SequenceData(
        item_ids=item_ids[keep],
        timestamps=np.asarray(data.timestamps)[keep],
        seq_offsets=new_offsets,
        user_raw_ids=np.asarray(data.user_raw_ids)[users],
        item_raw_ids=data.item_raw_ids,
        has_timestamps=data.has_timestamps,
        log=list(data.log),
    )
    last_targets = out.item_ids[new_offsets[1:] - 1]
    log = [
        f"cold start: {len(cold):,} of {num_real:,} items held out (seed {seed}); "
        f"{int(keep.size - keep.sum()):,} of {keep.size:,} events removed, {int((~users_kept).sum()):,} users "
        f"left with < {min_events} events dropped; {int(is_cold[last_targets].sum()):,} of {out.num_users:,} "
        "test targets are held-out items"
    ]
    return out, cold, log
