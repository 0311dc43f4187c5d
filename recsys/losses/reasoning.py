"""The training losses of ReaRec's reasoning states (:mod:`recsys.models.layers.reasoning`), on top of
any next-item loss: ERL's loss of the mean state minus the steps' KL diversity, PRL's progressive
losses of every state plus the contrastive term of a noisy second view."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..config import LossConfig
from . import next_item_loss

CONTRASTIVE_TEMPERATURE = 0.1


def reasoning_loss(
    loss_cfg: LossConfig,
    model_cfg,
    states: torch.Tensor,  # [B, L, K + 1, D]
    target_ids: torch.Tensor,  # [B, L]
    items: torch.Tensor,  # [V, D]
    noisy_states: torch.Tensor | None = None,  # PRL's second view, [B, L, K + 1, D]
    last_rows: tuple[torch.Tensor, torch.Tensor] | None = None,
    **loss_kwargs,
) -> torch.Tensor:
    """The loss of ReaRec's states under ``model_cfg.reasoning_method``, built from the recipe's next-item
    loss (:func:`recsys.losses.next_item_loss`, given ``loss_kwargs``) of one hidden state per position.
    ``last_rows``: (flat indices into the [B x L] positions [P], weights [P]) of the sequences' last
    positions, where the KL and contrastive terms are taken (packed rows: :func:`packed_last_rows`);
    default: each row's last column, all weighing 1."""
    K = states.shape[2] - 1
    if last_rows is None:
        last_rows = (torch.arange(1, states.shape[0] + 1, device=states.device) * states.shape[1] - 1, None)
    flat_states = states.reshape(-1, K + 1, states.shape[-1])  # [B L, K + 1, D]
    last_states = flat_states.index_select(0, last_rows[0])  # [P, K + 1, D]
    # a last position without a target weighs nothing (a mask, not a selection: no host synchronisation)
    last = (target_ids.reshape(-1).index_select(0, last_rows[0]) > 0).to(states.dtype)  # [P]
    if last_rows[1] is not None:
        last = last * last_rows[1]
    if model_cfg.reasoning_method == "erl":
        loss = next_item_loss(loss_cfg, states.mean(dim=2), target_ids, items, **loss_kwargs)
        if model_cfg.reasoning_kl_weight > 0 and K > 0:
            logits = scored(last_states, items, loss_cfg.l2_normalize, loss_cfg.temperature)  # [P, K + 1, V - 1]
            loss = loss - model_cfg.reasoning_kl_weight * kl_diversity(logits, last)
        return loss
    loss = next_item_loss(loss_cfg, states[:, :, K].contiguous(), target_ids, items, **loss_kwargs)
    if K > 0:  # the earlier states, each scored at a higher temperature the further back it is
        earlier = [
            next_item_loss(
                dataclasses.replace(
                    loss_cfg, temperature=loss_cfg.temperature * model_cfg.reasoning_temperature_scale ** (K - k)
                ),
                states[:, :, k].contiguous(),
                target_ids,
                items,
                **loss_kwargs,
            )
            for k in range(K)
        ]
        loss = loss + torch.stack(earlier).mean()
    if noisy_states is not None and K > 0 and last_states.shape[0] > 1:
        # [P, K, D] the reasoning states at the last positions
        view_a = last_states[:, 1:]
        view_b = noisy_states.reshape(flat_states.shape).index_select(0, last_rows[0])[:, 1:]
        loss = loss + model_cfg.reasoning_contrastive_weight * contrastive(view_a, view_b, last)
    return loss


def packed_last_rows(index: torch.Tensor, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``last_rows`` of :func:`reasoning_loss` for packed states: from the flat indices ``index`` [T] of
    the real positions of a left-padded [batch, length] grid, each row's last one among the T packed
    rows [batch] and weights [batch], 0 for a row without any (it then points at a row it does not own)."""
    counts = torch.bincount(index // length, minlength=batch)  # [B]
    return (counts.cumsum(0) - 1).clamp_min(0), (counts > 0).to(torch.float32)


def scored(hidden: torch.Tensor, items: torch.Tensor, l2_normalize: bool, temperature: float) -> torch.Tensor:
    """Logits [..., V - 1] of hidden states [..., D] against the items [V, D] but padding, as the loss scores."""
    if l2_normalize:
        hidden, items = F.normalize(hidden, dim=-1), F.normalize(items, dim=-1)
    return (hidden / temperature) @ items[1:].T  # (the division on [..., D], not on [..., V - 1])


def kl_diversity(logits: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean KL(p_j || p_i) over the ordered pairs i != j of steps, logits [P, S, V] -> scalar, positions
    weighted by ``weights`` [P] (default: equally). The gradient reaches p_j alone, log p_i is detached
    (as in the paper's code): each step moves its own distribution away from the others' current
    ones. (Detaching p_j instead lets a step push the others' likely items, the target among them, down
    in its own distribution: on S3-Rec's Beauty the term then grew without bound and training collapsed.)"""
    S = logits.shape[1]
    log_p = logits.log_softmax(dim=-1)  # [P, S, V]
    p = log_p.exp()
    # kl[p, i, j] = sum_v p_j (log p_j - log p_i): p_j's negative entropy minus a [S, V] x [V, S] product
    # per position (no [P, S, S, V] tensor)
    negative_entropy = (p * log_p).sum(-1)  # [P, S(j)]
    kl = negative_entropy[:, None, :] - log_p.detach() @ p.transpose(1, 2)  # [P, S(i), S(j)]
    off_diagonal = ~torch.eye(S, dtype=torch.bool, device=logits.device)
    per_position = kl[:, off_diagonal].mean(dim=1)  # [P]
    return _weighted_mean(per_position, weights)


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return values.mean()
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def contrastive(view_a: torch.Tensor, view_b: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE between two views of the same sequences' reasoning states, [P, S, D] each: for every step,
    each sequence's state in view b must pick its own in view a among the P (cosine / temperature);
    sequences weighted by ``weights`` [P] (default: equally), those of weight 0 not even as negatives."""
    P, S = view_a.shape[:2]
    a, b = F.normalize(view_a, dim=-1), F.normalize(view_b, dim=-1)
    logits = torch.einsum("psd,qsd->sqp", a, b) / CONTRASTIVE_TEMPERATURE  # [S, P(b), P(a)]
    if weights is not None:  # a sequence of weight 0 is no one's negative either (e.g. an empty row)
        eye = torch.eye(P, dtype=torch.bool, device=a.device)
        logits = logits.masked_fill(~((weights > 0)[None, :] | eye), float("-inf"))
    labels = torch.arange(P, device=a.device).expand(S, -1)  # [S, P]
    per_query = F.cross_entropy(logits.reshape(-1, P), labels.reshape(-1), reduction="none").view(S, P)
    return _weighted_mean(per_query.mean(dim=0), weights)
