import numpy as np
import polars as pl

from recsys.data.ctr import build_ctr_data, ctr_batch
from recsys.data.prepare import prepare_sequences
from recsys.data.readers import frame_to_interactions


def _seq(lengths, n_items=50, seed=0):
    rng = np.random.default_rng(seed)
    rows = [(u, int(rng.integers(1, n_items + 1)), t) for u, n in enumerate(lengths) for t in range(n)]
    df = pl.DataFrame({"u": [r[0] for r in rows], "i": [r[1] for r in rows], "t": [r[2] for r in rows]})
    return prepare_sequences(
        frame_to_interactions(df, {"user_id": "u", "item_id": "i", "timestamp": "t"}), verbose=False
    )


def test_protocol_targets_splits_and_negatives():
    seq = _seq([40, 12, 31])
    ctr = build_ctr_data(seq, None, min_events=30, max_history=8, stride=5, min_history=4, negatives=2, verbose=False)
    # users 0 and 2 qualify; user 0 targets t = 39, 34, ..., 4 (8 targets); user 2: 30, 25, ..., 5 (6)
    positives = ctr.test.labels == 1
    assert sorted(ctr.test.history_ends[positives].tolist()) == [30, 39]
    assert sorted(ctr.valid.history_ends[ctr.valid.labels == 1].tolist()) == [25, 34]
    assert (ctr.train.labels == 1).sum() == (8 - 2) + (6 - 2)
    for samples in (ctr.train, ctr.valid, ctr.test):
        assert (samples.labels == 0).sum() == 2 * (samples.labels == 1).sum()
        # a negative is never an item its user clicked, anywhere in the log
        for u, item, label in zip(samples.users, samples.items, samples.labels):
            if label == 0:
                assert item not in set(seq.sequence(u).tolist())
        # a positive is the item at the target position
        for u, t, item, label in zip(samples.users, samples.history_ends, samples.items, samples.labels):
            if label == 1:
                assert seq.sequence(u)[t] == item


def test_batches_hold_only_earlier_events():
    seq = _seq([40, 35], n_items=200)
    ctr = build_ctr_data(seq, None, min_events=30, max_history=8, stride=5, min_history=4, verbose=False)
    batch = ctr_batch(ctr, ctr.test, np.arange(len(ctr.test)))
    for row in range(len(ctr.test)):
        u, t = int(ctr.test.users[row]), int(ctr.test.history_ends[row])
        assert batch["history"][row].tolist() == seq.sequence(u)[t - 8 : t].tolist()
