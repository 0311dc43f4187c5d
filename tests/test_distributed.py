"""torchrun with 2 CPU processes (gloo): training runs end to end, and the all-reduced evaluation
equals a single-process evaluation of the same checkpoint."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import REPO, needs_data

SMALL = [
    "model.max_seq_len=20",
    "model.hidden_dim=16",
    "model.num_blocks=1",
    "train.epochs=2",
    "train.patience=0",
    "train.num_threads=1",
    "eval.ks=[1, 10]",
    "eval.early_stopping_metric=ndcg@10",
    "eval.block_size=100",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_data("ml-100k")
def test_two_process_gloo_training_and_reduced_metrics(tmp_path):
    run = tmp_path / "ddp"
    sets = [a for s in SMALL for a in ("--set", s)]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "recsys.cli",
        "train",
        str(REPO / "recipes/ml-100k/sasrec.toml"),
        "--run-dir",
        str(run),
        "--quiet",
        *sets,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["world_size"] == 2 and final["epochs_run"] == 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # written once, by rank 0

    # the same checkpoint evaluated by one process gives the same numbers
    from recsys.train import load_run

    single = load_run(run).evaluate("test")
    for name in ("hr@1", "hr@10", "ndcg@10", "mrr"):
        assert single[name] == pytest.approx(final["test"][name], rel=1e-9, abs=1e-12), name
    assert single["num_users"] == final["test"]["num_users"] == 943

    # legacy sampled metrics: each user's negatives depend on its id alone, so 2 processes give the same
    sampled = ["--set", "eval.sampled_negatives=50", "--set", "eval.negative_sampling=popularity"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "recsys.cli",
        "evaluate",
        str(run),
        *sampled,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sampled metrics (legacy)" in done.stdout
    single = load_run(run, overrides=sampled[1::2]).evaluate("test")
    assert f"ndcg@10={single['ndcg@10']:.4f}" in done.stdout and f"hr@10={single['hr@10']:.4f}" in done.stdout
