"""Command line: ``recsys train | evaluate | data | export | index | retrieve``.

recsys train recipes/ml-100k/sasrec.toml [--set model.num_blocks=4 ...] [--run-dir DIR] [--resume]
recsys evaluate RUN_DIR [--split test|valid] [--set eval.exclude_seen=false]
recsys data info DATASET        users, items, interactions, sequence-length percentiles
recsys data list                the dataset cards
recsys export RUN_DIR --out DIR         item / user embeddings, raw ids, the encoder program, manifest
recsys index build DIR --type hnsw      a FAISS index over an export
recsys retrieve INDEX_DIR --history "i1,i2" -k 10 | --users FILE
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
from pathlib import Path

from .config import ConfigError, load_recipe
from .data.readers import DataError
from .errors import RecsysError

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
    from .click import load_click_recipe, run_click
    from .results import append_record, git_commit, make_record

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
    from .files import RunLock, RunLog

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
                recipe=str(args.recipe),
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
    from . import distributed
    from .click import is_click_recipe

    if Path(args.recipe).exists() and is_click_recipe(args.recipe):
        return cmd_train_click(args)
    from .files import RunLock, RunLog
    from .results import git_commit

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
    from .results import append_record, make_record
    from .train import Trainer, peak_memory_mb, prepare_data

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
        trainer = Trainer(cfg, folder, data=data, progress=not args.quiet, verbose=log is not None)
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
                recipe=str(args.recipe),
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
    from .metrics import mean_and_spread

    print(f"\ntest over {len(seeds)} seeds ({seeds[0]}..{seeds[-1]}): mean ± standard deviation")
    for m in METRIC_ORDER:
        cells = [f"{m}@{k}=" + "{:.4f} ± {:.4f}".format(*mean_and_spread([t[f"{m}@{k}"] for t in tests])) for k in ks]
        print("  " + "  ".join(cells))


def cmd_evaluate(args) -> int:
    from . import distributed
    from .train import load_run

    if distributed.init_from_env() and not distributed.is_main():
        sys.stdout = open(os.devnull, "w")
    trainer = load_run(args.run_dir, overrides=args.set, data_dir=args.data_dir)
    if args.split == "valid" and trainer.split.valid is None:
        raise ConfigError(f"split {trainer.cfg.data.split!r} has no validation set")
    metrics = trainer.evaluate(args.split, progress=True)
    print_metrics_table(f"{args.split} ({args.run_dir})", metrics, trainer.cfg.eval.ks)
    return 0


def cmd_data_info(args) -> int:
    from .data.cards import load_card, load_dataset, sha256_of
    from .data.prepare import length_percentiles, prepare_sequences
    from .data.readers import READERS, read_table

    dataset, reader = args.dataset, args.reader
    columns = separator = timestamp_format = None
    if dataset.endswith(".toml"):  # a recipe: its [data] section names a card or a file of one's own
        data_cfg = load_recipe(dataset).data
        if args.data_dir:
            data_cfg.data_dir = args.data_dir
        dataset = data_cfg.path if data_cfg.dataset == "custom" else data_cfg.dataset
        reader, columns = data_cfg.reader, data_cfg.columns
        separator, timestamp_format = data_cfg.separator, data_cfg.timestamp_format
        if dataset is None:
            raise ConfigError(f"{args.dataset}: data.dataset = 'custom' needs data.path")
    elif args.columns:
        columns = dict(pair.split("=", 1) for pair in args.columns.split(",") if "=" in pair)
    if Path(dataset).is_file():  # a file of one's own: name its reader
        if reader not in READERS:
            raise ConfigError(f"{dataset} is a file: give --reader, one of {sorted(READERS)}")
        path = Path(dataset)
        if reader == "table":
            interactions = read_table(
                path,
                columns or {"user_id": "user_id", "item_id": "item_id"},
                separator=separator,
                timestamp_format=timestamp_format,
            )
        else:
            interactions = READERS[reader](path)
        title, digest, note = f"{path.name} (reader {reader})", sha256_of(path), ""
    elif Path(dataset).is_dir():
        raise DataError(
            f"{dataset}: is a folder; give a file (with --reader) or a dataset card name (recsys data list)"
        )
    else:
        from .data.cards import list_cards

        if dataset not in list_cards() and ("/" in dataset or "\\" in dataset or Path(dataset).suffix):
            raise DataError(f"{dataset}: file not found (nor is it a dataset card name: recsys data list)")
        loaded = load_dataset(dataset, args.data_dir)
        card = load_card(dataset)
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
    print(
        "sequence length percentiles: "
        + "  ".join(f"{k}={v:g}" for k, v in pct.items())
        + f"  mean={seq.lengths.mean():.1f}"
    )
    return 0


def cmd_data_list(args) -> int:
    from .data.cards import list_cards, load_card

    for name in list_cards():
        card = load_card(name)
        print(f"{name:18s} {card.description}")
    return 0


def cmd_export(args) -> int:
    from .data.cards import load_item_text
    from .export import export_run
    from .train import load_run

    trainer = load_run(args.run_dir, data_dir=args.data_dir)
    text = None
    if trainer.cfg.data.dataset != "custom":
        text = load_item_text(trainer.cfg.data.dataset, trainer.cfg.data.data_dir)
    users = None if args.users == "none" else args.users
    out = export_run(
        trainer, args.out, users=users, histories=args.histories, encoder=not args.no_encoder, item_text=text
    )
    print(f"exported {args.run_dir} to {out}")
    return 0


def _parse_params(pairs: list[str]) -> dict:
    import tomllib

    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--param expects key=value, got {pair!r}")
        try:
            params[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(f"--param {pair!r}: the value must be a number") from None
    return params


def cmd_index_build(args) -> int:
    import numpy as np

    from .export import read_manifest
    from .retrieval import index_params, save_index, timed_build

    read_manifest(args.export_dir)
    try:
        params = index_params(args.type, _parse_params(args.param))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    vectors = np.load(Path(args.export_dir) / "item_embeddings.npy")
    try:
        index, seconds = timed_build(vectors, args.type, params)
    except ValueError as err:  # parameters that do not fit these vectors (e.g. ivf_pq's m vs the dimension)
        raise ConfigError(str(err)) from None
    out = args.out or str(Path(args.export_dir) / f"index-{args.type}")
    save_index(index, args.type, params, args.export_dir, out, seconds)
    print(f"built {args.type} index over {index.ntotal:,} items in {seconds:.2f} s: {out}")
    return 0


def cmd_retrieve(args) -> int:
    import numpy as np
    import polars as pl
    import torch

    from .export import load_encoder
    from .retrieval import load_index, search

    index, meta, manifest, export_dir = load_index(args.index_dir, args.export_dir)
    items = pl.read_parquet(Path(export_dir) / "item_ids.parquet")
    if args.history is not None:
        if not manifest.get("encoder"):
            raise DataError(f"{export_dir} has no exported encoder: retrieve with --users instead")
        raw = [x.strip() for x in args.history.split(",") if x.strip()]
        lookup = dict(zip(items["item_id"].to_list(), items["row"].to_list()))
        unknown = [x for x in raw if x not in lookup]
        if unknown or not raw:
            raise DataError(f"--history: unknown item id(s) {unknown[:10]}" if unknown else "--history is empty")
        rows = [lookup[x] for x in raw][-manifest["max_seq_len"] :]
        window = torch.zeros(1, manifest["max_seq_len"], dtype=torch.long)
        window[0, -len(rows) :] = torch.tensor(rows) + 1
        inputs = (window,)
        if "timestamps" in (manifest.get("encoder_inputs") or []):  # a model that reads time
            if args.times is None:
                raise ConfigError(
                    "this export's encoder reads time: give --times (one timestamp per history "
                    "item, seconds) and optionally --at (the request time; default: the last)"
                )
            try:
                times = [int(float(t)) for t in args.times.split(",") if t.strip()]
            except ValueError:
                raise ConfigError(f"--times: numbers (seconds) separated by commas, got {args.times!r}") from None
            if len(times) != len(raw):
                raise ConfigError(f"--times gives {len(times)} timestamps for {len(raw)} history items")
            stamps = torch.zeros_like(window)
            stamps[0, -len(rows) :] = torch.tensor(times[-len(rows) :])
            inputs = (window, stamps, torch.tensor([args.at if args.at is not None else times[-1]]))
        elif args.times is not None or args.at is not None:
            raise ConfigError("--times / --at: this export's encoder does not read time")
        encoder = load_encoder(export_dir, manifest)
        with torch.no_grad():
            queries = encoder(*inputs).numpy()
        keys, seen = ["history"], [rows]
    else:
        if args.times is not None or args.at is not None:
            raise ConfigError("--times / --at go with --history (exported users were encoded with their own times)")
        users = pl.read_parquet(Path(export_dir) / "user_ids.parquet")
        wanted = [line.strip() for line in Path(args.users).read_text().splitlines() if line.strip()]
        found = users.filter(pl.col("user_id").is_in(wanted))
        missing = sorted(set(wanted) - set(found["user_id"].to_list()))
        if missing:
            raise DataError(f"{args.users}: user id(s) not in the export: {missing[:10]}")
        found = pl.DataFrame({"user_id": wanted}).join(found, on="user_id", how="left", maintain_order="left")
        queries = np.load(Path(export_dir) / "user_embeddings.npy")[found["row"].to_numpy()]
        keys, seen = found["user_id"].to_list(), found["seen_rows"].to_list()
    if args.k < 1:
        raise ConfigError(f"-k must be at least 1, got {args.k}")
    scores, rows = search(index, queries, args.k, exclude=None if args.include_seen else seen)
    titles = items["title"].to_list() if "title" in items.columns else None
    for key, score_row, item_row, seen_rows in zip(keys, scores, rows, seen):
        candidates = items.height - (0 if args.include_seen else len(set(seen_rows)))
        found = int((item_row >= 0).sum())
        if found < min(args.k, candidates):  # graph / cluster search need not reach every item
            print(
                f"warning: {key}: the {meta['type']} index returned {found} of the "
                f"{min(args.k, candidates)} items asked for; a flat index lists every item",
                file=sys.stderr,
            )
        print(f"{key}:")
        for rank, (score, row) in enumerate(zip(score_row, item_row), start=1):
            if row < 0:
                break
            title = f"  {titles[row]}" if titles and titles[row] else ""
            print(f"  {rank:3d}. {items['item_id'][int(row)]}  {score:.4f}{title}")
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
    t.add_argument(
        "--log-results",
        nargs="?",
        const="benchmarks/results.jsonl",
        default=None,
        metavar="JSONL",
        help="append a result record (default file: benchmarks/results.jsonl)",
    )
    t.add_argument("--precision", choices=["fp32", "bf16"], help="same as --set train.precision=...")
    t.add_argument("--compile", action="store_true", help="same as --set train.compile=true")
    t.add_argument(
        "--seeds",
        type=int,
        help="train this many seeds (train.seed, +1, ...; sequential recipes: "
        "one run each in RUN_DIR/seed-S) and report mean and spread",
    )
    t.add_argument("--note", help="a remark stored with the result record (shown in RESULTS.md)")
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
    di.add_argument("dataset", help="a dataset card's name, a recipe (.toml: its [data]), or a file (with --reader)")
    di.add_argument("--data-dir")
    di.add_argument("--reader", help="reader for a file of one's own (e.g. user_item_lines, table)")
    di.add_argument(
        "--columns", help="reader table: canonical=file column pairs, e.g. user_id=visitor,item_id=product,timestamp=ts"
    )
    di.set_defaults(func=cmd_data_info)
    dl = dsub.add_parser("list", help="the dataset cards")
    dl.set_defaults(func=cmd_data_list)

    x = sub.add_parser("export", help="export item / user embeddings and the encoder of a run")
    x.add_argument("run_dir")
    x.add_argument("--out", required=True)
    x.add_argument(
        "--users",
        choices=["test", "valid", "none"],
        default="test",
        help="export the user vectors of this split's users (their history up to the target)",
    )
    x.add_argument("--histories", help="or of these histories: lines 'user<TAB>item,item,...' (raw ids)")
    x.add_argument("--no-encoder", action="store_true")
    x.add_argument("--data-dir")
    x.set_defaults(func=cmd_export)

    ix = sub.add_parser("index", help="FAISS indexes over an export")
    ixsub = ix.add_subparsers(dest="index_command", required=True)
    ib = ixsub.add_parser("build")
    ib.add_argument("export_dir")
    ib.add_argument("--type", default="flat", choices=["flat", "hnsw", "ivf_flat", "ivf_pq"])
    ib.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="e.g. M=32, nprobe=16")
    ib.add_argument("--out")
    ib.set_defaults(func=cmd_index_build)

    rt = sub.add_parser("retrieve", help="top-k items from an index")
    rt.add_argument("index_dir")
    group = rt.add_mutually_exclusive_group(required=True)
    group.add_argument("--history", help="raw item ids, oldest first, comma-separated")
    group.add_argument("--users", help="a file of user ids (one per line) present in the export")
    rt.add_argument("-k", type=int, default=10)
    rt.add_argument("--times", help="with --history, for models that read time: each item's timestamp (seconds)")
    rt.add_argument("--at", type=int, help="with --times: the time of the request (default: the last timestamp)")
    rt.add_argument("--include-seen", action="store_true", help="do not filter the items of the history")
    rt.add_argument("--export-dir", help="default: the export the index was built from")
    rt.set_defaults(func=cmd_retrieve)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from . import distributed

    try:
        code = args.func(args)
        # under torchrun every rank reaches this point before any tears the process group down (a rank
        # that destroyed its gloo group while another was still in it could abort at exit)
        distributed.barrier()
        return code
    except (RecsysError, FileExistsError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `recsys data list | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
