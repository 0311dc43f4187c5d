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
scores as they are ranked. A window's items count once, however often they occur in it.
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


def window_history_pairs(item_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, items) [K] each: every row's distinct item ids (ids <= 0, padding, skipped), each once.

    item_ids: [B, L] windows; rows index B."""
    first = _first_occurrences(item_ids)  # [B, L]
    rows, columns = first.nonzero(as_tuple=True)
    return rows, item_ids[rows, columns]


def prefix_history_pairs(item_ids: torch.Tensor, scored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, items) [K] each, for next-item training: for every scored position (t, in ``scored``'s
    row-major order, the order of ``hidden[scored]``) the distinct items of ``item_ids[b, : t + 1]``, each
    once. Rows come out in increasing order.

    item_ids: [B, L] inputs (ids <= 0 skipped); scored: [B, L] bool, the positions with a target."""
    B, L = item_ids.shape
    first = _first_occurrences(item_ids)  # [B, L]
    seen_by = torch.ones(L, L, dtype=torch.bool, device=item_ids.device).tril()  # [t, j]: j <= t
    pairs = scored[:, :, None] & seen_by[None] & first[:, None, :]  # [B, t, j]
    b, t, j = pairs.nonzero(as_tuple=True)  # lexicographic: rows non-decreasing
    row_of = torch.cumsum(scored.reshape(-1), 0) - 1  # [B * L]: the row of each scored position
    return row_of[b * L + t], item_ids[b, j]


def _first_occurrences(item_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: a real item (id > 0) at its first position in its row."""
    L = item_ids.shape[1]
    same = item_ids[:, :, None] == item_ids[:, None, :]  # [B, j, k]
    earlier = torch.ones(L, L, dtype=torch.bool, device=item_ids.device).tril(-1)  # [j, k]: k < j
    return (item_ids > 0) & ~(same & earlier).any(-1)
