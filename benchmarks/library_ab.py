"""Hand-written parts against the library they replace, end to end on a shipped recipe: one training epoch
and one test evaluation per process, each part swapped for its library version alone, the processes
alternating (ours, library, ours, library, ...):

    python benchmarks/library_ab.py [--recipe recipes/beauty/sasrec_ce.toml] [--rounds 2] [--threads 2]
                                    [--parts dropout onednn mallopt] [--log-results]

- dropout: recsys.models.dropout (16-bit masks from the C kernels) vs F.dropout
- onednn:  fp32 products through oneDNN (recsys.kernels.onednn) vs torch's (RECSYS_CPU_GEMM=torch)
- mallopt: glibc told to keep freed blocks (recsys.train.retain_freed_memory) vs glibc's defaults
- optimizer: recsys.train.optim.AdamW (torch's step without the wrapper that imports torch._dynamo) vs
  torch.optim.AdamW as it comes

Prints the medians per part and the gain of ours (library seconds / ours - 1); a part stays hand-written
only where that gain is at least 10% (the project's rule). A hand-written AdamW and GELU were measured
this way (benchmarks/RESULTS.md) and replaced by torch's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("dropout", "onednn", "mallopt", "optimizer")

CHILD = r"""
import json, sys, time, torch
part, library, recipe, threads = sys.argv[1], sys.argv[2] == "1", sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
import torch.nn.functional as F
from recsys import train
from recsys.config import load_recipe
if library and part == "dropout":
    import recsys.models.dropout as ours
    import recsys.models.layers.attention as attention

    def library_dropout(x, p, training=True, rescale=True):
        if not training or p == 0.0:
            return x
        y = F.dropout(x, p, True)
        return y if rescale else y * (1.0 - p)

    ours.dropout = attention.dropout = library_dropout
if library and part == "mallopt":
    train.next_item.retain_freed_memory = lambda: False
if library and part == "optimizer":  # torch.optim.AdamW as it comes (its step imports torch._dynamo)
    train.next_item.AdamW = torch.optim.AdamW
cfg = load_recipe(recipe, ["train.epochs=1", "train.patience=0", f"train.num_threads={threads}"])
data = train.prepare_data(cfg.data, verbose=False)
import tempfile
with tempfile.TemporaryDirectory() as tmp:
    trainer = train.Trainer(cfg, tmp + "/run", data=data, progress=False, verbose=False)
    record = trainer.train_epoch()
    trainer.evaluate("test")  # warm-up
    start = time.perf_counter()
    out = trainer.evaluate("test")
    seconds = time.perf_counter() - start
import resource
print(json.dumps({"train_seconds": record["train_seconds"], "train_loss": record["train_loss"],
                  "eval_seconds": seconds, "ndcg@10": out["ndcg@10"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_child(part: str, library: bool, recipe: str, threads: int) -> dict:
    env = dict(os.environ)
    if part == "onednn" and library:
        env["RECSYS_CPU_GEMM"] = "torch"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, part, "1" if library else "0", recipe, str(threads)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/beauty/sasrec_ce.toml")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--log-results", nargs="?", const="benchmarks/results", default=None)
    args = parser.parse_args()
    from recsys.results import append_record, benchmark_command, git_commit, make_record

    commit = git_commit()
    rows = []
    for part in args.parts:
        runs = {False: [], True: []}
        for _ in range(args.rounds):
            for library in (False, True):
                runs[library].append(run_child(part, library, args.recipe, args.threads))
        row = {"part": part}
        for library, name in ((False, "ours"), (True, "library")):
            row[f"{name}_train_seconds"] = statistics.median(r["train_seconds"] for r in runs[library])
            row[f"{name}_eval_seconds"] = statistics.median(r["eval_seconds"] for r in runs[library])
            row[f"{name}_train_runs"] = [round(r["train_seconds"], 2) for r in runs[library]]
            row[f"{name}_eval_runs"] = [round(r["eval_seconds"], 3) for r in runs[library]]
            row[f"{name}_peak_rss_mb"] = statistics.median(r["peak_rss_mb"] for r in runs[library])
        row["train_gain"] = row["library_train_seconds"] / row["ours_train_seconds"] - 1
        row["eval_gain"] = row["library_eval_seconds"] / row["ours_eval_seconds"] - 1
        row["rss_gain"] = row["library_peak_rss_mb"] / row["ours_peak_rss_mb"] - 1
        rows.append(row)
        print(
            f"{part:8s} epoch ours {row['ours_train_seconds']:.2f} s, library {row['library_train_seconds']:.2f} s "
            f"(gain {row['train_gain']:+.1%}); evaluation ours {row['ours_eval_seconds']:.3f} s, library "
            f"{row['library_eval_seconds']:.3f} s (gain {row['eval_gain']:+.1%}); peak RSS ours "
            f"{row['ours_peak_rss_mb']:.0f} MB, library {row['library_peak_rss_mb']:.0f} MB (gain {row['rss_gain']:+.1%})",
            flush=True,
        )
    if args.log_results:
        append_record(
            make_record(
                "library_ab",
                commit=commit,
                command=benchmark_command("library_ab"),
                recipe=args.recipe,
                threads=args.threads,
                rounds=args.rounds,
                rows=rows,
            ),
            args.log_results,
        )


if __name__ == "__main__":
    main()
