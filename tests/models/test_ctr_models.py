"""DIN / TWIN / DARE: the stage-1 search, the decoupled gradients, and learning a planted signal."""

import numpy as np
import pytest
import torch

from recsys.models.ctr_base import build_ctr_model, click_loss, top_k_search


def _batch(B=6, L=30, V=60, C=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    history = torch.randint(1, V, (B, L), generator=g)
    history[0, :10] = 0  # left padding
    categories = torch.randint(1, C + 1, (B, L), generator=g) * (history != 0)
    return history, categories, torch.randint(1, V, (B,), generator=g), torch.randint(1, C + 1, (B,), generator=g)


def test_stage1_topk_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(8, 50, generator=g)
    valid = torch.rand(8, 50, generator=g) > 0.3
    index, picked_valid = top_k_search(scores, valid, 7)
    for row in range(8):
        candidates = [(scores[row, j].item(), j) for j in range(50) if valid[row, j]]
        expected = {j for _, j in sorted(candidates, reverse=True)[:7]}
        assert {j for j, ok in zip(index[row].tolist(), picked_valid[row].tolist()) if ok} == expected


@pytest.mark.parametrize("name", ["twin", "dare"])
def test_models_pick_the_stage1_topk_of_their_own_scores(name):
    model = build_ctr_model(name, {"top_k": 5}, 60, 5)
    logit, aux = model(*_batch())
    brute = aux["stage1_scores"].masked_fill(_batch()[0] == 0, float("-inf")).topk(5, dim=1).indices
    assert torch.equal(aux["top_k"].sort(1).values, brute.sort(1).values)


def test_dare_tables_get_separate_gradients():
    torch.manual_seed(0)
    model = build_ctr_model("dare", {"top_k": 5, "attention_dim": 4, "embedding_dim": 8}, 60, 5)
    logit, aux = model(*_batch())
    att, rep = model.attention.items.weight, model.representation.items.weight
    weights = aux["weights"]
    # the attention weights do not depend on the representation table at all ...
    assert torch.autograd.grad(weights.sum(), rep, retain_graph=True, allow_unused=True)[0] is None
    # ... and everything the attention table receives flows through those weights
    g_att = torch.autograd.grad(logit.sum(), att, retain_graph=True)[0]
    g_w = torch.autograd.grad(logit.sum(), weights, retain_graph=True)[0]
    via_weights = torch.autograd.grad(weights, att, grad_outputs=g_w, retain_graph=True)[0]
    torch.testing.assert_close(g_att, via_weights)
    assert g_att.abs().sum() > 0 and torch.autograd.grad(logit.sum(), rep)[0].abs().sum() > 0


def test_twin_shares_one_table_between_both_roles():
    torch.manual_seed(0)
    model = build_ctr_model("twin", {"top_k": 5}, 60, 5)
    logit, aux = model(*_batch())
    table = model.embed.items.weight
    assert torch.autograd.grad(aux["weights"].sum(), table, retain_graph=True)[0].abs().sum() > 0
    g_all = torch.autograd.grad(logit.sum(), table, retain_graph=True)[0]
    g_w = torch.autograd.grad(logit.sum(), aux["weights"], retain_graph=True)[0]
    via_weights = torch.autograd.grad(aux["weights"], table, grad_outputs=g_w)[0]
    assert not torch.allclose(g_all, via_weights)  # the same table also gets the representation gradient


@pytest.mark.parametrize("name, extra", [("din", {}), ("twin", {}), ("twin", {"projection": True}), ("dare", {})])
def test_learns_a_planted_click_rule(name, extra):
    """Clicked iff the target's category occurs in the (short) history: every model must clearly beat 0.5
    AUC on held-out rows (about half the rows are clicks)."""
    from recsys.metrics import auc

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, L, V, C = 2000, 6, 200, 10
    cats_of_item = torch.from_numpy(rng.integers(1, C + 1, V))
    history = torch.from_numpy(rng.integers(1, V, (n, L)))
    hist_cats = cats_of_item[history]
    target = torch.from_numpy(rng.integers(1, V, n))
    labels = (hist_cats == cats_of_item[target][:, None]).any(1).float()
    model = build_ctr_model(name, {"embedding_dim": 16, "top_k": 3, **extra}, V, C)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(100):
        logit, _ = model(history[:1500], hist_cats[:1500], target[:1500], cats_of_item[target[:1500]])
        loss = click_loss(logit, labels[:1500])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logit, _ = model(history[1500:], hist_cats[1500:], target[1500:], cats_of_item[target[1500:]])
    weaker = name == "din" or extra.get("projection")  # no softmax search / projected attention: slower here
    assert auc(labels[1500:].numpy(), logit.numpy()) > (0.62 if weaker else 0.8)
