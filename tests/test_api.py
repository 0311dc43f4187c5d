import numpy as np
import pandas as pd
import polars as pl
import pytest

import recsys
from recsys.cli import main
from recsys.config import ConfigError
from recsys.data.readers import DataError
from recsys.errors import RecsysError
from tests.conftest import DATA_DIR, needs_data

RING = {
    "model.max_seq_len": 10,
    "model.hidden_dim": 32,
    "model.num_blocks": 1,
    "model.dropout": 0.0,
    "train.lr": 0.01,
    "train.patience": 0,
}


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    """Users walk a ring of 30 items: the next item is predictable."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(60):
        start = rng.integers(0, 30)
        rows += [(f"user{u}", f"item{(start + k) % 30}", k) for k in range(12)]
    df = pd.DataFrame(rows, columns=["who", "what", "when"])
    run = recsys.fit(
        df,
        "sasrec",
        user="who",
        item="what",
        time="when",
        epochs=40,
        run_dir=tmp_path_factory.mktemp("ring") / "run",
        progress=False,
        **RING,
    )
    return df, run


def test_a_dataframe_run_recommends_by_user_and_by_history(ring):
    df, run = ring
    assert run.evaluate("test")["hr@1"] > 0.9  # the ring is learned
    top = run.recommend(histories=[["item3", "item4", "item5"]], k=3)
    assert top.columns == ["user", "rank", "item", "score"] and top["item"][0] == "item6" and top.height == 3
    # by user: the user's whole history, its last item's successor first
    last = df[df.who == "user7"].sort_values("when").what.iloc[-1]
    by_user = run.recommend(users=["user7", "user8"], k=5)
    assert by_user.filter(pl.col("user") == "user7")["item"][0] == f"item{(int(last[4:]) + 1) % 30}"
    assert by_user.group_by("user").len()["len"].to_list() == [5, 5]
    seen = set(df[df.who == "user7"].what)
    assert seen.isdisjoint(by_user.filter(pl.col("user") == "user7")["item"])  # seen items left out


def test_unknown_ids_are_errors_or_skipped(ring):
    _, run = ring
    with pytest.raises(DataError, match=r"unknown item id\(s\) \['nope'\]"):
        run.recommend(histories=[["item3", "nope"]])
    skipped = run.recommend(histories=[["item2", "nope", "item3", "item4"]], k=1, unknown="skip")
    assert skipped["item"][0] == "item5"
    with pytest.raises(DataError, match=r"unknown user id\(s\) \['ghost'\]"):
        run.recommend(users=["user1", "ghost"])
    assert run.recommend(users=["user1", "ghost"], k=2, unknown="skip")["user"].unique().to_list() == ["user1"]
    with pytest.raises(ValueError, match="pass users= or histories="):
        run.recommend()
    with pytest.raises(ValueError, match="k must be >= 0"):
        run.recommend(users=["user1"], k=-1)
    with pytest.raises(ValueError, match="k must be >= 0"):
        run.similar_items(["item3"], k=-1)
    with pytest.raises(TypeError, match="k must be an integer, got float"):
        run.recommend(users=["user1"], k=2.5)
    # a bare string would be iterated as its characters: refused, naming the argument
    with pytest.raises(TypeError, match=r"users= takes a list of ids, got the string 'user1'"):
        run.recommend(users="user1")
    with pytest.raises(TypeError, match="histories= takes a list of ids"):
        run.recommend(histories=["item3"])
    with pytest.raises(TypeError, match="items= takes a list of ids"):
        run.score(users=["user1"], items="item3")
    with pytest.raises(TypeError, match="items= takes a list of ids"):
        run.similar_items("item3")
    with pytest.raises(ConfigError, match="no split 'tset'"):
        run.evaluate("tset")


def test_score_and_similar_items(ring):
    _, run = ring
    scores = run.score(users=["user1"], items=["item3", "item7"])
    assert scores.columns == ["user", "item", "score"] and scores.height == 2
    everything = run.score(histories=[["item3"]])
    assert everything.height == 30
    assert everything.sort("score", descending=True)["item"][0] == "item4"
    similar = run.similar_items(["item3"], k=4)
    assert similar.columns == ["item", "rank", "similar_item", "score"] and similar.height == 4
    assert "item3" not in similar["similar_item"].to_list()
    assert (similar["score"].diff().drop_nulls() <= 0).all()


def test_a_dataframe_run_reloads_and_evaluates_from_the_cli_without_its_data(ring, tmp_path, capsys):
    _, run = ring
    assert (run.path / "interactions.parquet").exists()
    again = recsys.load(run.path)  # no data passed: the run kept its table
    assert again.recommend(users=["user3"], k=3).equals(run.recommend(users=["user3"], k=3))
    assert main(["evaluate", str(run.path), "--set", "train.num_threads=1"]) == 0
    assert "ndcg@10" in capsys.readouterr().out
    assert main(["export", str(run.path), "--out", str(tmp_path / "export")]) == 0
    assert (tmp_path / "export" / "item_embeddings.npy").exists()
    (run.path / "interactions.parquet").write_bytes(b"altered")
    with pytest.raises(DataError, match="missing or altered"):
        recsys.load(run.path)


def test_fit_refuses_to_overwrite_a_run_before_writing(ring):
    df, run = ring
    before = (run.path / "interactions.parquet").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="already holds a run"):
        recsys.fit(df, user="who", item="what", time="when", run_dir=run.path, progress=False)
    assert (run.path / "interactions.parquet").stat().st_mtime_ns == before


@needs_data("ml-100k")
def test_the_api_on_a_real_file_with_string_ids(tmp_path):
    raw = pd.read_csv(DATA_DIR / "ml-100k" / "u.data", sep="\t", names=["user", "movie", "stars", "ts"])
    raw["user"] = "u" + raw["user"].astype(str)
    raw["movie"] = "m" + raw["movie"].astype(str)
    small = {"model.hidden_dim": 16, "model.num_blocks": 1, "model.max_seq_len": 20, "train.num_threads": 1}
    run = recsys.fit(
        raw, "sasrec", user="user", item="movie", time="ts", epochs=1, run_dir=tmp_path / "df", progress=False, **small
    )
    assert run.evaluate("test")["num_users"] == 943
    top = run.recommend(users=["u1", "u2"], k=10)
    assert top.height == 20 and top["item"].str.starts_with("m").all()
    assert set(top.filter(pl.col("user") == "u1")["item"]).isdisjoint(raw[raw.user == "u1"].movie)  # seen: left out
    history = run.recommend(histories=[["m50", "m181", "not-a-movie"]], k=5, unknown="skip")
    assert history.height == 5 and "m50" not in history["item"].to_list()
    assert run.score(users=["u1"], items=["m50", "m172"]).height == 2
    assert run.similar_items(["m50"], k=3)["similar_item"].str.starts_with("m").all()
    # the same file through a path, and a packaged recipe by name
    path = tmp_path / "ratings.csv"
    raw.to_csv(path, index=False)
    by_path = recsys.fit(
        str(path), user="user", item="movie", time="ts", epochs=1, run_dir=tmp_path / "p", progress=False, **small
    )
    assert by_path.evaluate("test")["num_users"] == 943
    assert "ml-100k/sasrec" in recsys.recipes()
    by_recipe = recsys.fit("ml-100k/sasrec", epochs=1, run_dir=tmp_path / "r", progress=False, **small)
    assert by_recipe.config.data.dataset == "ml-100k" and by_recipe.recommend(users=[1], k=3).height == 3
    assert by_recipe.trainer.recipe == "recipes/ml-100k/sasrec.toml"  # the recipe, given where the data goes
    with pytest.raises(FileNotFoundError, match=r"data='ratings.cvs': no such file, and not a dataset card's name"):
        recsys.fit("ratings.cvs", run_dir=tmp_path / "z", progress=False)  # a typo: said before anything is written
    assert not (tmp_path / "z").exists()
    with pytest.raises(RecsysError, match="did you mean ml-100k/sasrec"):
        recsys.fit(recipe="ml-100k/sasrc", epochs=1, run_dir=tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="keys look like section.key"):
        recsys.fit(recipe="ml-100k/sasrec", run_dir=tmp_path / "y", progress=False, **{"hidden_dim": 16})


def test_without_a_recipe_the_history_window_fits_the_data(tmp_path):
    def fit(events_per_user: int, model: str, name: str, **settings):
        rows = [(f"u{u}", f"i{(u * 7 + k * 3) % 40}", k) for u in range(12) for k in range(events_per_user)]
        df = pd.DataFrame(rows, columns=["user", "item", "ts"])
        small = {"model.hidden_dim": 16, "model.num_blocks": 1, "train.num_threads": 1, **settings}
        return recsys.fit(
            df, model, user="user", item="item", time="ts", epochs=1, run_dir=tmp_path / name, progress=False, **small
        )

    assert fit(60, "sasrec", "long").config.model.max_seq_len == 200  # median history 60 events
    assert fit(8, "hstu", "short").config.model.max_seq_len == 50
    assert fit(60, "sasrec", "asked", **{"model.max_seq_len": 30}).config.model.max_seq_len == 30  # asked for: kept
    assert recsys.load(tmp_path / "long").config.model.max_seq_len == 200  # the run keeps the window it trained with


def test_event_types_from_a_dataframe(tmp_path):
    rows = [(f"u{u}", f"i{(u * 7 + k * 3) % 40}", k, "view" if k % 3 else "buy") for u in range(12) for k in range(9)]
    df = pd.DataFrame(rows, columns=["user", "item", "ts", "kind"])
    small = {"model.hidden_dim": 16, "model.num_blocks": 1, "train.num_threads": 1}
    run = recsys.fit(
        df,
        "sasrec",
        user="user",
        item="item",
        time="ts",
        event="kind",
        events=["view"],
        epochs=1,
        run_dir=tmp_path / "views",
        progress=False,
        **small,
    )
    assert run.config.data.events == ("view",)
    assert run.trainer.data.info["interactions"] == 12 * 6  # the buys left out
    assert recsys.load(tmp_path / "views").trainer.data.info["interactions"] == 12 * 6
    with pytest.raises(DataError, match=r"data\.events names \['click'\]"):
        recsys.fit(df, user="user", item="item", event="kind", events=["click"], run_dir=tmp_path / "x", progress=False)


def test_a_frame_timed_in_milliseconds_is_kept_in_seconds():
    from recsys.api import from_frame

    df = pd.DataFrame({"user_id": ["a", "a"], "item_id": [1, 2], "ts": [1_700_000_000_700, 1_700_000_003_000]})
    assert from_frame(df, time="ts").frame["timestamp"].to_list() == [1_700_000_000, 1_700_000_003]
    assert from_frame(df, time="ts", time_unit="us").frame["timestamp"].to_list() == [1_700_000, 1_700_000]
    with pytest.raises(ConfigError, match=r"time_unit: 'min' is not allowed; allowed values: \['auto', 's'"):
        from_frame(df, time="ts", time_unit="min")


def test_a_model_with_non_finite_weights_recommends_nothing(ring):
    import torch

    from recsys.metrics import NonFiniteScoresError

    _, run = ring
    saved = {k: v.clone() for k, v in run.model.state_dict().items()}
    try:
        with torch.no_grad():
            next(p for p in run.model.parameters() if p.dim() == 2).fill_(float("nan"))  # the item table
        for ask in (
            lambda: run.recommend(users=["user1"], k=3),
            lambda: run.score(histories=[["item3"]]),
            lambda: run.similar_items(["item3"], k=2),
        ):
            with pytest.raises(NonFiniteScoresError, match="did training diverge"):
                ask()
    finally:
        run.model.load_state_dict(saved)
    assert run.recommend(users=["user1"], k=3).height == 3
