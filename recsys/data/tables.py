"""Logs of one's own: any CSV / TSV / Parquet / JSON-lines file (text gzipped or not, in any encoding) or
in-memory DataFrame with a column mapping, to the canonical table; integer, fractional or date-time
timestamps (one format per column, offsets checked)."""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import zlib
from pathlib import Path
from typing import Literal

import polars as pl

from ..errors import DataError
from .interactions import Interactions, _cast_column, _finish

# timestamps are whole seconds; where a log's are finer (fractional seconds, date-times with
# milliseconds) this column keeps their exact order for the chronological sort (recsys.data.prepare)
SUBSECOND_ORDER = "timestamp_order"

# the row-number column the table readers add (a name no log has, so a column called "line" is data)
ROW_NUMBER = "__recsys_line__"

KIND_NAMES = {"csv": "CSV", "parquet": "Parquet", "json": "JSON lines"}
UTF16_MARKS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
GZIP_MAGIC = b"\x1f\x8b"
# numeric timestamps: units per second, and where "auto" takes each unit. Epoch seconds stay below 1e10
# until the year 2286, while milliseconds since 1973 are above 1e11 (microseconds 1e14, nanoseconds 1e17)
TIMESTAMP_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
AUTO_UNIT_FROM = (("ns", 1e17), ("us", 1e14), ("ms", 1e11))
TimestampUnit = Literal["auto", "s", "ms", "us", "ns"]


def read_table(
    path: str | Path,
    columns: dict[str, str | int],
    separator: str | None = None,
    timestamp_format: str | None = None,
    header: bool = True,
    encoding: str = "utf-8",
    timestamp_unit: TimestampUnit = "auto",
) -> Interactions:
    """Any CSV / TSV / Parquet / JSON-lines log (CSV and JSON lines may be gzipped: ``.csv.gz``,
    ``.json.gz``). ``columns`` maps canonical names to the file's columns, by name or by 1-based position,
    e.g. ``{"user_id": "visitorid", "item_id": "itemid", "timestamp": "ts"}`` or, for a CSV without a
    header line (``header=False``), ``{"user_id": 1, "item_id": 2, "timestamp": 4}``. ``separator``:
    default a tab for ``.tsv`` / ``.tab`` files, else a comma. ``timestamp_format``: the strftime format of
    text timestamps (default: numbers, or date-times in the format polars infers). ``timestamp_unit``: the
    unit of numeric timestamps, ``s`` / ``ms`` / ``us`` / ``ns``; ``auto`` reads epoch times of 1e11 and
    more as milliseconds (1e14: microseconds, 1e17: nanoseconds), smaller ones as seconds. ``encoding``: the
    text files' character encoding (any Python codec name, e.g. ``latin-1``)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    kind = table_kind(path)
    try:
        encoding = codecs.lookup(encoding).name
    except LookupError:
        raise DataError(
            f"{path}: unknown encoding {encoding!r} (a Python codec name, e.g. 'utf-8', 'latin-1')"
        ) from None
    if kind == "parquet" and encoding != "utf-8":
        raise DataError(f"{path}: an encoding applies to CSV and JSON lines; Parquet's text is UTF-8")
    if kind != "parquet" and encoding == "utf-8" and _opening_bytes(path).startswith(UTF16_MARKS):
        raise DataError(f"{path}: UTF-16 text (its first bytes say so); give data.encoding = 'utf-16'")
    if kind != "csv" and separator is not None:
        raise DataError(f"{path}: a separator applies to CSV / TSV files, not to {KIND_NAMES[kind]}")
    if kind != "csv" and not header:
        raise DataError(f"{path}: header = false applies to CSV / TSV files; {KIND_NAMES[kind]} name their columns")
    if separator is None:
        separator = "\t" if _base_suffix(path) in (".tsv", ".tab") else ","
    try:
        if kind == "parquet":
            df = pl.read_parquet(path).with_row_index(ROW_NUMBER, offset=1)
        elif kind == "json":
            df = _read_json_lines(path, encoding)
        else:
            df = pl.read_csv(
                path if encoding == "utf-8" else _as_utf8(path, encoding),
                separator=separator,
                has_header=header,
                infer_schema_length=0,
                row_index_name=ROW_NUMBER,
                row_index_offset=2 if header else 1,
            )
    except DataError:
        raise
    except Exception as err:  # polars raises many kinds; show the first line of its message
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        not_utf8 = "utf-8" in msg.lower() or "utf8" in msg.lower()
        if kind == "csv" and (not_utf8 or _is_gzip(path)):
            data = _file_bytes(path)  # a damaged gzip archive is named as such here
            if not_utf8:
                _refuse_non_utf8(path, data)
        ragged = _first_ragged_line(path, separator, encoding) if kind == "csv" else None
        if ragged is not None:
            line, found, expected = ragged
            raise DataError(
                f"{path}, line {line}: {found} fields where the {'header' if header else 'first line'} has "
                f"{expected} (separator {separator!r}; a field holding the separator must be quoted)"
            ) from None
        raise DataError(f"{path}: could not be parsed as {KIND_NAMES[kind]} ({msg})") from None
    if not header:  # the columns' 1-based positions are their names
        df = df.rename({c: str(i) for i, c in enumerate((c for c in df.columns if c != ROW_NUMBER), start=1)})
    named = _columns_by_name(columns, [c for c in df.columns if c != ROW_NUMBER], path, kind)
    return frame_to_interactions(
        df,
        named,
        source=str(path),
        timestamp_format=timestamp_format,
        line_column=ROW_NUMBER,
        timestamp_unit=timestamp_unit,
    )


def _base_suffix(path: Path) -> str:
    """The file's suffix in lower case, a ``.gz`` after it aside (``log.TSV.gz`` -> ``.tsv``)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] == [".gz"]:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def table_kind(path: Path) -> str:
    """``parquet``, ``json`` (JSON lines: ``.jsonl``, ``.ndjson``, ``.json``) or ``csv`` (anything else), by
    the file's suffix in any case, a ``.gz`` after it aside."""
    suffix = _base_suffix(path)
    if suffix == ".parquet":
        return "parquet"
    return "json" if suffix in (".jsonl", ".ndjson", ".json") else "csv"


def _columns_by_name(columns: dict[str, str | int], names: list[str], path: Path, kind: str) -> dict[str, str]:
    """The column mapping with positions (1-based integers) turned into the file's column names."""
    out = {}
    for key, col in columns.items():
        if isinstance(col, int) and not isinstance(col, bool):
            if kind == "json":
                raise DataError(f"{path}: columns.{key} = {col}: JSON lines name their fields; give the field's name")
            if not 1 <= col <= len(names):
                raise DataError(
                    f"{path}: columns.{key} = {col}, but the file has {len(names)} columns (1..{len(names)})"
                )
            col = names[col - 1]
        elif kind == "csv" and f"{col}_duplicated_0" in names:  # how polars renames a repeated header name
            raise DataError(f"{path}: the header names column {col!r} more than once: which one is {key} is unclear")
        out[key] = col
    return out


def _is_gzip(path: Path) -> bool:
    """Whether the file is gzip-compressed, by its first bytes (a ``.gz`` name alone does not say)."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def _open_binary(path: Path):
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")


def _opening_bytes(path: Path) -> bytes:
    """The first bytes of the file's content, unpacked where it is gzipped ("" where it cannot be read)."""
    try:
        with _open_binary(path) as f:
            return f.read(4)
    except (OSError, EOFError):  # a damaged archive: _file_bytes or polars says so with the file's name
        return b""


def _file_bytes(path: Path) -> bytes:
    """The file's content, unpacked where it is gzipped; a damaged gzip file is an error naming it."""
    if not _is_gzip(path):
        return path.read_bytes()
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: a damaged or cut-off gzip file ({err})") from None


def _as_utf8(path: Path, encoding: str) -> io.BytesIO:
    """A text file of another encoding, re-encoded as UTF-8 in memory (what polars reads)."""
    try:
        return io.BytesIO(_file_bytes(path).decode(encoding).encode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not {encoding} text ({err.reason} at byte {err.start})") from None


def _refuse_non_utf8(path: Path, data: bytes) -> None:
    """An error naming the first line of ``data`` (the file's content) that is not UTF-8, where one is."""
    for number, line in enumerate(data.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(
                f"{path}, line {number}: not UTF-8 (byte {line[err.start]:#04x} at column {err.start + 1}); give "
                "the file's encoding: data.encoding, e.g. 'latin-1' or 'cp1252'"
            ) from None


def _read_json_lines(path: Path, encoding: str = "utf-8") -> pl.DataFrame:
    """One JSON object per line (blank lines allowed), as a frame whose row-number column holds each
    object's line in the file. A line that is not a JSON object is an error naming it."""
    data = _file_bytes(path) if encoding == "utf-8" else _as_utf8(path, encoding).getvalue()
    lines = data.split(b"\n")
    numbers = [i + 1 for i, line in enumerate(lines) if line.strip()]
    if data.lstrip()[:1] == b"[":
        raise DataError(f"{path}: a JSON array; write one JSON object per line (JSON lines)")
    try:
        df = pl.read_ndjson(data, infer_schema_length=None)
    except Exception as err:
        _refuse_non_utf8(path, data)
        for number in numbers:  # polars names a character, not a line: find the line
            try:
                value = json.loads(lines[number - 1])
            except json.JSONDecodeError as bad:
                raise DataError(f"{path}, line {number}: not valid JSON ({bad})") from None
            if not isinstance(value, dict):
                raise DataError(f"{path}, line {number}: a JSON {type(value).__name__}, not an object") from None
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: could not be parsed as JSON lines ({msg})") from None
    if df.height != len(numbers):  # every non-blank line is one object; else count rows, not lines
        numbers = list(range(1, df.height + 1))
    return df.with_columns(pl.Series(ROW_NUMBER, numbers, dtype=pl.Int64))


def _first_ragged_line(path: Path, separator: str, encoding: str = "utf-8") -> tuple[int, int, int] | None:
    """(line, fields found, fields in the first line) of the first record whose field count differs from
    the first line's, read with the csv module (quoted fields may span lines); None when every record fits
    or the file is not text."""
    try:
        with io.TextIOWrapper(_open_binary(path), newline="", encoding=encoding) as f:
            reader = csv.reader(f, delimiter=separator)
            first = next(reader, None)
            if first is None:
                return None
            start = reader.line_num + 1  # the first line of the next record
            for row in reader:
                if row and len(row) != len(first):
                    return start, len(row), len(first)
                start = reader.line_num + 1
    except (UnicodeDecodeError, csv.Error, OSError, EOFError, zlib.error):
        return None
    return None


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


def _canonical_timestamps(
    out: pl.DataFrame, source: str, timestamp_format: str | None, timestamp_unit: TimestampUnit = "auto"
) -> pl.DataFrame:
    """``timestamp`` as whole seconds since the epoch (Int64) from numbers (integers or fractions, typed
    or text, in ``timestamp_unit``) or date-times (typed, or text). Where the times are finer than seconds
    (fractions, milliseconds) their exact values go to :data:`SUBSECOND_ORDER`, so that events within one
    second keep their order in time, not in the file."""
    ts = out["timestamp"]
    numbers = None  # numeric times in the file's unit
    if ts.dtype == pl.Utf8:
        text = ts.str.strip_chars()
        as_int = text.cast(pl.Int64, strict=False)
        as_float = text.cast(pl.Float64, strict=False) if timestamp_format is None else None
        if as_int.null_count() == ts.null_count():
            numbers = as_int
        elif as_float is not None and as_float.null_count() == ts.null_count():
            numbers = as_float
        else:
            as_dt = _parse_datetimes(out, as_int, source, timestamp_format)
            seconds, finer, scale = as_dt.dt.epoch("s"), as_dt.dt.epoch("us"), 1e6
    elif ts.dtype.is_temporal():
        seconds, finer, scale = ts.dt.epoch("s"), ts.dt.epoch("us"), 1e6
    elif ts.dtype.is_float():
        numbers = ts.fill_nan(None)  # a NaN time is a missing one (an error naming its line, later)
    elif ts.dtype.is_integer():
        numbers = ts
    else:
        raise DataError(f"{source}: the timestamp column is {ts.dtype}: times are numbers, date-times or text")
    if numbers is not None and numbers.dtype.is_float():
        # an infinite time, or one past the years 64-bit seconds hold, has no place in the order
        beyond = numbers.is_infinite().fill_null(False) | (numbers.abs() >= 9e18).fill_null(False)
        if beyond.any():
            row = out.filter(beyond).row(0, named=True)
            raise DataError(f"{source}, line {row['line']}: field 'timestamp' is {row['timestamp']!r}: not a time")
    if numbers is not None:
        scale = _units_per_second(numbers, timestamp_unit)
        finer = numbers if numbers.dtype.is_float() or scale > 1 else None  # finer: the full resolution
        seconds = (numbers.cast(pl.Float64) / scale).floor() if numbers.dtype.is_float() else numbers // scale
        seconds = seconds.cast(pl.Int64)
    elif timestamp_unit != "auto":
        raise DataError(
            f"{source}: data.timestamp_unit = {timestamp_unit!r} applies to numeric timestamps; "
            "this column holds date-times"
        )
    out = out.with_columns(seconds.alias("timestamp"))
    if finer is not None and not (finer.cast(pl.Float64) == seconds.cast(pl.Float64) * scale).all():
        out = out.with_columns(finer.cast(pl.Float64).alias(SUBSECOND_ORDER))
    return out


def _units_per_second(numbers: pl.Series, unit: TimestampUnit) -> int:
    """How many of the numeric timestamps' units make a second: the unit given, or for ``auto`` the one
    their magnitude says (:data:`AUTO_UNIT_FROM`)."""
    if unit != "auto":
        return TIMESTAMP_UNITS[unit]
    peak = numbers.abs().max()
    return next((TIMESTAMP_UNITS[name] for name, bound in AUTO_UNIT_FROM if peak is not None and peak >= bound), 1)


def _empty(values: pl.Series) -> pl.Series:
    """Where a column has no value: null, NaN, or blank text."""
    empty = values.is_null()
    if values.dtype.is_float():
        empty = empty | values.is_nan()
    elif values.dtype == pl.Utf8:
        empty = empty | (values.str.strip_chars() == "")
    return empty


def _from_pandas(df, source: str) -> pl.DataFrame:
    """A pandas DataFrame as polars; a column arrow cannot hold (ids of mixed types, say) is named with
    the first row whose type differs from the column's first value."""
    if not hasattr(df, "columns") or not hasattr(df, "to_numpy"):
        raise DataError(f"{source}: expected a polars or pandas DataFrame, got {type(df).__name__}")
    try:
        return pl.from_pandas(df)
    except Exception as err:  # arrow's conversion errors name neither the column nor the row
        for name in df.columns:
            try:
                pl.from_pandas(df[[name]])
            except Exception:
                values = df[name].tolist()
                first = next((type(v) for v in values if v is not None), type(None))
                row = next((i for i, v in enumerate(values) if v is not None and type(v) is not first), None)
                where = f"{source}, line {row + 1}" if row is not None else source
                what = (
                    f"holds {type(values[row]).__name__} {values[row]!r} where earlier rows hold {first.__name__}"
                    if row is not None
                    else "cannot be converted"
                )
                raise DataError(
                    f"{where}: column {name!r} {what} ({type(err).__name__}: {err}); "
                    "give the column one type (e.g. .astype(str) for ids)"
                ) from None
        raise DataError(f"{source}: cannot be converted to a table ({type(err).__name__}: {err})") from None


def frame_to_interactions(
    df: pl.DataFrame,
    columns: dict[str, str],
    source: str = "DataFrame",
    timestamp_format: str | None = None,
    line_column: str | None = None,
    timestamp_unit: TimestampUnit = "auto",
) -> Interactions:
    """Canonical table from an in-memory polars / pandas DataFrame and a column mapping. Errors name a
    row by ``line_column`` (a file's line numbers) or, without one, by its 1-based row number. Timestamps
    as :func:`read_table` reads them."""
    if not isinstance(df, pl.DataFrame):
        df = _from_pandas(df, source)
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
    # a time or rating the mapping names is part of every event: an empty one (or a line too short to
    # hold it) would put the event out of order or past the rating filter unseen
    for col in ("timestamp", "rating"):
        if col in out.columns and (empty := _empty(out[col])).any():
            line = out.filter(empty)["line"][0]
            raise DataError(f"{source}, line {line}: field '{col}' (column {columns[col]!r}) is empty")
    for col in ("user_id", "item_id"):
        dtype = out[col].dtype
        if dtype in (pl.Categorical, pl.Enum):
            out = out.with_columns(pl.col(col).cast(pl.Utf8))
        elif dtype.is_float():  # a pandas integer column with a gap is float: whole values are the ids
            whole = out[col].is_null() | out[col].is_nan() | (out[col] == out[col].floor())
            if not whole.all():
                row = out.filter(~whole).row(0, named=True)
                raise DataError(
                    f"{source}, line {row['line']}: field '{col}' is {row[col]}: an id must be an integer or a string"
                )
            out = out.with_columns(pl.col(col).fill_nan(None).cast(pl.Int64))
        elif not (dtype.is_integer() or dtype == pl.Utf8 or dtype == pl.Null):
            raise DataError(f"{source}: column '{columns[col]}' ({col}) is {dtype}: ids must be integers or strings")
        if out[col].dtype == pl.Utf8:
            # ids that are integers written plainly (padding aside) become integers; "007" and "7" stay two
            # ids (strings), as an integer column would merge them
            stripped = out[col].str.strip_chars()
            as_int = stripped.cast(pl.Int64, strict=False)
            plain = (as_int.cast(pl.Utf8) == stripped).fill_null(False).sum()
            if plain == out[col].len() - out[col].null_count():
                out = out.with_columns(as_int.alias(col))
    if "rating" in out.columns:
        out = _cast_column(Path(source), out.with_columns(pl.col("rating").cast(pl.Utf8)), "rating", pl.Float64)
    if "timestamp" in out.columns:
        out = _canonical_timestamps(out, source, timestamp_format, timestamp_unit)
    return _finish(out, source)
