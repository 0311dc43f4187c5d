"""Where a full-ranking evaluation's time goes, and how much of it a faster attention could take.

    python benchmarks/eval_breakdown.py RECIPE [--set ...] [--repeats 7] [--log-results]

Trains the recipe's model for one epoch (a trained model's cut-off pass decides users as it would in a
run), then evaluates the test split ``--repeats`` times in three variants, interleaved so that drifts of
the machine hit both alike:

- ``as is``: the evaluator, timed in parts: the encoder (``recsys.evaluation.user_vectors``), the
  batches (histories gathered from the jagged log) and the rest (scores against the catalogue, seen
  items, ranks, metric sums);
- ``PyTorch path``: the same with the fused CPU encoder off (``model.fused_cpu_inference = False``:
  the models' PyTorch ops, the kernel's reference), same metrics to fp32 rounding;
- ``PyTorch path, attention skipped``: that path with every all-position attention of SASRec /
  BERT4Rec blocks replaced by a copy of its queries. The user vectors are then wrong (metrics not
  reported): a timing bound, what that path would take with an attention that costs nothing.

Prints the median seconds of each part and users per second, and the floating-point operations of
the products and attention one evaluation executed (counted, ``benchmarks/flops.py``). With ``--log-results`` one
"eval_breakdown" record goes to benchmarks/results/ (RESULTS.md is built from it).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time

import torch
from flops import count_flops  # benchmarks/ is the script's folder: on sys.path

import recsys.evaluation.full as evaluation  # its module globals are what evaluate() calls
import recsys.models.layers.attention as attention_module
from recsys.config import load_recipe
from recsys.results import append_record, benchmark_command, make_record
from recsys.train import Trainer, prepare_data

# the all-position attention functions of SASRec / BERT4Rec blocks (the last block's last-position
# query stays as is: it is one query per user)
ATTENTION_FUNCTIONS = ("chunked_causal_attention", "grouped_bidirectional_attention")


@contextlib.contextmanager
def timed_parts(parts: dict[str, float]):
    """Adds the seconds spent in the encoder and in producing batches to ``parts`` while active."""
    user_vectors, iter_eval_batches = evaluation.user_vectors, evaluation.iter_eval_batches

    def timed_user_vectors(*args, **kwargs):
        start = time.perf_counter()
        out = user_vectors(*args, **kwargs)
        parts["encoder"] += time.perf_counter() - start
        return out

    def timed_batches(*args, **kwargs):
        batches = iter_eval_batches(*args, **kwargs)
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            parts["batches"] += time.perf_counter() - start
            if batch is None:
                return
            yield batch

    evaluation.user_vectors, evaluation.iter_eval_batches = timed_user_vectors, timed_batches
    try:
        yield
    finally:
        evaluation.user_vectors, evaluation.iter_eval_batches = user_vectors, iter_eval_batches


@contextlib.contextmanager
def pytorch_path(model):
    """The model's PyTorch ops instead of the fused CPU encoder while active."""
    saved = getattr(model, "fused_cpu_inference", False)
    model.fused_cpu_inference = False
    try:
        yield
    finally:
        model.fused_cpu_inference = saved


@contextlib.contextmanager
def attention_skipped(calls: list[int]):
    """Every all-position attention returns a copy of its queries ([B, H, L, d]); counts the calls."""
    saved = {name: getattr(attention_module, name) for name in ATTENTION_FUNCTIONS}

    def skip(q, *args, **kwargs):
        calls[0] += 1
        return q.clone()

    for name in ATTENTION_FUNCTIONS:
        setattr(attention_module, name, skip)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(attention_module, name, fn)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--log-results", nargs="?", const="benchmarks/results", default=None)
    args = p.parse_args(argv)

    cfg = load_recipe(args.recipe, args.set)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    data = prepare_data(cfg.data, verbose=False)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir, data=data, progress=False)
        trainer.train_epoch()
        trainer.evaluate("test")  # warm-up: allocations, thread pool, oneDNN's kernels
        calls = [0]
        model = trainer.model

        @contextlib.contextmanager
        def pytorch_path_attention_skipped():
            with pytorch_path(model), attention_skipped(calls):
                yield

        variants = {
            "as is": contextlib.nullcontext,
            "PyTorch path": lambda: pytorch_path(model),
            "PyTorch path, attention skipped": pytorch_path_attention_skipped,
        }
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        metrics = None
        for _ in range(args.repeats):
            for name, variant in variants.items():
                parts = {"encoder": 0.0, "batches": 0.0}
                with variant(), timed_parts(parts):
                    out = trainer.evaluate("test")
                parts["total"] = out["seconds"]
                parts["rest"] = parts["total"] - parts["encoder"] - parts["batches"]
                runs[name].append(parts)
                if name == "as is":
                    metrics = {k: out[k] for k in ("ndcg@10", "hr@10", "num_users")}
        # the products and attention of one more (untimed) evaluation as is, counted (benchmarks/flops.py)
        _, flops = count_flops(trainer.evaluate, "test")
    if not calls[0]:
        p.error(f"{cfg.model_name}: its evaluation calls none of {ATTENTION_FUNCTIONS}; nothing to skip")

    users = metrics["num_users"]
    rows = []
    print(
        f"\n| {cfg.data.dataset}, {cfg.model_name}, length {cfg.max_seq_len}, {users:,} test users, "
        f"{torch.get_num_threads()} threads, eval.ranks={cfg.eval.ranks} (median of {args.repeats}) "
        f"| evaluation s | encoder s | batches s | scores + ranks s | users/s |"
    )
    print("|---|---|---|---|---|---|")
    for name, parts in runs.items():
        med = {k: statistics.median(r[k] for r in parts) for k in ("total", "encoder", "batches", "rest")}
        spread = (min(r["total"] for r in parts), max(r["total"] for r in parts))
        rows.append(
            {
                "variant": name,
                **{f"{k}_seconds": v for k, v in med.items()},
                "total_seconds_range": spread,
                "users_per_second": users / med["total"],
            }
        )
        print(
            f"| {name} | {med['total']:.3f} ({spread[0]:.3f}-{spread[1]:.3f}) | {med['encoder']:.3f} "
            f"| {med['batches']:.3f} | {med['rest']:.3f} | {users / med['total']:,.0f} |"
        )
    bound = rows[1]["total_seconds"] / rows[2]["total_seconds"]
    print(
        f"\nproducts and attention executed by one evaluation: {flops / 1e9:.2f} GFLOP, "
        f"{flops / 1e9 / rows[0]['total_seconds']:.1f} GFLOP/s at the median time as is"
    )
    print(
        f"\nthe fused CPU encoder: {rows[1]['total_seconds'] / rows[0]['total_seconds']:.2f}x the PyTorch "
        f"path's users/s; on that path an attention that cost nothing would make the evaluation at most "
        f"{bound:.2f}x faster (test NDCG@10 as is: {metrics['ndcg@10']:.4f})"
    )
    if args.log_results:
        append_record(
            make_record(
                "eval_breakdown",
                command=benchmark_command("eval_breakdown", argv),
                recipe=args.recipe,
                dataset=cfg.data.dataset,
                model=cfg.model_name,
                max_seq_len=cfg.max_seq_len,
                ranks=cfg.eval.ranks,
                threads=torch.get_num_threads(),
                repeats=args.repeats,
                num_users=users,
                metrics=metrics,
                rows=rows,
                attention_free_bound=bound,
                eval_flops=flops,
            ),
            args.log_results,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
