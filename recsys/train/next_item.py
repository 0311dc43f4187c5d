"""Next-item training (SASRec, BERT4Rec, HSTU, Recformer and plug-in encoders): the run's data, the
encoder, its loss and the full-ranking evaluation, on the shared loop of :mod:`recsys.train.loop`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed
from ..config import ConfigError, RunConfig, config_from_dict
from ..data.batching import cloze_inputs, iter_train_batches, jagged_take, train_users
from ..data.pipeline import PreparedData, prepare_data
from ..data.readers import DataError, Interactions
from ..data.splits import Split
from ..evaluation import evaluate
from ..files import read_json
from ..losses import Workspace, next_item_loss
from ..losses.reasoning import packed_last_rows, reasoning_loss
from ..models.base import SequentialEncoder, build_model
from .loop import StepChecks, TrainLoop
from .optim import AdamW
from .runtime import (
    resolve_ce_matmul_dtype,
    resolve_device,
    retain_freed_memory,
    warn_if_bf16_emulated,
    warn_if_compile_on_cpu,
)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The data order of an epoch depends only on (seed, epoch): resumable and reproducible."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class Trainer(TrainLoop):
    """Trains one encoder on one run's data: ``fit()`` to the end, ``evaluate()`` any split."""

    #: whether training reads (history, next item) pairs, which a user has from two training events on
    needs_training_pairs = True

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
        if self.needs_training_pairs and self._epoch_size()[0] == 0:  # said before a model is built
            longest = int(self.split.train_lengths.max(initial=0))
            raise DataError(
                f"{self.data.info['dataset']}: no user has two or more training events under data.split = "
                f"{cfg.data.split!r} (the longest training history holds {longest}"
                + (f", for {distributed.world_size()} processes" if distributed.world_size() > 1 else "")
                + "): there is no (history, next item) pair to train on; longer histories are needed"
            )
        if cfg.train.ema_decay > 0 and distributed.is_main():
            # the average remembers about 1 / (1 - decay) steps: ten epochs' worth or more and it mostly
            # holds weights from long before the epoch it is validated at
            steps = self._epoch_size()[1]
            memory = 1 / (1 - cfg.train.ema_decay)
            if memory > 10 * steps:
                print(
                    f"warning: train.ema_decay={cfg.train.ema_decay} averages over about {memory:,.0f} steps, "
                    f"{memory / steps:,.0f} epochs of this data ({steps:,} steps an epoch); about "
                    f"{1 - 1 / (3 * steps):.4g} averages over 3 epochs",
                    file=sys.stderr,
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
            from ..data.cards import load_item_text
            from ..text import item_attributes, item_text_vectors

            text = load_item_text(cfg.data.dataset, cfg.data.data_dir) if cfg.data.dataset != "custom" else None
            if text is None:
                raise ConfigError(
                    f"model {cfg.model_name} reads item text; {cfg.data.dataset} has none (a dataset card's item_text)"
                )
            if self.model.item_text_form == "attributes":  # the model reads the words itself
                words = getattr(cfg.model, "words_per_attribute", 24)
                self.model.set_item_attributes(item_attributes(self.split.data, text, words))
            else:
                self.model.set_item_text(item_text_vectors(self.split.data, text, verbose=progress))
        if self.model.needs_item_attributes:  # brand / category ids from the dataset card
            self.model.set_item_attribute_ids(*self._item_attributes())
        if getattr(cfg.model, "repeat_bias", False):  # the bias lives in the full CE's logits
            if cfg.loss.name != "ce":
                raise ConfigError(f"model.repeat_bias needs loss.name = 'ce' (the full softmax), not {cfg.loss.name!r}")
            if getattr(cfg.model, "reasoning_steps", 0):
                raise ConfigError("model.repeat_bias does not combine with model.reasoning_steps > 0")
            if cfg.eval.sampled_negatives:
                raise ConfigError("model.repeat_bias is ranked against the whole catalogue: eval.sampled_negatives = 0")
        self.model.to(self.device)
        # training forward passes go through torch.compile and / or DDP (gradient all-reduce under
        # torchrun) when asked; self.model stays the plain module (state_dict, evaluation, item vectors)
        self.train_forward = torch.compile(self.model) if cfg.train.compile else self.model
        trainable = any(p.requires_grad for p in self.model.parameters())  # (fitted baselines have nothing to sync)
        if distributed.world_size() > 1 and trainable:
            self.train_forward = torch.nn.parallel.DistributedDataParallel(
                self.train_forward, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        # (a model counted from the data, a fitted baseline, has no parameters and takes no steps)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = (
            AdamW(params, lr=cfg.train.lr, betas=cfg.train.betas, weight_decay=cfg.train.weight_decay)
            if params
            else None
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
        self.metric = cfg.eval.early_stopping_metric
        self.data_info = self.data.info
        self._init_loop()

    def _item_attributes(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        from ..data.cards import load_item_attributes
        from ..data.readers import item_attribute_index

        dataset = self.cfg.data.dataset
        table = load_item_attributes(dataset, self.cfg.data.data_dir) if dataset != "custom" else None
        if table is None:
            raise ConfigError(
                f"model.attribute_embeddings: dataset {dataset!r} has no item attributes (a dataset card's "
                "item_attributes); set it to false"
            )
        ids, offsets, count = item_attribute_index(self.split.data.item_raw_ids, table)
        if self.progress:
            listed = int((offsets[1:] > offsets[:-1]).sum())
            print(f"item attributes: {count:,} attributes, {listed:,} of {len(offsets) - 2:,} items have some")
        return torch.from_numpy(ids), torch.from_numpy(offsets), count

    # -- the loop's hooks
    @property
    def has_validation(self) -> bool:
        return self.split.valid is not None and len(self.split.valid) > 0

    def validate(self) -> dict:
        return self.evaluate("valid")

    def stored_config(self, config: dict) -> dict:
        # a checkpoint from before a setting existed reads as having that setting's default
        return config_from_dict(config).to_dict()

    def log_header(self) -> str:
        info = self.data.info
        return (
            "".join(f"{line}\n" for line in self.split.data.log)
            + f"{info['dataset']}: {info['users']:,} users, {info['items']:,} items, "
            f"{info['interactions']:,} interactions; split {self.cfg.data.split}\n"
        )

    def plot_title(self) -> str:
        return f"{self.cfg.model_name} / {self.cfg.loss.name} on {self.data.info['dataset']} ({self.run_dir.name})"

    # -- one epoch
    def _epoch_size(self) -> tuple[int, int]:
        """This rank's training users and optimizer steps in an epoch."""
        n_users = len(train_users(self.split)) // distributed.world_size()
        return n_users, (n_users + self.cfg.train.batch_size - 1) // self.cfg.train.batch_size

    def train_epoch(self) -> dict:
        cfg = self.cfg
        self.model.train()
        gen = epoch_generator(cfg.train.seed, self.epoch)
        world = distributed.world_size()
        n_users, steps = self._epoch_size()
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
        repeat_bias = getattr(self.model, "repeat_bias", None)
        reasoning = not cloze and getattr(self.model, "reasoning_steps", 0) > 0
        packed_training = (
            not cloze
            and cfg.loss.name == "ce"
            and not cfg.train.compile
            and (self.model.packed_reasoning_available if reasoning else self.model.packed_forward_available)
            and repeat_bias is None  # the bias reads each position's window: the [B, L] layout
        )
        checks = StepChecks(self, steps)
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
                noisy = last_rows = None
                if packed and reasoning:  # ReaRec on the real positions: states [1, T, K + 1, D], targets [1, T]
                    ids = item_ids.to(self.device)
                    hidden, index = self.train_forward(ids, timestamps, next_timestamps, packed=True, reasoning=True)
                    if cfg.model.reasoning_method == "prl" and cfg.model.reasoning_contrastive_weight > 0:
                        noise = cfg.model.reasoning_noise
                        noisy = self.train_forward(
                            ids, timestamps, next_timestamps, packed=True, reasoning=True, noise=noise
                        )[0][None].float()
                    hidden, target_ids = hidden[None], target_ids.reshape(-1)[index][None]
                    last_rows = packed_last_rows(index, *item_ids.shape)
                elif packed:  # the real positions alone: hidden [1, T, D], their targets [1, T]
                    hidden, index = self.train_forward(item_ids.to(self.device), packed=True)
                    hidden, target_ids = hidden[None], target_ids.reshape(-1)[index][None]
                elif reasoning:  # ReaRec: the states of every step [B, L, K + 1, D] (and PRL's noisy view)
                    hidden = self.train_forward(item_ids.to(self.device), timestamps, next_timestamps, reasoning=True)
                    if cfg.model.reasoning_method == "prl" and cfg.model.reasoning_contrastive_weight > 0:
                        noisy = self.train_forward(
                            item_ids.to(self.device),
                            timestamps,
                            next_timestamps,
                            reasoning=True,
                            noise=cfg.model.reasoning_noise,
                        ).float()
                else:
                    hidden = self.train_forward(item_ids.to(self.device), timestamps, next_timestamps)
            items = self.model.item_vectors()
            if self.candidates is not None:  # cold start: held-out items are not even negatives in training
                items, target_ids = items[self.candidates], self.candidate_index[target_ids]
            losses = dict(workspace=self.loss_workspace, item_frequency=self.item_frequency)
            if repeat_bias is not None:
                input_ids = item_ids.to(self.device)
                if self.candidates is not None:  # renumbered as the targets (a held-out item: -1, no logit)
                    input_ids = self.candidate_index[input_ids]
                losses.update(repeat_bias=repeat_bias, input_ids=input_ids)
            if reasoning:
                loss = reasoning_loss(
                    cfg.loss, cfg.model, hidden.float(), target_ids, items, noisy, last_rows, **losses
                )
            else:
                loss = next_item_loss(cfg.loss, hidden.float(), target_ids, items, **losses)
            if not self.optimizer_step(loss, step, checks):
                continue
            total_loss += loss.detach()
            if self.progress and step % 20 == 0:
                bar.set_postfix(loss=f"{total_loss.item() / (step + 1):.4f}")
        seconds = time.perf_counter() - start
        checks.end()
        # loss and target count over all ranks (one reduction per epoch, not per step)
        totals = distributed.all_reduce_sum(
            torch.stack([total_loss.double(), torch.tensor(float(targets), dtype=torch.float64, device=self.device)])
        )
        targets = int(totals[1])
        return {
            "train_loss": float(totals[0]) / max((steps - checks.skipped) * world, 1),
            "train_seconds": seconds,
            "skipped_steps": checks.skipped,
            "train_targets": targets,
            "targets_per_second": targets / seconds,
            "train_sequences": n_users * world,
            "sequences_per_second": n_users * world / seconds,
        }

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

    def final_metrics(self) -> dict:
        """The best model on validation and test (and, with held-out items, their cold / warm parts)."""
        out = {
            "dataset": self.data.info,
            "split": self.cfg.data.split,
            "exclude_seen": self.cfg.eval.exclude_seen,
            "tie_policy": self.cfg.eval.tie_policy,
        }
        if self.has_validation:
            out["valid"] = self.evaluate("valid")
        if not self.test_at_end:  # model selection (recsys tune): the test split is not read
            return out
        out["test"] = self.evaluate("test", progress=self.progress)
        if self.data.cold_items is not None:  # cold-start protocol: targets the training never saw, and the rest
            out["test_cold"] = self.evaluate("test_cold")
            out["test_warm"] = self.evaluate("test_warm")
        out["world_size"] = distributed.world_size()
        return out


def training_item_frequency(split: Split) -> torch.Tensor:
    """[V] float: each item's share of the training events (what in-batch negatives are drawn by); the
    validation and test targets are not counted."""
    data = split.data
    items = jagged_take(data.item_ids, data.seq_offsets[:-1], split.train_lengths)  # every training event
    counts = np.bincount(items, minlength=data.num_items)[: data.num_items].astype(np.float64)
    counts[0] = 0.0
    return torch.from_numpy(counts / max(counts.sum(), 1.0)).float()


def load_run(
    run_dir: str | Path, overrides: list[str] = (), data: Interactions | None = None, data_dir: str | None = None
) -> Trainer:
    """A trainer holding a finished run's best model (for evaluate / score / export).

    ``overrides`` change evaluation settings (e.g. ``eval.exclude_seen=false``); runs trained on an
    in-memory DataFrame need the same ``data`` again."""
    from ..config import apply_overrides

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{run_dir}: no config.json, not a run directory")
    if not (run_dir / "best.pt").exists():  # said before the data is read
        resumable = (run_dir / "last.pt").exists()
        raise DataError(
            f"{run_dir}: no best.pt: the run has not saved a model yet (its first validated epoch has not ended)"
            + ("; `recsys train RECIPE --run-dir ... --resume` continues it" if resumable else "")
        )
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
        from ..data.interactions import load_saved_interactions

        data = load_saved_interactions(run_dir)  # a DataFrame run keeps its table
        if data is None:
            raise DataError(f"{run_dir} was trained on an in-memory DataFrame and keeps no copy: pass the same data")
    prepared = prepare_data(cfg.data, verbose=False, interactions=data)
    from . import make_trainer

    trainer = make_trainer(cfg, run_dir, data=prepared, progress=False)
    trainer.load_weights(run_dir / "best.pt")
    return trainer
