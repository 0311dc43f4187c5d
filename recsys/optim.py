"""AdamW without ``torch.optim``.

Building any ``torch.optim`` optimizer imports ``torch._dynamo`` and ``torch._inductor`` (PyTorch wraps
``step`` so the compiler can trace it), which costs ~145 MB of resident memory in every training process
whether or not anything is compiled: on BERT4Rec's Beauty file that is a sixth of a SASRec run's peak.
This AdamW does the same arithmetic as ``torch.optim.AdamW`` (decoupled weight decay, bias-corrected
moments, ``eps`` added to the corrected second-moment root) with torch's fused AdamW kernel (the one
``torch.optim.AdamW(fused=True)`` calls; ``torch._foreach_*`` ops where it is missing), and reads and
writes the same ``state_dict`` layout, so checkpoints move freely between the two.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch


class AdamW:
    """``torch.optim.AdamW(params, lr, betas, eps, weight_decay)`` for one parameter group (amsgrad off)."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.steps: dict[int, int] = {}  # parameter index -> updates so far (a parameter without grad is skipped)
        self.exp_avg: dict[int, torch.Tensor] = {}
        self.exp_avg_sq: dict[int, torch.Tensor] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        for i in live:
            if i not in self.steps:
                self.steps[i] = 0
                self.exp_avg[i] = torch.zeros_like(self.params[i], memory_format=torch.preserve_format)
                self.exp_avg_sq[i] = torch.zeros_like(self.params[i], memory_format=torch.preserve_format)
            self.steps[i] += 1
        if hasattr(torch, "_fused_adamw_") and all(self.params[i].device.type in ("cpu", "cuda") for i in live):
            self._fused_step(live)
        else:
            self._foreach_step(live)

    def _fused_step(self, live: list[int]) -> None:
        """torch's fused AdamW kernel (``torch.optim.AdamW(fused=True)``): one pass per tensor and no
        temporaries. With foreach ops the item table's moments cost several [V, D] temporaries per step,
        ~3x the time on CPU, and their fresh pages fault every step."""
        by_device: dict[tuple, list[int]] = {}
        for i in live:
            by_device.setdefault((self.params[i].device, self.params[i].dtype), []).append(i)
        beta1, beta2 = self.betas
        for (device, _), group in by_device.items():
            steps = [torch.tensor(float(self.steps[i]), device=device) for i in group]
            torch._fused_adamw_(
                [self.params[i] for i in group],
                [self.params[i].grad for i in group],
                [self.exp_avg[i] for i in group],
                [self.exp_avg_sq[i] for i in group],
                [],
                steps,
                lr=self.lr,
                beta1=beta1,
                beta2=beta2,
                weight_decay=self.weight_decay,
                eps=self.eps,
                amsgrad=False,
                maximize=False,
            )

    def _foreach_step(self, live: list[int]) -> None:
        beta1, beta2 = self.betas
        # parameters that have taken the same number of steps share one bias correction: one foreach group each
        for step in sorted({self.steps[i] for i in live}):
            group = [i for i in live if self.steps[i] == step]
            params = [self.params[i] for i in group]
            grads = [self.params[i].grad for i in group]
            exp_avg = [self.exp_avg[i] for i in group]
            exp_avg_sq = [self.exp_avg_sq[i] for i in group]
            if self.weight_decay:
                torch._foreach_mul_(params, 1 - self.lr * self.weight_decay)
            torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sq, beta2)
            torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
            step_size = self.lr / (1 - beta1**step)
            denom = torch._foreach_sqrt(exp_avg_sq)
            torch._foreach_div_(denom, math.sqrt(1 - beta2**step))
            torch._foreach_add_(denom, self.eps)
            torch._foreach_addcdiv_(params, exp_avg, denom, value=-step_size)

    # -- the layout of torch.optim's state_dict, so checkpoints written by either load in the other
    def state_dict(self) -> dict:
        state = {
            i: {
                "step": torch.tensor(float(self.steps[i])),
                "exp_avg": self.exp_avg[i],
                "exp_avg_sq": self.exp_avg_sq[i],
            }
            for i in self.steps
        }
        group = {
            "lr": self.lr,
            "betas": self.betas,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "amsgrad": False,
            "maximize": False,
            "params": list(range(len(self.params))),
        }
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError(
                f"optimizer state has {[len(g['params']) for g in groups]} parameters per group; "
                f"this optimizer has one group of {len(self.params)}"
            )
        if groups[0].get("amsgrad"):
            raise ValueError("optimizer state was written with amsgrad, which this AdamW does not implement")
        group = groups[0]
        self.lr, self.betas, self.eps, self.weight_decay = (
            group["lr"],
            tuple(group["betas"]),
            group["eps"],
            group["weight_decay"],
        )
        self.steps, self.exp_avg, self.exp_avg_sq = {}, {}, {}
        for key, entry in state_dict["state"].items():
            i = int(key)
            p = self.params[i]
            if entry["exp_avg"].shape != p.shape:
                raise ValueError(
                    f"optimizer state for parameter {i} has shape {tuple(entry['exp_avg'].shape)}, "
                    f"the parameter {tuple(p.shape)}"
                )
            self.steps[i] = int(float(entry["step"]))
            self.exp_avg[i] = entry["exp_avg"].to(device=p.device, dtype=p.dtype).clone()
            self.exp_avg_sq[i] = entry["exp_avg_sq"].to(device=p.device, dtype=p.dtype).clone()
