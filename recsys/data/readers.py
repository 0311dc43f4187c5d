"""Readers: one function per file format of the dataset cards, each returning the canonical interaction
table (:mod:`recsys.data.interactions`); files of one's own go through :mod:`recsys.data.tables`.
Errors name the file, the line and the field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from ..errors import DataError  # noqa: F401  (re-exported: recsys.data.readers.DataError)
from .interactions import Interactions, _cast_column, _finish, _lines, read_delimited, read_text  # noqa: F401
from .tables import SUBSECOND_ORDER, frame_to_interactions, read_table  # noqa: F401  (re-exported)

ID = pl.Int64


def read_movielens_100k(path: str | Path) -> Interactions:
    """``u.data``: user<TAB>item<TAB>rating<TAB>timestamp."""
    df = read_delimited(path, [("user_id", ID), ("item_id", ID), ("rating", pl.Float64), ("timestamp", ID)], "\t")
    return _finish(df, str(path))


def read_movielens_dat(path: str | Path) -> Interactions:
    """ML-1M / ML-10M ``ratings.dat``: user::item::rating::timestamp (optionally gzipped)."""
    df = read_delimited(
        path, [("user_id", ID), ("item_id", ID), ("rating", pl.Float64), ("timestamp", ID)], "::", encoding="latin-1"
    )
    return _finish(df, str(path))


def read_movielens_csv(path: str | Path) -> Interactions:
    """ml-latest / ml-20m / ml-25m ``ratings.csv`` with header userId,movieId,rating,timestamp."""
    path = Path(path)
    first = read_text(path).split("\n", 1)[0].strip()
    expected = "userId,movieId,rating,timestamp"
    if first != expected:
        raise DataError(f"{path}, line 1: expected the header {expected!r}, found {first!r}")
    df = read_delimited(
        path, [("user_id", ID), ("item_id", ID), ("rating", pl.Float64), ("timestamp", ID)], ",", header=True
    )
    return _finish(df, str(path))


def read_user_item_lines(path: str | Path) -> Interactions:
    """SASRec / BERT4Rec style: one interaction ``user item`` per line, each user's lines in time order.

    No timestamps: the line order is the time order.
    """
    df = read_delimited(path, [("user_id", ID), ("item_id", ID)], "whitespace")
    return _finish(df, str(path))


def read_user_sequence_lines(path: str | Path) -> Interactions:
    """S3-Rec style: ``user item_1 item_2 ...`` per line, items in time order."""
    path = Path(path)
    lines = _lines(path, read_text(path), header=False)
    parts = lines.with_columns(pl.col("text").str.extract_all(r"\S+").alias("parts"))
    short = parts.filter(pl.col("parts").list.len() < 2)
    if short.height:
        row = short.row(0, named=True)
        raise DataError(f"{path}, line {row['line']}: expected 'user item_1 item_2 ...', found {row['text'][:100]!r}")
    df = parts.select(
        pl.col("line").alias("seq_line"),
        pl.col("parts").list.first().alias("user_id"),
        pl.col("parts").list.slice(1).alias("item_id"),
    ).explode("item_id")
    # 'line' keeps the tie-break role: one row per item, in file order
    df = df.with_row_index("line", offset=1).with_columns(pl.col("line").cast(pl.Int64))
    for col in ("user_id", "item_id"):
        cast = df[col].cast(ID, strict=False)
        if cast.null_count():
            row = df.filter(cast.is_null()).row(0, named=True)
            raise DataError(f"{path}, line {row['seq_line']}: field '{col}' must be an integer, got {row[col]!r}")
        df = df.with_columns(cast.alias(col))
    return _finish(df.drop("seq_line"), str(path))


_ATOMIC_TYPES = {"token": pl.Utf8, "float": pl.Float64, "token_seq": pl.Utf8, "float_seq": pl.Utf8}


def read_recbole_inter(path: str | Path) -> Interactions:
    """RecBole atomic ``.inter``: tab-separated, header ``name:type``; needs user_id and item_id.

    A timestamp column (``timestamp:float``) orders events; a ``rating`` column is kept.
    """
    path = Path(path)
    header = read_text(path).split("\n", 1)[0].rstrip("\r").split("\t")
    fields: list[tuple[str | None, pl.DataType]] = []
    for col in header:
        name, _, typ = col.partition(":")
        if typ not in _ATOMIC_TYPES:
            raise DataError(f"{path}, line 1: column {col!r} has no RecBole type (one of {sorted(_ATOMIC_TYPES)})")
        fields.append((name if name in ("user_id", "item_id", "timestamp", "rating") else None, _ATOMIC_TYPES[typ]))
    names = [f for f, _ in fields if f]
    for need in ("user_id", "item_id"):
        if need not in names:
            raise DataError(f"{path}, line 1: missing column '{need}:token' (header: {header})")
    df = read_delimited(path, fields, "\t", header=True)
    if "timestamp" in df.columns:
        df = df.with_columns(pl.col("timestamp").cast(pl.Int64))
    return _finish(df, str(path))


def read_unisrec_sequences(path: str | Path) -> Interactions:
    """UniSRec / RecBole *sequential* ``.inter`` (``user_id  item_id_list  item_id``), e.g. ``X.test.inter``.

    Each user's full sequence is its longest line's history plus target; histories are capped (50 in the
    UniSRec files), so a user with a longer log keeps only the items visible in the file.
    """
    path = Path(path)
    df = read_delimited(path, [("user_id", pl.Utf8), ("history", pl.Utf8), ("item_id", pl.Utf8)], "\t", header=True)
    df = df.with_columns(pl.col("history").str.extract_all(r"\S+").alias("history"))
    df = df.sort("line").group_by("user_id", maintain_order=True).last()
    df = df.select("user_id", pl.concat_list([pl.col("history"), pl.col("item_id")]).alias("item_id")).explode(
        "item_id"
    )
    df = df.with_row_index("line", offset=1).with_columns(pl.col("line").cast(pl.Int64))
    for col in ("user_id", "item_id"):  # the indices are integers: keep their numeric order
        as_int = df[col].cast(ID, strict=False)
        if not as_int.null_count():
            df = df.with_columns(as_int.alias(col))
    return _finish(df, str(path))


def read_taobao_userbehavior(path: str | Path, events: tuple[str, ...] | None = ("pv",)) -> Interactions:
    """Taobao UserBehavior.csv: user,item,category,behavior,timestamp (no header)."""
    df = read_delimited(
        path, [("user_id", ID), ("item_id", ID), ("category_id", ID), ("event", pl.Utf8), ("timestamp", ID)], ","
    )
    known = {"pv", "buy", "cart", "fav"}
    unknown = df.filter(~pl.col("event").is_in(list(known)))
    if unknown.height:
        row = unknown.row(0, named=True)
        raise DataError(
            f"{path}, line {row['line']}: field 'event' must be one of {sorted(known)}, got {row['event']!r}"
        )
    if events is not None:
        df = df.filter(pl.col("event").is_in(list(events)))
    return _finish(df, str(path))


READERS = {
    "movielens_100k": read_movielens_100k,
    "movielens_dat": read_movielens_dat,
    "movielens_csv": read_movielens_csv,
    "user_item_lines": read_user_item_lines,
    "user_sequence_lines": read_user_sequence_lines,
    "recbole_inter": read_recbole_inter,
    "unisrec_sequences": read_unisrec_sequences,
    "taobao_userbehavior": read_taobao_userbehavior,
    "table": read_table,
}


# ----------------------------------------------------------------------------- item text


ITEM_TEXT_FORMATS = ("movielens_100k_items", "movielens_dat_items", "movielens_csv_items", "unisrec_text")


def read_item_text(path: str | Path, fmt: str) -> pl.DataFrame:
    """Item catalogue text: DataFrame(item_id, title, genres). ``fmt``: movielens_100k_items (u.item),
    movielens_dat_items (movies.dat), movielens_csv_items (movies.csv), unisrec_text (.text)."""
    path = Path(path)
    if fmt == "movielens_100k_items":
        genre_names = [
            "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
            "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
        ]  # fmt: skip
        fields = [("item_id", ID), ("title", pl.Utf8), (None, pl.Utf8), (None, pl.Utf8), (None, pl.Utf8)]
        fields += [(f"g{i}", ID) for i in range(len(genre_names))]
        df = read_delimited(path, fields, "|", encoding="latin-1")
        genres = pl.concat_list([pl.when(pl.col(f"g{i}") == 1).then(pl.lit(g)) for i, g in enumerate(genre_names)])
        return df.select("item_id", "title", genres.list.drop_nulls().list.join("|").alias("genres"))
    if fmt == "movielens_dat_items":
        df = read_delimited(path, [("item_id", ID), ("title", pl.Utf8), ("genres", pl.Utf8)], "::", encoding="latin-1")
        return df.select("item_id", "title", "genres")
    if fmt == "movielens_csv_items":
        try:
            df = pl.read_csv(path, schema_overrides={"movieId": pl.Int64})
        except Exception as err:
            raise DataError(f"{path}: could not be parsed as CSV ({str(err).splitlines()[0]})") from None
        return df.select(pl.col("movieId").alias("item_id"), "title", "genres")
    if fmt == "unisrec_text":
        # UniSRec's Amazon text is "title. category path. brand. ": split from the right, so a title may
        # hold ". " itself; a line with fewer than three parts is all title
        df = read_delimited(path, [("item_id", pl.Utf8), ("text", pl.Utf8)], "\t", header=True)
        index_file = path.with_suffix(".item2index")  # UniSRec's sequences name items by index, the text by ASIN
        if index_file.exists():
            index = read_delimited(index_file, [("item_id", pl.Utf8), ("index", pl.Utf8)], "\t")
            df = df.join(index, on="item_id", how="left")
            if df["index"].null_count():
                missing = df.filter(pl.col("index").is_null())["item_id"].head(5).to_list()
                raise DataError(
                    f"{path}: {df['index'].null_count()} items are not in {index_file.name}, e.g. {missing}"
                )
            df = df.with_columns(pl.col("index").alias("item_id"))
        parts = pl.col("text").str.strip_chars().str.strip_chars_end(".").str.split(". ")
        n = parts.list.len()
        return df.select(
            "item_id",
            pl.when(n >= 3)
            .then(parts.list.slice(0, n - 2).list.join(". "))
            .otherwise(pl.col("text").str.strip_chars())
            .alias("title"),
            pl.lit(None, dtype=pl.Utf8).alias("genres"),
            pl.when(n >= 3).then(parts.list.get(-1, null_on_oob=True)).alias("brand"),
            pl.when(n >= 3).then(parts.list.get(-2, null_on_oob=True)).alias("category"),
        )
    raise DataError(f"unknown item text format {fmt!r}")


ITEM_ATTRIBUTE_FORMATS = ("s3rec_json",)


def read_item_attributes(path: str | Path, fmt: str) -> pl.DataFrame:
    """Item attributes (brand, category, tag ids) as a long table DataFrame(item_id: str, attribute: str),
    one row per (item, attribute). ``fmt``: ``s3rec_json`` (S3-Rec's ``*_item2attributes.json``: a JSON
    object from item id to a list of attribute ids)."""
    import json

    path = Path(path)
    if fmt not in ITEM_ATTRIBUTE_FORMATS:
        raise DataError(f"{path}: unknown item attribute format {fmt!r}; allowed: {list(ITEM_ATTRIBUTE_FORMATS)}")
    try:
        table = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {err.lineno}: not JSON ({err.msg})") from None
    if not isinstance(table, dict):
        raise DataError(f"{path}: expected a JSON object from item id to a list of attribute ids")
    items, attributes = [], []
    for item, values in table.items():
        if not isinstance(values, list) or not all(
            isinstance(v, (int, str)) and not isinstance(v, bool) for v in values
        ):
            raise DataError(f"{path}: item {item!r}: expected a list of attribute ids, got {str(values)[:80]}")
        for value in dict.fromkeys(str(v) for v in values):  # an attribute counts once per item
            items.append(str(item))
            attributes.append(value)
    return pl.DataFrame({"item_id": items, "attribute": attributes}, schema={"item_id": pl.Utf8, "attribute": pl.Utf8})


def item_attribute_index(item_raw_ids, table: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, int]:
    """An attribute table (:func:`recsys.data.cards.load_item_attributes`) by internal item id: (attribute
    ids [nnz], offsets [V + 1], number of attributes), item i's attributes ``ids[offsets[i] : offsets[i +
    1]]``; padding (row 0) and items the table does not list have none. Attribute ids are numbered 0.. in order of first
    appearance among the catalogue's items; attributes of items not in the catalogue are not counted."""
    rows = pl.DataFrame({"item_id": [str(x) for x in item_raw_ids[1:]]}).with_row_index("row", offset=1)
    long = rows.join(table, on="item_id", how="inner", maintain_order="left").sort("row", maintain_order=True)
    codes = long.select("attribute").unique(maintain_order=True).with_row_index("code")
    ids = long.join(codes, on="attribute", how="left", maintain_order="left")["code"].to_numpy().astype(np.int64)
    counts = np.bincount(long["row"].to_numpy(), minlength=len(item_raw_ids))[: len(item_raw_ids)]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return ids, offsets, codes.height
