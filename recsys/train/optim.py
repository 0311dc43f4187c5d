"""The optimizer next-item training uses: ``torch.optim.AdamW``, without importing ``torch._dynamo``.

``torch.optim`` wraps ``step``, ``zero_grad``, ``add_param_group``, ``state_dict`` and ``load_state_dict``
in decorators that import ``torch._dynamo`` on first use (for the graph breaks ``torch.compile`` needs);
in an eager CPU run that import is most of a process's resident memory beyond the model and data
(benchmarks/RESULTS.md, "Hand-written parts vs their library", part "optimizer"). This subclass calls
torch's own methods, ``inspect.unwrap``-ed, and ``step`` under ``torch.no_grad()`` (all the step's
wrapper does outside ``torch.compile``): the same arithmetic, state, parameter groups, schedulers and
checkpoints, since the class is torch's. Under ``torch.compile`` each method defers to torch's wrapped one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

_STEP = inspect.unwrap(torch.optim.Adam.step)
_ZERO_GRAD = inspect.unwrap(torch.optim.Optimizer.zero_grad)
_ADD_PARAM_GROUP = inspect.unwrap(torch.optim.Optimizer.add_param_group)
_STATE_DICT = inspect.unwrap(torch.optim.Optimizer.state_dict)
_LOAD_STATE_DICT = inspect.unwrap(torch.optim.Optimizer.load_state_dict)


class AdamW(torch.optim.AdamW):
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        if torch.compiler.is_compiling():
            return super().step(closure)
        with torch.no_grad():
            return _STEP(self, closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if torch.compiler.is_compiling():
            return super().zero_grad(set_to_none)
        return _ZERO_GRAD(self, set_to_none)

    def add_param_group(self, param_group: dict) -> None:
        if torch.compiler.is_compiling():
            return super().add_param_group(param_group)
        return _ADD_PARAM_GROUP(self, param_group)

    def state_dict(self) -> dict:
        return super().state_dict() if torch.compiler.is_compiling() else _STATE_DICT(self)

    def load_state_dict(self, state_dict) -> None:
        if torch.compiler.is_compiling():
            return super().load_state_dict(state_dict)
        return _LOAD_STATE_DICT(self, state_dict)
