"""DARE: decoupled attention and representation embeddings.

Ningya Feng et al., "Long-Sequence Recommendation Models Need Decoupled Embeddings", ICLR 2025.

Method. Two embedding tables per field. The *attention* tables (dimension ``attention_dim``, which can be
much smaller) serve only the search: stage 1 scores every behaviour against the target by the inner
product of their attention embeddings and keeps the top-k; stage 2's softmax weights come from the same
attention embeddings. The *representation* tables serve only what is aggregated with those weights and
fed, with the target's representation, to the prediction MLP. So the attention tables receive gradient
only through the attention weights and the representation tables only through the aggregate and the
target: the two objectives no longer fight over one table (TWIN's problem).

What differs from the paper: the MLP, dimensions and top-k are recipe settings; no extra features.
"""

from __future__ import annotations

import torch
from torch import nn

from .ctr_base import BehaviourEmbedding, CTRConfig, gather_rows, mlp, register_ctr, target_attention, top_k_search


@register_ctr("dare", CTRConfig)
class DARE(nn.Module):
    def __init__(self, cfg: CTRConfig, num_items: int, num_categories: int):
        super().__init__()
        self.cfg = cfg
        self.attention = BehaviourEmbedding(
            num_items, num_categories, cfg.attention_dim or cfg.embedding_dim, cfg.init_std
        )
        self.representation = BehaviourEmbedding(num_items, num_categories, cfg.embedding_dim, cfg.init_std)
        self.head = mlp(4 * cfg.embedding_dim, cfg.mlp_dims, cfg.dropout)

    def forward(
        self,
        history: torch.Tensor,
        history_categories: torch.Tensor,
        target: torch.Tensor,
        target_category: torch.Tensor,
    ) -> torch.Tensor:
        h_att = self.attention(history, history_categories)  # [B, L, 2 * attention_dim]
        t_att = self.attention(target, target_category)  # [B, 2 * attention_dim]
        scores = (h_att @ t_att.unsqueeze(-1)).squeeze(-1)  # stage 1 [B, L]
        index, valid = top_k_search(scores, history != 0, self.cfg.top_k)
        picked = gather_rows(history.unsqueeze(-1), index).squeeze(-1)  # only the k picks are looked up
        picked_cats = gather_rows(history_categories.unsqueeze(-1), index).squeeze(-1)
        h_rep = self.representation(picked, picked_cats)  # [B, k, 2 * embedding_dim]
        t_rep = self.representation(target, target_category)
        aggregate, weights = target_attention(t_att, gather_rows(h_att, index), h_rep, valid)
        logit = self.head(torch.cat([aggregate, t_rep], dim=-1)).squeeze(-1)
        return logit, {"top_k": index, "weights": weights, "stage1_scores": scores}
