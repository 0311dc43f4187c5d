"""Ours against RecBole 1.2.1 on the same machine in the same run: SASRec or BERT4Rec, full CE, same data and split.

    python benchmarks/peer_recbole.py [--model sasrec|bert4rec] [--dataset beauty|ml-1m|s3rec-beauty] [--epochs 1]
                                      [--recbole-batches 0] [--max-len 50] [--threads 2]
                                      [--ce-dtype float32|bfloat16] [--our-batch-size 128]
                                      [--equal-targets] [--eval-repeats 3] [--log-results]

Installs RecBole in its own virtual environment (.venv-recbole: torch as TORCH_SPEC, default
torch==2.13.0, and RecBole 1.2.1, which needs numpy < 2: it assigns ``np.float = np.float_`` at start-up),
writes the dataset as RecBole's atomic file in our prepared order (each event's timestamp is its
index in the user's sequence, so both sides see the same order), and runs, each in a fresh process
(so peak memory is its own) and one after the other (so neither slows the other):

- RecBole's SASRec or BERT4Rec (CE loss over all items, ``LS: valid_and_test``, full-sort evaluation,
  which masks the user's history as ours does with exclude_seen) for ``--epochs`` epochs, or
  ``--recbole-batches`` batches when an epoch would take too long (ML-1M at length 200);
- ours: the same model size, max length, batch size, loss and (BERT4Rec) mask probability, from the
  dataset's recipe with overrides, for ``--epochs`` epochs; the learning rate is 0.001 on both sides
  unless ``--lr`` / ``--recbole-lr`` say otherwise. A batch of 128 is 128 prefix samples (128 targets)
  for RecBole's SASRec and 128 whole sequences (~720 targets on Beauty) for ours, so at equal targets
  ours makes ~5.7x fewer updates; ``--lr`` lets our side take larger ones. On ML-1M at length 200 a batch
  of 128 sequences is ~13,000 targets, ~100x fewer updates than RecBole at equal targets;
  ``--our-batch-size 2`` (~210 targets per update) gives our side about RecBole's targets per update
  (RecBole keeps 128 prefix samples, i.e. 128 targets). Our evaluation ranks
  exactly up to rank 20 (``eval.ranks=cutoff``: the same HR/NDCG@k, RecBole's full-sort evaluation
  computes only top-k metrics as well); the same test set is then evaluated once more with every exact
  rank (``eval.ranks=all``, uncut MRR), after peak memory was read, and printed as a second row. ``--ce-dtype``
  sets our logit GEMMs' dtype (default: the recipe's; bf16 products accumulate in fp32); RecBole
  computes in fp32.

Each side's test evaluation is timed ``--eval-repeats`` times (3 by default; ours: the one at the end of
its run and two more) and the median is reported: one evaluation of ~0.15 s (ML-1M) varied by half
between runs on a 2-core VM. Peak memory is read before the repeats.

Prints training targets per second (RecBole's SASRec trains one target per prefix sample, ours every
position of a window; BERT4Rec on both sides trains the masked positions: targets, not epochs, are
compared), full-evaluation users per second, peak RSS and test NDCG@10, as ratios ours / RecBole.
NDCG@10 is compared only when both trained on about the same number of targets: whole epochs on both
sides (SASRec: one target per position on our side, per prefix sample on RecBole's, so the same count),
or ``--equal-targets``, which runs ours first and stops RecBole once it has trained as many targets
(BERT4Rec: RecBole's prefix samples hold ~5x the masked positions of our epoch).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-recbole"
RECBOLE_PINS = ["recbole==1.2.1", "numpy==1.26.4", "pandas==2.2.3", "scipy<1.14"]
RECIPES = {
    ("beauty", "sasrec"): "recipes/beauty/sasrec_ce.toml",
    ("ml-1m", "sasrec"): "recipes/ml-1m/sasrec.toml",
    ("beauty", "bert4rec"): "recipes/beauty/bert4rec.toml",
    ("ml-1m", "bert4rec"): "recipes/ml-1m/bert4rec.toml",
    ("s3rec-beauty", "sasrec"): "recipes/s3rec-beauty/sasrec_ce.toml",
}
# the model shape both sides use: heads, feed-forward width (x hidden), dropout
SHAPES = {"sasrec": (1, 1, 0.5), "bert4rec": (2, 4, 0.2)}


def ensure_recbole() -> Path:
    python = VENV / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import recbole"], capture_output=True).returncode == 0:
        return python
    print(f"installing RecBole into {VENV.name} (torch as TORCH_SPEC, then {' '.join(RECBOLE_PINS)})", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    torch_spec = os.environ.get("TORCH_SPEC", "torch==2.13.0")
    subprocess.run([python, "-m", "pip", "install", "-q", torch_spec], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *RECBOLE_PINS], check=True)
    return python


def write_atomic(seq, folder: Path, name: str) -> None:
    """user_id, item_id, timestamp (= index in the user's sequence) as RecBole's .inter file."""
    import numpy as np
    import polars as pl

    lengths = np.diff(seq.seq_offsets)
    user = np.repeat(np.arange(seq.num_users), lengths)
    index = np.arange(seq.num_interactions) - np.repeat(seq.seq_offsets[:-1], lengths)
    (folder / name).mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame(
        {"user_id:token": user, "item_id:token": np.asarray(seq.item_ids), "timestamp:float": index.astype(np.float64)}
    )
    frame.write_csv(folder / name / f"{name}.inter", separator="\t")


def ours(recipe: str, overrides: list[str], threads: int, eval_repeats: int = 1) -> dict:
    code = f"""
import json, resource, statistics, sys, torch
torch.set_num_threads({threads})
from recsys.config import load_recipe
from recsys.train import Trainer, prepare_data
import tempfile
cfg = load_recipe({recipe!r}, {overrides!r})
data = prepare_data(cfg.data, verbose=False)
with tempfile.TemporaryDirectory() as run_dir:
    trainer = Trainer(cfg, run_dir, data=data, progress=False)
    out = trainer.fit()
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # the test evaluation {eval_repeats} times in all (fit's one included): the median is reported
    each = [out["test"]["seconds"]] + [trainer.evaluate("test")["seconds"] for _ in range({eval_repeats} - 1)]
    out["test"]["seconds"], out["test"]["seconds_each"] = statistics.median(each), each
    sys.path.insert(0, "benchmarks")
    from flops import count_flops
    _, eval_flops = count_flops(trainer.evaluate, "test")  # the timed evaluation's products and attention
    trainer.cfg.eval.ranks = "all"  # the same test set with every exact rank (uncut MRR), for the record
    runs = [trainer.evaluate("test") for _ in range({eval_repeats})]
    every_rank = runs[0]
    every_rank["seconds_each"] = [r["seconds"] for r in runs]
    every_rank["seconds"] = statistics.median(every_rank["seconds_each"])
print(json.dumps({{"test": out["test"], "test_every_rank": every_rank, "epochs_run": out["epochs_run"],
                  "train_seconds": out["train_seconds"], "train_targets": sum(h["train_targets"] for h in trainer.history),
                  "peak_rss_mb": peak_rss_mb, "eval_flops": eval_flops}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="sasrec", choices=sorted(SHAPES))
    p.add_argument("--dataset", default="beauty", choices=sorted({d for d, _ in RECIPES}))
    p.add_argument("--mask-prob", type=float, default=0.2, help="BERT4Rec: masking probability on both sides")
    p.add_argument(
        "--ce-dtype",
        default=None,
        choices=["float32", "bfloat16"],
        help="ours: logit GEMM dtype (default: the recipe's; the Beauty recipes use auto: bfloat16 on bf16 units)",
    )
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.001, help="our learning rate (RecBole's default is 0.001)")
    p.add_argument("--recbole-lr", type=float, default=0.001, help="RecBole's learning rate")
    p.add_argument(
        "--recbole-batches", type=int, default=0, help="stop RecBole after this many batches (0: whole epochs)"
    )
    p.add_argument(
        "--equal-targets",
        action="store_true",
        help="run ours first, then stop RecBole once it has trained as many targets (NDCG compared)",
    )
    p.add_argument(
        "--our-batch-size",
        type=int,
        default=128,
        help="our batch in sequences (RecBole's stays 128 prefix samples = 128 targets)",
    )
    p.add_argument("--max-len", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--eval-repeats",
        type=int,
        default=3,
        help="time each side's test evaluation this many times and report the median (one ~0.15 s "
        "evaluation varied by half between runs on a 2-core VM)",
    )
    p.add_argument("--log-results", nargs="?", const="benchmarks/results", default=None)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch

    from recsys.config import load_recipe
    from recsys.train import prepare_data, resolve_ce_matmul_dtype

    if (args.dataset, args.model) not in RECIPES:
        p.error(f"no {args.model} recipe for {args.dataset}: one of {sorted(RECIPES)}")
    recipe = RECIPES[args.dataset, args.model]
    hidden = 64
    heads, ffn_mult, dropout = SHAPES[args.model]
    overrides = [
        f"model.hidden_dim={hidden}",
        "model.num_blocks=2",
        f"model.num_heads={heads}",
        f"model.dropout={dropout}",
        "loss.name=ce",
        "loss.l2_normalize=false",
        "loss.temperature=1.0",
        "data.split=leave_one_out",
        f"train.batch_size={args.our_batch_size}",
        f"train.lr={args.lr}",
        f"train.epochs={args.epochs}",
        "train.patience=0",
        f"train.num_threads={args.threads}",
        "eval.ranks=cutoff",
    ]
    if args.model == "bert4rec":
        overrides += [f"model.mask_prob={args.mask_prob}", f"model.ffn_dim={ffn_mult * hidden}"]
    if args.ce_dtype:
        overrides.append(f"loss.ce_matmul_dtype={args.ce_dtype}")
    if args.max_len:  # else the recipe's: 50 on the Beauty files, 200 on ML-1M
        overrides.append(f"model.max_seq_len={args.max_len}")
    cfg = load_recipe(recipe, overrides)
    max_len = cfg.max_seq_len
    resolve_ce_matmul_dtype(cfg, torch.device("cpu"))  # "auto" (Beauty recipes): what our run will use
    ce_dtype = cfg.loss.ce_matmul_dtype
    python = ensure_recbole()

    def run_ours() -> dict:
        print(f"ours on {args.dataset} ...", flush=True)
        return ours(recipe, overrides, args.threads, args.eval_repeats)

    # --equal-targets: ours first, so RecBole can stop at as many targets (to the batch)
    mine = run_ours() if args.equal_targets else None
    with tempfile.TemporaryDirectory() as tmp:
        seq = prepare_data(cfg.data, verbose=False).split.data
        write_atomic(seq, Path(tmp), args.dataset)
        child_args = {
            "model": args.model,
            "data_path": tmp,
            "dataset": args.dataset,
            "hidden_dim": hidden,
            "ffn_dim": ffn_mult * hidden,
            "num_blocks": 2,
            "num_heads": heads,
            "dropout": dropout,
            "mask_prob": args.mask_prob,
            "max_len": max_len,
            "batch_size": 128,
            "lr": args.recbole_lr,
            "epochs": args.epochs,
            "seed": 42,
            "max_batches": args.recbole_batches,
            "max_targets": mine["train_targets"] if mine else 0,
            "eval_repeats": args.eval_repeats,
        }
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        print(
            f"RecBole 1.2.1 {args.model} on {args.dataset} ({seq.num_users:,} users, {seq.num_items - 1:,} items), "
            f"max length {max_len}, {args.threads} threads ...",
            flush=True,
        )
        done = subprocess.run(
            [python, str(ROOT / "benchmarks" / "peer_recbole_child.py"), json.dumps(child_args)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp,
        )
        if done.returncode:
            print(done.stderr[-3000:])
            return done.returncode
        theirs = json.loads(done.stdout.strip().splitlines()[-1])
    if mine is None:
        mine = run_ours()
    our_targets = mine["train_targets"]  # every position of each user's training window, counted by the trainer
    their_users_per_second = theirs["eval_users"] / theirs["eval_seconds"] if theirs["eval_users"] else float("nan")
    rows = {
        "training targets": (our_targets, theirs["train_targets"]),
        "training targets / s": (our_targets / mine["train_seconds"], theirs["targets_per_second"]),
        "evaluation users / s": (mine["test"]["num_users"] / mine["test"]["seconds"], their_users_per_second),
        "evaluation users / s, every exact rank": (
            mine["test_every_rank"]["num_users"] / mine["test_every_rank"]["seconds"],
            their_users_per_second,
        ),
        # products and attention that the test evaluation executed (benchmarks/flops.py), and per second
        "evaluation GFLOP (counted)": (mine["eval_flops"] / 1e9, theirs["eval_flops"] / 1e9),
        "evaluation GFLOP/s": (
            mine["eval_flops"] / 1e9 / mine["test"]["seconds"],
            theirs["eval_flops"] / 1e9 / theirs["eval_seconds"],
        ),
        "peak RSS (MB)": (mine["peak_rss_mb"], theirs["peak_rss_mb"]),
        "test NDCG@10": (mine["test"]["ndcg@10"], theirs["ndcg@10"]),
        "test HR@10": (mine["test"]["hr@10"], theirs["hr@10"]),
    }
    print(
        f"\n| {args.dataset}, {args.model} full CE ({ce_dtype} GEMMs ours), len {max_len}, batch "
        f"{args.our_batch_size} sequences ours / 128 samples RecBole, lr {args.lr} ours, "
        f"{args.recbole_lr} RecBole | ours | RecBole 1.2.1 | ours / RecBole |"
    )
    print("|---|---|---|---|")
    for name, (a, b) in rows.items():
        if name.startswith("test") and args.recbole_batches and not args.equal_targets:  # unequal training
            print(
                f"| {name} | {a:,.4g} | {b:,.4g} | not comparable (RecBole stopped after "
                f"{args.recbole_batches} batches) |"
            )
            continue
        print(f"| {name} | {a:,.4g} | {b:,.4g} | {a / b:.2f}x |")
    if args.log_results:
        from recsys.results import append_record, benchmark_command, make_record

        append_record(
            make_record(
                "peer_recbole",
                command=benchmark_command("peer_recbole", argv),
                dataset=args.dataset,
                model=args.model,
                ce_dtype=ce_dtype,
                lr=args.lr,
                recbole_lr=args.recbole_lr,
                mask_prob=args.mask_prob if args.model == "bert4rec" else None,
                max_len=max_len,
                epochs=args.epochs,
                our_batch_size=args.our_batch_size,
                recbole_batches=args.recbole_batches,
                equal_targets=args.equal_targets,
                threads=args.threads,
                eval_repeats=args.eval_repeats,
                rows={k: {"ours": a, "recbole": b} for k, (a, b) in rows.items()},
                ours=mine,
                recbole=theirs,
            ),
            args.log_results,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
