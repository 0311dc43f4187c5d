import numpy as np

from recsys.baselines import popularity_scorer, random_scorer, train_item_counts
from recsys.data.splits import make_split
from recsys.evaluation import EvalConfig, evaluate
from tests.data.test_splits_batching import _data


def test_train_counts_see_only_training_events():
    # leave-one-out: the last two events of each user (validation, test targets) are not counted
    data = _data({1: [10, 11, 12, 13, 14], 2: [10, 12, 15, 16]})
    split = make_split(data, "leave_one_out", verbose=False)
    counts = train_item_counts(split)
    raw = {r: i for i, r in enumerate(data.item_raw_ids) if r is not None}
    assert counts[raw[10]] == 2 and counts[raw[11]] == 1 and counts[raw[12]] == 2
    assert counts[raw[13]] == counts[raw[14]] == counts[raw[15]] == counts[raw[16]] == 0
    assert counts.sum() == split.train_lengths.sum()


def test_popularity_ranks_by_training_count_and_random_is_near_chance():
    # item 1 is everyone's test target and the most frequent training item: popularity ranks it first
    seqs = {u: [1, 1 + (u % 5) + 1, 1 + ((u + 1) % 5) + 1, 1] for u in range(30)}
    split = make_split(_data(seqs), "leave_one_out", verbose=False)
    cfg = EvalConfig(ks=(1,), exclude_seen=False)
    assert evaluate(popularity_scorer(split), split, split.test, 10, cfg)["hr@1"] == 1.0
    hr = evaluate(random_scorer(split.data.num_items), split, split.test, 10, cfg)["hr@1"]
    assert 0.0 <= hr < 0.6 and np.isfinite(hr)
