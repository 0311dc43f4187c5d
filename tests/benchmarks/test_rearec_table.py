"""benchmarks/rearec_table.py: which runs a table makes and the command of each."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from rearec_table import jobs_for, train_command  # noqa: E402


def test_the_plain_model_runs_once_per_recipe():
    jobs = jobs_for(["a/sasrec", "b/hstu"], ["erl", "prl"], [0, 1, 2])
    assert jobs[:5] == [
        ("a/sasrec", "erl", 0),
        ("a/sasrec", "erl", 1),
        ("a/sasrec", "prl", 1),
        ("a/sasrec", "erl", 2),
        ("a/sasrec", "prl", 2),
    ]
    assert len(jobs) == 10 and sum(k == 0 for _, _, k in jobs) == 2


def test_each_run_sets_its_steps_method_threads_and_device():
    args = argparse.Namespace(seeds=3, device=None, resume=False, log_results="benchmarks/results")
    command, run_dir = train_command(("s3rec-beauty/hstu", "erl", 2), args, 1)
    assert run_dir == Path("runs/rearec/s3rec-beauty-hstu-erl-k2")
    sets = [command[i + 1] for i, w in enumerate(command) if w == "--set"]
    assert sets == ["model.reasoning_steps=2", "model.reasoning_method=erl", "train.num_threads=1"]
    assert command[command.index("--seeds") + 1] == "3" and command[-2:] == ["--log-results", "benchmarks/results"]
    args.device, args.resume = "cuda", True
    command, _ = train_command(("s3rec-beauty/hstu", "erl", 2), args, 4)
    assert "train.device=cuda" in command and "train.num_threads=4" in command and "--resume" in command
