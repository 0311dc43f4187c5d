import numpy as np
import polars as pl

from recsys.data.prepare import prepare_sequences
from recsys.data.readers import read_table
from recsys.data.synthetic import generate_log


def test_synthetic_log_has_the_asked_shape_and_skew(tmp_path):
    path = tmp_path / "log.parquet"
    info = generate_log(path, 50_000, num_items=2_000, median_length=20, seed=1, users_per_chunk=500)
    df = pl.read_parquet(path)
    assert df.height == info["events"] == 50_000
    lengths = df.group_by("user_id").len()["len"].to_numpy()
    assert lengths.min() >= 1 and np.median(lengths) > 10
    counts = df.group_by("item_id").len()["len"].sort(descending=True).to_numpy()
    assert counts[:20].sum() > 0.1 * df.height  # a popular head
    # each user's clock only moves forward
    assert df.with_columns(d=pl.col("timestamp").diff().over("user_id")).filter(pl.col("d") <= 0).height == 0
    seq = prepare_sequences(
        read_table(path, {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp"}), verbose=False
    )
    assert seq.num_interactions == 50_000 and seq.num_users == info["users"]
    assert not (tmp_path / "log.parquet.tmp").exists()
    # deterministic for a seed
    generate_log(tmp_path / "again.parquet", 50_000, num_items=2_000, median_length=20, seed=1, users_per_chunk=500)
    assert pl.read_parquet(tmp_path / "again.parquet").equals(df)
