"""A learned repeat score: one scalar added to the score of every item already in the history window.

Where the protocol ranks seen items too (Recformer's Scientific protocol keeps them), an encoder whose
item vectors cannot tell a history item from a new one scores the history items highest: a text model's
user vector lies close to the texts it has just read. The targets of those files rarely repeat a history
item, and an ID model learns that in its item table; a text model has no table to learn it in. RepeatNet
(Ren et al., AAAI 2019) gives a model a "repeat" and an "explore" mode; this is the smallest form of that
idea: ``score(u, i) = u . w_i + b [i in window(u)]``, with ``b`` trained by the loss like every other
weight (``b < 0``: the data says repeats are rare; ``b > 0``: they are common, as in music listening).

``b`` is in the units of the ranking score (the dot product, or the cosine for L2-normalised scores): the
loss divides it by its temperature together with the dot products, and the evaluator adds it to the
scores as they are ranked. A window's items count once, however often they occur in it
(:func:`recsys.data.batching.window_history_pairs`, :func:`recsys.data.batching.prefix_history_pairs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class RepeatBiasConfig:
    """The repeat-score setting of an encoder that offers it (SASRec, HSTU and Recformer configs inherit it)."""

    # a learned score offset for the items already in the history window (full CE training only)
    repeat_bias: bool = False


def init_repeat_bias(module: nn.Module, enabled: bool) -> None:
    """Registers ``module.repeat_bias``: a scalar parameter starting at 0 (no effect) when ``enabled``,
    else None (the attribute exists either way)."""
    module.register_parameter("repeat_bias", nn.Parameter(torch.zeros(())) if enabled else None)
