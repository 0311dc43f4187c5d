"""The part of training every task shares: epochs, early stopping on a validation metric, checkpoints,
exact resume, the run folder's lock and log, and the divergence checks.

A task (next-item prediction in :mod:`recsys.train.next_item`, click prediction in
:mod:`recsys.train.click`) subclasses :class:`TrainLoop` and supplies one epoch of training
(:meth:`TrainLoop.train_epoch`, which calls :meth:`TrainLoop.optimizer_step` for each batch), the
validation metrics (:meth:`TrainLoop.validate`) and the final evaluation (:meth:`TrainLoop.final_metrics`).

A run directory holds:
- ``config.json``     the resolved configuration; ``env.json`` what it ran on
- ``metrics.jsonl``   one line per epoch (train loss, validation metrics, timings)
- ``last.pt``         everything needed to resume (model, optimizer, RNG state, early-stopping state)
- ``best.pt``         the best model by the validation metric (state_dict + config)
- ``final_metrics.json``, ``learning_curves.png`` and ``train.log``.

Every file is written to a temporary name and renamed, so a killed run never leaves a half-written
checkpoint under a real name; checkpoints carry a content hash and are read with
``torch.load(weights_only=True)``. An epoch's data order, dropout and negatives depend only on (seed,
epoch), so a resumed run ends with exactly the metrics of an uninterrupted one.

With ``train.ema_decay`` > 0 the loop keeps an exponential moving average of the weights
(``torch.optim.swa_utils.AveragedModel``, updated after every optimizer step); validation, ``best.pt`` and
the final evaluation use the averaged weights, training goes on from the trained ones, and ``last.pt``
holds both.
"""

from __future__ import annotations

import json
import math
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .. import distributed
from ..config import ConfigError
from ..errors import DataError, RecsysError
from ..files import (
    RunLock,
    RunLog,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    load_checkpoint,
    make_folder,
    read_json,
)
from .plots import plot_learning_curves
from .runtime import run_environment


class TrainingDivergedError(RecsysError, RuntimeError):
    """A training step produced a NaN or infinite loss or gradient."""


# how a run executes or when it stops, not what each epoch computes: these may change on --resume
# (more threads, another device, a longer or shorter schedule)
RUNTIME_KEYS = (
    "num_threads",
    "device",
    "compile",
    "epochs",
    "patience",
    "loggers",
    "mlflow_uri",
    "mlflow_experiment",
)


def _without_runtime(config: dict) -> dict:
    """The config without runtime settings, which a resumed run may change."""
    return {**config, "train": {k: v for k, v in config["train"].items() if k not in RUNTIME_KEYS}}


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Each key whose value differs between two config dicts, as "key: old -> new"."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "(unset)"), new.get(key, "(unset)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


class StepChecks:
    """One epoch's divergence checks. On CPU every step's gradient norm is read (it costs nothing); on an
    accelerator a per-step read would wait for the device, so the first bad step is kept there and read
    once, at the epoch's end (skipping bad steps, ``train.nonfinite = "skip"``, needs each step)."""

    def __init__(self, loop: TrainLoop, steps: int):
        self.loop, self.steps, self.skipped = loop, steps, 0
        self.each_step = loop.device.type == "cpu" or loop.cfg.train.nonfinite == "skip"
        self.first_bad = torch.full((), -1, dtype=torch.long, device=loop.device)

    def end(self) -> None:
        if not self.each_step and int(self.first_bad) >= 0:
            self.loop._diverged(None, None, int(self.first_bad), self.steps)
        if self.skipped >= self.steps:
            raise TrainingDivergedError(
                f"run {self.loop.run_dir}: every step of epoch {self.loop.epoch + 1} had a non-finite "
                "loss or gradient (train.nonfinite=skip); lower train.lr or set train.max_grad_norm"
            )
        if self.skipped:
            print(
                f"epoch {self.loop.epoch + 1}: {self.skipped} of {self.steps} steps skipped (non-finite loss "
                "or gradient)",
                file=sys.stderr,
            )


class TrainLoop(ABC):
    """Epochs, validation, early stopping, checkpoints and resume for any task. A subclass sets
    ``cfg`` (a run config with ``train.epochs / patience / eval_every / nonfinite / max_grad_norm / lr``
    and ``to_dict()``), ``run_dir``, ``model``, ``optimizer``, ``device``, ``progress``, ``verbose``,
    ``metric`` (the validation metric that selects the best epoch, higher is better) and ``data_info``."""

    cfg: object
    run_dir: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    progress: bool
    verbose: bool
    metric: str
    data_info: dict

    #: called after each validation with (epoch, metrics); may raise to end the run (a pruned tuning trial)
    on_validation = None
    #: whether the end of the run evaluates the test split (False while tuning: selection on validation only)
    test_at_end = True
    #: the packaged recipe the run was started from (recipes/NAME.toml), recorded in env.json
    recipe: str | None = None

    def _init_loop(self) -> None:
        decay = getattr(self.cfg.train, "ema_decay", 0.0)
        # a copy of the model whose parameters follow the trained ones' moving average; its buffers are
        # the model's own at this point and are never averaged (integer ids, fixed tables)
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(decay)) if decay > 0 else None
        self.history: list[dict] = []
        self.epoch = 0
        self.best_metric = -math.inf
        self.best_epoch = 0
        self.bad_epochs = 0

    # -- what a task supplies
    @abstractmethod
    def train_epoch(self) -> dict:
        """One epoch of training: a record with at least ``train_loss`` and ``train_seconds``."""

    @property
    def has_validation(self) -> bool:
        return True

    @abstractmethod
    def validate(self) -> dict:
        """The validation metrics of the current model (``self.metric`` among them)."""

    @abstractmethod
    def final_metrics(self) -> dict:
        """The best model's evaluation, written to ``final_metrics.json``."""

    def early_stop(self) -> bool:
        """Whether to stop before the next epoch: ``train.patience`` validations without a better metric."""
        patience = self.cfg.train.patience
        return bool(self.has_validation and patience and self.bad_epochs >= patience)

    def stored_config(self, config: dict) -> dict:
        """A checkpoint's config dict as this version reads it (defaults for settings added since)."""
        return config

    def log_header(self) -> str:
        """What ``train.log`` opens with (the data summary)."""
        return ""

    def plot_title(self) -> str:
        return self.run_dir.name

    # -- one step
    def optimizer_step(self, loss: torch.Tensor, step: int, checks: StepChecks) -> bool:
        """Backward, the gradient norm (clipped to ``train.max_grad_norm`` where set), the divergence check,
        and the optimizer step; returns whether the step was taken. The norm is NaN or infinite as soon as
        any gradient or the loss is; it is computed after DDP's all-reduce, so every rank decides alike."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = self.model.parameters()
        if self.cfg.train.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.train.max_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        if checks.each_step:
            if not bool(torch.isfinite(norm)):
                self._diverged(loss.detach(), norm, step, checks.steps)  # raises unless train.nonfinite = "skip"
                self.optimizer.zero_grad(set_to_none=True)
                checks.skipped += 1
                return False
        else:  # the first non-finite step, kept on the device: read once, at the epoch's end
            checks.first_bad = torch.where((checks.first_bad < 0) & ~torch.isfinite(norm), step, checks.first_bad)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return True

    @contextmanager
    def evaluated_weights(self) -> Iterator[None]:
        """Inside: the model holds the weights that are validated, saved as best and tested (the moving
        average with ``train.ema_decay`` > 0); after: the trained weights again, for the next epoch."""
        if self.ema is None or int(self.ema.n_averaged) == 0:
            yield
            return
        params = list(self.model.parameters())
        trained = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, averaged in zip(params, self.ema.module.parameters(), strict=True):
                p.copy_(averaged)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, t in zip(params, trained, strict=True):
                    p.copy_(t)

    def _diverged(self, loss: torch.Tensor | None, norm: torch.Tensor | None, step: int, steps: int) -> None:
        """A step's loss or gradient norm is NaN or infinite: raise unless train.nonfinite = "skip"."""
        if self.cfg.train.nonfinite == "skip":
            return
        if loss is None:  # found at the epoch's end
            what = "the gradient norm became non-finite"
        elif not math.isfinite(float(loss)):
            what = f"the loss became {float(loss)}"
        else:
            what = f"the gradient norm became {float(norm)} (loss {float(loss):.4f})"
        raise TrainingDivergedError(
            f"run {self.run_dir}: {what} at epoch {self.epoch + 1}, step {step + 1} of "
            f"{steps} (train.lr={self.cfg.train.lr}); lower train.lr, set train.max_grad_norm, or "
            "--set train.nonfinite=skip to skip such steps"
        )

    # -- state
    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else {},
            "epoch": self.epoch,
            "rng": torch.get_rng_state(),
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "config": self.cfg.to_dict(),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
        }

    def load_weights(self, path: Path) -> dict:
        """The model's weights from a checkpoint of this run (its whole state returned). One written for
        another model (a run folder whose config.json was edited since) is refused, naming what differs."""
        state = load_checkpoint(path)
        self.check_same_data()
        if isinstance(state.get("config"), dict):
            changed = config_changes(
                self.stored_config(state["config"]).get("model", {}), self.cfg.to_dict().get("model", {})
            )
            if changed:
                raise ConfigError(
                    f"{path} holds a model of other settings than {self.run_dir / 'config.json'} (checkpoint -> file): "
                    + "; ".join(f"model.{c}" for c in changed)
                )
        try:
            self.model.load_state_dict(state["model"])
        except (KeyError, RuntimeError) as err:
            reason = str(err).strip().splitlines()
            raise ConfigError(f"{path}: its weights do not fit this run's model ({' '.join(reason[:2])})") from None
        return state

    def check_same_data(self) -> None:
        """Refuse data other than the run's own: the file's sha256 (or, for a DataFrame, its counts) as
        ``env.json`` recorded it when the run started, against the data read now. A log changed after
        training has other splits and test targets: its metrics would not be the run's."""
        env = self.run_dir / "env.json"
        if not env.exists():
            return
        recorded = read_json(env, "run environment").get("data") or {}
        keys = (
            ["sha256"]
            if recorded.get("sha256") and self.data_info.get("sha256")
            else ["users", "items", "interactions"]
        )
        changed = [k for k in keys if k in recorded and k in self.data_info and recorded[k] != self.data_info[k]]
        if changed:
            source = self.data_info.get("file") or self.data_info.get("dataset", "the data")
            raise DataError(
                f"{source} is not the data {self.run_dir} was trained on ("
                + "; ".join(f"{k}: {recorded[k]} then, {self.data_info[k]} now" for k in changed)
                + "): its splits and test targets would differ. Restore the file, or train again"
            )

    def _restore(self, state: dict) -> None:
        self.check_same_data()
        stored = self.stored_config(state["config"])
        changed = config_changes(_without_runtime(stored), _without_runtime(self.cfg.to_dict()))
        if changed:
            raise ConfigError(
                f"{self.run_dir}: the checkpoint was written with another configuration: "
                + "; ".join(changed)
                + ". Resume with the same recipe and overrides"
            )
        self.model.load_state_dict(state["model"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.epoch = state["epoch"]
        torch.set_rng_state(state["rng"])
        self.best_metric = state["best_metric"]
        self.best_epoch = state["best_epoch"]
        self.bad_epochs = state["bad_epochs"]
        self.history = state["history"]

    # -- the loop
    def fit(self, resume: bool = False) -> dict:
        """Train (or, with ``resume``, go on from ``last.pt``) to the end, then :meth:`finish`. The run folder is
        locked for the whole time (:class:`recsys.files.RunLock`): a second writer fails at once."""
        if not distributed.is_main():
            return self._fit(resume)
        # the run's own train.log: what it prints, the terminal muted unless verbose (the CLI's log of the
        # same folder, when it has one open, already holds the data preparation's lines)
        with RunLock(self.run_dir), RunLog(self.run_dir / "train.log", muted=not self.verbose) as log:
            if log.active:
                log.write(self.log_header())
            try:
                return self._fit(resume)
            except Exception as err:
                log.write(f"error: {type(err).__name__}: {err}\n")
                raise

    def _fit(self, resume: bool) -> dict:
        make_folder(self.run_dir)
        last = self.run_dir / "last.pt"
        if (last.exists() or (self.run_dir / "final_metrics.json").exists()) and not resume:
            raise FileExistsError(f"{self.run_dir} already holds a run; use --resume or another --run-dir")
        if resume and last.exists():
            self._restore(load_checkpoint(last))
            if self.progress:
                print(f"resumed {self.run_dir} after epoch {self.epoch}")
        main = distributed.is_main()
        if main:
            atomic_write_json(self.run_dir / "config.json", self.cfg.to_dict())
            environment = run_environment(self.cfg, self.data_info, self.device)
            atomic_write_json(self.run_dir / "env.json", {**environment, "recipe": self.recipe})
        self.loggers = self._open_loggers() if main else []
        try:
            return self._epochs()
        finally:
            for logger in self.loggers:
                logger.close()

    def _open_loggers(self) -> list:
        names = getattr(self.cfg.train, "loggers", ())
        if not names:
            return []
        from ..tracking import open_loggers

        train = self.cfg.train
        return open_loggers(names, self.run_dir, self.cfg.to_dict(), train.mlflow_uri, train.mlflow_experiment)

    def _epochs(self) -> dict:
        """Epochs from the current one to the end (or early stopping), then :meth:`finish`."""
        train = self.cfg.train
        main = distributed.is_main()
        last = self.run_dir / "last.pt"
        has_valid = self.has_validation
        stopped_early = False
        while self.epoch < train.epochs:
            if self.early_stop():
                stopped_early = True
                break
            record = {"epoch": self.epoch + 1, **self.train_epoch()}
            self.epoch += 1
            if has_valid and (self.epoch % train.eval_every == 0 or self.epoch == train.epochs):
                with self.evaluated_weights():
                    valid = self.validate()
                    record["valid"] = {k: v for k, v in valid.items() if k != "num_users"}
                    if not math.isfinite(valid[self.metric]):  # never "best"
                        raise TrainingDivergedError(
                            f"run {self.run_dir}: validation {self.metric} is {valid[self.metric]} "
                            f"after epoch {self.epoch}"
                        )
                    if valid[self.metric] > self.best_metric:
                        self.best_metric, self.best_epoch, self.bad_epochs = valid[self.metric], self.epoch, 0
                        self._save_best()
                    else:
                        self.bad_epochs += train.eval_every
                if self.on_validation is not None:
                    self.on_validation(self.epoch, valid)
            elif not has_valid:  # no model selection (the HSTU split): the last epoch is the model
                self.best_epoch = self.epoch
                with self.evaluated_weights():
                    self._save_best()
            self.history.append(record)
            if main:
                self._write_log()
                atomic_torch_save(self._state(), last)
                self._print_epoch(record)  # to train.log; to the terminal unless muted
                for logger in self.loggers:
                    logger.log_epoch(record)
            distributed.barrier()  # every rank sees this epoch's files before going on
        return self.finish(stopped_early or self.early_stop())

    def _save_best(self) -> None:
        if not distributed.is_main():
            return
        atomic_torch_save(
            {"model": self.model.state_dict(), "config": self.cfg.to_dict(), "epoch": self.epoch},
            self.run_dir / "best.pt",
        )

    def _write_log(self) -> None:
        lines = "".join(json.dumps(r) + "\n" for r in self.history)
        atomic_write_bytes(self.run_dir / "metrics.jsonl", lines.encode())

    def _print_epoch(self, record: dict) -> None:
        msg = f"epoch {record['epoch']:3d}  loss {record['train_loss']:.4f}  {record['train_seconds']:.1f}s"
        if "valid" in record:
            m = self.metric
            msg += f"  valid {m} {record['valid'][m]:.4f}  (best {self.best_metric:.4f} @ {self.best_epoch})"
        tqdm.write(msg)

    def finish(self, stopped_early: bool = False) -> dict:
        """Load the best model, evaluate it (:meth:`final_metrics`), write final_metrics.json and the plot."""
        distributed.barrier()
        best = self.load_weights(self.run_dir / "best.pt")
        out = {
            "best_epoch": best["epoch"],
            "epochs_run": self.epoch,
            "stopped_early": stopped_early,
            "train_seconds": sum(r["train_seconds"] for r in self.history),
            **self.final_metrics(),
        }
        if distributed.is_main():
            atomic_write_json(self.run_dir / "final_metrics.json", out)
            for logger in getattr(self, "loggers", []):
                logger.log_final(out)
            plot_learning_curves(
                self.history,
                self.run_dir / "learning_curves.png",
                self.metric,
                title=self.plot_title(),
                best_epoch=best["epoch"],
            )
        distributed.barrier()
        return out
