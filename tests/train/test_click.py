"""Click prediction on the shared training loop: per-seed run folders, exact resume, early stopping."""

from __future__ import annotations

import json

import pytest

from recsys.click import load_click_recipe, run_click
from recsys.files import load_checkpoint
from tests.conftest import REPO, needs_data

SMALL = ["data.max_history=30", "train.num_threads=1", "model.embedding_dim=8", "train.batch_size=512"]


@pytest.fixture(scope="module")
def ctr_recipe():
    return REPO / "recipes/taobao/dare.toml"


@needs_data("taobao-userbehavior-sample")
def test_each_seed_is_a_run_folder_and_resume_is_exact(ctr_recipe, tmp_path):
    cfg = load_click_recipe(ctr_recipe, SMALL + ["train.epochs=3", "train.seeds=1"])
    whole = run_click(cfg, tmp_path / "whole", progress=False)
    seed_dir = tmp_path / "whole" / "seed-0"
    for name in ("config.json", "env.json", "metrics.jsonl", "last.pt", "best.pt", "final_metrics.json", "train.log"):
        assert (seed_dir / name).exists(), name
    assert load_checkpoint(seed_dir / "last.pt")["epoch"] == 3
    assert json.loads((seed_dir / "config.json").read_text())["train"]["first_seed"] == 0

    # the same run killed after epoch 1, then resumed: the same best epoch and the same test metrics
    short = load_click_recipe(ctr_recipe, SMALL + ["train.epochs=1", "train.seeds=1"])
    run_click(short, tmp_path / "cut", progress=False)
    (tmp_path / "cut" / "final_metrics.json").unlink()
    (tmp_path / "cut" / "seed-0" / "final_metrics.json").unlink()
    with pytest.raises(FileExistsError, match="use --resume"):
        run_click(cfg, tmp_path / "cut", progress=False)
    resumed = run_click(cfg, tmp_path / "cut", progress=False, resume=True)
    assert resumed["per_seed"][0]["epoch"] == whole["per_seed"][0]["epoch"]
    assert resumed["per_seed"][0]["test"] == whole["per_seed"][0]["test"]
    assert [r["train_loss"] for r in resumed["per_seed"][0]["history"]] == [
        r["train_loss"] for r in whole["per_seed"][0]["history"]
    ]


@needs_data("taobao-userbehavior-sample")
def test_early_stopping_and_a_changed_recipe_on_resume(ctr_recipe, tmp_path):
    # on these small settings validation AUC falls after the first epoch: patience 1 stops the run at 2 of 8
    cfg = load_click_recipe(ctr_recipe, SMALL + ["train.epochs=8", "train.seeds=1", "train.patience=1"])
    out = run_click(cfg, tmp_path / "r", progress=False)
    record = out["per_seed"][0]
    assert record["stopped_early"] and record["epochs_run"] == len(record["history"]) == record["epoch"] + 1 < 8
    changed = load_click_recipe(ctr_recipe, SMALL + ["train.epochs=8", "train.seeds=1", "train.lr=0.1"])
    (tmp_path / "r" / "seed-0" / "final_metrics.json").unlink()
    with pytest.raises(Exception, match=r"train.lr: 0.003 -> 0.1"):
        run_click(changed, tmp_path / "r", progress=False, resume=True)


def test_click_training_settings_are_checked(ctr_recipe):
    from recsys.config import ConfigError

    for bad, msg in (
        ("train.patience=-1", "train.patience must be >= 0"),
        ("train.nonfinite=ignore", "train.nonfinite must be 'stop' or 'skip'"),
        ("train.device=tpu", "train.device must be auto, cpu, cuda or cuda:N"),
    ):
        with pytest.raises(ConfigError, match=msg):
            load_click_recipe(ctr_recipe, [bad])
