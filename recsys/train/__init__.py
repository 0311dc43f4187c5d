"""Training: the loop every task shares (:mod:`.loop`), next-item training (:mod:`.next_item`), click
prediction (:mod:`.click`), what a run runs on (:mod:`.runtime`) and its learning-curve plot (:mod:`.plots`)."""

from ..data.pipeline import PreparedData, prepare_data
from ..files import atomic_torch_save, load_checkpoint
from .fitted import FittedTrainer
from .loop import TrainingDivergedError, TrainLoop, config_changes
from .next_item import Trainer, epoch_generator, load_run, training_item_frequency
from .plots import plot_learning_curves
from .runtime import (
    native_bf16,
    peak_memory_mb,
    resolve_ce_matmul_dtype,
    resolve_device,
    retain_freed_memory,
    run_environment,
    warn_if_bf16_emulated,
    warn_if_compile_on_cpu,
)
from .text import TwoStageTextTrainer


def make_trainer(cfg, run_dir, data: PreparedData | None = None, progress: bool = True, verbose=None) -> Trainer:
    """The trainer for a run's model: :class:`TwoStageTextTrainer` for a ``two_stage_text`` model (the
    token-level Recformer), :class:`FittedTrainer` for a ``fitted`` baseline, else :class:`Trainer`
    (next-item and cloze objectives)."""
    from ..models.base import resolve_model

    objective = resolve_model(cfg.model_name)[0].objective
    cls = {"two_stage_text": TwoStageTextTrainer, "fitted": FittedTrainer}.get(objective, Trainer)
    return cls(cfg, run_dir, data=data, progress=progress, verbose=verbose)


__all__ = [
    "PreparedData",
    "FittedTrainer",
    "TrainLoop",
    "TwoStageTextTrainer",
    "Trainer",
    "TrainingDivergedError",
    "atomic_torch_save",
    "config_changes",
    "epoch_generator",
    "load_checkpoint",
    "load_run",
    "make_trainer",
    "native_bf16",
    "peak_memory_mb",
    "plot_learning_curves",
    "prepare_data",
    "resolve_ce_matmul_dtype",
    "resolve_device",
    "retain_freed_memory",
    "run_environment",
    "training_item_frequency",
    "warn_if_bf16_emulated",
    "warn_if_compile_on_cpu",
]
