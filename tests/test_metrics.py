import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from recsys.metrics import (
    auc,
    count_true_per_column,
    gauc,
    logloss,
    ranking_metrics,
    ranks_from_item_scores,
    ranks_from_scores,
)


def test_ranking_metrics_hand_computed():
    # ranks 1, 3, 12: HR@10 = 2/3; NDCG@10 = (1 + 1/log2(4)) / 3 = 0.5; MRR = (1 + 1/3 + 1/12) / 3
    m = ranking_metrics([1, 3, 12], ks=(1, 10))
    assert m["hr@10"] == pytest.approx(2 / 3)
    assert m["recall@10"] == pytest.approx(2 / 3)
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["ndcg@10"] == pytest.approx((1 + 0.5) / 3)
    assert m["ndcg@1"] == pytest.approx(1 / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 12) / 3)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 3) / 3)


def test_ndcg_single_rank_values():
    for r in (1, 2, 5, 10):
        assert ranking_metrics([r], ks=(10,))["ndcg@10"] == pytest.approx(1 / math.log2(r + 1))
    assert ranking_metrics([11], ks=(10,))["ndcg@10"] == 0.0


def test_ranking_metrics_rejects_bad_ranks():
    with pytest.raises(ValueError):
        ranking_metrics([0, 1])
    with pytest.raises(ValueError):
        ranking_metrics([])


def test_ranks_strict_and_ties():
    scores = torch.tensor([[0.0, 5.0, 3.0, 5.0, 1.0]])
    target = torch.tensor([3])  # tied with item 1
    assert ranks_from_scores(scores, target).item() == 1  # optimistic: nobody strictly higher
    assert ranks_from_scores(scores, target, tie_policy="pessimistic").item() == 2
    # a constant model: first under optimistic ranks, last under pessimistic ones
    flat = torch.zeros(1, 6)
    assert ranks_from_scores(flat, torch.tensor([2])).item() == 1
    assert ranks_from_scores(flat, torch.tensor([2]), tie_policy="pessimistic").item() == 6


def test_ranks_exclusion_keeps_target_score():
    scores = torch.tensor([[9.0, 8.0, 7.0, 6.0]])
    mask = torch.tensor([[True, True, True, False]])
    # the target (item 2) was seen before; items 0, 1 are masked and cannot outrank it
    assert ranks_from_scores(scores, torch.tensor([2]), exclude_mask=mask).item() == 1
    assert ranks_from_scores(scores, torch.tensor([3]), exclude_mask=mask).item() == 1
    assert ranks_from_scores(scores, torch.tensor([3])).item() == 4


@pytest.mark.parametrize("V,B", [(255 * 3, 16), (255 * 4, 24), (100, 7), (510, 5)])
def test_count_true_per_column_matches_sum(V, B):
    g = torch.Generator().manual_seed(V + B)
    mask = torch.rand(V, B, generator=g) > 0.3
    mask[:, 0] = True  # a full column: 255 per word lane must not overflow
    assert torch.equal(count_true_per_column(mask), mask.sum(0))


def test_item_major_ranks_match_brute_force():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(33, 510, generator=g).round(decimals=1)  # many ties
    targets = torch.randint(0, 510, (33,), generator=g)
    brute = 1 + (scores > scores.gather(1, targets[:, None])).sum(1)
    got = ranks_from_item_scores(scores.T.contiguous(), targets)
    assert torch.equal(got, brute)


def test_auc_against_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = rng.normal(size=500).round(1)  # ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auc([0, 1], [0.2, 0.9]) == 1.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_auc_needs_both_classes():
    with pytest.raises(ValueError):
        auc([1, 1], [0.1, 0.2])


def test_gauc_hand_computed():
    users = [1, 1, 1, 2, 2, 2, 2, 3, 3]
    labels = [1, 0, 0, 1, 1, 0, 0, 1, 1]  # user 3 has one class: skipped
    scores = [0.9, 0.1, 0.95, 0.8, 0.2, 0.3, 0.1, 0.5, 0.6]
    # user 1: pos .9 vs negs .1, .95 -> 1/2 ; user 2: pos .8,.2 vs negs .3,.1 -> 3/4
    expected = (0.5 * 3 + 0.75 * 4) / 7
    assert gauc(users, labels, scores) == pytest.approx(expected)


def test_logloss_against_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p = rng.uniform(0.01, 0.99, 200)
    assert logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-9)


def test_mean_and_spread_equal_the_statistics_module():
    import statistics

    from recsys.metrics import mean_and_spread

    values = [0.1635, 0.1311, 0.1149, 0.2]
    mean, spread = mean_and_spread(values)
    assert mean == pytest.approx(statistics.fmean(values), abs=1e-15)
    assert spread == pytest.approx(statistics.stdev(values), abs=1e-15)
    assert mean_and_spread([0.3]) == (0.3, 0.0)


def test_expected_tie_metrics_hand_computed():
    """g = 1 item above, e = 2 tied: rank uniform over {2, 3, 4}."""
    m = ranking_metrics([2], ks=(1, 3, 10), ties=[2])
    assert m["hr@1"] == 0.0
    assert m["hr@3"] == pytest.approx(2 / 3)
    assert m["hr@10"] == pytest.approx(1.0)
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 3)
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(5)) / 3)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)
    assert m["mrr@3"] == pytest.approx((1 / 2 + 1 / 3) / 3)
    # no ties: the plain formulas bit for bit
    assert ranking_metrics([3, 7], ks=(5,), ties=[0, 0]) == ranking_metrics([3, 7], ks=(5,))


def test_expected_tie_metrics_equal_the_mean_over_every_order():
    """Brute force: average the integer-rank metrics over ranks g+1 .. g+e+1."""
    for g, e in [(0, 0), (0, 7), (4, 3), (9, 1), (12, 5), (0, 60_000), (3, 1000)]:
        brute = ranking_metrics(list(range(g + 1, g + e + 2)), ks=(1, 5, 10))
        got = ranking_metrics([g + 1], ks=(1, 5, 10), ties=[e])
        for name, value in brute.items():
            assert got[name] == pytest.approx(value, rel=1e-10, abs=1e-14), (g, e, name)


def test_rank_counts_and_policies():
    from recsys.metrics import rank_counts_from_scores, ranks_under_policy

    scores = torch.tensor([[0.0, 5.0, 3.0, 5.0, 5.0, 1.0]])
    above, ties = rank_counts_from_scores(scores, torch.tensor([3]))
    assert above.item() == 0 and ties.item() == 2  # items 1 and 4 tie with target 3
    assert ranks_under_policy(above, ties, "optimistic")[0].item() == 1
    assert ranks_under_policy(above, ties, "pessimistic")[0].item() == 3
    ranks, tied = ranks_under_policy(above, ties, "expected")
    assert ranks.item() == 1 and tied.item() == 2
    with pytest.raises(ValueError, match="tie_policy"):
        ranks_under_policy(above, ties, "random")


def test_click_metrics_refuse_non_finite_scores():
    from recsys.metrics import NonFiniteScoresError

    with pytest.raises(NonFiniteScoresError, match="AUC: 1 of 4"):
        auc([0, 1, 0, 1], [0.1, float("nan"), 0.3, 0.4])
    with pytest.raises(NonFiniteScoresError, match="GAUC"):
        gauc([1, 1, 2, 2], [0, 1, 0, 1], [0.1, float("inf"), 0.3, 0.4])
    with pytest.raises(NonFiniteScoresError, match="log loss"):
        logloss([0, 1], [0.5, float("nan")])
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # ties count one half
