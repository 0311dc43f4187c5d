"""The encoder interface every sequential model implements, and the registry recipes pick from.

An encoder maps left-padded item ids (and their timestamps) to one hidden state per position::

    hidden = encoder(item_ids, timestamps, next_timestamps)  # [B, L] -> [B, L, D]

and exposes the item vectors its scores are computed against (``item_vectors()`` -> [V, D], row 0 =
padding). Scores are ``hidden @ item_vectors().T``; losses and the evaluator live outside the models,
so any loss works with any encoder. A user's representation is the hidden state at the last position.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from typing import Any, Callable

import torch
from torch import nn


class SequentialEncoder(nn.Module):
    """Base class: subclasses set ``item_embedding`` and implement ``forward``."""

    item_embedding: nn.Embedding
    #: True when position t only sees positions <= t (next-item training on every position)
    causal: bool = True
    #: "next_item" (predict the following item at every position), "cloze" (predict masked items) or
    #: "two_stage_text" (a text model fine-tuned in two stages: recsys.train.text) or "fitted" (counted
    #: from the training events by ``fit_counts(split)``, no gradient steps: recsys.train.fitted)
    objective: str = "next_item"
    #: True when ``forward(..., last_only=True)`` gives [B, 1, D], the last position alone (cheaper)
    last_only_forward: bool = False
    #: True when ``forward(item_ids, packed=True)`` gives (hidden [T, D], index [T]): the T real (non-padding)
    #: positions alone and their flat indices into [B * L] (next-item training with full CE uses it)
    packed_forward_available: bool = False
    #: True when a model with reasoning steps gives, for ``forward(item_ids, timestamps, next_timestamps,
    #: packed=True, reasoning=True)``, (states [T, K + 1, D], index [T]) of the real positions alone
    packed_reasoning_available: bool = False
    #: the id that replaces masked inputs (objective "cloze"); None for next-item models
    mask_token: int | None = None
    #: True when the model reads the catalogue's item text: the trainer hands it over first, as
    #: ``item_text_form`` says: "vectors" -> ``set_item_text([V, T] MiniLM vectors)``, "attributes" ->
    #: ``set_item_attributes([(key, value), ...] per item)`` (a model that reads the words itself)
    needs_item_text: bool = False
    item_text_form: str = "vectors"
    #: True when the model reads the catalogue's item attributes (the card's ``item_attributes``): the
    #: trainer hands them over first, ``set_item_attribute_ids(ids [nnz], offsets [V + 1], count)``
    needs_item_attributes: bool = False

    # forward(item_ids [B, L] (0 = left padding), timestamps [B, L] | None,
    #         next_timestamps [B, L] | None (time of the item to predict)) -> hidden [B, L, D]

    def fused_inference(self) -> bool:
        """True when :meth:`user_vectors` runs through a fused kernel now (eval mode, no gradients; CPU
        SASRec / BERT4Rec): it keeps no per-position intermediates, so callers need not slice batches."""
        return False

    def item_vectors(self) -> torch.Tensor:
        """[V, D] vectors that hidden states are scored against (row 0 is padding)."""
        return self.item_embedding.weight

    def user_vectors(
        self,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        next_timestamps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, D]: the hidden state at the last (most recent) position of each history. ``next_timestamps``
        [B] is the time of the item to predict (each position's next timestamp is the following one's)."""
        next_ts = None
        if next_timestamps is not None and timestamps is not None:
            next_ts = torch.cat([timestamps[:, 1:], next_timestamps[:, None]], dim=1)
        if self.last_only_forward:  # the last block computes the last position alone
            return self(item_ids, timestamps, next_ts, last_only=True)[:, -1]
        return self(item_ids, timestamps, next_ts)[:, -1]


def padding_and_positions(item_ids: torch.Tensor, max_seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(not_pad [B, L, 1] bool, positions [B, L]) for left-padded ids: positions count back from the most
    recent item (L, ..., 1), padding gets 0. Refuses windows longer than the position table."""
    B, L = item_ids.shape
    if L > max_seq_len:
        raise ValueError(f"sequence length {L} exceeds max_seq_len {max_seq_len}")
    not_pad = (item_ids != 0).unsqueeze(-1)
    positions = torch.arange(L, 0, -1, device=item_ids.device).expand(B, L) * not_pad.squeeze(-1)
    return not_pad, positions


# name -> (encoder class, its config dataclass)
MODELS: dict[str, tuple[type[SequentialEncoder], type]] = {}
ENTRY_POINT_GROUP = "recsys.models"  # installed packages may add models under this entry-point group


def register(name: str, config_cls: type) -> Callable[[type[SequentialEncoder]], type[SequentialEncoder]]:
    """Class decorator: the encoder (a :class:`SequentialEncoder`) under ``name``, built from ``config_cls``
    (a dataclass of its settings) and the catalogue size."""

    def wrap(cls: type[SequentialEncoder]) -> type[SequentialEncoder]:
        if not (isinstance(cls, type) and issubclass(cls, SequentialEncoder)):
            raise TypeError(f"@register({name!r}): {cls!r} is not a SequentialEncoder")
        if not dataclasses.is_dataclass(config_cls):
            raise TypeError(f"@register({name!r}): the config {config_cls!r} is not a dataclass")
        MODELS[name] = (cls, config_cls)
        return cls

    return wrap


def resolve_model(name: str) -> tuple[type[SequentialEncoder], type]:
    """(encoder class, config class) of a model name: a built-in (imported on first use), one that an
    installed package declares under the ``recsys.models`` entry-point group, or ``"module.path:name"``,
    which imports ``module.path`` (it registers ``name`` with :func:`register`). KeyError otherwise."""
    _import_builtin_models()
    if name in MODELS:
        return MODELS[name]
    module, sep, registered = name.partition(":")
    if sep:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise KeyError(f"model {name!r}: cannot import {module!r} ({err})") from None
        if registered not in MODELS:
            raise KeyError(
                f"model {name!r}: {module!r} registers no model {registered!r}; it registers {sorted(MODELS)}"
            )
        MODELS[name] = MODELS[registered]
        return MODELS[name]
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=name):
        entry.load()  # the module registers the model
        if name in MODELS:
            return MODELS[name]
    raise KeyError(
        f"unknown model {name!r}; registered: {sorted(MODELS)} (or 'module.path:name' for a model of your own)"
    )


def model_config_class(name: str) -> type:
    return resolve_model(name)[1]


def build_model(name: str, config: Any, num_items: int) -> SequentialEncoder:
    """Instantiate a registered encoder from its config dataclass (or a dict of its fields)."""
    cls, config_cls = resolve_model(name)
    if isinstance(config, dict):
        config = config_cls(**config)
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"model config must be a {config_cls.__name__} or a dict")
    return cls(config, num_items)


def _import_builtin_models() -> None:
    from . import bert4rec, hstu, item_cooc, popularity, random_scores, recformer, recformer_tokens, sasrec  # noqa: F401
