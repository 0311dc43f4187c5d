"""Two-stage fine-tuning of a text model that reads item words itself (the token-level Recformer), on the
next-item trainer's data, evaluation, checkpoints and resume.

Each epoch trains one random prefix of every user (rng from (seed, epoch)): the history before a random
training event and that event as the target, scored by the model's own loss (a softmax over its item
table). Stage 1 (``model.stage1_epochs`` epochs) re-encodes the whole catalogue with the current encoder
at the start of every epoch and again before validating; stage 2 starts from the best stage-1 model and
keeps its item table frozen. Early stopping (``train.patience``) acts in stage 2 only: the best stage-1
model is chosen by validation whatever the patience.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed
from ..data.batching import padded_windows
from .loop import StepChecks
from .next_item import Trainer


class TwoStageTextTrainer(Trainer):
    """:class:`recsys.train.next_item.Trainer` with the two-stage epochs of a ``two_stage_text`` model."""

    @property
    def stage(self) -> int:
        """The stage of the epoch about to run (or, after it, that ran): 1 or 2."""
        return 1 if self.epoch < self.cfg.model.stage1_epochs else 2

    def _at_stage_two_start(self) -> None:
        """The best stage-1 model (its item table with it), the table then frozen for the rest."""
        best = self.run_dir / "best.pt"
        if best.exists():
            self.load_weights(best)
        else:  # no validation split: the last stage-1 encoder's items
            self.model.refresh_item_table()
        if self.ema is not None:  # the moving average starts again from the model stage 2 starts from
            self.ema.n_averaged.zero_()
        self.bad_epochs = 0
        if self.verbose and distributed.is_main():
            tqdm.write(f"stage 2 from epoch {self.epoch + 1}: the item table of the best stage-1 model, frozen")

    def train_epoch(self) -> dict:
        cfg, model, split = self.cfg, self.model, self.split
        if self.stage == 1:
            if not getattr(self, "_table_current", False):  # (validation may have encoded them already)
                model.refresh_item_table()  # the items as the encoder now sees them, fixed during the epoch
        elif self.epoch == cfg.model.stage1_epochs:
            self._at_stage_two_start()
        data = split.data
        users = np.flatnonzero(split.train_lengths >= 2)
        rng = np.random.default_rng([cfg.train.seed, self.epoch])
        order = rng.permutation(users)
        # a random target inside each user's training events (>= 1: the history is never empty)
        cuts = 1 + (rng.random(len(order)) * (split.train_lengths[order] - 1)).astype(np.int64)
        starts = data.seq_offsets[order]
        batch_size = cfg.train.batch_size
        steps = math.ceil(len(order) / batch_size)
        if cfg.model.steps_per_epoch:
            steps = min(steps, cfg.model.steps_per_epoch)
        model.train()
        self._table_current = False  # the encoder changes from here on
        checks = StepChecks(self, steps)
        total, start = torch.zeros((), device=self.device), time.perf_counter()
        bar = tqdm(
            range(steps), desc=f"stage {self.stage} epoch {self.epoch + 1}", disable=not self.progress, leave=False
        )
        for step in bar:
            rows = slice(step * batch_size, (step + 1) * batch_size)
            windows = padded_windows(data.item_ids, starts[rows], starts[rows] + cuts[rows], cfg.model.max_items)
            targets = np.asarray(data.item_ids)[starts[rows] + cuts[rows]]
            loss = model.loss(torch.from_numpy(windows).to(self.device), torch.from_numpy(targets).to(self.device))
            if self.optimizer_step(loss, step, checks):
                total += loss.detach()
        checks.end()
        seconds = time.perf_counter() - start
        sequences = min(len(order), steps * batch_size)
        return {
            "stage": self.stage,
            "train_loss": float(total) / max(steps - checks.skipped, 1),
            "train_seconds": seconds,
            "skipped_steps": checks.skipped,
            "train_sequences": sequences,
            "sequences_per_second": sequences / seconds,
        }

    def validate(self) -> dict:
        if self.epoch <= self.cfg.model.stage1_epochs:  # the epoch just trained was stage 1
            self.model.refresh_item_table()
            # the table validation encoded serves the next epoch unless it came from averaged weights
            self._table_current = self.ema is None
        return self.evaluate("valid")

    def early_stop(self) -> bool:
        return self.epoch > self.cfg.model.stage1_epochs and super().early_stop()
