import pytest
import torch

from recsys.losses import LossConfig, next_item_loss
from recsys.models.hstu import HSTU, HSTUConfig


def _model(**kw):
    torch.manual_seed(0)
    cfg = HSTUConfig(**{"max_seq_len": 10, "hidden_dim": 16, "num_blocks": 2, "num_heads": 2, "dropout": 0.0, **kw})
    model = HSTU(cfg, num_items=30).eval()
    with torch.no_grad():  # non-zero biases so the tests see them
        for layer in model.layers:
            layer.position_bias.normal_()
            layer.time_bias.normal_()
    return model


def _times(ids):
    return torch.cumsum(torch.full(ids.shape, 3600), 1) * (ids != 0)


def test_causal():
    m = _model()
    ids = torch.tensor([[0, 3, 4, 5, 6, 7, 8]])
    ts = _times(ids)
    out = m(ids, ts, ts + 60)
    changed = ids.clone()
    changed[0, 5] = 20
    out2 = m(changed, ts, ts + 60)
    torch.testing.assert_close(out[:, :5], out2[:, :5])
    assert not torch.allclose(out[:, 5], out2[:, 5])


def test_jagged_equals_padded_and_per_row():
    m = _model()
    a = torch.tensor([[3, 4, 5]])
    b = torch.tensor([[9, 8, 7, 6, 5]])
    batch = torch.tensor([[0, 0, 3, 4, 5], [9, 8, 7, 6, 5]])
    ts = _times(batch)
    out = m(batch, ts, ts + 5)
    torch.testing.assert_close(out[0, 2:], m(a, ts[:1, 2:], ts[:1, 2:] + 5)[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[1], m(b, ts[1:], ts[1:] + 5)[0], rtol=1e-5, atol=1e-6)
    assert (out[0, :2] == 0).all()  # padding positions stay empty


def test_user_vectors_compute_the_last_layer_for_the_last_position_only():
    m = _model(num_blocks=3)
    ids = torch.tensor([[0, 0, 0, 5, 6, 7], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 9], [0] * 6])
    ts = _times(ids)
    target_times = ts[:, -1] + 100
    with torch.no_grad():
        got = m.user_vectors(ids, ts, target_times)
        full = m(ids, ts, torch.cat([ts[:, 1:], target_times[:, None]], 1))[:, -1]
        torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-6)
        assert (got[3] == 0).all()  # an empty history
        assert m.user_vectors(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4), torch.ones(2)).abs().sum() == 0


def test_time_bias_is_used_and_query_time_flag():
    m = _model()
    ids = torch.tensor([[3, 4, 5, 6]])
    ts = _times(ids)
    base = m(ids, ts, ts + 1)
    assert not torch.allclose(base, m(ids, ts * 1000, ts * 1000 + 1))
    current = _model(query_time="current")
    torch.testing.assert_close(current(ids, ts, ts + 10**6), current(ids, ts, None))


def test_overfits_eight_sequences():
    torch.manual_seed(0)
    model = HSTU(HSTUConfig(max_seq_len=6, hidden_dim=32, num_blocks=1, dropout=0.0), num_items=25)
    g = torch.Generator().manual_seed(1)
    seqs = torch.randint(1, 25, (8, 7), generator=g)
    ts = torch.cumsum(torch.randint(1, 10**5, (8, 7), generator=g), 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    cfg = LossConfig(name="ce")
    for _ in range(300):
        loss = next_item_loss(cfg, model(seqs[:, :-1], ts[:, :-1], ts[:, 1:]), seqs[:, 1:], model.item_vectors())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_initialisation_schemes():
    torch.manual_seed(0)
    ref = HSTU(HSTUConfig(max_seq_len=200, hidden_dim=64, num_blocks=1), num_items=5000)
    layer = ref.layers[0]
    assert abs(layer.uvqk.weight.std().item() - 0.02) < 0.002  # W_uvqk ~ N(0, .02)
    assert abs(ref.position_embedding.weight[1:].std().item() - 64**-0.5) < 0.01  # N(0, 1/D)
    assert abs(ref.item_embedding.weight[1:].std().item() - 0.02) < 0.002
    assert layer.position_bias.std().item() > 0.01 and layer.time_bias.std().item() > 0.01
    assert (ref.position_embedding.weight[0] == 0).all() and (ref.item_embedding.weight[0] == 0).all()
    old = HSTU(HSTUConfig(max_seq_len=200, hidden_dim=64, num_blocks=1, init_scheme="xavier"), num_items=5000)
    bound = (6 / (64 + old.layers[0].uvqk.weight.shape[0])) ** 0.5  # Xavier-uniform: std = bound / sqrt(3)
    assert abs(old.layers[0].uvqk.weight.std().item() - bound / 3**0.5) < 0.005
    assert (old.layers[0].position_bias == 0).all()


@pytest.mark.parametrize("use_time_bias", [False, True])
def test_the_grid_path_for_torch_export_equals_the_jagged_one(monkeypatch, use_time_bias):
    import recsys.models.hstu as hstu_module

    torch.manual_seed(0)
    model = HSTU(
        HSTUConfig(max_seq_len=12, hidden_dim=16, num_blocks=2, num_heads=2, dropout=0.0, use_time_bias=use_time_bias),
        30,
    ).eval()
    ids = torch.zeros(4, 12, dtype=torch.long)  # 2, 9, 12 and no items
    ids[0, -2:], ids[1, -9:], ids[2] = torch.tensor([4, 5]), torch.arange(1, 10), torch.arange(10, 22)
    times = torch.cumsum(torch.randint(1, 10**5, (4, 12)), dim=1) * (ids != 0)
    at = times[:, -1] + 3600
    with torch.no_grad():
        jagged, jagged_last = model(ids, times, times), model.user_vectors(ids, times, at)
        monkeypatch.setattr(hstu_module, "exporting", lambda: True)
        grid, grid_last = model(ids, times, times), model.user_vectors(ids, times, at)
    real = (ids != 0)[..., None]
    torch.testing.assert_close(grid * real, jagged * real, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grid_last, jagged_last, rtol=1e-5, atol=1e-6)
    assert grid_last[3].abs().sum() == 0  # an empty history gives zeros, as on the jagged path
