"""Time one training epoch and one full-ranking evaluation of a recipe on its dataset.

    python benchmarks/speed.py recipes/beauty/sasrec_ce.toml [--set ...] [--from-checkpoint RUN/best.pt] [--log-results]

Prints a table: seconds, training targets per second, evaluated users per second, peak memory.
The evaluation ranks every test user against the whole catalogue (the evaluator of every run), then
again with ``eval.ranks=cutoff`` (exact ranks up to max(ks), checked to give the same @k metrics);
for reference it also times a naive scoring loop (one fresh [items, users] GEMM output per block of
users, as a straightforward implementation would allocate; the evaluator reuses one buffer instead).
``--from-checkpoint`` starts the timed epoch from a trained model's weights (the optimiser starts
fresh): later epochs can cost more than the first (e.g. the full CE's logits outgrow its no-shift bound).
With --log-results one "timing" record goes to benchmarks/results/ (RESULTS.md is built from it).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from recsys.config import load_recipe
from recsys.results import append_record, benchmark_command, git_commit, make_record
from recsys.train import Trainer, load_checkpoint, peak_memory_mb, prepare_data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--from-checkpoint", default=None, help="a run's best.pt / last.pt: time an epoch of that model")
    p.add_argument("--log-results", nargs="?", const="benchmarks/results", default=None)
    args = p.parse_args(argv)

    commit = git_commit()
    cfg = load_recipe(args.recipe, args.set)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    t0 = time.perf_counter()
    data = prepare_data(cfg.data, verbose=False)
    load_seconds = time.perf_counter() - t0
    trainer = Trainer(cfg, "runs/_speed", data=data, progress=True)
    start_epoch = 0
    if args.from_checkpoint:
        state = load_checkpoint(args.from_checkpoint)
        trainer.model.load_state_dict(state["model"])
        start_epoch = int(state.get("epoch", 0))

    epoch = trainer.train_epoch()
    trainer.evaluate("test")  # warm-up: allocations, thread pool
    ev = trainer.evaluate("test")
    trainer.cfg.eval.ranks = "cutoff"  # the same @k metrics, exact ranks only up to max(ks)
    cut = trainer.evaluate("test")
    if any(cut[k] != ev[k] for k in cut if "@" in k):
        raise RuntimeError("eval.ranks='cutoff' disagrees with 'all' on a cut-off metric")

    # a naive scoring loop of the same shapes, for reference
    items = trainer.model.item_vectors().detach()
    users = torch.randn(len(trainer.split.test), items.shape[1])
    start = time.perf_counter()
    for b in range(0, users.shape[0], cfg.eval.block_size):
        items @ users[b : b + cfg.eval.block_size].T
    gemm_seconds = time.perf_counter() - start

    info = data.info
    after = f" after epoch {start_epoch}" if start_epoch else ""  # timed from a trained model
    rows = [
        ("dataset", f"{info['dataset']} ({info.get('file', '?')}): {info['users']:,} users, {info['items']:,} items"),
        (
            "model / loss",
            f"{cfg.model_name} / {cfg.loss.name}, max_seq_len {cfg.max_seq_len}, batch {cfg.train.batch_size}",
        ),
        ("torch threads", str(torch.get_num_threads())),
        ("load + prepare", f"{load_seconds:.2f} s"),
        (
            "train epoch",
            f"{epoch['train_seconds']:.1f} s{after}  ({epoch['train_sequences']:,} sequences, "
            f"{epoch['sequences_per_second']:,.0f} sequences/s; {epoch['train_targets']:,} targets, "
            f"{epoch['targets_per_second']:,.0f} targets/s)",
        ),
        (
            "full evaluation",
            f"{ev['seconds']:.2f} s  ({ev['num_users']:,} users x {info['items']:,} items, "
            f"{ev['num_users'] / ev['seconds']:,.0f} users/s)",
        ),
        (
            "evaluation, ranks cut",
            f"{cut['seconds']:.2f} s  ({cut['num_users'] / cut['seconds']:,.0f} users/s; "
            f"{cut['fully_ranked_users']:,} users ranked against every item)",
        ),
        ("naive scoring GEMMs", f"{gemm_seconds:.2f} s  (fresh output per block, no ranking)"),
        ("peak memory", f"{peak_memory_mb():,.0f} MB"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")

    if args.log_results:
        append_record(
            make_record(
                "timing",
                commit=commit,
                command=benchmark_command("speed", argv),
                recipe=args.recipe,
                dataset=info,
                model=cfg.model_name,
                loss=cfg.loss.name,
                max_seq_len=cfg.max_seq_len,
                batch_size=cfg.train.batch_size,
                from_epoch=start_epoch,
                train_epoch_seconds=epoch["train_seconds"],
                train_targets=epoch["train_targets"],
                targets_per_second=epoch["targets_per_second"],
                train_sequences=epoch["train_sequences"],
                sequences_per_second=epoch["sequences_per_second"],
                eval_seconds=ev["seconds"],
                eval_users=ev["num_users"],
                eval_users_per_second=ev["num_users"] / ev["seconds"],
                cutoff_eval_seconds=cut["seconds"],
                cutoff_fully_ranked_users=cut["fully_ranked_users"],
                gemm_seconds=gemm_seconds,
                load_seconds=load_seconds,
                peak_memory_mb=peak_memory_mb(),
            ),
            args.log_results,
        )
        print(f"record appended to {args.log_results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
