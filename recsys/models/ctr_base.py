"""Shared parts of the click-prediction models (DIN, TWIN, DARE): behaviour embeddings, the
two-stage search, target attention, the prediction MLP, and their registry.

A CTR model maps (history items [B, L], history categories [B, L], target item [B], target category
[B]) to a click logit [B]; ``forward`` also returns a dict of what it attended to (for tests/analysis).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CTR_MODELS: dict[str, tuple[type, type]] = {}


def register_ctr(name: str, config_cls: type) -> Callable[[type], type]:
    def wrap(cls):
        CTR_MODELS[name] = (cls, config_cls)
        return cls

    return wrap


def build_ctr_model(name: str, config, num_items: int, num_categories: int) -> nn.Module:
    from . import dare, din, twin  # noqa: F401  (each registers itself)

    if name not in CTR_MODELS:
        raise KeyError(f"unknown CTR model {name!r}; registered: {sorted(CTR_MODELS)}")
    cls, config_cls = CTR_MODELS[name]
    if isinstance(config, dict):
        config = config_cls(**config)
    return cls(config, num_items, num_categories)


@dataclass
class CTRConfig:
    embedding_dim: int = 32  # per table (item and category), so a behaviour vector is 2x this
    attention_dim: int | None = None  # DARE: dimension of the attention tables (default: embedding_dim)
    top_k: int = 20  # TWIN / DARE: behaviours kept by the stage-1 search
    mlp_dims: tuple[int, ...] = (128, 64)
    dropout: float = 0.0
    init_std: float = 0.02


class BehaviourEmbedding(nn.Module):
    """Item and category tables; a behaviour (or target) vector is their concatenation [.., 2 * dim]."""

    def __init__(self, num_items: int, num_categories: int, dim: int, init_std: float):
        super().__init__()
        self.items = nn.Embedding(num_items, dim, padding_idx=0)
        self.categories = nn.Embedding(num_categories + 1, dim, padding_idx=0)
        for table in (self.items, self.categories):
            nn.init.normal_(table.weight, std=init_std)
            table.weight.data[0].zero_()

    def forward(self, items: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.items(items), self.categories(categories)], dim=-1)


def mlp(in_dim: int, dims, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for d in dims:
        layers += [nn.Linear(in_dim, d), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = d
    layers.append(nn.Linear(in_dim, 1))
    return nn.Sequential(*layers)


def top_k_search(scores: torch.Tensor, valid: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 1: indices [B, k'] of the k highest-scoring valid behaviours (k' = min(k, L)) and whether
    each pick is a real behaviour (histories shorter than k leave padding picks)."""
    k = min(k, scores.shape[1])
    masked = scores.detach().masked_fill(~valid, float("-inf"))  # selection is discrete: no gradient
    index = masked.topk(k, dim=1).indices
    return index, valid.gather(1, index)


def target_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Softmax attention of one query per row: query [B, d], keys [B, K, d], values [B, K, dv] ->
    ([B, dv], weights [B, K]); rows without any valid key give zeros."""
    logits = (keys @ query.unsqueeze(-1)).squeeze(-1) / keys.shape[-1] ** 0.5  # [B, K]
    logits = logits.masked_fill(~valid, float("-inf"))
    weights = torch.softmax(logits, dim=1).nan_to_num(0.0)
    return (weights.unsqueeze(-1) * values).sum(1), weights


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, L, d], index [B, k] -> [B, k, d]."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def click_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, labels)
