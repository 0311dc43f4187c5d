import numpy as np
import polars as pl
import pytest
import torch

from recsys.data.batching import iter_eval_batches, iter_train_batches, padded_windows, seen_items_csr
from recsys.data.prepare import prepare_sequences
from recsys.data.readers import DataError, frame_to_interactions
from recsys.data.splits import make_split


def _data(seqs: dict[int, list[int]], times: dict[int, list[int]] | None = None):
    rows = [(u, i, (times[u][k] if times else k)) for u, items in seqs.items() for k, i in enumerate(items)]
    df = pl.DataFrame({"u": [r[0] for r in rows], "i": [r[1] for r in rows], "t": [r[2] for r in rows]})
    return prepare_sequences(
        frame_to_interactions(df, {"user_id": "u", "item_id": "i", "timestamp": "t"}), verbose=False
    )


def test_padded_windows():
    values = np.array([1, 2, 3, 4, 5, 6])
    out = padded_windows(values, np.array([0, 4]), np.array([4, 6]), 3)
    assert out.tolist() == [[2, 3, 4], [0, 5, 6]]


def test_leave_one_out():
    seq = _data({1: [10, 11, 12, 13], 2: [20, 21, 22]})
    s = make_split(seq, "leave_one_out", verbose=False)
    raw = seq.item_raw_ids
    assert s.train_lengths.tolist() == [2, 1]
    assert raw[s.valid.targets].tolist() == [12, 21] and s.valid.history_lengths.tolist() == [2, 1]
    assert raw[s.test.targets].tolist() == [13, 22] and s.test.history_lengths.tolist() == [3, 2]


def test_leave_one_out_needs_three_events():
    with pytest.raises(DataError, match=">= 3 events"):
        make_split(_data({1: [1, 2]}), "leave_one_out", verbose=False)


def test_hstu_split_has_no_validation():
    s = make_split(_data({1: [10, 11, 12]}), "hstu", verbose=False)
    assert s.valid is None and s.train_lengths.tolist() == [2] and s.test.history_lengths.tolist() == [2]


def test_temporal_split_never_leaks_future_items():
    seqs = {1: [1, 2, 3, 4], 2: [5, 6, 7], 3: [8, 9]}
    times = {1: [1, 2, 6, 9], 2: [3, 7, 8], 3: [10, 11]}
    seq = _data(seqs, times)
    s = make_split(seq, "temporal", valid_cut=5, test_cut=8, verbose=False)
    ts = seq.timestamps
    # training events are all before the validation cut
    for u in range(seq.num_users):
        start = seq.seq_offsets[u]
        assert (ts[start : start + s.train_lengths[u]] < 5).all()
    for eval_set, cut in ((s.valid, 5), (s.test, 8)):
        for u, n in zip(eval_set.users, eval_set.history_lengths):
            start = seq.seq_offsets[u]
            assert (ts[start : start + n] < cut).all()  # history strictly before the cut
            assert ts[start + n] >= cut  # target at or after it
    # user 3 has no history before the test cut: not evaluated
    assert 2 not in s.test.users.tolist()


def test_temporal_cuts_that_leave_nothing_to_train_or_test_are_clear_errors():
    seq = _data({1: [1, 2, 3, 4], 2: [5, 6, 7]}, {1: [1, 2, 6, 9], 2: [3, 7, 8]})
    with pytest.raises(DataError, match=r"no event before valid_cut \(t=1; the log spans 1..9\): nothing to train on"):
        make_split(seq, "temporal", valid_cut=1, test_cut=2, verbose=False)
    with pytest.raises(DataError, match=r"no user has events both before and after test_cut \(t=10"):
        make_split(seq, "temporal", valid_cut=5, test_cut=10, verbose=False)


def test_train_batches_shift_and_mask():
    seq = _data({1: [10, 11, 12, 13, 14], 2: [20, 21, 22, 23], 3: [30, 31, 32]})
    s = make_split(seq, "leave_one_out", verbose=False)
    batches = list(iter_train_batches(s, max_len=4, batch_size=8, generator=torch.Generator().manual_seed(0)))
    assert len(batches) == 1
    b = batches[0]
    raw = seq.item_raw_ids
    for row in range(2):
        ids, tgt = b.item_ids[row].numpy(), b.target_ids[row].numpy()
        real = ids != 0
        # targets are the next training item; never the validation or test items
        assert (tgt[~real] == 0).all()
        seq_items = [x for x in raw[ids[real]]]
        tgt_items = [x for x in raw[tgt[real]]]
        assert seq_items[1:] == tgt_items[:-1]
        assert not {13, 14, 22, 23} & set(tgt_items)
    assert 3 not in seq.user_raw_ids[b.users.numpy()]  # one training item: no (input, target) pair


def test_eval_batches_history_and_seen():
    seq = _data({1: [10, 11, 12, 13], 2: [20, 21, 22]})
    s = make_split(seq, "leave_one_out", verbose=False)
    (b,) = list(iter_eval_batches(s, s.test, max_len=2, batch_size=8))
    raw = seq.item_raw_ids
    assert raw[b.item_ids[0].numpy()].tolist() == [11, 12]  # last 2 of the 3-item history
    assert raw[b.target_ids.numpy()].tolist() == [13, 22]
    rows, items = seen_items_csr(s, s.test, b.rows)
    assert rows.tolist() == [0, 0, 0, 1, 1]  # the whole history, not only the window
    assert raw[items.numpy()].tolist() == [10, 11, 12, 20, 21]


def test_hold_out_items_only_as_last_events():
    """Cold start: held-out items survive only as each user's last event (the test target); training
    sequences, validation targets and histories never contain them; ids are unchanged."""
    from recsys.data.splits import hold_out_items

    rng = np.random.default_rng(0)
    seqs = {u: rng.integers(1, 41, size=rng.integers(3, 15)).tolist() for u in range(60)}
    data = _data(seqs)
    cold_data, cold, log = hold_out_items(data, 0.25, seed=3)
    assert len(cold) == 10 and cold.min() >= 1 and cold_data.num_items == data.num_items
    lengths = np.diff(cold_data.seq_offsets)
    assert (lengths >= 3).all()
    is_last = np.zeros(cold_data.num_interactions, dtype=bool)
    is_last[cold_data.seq_offsets[1:] - 1] = True
    assert not np.isin(cold_data.item_ids[~is_last], cold).any()
    split = make_split(cold_data, "leave_one_out", verbose=False)
    assert not np.isin(split.valid.targets, cold).any()
    assert np.isin(split.test.targets, cold).sum() > 0  # some test targets are cold
    # a user's kept events are its original events in order, minus the held-out ones
    raw = {int(r): u for u, r in enumerate(data.user_raw_ids)}
    for u in range(cold_data.num_users):
        original = list(data.sequence(raw[int(cold_data.user_raw_ids[u])]))
        want = [i for i in original[:-1] if i not in set(cold.tolist())] + original[-1:]
        assert list(cold_data.sequence(u)) == want
    assert "items held out" in log[0]
