"""Readers: one function per file format, each returning the canonical interaction table.

The canonical table (:class:`Interactions`) is a polars DataFrame with the columns
``user_id``, ``item_id`` (raw ids, integer or string), ``timestamp`` (Int64, null when the format
has none), ``rating`` (Float64, null when absent), optional extra columns (``event``,
``category_id``) and ``line`` — the 1-based line of the source file, used to break timestamp ties
in file order and to name the line in error messages.

All parsing is vectorised in polars: the file is split into lines, lines into fields, fields cast;
any line that does not fit raises :class:`DataError` naming the file, the line and the field.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import polars as pl

from ..errors import DataError  # noqa: F401  (re-exported: recsys.data.readers.DataError)


@dataclass
class Interactions:
    frame: pl.DataFrame  # user_id, item_id, timestamp, rating, line [, event, category_id]
    source: str  # which file(s) it came from
    has_timestamps: bool

    def __len__(self) -> int:
        return self.frame.height


# ----------------------------------------------------------------------------- low level


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """Whole file as text; ``.gz`` transparently decompressed; decode errors name the line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"{path}: not a valid gzip file ({err})") from None
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path}, line {line}: bytes that are not {encoding} text (set the card's encoding, e.g. latin-1)"
        ) from None


def _lines(path: Path, text: str, header: bool) -> pl.DataFrame:
    """DataFrame(line: 1-based number, text) without trailing blank lines or the header."""
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    lines = (
        pl.DataFrame({"text": [text]})
        .select(pl.col("text").str.split("\n"))
        .explode("text")
        .with_row_index("line", offset=1)
        .with_columns(pl.col("text").str.strip_chars_end("\r"), pl.col("line").cast(pl.Int64))
    )
    nonblank = lines.filter(pl.col("text").str.strip_chars() != "")
    last = nonblank["line"].max()
    lines = lines.filter(pl.col("line") <= last)
    if header:
        lines = lines.slice(1)
    blank = lines.filter(pl.col("text").str.strip_chars() == "")
    if blank.height:
        raise DataError(f"{path}, line {blank['line'][0]}: blank line inside the file ({blank.height} in all)")
    if lines.height == 0:
        raise DataError(f"{path}: only a header, no data lines")
    return lines


def _split_fields(separator: str) -> pl.Expr:
    if separator == "whitespace":
        return pl.col("text").str.extract_all(r"\S+")
    return pl.col("text").str.split(separator)


def _describe_sep(separator: str) -> str:
    return {"\t": "a tab", " ": "a space", "whitespace": "whitespace", ",": "a comma"}.get(separator, repr(separator))


def _cast_column(path: Path, df: pl.DataFrame, name: str, dtype: pl.DataType) -> pl.DataFrame:
    """Cast the string column ``name``; a value that does not parse names its line."""
    if dtype == pl.Utf8:
        return df
    cast = pl.col(name).str.strip_chars().cast(dtype, strict=False)
    out = df.with_columns(cast.alias("__cast"))
    bad = out.filter(pl.col("__cast").is_null() & pl.col(name).is_not_null())
    if bad.height:
        row = bad.row(0, named=True)
        kind = "an integer" if dtype.is_integer() else "a number"
        raise DataError(
            f"{path}, line {row['line']}: field '{name}' must be {kind}, got {row[name]!r} ({bad.height} such lines)"
        )
    return out.drop(name).rename({"__cast": name})


def read_delimited(
    path: str | Path,
    fields: Sequence[tuple[str | None, pl.DataType]],
    separator: str,
    encoding: str = "utf-8",
    header: bool = False,
    allow_extra_fields: bool = False,
) -> pl.DataFrame:
    """Read a file of delimited lines into typed columns plus ``line``.

    ``fields``: (name, dtype) per position; a name of None skips that position. Every line must have
    exactly ``len(fields)`` fields (or at least that many with ``allow_extra_fields``).
    """
    path = Path(path)
    lines = _lines(path, read_text(path, encoding), header)
    parts = lines.with_columns(_split_fields(separator).alias("parts"))
    counts = parts["parts"].list.len()
    n = len(fields)
    bad_mask = (counts < n) if allow_extra_fields else (counts != n)
    if bad_mask.any():
        row = parts.filter(bad_mask).row(0, named=True)
        found = len(row["parts"])
        raise DataError(
            f"{path}, line {row['line']}: expected {n} fields separated by {_describe_sep(separator)}, "
            f"found {found}: {row['text'][:100]!r}" + ("" if found > 1 else " (wrong separator?)")
        )
    df = parts.select(
        "line",
        *[pl.col("parts").list.get(i).alias(name) for i, (name, _) in enumerate(fields) if name is not None],
    )
    for name, dtype in fields:
        if name is not None:
            df = _cast_column(path, df, name, dtype)
    return df


def _finish(df: pl.DataFrame, source: str) -> Interactions:
    """Add missing canonical columns with nulls and order them."""
    has_ts = "timestamp" in df.columns
    for name, dtype in (("timestamp", pl.Int64), ("rating", pl.Float64)):
        if name not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=dtype).alias(name))
    df = df.with_columns(pl.col("timestamp").cast(pl.Int64), pl.col("rating").cast(pl.Float64))
    extra = [c for c in df.columns if c not in ("user_id", "item_id", "timestamp", "rating", "line")]
    df = df.select("user_id", "item_id", "timestamp", "rating", "line", *extra)
    for col in ("user_id", "item_id"):
        if df[col].null_count():
            line = df.filter(pl.col(col).is_null())["line"][0]
            raise DataError(f"{source}, line {line}: field '{col}' is empty")
        if df[col].dtype.is_integer() and df.height and df[col].min() < 0:
            bad = df.filter(pl.col(col) < 0)
            raise DataError(
                f"{source}, line {bad['line'][0]}: field '{col}' is {bad[col][0]}: integer ids must be >= 0 "
                f"(a negative id usually marks a missing value; {bad.height:,} such lines)"
            )
    return Interactions(frame=df, source=source, has_timestamps=has_ts)


# ----------------------------------------------------------------------------- formats

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


def read_taobao_userbehavior(path: str | Path, events: Sequence[str] | None = ("pv",)) -> Interactions:
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


# timestamps are whole seconds; where a log's are finer (fractional seconds, date-times with
# milliseconds) this column keeps their exact order for the chronological sort (recsys.data.prepare)
SUBSECOND_ORDER = "timestamp_order"

# the row-number column the table readers add (a name no log has, so a column called "line" is data)
ROW_NUMBER = "__recsys_line__"


def read_table(
    path: str | Path,
    columns: dict[str, str],
    separator: str | None = None,
    timestamp_format: str | None = None,
) -> Interactions:
    """Any CSV / TSV / Parquet log. ``columns`` maps canonical names to the file's column names,
    e.g. ``{"user_id": "visitorid", "item_id": "itemid", "timestamp": "ts"}``. ``separator``: default a
    tab for ``.tsv`` / ``.tab`` files, else a comma. ``timestamp_format``: the strftime format of text
    timestamps (default: integers, or date-times in the format polars infers)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if separator is None:
        separator = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        if path.suffix == ".parquet":
            df = pl.read_parquet(path)
            df = df.with_row_index(ROW_NUMBER, offset=1)
        else:
            df = pl.read_csv(
                path, separator=separator, infer_schema_length=0, row_index_name=ROW_NUMBER, row_index_offset=2
            )
    except Exception as err:  # polars raises many kinds; show the first line of its message
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"{path}: could not be parsed as {'Parquet' if path.suffix == '.parquet' else 'CSV'} ({msg})"
        ) from None
    return frame_to_interactions(
        df, columns, source=str(path), timestamp_format=timestamp_format, line_column=ROW_NUMBER
    )


def _parse_datetimes(out: pl.DataFrame, as_int: pl.Series, source: str, timestamp_format: str | None) -> pl.Series:
    """A text ``timestamp`` column that is not all numbers, as date-times (``as_int``: its values read as
    integers, null where they are not). Every value must be a date-time of one format
    (``timestamp_format``, else the one polars infers); a value that is neither, or a column mixing
    integers and date-times, is an error naming the line."""
    ts = out["timestamp"]
    hint = (
        "" if timestamp_format else " (a date-time format can be given: data.timestamp_format, e.g. '%d/%m/%Y %H:%M')"
    )
    try:
        as_dt = ts.str.strip_chars().str.to_datetime(format=timestamp_format, strict=False)
    except pl.exceptions.PolarsError:  # no format fits the values polars inferred it from: none is a date-time
        as_dt = pl.Series("timestamp", [None] * len(ts), dtype=pl.Datetime)
    neither = ts.is_not_null() & as_int.is_null() & as_dt.is_null()
    # a UTC offset (Z, +02:00, -0500) at the end of some date-times and not of others: one kind per column
    offset = ts.str.strip_chars().str.contains(r"(Z|[+-]\d{2}:?\d{2})$") & as_int.is_null()
    if neither.any() and offset.any() and (~offset & as_int.is_null() & ts.is_not_null()).any():
        line_offset = out.filter(offset)["line"][0]
        line_naive = out.filter(~offset & as_int.is_null() & ts.is_not_null())["line"][0]
        raise DataError(
            f"{source}, line {line_offset}: field 'timestamp' has a UTC offset "
            f"({out.filter(offset)['timestamp'][0]!r}) where line {line_naive} has none "
            f"({out.filter(pl.col('line') == line_naive)['timestamp'][0]!r}): give every time an offset, "
            "or none"
        )
    if neither.any():
        row = out.filter(neither).row(0, named=True)
        raise DataError(
            f"{source}, line {row['line']}: field 'timestamp' is neither an integer nor a date-time: "
            f"{row['timestamp']!r}{hint}"
        )
    if as_int.null_count() < len(ts):  # every value is one or the other, and some are integers
        line_int = out.filter(as_int.is_not_null())["line"][0]
        line_dt = out.filter(as_dt.is_not_null())["line"][0]
        raise DataError(
            f"{source}, line {line_int}: field 'timestamp' is an integer where line {line_dt} has a "
            f"date-time: one kind per column"
        )
    return as_dt


def _canonical_timestamps(out: pl.DataFrame, source: str, timestamp_format: str | None) -> pl.DataFrame:
    """``timestamp`` as whole seconds since the epoch (Int64) from integers, fractional seconds (numbers
    or text) or date-times (typed, or text). Where the times are finer than seconds (fractions, date-times
    with milliseconds) their exact values go to :data:`SUBSECOND_ORDER`, so that events within one second
    keep their order in time, not in the file."""
    ts = out["timestamp"]
    seconds, finer, scale = ts, None, 1.0  # finer: the times at full resolution, scale: its units per second
    if ts.dtype == pl.Utf8:
        text = ts.str.strip_chars()
        as_int = text.cast(pl.Int64, strict=False)
        as_float = text.cast(pl.Float64, strict=False) if timestamp_format is None else None
        if as_int.null_count() == ts.null_count():
            seconds = as_int
        elif as_float is not None and as_float.null_count() == ts.null_count():
            seconds, finer = as_float.floor().cast(pl.Int64), as_float
        else:
            as_dt = _parse_datetimes(out, as_int, source, timestamp_format)
            seconds, finer, scale = as_dt.dt.epoch("s"), as_dt.dt.epoch("us"), 1e6
    elif ts.dtype.is_temporal():
        seconds, finer, scale = ts.dt.epoch("s"), ts.dt.epoch("us"), 1e6
    elif ts.dtype.is_float():
        ts = ts.fill_nan(None)  # a NaN time is a missing one (an error naming its line, later)
        seconds, finer = ts.floor().cast(pl.Int64), ts
    out = out.with_columns(seconds.alias("timestamp"))
    if finer is not None and not (finer.cast(pl.Float64) == seconds.cast(pl.Float64) * scale).all():
        out = out.with_columns(finer.cast(pl.Float64).alias(SUBSECOND_ORDER))
    return out


def frame_to_interactions(
    df: pl.DataFrame,
    columns: dict[str, str],
    source: str = "DataFrame",
    timestamp_format: str | None = None,
    line_column: str | None = None,
) -> Interactions:
    """Canonical table from an in-memory polars / pandas DataFrame and a column mapping. Errors name a
    row by ``line_column`` (a file's line numbers) or, without one, by its 1-based row number."""
    if not isinstance(df, pl.DataFrame):
        df = pl.from_pandas(df)
    if line_column is None:
        line_column = ROW_NUMBER
        df = df.with_row_index(ROW_NUMBER, offset=1)
    allowed = {"user_id", "item_id", "timestamp", "rating", "event", "category_id"}
    for key in columns:
        if key not in allowed:
            raise DataError(f"{source}: unknown canonical column {key!r}; allowed: {sorted(allowed)}")
    for need in ("user_id", "item_id"):
        if need not in columns:
            raise DataError(f"{source}: the column mapping must name '{need}'")
    have = [c for c in df.columns if c != line_column]
    missing = [c for c in columns.values() if c not in have]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {missing}; the {'DataFrame' if source == 'DataFrame' else 'file'} has {have}"
        )
    if df.height == 0:
        raise DataError(f"{source}: no rows")
    out = df.select(
        pl.col(line_column).cast(pl.Int64).alias("line"), *[pl.col(src).alias(dst) for dst, src in columns.items()]
    )
    for col in ("user_id", "item_id"):
        if out[col].dtype == pl.Utf8:
            as_int = out[col].str.strip_chars().cast(pl.Int64, strict=False)
            if as_int.null_count() == out[col].null_count():
                out = out.with_columns(as_int.alias(col))
    if "rating" in out.columns:
        out = _cast_column(Path(source), out.with_columns(pl.col("rating").cast(pl.Utf8)), "rating", pl.Float64)
    if "timestamp" in out.columns:
        out = _canonical_timestamps(out, source, timestamp_format)
    return _finish(out, source)


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
