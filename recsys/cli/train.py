"""``recsys train`` (next-item and click recipes, several seeds) and ``recsys evaluate``: metrics tables."""

from __future__ import annotations

import datetime as dt
import os
import shlex
import sys
from pathlib import Path

from ..config import ConfigError, load_recipe
from ..recipe_index import recipe_label

METRIC_ORDER = ("hr", "ndcg", "mrr")


def print_metrics_table(title: str, metrics: dict, ks) -> None:
    names = [f"{m}@{k}" for m in METRIC_ORDER for k in ks] + ["mrr"]
    width = max(len(n) for n in names)
    print(f"\n{title}  ({metrics.get('num_users', '?'):,} users, {metrics.get('seconds', 0):.2f} s)")
    if "protocol" in metrics:  # sampled metrics: say so before any number
        print(f"  {metrics['protocol']}")
    if "tie_policy" in metrics:
        print(
            f"  ties: {metrics['tie_policy']}"
            + (" (expectation over a random order of tied items)" if metrics["tie_policy"] == "expected" else "")
        )
    repeats = metrics.get("repeat_targets")
    if repeats:
        what = {
            "exclude": "excluded with the rest of the history (counted as misses)",
            "keep": "kept as candidates while the rest of the history is excluded",
            "apart": "reported apart (ranked against every item, history included)",
        }[repeats["policy"]]
        print(f"  targets that repeat a history item: {repeats['users']:,}, {what}")
    for m in METRIC_ORDER:
        row = "  ".join(f"{m}@{k}={metrics[f'{m}@{k}']:.4f}" for k in ks)
        print(f"  {row}")
    if "mrr" in metrics:  # not under eval.ranks="cutoff"
        print(f"  {'mrr':<{width}} = {metrics['mrr']:.4f}")
    if repeats and "metrics_if_kept" in repeats:
        kept = repeats["metrics_if_kept"]
        row = "  ".join(f"{m}@{k}={kept[f'{m}@{k}']:.4f}" for m in ("hr", "ndcg") for k in ks)
        print(f"  with those targets kept (eval.repeat_targets=keep): {row}")
    if repeats and "metrics" in repeats:
        rep = repeats["metrics"]
        row = "  ".join(f"{m}@{k}={rep[f'{m}@{k}']:.4f}" for m in ("hr", "ndcg") for k in ks)
        print(f"  the {repeats['users']:,} repeat-target users: {row}")
    if "fully_ranked_users" in metrics:
        print(f"  ranks cut at {max(ks)}: {metrics['fully_ranked_users']:,} users ranked against every item")


def cmd_train_click(args) -> int:
    from ..click import load_click_recipe, run_click
    from ..results import append_record, git_commit, make_record

    commit = git_commit() if args.log_results else None
    overrides = list(args.set) + ([f"train.seeds={args.seeds}"] if args.seeds is not None else [])
    cfg = load_click_recipe(args.recipe, overrides)
    if args.data_dir:
        cfg.data.data_dir = str(Path(args.data_dir).resolve())  # the run's config.json works from anywhere
    run_dir = (
        Path(args.run_dir)
        if args.run_dir
        else Path("runs") / (f"{cfg.data.dataset}-{cfg.model_name}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}")
    )
    from ..files import RunLock, RunLog

    with RunLock(run_dir), RunLog(run_dir / "train.log", muted=args.quiet) as log:
        try:
            out = run_click(cfg, run_dir, progress=not args.quiet, resume=args.resume)
        except Exception as err:  # the terminal gets it from main(); the log keeps it too
            log.write(f"error: {type(err).__name__}: {err}\n")
            raise
    s = out["summary"]
    print(f"\n{cfg.model_name} on {cfg.data.dataset}, {cfg.train.seeds} seed(s), test at the best validation epoch:")
    for metric in ("auc", "gauc", "logloss"):
        print(f"  {metric:8s} {s[f'test_{metric}_mean']:.4f} ± {s[f'test_{metric}_std']:.4f}")
    print(f"run directory: {run_dir}")
    if args.log_results:
        append_record(
            make_record(
                "click",
                commit=commit,
                command="recsys " + " ".join(shlex.quote(a) for a in args.argv),
                recipe=recipe_label(args.recipe),
                dataset=cfg.data.dataset,
                model=cfg.model_name,
                config=out["config"],
                samples=out["samples"],
                summary=s,
                per_seed=[{k: r[k] for k in ("seed", "epoch", "valid", "test")} for r in out["per_seed"]],
            ),
            args.log_results,
        )
    return 0


def cmd_train(args) -> int:
    from .. import distributed
    from ..click import is_click_recipe
    from ..recipe_index import resolve_recipe

    args.recipe = resolve_recipe(args.recipe)  # a packaged recipe's name or a file
    if is_click_recipe(args.recipe):
        return cmd_train_click(args)
    from ..files import RunLock, RunLog
    from ..results import git_commit

    if distributed.init_from_env() and not distributed.is_main():
        args.quiet, args.log_results = True, None  # rank 0 speaks and writes for all
        sys.stdout = open(os.devnull, "w")
    commit = git_commit() if args.log_results else None  # the code this run starts with
    if args.precision:
        args.set.append(f"train.precision={args.precision}")
    if args.compile:
        args.set.append("train.compile=true")
    cfg = load_recipe(args.recipe, args.set)
    if args.data_dir:
        cfg.data.data_dir = str(Path(args.data_dir).resolve())  # the run's config.json works from anywhere
    run_dir = (
        Path(args.run_dir)
        if args.run_dir
        else Path("runs")
        / (f"{cfg.data.dataset}-{cfg.model_name}-{cfg.loss.name}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}")
    )
    if args.seeds is not None and args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    # --seeds N: N runs with train.seed, train.seed + 1, ... in RUN_DIR/seed-S, then their mean and spread
    seeds = [cfg.train.seed + i for i in range(args.seeds)] if args.seeds else [cfg.train.seed]
    run_dirs = [run_dir / f"seed-{seed}" for seed in seeds] if args.seeds else [run_dir]
    if not distributed.is_main():  # rank 0 locks, logs and writes for all
        return _train_runs(args, cfg, seeds, run_dirs, commit)
    # one writer per run folder, taken before anything is read; everything printed also goes to train.log
    with RunLock(run_dir), RunLog(run_dir / "train.log", muted=args.quiet) as log:
        try:
            return _train_runs(args, cfg, seeds, run_dirs, commit, log)
        except Exception as err:  # the terminal gets it from main(); the log keeps it too
            log.write(f"error: {type(err).__name__}: {err}\n")
            raise


def _train_runs(args, cfg, seeds, run_dirs, commit, log=None) -> int:
    from ..results import append_record, make_record
    from ..train import make_trainer, peak_memory_mb, prepare_data

    for folder in run_dirs:
        if args.resume and not (folder / "last.pt").exists():
            print(f"note: nothing to resume in {folder}; starting a new run there")
        if not args.resume and ((folder / "last.pt").exists() or (folder / "final_metrics.json").exists()):
            # the trainer refuses this too; said here before any data is read
            raise FileExistsError(f"{folder} already holds a run; use --resume or another --run-dir")
    data = prepare_data(cfg.data, verbose=log is not None)  # the counts of dropped rows: in the log always
    info = data.info
    say = log.say if log is not None else print
    say(
        f"{info['dataset']}: {info['users']:,} users, {info['items']:,} items, {info['interactions']:,} interactions; "
        f"split {cfg.data.split}"
    )
    tests = []
    for seed, folder in zip(seeds, run_dirs):
        cfg.train.seed = seed
        say(f"run directory: {folder}")
        trainer = make_trainer(cfg, folder, data=data, progress=not args.quiet, verbose=log is not None)
        trainer.recipe = recipe_label(args.recipe)
        if log is not None:
            log.muted = args.quiet  # the epochs: in the log, on the terminal unless --quiet
        out = trainer.fit(resume=args.resume)
        if log is not None:
            log.muted = False  # the results reach the terminal under --quiet too
        tests.append(out["test"])
        if "valid" in out:
            print_metrics_table("validation (best epoch)", out["valid"], cfg.eval.ks)
        print_metrics_table(f"test (best epoch {out['best_epoch']} of {out['epochs_run']})", out["test"], cfg.eval.ks)
        for part, title in (("test_cold", "held-out (cold) items"), ("test_warm", "items seen in training")):
            if out.get(part, {}).get("num_users"):
                print_metrics_table(
                    f"test targets that are {title}: {out[part]['num_users']:,} users", out[part], cfg.eval.ks
                )
        print(f"\nrun directory: {folder}")
        if args.log_results:
            record = make_record(
                "train",
                command="recsys " + " ".join(shlex.quote(a) for a in args.argv),
                commit=commit,
                recipe=recipe_label(args.recipe),
                overrides=list(args.set) + ([f"train.seed={seed}"] if args.seeds else []),
                dataset=info,
                model=cfg.model_name,
                loss=cfg.loss.name,
                protocol={
                    "split": cfg.data.split,
                    "exclude_seen": cfg.eval.exclude_seen,
                    "tie_policy": cfg.eval.tie_policy,
                    "max_seq_len": cfg.max_seq_len,
                    "early_stopping": cfg.eval.early_stopping_metric,
                },
                config=cfg.to_dict(),
                metrics=out,
                timings={"train_seconds": out["train_seconds"], "epochs": out["epochs_run"]},
                history=[
                    {
                        "epoch": r["epoch"],
                        "train_loss": r["train_loss"],
                        "train_seconds": r["train_seconds"],
                        **(
                            {cfg.eval.early_stopping_metric: r["valid"][cfg.eval.early_stopping_metric]}
                            if "valid" in r
                            else {}
                        ),
                    }
                    for r in trainer.history
                ],
                peak_memory_mb=peak_memory_mb(),
                **({"note": args.note} if args.note else {}),
            )
            append_record(record, args.log_results)
            print(f"result appended to {args.log_results}")
    if args.seeds:
        print_seed_summary(tests, seeds, cfg.eval.ks)
    return 0


def print_seed_summary(tests: list[dict], seeds: list[int], ks) -> None:
    """Mean and sample standard deviation of every test metric over the seeds' runs."""
    from ..metrics import mean_and_spread

    print(f"\ntest over {len(seeds)} seeds ({seeds[0]}..{seeds[-1]}): mean ± standard deviation")
    for m in METRIC_ORDER:
        cells = [f"{m}@{k}=" + "{:.4f} ± {:.4f}".format(*mean_and_spread([t[f"{m}@{k}"] for t in tests])) for k in ks]
        print("  " + "  ".join(cells))


def cmd_evaluate(args) -> int:
    from .. import distributed
    from ..train import load_run

    if distributed.init_from_env() and not distributed.is_main():
        sys.stdout = open(os.devnull, "w")
    trainer = load_run(args.run_dir, overrides=args.set, data_dir=args.data_dir)
    if args.split == "valid" and trainer.split.valid is None:
        raise ConfigError(f"split {trainer.cfg.data.split!r} has no validation set")
    metrics = trainer.evaluate(args.split, progress=True)
    print_metrics_table(f"{args.split} ({args.run_dir})", metrics, trainer.cfg.eval.ks)
    return 0


def cmd_tune(args) -> int:
    from ..tune import tune

    return tune(args)
