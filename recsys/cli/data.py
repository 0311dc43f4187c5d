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


def cmd_data_info(args) -> int:
    from ..data.cards import load_card, load_dataset, sha256_of
    from ..data.prepare import length_percentiles, prepare_sequences
    from ..data.readers import READERS, read_table

    dataset, reader = args.dataset, args.reader
    columns = separator = timestamp_format = None
    header, encoding, timestamp_unit = not args.no_header, args.encoding, args.timestamp_unit
    if dataset.endswith(".toml"):  # a recipe: its [data] section names a card or a file of one's own
        data_cfg = load_recipe(dataset).data
        if args.data_dir:
            data_cfg.data_dir = args.data_dir
        dataset = data_cfg.path if data_cfg.dataset == "custom" else data_cfg.dataset
        reader, columns = data_cfg.reader, data_cfg.columns
        separator, timestamp_format = data_cfg.separator, data_cfg.timestamp_format
        header, encoding, timestamp_unit = data_cfg.header, data_cfg.encoding, data_cfg.timestamp_unit
        if dataset is None:
            raise ConfigError(f"{args.dataset}: data.dataset = 'custom' needs data.path")
    elif args.columns:
        pairs = comma_list(args.columns, "--columns")
        if not all("=" in pair for pair in pairs):
            raise ConfigError(
                f"--columns: canonical=column pairs, e.g. user_id=visitor,item_id=product; got {args.columns!r}"
            )
        columns = dict(pair.split("=", 1) for pair in pairs)
        reader = reader or "table"  # a column mapping is the table reader's
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
                header=header,
                encoding=encoding,
                timestamp_unit=timestamp_unit,
            )
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
