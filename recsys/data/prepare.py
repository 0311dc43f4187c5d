"""From the canonical interaction table to jagged sequences.

Steps, in order: rating filter -> deduplication -> k-core -> stable chronological sort per user
(timestamp, then the original file line) -> id remap (items 1..V-1, 0 is padding; users 0..U-1)
-> jagged arrays: ``item_ids`` and ``timestamps`` of all users back to back, ``seq_offsets`` [U + 1].
Everything is a polars expression or a numpy array operation; nothing loops over interactions.
Each step that drops rows prints how many.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from ..files import sha256_of
from .readers import SUBSECOND_ORDER, DataError, Interactions


@dataclass
class SequenceData:
    """All users' chronological item sequences, jagged.

    item_ids: [total] int64, internal ids 1..num_items-1 (0 = padding, never stored here)
    timestamps: [total] int64 (the position in the sequence when the source has no timestamps)
    seq_offsets: [num_users + 1] int64; user u's events are item_ids[seq_offsets[u]:seq_offsets[u+1]]
    user_raw_ids / item_raw_ids: raw ids by internal id (item_raw_ids[0] is the padding slot)
    """

    item_ids: np.ndarray
    timestamps: np.ndarray
    seq_offsets: np.ndarray
    user_raw_ids: np.ndarray
    item_raw_ids: np.ndarray
    has_timestamps: bool = True
    log: list[str] = field(default_factory=list)

    @property
    def num_users(self) -> int:
        return len(self.seq_offsets) - 1

    @property
    def num_items(self) -> int:
        """Size of the item vocabulary including the padding id 0."""
        return len(self.item_raw_ids)

    @property
    def num_interactions(self) -> int:
        return int(self.seq_offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.seq_offsets)

    def sequence(self, user: int) -> np.ndarray:
        return self.item_ids[self.seq_offsets[user] : self.seq_offsets[user + 1]]

    def save(self, folder: str | Path) -> None:
        """Write the arrays as .npy (memory-mappable) plus the raw ids as Parquet, atomically."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            for name in ("item_ids", "timestamps", "seq_offsets"):
                np.save(stage / f"{name}.npy", getattr(self, name))
            pl.DataFrame({"user_id": self.user_raw_ids}).write_parquet(stage / "users.parquet")
            pl.DataFrame({"item_id": self.item_raw_ids[1:].tolist()}).write_parquet(stage / "items.parquet")
            files = {f.name: sha256_of(f) for f in sorted(stage.iterdir())}  # checked by load()
            (stage / "meta.json").write_text(
                json.dumps({"has_timestamps": self.has_timestamps, "log": self.log, "sha256": files})
            )
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(stage, folder)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True) -> "SequenceData":
        """Read what :meth:`save` wrote, after checking every file against the sha256 recorded then
        (:class:`recsys.files.IntegrityError` otherwise); with ``mmap`` the arrays stay on disk and pages
        load on demand."""
        from ..files import IntegrityError, read_json

        folder = Path(folder)
        mode = "r" if mmap else None
        meta = read_json(folder / "meta.json", "prepared-data cache")
        recorded = meta.get("sha256") if isinstance(meta, dict) else None
        if not isinstance(recorded, dict) or set(recorded) != {
            "item_ids.npy",
            "timestamps.npy",
            "seq_offsets.npy",
            "users.parquet",
            "items.parquet",
        }:
            raise IntegrityError(f"{folder}: the cache records no checksums for its files")
        for name, digest in recorded.items():
            path = folder / name
            if not path.is_file() or sha256_of(path) != digest:
                raise IntegrityError(
                    f"{path}: does not match the checksum recorded when the cache was written "
                    "(changed, truncated or missing)"
                )
        items = pl.read_parquet(folder / "items.parquet")["item_id"].to_numpy().astype(object)
        return cls(
            item_ids=np.load(folder / "item_ids.npy", mmap_mode=mode),
            timestamps=np.load(folder / "timestamps.npy", mmap_mode=mode),
            seq_offsets=np.load(folder / "seq_offsets.npy", mmap_mode=mode),
            user_raw_ids=pl.read_parquet(folder / "users.parquet")["user_id"].to_numpy(),
            item_raw_ids=np.concatenate([np.array([None], dtype=object), items]),
            has_timestamps=meta["has_timestamps"],
            log=meta["log"],
        )

    def item_index(self, raw_ids) -> np.ndarray:
        """Internal ids for raw item ids; unknown ids raise a DataError that lists them."""
        lookup = pl.DataFrame({"raw": pl.Series(self.item_raw_ids[1:].tolist()), "idx": np.arange(1, self.num_items)})
        query = pl.DataFrame({"raw": pl.Series(list(raw_ids)).cast(lookup["raw"].dtype, strict=False)})
        found = query.join(lookup, on="raw", how="left", maintain_order="left")
        if found["idx"].null_count():
            unknown = query.filter(found["idx"].is_null())["raw"].to_list()[:10]
            raise DataError(f"unknown item id(s) {unknown}: not in this dataset's catalogue")
        return found["idx"].to_numpy().astype(np.int64)


def _say(log: list[str], msg: str, verbose: bool) -> None:
    log.append(msg)
    if verbose:
        print(msg)


def k_core(frame: pl.DataFrame, k: int) -> pl.DataFrame:
    """Iteratively drop users and items with fewer than k interactions until none is left."""
    while True:
        user_counts = pl.col("user_id").count().over("user_id")
        item_counts = pl.col("item_id").count().over("item_id")
        kept = frame.filter((user_counts >= k) & (item_counts >= k))
        if kept.height == frame.height:
            return kept
        frame = kept


def _keep_events(df: pl.DataFrame, events: list[str], source: str, log: list[str], verbose: bool) -> pl.DataFrame:
    """The interactions whose event type is one of ``events``; a type the log never has is an error (a
    misspelt one would silently keep less)."""
    if "event" not in df.columns:
        raise DataError(f"{source}: data.events is set but the data has no 'event' field (map one: columns.event)")
    kinds = df["event"].cast(pl.Utf8)
    present = set(kinds.drop_nulls().unique().to_list())
    missing = [e for e in events if e not in present]
    if missing:
        shown = sorted(present)[:20]
        raise DataError(f"{source}: data.events names {missing}, which the log does not have; it has {shown}")
    before = df.height
    df = df.filter(kinds.is_in(events))
    _say(log, f"events {events}: dropped {before - df.height:,} of {before:,} interactions", verbose)
    return df


def prepare_sequences(
    interactions: Interactions,
    min_rating: float | None = None,
    dedupe: str = "none",
    k_core_threshold: int = 0,
    min_seq_len: int = 1,
    verbose: bool = True,
    events: Sequence[str] | None = None,
) -> SequenceData:
    """Filter, sort and remap ``interactions`` into :class:`SequenceData`.

    events: keep only the interactions of these types (the ``event`` column: views, purchases, ...).
    dedupe: "none" keeps repeated (user, item) pairs; "first" / "last" keep one occurrence.
    min_seq_len: users with fewer events after filtering are dropped (counted in the log).
    """
    log: list[str] = []
    df = interactions.frame
    if df.height == 0:
        raise DataError(f"{interactions.source}: no interactions")
    if min_rating is not None:
        if df["rating"].null_count() == df.height:
            raise DataError(f"{interactions.source}: min_rating is set but the data has no 'rating' field")
        before = df.height
        df = df.filter(pl.col("rating") >= min_rating)
        _say(log, f"rating >= {min_rating}: dropped {before - df.height:,} of {before:,} interactions", verbose)
    if events is not None:
        df = _keep_events(df, list(events), interactions.source, log, verbose)

    # stable chronological order: user, timestamp (to the sub-second where the log has it), then the line
    # in the file
    sort_keys = ["user_id", "timestamp", "line"] if interactions.has_timestamps else ["user_id", "line"]
    if interactions.has_timestamps and SUBSECOND_ORDER in df.columns:
        sort_keys.insert(2, SUBSECOND_ORDER)
    if interactions.has_timestamps and df["timestamp"].null_count():
        line = df.filter(pl.col("timestamp").is_null())["line"][0]
        raise DataError(f"{interactions.source}, line {line}: field 'timestamp' is empty")
    df = df.sort(sort_keys, maintain_order=True)

    if interactions.has_timestamps:  # without times, two equal lines are two events in file order
        exact = df.height - df.select(pl.struct("user_id", "item_id", "timestamp", "rating").n_unique()).item()
        if exact:
            what = "kept" if dedupe == "none" else f"dropped by dedupe={dedupe} below"
            _say(
                log,
                f"{exact:,} exact duplicate rows (same user, item, time and rating): {what} "
                "(data.dedupe = 'first' keeps one of each repeated (user, item) pair)",
                verbose,
            )

    if dedupe in ("first", "last"):
        before = df.height
        df = df.unique(subset=["user_id", "item_id"], keep=dedupe, maintain_order=True)
        _say(log, f"dedupe={dedupe}: dropped {before - df.height:,} repeated (user, item) pairs", verbose)
    elif dedupe != "none":
        raise DataError(f"dedupe must be one of ['none', 'first', 'last'], got {dedupe!r}")

    if k_core_threshold > 1:
        before_u, before_i, before = df["user_id"].n_unique(), df["item_id"].n_unique(), df.height
        df = k_core(df, k_core_threshold)
        _say(
            log,
            f"{k_core_threshold}-core: kept {df['user_id'].n_unique():,}/{before_u:,} users, "
            f"{df['item_id'].n_unique():,}/{before_i:,} items, {df.height:,}/{before:,} interactions",
            verbose,
        )

    if min_seq_len > 1:
        counts = pl.col("user_id").count().over("user_id")
        short_users = df.filter(counts < min_seq_len)["user_id"].n_unique()
        if short_users:
            before = df.height
            df = df.filter(counts >= min_seq_len)
            _say(
                log,
                f"dropped {short_users:,} users with fewer than {min_seq_len} events "
                f"({before - df.height:,} interactions): too short for the split",
                verbose,
            )
    if df.height == 0:
        steps = "; ".join(log) or "the filters"
        raise DataError(f"{interactions.source}: no interactions left after filtering ({steps})")

    # id remap: items sorted by raw id -> 1..V-1; users in sorted order -> 0..U-1
    item_raw = df["item_id"].unique().sort()
    user_raw = df["user_id"].unique().sort()
    df = df.with_columns(
        pl.col("item_id").replace_strict(item_raw, pl.int_range(1, item_raw.len() + 1, eager=True)).alias("item_idx"),
        pl.col("user_id").replace_strict(user_raw, pl.int_range(0, user_raw.len(), eager=True)).alias("user_idx"),
    ).sort(["user_idx"], maintain_order=True)

    item_ids = df["item_idx"].to_numpy().astype(np.int64)
    user_idx = df["user_idx"].to_numpy().astype(np.int64)
    counts = np.bincount(user_idx, minlength=user_raw.len())
    seq_offsets = np.zeros(user_raw.len() + 1, dtype=np.int64)
    np.cumsum(counts, out=seq_offsets[1:])
    if interactions.has_timestamps:
        timestamps = df["timestamp"].to_numpy().astype(np.int64)
    else:  # position within the user's sequence
        timestamps = np.arange(len(item_ids), dtype=np.int64) - np.repeat(seq_offsets[:-1], counts)
    item_raw_ids = np.concatenate([np.array([None], dtype=object), item_raw.to_numpy().astype(object)])
    return SequenceData(
        item_ids=item_ids,
        timestamps=timestamps,
        seq_offsets=seq_offsets,
        user_raw_ids=user_raw.to_numpy(),
        item_raw_ids=item_raw_ids,
        has_timestamps=interactions.has_timestamps,
        log=log,
    )


def length_percentiles(lengths: np.ndarray, qs=(0, 25, 50, 75, 90, 99, 100)) -> dict[str, float]:
    return {f"p{q}": float(np.percentile(lengths, q)) for q in qs}


def repeat_events(seq: SequenceData) -> np.ndarray:
    """[total] bool: whether each event repeats an item already in its user's history (a (user, item)
    pair's events after its first). Where last events repeat often, ``eval.exclude_seen`` hides many
    test targets."""
    users = np.repeat(np.arange(seq.num_users, dtype=np.int64), seq.lengths)
    pairs = users * np.int64(seq.num_items) + seq.item_ids.astype(np.int64)
    order = np.argsort(pairs, kind="stable")  # each pair's events together, in time order
    repeat = np.zeros(len(pairs), dtype=bool)
    repeat[order[1:]] = pairs[order[1:]] == pairs[order[:-1]]
    return repeat
