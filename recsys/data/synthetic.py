"""Synthetic interaction logs with realistic skew, for scale tests and benchmarks.

- items: Zipf-like popularity, p(item of rank r) proportional to r^-alpha over ``num_items`` items;
- users: sequence lengths log-normal (median ``median_length``, shape ``sigma``), at least ``min_length``;
- time: each user starts at a uniform time in a two-year window, gaps are exponential (mean one hour).

Written as Parquet (user_id, item_id, timestamp) in row groups of whole users, so generating 10^7+
events never holds more than one chunk in memory. Vectorised numpy; deterministic for a seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def zipf_cdf(num_items: int, alpha: float) -> np.ndarray:
    weights = np.arange(1, num_items + 1, dtype=np.float64) ** -alpha
    return np.cumsum(weights) / weights.sum()


def generate_log(
    path: str | Path,
    num_events: int,
    num_items: int = 1_000_000,
    alpha: float = 1.05,
    median_length: float = 60.0,
    sigma: float = 1.0,
    min_length: int = 5,
    seed: int = 0,
    users_per_chunk: int = 50_000,
) -> dict:
    """Write about ``num_events`` events (exactly, after trimming the last user) to ``path``."""
    rng = np.random.default_rng(seed)
    cdf = zipf_cdf(num_items, alpha)
    item_ids = rng.permutation(num_items) + 1  # popularity rank -> id, so id order says nothing
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    schema = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("timestamp", pa.int64())])
    written, user = 0, 0
    with pq.ParquetWriter(tmp, schema) as writer:
        while written < num_events:
            lengths = np.maximum(min_length, rng.lognormal(np.log(median_length), sigma, users_per_chunk)).astype(
                np.int64
            )
            cum = np.cumsum(lengths)
            keep = int(np.searchsorted(cum, num_events - written, side="left")) + 1
            lengths = lengths[:keep]
            lengths[-1] -= max(0, int(lengths.sum()) - (num_events - written))
            n = int(lengths.sum())
            users = np.repeat(np.arange(user, user + len(lengths)), lengths)
            items = item_ids[np.minimum(np.searchsorted(cdf, rng.random(n)), num_items - 1)]
            starts = rng.integers(1_500_000_000, 1_500_000_000 + 2 * 365 * 86400, len(lengths))
            gaps = rng.exponential(3600.0, n).astype(np.int64) + 1
            first = np.cumsum(lengths) - lengths  # index of each user's first event
            t = np.cumsum(gaps)
            t -= np.repeat(t[first] - gaps[first], lengths)  # restart the clock for each user
            times = np.repeat(starts, lengths) + t
            writer.write_table(pa.table({"user_id": users, "item_id": items, "timestamp": times}, schema=schema))
            written += n
            user += len(lengths)
    os.replace(tmp, path)
    return {"events": written, "users": user, "items_in_catalogue": num_items}
