"""Python API: train on a DataFrame, a file, a dataset card or a packaged recipe, then recommend by user.

    import recsys
    run = recsys.fit(df, model="sasrec", user="user_id", item="item_id", time="timestamp",
                     epochs=3, **{"model.hidden_dim": 64})      # df: pandas or polars; or a path / card name
    top = run.recommend(users=["u1", "u2"], k=10)               # DataFrame: user, rank, item, score (raw ids)
    top = run.recommend(histories=[["i1", "i9"]], k=10, unknown="skip")
    s = run.score(users=["u1"], items=["i3", "i7"])             # DataFrame: user, item, score
    sim = run.similar_items(["i3"], k=10)                        # DataFrame: item, rank, similar_item, score
    run.evaluate("test")["ndcg@10"]
    run2 = recsys.load(run.path)                                # no data needed: the run keeps what it needs
    recsys.recipes()                                            # the packaged recipes
    run3 = recsys.fit(recipe="ml-100k/sasrec", epochs=2)

Results are polars DataFrames (``.to_pandas()`` for pandas). A user's history is every event of that user
in the run's data (training, validation and test), most recent last; ``exclude_seen`` leaves those items
out of the recommendations.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from .config import RunConfig, apply_settings, check_value, config_from_dict, load_recipe
from .data.batching import window_history_pairs
from .data.cards import list_cards
from .data.interactions import save_interactions
from .data.readers import DataError, Interactions, frame_to_interactions
from .data.tables import TimestampUnit
from .metrics import check_finite
from .recipe_index import list_recipes, recipe_label, resolve_recipe
from .train import Trainer, load_run, make_trainer, prepare_data


def from_frame(
    df,
    user: str = "user_id",
    item: str = "item_id",
    time: str | None = None,
    rating: str | None = None,
    time_format: str | None = None,
    event: str | None = None,
    time_unit: str = "auto",
) -> Interactions:
    """Canonical interactions from a pandas / polars DataFrame, naming its columns (``event``: the event
    type, e.g. view / purchase). ``time_format``: the strftime format of text timestamps (default: numbers,
    or date-times polars can infer). ``time_unit``: numeric timestamps' unit, ``s`` / ``ms`` / ``us`` /
    ``ns``; ``auto`` reads epoch times of 1e11 and more as milliseconds (1e14 us, 1e17 ns)."""
    columns = _column_mapping(user, item, time, rating, event)
    check_value(TimestampUnit, time_unit, "time_unit")
    return frame_to_interactions(
        df, columns, source="DataFrame", timestamp_format=time_format, timestamp_unit=time_unit
    )


def _column_mapping(user: str, item: str, time: str | None, rating: str | None, event: str | None) -> dict:
    """Canonical name -> the table's column, for the columns given."""
    named = {"user_id": user, "item_id": item, "timestamp": time, "rating": rating, "event": event}
    return {key: column for key, column in named.items() if column}


def recipes() -> list[str]:
    """The packaged recipes' names (``recsys.fit(recipe=NAME)``, ``recsys train NAME``)."""
    return list_recipes()


def _lookup(raw_ids: np.ndarray, query: Sequence) -> np.ndarray:
    """Internal index of each queried raw id in ``raw_ids`` (its position), -1 where unknown."""
    lookup = pl.DataFrame({"raw": pl.Series(list(raw_ids)), "idx": np.arange(len(raw_ids))})
    asked = pl.DataFrame({"raw": pl.Series(list(query)).cast(lookup["raw"].dtype, strict=False)})
    found = asked.join(lookup, on="raw", how="left", maintain_order="left")["idx"]
    return found.fill_null(-1).to_numpy().astype(np.int64)


def _check_unknown(kind: str, query: Sequence, index: np.ndarray, unknown: str) -> None:
    if unknown not in ("error", "skip"):
        raise ValueError(f"unknown must be 'error' or 'skip', got {unknown!r}")
    if unknown == "error" and (index < 0).any():
        missing = [q for q, i in zip(query, index) if i < 0][:10]
        raise DataError(f"unknown {kind} id(s) {missing}: not in this run's data (unknown='skip' leaves them out)")


def _id_list(name: str, ids) -> list:
    """``ids`` as a list; a bare string is refused (iterating it would ask for its characters)."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{name}= takes a list of ids, got the string {ids!r}: pass [{ids!r}]")
    return list(ids)


def _check_k(k) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {type(k).__name__} {k!r}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")


class Run:
    """A trained model with its run folder and data: evaluate, recommend, score and find similar items,
    every id raw (as in the data it was trained on)."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.model = trainer.model
        self.data = trainer.split.data

    @property
    def config(self) -> RunConfig:
        return self.trainer.cfg

    @property
    def path(self) -> Path:
        """The run folder (``recsys.load(run.path)``; the CLI's ``evaluate`` / ``export`` take it too)."""
        return self.trainer.run_dir

    def evaluate(self, split: str = "test") -> dict:
        return self.trainer.evaluate(split)

    # -- the users and histories asked about, as left-padded windows of internal ids
    def _user_windows(self, users: Sequence, unknown: str):
        index = _lookup(self.data.user_raw_ids, users)
        _check_unknown("user", users, index, unknown)
        keep = np.flatnonzero(index >= 0)
        width = self.config.max_seq_len
        offsets = self.data.seq_offsets
        histories, times, seen = [], [], []
        for u in index[keep]:  # one slice per asked user
            start = max(offsets[u], offsets[u + 1] - width)
            histories.append(np.asarray(self.data.item_ids[start : offsets[u + 1]]))
            times.append(np.asarray(self.data.timestamps[start : offsets[u + 1]]))
            seen.append(np.asarray(self.data.item_ids[offsets[u] : offsets[u + 1]]))  # every item the user had
        return [users[i] for i in keep], histories, times, seen

    def _history_windows(self, histories: Sequence[Sequence], unknown: str):
        rows, seen = [], []
        for history in histories:
            index = _lookup(self.data.item_raw_ids[1:], history) + 1  # 0 = unknown (padding is never an item)
            _check_unknown("item", history, index - 1, unknown)
            seen.append(index[index > 0])
            rows.append(seen[-1][-self.config.max_seq_len :])
        if any(len(r) == 0 for r in rows):
            raise DataError("every history needs at least one known item")
        return rows, seen

    @torch.no_grad()
    def _scores(self, rows: list[np.ndarray], times=None, at=None) -> torch.Tensor:
        """[n, V] scores of every item (column = internal id; column 0, padding, is -inf)."""
        if not rows:
            return torch.empty(0, self.data.num_items)
        if times is None and getattr(self.model.cfg, "use_time_bias", False):
            raise DataError("this model reads time (time bias): pass times= (each item's timestamp) and optionally at=")
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        stamps = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.from_numpy(np.array(r, dtype=np.int64))  # (a copy: r may be read-only)
            if times is not None:
                stamps[i, width - len(r) :] = torch.as_tensor(np.asarray(times[i], dtype=np.int64)[-len(r) :])
        self.model.eval()
        device = self.trainer.device
        extra = ()
        if times is not None:
            when = torch.as_tensor([int(a) for a in at] if at is not None else [int(t[-1]) for t in times])
            extra = (stamps.to(device), when.to(device))
        users = self.model.user_vectors(ids.to(device), *extra)
        items = self.model.item_vectors()
        if self.config.loss.l2_normalize:
            users, items = F.normalize(users, dim=-1), F.normalize(items, dim=-1)
        scores = (users @ items.T).float().cpu()
        bias = getattr(self.model, "repeat_bias", None)
        if bias is not None:  # the model's learned score for the items it has just read (as the evaluator)
            rows, window_items = window_history_pairs(ids)
            scores[rows, window_items] += float(bias.detach())
        check_finite(scores[:, 1:], f"{self.path}: scores of the users or histories asked about")  # as the evaluator
        scores[:, 0] = float("-inf")
        return scores

    def _windows(self, users, histories, unknown, times):
        if (users is None) == (histories is None):
            raise ValueError("pass users= or histories=, one of them")
        if users is not None:
            keys, rows, user_times, seen = self._user_windows(_id_list("users", users), unknown)
            timed = getattr(self.model.cfg, "use_time_bias", False)
            return keys, rows, (user_times if timed else None), seen
        histories = [_id_list("histories", h) for h in _id_list("histories", histories)]
        if times is not None and [len(t) for t in times] != [len(h) for h in histories]:
            raise DataError("times= needs one timestamp per item of each history")
        rows, seen = self._history_windows(histories, unknown)
        return list(range(len(rows))), rows, times, seen

    def recommend(
        self,
        users: Sequence | None = None,
        k: int = 10,
        *,
        histories: Sequence[Sequence] | None = None,
        exclude_seen: bool = True,
        unknown: str = "error",
        times: Sequence[Sequence[int]] | None = None,
        at: Sequence[int] | None = None,
    ) -> pl.DataFrame:
        """The top ``k`` items for each user of the run's data (``users``: raw user ids) or each history of
        raw item ids (``histories``, oldest first; the column ``user`` is then the history's position).
        ``unknown="skip"`` leaves out unknown users or items instead of raising; ``exclude_seen`` leaves out
        the items of the history. Models that read time (HSTU's time bias) take the users' own timestamps,
        or ``times`` (one per history item) and ``at`` (the request's time, default the last item's).
        Returns a DataFrame (user, rank, item, score), fewer than k rows per user where the catalogue less
        the history holds fewer items."""
        _check_k(k)
        keys, rows, row_times, seen = self._windows(users, histories, unknown, times)
        scores = self._scores(rows, row_times, at)
        out = {"user": [], "rank": [], "item": [], "score": []}
        for key, items_seen, user_scores in zip(keys, seen, scores):
            if exclude_seen:
                user_scores[torch.from_numpy(np.array(items_seen, dtype=np.int64))] = float("-inf")  # (a copy)
            top = torch.topk(user_scores, min(k, int(torch.isfinite(user_scores).sum())))
            for rank, (i, s) in enumerate(zip(top.indices.tolist(), top.values.tolist()), start=1):
                out["user"].append(key)
                out["rank"].append(rank)
                out["item"].append(self.data.item_raw_ids[i])
                out["score"].append(s)
        return pl.DataFrame(out, schema_overrides={"rank": pl.Int32, "score": pl.Float32}, strict=False)

    def score(
        self,
        users: Sequence | None = None,
        items: Sequence | None = None,
        *,
        histories: Sequence[Sequence] | None = None,
        unknown: str = "error",
        times: Sequence[Sequence[int]] | None = None,
        at: Sequence[int] | None = None,
    ) -> pl.DataFrame:
        """Scores of ``items`` (raw ids; default every item) for each user (or history): a DataFrame (user,
        item, score), one row per pair."""
        keys, rows, row_times, _ = self._windows(users, histories, unknown, times)
        scores = self._scores(rows, row_times, at)
        if items is None:
            columns = np.arange(1, self.data.num_items)
            item_keys = list(self.data.item_raw_ids[1:])
        else:
            items = _id_list("items", items)
            index = _lookup(self.data.item_raw_ids[1:], items)
            _check_unknown("item", items, index, unknown)
            keep = np.flatnonzero(index >= 0)
            columns, item_keys = index[keep] + 1, [items[i] for i in keep]
        picked = scores[:, torch.from_numpy(columns)] if len(keys) else torch.empty(0, len(columns))
        return pl.DataFrame(
            {
                "user": np.repeat(np.asarray(keys, dtype=object), len(columns)).tolist(),
                "item": item_keys * len(keys),
                "score": picked.reshape(-1).numpy(),
            },
            strict=False,
        )

    @torch.no_grad()
    def similar_items(self, items: Sequence, k: int = 10, unknown: str = "error") -> pl.DataFrame:
        """The ``k`` items whose vectors are closest (cosine) to each given item's: a DataFrame (item, rank,
        similar_item, score)."""
        _check_k(k)
        items = _id_list("items", items)
        index = _lookup(self.data.item_raw_ids[1:], items)
        _check_unknown("item", items, index, unknown)
        keep = np.flatnonzero(index >= 0)
        vectors = F.normalize(self.model.item_vectors().float(), dim=-1).cpu()
        check_finite(vectors[1:], f"{self.path}: item vectors")
        query = torch.from_numpy(index[keep] + 1)
        scores = vectors[query] @ vectors.T  # [q, V]
        scores[:, 0] = float("-inf")
        scores[torch.arange(len(query)), query] = float("-inf")  # an item is not its own neighbour
        top = torch.topk(scores, min(k, self.data.num_items - 2), dim=1)
        out = {"item": [], "rank": [], "similar_item": [], "score": []}
        for q, ids, values in zip(keep, top.indices.tolist(), top.values.tolist()):
            for rank, (i, s) in enumerate(zip(ids, values), start=1):
                out["item"].append(items[q])
                out["rank"].append(rank)
                out["similar_item"].append(self.data.item_raw_ids[i])
                out["score"].append(s)
        return pl.DataFrame(out, schema_overrides={"rank": pl.Int32, "score": pl.Float32}, strict=False)


Recommender = Run  # the name earlier versions used


def _as_interactions(data, columns: dict, time_format, time_unit) -> Interactions | None:
    if isinstance(data, Interactions):
        return data
    if isinstance(data, (str, Path)) or data is None:
        return None
    return from_frame(data, **columns, time_format=time_format, time_unit=time_unit)


def fit(
    data: Any = None,
    model: str | None = None,
    *,
    recipe: str | Path | None = None,
    user: str = "user_id",
    item: str = "item_id",
    time: str | None = None,
    rating: str | None = None,
    time_format: str | None = None,
    time_unit: str = "auto",
    event: str | None = None,
    events: Sequence[str] | None = None,
    epochs: int | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    **settings: Any,
) -> Run:
    """Train and return the :class:`Run`.

    ``data``: a pandas / polars DataFrame (``user`` / ``item`` / ``time`` / ``rating`` / ``event`` name its
    columns; ``events``: keep only these event types; ``time_format`` / ``time_unit``: text date-times'
    format, numeric times' unit, as :func:`from_frame` reads them), a CSV / TSV / Parquet / JSON-lines file
    (the same column names), a dataset card's name, a packaged recipe's name (the recipe with the data it names), or
    None with a ``recipe`` that names its data. ``model``: a
    registered model name (default: the recipe's, else SASRec; without a recipe the model starts from its
    start-here settings, recsys.start_here, with a history window (``model.max_seq_len``) of 200 events
    where the median user history has 50 or more, else 50). ``recipe``: a
    packaged recipe's name (``recsys.recipes()``) or a TOML file. Settings: ``epochs``, dotted keys
    (``**{"model.hidden_dim": 64}``) or ``overrides`` (a dict of dotted keys, or ``"key=value"`` strings as
    for ``--set``). ``run_dir``: default ``runs/api-DATE-TIME``. A DataFrame's table is kept in the run
    folder, so :func:`load` needs no data."""
    if model is not None and (str(model).endswith(".toml") or "/" in str(model)) and recipe is None:
        recipe, model = model, None  # fit(data, "recipes/x.toml"): the earlier positional recipe
    settings = dict(settings)
    if isinstance(overrides, Mapping):
        settings.update(overrides)
        overrides = ()
    if model is not None:
        settings["model.name"] = model
    if epochs is not None:
        settings["train.epochs"] = epochs
    if events is not None:
        settings["data.events"] = list(events)
    named = {"user": user, "item": item, "time": time, "rating": rating, "event": event}
    interactions = _as_interactions(data, named, time_format, time_unit)
    if interactions is not None:
        settings["data.dataset"] = "custom"
    elif data is not None and Path(str(data)).is_file():
        columns = _column_mapping(user, item, time, rating, event)
        settings.update({"data.dataset": "custom", "data.path": str(Path(data).resolve()), "data.reader": "table"})
        settings.update({"data.columns": columns, **({"data.timestamp_format": time_format} if time_format else {})})
        settings.update({"data.timestamp_unit": time_unit} if time_unit != "auto" else {})
    elif data is not None:
        name = str(data)
        if name in list_cards():
            settings["data.dataset"] = name
        elif recipe is None and name in list_recipes():  # fit("ml-100k/sasrec"): a recipe, with the data it names
            recipe = name
        else:
            raise FileNotFoundError(
                f"data={name!r}: no such file, and not a dataset card's name ({', '.join(list_cards())})"
                + ("" if recipe is not None else " or a packaged recipe's (recsys.recipes())")
            )
    fit_window = False
    if recipe is not None:
        cfg = load_recipe(resolve_recipe(recipe), list(overrides), settings)
    else:  # no recipe: the model's start-here settings (recsys.start_here), then what was asked for
        from .config import apply_overrides
        from .start_here import START_HERE
        from .start_here import settings as start_here

        name = settings.get("model.name", "sasrec")
        timed = interactions.has_timestamps if interactions is not None else True
        base = start_here(name, has_times=timed) if name in START_HERE else {"model": {"name": name}}
        cfg = config_from_dict(apply_settings(apply_overrides(base, list(overrides)), settings))
        given = set(settings) | {str(o).partition("=")[0].strip() for o in overrides}
        windowed = name in START_HERE and START_HERE[name][1].get("model", {}).get("max_seq_len") == "{max_seq_len}"
        fit_window = windowed and "model.max_seq_len" not in given
    run_dir = Path(run_dir or Path("runs") / f"api-{dt.datetime.now().strftime('%Y%m%d-%H%M%S-%f')}")
    holds_run = (run_dir / "last.pt").exists() or (run_dir / "final_metrics.json").exists()
    if holds_run and not resume:  # said before anything is written there
        raise FileExistsError(f"{run_dir} already holds a run; pass resume=True or another run_dir")
    if interactions is not None and not (resume and holds_run):
        save_interactions(interactions, run_dir)  # the run keeps its table: evaluate / export / load need no data
    prepared = prepare_data(cfg.data, verbose=progress, interactions=interactions)
    if fit_window:  # the start-here window fits the data's histories (recsys.start_here.history_window)
        from .start_here import history_window

        cfg.model.max_seq_len = history_window(float(np.median(np.diff(prepared.split.data.seq_offsets))))
    trainer = make_trainer(cfg, run_dir, data=prepared, progress=progress)
    if recipe is not None:
        trainer.recipe = recipe_label(resolve_recipe(recipe))
    trainer.fit(resume=resume)
    return Run(trainer)


def load(run_dir: str | Path, data: Interactions | None = None) -> Run:
    """A finished run's best model. A run trained on a DataFrame reads the table it kept."""
    return Run(load_run(run_dir, data=data))
