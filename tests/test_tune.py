"""``recsys tune`` on real data: a small study with two workers, a killed search resumed, the best recipe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from recsys.config import ConfigError, load_recipe
from tests.conftest import REPO, needs_data

pytest.importorskip("optuna")

RECIPE = """
[data]
dataset = "ml-100k"
split = "leave_one_out"

[model]
name = "sasrec"
max_seq_len = 20
hidden_dim = 16
num_blocks = 1

[train]
epochs = 3
batch_size = 128
patience = 0

[eval]
ks = [10]

[tune]
trials = 4
epochs = 2
pruner = "median"

[tune.space]
"train.lr" = { low = 1e-3, high = 1e-2, log = true }
"model.dropout" = { low = 0.1, high = 0.5 }
"loss.num_negatives" = { choices = [16, 32], when = { "loss.name" = "sampled_softmax" } }
"""


def _tune(*args, timeout=600, cwd=REPO):
    cmd = [sys.executable, "-m", "recsys.cli", "tune", *map(str, args)]
    env = os.environ.copy()
    if env.get("RECSYS_DATA"):  # a relative data folder is the repository's, wherever the command runs
        env["RECSYS_DATA"] = str((REPO / env["RECSYS_DATA"]).resolve())
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


@needs_data("ml-100k")
def test_a_study_with_two_workers_selects_on_validation_and_writes_the_best_recipe(tmp_path):
    recipe = tmp_path / "small.toml"
    recipe.write_text(RECIPE)
    done = _tune(recipe, "--out", tmp_path / "study", "--workers", "2", "--no-final")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "study" / "summary.json").read_text())
    finished = [t for t in summary["trials"] if t["state"] in ("COMPLETE", "PRUNED")]
    # the study stops starting trials once it holds 4 finished ones; the other worker's last one may finish too
    assert 4 <= len(finished) <= 5
    assert summary["best_valid"] == max(t["value"] for t in summary["trials"] if t["state"] == "COMPLETE")
    assert all("loss.num_negatives" not in t["params"] for t in summary["trials"])  # its condition does not hold
    # no trial read the test split
    for trial in (tmp_path / "study").glob("trial-*"):
        if (trial / "final_metrics.json").exists():
            assert "test" not in json.loads((trial / "final_metrics.json").read_text())
    best = load_recipe(tmp_path / "study" / "best.toml")
    assert best.train.lr == pytest.approx(summary["best_params"]["train.lr"])
    assert best.train.epochs == 3  # the recipe's own schedule for the final run, not the trials' cap
    assert "parameter importances" in done.stdout
    # the finished study summarised again and recorded (no new trial: it holds its 4 finished ones)
    logged = _tune(
        recipe, "--out", tmp_path / "study", "--resume", "--trials", "4", "--no-final", "--log-results", cwd=tmp_path
    )
    assert logged.returncode == 0, logged.stderr[-3000:]
    (record,) = [
        json.loads(line)
        for line in next((tmp_path / "benchmarks" / "results").glob("*.jsonl")).read_text().splitlines()
    ]
    assert record["kind"] == "tune" and record["best_valid"] == summary["best_valid"]
    assert sum(record["trials"].values()) == len(summary["trials"]) and record["trial_seconds"] > 0
    assert record["final_test"] == []  # no final run: nothing was tested


@needs_data("ml-100k")
def test_a_killed_search_resumes(tmp_path):
    recipe = tmp_path / "small.toml"
    recipe.write_text(RECIPE)
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "recsys.cli", "tune", str(recipe), "--out", str(out), "--no-final"]
    process = subprocess.Popen(
        cmd, cwd=REPO, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "trial-001" / "metrics.jsonl").exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # inside the second trial
    process.wait()
    assert not (out / "summary.json").exists()
    again = _tune(recipe, "--out", out, "--no-final")
    assert again.returncode == 2 and "already holds a study" in again.stderr
    resumed = _tune(recipe, "--out", out, "--resume", "--no-final")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    states = [t["state"] for t in json.loads((out / "summary.json").read_text())["trials"]]
    assert states.count("FAIL") == 1 and sum(s in ("COMPLETE", "PRUNED") for s in states) == 4


def test_a_bad_space_is_refused(tmp_path):
    import tomllib

    from recsys.tune import SPACES, tune_settings

    with pytest.raises(ConfigError, match="train.lr: low must be below high"):
        tune_settings({"tune": {"space": {"train.lr": {"low": 1, "high": 0.1}}}})
    with pytest.raises(ConfigError, match=r"\[tune\] unknown key 'trails'"):
        tune_settings({"tune": {"trails": 3}, "model": {"name": "sasrec"}})
    with pytest.raises(ConfigError, match=r"\[tune\] warmup_epochs: a whole number"):
        tune_settings({"tune": {"warmup_epochs": 2.5}, "model": {"name": "sasrec"}})
    assert load_recipe(REPO / "recipes/ml-100k/sasrec.toml")  # recipes with or without [tune] load alike
    sasrec = {"model": {"name": "sasrec"}}
    bad = {
        "model.hidden_dim": ({"low": 0, "high": 3}, r"model.hidden_dim = 0: model.hidden_dim must be >= 1"),
        "model.hiden_dim": ({"choices": [32]}, r"model.hiden_dim = 32: unknown key 'model.hiden_dim'"),
        "train.lr": ({"low": -1.0, "high": 0.1, "log": True}, r"train.lr: a log scale needs low > 0"),
        "model.dropout": ({"choices": []}, r"model.dropout: choices must be a non-empty list"),
        "model.num_blocks": ({"low": 1, "high": 3, "step": 5}, r"model.num_blocks: step must be in \(0, high - low\]"),
        "train.batch_size": ({"choices": [64], "if": "x"}, r"train.batch_size: unknown field\(s\) \['if'\]"),
        "train.weight_decay": (  # a condition on a key that does not exist would never hold
            {"low": 0.0, "high": 0.1, "when": {"model.hiden_dim": 64}},
            r"train.weight_decay: when model.hiden_dim = 64: unknown key 'model.hiden_dim'",
        ),
        "train.epochs": (  # nor one on a value the key cannot take
            {"choices": [5], "when": {"loss.name": "softmax"}},
            r"train.epochs: when loss.name = 'softmax': loss.name: 'softmax' is not allowed",
        ),
    }
    for key, (spec, message) in bad.items():
        with pytest.raises(ConfigError, match=r"\[tune.space\] " + message):
            tune_settings({**sasrec, "tune": {"space": {key: spec}}})
    # a value valid only under its condition is checked under it
    conditional = {"choices": [16, 32], "when": {"loss.name": "sampled_softmax"}}
    assert tune_settings({**sasrec, "tune": {"space": {"loss.in_batch_negatives": conditional}}})
    for recipe in sorted(REPO.glob("recipes/*/*.toml")):  # every shipped space (or built-in one) is valid
        raw = tomllib.loads(recipe.read_text())
        if raw.get("model", {}).get("name") in SPACES or "tune" in raw:
            tune_settings(raw)


def test_the_median_pruner_waits_the_warmup_epochs():
    import optuna

    from recsys.tune import _pruner

    study = optuna.create_study(direction="maximize", pruner=_pruner(optuna, "median", warmup_epochs=8))
    for value in (0.9, 0.8, 0.7):  # three finished trials, each far above the next one at every epoch
        trial = study.ask()
        for epoch in range(1, 11):
            trial.report(value, epoch)
        study.tell(trial, value)
    slow = study.ask()
    slow.report(0.1, 7)
    assert not slow.should_prune()  # epoch 7: still warming up
    slow.report(0.1, 8)
    assert slow.should_prune()  # from epoch 8 on it may be stopped


def test_study_times_leave_out_the_trials_found_dead_later():
    from datetime import datetime, timedelta
    from types import SimpleNamespace

    from recsys.tune import study_times

    t0 = datetime(2026, 12, 7, 1, 0)

    def trial(state, start_min, end_min):
        return SimpleNamespace(
            state=SimpleNamespace(name=state),
            datetime_start=t0 + timedelta(minutes=start_min),
            datetime_complete=None if end_min is None else t0 + timedelta(minutes=end_min),
        )

    trials = [
        trial("COMPLETE", 0, 10),
        trial("PRUNED", 5, 8),
        trial("FAIL", 9, 300),  # killed at once, marked failed by a --resume hours later
        trial("RUNNING", 12, None),
    ]
    assert study_times(trials) == {"study_wall_seconds": 600.0, "trial_seconds": 780.0}
    assert study_times([trial("FAIL", 0, 5)]) == {"study_wall_seconds": None, "trial_seconds": 0}


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--trials", "0"], "--trials must be >= 1, got 0"),
        (["--timeout", "-5"], "--timeout must be > 0, got -5.0"),
        (["--timeout", "nan"], "--timeout must be > 0, got nan"),
        (["--workers", "0"], "--workers must be >= 1, got 0"),
        (["--threads", "-1"], "--threads must be >= 1, got -1"),
        (["--seeds", "0"], "--seeds must be >= 1, got 0"),
    ],
)
def test_bad_tune_flags_are_refused_before_anything_is_written(tmp_path, capsys, flags, message):
    from recsys.cli import main

    # --trials 0 used to mean the default (20 trials): a study ran where none was asked for
    assert main(["tune", "ml-100k/sasrec", "--out", str(tmp_path / "study"), *flags]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert not (tmp_path / "study").exists()
