import numpy as np
import pandas as pd
import pytest

import recsys
from recsys.config import ConfigError
from recsys.data.readers import DataError


def test_fit_from_a_dataframe_then_recommend_and_reload(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for u in range(60):  # users walk a ring of 30 items: the next item is predictable
        start = rng.integers(0, 30)
        rows += [(f"user{u}", f"item{(start + k) % 30}", k) for k in range(12)]
    df = pd.DataFrame(rows, columns=["who", "what", "when"])
    data = recsys.from_frame(df, user="who", item="what", time="when")
    model = recsys.fit(
        data,
        overrides=[
            "model.max_seq_len=10",
            "model.hidden_dim=32",
            "model.num_blocks=1",
            "model.dropout=0.0",
            "train.epochs=40",
            "train.lr=0.01",
            "train.patience=0",
        ],
        run_dir=tmp_path / "run",
        progress=False,
    )
    test = model.evaluate("test")
    assert test["hr@1"] > 0.9  # the ring is learned
    top = model.recommend(["item3", "item4", "item5"], k=3)
    assert top[0][0] == "item6" and len(top) == 3
    again = recsys.load(tmp_path / "run", data=data)
    assert again.recommend(["item3", "item4", "item5"], k=3) == top
    # the edges: k past the candidates gives every candidate, never a seen or padding item; bad calls
    # are clear errors
    everything = again.recommend(["item3", "item4", "item5"], k=1000)
    assert len(everything) == 27 and {"item3", "item4", "item5"}.isdisjoint(i for i, _ in everything)
    assert len(again.recommend(["item3"], k=1000, exclude_seen=False)) == 30
    assert again.recommend(["item3"], k=0) == []
    with pytest.raises(ValueError, match="k must be >= 0"):
        again.recommend(["item3"], k=-1)
    with pytest.raises(DataError, match="at least one history"):
        again.score([])
    with pytest.raises(ConfigError, match="no split 'tset'"):
        again.evaluate("tset")
    with pytest.raises(ConfigError, match="test_cold needs items held out"):
        again.evaluate("test_cold")
