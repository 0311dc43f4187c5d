"""Python API mirroring the CLI, for notebooks.

import recsys
data = recsys.from_frame(df, user="user_id", item="item_id", time="ts")   # pandas or polars
model = recsys.fit(data, "recipes/ml-100k/sasrec.toml", overrides=["train.epochs=5"], run_dir="runs/nb")
model.evaluate("test")["ndcg@10"]
model.recommend(["i1", "i7", "i3"], k=10)       # raw item ids and scores
model = recsys.load("runs/nb")                     # a finished run, back from disk
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .config import RunConfig, config_from_dict, load_recipe
from .data.readers import DataError, Interactions, frame_to_interactions
from .train import Trainer, load_run, make_trainer, prepare_data


def from_frame(
    df,
    user: str = "user_id",
    item: str = "item_id",
    time: str | None = None,
    rating: str | None = None,
    time_format: str | None = None,
) -> Interactions:
    """Canonical interactions from a pandas / polars DataFrame, naming its columns. ``time_format``:
    the strftime format of text timestamps (default: integers, or date-times polars can infer)."""
    columns = {"user_id": user, "item_id": item}
    if time:
        columns["timestamp"] = time
    if rating:
        columns["rating"] = rating
    return frame_to_interactions(df, columns, source="DataFrame", timestamp_format=time_format)


class Recommender:
    """A trained model with its data: evaluate, score and recommend by raw ids."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.model = trainer.model
        self.data = trainer.split.data

    @property
    def config(self) -> RunConfig:
        return self.trainer.cfg

    def evaluate(self, split: str = "test") -> dict:
        return self.trainer.evaluate(split)

    @torch.no_grad()
    def score(
        self,
        histories: Sequence[Sequence],
        times: Sequence[Sequence[int]] | None = None,
        at: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Scores [len(histories), V] of every item (column i = internal id i; column 0 is padding = -inf)
        for histories of raw item ids (oldest first). Models that read time (HSTU's time bias) need
        ``times``: each item's timestamp (seconds, as in the training log), and ``at``: the time each
        recommendation is for (default: the history's last timestamp)."""
        max_len = self.config.max_seq_len
        if len(histories) == 0:
            raise DataError("score needs at least one history")
        rows = [self.data.item_index(h)[-max_len:] for h in histories]
        if any(len(r) == 0 for r in rows):
            raise DataError("every history needs at least one item")
        if times is None and getattr(self.model.cfg, "use_time_bias", False):
            raise DataError(
                "this model reads time (time bias): pass times= (each item's timestamp) and "
                "optionally at= (the time of the request)"
            )
        if times is not None and [len(t) for t in times] != [len(h) for h in histories]:
            raise DataError("times= needs one timestamp per item of each history")
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        stamps = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):  # one row per history, not per interaction
            ids[i, width - len(r) :] = torch.from_numpy(r)
            if times is not None:
                stamps[i, width - len(r) :] = torch.tensor(list(times[i])[-len(r) :], dtype=torch.long)
        self.model.eval()
        device = self.trainer.device
        extra = ()
        if times is not None:
            when = torch.tensor(list(at) if at is not None else [t[-1] for t in times], dtype=torch.long)
            extra = (stamps.to(device), when.to(device))
        users = self.model.user_vectors(ids.to(device), *extra)
        items = self.model.item_vectors()
        if self.config.loss.l2_normalize:
            users, items = F.normalize(users, dim=-1), F.normalize(items, dim=-1)
        scores = (users @ items.T).cpu()
        scores[:, 0] = float("-inf")
        return scores

    def recommend(
        self,
        history: Sequence,
        k: int = 10,
        exclude_seen: bool = True,
        times: Sequence[int] | None = None,
        at: int | None = None,
    ) -> list[tuple[object, float]]:
        """Top-k (raw item id, score) for one history of raw item ids: fewer when the catalogue (less the
        history, with ``exclude_seen``) holds fewer than k items. ``times`` / ``at``: as in :meth:`score`."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        scores = self.score([history], None if times is None else [times], None if at is None else [at])[0]
        if exclude_seen:
            scores[torch.from_numpy(self.data.item_index(history))] = float("-inf")
        top = torch.topk(scores, min(k, int(torch.isfinite(scores).sum())))  # never padding or excluded items
        return [(self.data.item_raw_ids[i], float(s)) for i, s in zip(top.indices.tolist(), top.values.tolist())]


def fit(
    data: Interactions | str,
    recipe: str | Path | None = None,
    overrides: Sequence[str] = (),
    run_dir: str | Path = "runs/api",
    resume: bool = False,
    progress: bool = True,
) -> Recommender:
    """Train on interactions (or a dataset card's name) with a recipe's settings (defaults without one)."""
    cfg = load_recipe(recipe, list(overrides)) if recipe else config_from_dict(_overrides_only(overrides))
    interactions = None
    if isinstance(data, Interactions):
        interactions = data
        cfg.data.dataset = "custom"
    else:
        cfg.data.dataset = str(data)
    prepared = prepare_data(cfg.data, verbose=progress, interactions=interactions)
    trainer = make_trainer(cfg, run_dir, data=prepared, progress=progress)
    trainer.fit(resume=resume)
    return Recommender(trainer)


def load(run_dir: str | Path, data: Interactions | None = None) -> Recommender:
    """A finished run's best model. Runs trained on a DataFrame need the same ``data`` passed again."""
    return Recommender(load_run(run_dir, data=data))


def _overrides_only(overrides: Sequence[str]) -> dict:
    from .config import apply_overrides

    return apply_overrides({}, list(overrides))
