"""The learned repeat score (recsys/models/layers/repeat.py): the history pairs, the full CE with the
bias in its logits, the evaluator and the API ranking with it, and training that learns it."""

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from recsys.config import ConfigError, LossConfig
from recsys.data.batching import prefix_history_pairs, window_history_pairs
from recsys.evaluation import EvalConfig, evaluate
from recsys.losses import next_item_loss
from recsys.models.base import build_model
from recsys.models.sasrec import SASRec, SASRecConfig
from tests.evaluation.test_full import _split

IDS = torch.tensor([[0, 0, 3, 5, 3, 2], [4, 4, 1, 2, 6, 1]])  # left padding, repeats inside a window
TARGETS = torch.tensor([[0, 0, 5, 3, 2, 7], [4, 1, 0, 6, 1, 3]])  # 0: no target at that position


def test_window_pairs_list_each_rows_distinct_items_once():
    rows, items = window_history_pairs(IDS)
    assert sorted(zip(rows.tolist(), items.tolist())) == [(0, 2), (0, 3), (0, 5), (1, 1), (1, 2), (1, 4), (1, 6)]


def test_prefix_pairs_list_what_each_scored_position_has_read():
    rows, items = prefix_history_pairs(IDS, TARGETS > 0)
    got: dict[int, set] = {}
    for r, i in zip(rows.tolist(), items.tolist()):
        assert i not in got.setdefault(r, set())  # each item once per position
        got[r].add(i)
    # the scored positions in row-major order: (0,2) (0,3) (0,4) (0,5) (1,0) (1,1) (1,3) (1,4) (1,5)
    assert got == {
        0: {3},
        1: {3, 5},
        2: {3, 5},
        3: {2, 3, 5},
        4: {4},
        5: {4},
        6: {1, 2, 4},
        7: {1, 2, 4, 6},
        8: {1, 2, 4, 6},
    }
    assert rows.tolist() == sorted(rows.tolist())  # the loss finds each block's pairs by binary search
    dropped = prefix_history_pairs(torch.tensor([[0, -1, 2]]), torch.tensor([[True, True, True]]))
    assert dropped[1].tolist() == [2]  # ids <= 0 (padding, an item not scored in training) are no items


@pytest.mark.parametrize("settings", [{}, {"ce_item_chunk_size": 3}, {"ce_chunk_size": 2}])
def test_full_ce_with_the_bias_equals_cross_entropy_of_the_biased_logits(settings):
    torch.manual_seed(0)
    V, D, tau = 8, 5, 0.5
    hidden = torch.randn(2, 6, D, requires_grad=True)
    items = torch.randn(V, D, requires_grad=True)
    bias = torch.tensor(-0.7, requires_grad=True)
    loss = next_item_loss(
        LossConfig(name="ce", temperature=tau, **settings), hidden, TARGETS, items, repeat_bias=bias, input_ids=IDS
    )
    grads = torch.autograd.grad(loss, (hidden, items, bias))
    read = torch.zeros(2, 6, V - 1)  # [B, L, V - 1]: 1 where the item is in the window up to that position
    for b in range(2):
        for t in range(6):
            for item in set(IDS[b, : t + 1].tolist()) - {0}:
                read[b, t, item - 1] = 1.0
    mask = TARGETS > 0
    logits = (hidden @ items[1:].T + bias * read) / tau  # the padding row is no candidate
    expected = F.cross_entropy(logits[mask], TARGETS[mask] - 1)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    for got, want in zip(grads, torch.autograd.grad(expected, (hidden, items, bias))):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert float(grads[2]) != 0.0
    with pytest.raises(ValueError, match="loss.name = 'ce'"):
        next_item_loss(LossConfig(name="bce"), hidden, TARGETS, items, repeat_bias=bias, input_ids=IDS)


@pytest.mark.parametrize("name", ["sasrec", "hstu", "recformer"])
def test_the_bias_is_a_parameter_only_when_asked_for(name):
    plain = build_model(name, {"max_seq_len": 8, "hidden_dim": 16}, 20)
    assert plain.repeat_bias is None and "repeat_bias" not in plain.state_dict()
    model = build_model(name, {"max_seq_len": 8, "hidden_dim": 16, "repeat_bias": True}, 20)
    assert float(model.repeat_bias.detach()) == 0.0  # no effect until trained
    assert "repeat_bias" in dict(model.named_parameters())


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("ranks", ["all", "cutoff"])
def test_the_evaluator_ranks_the_biased_scores(normalize, ranks):
    split = _split(n_items=30)  # few items: targets repeat window items often
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(max_seq_len=8, hidden_dim=16, repeat_bias=True), split.data.num_items).eval()
    with torch.no_grad():
        model.repeat_bias.fill_(0.3 if normalize else 1.5)
    cfg = EvalConfig(ks=(1, 5, 10), exclude_seen=False, block_size=16, ranks=ranks, popular_items=4)
    out = evaluate(model, split, split.test, 8, cfg, normalize=normalize, return_ranks=ranks == "all")
    items = model.item_vectors().detach()
    items = F.normalize(items, dim=-1) if normalize else items
    expected, repeats = [], 0
    for u, n, target in zip(split.test.users, split.test.history_lengths, split.test.targets):
        window = split.data.sequence(u)[:n][-8:]
        with torch.no_grad():
            user = model.user_vectors(torch.from_numpy(window)[None])[0]
        scores = (F.normalize(user, dim=-1) if normalize else user) @ items.T
        scores[torch.from_numpy(np.unique(window))] += float(model.repeat_bias.detach())
        scores[0] = float("-inf")
        above = int((scores > scores[target]).sum())
        assert int((scores == scores[target]).sum()) == 1  # no ties here: the ranks are exact
        expected.append(above + 1)
        repeats += int(target in window)
    assert repeats >= 10  # the bias decides some targets' ranks
    if ranks == "all":
        assert out["ranks"].tolist() == expected
    ndcg = np.mean([1 / np.log2(r + 1) if r <= 10 else 0.0 for r in expected])
    assert out["ndcg@10"] == pytest.approx(ndcg, abs=1e-6)
    with pytest.raises(ConfigError, match="whole catalogue"):
        evaluate(model, split, split.test, 8, EvalConfig(sampled_negatives=5, exclude_seen=False))


def _distinct_histories(users=120, items=40, length=10) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for u in range(users):
        history = rng.permutation(np.arange(1, items + 1))[:length]  # no item twice in a history
        rows += [(f"u{u}", f"i{i}", t) for t, i in enumerate(history)]
    return pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")


SMALL = {"model.max_seq_len": 10, "model.hidden_dim": 16, "train.batch_size": 32, "eval.exclude_seen": False}


def test_training_learns_that_targets_never_repeat_and_the_api_ranks_with_it(tmp_path):
    """Histories of distinct items: the bias goes negative; the API's scores carry it."""
    import recsys

    frame = _distinct_histories()
    settings = {**SMALL, "model.repeat_bias": True, "train.lr": 0.01, "train.patience": 0}
    run = recsys.fit(
        frame, "sasrec", time="timestamp", epochs=8, overrides=settings, run_dir=tmp_path / "r", progress=False
    )
    from recsys.files import load_checkpoint

    assert float(load_checkpoint(run.path / "last.pt")["model"]["repeat_bias"]) < -0.2  # 32 steps at lr 0.01
    bias = float(run.model.repeat_bias.detach())  # the best epoch's (on validation)
    assert bias < 0.0
    data = run.trainer.split.data
    user = int(np.flatnonzero(data.user_raw_ids == "u0")[0])
    window = data.sequence(user)[-10:]
    run.model.eval()
    with torch.no_grad():
        raw = (run.model.user_vectors(torch.from_numpy(window)[None]) @ run.model.item_vectors().T)[0]
    scores = run.score(users=["u0"], items=[f"i{i}" for i in range(1, 41)])
    for item, score in zip(scores["item"].to_list(), scores["score"].to_list()):
        internal = int(np.flatnonzero(data.item_raw_ids == item)[0])
        assert score == pytest.approx(float(raw[internal]) + (bias if internal in window else 0.0), abs=1e-4)
    # an export carries the bias beside the vectors; ranking through an index of them would drop it
    from recsys.export import export_run, read_manifest
    from recsys.retrieval import evaluate_through_index

    export = export_run(run.trainer, tmp_path / "export", users="test", encoder=False)
    assert read_manifest(export)["repeat_bias"] == pytest.approx(bias)
    with pytest.raises(ValueError, match="repeat score"):
        evaluate_through_index(run.trainer, None, exclude_seen=False)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"loss.name": "bce"}, "needs loss.name = 'ce'"),
        ({"model.reasoning_steps": 1}, "reasoning_steps"),
        ({"eval.sampled_negatives": 5}, "sampled_negatives = 0"),
    ],
)
def test_the_bias_needs_the_full_softmax_and_no_reasoning(tmp_path, settings, message):
    import recsys

    with pytest.raises(ConfigError, match=message):
        recsys.fit(
            _distinct_histories(users=20),
            "sasrec",
            time="timestamp",
            epochs=1,
            overrides={**SMALL, "model.repeat_bias": True, **settings},
            run_dir=tmp_path / "r",
            progress=False,
        )
