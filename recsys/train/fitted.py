"""Baselines counted from the training events (popularity, item co-occurrence, random): no gradient
steps; an "epoch" counts, the loop validates, checkpoints and tests as for any model."""

from __future__ import annotations

import time

from .next_item import Trainer


class FittedTrainer(Trainer):
    """:class:`recsys.train.next_item.Trainer` for a ``fitted`` model: each epoch calls
    ``model.fit_counts(split)`` (the same result every time; recipes run one epoch)."""

    needs_training_pairs = False  # counts of training events: one a user is enough

    def train_epoch(self) -> dict:
        start = time.perf_counter()
        self.model.fit_counts(self.split)
        return {"train_loss": 0.0, "train_seconds": time.perf_counter() - start, "skipped_steps": 0}
