"""The shared training loop: the moving average of the weights (``train.ema_decay``)."""

import json

import pytest
import torch

from recsys import train
from recsys.config import ConfigError, load_recipe
from recsys.train import load_checkpoint
from tests.conftest import REPO, needs_data
from tests.train.test_next_item import SMALL, _run, _train_cmd


def _trainer(tmp_path, extra=()):
    cfg = load_recipe(REPO / "recipes/ml-100k/sasrec.toml", SMALL + list(extra))
    return train.Trainer(cfg, tmp_path / "r", data=train.prepare_data(cfg.data, verbose=False), progress=False)


@needs_data("ml-100k")
def test_the_average_follows_each_step_with_the_decay(tmp_path):
    decay = 0.9
    trainer = _trainer(tmp_path, ["train.ema_decay=0.9", "train.epochs=1"])
    after_steps: list[list[torch.Tensor]] = []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        out = step(*args, **kwargs)
        after_steps.append([p.detach().clone() for p in trainer.model.parameters()])
        return out

    trainer.optimizer.step = recording_step
    trainer.train_epoch()
    assert len(after_steps) > 10
    expected = after_steps[0]  # the first step copies, every later one blends
    for params in after_steps[1:]:
        expected = [decay * e + (1 - decay) * p for e, p in zip(expected, params, strict=True)]
    averaged = list(trainer.ema.module.parameters())
    for e, a in zip(expected, averaged, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    trained = after_steps[-1]
    assert any(not torch.equal(a, t) for a, t in zip(averaged, trained, strict=True))

    # evaluated_weights: the average inside, the trained weights again after (also on an error)
    with trainer.evaluated_weights():
        for p, a in zip(trainer.model.parameters(), averaged, strict=True):
            assert torch.equal(p, a)
    with pytest.raises(RuntimeError), trainer.evaluated_weights():
        raise RuntimeError("validation failed")
    for p, t in zip(trainer.model.parameters(), trained, strict=True):
        assert torch.equal(p, t)


@needs_data("ml-100k")
def test_without_averaging_the_evaluated_weights_are_the_trained_ones(tmp_path):
    trainer = _trainer(tmp_path, ["train.epochs=1"])
    assert trainer.ema is None
    trainer.train_epoch()
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with trainer.evaluated_weights():
        assert all(torch.equal(p, b) for p, b in zip(trainer.model.parameters(), before, strict=True))


@needs_data("ml-100k")
def test_a_resumed_run_with_averaging_ends_like_an_uninterrupted_one(tmp_path):
    ema = ["--set", "train.ema_decay=0.95"]
    whole = _run(_train_cmd(tmp_path / "whole") + ema + ["--set", "train.epochs=2"])
    assert whole.returncode == 0, whole.stderr
    first = _run(_train_cmd(tmp_path / "r") + ema + ["--set", "train.epochs=1"])
    assert first.returncode == 0, first.stderr
    assert "ema" in load_checkpoint(tmp_path / "r" / "last.pt")
    (tmp_path / "r" / "final_metrics.json").unlink()
    resumed = _run(_train_cmd(tmp_path / "r", ["--resume"]) + ema + ["--set", "train.epochs=2"])
    assert resumed.returncode == 0, resumed.stderr
    expected = json.loads((tmp_path / "whole" / "final_metrics.json").read_text())
    got = json.loads((tmp_path / "r" / "final_metrics.json").read_text())
    for split in ("valid", "test"):
        for metric in ("hr@10", "ndcg@10", "mrr"):
            assert got[split][metric] == expected[split][metric], (split, metric)
    assert got["best_epoch"] == expected["best_epoch"]
    # the model tested is the average: best.pt holds the averaged weights of its epoch
    best = load_checkpoint(tmp_path / "whole" / "best.pt")
    last = load_checkpoint(tmp_path / "whole" / "last.pt")
    if best["epoch"] == 2:
        name = "item_embedding.weight"
        torch.testing.assert_close(best["model"][name], last["ema"][f"module.{name}"])
        assert not torch.equal(best["model"][name], last["model"][name])


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_a_decay_outside_zero_one_is_a_config_error(decay):
    with pytest.raises(ConfigError, match=r"train.ema_decay"):
        load_recipe(REPO / "recipes/ml-100k/sasrec.toml", [f"train.ema_decay={decay}"])


@needs_data("ml-100k")
def test_an_average_longer_than_ten_epochs_is_warned_about(tmp_path, capsys):
    _trainer(tmp_path, ["train.batch_size=128", "train.ema_decay=0.999"])  # 943 users: 8 steps an epoch
    err = capsys.readouterr().err
    assert "train.ema_decay=0.999 averages over about 1,000 steps, 125 epochs" in err
    assert "0.9583 averages over 3 epochs" in err
    _trainer(tmp_path, ["train.batch_size=128", "train.ema_decay=0.95"])
    assert "ema_decay" not in capsys.readouterr().err
