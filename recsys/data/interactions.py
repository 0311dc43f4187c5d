"""The canonical interaction table and the parsing every reader shares.

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

from ..errors import DataError


@dataclass
class Interactions:
    frame: pl.DataFrame  # user_id, item_id, timestamp, rating, line [, event, category_id]
    source: str  # which file(s) it came from
    has_timestamps: bool

    def __len__(self) -> int:
        return self.frame.height


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


# A run trained on an in-memory table keeps that table in its folder, so that it can be evaluated,
# exported and asked for recommendations later without the DataFrame (recsys.train.load_run).
SAVED_TABLE = "interactions.parquet"
SAVED_INFO = "interactions.json"


def save_interactions(interactions: Interactions, folder: str | Path) -> None:
    """Write the canonical table to ``folder/interactions.parquet`` (atomically) with its sha256."""
    import io

    from ..files import atomic_write_bytes, atomic_write_json, make_folder, sha256_of

    folder = Path(folder)
    make_folder(folder)
    buffer = io.BytesIO()
    interactions.frame.write_parquet(buffer)
    atomic_write_bytes(folder / SAVED_TABLE, buffer.getvalue())
    atomic_write_json(
        folder / SAVED_INFO,
        {
            "sha256": sha256_of(folder / SAVED_TABLE),
            "rows": interactions.frame.height,
            "source": interactions.source,
            "has_timestamps": interactions.has_timestamps,
        },
    )


def load_saved_interactions(folder: str | Path) -> Interactions | None:
    """The table :func:`save_interactions` wrote (None when there is none); a file that does not match
    its recorded sha256 is a DataError."""
    from ..files import read_json, sha256_of

    folder = Path(folder)
    if not (folder / SAVED_INFO).exists():
        return None
    info = read_json(folder / SAVED_INFO, "saved interactions' record")
    path = folder / SAVED_TABLE
    if not path.exists() or sha256_of(path) != info.get("sha256"):
        raise DataError(f"{path}: missing or altered (its sha256 differs from {SAVED_INFO}); the run's data is lost")
    return Interactions(frame=pl.read_parquet(path), source=info["source"], has_timestamps=info["has_timestamps"])
