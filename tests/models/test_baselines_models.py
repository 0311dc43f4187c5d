"""The baselines a recipe can name: popularity, random and item co-occurrence, counted from the training
events, checkpointed and evaluated like any model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.baselines import train_item_counts
from recsys.config import load_recipe
from recsys.models.base import build_model
from tests.conftest import REPO, needs_data


def _split(seqs: list[list[int]], num_items: int):
    from recsys.data.prepare import SequenceData
    from recsys.data.splits import make_split

    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
    data = SequenceData(
        np.concatenate(seqs).astype(np.int64),
        np.arange(offsets[-1]),
        offsets,
        np.arange(len(seqs)).astype(object),
        np.arange(num_items).astype(object),
        has_timestamps=False,
    )
    return make_split(data, "leave_one_out", verbose=False)


def test_popularity_counts_only_training_events():
    split = _split([[1, 2, 3, 4], [1, 2, 5, 5], [2, 1, 6, 7]], 8)
    model = build_model("popularity", {}, 8)
    model.fit_counts(split)
    expected = np.log1p(train_item_counts(split).astype(np.float64))
    expected[0] = 0
    np.testing.assert_allclose(model.item_vectors()[:, 0].numpy(), expected, rtol=1e-6)
    assert float(model.item_vectors()[7, 0]) == 0.0  # item 7 is only ever a test target


def test_item_cooc_recommends_what_followed_and_is_exact_at_full_rank():
    # a chain 1 -> 2 -> 3 -> 4 walked by many users: after 2 comes 3
    split = _split([[1, 2, 3, 4, 5, 6]] * 5 + [[2, 3, 4, 5, 6, 1]] * 5, 8)
    model = build_model("item_cooc", {"window": 1, "dim": 8, "decay": 1.0}, 8).eval()
    model.fit_counts(split)
    scores = model.user_vectors(torch.tensor([[0, 1, 2]])) @ model.item_vectors().T
    assert int(scores[0, 1:].argmax()) + 1 == 3
    # at full rank the factors give the normalised co-occurrence exactly
    sim = model.sources @ model.targets.T
    assert float(sim[2, 3]) == pytest.approx(float(sim.max()), rel=1e-4)
    causal = model(torch.tensor([[1, 2, 3]]))  # [1, 3, dim]: position t sums items <= t
    torch.testing.assert_close(causal[0, 1], model.sources[1] + model.sources[2], rtol=1e-5, atol=1e-6)


@needs_data("ml-100k")
@pytest.mark.parametrize("name", ["popularity", "random", "item_cooc"])
def test_baselines_run_from_a_recipe(name, tmp_path):
    from recsys.train import FittedTrainer, load_run, make_trainer

    cfg = load_recipe(REPO / f"recipes/ml-100k/{name}.toml", ["train.num_threads=1"])
    trainer = make_trainer(cfg, tmp_path / name, progress=False)
    assert isinstance(trainer, FittedTrainer) and trainer.optimizer is None
    out = trainer.fit()
    assert out["test"]["num_users"] == 943
    again = load_run(tmp_path / name).evaluate("test")  # the counts are in the checkpoint
    assert again["ndcg@10"] == pytest.approx(out["test"]["ndcg@10"], abs=1e-12)
    if name == "random":
        assert out["test"]["hr@10"] < 0.03  # about 10 / 1,682 plus luck
    else:
        assert out["test"]["hr@10"] > 0.05  # far above random on ML-100K
