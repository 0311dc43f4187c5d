"""``recsys export``, ``recsys index build`` and ``recsys retrieve``: a finished run to a FAISS retrieval stage."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..config import ConfigError
from ..data.readers import DataError


def comma_list(text: str, flag: str) -> list[str]:
    """``a,b,c`` as its fields (spaces around them dropped); an empty field is an error, not skipped."""
    fields = [x.strip() for x in text.split(",")]
    if fields == [""]:
        return []
    empty = [i for i, x in enumerate(fields, start=1) if not x]
    if empty:
        raise ConfigError(f"{flag}: field {empty[0]} of {text!r} is empty")
    return fields


def cmd_export(args) -> int:
    from ..data.cards import load_item_text
    from ..export import export_run
    from ..train import load_run

    if Path(args.out).exists():  # said before the run and its data are read (export_run refuses it too)
        raise FileExistsError(f"{args.out} exists; export into a new folder")
    trainer = load_run(args.run_dir, data_dir=args.data_dir)
    text = None
    if trainer.cfg.data.dataset != "custom":
        text = load_item_text(trainer.cfg.data.dataset, trainer.cfg.data.data_dir)
    users = None if args.users == "none" else args.users
    out = export_run(
        trainer,
        args.out,
        users=users,
        histories=args.histories,
        encoder=not args.no_encoder,
        item_text=text,
        onnx=args.onnx,
    )
    print(f"exported {args.run_dir} to {out}")
    bias = getattr(trainer.model, "repeat_bias", None)
    if bias is not None:
        print(
            f"note: this model adds {float(bias.detach()):+.4f} (manifest 'repeat_bias') to the score of each item in "
            "the user's window; an index of these vectors ranks without it"
        )
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

    from ..export import read_manifest
    from ..retrieval import index_params, save_index, timed_build

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

    from ..export import load_encoder
    from ..retrieval import load_index, search

    index, meta, manifest, export_dir = load_index(args.index_dir, args.export_dir)
    items = pl.read_parquet(Path(export_dir) / "item_ids.parquet")
    if args.history is not None:
        if not manifest.get("encoder"):
            raise DataError(f"{export_dir} has no exported encoder: retrieve with --users instead")
        raw = comma_list(args.history, "--history")
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
                times = [int(float(t)) for t in comma_list(args.times, "--times")]
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
        try:
            wanted = [line.strip() for line in Path(args.users).read_text().splitlines() if line.strip()]
        except UnicodeDecodeError as err:
            raise DataError(f"{args.users}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        if not wanted:
            raise DataError(f"{args.users}: holds no user id (one user id a line is due)")
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
    table = {"query": [], "rank": [], "item": [], "score": [], **({"title": []} if titles else {})}
    for key, score_row, item_row, seen_rows in zip(keys, scores, rows, seen):
        candidates = items.height - (0 if args.include_seen else len(set(seen_rows)))
        found = int((item_row >= 0).sum())
        if found < min(args.k, candidates):  # graph / cluster search need not reach every item
            print(
                f"warning: {key}: the {meta['type']} index returned {found} of the "
                f"{min(args.k, candidates)} items asked for; a flat index lists every item",
                file=sys.stderr,
            )
        for rank, (score, row) in enumerate(zip(score_row, item_row), start=1):
            if row < 0:
                break
            table["query"].append(str(key))
            table["rank"].append(rank)
            table["item"].append(items["item_id"][int(row)])
            table["score"].append(float(score))
            if titles:
                table["title"].append(titles[row])
    result = pl.DataFrame(table, strict=False)
    if args.format == "json":  # one object per line: query, rank, item, score (, title)
        for record in result.iter_rows(named=True):
            print(json.dumps(record, default=str))
    elif args.format == "csv":
        sys.stdout.write(result.write_csv())
    else:
        for key in keys:
            print(f"{key}:")
            for r in result.filter(pl.col("query") == str(key)).iter_rows(named=True):
                title = f"  {r['title']}" if r.get("title") else ""
                print(f"  {r['rank']:3d}. {r['item']}  {r['score']:.4f}{title}")
    return 0
