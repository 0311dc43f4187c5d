import numpy as np
import polars as pl
import pytest
import torch

from recsys.data.prepare import prepare_sequences
from recsys.data.readers import frame_to_interactions
from recsys.data.splits import make_split
from recsys.evaluation import EvalConfig, evaluate
from recsys.metrics import ranking_metrics
from recsys.models.sasrec import SASRec, SASRecConfig
from tests.conftest import REPO, needs_data


def _split(n_users=50, n_items=300, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        length = int(rng.integers(3, 15))
        items = rng.integers(1, n_items + 1, length)  # repeats allowed: targets may be seen items
        rows += [(u, int(i), t) for t, i in enumerate(items)]
    df = pl.DataFrame({"u": [r[0] for r in rows], "i": [r[1] for r in rows], "t": [r[2] for r in rows]})
    seq = prepare_sequences(
        frame_to_interactions(df, {"user_id": "u", "item_id": "i", "timestamp": "t"}), verbose=False
    )
    return make_split(seq, "leave_one_out", verbose=False)


def _brute_force_ranks(model, split, eval_set, max_len, exclude_seen):
    """Per user, one at a time, with a full argsort (the slow obvious way)."""
    model.eval()
    ranks = []
    data = split.data
    items = model.item_vectors().detach()
    for u, n, target in zip(eval_set.users, eval_set.history_lengths, eval_set.targets):
        history = data.sequence(u)[:n]
        ids = torch.from_numpy(history[-max_len:])[None]
        with torch.no_grad():
            scores = (model.user_vectors(ids) @ items.T)[0]
        target_score = scores[target].item()
        candidates = set(range(1, len(items)))
        if exclude_seen:
            candidates -= set(history.tolist())
        candidates.discard(int(target))
        ranks.append(1 + sum(scores[c].item() > target_score for c in candidates))
    return ranks


@pytest.mark.parametrize("exclude_seen", [True, False])
@pytest.mark.parametrize("block_size, encoder_tokens, num_blocks", [(7, 8192, 1), (64, 8192, 1), (64, 20, 2)])
def test_evaluator_equals_brute_force(exclude_seen, block_size, encoder_tokens, num_blocks):
    """encoder_tokens 20 with histories of up to 8: the encoder sees 2 users per call."""
    split = _split()
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(max_seq_len=8, hidden_dim=16, num_blocks=num_blocks), split.data.num_items)
    cfg = EvalConfig(ks=(1, 5, 10), exclude_seen=exclude_seen, block_size=block_size, encoder_tokens=encoder_tokens)
    out = evaluate(model, split, split.test, 8, cfg, return_ranks=True)
    expected = _brute_force_ranks(model, split, split.test, 8, exclude_seen)
    assert out["ranks"].tolist() == expected
    ref = ranking_metrics(expected, ks=(1, 5, 10))
    for name in ("hr@10", "ndcg@10", "mrr", "ndcg@5"):
        assert out[name] == pytest.approx(ref[name], abs=1e-12)


def test_exclude_seen_only_raises_metrics():
    split = _split(seed=1)
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(max_seq_len=8, hidden_dim=16, num_blocks=1), split.data.num_items)
    on = evaluate(model, split, split.test, 8, EvalConfig(exclude_seen=True), return_ranks=True)["ranks"]
    off = evaluate(model, split, split.test, 8, EvalConfig(exclude_seen=False), return_ranks=True)["ranks"]
    assert (on <= off).all() and (on < off).any()


def test_memory_budget_shrinks_blocks_not_results():
    split = _split(seed=2)
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(max_seq_len=8, hidden_dim=16, num_blocks=1), split.data.num_items)
    big = evaluate(model, split, split.test, 8, EvalConfig(block_size=512), return_ranks=True)["ranks"]
    tiny = evaluate(model, split, split.test, 8, EvalConfig(block_size=512, max_block_mb=0), return_ranks=True)["ranks"]
    assert torch.equal(big, tiny)


@pytest.mark.parametrize("num_items", [3_825, 54_570])
def test_a_score_does_not_depend_on_its_block(num_items):
    """What makes eval.ranks "all" and "cutoff" agree exactly: an (item, user) score comes out with the
    same bits whether its user is scored in a block of 16, 24, ... or 512 columns, by torch's product
    (into a buffer) or oneDNN's (fresh output), as exact_ranks computes them (>= 16 columns)."""
    from recsys.kernels import onednn

    gen = torch.Generator().manual_seed(0)
    items, users = torch.randn(num_items, 64, generator=gen), torch.randn(512, 64, generator=gen)
    reference = torch.mm(items, users.T)  # [V, 512]
    for width in (16, 24, 64, 152, 512):
        assert torch.equal(torch.mm(items, users[:width].T), reference[:, :width])
        assert torch.equal(onednn.mm(items, users[:width].T), reference[:, :width])


@pytest.mark.parametrize("block_size", [7, 64, 512])
def test_every_rank_from_fresh_or_buffered_scores(monkeypatch, block_size):
    """Every exact rank, blocks scored into fresh oneDNN outputs or (MAX_OUTPUT_BYTES 0) into torch's
    reused buffer: the brute-force ranks either way."""
    from recsys.kernels import onednn

    split = _split(n_users=150, seed=3)
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(max_seq_len=8, hidden_dim=16, num_blocks=1), split.data.num_items)
    expected = _brute_force_ranks(model, split, split.test, 8, exclude_seen=True)
    for max_output_bytes in (onednn.MAX_OUTPUT_BYTES, 0):
        monkeypatch.setattr(onednn, "MAX_OUTPUT_BYTES", max_output_bytes)
        out = evaluate(model, split, split.test, 8, EvalConfig(block_size=block_size), return_ranks=True)
        assert out["ranks"].tolist() == expected


CUT_METRICS = [f"{m}@{k}" for k in (1, 5, 10, 20) for m in ("hr", "recall", "ndcg", "mrr")]


@pytest.mark.parametrize("exclude_seen", [True, False])
@pytest.mark.parametrize("tie_policy", ["expected", "optimistic", "pessimistic"])
@pytest.mark.parametrize("popular_items", [1, 20, 60, 1000])  # 60: under a quarter of the ~290 items
def test_cutoff_ranks_give_the_same_cut_metrics(exclude_seen, tie_policy, popular_items):
    split = _split(n_users=120, seed=3)
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(max_seq_len=8, hidden_dim=16, num_blocks=1), split.data.num_items)
    with torch.no_grad():  # duplicated item vectors: ties between items, decided by tie_policy on both paths
        model.item_embedding.weight[2:40:2] = model.item_embedding.weight[1:39:2]
    kw = dict(ks=(1, 5, 10, 20), exclude_seen=exclude_seen, tie_policy=tie_policy, block_size=16)
    full = evaluate(model, split, split.test, 8, EvalConfig(**kw), return_ranks=True)
    cut = evaluate(model, split, split.test, 8, EvalConfig(**kw, ranks="cutoff", popular_items=popular_items))
    for name in CUT_METRICS:
        assert cut[name] == full[name], name
    assert "mrr" in full and "mrr" not in cut  # the uncut MRR needs every exact rank
    # the users ranked against every item are at least those ranked <= 20, and (with enough popular
    # items) only a few more: the popular items decided the others
    assert cut["fully_ranked_users"] >= int((full["ranks"] <= 20).sum())
    if popular_items == 60:  # the pre-pass ran and decided some users from the popular items alone
        assert cut["fully_ranked_users"] < len(split.test)
    if popular_items in (1, 1000):  # 1: decides nobody; 1000: a quarter of the catalogue or more, no pre-pass
        assert cut["fully_ranked_users"] == len(split.test)


def test_cutoff_ranks_when_popular_items_score_lowest():
    """A model that ranks the popular items last decides nothing from them: everyone is ranked fully."""
    split = _split(n_users=60, seed=4)
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(max_seq_len=8, hidden_dim=16, num_blocks=1), split.data.num_items)
    counts = np.bincount(split.data.item_ids, minlength=split.data.num_items)
    popular = torch.from_numpy(np.argsort(-counts[1:])[:20] + 1)
    with torch.no_grad():
        model.item_embedding.weight[popular] = 0.0  # the bias-free SASRec scores these 0 for everyone
    kw = dict(ks=(10,), block_size=32)
    full = evaluate(model, split, split.test, 8, EvalConfig(**kw), return_ranks=True)
    cut = evaluate(model, split, split.test, 8, EvalConfig(**kw, ranks="cutoff", popular_items=20))
    assert cut["ndcg@10"] == full["ndcg@10"] and cut["hr@10"] == full["hr@10"]


def test_cutoff_ranks_refuse_return_ranks_and_uncut_mrr_early_stopping():
    from recsys.config import ConfigError, load_recipe

    split = _split(n_users=10)
    model = SASRec(SASRecConfig(max_seq_len=8, hidden_dim=16, num_blocks=1), split.data.num_items)
    with pytest.raises(ValueError, match="return_ranks"):
        evaluate(model, split, split.test, 8, EvalConfig(ranks="cutoff"), return_ranks=True)
    with pytest.raises(ConfigError, match="'mrr' is not computed"):
        load_recipe("recipes/ml-100k/sasrec.toml", ["eval.ranks=cutoff", "eval.early_stopping_metric=mrr"])
    with pytest.raises(ConfigError, match="eval.ranks"):
        load_recipe("recipes/ml-100k/sasrec.toml", ["eval.ranks=top"])


@needs_data("ml-100k")
def test_cutoff_ranks_on_a_trained_ml100k_model(tmp_path):
    from recsys.config import load_recipe
    from recsys.train import Trainer, prepare_data

    cfg = load_recipe(
        REPO / "recipes/ml-100k/sasrec.toml",
        ["model.hidden_dim=32", "model.num_blocks=1", "train.epochs=3", "train.patience=0", "train.num_threads=1"],
    )
    trainer = Trainer(cfg, tmp_path / "run", data=prepare_data(cfg.data, verbose=False), progress=False)
    trainer.fit()
    full = trainer.evaluate("test")
    trainer.cfg.eval.ranks = "cutoff"
    every = trainer.evaluate("test")  # the default 2,040 popular items: a quarter of 1,682 items or more
    trainer.cfg.eval.popular_items = 400
    cut = trainer.evaluate("test")
    for name in (f"{m}@{k}" for k in cfg.eval.ks for m in ("hr", "ndcg", "mrr")):
        assert cut[name] == full[name] == every[name], name
    assert full["ndcg@10"] > 0.02  # a model that learned something
    assert every["fully_ranked_users"] == full["num_users"]
    assert cut["fully_ranked_users"] < 0.5 * full["num_users"]


def test_cutoff_ranks_at_the_boundary():
    """Scores i / 64 for item i: exact counts at rank k_max, a tie with the target, an excluded item."""
    from recsys.evaluation import cutoff_ranks
    from recsys.metrics import ranks_under_policy

    V = 64
    items = torch.zeros(V, 2)
    items[:, 0] = torch.arange(V) / V
    items[29] = items[30]  # ties with target 30
    users = torch.zeros(8, 2)
    users[:, 0] = 1.0
    targets = torch.full((8,), 30)
    popular = torch.arange(V - 1, 0, -1)  # the highest scores first
    # items 31..63 are 33 above target 30; user 1 has 5 of them excluded, user 2 has item 29 excluded
    exclude = (torch.tensor([1, 1, 1, 1, 1, 2]), torch.tensor([40, 41, 42, 43, 44, 29]))
    exact = {"optimistic": [34, 29, 34], "pessimistic": [35, 30, 34]}  # users 0, 1, 2, by hand
    for policy, expected in exact.items():
        for k_max in (28, 29, 30, 33, 34, 35):
            above, ties, _ = cutoff_ranks(items, popular, users, targets, V, k_max, exclude, 1.0)
            ranks = ranks_under_policy(above, ties, policy)[0]
            for user, rank in enumerate(expected):
                if rank <= k_max:
                    assert int(ranks[user]) == rank, (policy, k_max, user)
                else:
                    assert int(ranks[user]) > k_max, (policy, k_max, user)


def test_sampled_metrics_with_every_candidate_sampled_equal_full_ranking():
    """Legacy sampled mode: with all V - 2 other items as the 'sample' it is full ranking (seen items kept)."""
    split = _split()
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(max_seq_len=8, hidden_dim=16, num_blocks=1), split.data.num_items)
    every = split.data.num_items - 2  # all items but padding and the target
    cfg = EvalConfig(ks=(1, 5, 10), exclude_seen=False, sampled_negatives=every, block_size=16)
    out = evaluate(model, split, split.test, 8, cfg, return_ranks=True)
    assert out["ranks"].tolist() == _brute_force_ranks(model, split, split.test, 8, exclude_seen=False)
    assert "sampled metrics (legacy)" in out["protocol"] and f"against {every} uniform-sampled" in out["protocol"]


def test_sampled_negatives_are_distinct_unseen_and_the_same_however_users_are_batched():
    from recsys.evaluation import sample_negatives, sampled_ranks

    V, N = 60, 20
    user_ids, targets = torch.arange(100, 140), torch.randint(1, V, (40,), generator=torch.Generator().manual_seed(0))
    seen_rows = torch.arange(40).repeat_interleave(5)
    seen_items = (torch.arange(200) * 7) % (V - 1) + 1
    negatives = sample_negatives(user_ids, targets, (seen_rows, seen_items), V, N, None, seed=3)
    assert negatives.shape == (40, N)
    for row in range(40):
        drawn = set(negatives[row].tolist())
        assert len(drawn) == N and 0 not in drawn and int(targets[row]) not in drawn
        assert drawn.isdisjoint(seen_items[seen_rows == row].tolist())
    # per user, not per batch: the last 10 users alone draw what they drew among all 40
    alone = sample_negatives(user_ids[30:], targets[30:], (seen_rows[150:] - 30, seen_items[150:]), V, N, None, seed=3)
    assert torch.equal(alone, negatives[30:])
    assert not torch.equal(sample_negatives(user_ids, targets, None, V, N, None, seed=4), negatives)
    items, users = torch.randn(V, 8), torch.randn(40, 8)
    whole, whole_ties = sampled_ranks(items, users, targets, user_ids, (seen_rows, seen_items), N, None, 3)
    chunked, chunked_ties = sampled_ranks(
        items, users, targets, user_ids, (seen_rows, seen_items), N, None, 3, max_gathered=7 * N * 8
    )  # chunks of 7 users
    assert torch.equal(whole, chunked) and torch.equal(whole_ties, chunked_ties)
    assert int(whole_ties.sum()) == 0  # random vectors: no ties
    expected = ((items[negatives] @ users[:, :, None]).squeeze(-1) > (items[targets] * users).sum(1, keepdim=True)).sum(
        1
    )
    assert torch.equal(whole, expected)


def test_popularity_sampling_follows_the_counts_and_never_draws_an_unseen_in_the_log_item():
    from recsys.evaluation import sample_negatives

    counts = torch.tensor([0.0, 50.0, 30.0, 10.0, 5.0, 5.0] + [0.0] * 5)  # padding, then items 1..10; 6..10 never occur
    cdf = counts[1:].cumsum(0)  # cumulative counts of items 1 .. V-1
    user_ids = torch.arange(2000)
    negatives = sample_negatives(user_ids, torch.full((2000,), 5), None, 11, 1, cdf, seed=0)  # target: item 5
    drawn = torch.bincount(negatives[:, 0], minlength=11)
    assert drawn[0] == 0 and drawn[5] == 0 and drawn[6:].sum() == 0  # padding, the target, zero counts
    assert drawn[1] > drawn[2] > drawn[3] > drawn[4] > 0  # 50 : 30 : 10 : 5
    from recsys.data.readers import DataError

    with pytest.raises(DataError, match="only 4 items to sample from"):
        sample_negatives(user_ids[:3], torch.full((3,), 5), None, 11, 5, cdf, seed=0)


def test_sampled_metrics_refuse_cut_ranks():
    from recsys.config import ConfigError, load_recipe

    with pytest.raises(ConfigError, match="eval.ranks must be 'all' with eval.sampled_negatives"):
        load_recipe(REPO / "recipes/ml-100k/sasrec.toml", ["eval.sampled_negatives=100", "eval.ranks=cutoff"])


class FixedScorer(torch.nn.Module):
    """Given item vectors; a user's vector is ``user_fn(item_ids)`` of its history window."""

    def __init__(self, items: torch.Tensor, user_fn):
        super().__init__()
        self.items, self.user_fn = items, user_fn

    def item_vectors(self):
        return self.items

    def user_vectors(self, item_ids, timestamps=None, target_timestamps=None):
        return self.user_fn(item_ids)


def _random_order_expectation(split, eval_set, ks, exclude_seen):
    """Mean metrics when every candidate scores the same: the target's rank uniform over 1..C, C the
    user's candidates (every item but padding and, with exclude_seen, the history other than the target)."""
    totals = {}
    for u, n, target in zip(eval_set.users, eval_set.history_lengths, eval_set.targets):
        seen = set(split.data.sequence(u)[:n].tolist()) - {int(target)} if exclude_seen else set()
        candidates = split.data.num_items - 1 - len(seen)
        ranks = np.arange(1, candidates + 1)
        for k in ks:
            totals[f"hr@{k}"] = totals.get(f"hr@{k}", 0) + (ranks <= k).mean()
            totals[f"ndcg@{k}"] = totals.get(f"ndcg@{k}", 0) + ((ranks <= k) / np.log2(ranks + 1)).mean()
            totals[f"mrr@{k}"] = totals.get(f"mrr@{k}", 0) + ((ranks <= k) / ranks).mean()
        totals["mrr"] = totals.get("mrr", 0) + (1 / ranks).mean()
    return {k: v / len(eval_set) for k, v in totals.items()}


@pytest.mark.parametrize("exclude_seen", [True, False])
@pytest.mark.parametrize("path", ["kernel", "gemm", "cutoff"])
def test_a_constant_scorer_gets_exactly_the_random_order_expectation(monkeypatch, exclude_seen, path):
    """Every item scored alike: the default tie policy gives a random ranking's metrics, not 1.0."""
    import recsys.evaluation.full as evaluation

    split = _split(n_users=40, seed=5)
    if path == "gemm":
        monkeypatch.setattr(evaluation, "item_ranker", lambda items, num_items: None)
    model = FixedScorer(torch.zeros(split.data.num_items, 8), lambda ids: torch.ones(ids.shape[0], 8))
    ks = (1, 5, 10)
    kw = dict(ks=ks, exclude_seen=exclude_seen, block_size=16)
    if path == "cutoff":
        kw.update(ranks="cutoff", popular_items=20)
    out = evaluate(model, split, split.test, 8, EvalConfig(**kw))
    expected = _random_order_expectation(split, split.test, ks, exclude_seen)
    assert out["tie_policy"] == "expected"
    for name, value in expected.items():
        if name in out:
            assert out[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name
    assert out["hr@10"] < 0.1  # about 10 of ~200 candidates
    optimistic = evaluate(model, split, split.test, 8, EvalConfig(**kw, tie_policy="optimistic"))
    pessimistic = evaluate(model, split, split.test, 8, EvalConfig(**kw, tie_policy="pessimistic"))
    assert optimistic["hr@1"] == 1.0 and pessimistic["hr@10"] == 0.0


def test_sampled_metrics_of_a_constant_scorer_are_the_random_order_expectation():
    split = _split(n_users=30, seed=6)
    model = FixedScorer(torch.zeros(split.data.num_items, 4), lambda ids: torch.ones(ids.shape[0], 4))
    out = evaluate(
        model, split, split.test, 8, EvalConfig(ks=(1, 10), sampled_negatives=19, block_size=16, repeat_targets="keep")
    )
    assert out["hr@1"] == pytest.approx(1 / 20) and out["hr@10"] == pytest.approx(10 / 20)


def test_non_finite_scores_are_an_error_naming_the_evaluation_and_the_users():
    from recsys.metrics import NonFiniteScoresError

    split = _split(n_users=40, seed=7)
    items = torch.randn(split.data.num_items, 8)

    def users(ids):  # NaN for every history that ends in an even item id
        out = torch.randn(ids.shape[0], 8)
        out[ids[:, -1] % 2 == 0] = float("nan")
        return out

    bad = int(sum(split.data.sequence(u)[n - 1] % 2 == 0 for u, n in zip(split.test.users, split.test.history_lengths)))
    assert 0 < bad < 40
    with pytest.raises(NonFiniteScoresError, match=rf"run X, test split: {bad} of 40 users"):
        evaluate(FixedScorer(items, users), split, split.test, 8, EvalConfig(block_size=8), label="run X, test split")
    items[5, 2] = float("inf")
    with pytest.raises(NonFiniteScoresError, match="1 of .* item vectors .* all 40 users"):
        evaluate(FixedScorer(items, lambda ids: torch.ones(ids.shape[0], 8)), split, split.test, 8, EvalConfig())
    huge = FixedScorer(torch.full((split.data.num_items, 8), 1e30), lambda ids: torch.full((ids.shape[0], 8), 1e30))
    with pytest.raises(NonFiniteScoresError, match="overflow"):
        evaluate(huge, split, split.test, 8, EvalConfig())


def _repeat_split():
    """12 users; the test target of users 0, 3, 6, 9 repeats an item of their history."""
    rows = []
    for u in range(12):
        history = [1 + (u * 7 + j) % 40 for j in range(6)]
        target = history[2] if u % 3 == 0 else 41 + u
        rows += [(u, i, t) for t, i in enumerate(history + [50 + u, target])]
    df = pl.DataFrame({"u": [r[0] for r in rows], "i": [r[1] for r in rows], "t": [r[2] for r in rows]})
    seq = prepare_sequences(
        frame_to_interactions(df, {"user_id": "u", "item_id": "i", "timestamp": "t"}), verbose=False
    )
    return make_split(seq, "leave_one_out", verbose=False)


def test_repeat_targets_are_counted_and_never_leak_by_default():
    split = _repeat_split()
    raw = split.data.item_raw_ids
    gen = torch.Generator().manual_seed(0)
    items = torch.randn(split.data.num_items, 6, generator=gen)
    model = FixedScorer(items, lambda ids: items[ids].sum(1))  # likes its own history: repeats rank high
    ks = (1, 5, 10)
    keep = evaluate(model, split, split.test, 8, EvalConfig(ks=ks, repeat_targets="keep"), return_ranks=True)
    exclude = evaluate(model, split, split.test, 8, EvalConfig(ks=ks))  # the default
    apart = evaluate(model, split, split.test, 8, EvalConfig(ks=ks, repeat_targets="apart"))
    repeat = np.array([int(raw[t]) <= 40 for t in split.test.targets])  # the repeated items are ids 1..40
    assert repeat.sum() == 4
    for out in (keep, exclude, apart):
        assert out["repeat_targets"]["users"] == 4
    assert exclude["repeat_targets"]["policy"] == "exclude"
    ranks = keep["ranks"].numpy()
    new = ranking_metrics(ranks[~repeat], ks=ks)
    for name in ("hr@10", "ndcg@10", "mrr"):
        assert exclude[name] == pytest.approx(new[name] * 8 / 12)  # repeat targets are misses
        assert apart[name] == pytest.approx(new[name])  # the headline: the 8 new targets alone
        assert keep[name] == pytest.approx(ranking_metrics(ranks, ks=ks)[name])
        assert exclude["repeat_targets"]["metrics_if_kept"][name] == pytest.approx(keep[name])
    assert apart["num_users"] == 8 and exclude["num_users"] == keep["num_users"] == 12
    # apart: the repeat users ranked with their history among the candidates (no exclusion)
    off = evaluate(model, split, split.test, 8, EvalConfig(ks=ks, exclude_seen=False), return_ranks=True)
    assert apart["repeat_targets"]["metrics"]["mrr"] == pytest.approx(
        ranking_metrics(off["ranks"].numpy()[repeat], ks=ks)["mrr"]
    )
    assert "users" not in off.get("repeat_targets", {})  # nothing excluded, nothing to leak
