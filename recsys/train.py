"""Training loop: AdamW, seeded and resumable, early stopping on validation, atomic checkpoints.

A run directory holds:
- ``config.json``     the resolved configuration
- ``metrics.jsonl``   one line per epoch (train loss, validation metrics, timings)
- ``last.pt``         everything needed to resume (model, optimizer, RNG state, early-stopping state)
- ``best.pt``         the best model by the validation metric (state_dict + config)
- ``final_metrics.json`` and ``learning_curves.png`` at the end.

Every file is written to a temporary name and renamed, so a killed run never leaves a half-written
checkpoint under a real name; checkpoints are read with ``torch.load(weights_only=True)``.
Resuming replays from the last completed epoch with the same data order, dropout and negative
samples, so a resumed run ends with exactly the metrics of an uninterrupted one.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed
from .config import ConfigError, RunConfig, config_from_dict
from .data.batching import cloze_inputs, iter_train_batches, jagged_take, train_users
from .data.pipeline import PreparedData, prepare_data
from .data.readers import DataError, Interactions
from .data.splits import Split
from .errors import RecsysError
from .evaluation import evaluate
from .files import (
    RunLock,
    RunLog,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    load_checkpoint,
    read_json,
)
from .losses import Workspace, next_item_loss
from .models.base import SequentialEncoder, build_model


class TrainingDivergedError(RecsysError, RuntimeError):
    """A training step produced a NaN or infinite loss or gradient."""


# ----------------------------------------------------------------------------- files


def peak_memory_mb() -> float:
    """Peak resident memory of this process (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def retain_freed_memory() -> bool:
    """Ask glibc to keep freed blocks of up to 32 MB for reuse instead of handing them back to the OS.

    Every CPU training step allocates and frees [items, D] tensors (the item table's gradients). By
    default glibc can hand such blocks back and map them fresh, so each reuse costs a page fault per
    4 KiB (thousands of faults per step on Beauty, counted with ru_minflt). Kept in the heap they are
    reused without faults, and peak memory stayed the same. Returns whether the settings were applied: not on other C libraries, nor when the user set
    MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ (theirs win).
    """
    if sys.platform != "linux" or any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers
        return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)) and bool(libc.mallopt(m_trim_threshold, 2**30))
    except (OSError, AttributeError):  # musl and others: no glibc mallopt
        return False


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 products run on bf16 hardware here (tensor cores; AVX512-BF16 / AMX through
    oneDNN on CPU) rather than being emulated with fp32 arithmetic."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def resolve_ce_matmul_dtype(cfg: RunConfig, device: torch.device) -> bool:
    """``loss.ce_matmul_dtype = "auto"`` becomes "bfloat16" where bf16 products run on bf16 units and
    "float32" elsewhere, in ``cfg`` itself (the run's saved config says what ran): on a CPU without bf16
    units bf16 products are emulated, many times slower than fp32. Returns whether it changed anything."""
    if cfg.loss.ce_matmul_dtype != "auto":
        return False
    cfg.loss.ce_matmul_dtype = "bfloat16" if native_bf16(device) else "float32"
    if distributed.is_main() and cfg.loss.name == "ce":
        why = "bf16 units" if cfg.loss.ce_matmul_dtype == "bfloat16" else "no bf16 units"
        print(f"loss.ce_matmul_dtype=auto: {cfg.loss.ce_matmul_dtype} ({device.type} with {why})", file=sys.stderr)
    return True


def warn_if_bf16_emulated(cfg: RunConfig, device: torch.device) -> bool:
    """Print a warning (main process only) when the run asks for bf16 products (``loss.ce_matmul_dtype``,
    ``train.precision``) on a device without bf16 units: they are emulated there, so the speed they are
    chosen for does not come. Returns whether it warned."""
    asked = []
    if cfg.loss.name == "ce" and cfg.loss.ce_matmul_dtype == "bfloat16":
        asked.append("loss.ce_matmul_dtype=bfloat16")
    if cfg.train.precision == "bf16":
        asked.append("train.precision=bf16")
    if not asked or native_bf16(device) or not distributed.is_main():
        return False
    print(
        f"warning: {' and '.join(asked)} asked for, but this {device.type} has no bf16 units: bf16 products "
        f"are emulated here, many times slower than fp32 for the full CE (--set loss.ce_matmul_dtype=auto or float32 / "
        f"train.precision=fp32)",
        file=sys.stderr,
    )
    return True


def training_item_frequency(split: Split) -> torch.Tensor:
    """[V] float: each item's share of the training events (what in-batch negatives are drawn by); the
    validation and test targets are not counted."""
    data = split.data
    items = jagged_take(data.item_ids, data.seq_offsets[:-1], split.train_lengths)  # every training event
    counts = np.bincount(items, minlength=data.num_items)[: data.num_items].astype(np.float64)
    counts[0] = 0.0
    return torch.from_numpy(counts / max(counts.sum(), 1.0)).float()


def warn_if_compile_on_cpu(cfg: RunConfig, device: torch.device) -> bool:
    """Print a warning (main process only) when ``train.compile`` is asked for on CPU, and return whether
    it warned. The encoders' CPU paths (oneDNN products, chunked attention, 16-bit dropout masks,
    packing on the real positions) are eager code with data-dependent shapes: torch.compile splits
    SASRec's training forward into 26 graphs there (25 breaks, ``torch._dynamo.explain``) and the ops
    stay the same ones, so losses came out identical while epochs got slower. It is meant for CUDA."""
    if not cfg.train.compile or device.type != "cpu" or not distributed.is_main():
        return False
    print(
        "warning: train.compile=true on CPU: the encoders' CPU paths are already fused eager code that "
        "torch.compile breaks into many small graphs; it costs compile time and made epochs slower here, "
        "with the same losses (--set train.compile=false; it is meant for CUDA)",
        file=sys.stderr,
    )
    return True


# ----------------------------------------------------------------------------- training


# how a run executes or when it stops, not what each epoch computes: these may change on --resume
# (more threads, another device, a longer or shorter schedule)
RUNTIME_KEYS = ("num_threads", "device", "compile", "epochs", "patience")


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but no CUDA device is available")
    return torch.device(name)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The data order of an epoch depends only on (seed, epoch): resumable and reproducible."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class Trainer:
    def __init__(
        self,
        cfg: RunConfig,
        run_dir: str | Path,
        data: PreparedData | None = None,
        progress: bool = True,
        verbose: bool | None = None,
    ):
        """progress: progress bars; verbose (default: as progress): a line per epoch."""
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.verbose = progress if verbose is None else verbose
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        self.data = data or prepare_data(cfg.data, verbose=progress)
        self.split = self.data.split
        self.device = resolve_device(cfg.train.device)
        if self.device.type == "cpu":
            retain_freed_memory()
        resolve_ce_matmul_dtype(cfg, self.device)
        warn_if_bf16_emulated(cfg, self.device)
        warn_if_compile_on_cpu(cfg, self.device)
        if getattr(cfg.model, "use_time_bias", False) and not self.split.data.has_timestamps and distributed.is_main():
            print(
                f"warning: model.use_time_bias with {cfg.data.dataset}, which has no timestamps: the times are "
                "positions in file order (--set model.use_time_bias=false)",
                file=sys.stderr,
            )
        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        if cfg.eval.sampled_negatives > self.split.data.num_items - 2:  # said before any training
            raise ConfigError(
                f"eval.sampled_negatives={cfg.eval.sampled_negatives}: the catalogue has "
                f"{self.split.data.num_items - 1} items, one of them the target"
            )
        try:
            self.model: SequentialEncoder = build_model(cfg.model_name, cfg.model, self.split.data.num_items)
        except ValueError as err:  # a combination of model settings the encoder refuses (e.g. heads vs width)
            raise ConfigError(f"model ({cfg.model_name}): {err}") from None
        except RuntimeError as err:  # e.g. tables larger than this machine's memory
            if "allocate" not in str(err):
                raise
            raise ConfigError(
                f"model ({cfg.model_name}) does not fit in memory here: {str(err).strip().splitlines()[0][:200]}"
            ) from None
        if self.model.needs_item_text:  # text-based items: the catalogue's text vectors
            from .data.cards import load_item_text
            from .text import item_text_vectors

            text = load_item_text(cfg.data.dataset, cfg.data.data_dir) if cfg.data.dataset != "custom" else None
            self.model.set_item_text(item_text_vectors(self.split.data, text, verbose=progress))
        self.model.to(self.device)
        # training forward passes go through torch.compile and / or DDP (gradient all-reduce under
        # torchrun) when asked; self.model stays the plain module (state_dict, evaluation, item vectors)
        self.train_forward = torch.compile(self.model) if cfg.train.compile else self.model
        if distributed.world_size() > 1:
            self.train_forward = torch.nn.parallel.DistributedDataParallel(
                self.train_forward, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.train.lr, betas=cfg.train.betas, weight_decay=cfg.train.weight_decay
        )
        # with held-out (cold-start) items, training scores only the other items: a held-out item is
        # unknown at training time, so it may not even serve as a negative (its embedding stays untrained)
        self.candidates = self.candidate_index = None
        if self.data.cold_items is not None:
            keep = np.ones(self.split.data.num_items, dtype=bool)
            keep[self.data.cold_items] = False
            self.candidates = torch.from_numpy(np.flatnonzero(keep)).to(self.device)  # [V'] (0 = padding first)
            self.candidate_index = torch.full((len(keep),), -1, dtype=torch.long, device=self.device)
            self.candidate_index[self.candidates] = torch.arange(len(self.candidates), device=self.device)
        self.loss_workspace = Workspace()  # the full CE's large buffers, reused every step
        self.item_frequency = None  # [V] each item's share of the training events (the logQ correction)
        if cfg.loss.logq_correction:
            frequency = training_item_frequency(self.split)
            if self.candidates is not None:  # training scores the warm items only, renumbered
                frequency = frequency[self.candidates.cpu()]
            self.item_frequency = frequency.to(self.device)
        self.history: list[dict] = []
        self.epoch = 0
        self.best_metric = -math.inf
        self.best_epoch = 0
        self.bad_epochs = 0

    # -- state
    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "rng": torch.get_rng_state(),
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "config": self.cfg.to_dict(),
        }

    def _restore(self, state: dict) -> None:
        # a checkpoint from before a setting existed reads as having that setting's default
        stored = config_from_dict(state["config"]).to_dict()
        changed = config_changes(_without_runtime(stored), _without_runtime(self.cfg.to_dict()))
        if changed:
            raise ConfigError(
                f"{self.run_dir}: the checkpoint was written with another configuration: "
                + "; ".join(changed)
                + ". Resume with the same recipe and overrides"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = state["epoch"]
        torch.set_rng_state(state["rng"])
        self.best_metric = state["best_metric"]
        self.best_epoch = state["best_epoch"]
        self.bad_epochs = state["bad_epochs"]
        self.history = state["history"]

    # -- one epoch
    def train_epoch(self) -> dict:
        cfg = self.cfg
        self.model.train()
        gen = epoch_generator(cfg.train.seed, self.epoch)
        world = distributed.world_size()
        n_users = len(train_users(self.split)) // world
        steps = (n_users + cfg.train.batch_size - 1) // cfg.train.batch_size
        total_loss = torch.zeros((), device=self.device)
        targets = 0
        start = time.perf_counter()
        bar = tqdm(
            iter_train_batches(
                self.split, cfg.max_seq_len, cfg.train.batch_size, gen, rank=distributed.rank(), world_size=world
            ),
            total=steps,
            desc=f"epoch {self.epoch + 1}",
            disable=not self.progress,
            leave=False,
        )
        cloze = self.model.objective == "cloze"
        # full CE scores the positions with a target and nothing else: an encoder that can compute the real
        # positions alone (SASRec) skips the padding (a batch where a padding input has a target does not)
        packed_training = (
            not cloze and cfg.loss.name == "ce" and not cfg.train.compile and self.model.packed_forward_available
        )
        skipped = 0  # steps with a non-finite loss or gradient (train.nonfinite = "skip")
        # on CPU the check costs nothing; on an accelerator a per-step check would wait for the device, so a
        # run that stops on divergence finds its first bad step at the epoch's end (skipping needs each step)
        check_each_step = self.device.type == "cpu" or cfg.train.nonfinite == "skip"
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        for step, batch in enumerate(bar):
            if cloze:  # masked-item training (BERT4Rec): inputs with [mask] tokens, targets at the masks
                item_ids, target_ids = cloze_inputs(
                    batch.window_ids, cfg.max_seq_len, self.model.mask_token, cfg.model.mask_prob, gen
                )
                timestamps = next_timestamps = None
            else:  # next-item training: every position predicts the following item
                item_ids, target_ids = batch.item_ids, batch.target_ids
                timestamps = batch.timestamps.to(self.device)
                next_timestamps = batch.target_timestamps.to(self.device)
            targets += int(target_ids.count_nonzero())  # counted on the CPU copy: no device sync
            packed = packed_training and not bool(((target_ids > 0) & (item_ids == 0)).any())  # (CPU copies)
            target_ids = target_ids.to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16"):
                if packed:  # the real positions alone: hidden [1, T, D], their targets [1, T]
                    hidden, index = self.train_forward(item_ids.to(self.device), packed=True)
                    hidden, target_ids = hidden[None], target_ids.reshape(-1)[index][None]
                else:
                    hidden = self.train_forward(item_ids.to(self.device), timestamps, next_timestamps)
            items = self.model.item_vectors()
            if self.candidates is not None:  # cold start: held-out items are not even negatives in training
                items, target_ids = items[self.candidates], self.candidate_index[target_ids]
            loss = next_item_loss(
                cfg.loss,
                hidden.float(),
                target_ids,
                items,
                workspace=self.loss_workspace,
                item_frequency=self.item_frequency,
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # the gradients' norm (clipped to max_grad_norm where set): NaN or infinite as soon as any gradient
            # or the loss is; computed after DDP's all-reduce, so every rank decides alike
            if cfg.train.max_grad_norm > 0:
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.max_grad_norm)
            else:
                norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
            if check_each_step:
                if not bool(torch.isfinite(norm)):
                    self._diverged(loss.detach(), norm, step, steps)  # raises unless train.nonfinite = "skip"
                    self.optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    continue
            else:  # the first non-finite step, kept on the device: read once, at the epoch's end
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(norm), step, first_bad)
            self.optimizer.step()
            total_loss += loss.detach()
            if self.progress and step % 20 == 0:
                bar.set_postfix(loss=f"{total_loss.item() / (step + 1):.4f}")
        seconds = time.perf_counter() - start
        if not check_each_step and int(first_bad) >= 0:
            self._diverged(None, None, int(first_bad), steps)
        # loss and target count over all ranks (one reduction per epoch, not per step)
        totals = distributed.all_reduce_sum(
            torch.stack([total_loss.double(), torch.tensor(float(targets), dtype=torch.float64, device=self.device)])
        )
        targets = int(totals[1])
        if skipped >= steps:
            raise TrainingDivergedError(
                f"run {self.run_dir}: every step of epoch {self.epoch + 1} had a non-finite "
                "loss or gradient (train.nonfinite=skip); lower train.lr or set "
                "train.max_grad_norm"
            )
        if skipped:
            print(
                f"epoch {self.epoch + 1}: {skipped} of {steps} steps skipped (non-finite loss or gradient)",
                file=sys.stderr,
            )
        return {
            "train_loss": float(totals[0]) / max((steps - skipped) * world, 1),
            "train_seconds": seconds,
            "skipped_steps": skipped,
            "train_targets": targets,
            "targets_per_second": targets / seconds,
            "train_sequences": n_users * world,
            "sequences_per_second": n_users * world / seconds,
        }

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

    def evaluate(self, which: str = "valid", progress: bool = False, return_ranks: bool = False) -> dict:
        """which: valid, test, or (with held-out items) test_cold / test_warm."""
        if which not in ("valid", "test", "test_cold", "test_warm"):
            raise ConfigError(f"no split {which!r} to evaluate: valid, test, test_cold or test_warm")
        if which in ("test_cold", "test_warm"):
            if self.data.cold_items is None:
                raise ConfigError(f"{which} needs items held out of training (data.cold_item_fraction > 0)")
            eval_set = self.data.test_subset(cold=which == "test_cold")
        elif which == "valid" and self.split.valid is None:
            raise ConfigError(f"split {self.cfg.data.split!r} has no validation set")
        else:
            eval_set = self.split.valid if which == "valid" else self.split.test
        if len(eval_set) == 0:
            return {"num_users": 0}
        return evaluate(
            self.model,
            self.split,
            eval_set,
            self.cfg.max_seq_len,
            self.cfg.eval,
            normalize=self.cfg.loss.l2_normalize,
            device=self.device,
            progress=progress,
            return_ranks=return_ranks,
            label=f"run {self.run_dir}, {which} split",
        )

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
                info = self.data.info
                log.write(
                    "".join(f"{line}\n" for line in self.split.data.log)
                    + f"{info['dataset']}: {info['users']:,} users, {info['items']:,} items, "
                    f"{info['interactions']:,} interactions; split {self.cfg.data.split}\n"
                )
            try:
                return self._fit(resume)
            except Exception as err:
                log.write(f"error: {type(err).__name__}: {err}\n")
                raise

    def _fit(self, resume: bool) -> dict:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        last = self.run_dir / "last.pt"
        if (last.exists() or (self.run_dir / "final_metrics.json").exists()) and not resume:
            raise FileExistsError(f"{self.run_dir} already holds a run; use --resume or another --run-dir")
        if resume and last.exists():
            self._restore(load_checkpoint(last))
            if self.progress:
                print(f"resumed {self.run_dir} after epoch {self.epoch}")
        main = distributed.is_main()
        if main:
            atomic_write_json(self.run_dir / "config.json", cfg.to_dict())
            atomic_write_json(self.run_dir / "env.json", run_environment(cfg, self.data.info, self.device))
        metric = cfg.eval.early_stopping_metric
        has_valid = self.split.valid is not None and len(self.split.valid) > 0
        stopped_early = False
        while self.epoch < cfg.train.epochs:
            if has_valid and cfg.train.patience and self.bad_epochs >= cfg.train.patience:
                stopped_early = True
                break
            record = {"epoch": self.epoch + 1, **self.train_epoch()}
            self.epoch += 1
            if has_valid and (self.epoch % cfg.train.eval_every == 0 or self.epoch == cfg.train.epochs):
                valid = self.evaluate("valid")
                record["valid"] = {k: v for k, v in valid.items() if k != "num_users"}
                if not math.isfinite(valid[metric]):  # never "best"; the evaluator refuses NaN scores already
                    raise TrainingDivergedError(
                        f"run {self.run_dir}: validation {metric} is {valid[metric]} after epoch {self.epoch}"
                    )
                if valid[metric] > self.best_metric:
                    self.best_metric, self.best_epoch, self.bad_epochs = valid[metric], self.epoch, 0
                    self._save_best()
                else:
                    self.bad_epochs += cfg.train.eval_every
            elif not has_valid:  # HSTU mode: no model selection, the last epoch is the model
                self.best_epoch = self.epoch
                self._save_best()
            self.history.append(record)
            if main:
                self._write_log()
                atomic_torch_save(self._state(), last)
                self._print_epoch(record, metric)  # to train.log; to the terminal unless muted
            distributed.barrier()  # every rank sees this epoch's files before going on
        if has_valid and cfg.train.patience and self.bad_epochs >= cfg.train.patience:
            stopped_early = True
        return self.finish(stopped_early)

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

    def _print_epoch(self, record: dict, metric: str) -> None:
        msg = f"epoch {record['epoch']:3d}  loss {record['train_loss']:.4f}  {record['train_seconds']:.1f}s"
        if "valid" in record:
            msg += f"  valid {metric} {record['valid'][metric]:.4f}  (best {self.best_metric:.4f} @ {self.best_epoch})"
        tqdm.write(msg)

    def finish(self, stopped_early: bool = False) -> dict:
        """Load the best model, evaluate validation and test, write final_metrics.json and the plot."""
        distributed.barrier()
        best = load_checkpoint(self.run_dir / "best.pt")
        self.model.load_state_dict(best["model"])
        out = {
            "best_epoch": best["epoch"],
            "epochs_run": self.epoch,
            "stopped_early": stopped_early,
            "dataset": self.data.info,
            "split": self.cfg.data.split,
            "exclude_seen": self.cfg.eval.exclude_seen,
            "tie_policy": self.cfg.eval.tie_policy,
            "train_seconds": sum(r["train_seconds"] for r in self.history),
        }
        if self.split.valid is not None and len(self.split.valid):
            out["valid"] = self.evaluate("valid")
        out["test"] = self.evaluate("test", progress=self.progress)
        if self.data.cold_items is not None:  # cold-start protocol: targets the training never saw, and the rest
            out["test_cold"] = self.evaluate("test_cold")
            out["test_warm"] = self.evaluate("test_warm")
        out["world_size"] = distributed.world_size()
        if distributed.is_main():
            atomic_write_json(self.run_dir / "final_metrics.json", out)
            plot_learning_curves(
                self.history,
                self.run_dir / "learning_curves.png",
                self.cfg.eval.early_stopping_metric,
                title=f"{self.cfg.model_name} / {self.cfg.loss.name} on {self.data.info['dataset']} ({self.run_dir.name})",
                best_epoch=best["epoch"],
            )
        distributed.barrier()
        return out


def run_environment(cfg: RunConfig, data_info: dict, device: torch.device) -> dict:
    """What a run ran on: recsys version and commit, torch / Python / OS / CPU / GPU, threads, the data's
    checksum and counts, and the resolved configuration (``env.json``)."""
    import platform
    from importlib import metadata

    from .results import git_commit, machine

    try:
        version = metadata.version("recsys")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "recsys": {"version": version, "commit": git_commit()},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "os": platform.platform(),
        "machine": machine(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "data": data_info,
        "config": cfg.to_dict(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "argv": sys.argv,
    }


def plot_learning_curves(
    history: list[dict], path: Path, metric: str, title: str = "", best_epoch: int | None = None
) -> bool:
    """The run's training loss and validation metric per epoch as a PNG (integer epochs, the best epoch
    marked). Needs matplotlib (``pip install recsys[plot]``); without it, says so and writes nothing.
    Returns whether it wrote the file."""
    if not history:
        return False
    try:
        import matplotlib
    except ImportError:
        print(f"note: no {path.name}: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax1 = plt.subplots(figsize=(6.4, 3.8))
    epochs = [r["epoch"] for r in history]
    ax1.plot(epochs, [r["train_loss"] for r in history], color="tab:blue", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss", color="tab:blue")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    valid = [(r["epoch"], r["valid"][metric]) for r in history if "valid" in r]
    if valid:
        ax2 = ax1.twinx()
        ax2.plot(*zip(*valid), color="tab:orange", marker=".", label=f"valid {metric}")
        ax2.set_ylabel(f"valid {metric}", color="tab:orange")
        best = dict(valid).get(best_epoch)
        if best is not None:
            ax2.axvline(best_epoch, color="grey", linestyle=":", linewidth=1)
            ax2.plot([best_epoch], [best], marker="*", markersize=12, color="tab:red", linestyle="none")
            ax2.annotate(
                f"best: epoch {best_epoch}, {best:.4f}",
                (best_epoch, best),
                textcoords="offset points",
                xytext=(-4, -14),
                ha="right",
                fontsize=8,
            )
    if title:
        ax1.set_title(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def load_run(
    run_dir: str | Path, overrides: list[str] = (), data: Interactions | None = None, data_dir: str | None = None
) -> Trainer:
    """A trainer holding a finished run's best model (for evaluate / score / export).

    ``overrides`` change evaluation settings (e.g. ``eval.exclude_seen=false``); runs trained on an
    in-memory DataFrame need the same ``data`` again."""
    from .config import apply_overrides

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{run_dir}: no config.json, not a run directory")
    for override in overrides:  # the run's model and data are what its checkpoint was trained with
        key = override.split("=", 1)[0].strip()
        if not (key.startswith("eval.") or key in ("train.num_threads", "train.device")):
            raise ConfigError(
                f"--set {key}: a finished run's model and data are fixed; only eval.* settings, "
                "train.num_threads and train.device can be changed"
            )
    cfg = config_from_dict(apply_overrides(read_json(cfg_path, "run configuration"), list(overrides)))
    if data_dir:
        cfg.data.data_dir = data_dir
    if data is None and cfg.data.dataset == "custom" and not cfg.data.path:
        raise DataError(f"{run_dir} was trained on an in-memory DataFrame: pass the same data again")
    prepared = prepare_data(cfg.data, verbose=False, interactions=data)
    trainer = Trainer(cfg, run_dir, data=prepared, progress=False)
    trainer.model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
    return trainer
