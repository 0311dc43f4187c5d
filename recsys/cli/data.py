"""``recsys data info | list``: a dataset's counts and the dataset cards."""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError, load_recipe
from ..data.readers import DataError
from .serve import comma_list


def time_span(timestamps) -> str:
    """The first and last event's UTC dates (times are seconds since the epoch): where a log's times were
    read in the wrong unit, the years say so."""
    import datetime as dt

    def day(seconds: int) -> str:
        try:
            return dt.datetime.fromtimestamp(int(seconds), dt.timezone.utc).strftime("%Y-%m-%d")
        except (OverflowError, OSError, ValueError):  # beyond the calendar's years
            return f"{int(seconds):,} s"

    return f"yes, {day(timestamps.min())} to {day(timestamps.max())} (UTC, read as seconds since 1970)"


def table_options(args) -> dict:
    """The table reader's options given as flags (``cli.table_flags``), as ``[data]`` keys; those left at
    their defaults are left out."""
    options = {}
    if args.columns:
        pairs = comma_list(args.columns, "--columns")
        if not all("=" in pair for pair in pairs):
            raise ConfigError(
                f"--columns: canonical=column pairs, e.g. user_id=visitor,item_id=product; got {args.columns!r}"
            )
        options["columns"] = {key.strip(): column.strip() for key, column in (p.split("=", 1) for p in pairs)}
        if args.no_header:  # columns by number
            for key, column in options["columns"].items():
                if not column.isdigit():
                    raise ConfigError(f"--columns with --no-header: {key}={column!r} is not a column number")
                options["columns"][key] = int(column)
    if args.separator is not None:
        options["separator"] = args.separator
    if args.no_header:
        options["header"] = False
    if args.encoding != "utf-8":
        options["encoding"] = args.encoding
    if args.timestamp_unit != "auto":
        options["timestamp_unit"] = args.timestamp_unit
    return options


def cmd_config_new(args) -> int:
    """A start-here recipe for a log of one's own: the file is read (every error names its line), the
    history window fitted to its median history, the recipe checked like any other, then printed or
    written (atomically, never over an existing file)."""
    import os
    import tomllib

    import numpy as np

    from ..config import config_from_dict
    from ..data.prepare import prepare_sequences
    from ..data.readers import read_table
    from ..files import atomic_write_bytes, make_folder
    from ..start_here import models_for_logs, render_for_log

    if args.model not in models_for_logs():
        raise ConfigError(f"--model {args.model!r}: one of {models_for_logs()} (the text models need item text)")
    path = Path(args.data)
    if not path.is_file():
        raise DataError(f"{path}: file not found" + (" (a folder)" if path.is_dir() else ""))
    out = Path(args.out) if args.out else None
    if out is not None and out.exists():
        raise ConfigError(f"{out} exists; give a new --out")
    options = table_options(args)
    options.setdefault("columns", {"user_id": "user_id", "item_id": "item_id"})
    interactions = read_table(path, **options)
    seq = prepare_sequences(interactions, verbose=False)
    # a relative path is read beside the recipe (recsys.config.load_recipe): where it is written, the path
    # goes from there; printed, it goes from here
    where = os.path.relpath(path.resolve(), out.resolve().parent) if out is not None else str(path)
    data = {"dataset": "custom", "path": Path(where).as_posix(), "reader": "table", **options}
    text = render_for_log(data, args.model, float(np.median(seq.lengths)), interactions.has_timestamps)
    config_from_dict(tomllib.loads(text))  # the recipe holds only keys and values a recipe may
    if out is None:
        print(text, end="")
        return 0
    make_folder(out.parent)
    atomic_write_bytes(out, text.encode())
    print(f"wrote {out}: {seq.num_users:,} users, {seq.num_items - 1:,} items; train it with: recsys train {out}")
    return 0


def cmd_data_info(args) -> int:
    import numpy as np

    from ..data.cards import load_card, load_dataset, sha256_of
    from ..data.pipeline import TABLE_OPTIONS
    from ..data.prepare import length_percentiles, prepare_sequences, repeat_events
    from ..data.readers import READERS, read_table

    dataset, reader = args.dataset, args.reader
    options = table_options(args)  # the table reader's keyword arguments (columns among them)
    if dataset.endswith(".toml"):  # a recipe: its [data] section names a card or a file of one's own
        data_cfg = load_recipe(dataset).data
        if args.data_dir:
            data_cfg.data_dir = args.data_dir
        dataset = data_cfg.path if data_cfg.dataset == "custom" else data_cfg.dataset
        reader = data_cfg.reader
        options = {"columns": data_cfg.columns, **{key: getattr(data_cfg, key) for key in TABLE_OPTIONS}}
        if dataset is None:
            raise ConfigError(f"{args.dataset}: data.dataset = 'custom' needs data.path")
    elif options:
        reader = reader or "table"  # a column mapping, a separator, ... are the table reader's
    if Path(dataset).is_file():  # a file of one's own: name its reader
        if reader not in READERS:
            raise ConfigError(f"{dataset} is a file: give --reader, one of {sorted(READERS)}")
        path = Path(dataset)
        if reader == "table":
            options["columns"] = options.get("columns") or {"user_id": "user_id", "item_id": "item_id"}
            interactions = read_table(path, **options)
        else:
            interactions = READERS[reader](path)
        title, digest, note = f"{path.name} (reader {reader})", sha256_of(path), ""
    elif Path(dataset).is_dir():
        raise DataError(
            f"{dataset}: is a folder; give a file (with --reader) or a dataset card name (recsys data list)"
        )
    else:
        from ..data.cards import list_cards

        if dataset not in list_cards() and ("/" in dataset or "\\" in dataset or Path(dataset).suffix):
            raise DataError(f"{dataset}: file not found (nor is it a dataset card name: recsys data list)")
        loaded = load_dataset(dataset, args.data_dir)
        card = load_card(dataset)
        interactions, path, digest, note = loaded.interactions, loaded.file, loaded.sha256, loaded.variant.note
        title = f"{card.name}: {card.description}"
    side = []  # what a card adds beside the interactions (read by the text models, model.attribute_embeddings)
    if not Path(dataset).is_file():
        side = [f"item text ({card.item_text['file']})"] if card.item_text else []
        side += [f"item attributes ({card.item_attributes['file']})"] if card.item_attributes else []
    seq = prepare_sequences(interactions, verbose=True)
    print(f"dataset       {title}")
    print(f"file          {path.name} (sha256 {digest[:16]}…)" + (f" — {note}" if note else ""))
    print(f"users         {seq.num_users:,}")
    print(f"items         {seq.num_items - 1:,}")
    print(f"interactions  {seq.num_interactions:,}")
    print(f"timestamps    {time_span(seq.timestamps) if seq.has_timestamps else 'no (file order is time order)'}")
    print(f"side files    {', '.join(side) if side else 'none'}")
    pct = length_percentiles(seq.lengths)
    print(
        "sequence length percentiles: "
        + "  ".join(f"{k}={v:g}" for k, v in pct.items())
        + f"  mean={seq.lengths.mean():.1f}"
    )
    per_item = np.bincount(seq.item_ids, minlength=seq.num_items)[1:]
    print(
        "events per item percentiles: "
        + "  ".join(f"{k}={v:g}" for k, v in length_percentiles(per_item, (0, 50, 90, 99, 100)).items())
        + f"  (items with fewer than 5: {np.mean(per_item < 5):.1%})"
    )
    repeat = repeat_events(seq)
    last = repeat[seq.seq_offsets[1:] - 1]  # each user's last event: the leave-one-out test target
    print(
        f"repeat events {repeat.mean():.1%} of all, {last.mean():.1%} of the users' last ones: an item already "
        "in the user's history"
        + ("; eval.exclude_seen = true counts such test targets as misses" if last.any() else "")
    )
    return 0


def cmd_data_list(args) -> int:
    """Every card, and whether its file is here (RECSYS_DATA / --data-dir / the cache), will be downloaded
    on first use, or has to be fetched by hand (no official download)."""
    from ..data.cards import list_cards, load_card, resolve_file

    broken = 0
    for name in list_cards():
        try:
            card = load_card(name)
        except DataError as err:  # the others are still listed; the error says what to mend
            print(f"{name:18s} {'invalid':9s} {err}")
            broken += 1
            continue
        try:
            resolve_file(card, getattr(args, "data_dir", None), download=False)
            where = "present"
        except DataError:
            where = "download" if card.download else "absent"
        print(f"{name:18s} {where:9s} {card.description}")
    print(
        "\npresent: the file is here; download: fetched from the official source on first use; absent: no official "
        "download" + ("; invalid: the card has an error (it says which)" if broken else "")
    )
    return 2 if broken else 0
