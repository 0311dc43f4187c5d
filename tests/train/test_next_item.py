"""Trainer: resumable after SIGKILL with identical final metrics, atomic checkpoints, run-dir files."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.data.readers import DataError
from recsys.train import atomic_torch_save, load_checkpoint
from tests.conftest import REPO, needs_data

SMALL = [
    "model.max_seq_len=30",
    "model.hidden_dim=16",
    "model.num_blocks=1",
    "train.batch_size=8",
    "train.epochs=4",
    "train.patience=0",
    "train.num_threads=1",
    "eval.ks=[10]",
    "eval.early_stopping_metric=ndcg@10",
]


def _train_cmd(run_dir: Path, extra=()) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "recsys.cli",
        "train",
        str(REPO / "recipes/ml-100k/sasrec.toml"),
        "--run-dir",
        str(run_dir),
        "--quiet",
    ]
    for s in SMALL:
        cmd += ["--set", s]
    return cmd + list(extra)


def _run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=os.environ.copy(), timeout=300)


@needs_data("ml-100k")
def test_sigkill_mid_epoch_then_resume_gives_identical_metrics(tmp_path):
    ref = _run(_train_cmd(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    expected = json.loads((tmp_path / "ref" / "final_metrics.json").read_text())

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(run), cwd=REPO, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    log = run / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    time.sleep(0.1)  # inside epoch 3 (about 120 steps of 8 users each, then an evaluation)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(log.read_text().splitlines()) == 2, "the run was not killed mid-epoch 3"
    assert not (run / "final_metrics.json").exists()
    # a half-written temporary file next to the checkpoint is never read
    (run / "last.pt.tmp").write_bytes(b"garbage from a crash")

    resumed = _run(_train_cmd(run, ["--resume"]))
    assert resumed.returncode == 0, resumed.stderr
    got = json.loads((run / "final_metrics.json").read_text())
    for split in ("valid", "test"):
        for metric in ("hr@10", "ndcg@10", "mrr"):
            assert got[split][metric] == expected[split][metric], (split, metric)
    assert got["best_epoch"] == expected["best_epoch"]
    losses = [json.loads(l)["train_loss"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    ref_losses = [json.loads(l)["train_loss"] for l in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert losses == ref_losses
    for name in ("config.json", "best.pt", "last.pt", "learning_curves.png"):
        assert (run / name).exists()


@needs_data("ml-100k")
def test_refuses_to_overwrite_a_run(tmp_path):
    first = _run(_train_cmd(tmp_path / "r", []) + ["--set", "train.epochs=1"])
    assert first.returncode == 0, first.stderr
    again = _run(_train_cmd(tmp_path / "r", []) + ["--set", "train.epochs=1"])
    assert again.returncode == 2 and "already holds a run" in again.stderr


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    atomic_torch_save({"model": {"w": torch.ones(1000)}}, path)
    assert load_checkpoint(path)["model"]["w"].sum() == 1000
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="not a readable recsys checkpoint"):
        load_checkpoint(path)
    assert not (tmp_path / "last.pt.tmp").exists()


def test_checkpoints_refuse_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(DataError):
        load_checkpoint(path)


@needs_data("ml-100k")
@pytest.mark.parametrize(
    "model, extra",
    [
        ("hstu", ["model.num_heads=2", "loss.name=sampled_softmax", "loss.l2_normalize=true", "loss.temperature=0.05"]),
        ("bert4rec", ["model.num_heads=2"]),
        ("hstu", ["model.num_heads=2", "train.ema_decay=0.9"]),  # the averaged copy of another model
    ],
)
def test_every_encoder_trains_through_the_trainer(tmp_path, model, extra):
    from recsys.config import load_recipe
    from recsys.train import Trainer

    overrides = [
        f"model.name={model}",
        "model.max_seq_len=30",
        "model.hidden_dim=16",
        "model.num_blocks=1",
        "train.epochs=2",
        "train.batch_size=128",
        "eval.ks=[10]",
        "model.dropout=0.0",
    ] + extra
    cfg = load_recipe(REPO / "recipes/ml-100k/sasrec.toml", overrides)
    out = Trainer(cfg, tmp_path / model, progress=False).fit()
    history = [json.loads(l) for l in (tmp_path / model / "metrics.jsonl").read_text().splitlines()]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert out["test"]["hr@10"] > 10 / 1682  # better than a random ranking


@needs_data("ml-100k")
def test_bf16_autocast_trains(tmp_path):
    from recsys.config import load_recipe
    from recsys.train import Trainer

    cfg = load_recipe(
        REPO / "recipes/ml-100k/sasrec.toml",
        ["model.max_seq_len=20", "model.hidden_dim=16", "train.epochs=2", "train.precision=bf16", "train.patience=0"],
    )
    out = Trainer(cfg, tmp_path / "bf16", progress=False).fit()
    history = [json.loads(l) for l in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert out["test"]["hr@10"] > 10 / 1682


@needs_data("ml-100k")
def test_resume_may_change_the_schedule_but_not_the_model(tmp_path):
    first = _run(_train_cmd(tmp_path / "r") + ["--set", "train.epochs=1"])
    assert first.returncode == 0, first.stderr
    (tmp_path / "r" / "final_metrics.json").unlink()
    longer = _run(_train_cmd(tmp_path / "r", ["--resume"]) + ["--set", "train.epochs=2"])
    assert longer.returncode == 0, longer.stderr
    assert json.loads((tmp_path / "r" / "final_metrics.json").read_text())["epochs_run"] == 2
    other = _run(_train_cmd(tmp_path / "r", ["--resume"]) + ["--set", "model.hidden_dim=8"])
    assert other.returncode == 2 and "another configuration" in other.stderr
    assert "model.hidden_dim: 16 -> 8" in other.stderr  # each changed key, old and new


@needs_data("ml-100k")
def test_cold_start_items_never_trained_and_reported_apart(tmp_path, capsys):
    """With data.cold_item_fraction the held-out items are neither inputs nor softmax candidates in
    training (an ID model's rows for them keep their initial values) and the test metrics are also
    reported for held-out-item targets and the rest."""
    from recsys.config import load_recipe
    from recsys.train import Trainer, prepare_data

    cfg = load_recipe(
        REPO / "recipes/ml-100k/sasrec.toml",
        [*SMALL, "train.epochs=1", "data.cold_item_fraction=0.1", "data.cold_item_seed=1"],
    )
    data = prepare_data(cfg.data, verbose=False)
    trainer = Trainer(cfg, tmp_path / "run", data=data, progress=False)
    cold = torch.from_numpy(data.cold_items)
    before = trainer.model.item_embedding.weight.detach().clone()
    out = trainer.fit()
    after = trainer.model.item_embedding.weight.detach()
    torch.testing.assert_close(after[cold], before[cold])  # no gradient ever reached them
    assert not torch.allclose(after[1:], before[1:])  # the others trained
    assert out["test_cold"]["num_users"] + out["test_warm"]["num_users"] == out["test"]["num_users"]
    assert out["test_cold"]["num_users"] > 0
    # the CLI evaluates either part of the test split again, with the figures of the run's end
    from recsys.cli import main

    for part in ("test_cold", "test_warm"):
        capsys.readouterr()
        assert main(["evaluate", str(tmp_path / "run"), "--split", part]) == 0
        printed = capsys.readouterr().out
        assert f"{part} (" in printed and f"ndcg@10={out[part]['ndcg@10']:.4f}" in printed


def test_retain_freed_memory_applies_on_glibc_and_yields_to_the_users_settings(monkeypatch):
    import platform

    from recsys.train import retain_freed_memory

    if sys.platform == "linux" and platform.libc_ver()[0] == "glibc":
        assert retain_freed_memory()
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert not retain_freed_memory()


def test_bf16_products_on_a_device_without_bf16_units_are_warned_about(monkeypatch, capsys):
    from recsys import train
    from recsys.config import load_recipe

    cfg = load_recipe(REPO / "recipes/ml-100k/sasrec.toml", ["loss.name=ce", "loss.ce_matmul_dtype=bfloat16"])
    cpu = torch.device("cpu")
    monkeypatch.setattr(train.runtime, "native_bf16", lambda device: False)
    assert train.warn_if_bf16_emulated(cfg, cpu)
    assert "loss.ce_matmul_dtype=bfloat16" in capsys.readouterr().err
    cfg.loss.ce_matmul_dtype = "float32"
    assert not train.warn_if_bf16_emulated(cfg, cpu)  # nothing in bf16: nothing to say
    cfg.train.precision = "bf16"
    assert train.warn_if_bf16_emulated(cfg, cpu)
    assert "train.precision=bf16" in capsys.readouterr().err
    monkeypatch.setattr(train.runtime, "native_bf16", lambda device: True)
    assert not train.warn_if_bf16_emulated(cfg, cpu)


def test_auto_ce_matmul_dtype_takes_bf16_only_on_bf16_units(monkeypatch, capsys):
    from recsys import train
    from recsys.config import load_recipe

    cpu = torch.device("cpu")
    for native, expected in ((False, "float32"), (True, "bfloat16")):
        monkeypatch.setattr(train.runtime, "native_bf16", lambda device, native=native: native)
        cfg = load_recipe(REPO / "recipes/ml-100k/sasrec.toml", ["loss.name=ce", "loss.ce_matmul_dtype=auto"])
        assert train.resolve_ce_matmul_dtype(cfg, cpu)
        assert cfg.loss.ce_matmul_dtype == expected
        assert f"auto: {expected}" in capsys.readouterr().err
        assert not train.warn_if_bf16_emulated(cfg, cpu)  # auto never picks emulated bf16
        assert not train.resolve_ce_matmul_dtype(cfg, cpu)  # already resolved: nothing changes


def test_beauty_recipes_pick_their_logit_dtype_by_the_hardware():
    from recsys.config import load_recipe

    for name in ("sasrec_ce", "bert4rec", "hstu"):
        assert load_recipe(REPO / f"recipes/beauty/{name}.toml").loss.ce_matmul_dtype == "auto"


def test_compile_on_cpu_is_warned_about(capsys):
    from recsys import train
    from recsys.config import load_recipe

    cfg = load_recipe(REPO / "recipes/ml-100k/sasrec.toml", ["train.compile=true"])
    assert train.warn_if_compile_on_cpu(cfg, torch.device("cpu"))
    assert "train.compile=true on CPU" in capsys.readouterr().err
    assert not train.warn_if_compile_on_cpu(cfg, torch.device("cuda"))  # what it is for: no warning
    cfg.train.compile = False
    assert not train.warn_if_compile_on_cpu(cfg, torch.device("cpu"))


def test_a_custom_log_is_prepared_once_and_read_again_when_it_changes(tmp_path, monkeypatch):
    from recsys.config import DataConfig
    from recsys.data import pipeline

    log = tmp_path / "events.csv"
    log.write_text("u,i,t\n" + "".join(f"{u},{(u + k) % 7},{k}\n" for u in range(5) for k in range(4)))
    cfg = DataConfig(
        dataset="custom", path=str(log), reader="table", columns={"user_id": "u", "item_id": "i", "timestamp": "t"}
    )
    first = pipeline.prepare_data(cfg, verbose=False)
    assert first.info["sha256"] == pipeline.sha256_of(log) and first.info["interactions"] == 20
    reads = []
    real_read_table = pipeline.read_table
    monkeypatch.setattr(pipeline, "read_table", lambda *a, **k: reads.append(1) or real_read_table(*a, **k))
    again = pipeline.prepare_data(cfg, verbose=False)  # from the cache: not parsed again
    assert reads == [] and np.array_equal(np.asarray(again.split.data.item_ids), np.asarray(first.split.data.item_ids))
    log.write_text(log.read_text() + "5,1,9\n5,2,10\n5,3,11\n")  # another file: parsed again
    assert pipeline.prepare_data(cfg, verbose=False).info["interactions"] == 23 and reads == [1]
    cfg.columns = {"user_id": "i", "item_id": "u", "timestamp": "t"}  # other reader settings: parsed again
    pipeline.prepare_data(cfg, verbose=False)
    assert reads == [1, 1]


def test_a_time_bias_on_a_log_without_timestamps_is_warned_about(tmp_path, capsys):
    from recsys.config import load_recipe
    from recsys.train import Trainer, prepare_data

    log = tmp_path / "seqs.txt"  # `user item item ...`: file order, no timestamps
    log.write_text("".join(f"{u} " + " ".join(str((u + k) % 9 + 1) for k in range(5)) + "\n" for u in range(6)))
    cfg = load_recipe(REPO / "recipes/ml-1m/hstu.toml", ["model.max_seq_len=8", "model.hidden_dim=8"])
    cfg.data.dataset, cfg.data.path, cfg.data.reader, cfg.data.split = (
        "custom",
        str(log),
        "user_sequence_lines",
        "leave_one_out",
    )
    Trainer(cfg, tmp_path / "run", data=prepare_data(cfg.data, verbose=False), progress=False)
    assert "model.use_time_bias with custom, which has no timestamps" in capsys.readouterr().err


def test_item_frequencies_for_logq_count_training_events_only():
    import polars as pl

    from recsys.data.prepare import prepare_sequences
    from recsys.data.readers import frame_to_interactions
    from recsys.data.splits import make_split
    from recsys.train import training_item_frequency

    # user a: 1 2 3 4 -> training 1 2, validation 3, test 4; user b: 1 1 5 -> training 1
    df = pl.DataFrame({"u": ["a"] * 4 + ["b"] * 3, "i": [1, 2, 3, 4, 1, 1, 5], "t": [0, 1, 2, 3, 0, 1, 2]})
    seq = prepare_sequences(
        frame_to_interactions(df, {"user_id": "u", "item_id": "i", "timestamp": "t"}), verbose=False
    )
    frequency = training_item_frequency(make_split(seq, "leave_one_out", verbose=False))
    by_raw = {int(seq.item_raw_ids[i]): float(frequency[i]) for i in range(1, seq.num_items)}
    assert by_raw == pytest.approx({1: 2 / 3, 2: 1 / 3, 3: 0.0, 4: 0.0, 5: 0.0})


@needs_data("ml-100k")
def test_packed_training_forward_gives_the_padded_epoch(tmp_path):
    """Full-CE SASRec trains on the real positions alone (``forward(packed=True)``): without dropout an
    epoch from the same start has the same loss and targets as the padded forward's, to fp32 rounding,
    so the trainer lines the packed hidden states up with their targets."""
    from recsys.config import load_recipe
    from recsys.train import Trainer, prepare_data

    cfg = load_recipe(REPO / "recipes/ml-100k/sasrec.toml", [*SMALL, "train.epochs=1", "model.dropout=0.0"])
    data = prepare_data(cfg.data, verbose=False)
    epochs = {}
    for packed in (True, False):
        trainer = Trainer(cfg, tmp_path / str(packed), data=data, progress=False)
        assert trainer.model.packed_forward_available
        trainer.model.packed_forward_available = packed
        epochs[packed] = trainer.train_epoch()
    assert epochs[True]["train_targets"] == epochs[False]["train_targets"] > 0
    assert epochs[True]["train_loss"] == pytest.approx(epochs[False]["train_loss"], rel=1e-4)


@needs_data("ml-100k")
def test_a_diverging_run_stops_naming_epoch_and_step(tmp_path):
    """lr = 1e6 made the loss NaN; before, the run went on and reported HR@10 = 1.0 with exit code 0."""
    run = _run(_train_cmd(tmp_path / "r") + ["--set", "train.lr=1e6", "--set", "train.epochs=2"])
    assert run.returncode == 2, run.stderr
    assert "became nan at epoch 1, step" in run.stderr or "became inf at epoch 1, step" in run.stderr
    assert not (tmp_path / "r" / "final_metrics.json").exists()
    log = (tmp_path / "r" / "train.log").read_text()  # the error is in the run's own record too
    assert "TrainingDivergedError" in log


@needs_data("ml-100k")
def test_skipping_non_finite_steps_is_an_option(tmp_path, monkeypatch):
    from recsys import train
    from recsys.config import load_recipe

    cfg = load_recipe(REPO / "recipes/ml-100k/sasrec.toml", SMALL + ["train.epochs=1", "train.nonfinite=skip"])
    trainer = train.Trainer(cfg, tmp_path / "r", data=train.prepare_data(cfg.data, verbose=False), progress=False)
    real_loss, calls = train.next_item.next_item_loss, []

    def sometimes_nan(*args, **kwargs):  # every third step's loss is NaN
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) % 3 == 0 else loss

    monkeypatch.setattr(train.next_item, "next_item_loss", sometimes_nan)
    record = trainer.train_epoch()
    assert record["skipped_steps"] == len(calls) // 3 and record["skipped_steps"] > 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert np.isfinite(record["train_loss"])
    cfg.train.nonfinite = "stop"
    calls.clear()
    with pytest.raises(train.TrainingDivergedError, match=r"epoch 1, step 3 of"):
        trainer.train_epoch()


@needs_data("ml-100k")
def test_a_run_keeps_its_log_and_environment_under_quiet(tmp_path):
    run = _run(_train_cmd(tmp_path / "r") + ["--set", "train.epochs=1"])
    assert run.returncode == 0, run.stderr
    log = (tmp_path / "r" / "train.log").read_text()
    assert "epoch   1" in log and "test (best epoch 1 of 1)" in log and "ties: expected" in log
    assert "epoch   1" not in run.stdout  # --quiet silenced the terminal, not the log
    env = json.loads((tmp_path / "r" / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["data"]["sha256"] and env["config"]["train"]["epochs"] == 1
    assert env["threads"] == 1 and "python" in env and "machine" in env


@needs_data("ml-100k")
def test_a_damaged_best_checkpoint_is_refused_by_evaluate(tmp_path):
    from recsys.cli import main

    run = _run(_train_cmd(tmp_path / "r") + ["--set", "train.epochs=1"])
    assert run.returncode == 0, run.stderr
    best = tmp_path / "r" / "best.pt"
    state = torch.load(best, weights_only=True)
    state["model"]["item_embedding.weight"].zero_()  # the digest kept, the table zeroed
    torch.save(state, best)
    ev = _run([sys.executable, "-m", "recsys.cli", "evaluate", str(tmp_path / "r")])
    assert ev.returncode == 2 and "does not match the hash recorded" in ev.stderr
    (tmp_path / "r" / "config.json").write_text("{not json")
    assert main(["evaluate", str(tmp_path / "r")]) == 2


@needs_data("ml-100k")
def test_a_config_edited_after_training_is_refused_naming_the_setting(tmp_path, capsys):
    from recsys.cli import main

    run = _run(_train_cmd(tmp_path / "r") + ["--set", "train.epochs=1"])
    assert run.returncode == 0, run.stderr
    config = tmp_path / "r" / "config.json"
    edited = json.loads(config.read_text())
    width = edited["model"]["hidden_dim"]
    edited["model"]["hidden_dim"] = 2 * width
    config.write_text(json.dumps(edited))
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "best.pt holds a model of other settings than" in err and f"model.hidden_dim: {width} -> {2 * width}" in err


@needs_data("ml-100k")
def test_a_damaged_prepared_cache_is_rebuilt_with_a_note(tmp_path, monkeypatch, capsys):
    from recsys import train
    from recsys.config import DataConfig

    monkeypatch.setenv("RECSYS_CACHE", str(tmp_path / "cache"))
    cfg = DataConfig(dataset="ml-100k")
    first = train.prepare_data(cfg, verbose=False)
    (folder,) = (tmp_path / "cache" / "prepared").iterdir()
    items = folder / "item_ids.npy"
    for damage in ("truncate", "alter"):
        data = bytearray(items.read_bytes())
        if damage == "truncate":
            items.write_bytes(bytes(data[: len(data) // 2]))
        else:
            data[-8:] = (7).to_bytes(8, "little")  # the last event's item id changed
            items.write_bytes(bytes(data))
        capsys.readouterr()
        again = train.prepare_data(cfg, verbose=False)
        assert "prepared-data cache is not usable" in capsys.readouterr().err
        assert np.array_equal(np.asarray(again.split.data.item_ids), np.asarray(first.split.data.item_ids))
    train.prepare_data(cfg, verbose=False)  # rebuilt: read quietly from the cache again
    assert "not usable" not in capsys.readouterr().err


def test_a_second_train_on_the_same_run_dir_fails_at_once(tmp_path):
    hold = (
        "import sys, time\nfrom recsys.files import RunLock\nwith RunLock(sys.argv[1]):\n"
        "    print('held', flush=True)\n    time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(tmp_path / "r")], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        second = _run(_train_cmd(tmp_path / "r"))
        assert second.returncode == 2 and f"in use by pid {holder.pid}" in second.stderr
        assert not (tmp_path / "r" / "config.json").exists()  # nothing of the second run was written
    finally:
        holder.kill()
        holder.wait()


@needs_data("ml-100k")
def test_a_python_api_run_keeps_its_log_too(tmp_path, capsys):
    from recsys import train
    from recsys.config import load_recipe

    cfg = load_recipe(REPO / "recipes/ml-100k/sasrec.toml", SMALL + ["train.epochs=1"])
    trainer = train.Trainer(cfg, tmp_path / "r", data=train.prepare_data(cfg.data, verbose=False), progress=False)
    trainer.fit()
    assert "epoch   1" not in capsys.readouterr().out  # quiet on the terminal
    log = (tmp_path / "r" / "train.log").read_text()
    assert "epoch   1  loss" in log and "ml-100k: 943 users, 1,682 items" in log  # the epochs and the data
    assert (tmp_path / "r" / "env.json").exists()


def test_learning_curves_mark_the_best_epoch_and_need_no_matplotlib(tmp_path, monkeypatch, capsys):
    from recsys.train import plot_learning_curves

    history = [{"epoch": e, "train_loss": 9 - e, "valid": {"ndcg@10": v}} for e, v in [(1, 0.1), (2, 0.3), (3, 0.2)]]
    assert plot_learning_curves(history, tmp_path / "c.png", "ndcg@10", title="sasrec on x", best_epoch=2)
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    assert not plot_learning_curves(history, tmp_path / "d.png", "ndcg@10")
    assert "matplotlib is not installed" in capsys.readouterr().err and not (tmp_path / "d.png").exists()


def test_histories_too_short_to_train_on_are_named_before_a_model_is_built(tmp_path):
    import pandas as pd

    import recsys

    three_each = pd.DataFrame({"user_id": [1, 1, 1, 2, 2, 2], "item_id": [1, 2, 3, 1, 2, 3]})
    for model in ("sasrec", "bert4rec"):  # leave-one-out keeps one training event a user: no pair
        with pytest.raises(DataError, match=r"no user has two or more training events under data.split = "):
            recsys.fit(three_each, model, epochs=1, run_dir=tmp_path / model, progress=False)
        assert not (tmp_path / model / "last.pt").exists()
    counts = recsys.fit(three_each, "popularity", run_dir=tmp_path / "popularity", progress=False)
    assert counts.evaluate("test")["num_users"] == 2  # one training event a user is enough to count
