"""DARE's attention-dimension sweep: AUC and stage-1 search time for attention tables of full, 1/2 and 1/4
of the representation dimension (the paper's claim: a smaller attention table searches faster at little
AUC cost).

    python benchmarks/dare_sweep.py recipes/taobao/dare.toml [--seeds 5] [--history 1000] [--log-results]

AUC / GAUC: mean and spread over seeds (test split at the best validation epoch). Search time: stage 1
alone (scores of every behaviour against the target with the attention embeddings, then top-k) for a
batch of 256 histories of ``--history`` behaviours, median of 20 runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from recsys.click import load_click_recipe, run_click
from recsys.models.ctr_base import build_ctr_model, top_k_search
from recsys.results import append_record, benchmark_command, git_commit, make_record


def stage1_ms(model, num_items: int, num_categories: int, history: int, batch: int = 256, reps: int = 20) -> float:
    g = torch.Generator().manual_seed(0)
    items = torch.randint(1, num_items, (batch, history), generator=g)
    cats = torch.randint(1, num_categories + 1, (batch, history), generator=g)
    target, target_cat = items[:, 0].clone(), cats[:, 0].clone()
    times = []
    with torch.no_grad():
        for _ in range(reps + 3):
            start = time.perf_counter()
            h = model.attention(items, cats)
            t = model.attention(target, target_cat)
            scores = (h @ t.unsqueeze(-1)).squeeze(-1)
            top_k_search(scores, items != 0, model.cfg.top_k)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[3:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--history", type=int, default=1000)
    p.add_argument("--log-results", nargs="?", const="benchmarks/results", default=None)
    args = p.parse_args(argv)
    commit = git_commit()
    base = load_click_recipe(args.recipe)
    full = base.model.embedding_dim
    rows = []
    print(f"{'attention dim':>14} {'test AUC':>18} {'test GAUC':>18} {'stage-1 ms':>11}")
    for dim in (full, full // 2, full // 4):
        cfg = load_click_recipe(args.recipe, [f"model.attention_dim={dim}", f"train.seeds={args.seeds}"])
        out = run_click(cfg, f"runs/dare-sweep-{dim}", progress=False)
        s = out["summary"]
        model = build_ctr_model("dare", cfg.model, 100_000, 1000)
        ms = stage1_ms(model, 100_000, 1000, args.history)
        rows.append({"attention_dim": dim, "stage1_ms": ms, **s})
        print(
            f"{dim:>14} {s['test_auc_mean']:.4f} ± {s['test_auc_std']:.4f} {s['test_gauc_mean']:.4f} ± "
            f"{s['test_gauc_std']:.4f} {ms:11.2f}",
            flush=True,
        )
    if args.log_results:
        append_record(
            make_record(
                "dare_sweep",
                commit=commit,
                recipe=args.recipe,
                seeds=args.seeds,
                history=args.history,
                rows=rows,
                command=benchmark_command("dare_sweep", argv),
            ),
            args.log_results,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
