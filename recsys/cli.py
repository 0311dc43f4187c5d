"""Command line: ``recsys train | evaluate | data | results``.

    recsys train recipes/ml-100k/sasrec.toml [--set model.num_blocks=4 ...] [--run-dir DIR] [--resume]
    recsys evaluate RUN_DIR [--split test|valid] [--set eval.exclude_seen=false]
    recsys data info DATASET        users, items, interactions, sequence-length percentiles
    recsys data list                the dataset cards
    recsys results benchmarks/results.jsonl --out benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
from pathlib import Path

from .config import ConfigError, load_recipe
from .data.readers import DataError

METRIC_ORDER = ("hr", "ndcg", "mrr")


def print_metrics_table(title: str, metrics: dict, ks) -> None:
    names = [f"{m}@{k}" for m in METRIC_ORDER for k in ks] + ["mrr"]
    width = max(len(n) for n in names)
    print(f"\n{title}  ({metrics.get('num_users', '?'):,} users, {metrics.get('seconds', 0):.2f} s)")
    for m in METRIC_ORDER:
        row = "  ".join(f"{m}@{k}={metrics[f'{m}@{k}']:.4f}" for k in ks)
        print(f"  {row}")
    print(f"  {'mrr':<{width}} = {metrics['mrr']:.4f}")


def cmd_train(args) -> int:
    from .results import append_record, git_commit, make_record
    from .train import Trainer, peak_memory_mb, prepare_data

    commit = git_commit() if args.log_results else None  # the code this run starts with
    cfg = load_recipe(args.recipe, args.set)
    if args.data_dir:
        cfg.data.data_dir = args.data_dir
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / (
        f"{cfg.data.dataset}-{cfg.model_name}-{cfg.loss.name}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    )
    print(f"run directory: {run_dir}")
    data = prepare_data(cfg.data, verbose=not args.quiet)
    info = data.info
    print(f"{info['dataset']}: {info['users']:,} users, {info['items']:,} items, {info['interactions']:,} interactions; "
          f"split {cfg.data.split}")
    trainer = Trainer(cfg, run_dir, data=data, progress=not args.quiet)
    out = trainer.fit(resume=args.resume)
    if "valid" in out:
        print_metrics_table("validation (best epoch)", out["valid"], cfg.eval.ks)
    print_metrics_table(f"test (best epoch {out['best_epoch']} of {out['epochs_run']})", out["test"], cfg.eval.ks)
    print(f"\nrun directory: {run_dir}")
    if args.log_results:
        record = make_record(
            "train",
            command="recsys train " + " ".join(shlex.quote(a) for a in args.argv),
            commit=commit,
            recipe=str(args.recipe),
            overrides=list(args.set),
            dataset=info,
            model=cfg.model_name,
            loss=cfg.loss.name,
            protocol={"split": cfg.data.split, "exclude_seen": cfg.eval.exclude_seen, "tie_policy": cfg.eval.tie_policy,
                      "max_seq_len": cfg.max_seq_len, "early_stopping": cfg.eval.early_stopping_metric},
            config=cfg.to_dict(),
            metrics=out,
            timings={"train_seconds": out["train_seconds"], "epochs": out["epochs_run"]},
            peak_memory_mb=peak_memory_mb(),
        )
        append_record(record, args.log_results)
        print(f"result appended to {args.log_results}")
    return 0


def cmd_evaluate(args) -> int:
    from .train import load_run

    trainer = load_run(args.run_dir, overrides=args.set, data_dir=args.data_dir)
    if args.split == "valid" and trainer.split.valid is None:
        raise ConfigError(f"split {trainer.cfg.data.split!r} has no validation set")
    metrics = trainer.evaluate(args.split, progress=True)
    print_metrics_table(f"{args.split} ({args.run_dir})", metrics, trainer.cfg.eval.ks)
    return 0


def cmd_data_info(args) -> int:
    from .data.cards import load_card, load_dataset, sha256_of
    from .data.prepare import length_percentiles, prepare_sequences
    from .data.readers import READERS

    if Path(args.dataset).is_file():  # a file of one's own: name its reader
        if args.reader not in READERS:
            raise ConfigError(f"{args.dataset} is a file: give --reader, one of {sorted(READERS)}")
        interactions = READERS[args.reader](args.dataset)
        path = Path(args.dataset)
        title, digest, note = f"{path.name} (reader {args.reader})", sha256_of(path), ""
    else:
        loaded = load_dataset(args.dataset, args.data_dir)
        card = load_card(args.dataset)
        interactions, path, digest, note = loaded.interactions, loaded.file, loaded.sha256, loaded.variant.note
        title = f"{card.name}: {card.description}"
    seq = prepare_sequences(interactions, verbose=True)
    print(f"dataset       {title}")
    print(f"file          {path.name} (sha256 {digest[:16]}…)" + (f" — {note}" if note else ""))
    print(f"users         {seq.num_users:,}")
    print(f"items         {seq.num_items - 1:,}")
    print(f"interactions  {seq.num_interactions:,}")
    print(f"timestamps    {'yes' if seq.has_timestamps else 'no (file order is time order)'}")
    pct = length_percentiles(seq.lengths)
    print("sequence length percentiles: " + "  ".join(f"{k}={v:g}" for k, v in pct.items())
          + f"  mean={seq.lengths.mean():.1f}")
    return 0


def cmd_data_list(args) -> int:
    from .data.cards import list_cards, load_card

    for name in list_cards():
        card = load_card(name)
        print(f"{name:18s} {card.description}")
    return 0


def cmd_results(args) -> int:
    from .results import write_markdown

    write_markdown(args.jsonl, args.out)
    print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recsys", description="Sequential recommendation: train, evaluate, inspect data.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a recipe")
    t.add_argument("recipe")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    t.add_argument("--run-dir")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last epoch")
    t.add_argument("--data-dir", help="folder holding the dataset folders (default: $RECSYS_DATA)")
    t.add_argument("--log-results", nargs="?", const="benchmarks/results.jsonl", default=None,
                   metavar="JSONL", help="append a result record (default file: benchmarks/results.jsonl)")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a run's best checkpoint")
    e.add_argument("run_dir")
    e.add_argument("--split", choices=["test", "valid"], default="test")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    e.add_argument("--data-dir")
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("data", help="inspect datasets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    di = dsub.add_parser("info", help="users, items, interactions, length percentiles")
    di.add_argument("dataset", help="a dataset card's name, or a file (with --reader)")
    di.add_argument("--data-dir")
    di.add_argument("--reader", help="reader for a file of one's own (e.g. user_item_lines)")
    di.set_defaults(func=cmd_data_info)
    dl = dsub.add_parser("list", help="the dataset cards")
    dl.set_defaults(func=cmd_data_list)

    r = sub.add_parser("results", help="render RESULTS.md from a results JSONL")
    r.add_argument("jsonl")
    r.add_argument("--out", required=True)
    r.set_defaults(func=cmd_results)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (ConfigError, DataError, FileExistsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
