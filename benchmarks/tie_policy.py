"""One trained run's test metrics under every tie policy and repeat-target policy, from the same checkpoint:
how much the protocol (not the model) moves the numbers.

    python benchmarks/tie_policy.py runs/s3rec-beauty-ce [RUN_DIR ...] [--log-results]

For each run: test HR@10 / NDCG@10 / MRR with eval.tie_policy = expected (the default), optimistic and
pessimistic, and eval.repeat_targets = exclude (the default) and keep; the number of test targets that
repeat a history item and how many users have any tied item. ``--log-results`` appends one record per run
to benchmarks/results/ (kind "tie_policy").
"""

from __future__ import annotations

import argparse
import shlex
import sys

import torch

from recsys.results import DEFAULT_RESULTS, append_record, benchmark_command, git_commit, make_record
from recsys.train import load_run

POLICIES = [
    ("expected", "exclude"),
    ("optimistic", "exclude"),
    ("pessimistic", "exclude"),
    ("expected", "keep"),
    ("optimistic", "keep"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log-results", nargs="?", const=str(DEFAULT_RESULTS), default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    commit = git_commit()
    for run_dir in args.run_dirs:
        trainer = load_run(run_dir)
        rows = []
        for tie_policy, repeats in POLICIES:
            trainer.cfg.eval.tie_policy, trainer.cfg.eval.repeat_targets = tie_policy, repeats
            out = trainer.evaluate("test", return_ranks=True)
            row = {
                "tie_policy": tie_policy,
                "repeat_targets": repeats,
                **{k: out[k] for k in ("hr@10", "ndcg@10", "mrr")},
            }
            if "ties" in out:
                row["users_with_ties"] = int((out["ties"] > 0).sum())
                row["users_with_ties_in_top10"] = int(((out["ties"] > 0) & (out["ranks"] <= 10)).sum())
            rows.append(row)
            print(
                f"{run_dir}: ties {tie_policy:11s} repeats {repeats:7s} hr@10 {out['hr@10']:.6f} "
                f"ndcg@10 {out['ndcg@10']:.6f} mrr {out['mrr']:.6f}"
            )
        repeat_users = out["repeat_targets"]["users"]
        print(f"{run_dir}: {repeat_users} of {out['num_users']} test targets repeat a history item")
        if args.log_results:
            append_record(
                make_record(
                    "tie_policy",
                    commit=commit,
                    command=benchmark_command("tie_policy", sys.argv[1:]),
                    run_dir=str(run_dir),
                    dataset=trainer.data.info,
                    model=trainer.cfg.model_name,
                    recipe_config=trainer.cfg.to_dict(),
                    num_users=out["num_users"],
                    repeat_targets=repeat_users,
                    rows=rows,
                ),
                args.log_results,
            )
            print(f"appended to {args.log_results}: {shlex.quote(str(run_dir))}")


if __name__ == "__main__":
    main()
