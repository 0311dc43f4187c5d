"""A run's data: the recipe's [data] section -> interactions (a dataset card's file, a file of one's own or
a DataFrame) -> prepared sequences (cached under RECSYS_CACHE/prepared, keyed by the file's sha256 and
every setting that shapes them, checked against their recorded checksums) -> the split, with items held
out for the cold-start protocol where asked."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ConfigError, DataConfig
from ..files import IntegrityError, sha256_of
from .cards import cache_dir, check_counts, locate_dataset
from .prepare import SequenceData, prepare_sequences
from .readers import READERS, DataError, Interactions, read_table
from .splits import EvalSet, Split, hold_out_items, make_split

MIN_EVENTS = {"leave_one_out": 3, "hstu": 2, "temporal": 1}  # events a user needs for each split


@dataclass
class PreparedData:
    split: Split
    info: dict  # dataset name, file, sha256, counts
    cold_items: np.ndarray | None = None  # items held out of training (data.cold_item_fraction)

    def test_subset(self, cold: bool) -> EvalSet:
        """Test users whose target is (``cold``) or is not a held-out item."""
        test = self.split.test
        return test.reordered(np.flatnonzero(np.isin(test.targets, self.cold_items) == cold))


def prepare_data(cfg: DataConfig, verbose: bool = True, interactions: Interactions | None = None) -> PreparedData:
    """Read (or take) the interactions, filter and split them as the config says."""
    info: dict = {"dataset": cfg.dataset}
    seq = None
    if interactions is None:
        if cfg.dataset == "custom":
            seq, found = _custom_sequences(cfg, verbose)
            info.update(found)
        else:
            seq, found = _card_sequences(cfg, verbose)
            info.update(found)
    if seq is None:
        seq = prepare_sequences(
            interactions,
            min_rating=cfg.min_rating,
            dedupe=cfg.dedupe,
            k_core_threshold=cfg.k_core,
            min_seq_len=MIN_EVENTS[cfg.split],
            verbose=verbose,
            events=cfg.events,
        )
    cold_items = None
    if cfg.cold_item_fraction > 0:
        if cfg.split != "leave_one_out":
            raise ConfigError("data.cold_item_fraction needs data.split = 'leave_one_out'")
        seq, cold_items, log = hold_out_items(seq, cfg.cold_item_fraction, cfg.cold_item_seed)
        if verbose:
            print("\n".join(log))
        info["cold_items"] = int(len(cold_items))
    split = make_split(seq, cfg.split, cfg.valid_cut, cfg.test_cut, verbose=verbose)
    info.update(users=seq.num_users, items=seq.num_items - 1, interactions=seq.num_interactions)
    return PreparedData(split=split, info=info, cold_items=cold_items)


# the [data] keys that only the table reader reads
TABLE_OPTIONS = ("separator", "timestamp_format", "header", "encoding", "timestamp_unit")

PREPARE_VERSION = 4  # bump when prepare_sequences changes what it produces: old caches are then ignored
# (2: events within one second ordered by their sub-second times where the log has them; 3: digit-string
# ids that an integer column would merge, "007" and "7", stay strings; 4: numeric times of 1e11 and more
# read as milliseconds, data.timestamp_unit = "auto")


def _cached_sequences(name: str, settings: list, read, cfg: DataConfig, verbose: bool) -> SequenceData:
    """Prepared sequences from the cache (memory-mapped: RECSYS_CACHE/prepared/NAME-KEY, KEY a hash of
    ``settings``, which name the file's sha256 and everything that shapes the result) when prepared
    before; otherwise ``read()``'s interactions are prepared and cached."""
    settings = [PREPARE_VERSION, *settings, cfg.min_rating, cfg.dedupe, cfg.k_core, MIN_EVENTS[cfg.split]]
    settings += [] if cfg.events is None else [list(cfg.events)]  # unset: the keys of earlier caches stay
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir() / "prepared" / f"{name}-{key}"
    if (folder / "meta.json").exists():
        try:
            seq = SequenceData.load(folder, mmap=True)
        except (IntegrityError, DataError) as err:  # a cache: say so, then build it again from the source file
            print(f"note: the prepared-data cache is not usable ({err}); preparing the data again", file=sys.stderr)
        else:
            for line in seq.log:
                if verbose:
                    print(line)
            return seq
    seq = prepare_sequences(
        read(),
        min_rating=cfg.min_rating,
        dedupe=cfg.dedupe,
        k_core_threshold=cfg.k_core,
        min_seq_len=MIN_EVENTS[cfg.split],
        verbose=verbose,
        events=cfg.events,
    )
    try:
        seq.save(folder)
    except OSError as err:  # a read-only or full cache only costs the next run a re-parse
        print(f"note: could not cache the prepared data in {folder} ({err})")
    return seq


def _card_sequences(cfg: DataConfig, verbose: bool) -> tuple[SequenceData, dict]:
    """A card's prepared sequences (:func:`_cached_sequences`); a fresh read is checked against the
    card's counts."""
    card, path, variant, digest = locate_dataset(cfg.dataset, cfg.data_dir)

    def read() -> Interactions:
        interactions = READERS[card.reader](path, **card.reader_options)
        check_counts(card, variant, interactions)
        return interactions

    seq = _cached_sequences(card.name, [digest, card.reader, card.reader_options], read, cfg, verbose)
    return seq, {"file": path.name, "sha256": digest, "variant_note": variant.note}


def _custom_sequences(cfg: DataConfig, verbose: bool) -> tuple[SequenceData, dict]:
    """A custom file's prepared sequences (:func:`_cached_sequences`, keyed by its sha256 and reader
    settings): a large log is parsed once, later runs map the prepared arrays."""
    if not cfg.path:
        raise DataError("data.dataset = 'custom' needs data.path and data.reader (or a DataFrame)")
    if cfg.reader not in READERS:
        raise DataError(f"data.reader must be one of {sorted(READERS)}, got {cfg.reader!r}")
    defaults = DataConfig()
    table_options = [k for k in TABLE_OPTIONS if getattr(cfg, k) != getattr(defaults, k)]
    if table_options and cfg.reader != "table":
        raise ConfigError(f"data.{table_options[0]} is an option of data.reader = 'table', not {cfg.reader!r}")
    path = Path(cfg.path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    digest = sha256_of(path)
    columns = cfg.columns or {"user_id": "user_id", "item_id": "item_id"}

    def read() -> Interactions:
        if cfg.reader == "table":
            return read_table(
                path,
                columns,
                separator=cfg.separator,
                timestamp_format=cfg.timestamp_format,
                header=cfg.header,
                encoding=cfg.encoding,
                timestamp_unit=cfg.timestamp_unit,
            )
        return READERS[cfg.reader](path)

    settings = [digest, cfg.reader, columns if cfg.reader == "table" else None, cfg.separator, cfg.timestamp_format]
    # header, encoding and the unit at their defaults add nothing: the keys of earlier caches stay as they were
    settings += [f"{k}={getattr(cfg, k)}" for k in ("header", "encoding", "timestamp_unit") if k in table_options]
    seq = _cached_sequences("custom", settings, read, cfg, verbose)
    return seq, {"file": str(path), "sha256": digest}
