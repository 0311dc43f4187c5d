import pytest
import torch
import torch.nn.functional as F

from recsys.losses import LossConfig, next_item_loss
from recsys.models.base import MODELS, build_model
from recsys.models.dropout import Dropout
from recsys.models.sasrec import SASRec, SASRecConfig


def _assert_same_gradients(out, expected, inputs, weights):
    """The gradients of (out * weights).sum() and (expected * weights).sum() w.r.t. ``inputs`` agree."""
    grads = torch.autograd.grad((out * weights).sum(), inputs, retain_graph=True)
    expected_grads = torch.autograd.grad((expected * weights).sum(), inputs, retain_graph=True)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def _model(**kw):
    torch.manual_seed(0)
    cfg = SASRecConfig(max_seq_len=12, hidden_dim=16, num_blocks=2, num_heads=2, dropout=0.0, **kw)
    return SASRec(cfg, num_items=40).eval()


def test_registry_builds_from_dict():
    assert "sasrec" in MODELS
    m = build_model("sasrec", {"max_seq_len": 5, "hidden_dim": 8}, num_items=10)
    assert isinstance(m, SASRec) and m.item_vectors().shape == (10, 8)


def test_causal_future_items_do_not_change_earlier_outputs():
    m = _model()
    ids = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8]])
    out = m(ids)
    changed = ids.clone()
    changed[0, 6] = 30
    out2 = m(changed)
    torch.testing.assert_close(out[:, :6], out2[:, :6])
    assert not torch.allclose(out[:, 6], out2[:, 6])


def test_left_padding_does_not_change_the_user_vector():
    m = _model()
    short = torch.tensor([[3, 4, 5]])
    padded = torch.tensor([[0, 0, 0, 0, 3, 4, 5]])
    torch.testing.assert_close(m.user_vectors(short), m.user_vectors(padded), rtol=1e-5, atol=1e-6)
    # and a batch mixing lengths gives each row what it gets alone
    batch = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])
    torch.testing.assert_close(m.user_vectors(batch)[0], m.user_vectors(short)[0], rtol=1e-5, atol=1e-6)


def test_rejects_too_long_sequences():
    with pytest.raises(ValueError, match="max_seq_len"):
        _model()(torch.ones(1, 13, dtype=torch.long))


@pytest.mark.parametrize("loss", ["ce", "sampled_softmax", "bce"])
def test_overfits_eight_sequences(loss):
    torch.manual_seed(0)
    cfg = SASRecConfig(max_seq_len=6, hidden_dim=32, num_blocks=1, num_heads=1, dropout=0.0)
    model = SASRec(cfg, num_items=25)
    g = torch.Generator().manual_seed(1)
    seqs = torch.randint(1, 25, (8, 7), generator=g)
    inputs, targets = seqs[:, :-1], seqs[:, 1:]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_cfg = LossConfig(name=loss, num_negatives=8)
    for _ in range(300):
        value = next_item_loss(loss_cfg, model(inputs), targets, model.item_vectors())
        opt.zero_grad()
        value.backward()
        opt.step()
    # BCE keeps sampling fresh negatives, so its floor is noisier
    assert value.item() < {"ce": 0.1, "sampled_softmax": 0.1, "bce": 0.3}[loss]
    # and the memorised next item is ranked first from the full catalogue
    model.eval()
    scores = model(inputs) @ model.item_vectors().T
    scores[..., 0] = float("-inf")
    # (BCE with one negative never sees most items as negatives: full-ranking accuracy is lower)
    accuracy = (scores.argmax(-1) == targets).float().mean().item()
    assert accuracy > {"ce": 0.9, "sampled_softmax": 0.9, "bce": 0.6}[loss]


def test_decoupled_attention_table_only_steers_attention():
    torch.manual_seed(0)
    cfg = SASRecConfig(max_seq_len=8, hidden_dim=16, num_blocks=2, num_heads=2, dropout=0.0, attention_table_dim=4)
    m = SASRec(cfg, num_items=30)
    ids = torch.tensor([[0, 3, 4, 5, 6], [1, 2, 3, 4, 5]])
    out = m(ids)
    # causal still
    changed = ids.clone()
    changed[1, 4] = 20
    torch.testing.assert_close(m(changed)[:, :4], out[:, :4])
    # the attention table gets gradient (through attention weights) and is not a scoring table
    loss = (out[:, -1] @ m.item_vectors().T).logsumexp(-1).sum()
    grads = torch.autograd.grad(loss, [m.attention_embedding.weight, m.item_embedding.weight])
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0
    assert m.item_vectors() is m.item_embedding.weight
    # with one table (the default) the model has no attention table at all
    assert not hasattr(SASRec(SASRecConfig(max_seq_len=8, hidden_dim=16), 30), "attention_embedding")


@pytest.mark.parametrize("length,chunk", [(70, 32), (64, 32), (5, 32), (33, 1)])
def test_chunked_causal_attention_equals_sdpa_with_gradients(length, chunk):
    from recsys.models.layers.attention import chunked_causal_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, length, 8, requires_grad=True) for _ in range(3))  # [B, H, L, d]
    out = chunked_causal_attention(q, k, v, chunk=chunk)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    _assert_same_gradients(out, expected, [q, k, v], torch.randn_like(out))


def test_training_attention_dropout_is_unbiased_and_causal():
    from recsys.models.layers import CausalSelfAttention, Packing

    torch.manual_seed(0)
    attn = CausalSelfAttention(16, 2, dropout=0.5)
    item_ids = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    packing = Packing((item_ids != 0)[..., None])
    x = torch.randn(10, 16)  # the 10 real positions, packed
    with torch.no_grad():
        expected = attn.eval()(x, packing)  # no dropout
        attn.train()
        mean = sum(attn(x, packing) for _ in range(4000)) / 4000  # dropout on the attention weights
        torch.testing.assert_close(mean, expected, atol=0.03, rtol=0.0)
        assert not torch.allclose(attn(x, packing), expected, atol=1e-3)  # dropout is on in training
        x2 = x.clone()
        x2[packing.last] += 1.0  # change each row's last position only
        torch.manual_seed(5)
        a = attn(x, packing)
        torch.manual_seed(5)
        b = attn(x2, packing)
        earlier = torch.ones(10, dtype=torch.bool)
        earlier[packing.last] = False
        torch.testing.assert_close(a[earlier], b[earlier])
        assert not torch.allclose(a[~earlier], b[~earlier])


@pytest.mark.parametrize("kw", [{}, {"attention_table_dim": 8}, {"num_blocks": 3}])
@pytest.mark.parametrize("dense", [False, True])  # dense: computed in the grid layout (GridRows)
def test_user_vectors_compute_the_last_block_for_the_last_position_only(kw, dense):
    from recsys.models.layers import packing

    torch.manual_seed(0)
    cfg = SASRecConfig(**{"max_seq_len": 12, "hidden_dim": 16, "num_blocks": 2, "num_heads": 2, "dropout": 0.0, **kw})
    m = SASRec(cfg, num_items=40).eval()
    ids = torch.tensor([[0, 0, 0, 5, 6, 7], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 9]])
    if dense:
        ids = torch.tensor([[0, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6], [8, 9, 10, 11, 12, 13], [0, 0, 2, 4, 6, 8]])
    grid = (ids != 0).sum() >= packing.GRID_MIN_REAL_SHARE * ids.numel()
    assert grid == dense
    torch.testing.assert_close(m.user_vectors(ids), m(ids)[:, -1], rtol=1e-5, atol=1e-6)
    assert m(ids, last_only=True).shape == (len(ids), 1, 16)


def test_grid_rows_layout():
    from recsys.models.layers.packing import GridRows, Packing, items_first_order

    item_ids = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4], [0, 0, 0, 0], [0, 0, 0, 7]])
    not_pad = (item_ids != 0)[..., None]
    order = items_first_order(not_pad)
    grid_ids = item_ids.gather(1, order)
    assert grid_ids.tolist() == [[3, 4, 0, 0], [1, 2, 3, 4], [0, 0, 0, 0], [7, 0, 0, 0]]
    rows = GridRows(not_pad.gather(1, order[..., None]))
    x = grid_ids[..., None].float()
    packed = rows.pack(x)  # [16, 1]: every position
    assert rows.last_rows(packed)[:, 0].tolist() == [4, 4, 0, 7]
    assert torch.equal(rows.unpack(packed), item_ids[..., None].float())  # back to left padding
    assert torch.equal(rows.key_mask(), Packing(not_pad).key_mask())


def test_packing_round_trip_and_last_rows():
    from recsys.models.layers import Packing

    item_ids = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4], [0, 0, 0, 0], [0, 0, 0, 7]])
    not_pad = (item_ids != 0)[..., None]
    packing = Packing(not_pad)
    x = torch.randn(4, 4, 3) * not_pad
    packed = packing.pack(x)
    assert packed.shape == (7, 3)
    torch.testing.assert_close(packing.unpack(packed), x)
    expected_last = x[:, -1].clone()
    torch.testing.assert_close(packing.last_rows(packed), expected_last)  # the empty row gives zeros
    assert packing.last_rows(packed)[2].abs().sum() == 0
    empty = Packing(torch.zeros(2, 3, 1, dtype=torch.bool))
    assert empty.last_rows(empty.pack(torch.randn(2, 3, 5))).shape == (2, 5)


def test_packing_rounds_rows_up_to_few_sizes():
    from recsys.models.layers.packing import Packing, bucket_size

    sizes = [bucket_size(n) for n in range(1, 5000)]
    assert all(n <= b <= max(16, n * 1.125) for n, b in zip(range(1, 5000), sizes))
    assert len({b for b in sizes if 1024 <= b < 2048}) == 8  # 8 shapes per power of two
    item_ids = torch.zeros(3, 8, dtype=torch.long)
    item_ids[0, 1:] = 1
    item_ids[1, :] = 2
    item_ids[2, 6:] = 3  # 7 + 8 + 2 = 17 real positions -> 18 packed rows
    not_pad = (item_ids != 0)[..., None]
    packing = Packing(not_pad)
    x = torch.randn(3, 8, 4) * not_pad
    packed = packing.pack(x)
    assert packed.shape == (18, 4)
    torch.testing.assert_close(packed[17], packed[16])  # the extra row copies a real one
    torch.testing.assert_close(packing.unpack(packed), x)
    torch.testing.assert_close(packing.last_rows(packed), x[:, -1])


def test_packing_without_padding_is_a_view():
    from recsys.models.layers import Packing

    item_ids = torch.arange(1, 13).view(3, 4)
    packing = Packing((item_ids != 0)[..., None])
    x = torch.randn(3, 4, 5)
    packed = packing.pack(x)
    assert packing.full and packed.data_ptr() == x.data_ptr() and packed.shape == (12, 5)
    assert packing.unpack(packed).data_ptr() == x.data_ptr()
    torch.testing.assert_close(packing.last_rows(packed), x[:, -1])


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
@pytest.mark.parametrize("train", [False, True])
def test_batch_without_padding_takes_the_maskless_path_with_the_same_outputs(name, train):
    """No padding: no mask is built (causal SDPA / plain attention); the same rows next to a padded row
    go through the masked path and must give the same outputs (and, in training, the same gradients)."""
    torch.manual_seed(0)
    m = build_model(
        name, {"max_seq_len": 12, "hidden_dim": 16, "num_blocks": 2, "num_heads": 2, "dropout": 0.0}, num_items=40
    ).train(train)
    full = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]])
    mixed = torch.cat([full, torch.tensor([[0, 0, 0, 0, 13, 14]])])
    out_full = m(full)
    out_mixed = m(mixed)[:2]
    torch.testing.assert_close(out_full, out_mixed, rtol=1e-5, atol=1e-6)
    if train:
        g_full = torch.autograd.grad(out_full.square().sum(), m.item_embedding.weight)[0]
        g_mixed = torch.autograd.grad(out_mixed.square().sum(), m.item_embedding.weight)[0]
        torch.testing.assert_close(g_full, g_mixed, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(m.eval().user_vectors(full), m.user_vectors(mixed)[:2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
def test_a_padded_row_equals_the_same_history_alone(name):
    """Left padding is moved to the right inside the attention (no mask for causal attention): a short
    history next to long ones gives what it gives alone, in training (no dropout) and evaluation."""
    torch.manual_seed(0)
    m = build_model(
        name, {"max_seq_len": 12, "hidden_dim": 16, "num_blocks": 2, "num_heads": 2, "dropout": 0.0}, num_items=40
    ).train()
    batch = torch.tensor([[1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 13, 14], [0, 7, 8, 9, 10, 11]])
    alone = torch.tensor([[13, 14]])
    torch.testing.assert_close(m(batch)[1, -2:], m(alone)[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m(batch)[2, 1:], m(batch[2:, 1:])[0], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        m.eval()
        torch.testing.assert_close(m.user_vectors(batch)[1], m.user_vectors(alone)[0], rtol=1e-5, atol=1e-6)


def test_packing_attention_grid_puts_items_first():
    from recsys.models.layers import Packing

    item_ids = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4], [0, 0, 0, 0], [0, 0, 0, 7]])
    packing = Packing((item_ids != 0)[..., None])
    packed = packing.pack(item_ids[..., None].float())  # [7, 1]
    grid = packing.to_grid(packed)[..., 0]
    assert grid.tolist() == [[3, 4, 0, 0], [1, 2, 3, 4], [0, 0, 0, 0], [7, 0, 0, 0]]
    torch.testing.assert_close(packing.from_grid(packing.to_grid(packed)), packed)
    assert packing.key_mask()[:, 0, 0].tolist() == [
        [True, True, False, False],
        [True] * 4,
        [True, False, False, False],
        [True, False, False, False],
    ]
    assert packing.last_rows(packed)[:, 0].tolist() == [4, 4, 0, 7]  # an empty row's is zeros


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
@pytest.mark.parametrize("dense", [False, True])
def test_one_head_inference_with_folded_projections_equals_the_plain_layer(name, dense):
    """Without gradients an eval-mode one-head layer runs with its key and output projections folded
    into the query and output weights (CausalSelfAttention.folded): same outputs to fp32 rounding."""
    torch.manual_seed(0)
    m = build_model(
        name, {"max_seq_len": 12, "hidden_dim": 16, "num_blocks": 2, "num_heads": 1, "dropout": 0.0}, num_items=40
    ).eval()
    for p in m.parameters():  # biases away from zero, so the bias terms of the folding matter
        torch.nn.init.normal_(p, std=0.3)
    m.fused_cpu_inference = False  # the PyTorch path (the fused kernel has tests of its own)
    ids = torch.tensor([[0, 0, 0, 5, 6, 7], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 9]])
    if dense:
        ids = torch.tensor([[0, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6], [8, 9, 10, 11, 12, 13], [0, 0, 2, 4, 6, 8]])
    plain_full, plain_last = m(ids), m(ids, last_only=True)  # gradients enabled: the unfolded layer
    attention = m.blocks[0].attn
    calls = []
    original = attention._folded_forward
    attention._folded_forward = lambda *a: calls.append(1) or original(*a)
    with torch.no_grad():
        folded_full, folded_last = m(ids), m(ids, last_only=True)
    assert len(calls) == 2  # the folded path ran
    real = (ids != 0)[..., None].expand_as(plain_full)
    torch.testing.assert_close(folded_full[real], plain_full[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(folded_last, plain_last, rtol=1e-5, atol=1e-5)
    # the cached folded weights follow the layer's weights
    first = attention.folded()[0].clone()
    with torch.no_grad():
        attention.qkv.weight.mul_(2.0)
    assert not torch.allclose(attention.folded()[0], first)
    with torch.no_grad():
        refolded = m(ids, last_only=True)
    torch.testing.assert_close(refolded, m(ids, last_only=True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_folded_weights_follow_optimizer_steps_between_evaluations(fused):
    """Validation between epochs: the folded weights must follow every optimiser step, including the
    fused AdamW kernel's, which updates parameters without bumping their version counters."""
    torch.manual_seed(0)
    m = build_model("sasrec", {"max_seq_len": 12, "hidden_dim": 16, "num_heads": 1, "dropout": 0.0}, num_items=40)
    optimizer = torch.optim.AdamW(m.parameters(), lr=0.05, fused=fused)
    ids = torch.tensor([[0, 0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10]])
    for _ in range(3):
        m.eval()
        with torch.no_grad():
            folded = m(ids, last_only=True)
        torch.testing.assert_close(folded, m(ids, last_only=True), rtol=1e-5, atol=1e-5)  # vs the plain layer
        m.train()
        optimizer.zero_grad(set_to_none=True)
        m(ids).square().mean().backward()
        optimizer.step()


def test_training_and_multi_head_layers_do_not_fold():
    torch.manual_seed(0)
    calls = []

    def counted(model):
        for block in model.blocks:
            original = block.attn._folded_forward
            block.attn._folded_forward = lambda *a, original=original: calls.append(1) or original(*a)
        return model

    m = counted(
        build_model("sasrec", {"max_seq_len": 12, "hidden_dim": 16, "num_heads": 1, "dropout": 0.0}, num_items=40)
    )
    ids = torch.tensor([[0, 1, 2, 3]])
    m.train()(ids).sum().backward()  # training
    m.eval()(ids)  # gradients enabled
    two_heads = counted(
        build_model("sasrec", {"max_seq_len": 12, "hidden_dim": 16, "num_heads": 2}, num_items=40).eval()
    )
    with torch.no_grad():
        two_heads(ids)
    assert calls == []
    with torch.no_grad():
        m(ids)  # one head, eval, no gradients: both blocks fold
    assert len(calls) == 2


def test_bert4rec_blocks_have_no_dropout_between_the_feed_forward_layers():
    sasrec = build_model("sasrec", {"max_seq_len": 12, "hidden_dim": 16}, num_items=40)
    bert = build_model("bert4rec", {"max_seq_len": 12, "hidden_dim": 16}, num_items=40)
    assert isinstance(sasrec.blocks[0].ffn[2], Dropout)
    assert isinstance(bert.blocks[0].ffn[2], torch.nn.Identity)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("groups", [1, 3])
def test_grouped_packed_attention_equals_the_grid_version_with_gradients(groups, causal):
    """Training's attention straight from the packed rows equals the grid version (to_grid, then
    grouped_bidirectional_attention or chunked_causal_attention, from_grid) in values and gradients,
    an empty row included."""
    from recsys.models.layers.attention import (
        Packing,
        chunked_causal_attention,
        grouped_bidirectional_attention,
        grouped_packed_attention,
    )

    torch.manual_seed(0)
    B, L, H, d = 5, 9, 2, 4
    counts = torch.tensor([9, 0, 3, 1, 6])
    not_pad = (torch.arange(L) >= L - counts[:, None])[..., None]  # left padding, [B, L, 1]
    packing = Packing(not_pad)
    qkv = torch.randn(packing.rows.numel(), 3 * H * d, requires_grad=True)  # packed rows incl. bucket copies
    weights = torch.randn(packing.rows.numel(), H * d)
    weights[packing.num_real :] = 0  # the bucket's copy rows are never read
    out = grouped_packed_attention(qkv, packing, H, groups=groups, causal=causal)
    q, k, v = packing.to_grid(qkv).view(B, L, 3, H, d).permute(2, 0, 3, 1, 4)
    grid = (
        chunked_causal_attention(q, k, v, chunk=4)
        if causal
        else grouped_bidirectional_attention(q, k, v, packing.counts, groups=groups)
    )
    expected = packing.from_grid(grid.transpose(1, 2).reshape(B, L, H * d))
    real = slice(0, packing.num_real)
    torch.testing.assert_close(out[real], expected[real], rtol=1e-5, atol=1e-6)
    assert (out[packing.num_real :] == 0).all()
    _assert_same_gradients(out, expected, (qkv,), weights)


def test_grouped_bidirectional_attention_equals_masked_attention_with_gradients():
    from recsys.models.layers.attention import grouped_bidirectional_attention

    torch.manual_seed(0)
    counts = torch.tensor([7, 0, 3, 12, 1, 12, 5, 9, 2])  # an empty row, full rows, groups of 3 rows
    B, H, L, d = len(counts), 2, 12, 8
    q, k, v = (torch.randn(B, H, L, d, requires_grad=True) for _ in range(3))
    columns = torch.arange(L)
    real_keys = ((columns < counts[:, None]) | (columns == 0))[:, None, None, :]
    out = grouped_bidirectional_attention(q, k, v, counts, groups=3)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=real_keys)
    real_queries = (columns < counts[:, None])[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[real_queries], expected[real_queries], rtol=1e-5, atol=1e-6)
    _assert_same_gradients(out, expected, [q, k, v], torch.randn_like(out) * real_queries)  # real positions only


def test_bidirectional_training_attention_dropout_is_unbiased():
    from recsys.models.layers import CausalSelfAttention, Packing

    torch.manual_seed(0)
    attn = CausalSelfAttention(16, 2, dropout=0.5)
    item_ids = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 7]])
    packing = Packing((item_ids != 0)[..., None])
    x = torch.randn(11, 16)
    with torch.no_grad():
        expected = attn.eval()(x, packing, causal=False)
        attn.train()
        mean = sum(attn(x, packing, causal=False) for _ in range(4000)) / 4000
        torch.testing.assert_close(mean, expected, atol=0.03, rtol=0.0)
        assert not torch.allclose(attn(x, packing, causal=False), expected, atol=1e-3)


@pytest.mark.parametrize("kw, train", [({}, True), ({}, False), ({"attention_table_dim": 8}, True)])
def test_packed_forward_equals_the_padded_one_at_real_positions_with_gradients(kw, train):
    """forward(packed=True): the real positions' hidden states (row-major) and their flat indices, equal
    to the padded forward's there, with the same full-CE loss and parameter gradients (dropout 0, so
    both draw nothing); rows of every length, an empty one included."""
    model = _model(**kw).train(train)
    torch.manual_seed(1)
    lengths = torch.tensor([0, 1, 3, 12, 7, 12, 5, 2])
    ids = torch.randint(1, 40, (8, 12)) * (torch.arange(12) >= 12 - lengths[:, None])  # left-padded
    targets = torch.randint(1, 40, (8, 12)) * (ids > 0)
    targets[2, -1] = 0  # a real position without a target
    hidden = model(ids)  # [B, L, D]
    packed, index = model(ids, packed=True)  # [T, D], [T]
    real = ids > 0
    assert torch.equal(index, real.reshape(-1).nonzero().squeeze(1))
    torch.testing.assert_close(packed, hidden[real], rtol=1e-5, atol=1e-6)
    cfg = LossConfig(name="ce")
    params = [p for p in model.parameters()]
    loss = next_item_loss(cfg, hidden, targets, model.item_vectors())
    packed_loss = next_item_loss(cfg, packed[None], targets.reshape(-1)[index][None], model.item_vectors())
    torch.testing.assert_close(packed_loss, loss)
    for got, want in zip(torch.autograd.grad(packed_loss, params), torch.autograd.grad(loss, params)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
