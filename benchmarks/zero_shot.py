"""Zero-shot transfer: a text model trained on one dataset ranks another dataset's items from their text.

    python benchmarks/zero_shot.py RUN_DIR --target ml-1m [--log-results]

RUN_DIR holds a trained Recformer-style model (``recsys train recipes/ml-100k/recformer.toml --run-dir
RUN_DIR``). Its weights have no per-item parameters (items are their text vectors through the adapter),
so the same weights are loaded into a model built for the target's catalogue, whose items are encoded
from the target's own text, and evaluated on the target's test split (leave-one-out, all items ranked,
seen items excluded) with no training on the target. Printed next to popularity (counts of the
target's training events: knowledge the zero-shot model does not have) and random scores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recsys.baselines import popularity_scorer, random_scorer
from recsys.config import DataConfig, config_from_dict
from recsys.data.cards import load_item_text
from recsys.evaluation import evaluate
from recsys.models.base import build_model
from recsys.text import item_text_vectors
from recsys.train import load_checkpoint, prepare_data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--target", default="ml-1m")
    p.add_argument("--log-results", nargs="?", const="benchmarks/results", default=None)
    args = p.parse_args(argv)
    state = load_checkpoint(Path(args.run_dir) / "best.pt")
    cfg = config_from_dict(state["config"])
    if not cfg.model_name.startswith("recformer"):
        raise SystemExit(
            f"{args.run_dir}: a {cfg.model_name} model has per-item parameters; zero-shot needs a text model"
        )
    source = cfg.data.dataset
    data = prepare_data(DataConfig(dataset=args.target, split="leave_one_out"), verbose=True)
    split = data.split
    model = build_model(cfg.model_name, cfg.model, split.data.num_items)
    model.set_item_text(item_text_vectors(split.data, load_item_text(args.target)))
    model.load_state_dict(state["model"])  # no tensor depends on the catalogue: the weights carry over as they are
    results = {
        "zero-shot " + source: evaluate(
            model, split, split.test, cfg.max_seq_len, cfg.eval, normalize=cfg.loss.l2_normalize
        )
    }
    seq = split.data
    results["popularity"] = evaluate(popularity_scorer(split), split, split.test, cfg.max_seq_len, cfg.eval)
    results["random"] = evaluate(random_scorer(seq.num_items), split, split.test, cfg.max_seq_len, cfg.eval)
    print(
        f"\ntrained on {source}, evaluated on {args.target} ({len(split.test):,} test users, "
        f"{seq.num_items - 1:,} items) without training there"
    )
    print("| scorer | NDCG@10 | HR@10 |")
    print("|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['ndcg@10']:.4f} | {r['hr@10']:.4f} |")
    if args.log_results:
        from recsys.results import append_record, benchmark_command, make_record

        append_record(
            make_record(
                "zero_shot",
                command=benchmark_command("zero_shot", argv),
                source=source,
                target=args.target,
                model=cfg.model_name,
                test_users=len(split.test),
                items=seq.num_items - 1,
                rows={k: {m: v[m] for m in ("ndcg@10", "hr@10")} for k, v in results.items()},
                source_run=json.loads((Path(args.run_dir) / "final_metrics.json").read_text())["test"],
            ),
            args.log_results,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
