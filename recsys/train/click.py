"""Click-prediction training (DIN, TWIN, DARE) on the shared loop of :mod:`recsys.train.loop`: BCE on
(history, candidate, label) samples, the best epoch chosen by validation AUC, test AUC / GAUC / log loss
of that epoch. Checkpoints, exact resume, early stopping, the divergence checks and the run's log are
the loop's, as for next-item training."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.ctr import CTRData, CTRSamples, ctr_batch
from ..metrics import auc, gauc, logloss
from ..models.ctr_base import build_ctr_model, click_loss
from .loop import StepChecks, TrainLoop
from .runtime import resolve_device


def click_metrics(samples: CTRSamples, probabilities: np.ndarray) -> dict:
    """AUC, GAUC (per user, impression-weighted) and log loss of click probabilities."""
    return {
        "auc": auc(samples.labels, probabilities),
        "gauc": gauc(samples.users, samples.labels, probabilities),
        "logloss": logloss(samples.labels, probabilities),
    }


def click_batch(ctr: CTRData, samples: CTRSamples, rows: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in ctr_batch(ctr, samples, rows).items()}


class ClickTrainer(TrainLoop):
    """One seed of a click-prediction run. ``cfg`` is a ``recsys.click.ClickRunConfig``; this trainer's
    copy names its own seed (``train.first_seed = seed``, ``train.seeds = 1``)."""

    metric = "auc"

    def __init__(self, cfg, run_dir: str | Path, ctr: CTRData, seed: int, progress: bool = True, verbose=None):
        self.cfg = copy.deepcopy(cfg)
        self.cfg.train.first_seed, self.cfg.train.seeds = seed, 1
        self.seed = seed
        self.run_dir = Path(run_dir)
        self.ctr = ctr
        self.progress = progress
        self.verbose = progress if verbose is None else verbose
        self.device = resolve_device(cfg.train.device)
        torch.manual_seed(seed)
        self.model = build_ctr_model(cfg.model_name, cfg.model, ctr.data.num_items, int(ctr.categories.max()))
        self.model.to(self.device)
        # Adam with an L2 penalty, as DIN and DARE train (AdamW's decoupled decay is another model)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.data_info = {
            "dataset": cfg.data.dataset,
            "samples": {"train": len(ctr.train), "valid": len(ctr.valid), "test": len(ctr.test)},
        }
        self._init_loop()

    def log_header(self) -> str:
        return "".join(f"{line}\n" for line in self.ctr.log)

    def plot_title(self) -> str:
        return f"{self.cfg.model_name} on {self.cfg.data.dataset}, seed {self.seed} ({self.run_dir.name})"

    def train_epoch(self) -> dict:
        self.model.train()
        batch_size = self.cfg.train.batch_size
        # the data order depends only on (seed, epoch): a resumed run sees the same batches
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.ctr.train))
        steps = (len(order) + batch_size - 1) // batch_size
        checks = StepChecks(self, steps)
        start, total = time.perf_counter(), torch.zeros((), device=self.device)
        bar = tqdm(
            range(steps), desc=f"seed {self.seed} epoch {self.epoch + 1}", disable=not self.progress, leave=False
        )
        for step in bar:
            batch = click_batch(
                self.ctr, self.ctr.train, order[step * batch_size : (step + 1) * batch_size], self.device
            )
            logits, _ = self.model(
                batch["history"], batch["history_categories"], batch["target"], batch["target_category"]
            )
            loss = click_loss(logits, batch["label"])
            if self.optimizer_step(loss, step, checks):
                total += loss.detach()
        checks.end()
        return {
            "train_loss": float(total) / max(steps - checks.skipped, 1),
            "train_seconds": time.perf_counter() - start,
            "skipped_steps": checks.skipped,
        }

    @torch.no_grad()
    def predict(self, samples: CTRSamples, batch_size: int = 1024) -> np.ndarray:
        """Click probabilities [S] of the current model."""
        self.model.eval()
        out = []
        for b in range(0, len(samples), batch_size):
            batch = click_batch(self.ctr, samples, np.arange(b, min(b + batch_size, len(samples))), self.device)
            logits, _ = self.model(
                batch["history"], batch["history_categories"], batch["target"], batch["target_category"]
            )
            out.append(torch.sigmoid(logits).float().cpu())
        return torch.cat(out).numpy()

    def validate(self) -> dict:
        return click_metrics(self.ctr.valid, self.predict(self.ctr.valid))

    def final_metrics(self) -> dict:
        return {
            "seed": self.seed,
            "valid": self.validate(),
            "test": click_metrics(self.ctr.test, self.predict(self.ctr.test)),
        }
