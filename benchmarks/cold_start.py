"""Cold start: rank items that no training sequence contains, from their text.

    python benchmarks/cold_start.py [--dataset ml-100k] [--fraction 0.1] [--seed 0] [--log-results]

Holds a random ``fraction`` of the catalogue out of training (recsys.data.splits.hold_out_items: their
events are removed except as users' last, leave-one-out test, events), then trains on the same split
the Recformer-style text model (recipes/<dataset>/recformer.toml) and the ID model SASRec+
(recipes/<dataset>/sasrec.toml) — in training neither sees a held-out item, not even as a softmax
negative — and scores two baselines: popularity (training counts; a held-out
item has none) and random scores. Reports test NDCG@10 / HR@10 on the users whose target is a
held-out item and on the rest (all items ranked, seen items excluded), with training time per epoch.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import torch

from recsys.baselines import popularity_scorer, random_scorer
from recsys.config import load_recipe
from recsys.evaluation import evaluate
from recsys.train import Trainer, prepare_data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", nargs="+", default=["recformer", "sasrec"])
    p.add_argument("--set", action="append", default=[], help="override for both recipes, KEY=VALUE")
    p.add_argument("--log-results", nargs="?", const="benchmarks/results", default=None)
    args = p.parse_args(argv)
    overrides = [f"data.cold_item_fraction={args.fraction}", f"data.cold_item_seed={args.seed}", *args.set]
    rows = []
    data = None
    for name in args.models:
        cfg = load_recipe(f"recipes/{args.dataset}/{name}.toml", overrides)
        data = prepare_data(cfg.data, verbose=data is None)
        with tempfile.TemporaryDirectory() as run_dir:
            out = Trainer(cfg, run_dir, data=data, progress=False).fit()
        epochs = out["epochs_run"]
        rows.append(
            {
                "model": name,
                "recipe": f"recipes/{args.dataset}/{name}.toml",
                "cold": out["test_cold"],
                "warm": out["test_warm"],
                "epochs_run": out["epochs_run"],
                "best_epoch": out["best_epoch"],
                "seconds_per_epoch": out["train_seconds"] / max(epochs, 1),
            }
        )
        print(
            f"{name}: cold NDCG@10 {out['test_cold']['ndcg@10']:.4f}, warm {out['test_warm']['ndcg@10']:.4f} "
            f"({out['epochs_run']} epochs, {rows[-1]['seconds_per_epoch']:.1f} s each)",
            flush=True,
        )
    split = data.split
    baselines = {"popularity": popularity_scorer(split), "random": random_scorer(split.data.num_items)}
    cfg = load_recipe(f"recipes/{args.dataset}/sasrec.toml", overrides)
    for name, scorer in baselines.items():
        parts = {
            part: evaluate(scorer, split, data.test_subset(cold=part == "cold"), cfg.max_seq_len, cfg.eval)
            for part in ("cold", "warm")
        }
        rows.append({"model": name, **parts})
    n_cold = len(data.test_subset(cold=True))
    print(
        f"\n{args.dataset}, {len(data.cold_items):,} items held out ({args.fraction:.0%}), "
        f"{n_cold:,} of {len(split.test):,} test targets are held-out items"
    )
    print("| model | held-out targets NDCG@10 | HR@10 | seen-item targets NDCG@10 | HR@10 | s / epoch |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        spe = f"{r['seconds_per_epoch']:.1f}" if "seconds_per_epoch" in r else ""
        print(
            f"| {r['model']} | {r['cold']['ndcg@10']:.4f} | {r['cold']['hr@10']:.4f} | {r['warm']['ndcg@10']:.4f} "
            f"| {r['warm']['hr@10']:.4f} | {spe} |"
        )
    if args.log_results:
        from recsys.results import append_record, benchmark_command, make_record

        append_record(
            make_record(
                "cold_start",
                command=benchmark_command("cold_start", argv),
                dataset=args.dataset,
                fraction=args.fraction,
                seed=args.seed,
                cold_items=int(len(data.cold_items)),
                cold_targets=n_cold,
                test_targets=len(split.test),
                rows=rows,
                threads=torch.get_num_threads(),
            ),
            args.log_results,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
