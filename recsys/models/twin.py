"""TWIN: two-stage interest network with one embedding table (and the "projection" variant).

Jianxin Chang et al., "TWIN: TWo-stage Interest Network for Lifelong User Behavior Modeling in CTR
Prediction at Kuaishou", KDD 2023; the projection variant is the baseline of Feng et al. 2025 (DARE).

Method. Stage 1 scores every behaviour of the long history against the target by an inner product of
their embeddings and keeps the top-k; stage 2 runs softmax target attention over those k behaviours and
aggregates the same embeddings; an MLP over [aggregate, target] gives the click logit. One table serves
both the attention (search) and the representation (aggregation) — the coupling DARE removes.

``projection = true``: attention uses linear projections of the embeddings (W_q target, W_k behaviour)
and representation another (W_v behaviour) — decoupling by projection, which DARE shows does not work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .ctr_base import BehaviourEmbedding, CTRConfig, gather_rows, mlp, register_ctr, target_attention, top_k_search


@dataclass
class TWINConfig(CTRConfig):
    projection: bool = False


@register_ctr("twin", TWINConfig)
class TWIN(nn.Module):
    def __init__(self, cfg: TWINConfig, num_items: int, num_categories: int):
        super().__init__()
        self.cfg = cfg
        self.embed = BehaviourEmbedding(num_items, num_categories, cfg.embedding_dim, cfg.init_std)
        d = 2 * cfg.embedding_dim
        if cfg.projection:
            self.query = nn.Linear(d, d, bias=False)
            self.key = nn.Linear(d, d, bias=False)
            self.value = nn.Linear(d, d, bias=False)
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
        if self.cfg.projection:
            h_att, t_att, h_rep = self.key(h), self.query(t), self.value(h)
        else:
            h_att, t_att, h_rep = h, t, h
        scores = (h_att @ t_att.unsqueeze(-1)).squeeze(-1)  # stage 1 relevance [B, L]
        index, valid = top_k_search(scores, history != 0, self.cfg.top_k)
        aggregate, weights = target_attention(t_att, gather_rows(h_att, index), gather_rows(h_rep, index), valid)
        logit = self.head(torch.cat([aggregate, t], dim=-1)).squeeze(-1)
        return logit, {"top_k": index, "weights": weights, "stage1_scores": scores}
