"""Click prediction (CTR): DIN, TWIN, TWIN + projection and DARE on long user histories.

A recipe with ``task = "click"`` is trained here instead of by the next-item trainer::

    task = "click"
    [data]   dataset, events (Taobao behaviours kept), min_events, max_history, stride, negatives, sample_seed
    [model]  name = "din" | "twin" | "dare", embedding_dim, attention_dim, top_k, projection (twin), ...
    [train]  epochs, batch_size, lr, weight_decay, seeds (how many seeds: mean and spread are reported)

Each seed is a run of its own in ``RUN_DIR/seed-S`` (:class:`recsys.train.click.ClickTrainer`: BCE, the
epoch with the best validation AUC, its test AUC, GAUC (per user, impression-weighted) and log loss;
checkpoints, ``--resume``, early stopping with ``train.patience``); ``RUN_DIR/final_metrics.json`` holds
every seed and their mean and spread. Samples come from :mod:`recsys.data.ctr`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import torch

from .config import ConfigError, apply_overrides, build_section, read_recipe_file
from .data.cards import load_dataset, load_item_text
from .data.ctr import CTRData, build_ctr_data, item_categories
from .data.prepare import prepare_sequences
from .files import atomic_write_json, make_folder
from .metrics import mean_and_spread
from .models.ctr_base import CTR_MODELS
from .train.click import ClickTrainer, click_metrics  # noqa: F401  (click_metrics: part of this API)


@dataclass
class ClickDataConfig:
    dataset: str = "taobao"
    data_dir: str | None = None
    min_rating: float | None = None
    min_events: int = 210
    max_history: int = 200
    stride: int = 5
    min_history: int = 10
    negatives: int = 2
    sample_seed: int = 0


@dataclass
class ClickTrainConfig:
    epochs: int = 5
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-6
    seeds: int = 1
    first_seed: int = 0
    num_threads: int = 0
    device: str = "auto"
    patience: int = 0  # stop after this many epochs without a better validation AUC (0: never)
    eval_every: int = 1
    max_grad_norm: float = 0.0  # clip the gradients' norm to this (0: no clipping)
    nonfinite: str = "stop"  # a non-finite loss or gradient: "stop" the run or "skip" the step


@dataclass
class ClickRunConfig:
    data: ClickDataConfig = field(default_factory=ClickDataConfig)
    model_name: str = "dare"
    model: object = None
    train: ClickTrainConfig = field(default_factory=ClickTrainConfig)

    def to_dict(self) -> dict:
        return json.loads(
            json.dumps(
                {
                    "task": "click",
                    "data": dataclasses.asdict(self.data),
                    "model": {"name": self.model_name, **dataclasses.asdict(self.model)},
                    "train": dataclasses.asdict(self.train),
                }
            )
        )


def is_click_recipe(path: str | Path) -> bool:
    return read_recipe_file(path).get("task") == "click"


def load_click_recipe(path: str | Path, overrides=()) -> ClickRunConfig:
    raw = read_recipe_file(path)
    raw.pop("task", None)
    raw = apply_overrides(raw, list(overrides)) if overrides else raw
    for section in raw:
        if section not in ("data", "model", "train"):
            raise ConfigError(f"{path}: unknown section [{section}] for a click recipe; allowed: data, model, train")
    model_raw = dict(raw.get("model", {}))
    name = model_raw.pop("name", "dare")
    from .models import dare, din, twin  # noqa: F401  (fill the CTR registry)

    if name not in CTR_MODELS:
        raise ConfigError(f"{path}: model.name: unknown CTR model {name!r}; allowed: {sorted(CTR_MODELS)}")
    try:
        cfg = ClickRunConfig(
            data=build_section(ClickDataConfig, raw.get("data", {}), "data"),
            model_name=name,
            model=build_section(CTR_MODELS[name][1], model_raw, "model"),
            train=build_section(ClickTrainConfig, raw.get("train", {}), "train"),
        )
        _check_click_ranges(cfg)
        return cfg
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _check_click_ranges(cfg: ClickRunConfig) -> None:
    d, t, m = cfg.data, cfg.train, cfg.model
    checks = [
        ("train.epochs", t.epochs >= 1, ">= 1"),
        ("train.batch_size", t.batch_size >= 1, ">= 1"),
        ("train.lr", t.lr > 0, "> 0"),
        ("train.weight_decay", t.weight_decay >= 0, ">= 0"),
        ("train.seeds", t.seeds >= 1, ">= 1"),
        ("train.num_threads", t.num_threads >= 0, ">= 0"),
        ("train.patience", t.patience >= 0, ">= 0"),
        ("train.eval_every", t.eval_every >= 1, ">= 1"),
        ("train.max_grad_norm", t.max_grad_norm >= 0, ">= 0"),
        ("train.nonfinite", t.nonfinite in ("stop", "skip"), "'stop' or 'skip'"),
        (
            "train.device",
            t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:"),
            "auto, cpu, cuda or cuda:N",
        ),
        ("data.max_history", d.max_history >= 1, ">= 1"),
        ("data.stride", d.stride >= 1, ">= 1"),
        ("data.min_history", 1 <= d.min_history <= d.max_history, "in [1, data.max_history]"),
        ("data.negatives", d.negatives >= 0, ">= 0"),
        ("data.min_events", d.min_events >= 2, ">= 2"),
        ("model.dropout", 0 <= getattr(m, "dropout", 0.0) < 1, "in [0, 1)"),
    ]
    for key, ok, what in checks:
        if not ok:
            raise ConfigError(f"{key} must be {what}")


def load_click_data(cfg: ClickDataConfig, verbose: bool = True) -> CTRData:
    loaded = load_dataset(cfg.dataset, cfg.data_dir)
    seq = prepare_sequences(loaded.interactions, min_rating=cfg.min_rating, verbose=verbose)
    frame = loaded.interactions.frame
    if "category_id" in frame.columns:  # Taobao: the category logged with each event
        per_item = frame.group_by("item_id").agg(pl.col("category_id").first())
        cats = item_categories(seq, per_item["item_id"].to_list(), per_item["category_id"].to_numpy())
    else:  # MovieLens: the first listed genre
        text = load_item_text(cfg.dataset, cfg.data_dir)
        if text is not None and text["genres"].null_count() < text.height:
            text = text.filter(pl.col("item_id").is_in(list(seq.item_raw_ids[1:])))
            cats = item_categories(
                seq, text["item_id"].to_list(), text["genres"].str.split("|").list.first().to_numpy()
            )
        else:
            cats = None
    return build_ctr_data(
        seq,
        cats,
        cfg.min_events,
        cfg.max_history,
        cfg.stride,
        cfg.min_history,
        cfg.negatives,
        cfg.sample_seed,
        verbose=verbose,
    )


def summarize(per_seed: list[dict]) -> dict:
    out = {}
    for split in ("valid", "test"):
        for metric in ("auc", "gauc", "logloss"):
            out[f"{split}_{metric}_mean"], out[f"{split}_{metric}_std"] = mean_and_spread(
                [r[split][metric] for r in per_seed]
            )
    return out


def run_click(cfg: ClickRunConfig, run_dir: str | Path, progress: bool = True, resume: bool = False) -> dict:
    """Train every seed (each in ``run_dir/seed-S``, resumable), then write their results and summary."""
    run_dir = Path(run_dir)
    if (run_dir / "final_metrics.json").exists() and not resume:
        raise FileExistsError(f"{run_dir} already holds a run; use --resume or another --run-dir")
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    ctr = load_click_data(cfg.data, verbose=progress)
    per_seed = []
    for seed in range(cfg.train.first_seed, cfg.train.first_seed + cfg.train.seeds):
        trainer = ClickTrainer(cfg, run_dir / f"seed-{seed}", ctr, seed, progress=progress)
        out = trainer.fit(resume=resume)
        per_seed.append({"seed": seed, "epoch": out["best_epoch"], **out, "history": trainer.history})
    out = {
        "config": cfg.to_dict(),
        "samples": {"train": len(ctr.train), "valid": len(ctr.valid), "test": len(ctr.test)},
        "data_log": ctr.log,
        "per_seed": per_seed,
        "summary": summarize(per_seed),
    }
    make_folder(run_dir)
    atomic_write_json(run_dir / "final_metrics.json", out)
    return out
