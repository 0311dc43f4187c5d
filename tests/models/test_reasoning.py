"""ReaRec's latent reasoning (recsys.models.layers.reasoning) in SASRec and HSTU: K = 0 is the plain model,
the history pass is the plain encoder, reasoning stays causal, the cached keys equal re-running the
encoder on the longer sequence, and both training methods train from a recipe on real data."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recsys.config import ConfigError, load_recipe
from recsys.losses.reasoning import contrastive, kl_diversity, packed_last_rows, reasoning_loss
from recsys.models.base import build_model
from recsys.models.layers.reasoning import history_mask, merge_heads, softmax_attention
from tests.conftest import REPO, needs_data

V = 40
SMALL = {"hidden_dim": 16, "num_blocks": 2, "max_seq_len": 12}
MODELS = {"sasrec": {"num_heads": 2}, "hstu": {"use_time_bias": True, "num_heads": 2}}


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (4, 10), generator=g)
    ids[0, :4] = 0  # left padding
    ids[1, :9] = 0
    ts = torch.cumsum(torch.randint(1, 100_000, (4, 10), generator=g), 1)
    next_ts = torch.cat([ts[:, 1:], ts[:, -1:] + 5], 1)
    return ids, ts, next_ts


def model(name: str, steps: int, method: str = "erl", seed: int = 0):
    torch.manual_seed(seed)
    m = build_model(name, {**SMALL, **MODELS[name], "reasoning_steps": steps, "reasoning_method": method}, V)
    return m.eval()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_zero_steps_is_the_plain_model(name):
    torch.manual_seed(0)
    plain = build_model(name, {**SMALL, **MODELS[name]}, V).eval()
    zero = model(name, 0)
    assert plain.state_dict().keys() == zero.state_dict().keys()
    ids, ts, next_ts = inputs()
    with torch.no_grad():
        assert torch.equal(plain(ids, ts, next_ts), zero(ids, ts, next_ts))
        assert torch.equal(plain.user_vectors(ids, ts, next_ts[:, -1]), zero.user_vectors(ids, ts, next_ts[:, -1]))


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("method", ["erl", "prl"])
def test_first_state_is_the_plain_encoder_and_user_vector_combines_states(name, method):
    m = model(name, 3, method)
    plain = build_model(name, {**SMALL, **MODELS[name]}, V).eval()
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("reasoning_position")})
    ids, ts, next_ts = inputs()
    real = ids > 0
    with torch.no_grad():
        states = m(ids, ts, next_ts, reasoning=True)  # [B, L, K + 1, D]
        assert states.shape == (4, 10, 4, 16)
        torch.testing.assert_close(states[:, :, 0][real], plain(ids, ts, next_ts)[real], atol=2e-6, rtol=1e-5)
        last = m(ids, ts, next_ts, last_only=True, reasoning=True)[:, 0]
        torch.testing.assert_close(last, states[:, -1], atol=2e-6, rtol=1e-5)
        user = m.user_vectors(ids, ts, next_ts[:, -1])
        expected = states[:, -1].mean(1) if method == "erl" else states[:, -1, -1]
        torch.testing.assert_close(user, expected, atol=2e-6, rtol=1e-5)
        # the reasoning steps move the state: K > 0 is not the plain model
        assert (states[:, -1, 1:] - states[:, -1, :1]).abs().max() > 1e-3


@pytest.mark.parametrize("name", sorted(MODELS))
def test_reasoning_is_causal(name):
    m = model(name, 2)
    ids, ts, next_ts = inputs()
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] % (V - 1)) + 1  # another item at column 7
    with torch.no_grad():
        a, b = m(ids, ts, next_ts, reasoning=True), m(changed, ts, next_ts, reasoning=True)
    assert torch.equal(a[:, :7], b[:, :7])  # no earlier position, nor its reasoning, reads column 7
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-4


def test_cached_history_equals_rerunning_the_blocks_on_the_longer_sequence():
    """Step k at the last position = the blocks run once more over [items, h^(0) + p_1, ..., h^(k-1) + p_k]
    with plain causal attention, the way the paper describes feeding the state back."""
    m = model("sasrec", 3)
    ids, _, _ = inputs()
    with torch.no_grad():
        states = m(ids, reasoning=True, last_only=True)[:, 0]  # [B, K + 1, D]
        B, L = ids.shape
        real = ids > 0
        positions = (torch.arange(L, 0, -1).expand(B, L) * real).long()
        x_items = m.embed(ids, positions)[0] * real[..., None]
        for k in range(1, 4):
            steps = states[:, :k] + m.reasoning_position.weight[:k]  # [B, k, D] the fed-back tokens
            x = torch.cat([x_items, steps], dim=1)  # [B, L + k, D]
            n = L + k
            keys_real = torch.cat([real, torch.ones(B, k, dtype=torch.bool)], dim=1)
            causal = history_mask(keys_real, torch.arange(n)) | torch.eye(n, dtype=torch.bool)
            for block in m.blocks:
                q, kk, vv = block.attention_heads(x)
                x = block.after_attention(x, merge_heads(softmax_attention(q, kk, vv, causal, None, None, 0.0)))
            torch.testing.assert_close(m.final_ln(x[:, -1]), states[:, k], atol=2e-5, rtol=1e-4)


def packed_inputs():
    """Rows of every kind for packing: long, short, a single item, empty."""
    ids = inputs(3)[0]
    ids[2] = 0  # an empty row
    return ids


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("method", ["erl", "prl"])
def test_packed_reasoning_equals_the_grid_path(name, method):
    """Training's packed states (real positions only) and their gradients are the grid path's (HSTU with
    its position and time biases)."""
    m = model(name, 3, method).train()
    m.cfg.dropout = 0.0  # the attention's dropout; the modules' below
    for module in m.modules():
        if hasattr(module, "p"):
            module.p = 0.0
    ids = packed_inputs()
    _, ts, next_ts = inputs(3)
    real = ids > 0
    packed, index = m(ids, ts, next_ts, packed=True, reasoning=True)  # [T, K + 1, D], [T]
    grid = m(ids, ts, next_ts, reasoning=True)  # [B, L, K + 1, D]
    assert packed.shape == (int(real.sum()), 4, 16)
    assert torch.equal(index, real.reshape(-1).nonzero().squeeze(1))
    torch.testing.assert_close(packed, grid[real], atol=2e-6, rtol=1e-5)
    weights = torch.randn(packed.shape, generator=torch.Generator().manual_seed(2))
    grads = []
    for states in (packed, grid[real]):
        m.zero_grad()
        (states * weights).sum().backward(retain_graph=True)
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "reasoning_position.weight" in grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("method", ["erl", "prl"])
def test_reasoning_loss_on_packed_rows_equals_the_grid(method):
    """The packed loss (targets of the real positions, KL / contrastive at each row's last real one) is the
    grid loss, an empty row weighing nothing in either."""
    from recsys.config import LossConfig

    m = model("sasrec", 2, method)
    ids = packed_inputs()
    real = ids > 0
    targets = torch.roll(ids, -1, 1) * real
    targets[:, -1] = torch.tensor([5, 6, 0, 7])  # the empty row has no target
    with torch.no_grad():
        grid = m(ids, reasoning=True)  # [B, L, K + 1, D]
        noisy = grid + 0.01 * torch.randn(grid.shape, generator=torch.Generator().manual_seed(4))
        packed, index = m(ids, packed=True, reasoning=True)
        last_rows = packed_last_rows(index, *ids.shape)
        assert last_rows[1].tolist() == [1.0, 1.0, 0.0, 1.0]
        expected = reasoning_loss(LossConfig(), m.cfg, grid, targets, m.item_vectors(), noisy)
        got = reasoning_loss(
            LossConfig(),
            m.cfg,
            packed[None],
            targets.reshape(-1)[index][None],
            m.item_vectors(),
            noisy[real][None],
            last_rows,
        )
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_kl_diversity_by_hand():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]]])  # one position, two steps
    p = logits.softmax(-1)
    by_hand = 0.5 * ((p[0, 1] * (p[0, 1] / p[0, 0]).log()).sum() + (p[0, 0] * (p[0, 0] / p[0, 1]).log()).sum())
    torch.testing.assert_close(kl_diversity(logits), by_hand)
    same = torch.tensor([[[0.3, 1.0, -2.0], [0.3, 1.0, -2.0]]])
    assert kl_diversity(same).abs() < 1e-7
    # a position of weight 0 (no target there) does not count
    both = torch.cat([logits, same])
    torch.testing.assert_close(kl_diversity(both, torch.tensor([1.0, 0.0])), by_hand)


def test_kl_diversity_moves_each_step_away_from_the_others_fixed_distributions():
    """The gradient is that of sum_v p_j (log p_j - sg(log p_i)): through p_j, not through log p_i."""
    logits = torch.randn(5, 3, 20, generator=torch.Generator().manual_seed(3), requires_grad=True)
    kl_diversity(logits).backward()
    pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
    for detached_side, matches in (("i", True), ("j", False)):
        log_p = logits.log_softmax(-1)
        log_i = log_p.detach() if detached_side == "i" else log_p
        log_j = log_p.detach() if detached_side == "j" else log_p
        reference = torch.stack([(log_j[:, j].exp() * (log_j[:, j] - log_i[:, i])).sum(-1) for i, j in pairs]).mean()
        (grad,) = torch.autograd.grad(reference, logits)
        assert torch.allclose(grad, logits.grad, atol=1e-7) == matches


def test_contrastive_by_hand():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 2, 8, generator=g), torch.randn(5, 2, 8, generator=g)
    an, bn = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    by_hand = torch.stack([F.cross_entropy(bn[:, s] @ an[:, s].T / 0.1, torch.arange(5)) for s in range(2)]).mean()
    torch.testing.assert_close(contrastive(a, b), by_hand)
    assert contrastive(a, a) < contrastive(a, b)  # a view that agrees with itself is rewarded
    # a sequence of weight 0 is neither a query nor a negative
    ignored = contrastive(a, b, torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0]))
    torch.testing.assert_close(ignored, contrastive(a[:4], b[:4]))


@pytest.mark.parametrize("method", ["erl", "prl"])
def test_reasoning_loss_terms(method):
    from recsys.config import LossConfig
    from recsys.losses import next_item_loss

    m = model("sasrec", 2, method)
    m.train()
    ids, _, _ = inputs()
    targets = torch.roll(ids, -1, 1) * (ids > 0)
    targets[:, -1] = 5
    states = m(ids, reasoning=True)
    cfg = m.cfg
    loss = reasoning_loss(LossConfig(), cfg, states, targets, m.item_vectors())
    assert math.isfinite(loss.item())
    loss.backward()
    assert m.reasoning_position.weight.grad.abs().sum() > 0
    with torch.no_grad():
        if method == "erl":  # without the KL term: the loss of the mean state
            cfg.reasoning_kl_weight = 0.0
            plain = next_item_loss(LossConfig(), states.mean(2), targets, m.item_vectors())
        else:  # without the earlier steps' terms (K = 0 of the same states): the last state's loss
            cfg.reasoning_contrastive_weight = 0.0
            plain = next_item_loss(LossConfig(), states[:, :, -1].contiguous(), targets, m.item_vectors())
        alone = reasoning_loss(
            LossConfig(),
            cfg,
            states if method == "erl" else states[:, :, -1:],
            targets,
            m.item_vectors(),
        )
        torch.testing.assert_close(alone, plain)


def test_reasoning_settings_are_checked():
    with pytest.raises(ConfigError, match="model.reasoning_steps"):
        load_recipe(REPO / "recipes/ml-100k/sasrec.toml", ["model.reasoning_steps=-1"])
    with pytest.raises(ConfigError, match="model.reasoning_method"):
        load_recipe(REPO / "recipes/ml-100k/sasrec.toml", ["model.reasoning_method=cot"])
    with pytest.raises(ConfigError, match="attention_table_dim"):
        load_recipe(REPO / "recipes/ml-100k/sasrec.toml", ["model.reasoning_steps=1", "model.attention_table_dim=8"])


@needs_data("ml-100k")
@pytest.mark.parametrize("name,method", [("sasrec", "erl"), ("hstu", "prl")])
def test_reasoning_trains_from_a_recipe_and_reloads(name, method, tmp_path, monkeypatch):
    from recsys.models.hstu import HSTU
    from recsys.models.sasrec import SASRec
    from recsys.train import make_trainer
    from recsys.train.next_item import load_run

    packed_calls = []  # with full CE, training reasons on packed rows
    model_class = {"sasrec": SASRec, "hstu": HSTU}[name]
    original = model_class.packed_reasoning_states
    monkeypatch.setattr(
        model_class, "packed_reasoning_states", lambda *a, **k: packed_calls.append(1) or original(*a, **k)
    )

    overrides = [
        "train.epochs=1",
        "train.num_threads=1",
        "train.batch_size=64",
        "eval.ks=[10]",
        "model.hidden_dim=16",
        "model.num_blocks=1",
        "model.max_seq_len=20",
        "model.reasoning_steps=2",
        f"model.reasoning_method={method}",
    ]
    cfg = load_recipe(REPO / f"recipes/ml-100k/{name}.toml", overrides)
    out = make_trainer(cfg, tmp_path / name, progress=False).fit()
    assert out["test"]["num_users"] == 943 and 0 < out["test"]["ndcg@10"] <= 1
    assert packed_calls
    trainer = load_run(tmp_path / name)
    assert trainer.model.reasoning_steps == 2
    again = trainer.evaluate("test")
    assert again["ndcg@10"] == pytest.approx(out["test"]["ndcg@10"], abs=1e-9)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_reasoning_encoder_exports(name, tmp_path):
    """torch.export captures the reasoning encoder (no TorchScript fallback) and ONNX runs it in onnxruntime."""
    from recsys.export import _UserEncoder, save_encoder, save_onnx

    wrapped = _UserEncoder(model(name, 2), False)
    assert save_encoder(wrapped, SMALL["max_seq_len"], tmp_path) == "torch.export"
    pytest.importorskip("onnxruntime")
    save_onnx(wrapped, SMALL["max_seq_len"], tmp_path)  # refuses an encoder onnxruntime does not reproduce
    assert (tmp_path / "encoder.onnx").stat().st_size > 0
