"""DIN: Deep Interest Network.

Guorui Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018.

Method. Every behaviour of the history is weighted by an activation unit (an MLP over
[behaviour, target, behaviour - target, behaviour * target]); the weighted sum (no softmax, as in the
paper) is the user's interest for this target; an MLP over [interest, target] gives the click logit.

What differs: no Dice activation or mini-batch-aware regularisation (ReLU, plain weight decay via the
optimiser); one embedding table per field (item, category), concatenated.
"""

from __future__ import annotations

import torch
from torch import nn

from .ctr_base import BehaviourEmbedding, CTRConfig, mlp, register_ctr


@register_ctr("din", CTRConfig)
class DIN(nn.Module):
    def __init__(self, cfg: CTRConfig, num_items: int, num_categories: int):
        super().__init__()
        self.embed = BehaviourEmbedding(num_items, num_categories, cfg.embedding_dim, cfg.init_std)
        d = 2 * cfg.embedding_dim
        self.activation = nn.Sequential(nn.Linear(4 * d, 36), nn.ReLU(), nn.Linear(36, 1))
        self.head = mlp(2 * d, cfg.mlp_dims, cfg.dropout)

    def forward(
        self,
        history: torch.Tensor,
        history_categories: torch.Tensor,
        target: torch.Tensor,
        target_category: torch.Tensor,
    ) -> torch.Tensor:
        h = self.embed(history, history_categories)  # [B, L, d]
        t = self.embed(target, target_category)  # [B, d]
        te = t.unsqueeze(1).expand_as(h)
        w = self.activation(torch.cat([h, te, h - te, h * te], dim=-1)).squeeze(-1)  # [B, L]
        w = w * (history != 0)
        interest = (w.unsqueeze(-1) * h).sum(1)  # [B, d]
        return self.head(torch.cat([interest, t], dim=-1)).squeeze(-1), {"weights": w}
